//! Alert records: one JSON object per line (`serde_json::to_string(&alert)`).
//!
//! Besides the scan kinds, the engine emits `notice` alerts (severity `info`) that summarise
//! alerts dropped by the global rate limit: `"N further alerts suppressed by the rate limit"`,
//! with the per-kind breakdown in `counts` and `targets` empty.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub use crate::vocab::{Direction, Severity};
pub use crate::vocab::is_internal;
use crate::vocab::rfc3339;
#[cfg(test)]
use crate::vocab::rfc3339_from_unix;

/// What was detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// One or a few ports across many hosts.
    HorizontalScan,
    /// Many ports of one or a few hosts.
    VerticalScan,
    /// Many ports across many hosts.
    BlockScan,
    /// NULL / FIN / Xmas / Maimon / ACK / SYN+FIN probes.
    StealthScan,
    /// Fan-out accumulated over long windows while staying under the short-window thresholds.
    SlowScan,
    /// A honeyport was touched.
    HoneyportHit,
    /// Several sources sharing one SYN fingerprint and target ports (decoys, nmap -D).
    DecoyCluster,
    /// Many sources, each under threshold, together covering many of this host's ports/addresses.
    DistributedScan,
    /// Fragmentation, source-port tricks, bad checksums, unsolicited SYN-ACK/RST.
    Evasion,
    /// A local process scanning others.
    OutboundScan,
    /// Engine notice: summary of alerts suppressed by the rate limit.
    Notice,
    /// A source probing this host's open services: nmap version probes, NSE scripts, scanner
    /// user agents, banner grabs (see `depth`).
    Enumeration,
    /// A source that scanned or enumerated earlier (possibly weeks ago) now sends
    /// exploit-shaped requests; `depth.phases` lists the timeline.
    Transition,
    /// Packets of many distinct IP protocol numbers from one source (nmap -sO).
    ProtocolScan,
}

impl AlertKind {
    pub const ALL: [AlertKind; 14] = [
        AlertKind::HorizontalScan,
        AlertKind::VerticalScan,
        AlertKind::BlockScan,
        AlertKind::StealthScan,
        AlertKind::SlowScan,
        AlertKind::HoneyportHit,
        AlertKind::DecoyCluster,
        AlertKind::DistributedScan,
        AlertKind::Evasion,
        AlertKind::OutboundScan,
        AlertKind::Notice,
        AlertKind::Enumeration,
        AlertKind::Transition,
        AlertKind::ProtocolScan,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::HorizontalScan => "horizontal_scan",
            AlertKind::VerticalScan => "vertical_scan",
            AlertKind::BlockScan => "block_scan",
            AlertKind::StealthScan => "stealth_scan",
            AlertKind::SlowScan => "slow_scan",
            AlertKind::HoneyportHit => "honeyport_hit",
            AlertKind::DecoyCluster => "decoy_cluster",
            AlertKind::DistributedScan => "distributed_scan",
            AlertKind::Evasion => "evasion",
            AlertKind::OutboundScan => "outbound_scan",
            AlertKind::Notice => "notice",
            AlertKind::Enumeration => "enumeration",
            AlertKind::Transition => "transition",
            AlertKind::ProtocolScan => "protocol_scan",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The local process behind an outbound alert (the engine's enriched process, serialized as is).
pub type ProcessBlock = crate::vocab::ProcessInfo;

/// Who did it: a remote address (inbound) or a local process (outbound).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertSource {
    pub ip: Option<IpAddr>,
    pub process: Option<ProcessBlock>,
    /// Further sources for multi-source kinds (decoy_cluster, distributed_scan); omitted if empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Targets {
    pub host_count: u64,
    pub port_count: u64,
    pub sample_ports: Vec<u16>,
    pub sample_hosts: Vec<String>,
}

/// What a count in `counts` is evidence of. Rendered as its name (`"xmas"`, `"sources"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Evidence {
    /// A per-source kernel counter (index into `scanwatch_common::cnt`), named as there.
    Counter(u8),
    /// Sources taking part in a multi-source finding (decoy cluster, distributed scan).
    Sources,
    /// Outbound: crafted packets sent on raw/packet sockets.
    RawProbe,
    /// Outbound: raw/packet sockets opened.
    RawSocket,
    /// A rate-limit notice: findings of this kind suppressed.
    Suppressed(AlertKind),
    /// Distinct IP protocol numbers a source sent (protocol scan).
    Protocols,
}

impl Evidence {
    /// The kernel counter `idx` (`scanwatch_common::cnt::*`).
    pub fn counter(idx: usize) -> Evidence {
        Evidence::Counter(idx as u8)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Evidence::Counter(i) => scanwatch_common::cnt::NAMES.get(usize::from(*i)).copied().unwrap_or("?"),
            Evidence::Sources => "sources",
            Evidence::RawProbe => "raw_probe",
            Evidence::RawSocket => "raw_socket",
            Evidence::Suppressed(k) => k.as_str(),
            Evidence::Protocols => "protocols",
        }
    }

