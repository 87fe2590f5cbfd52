//! The detection engine: owns every detector's state and the alert lifecycle, and is driven by
//! stamped observations. The detectors' logic lives in `inbound.rs`, `outbound.rs` and
//! `correlate.rs` (each an `impl Engine` block over the state types of `*_state.rs`).
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::baseline::Baseline;
use super::correlate_state::{Distributed, FingerprintIndex};
use super::inbound_state::InboundEntity;
use super::lifecycle::{Lifecycle, Verdict};
use super::outbound_state::OutboundEntity;
use super::trw::TrwParams;
use super::types::{EngineStats, HeldProbe, InboundEventKind, InboundObservation, OutboundObservation, SourceSnapshot};
use crate::alert::{Alert, AlertKind, HostInfo, Shape};
use crate::config::{Config, RoleProfile};
use crate::vocab::rfc3339_from_unix;

/// The detection engine.
#[derive(Debug)]
pub struct Engine {
    pub(super) cfg: Config,
    pub(super) role: RoleProfile,
    pub(super) host: HostInfo,
    pub(super) trw: TrwParams,
    pub(super) baseline: Option<Baseline>,
    /// Boxed: the table is rehashed as it grows to `detect.max_inbound_entities`, and an inline
    /// entity would make each bucket (and each rehash copy) ~1 KB.
    /// foldhash (seeded per process, like std's keys): the map is read several times per
    /// snapshot, and SipHash of the address showed in profiles of `scanwatch hunt`.
    pub(super) inbound: HashMap<IpAddr, Box<InboundEntity>, foldhash::fast::RandomState>,
    pub(super) outbound: HashMap<String, OutboundEntity>,
    pub(super) fingerprints: FingerprintIndex,
    pub(super) distributed: Distributed,
    pub(super) lifecycle: Lifecycle,
    /// Per-actor timeline (discovery → enumeration → exploitation), see `timeline.rs`.
    pub(super) timeline: super::timeline_state::Timeline,
    /// `wall - now` in seconds.
    pub(super) wall_offset: f64,
    pub(super) evicted: u64,
    /// Index of the window used for the kernel's short-window threshold events.
    pub(super) short_idx: usize,
    /// Inbound sources marked dirty since the last tick (each listed when it became dirty), so
    /// the tick evaluates them without scanning the whole table.
    pub(super) dirty_inbound: Vec<IpAddr>,
    /// Inbound sources that may take part in a distributed or split scan: not allowlisted, with
    /// a lifetime failure ratio unknown or at least `detect.min_fail_ratio` when last updated.
    /// A superset (pruned at each evaluation), so the evaluation visits these, not every source.
    pub(super) failing_inbound: std::collections::BTreeSet<IpAddr>,
    /// Inbound sources whose honeyport touch waits for its event (`honey_unexplained` set).
    pub(super) honey_waiting: std::collections::BTreeSet<IpAddr>,
    /// No inbound source can expire before this (the least `last_seen` + `detect.entity_idle`
    /// as of the last expiry pass, lowered by every later `last_seen`): the pass is skipped
    /// until then.
    pub(super) inbound_expiry: Duration,
    /// Known outcomes (failures + successes over its life) a source with state of its own needs
    /// to count towards a distributed scan (see [`Engine::set_distributed_min_outcomes`]).
    pub(super) distributed_min_outcomes: u64,
}

impl Engine {
    pub fn new(cfg: &Config, hostname: String) -> Engine {
        let role = cfg.role().clone();
        let short_idx = cfg
            .detect
            .windows
            .iter()
            .position(|w| *w >= cfg.xdp.short_window)
            .unwrap_or(0);
        Engine {
            host: HostInfo { name: hostname.clone(), role: role.name.clone() },
            role,
            trw: TrwParams::new(&cfg.detect.trw),
            baseline: None,
            inbound: HashMap::default(),
            outbound: HashMap::new(),
            fingerprints: FingerprintIndex::default(),
            distributed: Distributed::default(),
            lifecycle: Lifecycle::new(&cfg.alerts, &hostname, instance_nonce()),
            timeline: Default::default(),
            wall_offset: 0.0,
            evicted: 0,
            short_idx,
            dirty_inbound: Vec::new(),
            failing_inbound: Default::default(),
            honey_waiting: Default::default(),
            inbound_expiry: Duration::ZERO,
            distributed_min_outcomes: 1,
            cfg: cfg.clone(),
        }
    }

