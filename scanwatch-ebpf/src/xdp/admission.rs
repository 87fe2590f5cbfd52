//! First-contact admission: a source's first scan-shaped packet is held in a fixed table; its
//! second admits it to SOURCES (the held probe is replayed).
use scanwatch_common::{
    addr_fold32, cfgflag, known_bit, stat, SrcState, XdpConfig, FC_BUMPS, FIRST_CONTACT_SLOTS,
};

use crate::maps::{
        Obs, FIRST_CONTACT, KNOWN_SOURCES, SOURCES, ZERO_SRC,
    };


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

/// The source's state, or null. With the first-contact tier on, a source that is not known is
/// admitted only on its second scan-shaped packet (its first is replayed from the slot); its
/// first packet is held and `obs.held` set. Honeyport touches are admitted at once.
#[inline(always)]
pub(super) fn acquire(stats: &mut Stats, cfg: &XdpConfig, l3: &L3, obs: &mut Obs) -> *mut SrcState {
    let key = l3.src.key();
    let w = l3.src.w;
    let h = obs.source_hash(&l3.src);
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

