//! Inbound detector. Parses Ethernet / VLAN / IPv4 / IPv6 (+ extension headers) / TCP / UDP /
//! ICMP, keeps bounded per-source state for scan-shaped packets and emits immediate events.
//! Fails open: every error path returns XDP_PASS and bumps a malformed-by-reason counter.
use aya_ebpf::{
    bindings::{bpf_sock_tuple, xdp_action},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    },
    macros::xdp,
    programs::XdpContext,
    EbpfContext,
};
use scanwatch_common::{
    addr_fold, cfgflag, cnt, hll_slot, initial_ttl, kind, mix32, stat, thr, tool, EventHeader,
    Fingerprint, FpKey, FpValue, InboundEvent, SrcKey, SrcState, XdpConfig, FP_MAX_OPTS,
    FP_PER_SOURCE, SAMPLE_PORTS, WIN_HOST_BITS, WIN_PORT_BITS,
};

use crate::{
    maps::{BLOCKLIST, CONFIG, EVENTS, FINGERPRINTS, HONEYPORTS, SOURCES, STATS, ZERO_SRC},
    parse::{addr16_at, be16_at, be32_at, csum_fold, u8_at, v4_mapped_at},
};

/// Load-time setting (the loader rewrites it): drop packets from BLOCKLIST sources.
#[unsafe(no_mangle)]
static ENFORCE_BLOCKLIST: u32 = 0;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;

type Stats = [u64; stat::N as usize];

#[xdp]
pub fn scanwatch_xdp(ctx: XdpContext) -> u32 {
    let Some(stats) = STATS.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU value, only this CPU touches it while the program runs.
    let stats = unsafe { &mut *stats };
    stats[stat::PACKETS as usize] += 1;
    match try_xdp(&ctx, stats) {
        Ok(action) => action,
        Err(reason) => {
            if (reason as usize) < stats.len() {
                stats[reason as usize] += 1;
            }
            xdp_action::XDP_PASS
        }
    }
}

/// What the L3 parser learned, handed to the L4 handlers.
struct L3 {
    src: [u8; 16],
    dst: [u8; 16],
    /// Offset of the L4 header.
    l4: usize,
    /// Bytes of L4 header + payload according to the IP header.
    l4_len: usize,
    proto: u8,
    ttl: u8,
    df: u8,
    ip_id: u16,
    v6: u8,
    /// 0 = not a fragment, 1 = first fragment, 2 = later fragment.
    frag: u8,
}