    /// The evidence named `s` (the inverse of [`Evidence::name`]; kernel counters first).
    pub fn from_name(s: &str) -> Option<Evidence> {
        if s.is_empty() {
            return None;
        }
        if let Some(i) = scanwatch_common::cnt::NAMES.iter().position(|n| *n == s) {
            return Some(Evidence::counter(i));
        }
        match s {
            "sources" => Some(Evidence::Sources),
            "raw_probe" => Some(Evidence::RawProbe),
            "raw_socket" => Some(Evidence::RawSocket),
            "protocols" => Some(Evidence::Protocols),
            _ => AlertKind::ALL.into_iter().find(|k| k.as_str() == s).map(Evidence::Suppressed),
        }
    }
}

impl Serialize for Evidence {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Evidence {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Evidence::from_name(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown evidence {s:?}")))
    }
}

/// Probe counts in the alert's window. Evidence counters (non-zero only) are flattened into the
/// same object by name (`"null": 3, "badsum": 1`, ...).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Counts {
    pub probes: u64,
    /// Probes known to have failed (closed port, refused, timed out).
    pub failures: u64,
    /// Probes known to have succeeded (open port, established connection).
    #[serde(default)]
    pub successes: u64,
    /// failures / (failures + successes), rounded to 3 decimals; null when no outcome is known.
    /// Probes without a known outcome (no answer yet, portless probes) count in neither.
    pub fail_ratio: Option<f64>,
    #[serde(flatten)]
    pub detail: BTreeMap<Evidence, u64>,
}

impl Counts {
    /// Counts with `fail_ratio` derived from `failures` and `successes` (the one formula every
    /// alert uses, so the ratio always agrees with the two numbers beside it).
    pub fn new(probes: u64, failures: u64, successes: u64, detail: BTreeMap<Evidence, u64>) -> Counts {
        let known = failures + successes;
        let fail_ratio = (known > 0).then(|| (failures as f64 / known as f64 * 1000.0).round() / 1000.0);
        Counts { probes, failures, successes, fail_ratio, detail }
    }

    /// `fail_ratio` as a whole percentage (as the reason text states it).
    pub fn fail_percent(&self) -> Option<u64> {
        self.fail_ratio.map(|r| (r * 100.0).round() as u64)
    }

    /// The evidence count named `name`, if present.
    pub fn get(&self, name: &str) -> Option<u64> {
        Evidence::from_name(name).and_then(|e| self.detail.get(&e).copied())
    }
}

/// The probes' protocol and shape: what was sent, so a UDP scan, a ping sweep and a NULL scan of
/// one source are told apart (and are different incidents).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Shape {
    /// `tcp`, `udp`, `icmp`, `arp`, `ip` (fragments whose ports are unknown), `mixed`.
    pub protocol: String,
    /// `syn`, `connect`, `null`, `fin`, `xmas`, `maimon`, `ack`, `synfin`, `custom` (TCP); `probe` (UDP);
    /// `echo` (ICMP); `who_has` (ARP); `fragment`; `unsolicited` (SYN-ACK/RST backscatter);
    /// `honeyport` is never a shape (the kind says it); `mixed` when no shape has most probes.
    pub shape: String,
}

impl Shape {
    pub fn new(protocol: &str, shape: &str) -> Shape {
        Shape { protocol: protocol.into(), shape: shape.into() }
    }

    /// Words for the reason text: `TCP SYN`, `UDP`, `ICMP echo`, `ARP who-has`, ...
    pub fn describe(&self) -> String {
        let proto = self.protocol.to_uppercase();
        match self.shape.as_str() {
            "" => proto,
            "probe" => proto,
            "echo" => "ICMP echo".into(),
            "who_has" => "ARP who-has".into(),
            "fragment" => "fragmented IP".into(),
            "mixed" if self.protocol == "mixed" => "mixed-protocol".into(),
            s => format!("{proto} {}", s.replace('_', "-").to_uppercase()),
        }
    }
}

