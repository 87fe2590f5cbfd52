//! Outbound (local process) state and the outbound_scan detector.
//!
//! Entities are keyed by (uid, executable or comm, parent pid): a scanner process, or a shell
//! loop spawning one short-lived `nc` per port, is one entity.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::features::{
    class_diversity, fanout_score, FanoutScore, TimingClass,
};
use super::features::{allowlisted_severity, confidence};
use super::outbound_state::*;
use super::window::{m, Metrics};
use super::engine::Engine;
use super::types::{make_room, OutboundObservation, SAMPLE_OUT};
use crate::vocab::ProcessInfo;
use crate::alert::{
    Evidence,
    Alert, AlertKind, AlertSource, Counts, Direction, ProcessBlock, Severity, Targets,
    Technique,
};
use crate::vocab::format_duration;



/// Entity key of a process.
pub(super) fn entity_key(p: &ProcessInfo) -> String {
    let prog = p.exe.as_deref().unwrap_or(&p.comm);
    format!("proc:{}:{}:{}", p.uid, prog, p.ppid.unwrap_or(0))
}

fn process_block(p: &ProcessInfo) -> ProcessBlock {
    let mut b = p.clone();
    b.ancestry.truncate(4);
    b
}

#[derive(Debug, Clone, Copy)]
struct Hit {
    idx: usize,
    ports: f64,
    hosts: f64,
    port_score: f64,
    host_score: f64,
    score: f64,
    totals: Metrics,
    by_trw: bool,
}

impl Engine {
    pub(super) fn ingest_outbound(&mut self, now: Duration, o: &OutboundObservation) -> String {
        let key = entity_key(&o.process);
        let cap = self.cfg.detect.max_outbound_entities;
        if !self.outbound.contains_key(&key) {
            self.evicted += make_room(&mut self.outbound, cap, |e| e.last_seen);
        }
        let windows = &self.cfg.detect.windows;
        let e = self
            .outbound
            .entry(key.clone())
            .or_insert_with(|| OutboundEntity::new(o.process.clone(), windows));
        // Keep the richest process description (a later event may come after exit).
        if !(o.process.exited && e.process.exe.is_some() && o.process.exe.is_none()) {
            e.process = o.process.clone();
        }
        e.apply(now, &o.action, &self.role, &self.trw);
        key
    }

    pub(super) fn evaluate_outbound(&mut self, now: Duration, key: &str, slow: bool, out: &mut Vec<Alert>) {
        let Some(e) = self.outbound.get(key) else { return };
        let d = &self.cfg.detect;
        let totals = e.windows.totals(now);
        let mult = self.role.outbound_multiplier;
        let exe = e.process.exe.clone().unwrap_or_else(|| e.process.comm.clone());
        let base = self.baseline.as_ref().and_then(|b| b.executables.get(&exe));
        let trw_scanner = e.trw.is_scanner();

        let mut fast: Option<Hit> = None;
        let mut slow_hit: Option<Hit> = None;
        for (i, t) in totals.iter().enumerate() {
            let ports = t.get(m::NEW_PORTS);
            let hosts = t.get(m::NEW_HOSTS);
            let FanoutScore { ps, hs, score, within_baseline } = fanout_score(
                ports,
                hosts,
                t.get(m::NEW_PRIV_PORTS),
                i,
                base.map(|b| (b.max_ports.as_slice(), b.max_hosts.as_slice())),
                d.outbound_port_thresholds[i],
                d.outbound_host_thresholds[i],
                mult,
                d,
            );
            let fr = t.fail_ratio();
            let probes = t.get(m::PROBES);
            let crafted = probes > 0.0 && t.get(m::RAW) >= probes * 0.5;
            let failing = fr.is_none_or(|r| r >= d.min_fail_ratio) || trw_scanner || crafted;
            let sequential = trw_scanner
                && !within_baseline
                && fr.is_some_and(|r| r >= d.min_fail_ratio)
                && ports.max(hosts) >= f64::from(d.trw_min_fanout);
            let by_fanout = failing && score >= 1.0;
            if !(by_fanout || sequential) {
                continue;
            }
            let hit = Hit { idx: i, ports, hosts, port_score: ps, host_score: hs, score, totals: *t, by_trw: !by_fanout };
            let slot = if d.windows[i] < d.slow_min_window { &mut fast } else { &mut slow_hit };
            if slot.is_none_or(|h| hit.score > h.score) {
                *slot = Some(hit);
            }
        }
        let (hit, is_slow) = match (fast, slow_hit) {
            (Some(h), _) => (h, false),
            (None, Some(h)) if slow => {
                let window = d.windows[h.idx];
                if e.last_fast_trigger.is_some_and(|t| now.saturating_sub(t) <= window) {
                    return;
                }
                (h, true)
            }
            _ => return,
        };
        if !is_slow {
            if let Some(e) = self.outbound.get_mut(key) {
                e.last_fast_trigger = Some(now);
            }
        }
        self.outbound_alert(now, key, hit, is_slow, out);
    }

