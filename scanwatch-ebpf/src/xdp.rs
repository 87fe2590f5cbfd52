//! Inbound detector. Parses Ethernet / VLAN / IPv4 / IPv6 (+ extension headers) / TCP / UDP /
//! ICMP, keeps bounded per-source state for scan-shaped packets and emits immediate events.
//! Fails open: every error path returns XDP_PASS and bumps a malformed-by-reason counter.
use aya_ebpf::{
    bindings::{bpf_sock_tuple, xdp_action},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_ktime_get_coarse_ns, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
    },
    macros::xdp,
    programs::XdpContext,
    EbpfContext,
};
use scanwatch_common::{
    addr_fold32, addr_hash, cfgflag, known_bit, suspect_bit, ACK_SAMPLE, cnt, hll_slot, initial_ttl, port_hll_slot, probe, kind, mix32, stat, thr, tool, EventHeader,
    Fingerprint, FpKey, InboundEvent, Probe, SrcState, XdpConfig, FC_BUMPS, FIRST_CONTACT_SLOTS, FP_PER_SOURCE,
    SAMPLE_PORTS, WIN_HOST_BITS, WIN_PORT_BITS,
};

use crate::{
    maps::{
        Obs, BLOCKLIST, CONFIG, EVENTS, FINGERPRINTS, FIRST_CONTACT, HONEYPORTS, KNOWN_SOURCES, SCRATCH, SOURCES,
        STATS, SUSPECT_SOURCES, ZERO_SRC,
    },
    parse::{addr16_at, be16_at, be32_at, csum_fold, load_bytes, u8_at, v4_mapped_at, A16},
};

/// Load-time setting (the loader rewrites it): drop packets from BLOCKLIST sources.
#[unsafe(no_mangle)]
static ENFORCE_BLOCKLIST: u32 = 0;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

use scanwatch_common::tcpflag::{ACK, FIN, PSH, RST, SYN, URG};

type Stats = [u64; stat::N as usize];

#[xdp]
pub fn scanwatch_xdp(ctx: XdpContext) -> u32 {
    run(&ctx)
}

/// Benchmark entry (loaded only by `scanwatch bench`): the same program, with the packet's IPv4
/// source address and TCP destination port advanced before each run. BPF_PROG_TEST_RUN reuses
/// one packet buffer across its repeat loop, so every repetition is a SYN from a new source.
#[xdp]
pub fn scanwatch_xdp_rotating(ctx: XdpContext) -> u32 {
    crate::rotate_source(&ctx);
    run(&ctx)
}

