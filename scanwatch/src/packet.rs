//! Crafted packets for BPF_PROG_TEST_RUN (tests, benchmark): Ethernet (+VLAN) / IPv4 or IPv6
//! (+extension headers) / TCP, UDP or ICMP, with correct checksums unless asked otherwise.
use std::net::IpAddr;

pub use scanwatch_common::tcpflag::{ACK, FIN, PSH, RST, SYN, URG};

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp { sport: u16, dport: u16, seq: u32, flags: u8, window: u16, options: Vec<u8>, payload: Vec<u8> },
    Udp { sport: u16, dport: u16, payload: Vec<u8> },
    /// ICMP (v4) or ICMPv6 echo request.
    Echo,
    /// Any IP protocol: `bytes` are the whole L4 part, sent as is (no checksum computed).
    Raw { proto: u8, bytes: Vec<u8> },
}

#[derive(Clone, Debug)]
pub struct PacketSpec {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub ip_id: u16,
    pub df: bool,
    pub vlans: Vec<u16>,
    /// IPv6 extension headers to insert (next-header values 0, 43, 60 with 8-byte bodies).
    pub v6_ext: Vec<u8>,
    /// IPv4: (more_fragments, offset in 8-byte units).
    pub frag: Option<(bool, u16)>,
    pub bad_checksum: bool,
    pub l4: L4,
}

impl PacketSpec {
    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Self {
        Self {
            src,
            dst,
            ttl: 64,
            ip_id: 1,
            df: true,
            vlans: Vec::new(),
            v6_ext: Vec::new(),
            frag: None,
            bad_checksum: false,
            l4: L4::Tcp { sport, dport, seq: 1000, flags, window: 64240, options: Vec::new(), payload: Vec::new() },
        }
    }

