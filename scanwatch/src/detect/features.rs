//! Per-entity features: inter-arrival timing, service classes, port entropy, a small
//! HyperLogLog sketch for outbound distinct counts, and bounded sample sets.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::vocab::Severity;


/// Shape of an entity's activity over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimingClass {
    /// Too few observations.
    Unknown,
    /// Regular gaps (health checks, cron, or a timed scanner such as nmap -T0/-T1).
    Periodic,
    /// Tight bursts separated by long pauses.
    Bursty,
    /// Irregular but not bursty.
    Spread,
}

impl TimingClass {
    pub fn as_str(self) -> &'static str {
        match self {
            TimingClass::Unknown => "unknown",
            TimingClass::Periodic => "periodic",
            TimingClass::Bursty => "bursty",
            TimingClass::Spread => "spread",
        }
    }
}

/// Exponentially weighted mean/variance of inter-arrival gaps (constant memory).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    last: Option<Duration>,
    n: u32,
    mean: f64,
    var: f64,
}

const TIMING_ALPHA: f64 = 0.1;

impl Timing {
    pub fn observe(&mut self, now: Duration) {
        if let Some(last) = self.last {
            let gap = now.saturating_sub(last).as_secs_f64();
            if self.n == 0 {
                self.mean = gap;
                self.var = 0.0;
            } else {
                let d = gap - self.mean;
                self.mean += TIMING_ALPHA * d;
                self.var = (1.0 - TIMING_ALPHA) * (self.var + TIMING_ALPHA * d * d);
            }
            self.n = self.n.saturating_add(1);
        }
        self.last = Some(now);
    }

    /// Coefficient of variation of the gaps.
    pub fn cv(&self) -> Option<f64> {
        (self.n >= 4 && self.mean > 0.0).then(|| self.var.sqrt() / self.mean)
    }

    pub fn class(&self) -> TimingClass {
        match self.cv() {
            None => TimingClass::Unknown,
            Some(cv) if cv < 0.25 => TimingClass::Periodic,
            Some(cv) if cv > 1.5 => TimingClass::Bursty,
            Some(_) => TimingClass::Spread,
        }
    }
}

/// Coarse service class of a port (diversity across classes hints at reconnaissance).
pub fn service_class(port: u16) -> &'static str {
    match port {
        80 | 443 | 8000 | 8008 | 8080 | 8443 | 8888 | 3000 | 5000 | 9000 => "web",
        25 | 110 | 143 | 465 | 587 | 993 | 995 => "mail",
        22 | 23 | 3389 | 5900..=5903 | 5985 | 5986 => "remote-admin",
        20 | 21 | 69 | 139 | 445 | 873 | 2049 => "file",
        1433 | 1521 | 3306 | 5432 | 6379 | 9042 | 9200 | 11211 | 27017 => "database",
        53 | 88 | 389 | 464 | 636 | 3268 | 3269 => "directory",
        67 | 68 | 123 | 161 | 162 | 179 | 514 | 520 | 1900 | 5353 => "infrastructure",
        111 | 135 | 593 => "rpc",
        1..=1023 => "other-privileged",
        32768..=65535 => "ephemeral",
        _ => "other",
    }
}

/// Number of distinct service classes among `ports`.
pub fn class_diversity(ports: &[u16]) -> usize {
    let mut classes: Vec<&str> = ports.iter().map(|p| service_class(*p)).collect();
    classes.sort_unstable();
    classes.dedup();
    classes.len()
}

/// Share of privileged ports (< 1024) in `ports`.
pub fn privileged_fraction(ports: &[u16]) -> f64 {
    if ports.is_empty() {
        return 0.0;
    }
    ports.iter().filter(|p| **p < 1024).count() as f64 / ports.len() as f64
}

/// Normalised Shannon entropy (0..1) of a histogram.
pub fn normalized_entropy<'a>(counts: impl Iterator<Item = &'a u32>) -> f64 {
    let v: Vec<f64> = counts.filter(|c| **c > 0).map(|c| f64::from(*c)).collect();
    if v.len() < 2 {
        return 0.0;
    }
    let total: f64 = v.iter().sum();
    let h: f64 = v.iter().map(|c| {
        let p = c / total;
        -p * p.log2()
    }).sum();
    h / (v.len() as f64).log2()
}

/// Bounded histogram of destination ports: exact for up to `cap` ports, the rest are counted in
/// an overflow bucket.
#[derive(Debug, Clone, Default)]
pub struct PortHistogram {
    counts: BTreeMap<u16, u32>,
    overflow: u32,
}

impl PortHistogram {
    pub const CAP: usize = 64;

    pub fn add(&mut self, port: u16) {
        if let Some(c) = self.counts.get_mut(&port) {
            *c = c.saturating_add(1);
        } else if self.counts.len() < Self::CAP {
            self.counts.insert(port, 1);
        } else {
            self.overflow = self.overflow.saturating_add(1);
        }
    }

    pub fn entropy(&self) -> f64 {
        normalized_entropy(self.counts.values())
    }

    pub fn ports(&self) -> Vec<u16> {
        self.counts.keys().copied().collect()
    }
}

pub use crate::sketch::Hll;

