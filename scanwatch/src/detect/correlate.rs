//! Multi-source correlation: decoy clusters (one fingerprint, many sources, same ports) and
//! destination-centric distributed scans (many sources under threshold covering many ports,
//! including one-probe sources still held in the kernel's first-contact table).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use super::correlate_state::*;
use super::engine::Engine;
use super::types::{DecoyMembership, HeldProbe, SAMPLE_OUT};
use super::features::seen_within;
use super::reason;
use super::shape;
use super::window::{m, Metrics};
use crate::alert::{
    is_internal, Alert, AlertKind, AlertSource, Counts, Direction, Evidence, Incident, Severity, Shape, Targets,
    Technique,
};
use crate::vocab::{canonical_ip, format_duration};

impl Engine {
    /// Remember one-probe sources held in the kernel's first-contact table (see
    /// `Engine::observe_held`).
    pub(super) fn note_held(&mut self, now: Duration, probes: &[HeldProbe]) {
        let window = self.cfg.detect.distributed_window;
        let held = &mut self.distributed.held;
        // Expired entries go once per call (everything inserted below is `now`, never expired).
        if held.len() + probes.len() > HELD_CAP {
            held.retain(|_, (_, seen)| now.saturating_sub(*seen) < window);
        }
        for p in probes {
            let ip = canonical_ip(p.ip);
            if !held.contains_key(&ip) && held.len() >= HELD_CAP {
                self.distributed.held_dropped += 1;
                continue;
            }
            held.insert(ip, (HeldProbe { ip, ..*p }, now));
        }
    }

    pub(super) fn evaluate_decoys(&mut self, now: Duration, ip: &IpAddr, out: &mut Vec<Alert>) {
        let ip = canonical_ip(*ip);
        let Some(e) = self.inbound.get(&ip) else { return };
        let d = &self.cfg.detect;
        let hashes: Vec<(String, Option<crate::alert::FingerprintBlock>)> = e
            .fingerprints
            .iter()
            .map(|f| {
                (
                    f.hash.clone(),
                    Some(crate::alert::FingerprintBlock {
                        text: f.text.clone(),
                        hash: f.hash.clone(),
                        tool_hint: f.tool_hint.clone(),
                    }),
                )
            })
            .collect();
        let (window, min_sources, min_ports, overlap) = (
            d.decoy_window,
            d.decoy_min_sources as usize,
            d.decoy_min_ports as usize,
            d.decoy_min_overlap,
        );
        for (hash, fp) in hashes {
            let Some(c) = self.fingerprints.cluster(now, &hash, window, min_sources, min_ports, overlap) else {
                continue;
            };
            let internal = c.members.iter().any(is_internal);
            let severity = if internal { Severity::High } else { Severity::Medium };
            let n = c.members.len();
            let mut alert = Alert {
                time: self.time(now),
                kind: AlertKind::DecoyCluster,
                severity,
                confidence: (0.5 + 0.1 * n as f64).min(0.95),
                direction: Direction::Inbound,
                source: AlertSource {
                    ip: c.members.first().copied(),
                    process: None,
                    related: c.members.iter().skip(1).take(RELATED_OUT).copied().collect(),
                },
                targets: Targets {
                    host_count: 1,
                    port_count: c.common_ports.len() as u64,
                    sample_ports: c.common_ports.iter().take(SAMPLE_OUT).copied().collect(),
                    sample_hosts: Vec::new(),
                },
                // A decoy cluster is found from shared SYN fingerprints.
                shape: Shape::new("tcp", "syn"),
                window: format_duration(window),
                counts: Counts::new(0, 0, 0, BTreeMap::from([(Evidence::Sources, n as u64)])),
                fingerprint: fp,
                technique: Technique::for_source(Direction::Inbound, c.members.first()),
                host: self.host.clone(),
                allowlisted: false,
                blocked: false,
                reason: String::new(),
                update: false,
                alert_id: String::new(),
                incident: Incident::default(),
                depth: None,
                annotations: Default::default(),
            };
            alert.reason = reason::decoy(&alert, c.same_ttl);
            self.submit(now, &format!("fp:{hash}"), Duration::ZERO, alert, out);
        }
    }

