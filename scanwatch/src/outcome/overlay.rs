//! Reply-tracker verdicts as the per-source counters the kernel's socket lookup would have set
//! (`syn_open`, `syn_closed`, `failed`, `udp`, `udp_closed`, `ack`, `maimon`,
//! `unsolicited_synack`, `unsolicited_rst`), added to the kernel's per-source snapshots before
//! the engine sees them.
//!
//! One implementation for both places that have no socket table to ask: `scanwatch replay`
//! (captures replayed offline) and the live agent on interfaces in gateway or mirror mode
//! (traffic forwarded for, or mirrored from, other hosts). Pure: no I/O, no clock.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::net::IpAddr;
use std::time::Duration;

use scanwatch_common::cnt;

use super::{ProbeKind, ReplyTracker, Resolved, Seen, TrackerConfig, TrackerStats};
use crate::detect::SourceSnapshot;
use crate::sketch::{distinct_ports, Hll};

/// Per-source counters the kernel would have set from its socket lookup.
#[derive(Debug, Clone)]
pub struct Overlay {
    counts: [u64; cnt::N],
    /// Ports of probes only the lookup tells from normal traffic (UDP to closed ports, ACK /
    /// FIN-ACK outside a connection): without it the kernel does not count them.
    ports: Hll,
    sample: Vec<u16>,
}

impl Default for Overlay {
    fn default() -> Self {
        Overlay { counts: [0; cnt::N], ports: Hll::default(), sample: Vec::new() }
    }
}

impl Overlay {
    fn port(&mut self, p: u16) {
        self.ports.insert(u32::from(p));
        if self.sample.len() < scanwatch_common::SAMPLE_PORTS && !self.sample.contains(&p) {
            self.sample.push(p);
        }
    }

    /// Counters the kernel keeps no state for when its lookup is off.
    pub fn lookup_only(&self) -> bool {
        [cnt::UDP, cnt::ACK, cnt::MAIMON, cnt::UNSOLICITED_SYNACK, cnt::UNSOLICITED_RST].iter().any(|c| self.counts[*c] > 0)
    }

    pub fn counts(&self) -> &[u64; cnt::N] {
        &self.counts
    }

    fn apply(&mut self, r: &Resolved) {
        let c = &mut self.counts;
        match (r.kind, r.success()) {
            (ProbeKind::Syn, true) => c[cnt::SYN_OPEN] += 1,
            (ProbeKind::Syn, false) => {
                c[cnt::SYN_CLOSED] += 1;
                c[cnt::FAILED] += 1;
            }
            (ProbeKind::Stealth | ProbeKind::SctpInit | ProbeKind::SctpCookie, _) if r.failure() => c[cnt::FAILED] += 1,
            (ProbeKind::Udp, _) if r.failure() => {
                c[cnt::UDP] += 1;
                c[cnt::UDP_CLOSED] += 1;
                c[cnt::FAILED] += 1;
                self.port(r.dport);
            }
            (ProbeKind::Ack | ProbeKind::Maimon, _) if r.orphan() => {
                c[if r.kind == ProbeKind::Ack { cnt::ACK } else { cnt::MAIMON }] += 1;
                self.port(r.dport);
            }
            _ => {}
        }
    }

    /// The kernel's snapshot (or, for a source only the lookup would have counted, a
    /// synthesized one) with these counters added.
    pub fn merge(&self, ip: IpAddr, kernel: Option<&SourceSnapshot>) -> Option<SourceSnapshot> {
        let mut snap = match kernel {
            Some(s) => s.clone(),
            None if self.lookup_only() => SourceSnapshot {
                ip,
                first_seen_ns: 1,
                last_seen_ns: 1,
                counts: [0; cnt::N],
                distinct_ports: 0.0,
                distinct_hosts: 1.0,
                sample_ports: Vec::new(),
                sample_hosts: Vec::new(),
                fingerprints: Vec::new(),
                blocked: false,
                protocols: [0; 4],
            },
            None => return None,
        };
        for (c, v) in snap.counts.iter_mut().zip(self.counts.iter()) {
            *c += v;
        }
        if !self.sample.is_empty() {
            // The kernel's port sketch cannot take these ports: the larger of the two
            // estimates (exact while the sample holds them all).
            let full = self.sample.len() >= scanwatch_common::SAMPLE_PORTS;
            let extra = distinct_ports(&[], self.sample.len() as u32).max(if full { self.ports.estimate() } else { 0.0 });
            snap.distinct_ports = snap.distinct_ports.max(extra);
            for p in &self.sample {
                if snap.sample_ports.len() < scanwatch_common::SAMPLE_PORTS && !snap.sample_ports.contains(p) {
                    snap.sample_ports.push(*p);
                }
            }
        }
        Some(snap)
    }
}

/// The reply tracker and the per-source counters its verdicts make. Bounded: at most
/// `max_entries` sources keep counters (past that, those with only kernel-visible counters are
/// forgotten first, then all).
#[derive(Debug)]
pub struct ReplyOverlay {
    tracker: ReplyTracker,
    overlay: HashMap<IpAddr, Overlay>,
    /// Sources whose counters changed since the last `take_dirty`.
    dirty: HashSet<IpAddr>,
    resolved: Vec<Resolved>,
    max_entries: usize,
}

