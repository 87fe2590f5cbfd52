//! Alert lifecycle: incidents, rate-limited updates, closing summaries, and a global rate limit on
//! new incidents.
//!
//! An alert is an **incident**: one actor (a source address `src:IP`, a decoy cluster `fp:HASH`,
//! the distributed-scan aggregate, or a local process group `proc:UID:PROGRAM:ANCHOR@START`), one kind, and one
//! probe shape (protocol + shape: a UDP scan and a NULL scan of one source are two incidents).
//! The detectors submit findings (an [`Alert`] with the numbers of one window) as often as they
//! like; this module decides which become lines:
//!
//! * **first**: the first finding of an incident, at once (`update = false`, `seq = 1`). Its id
//!   (`alert_id`) hashes host name, agent instance (a random nonce per engine), actor, kind, shape
//!   and the incident's start time, so incidents of different runs, hosts or times never share
//!   an id.
//! * **escalation**: the severity rose above the last line's — at once, unless an update line was
//!   already sent less than `alerts.update_interval` ago (then it waits, like a progress line).
//! * **progress**: the finding changed since the last line and `alerts.update_interval` passed
//!   since that line (checked on every finding and every tick): the counts so far. For a slow
//!   scan (held open over its window) the spacing is at least a 24th of that window.
//! * **final**: no finding for the incident for `alerts.close_after` (for slow scans, at least
//!   their window): the closing line, carrying the latest finding. The incident is forgotten; later
//!   activity of the actor opens a new incident with a new id.
//!
//! Every line is the latest finding itself (its numbers are its window's), stamped with the
//! incident's `alert_id`, `start`, `last_seen`, `update_kind` and `seq`.
//!
//! A token bucket (`alerts.rate_limit` per second, `alerts.burst`) caps new incidents. A first
//! finding over the limit is counted (and not recorded, so the incident can open later) and every
//! `alerts.summary_interval` one `notice` alert reports "N further alerts suppressed". Update and
//! final lines are not rate-limited: each open incident has at most one update per interval and one
//! final, so they are bounded by the incidents the bucket let through.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::alert::{
    stable_id, Alert, AlertKind, AlertSource, Counts, Direction, Evidence, HostInfo, Incident, Severity, Shape,
    Targets, Technique, UpdateKind,
};
use crate::config::AlertConfig;
use crate::vocab::{format_duration, rfc3339_from_unix};

use super::reason;

/// Bound on open incidents (the oldest closes, with its final line, when full).
const MAX_INCIDENTS: usize = 65_536;
/// Bound on distinct suppressed incident keys remembered for a summary.
const MAX_SUPPRESSED_IDS: usize = 16_384;

/// What makes two findings the same incident. Ordered by actor first, so one actor's incidents
/// are one range of the table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct IncidentKey {
    pub actor: String,
    pub kind: AlertKind,
    pub shape: Shape,
}

#[derive(Debug, Clone)]
struct Open {
    id: String,
    start: Duration,
    /// Time of the latest finding.
    last_seen: Duration,
    /// Time of the latest line (first, update).
    last_line: Duration,
    /// Time of the latest update line (not the first).
    last_update: Option<Duration>,
    /// Severity of the latest line.
    severity: Severity,
    /// The latest finding (what the next line shows).
    latest: Alert,
    /// The latest finding differs from the latest line.
    pending: bool,
    /// Least quiet time that closes the incident besides `alerts.close_after` (slow scans: their
    /// window).
    hold: Duration,
    seq: u32,
}

#[derive(Debug)]
pub struct Lifecycle {
    cfg: AlertConfig,
    host: String,
    instance: u64,
    /// `wall - now` in seconds (alert times).
    wall_offset: f64,
    open: BTreeMap<IncidentKey, Open>,
    /// Final lines of incidents displaced when the table was full (sent with the next tick).
    overflow: Vec<Alert>,
    tokens: f64,
    last_refill: Option<Duration>,
    suppressed_ids: HashSet<(String, AlertKind)>,
    suppressed_total: u64,
    suppressed_kinds: BTreeMap<AlertKind, u64>,
    suppressed_dir: [u64; 2],
    last_summary: Option<Duration>,
    pub emitted: u64,
    pub deduplicated: u64,
    pub rate_limited: u64,
    pub below_min_severity: u64,
    pub closed: u64,
}