    /// Where a source's fan-out belongs when it shares a scanner-tool fingerprint with other
    /// recent sources (nmap -D sends every probe from each decoy as well): `Member` when it is in a
    /// decoy cluster now (the cluster alert shows it, naming every source), `Pending` when enough
    /// sources share the fingerprint but their ports are not all known yet (the next tick decides,
    /// once the sweep has fed every member), `Alone` otherwise.
    pub(super) fn decoy_membership(&self, now: Duration, ip: &IpAddr) -> DecoyMembership {
        let ip = canonical_ip(*ip);
        let Some(e) = self.inbound.get(&ip) else { return DecoyMembership::Alone };
        let d = &self.cfg.detect;
        let (window, min_sources) = (d.decoy_window, d.decoy_min_sources as usize);
        let mut pending = false;
        for f in e.fingerprints.iter().filter(|f| f.is_scanner_tool()) {
            if self.fingerprints.active_members(now, &f.hash, window) < min_sources {
                continue;
            }
            let c = self.fingerprints.cluster(
                now,
                &f.hash,
                window,
                min_sources,
                d.decoy_min_ports as usize,
                d.decoy_min_overlap,
            );
            if c.is_some_and(|c| c.members.contains(&ip)) {
                return DecoyMembership::Member;
            }
            pending = true;
        }
        if pending {
            DecoyMembership::Pending
        } else {
            DecoyMembership::Alone
        }
    }

