//! A small writer of MaxMind DB files (format 2.0), enough for ASN databases in tests: an IPv4
//! search tree with 24-bit records, a data section of maps, strings and unsigned integers, and
//! the metadata block. Spec: <https://maxmind.github.io/MaxMind-DB/>.
use std::net::Ipv4Addr;

/// One network of the database and its ASN record.
pub struct AsnEntry<'a> {
    pub net: Ipv4Addr,
    pub prefix: u8,
    pub asn: u32,
    pub org: &'a str,
}

fn ctrl(out: &mut Vec<u8>, ty: u8, size: usize) {
    let (ext, t) = if ty > 7 { (Some(ty - 7), 0u8) } else { (None, ty) };
    let (s5, extra): (u8, Vec<u8>) = match size {
        0..=28 => (size as u8, vec![]),
        29..=284 => (29, vec![(size - 29) as u8]),
        285..=65_820 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
        _ => (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec()),
    };
    out.push((t << 5) | s5);
    if let Some(e) = ext {
        out.push(e);
    }
    out.extend(extra);
}

fn string(out: &mut Vec<u8>, s: &str) {
    ctrl(out, 2, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn uint(out: &mut Vec<u8>, ty: u8, v: u64) {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    ctrl(out, ty, 8 - skip);
    out.extend_from_slice(&b[skip..]);
}

/// Record of a search-tree node side.
#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

/// The database bytes. List less specific networks before the more specific ones inside them.
pub fn asn_database(entries: &[AsnEntry]) -> Vec<u8> {
    // Data section: one map per entry.
    let mut data = Vec::new();
    let mut offsets = Vec::new();
    for e in entries {
        offsets.push(data.len());
        ctrl(&mut data, 7, 2);
        string(&mut data, "autonomous_system_number");
        uint(&mut data, 6, u64::from(e.asn));
        string(&mut data, "autonomous_system_organization");
        string(&mut data, e.org);
    }
    // Search tree over the 32 address bits.
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
    for (e, off) in entries.iter().zip(&offsets) {
        assert!(e.prefix >= 1 && e.prefix <= 32, "prefix 1..=32");
        let bits = u32::from(e.net);
        let mut node = 0usize;
        for depth in 0..e.prefix {
            let bit = ((bits >> (31 - depth)) & 1) as usize;
            if depth == e.prefix - 1 {
                nodes[node][bit] = Rec::Data(*off);
            } else {
                node = match nodes[node][bit] {
                    Rec::Node(n) => n,
                    // A less specific network already here: both halves keep its record.
                    inherited => {
                        nodes.push([inherited, inherited]);
                        let n = nodes.len() - 1;
                        nodes[node][bit] = Rec::Node(n);
                        n
                    }
                };
            }
        }
    }
    let node_count = nodes.len();
    let mut out = Vec::new();
    for n in &nodes {
        for r in n {
            let v = match *r {
                Rec::Empty => node_count,
                Rec::Node(i) => i,
                Rec::Data(off) => node_count + 16 + off,
            };
            out.extend_from_slice(&(v as u32).to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    let mut meta = Vec::new();
    ctrl(&mut meta, 7, 9);
    string(&mut meta, "binary_format_major_version");
    uint(&mut meta, 5, 2);
    string(&mut meta, "binary_format_minor_version");
    uint(&mut meta, 5, 0);
    string(&mut meta, "build_epoch");
    uint(&mut meta, 9, 1_700_000_000);
    string(&mut meta, "database_type");
    string(&mut meta, "GeoLite2-ASN");
    string(&mut meta, "description");
    ctrl(&mut meta, 7, 1);
    string(&mut meta, "en");
    string(&mut meta, "scanwatch test ASN database");
    string(&mut meta, "ip_version");
    uint(&mut meta, 5, 4);
    string(&mut meta, "languages");
    ctrl(&mut meta, 11, 1);
    string(&mut meta, "en");
    string(&mut meta, "node_count");
    uint(&mut meta, 6, node_count as u64);
    string(&mut meta, "record_size");
    uint(&mut meta, 5, 24);
    out.extend(meta);
    out
}
