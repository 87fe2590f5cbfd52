//! Fleet record format, version 1: what agents publish to NATS and correlators decode.
//!
//! One NATS message is one *batch*: the records of one agent for one subject (one shard), so a
//! correlator decodes many records per message. Little-endian, no padding:
//!
//! ```text
//! batch   := magic "SW" | v: u8 (= 1) | flags: u8 (= 0)
//!            | agent_len: u8 | agent: [u8; agent_len]   (1..=64 bytes, [A-Za-z0-9_.-]... see name_ok)
//!            | site_len: u8  | site: [u8; site_len]     (1..=64 bytes)
//!            | count: u32 | record * count              (nothing may follow the last record)
//! record  := tag: u8 | body
//! held    (tag 1, 48-byte body): time_ns u64 | src [u8;16] | dst [u8;16] | dport u16 | proto u8
//!            | flags u8 (bit 0 failed, bit 1 has port, bit 2 has dst) | fp_hash u32
//! summary (tag 2): time_ns u64 | src [u8;16] | first_seen_ns u64
//!            | nonzero: u32 (bit i set = counter i follows; bits >= 24 must be clear)
//!            | counter * popcount(nonzero) (LEB128, at most 5 bytes, fits u32; counter indices
//!              are scanwatch_common::cnt::*)
//!            | distinct_ports f32 | distinct_hosts f32 | n_ports u8 (<= 16) | ports [u16; n_ports]
//!            | n_fp u8 (<= 2) | fp * n_fp
//! fp      := hash u32 | initial_ttl u8 | tool u8 (index of scanwatch_common::tool::NAMES)
//!            | text_len u8 | text [u8; text_len] (UTF-8)
//! alert   (tag 3): time_ns u64 | len u16 (<= 16384) | the alert's JSON line (UTF-8)
//! ```
//!
//! Addresses are 16 bytes, IPv4 mapped into IPv6 (`::ffff:a.b.c.d`); times are Unix nanoseconds
//! of the agent's clock (the correlator drives its engine with them). A message is accepted whole
//! or rejected whole with a [`DecodeError`] naming the offset; [`DecodeError::reason`] is the
//! short name correlators count rejections under. The decoder never panics and never allocates
//! more than the record vector (bounded by the message size).
use std::net::{IpAddr, Ipv6Addr};

use scanwatch_common::cnt;

/// Format version written in every batch.
pub const VERSION: u8 = 1;
pub const MAGIC: [u8; 2] = *b"SW";
/// Largest batch accepted (NATS' default max_payload).
pub const MAX_MESSAGE: usize = 1 << 20;
/// Longest agent id / site name.
pub use crate::config::fleet::MAX_NAME;
/// Port sample of a summary.
pub const MAX_PORTS: usize = 16;
/// Fingerprints per summary.
pub const MAX_FPS: usize = 2;
/// Longest alert JSON line carried in a record.
pub const MAX_ALERT: usize = 16 * 1024;

pub const TAG_HELD: u8 = 1;
pub const TAG_SUMMARY: u8 = 2;
pub const TAG_ALERT: u8 = 3;

const HELD_BODY: usize = 8 + 16 + 16 + 2 + 1 + 1 + 4;

/// Why a message was rejected. `offset` is the byte offset in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    Oversized { len: usize },
    #[error("bad magic at offset 0 (not a scanwatch fleet batch)")]
    BadMagic,
    #[error("format version {found} at offset 2 (this build reads version {VERSION})")]
    WrongVersion { found: u8 },
    #[error("unknown flags {flags:#04x} at offset 3")]
    BadFlags { flags: u8 },
    #[error("truncated at offset {offset}: {what} needs {need} more bytes")]
    Truncated { offset: usize, what: &'static str, need: usize },
    #[error("bad {what} at offset {offset}: {why}")]
    BadName { offset: usize, what: &'static str, why: &'static str },
    #[error("unknown record tag {tag} at offset {offset}")]
    BadTag { offset: usize, tag: u8 },
    #[error("bad field at offset {offset}: {why}")]
    BadField { offset: usize, why: &'static str },
    #[error("{extra} bytes after the last of {count} records (offset {offset})")]
    TrailingBytes { offset: usize, extra: usize, count: u32 },
    #[error("record count {count} cannot fit in {len} bytes")]
    BadCount { count: u32, len: usize },
}

impl DecodeError {
    /// Short name under which correlators count the rejection.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::WrongVersion { .. } => "wrong_version",
            DecodeError::BadFlags { .. } => "bad_flags",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::BadName { .. } => "bad_name",
            DecodeError::BadTag { .. } => "bad_tag",
            DecodeError::BadField { .. } => "bad_field",
            DecodeError::TrailingBytes { .. } => "trailing_bytes",
            DecodeError::BadCount { .. } => "bad_count",
        }
    }
}

