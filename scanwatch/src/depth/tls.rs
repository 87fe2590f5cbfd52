//! TLS ClientHello parsing and the JA4 TLS client fingerprint (FoxIO, BSD-3-Clause; JA4 only, not
//! the other JA4+ methods). Specification: <https://github.com/FoxIO-LLC/ja4/blob/main/technical_details/JA4.md>.
//!
//! The parser reads one TLS record (or several, when a ClientHello spans records) from the first
//! client payload of a connection through a bounds-checked cursor. Every failure names the byte
//! offset and the field; nothing panics on any input (see the fuzz target `tls_client_hello`).
//!
//! Why not `tls-parser`: JA4 needs every extension code in wire order (GREASE included, to be
//! dropped by JA4's own rule), the raw signature-algorithm list in order, and a clear
//! "truncated at offset N" answer for the bounded kernel sample, which is a few dozen lines
//! over the wire format itself.
use sha2::{Digest, Sha256};

/// Why a payload is not a usable ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// Not a TLS handshake record at all (first byte is not 0x16, or the version byte is not 3).
    #[error("not a TLS handshake record")]
    NotHandshake,
    /// A handshake, but not a ClientHello (type byte at offset 5).
    #[error("handshake type {0} is not a ClientHello")]
    NotClientHello(u8),
    /// The input ends before the field that starts at `offset`.
    #[error("truncated at offset {offset}: {field} needs {need} more bytes")]
    Truncated { offset: usize, field: &'static str, need: usize },
    /// A length or value that cannot be right.
    #[error("malformed at offset {offset}: {what}")]
    Malformed { offset: usize, what: &'static str },
}

/// What JA4 and the alerts need from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// Version in the record header.
    pub record_version: u16,
    /// `legacy_version` of the ClientHello.
    pub version: u16,
    /// Cipher suites in wire order (GREASE included).
    pub ciphers: Vec<u16>,
    /// Extension types in wire order (GREASE included).
    pub extensions: Vec<u16>,
    /// `server_name` (host_name entries, first one).
    pub sni: Option<String>,
    /// ALPN protocol names in order (raw bytes).
    pub alpn: Vec<Vec<u8>>,
    /// `signature_algorithms` in wire order.
    pub signature_algorithms: Vec<u16>,
    /// `supported_versions` in wire order.
    pub supported_versions: Vec<u16>,
}