/// Outcome of submitting a finding.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Emit(Box<Alert>),
    Duplicate,
    RateLimited,
    Filtered,
}

/// Do two findings show the same thing (nothing an analyst would want a new line for)?
fn same_content(a: &Alert, b: &Alert) -> bool {
    a.severity == b.severity && a.targets == b.targets && a.counts == b.counts && a.blocked == b.blocked
}

impl Lifecycle {
    pub fn new(cfg: &AlertConfig, host: &str, instance: u64) -> Lifecycle {
        Lifecycle {
            cfg: cfg.clone(),
            host: host.to_string(),
            instance,
            wall_offset: 0.0,
            open: BTreeMap::new(),
            overflow: Vec::new(),
            tokens: f64::from(cfg.burst),
            last_refill: None,
            suppressed_ids: HashSet::new(),
            suppressed_total: 0,
            suppressed_kinds: BTreeMap::new(),
            suppressed_dir: [0; 2],
            last_summary: None,
            emitted: 0,
            deduplicated: 0,
            rate_limited: 0,
            below_min_severity: 0,
            closed: 0,
        }
    }

    pub fn set_wall_offset(&mut self, offset: f64) {
        self.wall_offset = offset;
    }

    pub fn set_instance(&mut self, instance: u64) {
        self.instance = instance;
    }

    fn time(&self, at: Duration) -> String {
        rfc3339_from_unix(at.as_secs_f64() + self.wall_offset)
    }

    /// The open incidents of `actor` (a range of the ordered table: no scan of the others).
    fn of_actor<'a>(&'a self, actor: &'a str) -> impl Iterator<Item = (&'a IncidentKey, &'a Open)> + 'a {
        let least = AlertKind::ALL.iter().copied().min().unwrap_or(AlertKind::HorizontalScan);
        let from = IncidentKey { actor: actor.to_string(), kind: least, shape: Shape::default() };
        self.open.range(from..).take_while(move |(k, _)| k.actor == actor)
    }

    /// When the open incident of (`actor`, `kind`, `shape`) started.
    pub(super) fn started(&self, actor: &str, kind: AlertKind, shape: &Shape) -> Option<Duration> {
        self.of_actor(actor)
            .find(|(k, _)| k.kind == kind && (k.shape == *shape || k.shape.protocol.is_empty()))
            .map(|(_, o)| o.start)
    }

    /// Is an incident of `actor` open whose kind satisfies `pred`?
    pub(super) fn has_open(&self, actor: &str, pred: impl Fn(AlertKind) -> bool) -> bool {
        self.of_actor(actor).any(|(k, _)| pred(k.kind))
    }

