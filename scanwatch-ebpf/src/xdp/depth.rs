//! Protocol depth: the first client payload of inbound connections to this host's open ports.
//!
//! A SYN whose socket lookup finds a listener (admitted sources only) marks its connection
//! pending (`CONN_FIRST` entry + a bit in `PENDING_CONNS`). The established-data fast path tests
//! that bit; the connection's first data segment then takes the full path, which copies up to
//! `PAYLOAD_SAMPLE` bytes into a `PayloadEvent` (up to `PAYLOAD_TLS_CHUNKS` events for a TLS
//! handshake record) and clears the pending state: later data stays on the fast path. A FIN, or
//! an RST with ACK, before any data is reported as a close without data (banner grab, nmap's
//! NULL probe); a bare RST (a SYN scanner tearing down the half-open connection) only clears.
use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext, EbpfContext};
use scanwatch_common::{
    conn_hash, pending_bit, stat, tcpflag::{ACK, FIN, RST}, EventHeader, EventKind, PayloadEvent, PAYLOAD_SAMPLE,
    PAYLOAD_TLS_CHUNKS,
};

use crate::maps::{CONN_FIRST, EVENTS, PENDING_CONNS};

use super::ctx::*;

/// Is the connection's bit set in the pending filter?
#[inline(always)]
pub(super) fn pending(src: &[u64; 2], dst: &[u64; 2], sport: u16, dport: u16) -> bool {
    let (word, bit) = pending_bit(conn_hash(src, dst, sport, dport));
    match PENDING_CONNS.get(word) {
        Some(w) => *w & bit != 0,
        None => false,
    }
}

fn set_bit(h: u32, on: bool) {
    let (word, bit) = pending_bit(h);
    if let Some(w) = PENDING_CONNS.get_ptr_mut(word) {
        // SAFETY: array value pointer valid for this run; a lost update only delays or misses
        // one first payload.
        unsafe {
            if on {
                *w |= bit
            } else {
                *w &= !bit
            }
        };
    }
}

/// A SYN to an open port: the connection awaits its first payload.
#[inline(always)]
pub(super) fn note_syn(l3: &L3, sport: u16, dport: u16) {
    if !first_payload_on() {
        return;
    }
    let h = conn_hash(&l3.src.w, &l3.dst.w, sport, dport);
    if CONN_FIRST.insert(&h, &0, 0).is_ok() {
        set_bit(h, true);
    }
}

/// A segment reaching the full path (BPF calls take at most five arguments).
pub(super) struct Seg {
    pub(super) sport: u16,
    pub(super) dport: u16,
    pub(super) flags: u8,
    /// Offset of the payload in the packet.
    pub(super) off: usize,
    /// Payload bytes in the segment.
    pub(super) payload: usize,
}

/// A segment of a pending connection reached the full path: data, or FIN / RST. Returns true
/// when it was the connection's first payload or close.
#[inline(never)]
pub(super) fn segment(ctx: &XdpContext, stats: &mut Stats, l3: &L3, s: &Seg) -> bool {
    if !first_payload_on() || !pending(&l3.src.w, &l3.dst.w, s.sport, s.dport) {
        return false;
    }
    let h = conn_hash(&l3.src.w, &l3.dst.w, s.sport, s.dport);
    // SAFETY: value only tested for presence.
    let known = unsafe { CONN_FIRST.get(&h) }.is_some();
    set_bit(h, false);
    if !known {
        return false;
    }
    let _ = CONN_FIRST.remove(&h);
    if s.payload > 0 {
        let mut first = [0u8; 1];
        // SAFETY: the helper reads 1 byte at a packet offset into a stack buffer (it checks bounds).
        let tls = unsafe { bpf_xdp_load_bytes(ctx.as_ptr() as *mut _, s.off as u32, first.as_mut_ptr() as *mut _, 1) } == 0
            && first[0] == 0x16;
        let chunks = if tls { PAYLOAD_TLS_CHUNKS } else { 1 };
        let mut c = 0u32;
        while c < chunks {
            if c as usize * PAYLOAD_SAMPLE >= s.payload {
                break;
            }
            emit_chunk(ctx, stats, l3, s, c);
            c += 1;
        }
        return true;
    }
    if s.flags & FIN != 0 || s.flags & (RST | ACK) == (RST | ACK) {
        emit_chunk(ctx, stats, l3, s, 0);
        return true;
    }
    false
}

#[inline(never)]
fn emit_chunk(ctx: &XdpContext, stats: &mut Stats, l3: &L3, s: &Seg, chunk: u32) {
    let Some(mut e) = EVENTS.reserve::<PayloadEvent>(0) else {
        stats[stat::EVENTS_DROPPED as usize] += 1;
        return;
    };
    let ev = e.as_mut_ptr();
    let start = chunk as usize * PAYLOAD_SAMPLE;
    let rem = s.payload.saturating_sub(start);
    let mut len = if rem > PAYLOAD_SAMPLE { PAYLOAD_SAMPLE } else { rem } as u32;
    // SAFETY: `ev` points at a reserved, writable PayloadEvent-sized record.
    unsafe {
        (*ev).hdr = EventHeader { kind: EventKind::Payload as u32, _pad: 0, ts_ns: now_ns() };
        *(&raw mut (*ev).src as *mut [u64; 2]) = l3.src.w;
        *(&raw mut (*ev).dst as *mut [u64; 2]) = l3.dst.w;
        (*ev).sport = s.sport;
        (*ev).dport = s.dport;
        (*ev).payload_len = s.payload as u32;
        (*ev).chunk = chunk as u8;
        (*ev).closed = (s.payload == 0) as u8;
        (*ev)._pad = 0;
        if len > 0 && len <= PAYLOAD_SAMPLE as u32 {
            let dst = (&raw mut (*ev).data) as *mut u8;
            if bpf_xdp_load_bytes(ctx.as_ptr() as *mut _, (s.off + start) as u32, dst as *mut _, len) != 0 {
                len = 0;
            }
        } else {
            len = 0;
        }
        (*ev).sample_len = len as u16;
    }
    e.submit(0);
    stats[stat::EVENTS as usize] += 1;
}
