//! Alert lifecycle: de-duplication per (entity, kind), escalation updates, suppression windows
//! and a global rate limit with periodic summaries.
//!
//! * The first alert of an (entity, kind) is emitted with `update = false`.
//! * Within `alerts.suppression_window` of the last emitted alert, further findings are dropped
//!   unless the severity rises or the magnitude (probes / fan-out) grew by
//!   `alerts.escalation_factor`; those are emitted with `update = true`.
//! * After the suppression window the (entity, kind) may alert afresh (`update = false`); the
//!   `alert_id` stays the same (it is a hash of entity and kind).
//! * A token bucket (`alerts.rate_limit` per second, `alerts.burst`) caps the output. Alerts over
//!   the limit are counted (and not recorded, so they can be raised later) and every
//!   `alerts.summary_interval` one `notice` alert reports "N further alerts suppressed".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::alert::{
    Evidence,
    stable_id, Alert, AlertKind, AlertSource, Counts, Direction, HostInfo, Severity, Targets,
    Technique,
};
use crate::config::AlertConfig;
use crate::vocab::format_duration;

/// Bound on remembered (entity, kind) episodes.
const MAX_EPISODES: usize = 65_536;
/// Bound on distinct suppressed alert ids remembered for a summary.
const MAX_SUPPRESSED_IDS: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Episode {
    last_emit: Duration,
    severity: Severity,
    magnitude: f64,
}

#[derive(Debug)]
pub struct Lifecycle {
    cfg: AlertConfig,
    episodes: HashMap<(String, AlertKind), Episode>,
    tokens: f64,
    last_refill: Option<Duration>,
    suppressed_ids: HashSet<String>,
    suppressed_total: u64,
    suppressed_kinds: BTreeMap<AlertKind, u64>,
    suppressed_dir: [u64; 2],
    last_summary: Option<Duration>,
    pub emitted: u64,
    pub deduplicated: u64,
    pub rate_limited: u64,
    pub below_min_severity: u64,
}

/// Outcome of submitting a finding.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Emit(Box<Alert>),
    Duplicate,
    RateLimited,
    Filtered,
}

impl Lifecycle {
    pub fn new(cfg: &AlertConfig) -> Lifecycle {
        Lifecycle {
            cfg: cfg.clone(),
            episodes: HashMap::new(),
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
        }
    }

    /// Submit a finding for `entity`. `alert.update` and `alert.alert_id` are filled in here.
    pub fn submit(&mut self, now: Duration, entity: &str, magnitude: f64, mut alert: Alert) -> Verdict {
        if alert.severity < self.cfg.min_severity {
            self.below_min_severity += 1;
            return Verdict::Filtered;
        }
        let key = (entity.to_string(), alert.kind);
        let update = match self.episodes.get(&key) {
            Some(ep) if now.saturating_sub(ep.last_emit) < self.cfg.suppression_window => {
                let escalated = alert.severity > ep.severity
                    || magnitude >= ep.magnitude.max(1.0) * self.cfg.escalation_factor;
                if !escalated {
                    self.deduplicated += 1;
                    return Verdict::Duplicate;
                }
                true
            }
            _ => false,
        };
        alert.update = update;
        alert.alert_id = stable_id(&[entity, alert.kind.as_str()]);
        if !self.take_token(now) {
            self.rate_limited += 1;
            self.suppressed_total += 1;
            if self.suppressed_ids.len() < MAX_SUPPRESSED_IDS {
                self.suppressed_ids.insert(alert.alert_id.clone());
            }
            *self.suppressed_kinds.entry(alert.kind).or_default() += 1;
            self.suppressed_dir[usize::from(alert.direction == Direction::Outbound)] += 1;
            return Verdict::RateLimited;
        }
        if self.episodes.len() >= MAX_EPISODES && !self.episodes.contains_key(&key) {
            self.expire(now);
            if self.episodes.len() >= MAX_EPISODES {
                // Still full: forget the oldest episode.
                if let Some(k) = self
                    .episodes
                    .iter()
                    .min_by_key(|(_, e)| e.last_emit)
                    .map(|(k, _)| k.clone())
                {
                    self.episodes.remove(&k);
                }
            }
        }
        let prev_mag = self.episodes.get(&key).map_or(0.0, |e| e.magnitude);
        self.episodes.insert(
            key,
            Episode {
                last_emit: now,
                severity: alert.severity,
                magnitude: if update { magnitude.max(prev_mag) } else { magnitude },
            },
        );
        self.emitted += 1;
        Verdict::Emit(Box::new(alert))
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

    /// Forget episodes whose suppression window has passed.
    pub fn expire(&mut self, now: Duration) {
        let win = self.cfg.suppression_window;
        self.episodes.retain(|_, e| now.saturating_sub(e.last_emit) < win);
    }

    /// Periodic: the "N further alerts suppressed" notice, at most once per summary interval.
    pub fn summary(&mut self, now: Duration, time: String, host: &HostInfo) -> Option<Alert> {
        if self.suppressed_total == 0 {
            return None;
        }
        if let Some(last) = self.last_summary {
            if now.saturating_sub(last) < self.cfg.summary_interval {
                return None;
            }
        }
        let n = self.suppressed_total;
        let kinds: Vec<String> =
            self.suppressed_kinds.iter().map(|(k, c)| format!("{k}: {c}")).collect();
        let direction = if self.suppressed_dir[1] > self.suppressed_dir[0] {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        let detail = self.suppressed_kinds.iter().map(|(k, c)| (Evidence::Suppressed(*k), *c)).collect();
        let alert = Alert {
            time,
            kind: AlertKind::Notice,
            severity: Severity::Info,
            confidence: 1.0,
            direction,
            source: AlertSource { ip: None, process: None, related: Vec::new() },
            targets: Targets::default(),
            window: format_duration(self.cfg.summary_interval),
            counts: Counts { probes: n, failures: 0, fail_ratio: None, detail },
            fingerprint: None,
            technique: match direction {
                Direction::Outbound => Technique::network_service_discovery(),
                Direction::Inbound => Technique::active_scanning(),
            },
            host: host.clone(),
            allowlisted: false,
            blocked: false,
            reason: format!(
                "{n} further alerts suppressed by the rate limit ({} distinct entity/kind pairs; {}).",
                self.suppressed_ids.len(),
                kinds.join(", ")
            ),
            update: false,
            alert_id: stable_id(&["notice", "rate_limit"]),
            annotations: Default::default(),
        };
        self.suppressed_total = 0;
        self.suppressed_ids.clear();
        self.suppressed_kinds.clear();
        self.suppressed_dir = [0; 2];
        self.last_summary = Some(now);
        Some(alert)
    }

    pub fn episodes(&self) -> usize {
        self.episodes.len()
    }
}
