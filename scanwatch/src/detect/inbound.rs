//! Inbound (per remote source) state and detectors: fan-out scans (horizontal, vertical, block,
//! slow), stealth probes, evasion, honeyports.

use std::net::IpAddr;
use std::time::Duration;


use super::features::{
    allowlisted_severity, confidence,
    fanout_score, FanoutScore,
    bounded_insert, class_diversity, TimingClass,
};
use super::window::{m, Metrics};
use super::engine::Engine;
use super::inbound_state::*;
use super::types::{make_room, DecoyMembership, FingerprintInfo, InboundEventKind, InboundObservation, SourceSnapshot, SAMPLE_OUT};
use crate::alert::{
    is_internal, Alert, AlertKind, AlertSource, Counts, Direction, FingerprintBlock, Severity,
    Targets, Technique,
};
use crate::vocab::{canonical_ip, format_duration};

/// One window's fan-out evaluation.
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

/// The technique a fan-out's probes mostly show: stealth flag shapes (NULL, FIN, Xmas, Maimon,
/// SYN+FIN, bare ACK) or evasion marks (fragments, source port 53/88, bad checksums). None for a
/// plain SYN / UDP / ICMP fan-out, or one where such probes are only a minority.
fn technique_kind(t: &Metrics) -> Option<AlertKind> {
    let probes = t.get(m::PROBES);
    if probes <= 0.0 {
        return None;
    }
    let stealth = t.get(m::STEALTH) + t.get(m::WEAK_STEALTH);
    if stealth >= probes * TECHNIQUE_SHARE {
        Some(AlertKind::StealthScan)
    } else if t.get(m::RAW) >= probes * TECHNIQUE_SHARE {
        Some(AlertKind::Evasion)
    } else {
        None
    }
}

/// Inbound base severity: external sources one level lower, internal ones one level higher.
fn placed(base: Severity, ip: &IpAddr) -> Severity {
    if is_internal(ip) {
        base.raise()
    } else {
        base.lower()
    }
}



impl Engine {
    pub(super) fn inbound_entity(&mut self, ip: IpAddr) -> &mut InboundEntity {
        let cap = self.cfg.detect.max_inbound_entities;
        if !self.inbound.contains_key(&ip) {
            self.evicted += make_room(&mut self.inbound, cap, |e| e.last_seen);
            let allow = self.cfg.allowlist.network_for(&ip).map(str::to_string);
            self.inbound.insert(ip, InboundEntity::new(ip, &self.cfg.detect.windows, allow));
        }
        // Inserted just above when missing.
        self.inbound.entry(ip).or_insert_with(|| InboundEntity::new(ip, &[], None))
    }

    pub(super) fn ingest_source(&mut self, now: Duration, s: &SourceSnapshot) {
        let ip = canonical_ip(s.ip);
        let trw = self.trw;
        let min_fail = self.cfg.detect.min_fail_ratio;
        let e = self.inbound_entity(ip);
        e.apply_snapshot(now, s, &trw);
        let failing = e.lifetime_fail_ratio().is_some_and(|r| r >= min_fail);
        let ports: Vec<u16> = e.known_ports.clone();
        let fps: Vec<(String, u8)> =
            e.fingerprints.iter().map(|f| (f.hash.clone(), f.initial_ttl)).collect();
        for (hash, ttl) in fps {
            self.fingerprints.note(now, &hash, ip, &ports, failing, ttl);
        }
    }

    pub(super) fn ingest_event(&mut self, now: Duration, o: &InboundObservation) {
        let ip = canonical_ip(o.ip);
        let dst = canonical_ip(o.dst);
        let min_fail = self.cfg.detect.min_fail_ratio;
        let e = self.inbound_entity(ip);
        bounded_insert(&mut e.known_hosts, dst, KNOWN_HOSTS_CAP);
        e.last_seen = now;
        e.dirty = true;
        match &o.kind {
            InboundEventKind::Honeyport { dport, .. } => {
                bounded_insert(&mut e.honeyports, *dport, 64);
                bounded_insert(&mut e.known_ports, *dport, KNOWN_PORTS_CAP);
            }
            InboundEventKind::Threshold { win_ports, win_hosts, .. } => {
                e.kernel_win = Some((now, *win_ports, *win_hosts));
            }
            InboundEventKind::NewFingerprint(fp) => {
                e.add_fingerprint(fp);
                let failing = e.lifetime_fail_ratio().is_some_and(|r| r >= min_fail);
                let ports = e.known_ports.clone();
                self.fingerprints.note(now, &fp.hash, ip, &ports, failing, fp.initial_ttl);
            }
        }
    }

