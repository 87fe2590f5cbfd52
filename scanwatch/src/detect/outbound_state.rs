//! Per local process state: fan-out over windows, outcomes, raw-socket probes, lineage.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use scanwatch_common::cnt;
use scanwatch_common::tcpflag::{ACK, FIN, PSH, RST, SYN, URG};

use super::features::{bounded_insert, note_seen, Hll, PortHistogram, Timing};
use super::trw::{Trw, TrwParams};
use super::types::OutboundAction;
use super::window::{m, Metrics, MultiWindow};
use crate::config::RoleProfile;
use crate::vocab::{canonical_ip, ProcessInfo};

const SAMPLE_CAP: usize = 64;

/// Entity key of a process: (uid, program, anchor). The anchor is the long-lived ancestor the
/// enrichment chose (`ProcessInfo::anchor`: the spawning loop shell, `xargs`, `parallel`, the
/// interactive shell of a scanner), identified by pid and start time so a recycled pid is
/// another entity; without one, the direct parent.
pub(super) fn entity_key(p: &ProcessInfo) -> String {
    let (pid, start) = match &p.anchor {
        Some(a) => (a.pid, a.start_time.unwrap_or(0)),
        None => (p.ppid.unwrap_or(0), 0),
    };
    format!("proc:{}:{}:{}@{}", p.uid, program(p), pid, start)
}

/// The program part of an entity key: the kernel's comm when the executable's file name starts
/// with it (the usual case: `/usr/bin/bash` is `bash`, `/usr/bin/nc.openbsd` run as `nc` is
/// `nc`), so a prober caught alive (exe read) and one already reaped (exe unknown, exec'd so not
/// inherited) are one program; the full executable path when they disagree (a renamed binary).
pub(super) fn program(p: &ProcessInfo) -> &str {
    match p.exe.as_deref() {
        Some(exe) if !p.comm.is_empty() && exe.rsplit('/').next().is_some_and(|f| f.starts_with(p.comm.as_str())) => &p.comm,
        Some(exe) => exe,
        None => &p.comm,
    }
}

/// Name of a stealth probe shape, if the flags are one.
pub(super) fn stealth_name(flags: u8) -> Option<&'static str> {
    let f = flags & 0x3f;
    match f {
        0 => Some("null"),
        x if x == FIN => Some("fin"),
        x if x == FIN | PSH | URG => Some("xmas"),
        x if x == FIN | ACK => Some("maimon"),
        x if x == ACK => Some("ack"),
        x if x & (SYN | FIN) == SYN | FIN => Some("synfin"),
        x if x & RST != 0 => None,
        x if x & (SYN | ACK) == 0 => Some("custom_flags"),
        _ => None,
    }
}

#[derive(Debug, Clone)]
pub(super) struct OutboundEntity {
    pub process: ProcessInfo,
    pub last_seen: Duration,
    pub dirty: bool,
    pub windows: MultiWindow,
    pub trw: Trw,
    pub timing: Timing,
    ports: Hll,
    hosts: Hll,
    pairs: Hll,
    ports_est: f64,
    hosts_est: f64,
    pairs_est: f64,
    pub sample_ports: Vec<u16>,
    pub sample_hosts: Vec<IpAddr>,
    /// When each port / host was last probed (bounded): an alert's samples are its window's.
    pub port_seen: BTreeMap<u16, Duration>,
    pub host_seen: BTreeMap<IpAddr, Duration>,
    pub histogram: PortHistogram,
    /// Lifetime counters by name (connect, raw_probe, udp, raw_socket, stealth shapes, ...).
    pub lifetime: BTreeMap<&'static str, u64>,
    pub last_fast_trigger: Option<Duration>,
}

impl OutboundEntity {
    pub(super) fn new(process: ProcessInfo, windows: &[Duration]) -> OutboundEntity {
        OutboundEntity {
            process,
            last_seen: Duration::ZERO,
            dirty: false,
            windows: MultiWindow::new(windows),
            trw: Trw::default(),
            timing: Timing::default(),
            ports: Hll::default(),
            hosts: Hll::default(),
            pairs: Hll::default(),
            ports_est: 0.0,
            hosts_est: 0.0,
            pairs_est: 0.0,
            sample_ports: Vec::new(),
            sample_hosts: Vec::new(),
            port_seen: BTreeMap::new(),
            host_seen: BTreeMap::new(),
            histogram: PortHistogram::default(),
            lifetime: BTreeMap::new(),
            last_fast_trigger: None,
        }
    }

