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

/// Entity key of a process.
pub(super) fn entity_key(p: &ProcessInfo) -> String {
    let prog = p.exe.as_deref().unwrap_or(&p.comm);
    format!("proc:{}:{}:{}", p.uid, prog, p.ppid.unwrap_or(0))
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
