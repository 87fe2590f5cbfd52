//! The engine's vocabulary: what sources hand it (snapshots, events, process actions), what it
//! keeps per fingerprint, and the bounds shared by its detectors. Detectors and the engine both
//! use these; these use neither.
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::vocab::ProcessInfo;

/// Ports / hosts listed in an alert.
pub const SAMPLE_OUT: usize = 16;

/// A source's only probe so far, held in the kernel's first-contact table (the source has no
/// per-source state yet). Read by the agent from the table; outcome from the listening sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldProbe {
    pub ip: IpAddr,
    /// Destination port (None for portless probes: ICMP echo, ARP).
    pub dport: Option<u16>,
    /// Destination address, when known.
    pub dst: Option<IpAddr>,
    /// The probe hit a closed port.
    pub failed: bool,
}

/// Cumulative per-source counters read from the kernel map.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSnapshot {
    pub ip: IpAddr,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Indexed by `scanwatch_common::cnt::*`.
    pub counts: [u64; scanwatch_common::cnt::N],
    /// Lifetime distinct destination ports (HyperLogLog estimate).
    pub distinct_ports: f64,
    /// Lifetime distinct destination hosts (HyperLogLog estimate).
    pub distinct_hosts: f64,
    pub sample_ports: Vec<u16>,
    /// May be empty.
    pub sample_hosts: Vec<IpAddr>,
    pub fingerprints: Vec<FingerprintInfo>,
    pub blocked: bool,
    /// IP protocol numbers of the source's scan-shaped packets (bit n = protocol n), as the
    /// kernel's `SrcState::protocols`; all zero where the source cannot tell (conn.logs).
    pub protocols: [u64; 4],
}

/// A decoded SYN fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintInfo {
    pub text: String,
    pub hash: String,
    pub tool_hint: String,
    pub initial_ttl: u8,
}

impl FingerprintInfo {
    /// Is the hint a dedicated scanning tool (not an OS stack or unknown)?
    pub fn is_scanner_tool(&self) -> bool {
        matches!(self.tool_hint.as_str(), "nmap" | "masscan" | "zmap" | "hping3" | "unicornscan")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum InboundEventKind {
    Honeyport { dport: u16, proto: u8 },
    /// The kernel's short-window distinct port/host counts crossed `xdp.*_threshold`.
    Threshold { ports: bool, hosts: bool, win_ports: u32, win_hosts: u32 },
    NewFingerprint(FingerprintInfo),
}

#[derive(Debug, Clone, PartialEq)]
pub struct InboundObservation {
    pub ip: IpAddr,
    /// Local destination address of the packet.
    pub dst: IpAddr,
    pub kind: InboundEventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutboundAction {
    /// connect() attempt.
    Connect { dst: IpAddr, dport: u16 },
    /// A crafted packet sent on a raw socket (SYN scan, stealth probes, ...).
    RawProbe { dst: IpAddr, dport: u16, proto: u8, tcp_flags: u8 },
    /// Outcome of an earlier connect (established, or refused / timed out).
    Outcome { dst: IpAddr, dport: u16, success: bool },
    /// A raw / packet socket was created.
    RawSocket { family: u32, sock_type: u32 },
    /// A UDP datagram sent.
    UdpSend { dst: IpAddr, dport: u16 },
    /// The first bytes written on an outbound TCP connection (`sample`: at most the kernel's
    /// `PROC_PAYLOAD_SAMPLE` bytes of a write of `len`).
    Payload { dst: IpAddr, dport: u16, sample: Vec<u8>, len: u32 },
    /// Sends the kernel counted past the process's event budget instead of reporting them one by
    /// one (`raw` of them raw-socket probes): probes whose destinations are not known.
    Shed { probes: u32, raw: u32 },
}

/// The first client payload of an inbound connection to one of this host's services (or the
/// fact that the client closed without sending any).
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadObservation {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// The captured prefix of the payload (bounded by the source).
    pub sample: Vec<u8>,
    /// The payload's full length in its segment (the sample may be shorter).
    pub payload_len: u32,
    /// False: the client closed the connection without sending data (banner grab).
    pub client_sent_data: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboundObservation {
    pub process: ProcessInfo,
    pub action: OutboundAction,
}

/// Engine statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    pub inbound_entities: usize,
    pub outbound_entities: usize,
    pub fingerprint_clusters: usize,
    /// Incidents open now.
    pub open_incidents: usize,
    /// Incidents closed (with a final line) so far.
    pub incidents_closed: u64,
    pub alerts_emitted: u64,
    /// Findings folded into an open incident without a line of their own.
    pub alerts_deduplicated: u64,
    /// Dropped by the global rate limit (reported by `notice` alerts).
    pub alerts_suppressed: u64,
    /// Dropped by `alerts.min_severity`.
    pub alerts_filtered: u64,
    pub entities_evicted: u64,
}


/// Where a source stands with respect to decoy clusters (see `Engine::decoy_membership`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoyMembership {
    Alone,
    Pending,
    Member,
}

/// Make room in an entity map: evict the least recently seen eighth when full.
pub fn make_room<K: Clone + Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
    cap: usize,
    last_seen: impl Fn(&V) -> Duration,
) -> u64 {
    if map.len() < cap {
        return 0;
    }
    let mut ages: Vec<(Duration, K)> = map.iter().map(|(k, v)| (last_seen(v), k.clone())).collect();
    let n = (cap / 8).max(1).min(ages.len());
    ages.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
    for (_, k) in ages.iter().take(n) {
        map.remove(k);
    }
    n as u64
}

