//! What the findings say about each source and process, for `status` / `top` and the alert
//! counters: bounded tables ranked by score.
use std::collections::{BTreeMap, HashMap};

use super::Ranked;
use crate::alert::{Alert, AlertKind};
use crate::vocab::Severity;

/// Entities remembered per table; past it the lowest-scored, least recently alerted goes.
pub const MAX_ENTITIES: usize = 1024;

fn weight(s: Severity) -> f64 {
    match s {
        Severity::Info => 1.0,
        Severity::Low => 2.0,
        Severity::Medium => 4.0,
        Severity::High => 8.0,
        Severity::Critical => 16.0,
    }
}

#[derive(Debug, Default)]
pub struct Activity {
    by_kind: BTreeMap<String, BTreeMap<String, u64>>,
    sources: HashMap<String, (Ranked, u64)>,
    processes: HashMap<String, (Ranked, u64)>,
    seq: u64,
}

impl Activity {
    pub fn record(&mut self, a: &Alert) {
        *self.by_kind.entry(a.kind.as_str().to_string()).or_default().entry(a.severity.as_str().to_string()).or_default() += 1;
        if a.kind == AlertKind::Notice {
            return;
        }
        self.seq += 1;
        let (table, key) = match (&a.source.ip, &a.source.process) {
            (Some(ip), _) => (&mut self.sources, ip.to_string()),
            (None, Some(p)) => (&mut self.processes, format!("{} (pid {}, uid {})", p.exe.as_deref().unwrap_or(&p.comm), p.tgid, p.uid)),
            (None, None) => return,
        };
        let score = weight(a.severity) * a.confidence;
        if !table.contains_key(&key) && table.len() >= MAX_ENTITIES {
            if let Some(k) = table
                .iter()
                .min_by(|x, y| x.1 .0.score.total_cmp(&y.1 .0.score).then(x.1 .1.cmp(&y.1 .1)))
                .map(|(k, _)| k.clone())
            {
                table.remove(&k);
            }
        }
        let e = table.entry(key.clone()).or_insert_with(|| {
            (
                Ranked { key, score: 0.0, alerts: 0, severity: String::new(), kind: String::new(), ports: 0, hosts: 0, last: String::new() },
                0,
            )
        });
        e.0.alerts += 1;
        if score >= e.0.score {
            e.0.score = score;
            e.0.severity = a.severity.as_str().to_string();
            e.0.kind = a.kind.as_str().to_string();
        }
        e.0.ports = e.0.ports.max(a.targets.port_count);
        e.0.hosts = e.0.hosts.max(a.targets.host_count);
        e.0.last = a.time.clone();
        e.1 = self.seq;
    }

    /// Findings by kind, then severity.
    pub fn by_kind(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.by_kind.clone()
    }

    fn top(t: &HashMap<String, (Ranked, u64)>, n: usize) -> Vec<Ranked> {
        let mut v: Vec<&(Ranked, u64)> = t.values().collect();
        v.sort_by(|a, b| b.0.score.total_cmp(&a.0.score).then(b.0.alerts.cmp(&a.0.alerts)).then(b.1.cmp(&a.1)));
        v.into_iter().take(n).map(|(r, _)| r.clone()).collect()
    }

    pub fn top_sources(&self, n: usize) -> Vec<Ranked> {
        Self::top(&self.sources, n)
    }

    pub fn top_processes(&self, n: usize) -> Vec<Ranked> {
        Self::top(&self.processes, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_worst_finding_and_counts_by_kind() {
        let mut act = Activity::default();
        let mut a = crate::output::tests::inbound();
        a.severity = Severity::Medium;
        a.confidence = 0.5;
        act.record(&a);
        a.severity = Severity::Critical;
        a.confidence = 1.0;
        a.source.ip = Some("198.51.100.1".parse().expect("ip"));
        act.record(&a);
        a.severity = Severity::Low;
        act.record(&a);
        let top = act.top_sources(10);
        assert_eq!(top[0].key, "198.51.100.1");
        assert_eq!(top[0].score, 16.0);
        assert_eq!(top[0].alerts, 2);
        assert_eq!(top[0].severity, "critical", "the worst finding names the entry");
        assert_eq!(top[1].key, "203.0.113.9");
        assert_eq!(act.by_kind()["vertical_scan"]["critical"], 1);
        assert_eq!(act.by_kind()["vertical_scan"]["low"], 1);
        assert!(act.top_processes(10).is_empty());
    }
}
