//! Inbound (per remote source) state and detectors: fan-out scans (horizontal, vertical, block,
//! slow), stealth probes, evasion, honeyports.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use scanwatch_common::cnt;


use super::features::{
    allowlisted_severity, confidence,
    fanout_score, FanoutScore,
    bounded_insert, note_seen, seen_within, TimingClass,
};
use super::reason::{self, Notes};
use super::shape;
use super::window::{m, Metrics};
use super::engine::Engine;
use super::inbound_state::*;
use super::types::{make_room, DecoyMembership, FingerprintInfo, InboundEventKind, InboundObservation, SourceSnapshot, SAMPLE_OUT};
use crate::alert::{
    is_internal, Alert, AlertKind, AlertSource, Counts, Direction, Evidence, FingerprintBlock, Incident, Severity,
    Shape, Targets, Technique,
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
            if allow.is_none() {
                // No outcome yet: a possible member of a split scan.
                self.failing_inbound.insert(ip);
            }
            self.inbound.insert(ip, Box::new(InboundEntity::new(ip, &self.cfg.detect.windows, allow)));
        }
        // Inserted just above when missing.
        self.inbound.entry(ip).or_insert_with(|| Box::new(InboundEntity::new(ip, &[], None)))
    }

    /// A cache hint for the state of inbound source `ip`, about to be observed (see
    /// `InboundEntity::prefetch` for `level`): nothing changes, whatever the source.
    pub fn prefetch_source(&self, ip: IpAddr, level: u8) {
        if let Some(e) = self.inbound.get(&canonical_ip(ip)) {
            e.prefetch(level);
        }
    }

    pub(super) fn ingest_source(&mut self, now: Duration, s: &SourceSnapshot) {
        let ip = canonical_ip(s.ip);
        let trw = self.trw;
        let min_fail = self.cfg.detect.min_fail_ratio;
        let e = self.inbound_entity(ip);
        let was_dirty = e.dirty;
        e.apply_snapshot(now, s, &trw);
        let failing_or_unknown = e.allow_net.is_none() && e.lifetime_fail_ratio().is_none_or(|r| r >= min_fail);
        let no_fingerprints = e.fingerprints.is_empty();
        if !was_dirty {
            self.dirty_inbound.push(ip);
        }
        if failing_or_unknown {
            self.failing_inbound.insert(ip);
        }
        self.inbound_seen(now);
        if no_fingerprints {
            return;
        }
        let Some(e) = self.inbound.get(&ip) else { return };
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
        note_seen(&mut e.host_seen, dst, now);
        e.last_seen = now;
        if !std::mem::replace(&mut e.dirty, true) {
            self.dirty_inbound.push(ip);
        }
        self.inbound_seen(now);
        let e = self.inbound_entity(ip);
        match &o.kind {
            InboundEventKind::Honeyport { dport, proto } => {
                bounded_insert(&mut e.honeyports, *dport, 64);
                bounded_insert(&mut e.known_ports, *dport, KNOWN_PORTS_CAP);
                note_seen(&mut e.port_seen, *dport, now);
                note_seen(&mut e.honey_seen, (*dport, *proto), now);
                e.honey_unexplained = None;
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
            self.fanout_alert(now, ip, kind, h, tool, &totals, out);
            if let Some(e) = self.inbound.get_mut(&ip) {
                e.last_fast_trigger = Some(now);
                e.last_fanout_alert = Some(now);
            }
        } else if let (true, Some(h)) = (slow, slow_hit) {
            let window = self.cfg.detect.windows[h.idx];
            let quiet = e.last_fast_trigger.is_none_or(|t| now.saturating_sub(t) > window);
            if quiet {
                self.fanout_alert(now, ip, AlertKind::SlowScan, h, tool, &totals, out);
                if let Some(e) = self.inbound.get_mut(&ip) {
                    e.last_fanout_alert = Some(now);
                }
            }
        }

        self.stealth_and_evasion(now, ip, &totals, out);
        self.protocol_scan(now, ip, &totals, out);
    }

    /// IP-protocol scan (nmap -sO): many distinct IP protocol numbers from one source within a
    /// window (the shortest that has `detect.protocol_scan_min`).
    fn protocol_scan(&mut self, now: Duration, ip: IpAddr, totals: &[Metrics], out: &mut Vec<Alert>) {
        let d = &self.cfg.detect;
        let min = f64::from(d.protocol_scan_min);
        let Some(i) = totals.iter().position(|t| t.get(m::NEW_PROTOS) >= min) else { return };
        let sh = Shape::new("ip", "protocol");
        // Counted over the shortest fast window covering the incident so far (as fan-outs are).
        let i = self.report_window(now, &format!("src:{ip}"), AlertKind::ProtocolScan, &sh, i);
        let t = totals[i];
        let window = self.cfg.detect.windows[i];
        let protos = t.get(m::NEW_PROTOS).round() as u64;
        // Many protocols mean a scanner looking for what answers, not one misrouted tunnel.
        let conf = (0.6 + 0.3 * (protos as f64 / 64.0)).min(0.95);
        let Some(mut a) =
            self.inbound_alert(now, ip, AlertKind::ProtocolScan, placed(Severity::Medium, &ip), conf, window, &t, sh)
        else {
            return;
        };
        // Ports do not apply: the probes are told apart by protocol number.
        a.targets.port_count = 0;
        a.targets.sample_ports.clear();
        // Probes: the packets of other protocols plus the port / echo probes among them.
        let probes = a.counts.probes + t.get(m::cnt(cnt::IP_PROTO)).round() as u64;
        let mut detail = a.counts.detail.clone();
        detail.insert(Evidence::Protocols, protos);
        a.counts = Counts::new(probes, a.counts.failures, a.counts.successes, detail);
        let notes = self.inbound_notes(&ip, false);
        a.reason = reason::protocol_scan(&a, &notes);
        self.submit(now, &format!("src:{ip}"), Duration::ZERO, a, out);
    }

    fn stealth_and_evasion(&mut self, now: Duration, ip: IpAddr, totals: &[Metrics], out: &mut Vec<Alert>) {
        let d = &self.cfg.detect;
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
        if stealth.is_none() && evasion.is_none() && honey.is_none() {
            // The common case (every sweep of every source): nothing to report, nothing copied.
            return;
        }
        let d = d.clone();

        if let Some(i) = stealth {
            let t = totals[i];
            let conf = if t.get(m::STEALTH) >= f64::from(d.stealth_min) { 0.9 } else { 0.6 };
            let window = d.windows[i];
            if let Some(mut a) = self.inbound_alert(
                now,
                ip,
                AlertKind::StealthScan,
                placed(Severity::Medium, &ip),
                conf,
                window,
                &t,
                shape::stealth_of(&t),
            ) {
                let notes = self.inbound_notes(&ip, false);
                a.reason = reason::stealth(&a, &notes);
                self.submit(now, &format!("src:{ip}"), Duration::ZERO, a, out);
            }
        }
        if let Some(i) = evasion {
            let t = totals[i];
            let sev = if t.get(m::BADSUM) >= 1.0 { Severity::High } else { Severity::Medium };
            let window = d.windows[i];
            let marked = t.get(m::EVASION) >= f64::from(d.evasion_min) || t.get(m::BADSUM) >= 1.0;
            let mut sh = shape::of(&t);
            if !marked {
                sh = Shape::new("tcp", "unsolicited");
            }
            // Unsolicited RST / SYN-ACK from a source with an open scan incident are part of
            // that scan (its lines count them), not an incident of their own.
            let folded = !marked && self.lifecycle.has_open(&format!("src:{ip}"), |k| k != AlertKind::Evasion && is_scan_kind(k));
            let finding = if folded {
                None
            } else {
                self.inbound_alert(now, ip, AlertKind::Evasion, placed(sev, &ip), 0.8, window, &t, sh)
            };
            if let Some(mut a) = finding {
                if !marked {
                    // Backscatter: the evidence is the unsolicited segments alone.
                    a.counts.detail.retain(|k, _| {
                        matches!(k.name(), "unsolicited_synack" | "unsolicited_rst")
                    });
                }
                let notes = self.inbound_notes(&ip, false);
                a.reason = reason::evasion(&a, &notes);
                self.submit(now, &format!("src:{ip}"), Duration::ZERO, a, out);
            }
        }
        if let Some(i) = honey {
            let protos: Vec<u8> = self.inbound.get(&ip).map_or_else(Vec::new, |e| {
                let mut p: Vec<u8> = e
                    .honey_seen
                    .iter()
                    .filter(|(_, t)| now.saturating_sub(**t) < d.windows[i])
                    .map(|((_, pr), _)| *pr)
                    .collect();
                p.dedup();
                p.sort_unstable();
                p.dedup();
                p
            });
            if protos.is_empty() {
                // The sweep saw the touch before its event (or the event was lost with a full
                // ring buffer): wait for the event's port and protocol; `tick` alerts without
                // them after HONEY_EVENT_WAIT.
                if let Some(e) = self.inbound.get_mut(&ip) {
                    e.honey_unexplained.get_or_insert(now);
                    self.honey_waiting.insert(ip);
                }
            }
            for p in protos {
                self.honeyport_finding(now, ip, i, p, out);
            }
        }
    }

    /// Non-numeric facts of an inbound finding (allowlist, timing).
    fn inbound_notes(&self, ip: &IpAddr, by_trw: bool) -> Notes {
        let mut n = Notes { by_trw, ..Notes::default() };
        if let Some(e) = self.inbound.get(ip) {
            let timing = e.timing.class();
            if timing != TimingClass::Unknown {
                n.timing = Some(timing.as_str());
            }
            if let Some(net) = &e.allow_net {
                n.tail.push(format!("source is allowlisted in network set \"{net}\""));
            }
        }
        n
    }

    #[expect(clippy::too_many_arguments, reason = "the finding and the window totals it was found in")]
    fn fanout_alert(
        &mut self,
        now: Duration,
        ip: IpAddr,
        kind: AlertKind,
        h: Hit,
        tool: bool,
        totals: &[Metrics],
        out: &mut Vec<Alert>,
    ) {
        let Some(e) = self.inbound.get(&ip) else { return };
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
        // Kind and shape are the triggering (shortest) window's; the counts are those of the
        // shortest fast window covering the whole incident so far, so a long scan's later lines
        // count all of it, not its last seconds only.
        let sh = if kind == AlertKind::StealthScan { shape::stealth_of(&h.totals) } else { shape::of(&h.totals) };
        let idx = self.report_window(now, &format!("src:{ip}"), kind, &sh, h.idx);
        let h = if idx == h.idx {
            h
        } else {
            let t = totals.get(idx).copied().unwrap_or(h.totals);
            Hit { idx, ports: t.get(m::NEW_PORTS).max(h.ports), hosts: t.get(m::NEW_HOSTS).max(h.hosts), totals: t, ..h }
        };
        let window = self.cfg.detect.windows[h.idx];
        let Some(mut alert) = self.inbound_alert(now, ip, kind, placed(base, &ip), conf, window, &h.totals, sh) else {
            return;
        };
        alert.targets.port_count = (h.ports.round() as u64).max(alert.targets.sample_ports.len() as u64);
        alert.targets.host_count = (h.hosts.round().max(1.0) as u64).max(alert.targets.sample_hosts.len() as u64);
        let mut notes = self.inbound_notes(&ip, h.by_trw);
        notes.what = match kind {
            AlertKind::VerticalScan => Some("a vertical scan".into()),
            AlertKind::HorizontalScan => Some("a horizontal scan".into()),
            AlertKind::BlockScan => Some("a block scan".into()),
            AlertKind::StealthScan => Some("a stealth scan".into()),
            AlertKind::Evasion => Some("an evasive scan".into()),
            _ => None,
        };
        alert.reason = reason::fanout(&alert, kind == AlertKind::SlowScan, &notes);
        let hold = if kind == AlertKind::SlowScan { window } else { Duration::ZERO };
        self.submit(now, &format!("src:{ip}"), hold, alert, out);
    }

    /// Build an inbound finding for `ip` from the totals `t` of `window`: every number (targets,
    /// counts, samples) is that window's. The caller renders the reason from the result.
    #[expect(clippy::too_many_arguments, reason = "the alert is assembled from many independent measurements")]
    fn inbound_alert(
        &self,
        now: Duration,
        ip: IpAddr,
        kind: AlertKind,
        severity: Severity,
        confidence: f64,
        window: Duration,
        t: &Metrics,
        shape: Shape,
    ) -> Option<Alert> {
        let e = self.inbound.get(&ip)?;
        let allowlisted = e.allow_net.is_some();
        let sample_ports = seen_within(&e.port_seen, now, window, SAMPLE_OUT);
        let sample_hosts: Vec<String> =
            seen_within(&e.host_seen, now, window, SAMPLE_OUT).iter().map(IpAddr::to_string).collect();
        Some(Alert {
            time: self.time(now),
            kind,
            severity: if allowlisted { allowlisted_severity(severity) } else { severity },
            confidence: (confidence * 1000.0).round() / 1000.0,
            direction: Direction::Inbound,
            source: AlertSource { ip: Some(ip), process: None, related: Vec::new() },
            targets: Targets {
                host_count: (t.get(m::NEW_HOSTS).round().max(1.0) as u64).max(sample_hosts.len() as u64),
                port_count: (t.get(m::NEW_PORTS).round() as u64).max(sample_ports.len() as u64),
                sample_ports,
                sample_hosts,
            },
            shape,
            window: format_duration(window),
            counts: Counts::new(
                t.get(m::PROBES).round() as u64,
                t.get(m::FAILURES).round() as u64,
                t.get(m::SUCCESSES).round() as u64,
                window_detail(t),
            ),
            fingerprint: e.best_fingerprint().map(|f| FingerprintBlock {
                text: f.text.clone(),
                hash: f.hash.clone(),
                tool_hint: f.tool_hint.clone(),
            }),
            technique: Technique::for_source(Direction::Inbound, Some(&ip)),
            host: self.host.clone(),
            allowlisted,
            blocked: e.blocked && !allowlisted,
            reason: String::new(),
            update: false,
            alert_id: String::new(),
            incident: Incident::default(),
            depth: None,
            annotations: Default::default(),
        })
    }

    /// A honeyport touch by `ip` (event or swept counter): one incident per source and protocol,
    /// naming every honeyport of that protocol touched within the window. While the source has
    /// an open scan incident the touch is evidence of that scan (its lines count `honeyport`
    /// probes) rather than an incident of its own.
    pub(super) fn honeyport_finding(&mut self, now: Duration, ip: IpAddr, idx: usize, proto: u8, out: &mut Vec<Alert>) {
        let ip = canonical_ip(ip);
        let actor = format!("src:{ip}");
        if self.lifecycle.has_open(&actor, is_scan_kind) {
            return;
        }
        let Some(e) = self.inbound.get(&ip) else { return };
        let window = self.cfg.detect.windows[idx];
        let ports: Vec<u16> = e
            .honey_seen
            .iter()
            .filter(|((_, pr), t)| *pr == proto && now.saturating_sub(**t) < window)
            .map(|((p, _), _)| *p)
            .take(SAMPLE_OUT)
            .collect();
        let t = e.windows.totals(now).get(idx).copied().unwrap_or_default();
        // The swept counter lags the immediate event: at least one touch per port named.
        let touches = (t.get(m::cnt(cnt::HONEYPORT)).round() as u64).max(ports.len() as u64).max(1);
        let sh = Shape::new(shape::proto_name(proto), "honeyport");
        let Some(mut a) = self.inbound_alert(now, ip, AlertKind::HoneyportHit, placed(Severity::High, &ip), 0.9, window, &t, sh) else {
            return;
        };
        a.targets.port_count = ports.len() as u64;
        a.targets.sample_ports = ports;
        a.counts = Counts::new(touches, 0, 0, BTreeMap::from([(Evidence::counter(cnt::HONEYPORT), touches)]));
        let notes = self.inbound_notes(&ip, false);
        a.reason = reason::honeyport(&a, &notes);
        self.submit(now, &actor, Duration::ZERO, a, out);
    }
}