#[inline(always)]
fn try_xdp(ctx: &XdpContext, stats: &mut Stats) -> Result<u32, u32> {
    let mut off = 14usize;
    let mut ethertype = be16_at(ctx, 12).map_err(|_| stat::MAL_ETH)?;
    // Up to two VLAN tags (802.1Q / 802.1ad, QinQ).
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16_at(ctx, off + 2).map_err(|_| stat::MAL_VLAN)?;
        off += 4;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = be16_at(ctx, off + 2).map_err(|_| stat::MAL_VLAN)?;
            off += 4;
        }
    }
    let l3 = match ethertype {
        ETH_P_IP => {
            stats[stat::IPV4 as usize] += 1;
            parse_ipv4(ctx, off)?
        }
        ETH_P_IPV6 => {
            stats[stat::IPV6 as usize] += 1;
            parse_ipv6(ctx, off)?
        }
        _ => {
            stats[stat::OTHER_L3 as usize] += 1;
            return Ok(xdp_action::XDP_PASS);
        }
    };

    // SAFETY: read of a load-time constant the loader may have rewritten.
    if unsafe { core::ptr::read_volatile(&ENFORCE_BLOCKLIST) } != 0 {
        let key = SrcKey { addr: l3.src };
        // SAFETY: value is read only to test presence.
        if unsafe { BLOCKLIST.get(&key) }.is_some() {
            stats[stat::BLOCKED as usize] += 1;
            return Ok(xdp_action::XDP_DROP);
        }
    }

    if l3.frag == 2 {
        // Non-first fragment: no L4 header to look at.
        let cfg = config();
        with_source(stats, &cfg, &l3, |s, _| bump(s, cnt::FRAG_LATER));
        return Ok(xdp_action::XDP_PASS);
    }
    match l3.proto {
        IPPROTO_TCP => {
            stats[stat::TCP as usize] += 1;
            handle_tcp(ctx, stats, &l3)
        }
        IPPROTO_UDP => {
            stats[stat::UDP as usize] += 1;
            handle_udp(ctx, stats, &l3)
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            stats[stat::ICMP as usize] += 1;
            handle_icmp(ctx, stats, &l3)
        }
        _ => Ok(xdp_action::XDP_PASS),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize) -> Result<L3, u32> {
    let vihl = u8_at(ctx, off).map_err(|_| stat::MAL_IPV4)?;
    // Whole fixed header must be present.
    be32_at(ctx, off + 16).map_err(|_| stat::MAL_IPV4)?;
    if vihl >> 4 != 4 {
        return Err(stat::MAL_IPV4);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(stat::MAL_IPV4_IHL);
    }
    let tot_len = be16_at(ctx, off + 2).map_err(|_| stat::MAL_IPV4)? as usize;
    if tot_len < ihl {
        return Err(stat::MAL_IPV4);
    }
    let ip_id = be16_at(ctx, off + 4).map_err(|_| stat::MAL_IPV4)?;
    let frag_off = be16_at(ctx, off + 6).map_err(|_| stat::MAL_IPV4)?;
    let ttl = u8_at(ctx, off + 8).map_err(|_| stat::MAL_IPV4)?;
    let proto = u8_at(ctx, off + 9).map_err(|_| stat::MAL_IPV4)?;
    let src = v4_mapped_at(ctx, off + 12).map_err(|_| stat::MAL_IPV4)?;
    let dst = v4_mapped_at(ctx, off + 16).map_err(|_| stat::MAL_IPV4)?;
    let frag = if frag_off & 0x1fff != 0 {
        2
    } else if frag_off & 0x2000 != 0 {
        1
    } else {
        0
    };
    Ok(L3 {
        src,
        dst,
        l4: off + ihl,
        l4_len: tot_len - ihl,
        proto,
        ttl,
        df: ((frag_off & 0x4000) != 0) as u8,
        ip_id,
        v6: 0,
        frag,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize) -> Result<L3, u32> {
    let ver = u8_at(ctx, off).map_err(|_| stat::MAL_IPV6)?;
    if ver >> 4 != 6 {
        return Err(stat::MAL_IPV6);
    }
    let payload_len = be16_at(ctx, off + 4).map_err(|_| stat::MAL_IPV6)? as usize;
    let mut next = u8_at(ctx, off + 6).map_err(|_| stat::MAL_IPV6)?;
    let hop = u8_at(ctx, off + 7).map_err(|_| stat::MAL_IPV6)?;
    let src = addr16_at(ctx, off + 8).map_err(|_| stat::MAL_IPV6)?;
    let dst = addr16_at(ctx, off + 24).map_err(|_| stat::MAL_IPV6)?;
    let mut l4 = off + 40;
    let mut ext_len = 0usize;
    let mut frag = 0u8;
    // A bounded chain of extension headers.
    for _ in 0..6 {
        match next {
            0 | 43 | 60 => {
                let nh = u8_at(ctx, l4).map_err(|_| stat::MAL_IPV6_EXT)?;
                let len = (u8_at(ctx, l4 + 1).map_err(|_| stat::MAL_IPV6_EXT)? as usize + 1) * 8;
                next = nh;
                l4 += len;
                ext_len += len;
            }
            44 => {
                let nh = u8_at(ctx, l4).map_err(|_| stat::MAL_IPV6_EXT)?;
                let fo = be16_at(ctx, l4 + 2).map_err(|_| stat::MAL_IPV6_EXT)?;
                frag = if fo & 0xfff8 != 0 {
                    2
                } else if fo & 1 != 0 {
                    1
                } else {
                    0
                };
                next = nh;
                l4 += 8;
                ext_len += 8;
            }
            51 => {
                let nh = u8_at(ctx, l4).map_err(|_| stat::MAL_IPV6_EXT)?;
                let len = (u8_at(ctx, l4 + 1).map_err(|_| stat::MAL_IPV6_EXT)? as usize + 2) * 4;
                next = nh;
                l4 += len;
                ext_len += len;
            }
            _ => break,
        }
        if l4 > 512 {
            return Err(stat::MAL_IPV6_EXT);
        }
    }
    if ext_len > payload_len {
        return Err(stat::MAL_IPV6_EXT);
    }
    Ok(L3 {
        src,
        dst,
        l4,
        l4_len: payload_len - ext_len,
        proto: next,
        ttl: hop,
        df: 1,
        ip_id: 0,
        v6: 1,
        frag,
    })
}

#[inline(always)]
fn config() -> XdpConfig {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => XdpConfig::default_config(),
    }
}

#[inline(always)]
fn bump(s: &mut SrcState, idx: usize) {
    if idx < cnt::N {
        s.counts[idx] = s.counts[idx].wrapping_add(1);
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// Find or create the source's state and run `f` on it. Failures to insert are counted.
#[inline(always)]
fn with_source<F: FnOnce(&mut SrcState, &mut Stats)>(
    stats: &mut Stats,
    cfg: &XdpConfig,
    l3: &L3,
    f: F,
) -> Option<*mut SrcState> {
    let key = SrcKey { addr: l3.src };
    let now = now_ns();
    let ptr = match SOURCES.get_ptr_mut(&key) {
        Some(p) => p,
        None => {
            let zero = ZERO_SRC.get_ptr(0)?;
            // SAFETY: the per-CPU zero value is never written.
            let zero = unsafe { &*zero };
            // BPF_NOEXIST: another CPU may have inserted it meanwhile; then just use it.
            if SOURCES.insert(&key, zero, 1).is_ok() {
                stats[stat::NEW_SOURCES as usize] += 1;
            }
            match SOURCES.get_ptr_mut(&key) {
                Some(p) => p,
                None => {
                    stats[stat::SOURCE_INSERT_FAILED as usize] += 1;
                    return None;
                }
            }
        }
    };
    // SAFETY: LRU value pointer valid for this program run; races between CPUs only skew counts.
    let s = unsafe { &mut *ptr };
    if s.first_seen_ns == 0 {
        s.first_seen_ns = now;
        s.win_start_ns = now;
    }
    s.last_seen_ns = now;
    if now.wrapping_sub(s.win_start_ns) > cfg.short_window_ns {
        s.win_start_ns = now;
        s.win_ports = 0;
        s.win_hosts = 0;
        s.emitted = 0;
        let mut i = 0;
        while i < WIN_PORT_BITS / 64 {
            s.win_port_bits[i] = 0;
            i += 1;
        }
        let mut i = 0;
        while i < WIN_HOST_BITS / 64 {
            s.win_host_bits[i] = 0;
            i += 1;
        }
    }
    bump(s, cnt::PACKETS);
    f(s, stats);
    Some(ptr)
}

/// Record a probe to (dst, dport): sketches, exact sample, short-window distinct counts and the
/// immediate threshold event.
#[inline(always)]
fn record_probe(stats: &mut Stats, cfg: &XdpConfig, s: &mut SrcState, l3: &L3, sport: u16, dport: u16, flags: u8) {
    record_target(stats, cfg, s, l3, sport, dport, flags, true);
}

/// `track_port` is false for portless probes (ICMP echo): only the host fan-out counts.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "flat packet fields")]
fn record_target(stats: &mut Stats, cfg: &XdpConfig, s: &mut SrcState, l3: &L3, sport: u16, dport: u16, flags: u8, track_port: bool) {
    // Short-window distinct ports (bitmap: exact up to collisions, ~n²/2048 at n ports).
    let pb = (mix32(dport as u32) as usize) & (WIN_PORT_BITS - 1);
    let (w, b) = (pb >> 6, pb & 63);
    if track_port && w < WIN_PORT_BITS / 64 && s.win_port_bits[w] & (1u64 << b) == 0 {
        s.win_port_bits[w] |= 1u64 << b;
        s.win_ports += 1;
    }
    let hfold = addr_fold(&l3.dst);
    let hb = (hfold as usize) & (WIN_HOST_BITS - 1);
    let (w, b) = (hb >> 6, hb & 63);
    if w < WIN_HOST_BITS / 64 && s.win_host_bits[w] & (1u64 << b) == 0 {
        s.win_host_bits[w] |= 1u64 << b;
        s.win_hosts += 1;
    }
    // Lifetime distinct ports and hosts (HyperLogLog).
    let (i, r) = hll_slot(dport as u32);
    if track_port && i < s.port_hll.len() && s.port_hll[i] < r {
        s.port_hll[i] = r;
    }
    let (i, r) = hll_slot(hfold);
    if i < s.host_hll.len() && s.host_hll[i] < r {
        s.host_hll[i] = r;
    }
    // Exact sample of the first distinct ports.
    let n = s.n_sample as usize;
    if track_port && n < SAMPLE_PORTS {
        let mut seen = false;
        let mut k = 0;
        while k < SAMPLE_PORTS {
            if k < n && s.sample_ports[k] == dport {
                seen = true;
            }
            k += 1;
        }
        if !seen {
            s.sample_ports[n] = dport;
            s.n_sample += 1;
        }
    }
    if (sport == 53 || sport == 88) && dport != sport {
        bump(s, cnt::SRCPORT_TRICK);
    }
    let mut bits = 0u32;
    if cfg.port_threshold != 0 && s.win_ports >= cfg.port_threshold && s.emitted & thr::PORTS == 0 {
        bits |= thr::PORTS;
    }
    if cfg.host_threshold != 0 && s.win_hosts >= cfg.host_threshold && s.emitted & thr::HOSTS == 0 {
        bits |= thr::HOSTS;
    }
    if bits != 0 {
        s.emitted |= bits;
        emit(stats, kind::THRESHOLD, l3, &Ev { sport, dport, flags, detail: bits, win_ports: s.win_ports, win_hosts: s.win_hosts }, None);
    }
}

/// Event fields besides the addresses (kept in one struct so `emit` stays a 5-argument call).
struct Ev {
    sport: u16,
    dport: u16,
    flags: u8,
    detail: u32,
    win_ports: u32,
    win_hosts: u32,
}

#[inline(never)]
fn emit(stats: &mut Stats, k: u32, l3: &L3, a: &Ev, fp: Option<&Fingerprint>) {
    match EVENTS.reserve::<InboundEvent>(0) {
        Some(mut e) => {
            // Written field by field straight into ring memory: no 104-byte stack temporary.
            let ev = e.as_mut_ptr();
            // SAFETY: `ev` points at a reserved, writable InboundEvent-sized record.
            unsafe {
                (*ev).hdr = EventHeader { kind: k, _pad: 0, ts_ns: now_ns() };
                (*ev).src = SrcKey { addr: l3.src };
                (*ev).dst = SrcKey { addr: l3.dst };
                (*ev).sport = a.sport;
                (*ev).dport = a.dport;
                (*ev).proto = l3.proto;
                (*ev).tcp_flags = a.flags;
                (*ev)._pad = 0;
                (*ev).detail = a.detail;
                (*ev).win_ports = a.win_ports;
                (*ev).win_hosts = a.win_hosts;
                (*ev).fp = match fp {
                    Some(f) => *f,
                    None => Fingerprint::default(),
                };
            }
            e.submit(0);
            stats[stat::EVENTS as usize] += 1;
        }
        None => stats[stat::EVENTS_DROPPED as usize] += 1,
    }
}

#[inline(always)]
fn is_honeyport(proto: u8, port: u16) -> bool {
    let key = ((proto as u32) << 16) | port as u32;
    // SAFETY: presence test only.
    unsafe { HONEYPORTS.get(&key) }.is_some()
}

/// Build the lookup tuple (as seen on ingress) and ask the kernel's socket table.
#[inline(always)]
fn socket_exists(ctx: &XdpContext, l3: &L3, sport: u16, dport: u16, tcp: bool, any_state: bool) -> bool {
    // SAFETY: zeroed POD tuple.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size;
    if l3.v6 == 0 {
        // SAFETY: writing the ipv4 member of a POD union.
        unsafe {
            t.__bindgen_anon_1.ipv4.saddr =
                u32::from_ne_bytes([l3.src[12], l3.src[13], l3.src[14], l3.src[15]]);
            t.__bindgen_anon_1.ipv4.daddr =
                u32::from_ne_bytes([l3.dst[12], l3.dst[13], l3.dst[14], l3.dst[15]]);
            t.__bindgen_anon_1.ipv4.sport = sport.to_be();
            t.__bindgen_anon_1.ipv4.dport = dport.to_be();
        }
        size = 12u32;
    } else {
        // SAFETY: writing the ipv6 member of a POD union; [u8;16] and [u32;4] have equal size.
        unsafe {
            t.__bindgen_anon_1.ipv6.saddr = core::mem::transmute::<[u8; 16], [u32; 4]>(l3.src);
            t.__bindgen_anon_1.ipv6.daddr = core::mem::transmute::<[u8; 16], [u32; 4]>(l3.dst);
            t.__bindgen_anon_1.ipv6.sport = sport.to_be();
            t.__bindgen_anon_1.ipv6.dport = dport.to_be();
        }
        size = 36u32;
    }
    let netns = u32::MAX as u64; // BPF_F_CURRENT_NETNS
    // SAFETY: helper calls with a valid context and stack tuple; every non-null socket released.
    unsafe {
        let sk = if tcp {
            let _ = any_state;
            bpf_skc_lookup_tcp(ctx.as_ptr(), &mut t, size, netns, 0)
        } else {
            bpf_sk_lookup_udp(ctx.as_ptr(), &mut t, size, netns, 0)
        };
        if sk.is_null() {
            false
        } else {
            bpf_sk_release(sk as *mut _);
            true
        }
    }
}

#[inline(never)]
fn handle_tcp(ctx: &XdpContext, stats: &mut Stats, l3: &L3) -> Result<u32, u32> {
    let t = l3.l4;
    let sport = be16_at(ctx, t).map_err(|_| stat::MAL_TCP)?;
    let dport = be16_at(ctx, t + 2).map_err(|_| stat::MAL_TCP)?;
    let cfg = config();
    if l3.frag == 1 {
        // First fragment (nmap -f): the TCP header may be split across fragments.
        with_source(stats, &cfg, l3, |s, stats| {
            bump(s, cnt::FRAG_FIRST);
            record_probe(stats, &cfg, s, l3, sport, dport, 0);
        });
        return Ok(xdp_action::XDP_PASS);
    }
    let seq = be32_at(ctx, t + 4).map_err(|_| stat::MAL_TCP)?;
    let doff_b = u8_at(ctx, t + 12).map_err(|_| stat::MAL_TCP)?;
    let flags = u8_at(ctx, t + 13).map_err(|_| stat::MAL_TCP)?;
    let window = be16_at(ctx, t + 14).map_err(|_| stat::MAL_TCP)?;
    // The fixed 20-byte header must be present.
    be16_at(ctx, t + 18).map_err(|_| stat::MAL_TCP)?;
    let doff = ((doff_b >> 4) as usize) * 4;
    if doff < 20 || doff > l3.l4_len {
        return Err(stat::MAL_TCP_DOFF);
    }
    let payload = l3.l4_len - doff;
    let f = flags & 0x3f;

    // Fast path: established-flow data segments never touch per-source state.
    if f & (SYN | RST | FIN) == 0 && f & ACK != 0 && payload > 0 {
        stats[stat::ESTABLISHED_FAST as usize] += 1;
        return Ok(xdp_action::XDP_PASS);
    }
    let lookup = cfg.flags & cfgflag::LOOKUP_SOCKETS != 0;

    if f & SYN != 0 && f & ACK == 0 {
        stats[stat::SYN as usize] += 1;
        let fp = fingerprint(ctx, stats, l3, t, doff, window, seq, dport, payload);
        let badsum = cfg.flags & cfgflag::VERIFY_CSUM != 0 && tcp_csum_bad(ctx, l3, t);
        let open = if lookup { socket_exists(ctx, l3, sport, dport, true, false) } else { true };
        let honey = is_honeyport(IPPROTO_TCP, dport);
        let mut new_fp = false;
        let ptr = with_source(stats, &cfg, l3, |s, stats| {
            bump(s, cnt::SYN);
            if f & FIN != 0 {
                bump(s, cnt::SYNFIN);
            }
            if badsum {
                bump(s, cnt::BADSUM);
            }
            if lookup {
                if open {
                    bump(s, cnt::SYN_OPEN);
                } else {
                    bump(s, cnt::SYN_CLOSED);
                    bump(s, cnt::FAILED);
                }
            }
            if let Ok(ref fp) = fp {
                s.tool_hint = fp.tool_hint;
                let mut known = false;
                let mut k = 0;
                while k < FP_PER_SOURCE {
                    if k < s.n_fp as usize && s.fp_hashes[k] == fp.hash {
                        known = true;
                    }
                    k += 1;
                }
                if !known && (s.n_fp as usize) < FP_PER_SOURCE {
                    let n = s.n_fp as usize;
                    if n < FP_PER_SOURCE {
                        s.fp_hashes[n] = fp.hash;
                    }
                    s.n_fp += 1;
                    new_fp = true;
                }
            }
            record_probe(stats, &cfg, s, l3, sport, dport, flags);
        });
        if let (Ok(fp), true) = (fp.as_ref(), new_fp) {
            let now = now_ns();
            let key = FpKey { src: SrcKey { addr: l3.src }, hash: fp.hash };
            let v = FpValue { fp: *fp, count: 1, first_seen_ns: now, last_seen_ns: now };
            let _ = FINGERPRINTS.insert(&key, &v, 0);
            stats[stat::NEW_FINGERPRINTS as usize] += 1;
            let n = match ptr {
                // SAFETY: pointer from with_source, still valid in this run.
                Some(p) => unsafe { (*p).n_fp },
                None => 0,
            };
            emit(stats, kind::NEW_FINGERPRINT, l3, &Ev { sport, dport, flags, detail: n, win_ports: 0, win_hosts: 0 }, Some(fp));
        }
        if honey {
            honeypot_hit(ctx, stats, &cfg, l3, sport, dport, flags);
        }
        return Ok(xdp_action::XDP_PASS);
    }

    // Stealth shapes that are never legitimate, whatever the socket table says.
    let stealth = match f {
        0 => Some(cnt::NULL),
        x if x == FIN => Some(cnt::FIN),
        x if x == FIN | PSH | URG => Some(cnt::XMAS),
        _ => None,
    };
    if let Some(c) = stealth {
        let open = !lookup || socket_exists(ctx, l3, sport, dport, true, true);
        with_source(stats, &cfg, l3, |s, stats| {
            bump(s, c);
            if !open {
                bump(s, cnt::FAILED);
            }
            record_probe(stats, &cfg, s, l3, sport, dport, flags);
        });
        if is_honeyport(IPPROTO_TCP, dport) {
            honeypot_hit(ctx, stats, &cfg, l3, sport, dport, flags);
        }
        return Ok(xdp_action::XDP_PASS);
    }
    if !lookup {
        return Ok(xdp_action::XDP_PASS);
    }
    // Shapes that are normal inside a connection and scan-like outside one.
    let orphan = if f == SYN | ACK {
        Some(cnt::UNSOLICITED_SYNACK)
    } else if f & RST != 0 {
        Some(cnt::UNSOLICITED_RST)
    } else if f == FIN | ACK {
        Some(cnt::MAIMON)
    } else if f == ACK && payload == 0 {
        Some(cnt::ACK)
    } else {
        None
    };
    if let Some(c) = orphan {
        if !socket_exists(ctx, l3, sport, dport, true, true) {
            with_source(stats, &cfg, l3, |s, stats| {
                bump(s, c);
                if c == cnt::MAIMON || c == cnt::ACK {
                    record_probe(stats, &cfg, s, l3, sport, dport, flags);
                }
            });
        }
    }
    Ok(xdp_action::XDP_PASS)
}

#[inline(always)]
fn honeypot_hit(ctx: &XdpContext, stats: &mut Stats, cfg: &XdpConfig, l3: &L3, sport: u16, dport: u16, flags: u8) {
    stats[stat::HONEYPORT as usize] += 1;
    let mut first = false;
    with_source(stats, cfg, l3, |s, stats| {
        // Event on the first touches only; later ones are counted.
        first = s.counts[cnt::HONEYPORT] < 4;
        bump(s, cnt::HONEYPORT);
    });
    if first {
        emit(stats, kind::HONEYPORT, l3, &Ev { sport, dport, flags, detail: 0, win_ports: 0, win_hosts: 0 }, None);
    }
}

/// Parse the SYN's options and derive the fingerprint and tool hint.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "all parsed header fields are needed")]
fn fingerprint(
    ctx: &XdpContext,
    stats: &mut Stats,
    l3: &L3,
    t: usize,
    doff: usize,
    window: u16,
    seq: u32,
    dport: u16,
    payload: usize,
) -> Result<Fingerprint, ()> {
    let mut fp = Fingerprint {
        window,
        ttl: l3.ttl,
        df: l3.df,
        ip_id: l3.ip_id,
        payload_len: payload as u16,
        ip_version: if l3.v6 != 0 { 6 } else { 4 },
        ..Fingerprint::default()
    };
    let end = t + doff;
    let mut o = t + 20;
    let mut n = 0usize;
    let mut i = 0;
    while i < 40 {
        i += 1;
        if o >= end {
            break;
        }
        let Ok(k) = u8_at(ctx, o) else {
            stats[stat::MAL_TCP_OPTS as usize] += 1;
            return Err(());
        };
        if n < FP_MAX_OPTS {
            fp.opts[n] = k;
            n += 1;
        }
        if k == 0 {
            break;
        }
        if k == 1 {
            o += 1;
            continue;
        }
        let Ok(len) = u8_at(ctx, o + 1) else {
            stats[stat::MAL_TCP_OPTS as usize] += 1;
            return Err(());
        };
        let len = len as usize;
        if len < 2 || o + len > end {
            stats[stat::MAL_TCP_OPTS as usize] += 1;
            return Err(());
        }
        match (k, len) {
            (2, 4) => fp.mss = be16_at(ctx, o + 2).unwrap_or(0),
            (3, 3) => fp.wscale = u8_at(ctx, o + 2).unwrap_or(0),
            (4, 2) => fp.sack_ok = 1,
            (8, 10) => fp.timestamps = 1,
            _ => {}
        }
        o += len;
    }
    fp.n_opts = n as u8;
    // Stable fields only: TTL jitter and IP ID do not change the hash.
    let mut h = mix32(((window as u32) << 16) | fp.mss as u32);
    h = mix32(h ^ ((fp.wscale as u32) << 24 | (initial_ttl(l3.ttl) as u32) << 16 | (fp.df as u32) << 8 | fp.ip_version as u32));
    let mut k = 0;
    while k < FP_MAX_OPTS {
        h = mix32(h ^ ((fp.opts[k] as u32) << 8) ^ k as u32);
        k += 1;
    }
    fp.hash = mix32(h ^ ((payload != 0) as u32));
    let dst4 = u32::from_be_bytes([l3.dst[12], l3.dst[13], l3.dst[14], l3.dst[15]]);
    fp.tool_hint = if l3.ip_id == 54321 && l3.v6 == 0 {
        tool::ZMAP
    } else if l3.v6 == 0 && initial_ttl(l3.ttl) == 255 && l3.ip_id == ((dst4 ^ dport as u32 ^ seq) & 0xffff) as u16 {
        tool::MASSCAN
    } else if window == 512 && n == 0 {
        tool::HPING3
    } else if window == 4128 {
        tool::UNICORNSCAN
    } else if (window == 1024 || window == 2048 || window == 3072 || window == 4096)
        && n == 1
        && fp.opts[0] == 2
    {
        tool::NMAP
    } else if fp.sack_ok != 0 && fp.mss != 0 && (fp.timestamps != 0 || fp.wscale != 0) {
        tool::OS_STACK
    } else {
        tool::UNKNOWN
    };
    Ok(fp)
}

/// True when a SYN's TCP checksum is wrong. A checksum equal to the folded pseudo-header sum is
/// a locally generated segment with checksum offload pending (veth), not a bad one.
#[inline(always)]
fn tcp_csum_bad(ctx: &XdpContext, l3: &L3, t: usize) -> bool {
    let len = l3.l4_len;
    if len > 64 || len < 20 {
        return false; // only bare SYNs (options, no big payload) are verified
    }
    let mut pseudo: u64 = 0;
    let mut k = 0;
    while k < 16 {
        if l3.v6 != 0 || k >= 12 {
            pseudo += u16::from_be_bytes([l3.src[k], l3.src[k + 1]]) as u64;
            pseudo += u16::from_be_bytes([l3.dst[k], l3.dst[k + 1]]) as u64;
        }
        k += 2;
    }
    pseudo += IPPROTO_TCP as u64 + len as u64;
    let mut sum = pseudo;
    let mut i = 0usize;
    while i < 32 {
        let o = i * 2;
        if o + 1 < len {
            match be16_at(ctx, t + o) {
                Ok(w) => sum += w as u64,
                Err(_) => return false,
            }
        } else if o < len {
            match u8_at(ctx, t + o) {
                Ok(b) => sum += (b as u64) << 8,
                Err(_) => return false,
            }
        }
        i += 1;
    }
    if csum_fold(sum) == 0xffff {
        return false;
    }
    let check = be16_at(ctx, t + 16).unwrap_or(0);
    check != csum_fold(pseudo)
}

#[inline(never)]
fn handle_udp(ctx: &XdpContext, stats: &mut Stats, l3: &L3) -> Result<u32, u32> {
    let sport = be16_at(ctx, l3.l4).map_err(|_| stat::MAL_UDP)?;
    let dport = be16_at(ctx, l3.l4 + 2).map_err(|_| stat::MAL_UDP)?;
    be16_at(ctx, l3.l4 + 6).map_err(|_| stat::MAL_UDP)?;
    let cfg = config();
    let honey = is_honeyport(IPPROTO_UDP, dport);
    let lookup = cfg.flags & cfgflag::LOOKUP_SOCKETS != 0;
    if lookup && !socket_exists(ctx, l3, sport, dport, false, false) {
        with_source(stats, &cfg, l3, |s, stats| {
            bump(s, cnt::UDP);
            bump(s, cnt::UDP_CLOSED);
            bump(s, cnt::FAILED);
            record_probe(stats, &cfg, s, l3, sport, dport, 0);
        });
    }
    if honey {
        honeypot_hit(ctx, stats, &cfg, l3, sport, dport, 0);
    }
    Ok(xdp_action::XDP_PASS)
}

#[inline(never)]
fn handle_icmp(ctx: &XdpContext, stats: &mut Stats, l3: &L3) -> Result<u32, u32> {
    let ty = u8_at(ctx, l3.l4).map_err(|_| stat::MAL_ICMP)?;
    be16_at(ctx, l3.l4 + 2).map_err(|_| stat::MAL_ICMP)?;
    let echo = (l3.v6 == 0 && ty == 8) || (l3.v6 != 0 && ty == 128);
    if echo {
        let cfg = config();
        with_source(stats, &cfg, l3, |s, stats| {
            bump(s, cnt::ICMP_ECHO);
            // Track the host fan-out of ping sweeps (port 0).
            record_target(stats, &cfg, s, l3, 0, 0, 0, false);
        });
    }
    Ok(xdp_action::XDP_PASS)
}

