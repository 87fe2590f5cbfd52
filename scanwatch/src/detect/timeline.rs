//! Per-actor timeline: discovery (the engine's own scan findings) → enumeration (version probes,
//! scanner requests, banner grabs on the host's open services) → exploitation attempt
//! (exploit-shaped requests, repeated authentication). Raises `enumeration`, and `transition`
//! (higher severity) when an actor with an earlier phase — possibly from weeks ago, restored from
//! the persisted store — sends an exploit-shaped request.
//!
//! Times in the actor store are wall-clock unix seconds (`now` + the engine's wall offset), so a
//! restart (new monotonic epoch) keeps the timeline.
use std::net::IpAddr;
use std::time::Duration;

use super::engine::Engine;
use super::outbound_state::entity_key;
use super::types::{PayloadObservation, SAMPLE_OUT};
use crate::alert::{
    is_internal, Alert, AlertKind, AlertSource, Counts, DepthBlock, Direction, PhaseBlock, Severity, Targets,
    Technique,
};
use crate::depth::actors::{
    cluster_key, push_bounded, source_key, Actor, ActorStore, AUTH_MAX, MEMBERS_MAX, PORTS_MAX,
};
use crate::depth::{classify, Class, Phase, Verdict};
use crate::vocab::{canonical_ip, format_duration, rfc3339_from_unix, ProcessInfo};

/// Whose timeline a payload joins.
pub(super) enum Who {
    Source(IpAddr),
    /// A local process (outbound) and the destination of the payload.
    Process(Box<ProcessInfo>, IpAddr),
}

fn process_block(p: &ProcessInfo) -> crate::alert::ProcessBlock {
    let mut b = p.clone();
    b.ancestry.truncate(crate::vocab::process::MAX_ANCESTRY);
    b
}

/// Finding kinds that make their sources' discovery phase.
fn is_discovery(kind: AlertKind) -> bool {
    matches!(
        kind,
        AlertKind::HorizontalScan
            | AlertKind::VerticalScan
            | AlertKind::BlockScan
            | AlertKind::StealthScan
            | AlertKind::SlowScan
            | AlertKind::HoneyportHit
            | AlertKind::DecoyCluster
            | AlertKind::DistributedScan
            | AlertKind::Evasion
    )
}

impl Engine {
    fn wall(&self, now: Duration) -> f64 {
        now.as_secs_f64() + self.wall_offset
    }

    /// The actor under `key`, created (making room) if `create`.
    fn actor_mut(&mut self, key: &str, create: bool) -> Option<&mut Actor> {
        let store = &mut self.timeline.store;
        if !store.actors.contains_key(key) {
            if !create {
                return None;
            }
            self.timeline.stats.actors_evicted += store.make_room(self.cfg.depth.max_actors as usize) as u64;
        }
        self.timeline.dirty = true;
        Some(store.actors.entry(key.to_string()).or_default())
    }

    /// A scan finding about to be submitted: its inbound sources — or, for an `outbound_scan`,
    /// its local process — enter (or stay in) discovery.
    pub(super) fn timeline_note_finding(&mut self, now: Duration, alert: &Alert) {
        let outbound = alert.direction == Direction::Outbound && alert.kind == AlertKind::OutboundScan;
        let inbound = alert.direction == Direction::Inbound && is_discovery(alert.kind);
        if !self.cfg.depth.enabled || !(inbound || outbound) {
            return;
        }
        let wall = self.wall(now);
        let ports: Vec<u16> = alert.targets.sample_ports.iter().copied().take(SAMPLE_OUT).collect();
        let keys: Vec<String> = if outbound {
            alert.source.process.iter().map(entity_key).collect()
        } else {
            alert.source.ip.into_iter().chain(alert.source.related.iter().copied()).map(|ip| source_key(canonical_ip(ip))).collect()
        };
        for key in keys {
            if let Some(a) = self.actor_mut(&key, true) {
                a.mark(Phase::Discovery, wall, alert.kind.as_str());
                for p in &ports {
                    a.note_port(*p);
                }
            }
        }
    }

    /// Count a verdict in the payload statistics.
    fn count_verdict(&mut self, v: &Verdict) {
        let st = &mut self.timeline.stats;
        st.payloads += 1;
        st.silent += u64::from(v.class == Class::Silent);
        st.tls_hellos += u64::from(v.tls.is_some());
        st.malformed += u64::from(matches!(v.class, Class::Malformed(_)));
        st.truncated += u64::from(v.truncated);
    }