/// How long a swept honeyport touch waits for its kernel event before alerting without the
/// port and protocol.
pub(super) const HONEY_EVENT_WAIT: Duration = Duration::from_secs(3);

impl Engine {
    /// Honeyport touches whose events never came: alert them now, without port and protocol.
    pub(super) fn unexplained_honeyports(&mut self, now: Duration, out: &mut Vec<Alert>) {
        // Only the sources listed as waiting (the rest have no unexplained touch); the list
        // forgets those explained, expired or evicted.
        let inbound = &self.inbound;
        self.honey_waiting.retain(|ip| inbound.get(ip).is_some_and(|e| e.honey_unexplained.is_some()));
        let due: Vec<IpAddr> = self
            .honey_waiting
            .iter()
            .filter(|ip| {
                self.inbound
                    .get(ip)
                    .is_some_and(|e| e.honey_unexplained.is_some_and(|t| now.saturating_sub(t) >= HONEY_EVENT_WAIT))
            })
            .copied()
            .collect();
        for ip in due {
            if let Some(e) = self.inbound.get_mut(&ip) {
                e.honey_unexplained = None;
            }
            let idx = self.cfg.detect.windows.iter().position(|w| *w > HONEY_EVENT_WAIT).unwrap_or(0);
            self.honeyport_finding(now, ip, idx, 0, out);
        }
    }
}

/// Kinds that are a scan of one source (a honeyport touch during one is part of it).
fn is_scan_kind(k: AlertKind) -> bool {
    matches!(
        k,
        AlertKind::VerticalScan
            | AlertKind::HorizontalScan
            | AlertKind::BlockScan
            | AlertKind::StealthScan
            | AlertKind::SlowScan
            | AlertKind::Evasion
    )
}