    pub(super) fn bump(&mut self, name: &'static str) {
        *self.lifetime.entry(name).or_default() += 1;
    }

    /// Record a destination; returns (new ports, new hosts, new pairs) increments.
    pub(super) fn touch(&mut self, now: Duration, dst: IpAddr, dport: u16, count_host: bool) -> (f64, f64, f64) {
        let dst = canonical_ip(dst);
        let folded = fold_ip(&dst);
        self.ports.insert(u32::from(dport));
        if count_host {
            self.hosts.insert(folded);
            self.pairs.insert(folded ^ u32::from(dport).wrapping_mul(0x9e37_79b9));
        }
        self.histogram.add(dport);
        bounded_insert(&mut self.sample_ports, dport, SAMPLE_CAP);
        bounded_insert(&mut self.sample_hosts, dst, SAMPLE_CAP);
        note_seen(&mut self.port_seen, dport, now);
        if count_host {
            note_seen(&mut self.host_seen, dst, now);
        }
        let (p, h, q) = (self.ports.estimate(), self.hosts.estimate(), self.pairs.estimate());
        let out = (
            (p - self.ports_est).max(0.0),
            (h - self.hosts_est).max(0.0),
            (q - self.pairs_est).max(0.0),
        );
        self.ports_est = self.ports_est.max(p);
        self.hosts_est = self.hosts_est.max(h);
        self.pairs_est = self.pairs_est.max(q);
        out
    }

    /// Apply one action; returns the metric delta.
    pub(super) fn apply(&mut self, now: Duration, a: &OutboundAction, role: &RoleProfile, trw: &TrwParams) -> Metrics {
        let mut d = Metrics::default();
        let expected = |port: u16| {
            role.outbound_fanout_expected
                && (role.expected_service_ports.is_empty() || role.expected_service_ports.contains(&port))
        };
        let probe = |e: &mut OutboundEntity, dst: IpAddr, dport: u16, d: &mut Metrics| {
            let (p, h, q) = e.touch(now, dst, dport, !expected(dport));
            d.set(m::PROBES, 1.0);
            d.set(m::NEW_PORTS, p);
            d.set(m::NEW_HOSTS, h);
            d.set(m::NEW_PAIRS, q);
            if dport < 1024 {
                d.set(m::NEW_PRIV_PORTS, p);
            }
            e.timing.observe(now);
        };
        match a {
            OutboundAction::Connect { dst, dport } => {
                self.bump("connect");
                probe(self, *dst, *dport, &mut d);
                d.set(m::CONNECT, 1.0);
            }
            OutboundAction::UdpSend { dst, dport } => {
                self.bump("udp");
                probe(self, *dst, *dport, &mut d);
                d.set(m::cnt(cnt::UDP), 1.0);
            }
            OutboundAction::RawProbe { dst, dport, proto, tcp_flags } => {
                self.bump("raw_probe");
                probe(self, *dst, *dport, &mut d);
                d.set(m::RAW, 1.0);
                match *proto {
                    6 => match stealth_name(*tcp_flags) {
                        Some(name) => {
                            self.bump(name);
                            if matches!(name, "fin" | "ack") {
                                d.set(m::WEAK_STEALTH, 1.0);
                            } else {
                                d.set(m::STEALTH, 1.0);
                            }
                            if let Some(i) = cnt::NAMES.iter().position(|n| *n == name) {
                                d.set(m::cnt(i), 1.0);
                            }
                        }
                        None if *tcp_flags & SYN != 0 => d.set(m::cnt(cnt::SYN), 1.0),
                        None => {}
                    },
                    17 => d.set(m::cnt(cnt::UDP), 1.0),
                    1 | 58 => d.set(m::cnt(cnt::ICMP_ECHO), 1.0),
                    _ => {}
                }
            }
            OutboundAction::Outcome { success, .. } => {
                if *success {
                    self.bump("established");
                    d.set(m::SUCCESSES, 1.0);
                    self.trw.observe(trw, 0, 1);
                } else {
                    self.bump("failed");
                    d.set(m::FAILURES, 1.0);
                    self.trw.observe(trw, 1, 0);
                }
            }
            OutboundAction::RawSocket { .. } => {
                self.bump("raw_socket");
                d.set(m::RAW_SOCKET, 1.0);
            }
            // Payloads go to the timeline (`Engine::observe_outbound_payload`), not the fan-out.
            OutboundAction::Payload { .. } => {}
            // Counted probes without destinations: they add to the probe counts, never to the
            // distinct hosts / ports (the events before the budget ran out carried those).
            OutboundAction::Shed { probes, raw } => {
                *self.lifetime.entry("shed").or_default() += u64::from(*probes);
                d.set(m::PROBES, f64::from(*probes));
                if *raw > 0 {
                    d.set(m::RAW, f64::from(*raw));
                }
            }
        }
        self.windows.add(now, &d);
        self.last_seen = now;
        self.dirty = true;
        d
    }
}

