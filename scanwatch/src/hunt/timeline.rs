//! The log's own timeline: records → per-source state → the real detection engine, with the
//! engine's clock driven by the records' timestamps.
//!
//! conn.log lines are written when a connection ends, but `ts` is its start, so the log is not
//! in `ts` order. Records wait in a bounded reorder buffer of one bucket per sweep interval
//! (`agent.sweep_interval`, 1 s by default); a bucket is applied once the newest `ts` seen is
//! `reorder` past it (or when the buffer holds `max_buffered` records). Each applied bucket is
//! one sweep, as the live agent's: the sources whose state changed are handed to
//! [`Engine::observe_source`] at the bucket's end time, honeyport touches to
//! [`Engine::observe_inbound_event`], and [`Engine::tick`] runs every `tick` of log time (and
//! once at the scheduled time when the log has a gap), so every window from 10 s to 24 h applies
//! in log time. A record older than the last applied bucket (later than the reorder window) is
//! applied at the current engine time and counted as late.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::features::{Classified, Classifier, ProbeKind, SourceState, SourceTable, PAIR_SLOTS};
use super::zeek::{addr_to_ip, Proto, Record};
use crate::alert::Alert;
use crate::config::Config;
use crate::detect::{Engine, InboundEventKind, InboundObservation, Observation, Observer, Stamped};

/// Tuning of the timeline.
#[derive(Debug, Clone)]
pub struct TimelineOptions {
    /// Bucket width = the agent's sweep interval.
    pub sweep: Duration,
    /// Engine tick period (log time).
    pub tick: Duration,
    /// How far behind the newest `ts` a bucket waits for stragglers.
    pub reorder: Duration,
    /// Most records held in the reorder buffer (the oldest bucket is applied early beyond it).
    pub max_buffered: usize,
    /// Most sources held (least recently seen eighth evicted when full).
    pub max_sources: usize,
    /// Keep the states of evicted sources for the feature table (and the per-source sketches
    /// only the table reads).
    pub keep_rows: bool,
    /// First-contact table entries.
    pub pair_slots: usize,
}

impl TimelineOptions {
    pub fn from_config(cfg: &Config) -> TimelineOptions {
        TimelineOptions {
            sweep: cfg.agent.sweep_interval.max(Duration::from_millis(1)),
            tick: cfg.agent.sweep_interval.max(Duration::from_secs(10)),
            reorder: Duration::from_secs(300),
            max_buffered: 1 << 18,
            max_sources: cfg.xdp.max_sources as usize,
            keep_rows: false,
            pair_slots: PAIR_SLOTS,
        }
    }
}

/// Counters of the timeline.
#[derive(Debug, Clone, Default)]
pub struct TimelineStats {
    pub records: u64,
    /// Records that arrived after their bucket had been applied.
    pub late: u64,
    /// Records applied early because the reorder buffer was full.
    pub forced: u64,
    pub probes: u64,
    /// Snapshots handed to the engine.
    pub snapshots: u64,
    pub ticks: u64,
    pub honeyport_events: u64,
    pub first_ts_us: Option<i64>,
    pub last_ts_us: Option<i64>,
    pub alerts_by_kind: BTreeMap<String, u64>,
}

pub struct Timeline {
    engine: Engine,
    sources: SourceTable,
    /// Used by [`Timeline::push`] only (the hunt command classifies on the parser thread).
    classifier: Option<Classifier>,
    honey_tcp: Vec<u16>,
    honey_udp: Vec<u16>,
    opts: TimelineOptions,
    sweep_us: i64,
    tick_us: i64,
    reorder_buckets: i64,
    buckets: BTreeMap<i64, Vec<Classified>>,
    /// Emptied bucket vectors, reused (a bucket per sweep interval would otherwise allocate
    /// and grow a vector every second of log time).
    spare: Vec<Vec<Classified>>,
    buffered: usize,
    newest_bucket: Option<i64>,
    /// The bucket of the last record pushed and its first microsecond: most records fall in
    /// the same bucket as the one before (no division for them).
    last_bucket: Option<(i64, i64)>,
    applied_upto: Option<i64>,
    clock_us: i64,
    next_tick_us: Option<i64>,
    alerts: Vec<Alert>,
    /// When set, observations are queued here for an engine on another thread (see
    /// [`EngineStage`]) instead of being handed to this timeline's engine.
    queue: Option<Vec<Stamped>>,
    #[expect(clippy::vec_box, reason = "states move out of the source map as boxes (about 1 KiB each), never copied")]
    rows: Vec<Box<SourceState>>,
    #[expect(clippy::vec_box, reason = "as rows")]
    evicted_scratch: Vec<Box<SourceState>>,
    pub stats: TimelineStats,
}

fn to_now(us: i64) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}