/// One held first-contact probe (a source's only probe so far at this agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub time_ns: u64,
    pub src: IpAddr,
    pub dst: Option<IpAddr>,
    pub dport: Option<u16>,
    pub proto: u8,
    pub failed: bool,
    /// 0 = none.
    pub fp_hash: u32,
}

/// A fingerprint in a summary (text borrowed from the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fp<'a> {
    pub hash: u32,
    pub initial_ttl: u8,
    pub tool: u8,
    pub text: &'a str,
}

/// Cumulative per-source counters of one agent (its kernel map entry).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary<'a> {
    pub time_ns: u64,
    pub src: IpAddr,
    pub first_seen_ns: u64,
    pub counts: [u32; cnt::N],
    pub distinct_ports: f32,
    pub distinct_hosts: f32,
    pub n_ports: u8,
    pub ports: [u16; MAX_PORTS],
    pub n_fp: u8,
    pub fps: [Fp<'a>; MAX_FPS],
}

impl Summary<'_> {
    pub fn ports(&self) -> &[u16] {
        &self.ports[..usize::from(self.n_ports).min(MAX_PORTS)]
    }
    pub fn fps(&self) -> &[Fp<'_>] {
        &self.fps[..usize::from(self.n_fp).min(MAX_FPS)]
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Record<'a> {
    Held(Held),
    Summary(Summary<'a>),
    /// An alert the agent raised, as its JSON line.
    Alert { time_ns: u64, json: &'a str },
}

impl Record<'_> {
    pub fn time_ns(&self) -> u64 {
        match self {
            Record::Held(h) => h.time_ns,
            Record::Summary(s) => s.time_ns,
            Record::Alert { time_ns, .. } => *time_ns,
        }
    }
}

/// A decoded batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch<'a> {
    pub agent: &'a str,
    pub site: &'a str,
    pub records: Vec<Record<'a>>,
}

pub use crate::config::fleet::name_ok;

struct Cur<'a> {
    b: &'a [u8],
    o: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = self.b.len() - self.o;
        if rest < n {
            return Err(DecodeError::Truncated { offset: self.o, what, need: n - rest });
        }
        let s = &self.b[self.o..self.o + n];
        self.o += n;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    /// LEB128 u32: at most 5 bytes, no bits beyond 32.
    fn varint(&mut self) -> Result<u32, DecodeError> {
        let at = self.o;
        let mut v: u64 = 0;
        for i in 0..5 {
            let b = self.u8("counter")?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return u32::try_from(v).map_err(|_| DecodeError::BadField { offset: at, why: "counter exceeds u32" });
            }
        }
        Err(DecodeError::BadField { offset: at, why: "counter varint longer than 5 bytes" })
    }
    fn addr(&mut self, what: &'static str) -> Result<IpAddr, DecodeError> {
        let s = self.take(16, what)?;
        let mut a = [0u8; 16];
        a.copy_from_slice(s);
        Ok(addr_from_bytes(a))
    }
    fn str(&mut self, n: usize, what: &'static str) -> Result<&'a str, DecodeError> {
        let at = self.o;
        let s = self.take(n, what)?;
        std::str::from_utf8(s).map_err(|_| DecodeError::BadField { offset: at, why: "text is not UTF-8" })
    }
    fn name(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let at = self.o;
        let n = usize::from(self.u8(what)?);
        if n == 0 || n > MAX_NAME {
            return Err(DecodeError::BadName { offset: at, what, why: "length must be 1..=64" });
        }
        let s = self.take(n, what)?;
        let s = std::str::from_utf8(s).map_err(|_| DecodeError::BadName { offset: at + 1, what, why: "not UTF-8" })?;
        if !name_ok(s) {
            return Err(DecodeError::BadName { offset: at + 1, what, why: "only letters, digits, '-' and '_'" });
        }
        Ok(s)
    }
}