    /// Use a learned baseline: known per-source / per-executable fan-out raises thresholds and
    /// lowers novelty.
    pub fn set_baseline(&mut self, b: Baseline) {
        self.baseline = Some(b);
    }

    /// Anchor alert timestamps: `wall` is the wall-clock time at engine time `now`.
    pub fn set_wall_clock(&mut self, now: Duration, wall: SystemTime) {
        let wall_secs = match wall.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        self.wall_offset = wall_secs - now.as_secs_f64();
        self.lifecycle.set_wall_offset(self.wall_offset);
    }

    /// Known outcomes a source with per-source state needs before it counts towards a
    /// distributed scan (default 1: any failing source). Live, one-probe sources are held in the
    /// kernel's first-contact table and counted apart, so a source with state has sent more than
    /// one probe; an offline hunt keeps state for every source, so it asks for more (3), lest a log's
    /// first minute (each client's first connection so far, some to a server that is down)
    /// read as many one-probe sources.
    pub fn set_distributed_min_outcomes(&mut self, n: u64) {
        self.distributed_min_outcomes = n.max(1);
    }

    /// Fix the agent-instance part of incident ids (the default is random per engine, so two runs
    /// never share an id; replays that must be reproducible set it).
    pub fn set_instance(&mut self, instance: u64) {
        self.lifecycle.set_instance(instance);
    }

    /// Close every open incident now (the agent stops): their `final` lines.
    pub fn close_all(&mut self, now: Duration) -> Vec<Alert> {
        self.lifecycle.close_all(now)
    }

    /// Cumulative per-source counters from a sweep.
    pub fn observe_source(&mut self, now: Duration, s: &SourceSnapshot) -> Vec<Alert> {
        let mut out = Vec::new();
        self.ingest_source(now, s);
        self.evaluate_inbound(now, &s.ip, false, &mut out);
        self.evaluate_decoys(now, &s.ip, &mut out);
        out
    }

    /// Immediate kernel events.
    pub fn observe_inbound_event(&mut self, now: Duration, e: &InboundObservation) -> Vec<Alert> {
        let mut out = Vec::new();
        self.ingest_event(now, e);
        match &e.kind {
            InboundEventKind::Honeyport { dport, proto } => {
                let _ = dport;
                self.honeyport_finding(now, e.ip, 0, *proto, &mut out);
            }
            InboundEventKind::Threshold { .. } => {
                self.evaluate_inbound(now, &e.ip, false, &mut out);
            }
            InboundEventKind::NewFingerprint(_) => {
                self.evaluate_decoys(now, &e.ip, &mut out);
            }
        }
        out
    }

    /// One-probe sources held in the kernel's first-contact table: they count towards
    /// destination-centric distributed scans (many sources, one probe each).
    pub fn observe_held(&mut self, now: Duration, probes: &[HeldProbe]) -> Vec<Alert> {
        let mut out = Vec::new();
        self.note_held(now, probes);
        self.evaluate_distributed(now, &mut out);
        out
    }

    /// One outbound action of a local process.
    pub fn observe_outbound(&mut self, now: Duration, o: &OutboundObservation) -> Vec<Alert> {
        if let super::OutboundAction::Payload { dst, dport, sample, len } = &o.action {
            return self.observe_outbound_payload(now, &o.process, *dst, *dport, sample, *len);
        }
        let mut out = Vec::new();
        let key = self.ingest_outbound(now, o);
        self.evaluate_outbound(now, &key, false, &mut out);
        out
    }