/// The engine as the hunt drives it: engine time is Unix time, so alert times are the log's.
fn hunt_engine(cfg: &Config, hostname: String) -> Engine {
    let mut engine = Engine::new(cfg, hostname);
    engine.set_wall_clock(Duration::ZERO, UNIX_EPOCH);
    // Every source has state here (no first-contact table holding one-probe sources apart).
    engine.set_distributed_min_outcomes(3);
    engine
}

/// The engine on a thread of its own: it consumes the observations a [`Timeline`] in queue mode
/// ([`Timeline::queue_observations`]) produced, in their order, so its alerts are those the
/// timeline's own engine would have raised. (The per-source alert notes of the feature table
/// are not kept: the table runs the timeline with its own engine.)
pub struct EngineStage {
    engine: Engine,
    pub alerts_by_kind: BTreeMap<String, u64>,
}

impl EngineStage {
    pub fn new(cfg: &Config, hostname: String) -> EngineStage {
        EngineStage { engine: hunt_engine(cfg, hostname), alerts_by_kind: BTreeMap::new() }
    }

    pub fn set_baseline(&mut self, b: crate::detect::Baseline) {
        self.engine.set_baseline(b);
    }

    /// Cache hints for the sources of the observations a few after `obs[i]` (the engine's
    /// per-source state is far bigger than the caches): nothing changes.
    pub fn prefetch(&self, obs: &[Stamped], i: usize) {
        for (ahead, level) in [(12, 0), (8, 1), (4, 2)] {
            if let Some(Stamped { obs: Observation::Source(s), .. }) = obs.get(i + ahead) {
                self.engine.prefetch_source(s.ip, level);
            }
        }
    }

    pub fn observe(&mut self, s: &Stamped) -> Vec<Alert> {
        let alerts = self.engine.observe(s);
        for a in &alerts {
            *self.alerts_by_kind.entry(a.kind.as_str().to_string()).or_default() += 1;
        }
        alerts
    }
}

impl Timeline {
    pub fn new(cfg: &Config, hostname: String, opts: TimelineOptions) -> Timeline {
        let engine = hunt_engine(cfg, hostname);
        let hp = cfg.effective_honeyports();
        let mut honey_tcp = hp.tcp.clone();
        honey_tcp.sort_unstable();
        let mut honey_udp = hp.udp.clone();
        honey_udp.sort_unstable();
        let sweep_us = (opts.sweep.as_micros() as i64).max(1);
        Timeline {
            engine,
            sources: SourceTable::new(opts.max_sources),
            classifier: None,
            honey_tcp,
            honey_udp,
            tick_us: (opts.tick.as_micros() as i64).max(sweep_us),
            reorder_buckets: (opts.reorder.as_micros() as i64 / sweep_us).max(0),
            sweep_us,
            opts,
            buckets: BTreeMap::new(),
            spare: Vec::new(),
            buffered: 0,
            newest_bucket: None,
            last_bucket: None,
            applied_upto: None,
            clock_us: 0,
            next_tick_us: None,
            alerts: Vec::new(),
            queue: None,
            rows: Vec::new(),
            evicted_scratch: Vec::new(),
            stats: TimelineStats::default(),
        }
    }

    /// Queue the observations for an [`EngineStage`] (take them with
    /// [`Timeline::take_observations`]) instead of running this timeline's engine. No alerts
    /// come back, so the sources' alert notes stay empty: not for the feature table.
    pub fn queue_observations(&mut self) {
        self.queue = Some(Vec::new());
    }

    /// The observations queued since the last call, in order.
    pub fn take_observations(&mut self) -> Vec<Stamped> {
        // The next batch's queue starts at this one's size (no regrowing, no copies).
        self.queue.as_mut().map(|q| std::mem::replace(q, Vec::with_capacity(q.len()))).unwrap_or_default()
    }

    /// Use a learned baseline (`agent.baseline`).
    pub fn set_baseline(&mut self, b: crate::detect::Baseline) {
        self.engine.set_baseline(b);
    }

    /// Add one record (classified here).
    pub fn push(&mut self, r: Record) {
        let slots = self.opts.pair_slots;
        let x = self.classifier.get_or_insert_with(|| Classifier::new(slots)).classify(r);
        self.push_classified(x);
    }

