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
use crate::alert::{Alert, HostInfo};
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
    pub(super) inbound: HashMap<IpAddr, InboundEntity>,
    pub(super) outbound: HashMap<String, OutboundEntity>,
    pub(super) fingerprints: FingerprintIndex,
    pub(super) distributed: Distributed,
    pub(super) lifecycle: Lifecycle,
    /// `wall - now` in seconds.
    pub(super) wall_offset: f64,
    pub(super) evicted: u64,
    /// Index of the window used for the kernel's short-window threshold events.
    pub(super) short_idx: usize,
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
            host: HostInfo { name: hostname, role: role.name.clone() },
            role,
            trw: TrwParams::new(&cfg.detect.trw),
            baseline: None,
            inbound: HashMap::new(),
            outbound: HashMap::new(),
            fingerprints: FingerprintIndex::default(),
            distributed: Distributed::default(),
            lifecycle: Lifecycle::new(&cfg.alerts),
            wall_offset: 0.0,
            evicted: 0,
            short_idx,
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
                self.honeyport_alert(now, &e.ip, *dport, *proto, &mut out);
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
        let mut out = Vec::new();
        let key = self.ingest_outbound(now, o);
        self.evaluate_outbound(now, &key, false, &mut out);
        out
    }

    /// Periodic work: slow-scan evaluation of entities active since the last tick,
    /// destination-centric distributed-scan evaluation, expiry, and the rate-limit summary.
    pub fn tick(&mut self, now: Duration) -> Vec<Alert> {
        let mut out = Vec::new();
        let dirty_in: Vec<IpAddr> =
            self.inbound.iter().filter(|(_, e)| e.dirty).map(|(k, _)| *k).collect();
        for ip in dirty_in {
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
        self.expire(now);
        let time = self.time(now);
        if let Some(a) = self.lifecycle.summary(now, time, &self.host) {
            out.push(a);
        }
        out
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            inbound_entities: self.inbound.len(),
            outbound_entities: self.outbound.len(),
            fingerprint_clusters: self.fingerprints.len(),
            alert_episodes: self.lifecycle.episodes(),
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

    pub(super) fn expire(&mut self, now: Duration) {
        let idle = self.cfg.detect.entity_idle;
        let before = self.inbound.len() + self.outbound.len();
        self.inbound.retain(|_, e| now.saturating_sub(e.last_seen) < idle);
        self.outbound.retain(|_, e| now.saturating_sub(e.last_seen) < idle);
        self.evicted += (before - self.inbound.len() - self.outbound.len()) as u64;
        self.fingerprints.expire(now, self.cfg.detect.decoy_window);
        self.lifecycle.expire(now);
    }

    /// Submit a finding through the lifecycle.
    pub(super) fn submit(&mut self, now: Duration, entity: &str, magnitude: f64, alert: Alert, out: &mut Vec<Alert>) {
        if let Verdict::Emit(a) = self.lifecycle.submit(now, entity, magnitude, alert) {
            out.push(*a);
        }
    }
}

