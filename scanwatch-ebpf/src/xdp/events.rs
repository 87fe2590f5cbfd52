//! Ring-buffer events (threshold, honeyport, new fingerprint).
use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext, EbpfContext};
use scanwatch_common::{
    ifmode, stat, EventHeader, EventKind,
    Fingerprint, ForwardedEvent, InboundEvent, FWD_SNAP,
};

use crate::maps::{EVENTS, FWD_EVENTS, IFACE_MODES, LOCAL_ADDRS};
use crate::parse::be16_at;


use super::ctx::*;

/// Event fields besides the addresses (kept in one struct so `emit` stays a 5-argument call).
#[derive(Clone, Copy)]
pub(super) struct Ev {
    pub(super) sport: u16,
    pub(super) dport: u16,
    pub(super) flags: u8,
    pub(super) detail: u32,
    pub(super) win_ports: u32,
    pub(super) win_hosts: u32,
}

#[inline(never)]
pub(super) fn emit(stats: &mut Stats, k: u32, l3: &L3, a: &Ev, fp: Option<&Fingerprint>) {
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


/// Whether a packet is for this host. Called only when `cfgflag::FORWARDED` is set (some
/// interface is in gateway or mirror mode): mirror = nothing is; gateway = a destination that is
/// not one of the host's addresses (`LOCAL_ADDRS`) nor multicast is forwarded. Out of line:
/// the host path only pays for the flag test.
#[inline(never)]
pub(super) fn forwarded(ctx: &XdpContext, l3: &L3) -> u8 {
    // SAFETY: the context pointer is valid for this run; `ingress_ifindex` is a plain field.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let Some(mode) = IFACE_MODES.get_ptr(&ifindex) else { return 0 };
    // SAFETY: map value pointer valid for this run.
    let mode = unsafe { *mode };
    if mode == ifmode::MIRROR {
        return 1;
    }
    if mode != ifmode::GATEWAY {
        return 0;
    }
    let multicast = if l3.v6 == 0 { (l3.dst.w[1] >> 32) as u8 >= 224 } else { l3.dst.w[0] as u8 == 0xff };
    if multicast || LOCAL_ADDRS.get_ptr(l3.dst.key()).is_some() {
        return 0;
    }
    1
}

/// Hand a forwarded packet's first `FWD_SNAP` bytes to the agent's reply tracker: TCP segments
/// that reached the full path (not established data), UDP datagrams, ICMP unreachables.
#[inline(never)]
pub(super) fn emit_forwarded(ctx: &XdpContext, stats: &mut Stats, l3: &L3) {
    if l3.frag == 2 {
        return;
    }
    let wanted = match l3.proto {
        IPPROTO_TCP | IPPROTO_UDP => true,
        // Type and code read as one 16-bit word (a 1-byte read here defeats the verifier's
        // packet-range tracking).
        IPPROTO_ICMP | IPPROTO_ICMPV6 => match be16_at(ctx, l3.l4) {
            Ok(tc) => (l3.v6 == 0 && tc >> 8 == 3) || (l3.v6 != 0 && tc >> 8 == 1),
            Err(_) => false,
        },
        _ => false,
    };
    if !wanted {
        return;
    }
    let Some(mut e) = FWD_EVENTS.reserve::<ForwardedEvent>(0) else {
        stats[stat::FWD_DROPPED as usize] += 1;
        return;
    };
    let ev = e.as_mut_ptr();
    let frame = ctx.data_end() - ctx.data();
    let mut len = if frame > FWD_SNAP { FWD_SNAP } else { frame } as u32;
    // SAFETY: `ev` points at a reserved, writable ForwardedEvent-sized record.
    unsafe {
        (*ev).hdr = EventHeader { kind: EventKind::Forwarded as u32, _pad: 0, ts_ns: now_ns() };
        (*ev).ifindex = (*ctx.ctx).ingress_ifindex;
        (*ev).frame_len = frame as u16;
        if len > 0 && len <= FWD_SNAP as u32 {
            let dst = (&raw mut (*ev).data) as *mut u8;
            if bpf_xdp_load_bytes(ctx.as_ptr() as *mut _, 0, dst as *mut _, len) != 0 {
                len = 0;
            }
        } else {
            len = 0;
        }
        (*ev).cap_len = len as u16;
    }
    e.submit(0);
    stats[stat::FWD_RECORDS as usize] += 1;
}
