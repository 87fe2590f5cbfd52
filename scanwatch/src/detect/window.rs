//! Bounded multi-window counters.
//!
//! Every entity keeps one ring of [`BUCKETS`] buckets per scoring window; a bucket covers
//! `window / BUCKETS` of time. Adding a delta touches the current bucket of every ring; reading a
//! window sums the buckets younger than the window. Memory per entity is fixed:
//! `windows x BUCKETS x M` counters, whatever the traffic.

use std::time::Duration;

/// Metrics tracked per bucket (indices into [`Metrics`]).
pub mod m {
    /// Probes sent (SYN, stealth, UDP, connect, raw).
    pub const PROBES: usize = 0;
    /// Probes known to have failed (closed port, refused, timed out).
    pub const FAILURES: usize = 1;
    /// Probes known to have succeeded (open port, established).
    pub const SUCCESSES: usize = 2;
    /// Destination ports first seen in this bucket (distinct-count increments).
    pub const NEW_PORTS: usize = 3;
    /// Destination hosts first seen in this bucket.
    pub const NEW_HOSTS: usize = 4;
    /// Share of NEW_PORTS that are privileged (< 1024).
    pub const NEW_PRIV_PORTS: usize = 5;
    /// NULL, Xmas, Maimon and SYN+FIN probes (never sent by real stacks).
    pub const STEALTH: usize = 6;
    /// FIN and bare ACK probes (also caused by stale connections).
    pub const WEAK_STEALTH: usize = 7;
    /// Fragments, source-port tricks, bad checksums.
    pub const EVASION: usize = 8;
    /// Unsolicited SYN-ACK / RST.
    pub const UNSOLICITED: usize = 9;
    pub const HONEYPORT: usize = 10;
    /// Crafted (raw socket) probes, outbound.
    pub const RAW: usize = 11;
    /// Bad-checksum probes (subset of EVASION).
    pub const BADSUM: usize = 12;
    /// Distinct (host, port) pairs first seen in this bucket (outbound).
    pub const NEW_PAIRS: usize = 13;
    /// Start of the per-counter slots: kernel counter `scanwatch_common::cnt::X` of the window
    /// is at `cnt(X)` (outbound fills the same slots for the probe shapes it sees), so an
    /// alert's evidence counts are those of its own window, never of the entity's lifetime.
    pub const CNT0: usize = 14;
    /// The window's value of kernel counter `i` (`scanwatch_common::cnt::*`).
    pub const fn cnt(i: usize) -> usize {
        CNT0 + i
    }
    /// Outbound: raw / packet sockets opened.
    pub const RAW_SOCKET: usize = CNT0 + scanwatch_common::cnt::N;
    /// Outbound: connect() attempts.
    pub const CONNECT: usize = RAW_SOCKET + 1;
    /// IP protocol numbers first seen from the source in this bucket (inbound).
    pub const NEW_PROTOS: usize = CONNECT + 1;
    pub const M: usize = NEW_PROTOS + 1;
}

/// A vector of metric values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics(pub [f32; m::M]);

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics([0.0; m::M])
    }
}

impl Metrics {
    pub fn get(&self, i: usize) -> f64 {
        f64::from(self.0[i])
    }

    pub fn set(&mut self, i: usize, v: f64) {
        self.0[i] = v as f32;
    }

    pub fn add_all(&mut self, o: &Metrics) {
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            *a += *b;
        }
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|v| *v == 0.0)
    }

    /// failures / (failures + successes), or `None` when no outcome is known.
    pub fn fail_ratio(&self) -> Option<f64> {
        let f = self.get(m::FAILURES);
        let s = self.get(m::SUCCESSES);
        (f + s > 0.0).then(|| f / (f + s))
    }
}

/// Buckets per window.
pub const BUCKETS: usize = 10;

#[derive(Debug, Clone)]
struct Ring {
    width_ns: u64,
    /// The buckets in use: (bucket epoch + 1, values), at most [`BUCKETS`], allocated only when
    /// a bucket is first written. Most entities (a spoofed source's one or two probes, a client
    /// seen once) touch one bucket per window, so an entity costs what it used, not
    /// `BUCKETS x M` counters per window (6.7 KB with the default four windows).
    buckets: Vec<(u64, Metrics)>,
    /// Index of the bucket written last (the next delta most often goes to it too).
    cur: usize,
}

impl Ring {
    fn epoch(&self, now: Duration) -> u64 {
        (now.as_nanos() as u64) / self.width_ns + 1
    }

    fn live(s: u64, e: u64) -> bool {
        s <= e && e - s < BUCKETS as u64
    }

    fn total(&self, now: Duration) -> Metrics {
        let e = self.epoch(now);
        let mut t = Metrics::default();
        for (s, v) in &self.buckets {
            if Ring::live(*s, e) {
                t.add_all(v);
            }
        }
        t
    }
}