    /// Submit a finding of `actor`; `hold` is the least quiet time that closes its incident
    /// (besides `alerts.close_after`). The incident fields of the alert are filled in here.
    pub fn submit(&mut self, now: Duration, actor: &str, hold: Duration, alert: Alert) -> Verdict {
        if alert.severity < self.cfg.min_severity {
            self.below_min_severity += 1;
            return Verdict::Filtered;
        }
        let mut key = IncidentKey { actor: actor.to_string(), kind: alert.kind, shape: alert.shape.clone() };
        if !self.open.contains_key(&key) {
            let same_kind: Vec<IncidentKey> =
                self.of_actor(actor).filter(|(k, _)| k.kind == key.kind).map(|(k, _)| k.clone()).collect();
            if key.shape.protocol.is_empty() {
                // No probe counted yet (a kernel threshold event ahead of the sweep): the finding
                // belongs to the actor's open incident of this kind, whatever its shape.
                if let Some(k) = same_kind.first() {
                    key = k.clone();
                }
            } else if let Some(k) = same_kind.into_iter().find(|k| k.shape.protocol.is_empty()) {
                // The open incident whose shape was not known yet learns it.
                if let Some(o) = self.open.remove(&k) {
                    self.open.insert(key.clone(), o);
                }
            }
        }
        let interval = self.cfg.update_interval;
        if let Some(o) = self.open.get_mut(&key) {
            o.pending = o.pending || !same_content(&o.latest, &alert);
            o.latest = alert;
            o.last_seen = now;
            o.hold = hold;
            let since_update = o.last_update.is_none_or(|t| now.saturating_sub(t) >= interval);
            let kind = if o.latest.severity > o.severity && since_update {
                UpdateKind::Escalation
            } else if o.pending && now.saturating_sub(o.last_line) >= progress_interval(interval, o.hold) {
                UpdateKind::Progress
            } else {
                self.deduplicated += 1;
                return Verdict::Duplicate;
            };
            return match self.line(&key, now, kind) {
                Some(line) => Verdict::Emit(Box::new(line)),
                None => Verdict::Duplicate,
            };
        }
        if !self.take_token(now) {
            self.rate_limited += 1;
            self.suppressed_total += 1;
            if self.suppressed_ids.len() < MAX_SUPPRESSED_IDS {
                self.suppressed_ids.insert((key.actor.clone(), key.kind));
            }
            *self.suppressed_kinds.entry(alert.kind).or_default() += 1;
            self.suppressed_dir[usize::from(alert.direction == Direction::Outbound)] += 1;
            return Verdict::RateLimited;
        }
        let mut out = Vec::new();
        if self.open.len() >= MAX_INCIDENTS {
            // Full: the incident quiet the longest closes now.
            if let Some(k) = self.open.iter().min_by_key(|(_, o)| o.last_seen).map(|(k, _)| k.clone()) {
                out.extend(self.close(&k, now));
            }
        }
        let nanos = (now.as_secs_f64() + self.wall_offset) * 1e9;
        let id = stable_id(&[
            &self.host,
            &format!("{:016x}", self.instance),
            actor,
            alert.kind.as_str(),
            &alert.shape.protocol,
            &alert.shape.shape,
            &format!("{nanos:.0}"),
        ]);
        self.open.insert(
            key.clone(),
            Open {
                id,
                start: now,
                last_seen: now,
                last_line: now,
                last_update: None,
                severity: alert.severity,
                latest: alert,
                pending: true,
                hold,
                seq: 0,
            },
        );
        // A displaced incident's final line is not lost: it goes out with the next tick's lines.
        self.overflow.extend(out);
        match self.line(&key, now, UpdateKind::First) {
            Some(line) => Verdict::Emit(Box::new(line)),
            None => Verdict::Duplicate,
        }
    }

    /// The line for the incident at `key` now: its latest finding, stamped.
    fn line(&mut self, key: &IncidentKey, now: Duration, kind: UpdateKind) -> Option<Alert> {
        let off = self.wall_offset;
        let at = |d: Duration| rfc3339_from_unix(d.as_secs_f64() + off);
        let o = self.open.get_mut(key)?;
        let (start_s, seen_s) = (at(o.start), at(o.last_seen));
        o.seq += 1;
        o.pending = false;
        o.severity = o.latest.severity;
        if kind != UpdateKind::First {
            o.last_update = Some(now);
        }
        o.last_line = now;
        let mut a = o.latest.clone();
        a.time = at(now);
        a.alert_id = o.id.clone();
        a.update = kind != UpdateKind::First;
        a.incident = Incident { start: start_s, last_seen: seen_s, update_kind: kind, seq: o.seq };
        self.emitted += 1;
        Some(a)
    }

    /// Close the incident at `key` now: its final line.
    fn close(&mut self, key: &IncidentKey, now: Duration) -> Option<Alert> {
        let mut a = self.line(key, now, UpdateKind::Final)?;
        a.reason = reason::closing(&a);
        self.open.remove(key);
        self.closed += 1;
        Some(a)
    }

