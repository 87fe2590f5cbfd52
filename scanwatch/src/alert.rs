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
}

impl AlertKind {
    pub const ALL: [AlertKind; 11] = [
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
    pub failures: u64,
    /// failures / (failures + successes); null when no outcome is known.
    pub fail_ratio: Option<f64>,
    #[serde(flatten)]
    pub detail: BTreeMap<Evidence, u64>,
}

impl Counts {
    /// The evidence count named `name`, if present.
    pub fn get(&self, name: &str) -> Option<u64> {
        Evidence::from_name(name).and_then(|e| self.detail.get(&e).copied())
    }
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
    /// False for the first alert of an entity+kind, true for escalation updates.
    pub update: bool,
    /// Stable per entity+kind.
    pub alert_id: String,
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

/// Stable short identifier (FNV-1a 64) for an entity+kind.
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
            window: "10s".into(),
            counts: Counts { probes: 10, failures: 9, fail_ratio: Some(0.9), detail },
            fingerprint: None,
            technique: Technique::active_scanning(),
            host: HostInfo { name: "h".into(), role: "server".into() },
            allowlisted: false,
            blocked: false,
            reason: "r".into(),
            update: false,
            alert_id: stable_id(&["a", "b"]),
            annotations: Default::default(),
        };
        let v: serde_json::Value =
            serde_json::from_str(&a.to_json_line().expect("json")).expect("parse");
        let keys: Vec<&str> = v.as_object().expect("obj").keys().map(String::as_str).collect();
        for k in ["time", "kind", "severity", "confidence", "direction", "source", "targets",
            "window", "counts", "fingerprint", "technique", "host", "allowlisted", "blocked",
            "reason", "update", "alert_id"] {
            assert!(keys.contains(&k), "missing {k}");
        }
        assert_eq!(keys.len(), 17, "unset annotations are omitted");
        assert_eq!(v["kind"], "vertical_scan");
        assert_eq!(v["severity"], "medium");
        assert_eq!(v["counts"]["xmas"], 3);
        assert!(v["source"].get("related").is_none());
        assert!(v["fingerprint"].is_null());
        assert_ne!(stable_id(&["a", "b"]), stable_id(&["ab"]));
    }
}