    /// The TCP fingerprint hash a source's connections carry: its latest OS-stack (not
    /// scanner-tool) SYN fingerprint, else its latest one.
    fn tcp_fp_of(&self, ip: IpAddr) -> Option<String> {
        let e = self.inbound.get(&ip)?;
        e.fingerprints.iter().rev().find(|f| !f.is_scanner_tool()).or(e.fingerprints.last()).map(|f| f.hash.clone())
    }

    /// The first client payload of an inbound connection (or a close without data).
    pub fn observe_payload(&mut self, now: Duration, p: &PayloadObservation) -> Vec<Alert> {
        if !self.cfg.depth.enabled {
            return Vec::new();
        }
        let v = classify(&self.cfg.depth, &p.sample, p.payload_len as usize, p.client_sent_data);
        self.count_verdict(&v);
        let ip = canonical_ip(p.src);
        let cluster = match (&v.tls, self.cfg.depth.cluster_by_ja4) {
            (Some(h), true) => self.tcp_fp_of(ip).map(|fp| cluster_key(&h.ja4(), &fp)),
            _ => None,
        };
        self.timeline_step(now, Who::Source(ip), source_key(ip), &v, p.dport, cluster)
    }

    /// The first bytes a local process wrote on an outbound TCP connection: the same classifiers,
    /// on the process's own timeline (keyed like its `outbound_scan` alerts).
    pub(super) fn observe_outbound_payload(
        &mut self,
        now: Duration,
        process: &ProcessInfo,
        dst: IpAddr,
        dport: u16,
        sample: &[u8],
        len: u32,
    ) -> Vec<Alert> {
        if !self.cfg.depth.enabled {
            return Vec::new();
        }
        let v = classify(&self.cfg.depth, sample, len as usize, true);
        self.count_verdict(&v);
        self.timeline.stats.outbound_payloads += 1;
        let key = entity_key(process);
        self.timeline_step(now, Who::Process(Box::new(process.clone()), canonical_ip(dst)), key, &v, dport, None)
    }

    /// The other members of cluster `ck` (not `key`): their merged timeline and addresses.
    fn cluster_others(&self, ck: &str, key: &str) -> Option<(Actor, Vec<IpAddr>)> {
        let store = &self.timeline.store.actors;
        let c = store.get(ck)?;
        let mut merged = Actor::default();
        let mut related = Vec::new();
        for m in c.members.iter().filter(|m| m.as_str() != key) {
            // Members without phases of their own (clients that only shared the stack) add
            // nothing and are not named.
            if let Some(a) = store.get(m).filter(|a| a.has_earlier() || a.exploitation.is_some()) {
                merged = merged.merged(&Actor { cluster: None, members: Vec::new(), ..a.clone() });
                if let Ok(ip) = m.parse::<IpAddr>() {
                    related.push(ip);
                }
            }
        }
        Some((merged, related))
    }

    /// Put actor `key` into cluster `ck` (created, making room, if missing).
    fn cluster_join(&mut self, ck: &str, key: &str, wall: f64) {
        if let Some(c) = self.actor_mut(ck, true) {
            push_bounded(&mut c.members, key.to_string(), MEMBERS_MAX);
            c.last_seen = c.last_seen.max(wall);
        }
        if let Some(a) = self.timeline.store.actors.get_mut(key) {
            a.cluster = Some(ck.to_string());
        }
    }