    /// Add one record classified by a [`Classifier`] (records of one log through one classifier).
    pub fn push_classified(&mut self, x: Classified) {
        let r = &x;
        self.stats.records += 1;
        self.stats.first_ts_us = Some(self.stats.first_ts_us.map_or(r.ts_us, |t| t.min(r.ts_us)));
        self.stats.last_ts_us = Some(self.stats.last_ts_us.map_or(r.ts_us, |t| t.max(r.ts_us)));
        let b = self.bucket_of(r.ts_us);
        if self.applied_upto.is_some_and(|a| b <= a) {
            self.stats.late += 1;
            let now = self.clock_us;
            self.apply(&x, now);
            return;
        }
        // Most records fall in the newest bucket.
        match self.buckets.last_entry() {
            Some(mut e) if *e.key() == b => e.get_mut().push(x),
            _ => {
                let spare = &mut self.spare;
                self.buckets.entry(b).or_insert_with(|| spare.pop().unwrap_or_default()).push(x);
            }
        }
        self.buffered += 1;
        if self.newest_bucket.is_none_or(|n| b > n) {
            self.newest_bucket = Some(b);
            let horizon = b - self.reorder_buckets;
            while let Some((&first, _)) = self.buckets.first_key_value() {
                if first > horizon {
                    break;
                }
                self.flush_first();
            }
        }
        while self.buffered > self.opts.max_buffered {
            if let Some((_, v)) = self.buckets.first_key_value() {
                self.stats.forced += v.len() as u64;
            }
            self.flush_first();
        }
    }

    /// `ts_us.div_euclid(sweep_us)`, without the division when `ts_us` falls in the bucket of
    /// the record before.
    fn bucket_of(&mut self, ts_us: i64) -> i64 {
        if let Some((b, lo)) = self.last_bucket {
            if ts_us.checked_sub(lo).is_some_and(|d| (0..self.sweep_us).contains(&d)) {
                return b;
            }
        }
        let b = ts_us.div_euclid(self.sweep_us);
        self.last_bucket = b.checked_mul(self.sweep_us).map(|lo| (b, lo));
        b
    }

    /// Apply everything still buffered and run a final tick.
    pub fn finish(&mut self) {
        while !self.buckets.is_empty() {
            self.flush_first();
        }
        let now = self.clock_us;
        if self.stats.records > 0 {
            self.tick_at(now);
        }
    }

    /// Alerts raised since the last call.
    pub fn take_alerts(&mut self) -> Vec<Alert> {
        std::mem::take(&mut self.alerts)
    }

    /// States of sources evicted since the last call (only with `keep_rows`).
    pub fn take_evicted_rows(&mut self) -> Vec<Box<SourceState>> {
        std::mem::take(&mut self.rows)
    }

    /// All remaining states, sorted by address (after [`Timeline::finish`]).
    pub fn drain_sources(&mut self) -> Vec<Box<SourceState>> {
        self.sources.drain_sorted()
    }

    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    pub fn sources_evicted(&self) -> u64 {
        self.sources.evicted
    }

    pub fn engine_stats(&self) -> crate::detect::EngineStats {
        self.engine.stats()
    }

    fn flush_first(&mut self) {
        let Some((b, mut recs)) = self.buckets.pop_first() else { return };
        self.buffered -= recs.len();
        self.applied_upto = Some(self.applied_upto.map_or(b, |a| a.max(b)));
        let now = (b + 1).saturating_mul(self.sweep_us).max(self.clock_us);
        // Catch up a tick scheduled inside a gap of the log, at its own time.
        if let Some(t) = self.next_tick_us {
            if t < now {
                self.tick_at(t);
            }
        }
        const AHEAD: usize = 4;
        for (i, r) in recs.iter().enumerate() {
            // The per-source states are bigger than the caches: fetch the one of a record a few
            // ahead while this one is applied.
            if let Some(n) = recs.get(i + AHEAD) {
                self.sources.prefetch(&n.orig_h);
            }
            self.apply(r, now);
        }
        if self.spare.len() < 1024 {
            recs.clear();
            self.spare.push(recs);
        }
        self.clock_us = now;
        self.sweep(now);
        match self.next_tick_us {
            Some(t) if t > now => {}
            _ => self.tick_at(now),
        }
    }

    /// One stamped observation into the engine (the pipeline's typed input).
    fn observe(&mut self, now_us: i64, obs: Observation) -> Vec<Alert> {
        let s = Stamped::new(to_now(now_us), obs);
        match &mut self.queue {
            Some(q) => {
                q.push(s);
                Vec::new()
            }
            None => self.engine.observe(&s),
        }
    }

    fn tick_at(&mut self, now_us: i64) {
        let a = self.observe(now_us, Observation::Tick);
        self.stats.ticks += 1;
        self.emit(a);
        let next = (now_us.div_euclid(self.tick_us) + 1) * self.tick_us;
        self.next_tick_us = Some(next);
    }

    fn sweep(&mut self, now_us: i64) {
        // Each snapshot goes straight to the engine (or its queue): no vector of them between.
        let keys = self.sources.take_dirty_keys();
        for k in keys {
            if let Some(s) = self.sources.snapshot_dirty(k) {
                self.stats.snapshots += 1;
                let a = self.observe(now_us, Observation::Source(s));
                self.emit(a);
            }
        }
    }

