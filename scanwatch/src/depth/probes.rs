//! Service-detection probes of nmap (`nmap -sV`), byte for byte as in nmap's
//! `nmap-service-probes` (the `Probe TCP NAME q|...|` lines). A first client payload equal to one
//! of these is a version probe, not a client of the service. The unit test
//! `probes_match_the_installed_nmap_service_probes` re-reads the file nmap installs and checks
//! every entry here against it.
//!
//! The NULL probe sends nothing: it is the silent wait (connect, read the banner, close), seen as
//! a connection closed without client data.

/// (nmap probe name, exact bytes).
pub const NMAP_TCP_PROBES: &[(&str, &[u8])] = &[
    ("GenericLines", b"\r\n\r\n"),
    ("GetRequest", b"GET / HTTP/1.0\r\n\r\n"),
    ("HTTPOptions", b"OPTIONS / HTTP/1.0\r\n\r\n"),
    ("RTSPRequest", b"OPTIONS / RTSP/1.0\r\n\r\n"),
    (
        "RPCCheck",
        b"\x80\0\0\x28\x72\xFE\x1D\x13\0\0\0\0\0\0\0\x02\0\x01\x86\xA0\0\x01\x97\x7C\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
    ),
    ("DNSVersionBindReqTCP", b"\0\x1E\0\x06\x01\0\0\x01\0\0\0\0\0\0\x07version\x04bind\0\0\x10\0\x03"),
    ("DNSStatusRequestTCP", b"\0\x0C\0\0\x10\0\0\0\0\0\0\0\0\0"),
    ("Hello", b"EHLO\r\n"),
    ("Help", b"HELP\r\n"),
    (
        "SSLSessionReq",
        b"\x16\x03\0\0S\x01\0\0O\x03\0?G\xd7\xf7\xba,\xee\xea\xb2`~\xf3\0\xfd\x82{\xb9\xd5\x96\xc8w\x9b\xe6\xc4\xdb<=\xdbo\xef\x10n\0\0(\0\x16\0\x13\0\x0a\0f\0\x05\0\x04\0e\0d\0c\0b\0a\0`\0\x15\0\x12\0\x09\0\x14\0\x11\0\x08\0\x06\0\x03\x01\0",
    ),
    ("TerminalServerCookie", b"\x03\0\0*%\xe0\0\0\0\0\0Cookie: mstshash=nmap\r\n\x01\0\x08\0\x03\0\0\0"),
    (
        "TLSSessionReq",
        b"\x16\x03\0\0\x69\x01\0\0\x65\x03\x03U\x1c\xa7\xe4random1random2random3random4\0\0\x0c\0/\0\x0a\0\x13\x009\0\x04\0\xff\x01\0\0\x30\0\x0d\0,\0*\0\x01\0\x03\0\x02\x06\x01\x06\x03\x06\x02\x02\x01\x02\x03\x02\x02\x03\x01\x03\x03\x03\x02\x04\x01\x04\x03\x04\x02\x01\x01\x01\x03\x01\x02\x05\x01\x05\x03\x05\x02",
    ),
    (
        "SMBProgNeg",
        b"\0\0\0\xa4\xff\x53\x4d\x42\x72\0\0\0\0\x08\x01\x40\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x40\x06\0\0\x01\0\0\x81\0\x02PC NETWORK PROGRAM 1.0\0\x02MICROSOFT NETWORKS 1.03\0\x02MICROSOFT NETWORKS 3.0\0\x02LANMAN1.0\0\x02LM1.2X002\0\x02Samba\0\x02NT LANMAN 1.0\0\x02NT LM 0.12\0",
    ),
    ("X11Probe", b"\x6C\0\x0B\0\0\0\0\0\0\0\0\0"),
    ("FourOhFourRequest", b"GET /nice%20ports%2C/Tri%6Eity.txt%2ebak HTTP/1.0\r\n\r\n"),
    ("LPDString", b"\x01default\n"),
    ("LDAPBindReq", b"\x30\x0c\x02\x01\x01\x60\x07\x02\x01\x02\x04\0\x80\0"),
    (
        "SIPOptions",
        b"OPTIONS sip:nm SIP/2.0\r\nVia: SIP/2.0/TCP nm;branch=foo\r\nFrom: <sip:nm@nm>;tag=root\r\nTo: <sip:nm2@nm2>\r\nCall-ID: 50000\r\nCSeq: 42 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\nContact: <sip:nm@nm>\r\nAccept: application/sdp\r\n\r\n",
    ),
    ("TerminalServer", b"\x03\0\0\x0b\x06\xe0\0\0\0\0\0"),
    ("JavaRMI", b"\x4a\x52\x4d\x49\0\x02\x4b"),
    ("NessusTPv10", b"< NTP/1.0 >\n"),
    ("Socks4", b"\x04\x01\x00\x16\x7f\x00\x00\x01root\x00"),
    ("OfficeScan", b"GET /?CAVIT HTTP/1.1\r\n\r\n"),
    (
        "ms-sql-s",
        b"\x12\x01\x00\x34\x00\x00\x00\x00\x00\x00\x15\x00\x06\x01\x00\x1b\x00\x01\x02\x00\x1c\x00\x0c\x03\x00\x28\x00\x04\xff\x08\x00\x01\x55\x00\x00\x00\x4d\x53\x53\x51\x4c\x53\x65\x72\x76\x65\x72\x00\x48\x0f\x00\x00",
    ),
    ("Memcache", b"stats\r\n"),
    ("ajp", b"\x12\x34\x00\x01\x0a"),
    ("hp-pjl", b"\x1b%-12345X@PJL INFO ID\x0d\x0a\x1b%-12345X\x0d\x0a"),
    ("afp", b"\x00\x03\0\x01\0\0\0\0\0\0\0\x02\0\0\0\0\x0f\0"),
    ("WWWOFFLEctrlstat", b"WWWOFFLE STATUS\r\n"),
    ("HELP4STOMP", b"HELP\n\n\0"),
    ("dominoconsole", b"#ST\n"),
];