    /// Destination-centric: sources active in `detect.distributed_window`, failing, each without
    /// a fan-out alert of its own, that together cover many of this host's ports or addresses.
    pub(super) fn evaluate_distributed(&mut self, now: Duration, out: &mut Vec<Alert>) {
        if self.distributed.last_eval.is_some_and(|t| now.saturating_sub(t) < DISTRIBUTED_EVERY) {
            return;
        }
        self.distributed.last_eval = Some(now);
        // Both evaluations visit only the sources that may be failing (the index is a superset:
        // forget those gone or no longer failing).
        let min_fail = self.cfg.detect.min_fail_ratio;
        let inbound = &self.inbound;
        self.failing_inbound.retain(|ip| {
            inbound.get(ip).is_some_and(|e| e.allow_net.is_none() && e.lifetime_fail_ratio().is_none_or(|r| r >= min_fail))
        });
        self.evaluate_split(now, out);
        let d = &self.cfg.detect;
        let window = d.distributed_window;
        let count_idx = d.windows.iter().position(|w| *w >= window).unwrap_or(d.windows.len().saturating_sub(1));
        // Members first (cheap tests only); the port and host sets are only built when there
        // are enough of them.
        let mut entities: Vec<&super::inbound_state::InboundEntity> = Vec::new();
        for e in self.failing_inbound.iter().filter_map(|ip| self.inbound.get(ip)) {
            if now.saturating_sub(e.last_seen) >= window || e.allow_net.is_some() {
                continue;
            }
            if e.last_fanout_alert.is_some_and(|t| now.saturating_sub(t) < window) {
                continue;
            }
            if !e.lifetime_fail_ratio().is_some_and(|r| r >= d.min_fail_ratio)
                || e.lifetime_outcomes() < self.distributed_min_outcomes
            {
                continue;
            }
            entities.push(e);
        }
        // One-probe sources the kernel holds in its first-contact table (no entity of their own,
        // unless admitted since): each a source with one probe.
        let allow = &self.cfg.allowlist;
        self.distributed.held.retain(|_, (_, seen)| now.saturating_sub(*seen) < window);
        let held: Vec<(&IpAddr, &HeldProbe)> = self
            .distributed
            .held
            .iter()
            .filter(|(ip, (p, _))| p.failed && !self.inbound.contains_key(ip) && allow.network_for(ip).is_none())
            .map(|(ip, (p, _))| (ip, p))
            .collect();
        if entities.len() + held.len() < d.distributed_min_sources as usize {
            return;
        }
        let mut ports: Vec<u16> = Vec::new();
        let mut hosts: Vec<IpAddr> = Vec::new();
        let mut members: Vec<(usize, IpAddr)> = Vec::new();
        let mut probes = 0u64;
        let mut failures = 0u64;
        let mut successes = 0u64;
        for e in entities {
            ports.extend(e.known_ports.iter().copied());
            hosts.extend(e.known_hosts.iter().copied());
            members.push((e.known_ports.len() + e.known_hosts.len(), e.ip));
            // Counts of the scoring window that covers the distributed window.
            if let Some(t) = e.windows.total(now, count_idx) {
                probes += t.get(m::PROBES).round() as u64;
                failures += t.get(m::FAILURES).round() as u64;
                successes += t.get(m::SUCCESSES).round() as u64;
            }
        }
        for (ip, p) in held {
            if let Some(port) = p.dport {
                ports.push(port);
            }
            if let Some(dst) = p.dst {
                hosts.push(dst);
            }
            members.push((1, *ip));
            probes += 1;
            failures += 1;
        }
        ports.sort_unstable();
        ports.dedup();
        hosts.sort_unstable();
        hosts.dedup();
        if members.len() < d.distributed_min_sources as usize
            || (ports.len() < d.distributed_min_ports as usize && hosts.len() < d.distributed_min_hosts as usize)
        {
            return;
        }
        members.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let internal = members.iter().any(|(_, ip)| is_internal(ip));
        let n = members.len();
        let mut alert = Alert {
            time: self.time(now),
            kind: AlertKind::DistributedScan,
            severity: if internal { Severity::High } else { Severity::Medium },
            confidence: (0.4 + 0.05 * n as f64).min(0.9),
            direction: Direction::Inbound,
            source: AlertSource {
                ip: members.first().map(|(_, ip)| *ip),
                process: None,
                related: members.iter().skip(1).take(RELATED_OUT).map(|(_, ip)| *ip).collect(),
            },
            targets: Targets {
                host_count: hosts.len().max(1) as u64,
                port_count: ports.len() as u64,
                sample_ports: ports.iter().take(SAMPLE_OUT).copied().collect(),
                sample_hosts: hosts.iter().take(SAMPLE_OUT).map(IpAddr::to_string).collect(),
            },
            shape: if ports.is_empty() { Shape::default() } else { Shape::new("tcp", "syn") },
            window: format_duration(window),
            counts: Counts::new(probes, failures, successes, BTreeMap::from([(Evidence::Sources, n as u64)])),
            fingerprint: None,
            technique: if internal { Technique::network_service_discovery() } else { Technique::active_scanning() },
            host: self.host.clone(),
            allowlisted: false,
            blocked: false,
            reason: String::new(),
            update: false,
            alert_id: String::new(),
            incident: Incident::default(),
            depth: None,
            annotations: Default::default(),
        };
        alert.reason = reason::distributed(&alert);
        self.submit(now, "distributed", Duration::ZERO, alert, out);
    }
}

/// One source's part in a possible split port range.
#[derive(Debug, Clone)]
struct SplitCandidate {
    ip: IpAddr,
    /// Its exact port sample within the window, sorted.
    ports: Vec<u16>,
    /// Lowest and highest port of the sample.
    lo: u16,
    hi: u16,
    hosts: Vec<IpAddr>,
    /// Distinct ports (estimate) within the window.
    n_ports: f64,
    totals: Metrics,
}

