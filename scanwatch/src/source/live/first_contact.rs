//! The agent's view of the XDP program's first-contact table: sources whose only probe so far is
//! held there have no per-source state, so the agent reads the table (memory-mapped: no syscall
//! per slot) and hands their probes to the destination-centric distributed-scan detector — a
//! scan that sends one probe from each of many addresses is still seen.
//!
//! A held TCP probe's outcome is not known in the kernel (its socket lookup is deferred until
//! admission); here it is taken from the host's listening sockets (`/proc/net/tcp{,6}`).
use std::{
    collections::HashSet,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::{Map, MapData};
use scanwatch_common::{cnt, probe, FcSlot, SrcKey, FC_BUMPS, FIRST_CONTACT_SLOTS};

use crate::{detect::HeldProbe, vocab::key_to_ip};

const IPPROTO_TCP: u8 = 6;

/// Read-only mapping of the FIRST_CONTACT array (created BPF_F_MMAPABLE).
pub struct FirstContactView {
    ptr: *const FcSlot,
    len: usize,
    _map: MapData,
}

impl FirstContactView {
    pub fn new(map: Map) -> anyhow::Result<Self> {
        let Map::Array(map) = map else {
            anyhow::bail!("FIRST_CONTACT is not an array map");
        };
        let len = FIRST_CONTACT_SLOTS as usize;
        let bytes = len * std::mem::size_of::<FcSlot>();
        // SAFETY: mapping a BPF array's value area read-only; checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            anyhow::bail!("cannot map the first-contact table: {}", std::io::Error::last_os_error());
        }
        Ok(FirstContactView { ptr: p as *const FcSlot, len, _map: map })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy of slot `i` (the kernel may be writing it: a torn slot is possible and harmless).
    pub fn slot(&self, i: usize) -> FcSlot {
        assert!(i < self.len, "slot {i} out of range");
        // SAFETY: `i` is within the mapping; FcSlot is plain integers (any bit pattern valid).
        unsafe { std::ptr::read_volatile(self.ptr.add(i)) }
    }
}

impl Drop for FirstContactView {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len * std::mem::size_of::<FcSlot>()) };
    }
}

/// Ports with a listening TCP socket in the agent's network namespace (any address).
#[derive(Debug, Default, Clone)]
pub struct Listeners {
    tcp: HashSet<u16>,
}

impl Listeners {
    pub fn read() -> Listeners {
        let mut tcp = HashSet::new();
        for entries in [procfs::net::tcp(), procfs::net::tcp6()].into_iter().flatten() {
            for e in entries {
                if e.state == procfs::net::TcpState::Listen {
                    tcp.insert(e.local_address.port());
                }
            }
        }
        Listeners { tcp }
    }

    pub fn from_ports(tcp: impl IntoIterator<Item = u16>) -> Listeners {
        Listeners { tcp: tcp.into_iter().collect() }
    }

    pub fn tcp_open(&self, port: u16) -> bool {
        self.tcp.contains(&port)
    }
}

/// The held probe of one slot, or None for an empty slot.
pub fn held_probe(slot: &FcSlot, listeners: &Listeners) -> Option<HeldProbe> {
    if slot.addr == [0, 0] {
        return None;
    }
    // SAFETY: [u64; 2] and [u8; 16] have the same size; any bit pattern is valid.
    let ip: IpAddr = key_to_ip(&SrcKey { addr: unsafe { std::mem::transmute::<[u64; 2], [u8; 16]>(slot.addr) } });
    let bumps = &slot.bumps[..(slot.nb as usize).min(FC_BUMPS)];
    let has = |c: usize| bumps.contains(&(c as u8));
    let (dport, failed) = if slot.kind == probe::PORT {
        // SYN, stealth and first-fragment probes had their socket lookup deferred; UDP probes are
        // held only when the kernel already found the port closed (FAILED).
        let tcp_probe = [cnt::SYN, cnt::NULL, cnt::FIN, cnt::XMAS, cnt::FRAG_FIRST].into_iter().any(has);
        let failed = has(cnt::FAILED) || (slot.proto == IPPROTO_TCP && tcp_probe && !listeners.tcp_open(slot.dport));
        (Some(slot.dport), failed)
    } else {
        (None, false)
    };
    Some(HeldProbe { ip, dport, dst: None, failed })
}

/// Reads the table and returns the probes not handed out before (slots whose content changed).
pub struct HeldReader {
    last: Vec<([u64; 2], u16)>,
}

impl Default for HeldReader {
    fn default() -> Self {
        HeldReader { last: vec![([0, 0], 0); FIRST_CONTACT_SLOTS as usize] }
    }
}

impl HeldReader {
    /// `listeners` is called (the socket tables read) only when some slot changed.
    pub fn read(&mut self, view: &FirstContactView, listeners: impl FnOnce() -> Listeners) -> Vec<HeldProbe> {
        let mut changed = Vec::new();
        for i in 0..view.len().min(self.last.len()) {
            let s = view.slot(i);
            let id = (s.addr, s.dport);
            if id == self.last[i] {
                continue;
            }
            self.last[i] = id;
            if s.addr != [0, 0] {
                changed.push(s);
            }
        }
        if changed.is_empty() {
            return Vec::new();
        }
        let listeners = listeners();
        changed.iter().filter_map(|s| held_probe(s, &listeners)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(ip: [u8; 4], kind: u8, dport: u16, bumps: &[usize]) -> FcSlot {
        let key = crate::vocab::ip_to_key(IpAddr::from(ip));
        // SAFETY: same size, any bit pattern valid.
        let addr: [u64; 2] = unsafe { std::mem::transmute(key.addr) };
        let mut s = FcSlot { addr, dport, kind, proto: IPPROTO_TCP, nb: bumps.len() as u8, ..FcSlot::default() };
        for (i, b) in bumps.iter().enumerate() {
            s.bumps[i] = *b as u8;
        }
        s
    }

    #[test]
    fn held_syn_outcome_comes_from_the_listening_sockets() {
        let l = Listeners::from_ports([22, 443]);
        let closed = held_probe(&slot([203, 0, 113, 5], probe::PORT, 8080, &[cnt::SYN]), &l).expect("held");
        assert_eq!(closed.ip, "203.0.113.5".parse::<IpAddr>().expect("ip"));
        assert_eq!((closed.dport, closed.failed), (Some(8080), true));
        let open = held_probe(&slot([203, 0, 113, 6], probe::PORT, 443, &[cnt::SYN]), &l).expect("held");
        assert!(!open.failed, "a SYN to a listening port is a success");
        let null = held_probe(&slot([203, 0, 113, 7], probe::PORT, 9, &[cnt::NULL]), &l).expect("held");
        assert!(null.failed);
        let ping = held_probe(&slot([203, 0, 113, 8], probe::HOST, 0, &[cnt::ICMP_ECHO]), &l).expect("held");
        assert_eq!((ping.dport, ping.failed), (None, false));
        let mut udp = slot([203, 0, 113, 9], probe::PORT, 161, &[cnt::UDP, cnt::UDP_CLOSED, cnt::FAILED]);
        udp.proto = 17;
        assert!(held_probe(&udp, &l).expect("held").failed);
        assert_eq!(held_probe(&FcSlot::default(), &l), None, "empty slot");
    }
}