/// The nmap probe a first payload is, if any. `total_len` is the segment's full length (the
/// sample may be a prefix of it): a probe matches when the lengths agree and the sample is the
/// probe's prefix.
pub fn nmap_probe(sample: &[u8], total_len: usize) -> Option<&'static str> {
    NMAP_TCP_PROBES
        .iter()
        .find(|(_, p)| p.len() == total_len && !sample.is_empty() && p.starts_with(sample))
        .map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode nmap's `q|...|` escapes (`\0`, `\xHH`, `\r`, `\n`, `\t`, `\\`, `\|`).
    fn decode_nmap(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' && i + 1 < b.len() {
                match b[i + 1] {
                    b'0' => out.push(0),
                    b'r' => out.push(b'\r'),
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'x' if i + 3 < b.len() => {
                        let h = std::str::from_utf8(&b[i + 2..i + 4]).expect("hex utf8");
                        out.push(u8::from_str_radix(h, 16).expect("hex escape"));
                        i += 4;
                        continue;
                    }
                    c => out.push(c),
                }
                i += 2;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn probes_match_the_installed_nmap_service_probes() {
        let path = "/usr/share/nmap/nmap-service-probes";
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path}: {e} (nmap is installed by `cargo xtask setup`)"));
        let mut found = 0;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("Probe TCP ") else { continue };
            let Some((name, q)) = rest.split_once(" q|") else { continue };
            let Some(body) = q.rsplit_once('|').map(|(b, _)| b) else { continue };
            if let Some((_, mine)) = NMAP_TCP_PROBES.iter().find(|(n, _)| *n == name) {
                assert_eq!(decode_nmap(body), mine.to_vec(), "probe {name} differs from {path}");
                found += 1;
            }
        }
        assert_eq!(found, NMAP_TCP_PROBES.len(), "every embedded probe is in {path}");
    }

    #[test]
    fn probe_lookup_needs_the_full_length() {
        assert_eq!(nmap_probe(b"GET / HTTP/1.0\r\n\r\n", 18), Some("GetRequest"));
        assert_eq!(nmap_probe(b"GET / HTTP/1.0\r\n", 18), Some("GetRequest"));
        assert_eq!(nmap_probe(b"GET / HTTP/1.0\r\n\r\n", 40), None);
        assert_eq!(nmap_probe(b"", 0), None);
    }
}