    /// Evaluate one source. `slow` also evaluates slow-scan windows (from `tick`).
    pub(super) fn evaluate_inbound(&mut self, now: Duration, ip: &IpAddr, slow: bool, out: &mut Vec<Alert>) {
        let ip = canonical_ip(*ip);
        let Some(e) = self.inbound.get(&ip) else { return };
        let d = &self.cfg.detect;
        let totals = e.windows.totals(now);
        let mult = self.role.inbound_multiplier;
        let base = self.baseline.as_ref().and_then(|b| b.sources.get(&ip.to_string()));
        let tool = e.best_fingerprint().is_some_and(FingerprintInfo::is_scanner_tool);
        let trw_scanner = e.trw.is_scanner();

        let mut fast: Option<Hit> = None;
        let mut slow_hit: Option<Hit> = None;
        for (i, t) in totals.iter().enumerate() {
            let mut ports = t.get(m::NEW_PORTS);
            let mut hosts = t.get(m::NEW_HOSTS);
            if i == self.short_idx {
                if let Some((at, wp, wh)) = e.kernel_win {
                    if now.saturating_sub(at) < self.cfg.xdp.short_window {
                        ports = ports.max(f64::from(wp));
                        hosts = hosts.max(f64::from(wh));
                    }
                }
            }
            let FanoutScore { ps, hs, score, within_baseline } = fanout_score(
                ports,
                hosts,
                t.get(m::NEW_PRIV_PORTS),
                i,
                base.map(|b| (b.max_ports.as_slice(), b.max_hosts.as_slice())),
                d.port_thresholds[i],
                d.host_thresholds[i],
                mult,
                d,
            );
            let fr = t.fail_ratio();
            let failing = fr.is_none_or(|r| r >= d.min_fail_ratio) || trw_scanner;
            let sequential = (trw_scanner || tool)
                && !within_baseline
                && fr.is_some_and(|r| r >= d.min_fail_ratio)
                && ports.max(hosts) >= f64::from(d.trw_min_fanout);
            let by_fanout = failing && score >= 1.0;
            if !(by_fanout || sequential) {
                continue;
            }
            let hit = Hit {
                idx: i,
                ports,
                hosts,
                port_score: ps,
                host_score: hs,
                score,
                totals: *t,
                by_trw: !by_fanout,
            };
            let slot = if d.windows[i] < d.slow_min_window { &mut fast } else { &mut slow_hit };
            if slot.is_none_or(|h| hit.score > h.score) {
                *slot = Some(hit);
            }
        }

        let membership = if fast.is_some() { self.decoy_membership(now, &ip) } else { DecoyMembership::Alone };
        if let (Some(_), DecoyMembership::Member) = (fast, membership) {
            // One of several sources sending the same probes (decoys): the decoy_cluster alert
            // shows the fan-out with every source named, not one fan-out alert per source.
            if let Some(e) = self.inbound.get_mut(&ip) {
                e.last_fast_trigger = Some(now);
                e.last_fanout_alert = Some(now);
            }
        } else if let (Some(_), DecoyMembership::Pending, false) = (fast, membership, slow) {
            // Decided at the next tick (the entity stays dirty), once every member is fed.
        } else if let Some(h) = fast {
            let kind = if let Some(k) = technique_kind(&h.totals) {
                // Mostly stealth-shaped or evasion-marked probes: the scan is shown as that
                // technique (one alert carrying the fan-out), not as a plain fan-out scan.
                k
            } else if h.port_score >= 1.0 && h.host_score >= 1.0 {
                AlertKind::BlockScan
            } else if h.port_score >= 1.0 {
                AlertKind::VerticalScan
            } else if h.host_score >= 1.0 || h.hosts > h.ports {
                AlertKind::HorizontalScan
            } else {
                AlertKind::VerticalScan
            };
            self.fanout_alert(now, ip, kind, h, tool, out);
            if let Some(e) = self.inbound.get_mut(&ip) {
                e.last_fast_trigger = Some(now);
                e.last_fanout_alert = Some(now);
            }
        } else if let (true, Some(h)) = (slow, slow_hit) {
            let window = self.cfg.detect.windows[h.idx];
            let quiet = e.last_fast_trigger.is_none_or(|t| now.saturating_sub(t) > window);
            if quiet {
                self.fanout_alert(now, ip, AlertKind::SlowScan, h, tool, out);
                if let Some(e) = self.inbound.get_mut(&ip) {
                    e.last_fanout_alert = Some(now);
                }
            }
        }

        self.stealth_and_evasion(now, ip, &totals, out);
    }