/// One ring of buckets per window.
#[derive(Debug, Clone)]
pub struct MultiWindow {
    rings: Vec<Ring>,
}

impl MultiWindow {
    pub fn new(windows: &[Duration]) -> MultiWindow {
        let rings = windows
            .iter()
            .map(|w| Ring { width_ns: ((w.as_nanos() as u64) / BUCKETS as u64).max(1), buckets: Vec::new(), cur: 0 })
            .collect();
        MultiWindow { rings }
    }

    pub fn add(&mut self, now: Duration, delta: &Metrics) {
        if delta.is_zero() {
            return;
        }
        for r in &mut self.rings {
            let e = r.epoch(now);
            // At most one bucket has epoch `e`: the one written last, most often.
            if let Some((s, v)) = r.buckets.get_mut(r.cur) {
                if *s == e {
                    v.add_all(delta);
                    continue;
                }
            }
            if let Some(i) = r.buckets.iter().position(|(s, _)| *s == e) {
                r.buckets[i].1.add_all(delta);
                r.cur = i;
            } else if let Some(i) = r.buckets.iter().position(|(s, _)| !Ring::live(*s, e)) {
                // An expired bucket is reused (the clock never runs backwards here).
                r.buckets[i] = (e, *delta);
                r.cur = i;
            } else {
                // Grown one bucket at a time: at most BUCKETS, exact allocations.
                r.buckets.reserve_exact(1);
                r.buckets.push((e, *delta));
                r.cur = r.buckets.len() - 1;
            }
        }
    }

    /// Cache hints (nothing changes): `deep` = false the ring headers, true every ring's
    /// buckets (the headers must have been fetched by then, or reading them stalls).
    pub fn prefetch(&self, deep: bool) {
        if !deep {
            super::prefetch_bytes(self.rings.as_ptr(), std::mem::size_of_val(self.rings.as_slice()));
            return;
        }
        for r in &self.rings {
            super::prefetch_bytes(r.buckets.as_ptr(), std::mem::size_of_val(r.buckets.as_slice()));
        }
    }

    /// Totals of every window at `now`.
    pub fn totals(&self, now: Duration) -> Vec<Metrics> {
        self.rings.iter().map(|r| r.total(now)).collect()
    }

    /// Total of window `idx` at `now` (the same as `totals(now)[idx]`).
    pub fn total(&self, now: Duration, idx: usize) -> Option<Metrics> {
        self.rings.get(idx).map(|r| r.total(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_expire_independently() {
        let mut w = MultiWindow::new(&[Duration::from_secs(10), Duration::from_secs(100)]);
        let mut d = Metrics::default();
        d.set(m::PROBES, 5.0);
        w.add(Duration::from_secs(1), &d);
        w.add(Duration::from_secs(5), &d);
        let t = w.totals(Duration::from_secs(6));
        assert_eq!(t[0].get(m::PROBES), 10.0);
        assert_eq!(t[1].get(m::PROBES), 10.0);
        let t = w.totals(Duration::from_secs(30));
        assert_eq!(t[0].get(m::PROBES), 0.0);
        assert_eq!(t[1].get(m::PROBES), 10.0);
        let t = w.totals(Duration::from_secs(200));
        assert_eq!(t[1].get(m::PROBES), 0.0);
        // A bucket slot reused after wrap-around starts from zero.
        w.add(Duration::from_secs(201), &d);
        assert_eq!(w.totals(Duration::from_secs(201))[0].get(m::PROBES), 5.0);
    }

    #[test]
    fn buckets_are_allocated_when_used_and_never_exceed_the_ring() {
        let mut w = MultiWindow::new(&[Duration::from_secs(10), Duration::from_secs(100)]);
        assert!(w.rings.iter().all(|r| r.buckets.is_empty()), "nothing allocated before use");
        let mut d = Metrics::default();
        d.set(m::PROBES, 1.0);
        w.add(Duration::from_secs(3), &d);
        assert!(w.rings.iter().all(|r| r.buckets.len() == 1));
        // One probe per second for 1000 s: every ring stays at BUCKETS buckets and the totals
        // are those of the last window's worth of seconds (to a bucket: window / BUCKETS).
        for t in 4..1004 {
            w.add(Duration::from_secs(t), &d);
        }
        assert!(w.rings.iter().all(|r| r.buckets.len() <= BUCKETS));
        let t = w.totals(Duration::from_millis(1003_500));
        assert_eq!(t[0].get(m::PROBES), 10.0, "10 s window");
        let long = t[1].get(m::PROBES);
        assert!((90.0..=100.0).contains(&long), "100 s window: {long}");
    }

    #[test]
    fn fail_ratio_unknown_without_outcomes() {
        let mut d = Metrics::default();
        assert_eq!(d.fail_ratio(), None);
        d.set(m::FAILURES, 3.0);
        d.set(m::SUCCESSES, 1.0);
        assert_eq!(d.fail_ratio(), Some(0.75));
    }
}