    /// Periodic work: slow-scan evaluation of entities active since the last tick,
    /// destination-centric distributed-scan evaluation, expiry, and the rate-limit summary.
    pub fn tick(&mut self, now: Duration) -> Vec<Alert> {
        let mut out = Vec::new();
        let dirty_in = std::mem::take(&mut self.dirty_inbound);
        for ip in dirty_in {
            // Gone (expired, evicted) or listed twice (re-created since): nothing to evaluate.
            if !self.inbound.get(&ip).is_some_and(|e| e.dirty) {
                continue;
            }
            self.evaluate_inbound(now, &ip, true, &mut out);
            if let Some(e) = self.inbound.get_mut(&ip) {
                e.dirty = false;
            }
        }
        let dirty_out: Vec<String> =
            self.outbound.iter().filter(|(_, e)| e.dirty).map(|(k, _)| k.clone()).collect();
        for key in dirty_out {
            self.evaluate_outbound(now, &key, true, &mut out);
            if let Some(e) = self.outbound.get_mut(&key) {
                e.dirty = false;
            }
        }
        self.evaluate_distributed(now, &mut out);
        self.unexplained_honeyports(now, &mut out);
        self.expire(now);
        out.extend(self.lifecycle.tick(now));
        if let Some(a) = self.lifecycle.summary(now, &self.host) {
            out.push(a);
        }
        out
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            inbound_entities: self.inbound.len(),
            outbound_entities: self.outbound.len(),
            fingerprint_clusters: self.fingerprints.len(),
            open_incidents: self.lifecycle.incidents(),
            incidents_closed: self.lifecycle.closed,
            alerts_emitted: self.lifecycle.emitted,
            alerts_deduplicated: self.lifecycle.deduplicated,
            alerts_suppressed: self.lifecycle.rate_limited,
            alerts_filtered: self.lifecycle.below_min_severity,
            entities_evicted: self.evicted,
        }
    }

    // -----------------------------------------------------------------------------------------

    pub(super) fn time(&self, now: Duration) -> String {
        rfc3339_from_unix(now.as_secs_f64() + self.wall_offset)
    }

    /// Note that an inbound source was seen at `now` (for the expiry pass's schedule).
    pub(super) fn inbound_seen(&mut self, now: Duration) {
        self.inbound_expiry = self.inbound_expiry.min(now.saturating_add(self.cfg.detect.entity_idle));
    }

    pub(super) fn expire(&mut self, now: Duration) {
        let idle = self.cfg.detect.entity_idle;
        let before = self.inbound.len() + self.outbound.len();
        if now >= self.inbound_expiry {
            let mut next = Duration::MAX;
            self.inbound.retain(|_, e| {
                let keep = now.saturating_sub(e.last_seen) < idle;
                if keep {
                    next = next.min(e.last_seen.saturating_add(idle));
                }
                keep
            });
            self.inbound_expiry = next;
        }
        self.outbound.retain(|_, e| now.saturating_sub(e.last_seen) < idle);
        self.evicted += (before - self.inbound.len() - self.outbound.len()) as u64;
        self.fingerprints.expire(now, self.cfg.detect.decoy_window);
    }

    /// The window a fast finding of an open incident reports: the shortest fast window (from
    /// `idx`, the triggering one, up) that covers the incident since its start, else the longest
    /// fast window.
    pub(super) fn report_window(&self, now: Duration, actor: &str, kind: AlertKind, shape: &Shape, idx: usize) -> usize {
        let Some(start) = self.lifecycle.started(actor, kind, shape) else { return idx };
        let age = now.saturating_sub(start);
        let d = &self.cfg.detect;
        let mut best = idx;
        for (j, w) in d.windows.iter().enumerate().skip(idx) {
            if *w >= d.slow_min_window {
                break;
            }
            best = j;
            // The window covers the incident with a bucket to spare (ring granularity).
            if *w >= age + *w / super::window::BUCKETS as u32 {
                break;
            }
        }
        best
    }

    /// Submit a finding of `actor` through the incident lifecycle; `hold` is the least quiet time
    /// that closes its incident (a slow scan's window; zero for `alerts.close_after` alone).
    pub(super) fn submit(&mut self, now: Duration, actor: &str, hold: Duration, alert: Alert, out: &mut Vec<Alert>) {
        self.timeline_note_finding(now, &alert);
        if let Verdict::Emit(a) = self.lifecycle.submit(now, actor, hold, alert) {
            out.push(*a);
        }
    }
}

/// A random number per engine (the agent-instance part of incident ids), from std's random
/// hash keys (seeded by the OS once per process, distinct for every `RandomState`).
fn instance_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0x5c);
    h.finish()
}