    /// One classified first payload on actor `key`'s timeline. `join`: the JA4 + TCP
    /// fingerprint cluster of a source's ClientHello.
    fn timeline_step(&mut self, now: Duration, who: Who, key: String, v: &Verdict, dport: u16, join: Option<String>) -> Vec<Alert> {
        let mut out = Vec::new();
        let wall = self.wall(now);
        let label = v.label();
        let phase = v.phase();
        let (enum_min, grab_min, auth_min, auth_window) = (
            u64::from(self.cfg.depth.enumeration_min),
            self.cfg.depth.banner_grab_min as usize,
            self.cfg.depth.auth_attempts as usize,
            self.cfg.depth.auth_window.as_secs_f64(),
        );
        // A ClientHello joins its cluster when the source has a timeline of its own, or the
        // cluster already exists (another member scanned or enumerated).
        let store = &self.timeline.store.actors;
        let join = join.filter(|ck| {
            store.contains_key(ck) || phase == Some(Phase::Enumeration) || store.get(&key).is_some_and(Actor::has_earlier)
        });
        let create = phase == Some(Phase::Enumeration) || join.is_some();
        if self.actor_mut(&key, create).is_none() {
            if phase == Some(Phase::Exploitation) || v.auth_attempt {
                self.timeline.stats.exploit_unattributed += u64::from(phase == Some(Phase::Exploitation));
            }
            return out;
        }
        if let Some(ck) = &join {
            self.cluster_join(ck, &key, wall);
        }
        let cluster = self.timeline.store.actors.get(&key).and_then(|a| a.cluster.clone());
        let others = cluster.as_deref().and_then(|ck| self.cluster_others(ck, &key));
        let others_earlier = others.as_ref().is_some_and(|(o, _)| o.has_earlier());
        let Some(a) = self.timeline.store.actors.get_mut(&key) else { return out };
        a.last_seen = a.last_seen.max(wall);
        a.note_port(dport);
        if let Some(h) = &v.tls {
            a.note_tls(&h.ja4(), h.sni.as_deref(), &h.alpn_strings());
        }
        let mut exploit = phase == Some(Phase::Exploitation);
        let mut exploit_label = label.clone();
        if v.auth_attempt {
            a.auth_times.retain(|t| wall - *t <= auth_window);
            if a.auth_times.len() >= AUTH_MAX {
                a.auth_times.remove(0);
            }
            a.auth_times.push(wall);
            if a.auth_times.len() >= auth_min && !exploit {
                exploit = true;
                exploit_label = format!("repeated_auth:{}", a.auth_times.len());
            }
        }
        let mut enumeration_due = false;
        match phase {
            Some(Phase::Enumeration) => {
                if v.class == Class::Silent {
                    push_bounded(&mut a.silent_ports, dport, PORTS_MAX);
                } else {
                    a.probes += 1;
                }
                a.mark(Phase::Enumeration, wall, &label);
                enumeration_due = a.probes >= enum_min || a.silent_ports.len() >= grab_min;
            }
            Some(Phase::Exploitation) | None if exploit => {
                if a.has_earlier() || others_earlier {
                    a.mark(Phase::Exploitation, wall, &exploit_label);
                }
            }
            _ => {}
        }
        let transition_due = exploit && a.exploitation.is_some();
        let a = a.clone();
        if exploit && !transition_due {
            self.timeline.stats.exploit_unattributed += 1;
        }
        if phase == Some(Phase::Enumeration) {
            self.timeline.stats.enumeration_events += 1;
        }
        // The timeline shown: the actor's own, joined by its cluster's other members'.
        let (shown, related) = match &others {
            Some((o, rel)) if o.has_earlier() => (a.merged(o), rel.clone()),
            _ => (a, Vec::new()),
        };
        let cluster = cluster.filter(|_| !related.is_empty());
        if transition_due {
            self.timeline.stats.exploit_events += 1;
            let alert = self.timeline_alert(now, &who, &shown, AlertKind::Transition, related, cluster);
            self.submit(now, &format!("transition:{key}"), Duration::ZERO, alert, &mut out);
        } else if enumeration_due {
            let alert = self.timeline_alert(now, &who, &shown, AlertKind::Enumeration, related, cluster);
            self.submit(now, &format!("enumeration:{key}"), Duration::ZERO, alert, &mut out);
        }
        out
    }