    fn stealth_and_evasion(&mut self, now: Duration, ip: IpAddr, totals: &[Metrics], out: &mut Vec<Alert>) {
        let d = self.cfg.detect.clone();
        let stealth = totals.iter().position(|t| {
            t.get(m::STEALTH) >= f64::from(d.stealth_min)
                || (t.get(m::WEAK_STEALTH) >= f64::from(d.weak_stealth_min) && t.get(m::NEW_PORTS) >= 3.0)
        });
        let evasion = totals.iter().position(|t| {
            t.get(m::EVASION) >= f64::from(d.evasion_min)
                || t.get(m::BADSUM) >= 1.0
                || t.get(m::UNSOLICITED) >= f64::from(d.unsolicited_min)
        });
        let honey = totals.iter().position(|t| t.get(m::HONEYPORT) > 0.0);

        if let Some(i) = stealth {
            let t = totals[i];
            let n = t.get(m::STEALTH) + t.get(m::WEAK_STEALTH);
            let reason = format!(
                "{ip} sent {} stealth probes (NULL/Xmas/Maimon/SYN+FIN/custom flags) and {} FIN/bare-ACK probes to {:.0} ports within {}.",
                t.get(m::STEALTH),
                t.get(m::WEAK_STEALTH),
                t.get(m::NEW_PORTS),
                format_duration(self.cfg.detect.windows[i])
            );
            let conf = if t.get(m::STEALTH) >= f64::from(d.stealth_min) { 0.9 } else { 0.6 };
            self.simple_inbound(now, ip, AlertKind::StealthScan, Severity::Medium, conf, i, &t, n, reason, out);
        }
        if let Some(i) = evasion {
            let t = totals[i];
            let unsolicited = t.get(m::UNSOLICITED);
            let reason = if t.get(m::EVASION) >= f64::from(d.evasion_min) || t.get(m::BADSUM) >= 1.0 {
                format!(
                    "{ip} used {} evasion techniques (fragments, source-port 53/88 tricks, bad checksums: {}) within {}.",
                    t.get(m::EVASION),
                    t.get(m::BADSUM),
                    format_duration(self.cfg.detect.windows[i])
                )
            } else {
                format!(
                    "{ip} sent {unsolicited} unsolicited SYN-ACK/RST segments within {} (backscatter of spoofed probes or idle-scan zombie use).",
                    format_duration(self.cfg.detect.windows[i])
                )
            };
            let sev = if t.get(m::BADSUM) >= 1.0 { Severity::High } else { Severity::Medium };
            let n = t.get(m::EVASION) + unsolicited;
            self.simple_inbound(now, ip, AlertKind::Evasion, sev, 0.8, i, &t, n, reason, out);
        }
        if let Some(i) = honey {
            let t = totals[i];
            let reason = format!(
                "{ip} touched a honeyport {} time(s) within {}: no service here uses it.",
                t.get(m::HONEYPORT),
                format_duration(self.cfg.detect.windows[i])
            );
            let n = self.inbound.get(&ip).map_or(1, |e| e.honeyports.len().max(1)) as f64;
            self.simple_inbound(now, ip, AlertKind::HoneyportHit, Severity::High, 0.9, i, &t, n, reason, out);
        }
    }