pub(super) fn fold_ip(ip: &IpAddr) -> u32 {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    scanwatch_common::addr_fold(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prober(pid: u32, exe: Option<&str>, comm: &str, ppid: u32, anchor: Option<(u32, u64)>) -> ProcessInfo {
        ProcessInfo {
            pid,
            tgid: pid,
            comm: comm.into(),
            exe: exe.map(str::to_string),
            uid: 0,
            ppid: Some(ppid),
            anchor: anchor.map(|(pid, start)| crate::vocab::ProcessAnchor {
                pid,
                start_time: Some(start),
                depth: 2,
                rule: "spawner".into(),
                forks: 10,
                ..Default::default()
            }),
            ..ProcessInfo::default()
        }
    }

    /// `timeout 1 bash -c 'echo >/dev/tcp/h/p'` in a loop: every prober has its own parent (a
    /// `timeout`), one anchor (the loop shell): one key, whether the prober was caught alive
    /// (exe read) or already reaped (comm only).
    #[test]
    fn probers_under_per_probe_wrappers_share_the_anchor_key() {
        let a = prober(101, Some("/usr/bin/bash"), "bash", 100, Some((50, 777)));
        let b = prober(103, None, "bash", 102, Some((50, 777)));
        assert_eq!(entity_key(&a), entity_key(&b));
        // Another program under the same anchor is another entity.
        let c = prober(105, Some("/usr/bin/nc.openbsd"), "nc", 104, Some((50, 777)));
        assert_ne!(entity_key(&a), entity_key(&c));
        assert_eq!(program(&c), "nc");
        // A recycled anchor pid (another start time) is another entity.
        let d = prober(107, Some("/usr/bin/bash"), "bash", 106, Some((50, 9000)));
        assert_ne!(entity_key(&a), entity_key(&d));
        // A renamed binary keeps its path.
        let e = prober(109, Some("/tmp/x/scan"), "bash", 108, Some((50, 777)));
        assert_ne!(entity_key(&a), entity_key(&e));
        assert_eq!(program(&e), "/tmp/x/scan");
    }

    /// Without an anchor (no lineage known) the direct parent groups, as before.
    #[test]
    fn without_anchor_the_parent_groups() {
        let a = prober(101, Some("/usr/bin/bash"), "bash", 100, None);
        let b = prober(102, Some("/usr/bin/bash"), "bash", 100, None);
        let c = prober(103, Some("/usr/bin/bash"), "bash", 99, None);
        assert_eq!(entity_key(&a), entity_key(&b));
        assert_ne!(entity_key(&a), entity_key(&c));
    }

    #[test]
    fn stealth_shapes() {
        assert_eq!(stealth_name(0), Some("null"));
        assert_eq!(stealth_name(FIN), Some("fin"));
        assert_eq!(stealth_name(FIN | PSH | URG), Some("xmas"));
        assert_eq!(stealth_name(FIN | ACK), Some("maimon"));
        assert_eq!(stealth_name(ACK), Some("ack"));
        assert_eq!(stealth_name(SYN | FIN), Some("synfin"));
        assert_eq!(stealth_name(SYN), None);
        assert_eq!(stealth_name(SYN | ACK), None);
        assert_eq!(stealth_name(URG | PSH), Some("custom_flags"));
        assert_eq!(stealth_name(PSH), Some("custom_flags"));
    }
}
