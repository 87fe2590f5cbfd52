//! Learned baseline of normal fan-out (`scanwatch baseline`).
//!
//! A [`BaselineLearner`] takes the same `observe_*` calls as the engine during a learning period
//! and records, per remote source and per local executable, the largest distinct-port and
//! distinct-host counts seen in every window, plus the ports (and, for executables, peers) used.
//! The engine then raises an entity's thresholds to `max x detect.baseline_margin` and scores
//! outbound ports that are new versus the baseline as more suspicious.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::window::{m, Metrics};
use super::{Engine, InboundObservation, OutboundAction, OutboundObservation, SourceSnapshot};
use crate::config::Config;
use crate::vocab::{canonical_ip, format_duration};

/// Entries kept per baseline (bounded file size).
pub const MAX_BASELINE_ENTRIES: usize = 8192;
/// Ports / peers kept per entry.
pub const MAX_BASELINE_SET: usize = 256;

/// Typical fan-out of one remote source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceBaseline {
    /// Largest distinct ports per window (same order as `Baseline::windows`).
    pub max_ports: Vec<f64>,
    pub max_hosts: Vec<f64>,
    /// Largest probe rate seen in the shortest window (probes per second).
    pub max_rate: f64,
    pub ports: BTreeSet<u16>,
}

/// Typical outbound behaviour of one executable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExeBaseline {
    pub max_ports: Vec<f64>,
    pub max_hosts: Vec<f64>,
    pub max_rate: f64,
    pub ports: BTreeSet<u16>,
    /// Peer addresses (bounded).
    pub peers: BTreeSet<String>,
}

/// A learned baseline (serialised as JSON by the CLI).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub version: u32,
    /// Windows the maxima refer to ("10s", "60s", ...).
    pub windows: Vec<String>,
    pub learned_seconds: f64,
    /// By source address.
    pub sources: BTreeMap<String, SourceBaseline>,
    /// By executable path (or comm when the path is unknown).
    pub executables: BTreeMap<String, ExeBaseline>,
}

/// Errors reading or writing a baseline file.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid baseline: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl Baseline {
    /// What the baseline changes, in one phrase (the agent says it at start).
    pub fn describe(&self) -> String {
        format!(
            "learned over {:.0} s; known fan-out of {} sources and {} executables raises their thresholds",
            self.learned_seconds,
            self.sources.len(),
            self.executables.len()
        )
    }

    /// Read a baseline written by [`Baseline::save`].
    pub fn load(path: &Path) -> Result<Baseline, BaselineError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| BaselineError::Io { path: path.to_path_buf(), source })?;
        Baseline::from_json(&text).map_err(|source| BaselineError::Format { path: path.to_path_buf(), source })
    }

    /// Write the baseline as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<(), BaselineError> {
        let text = self.to_json().map_err(|source| BaselineError::Format { path: path.to_path_buf(), source })?;
        std::fs::write(path, text).map_err(|source| BaselineError::Io { path: path.to_path_buf(), source })
    }

    pub fn from_json(s: &str) -> Result<Baseline, serde_json::Error> {
        serde_json::from_str(s)
    }

    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

/// Raise the per-window distinct-port/host maxima and the shortest window's probe rate
/// (`secs` long) to what `totals` shows.
fn raise_window_maxima(totals: &[Metrics], secs: f64, ports: &mut Vec<f64>, hosts: &mut Vec<f64>, rate: &mut f64) {
    for (i, t) in totals.iter().enumerate() {
        raise_max(ports, i, t.get(m::NEW_PORTS));
        raise_max(hosts, i, t.get(m::NEW_HOSTS));
        if i == 0 {
            *rate = rate.max(t.get(m::PROBES) / secs);
        }
    }
}

fn raise_max(v: &mut Vec<f64>, i: usize, x: f64) {
    if v.len() <= i {
        v.resize(i + 1, 0.0);
    }
    if x > v[i] {
        v[i] = x;
    }
}