    #[expect(clippy::too_many_arguments, reason = "the alert is assembled from many independent measurements")]
    fn simple_inbound(
        &mut self,
        now: Duration,
        ip: IpAddr,
        kind: AlertKind,
        base: Severity,
        confidence: f64,
        idx: usize,
        t: &Metrics,
        magnitude: f64,
        reason: String,
        out: &mut Vec<Alert>,
    ) {
        let window = format_duration(self.cfg.detect.windows[idx]);
        let Some(alert) = self.inbound_alert(now, ip, kind, placed(base, &ip), confidence, window, t, reason) else {
            return;
        };
        self.submit(now, &format!("src:{ip}"), magnitude, alert, out);
    }

    fn fanout_alert(&mut self, now: Duration, ip: IpAddr, kind: AlertKind, h: Hit, tool: bool, out: &mut Vec<Alert>) {
        let Some(e) = self.inbound.get(&ip) else { return };
        let d = &self.cfg.detect;
        let fr = h.totals.fail_ratio();
        let mut conf = confidence(h.score, fr, e.trw.is_scanner(), tool);
        let timing = e.timing.class();
        if timing == TimingClass::Periodic && fr.is_some_and(|r| r < 0.5) {
            conf *= 0.5;
        }
        let mut base = Severity::Medium;
        if h.score >= 4.0 || kind == AlertKind::BlockScan {
            base = base.raise();
        }
        if kind == AlertKind::Evasion && h.totals.get(m::BADSUM) >= 1.0 {
            // Bad checksums only serve to probe for a middlebox that does not verify them.
            base = base.raise();
        }
        let window = d.windows[h.idx];
        let diversity = class_diversity(&e.known_ports);
        let mut reason = match kind {
            AlertKind::StealthScan => format!(
                "{ip} probed {:.0} distinct ports on {:.0} hosts within {} with stealth probes ({:.0} NULL/Xmas/Maimon/SYN+FIN, {:.0} FIN/bare-ACK of {:.0} probes)",
                h.ports,
                h.hosts,
                format_duration(window),
                h.totals.get(m::STEALTH),
                h.totals.get(m::WEAK_STEALTH),
                h.totals.get(m::PROBES)
            ),
            AlertKind::Evasion => format!(
                "{ip} probed {:.0} distinct ports on {:.0} hosts within {} with evasive probes ({:.0} of {:.0} fragmented, sent from source port 53/88 or with a bad checksum)",
                h.ports,
                h.hosts,
                format_duration(window),
                h.totals.get(m::RAW),
                h.totals.get(m::PROBES)
            ),
            AlertKind::SlowScan => format!(
                "{ip} slowly probed {:.0} ports on {:.0} hosts over {} while staying under the short-window thresholds",
                h.ports, h.hosts, format_duration(window)
            ),
            _ => format!(
                "{ip} probed {:.0} distinct ports on {:.0} hosts within {}",
                h.ports, h.hosts, format_duration(window)
            ),
        };
        if let Some(r) = fr {
            reason.push_str(&format!(
                " ({:.0} of {:.0} probes failed, {:.0}%)",
                h.totals.get(m::FAILURES),
                h.totals.get(m::FAILURES) + h.totals.get(m::SUCCESSES),
                r * 100.0
            ));
        }
        if h.by_trw {
            reason.push_str("; sequential hypothesis test decided scanner");
        }
        if diversity >= 3 {
            reason.push_str(&format!("; {diversity} service classes"));
        }
        if let Some(fp) = e.best_fingerprint().filter(|f| f.is_scanner_tool()) {
            reason.push_str(&format!("; fingerprint looks like {}", fp.tool_hint));
        }
        if timing != TimingClass::Unknown {
            reason.push_str(&format!("; timing {}", timing.as_str()));
        }
        reason.push('.');
        let magnitude = h.ports + h.hosts;
        let Some(alert) = self.inbound_alert(
            now,
            ip,
            kind,
            placed(base, &ip),
            conf,
            format_duration(window),
            &h.totals,
            reason,
        ) else {
            return;
        };
        let mut alert = alert;
        alert.targets.port_count = h.ports.round() as u64;
        alert.targets.host_count = h.hosts.round().max(1.0) as u64;
        self.submit(now, &format!("src:{ip}"), magnitude, alert, out);
    }

