//! Interface modes (host / gateway / mirror): detected from the running system unless
//! `agent.interface_modes` names them, pushed into the XDP program (`IFACE_MODES`,
//! `cfgflag::FORWARDED`), and the host's own addresses it compares destinations with
//! (`LOCAL_ADDRS`), kept current while the agent runs.
//!
//! Detection, per interface: *mirror* when the interface is promiscuous and has no address
//! (a SPAN / TAP port: nothing arriving there is for this host); *gateway* when the kernel
//! forwards IPv4 or IPv6 packets arriving on it (`net.ipv4.conf.IF.forwarding`,
//! `net.ipv6.conf.IF.forwarding`); *host* otherwise.
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::Ebpf;
use scanwatch_common::{ifmode, SrcKey, LOCAL_ADDRS_ENTRIES, MAP_IFACE_MODES, MAP_LOCAL_ADDRS};

use crate::config::InterfaceMode;
use crate::vocab::ip_to_key;

/// One interface's mode and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceMode {
    pub name: String,
    pub mode: InterfaceMode,
    /// "config", or what detection saw ("ip_forward=1", "promiscuous, no address", ...).
    pub why: String,
}

impl std::fmt::Display for IfaceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.name, self.mode.name(), self.why)
    }
}

fn sysctl_on(path: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.trim() == "1")
}

/// `IFF_PROMISC` in `/sys/class/net/IF/flags`.
fn promiscuous(name: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{name}/flags"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & libc::IFF_PROMISC as u32 != 0)
}

/// What the running system says of `name` (see the module docs).
pub fn detect(name: &str, addrs: &[(String, IpAddr)]) -> (InterfaceMode, String) {
    let has_addr = addrs.iter().any(|(i, a)| i == name && !matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80));
    if promiscuous(name) && !has_addr {
        return (InterfaceMode::Mirror, "promiscuous, no address".into());
    }
    let v4 = sysctl_on(&format!("/proc/sys/net/ipv4/conf/{name}/forwarding"));
    let v6 = sysctl_on(&format!("/proc/sys/net/ipv6/conf/{name}/forwarding"));
    match (v4, v6) {
        (true, true) => (InterfaceMode::Gateway, "ipv4 and ipv6 forwarding on".into()),
        (true, false) => (InterfaceMode::Gateway, "ipv4 forwarding on".into()),
        (false, true) => (InterfaceMode::Gateway, "ipv6 forwarding on".into()),
        (false, false) => (InterfaceMode::Host, "forwarding off".into()),
    }
}

/// The mode of each interface: the config's when it names one, detected otherwise.
pub fn resolve(ifaces: &[String], configured: &BTreeMap<String, InterfaceMode>) -> Vec<IfaceMode> {
    let addrs = local_addresses();
    ifaces
        .iter()
        .map(|name| match configured.get(name) {
            Some(m) => IfaceMode { name: name.clone(), mode: *m, why: "config".into() },
            None => {
                let (mode, why) = detect(name, &addrs);
                IfaceMode { name: name.clone(), mode, why: format!("detected: {why}") }
            }
        })
        .collect()
}

/// Every address of every interface of this network namespace (with IPv4 broadcast
/// addresses), by interface name.
pub fn local_addresses() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below by freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut p = head;
    while !p.is_null() {
        // SAFETY: `p` is a node of the list getifaddrs returned (valid until freeifaddrs).
        let ifa = unsafe { &*p };
        // SAFETY: ifa_name is a NUL-terminated string of the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
        for (sa, want) in [(ifa.ifa_addr, true), (ifa.ifa_ifu, ifa.ifa_flags & libc::IFF_BROADCAST as u32 != 0)] {
            if want {
                if let Some(ip) = sockaddr_ip(sa) {
                    out.push((name.clone(), ip));
                }
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    out
}

fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: a non-null sockaddr of the list; its family says which struct it is.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let s = &*sa.cast::<libc::sockaddr_in>();
                Some(IpAddr::from(u32::from_be(s.sin_addr.s_addr).to_be_bytes()))
            }
            libc::AF_INET6 => {
                let s = &*sa.cast::<libc::sockaddr_in6>();
                Some(IpAddr::from(s.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The kernel side of the modes: the interfaces in gateway / mirror mode and the host's own
/// addresses.
pub struct ModeMaps {
    local: BpfHashMap<MapData, SrcKey, u32>,
    in_map: HashSet<IpAddr>,
}

impl ModeMaps {
    /// Write the modes into `IFACE_MODES` and the addresses into `LOCAL_ADDRS`. Returns None
    /// when every interface is in host mode (the program never reads the maps then).
    pub fn install(ebpf: &mut Ebpf, modes: &[IfaceMode]) -> anyhow::Result<Option<ModeMaps>> {
        let mut im: BpfHashMap<MapData, u32, u32> = super::maps::take(ebpf, MAP_IFACE_MODES)?;
        let mut any = false;
        for m in modes {
            let v = match m.mode {
                InterfaceMode::Host => continue,
                InterfaceMode::Gateway => ifmode::GATEWAY,
                InterfaceMode::Mirror => ifmode::MIRROR,
            };
            let i = ifindex(&m.name).ok_or_else(|| anyhow::anyhow!("interface {} has no index", m.name))?;
            im.insert(i, v, 0).map_err(|e| anyhow::anyhow!("map {MAP_IFACE_MODES}: {e}"))?;
            any = true;
        }
        if !any {
            return Ok(None);
        }
        let local = super::maps::take(ebpf, MAP_LOCAL_ADDRS)?;
        let mut mm = ModeMaps { local, in_map: HashSet::new() };
        mm.refresh()?;
        Ok(Some(mm))
    }

    /// Bring `LOCAL_ADDRS` up to date with the host's addresses (added and removed ones).
    pub fn refresh(&mut self) -> anyhow::Result<()> {
        let now: HashSet<IpAddr> = local_addresses().into_iter().map(|(_, a)| a).take(LOCAL_ADDRS_ENTRIES as usize).collect();
        for gone in self.in_map.difference(&now).copied().collect::<Vec<_>>() {
            let _ = self.local.remove(&ip_to_key(gone));
            self.in_map.remove(&gone);
        }
        for a in now {
            if !self.in_map.contains(&a) {
                self.local.insert(ip_to_key(a), 1, 0).map_err(|e| anyhow::anyhow!("map {MAP_LOCAL_ADDRS}: {e}"))?;
                self.in_map.insert(a);
            }
        }
        Ok(())
    }

    pub fn addresses(&self) -> usize {
        self.in_map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_host_and_its_addresses_are_listed() {
        let addrs = local_addresses();
        assert!(addrs.iter().any(|(i, a)| i == "lo" && a.is_loopback()), "{addrs:?}");
        let modes = resolve(&["lo".into(), "eth9".into()], &BTreeMap::from([("eth9".to_string(), InterfaceMode::Mirror)]));
        assert_eq!(modes[1], IfaceMode { name: "eth9".into(), mode: InterfaceMode::Mirror, why: "config".into() });
        assert!(modes[0].why.starts_with("detected: "), "{}", modes[0]);
        assert_ne!(modes[0].mode, InterfaceMode::Mirror);
    }
}
