//! The listening-port filter: the XDP program skips the socket-table lookup for TCP ports on
//! which no socket can exist. The agent marks every local TCP port in use at start
//! (/proc/net/tcp{,6}, any state), `tp_sock_ports` marks each port that starts listening or
//! connecting afterwards (attached before the table is read, so nothing falls between), and only
//! then is `cfgflag::PORT_FILTER` switched on. Closed-port probes — most of any scan — then
//! cost no lookup, and a port with a socket is still looked up exactly.
use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{Map, MapData};
use aya::Ebpf;
use scanwatch_common::{cfgflag, XdpConfig, MAP_TCP_PORTS, PROG_TP_SOCK_PORTS, TCP_PORT_BYTES};

use crate::loader;

/// Read-write mapping of the TCP_PORTS map (created BPF_F_MMAPABLE): single-byte stores.
pub struct TcpPorts {
    ptr: *mut u8,
    _map: MapData,
}

// SAFETY: the mapping is owned by this value and only written with single-byte stores.
unsafe impl Send for TcpPorts {}

impl TcpPorts {
    pub fn new(map: Map) -> anyhow::Result<TcpPorts> {
        let Map::Array(map) = map else { anyhow::bail!("{MAP_TCP_PORTS} is not an array map") };
        // SAFETY: mapping a BPF array's value area read-write; checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                TCP_PORT_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            anyhow::bail!("cannot map {MAP_TCP_PORTS}: {}", std::io::Error::last_os_error());
        }
        Ok(TcpPorts { ptr: p.cast::<u8>(), _map: map })
    }

    /// Mark `port` as possibly in use.
    pub fn mark(&mut self, port: u16) {
        // SAFETY: `port` < 65,536 = the mapping's length.
        unsafe { std::ptr::write_volatile(self.ptr.add(usize::from(port)), 1) };
    }

    /// Forget `port` (tests: shows that a marked port is looked up and an unmarked one is not;
    /// the agent itself never clears a port while it runs).
    pub fn unmark(&mut self, port: u16) {
        // SAFETY: as in `mark`.
        unsafe { std::ptr::write_volatile(self.ptr.add(usize::from(port)), 0) };
    }

    pub fn is_marked(&self, port: u16) -> bool {
        // SAFETY: as in `mark`.
        unsafe { std::ptr::read_volatile(self.ptr.add(usize::from(port))) != 0 }
    }

    /// Ports marked now.
    pub fn count(&self) -> usize {
        (0..=u16::MAX).filter(|p| self.is_marked(*p)).count()
    }
}

impl Drop for TcpPorts {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast::<libc::c_void>(), TCP_PORT_BYTES) };
    }
}

/// Local ports of every TCP socket in the agent's network namespace (any state).
pub fn local_tcp_ports() -> HashSet<u16> {
    let mut out = HashSet::new();
    for entries in [procfs::net::tcp(), procfs::net::tcp6()].into_iter().flatten() {
        for e in entries {
            out.insert(e.local_address.port());
        }
    }
    out
}

/// Switch the filter on: attach `tp_sock_ports`, mark the ports in use, then set the flag in
/// `xdp` (written to the program's config map). On any failure the filter stays off (every
/// probe is looked up) and the reason is returned.
pub fn enable(ebpf: &mut Ebpf, xdp: &mut XdpConfig) -> Result<TcpPorts, String> {
    loader::attach_tracepoint(ebpf, PROG_TP_SOCK_PORTS, "sock", "inet_sock_set_state")?;
    fill(ebpf, xdp)
}

/// Mark the ports in use now and set the flag, without the tracepoint (the benchmark's object
/// has no tracepoint programs; nothing opens sockets during a benchmark).
pub fn fill(ebpf: &mut Ebpf, xdp: &mut XdpConfig) -> Result<TcpPorts, String> {
    let map = ebpf.take_map(MAP_TCP_PORTS).ok_or_else(|| format!("map {MAP_TCP_PORTS} missing"))?;
    let mut ports = TcpPorts::new(map).map_err(|e| e.to_string())?;
    for p in local_tcp_ports() {
        ports.mark(p);
    }
    xdp.flags |= cfgflag::PORT_FILTER;
    loader::write_config(ebpf, xdp).map_err(|e| e.to_string())?;
    Ok(ports)
}
