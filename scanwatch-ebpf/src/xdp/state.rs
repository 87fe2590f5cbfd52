//! Per-source state: find/admit the source, run the deferred work, apply the probe(s) to its
//! counters, sketches and windows.
use aya_ebpf::programs::XdpContext;
use scanwatch_common::{
    addr_fold32, cnt, hll_slot, memo, port_hll_slot, probe, mix32, thr, Probe, SrcState, XdpConfig, FP_PER_SOURCE,
    SAMPLE_PORTS, WIN_HOST_BITS, WIN_PORT_BITS,
};

use crate::maps::Obs;


use super::ctx::*;
use super::admission::*;
use super::classify::*;

/// Find, admit or hold the source; run the deferred work; apply the probe(s). Returns the
/// `R_*` bits and window counts, or `R_HELD` / `R_NO_STATE`.
/// Inlined, like `apply_probe` and `classify_tcp`: a BPF-to-BPF call costs a prologue, an
/// epilogue and a return through the kernel's return thunk; the three calls were ~35 ns of a
/// known source's 150 ns probe on this machine (`scanwatch bench`, perf of the JIT image).
#[inline(always)]
pub(super) fn update_source(ctx: &XdpContext, stats: &mut Stats, cfg: &XdpConfig, l3: &L3, obs: &mut Obs) -> i64 {
    let ptr = acquire(stats, cfg, l3, obs);
    if ptr.is_null() {
        return if obs.held != 0 { R_HELD } else { R_NO_STATE };
    }
    // SAFETY: table value pointer valid for this program run; races between CPUs only skew counts.
    let s = unsafe { &mut *ptr };
    if obs.deferred != 0 {
        // Sampled, except for a source already caught sending bad checksums: every SYN of it
        // is checked, so the evasive share of its probes stays exact.
        let n = s.counts[cnt::SYN];
        let every = if n < FP_BACKOFF_AFTER { FP_EVERY } else { FP_EVERY_LATE };
        if n >= FP_EVERY_FIRST && n & (every - 1) != 0 && s.counts[cnt::BADSUM] == 0 {
            obs.deferred &= !DEFER_FP;
        }
        deferred_tcp(ctx, stats, l3, cfg, obs);
    }
    obs.cur.dst_fold = addr_fold32(&l3.dst.w);
    let now = coarse_ns_cached(obs);
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
        s.memo = 0;
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
#[inline(always)]
pub(super) fn apply_probe(s: &mut SrcState, p: &Probe) {
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
    if p.proto != probe::PROTO_ARP {
        s.protocols[(p.proto >> 6) as usize & 3] |= 1u64 << (p.proto & 63);
    }
    if p.kind == probe::NONE {
        return;
    }
    let track_port = p.kind == probe::PORT;
    let dport = p.dport;
    // A repeat of the last probe's port or host is already in the window bitmaps, the
    // sketches and the sample (all idempotent): skip them. Exact, unlike gating on the window
    // bitmaps, whose collisions would lose distinct items.
    let m = s.memo;
    if track_port && !(m & memo::PORT != 0 && s.last_dport == dport) {
        s.last_dport = dport;
        s.memo = m | memo::PORT;
        apply_port(s, dport);
    }
    let hfold = p.dst_fold;
    if !(s.memo & memo::HOST != 0 && s.last_dst_fold == hfold) {
        s.last_dst_fold = hfold;
        s.memo |= memo::HOST;
        apply_host(s, hfold);
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


/// A destination port into the window bitmap (short-window distinct ports), the port
/// HyperLogLog (lifetime) and the exact sample of the first distinct ports.
#[inline(always)]
fn apply_port(s: &mut SrcState, dport: u16) {
    let pb = (mix32(dport as u32) as usize) & (WIN_PORT_BITS - 1);
    let (w, b) = (pb >> 6, pb & 63);
    if s.win_port_bits[w] & (1u64 << b) == 0 {
        s.win_port_bits[w] |= 1u64 << b;
        s.win_ports += 1;
    }
    // Not gated on the window bitmap: its collisions would lose distinct items.
    let (i, rank) = port_hll_slot(dport as u32);
    if s.port_hll[i] < rank {
        s.port_hll[i] = rank;
    }
    let n = s.n_sample as usize;
    if n < SAMPLE_PORTS {
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
}

/// A destination host into the window bitmap and the host HyperLogLog.
#[inline(always)]
fn apply_host(s: &mut SrcState, hfold: u32) {
    let hb = (mix32(hfold) as usize) & (WIN_HOST_BITS - 1);
    let (w, b) = (hb >> 6, hb & 63);
    if s.win_host_bits[w] & (1u64 << b) == 0 {
        s.win_host_bits[w] |= 1u64 << b;
        s.win_hosts += 1;
    }
    let (i, rank) = hll_slot(hfold);
    if s.host_hll[i] < rank {
        s.host_hll[i] = rank;
    }
}
