//! Addresses: CIDR networks, the canonical form of an address (IPv4-mapped IPv6 becomes IPv4),
//! internal ranges, and the kernel's source key (an address as 16 bytes) in both directions.
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use scanwatch_common::SrcKey;

/// An IPv4 or IPv6 network in CIDR notation. IPv4-mapped IPv6 addresses match IPv4 networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max}"));
        }
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Does this network contain `ip`?
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = canonical_ip(*ip);
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.addr
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address"))?;
        let addr = canonical_ip(addr);
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .map_err(|_| format!("{s:?} has a bad prefix"))?,
            None => {
                if addr.is_ipv4() {
                    32
                } else {
                    128
                }
            }
        };
        Cidr::new(addr, prefix).map_err(|e| format!("{s:?}: {e}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, as the kernel keys sources) becomes plain IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// Is the address internal (RFC 1918, ULA, loopback, link-local, CGNAT, unspecified)?
pub fn is_internal(ip: &IpAddr) -> bool {
    match canonical_ip(*ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 CGNAT
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 ULA
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
        }
    }
}

pub fn key_to_ip(k: &SrcKey) -> IpAddr {
    let a = Ipv6Addr::from(k.addr);
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

pub fn ip_to_key(ip: IpAddr) -> SrcKey {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    SrcKey { addr: v6.octets() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let c: Cidr = "10.1.0.0/16".parse().expect("cidr");
        assert!(c.contains(&"10.1.200.3".parse().expect("ip")));
        assert!(!c.contains(&"10.2.0.1".parse().expect("ip")));
        // IPv4-mapped IPv6 as keyed by the kernel.
        assert!(c.contains(&"::ffff:10.1.2.3".parse().expect("ip")));
        let v6: Cidr = "fd00:1::/32".parse().expect("cidr");
        assert!(v6.contains(&"fd00:1:ffff::1".parse().expect("ip")));
        assert!(!v6.contains(&"fd00:2::1".parse().expect("ip")));
        assert!(!v6.contains(&"10.1.2.3".parse().expect("ip")));
        let host: Cidr = "192.0.2.7".parse().expect("cidr");
        assert_eq!(host.prefix(), 32);
        assert!(host.contains(&"192.0.2.7".parse().expect("ip")));
        let all: Cidr = "0.0.0.0/0".parse().expect("cidr");
        assert!(all.contains(&"8.8.8.8".parse().expect("ip")));
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().expect("cidr").to_string(),
            "10.0.0.0/8"
        );
        assert!("10.0.0.0/40".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
    }
}
