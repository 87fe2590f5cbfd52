//! First-contact admission: a source's first scan-shaped packet is held in a fixed table; its
//! second admits it to SOURCES (the held probe is replayed).
use scanwatch_common::{
    addr_fold32, cfgflag, known_bit, src_set, stat, SrcEntry, SrcState, XdpConfig, FC_BUMPS, FIRST_CONTACT_SLOTS,
    SRC_WAYS,
};

use crate::maps::{Obs, FIRST_CONTACT, KNOWN_SOURCES, SOURCES, SRC_OCCUPIED};


use super::ctx::*;

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
pub(super) fn mark_known(h: u32) {
    let (word, bit) = known_bit(h);
    if let Some(w) = KNOWN_SOURCES.get_ptr_mut(word) {
        // SAFETY: array value pointer valid for this run; a racing CPU can only lose a bit,
        // which costs that source one more pass through the first-contact table.
        unsafe { *w |= bit };
    }
}

/// First slot of the source's set in SOURCES.
#[inline(always)]
fn set_base(h: u32) -> u32 {
    // SAFETY: reads of load-time constants the loader rewrote.
    let (sets, seed) = unsafe { (core::ptr::read_volatile(&SRC_SETS), core::ptr::read_volatile(&SRC_SEED)) };
    src_set(h, sets, seed) * SRC_WAYS
}

/// The address words of a slot.
#[inline(always)]
fn slot_addr(e: *mut SrcEntry) -> [u64; 2] {
    // SAFETY: `e` is a valid map value; the key is its first 16 bytes, 8-aligned.
    unsafe { *(e as *const [u64; 2]) }
}

/// The source's state in its set, or null.
#[inline(always)]
fn find(base: u32, w: &[u64; 2]) -> *mut SrcState {
    let mut way = 0;
    while way < SRC_WAYS {
        if let Some(e) = SOURCES.get_ptr_mut(base + way) {
            let a = slot_addr(e);
            if a[0] == w[0] && a[1] == w[1] {
                // SAFETY: field of a valid map value.
                return unsafe { &mut (*e).state };
            }
        }
        way += 1;
    }
    core::ptr::null_mut()
}

/// Give the source a slot of its set: a free one, else the least recently seen source's (an
/// eviction). Two CPUs admitting sources of one set at the same instant may pick the same slot
/// (one source then starts over on its next packet) or one source twice (the agent keeps the
/// first way, as lookups do): both bounded, neither loses more than a probe.
#[inline(always)]
fn insert(stats: &mut Stats, base: u32, w: &[u64; 2]) -> *mut SrcState {
    let mut victim: *mut SrcEntry = core::ptr::null_mut();
    let mut oldest = u64::MAX;
    let mut way = 0;
    while way < SRC_WAYS {
        if let Some(e) = SOURCES.get_ptr_mut(base + way) {
            let a = slot_addr(e);
            if a[0] == 0 && a[1] == 0 {
                victim = e;
                break;
            }
            // SAFETY: field of a valid map value.
            let seen = unsafe { (*e).state.last_seen_ns };
            if seen < oldest {
                oldest = seen;
                victim = e;
            }
        }
        way += 1;
    }
    if victim.is_null() {
        stats[stat::SOURCE_INSERT_FAILED as usize] += 1;
        return victim as *mut SrcState;
    }
    // Clear the state word by word (volatile: a struct store becomes a memset call on this
    // target), then claim the slot.
    let words = victim as *mut u64;
    let mut i = 2;
    while i < core::mem::size_of::<SrcEntry>() / 8 {
        // SAFETY: within the 880-byte map value.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    // SAFETY: the key words of the same value.
    unsafe {
        core::ptr::write_volatile(words, w[0]);
        core::ptr::write_volatile(words.add(1), w[1]);
    }
    stats[stat::NEW_SOURCES as usize] += 1;
    let set = base / SRC_WAYS;
    if let Some(word) = SRC_OCCUPIED.get_ptr_mut(set >> 3) {
        // SAFETY: byte (set & 7) of an 8-byte array value; a plain byte store, so racing CPUs
        // marking neighbouring sets do not undo each other.
        unsafe { core::ptr::write_volatile((word as *mut u8).add((set & 7) as usize), 1) };
    }
    // SAFETY: field of a valid map value.
    unsafe { &mut (*victim).state }
}

/// The source's state, or null. With the first-contact tier on, a source that is not known is
/// admitted only on its second scan-shaped packet (its first is replayed from the slot); its
/// first packet is held and `obs.held` set. Honeyport touches are admitted at once.
#[inline(always)]
pub(super) fn acquire(stats: &mut Stats, cfg: &XdpConfig, l3: &L3, obs: &mut Obs) -> *mut SrcState {
    let w = l3.src.w;
    // `::` (IPv6 duplicate-address detection) would match a free slot: it gets no state.
    if w[0] | w[1] == 0 {
        return core::ptr::null_mut();
    }
    let h = obs.source_hash(&l3.src);
    // The set is computed where a lookup or insert needs it: a held packet (the flood path)
    // never does.
    if cfg.flags & cfgflag::FIRST_CONTACT != 0 && obs.honey == 0 {
        let (word, bit) = known_bit(h);
        let maybe_known = match KNOWN_SOURCES.get(word) {
            Some(bits) => *bits & bit != 0,
            None => true,
        };
        if maybe_known {
            let p = find(set_base(h), &w);
            if !p.is_null() {
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
    } else {
        let p = find(set_base(h), &w);
        if !p.is_null() {
            return p;
        }
    }
    let p = insert(stats, set_base(h), &w);
    mark_known(h);
    p
}
