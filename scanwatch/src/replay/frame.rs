//! Link layers: every captured frame becomes an Ethernet frame the XDP program can parse
//! (non-Ethernet link types get a synthetic Ethernet header; VLAN tags inside Ethernet frames are
//! left for the XDP program, which parses them itself), and a small decoder gives the reply
//! tracker the addresses, ports and flags of a frame.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::outcome::{Icmp, Seen};

pub const LINKTYPE_NULL: u32 = 0;
pub const LINKTYPE_ETHERNET: u32 = 1;
pub const LINKTYPE_RAW: u32 = 101;
/// DLT_RAW as some systems write it in pcap headers.
pub const LINKTYPE_RAW_DLT12: u32 = 12;
pub const LINKTYPE_LOOP: u32 = 108;
pub const LINKTYPE_LINUX_SLL: u32 = 113;
pub const LINKTYPE_IPV4: u32 = 228;
pub const LINKTYPE_IPV6: u32 = 229;
pub const LINKTYPE_LINUX_SLL2: u32 = 276;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_ARP: u16 = 0x0806;

/// Why a frame could not be turned into Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSkip {
    /// A link type this reader does not know.
    UnsupportedLink(u32),
    /// Shorter than its link-layer header.
    ShortLinkHeader,
    /// Raw IP whose version nibble is neither 4 nor 6; BSD loopback with an unknown family.
    UnknownNetwork,
}

/// Synthetic MAC addresses (locally administered) for frames that had no Ethernet header.
const SYNTH_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SYNTH_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn synth(out: &mut Vec<u8>, ethertype: u16, payload: &[u8]) {
    out.clear();
    out.extend_from_slice(&SYNTH_DST);
    out.extend_from_slice(&SYNTH_SRC);
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(payload);
}

fn ip_ethertype(payload: &[u8]) -> Result<u16, FrameSkip> {
    match payload.first().map(|b| b >> 4) {
        Some(4) => Ok(ETH_P_IP),
        Some(6) => Ok(ETH_P_IPV6),
        _ => Err(FrameSkip::UnknownNetwork),
    }
}

/// Write `data` (captured with `linktype`) as an Ethernet frame into `out`.
pub fn to_ethernet(linktype: u32, data: &[u8], out: &mut Vec<u8>) -> Result<(), FrameSkip> {
    match linktype {
        LINKTYPE_ETHERNET => {
            if data.len() < 14 {
                return Err(FrameSkip::ShortLinkHeader);
            }
            out.clear();
            out.extend_from_slice(data);
        }
        LINKTYPE_RAW | LINKTYPE_RAW_DLT12 => synth(out, ip_ethertype(data)?, data),
        LINKTYPE_IPV4 => synth(out, ETH_P_IP, data),
        LINKTYPE_IPV6 => synth(out, ETH_P_IPV6, data),
        LINKTYPE_LINUX_SLL => {
            // packet type, ARPHRD, address length, 8 address bytes, protocol.
            if data.len() < 16 {
                return Err(FrameSkip::ShortLinkHeader);
            }
            synth(out, u16::from_be_bytes([data[14], data[15]]), &data[16..]);
        }
        LINKTYPE_LINUX_SLL2 => {
            // protocol, reserved, ifindex, ARPHRD, packet type, address length, 8 address bytes.
            if data.len() < 20 {
                return Err(FrameSkip::ShortLinkHeader);
            }
            synth(out, u16::from_be_bytes([data[0], data[1]]), &data[20..]);
        }
        LINKTYPE_NULL | LINKTYPE_LOOP => {
            if data.len() < 4 {
                return Err(FrameSkip::ShortLinkHeader);
            }
            let raw = [data[0], data[1], data[2], data[3]];
            // NULL stores the family in the writer's byte order, LOOP in network order.
            let fam = if linktype == LINKTYPE_LOOP {
                u32::from_be_bytes(raw)
            } else if u32::from_le_bytes(raw) < 256 {
                u32::from_le_bytes(raw)
            } else {
                u32::from_be_bytes(raw)
            };
            let et = match fam {
                2 => ETH_P_IP,
                10 | 24 | 28 | 30 => ETH_P_IPV6,
                _ => return Err(FrameSkip::UnknownNetwork),
            };
            synth(out, et, &data[4..]);
        }
        other => return Err(FrameSkip::UnsupportedLink(other)),
    }
    Ok(())
}

fn be16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Network and transport fields of an IP packet starting at `b` (no link header).
struct L3<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// L4 header and payload (cut to the captured bytes).
    l4: &'a [u8],
    /// Not a first/only fragment: no L4 header.
    later_fragment: bool,
}

