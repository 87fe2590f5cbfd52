//! Outbound (local process) state and the outbound_scan detector.
//!
//! Entities are keyed by (uid, program, anchor): a scanner process, or a shell loop / `xargs` /
//! GNU `parallel` spawning one short-lived `nc` per port (directly or through a per-probe
//! wrapper such as `timeout` or `sh -c`), is one entity. The anchor is the long-lived ancestor
//! chosen by the enrichment (`enrich::choose_anchor`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use scanwatch_common::cnt;

use super::features::{allowlisted_severity, confidence, fanout_score, seen_within, FanoutScore, TimingClass};
use super::reason::{self, Notes};
use super::shape;
use super::outbound_state::*;
use super::window::{m, Metrics};
use super::engine::Engine;
use super::types::{make_room, OutboundObservation, SAMPLE_OUT};
use crate::vocab::ProcessInfo;
use crate::alert::{
    Alert, AlertKind, AlertSource, Counts, Direction, Evidence, Incident, ProcessBlock, Severity, Targets, Technique,
};
use crate::vocab::format_duration;




fn process_block(p: &ProcessInfo) -> ProcessBlock {
    let mut b = p.clone();
    b.ancestry.truncate(crate::vocab::process::MAX_ANCESTRY);
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
            // The shortest fast window that hits is reported (its counts are the activity of
            // now, not of earlier scans still inside a longer window); among slow windows the
            // strongest.
            if d.windows[i] < d.slow_min_window {
                if fast.is_none() {
                    fast = Some(hit);
                }
            } else if slow_hit.is_none_or(|h| hit.score > h.score) {
                slow_hit = Some(hit);
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
        let p = &e.process;
        let exe = p.exe.clone().unwrap_or_else(|| p.comm.clone());
        let fr = h.totals.fail_ratio();
        let mut conf = confidence(h.score, fr, e.trw.is_scanner(), h.totals.get(m::RAW) > 0.0);
        let mut notes = Notes { by_trw: h.by_trw, ..Notes::default() };

        // Novelty against the learned baseline of this executable.
        if let Some(b) = self.baseline.as_ref().and_then(|b| b.executables.get(&exe)) {
            let ports = e.histogram.ports();
            if !ports.is_empty() && !b.ports.is_empty() {
                let novel = ports.iter().filter(|p| !b.ports.contains(p)).count() as f64 / ports.len() as f64;
                conf *= 0.5 + 0.5 * novel;
                notes.tail.push(if novel > 0.0 {
                    "ports new versus the learned baseline".to_string()
                } else {
                    "every port known to the learned baseline".to_string()
                });
            }
        }
        let timing = e.timing.class();
        if timing == TimingClass::Periodic && fr.is_some_and(|r| r < 0.5) {
            conf *= 0.5;
        }
        if timing != TimingClass::Unknown {
            notes.timing = Some(timing.as_str());
        }
        let shape_word = if h.port_score >= 1.0 && h.host_score >= 1.0 {
            "block"
        } else if h.port_score >= 1.0 || (h.host_score < 1.0 && h.ports >= h.hosts) {
            "vertical"
        } else {
            "horizontal"
        };
        notes.what = Some(format!("a {shape_word} scan"));
        // Counts of the shortest fast window covering the incident so far (see inbound).
        let sh = shape::of(&h.totals);
        let h = if is_slow {
            h
        } else {
            let idx = self.report_window(now, key, AlertKind::OutboundScan, &sh, h.idx);
            match self.outbound.get(key).and_then(|e| e.windows.totals(now).get(idx).copied()) {
                Some(t) if idx != h.idx => {
                    Hit { idx, ports: t.get(m::NEW_PORTS).max(h.ports), hosts: t.get(m::NEW_HOSTS).max(h.hosts), totals: t, ..h }
                }
                _ => h,
            }
        };
        let Some(e) = self.outbound.get(key) else { return };
        let p = &e.process;
        let d = &self.cfg.detect;
        let window = d.windows[h.idx];

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
            notes.tail.push(format!("expected scanner for role \"{}\"", role.name));
        } else if allowlisted {
            severity = allowlisted_severity(severity);
            notes.tail.push(if exe_allowed { "executable is allowlisted".into() } else { "user is allowlisted".into() });
        }

        let t = &h.totals;
        let mut detail: BTreeMap<Evidence, u64> = BTreeMap::new();
        for c in [cnt::NULL, cnt::FIN, cnt::XMAS, cnt::MAIMON, cnt::ACK, cnt::SYNFIN, cnt::CUSTOM_FLAGS, cnt::UDP] {
            let v = t.get(m::cnt(c)).round() as u64;
            if v > 0 {
                detail.insert(Evidence::counter(c), v);
            }
        }
        for (ev, slot) in [(Evidence::RawProbe, m::RAW), (Evidence::RawSocket, m::RAW_SOCKET)] {
            let v = t.get(slot).round() as u64;
            if v > 0 {
                detail.insert(ev, v);
            }
        }
        let sample_ports = seen_within(&e.port_seen, now, window, SAMPLE_OUT);
        let sample_hosts: Vec<String> =
            seen_within(&e.host_seen, now, window, SAMPLE_OUT).iter().map(IpAddr::to_string).collect();
        let mut alert = Alert {
            time: self.time(now),
            kind: AlertKind::OutboundScan,
            severity,
            confidence: (conf.clamp(0.05, 0.99) * 1000.0).round() / 1000.0,
            direction: Direction::Outbound,
            source: AlertSource { ip: None, process: Some(process_block(p)), related: Vec::new() },
            targets: Targets {
                host_count: (h.hosts.round().max(1.0) as u64).max(sample_hosts.len() as u64),
                port_count: (h.ports.round() as u64).max(sample_ports.len() as u64),
                sample_ports,
                sample_hosts,
            },
            shape: sh,
            window: format_duration(window),
            counts: Counts::new(
                t.get(m::PROBES).round() as u64,
                t.get(m::FAILURES).round() as u64,
                t.get(m::SUCCESSES).round() as u64,
                detail,
            ),
            fingerprint: None,
            technique: Technique::for_source(Direction::Outbound, None),
            host: self.host.clone(),
            allowlisted,
            blocked: false,
            reason: String::new(),
            update: false,
            alert_id: String::new(),
            incident: Incident::default(),
            depth: None,
            annotations: Default::default(),
        };
        alert.reason = reason::fanout(&alert, is_slow, &notes);
        let hold = if is_slow { window } else { Duration::ZERO };
        self.submit(now, key, hold, alert, out);
    }
}