/// Where an alert line stands in its incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateKind {
    /// The incident's first line.
    #[default]
    First,
    /// The severity rose.
    Escalation,
    /// Counts so far (at most once per `alerts.update_interval`).
    Progress,
    /// The actor went quiet for `alerts.close_after`: the closing summary; the id is not used again.
    Final,
}

impl UpdateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateKind::First => "first",
            UpdateKind::Escalation => "escalation",
            UpdateKind::Progress => "progress",
            UpdateKind::Final => "final",
        }
    }
}

/// The incident an alert line belongs to (`alert_id` is its id).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Incident {
    /// RFC 3339 time of the incident's first finding.
    pub start: String,
    /// RFC 3339 time of the actor's latest activity seen for this incident.
    pub last_seen: String,
    pub update_kind: UpdateKind,
    /// 1 for the first line of an incident, then 2, 3, ...
    pub seq: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintBlock {
    pub text: String,
    pub hash: String,
    pub tool_hint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Technique {
    pub id: String,
    pub name: String,
}

impl Technique {
    /// MITRE ATT&CK T1046 Network Service Discovery (internal or outbound sources).
    pub fn network_service_discovery() -> Technique {
        Technique { id: "T1046".into(), name: "Network Service Discovery".into() }
    }

    /// MITRE ATT&CK T1595 Active Scanning (external sources).
    pub fn active_scanning() -> Technique {
        Technique { id: "T1595".into(), name: "Active Scanning".into() }
    }

    /// T1046 for outbound activity or internal sources, T1595 for external sources.
    pub fn for_source(direction: Direction, ip: Option<&IpAddr>) -> Technique {
        match (direction, ip) {
            (Direction::Inbound, Some(ip)) if !is_internal(ip) => Technique::active_scanning(),
            _ => Technique::network_service_discovery(),
        }
    }
}

/// One phase of an actor's timeline (`enumeration` / `transition` alerts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseBlock {
    /// `discovery`, `enumeration` or `exploitation`.
    pub phase: String,
    /// RFC 3339 UTC times of the phase's first and last event.
    pub first: String,
    pub last: String,
    pub count: u64,
    /// What was seen (`vertical_scan`, `nmap:GetRequest`, `path_traversal:../`, ...), first ones.
    pub evidence: Vec<String>,
}

/// Protocol depth of an actor: its timeline and TLS client fingerprints.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DepthBlock {
    pub phases: Vec<PhaseBlock>,
    /// JA4 TLS client fingerprints seen from the actor.
    pub ja4: Vec<String>,
    pub sni: Vec<String>,
    pub alpn: Vec<String>,
    /// The JA4 + TCP fingerprint cluster whose members' phases joined this timeline
    /// (`ja4:<JA4>+tcp:<fingerprint hash>`); the other members are in `source.related`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub name: String,
    pub role: String,
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// RFC 3339 UTC time.
    pub time: String,
    pub kind: AlertKind,
    pub severity: Severity,
    /// 0..1.
    pub confidence: f64,
    pub direction: Direction,
    pub source: AlertSource,
    pub targets: Targets,
    /// What was sent (`protocol`, `shape`).
    #[serde(flatten)]
    pub shape: Shape,
    /// The scoring window that triggered, e.g. `"10s"`.
    pub window: String,
    pub counts: Counts,
    pub fingerprint: Option<FingerprintBlock>,
    pub technique: Technique,
    pub host: HostInfo,
    pub allowlisted: bool,
    pub blocked: bool,
    /// One human sentence.
    pub reason: String,
    /// False for an incident's first line, true for its later lines (`update_kind` says which).
    pub update: bool,
    /// The incident's id: unique across agent runs and hosts (host, agent instance, actor, kind,
    /// shape and incident start), shared by every line of the incident.
    pub alert_id: String,
    #[serde(flatten)]
    pub incident: Incident,
    /// Timeline and TLS fingerprints (`enumeration`, `transition`); omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<DepthBlock>,
    /// What the stages after detection added (evidence file, ASN, dry-run verdict); each key is
    /// omitted while unset.
    #[serde(flatten, default)]
    pub annotations: Annotations,
}

/// Keys the stages after detection add to a finding, flattened into the alert object.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Annotations {
    /// The pcap file the source's packets are being written to (evidence capture).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// Autonomous system of the source address (offline ASN database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    /// Organisation holding that autonomous system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Dry-run response: the source would have been blocked (`response.dry_run = true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub would_block: bool,
    /// The `response.never_block` set holding the source (alerted, never blocked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub never_block: Option<String>,
}