#[inline(always)]
fn run(ctx: &XdpContext) -> u32 {
    let Some(stats) = STATS.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU value, only this CPU touches it while the program runs.
    let stats = unsafe { &mut *stats };
    stats[stat::PACKETS as usize] += 1;
    match try_xdp(ctx, stats) {
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
    src: A16,
    dst: A16,
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
    // SAFETY: read of a load-time constant the loader may have rewritten.
    let enforce = unsafe { core::ptr::read_volatile(&ENFORCE_BLOCKLIST) } != 0;
    if !enforce {
        let fast = fast_established(ctx, off, ethertype, stats);
        // Counted only in `established_fast` / `bare_ack_fast` (`tcp` counts the full path).
        if fast == FAST_DATA {
            stats[stat::ESTABLISHED_FAST as usize] += 1;
            return Ok(xdp_action::XDP_PASS);
        }
        if fast == FAST_ACK {
            stats[stat::ACK_FAST as usize] += 1;
            return Ok(xdp_action::XDP_PASS);
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
        ETH_P_ARP => {
            stats[stat::ARP as usize] += 1;
            match parse_arp_request(ctx, off)? {
                Some(l3) => l3,
                None => return Ok(xdp_action::XDP_PASS),
            }
        }
        _ => {
            stats[stat::OTHER_L3 as usize] += 1;
            return Ok(xdp_action::XDP_PASS);
        }
    };

    if enforce {
        // SAFETY: value is read only to test presence.
        if unsafe { BLOCKLIST.get(l3.src.key()) }.is_some() {
            stats[stat::BLOCKED as usize] += 1;
            return Ok(xdp_action::XDP_DROP);
        }
    }

    let cfg = config();
    let Some(sp) = SCRATCH.get_ptr_mut(0) else {
        return Ok(xdp_action::XDP_PASS);
    };
    // SAFETY: per-CPU scratch, used by this program run only.
    let sc = unsafe { &mut *sp };
    let obs = &mut sc.obs;
    obs.reset(l3.proto);
    if l3.proto == PROTO_ARP {
        // Who-has for another address: host discovery on the link.
        obs.count(cnt::ARP);
        obs.cur.kind = probe::HOST;
    } else if l3.frag == 2 {
        // Non-first fragment: no L4 header to look at.
        obs.count(cnt::FRAG_LATER);
    } else {
        match l3.proto {
            IPPROTO_TCP => {
                stats[stat::TCP as usize] += 1;
                if classify_tcp(ctx, stats, &l3, cfg, obs)? {
                    return Ok(xdp_action::XDP_PASS);
                }
            }
            IPPROTO_UDP => {
                stats[stat::UDP as usize] += 1;
                classify_udp(ctx, &l3, cfg, obs)?;
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 => {
                stats[stat::ICMP as usize] += 1;
                classify_icmp(ctx, &l3, obs)?;
            }
            _ => {}
        }
    }
    if obs.cur.nb == 0 {
        return Ok(xdp_action::XDP_PASS);
    }
    if obs.honey != 0 {
        stats[stat::HONEYPORT as usize] += 1;
    }
    let r = update_source(ctx, stats, cfg, &l3, obs);
    if r < 0 {
        if r == R_HELD {
            stats[stat::FIRST_CONTACT as usize] += 1;
        }
        return Ok(xdp_action::XDP_PASS);
    }
    let r = r as u64;
    let ev = Ev {
        sport: obs.cur.sport,
        dport: obs.cur.dport,
        flags: obs.flags,
        detail: 0,
        win_ports: ((r >> 16) & 0xffff) as u32,
        win_hosts: ((r >> 32) & 0xffff) as u32,
    };
    let thr_bits = (r & (R_THR_PORTS | R_THR_HOSTS)) as u32;
    if thr_bits != 0 {
        let e = Ev { detail: thr_bits, ..ev };
        emit(stats, kind::THRESHOLD, &l3, &e, None);
    }
    if r & R_NEW_FP != 0 {
        let now = now_ns();
        let key = FpKey { src: *l3.src.key(), hash: obs.fp.hash };
        sc.fpv.fp = sc.obs.fp;
        sc.fpv.count = 1;
        sc.fpv.first_seen_ns = now;
        sc.fpv.last_seen_ns = now;
        let _ = FINGERPRINTS.insert(&key, &sc.fpv, 0);
        stats[stat::NEW_FINGERPRINTS as usize] += 1;
        let e = Ev { detail: ((r >> 8) & 0xff) as u32, win_ports: 0, win_hosts: 0, ..ev };
        emit(stats, kind::NEW_FINGERPRINT, &l3, &e, Some(&sc.obs.fp));
    }
    if r & R_HONEY_FIRST != 0 {
        let e = Ev { detail: 0, win_ports: 0, win_hosts: 0, ..ev };
        emit(stats, kind::HONEYPORT, &l3, &e, None);
    }
    Ok(xdp_action::XDP_PASS)
}

/// `fast_established` results.
const FAST_NO: u8 = 0;
const FAST_DATA: u8 = 1;
const FAST_ACK: u8 = 2;

/// Established-flow traffic over IPv4 without options or IPv6 without extension headers,
/// recognised from a few fixed-offset reads behind a single bounds check, before any address is
/// copied: data segments (ACK without SYN/RST/FIN, with payload) always; bare ACKs (no payload)
/// from sources not suspected of ACK scanning, except one in `ACK_SAMPLE`, which takes the full
/// path and its socket lookup (that is how a new ACK scanner gets caught and suspected).
/// Anything unusual returns `FAST_NO` and takes the full (validating) path.
#[inline(always)]
fn fast_established(ctx: &XdpContext, off: usize, ethertype: u16, stats: &mut Stats) -> u8 {
    let (ip, end) = (ctx.data() + off, ctx.data_end());
    let b = |p: usize| -> usize {
        // SAFETY: callers only pass addresses below the bounds checked just before.
        unsafe { *(p as *const u8) as usize }
    };
    let h = |p: usize| -> u64 {
        // SAFETY: as above; every address field is at an even offset.
        unsafe { *(p as *const u16) as u64 }
    };
    let (tcp, l4_len, v6) = if ethertype == ETH_P_IP {
        // IPv4 header without options + the first 14 bytes of the TCP header.
        if off > 22 || ip + 34 > end {
            return FAST_NO;
        }
        // Version 4, IHL 5; no fragment bits (MF or offset); protocol TCP.
        if b(ip) != 0x45 || b(ip + 6) & 0x3f != 0 || b(ip + 7) != 0 || b(ip + 9) != IPPROTO_TCP as usize {
            return FAST_NO;
        }
        let tot = (b(ip + 2) << 8) | b(ip + 3);
        if tot < 20 {
            return FAST_NO;
        }
        (ip + 20, tot - 20, false)
    } else if ethertype == ETH_P_IPV6 {
        if off > 22 || ip + 54 > end {
            return FAST_NO;
        }
        if b(ip + 6) != IPPROTO_TCP as usize {
            return FAST_NO;
        }
        (ip + 40, (b(ip + 4) << 8) | b(ip + 5), true)
    } else {
        return FAST_NO;
    };
    let doff = (b(tcp + 12) >> 4) * 4;
    let f = (b(tcp + 13) as u8) & 0x3f;
    if doff < 20 || l4_len < doff || f & (SYN | RST | FIN) != 0 || f & ACK == 0 {
        return FAST_NO;
    }
    if l4_len > doff {
        return FAST_DATA;
    }
    if f != ACK {
        return FAST_NO;
    }
    // The source address (read only for bare ACKs; inside the bounds checked above).
    let src = if v6 {
        let s = ip + 8;
        [h(s) | h(s + 2) << 16 | h(s + 4) << 32 | h(s + 6) << 48, h(s + 8) | h(s + 10) << 16 | h(s + 12) << 32 | h(s + 14) << 48]
    } else {
        [0, 0xffff_0000 | (h(ip + 12) | h(ip + 14) << 16) << 32]
    };
    let (word, bit) = suspect_bit(addr_hash(&src));
    let suspect = match SUSPECT_SOURCES.get(word) {
        Some(bits) => *bits & bit != 0,
        None => true,
    };
    if suspect {
        return FAST_NO;
    }
    let seen = stats[stat::ACK_SEEN as usize];
    stats[stat::ACK_SEEN as usize] = seen + 1;
    if seen % ACK_SAMPLE == 0 {
        return FAST_NO;
    }
    FAST_ACK
}

/// Mark a source that sent an orphan segment: its bare ACKs are all looked up from now on.
#[inline(always)]
fn mark_suspect(src: &A16) {
    let (word, bit) = suspect_bit(addr_hash(&src.w));
    if let Some(w) = SUSPECT_SOURCES.get_ptr_mut(word) {
        // SAFETY: array value pointer valid for this run; a lost bit only delays suspicion.
        unsafe { *w |= bit };
    }
}

const PROTO_ARP: u8 = probe::PROTO_ARP;

/// An IPv4-over-Ethernet ARP request as (sender → target). Replies, gratuitous ARP and
/// duplicate-address probes (sender 0.0.0.0) return None.
#[inline(always)]
fn parse_arp_request(ctx: &XdpContext, off: usize) -> Result<Option<L3>, u32> {
    let htype = be16_at(ctx, off).map_err(|_| stat::MAL_ARP)?;
    let ptype = be16_at(ctx, off + 2).map_err(|_| stat::MAL_ARP)?;
    let lens = be16_at(ctx, off + 4).map_err(|_| stat::MAL_ARP)?;
    let oper = be16_at(ctx, off + 6).map_err(|_| stat::MAL_ARP)?;
    let spa = be32_at(ctx, off + 14).map_err(|_| stat::MAL_ARP)?;
    let tpa = be32_at(ctx, off + 24).map_err(|_| stat::MAL_ARP)?;
    if htype != 1 || ptype != ETH_P_IP || lens != 0x0604 {
        return Err(stat::MAL_ARP);
    }
    if oper != 1 || spa == 0 || spa == tpa {
        return Ok(None);
    }
    Ok(Some(L3 {
        src: A16::v4(spa.to_be()),
        dst: A16::v4(tpa.to_be()),
        l4: 0,
        l4_len: 0,
        proto: PROTO_ARP,
        ttl: 0,
        df: 0,
        ip_id: 0,
        v6: 0,
        frag: 0,
    }))
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
                let w = be16_at(ctx, l4).map_err(|_| stat::MAL_IPV6_EXT)?;
                let nh = (w >> 8) as u8;
                let len = ((w & 0xff) as usize + 1) * 8;
                next = nh;
                l4 += len;
                ext_len += len;
            }
            44 => {
                let nh = (be16_at(ctx, l4).map_err(|_| stat::MAL_IPV6_EXT)? >> 8) as u8;
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
                let w = be16_at(ctx, l4).map_err(|_| stat::MAL_IPV6_EXT)?;
                let nh = (w >> 8) as u8;
                let len = ((w & 0xff) as usize + 2) * 4;
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

static DEFAULT_CONFIG: XdpConfig = XdpConfig::default_config();

#[inline(always)]
fn config() -> &'static XdpConfig {
    CONFIG.get(0).unwrap_or(&DEFAULT_CONFIG)
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// CLOCK_MONOTONIC at tick resolution (a few ms): half the cost of `now_ns` on the per-packet
/// path, ample for seconds-long windows and first/last-seen times.
#[inline(always)]
fn coarse_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Result bits of `update_source` (low byte); n_fp in bits 8..16, window ports 16..32,
/// window hosts 32..48. Negative: no state was updated.
const R_THR_PORTS: u64 = thr::PORTS as u64;
const R_THR_HOSTS: u64 = thr::HOSTS as u64;
const R_NEW_FP: u64 = 0x10;
const R_HONEY_FIRST: u64 = 0x20;
/// The packet was held in the first-contact table.
const R_HELD: i64 = -2;
/// No state could be had (insert failure, counted).
const R_NO_STATE: i64 = -1;

/// `Obs::deferred` bits: work done only after the source is admitted.
const DEFER_LOOKUP: u8 = 1;
const DEFER_FP: u8 = 2;

/// Fingerprint (and checksum) every SYN of a source's first `FP_EVERY_FIRST`, then one in
/// `FP_EVERY`: a scanner's stack does not change between probes, and a second tool or decoy is
/// still seen within a few dozen SYNs. Once a source sent a bad checksum, every SYN is checked.
const FP_EVERY_FIRST: u32 = 8;
const FP_EVERY: u32 = 16;

impl Obs {
    /// Reset for a new packet (the fingerprint is reset only when a SYN fills it).
    #[inline(always)]
    fn reset(&mut self, proto: u8) {
        // Field by field: a struct literal becomes a byte-loop memset on this target. `bumps`
        // needs no clearing (`nb` says how many are valid).
        // (Volatile, so LLVM does not merge them into a byte-loop memset.)
        self.cur.dst_fold = 0;
        self.cur.sport = 0;
        self.cur.dport = 0;
        let w = |p: &mut u8, v: u8| {
            // SAFETY: plain store to a valid field.
            unsafe { core::ptr::write_volatile(p, v) }
        };
        w(&mut self.cur.nb, 0);
        w(&mut self.cur.kind, probe::NONE);
        w(&mut self.cur.proto, proto);
        w(&mut self.has_prior, 0);
        w(&mut self.held, 0);
        w(&mut self.honey, 0);
        w(&mut self.has_fp, 0);
        w(&mut self.deferred, 0);
        w(&mut self.flags, 0);
    }

    #[inline(always)]
    fn count(&mut self, c: usize) {
        let n = self.cur.nb as usize;
        if n < self.cur.bumps.len() {
            self.cur.bumps[n] = c as u8;
            self.cur.nb += 1;
        }
    }
}

/// Zero `len` bytes (a multiple of 4, 4-byte aligned) with 32-bit volatile stores.
#[inline(always)]
fn zero_words(p: *mut u8, len: usize) {
    let p = p as *mut u32;
    let mut i = 0;
    while i < len / 4 {
        // SAFETY: callers pass 4-byte aligned buffers of `len` bytes.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
}

/// Copy the probe fields shared by `Probe` and `FcSlot` (same names), at most `FC_BUMPS`
/// counters. Field by field with word stores: a struct assignment becomes a byte-loop memmove
/// call on this target; volatile so LLVM does not merge them back.
macro_rules! copy_probe_fields {
    ($dst:expr, $src:expr) => {{
        let (d, s) = ($dst, $src);
        // SAFETY: plain stores/loads of valid, aligned fields (bumps at 4-aligned offsets in both).
        unsafe {
            core::ptr::write_volatile(&mut d.dst_fold, s.dst_fold);
            core::ptr::write_volatile(&mut d.sport, s.sport);
            core::ptr::write_volatile(&mut d.dport, s.dport);
            core::ptr::write_volatile(
                d.bumps.as_mut_ptr() as *mut u32,
                core::ptr::read_volatile(s.bumps.as_ptr() as *const u32),
            );
            core::ptr::write_volatile(&mut d.nb, if s.nb as usize > FC_BUMPS { FC_BUMPS as u8 } else { s.nb });
            core::ptr::write_volatile(&mut d.kind, s.kind);
            core::ptr::write_volatile(&mut d.proto, s.proto);
        }
    }};
}

/// Set the source's bit in the known-source filter.
#[inline(always)]
fn mark_known(h: u32) {
    let (word, bit) = known_bit(h);
    if let Some(w) = KNOWN_SOURCES.get_ptr_mut(word) {
        // SAFETY: array value pointer valid for this run; a racing CPU can only lose a bit,
        // which costs that source one more pass through the first-contact table.
        unsafe { *w |= bit };
    }
}

/// The source's state, or null. With the first-contact tier on, a source that is not known is
/// admitted only on its second scan-shaped packet (its first is replayed from the slot); its
/// first packet is held and `obs.held` set. Honeyport touches are admitted at once.
#[inline(always)]
fn acquire(stats: &mut Stats, cfg: &XdpConfig, l3: &L3, obs: &mut Obs) -> *mut SrcState {
    let key = l3.src.key();
    let w = l3.src.w;
    let h = addr_hash(&w);
    if cfg.flags & cfgflag::FIRST_CONTACT != 0 && obs.honey == 0 {
        let (word, bit) = known_bit(h);
        let maybe_known = match KNOWN_SOURCES.get(word) {
            Some(bits) => *bits & bit != 0,
            None => true,
        };
        if maybe_known {
            if let Some(p) = SOURCES.get_ptr_mut(key) {
                return p;
            }
        }
        if let Some(slot) = FIRST_CONTACT.get_ptr_mut(h & (FIRST_CONTACT_SLOTS - 1)) {
            // SAFETY: array value pointer valid for this run; racing CPUs can only tear a slot,
            // which costs one held probe.
            let slot = unsafe { &mut *slot };
            if slot.addr[0] == w[0] && slot.addr[1] == w[1] {
                copy_probe_fields!(&mut obs.prior, &*slot);
                obs.has_prior = 1;
                slot.addr = [0, 0];
            } else {
                obs.cur.dst_fold = addr_fold32(&l3.dst.w);
                slot.addr = w;
                copy_probe_fields!(&mut *slot, &obs.cur);
                obs.held = 1;
                return core::ptr::null_mut();
            }
        }
    } else if let Some(p) = SOURCES.get_ptr_mut(key) {
        return p;
    }
    let Some(zero) = ZERO_SRC.get_ptr(0) else { return core::ptr::null_mut() };
    // SAFETY: the per-CPU zero value is never written.
    let zero = unsafe { &*zero };
    // BPF_NOEXIST: another CPU may have inserted it meanwhile; then just use it.
    if SOURCES.insert(key, zero, 1).is_ok() {
        stats[stat::NEW_SOURCES as usize] += 1;
    }
    mark_known(h);
    match SOURCES.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            stats[stat::SOURCE_INSERT_FAILED as usize] += 1;
            core::ptr::null_mut()
        }
    }
}

/// Find, admit or hold the source; run the deferred work; apply the probe(s). Returns the
/// `R_*` bits and window counts, or `R_HELD` / `R_NO_STATE`.
#[inline(never)]
fn update_source(ctx: &XdpContext, stats: &mut Stats, cfg: &XdpConfig, l3: &L3, obs: &mut Obs) -> i64 {
    let ptr = acquire(stats, cfg, l3, obs);
    if ptr.is_null() {
        return if obs.held != 0 { R_HELD } else { R_NO_STATE };
    }
    // SAFETY: LRU value pointer valid for this program run; races between CPUs only skew counts.
    let s = unsafe { &mut *ptr };
    if obs.deferred != 0 {
        // Sampled, except for a source already caught sending bad checksums: every SYN of it
        // is checked, so the evasive share of its probes stays exact.
        let n = s.counts[cnt::SYN];
        if n >= FP_EVERY_FIRST && n % FP_EVERY != 0 && s.counts[cnt::BADSUM] == 0 {
            obs.deferred &= !DEFER_FP;
        }
        deferred_tcp(ctx, stats, l3, cfg, obs);
    }
    obs.cur.dst_fold = addr_fold32(&l3.dst.w);
    let now = coarse_ns();
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
        s.win_port_bits = [0; WIN_PORT_BITS / 64];
        s.win_host_bits = [0; WIN_HOST_BITS / 64];
    }
    let mut r: u64 = 0;
    // First touches of honeyports raise an event; later ones are only counted.
    if obs.honey != 0 && s.counts[cnt::HONEYPORT] < 4 {
        r |= R_HONEY_FIRST;
    }
    // The replayed first probe (if any), then this packet's.
    if obs.has_prior != 0 {
        apply_probe(s, &obs.prior);
    }
    apply_probe(s, &obs.cur);
    // Fingerprints are registered (map insert + event) from a source's second SYN on (with the
    // first-contact tier that is its admission; without it, a spoofed flood source still costs
    // one map insert per packet, not three).
    if obs.has_fp != 0 {
        s.tool_hint = obs.fp.tool_hint;
    }
    if obs.has_fp != 0 && s.counts[cnt::SYN] >= 2 {
        let h = obs.fp.hash;
        let known = s.fp_hashes[0] == h || s.fp_hashes[1] == h || s.fp_hashes[2] == h || s.fp_hashes[3] == h;
        let n = s.n_fp as usize;
        if !known && n < FP_PER_SOURCE {
            s.fp_hashes[n & (FP_PER_SOURCE - 1)] = h;
            s.n_fp += 1;
            r |= R_NEW_FP;
        }
    }
    if obs.cur.kind != probe::NONE || obs.has_prior != 0 {
        if cfg.port_threshold != 0 && s.win_ports >= cfg.port_threshold && s.emitted & thr::PORTS == 0 {
            r |= R_THR_PORTS;
        }
        if cfg.host_threshold != 0 && s.win_hosts >= cfg.host_threshold && s.emitted & thr::HOSTS == 0 {
            r |= R_THR_HOSTS;
        }
        s.emitted |= (r & (R_THR_PORTS | R_THR_HOSTS)) as u32;
    }
    r |= ((s.n_fp as u64) & 0xff) << 8;
    r |= ((s.win_ports as u64) & 0xffff) << 16;
    r |= ((s.win_hosts as u64) & 0xffff) << 32;
    r as i64
}

/// Apply one probe to a source's counters and fan-out sketches.
#[inline(never)]
fn apply_probe(s: &mut SrcState, p: &Probe) {
    s.counts[cnt::PACKETS] = s.counts[cnt::PACKETS].wrapping_add(1);
    let mut k = 0;
    while k < p.bumps.len() {
        if k >= p.nb as usize {
            break;
        }
        let c = p.bumps[k] as usize;
        if c < cnt::N {
            s.counts[c] = s.counts[c].wrapping_add(1);
        }
        k += 1;
    }
    if p.kind == probe::NONE {
        return;
    }
    let track_port = p.kind == probe::PORT;
    let dport = p.dport;
    // Short-window distinct ports/hosts (bitmaps: exact up to collisions, ~n²/2m).
    let pb = (mix32(dport as u32) as usize) & (WIN_PORT_BITS - 1);
    let (w, b) = (pb >> 6, pb & 63);
    if track_port && s.win_port_bits[w] & (1u64 << b) == 0 {
        s.win_port_bits[w] |= 1u64 << b;
        s.win_ports += 1;
    }
    let hfold = p.dst_fold;
    let hb = (mix32(hfold) as usize) & (WIN_HOST_BITS - 1);
    let (w, b) = (hb >> 6, hb & 63);
    if s.win_host_bits[w] & (1u64 << b) == 0 {
        s.win_host_bits[w] |= 1u64 << b;
        s.win_hosts += 1;
    }
    // Lifetime distinct ports and hosts (HyperLogLog). Not gated on the window bitmaps:
    // their collisions would lose distinct items.
    if track_port {
        let (i, rank) = port_hll_slot(dport as u32);
        if s.port_hll[i] < rank {
            s.port_hll[i] = rank;
        }
    }
    let (i, rank) = hll_slot(hfold);
    if s.host_hll[i] < rank {
        s.host_hll[i] = rank;
    }
    // Exact sample of the first distinct ports.
    let n = s.n_sample as usize;
    if track_port && n < SAMPLE_PORTS {
        // Unused entries are 0, so no `k < n` test is needed (a probe of port 0 while the
        // sample has room is not sampled); fewer branches keep the verifier's work small.
        let mut seen = false;
        let mut k = 0;
        while k < SAMPLE_PORTS {
            if s.sample_ports[k] == dport {
                seen = true;
            }
            k += 1;
        }
        if !seen {
            s.sample_ports[n & (SAMPLE_PORTS - 1)] = dport;
            s.n_sample += 1;
        }
    }
    // Source port 53/88 towards another port: TCP probes, or UDP to a privileged port (late
    // DNS replies to an already-closed client port are not counted).
    if track_port
        && (p.sport == 53 || p.sport == 88)
        && dport != p.sport
        && (p.proto == IPPROTO_TCP || dport < 1024)
    {
        s.counts[cnt::SRCPORT_TRICK] = s.counts[cnt::SRCPORT_TRICK].wrapping_add(1);
    }
}

/// Event fields besides the addresses (kept in one struct so `emit` stays a 5-argument call).
#[derive(Clone, Copy)]
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
                // Both at 8-byte aligned offsets of an 8-byte aligned record.
                *(&raw mut (*ev).src as *mut [u64; 2]) = l3.src.w;
                *(&raw mut (*ev).dst as *mut [u64; 2]) = l3.dst.w;
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
    let slot = if proto == IPPROTO_UDP { 1024 } else { 0 };
    match HONEYPORTS.get(slot + (port as u32 >> 6)) {
        Some(w) => *w & (1u64 << (port & 63)) != 0,
        None => false,
    }
}

/// Build the lookup tuple (as seen on ingress) and ask the kernel's socket table.
#[inline(never)]
fn socket_exists(ctx: &XdpContext, l3: &L3, sport: u16, dport: u16, tcp: bool) -> bool {
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

/// Classify a TCP segment into `obs`. Returns Ok(true) for the established-data fast path
/// (nothing else to do). SYNs and stealth shapes are classified from the header alone; their
/// socket lookup and fingerprint are deferred until the source is admitted (`deferred_tcp`).
#[inline(never)]
fn classify_tcp(ctx: &XdpContext, stats: &mut Stats, l3: &L3, cfg: &XdpConfig, obs: &mut Obs) -> Result<bool, u32> {
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
    if orphan != cnt::N && !socket_exists(ctx, l3, sport, dport, true) {
        obs.count(orphan);
        mark_suspect(&l3.src);
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
fn deferred_tcp(ctx: &XdpContext, stats: &mut Stats, l3: &L3, cfg: &XdpConfig, obs: &mut Obs) {
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
        let open = socket_exists(ctx, l3, obs.cur.sport, obs.cur.dport, true);
        if syn {
            obs.count(if open { cnt::SYN_OPEN } else { cnt::SYN_CLOSED });
        }
        if !open {
            obs.count(cnt::FAILED);
        }
    }
}

/// Copy the SYN's raw options into `fp` (decoded in userspace) with the header fields.
#[inline(always)]
fn fingerprint(ctx: &XdpContext, stats: &mut Stats, l3: &L3, t: usize, doff: usize, fp: &mut Fingerprint) -> Result<(), ()> {
    let olen = doff - 20;
    // Word stores (volatile, so they are not merged back into a byte-loop memset).
    zero_words(fp.raw_opts.as_mut_ptr(), 40);
    zero_words(fp.opts.as_mut_ptr(), scanwatch_common::FP_MAX_OPTS);
    fp.mss = 0;
    fp.wscale = 0;
    fp.n_opts = 0;
    fp.sack_ok = 0;
    fp.timestamps = 0;
    if olen > 40 || (olen > 0 && load_bytes(ctx, t + 20, &mut fp.raw_opts, olen).is_err()) {
        stats[stat::MAL_TCP_OPTS as usize] += 1;
        return Err(());
    }
    // Cheap sanity check of the first option (the common malformations: length 0/1, overrun).
    let k0 = fp.raw_opts[0];
    let l0 = fp.raw_opts[1] as usize;
    if olen > 0 && k0 > 1 && (l0 < 2 || l0 > olen) {
        stats[stat::MAL_TCP_OPTS as usize] += 1;
        return Err(());
    }
    fp.opt_len = olen as u8;
    fp.ttl = l3.ttl;
    fp.df = l3.df;
    fp.ip_id = l3.ip_id;
    fp.ip_version = if l3.v6 != 0 { 6 } else { 4 };
    Ok(())
}

/// Hash the stable fields and derive the tool hint from facts a scanner cannot easily hide.
/// `seq_dport` = (TCP sequence number << 16) | destination port (masscan's IP ID formula).
#[inline(never)]
fn finish_fingerprint(l3: &L3, seq_dport: u64, fp: &mut Fingerprint) {
    let (window, seq, dport, payload) = (fp.window, (seq_dport >> 16) as u32, seq_dport as u16, fp.payload_len);
    let r = &fp.raw_opts;
    let olen = fp.opt_len as usize;
    let mss_only = olen == 4 && r[0] == 2 && r[1] == 4;
    // Stable fields only: TTL jitter, IP ID and timestamp values do not change the hash. The
    // first 8 option bytes hold the option layout on every common stack (MSS, then SACK/TS/WS).
    let w0 = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
    let w1 = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
    let mut h = mix32(((window as u32) << 16) | olen as u32);
    h = mix32(h ^ ((initial_ttl(l3.ttl) as u32) << 16 | (fp.df as u32) << 8 | fp.ip_version as u32));
    h = mix32(h ^ w0);
    h = mix32(h ^ w1 ^ ((payload != 0) as u32));
    fp.hash = h;
    let dst4 = u32::from_be(l3.dst.v4_ne());
    fp.tool_hint = if l3.ip_id == 54321 && l3.v6 == 0 {
        tool::ZMAP
    } else if l3.v6 == 0
        && initial_ttl(l3.ttl) == 255
        && l3.ip_id == ((dst4 ^ dport as u32 ^ seq) & 0xffff) as u16
    {
        tool::MASSCAN
    } else if window == 512 && olen == 0 {
        tool::HPING3
    } else if window == 4128 {
        tool::UNICORNSCAN
    } else if (window == 1024 || window == 2048 || window == 3072 || window == 4096) && mss_only {
        tool::NMAP
    } else {
        // Userspace refines UNKNOWN to os-stack after decoding the options.
        tool::UNKNOWN
    };
}

/// True when a SYN's TCP checksum is wrong. Only bare SYNs (no payload) are checked: the fixed
/// header is summed from the packet and the options from the copy already in `fp`. A checksum
/// equal to the folded pseudo-header sum is a locally generated segment whose checksum offload
/// is still pending (veth), not a bad one.
#[inline(never)]
fn tcp_csum_bad(ctx: &XdpContext, l3: &L3, t: usize, fp: &Fingerprint) -> bool {
    let len = l3.l4_len;
    let olen = fp.opt_len as usize;
    if len != 20 + olen {
        return false;
    }
    let (src, dst) = (l3.src.bytes(), l3.dst.bytes());
    let mut pseudo: u64 = 0;
    let mut k = 0;
    while k < 16 {
        if l3.v6 != 0 || k >= 12 {
            pseudo += u16::from_be_bytes([src[k], src[k + 1]]) as u64;
            pseudo += u16::from_be_bytes([dst[k], dst[k + 1]]) as u64;
        }
        k += 2;
    }
    pseudo += IPPROTO_TCP as u64 + len as u64;
    let mut sum = pseudo;
    let mut i = 0;
    while i < 20 {
        match be16_at(ctx, t + i) {
            Ok(w) => sum += w as u64,
            Err(_) => return false,
        }
        i += 2;
    }
    // Options are 4-byte aligned in length; bytes past `olen` are zero.
    let mut j = 0;
    while j < 40 {
        sum += u16::from_be_bytes([fp.raw_opts[j], fp.raw_opts[j + 1]]) as u64;
        j += 2;
    }
    if csum_fold(sum) == 0xffff {
        return false;
    }
    let check = be16_at(ctx, t + 16).unwrap_or(0);
    check != csum_fold(pseudo)
}

#[inline(never)]
fn classify_udp(ctx: &XdpContext, l3: &L3, cfg: &XdpConfig, obs: &mut Obs) -> Result<(), u32> {
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
    }
    Ok(())
}

#[inline(never)]
fn classify_icmp(ctx: &XdpContext, l3: &L3, obs: &mut Obs) -> Result<(), u32> {
    let ty = (be16_at(ctx, l3.l4).map_err(|_| stat::MAL_ICMP)? >> 8) as u8;
    be16_at(ctx, l3.l4 + 2).map_err(|_| stat::MAL_ICMP)?;
    if (l3.v6 == 0 && ty == 8) || (l3.v6 != 0 && ty == 128) {
        obs.count(cnt::ICMP_ECHO);
        // Ping sweeps: host fan-out only.
        obs.cur.kind = probe::HOST;
    }
    Ok(())
}