/// Insert into a bounded sorted sample; returns true if newly inserted.
pub fn bounded_insert<T: Ord + Copy>(v: &mut Vec<T>, item: T, cap: usize) -> bool {
    match v.binary_search(&item) {
        Ok(_) => false,
        Err(pos) if v.len() < cap => {
            v.insert(pos, item);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_classes() {
        let mut t = Timing::default();
        for i in 0..20 {
            t.observe(Duration::from_secs(10 * i));
        }
        assert_eq!(t.class(), TimingClass::Periodic);
        let mut b = Timing::default();
        let mut now = 0u64;
        for i in 0..40 {
            now += if i % 10 == 0 { 600_000 } else { 10 };
            b.observe(Duration::from_millis(now));
        }
        assert_eq!(b.class(), TimingClass::Bursty);
        assert_eq!(Timing::default().class(), TimingClass::Unknown);
    }

    #[test]
    fn hll_is_accurate_enough() {
        for n in [1u32, 10, 100, 1000, 10_000] {
            let mut h = Hll::default();
            for i in 0..n {
                h.insert(i.wrapping_mul(2_654_435_761));
            }
            let e = h.estimate();
            let err = (e - f64::from(n)).abs() / f64::from(n);
            assert!(err < 0.2, "n={n} estimate {e}");
        }
    }

    #[test]
    fn classes_entropy_and_samples() {
        assert_eq!(service_class(443), "web");
        assert_eq!(service_class(3306), "database");
        assert_eq!(class_diversity(&[80, 443, 8080]), 1);
        assert_eq!(class_diversity(&[22, 80, 445, 3306]), 4);
        assert!((privileged_fraction(&[22, 80, 8080, 9000]) - 0.5).abs() < 1e-9);
        let mut h = PortHistogram::default();
        for _ in 0..100 {
            h.add(443);
        }
        assert_eq!(h.entropy(), 0.0);
        for p in 1..=50 {
            h.add(p);
        }
        assert!(h.entropy() > 0.3);
        let mut v = Vec::new();
        assert!(bounded_insert(&mut v, 5, 2));
        assert!(!bounded_insert(&mut v, 5, 2));
        assert!(bounded_insert(&mut v, 1, 2));
        assert!(!bounded_insert(&mut v, 9, 2));
        assert_eq!(v, vec![1, 5]);
    }
}

/// One window's fan-out scored against its thresholds, with the role multiplier and the learned
/// baseline applied. Shared by the inbound (per source) and outbound (per program) detectors.
#[derive(Debug, Clone, Copy)]
pub struct FanoutScore {
    /// Weighted ports (privileged ports count `detect.privileged_weight` each) / port threshold and hosts / host threshold.
    pub ps: f64,
    pub hs: f64,
    /// max(ps, hs): ≥ 1 means the window is over a threshold.
    pub score: f64,
    /// The fan-out stays inside what the baseline learned for this entity.
    pub within_baseline: bool,
}

/// Score `ports` / `hosts` (with `priv_ports` of the ports privileged) of window `i` against the
/// thresholds `port_thr` / `host_thr` × `mult`, raised to a learned baseline's maxima × margin.
#[expect(clippy::too_many_arguments, reason = "each input is an independent measurement or setting")]
pub fn fanout_score(
    ports: f64,
    hosts: f64,
    priv_ports: f64,
    i: usize,
    base: Option<(&[f64], &[f64])>,
    port_thr: u32,
    host_thr: u32,
    mult: f64,
    d: &crate::config::DetectConfig,
) -> FanoutScore {
    let priv_ports = priv_ports.min(ports);
    let wports = ports + (d.privileged_weight - 1.0) * priv_ports;
    // A learned baseline raises the thresholds to its maxima x margin (the port maximum is
    // weighted like the current count).
    let margin = d.baseline_margin;
    let wratio = if ports > 0.0 { wports / ports } else { 1.0 };
    let bports = base.map_or(0.0, |(p, _)| p.get(i).copied().unwrap_or(0.0) * margin);
    let bhosts = base.map_or(0.0, |(_, h)| h.get(i).copied().unwrap_or(0.0) * margin);
    let within_baseline = base.is_some() && ports <= bports && hosts <= bhosts.max(1.0);
    let pt = (f64::from(port_thr) * mult).max(bports * wratio);
    let ht = (f64::from(host_thr) * mult).max(bhosts);
    let (ps, hs) = (wports / pt, hosts / ht);
    FanoutScore { ps, hs, score: ps.max(hs), within_baseline }
}

/// Allowlisted activity is reported at low/info.
pub(super) fn allowlisted_severity(s: Severity) -> Severity {
    if s <= Severity::Low {
        Severity::Info
    } else {
        Severity::Low
    }
}

/// Confidence from the fan-out score and supporting evidence.
pub(super) fn confidence(score: f64, fail_ratio: Option<f64>, trw_scanner: bool, tool: bool) -> f64 {
    let mut c = 1.0 - 0.5f64.powf(score.max(0.0));
    if trw_scanner {
        c = 1.0 - (1.0 - c) * 0.5;
    }
    if tool {
        c = 1.0 - (1.0 - c) * 0.6;
    }
    c *= match fail_ratio {
        None => 0.7,
        Some(r) => 0.6 + 0.4 * r,
    };
    (c.clamp(0.05, 0.99) * 1000.0).round() / 1000.0
}
