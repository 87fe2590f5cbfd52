//! Shared by every stage of the XDP program: the parsed L3 view, constants, settings, clocks,
//! result bits, the per-packet observation's helpers.
use aya_ebpf::helpers::{
        bpf_ktime_get_ns,
        generated::bpf_ktime_get_coarse_ns,
    };
use scanwatch_common::{
    addr_hash, probe, stat, thr, XdpConfig,
};

use crate::{
    maps::{
        Obs, CONFIG,
    },
    parse::A16,
};


/// Load-time setting (the loader rewrites it): drop packets from BLOCKLIST sources.
#[unsafe(no_mangle)]
pub(super) static ENFORCE_BLOCKLIST: u32 = 0;

/// Load-time setting (the loader rewrites it; `depth.enabled`): sample first client payloads.
/// Read-only data, so the verifier prunes the protocol-depth code when it is 0.
#[unsafe(no_mangle)]
pub(super) static FIRST_PAYLOAD: u32 = 1;

/// Load-time setting (the loader rewrites it): some watched interface is in gateway or mirror
/// mode, so packets may be forwarded ones (classified with settings copied into scratch, see
/// `try_xdp`). Read-only data: on a host-mode agent the verifier prunes that path and every
/// packet reads the settings in place.
#[unsafe(no_mangle)]
pub(super) static GATEWAY: u32 = 0;

/// Load-time settings (the loader rewrites them from `xdp.max_sources` and a random seed): the
/// per-source table's set count and the seed of its set index (`src_set`).
#[unsafe(no_mangle)]
pub(super) static SRC_SETS: u32 = scanwatch_common::DEFAULT_MAX_SOURCES / scanwatch_common::SRC_WAYS;
#[unsafe(no_mangle)]
pub(super) static SRC_SEED: u32 = 0;

#[inline(always)]
pub(super) fn gateway_on() -> bool {
    // SAFETY: read of a load-time constant the loader may have rewritten.
    unsafe { core::ptr::read_volatile(&GATEWAY) != 0 }
}

#[inline(always)]
pub(super) fn first_payload_on() -> bool {
    // SAFETY: read of a load-time constant the loader may have rewritten.
    unsafe { core::ptr::read_volatile(&FIRST_PAYLOAD) != 0 }
}

pub(super) const ETH_P_IP: u16 = 0x0800;
pub(super) const ETH_P_IPV6: u16 = 0x86dd;
pub(super) const ETH_P_ARP: u16 = 0x0806;
pub(super) const ETH_P_8021Q: u16 = 0x8100;
pub(super) const ETH_P_8021AD: u16 = 0x88a8;
pub(super) const IPPROTO_TCP: u8 = 6;
pub(super) const IPPROTO_UDP: u8 = 17;
pub(super) const IPPROTO_ICMP: u8 = 1;
pub(super) const IPPROTO_ICMPV6: u8 = 58;
pub(super) const IPPROTO_SCTP: u8 = 132;


pub(super) type Stats = [u64; stat::N as usize];

/// What the L3 parser learned, handed to the L4 handlers.
pub(super) struct L3 {
    pub(super) src: A16,
    pub(super) dst: A16,
    /// Offset of the L4 header.
    pub(super) l4: usize,
    /// Bytes of L4 header + payload according to the IP header.
    pub(super) l4_len: usize,
    pub(super) proto: u8,
    pub(super) ttl: u8,
    pub(super) df: u8,
    pub(super) ip_id: u16,
    pub(super) v6: u8,
    /// 0 = not a fragment, 1 = first fragment, 2 = later fragment.
    pub(super) frag: u8,
}


pub(super) static DEFAULT_CONFIG: XdpConfig = XdpConfig::default_config();

#[inline(always)]
pub(super) fn config() -> &'static XdpConfig {
    CONFIG.get(0).unwrap_or(&DEFAULT_CONFIG)
}

#[inline(always)]
pub(super) fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// CLOCK_MONOTONIC at tick resolution (a few ms): half the cost of `now_ns` on the per-packet
/// path, ample for seconds-long windows and first/last-seen times.
#[inline(always)]
pub(super) fn coarse_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// `coarse_ns`, read once per tick per CPU: `bpf_jiffies64` is inlined by the verifier (a load
/// of `jiffies`), while the coarse-clock helper is a call chain. Both advance with the tick, so
/// the cached value trails the coarse clock by at most one tick (the agent allows for that).
#[inline(always)]
pub(super) fn coarse_ns_cached(obs: &mut crate::maps::Obs) -> u64 {
    // SAFETY: plain helper call (inlined by the verifier on 64-bit JITs).
    let j = unsafe { aya_ebpf::helpers::generated::bpf_jiffies64() };
    if j != obs.clk_jiffies || obs.clk_ns == 0 {
        obs.clk_jiffies = j;
        obs.clk_ns = coarse_ns();
    }
    obs.clk_ns
}

/// Result bits of `update_source` (low byte); n_fp in bits 8..16, window ports 16..32,
/// window hosts 32..48. Negative: no state was updated.
pub(super) const R_THR_PORTS: u64 = thr::PORTS as u64;
pub(super) const R_THR_HOSTS: u64 = thr::HOSTS as u64;
pub(super) const R_NEW_FP: u64 = 0x10;
pub(super) const R_HONEY_FIRST: u64 = 0x20;
/// The packet was held in the first-contact table.
pub(super) const R_HELD: i64 = -2;
/// No state could be had (insert failure, counted).
pub(super) const R_NO_STATE: i64 = -1;

/// `Obs::deferred` bits: work done only after the source is admitted.
pub(super) const DEFER_LOOKUP: u8 = 1;
pub(super) const DEFER_FP: u8 = 2;

/// Fingerprint (and checksum) every SYN of a source's first `FP_EVERY_FIRST`, then one in
/// `FP_EVERY`, and past `FP_BACKOFF_AFTER` SYNs one in `FP_EVERY_LATE`: a scanner's stack does
/// not change between probes, and a second tool or decoy is still seen within a few dozen SYNs
/// (a few hundred into a long scan). Once a source sent a bad checksum, every SYN is checked.
pub(super) const FP_EVERY_FIRST: u32 = 8;
pub(super) const FP_EVERY: u32 = 16;
pub(super) const FP_BACKOFF_AFTER: u32 = 4096;
pub(super) const FP_EVERY_LATE: u32 = 128;

impl Obs {
    /// `addr_hash` of the packet's source: the fast path's when it computed one, else computed
    /// here on first use (packets that touch no per-source state never pay for it).
    #[inline(always)]
    pub(super) fn source_hash(&mut self, src: &A16) -> u32 {
        if self.src_hash == 0 {
            self.src_hash = addr_hash(&src.w);
        }
        self.src_hash
    }

    /// Reset for a new packet (the fingerprint is reset only when a SYN fills it).
    #[inline(always)]
    pub(super) fn reset(&mut self, proto: u8) {
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
    pub(super) fn count(&mut self, c: usize) {
        let n = self.cur.nb as usize;
        if n < self.cur.bumps.len() {
            self.cur.bumps[n] = c as u8;
            self.cur.nb += 1;
        }
    }
}

/// Zero `len` bytes (a multiple of 4, 4-byte aligned) with 32-bit volatile stores.
#[inline(always)]
pub(super) fn zero_words(p: *mut u8, len: usize) {
    let p = p as *mut u32;
    let mut i = 0;
    while i < len / 4 {
        // SAFETY: callers pass 4-byte aligned buffers of `len` bytes.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
}