impl Alert {
    /// Set `time` from a wall clock reading.
    pub fn set_time(&mut self, wall: SystemTime) {
        self.time = rfc3339(wall);
    }

    /// One JSON line (no trailing newline).
    pub fn to_json_line(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// Short identifier (FNV-1a 64) of a list of parts.
pub fn stable_id(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(rfc3339_from_unix(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_from_unix(951_782_400.0), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_from_unix(1_700_000_000.25), "2023-11-14T22:13:20.250Z");
        assert_eq!(rfc3339_from_unix(4_102_444_799.0), "2099-12-31T23:59:59.000Z");
        assert_eq!(rfc3339_from_unix(-1.0), "1969-12-31T23:59:59.000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn internal_ranges() {
        for ip in ["10.1.2.3", "172.16.0.1", "192.168.1.1", "127.0.0.1", "169.254.1.1",
            "100.64.0.1", "100.127.255.255", "::1", "fd00::1", "fe80::1", "::ffff:10.0.0.1"] {
            assert!(is_internal(&ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "100.128.0.1", "2001:db8::1", "172.32.0.1", "::ffff:1.1.1.1"] {
            assert!(!is_internal(&ip.parse().expect("ip")), "{ip}");
        }
        let ext: IpAddr = "8.8.8.8".parse().expect("ip");
        let int: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(Technique::for_source(Direction::Inbound, Some(&ext)).id, "T1595");
        assert_eq!(Technique::for_source(Direction::Inbound, Some(&int)).id, "T1046");
        assert_eq!(Technique::for_source(Direction::Outbound, None).id, "T1046");
    }

    #[test]
    fn severity_order_and_parse() {
        assert!(Severity::Critical > Severity::High && Severity::Low > Severity::Info);
        assert_eq!("medium".parse::<Severity>(), Ok(Severity::Medium));
        assert!("loud".parse::<Severity>().is_err());
        assert_eq!(Severity::Critical.raise(), Severity::Critical);
        assert_eq!(Severity::Info.lower(), Severity::Info);
    }

    #[test]
    fn json_shape() {
        let mut detail = BTreeMap::new();
        detail.insert(Evidence::counter(scanwatch_common::cnt::XMAS), 3);
        let a = Alert {
            time: rfc3339_from_unix(0.0),
            kind: AlertKind::VerticalScan,
            severity: Severity::Medium,
            confidence: 0.9,
            direction: Direction::Inbound,
            source: AlertSource { ip: Some("8.8.8.8".parse().expect("ip")), process: None, related: vec![] },
            targets: Targets::default(),
            shape: Shape::new("tcp", "syn"),
            window: "10s".into(),
            counts: Counts::new(10, 9, 1, detail),
            fingerprint: None,
            technique: Technique::active_scanning(),
            host: HostInfo { name: "h".into(), role: "server".into() },
            allowlisted: false,
            blocked: false,
            reason: "r".into(),
            update: false,
            alert_id: stable_id(&["a", "b"]),
            incident: Incident::default(),
            depth: None,
            annotations: Default::default(),
        };
        let v: serde_json::Value =
            serde_json::from_str(&a.to_json_line().expect("json")).expect("parse");
        let keys: Vec<&str> = v.as_object().expect("obj").keys().map(String::as_str).collect();
        for k in ["time", "kind", "severity", "confidence", "direction", "source", "targets",
            "window", "counts", "fingerprint", "technique", "host", "allowlisted", "blocked",
            "reason", "update", "alert_id", "protocol", "shape", "start", "last_seen", "update_kind", "seq"] {
            assert!(keys.contains(&k), "missing {k}");
        }
        assert_eq!(keys.len(), 23);
        assert_eq!(v["protocol"], "tcp");
        assert_eq!(v["update_kind"], "first");
        assert_eq!(v["counts"]["successes"], 1);
        assert_eq!(v["counts"]["fail_ratio"], 0.9);
        assert_eq!(v["kind"], "vertical_scan");
        assert_eq!(v["severity"], "medium");
        assert_eq!(v["counts"]["xmas"], 3);
        assert!(v["source"].get("related").is_none());
        assert!(v["fingerprint"].is_null());
        assert_ne!(stable_id(&["a", "b"]), stable_id(&["ab"]));
    }
}