/// IPv4-mapped addresses come back as IPv4.
pub fn addr_from_bytes(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn addr_to_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Decode one message.
pub fn decode(buf: &[u8]) -> Result<Batch<'_>, DecodeError> {
    if buf.len() > MAX_MESSAGE {
        return Err(DecodeError::Oversized { len: buf.len() });
    }
    let mut c = Cur { b: buf, o: 0 };
    if c.take(2, "magic").map_err(|_| DecodeError::BadMagic)? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let v = c.u8("version")?;
    if v != VERSION {
        return Err(DecodeError::WrongVersion { found: v });
    }
    let flags = c.u8("flags")?;
    if flags != 0 {
        return Err(DecodeError::BadFlags { flags });
    }
    let agent = c.name("agent id")?;
    let site = c.name("site")?;
    let count = c.u32("record count")?;
    // Every record is at least 2 bytes (tag + something): bound the vector by the message size.
    let rest = buf.len() - c.o;
    if count as usize > rest / 2 {
        return Err(DecodeError::BadCount { count, len: buf.len() });
    }
    let mut records = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let at = c.o;
        let tag = c.u8("record tag")?;
        let r = match tag {
            TAG_HELD => {
                let body = c.take(HELD_BODY, "held probe")?;
                Record::Held(held_body(body, at + 1)?)
            }
            TAG_SUMMARY => Record::Summary(summary_body(&mut c)?),
            TAG_ALERT => {
                let time_ns = c.u64("alert time")?;
                let at_len = c.o;
                let len = usize::from(c.u16("alert length")?);
                if len > MAX_ALERT {
                    return Err(DecodeError::BadField { offset: at_len, why: "alert longer than 16 KiB" });
                }
                Record::Alert { time_ns, json: c.str(len, "alert JSON")? }
            }
            tag => return Err(DecodeError::BadTag { offset: at, tag }),
        };
        records.push(r);
    }
    if c.o != buf.len() {
        return Err(DecodeError::TrailingBytes { offset: c.o, extra: buf.len() - c.o, count });
    }
    Ok(Batch { agent, site, records })
}

fn held_body(b: &[u8], at: usize) -> Result<Held, DecodeError> {
    let mut c = Cur { b, o: 0 };
    let time_ns = c.u64("time")?;
    let src = c.addr("source")?;
    let dst = c.addr("destination")?;
    let dport = c.u16("port")?;
    let proto = c.u8("protocol")?;
    let flags = c.u8("flags")?;
    let fp_hash = c.u32("fingerprint")?;
    if flags & !0b111 != 0 {
        return Err(DecodeError::BadField { offset: at + 43, why: "unknown held-probe flag bits" });
    }
    Ok(Held {
        time_ns,
        src,
        dst: (flags & 4 != 0).then_some(dst),
        dport: (flags & 2 != 0).then_some(dport),
        proto,
        failed: flags & 1 != 0,
        fp_hash,
    })
}