    /// Periodic: progress lines of incidents whose interval passed with news, and final lines of
    /// incidents quiet for `alerts.close_after`.
    pub fn tick(&mut self, now: Duration) -> Vec<Alert> {
        let mut out = std::mem::take(&mut self.overflow);
        let interval = self.cfg.update_interval;
        let mut keys: Vec<(Duration, IncidentKey)> = self.open.iter().map(|(k, o)| (o.start, k.clone())).collect();
        keys.sort_by_key(|a| a.0);
        for (_, k) in keys {
            let Some(o) = self.open.get(&k) else { continue };
            let quiet = self.cfg.close_after.max(o.hold);
            if now.saturating_sub(o.last_seen) >= quiet {
                out.extend(self.close(&k, now));
            } else if o.pending && now.saturating_sub(o.last_line) >= progress_interval(interval, o.hold) {
                out.extend(self.line(&k, now, UpdateKind::Progress));
            }
        }
        out
    }

    /// Close every open incident now (the agent is stopping): their final lines.
    pub fn close_all(&mut self, now: Duration) -> Vec<Alert> {
        let mut out = std::mem::take(&mut self.overflow);
        let mut keys: Vec<(Duration, IncidentKey)> = self.open.iter().map(|(k, o)| (o.start, k.clone())).collect();
        keys.sort_by_key(|a| a.0);
        for (_, k) in keys {
            out.extend(self.close(&k, now));
        }
        out
    }

    fn take_token(&mut self, now: Duration) -> bool {
        let burst = f64::from(self.cfg.burst);
        if let Some(last) = self.last_refill {
            let dt = now.saturating_sub(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.cfg.rate_limit).min(burst);
        }
        self.last_refill = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Periodic: the "N further alerts suppressed" notice, at most once per summary interval.
    pub fn summary(&mut self, now: Duration, host: &HostInfo) -> Option<Alert> {
        if self.suppressed_total == 0 {
            return None;
        }
        if let Some(last) = self.last_summary {
            if now.saturating_sub(last) < self.cfg.summary_interval {
                return None;
            }
        }
        let n = self.suppressed_total;
        let kinds: Vec<String> = self.suppressed_kinds.iter().map(|(k, c)| format!("{k}: {c}")).collect();
        let direction =
            if self.suppressed_dir[1] > self.suppressed_dir[0] { Direction::Outbound } else { Direction::Inbound };
        let detail = self.suppressed_kinds.iter().map(|(k, c)| (Evidence::Suppressed(*k), *c)).collect();
        let time = self.time(now);
        let alert = Alert {
            time: time.clone(),
            kind: AlertKind::Notice,
            severity: Severity::Info,
            confidence: 1.0,
            direction,
            source: AlertSource { ip: None, process: None, related: Vec::new() },
            targets: Targets::default(),
            shape: Shape::default(),
            window: format_duration(self.cfg.summary_interval),
            counts: Counts::new(n, 0, 0, detail),
            fingerprint: None,
            technique: match direction {
                Direction::Outbound => Technique::network_service_discovery(),
                Direction::Inbound => Technique::active_scanning(),
            },
            host: host.clone(),
            allowlisted: false,
            blocked: false,
            reason: format!(
                "{n} further alerts suppressed by the rate limit ({} distinct actor/kind pairs; {}).",
                self.suppressed_ids.len(),
                kinds.join(", ")
            ),
            update: false,
            alert_id: stable_id(&[&self.host, &format!("{:016x}", self.instance), "notice", &time]),
            incident: Incident { start: time.clone(), last_seen: time, update_kind: UpdateKind::Final, seq: 1 },
            depth: None,
            annotations: Default::default(),
        };
        self.suppressed_total = 0;
        self.suppressed_ids.clear();
        self.suppressed_kinds.clear();
        self.suppressed_dir = [0; 2];
        self.last_summary = Some(now);
        Some(alert)
    }

    /// Open incidents.
    pub fn incidents(&self) -> usize {
        self.open.len()
    }
}

/// Least time between two progress lines of an incident: `alerts.update_interval`, or for an
/// incident held open over a long window (a slow scan: `hold` is its window, 24 h by default) a
/// 24th of that window — a scan that adds a port every few minutes for hours is one line an
/// hour, not one per interval.
fn progress_interval(update_interval: Duration, hold: Duration) -> Duration {
    update_interval.max(hold / 24)
}