impl SplitCandidate {
    /// The two sources' port ranges (and exact samples) overlap by at most `max` of the smaller.
    fn disjoint_from(&self, o: &SplitCandidate, max: f64) -> bool {
        let len = |c: &SplitCandidate| f64::from(c.hi - c.lo) + 1.0;
        let inter = (f64::from(self.hi.min(o.hi)) - f64::from(self.lo.max(o.lo)) + 1.0).max(0.0);
        if inter > max * len(self).min(len(o)) {
            return false;
        }
        let shared = self.ports.iter().filter(|p| o.ports.binary_search(p).is_ok()).count() as f64;
        shared <= max * self.ports.len().min(o.ports.len()) as f64
    }
}

/// Sources looked at per evaluation (the most recently active), and target addresses grouped.
const SPLIT_CANDIDATES: usize = 512;
const SPLIT_TARGETS: usize = 64;
/// Exact ports a source's sample needs for its range to mean anything.
const SPLIT_SAMPLE_MIN: usize = 4;

impl Engine {
    /// Split port ranges: several sources, active within `detect.distributed_window`, each
    /// probing one slice of the same address's ports — adjacent slices that do not overlap — are one
    /// scan divided between them (each source may also be a scan of its own). Stateless between
    /// evaluations apart from the incident: bounded by `SPLIT_CANDIDATES` sources.
    pub(super) fn evaluate_split(&mut self, now: Duration, out: &mut Vec<Alert>) {
        let d = &self.cfg.detect;
        let window = d.distributed_window;
        let count_idx = d.windows.iter().position(|w| *w >= window).unwrap_or(d.windows.len().saturating_sub(1));
        let (min_sources, min_ports, max_overlap) =
            (d.split_min_sources as usize, f64::from(d.split_min_ports), d.split_max_overlap);
        let (min_fail, min_total) = (d.min_fail_ratio, f64::from(d.distributed_min_ports));
        let mut cands: Vec<SplitCandidate> = Vec::new();
        for e in self.failing_inbound.iter().filter_map(|ip| self.inbound.get(ip)) {
            if now.saturating_sub(e.last_seen) >= window || e.allow_net.is_some() {
                continue;
            }
            if e.lifetime_fail_ratio().is_some_and(|r| r < min_fail) {
                continue;
            }
            // The cheap test first (no allocation): too few ports seen within the window.
            if e.port_seen.values().filter(|t| now.saturating_sub(**t) < window).take(SPLIT_SAMPLE_MIN).count()
                < SPLIT_SAMPLE_MIN
            {
                continue;
            }
            let Some(t) = e.windows.total(now, count_idx) else { continue };
            let mut ports = seen_within(&e.port_seen, now, window, usize::MAX);
            let n_ports = t.get(m::NEW_PORTS).max(ports.len() as f64);
            if ports.len() < SPLIT_SAMPLE_MIN || n_ports < min_ports {
                continue;
            }
            ports.sort_unstable();
            let (lo, hi) = (ports[0], ports[ports.len() - 1]);
            let hosts = seen_within(&e.host_seen, now, window, SPLIT_TARGETS);
            cands.push(SplitCandidate { ip: e.ip, ports, lo, hi, hosts, n_ports, totals: t });
            if cands.len() >= SPLIT_CANDIDATES {
                break;
            }
        }
        if cands.len() < min_sources {
            return;
        }
        // Group by target address (a source whose targets are unknown so far joins every group).
        let mut targets: BTreeSet<IpAddr> = BTreeSet::new();
        for c in &cands {
            targets.extend(c.hosts.iter().copied());
        }
        let groups: Vec<Option<IpAddr>> = if targets.is_empty() {
            vec![None]
        } else {
            targets.into_iter().take(SPLIT_TARGETS).map(Some).collect()
        };
        for target in groups {
            let mut cs: Vec<&SplitCandidate> =
                cands.iter().filter(|c| target.is_none_or(|h| c.hosts.is_empty() || c.hosts.contains(&h))).collect();
            if cs.len() < min_sources {
                continue;
            }
            cs.sort_by(|a, b| (a.lo, a.hi, a.ip).cmp(&(b.lo, b.hi, b.ip)));
            // Slices of one range: each next to the slices before it (the gap to the highest port
            // so far at most the wider of the two spans), none overlapping another.
            let mut group: Vec<&SplitCandidate> = Vec::new();
            let mut reach: Option<(u16, u16)> = None;
            for c in cs {
                // A slice reaches its highest sampled port, or as far as its port count takes it
                // from its lowest (a sequential scanner's sample is its first ports only).
                let span = (c.hi - c.lo).max(c.n_ports.min(65_535.0) as u16);
                if let Some((hi, prev_span)) = reach {
                    let gap = c.lo.saturating_sub(hi);
                    if gap > prev_span.max(span) {
                        if group.len() >= min_sources {
                            break;
                        }
                        // A new run of slices starts here.
                        group.clear();
                        reach = None;
                    }
                }
                if group.iter().all(|g| g.disjoint_from(c, max_overlap)) {
                    group.push(c);
                    let end = c.hi.max(c.lo.saturating_add(span));
                    let hi = reach.map_or(end, |(h, _)| h.max(end));
                    reach = Some((hi, span));
                }
            }
            // The sources whose target is known must be most of it.
            let known = group.iter().filter(|c| !c.hosts.is_empty()).count();
            let total_ports: f64 = group.iter().map(|c| c.n_ports).sum();
            if group.len() < min_sources
                || (target.is_some() && known * 2 < group.len())
                || total_ports < min_total
            {
                continue;
            }
            let mut totals = Metrics::default();
            for c in &group {
                for (k, v) in totals.0.iter_mut().zip(c.totals.0.iter()) {
                    *k += *v;
                }
            }
            let proto = shape::of(&totals).protocol;
            let proto = if proto.is_empty() || proto == "mixed" { "tcp".to_string() } else { proto };
            let internal = group.iter().any(|c| is_internal(&c.ip));
            let n = group.len();
            let sample: BTreeSet<u16> = group.iter().flat_map(|c| c.ports.iter().copied()).collect();
            let mut alert = Alert {
                time: self.time(now),
                kind: AlertKind::DistributedScan,
                severity: if internal { Severity::High } else { Severity::Medium },
                confidence: (0.5 + 0.1 * n as f64).min(0.9),
                direction: Direction::Inbound,
                source: AlertSource {
                    ip: group.first().map(|c| c.ip),
                    process: None,
                    related: group.iter().skip(1).take(RELATED_OUT).map(|c| c.ip).collect(),
                },
                targets: Targets {
                    host_count: 1,
                    port_count: (total_ports.round() as u64).max(sample.len() as u64),
                    sample_ports: sample.iter().take(SAMPLE_OUT).copied().collect(),
                    sample_hosts: target.iter().map(IpAddr::to_string).collect(),
                },
                shape: Shape::new(&proto, "split"),
                window: format_duration(window),
                counts: Counts::new(
                    totals.get(m::PROBES).round() as u64,
                    totals.get(m::FAILURES).round() as u64,
                    totals.get(m::SUCCESSES).round() as u64,
                    BTreeMap::from([(Evidence::Sources, n as u64)]),
                ),
                fingerprint: None,
                technique: if internal { Technique::network_service_discovery() } else { Technique::active_scanning() },
                host: self.host.clone(),
                allowlisted: false,
                blocked: false,
                reason: String::new(),
                update: false,
                alert_id: String::new(),
                incident: Incident::default(),
                depth: None,
                annotations: Default::default(),
            };
            alert.reason = reason::split(&alert);
            let actor = format!("split:{}", target.map_or_else(|| "?".to_string(), |h| h.to_string()));
            self.submit(now, &actor, Duration::ZERO, alert, out);
        }
    }
}