fn summary_body<'a>(c: &mut Cur<'a>) -> Result<Summary<'a>, DecodeError> {
    let time_ns = c.u64("time")?;
    let src = c.addr("source")?;
    let first_seen_ns = c.u64("first seen")?;
    let nz_at = c.o;
    let nonzero = c.u32("counter bitmap")?;
    if u64::from(nonzero) >> cnt::N != 0 {
        return Err(DecodeError::BadField { offset: nz_at, why: "counter bitmap names unknown counters" });
    }
    let mut counts = [0u32; cnt::N];
    for (i, v) in counts.iter_mut().enumerate() {
        if nonzero & (1 << i) != 0 {
            *v = c.varint()?;
        }
    }
    let dp_at = c.o;
    let distinct_ports = f32::from_bits(c.u32("distinct ports")?);
    let distinct_hosts = f32::from_bits(c.u32("distinct hosts")?);
    for (x, off) in [(distinct_ports, dp_at), (distinct_hosts, dp_at + 4)] {
        if !x.is_finite() || !(0.0..=1e9).contains(&x) {
            return Err(DecodeError::BadField { offset: off, why: "distinct estimate not a finite count" });
        }
    }
    let np_at = c.o;
    let n_ports = c.u8("port count")?;
    if usize::from(n_ports) > MAX_PORTS {
        return Err(DecodeError::BadField { offset: np_at, why: "more than 16 sample ports" });
    }
    let mut ports = [0u16; MAX_PORTS];
    for p in ports.iter_mut().take(usize::from(n_ports)) {
        *p = c.u16("sample port")?;
    }
    let nf_at = c.o;
    let n_fp = c.u8("fingerprint count")?;
    if usize::from(n_fp) > MAX_FPS {
        return Err(DecodeError::BadField { offset: nf_at, why: "more than 2 fingerprints" });
    }
    let mut fps = [Fp::default(); MAX_FPS];
    for fp in fps.iter_mut().take(usize::from(n_fp)) {
        let hash = c.u32("fingerprint hash")?;
        let initial_ttl = c.u8("fingerprint ttl")?;
        let t_at = c.o;
        let tool = c.u8("fingerprint tool")?;
        if usize::from(tool) >= scanwatch_common::tool::NAMES.len() {
            return Err(DecodeError::BadField { offset: t_at, why: "unknown tool hint" });
        }
        let len = usize::from(c.u8("fingerprint text length")?);
        let text = c.str(len, "fingerprint text")?;
        *fp = Fp { hash, initial_ttl, tool, text };
    }
    Ok(Summary { time_ns, src, first_seen_ns, counts, distinct_ports, distinct_hosts, n_ports, ports, n_fp, fps })
}

/// Builds batches (the agent side and tests). Records are appended already encoded.
#[derive(Debug, Clone)]
pub struct Encoder {
    buf: Vec<u8>,
    count: u32,
    count_at: usize,
}