    fn timeline_alert(
        &self,
        now: Duration,
        who: &Who,
        a: &Actor,
        kind: AlertKind,
        related: Vec<IpAddr>,
        cluster: Option<String>,
    ) -> Alert {
        let phases: Vec<PhaseBlock> = a
            .phases()
            .into_iter()
            .map(|(p, m)| PhaseBlock {
                phase: p.as_str().into(),
                first: rfc3339_from_unix(m.first),
                last: rfc3339_from_unix(m.last),
                count: m.count,
                evidence: m.evidence.clone(),
            })
            .collect();
        let first = a.phases().first().map_or(self.wall(now), |(_, m)| m.first);
        let span = Duration::from_secs_f64((self.wall(now) - first).max(0.0));
        let ports: Vec<String> = a.ports.iter().map(u16::to_string).collect();
        let (actor, internal) = match who {
            Who::Source(ip) => (ip.to_string(), is_internal(ip)),
            Who::Process(p, _) => {
                let exe = p.exe.clone().unwrap_or_else(|| p.comm.clone());
                (format!("local process {exe} (pid {}, uid {})", p.tgid, p.uid), true)
            }
        };
        let with_cluster = match &cluster {
            Some(c) => format!(
                " (with {} other source(s) of its JA4 + TCP fingerprint cluster {c})",
                related.len()
            ),
            None => String::new(),
        };
        let (severity, confidence, reason) = match kind {
            AlertKind::Transition => {
                let all = phases.len() == 3;
                let story: Vec<String> = phases
                    .iter()
                    .map(|p| format!("{} at {} ({})", p.phase, p.first, p.evidence.first().cloned().unwrap_or_default()))
                    .collect();
                (
                    if all { Severity::Critical } else { Severity::High },
                    if all { 0.95 } else { 0.85 },
                    format!(
                        "{actor}{with_cluster} moved from scanning to exploitation attempts over {}: {}.",
                        format_duration(span),
                        story.join(" -> ")
                    ),
                )
            }
            _ => {
                let ev = a.enumeration.as_ref().map(|m| m.evidence.join(", ")).unwrap_or_default();
                let sev = if internal { Severity::High } else { Severity::Medium };
                (
                    sev,
                    0.8,
                    format!(
                        "{actor}{with_cluster} is enumerating services on port(s) {}: {} probe(s) and {} banner grab(s) ({ev}).",
                        ports.join(", "),
                        a.probes,
                        a.silent_ports.len()
                    ),
                )
            }
        };
        let (direction, source, sample_hosts) = match who {
            Who::Source(ip) => (Direction::Inbound, AlertSource { ip: Some(*ip), process: None, related }, Vec::new()),
            Who::Process(p, dst) => (
                Direction::Outbound,
                AlertSource { ip: None, process: Some(process_block(p)), related },
                vec![dst.to_string()],
            ),
        };
        let technique = match who {
            Who::Source(ip) => Technique::for_source(Direction::Inbound, Some(ip)),
            Who::Process(..) => Technique::for_source(Direction::Outbound, None),
        };
        Alert {
            time: self.time(now),
            kind,
            severity,
            confidence,
            direction,
            source,
            targets: Targets {
                host_count: 1,
                port_count: a.ports.len() as u64,
                sample_ports: a.ports.iter().copied().take(SAMPLE_OUT).collect(),
                sample_hosts,
            },
            window: format_duration(span),
            counts: Counts {
                probes: a.probes + a.silent_ports.len() as u64 + a.exploitation.as_ref().map_or(0, |m| m.count),
                failures: 0,
                successes: 0,
                fail_ratio: None,
                detail: Default::default(),
            },
            fingerprint: None,
            technique,
            host: self.host.clone(),
            allowlisted: false,
            blocked: false,
            reason,
            update: false,
            alert_id: String::new(),
            shape: crate::alert::Shape::new("tcp", "payload"),
            incident: Default::default(),
            depth: Some(DepthBlock {
                phases,
                ja4: a.ja4.clone(),
                sni: a.sni.clone(),
                alpn: a.alpn.clone(),
                cluster,
            }),
            annotations: Default::default(),
        }
    }

    /// The actor store (for inspection and tests).
    pub fn actors(&self) -> &ActorStore {
        &self.timeline.store
    }

    /// Payload and timeline counters.
    pub fn timeline_stats(&self) -> super::timeline_state::TimelineStats {
        self.timeline.stats
    }

    /// Restore a persisted store (actors older than `depth.retention` are dropped).
    pub fn load_actors(&mut self, now: Duration, mut store: ActorStore) {
        store.clamp(self.cfg.depth.max_actors as usize);
        self.timeline.stats.actors_expired +=
            store.expire(self.wall(now), self.cfg.depth.retention.as_secs_f64()) as u64;
        self.timeline.store = store;
    }