    /// Build an inbound alert for entity `ip` (allowlist, fingerprint, targets filled in).
    #[expect(clippy::too_many_arguments, reason = "the alert is assembled from many independent measurements")]
    fn inbound_alert(
        &self,
        now: Duration,
        ip: IpAddr,
        kind: AlertKind,
        severity: Severity,
        confidence: f64,
        window: String,
        t: &Metrics,
        reason: String,
    ) -> Option<Alert> {
        let e = self.inbound.get(&ip)?;
        let allowlisted = e.allow_net.is_some();
        let mut reason = reason;
        if let Some(net) = &e.allow_net {
            reason = format!("{} (source is allowlisted in network set \"{net}\")", reason.trim_end_matches('.'));
            reason.push('.');
        }
        Some(Alert {
            time: self.time(now),
            kind,
            severity: if allowlisted { allowlisted_severity(severity) } else { severity },
            confidence,
            direction: Direction::Inbound,
            source: AlertSource { ip: Some(ip), process: None, related: Vec::new() },
            targets: Targets {
                host_count: t.get(m::NEW_HOSTS).round().max(1.0) as u64,
                port_count: t.get(m::NEW_PORTS).round() as u64,
                sample_ports: e.known_ports.iter().take(SAMPLE_OUT).copied().collect(),
                sample_hosts: e.known_hosts.iter().take(SAMPLE_OUT).map(IpAddr::to_string).collect(),
            },
            window,
            counts: Counts {
                probes: t.get(m::PROBES).round() as u64,
                failures: t.get(m::FAILURES).round() as u64,
                fail_ratio: t.fail_ratio().map(|r| (r * 1000.0).round() / 1000.0),
                detail: e.detail(),
            },
            fingerprint: e.best_fingerprint().map(|f| FingerprintBlock {
                text: f.text.clone(),
                hash: f.hash.clone(),
                tool_hint: f.tool_hint.clone(),
            }),
            technique: Technique::for_source(Direction::Inbound, Some(&ip)),
            host: self.host.clone(),
            allowlisted,
            blocked: e.blocked && !allowlisted,
            reason,
            update: false,
            alert_id: String::new(),
            annotations: Default::default(),
        })
    }

    pub(super) fn honeyport_alert(&mut self, now: Duration, ip: &IpAddr, dport: u16, proto: u8, out: &mut Vec<Alert>) {
        let ip = canonical_ip(*ip);
        let Some(e) = self.inbound.get(&ip) else { return };
        let proto_name = match proto {
            6 => "tcp",
            17 => "udp",
            _ => "ip",
        };
        let n = e.honeyports.len().max(1) as f64;
        let reason = format!("{ip} touched honeyport {dport}/{proto_name}: no service here uses it.");
        let mut t = Metrics::default();
        t.set(m::PROBES, 1.0);
        t.set(m::NEW_PORTS, 1.0);
        t.set(m::HONEYPORT, 1.0);
        let window = format_duration(self.cfg.detect.windows[0]);
        let Some(mut alert) = self.inbound_alert(
            now,
            ip,
            AlertKind::HoneyportHit,
            placed(Severity::High, &ip),
            0.9,
            window,
            &t,
            reason,
        ) else {
            return;
        };
        alert.targets.sample_ports = vec![dport];
        alert.targets.port_count = 1;
        self.submit(now, &format!("src:{ip}"), n, alert, out);
    }
}