impl Encoder {
    /// Panics never: over-long or bad names are a config validation error before this point;
    /// here they are cut to what the format allows.
    pub fn new(agent: &str, site: &str) -> Encoder {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(&MAGIC);
        buf.push(VERSION);
        buf.push(0);
        for n in [agent, site] {
            let n = &n.as_bytes()[..n.len().min(MAX_NAME)];
            buf.push(n.len() as u8);
            buf.extend_from_slice(n);
        }
        let count_at = buf.len();
        buf.extend_from_slice(&0u32.to_le_bytes());
        Encoder { buf, count: 0, count_at }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn records(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn bump(&mut self) {
        self.count += 1;
        let at = self.count_at;
        self.buf[at..at + 4].copy_from_slice(&self.count.to_le_bytes());
    }

    pub fn held(&mut self, h: &Held) {
        let b = &mut self.buf;
        b.push(TAG_HELD);
        b.extend_from_slice(&h.time_ns.to_le_bytes());
        b.extend_from_slice(&addr_to_bytes(h.src));
        b.extend_from_slice(&h.dst.map(addr_to_bytes).unwrap_or([0; 16]));
        b.extend_from_slice(&h.dport.unwrap_or(0).to_le_bytes());
        b.push(h.proto);
        b.push(u8::from(h.failed) | u8::from(h.dport.is_some()) << 1 | u8::from(h.dst.is_some()) << 2);
        b.extend_from_slice(&h.fp_hash.to_le_bytes());
        self.bump();
    }

    pub fn summary(&mut self, s: &Summary<'_>) {
        let b = &mut self.buf;
        b.push(TAG_SUMMARY);
        b.extend_from_slice(&s.time_ns.to_le_bytes());
        b.extend_from_slice(&addr_to_bytes(s.src));
        b.extend_from_slice(&s.first_seen_ns.to_le_bytes());
        let nonzero = s.counts.iter().enumerate().filter(|(_, c)| **c != 0).fold(0u32, |m, (i, _)| m | 1 << i);
        b.extend_from_slice(&nonzero.to_le_bytes());
        for c in s.counts.iter().filter(|c| **c != 0) {
            let mut v = *c;
            loop {
                let byte = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    b.push(byte);
                    break;
                }
                b.push(byte | 0x80);
            }
        }
        b.extend_from_slice(&s.distinct_ports.to_bits().to_le_bytes());
        b.extend_from_slice(&s.distinct_hosts.to_bits().to_le_bytes());
        let ports = s.ports();
        b.push(ports.len() as u8);
        for p in ports {
            b.extend_from_slice(&p.to_le_bytes());
        }
        let fps = s.fps();
        b.push(fps.len() as u8);
        for f in fps {
            b.extend_from_slice(&f.hash.to_le_bytes());
            b.push(f.initial_ttl);
            b.push(f.tool);
            let t = truncate_utf8(f.text, 255);
            b.push(t.len() as u8);
            b.extend_from_slice(t.as_bytes());
        }
        self.bump();
    }

    /// Alert JSON longer than [`MAX_ALERT`] is not encodable: returns false (the caller counts it).
    pub fn alert(&mut self, time_ns: u64, json: &str) -> bool {
        if json.len() > MAX_ALERT {
            return false;
        }
        let b = &mut self.buf;
        b.push(TAG_ALERT);
        b.extend_from_slice(&time_ns.to_le_bytes());
        b.extend_from_slice(&(json.len() as u16).to_le_bytes());
        b.extend_from_slice(json.as_bytes());
        self.bump();
        true
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Tool-hint index of a name (`FingerprintInfo::tool_hint`).
pub fn tool_index(name: &str) -> u8 {
    scanwatch_common::tool::NAMES.iter().position(|n| *n == name).unwrap_or(0) as u8
}

/// Fingerprint hash as the engine prints it (`{:08x}`), parsed back; 0 when not hex.
pub fn fp_hash_from_hex(s: &str) -> u32 {
    u32::from_str_radix(s, 16).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_batch() -> Vec<u8> {
        let mut e = Encoder::new("web-01", "dc1");
        e.held(&Held {
            time_ns: 1_700_000_000_000_000_000,
            src: "203.0.113.7".parse().expect("ip"),
            dst: Some("10.0.0.1".parse().expect("ip")),
            dport: Some(22),
            proto: 6,
            failed: true,
            fp_hash: 0,
        });
        let mut ports = [0u16; MAX_PORTS];
        ports[..3].copy_from_slice(&[22, 80, 443]);
        let mut fps = [Fp::default(); MAX_FPS];
        fps[0] = Fp { hash: 0xdead_beef, initial_ttl: 64, tool: 1, text: "v4:ttl=44/64:df=0:win=1024" };
        let mut counts = [0u32; cnt::N];
        counts[cnt::SYN] = 3;
        counts[cnt::SYN_CLOSED] = 2;
        e.summary(&Summary {
            time_ns: 1_700_000_000_500_000_000,
            src: "2001:db8::5".parse().expect("ip"),
            first_seen_ns: 42,
            counts,
            distinct_ports: 3.0,
            distinct_hosts: 1.0,
            n_ports: 3,
            ports,
            n_fp: 1,
            fps,
        });
        assert!(e.alert(1_700_000_001_000_000_000, r#"{"kind":"vertical_scan"}"#));
        e.finish()
    }

    #[test]
    fn round_trip() {
        let buf = sample_batch();
        let b = decode(&buf).expect("decodes");
        assert_eq!((b.agent, b.site, b.records.len()), ("web-01", "dc1", 3));
        let Record::Held(h) = b.records[0] else { panic!("held first: {:?}", b.records[0]) };
        assert_eq!((h.dport, h.failed, h.proto), (Some(22), true, 6));
        assert_eq!(h.src, "203.0.113.7".parse::<IpAddr>().expect("ip"), "IPv4 comes back as IPv4");
        let Record::Summary(s) = b.records[1] else { panic!("summary second") };
        assert_eq!(s.ports(), &[22, 80, 443]);
        assert_eq!(s.fps()[0].text, "v4:ttl=44/64:df=0:win=1024");
        assert_eq!(s.counts[cnt::SYN], 3);
        assert!(matches!(b.records[2], Record::Alert { json, .. } if json.contains("vertical_scan")));
    }

    #[test]
    fn rejections_name_reason_and_offset() {
        let good = sample_batch();
        let mut v = good.clone();
        v[2] = 2;
        assert_eq!(decode(&v).map(|_| ()), Err(DecodeError::WrongVersion { found: 2 }));
        assert_eq!(decode(&v).expect_err("version").reason(), "wrong_version");
        assert_eq!(decode(b"XX\x01\x00").expect_err("magic").reason(), "bad_magic");
        assert_eq!(decode(&vec![0u8; MAX_MESSAGE + 1]).expect_err("big").reason(), "oversized");
        // Every truncation point is an error, never a panic.
        for n in 0..good.len() {
            let e = decode(&good[..n]).expect_err("truncated message must not decode");
            assert!(
                matches!(e.reason(), "truncated" | "bad_magic" | "bad_count"),
                "cut at {n}: {e}"
            );
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(matches!(decode(&extra), Err(DecodeError::TrailingBytes { extra: 1, .. })));
        // A bad tag names its offset: the first record starts after the header.
        let mut t = good.clone();
        let first = 4 + 1 + 6 + 1 + 3 + 4;
        t[first] = 9;
        assert_eq!(decode(&t).map(|_| ()), Err(DecodeError::BadTag { offset: first, tag: 9 }));
        let mut name = good;
        name[5] = b'.';
        let e = decode(&name).expect_err("dot in agent id");
        assert!(e.to_string().contains("agent id at offset 5"), "{e}");
    }

    /// The cargo-fuzz seed corpus (fuzz/corpus/fleet_record) decodes or is rejected without a
    /// panic; the valid seeds decode.
    #[test]
    fn fuzz_corpus_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/fleet_record");
        let rd = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
        let mut n = 0;
        let mut ok = 0;
        for ent in rd {
            let p = ent.expect("dir entry").path();
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            if let Ok(b) = decode(&data) {
                ok += 1;
                // Re-encoding what was decoded gives a batch that decodes to the same records.
                let mut e = Encoder::new(b.agent, b.site);
                for r in &b.records {
                    match r {
                        Record::Held(h) => e.held(h),
                        Record::Summary(s) => e.summary(s),
                        Record::Alert { time_ns, json } => assert!(e.alert(*time_ns, json)),
                    }
                }
                let again = e.finish();
                assert_eq!(decode(&again).expect("re-encoded").records, b.records, "{}", p.display());
            }
            n += 1;
        }
        assert!(n >= 5 && ok >= 2, "corpus too small: {n} files, {ok} valid");
    }

    #[test]
    fn write_seed_corpus_when_asked() {
        // `SCANWATCH_WRITE_CORPUS=1 cargo test -p scanwatch --lib write_seed_corpus` regenerates
        // the valid seeds.
        if std::env::var_os("SCANWATCH_WRITE_CORPUS").is_none() {
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/fleet_record");
        std::fs::create_dir_all(&dir).expect("corpus dir");
        let good = sample_batch();
        std::fs::write(dir.join("valid-mixed"), &good).expect("write");
        let mut e = Encoder::new("a", "s");
        e.held(&Held { time_ns: 1, src: "10.0.0.1".parse().expect("ip"), dst: None, dport: None, proto: 1, failed: false, fp_hash: 0 });
        std::fs::write(dir.join("valid-held"), e.finish()).expect("write");
        let mut v = good.clone();
        v[2] = 7;
        std::fs::write(dir.join("wrong-version"), &v).expect("write");
        std::fs::write(dir.join("truncated"), &good[..good.len() / 2]).expect("write");
        let mut c = good.clone();
        c[15..19].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(dir.join("huge-count"), &c).expect("write");
        std::fs::write(dir.join("empty"), b"").expect("write");
    }
}