    fn outbound_alert(&mut self, now: Duration, key: &str, h: Hit, is_slow: bool, out: &mut Vec<Alert>) {
        let Some(e) = self.outbound.get(key) else { return };
        let d = &self.cfg.detect;
        let p = &e.process;
        let exe = p.exe.clone().unwrap_or_else(|| p.comm.clone());
        let fr = h.totals.fail_ratio();
        let mut conf = confidence(h.score, fr, e.trw.is_scanner(), h.totals.get(m::RAW) > 0.0);

        // Novelty against the learned baseline of this executable.
        let mut novelty_note = String::new();
        if let Some(b) = self.baseline.as_ref().and_then(|b| b.executables.get(&exe)) {
            let ports = e.histogram.ports();
            if !ports.is_empty() && !b.ports.is_empty() {
                let novel = ports.iter().filter(|p| !b.ports.contains(p)).count() as f64 / ports.len() as f64;
                conf *= 0.5 + 0.5 * novel;
                novelty_note = format!("; {:.0}% of ports new versus baseline", novel * 100.0);
            }
        }
        let timing = e.timing.class();
        if timing == TimingClass::Periodic && fr.is_some_and(|r| r < 0.5) {
            conf *= 0.5;
        }
        let shape = if h.port_score >= 1.0 && h.host_score >= 1.0 {
            "block"
        } else if h.port_score >= 1.0 || (h.host_score < 1.0 && h.ports >= h.hosts) {
            "vertical"
        } else {
            "horizontal"
        };
        let window = d.windows[h.idx];
        let name = p.exe.as_deref().unwrap_or(&p.comm);
        let mut reason = format!(
            "{name} (pid {}, uid {}) {}probed {:.0} distinct ports on {:.0} hosts within {} ({shape} scan",
            p.tgid,
            p.uid,
            if is_slow { "slowly " } else { "" },
            h.ports,
            h.hosts,
            format_duration(window),
        );
        if let Some(r) = fr {
            reason.push_str(&format!(", {:.0}% of connections failed", r * 100.0));
        }
        if h.totals.get(m::RAW) > 0.0 {
            reason.push_str(&format!(", {:.0} crafted raw packets", h.totals.get(m::RAW)));
        }
        reason.push(')');
        if h.by_trw {
            reason.push_str("; sequential hypothesis test decided scanner");
        }
        let diversity = class_diversity(&e.sample_ports);
        if diversity >= 3 {
            reason.push_str(&format!("; {diversity} service classes, port entropy {:.2}", e.histogram.entropy()));
        }
        reason.push_str(&novelty_note);

        // Severity: role default, raised for big scans; expected scanners and allowlists low.
        let role = &self.role;
        let mut severity = role.outbound_severity;
        if h.score >= 4.0 && severity < Severity::High {
            severity = severity.raise();
        }
        let user_allowed = self.cfg.allowlist.users.iter().any(|u| {
            p.user.as_deref() == Some(u.as_str()) || u.parse::<u32>().is_ok_and(|uid| uid == p.uid)
        });
        let exe_allowed = p.exe.as_ref().is_some_and(|x| self.cfg.allowlist.executables.contains(x));
        let expected_scanner = p.exe.as_ref().is_some_and(|x| role.expected_scanners.contains(x));
        let allowlisted = user_allowed || exe_allowed || expected_scanner;
        if expected_scanner {
            severity = Severity::Low;
            reason.push_str(&format!("; expected scanner for role \"{}\"", role.name));
        } else if allowlisted {
            severity = allowlisted_severity(severity);
            reason.push_str(if exe_allowed { "; executable is allowlisted" } else { "; user is allowlisted" });
        }
        reason.push('.');

        let mut detail: BTreeMap<Evidence, u64> = BTreeMap::new();
        for (k, v) in &e.lifetime {
            if matches!(*k, "null" | "fin" | "xmas" | "maimon" | "ack" | "synfin" | "custom_flags" | "raw_probe" | "raw_socket" | "udp") {
                if let Some(ev) = Evidence::from_name(k) {
                    detail.insert(ev, *v);
                }
            }
        }
        let alert = Alert {
            time: self.time(now),
            kind: AlertKind::OutboundScan,
            severity,
            confidence: (conf.clamp(0.05, 0.99) * 1000.0).round() / 1000.0,
            direction: Direction::Outbound,
            source: AlertSource { ip: None, process: Some(process_block(p)), related: Vec::new() },
            targets: Targets {
                host_count: h.hosts.round().max(1.0) as u64,
                port_count: h.ports.round() as u64,
                sample_ports: e.sample_ports.iter().take(SAMPLE_OUT).copied().collect(),
                sample_hosts: e.sample_hosts.iter().take(SAMPLE_OUT).map(IpAddr::to_string).collect(),
            },
            window: format_duration(window),
            counts: Counts {
                probes: h.totals.get(m::PROBES).round() as u64,
                failures: h.totals.get(m::FAILURES).round() as u64,
                fail_ratio: fr.map(|r| (r * 1000.0).round() / 1000.0),
                detail,
            },
            fingerprint: None,
            technique: Technique::for_source(Direction::Outbound, None),
            host: self.host.clone(),
            allowlisted,
            blocked: false,
            reason,
            update: false,
            alert_id: String::new(),
            annotations: Default::default(),
        };
        let magnitude = h.ports + h.hosts;
        self.submit(now, key, magnitude, alert, out);
    }
}
