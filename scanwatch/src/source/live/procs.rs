//! The per-process outbound counters the kernel keeps (`PROCS`), swept for what the kernel
//! counted instead of sending: events shed past a process's event budget become one aggregate
//! observation per process and sweep, so an alert's probe counts include them.
use std::collections::HashMap;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData};
use scanwatch_common::ProcState;

use crate::detect::{Observation, OutboundAction, ProcessAction, Stamped};

/// `PROCS`: tgid → counters.
pub type Procs = BpfHashMap<MapData, u32, ProcState>;

/// How often `PROCS` is read.
pub const PROC_SWEEP: Duration = Duration::from_secs(1);

/// Each process's shed counters as last reported (the kernel's are monotonic).
#[derive(Default)]
pub struct ProcSweep {
    last: HashMap<u32, (u32, u32)>,
}

impl ProcSweep {
    /// Read every process entry; a growth of its `shed` since the last sweep becomes an
    /// `OutboundAction::Shed`. Entries gone from the (LRU) map are forgotten.
    pub fn sweep(&mut self, procs: &Procs, now: Duration, out: &mut Vec<Stamped>) {
        let mut seen = HashMap::with_capacity(self.last.len());
        for (tgid, st) in procs.iter().filter_map(Result::ok) {
            let (shed, raw) = self.last.get(&tgid).copied().unwrap_or((0, 0));
            if let Some(a) = shed_delta(tgid, &st, shed, raw) {
                out.push(Stamped::new(now, Observation::ProcessAction(a)));
            }
            seen.insert(tgid, (st.shed, st.shed_raw));
        }
        self.last = seen;
    }
}

/// The aggregate action for a process whose shed counters grew from (`shed`, `raw`).
fn shed_delta(tgid: u32, st: &ProcState, shed: u32, raw: u32) -> Option<ProcessAction> {
    let probes = st.shed.wrapping_sub(shed);
    if probes == 0 || probes > u32::MAX / 2 {
        return None;
    }
    let raw = st.shed_raw.wrapping_sub(raw).min(probes);
    Some(ProcessAction {
        tgid,
        pid: tgid,
        // Empty: the identity comes from the enrichment cache (the process sent events before
        // its budget was spent).
        comm: String::new(),
        uid: Some(st.uid),
        action: OutboundAction::Shed { probes, raw },
        repeat: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_growth_is_reported_and_raw_never_exceeds_the_total() {
        let st = ProcState { shed: 150, shed_raw: 400, uid: 7, ..ProcState::default() };
        let a = shed_delta(42, &st, 100, 0).expect("growth");
        assert!(matches!(a.action, OutboundAction::Shed { probes: 50, raw: 50 }), "{a:?}");
        assert_eq!(a.uid, Some(7));
        assert!(shed_delta(42, &st, 150, 400).is_none(), "no growth, no action");
        // A counter that went backwards (a recycled tgid's new entry) is not a huge growth.
        assert!(shed_delta(42, &ProcState { shed: 3, ..ProcState::default() }, 10, 0).is_none());
    }
}