fn parse_ip(b: &[u8]) -> Option<L3<'_>> {
    match b.first()? >> 4 {
        4 => {
            let ihl = usize::from(b[0] & 0x0f) * 4;
            if ihl < 20 || b.len() < ihl {
                return None;
            }
            let tot = usize::from(be16(b, 2)?).clamp(ihl, b.len().max(ihl));
            let frag = be16(b, 6)?;
            let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
            let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
            Some(L3 {
                src: src.into(),
                dst: dst.into(),
                proto: b[9],
                l4: &b[ihl..tot.min(b.len())],
                later_fragment: frag & 0x1fff != 0,
            })
        }
        6 => {
            if b.len() < 40 {
                return None;
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[8..24]);
            let src = Ipv6Addr::from(a);
            a.copy_from_slice(&b[24..40]);
            let dst = Ipv6Addr::from(a);
            let mut next = b[6];
            let mut off = 40;
            let mut later = false;
            for _ in 0..6 {
                match next {
                    0 | 43 | 60 => {
                        next = *b.get(off)?;
                        off += (usize::from(*b.get(off + 1)?) + 1) * 8;
                    }
                    44 => {
                        next = *b.get(off)?;
                        later = be16(b, off + 2)? & 0xfff8 != 0;
                        off += 8;
                    }
                    _ => break,
                }
            }
            Some(L3 { src: src.into(), dst: dst.into(), proto: next, l4: b.get(off..)?, later_fragment: later })
        }
        _ => None,
    }
}

/// The source address of an Ethernet frame (IP source or ARP sender: the key of the per-source
/// state the frame may touch) and what the reply tracker needs from it.
pub fn decode(eth: &[u8]) -> (Option<IpAddr>, Option<Seen>) {
    let Some((et, off)) = ethertype(eth) else { return (None, None) };
    if et == ETH_P_ARP {
        // Sender protocol address of an IPv4-over-Ethernet ARP packet.
        let spa = eth.get(off + 14..off + 18).map(|a| IpAddr::from([a[0], a[1], a[2], a[3]]));
        return (spa, None);
    }
    if et != ETH_P_IP && et != ETH_P_IPV6 {
        return (None, None);
    }
    let Some(l3) = eth.get(off..).and_then(parse_ip) else { return (None, None) };
    (Some(l3.src), seen(&l3))
}

fn ethertype(eth: &[u8]) -> Option<(u16, usize)> {
    let mut et = be16(eth, 12)?;
    let mut off = 14;
    for _ in 0..2 {
        if et == ETH_P_8021Q || et == ETH_P_8021AD {
            et = be16(eth, off + 2)?;
            off += 4;
        }
    }
    Some((et, off))
}

