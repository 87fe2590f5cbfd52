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
mod features;
mod inbound;
mod lifecycle;
mod outbound;
mod trw;
mod window;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use baseline::{Baseline, BaselineError, BaselineLearner, ExeBaseline, SourceBaseline};
pub use features::TimingClass;
pub use lifecycle::Verdict;
pub use trw::{Trw, TrwDecision, TrwParams};

use crate::alert::{rfc3339_from_unix, Alert, HostInfo};
use crate::config::{Config, RoleProfile};
use correlate::{Distributed, FingerprintIndex};
use inbound::InboundEntity;
use lifecycle::Lifecycle;
use outbound::OutboundEntity;

/// A source's only probe so far, held in the kernel's first-contact table (the source has no
/// per-source state yet). Read by the agent from the table; outcome from the listening sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldProbe {
    pub ip: IpAddr,
    /// Destination port (None for portless probes: ICMP echo, ARP).
    pub dport: Option<u16>,
    /// Destination address, when known.
    pub dst: Option<IpAddr>,
    /// The probe hit a closed port.
    pub failed: bool,
}

/// Cumulative per-source counters read from the kernel map.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSnapshot {
    pub ip: IpAddr,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Indexed by `scanwatch_common::cnt::*`.
    pub counts: [u64; scanwatch_common::cnt::N],
    /// Lifetime distinct destination ports (HyperLogLog estimate).
    pub distinct_ports: f64,
    /// Lifetime distinct destination hosts (HyperLogLog estimate).
    pub distinct_hosts: f64,
    pub sample_ports: Vec<u16>,
    /// May be empty.
    pub sample_hosts: Vec<IpAddr>,
    pub fingerprints: Vec<FingerprintInfo>,
    pub blocked: bool,
}

/// A decoded SYN fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintInfo {
    pub text: String,
    pub hash: String,
    pub tool_hint: String,
    pub initial_ttl: u8,
}

impl FingerprintInfo {
    /// Is the hint a dedicated scanning tool (not an OS stack or unknown)?
    pub fn is_scanner_tool(&self) -> bool {
        matches!(self.tool_hint.as_str(), "nmap" | "masscan" | "zmap" | "hping3" | "unicornscan")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum InboundEventKind {
    Honeyport { dport: u16, proto: u8 },
    /// The kernel's short-window distinct port/host counts crossed `xdp.*_threshold`.
    Threshold { ports: bool, hosts: bool, win_ports: u32, win_hosts: u32 },
    NewFingerprint(FingerprintInfo),
}

#[derive(Debug, Clone, PartialEq)]
pub struct InboundObservation {
    pub ip: IpAddr,
    /// Local destination address of the packet.
    pub dst: IpAddr,
    pub kind: InboundEventKind,
}

/// An enriched local process; also the `source.process` block of outbound alerts.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    pub uid: u32,
    pub user: Option<String>,
    pub ppid: Option<u32>,
    pub parent_exe: Option<String>,
    /// Up to 4 ancestors, parent first.
    pub ancestry: Vec<crate::alert::Ancestor>,
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub start_time: Option<u64>,
    /// The process had exited when it was enriched (details may be partial).
    pub exited: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutboundAction {
    /// connect() attempt.
    Connect { dst: IpAddr, dport: u16 },
    /// A crafted packet sent on a raw socket (SYN scan, stealth probes, ...).
    RawProbe { dst: IpAddr, dport: u16, proto: u8, tcp_flags: u8 },
    /// Outcome of an earlier connect (established, or refused / timed out).
    Outcome { dst: IpAddr, dport: u16, success: bool },
    /// A raw / packet socket was created.
    RawSocket { family: u32, sock_type: u32 },
    /// A UDP datagram sent.
    UdpSend { dst: IpAddr, dport: u16 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboundObservation {
    pub process: ProcessInfo,
    pub action: OutboundAction,
}

/// Engine statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    pub inbound_entities: usize,
    pub outbound_entities: usize,
    pub fingerprint_clusters: usize,
    pub alert_episodes: usize,
    pub alerts_emitted: u64,
    /// Dropped as duplicates of an open episode (no escalation).
    pub alerts_deduplicated: u64,
    /// Dropped by the global rate limit (reported by `notice` alerts).
    pub alerts_suppressed: u64,
    /// Dropped by `alerts.min_severity`.
    pub alerts_filtered: u64,
    pub entities_evicted: u64,
}

/// The detection engine.
#[derive(Debug)]
pub struct Engine {
    cfg: Config,
    role: RoleProfile,
    host: HostInfo,
    trw: TrwParams,
    baseline: Option<Baseline>,
    inbound: HashMap<IpAddr, InboundEntity>,
    outbound: HashMap<String, OutboundEntity>,
    fingerprints: FingerprintIndex,
    distributed: Distributed,
    lifecycle: Lifecycle,
    /// `wall - now` in seconds.
    wall_offset: f64,
    evicted: u64,
    /// Index of the window used for the kernel's short-window threshold events.
    short_idx: usize,
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

    fn time(&self, now: Duration) -> String {
        rfc3339_from_unix(now.as_secs_f64() + self.wall_offset)
    }

    fn expire(&mut self, now: Duration) {
        let idle = self.cfg.detect.entity_idle;
        let before = self.inbound.len() + self.outbound.len();
        self.inbound.retain(|_, e| now.saturating_sub(e.last_seen) < idle);
        self.outbound.retain(|_, e| now.saturating_sub(e.last_seen) < idle);
        self.evicted += (before - self.inbound.len() - self.outbound.len()) as u64;
        self.fingerprints.expire(now, self.cfg.detect.decoy_window);
        self.lifecycle.expire(now);
    }

    /// Submit a finding through the lifecycle.
    fn submit(&mut self, now: Duration, entity: &str, magnitude: f64, alert: Alert, out: &mut Vec<Alert>) {
        if let Verdict::Emit(a) = self.lifecycle.submit(now, entity, magnitude, alert) {
            out.push(*a);
        }
    }
}

/// Make room in an entity map: evict the least recently seen eighth when full.
fn make_room<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    cap: usize,
    last_seen: impl Fn(&V) -> Duration,
) -> u64 {
    if map.len() < cap {
        return 0;
    }
    let mut ages: Vec<(Duration, K)> = map.iter().map(|(k, v)| (last_seen(v), k.clone())).collect();
    let n = (cap / 8).max(1).min(ages.len());
    ages.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
    for (_, k) in ages.iter().take(n) {
        map.remove(k);
    }
    n as u64
}
