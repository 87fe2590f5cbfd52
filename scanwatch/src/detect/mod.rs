//! Detection engine: pure, bounded-memory scan detection.
//!
//! The engine does no I/O and reads no clock: every call carries `now`, a [`Duration`] since an
//! arbitrary epoch (monotonic or boot time in production, a simulated clock in tests). Alert
//! timestamps are `now` plus an offset set with [`Engine::set_wall_clock`].
//!
//! Inputs:
//! * [`Engine::observe_source`]: cumulative per-source kernel counters from the periodic sweep.
//!   The engine turns them into deltas (a changed `first_seen_ns` means the LRU entry was
//!   evicted and re-created) and feeds every scoring window (`detect.windows`). Distinct ports
//!   and hosts come from deltas of the kernel's lifetime HyperLogLog estimates, corrected with
//!   the exact port samples when an entry is re-created.
//! * [`Engine::observe_inbound_event`]: immediate kernel events (honeyport touch, short-window
//!   threshold crossed, new fingerprint).
//! * [`Engine::observe_outbound`]: one enriched outbound action of a local process. Outbound
//!   entities are keyed by (uid, executable, parent pid), so a shell loop spawning one `nc` per
//!   port is one entity. Distinct counts use the engine's own HyperLogLog sketches.
//! * [`Engine::tick`]: periodic slow-scan and distributed-scan evaluation, expiry and rate-limit
//!   summaries.
//!
//! Memory is bounded by `detect.max_inbound_entities` / `detect.max_outbound_entities` (least
//! recently seen entities are evicted first) and fixed-size per-entity state.


mod baseline;
mod correlate;
mod correlate_state;
mod engine;
mod features;
mod inbound;
mod inbound_state;
mod lifecycle;
mod observe;
mod outbound;
mod outbound_state;
mod reason;
mod shape;
mod timeline;
mod timeline_state;
mod trw;
mod types;
mod window;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_truth;

pub use baseline::{Baseline, BaselineError, BaselineLearner, ExeBaseline, SourceBaseline};
pub use engine::Engine;
pub use features::TimingClass;
pub use lifecycle::Verdict;
pub use observe::{Observation, Observer, ProcessAction, Stamped};
pub use timeline_state::TimelineStats;
pub use trw::{Trw, TrwDecision, TrwParams};
pub use types::{
    EngineStats, FingerprintInfo, HeldProbe, InboundEventKind, InboundObservation, OutboundAction, OutboundObservation,
    PayloadObservation, SourceSnapshot,
};
pub use crate::vocab::ProcessInfo;

/// A cache prefetch hint for the line holding `p` (nothing on targets without one). Never
/// faults, whatever the address, and changes nothing.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 (SSE, part of the x86_64 baseline) only hints the cache; it never
    // faults, even on an invalid address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetch hints for every cache line of `len` bytes from `p`.
#[inline]
pub(crate) fn prefetch_bytes<T>(p: *const T, len: usize) {
    let b = p.cast::<u8>();
    let mut off = 0;
    while off < len {
        prefetch(b.wrapping_add(off));
        off += 64;
    }
}