    /// The store to persist when `depth.save_interval` has passed since the last time (or
    /// `force`) and something changed; expires old actors first.
    pub fn actors_due(&mut self, now: Duration, force: bool) -> Option<ActorStore> {
        let due = force
            || self.timeline.last_save.is_none_or(|t| now.saturating_sub(t) >= self.cfg.depth.save_interval);
        if !due {
            return None;
        }
        let wall = self.wall(now);
        let expired = self.timeline.store.expire(wall, self.cfg.depth.retention.as_secs_f64());
        self.timeline.stats.actors_expired += expired as u64;
        self.timeline.last_save = Some(now);
        if !self.timeline.dirty && expired == 0 {
            return None;
        }
        self.timeline.dirty = false;
        Some(self.timeline.store.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::config::Config;
    use crate::depth::tls::tests::spec_example;
    use crate::detect::{FingerprintInfo, InboundEventKind, InboundObservation, OutboundAction, OutboundObservation};

    const ATTACKER: &str = "203.0.113.9";
    const LOCAL: &str = "192.0.2.10";
    const DAY: u64 = 86_400;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn engine(extra: &str, now: Duration, wall_secs: u64) -> Engine {
        let cfg = Config::from_toml_str(extra).expect("config");
        let mut e = Engine::new(&cfg, "host-1".into());
        e.set_wall_clock(now, UNIX_EPOCH + Duration::from_secs(wall_secs));
        e
    }

    fn payload(src: &str, dport: u16, data: &[u8]) -> PayloadObservation {
        PayloadObservation {
            src: ip(src),
            dst: ip(LOCAL),
            sport: 40000,
            dport,
            sample: data.to_vec(),
            payload_len: data.len() as u32,
            client_sent_data: !data.is_empty(),
        }
    }

    fn honeyport(e: &mut Engine, now: Duration, src: &str) -> Vec<Alert> {
        e.observe_inbound_event(
            now,
            &InboundObservation {
                ip: ip(src),
                dst: ip(LOCAL),
                kind: InboundEventKind::Honeyport { dport: 31337, proto: 6 },
            },
        )
    }

    fn kinds(a: &[Alert]) -> Vec<AlertKind> {
        a.iter().map(|a| a.kind).collect()
    }

    /// nmap -sV against HTTP and TLS services: NULL probes (silent), GetRequest, HTTPOptions,
    /// the TLS session probe.
    fn nmap_sv(e: &mut Engine, start: f64, src: &str) -> Vec<Alert> {
        let probe = |n: &str| crate::depth::probes::NMAP_TCP_PROBES.iter().find(|p| p.0 == n).expect("probe").1;
        let mut out = Vec::new();
        let steps: [(u16, &[u8]); 5] = [
            (80, b""),
            (443, b""),
            (80, probe("GetRequest")),
            (80, probe("HTTPOptions")),
            (443, probe("TLSSessionReq")),
        ];
        for (i, (port, data)) in steps.into_iter().enumerate() {
            out.extend(e.observe_payload(Duration::from_secs_f64(start + i as f64), &payload(src, port, data)));
        }
        out
    }

    #[test]
    fn nmap_version_scan_is_enumeration_with_ja4() {
        let mut e = engine("[depth]\nstore_path = \"\"\n", Duration::ZERO, 1_700_000_000);
        let out = nmap_sv(&mut e, 10.0, ATTACKER);
        assert_eq!(kinds(&out), [AlertKind::Enumeration], "{out:#?}");
        let a = &out[0];
        assert_eq!(a.severity, Severity::Medium);
        let d = a.depth.as_ref().expect("depth block");
        assert_eq!(d.phases.len(), 1);
        assert_eq!(d.phases[0].phase, "enumeration");
        assert!(d.phases[0].evidence.contains(&"nmap:GetRequest".to_string()), "{d:?}");
        assert!(d.phases[0].evidence.contains(&"banner_grab".to_string()), "{d:?}");
        assert_eq!(a.targets.sample_ports, [80, 443]);
        // nmap's TLSSessionReq (after the alert) is a ClientHello: its JA4 is kept with the actor
        // (TLS 1.2, no SNI, 6 ciphers).
        let actor = e.actors().actors.get(ATTACKER).expect("actor");
        assert_eq!(actor.ja4.len(), 1, "{actor:?}");
        assert!(actor.ja4[0].starts_with("t12i06"), "{actor:?}");
    }

    #[test]
    fn benign_clients_raise_nothing_and_store_nothing() {
        let mut e = engine("[depth]\nstore_path = \"\"\n", Duration::ZERO, 1_700_000_000);
        let mut out = Vec::new();
        for i in 0..20u64 {
            let req = format!("GET /page{i}.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n");
            out.extend(e.observe_payload(Duration::from_secs(i), &payload("198.51.100.20", 80, req.as_bytes())));
            out.extend(e.observe_payload(Duration::from_secs(i), &payload("198.51.100.20", 443, &spec_example())));
        }
        out.extend(e.tick(Duration::from_secs(30)));
        assert!(out.is_empty(), "{out:#?}");
        assert!(e.actors().actors.is_empty());
        assert_eq!(e.timeline_stats().tls_hellos, 20);
        // An exploit-shaped request from a source with no earlier phase joins no timeline.
        let out = e.observe_payload(Duration::from_secs(40), &payload("198.51.100.21", 80, b"GET /../../etc/passwd HTTP/1.1\r\n\r\n"));
        assert!(out.is_empty());
        assert_eq!(e.timeline_stats().exploit_unattributed, 1);
    }

    #[test]
    fn scan_then_enumeration_then_exploit_is_one_transition() {
        let mut e = engine("[depth]\nstore_path = \"\"\n", Duration::ZERO, 1_700_000_000);
        let out = honeyport(&mut e, Duration::from_secs(1), ATTACKER);
        assert_eq!(kinds(&out), [AlertKind::HoneyportHit]);
        nmap_sv(&mut e, 10.0, ATTACKER);
        let out = e.observe_payload(
            Duration::from_secs(60),
            &payload(ATTACKER, 80, b"GET /cgi-bin/../../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"),
        );
        assert_eq!(kinds(&out), [AlertKind::Transition], "{out:#?}");
        let a = &out[0];
        assert_eq!(a.severity, Severity::Critical);
        let d = a.depth.as_ref().expect("depth");
        let names: Vec<&str> = d.phases.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(names, ["discovery", "enumeration", "exploitation"]);
        assert_eq!(d.phases[0].evidence, ["honeyport_hit"]);
        assert_eq!(d.phases[0].first, "2023-11-14T22:13:21.000Z");
        assert_eq!(d.phases[2].evidence, ["path_traversal:../"]);
        assert!(d.phases[0].first < d.phases[1].first && d.phases[1].first < d.phases[2].first);
    }

    #[test]
    fn repeated_auth_attempts_after_enumeration_are_a_transition() {
        let mut e = engine("[depth]\nstore_path = \"\"\nauth_attempts = 3\n", Duration::ZERO, 1_700_000_000);
        nmap_sv(&mut e, 0.0, ATTACKER);
        let req = b"GET /admin HTTP/1.1\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\n\r\n";
        let mut out = Vec::new();
        for i in 0..3 {
            out.extend(e.observe_payload(Duration::from_secs(100 + i), &payload(ATTACKER, 80, req)));
        }
        assert_eq!(kinds(&out), [AlertKind::Transition], "{out:#?}");
        assert_eq!(out[0].severity, Severity::High, "two phases only");
        let d = out[0].depth.as_ref().expect("depth");
        assert_eq!(d.phases[1].evidence, ["repeated_auth:3"]);
    }

    /// The scan is remembered across an agent restart: the store is saved, a new engine (new
    /// monotonic epoch, 20 days later on the wall clock) loads it, and an exploit-shaped request
    /// joins the old scan in one `transition`.
    #[test]
    fn transition_weeks_later_after_a_restart() {
        let t0 = 1_700_000_000;
        let mut e = engine("[depth]\nstore_path = \"\"\n", Duration::from_secs(5), t0);
        honeyport(&mut e, Duration::from_secs(6), ATTACKER);
        nmap_sv(&mut e, 7.0, ATTACKER);
        let saved = e.actors_due(Duration::from_secs(20), false).expect("dirty store is due");
        assert!(e.actors_due(Duration::from_secs(21), false).is_none(), "not due again so soon");
        let json = serde_json::to_string(&saved).expect("json");
        drop(e);

        let later = t0 + 20 * DAY;
        let mut e = engine("[depth]\nstore_path = \"\"\n", Duration::from_secs(3), later);
        e.load_actors(Duration::from_secs(3), serde_json::from_str(&json).expect("parse"));
        let out = e.observe_payload(Duration::from_secs(4), &payload(ATTACKER, 80, b"GET /.env HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(kinds(&out), [AlertKind::Transition], "{out:#?}");
        let d = out[0].depth.as_ref().expect("depth");
        assert_eq!(d.phases[0].phase, "discovery");
        assert_eq!(d.phases[0].first, rfc3339_from_unix((t0 + 1) as f64));
        assert_eq!(d.phases[2].first, rfc3339_from_unix((later + 1) as f64));
        assert!(out[0].reason.contains("over 480h"), "{}", out[0].reason);

        // Past the retention (90 days by default) the actor is forgotten.
        let mut e = engine("[depth]\nstore_path = \"\"\n", Duration::ZERO, t0 + 100 * DAY);
        e.load_actors(Duration::ZERO, serde_json::from_str(&json).expect("parse"));
        assert!(e.actors().actors.is_empty());
        let out = e.observe_payload(Duration::from_secs(1), &payload(ATTACKER, 80, b"GET /.env HTTP/1.1\r\n\r\n"));
        assert!(out.is_empty());
    }

    #[test]
    fn actor_store_is_bounded() {
        let mut e = engine("[depth]\nstore_path = \"\"\nmax_actors = 100\n", Duration::ZERO, 1_700_000_000);
        for i in 0..1000u32 {
            let src = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            e.observe_payload(Duration::from_secs(u64::from(i)), &payload(&src, 80, b"GET / HTTP/1.0\r\n\r\n"));
        }
        assert!(e.actors().actors.len() <= 100);
        assert!(e.timeline_stats().actors_evicted >= 900);
        assert!(e.actors().actors.contains_key("10.0.3.231"), "the most recent stays");
    }

    fn new_fp(e: &mut Engine, now: Duration, src: &str, hash: &str) {
        let fp = FingerprintInfo { text: "linux".into(), hash: hash.into(), tool_hint: "os-stack".into(), initial_ttl: 64 };
        e.observe_inbound_event(now, &InboundObservation { ip: ip(src), dst: ip(LOCAL), kind: InboundEventKind::NewFingerprint(fp) });
    }

    /// Two sources sharing a JA4 and a TCP fingerprint are one actor: the second one's exploit
    /// request joins the first one's enumeration (a `transition` naming the cluster and the
    /// other member); a source with the same JA4 but another TCP fingerprint does not.
    #[test]
    fn ja4_and_tcp_fingerprint_cluster_is_one_actor() {
        let mut e = engine("[depth]\nstore_path = \"\"\n", Duration::ZERO, 1_700_000_000);
        let (a, b, c) = ("203.0.113.21", "203.0.113.22", "203.0.113.23");
        for (src, fp) in [(a, "fp-linux"), (b, "fp-linux"), (c, "fp-other")] {
            new_fp(&mut e, Duration::from_secs(1), src, fp);
        }
        let zgrab = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: Mozilla/5.0 zgrab/0.x\r\n\r\n";
        let out: Vec<Alert> = (0..2).flat_map(|i| e.observe_payload(Duration::from_secs(2 + i), &payload(a, 80, zgrab))).collect();
        assert_eq!(kinds(&out), [AlertKind::Enumeration]);
        for src in [a, b, c] {
            assert!(e.observe_payload(Duration::from_secs(5), &payload(src, 443, &spec_example())).is_empty());
        }
        let ck = cluster_key(&crate::depth::parse_client_hello(&spec_example()).expect("hello").ja4(), "fp-linux");
        let cl = e.actors().actors.get(&ck).expect("cluster entry");
        assert_eq!(cl.members, [a, b]);
        assert_eq!(e.actors().actors.get(b).and_then(|x| x.cluster.clone()), Some(ck.clone()));
        assert!(e.actors().actors.get(c).is_none(), "other TCP fingerprint: no cluster, not stored");

        let traversal = b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n";
        let out = e.observe_payload(Duration::from_secs(9), &payload(b, 80, traversal));
        assert_eq!(kinds(&out), [AlertKind::Transition], "{out:#?}");
        let t = &out[0];
        assert_eq!(t.source.ip, Some(ip(b)));
        assert_eq!(t.source.related, [ip(a)]);
        let d = t.depth.as_ref().expect("depth");
        assert_eq!(d.cluster.as_deref(), Some(ck.as_str()));
        let names: Vec<&str> = d.phases.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(names, ["enumeration", "exploitation"]);
        assert!(d.phases[0].evidence.iter().any(|x| x.contains("zgrab")), "{d:?}");
        assert!(t.reason.contains("cluster"), "{}", t.reason);
        // The same request from the other-fingerprint source joins nothing.
        assert!(e.observe_payload(Duration::from_secs(10), &payload(c, 80, traversal)).is_empty());

        // Clustering off: the second source stays alone.
        let mut e = engine("[depth]\nstore_path = \"\"\ncluster_by_ja4 = false\n", Duration::ZERO, 1_700_000_000);
        for src in [a, b] {
            new_fp(&mut e, Duration::from_secs(1), src, "fp-linux");
        }
        for i in 0..2 {
            e.observe_payload(Duration::from_secs(2 + i), &payload(a, 80, zgrab));
        }
        for src in [a, b] {
            e.observe_payload(Duration::from_secs(5), &payload(src, 443, &spec_example()));
        }
        assert!(e.observe_payload(Duration::from_secs(9), &payload(b, 80, traversal)).is_empty());
    }

    fn nmap_proc() -> ProcessInfo {
        ProcessInfo {
            pid: 4242,
            tgid: 4242,
            comm: "nmap".into(),
            exe: Some("/usr/bin/nmap".into()),
            uid: 0,
            user: Some("root".into()),
            ppid: Some(100),
            ..ProcessInfo::default()
        }
    }

    /// A local process that sweeps (connect scan), then enumerates (version probes, NSE user
    /// agent), then sends an exploit-shaped request is one process-attributed timeline.
    #[test]
    fn local_process_sweep_enumeration_exploit_is_one_timeline() {
        let mut e = engine("[depth]\nstore_path = \"\"\n", Duration::ZERO, 1_700_000_000);
        let p = nmap_proc();
        let dst = ip("10.9.0.1");
        let mut out = Vec::new();
        let mut at = 1.0;
        for port in 1..=300u16 {
            for action in [
                OutboundAction::Connect { dst, dport: port },
                OutboundAction::Outcome { dst, dport: port, success: port == 80 || port == 443 },
            ] {
                out.extend(e.observe_outbound(Duration::from_secs_f64(at), &OutboundObservation { process: p.clone(), action }));
                at += 0.001;
            }
        }
        assert!(kinds(&out).contains(&AlertKind::OutboundScan), "{out:#?}");
        let key = entity_key(&p);
        assert!(e.actors().actors.get(&key).and_then(|a| a.discovery.clone()).is_some(), "discovery on the process");
        let probe = |n: &str| crate::depth::probes::NMAP_TCP_PROBES.iter().find(|x| x.0 == n).expect("probe").1.to_vec();
        let send = |e: &mut Engine, t: f64, data: Vec<u8>| {
            let len = data.len() as u32;
            let action = OutboundAction::Payload { dst, dport: 80, sample: data, len };
            e.observe_outbound(Duration::from_secs_f64(t), &OutboundObservation { process: nmap_proc(), action })
        };
        let mut out = send(&mut e, 10.0, probe("GetRequest"));
        out.extend(send(&mut e, 11.0, probe("HTTPOptions")));
        assert_eq!(kinds(&out), [AlertKind::Enumeration], "{out:#?}");
        let en = &out[0];
        assert_eq!(en.direction, Direction::Outbound);
        assert_eq!(en.source.process.as_ref().and_then(|p| p.exe.clone()).as_deref(), Some("/usr/bin/nmap"));
        assert_eq!(en.severity, Severity::High);
        assert!(en.reason.contains("local process /usr/bin/nmap"), "{}", en.reason);
        let nse = b"GET /../../../../etc/passwd HTTP/1.1\r\nHost: 10.9.0.1\r\nUser-Agent: Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)\r\n\r\n";
        let out = send(&mut e, 20.0, nse.to_vec());
        assert_eq!(kinds(&out), [AlertKind::Transition], "{out:#?}");
        let tr = &out[0];
        assert_eq!(tr.severity, Severity::Critical);
        assert_eq!(tr.source.process.as_ref().map(|p| p.tgid), Some(4242));
        assert_eq!(tr.targets.sample_hosts, ["10.9.0.1"]);
        let names: Vec<&str> = tr.depth.as_ref().expect("depth").phases.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(names, ["discovery", "enumeration", "exploitation"]);
        assert_eq!(e.timeline_stats().outbound_payloads, 3);
        // Another program's exploit-shaped request joins no timeline.
        let curl = ProcessInfo { exe: Some("/usr/bin/curl".into()), comm: "curl".into(), ..nmap_proc() };
        let action = OutboundAction::Payload { dst, dport: 80, sample: nse.to_vec(), len: nse.len() as u32 };
        assert!(e.observe_outbound(Duration::from_secs(30), &OutboundObservation { process: curl, action }).is_empty());
    }
}