fn seen(l3: &L3<'_>) -> Option<Seen> {
    if l3.later_fragment {
        return None;
    }
    let l4 = l3.l4;
    match l3.proto {
        6 => Some(Seen::Tcp {
            src: l3.src,
            dst: l3.dst,
            sport: be16(l4, 0)?,
            dport: be16(l4, 2)?,
            flags: *l4.get(13)? & 0x3f,
            payload: l4.len() > usize::from(*l4.get(12)? >> 4) * 4,
        }),
        17 => Some(Seen::Udp { src: l3.src, dst: l3.dst, sport: be16(l4, 0)?, dport: be16(l4, 2)? }),
        // SCTP: common header (12 bytes), then the first chunk's type.
        132 => Some(Seen::Sctp { src: l3.src, dst: l3.dst, sport: be16(l4, 0)?, dport: be16(l4, 2)?, chunk: *l4.get(12)? }),
        1 | 58 => {
            let (ty, code) = (*l4.first()?, *l4.get(1)?);
            let v6 = l3.proto == 58;
            let unreachable = if v6 { ty == 1 } else { ty == 3 };
            if !unreachable {
                return None;
            }
            // The quoted datagram: the probe that could not be delivered.
            let inner = parse_ip(l4.get(8..)?)?;
            let (sport, dport) = (be16(inner.l4, 0)?, be16(inner.l4, 2)?);
            let port_unreachable = if v6 { code == 4 } else { code == 3 };
            Some(Seen::Unreachable {
                from: l3.src,
                probe_src: inner.src,
                probe_dst: inner.dst,
                proto: inner.proto,
                sport,
                dport,
                kind: if port_unreachable { Icmp::PortUnreachable } else { Icmp::Other(code) },
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{PacketSpec, L4};

    #[test]
    fn every_link_type_becomes_the_same_ethernet_payload() {
        let src: IpAddr = "10.1.2.3".parse().expect("ip");
        let dst: IpAddr = "10.9.9.9".parse().expect("ip");
        let eth = PacketSpec::nmap_syn(src, dst, 443).build();
        let ip = &eth[14..];
        let mut out = Vec::new();
        let mut sll = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(ip);
        let mut sll2 = vec![0x08, 0x00, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0];
        sll2.extend_from_slice(ip);
        let mut null = 2u32.to_le_bytes().to_vec();
        null.extend_from_slice(ip);
        for (lt, data) in [
            (LINKTYPE_RAW, ip.to_vec()),
            (LINKTYPE_IPV4, ip.to_vec()),
            (LINKTYPE_LINUX_SLL, sll),
            (LINKTYPE_LINUX_SLL2, sll2),
            (LINKTYPE_NULL, null),
        ] {
            to_ethernet(lt, &data, &mut out).expect("converts");
            assert_eq!(&out[12..14], &[0x08, 0x00], "link type {lt}");
            assert_eq!(&out[14..], ip, "link type {lt}");
            match decode(&out).1 {
                Some(Seen::Tcp { sport, dport, flags, .. }) => assert_eq!((sport, dport, flags), (eth_sport(&eth), 443, 0x02)),
                other => panic!("link type {lt}: {other:?}"),
            }
        }
        assert_eq!(to_ethernet(147, ip, &mut out), Err(FrameSkip::UnsupportedLink(147)));
        assert_eq!(to_ethernet(LINKTYPE_LINUX_SLL, &[0; 10], &mut out), Err(FrameSkip::ShortLinkHeader));
        assert_eq!(to_ethernet(LINKTYPE_RAW, &[0x55; 30], &mut out), Err(FrameSkip::UnknownNetwork));
    }

    fn eth_sport(eth: &[u8]) -> u16 {
        let ihl = usize::from(eth[14] & 0x0f) * 4;
        u16::from_be_bytes([eth[14 + ihl], eth[15 + ihl]])
    }

    #[test]
    fn sctp_first_chunk_is_read_and_short_packets_are_nothing() {
        let a: IpAddr = "10.1.2.3".parse().expect("ip");
        let b: IpAddr = "10.9.9.9".parse().expect("ip");
        let init = PacketSpec::sctp(a, b, 40000, 80, 1, 28).build();
        assert_eq!(decode(&init), (Some(a), Some(Seen::Sctp { src: a, dst: b, sport: 40000, dport: 80, chunk: 1 })));
        let abort = PacketSpec::sctp(b, a, 80, 40000, 6, 4).build();
        assert!(matches!(decode(&abort).1, Some(Seen::Sctp { chunk: 6, sport: 80, .. })));
        // Common header without a chunk: the source is known, nothing for the tracker.
        let short = PacketSpec::ip_proto(a, b, 132, 12).build();
        assert_eq!(decode(&short), (Some(a), None));
    }

    #[test]
    fn icmp_unreachable_names_the_quoted_probe() {
        let a: IpAddr = "10.1.2.3".parse().expect("ip");
        let b: IpAddr = "10.9.9.9".parse().expect("ip");
        let probe = PacketSpec { l4: L4::Udp { sport: 40000, dport: 161, payload: Vec::new() }, ..PacketSpec::tcp(a, b, 0, 0, 0) }.build();
        let mut icmp = PacketSpec { l4: L4::Echo, ..PacketSpec::tcp(b, a, 0, 0, 0) }.build();
        // Turn the echo into "port unreachable" quoting the probe's IP header + 8 bytes.
        let l4 = 14 + usize::from(icmp[14] & 0x0f) * 4;
        icmp.truncate(l4 + 8);
        icmp[l4] = 3;
        icmp[l4 + 1] = 3;
        icmp.extend_from_slice(&probe[14..14 + 28]);
        let tot = (icmp.len() - 14) as u16;
        icmp[16..18].copy_from_slice(&tot.to_be_bytes());
        match decode(&icmp).1 {
            Some(Seen::Unreachable { from, probe_src, probe_dst, proto, sport, dport, kind }) => {
                assert_eq!((from, probe_src, probe_dst, proto, sport, dport), (b, a, b, 17, 40000, 161));
                assert_eq!(kind, Icmp::PortUnreachable);
            }
            other => panic!("{other:?}"),
        }
    }
}