/// Learns a [`Baseline`] from the same observations the engine takes.
#[derive(Debug)]
pub struct BaselineLearner {
    engine: Engine,
    baseline: Baseline,
    start: Option<Duration>,
    last: Duration,
}

impl BaselineLearner {
    pub fn new(cfg: &Config) -> BaselineLearner {
        BaselineLearner {
            engine: Engine::new(cfg, String::new()),
            baseline: Baseline {
                version: 1,
                windows: cfg.detect.windows.iter().map(|w| format_duration(*w)).collect(),
                ..Baseline::default()
            },
            start: None,
            last: Duration::ZERO,
        }
    }

    fn clock(&mut self, now: Duration) {
        self.start.get_or_insert(now);
        self.last = self.last.max(now);
    }

    pub fn observe_source(&mut self, now: Duration, s: &SourceSnapshot) {
        self.clock(now);
        self.engine.ingest_source(now, s);
        self.record_source(now, s.ip);
    }

    pub fn observe_inbound_event(&mut self, now: Duration, e: &InboundObservation) {
        self.clock(now);
        self.engine.ingest_event(now, e);
        self.record_source(now, e.ip);
    }

    pub fn observe_outbound(&mut self, now: Duration, o: &OutboundObservation) {
        self.clock(now);
        let key = self.engine.ingest_outbound(now, o);
        let Some(e) = self.engine.outbound.get(&key) else { return };
        let exe = o.process.exe.clone().unwrap_or_else(|| o.process.comm.clone());
        let full = self.baseline.executables.len() >= MAX_BASELINE_ENTRIES;
        if full && !self.baseline.executables.contains_key(&exe) {
            return;
        }
        let b = self.baseline.executables.entry(exe).or_default();
        let secs = self.engine.cfg.detect.windows[0].as_secs_f64().max(1e-3);
        raise_window_maxima(&e.windows.totals(now), secs, &mut b.max_ports, &mut b.max_hosts, &mut b.max_rate);
        let dst = match &o.action {
            OutboundAction::Connect { dst, dport }
            | OutboundAction::UdpSend { dst, dport }
            | OutboundAction::RawProbe { dst, dport, .. } => Some((dst, dport)),
            _ => None,
        };
        if let Some((dst, dport)) = dst {
            if b.ports.len() < MAX_BASELINE_SET {
                b.ports.insert(*dport);
            }
            if b.peers.len() < MAX_BASELINE_SET {
                b.peers.insert(canonical_ip(*dst).to_string());
            }
        }
    }

    /// Periodic housekeeping (entity expiry); no alerts.
    pub fn tick(&mut self, now: Duration) {
        self.clock(now);
        self.engine.expire(now);
    }

    fn record_source(&mut self, now: Duration, ip: std::net::IpAddr) {
        let ip = canonical_ip(ip);
        let Some(e) = self.engine.inbound.get(&ip) else { return };
        let key = ip.to_string();
        if self.baseline.sources.len() >= MAX_BASELINE_ENTRIES && !self.baseline.sources.contains_key(&key) {
            return;
        }
        let b = self.baseline.sources.entry(key).or_default();
        let secs = self.engine.cfg.detect.windows[0].as_secs_f64().max(1e-3);
        raise_window_maxima(&e.windows.totals(now), secs, &mut b.max_ports, &mut b.max_hosts, &mut b.max_rate);
        for p in &e.known_ports {
            if b.ports.len() >= MAX_BASELINE_SET {
                break;
            }
            b.ports.insert(*p);
        }
    }

    /// The baseline learned so far.
    pub fn baseline(&self) -> Baseline {
        let mut b = self.baseline.clone();
        b.learned_seconds = self.start.map_or(0.0, |s| self.last.saturating_sub(s).as_secs_f64());
        b
    }

    /// Finish learning.
    pub fn finish(self) -> Baseline {
        self.baseline()
    }
}