    fn apply(&mut self, x: &Classified, now_us: i64) {
        let (r, c) = (x, x);
        let honeyport = c.probe == ProbeKind::Port
            && match r.proto {
                Proto::Tcp => self.honey_tcp.binary_search(&r.resp_p).is_ok(),
                Proto::Udp => self.honey_udp.binary_search(&r.resp_p).is_ok(),
                _ => false,
            };
        let mut evicted = std::mem::take(&mut self.evicted_scratch);
        let st = self.sources.entry(&r.orig_h, r.ts_us, &mut evicted);
        let dirty = st.apply(x, honeyport, self.opts.keep_rows);
        if dirty {
            self.sources.mark_dirty(&r.orig_h);
        }
        if c.probe != ProbeKind::None {
            self.stats.probes += 1;
        }
        if !evicted.is_empty() {
            // Their last changes reach the engine before they go, as the agent sweeps a
            // source it reads before the kernel recycles its slot.
            for s in evicted.iter_mut() {
                if s.dirty {
                    let a = self.observe(now_us, Observation::Source(s.snapshot()));
                    self.stats.snapshots += 1;
                    let ip = addr_to_ip(&s.addr);
                    for al in a.iter().filter(|al| al.source.ip == Some(ip)) {
                        s.note_alert(al.kind, al.severity);
                    }
                    self.emit(a);
                }
            }
            if self.opts.keep_rows {
                self.rows.append(&mut evicted);
            }
            evicted.clear();
        }
        self.evicted_scratch = evicted;
        if honeyport {
            self.stats.honeyport_events += 1;
            let ev = InboundObservation {
                ip: addr_to_ip(&r.orig_h),
                dst: addr_to_ip(&r.resp_h),
                kind: InboundEventKind::Honeyport { dport: r.resp_p, proto: r.proto.number() },
            };
            // The kernel raises the event with the packet; the counters follow at the sweep.
            let a = self.observe(now_us, Observation::Inbound(ev));
            self.emit(a);
        }
    }

    fn emit(&mut self, alerts: Vec<Alert>) {
        for a in alerts {
            *self.stats.alerts_by_kind.entry(a.kind.as_str().to_string()).or_default() += 1;
            if let Some(ip) = a.source.ip {
                self.sources.note_alert(ip, a.kind, a.severity);
            }
            self.alerts.push(a);
        }
    }
}

/// Unix time in microseconds of a `SystemTime` (for tests and the summary).
pub fn unix_us(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hunt::zeek::{parse_addr, ConnState, History};

    fn rec(ts_s: i64, src: &str, port: u16, state: ConnState) -> Record {
        Record {
            ts_us: ts_s * 1_000_000,
            orig_h: parse_addr(src.as_bytes()).expect("addr"),
            resp_h: parse_addr(b"10.9.9.9").expect("addr"),
            orig_p: 40000,
            resp_p: port,
            proto: Proto::Tcp,
            state,
            history: History::parse(b"S"),
            orig_pkts: Some(1),
            resp_pkts: Some(0),
        }
    }

    #[test]
    fn reorder_window_places_stragglers_and_counts_late_records() {
        let cfg = Config::default_embedded();
        let mut o = TimelineOptions::from_config(&cfg);
        o.reorder = Duration::from_secs(60);
        o.pair_slots = 1024;
        let mut t = Timeline::new(&cfg, "t".into(), o);
        t.push(rec(1_000, "10.0.0.1", 1, ConnState::S0));
        t.push(rec(990, "10.0.0.1", 2, ConnState::S0)); // 10 s older: inside the window
        assert_eq!(t.buffered, 2);
        t.push(rec(1_100, "10.0.0.1", 3, ConnState::S0)); // applies everything up to 1,040
        assert_eq!(t.buffered, 1);
        assert_eq!(t.clock_us, 1_001_000_000, "the engine clock is the end of the last applied bucket");
        t.push(rec(995, "10.0.0.1", 4, ConnState::S0)); // its bucket was applied: late
        assert_eq!(t.stats.late, 1);
        t.finish();
        assert_eq!(t.stats.records, 4);
        assert_eq!(t.buffered, 0);
        let s = t.drain_sources();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].f.first_failed, 4, "every first contact counted, late or not");
    }

    #[test]
    fn buffer_bound_forces_the_oldest_bucket_out() {
        let cfg = Config::default_embedded();
        let mut o = TimelineOptions::from_config(&cfg);
        o.max_buffered = 10;
        o.pair_slots = 1024;
        let mut t = Timeline::new(&cfg, "t".into(), o);
        for i in 0..30 {
            t.push(rec(1_000 + i / 3, "10.0.0.2", i as u16, ConnState::Rej));
        }
        assert!(t.buffered <= 10, "{}", t.buffered);
        assert!(t.stats.forced >= 20);
    }
}