    /// An SCTP packet whose only chunk has type `chunk` and `chunk_len` bytes (at least 4; the
    /// value bytes are zero), as nmap -sY (INIT, 1) / -sZ (COOKIE ECHO, 10) send. The CRC32c
    /// is left zero (the XDP program does not check it).
    pub fn sctp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, chunk: u8, chunk_len: u16) -> Self {
        let mut b = Vec::new();
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.push(chunk);
        b.push(0);
        b.extend_from_slice(&chunk_len.to_be_bytes());
        b.resize(12 + usize::from(chunk_len.max(4)).next_multiple_of(4), 0);
        Self { l4: L4::Raw { proto: 132, bytes: b }, ..Self::tcp(src, dst, 0, 0, 0) }
    }

    /// A packet of IP protocol `proto` with `len` zero bytes after the IP header (nmap -sO sends
    /// empty ones for the protocols it has no header for).
    pub fn ip_proto(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Self {
        Self { l4: L4::Raw { proto, bytes: vec![0; len] }, ..Self::tcp(src, dst, 0, 0, 0) }
    }

    /// An nmap-like SYN: window 1024, MSS 1460 only.
    pub fn nmap_syn(src: IpAddr, dst: IpAddr, dport: u16) -> Self {
        let mut p = Self::tcp(src, dst, 40000, dport, SYN);
        p.df = false;
        p.ttl = 44;
        if let L4::Tcp { window, options, .. } = &mut p.l4 {
            *window = 1024;
            *options = vec![2, 4, 0x05, 0xb4];
        }
        p
    }

    /// A Linux-stack SYN: MSS, SACK_OK, timestamps, NOP, window scale 7.
    pub fn linux_syn(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Self {
        let mut p = Self::tcp(src, dst, sport, dport, SYN);
        if let L4::Tcp { options, .. } = &mut p.l4 {
            *options = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
        }
        p
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = match &self.l4 {
            L4::Tcp { sport, dport, seq, flags, window, options, payload } => {
                let mut opts = options.clone();
                while opts.len() % 4 != 0 {
                    opts.push(0);
                }
                let doff = (20 + opts.len()) / 4;
                let mut t = Vec::new();
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&seq.to_be_bytes());
                t.extend_from_slice(&0u32.to_be_bytes());
                t.push((doff as u8) << 4);
                t.push(*flags);
                t.extend_from_slice(&window.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 0]);
                t.extend_from_slice(&opts);
                t.extend_from_slice(payload);
                t
            }
            L4::Udp { sport, dport, payload } => {
                let mut u = Vec::new();
                u.extend_from_slice(&sport.to_be_bytes());
                u.extend_from_slice(&dport.to_be_bytes());
                u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u.extend_from_slice(payload);
                u
            }
            L4::Echo => {
                let ty = if self.src.is_ipv4() { 8 } else { 128 };
                vec![ty, 0, 0, 0, 0, 1, 0, 1]
            }
            L4::Raw { bytes, .. } => bytes.clone(),
        };
        let proto = match (&self.l4, self.src.is_ipv4()) {
            (L4::Tcp { .. }, _) => 6u8,
            (L4::Udp { .. }, _) => 17,
            (L4::Echo, true) => 1,
            (L4::Echo, false) => 58,
            (L4::Raw { proto, .. }, _) => *proto,
        };
        // Checksum (pseudo header for TCP/UDP/ICMPv6).
        let csum_off = match proto {
            _ if matches!(self.l4, L4::Raw { .. }) => None,
            6 => Some(16),
            17 => Some(6),
            1 | 58 => Some(2),
            _ => None,
        };
        if let Some(off) = csum_off {
            let mut sum: u64 = 0;
            if proto != 1 {
                sum += pseudo_sum(self.src, self.dst, proto, l4.len());
            }
            sum += ones_sum(&l4);
            let mut c = !fold(sum);
            if self.bad_checksum {
                c = c.wrapping_add(0x1234);
            }
            l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
        let mut pkt = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for v in &self.vlans {
            pkt.extend_from_slice(&0x8100u16.to_be_bytes());
            pkt.extend_from_slice(&v.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                pkt.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut ip = vec![0x45, 0];
                ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
                ip.extend_from_slice(&self.ip_id.to_be_bytes());
                let mut fo: u16 = if self.df { 0x4000 } else { 0 };
                if let Some((mf, off)) = self.frag {
                    fo = (if mf { 0x2000 } else { 0 }) | (off & 0x1fff);
                }
                ip.extend_from_slice(&fo.to_be_bytes());
                ip.push(self.ttl);
                ip.push(proto);
                ip.extend_from_slice(&[0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                let c = !fold(ones_sum(&ip));
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                pkt.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                pkt.extend_from_slice(&0x86ddu16.to_be_bytes());
                let ext_len = self.v6_ext.len() * 8;
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
                ip.push(self.v6_ext.first().copied().unwrap_or(proto));
                ip.push(self.ttl);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                for (i, _) in self.v6_ext.iter().enumerate() {
                    let next = self.v6_ext.get(i + 1).copied().unwrap_or(proto);
                    ip.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                }
                pkt.extend_from_slice(&ip);
            }
            _ => panic!("src and dst must be the same IP family"),
        }
        pkt.extend_from_slice(&l4);
        pkt
    }
}

fn ones_sum(b: &[u8]) -> u64 {
    b.chunks(2).map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let (s, d): (Vec<u8>, Vec<u8>) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        _ => (Vec::new(), Vec::new()),
    };
    ones_sum(&s) + ones_sum(&d) + u64::from(proto) + len as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_tcp_checksums_verify() {
        let p = PacketSpec::linux_syn("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"), 1234, 80).build();
        let ip = &p[14..34];
        assert_eq!(fold(ones_sum(ip)), 0xffff, "IPv4 header checksum");
        let tcp = &p[34..];
        let sum = pseudo_sum("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"), 6, tcp.len()) + ones_sum(tcp);
        assert_eq!(fold(sum), 0xffff, "TCP checksum");
    }

    #[test]
    fn bad_checksum_is_bad() {
        let mut spec = PacketSpec::nmap_syn("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"), 80);
        spec.bad_checksum = true;
        let p = spec.build();
        let tcp = &p[34..];
        let sum = pseudo_sum("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"), 6, tcp.len()) + ones_sum(tcp);
        assert_ne!(fold(sum), 0xffff);
    }
}