impl ReplyOverlay {
    pub fn new(tracker: TrackerConfig, max_entries: usize) -> ReplyOverlay {
        ReplyOverlay {
            tracker: ReplyTracker::new(tracker),
            overlay: HashMap::new(),
            dirty: HashSet::new(),
            resolved: Vec::new(),
            max_entries: max_entries.max(1),
        }
    }

    pub fn tracker_stats(&self) -> TrackerStats {
        self.tracker.stats()
    }

    /// Feed one packet seen at `now`; `on` sees every probe it (or the timeouts before `now`)
    /// resolved.
    pub fn observe(&mut self, now: Duration, seen: &Seen, on: &mut impl FnMut(&Resolved)) {
        if let Some(u) = self.tracker.observe(now, seen, &mut self.resolved) {
            let o = self.overlay.entry(u.from).or_default();
            o.counts[if u.synack { cnt::UNSOLICITED_SYNACK } else { cnt::UNSOLICITED_RST }] += 1;
            self.dirty.insert(u.from);
        }
        self.take_resolved(on);
    }

    /// Probes older than the timeout at `now` get "no answer".
    pub fn expire(&mut self, now: Duration, on: &mut impl FnMut(&Resolved)) {
        self.tracker.expire(now, &mut self.resolved);
        self.take_resolved(on);
    }

    /// End of input: everything still waiting has no answer.
    pub fn finish(&mut self, on: &mut impl FnMut(&Resolved)) {
        self.tracker.finish(&mut self.resolved);
        self.take_resolved(on);
    }

    fn take_resolved(&mut self, on: &mut impl FnMut(&Resolved)) {
        for r in self.resolved.drain(..) {
            on(&r);
            let o = self.overlay.entry(r.prober).or_default();
            let before = o.counts;
            o.apply(&r);
            if before != o.counts {
                self.dirty.insert(r.prober);
            }
        }
    }

    /// The source's counters, if it has any.
    pub fn get(&self, ip: &IpAddr) -> Option<&Overlay> {
        self.overlay.get(ip)
    }

    /// `kernel` (the source's kernel snapshot, if any) with the source's counters added.
    pub fn merge(&self, ip: IpAddr, kernel: Option<&SourceSnapshot>) -> Option<SourceSnapshot> {
        match self.overlay.get(&ip) {
            Some(o) => o.merge(ip, kernel),
            None => kernel.cloned(),
        }
    }

    /// Sources whose counters changed since the last call, in address order (the engine is fed
    /// the same way on every run: a replay is reproducible).
    pub fn take_dirty(&mut self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.dirty.drain().collect();
        v.sort_unstable();
        v
    }

    /// Mark a source changed (its kernel state moved).
    pub fn mark_dirty(&mut self, ip: IpAddr) {
        self.dirty.insert(ip);
    }

    pub fn len(&self) -> usize {
        self.overlay.len()
    }

    pub fn is_empty(&self) -> bool {
        self.overlay.is_empty()
    }

    /// Keep at most `max_entries` sources: those `keep` says still have kernel state, or that
    /// have counters only the lookup makes, first.
    pub fn bound(&mut self, keep: impl Fn(&IpAddr) -> bool) {
        if self.overlay.len() > self.max_entries {
            self.overlay.retain(|ip, o| keep(ip) || o.lookup_only());
            if self.overlay.len() > self.max_entries {
                self.overlay.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scanwatch_common::tcpflag::{ACK, RST, SYN};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn verdicts_become_the_lookup_counters() {
        let mut ov = ReplyOverlay::new(TrackerConfig { timeout: Duration::from_secs(1), ..TrackerConfig::default() }, 100);
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let tcp = |src, dst, sport, dport, flags| Seen::Tcp { src, dst, sport, dport, flags, payload: false };
        let mut opened = Vec::new();
        let mut on = |r: &Resolved| {
            if r.success() {
                opened.push(r.dport)
            }
        };
        ov.observe(Duration::ZERO, &tcp(a, b, 40000, 80, SYN), &mut on);
        ov.observe(Duration::ZERO, &tcp(a, b, 40000, 81, SYN), &mut on);
        ov.observe(Duration::ZERO, &tcp(a, b, 40000, 82, SYN), &mut on);
        ov.observe(Duration::from_millis(1), &tcp(b, a, 80, 40000, SYN | ACK), &mut on);
        ov.observe(Duration::from_millis(1), &tcp(b, a, 81, 40000, RST | ACK), &mut on);
        ov.expire(Duration::from_secs(2), &mut on);
        assert_eq!(opened, vec![80]);
        assert_eq!(ov.take_dirty(), vec![a]);
        let c = ov.get(&a).expect("counters").counts();
        assert_eq!((c[cnt::SYN_OPEN], c[cnt::SYN_CLOSED], c[cnt::FAILED]), (1, 2, 2));
        // No kernel state and only kernel-visible counters: nothing to show.
        assert!(ov.merge(a, None).is_none());
        assert!(ov.take_dirty().is_empty());
    }
}
