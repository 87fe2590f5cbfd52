//! Ring-buffer events (threshold, honeyport, new fingerprint).
use scanwatch_common::{
    stat, EventHeader,
    Fingerprint, InboundEvent,
};

use crate::maps::EVENTS;


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