/// Is `v` a GREASE value (RFC 8701: 0x?a?a with both bytes equal)?
pub fn is_grease(v: u16) -> bool {
    (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// Does the payload start like a TLS handshake record (worth parsing as a ClientHello)?
pub fn looks_like_tls(data: &[u8]) -> bool {
    data.len() >= 3 && data[0] == 0x16 && data[1] == 3 && data[2] <= 4
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf[0]` in the caller's input (for error messages).
    base: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Cursor { buf, pos: 0, base }
    }
    fn offset(&self) -> usize {
        self.base + self.pos
    }
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], TlsError> {
        let rest = self.buf.len() - self.pos;
        if n > rest {
            return Err(TlsError::Truncated { offset: self.offset(), field, need: n - rest });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, TlsError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, TlsError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self, field: &'static str) -> Result<usize, TlsError> {
        let b = self.take(3, field)?;
        Ok((usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// Concatenate the handshake bytes of consecutive handshake records (a ClientHello may span
/// records). Returns the handshake bytes and the record version of the first record.
fn handshake_bytes(data: &[u8]) -> Result<(Vec<u8>, u16), TlsError> {
    if !looks_like_tls(data) {
        return Err(TlsError::NotHandshake);
    }
    let mut out = Vec::new();
    let mut c = Cursor::new(data, 0);
    let mut record_version = 0;
    let mut first = true;
    while !c.is_empty() {
        let ty = c.u8("record type")?;
        if ty != 0x16 {
            if first {
                return Err(TlsError::NotHandshake);
            }
            break;
        }
        let v = c.u16("record version")?;
        if first {
            record_version = v;
        }
        let len = usize::from(c.u16("record length")?);
        if len == 0 || len > 16384 + 2048 {
            return Err(TlsError::Malformed { offset: c.offset() - 2, what: "record length out of range" });
        }
        let start = c.offset();
        match c.take(len, "record body") {
            Ok(b) => out.extend_from_slice(b),
            // A truncated record: keep what is there; the handshake parser reports where it ends.
            Err(_) => {
                out.extend_from_slice(&data[start..]);
                break;
            }
        }
        first = false;
        // Enough for the handshake header: stop once the ClientHello is complete.
        if out.len() >= 4 {
            let hs_len = (usize::from(out[1]) << 16) | (usize::from(out[2]) << 8) | usize::from(out[3]);
            if out.len() >= hs_len + 4 {
                break;
            }
        }
    }
    Ok((out, record_version))
}

/// Parse a ClientHello from the start of a client's first payload.
pub fn parse_client_hello(data: &[u8]) -> Result<ClientHello, TlsError> {
    let (hs, record_version) = handshake_bytes(data)?;
    // Handshake bytes start after the 5-byte record header in the input.
    let mut c = Cursor::new(&hs, 5);
    let ty = c.u8("handshake type")?;
    if ty != 1 {
        return Err(TlsError::NotClientHello(ty));
    }
    let len = c.u24("handshake length")?;
    let body = c.take(len, "ClientHello body")?;
    let mut c = Cursor::new(body, 9);
    let mut h = ClientHello { record_version, version: c.u16("client version")?, ..Default::default() };
    c.take(32, "random")?;
    let sid = usize::from(c.u8("session id length")?);
    if sid > 32 {
        return Err(TlsError::Malformed { offset: c.offset() - 1, what: "session id longer than 32" });
    }
    c.take(sid, "session id")?;
    let cs_len = usize::from(c.u16("cipher suites length")?);
    if cs_len % 2 != 0 {
        return Err(TlsError::Malformed { offset: c.offset() - 2, what: "odd cipher suites length" });
    }
    let cs = c.take(cs_len, "cipher suites")?;
    h.ciphers = cs.chunks_exact(2).map(|p| u16::from_be_bytes([p[0], p[1]])).collect();
    let comp = usize::from(c.u8("compression methods length")?);
    c.take(comp, "compression methods")?;
    if c.is_empty() {
        return Ok(h); // No extensions (SSL 3.0 style).
    }
    let ext_len = usize::from(c.u16("extensions length")?);
    let ext_base = c.offset();
    let exts = c.take(ext_len, "extensions")?;
    let mut e = Cursor::new(exts, ext_base);
    while !e.is_empty() {
        let ty = e.u16("extension type")?;
        let len = usize::from(e.u16("extension length")?);
        let at = e.offset();
        let body = e.take(len, "extension body")?;
        h.extensions.push(ty);
        match ty {
            0x0000 => h.sni = parse_sni(body, at)?,
            0x0010 => h.alpn = parse_alpn(body, at)?,
            0x000d => h.signature_algorithms = u16_list(body, at, 2, "signature algorithms")?,
            0x002b => h.supported_versions = u16_list(body, at, 1, "supported versions")?,
            _ => {}
        }
    }
    Ok(h)
}

/// A list of u16 preceded by a length field of `len_bytes` bytes.
fn u16_list(body: &[u8], at: usize, len_bytes: usize, field: &'static str) -> Result<Vec<u16>, TlsError> {
    let mut c = Cursor::new(body, at);
    let n = if len_bytes == 1 { usize::from(c.u8(field)?) } else { usize::from(c.u16(field)?) };
    if n % 2 != 0 {
        return Err(TlsError::Malformed { offset: at, what: "odd list length" });
    }
    let b = c.take(n, field)?;
    Ok(b.chunks_exact(2).map(|p| u16::from_be_bytes([p[0], p[1]])).collect())
}

fn parse_sni(body: &[u8], at: usize) -> Result<Option<String>, TlsError> {
    if body.is_empty() {
        return Ok(None); // A server's empty echo; clients send a list.
    }
    let mut c = Cursor::new(body, at);
    let n = usize::from(c.u16("server name list length")?);
    let list = c.take(n, "server name list")?;
    let mut l = Cursor::new(list, at + 2);
    while !l.is_empty() {
        let ty = l.u8("server name type")?;
        let len = usize::from(l.u16("server name length")?);
        let name = l.take(len, "server name")?;
        if ty == 0 {
            return Ok(Some(String::from_utf8_lossy(name).into_owned()));
        }
    }
    Ok(None)
}

fn parse_alpn(body: &[u8], at: usize) -> Result<Vec<Vec<u8>>, TlsError> {
    let mut c = Cursor::new(body, at);
    let n = usize::from(c.u16("ALPN list length")?);
    let list = c.take(n, "ALPN list")?;
    let mut l = Cursor::new(list, at + 2);
    let mut out = Vec::new();
    while !l.is_empty() {
        let len = usize::from(l.u8("ALPN name length")?);
        out.push(l.take(len, "ALPN name")?.to_vec());
    }
    Ok(out)
}

fn version_code(v: u16) -> &'static str {
    match v {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0002 => "s2",
        0xfeff => "d1",
        0xfefd => "d2",
        0xfefc => "d3",
        _ => "00",
    }
}

fn hash12(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(12);
    for b in d.iter().take(6) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn hex_list(v: &[u16]) -> String {
    v.iter().map(|x| format!("{x:04x}")).collect::<Vec<_>>().join(",")
}

impl ClientHello {
    /// The TLS version JA4 reports: the highest non-GREASE `supported_versions` entry, else the
    /// ClientHello's own version (the record version is ignored).
    pub fn ja4_version(&self) -> u16 {
        self.supported_versions.iter().copied().filter(|v| !is_grease(*v)).max().unwrap_or(self.version)
    }

    /// First ALPN value as JA4's two characters.
    fn alpn_code(&self) -> String {
        let Some(first) = self.alpn.first() else { return "00".into() };
        let (Some(&a), Some(&z)) = (first.first(), first.last()) else { return "00".into() };
        if a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric() {
            format!("{}{}", a as char, z as char)
        } else {
            let hex: String = first.iter().map(|b| format!("{b:02x}")).collect();
            let mut ch = hex.chars();
            let f = ch.next().unwrap_or('0');
            let l = hex.chars().last().unwrap_or('0');
            format!("{f}{l}")
        }
    }

    fn ciphers_clean(&self) -> Vec<u16> {
        self.ciphers.iter().copied().filter(|c| !is_grease(*c)).collect()
    }

    fn extensions_clean(&self) -> Vec<u16> {
        self.extensions.iter().copied().filter(|c| !is_grease(*c)).collect()
    }

    fn ja4_a(&self) -> String {
        let sni = if self.extensions.contains(&0x0000) { 'd' } else { 'i' };
        format!(
            "t{}{sni}{:02}{:02}{}",
            version_code(self.ja4_version()),
            self.ciphers_clean().len().min(99),
            self.extensions_clean().len().min(99),
            self.alpn_code()
        )
    }

    fn sigalgs_clean(&self) -> Vec<u16> {
        self.signature_algorithms.iter().copied().filter(|c| !is_grease(*c)).collect()
    }

    /// The JA4 `b` and `c` sources: (cipher list, extension list [+ "_" + signature algorithms]).
    fn ja4_lists(&self, sorted: bool) -> (String, String) {
        let mut ciphers = self.ciphers_clean();
        let mut exts = self.extensions_clean();
        if sorted {
            ciphers.sort_unstable();
            exts.retain(|e| *e != 0x0000 && *e != 0x0010);
            exts.sort_unstable();
        }
        let mut c = hex_list(&exts);
        let sig = self.sigalgs_clean();
        if !sig.is_empty() && !exts.is_empty() {
            c.push('_');
            c.push_str(&hex_list(&sig));
        }
        (hex_list(&ciphers), c)
    }

    /// JA4 (`t13d1516h2_8daaf6152771_e5627efa2ab1`).
    pub fn ja4(&self) -> String {
        self.ja4_hashed(true)
    }

    /// JA4_o: original order, SNI and ALPN kept.
    pub fn ja4_o(&self) -> String {
        self.ja4_hashed(false)
    }

    fn ja4_hashed(&self, sorted: bool) -> String {
        let (b, c) = self.ja4_lists(sorted);
        let hb = if b.is_empty() { "000000000000".to_string() } else { hash12(&b) };
        let hc = if c.is_empty() { "000000000000".to_string() } else { hash12(&c) };
        format!("{}_{hb}_{hc}", self.ja4_a())
    }

    /// JA4_r: the sorted lists unhashed.
    pub fn ja4_r(&self) -> String {
        let (b, c) = self.ja4_lists(true);
        format!("{}_{b}_{c}", self.ja4_a())
    }

    /// ALPN names as text (lossy).
    pub fn alpn_strings(&self) -> Vec<String> {
        self.alpn.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Build a ClientHello record from parts (the test's own encoder, wire format per RFC 8446 §4.1.2).
    pub(crate) fn build_hello(ciphers: &[u16], exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x11; 32]);
        body.push(32);
        body.extend_from_slice(&[0x22; 32]);
        body.extend_from_slice(&((ciphers.len() * 2) as u16).to_be_bytes());
        for c in ciphers {
            body.extend_from_slice(&c.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]);
        let mut e = Vec::new();
        for (ty, data) in exts {
            e.extend_from_slice(&ty.to_be_bytes());
            e.extend_from_slice(&(data.len() as u16).to_be_bytes());
            e.extend_from_slice(data);
        }
        body.extend_from_slice(&(e.len() as u16).to_be_bytes());
        body.extend_from_slice(&e);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    pub(crate) fn sni_ext(name: &str) -> Vec<u8> {
        let mut v = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        v.push(0);
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v
    }

    pub(crate) fn alpn_ext(names: &[&str]) -> Vec<u8> {
        let mut l = Vec::new();
        for n in names {
            l.push(n.len() as u8);
            l.extend_from_slice(n.as_bytes());
        }
        let mut v = (l.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(&l);
        v
    }

    fn u16s(len_bytes: usize, v: &[u16]) -> Vec<u8> {
        let mut out = if len_bytes == 1 {
            vec![(v.len() * 2) as u8]
        } else {
            ((v.len() * 2) as u16).to_be_bytes().to_vec()
        };
        for x in v {
            out.extend_from_slice(&x.to_be_bytes());
        }
        out
    }

    /// The example of the JA4 specification (FoxIO-LLC/ja4, technical_details/JA4.md, sections
    /// "Cipher hash", "Extension hash", "Example" and "Raw Output"): ciphers
    /// `1301,1302,1303,c02b,...,002f,0035` and extensions `001b,0000,0033,0010,4469,...` in wire
    /// order, signature algorithms `0403,0804,...`, with GREASE values that JA4 ignores.
    pub(crate) fn spec_example() -> Vec<u8> {
        let ciphers = [
            0x3a3a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c,
            0x009d, 0x002f, 0x0035,
        ];
        let sig = u16s(2, &[0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]);
        let exts = vec![
            (0x0a0a, vec![]),
            (0x001b, vec![2, 0, 2]),
            (0x0000, sni_ext("example.com")),
            (0x0033, vec![0, 0]),
            (0x0010, alpn_ext(&["h2", "http/1.1"])),
            (0x4469, vec![0, 3, 2, b'h', b'2']),
            (0x0017, vec![]),
            (0x002d, vec![1, 1]),
            (0x000d, sig),
            (0x0005, vec![1, 0, 0, 0, 0]),
            (0x0023, vec![]),
            (0x0012, vec![]),
            (0x002b, u16s(1, &[0x7a7a, 0x0304, 0x0303])),
            (0xff01, vec![0]),
            (0x000b, vec![1, 0]),
            (0x000a, u16s(2, &[0x1a1a, 0x001d, 0x0017])),
            (0x0015, vec![0; 7]),
            (0x2a2a, vec![0]),
        ];
        build_hello(&ciphers, &exts)
    }

    #[test]
    fn ja4_matches_the_specification_example() {
        let h = parse_client_hello(&spec_example()).expect("parse");
        assert_eq!(h.sni.as_deref(), Some("example.com"));
        assert_eq!(h.alpn_strings(), ["h2", "http/1.1"]);
        // JA4.md "Example": JA4 = t13d1516h2_8daaf6152771_e5627efa2ab1
        assert_eq!(h.ja4(), "t13d1516h2_8daaf6152771_e5627efa2ab1");
        // JA4.md "Raw Output": JA4_r.
        assert_eq!(
            h.ja4_r(),
            "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,0804,0401,0503,0805,0501,0806,0601"
        );
        // JA4.md "Raw Output": JA4_o = t13d1516h2_acb858a92679_18f69afefd3d
        assert_eq!(h.ja4_o(), "t13d1516h2_acb858a92679_18f69afefd3d");
    }

    #[test]
    fn ja4_extension_hash_without_signature_algorithms() {
        // JA4.md "Extension hash": the sorted list alone hashes to 6d807ffa2a79.
        assert_eq!(
            hash12("0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01"),
            "6d807ffa2a79"
        );
        let h = parse_client_hello(&build_hello(&[], &[])).expect("parse");
        assert_eq!(h.ja4(), "t12i000000_000000000000_000000000000");
    }

    #[test]
    fn alpn_codes_follow_the_specification() {
        let mut h = ClientHello::default();
        for (v, want) in [
            (vec![0xab], "ab"),
            (vec![0xab, 0xcd], "ad"),
            (vec![0x30, 0xab], "3b"),
            (vec![0x30, 0x31, 0xab, 0xcd], "3d"),
            (vec![0x30, 0xab, 0xcd, 0x31], "01"),
            (b"http/1.1".to_vec(), "h1"),
            (b"h".to_vec(), "hh"),
            (vec![], "00"),
        ] {
            h.alpn = vec![v.clone()];
            assert_eq!(h.alpn_code(), want, "{v:02x?}");
        }
    }

    #[test]
    fn truncated_and_malformed_hellos_name_the_offset() {
        let full = spec_example();
        for cut in [0, 1, 5, 9, 40, 80, 150, full.len() - 1] {
            let r = parse_client_hello(&full[..cut]);
            assert!(r.is_err(), "cut {cut}");
        }
        let r = parse_client_hello(&full[..80]);
        assert!(matches!(r, Err(TlsError::Truncated { .. })), "{r:?}");
        let mut bad = full.clone();
        bad[43] = 40; // session id length 40 > 32
        assert_eq!(
            parse_client_hello(&bad),
            Err(TlsError::Malformed { offset: 43, what: "session id longer than 32" })
        );
        assert_eq!(parse_client_hello(b"GET / HTTP/1.0\r\n\r\n"), Err(TlsError::NotHandshake));
    }

    #[test]
    fn hello_split_over_two_records_is_joined() {
        let one = spec_example();
        let hs = &one[5..];
        let (a, b) = hs.split_at(100);
        let mut two = vec![0x16, 3, 1];
        two.extend_from_slice(&(a.len() as u16).to_be_bytes());
        two.extend_from_slice(a);
        two.extend_from_slice(&[0x16, 3, 1]);
        two.extend_from_slice(&(b.len() as u16).to_be_bytes());
        two.extend_from_slice(b);
        assert_eq!(parse_client_hello(&two).expect("parse").ja4(), "t13d1516h2_8daaf6152771_e5627efa2ab1");
    }
}

#[cfg(test)]
mod real_hellos {
    use super::*;

    /// ClientHellos written by Python's `ssl` (OpenSSL) into the seed corpus
    /// (`fuzz/corpus/tls_client_hello/python_*`): they parse, and JA4's `a` part says what was offered.
    #[test]
    fn openssl_client_hellos_from_the_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/tls_client_hello");
        let read = |n: &str| std::fs::read(dir.join(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
        let h = parse_client_hello(&read("python_sni_h2")).expect("parse");
        assert_eq!(h.sni.as_deref(), Some("example.com"));
        assert_eq!(h.alpn_strings(), ["h2", "http/1.1"]);
        assert!(h.ja4().starts_with("t13d") && h.ja4()[6..].starts_with("") && h.ja4().contains("h2_"), "{}", h.ja4());
        let n = parse_client_hello(&read("python_nosni")).expect("parse");
        assert!(n.ja4().starts_with("t13i"), "{}", n.ja4());
        assert_ne!(h.ja4(), n.ja4());
        // The cipher hash does not depend on SNI or ALPN; the extension hash does not either.
        assert_eq!(h.ja4()[10..], n.ja4()[10..]);
        assert!(matches!(parse_client_hello(&read("python_truncated_256")), Err(TlsError::Truncated { .. })));
        assert_eq!(parse_client_hello(&read("python_split_records")).expect("split").ja4(), h.ja4());
        assert_eq!(parse_client_hello(&read("not_client_hello")), Err(TlsError::NotClientHello(2)));
    }
}
