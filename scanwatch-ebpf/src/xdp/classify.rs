//! Classification: TCP flag shapes, honeyports, socket-table outcomes, UDP and ICMP probes.
use aya_ebpf::{
    bindings::bpf_sock_tuple,
    helpers::generated::{bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    programs::XdpContext,
    EbpfContext,
};
use scanwatch_common::{
    cfgflag, cnt, probe, stat, XdpConfig,
};

use crate::{
    maps::{
        Obs, HONEYPORTS, TCP_PORTS,
    },
    parse::{be16_at, be32_at},
};

use scanwatch_common::tcpflag::{ACK, FIN, PSH, RST, SYN, URG};

use super::ctx::*;
use super::fast_path::*;
use super::fingerprint::*;

#[inline(always)]
pub(super) fn is_honeyport(proto: u8, port: u16) -> bool {
    let slot = if proto == IPPROTO_UDP { 1024 } else { 0 };
    match HONEYPORTS.get(slot + (port as u32 >> 6)) {
        Some(w) => *w & (1u64 << (port & 63)) != 0,
        None => false,
    }
}

/// Build the lookup tuple (as seen on ingress) and ask the kernel's socket table.
#[inline(never)]
pub(super) fn socket_exists(ctx: &XdpContext, l3: &L3, sport: u16, dport: u16, tcp: bool) -> bool {
    // Not zeroed: the helper reads only the first `size` bytes, all written below (zeroing the
    // 36-byte tuple costs a byte-loop memset on this target).
    let mut tu = core::mem::MaybeUninit::<bpf_sock_tuple>::uninit();
    // SAFETY: only fields are written through this reference before the helper reads them.
    let t = unsafe { &mut *tu.as_mut_ptr() };
    let size;
    if l3.v6 == 0 {
        // Writing a union member is safe.
        t.__bindgen_anon_1.ipv4.saddr = l3.src.v4_ne();
        t.__bindgen_anon_1.ipv4.daddr = l3.dst.v4_ne();
        t.__bindgen_anon_1.ipv4.sport = sport.to_be();
        t.__bindgen_anon_1.ipv4.dport = dport.to_be();
        size = 12u32;
    } else {
        // SAFETY: [u8;16] and [u32;4] have equal size.
        unsafe {
            t.__bindgen_anon_1.ipv6.saddr = core::mem::transmute::<[u64; 2], [u32; 4]>(l3.src.w);
            t.__bindgen_anon_1.ipv6.daddr = core::mem::transmute::<[u64; 2], [u32; 4]>(l3.dst.w);
        }
        t.__bindgen_anon_1.ipv6.sport = sport.to_be();
        t.__bindgen_anon_1.ipv6.dport = dport.to_be();
        size = 36u32;
    }
    let netns = u32::MAX as u64; // BPF_F_CURRENT_NETNS
    // SAFETY: helper calls with a valid context and stack tuple; every non-null socket released.
    unsafe {
        let sk = if tcp {
            bpf_skc_lookup_tcp(ctx.as_ptr(), t, size, netns, 0)
        } else {
            bpf_sk_lookup_udp(ctx.as_ptr(), t, size, netns, 0)
        };
        if sk.is_null() {
            false
        } else {
            bpf_sk_release(sk as *mut _);
            true
        }
    }
}

/// No TCP socket can use local port `port` (the listening-port filter is on and no socket was
/// ever seen on it): the socket lookup would find nothing, so it is skipped.
#[inline(always)]
pub(super) fn tcp_port_unused(cfg: &XdpConfig, port: u16) -> bool {
    if cfg.flags & cfgflag::PORT_FILTER == 0 {
        return false;
    }
    match TCP_PORTS.get_ptr(0) {
        // SAFETY: the single array value, valid for this run; a u16 index is in bounds of its
        // 65,536 bytes.
        Some(p) => unsafe { *(p as *const u8).add(port as usize) == 0 },
        None => false,
    }
}

/// Classify a TCP segment into `obs`. Returns Ok(true) for the established-data fast path
/// (nothing else to do). SYNs and stealth shapes are classified from the header alone; their
/// socket lookup and fingerprint are deferred until the source is admitted (`deferred_tcp`).
#[inline(always)]
pub(super) fn classify_tcp(ctx: &XdpContext, stats: &mut Stats, l3: &L3, cfg: &XdpConfig, obs: &mut Obs) -> Result<bool, u32> {
    let t = l3.l4;
    let sport = be16_at(ctx, t).map_err(|_| stat::MAL_TCP)?;
    let dport = be16_at(ctx, t + 2).map_err(|_| stat::MAL_TCP)?;
    obs.cur.sport = sport;
    obs.cur.dport = dport;
    if l3.frag == 1 {
        // First fragment (nmap -f): the TCP header may be split across fragments.
        obs.count(cnt::FRAG_FIRST);
        obs.cur.kind = probe::PORT;
        return Ok(false);
    }
    let df = be16_at(ctx, t + 12).map_err(|_| stat::MAL_TCP)?;
    let (doff_b, flags) = ((df >> 8) as u8, df as u8);
    // The fixed 20-byte header must be present.
    be16_at(ctx, t + 18).map_err(|_| stat::MAL_TCP)?;
    let doff = ((doff_b >> 4) as usize) * 4;
    if doff < 20 || doff > l3.l4_len {
        return Err(stat::MAL_TCP_DOFF);
    }
    let payload = l3.l4_len - doff;
    let f = flags & 0x3f;
    obs.flags = flags;

    // A pending connection's first data segment or close (protocol depth).
    if f & SYN == 0 && (payload > 0 || f & (FIN | RST) != 0) {
        let s = super::depth::Seg { sport, dport, flags: f, off: t + doff, payload };
        super::depth::segment(ctx, stats, l3, &s);
    }
    // Fast path: established-flow data segments never touch per-source state.
    if f & (SYN | RST | FIN) == 0 && f & ACK != 0 && payload > 0 {
        stats[stat::ESTABLISHED_FAST as usize] += 1;
        return Ok(true);
    }
    let lookup = cfg.flags & cfgflag::LOOKUP_SOCKETS != 0;
    if is_honeyport(IPPROTO_TCP, dport) && f & ACK == 0 {
        obs.honey = 1;
        obs.count(cnt::HONEYPORT);
    }

    if f & SYN != 0 && f & ACK == 0 {
        // The common option malformations (first option of length 0/1 or overrunning the
        // header) are caught here, from one 2-byte read, so a malformed SYN is counted as
        // malformed and nothing else even when its source is new.
        if doff > 20 {
            let o = be16_at(ctx, t + 20).map_err(|_| stat::MAL_TCP_OPTS)?;
            let (k0, l0) = ((o >> 8) as u8, (o & 0xff) as usize);
            if k0 > 1 && (l0 < 2 || l0 > doff - 20) {
                return Err(stat::MAL_TCP_OPTS);
            }
        }
        stats[stat::SYN as usize] += 1;
        obs.count(cnt::SYN);
        obs.cur.kind = probe::PORT;
        if f & FIN != 0 {
            obs.count(cnt::SYNFIN);
        }
        obs.deferred = DEFER_FP | if lookup { DEFER_LOOKUP } else { 0 };
        return Ok(false);
    }

    // Stealth shapes that are never legitimate, whatever the socket table says.
    let stealth = if f == 0 {
        cnt::NULL
    } else if f == FIN {
        cnt::FIN
    } else if f == FIN | PSH | URG {
        cnt::XMAS
    } else if f & (SYN | ACK | RST) == 0 {
        cnt::CUSTOM_FLAGS
    } else {
        cnt::N
    };
    if stealth != cnt::N {
        obs.count(stealth);
        obs.cur.kind = probe::PORT;
        if lookup {
            obs.deferred = DEFER_LOOKUP;
        }
        return Ok(false);
    }
    if !lookup {
        return Ok(false);
    }
    // Shapes that are normal inside a connection and scan-like outside one: only the socket
    // table can tell, so they are looked up before any state is touched.
    let orphan = if f == SYN | ACK {
        cnt::UNSOLICITED_SYNACK
    } else if f & RST != 0 {
        cnt::UNSOLICITED_RST
    } else if f == FIN | ACK {
        cnt::MAIMON
    } else if f == ACK && payload == 0 {
        cnt::ACK
    } else {
        cnt::N
    };
    // SYN-ACK and RST answer our own connects, whose local port may not be marked yet (it is
    // bound after SYN_SENT): only the lookup can tell for them.
    let filterable = orphan == cnt::MAIMON || orphan == cnt::ACK;
    if orphan != cnt::N && ((filterable && tcp_port_unused(cfg, dport)) || !socket_exists(ctx, l3, sport, dport, true)) {
        obs.count(orphan);
        if obs.suspected == 0 {
            mark_suspect(obs.source_hash(&l3.src));
        }
        if orphan == cnt::MAIMON || orphan == cnt::ACK {
            obs.cur.kind = probe::PORT;
        }
    }
    Ok(false)
}

/// The work deferred from `classify_tcp` until the source is admitted: the SYN's fingerprint
/// and checksum (when `DEFER_FP` is still set: sampled per source) and the socket lookup that
/// tells an open port from a closed one.
#[inline(always)]
pub(super) fn deferred_tcp(ctx: &XdpContext, stats: &mut Stats, l3: &L3, cfg: &XdpConfig, obs: &mut Obs) {
    let t = l3.l4;
    let f = obs.flags & 0x3f;
    let syn = f & SYN != 0;
    if syn && obs.deferred & DEFER_FP != 0 {
        // classify_tcp checked the fixed header is present and the data offset is sane.
        let (Ok(seq), Ok(df), Ok(window)) = (be32_at(ctx, t + 4), be16_at(ctx, t + 12), be16_at(ctx, t + 14)) else {
            return;
        };
        let doff = ((df >> 12) as usize) * 4;
        let payload = l3.l4_len.saturating_sub(doff);
        if doff >= 20 && fingerprint(ctx, stats, l3, t, doff, &mut obs.fp).is_ok() {
            obs.fp.window = window;
            obs.fp.payload_len = payload as u16;
            finish_fingerprint(l3, ((seq as u64) << 16) | obs.cur.dport as u64, &mut obs.fp);
            obs.has_fp = 1;
        }
        if cfg.flags & cfgflag::VERIFY_CSUM != 0 && obs.has_fp != 0 && tcp_csum_bad(ctx, l3, t, &obs.fp) {
            obs.count(cnt::BADSUM);
        }
    }
    if obs.deferred & DEFER_LOOKUP != 0 {
        let open = !tcp_port_unused(cfg, obs.cur.dport) && socket_exists(ctx, l3, obs.cur.sport, obs.cur.dport, true);
        if syn {
            obs.count(if open { cnt::SYN_OPEN } else { cnt::SYN_CLOSED });
            if open && f & ACK == 0 {
                super::depth::note_syn(l3, obs.cur.sport, obs.cur.dport);
            }
        }
        if !open {
            obs.count(cnt::FAILED);
        }
    }
}


#[inline(never)]
pub(super) fn classify_udp(ctx: &XdpContext, l3: &L3, cfg: &XdpConfig, obs: &mut Obs) -> Result<(), u32> {
    let sport = be16_at(ctx, l3.l4).map_err(|_| stat::MAL_UDP)?;
    let dport = be16_at(ctx, l3.l4 + 2).map_err(|_| stat::MAL_UDP)?;
    be16_at(ctx, l3.l4 + 6).map_err(|_| stat::MAL_UDP)?;
    obs.cur.sport = sport;
    obs.cur.dport = dport;
    if is_honeyport(IPPROTO_UDP, dport) {
        obs.honey = 1;
        obs.count(cnt::HONEYPORT);
    }
    if cfg.flags & cfgflag::LOOKUP_SOCKETS != 0 && !socket_exists(ctx, l3, sport, dport, false) {
        obs.count(cnt::UDP);
        obs.count(cnt::UDP_CLOSED);
        obs.count(cnt::FAILED);
        obs.cur.kind = probe::PORT;
    } else if obs.fwd == 0 {
        note_udp_peer(&l3.src.w, sport);
    }
    Ok(())
}

/// SCTP chunk types that open an association from the peer's side.
const SCTP_CHUNK_INIT: u8 = 1;
const SCTP_CHUNK_COOKIE_ECHO: u8 = 10;

/// SCTP: the 12-byte common header and the first chunk's header (type, flags, length) only —
/// INIT must be alone in its packet and COOKIE ECHO first (RFC 9260 6.10), so the first chunk
/// tells a probe. INIT (nmap -sY) and COOKIE ECHO (nmap -sZ) are port probes; the outcome is
/// unknown here (no socket lookup helper for SCTP). Malformed: under 16 bytes, a first chunk
/// length under 4, or an INIT shorter than its 20-byte fixed part.
#[inline(never)]
pub(super) fn classify_sctp(ctx: &XdpContext, l3: &L3, obs: &mut Obs) -> Result<(), u32> {
    if l3.frag == 1 {
        // First fragment: the chunk may be elsewhere; its ports are the probe.
        let sport = be16_at(ctx, l3.l4).map_err(|_| stat::MAL_SCTP)?;
        let dport = be16_at(ctx, l3.l4 + 2).map_err(|_| stat::MAL_SCTP)?;
        obs.cur.sport = sport;
        obs.cur.dport = dport;
        obs.count(cnt::FRAG_FIRST);
        obs.cur.kind = probe::PORT;
        return Ok(());
    }
    if l3.l4_len < 16 {
        return Err(stat::MAL_SCTP);
    }
    let sport = be16_at(ctx, l3.l4).map_err(|_| stat::MAL_SCTP)?;
    let dport = be16_at(ctx, l3.l4 + 2).map_err(|_| stat::MAL_SCTP)?;
    let ty = (be16_at(ctx, l3.l4 + 12).map_err(|_| stat::MAL_SCTP)? >> 8) as u8;
    let clen = be16_at(ctx, l3.l4 + 14).map_err(|_| stat::MAL_SCTP)? as usize;
    if clen < 4 || clen > l3.l4_len - 12 || (ty == SCTP_CHUNK_INIT && clen < 20) {
        return Err(stat::MAL_SCTP);
    }
    obs.cur.sport = sport;
    obs.cur.dport = dport;
    if ty == SCTP_CHUNK_INIT {
        obs.count(cnt::SCTP_INIT);
        obs.cur.kind = probe::PORT;
    } else if ty == SCTP_CHUNK_COOKIE_ECHO {
        obs.count(cnt::SCTP_COOKIE);
        obs.cur.kind = probe::PORT;
    }
    Ok(())
}

#[inline(never)]
pub(super) fn classify_icmp(ctx: &XdpContext, l3: &L3, obs: &mut Obs) -> Result<(), u32> {
    let ty = (be16_at(ctx, l3.l4).map_err(|_| stat::MAL_ICMP)? >> 8) as u8;
    be16_at(ctx, l3.l4 + 2).map_err(|_| stat::MAL_ICMP)?;
    if (l3.v6 == 0 && ty == 8) || (l3.v6 != 0 && ty == 128) {
        obs.count(cnt::ICMP_ECHO);
        // Ping sweeps: host fan-out only.
        obs.cur.kind = probe::HOST;
    }
    Ok(())
}


/// A datagram reached a local socket (or the lookup is off): its sender is a UDP peer, and the
/// local process's datagrams back to it are replies (`UDP_PEERS`).
#[inline(always)]
fn note_udp_peer(src: &[u64; 2], sport: u16) {
    let (entry, byte) = scanwatch_common::udp_peer_slot(src, sport);
    if let Some(p) = crate::maps::UDP_PEERS.get_ptr_mut(entry) {
        let epoch = scanwatch_common::udp_peer_epoch(super::ctx::now_ns());
        // SAFETY: the map value lives while the program runs; `byte` < UDP_PEER_BYTES by
        // construction (masked to 12 bits); a racing store of another CPU writes an epoch too.
        unsafe {
            let slot = (p as *mut u8).add(byte & (scanwatch_common::UDP_PEER_BYTES - 1));
            if *slot != epoch {
                *slot = epoch;
            }
        }
    }
}
