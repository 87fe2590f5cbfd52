//! Opt-in active response (`xdp.enforce_blocklist = true`): inbound scanners the agent alerted on
//! are added to the kernel block list, where the XDP program drops their packets before any
//! parsing, for `response.block_ttl` after their last qualifying alert.
//!
//! The decision (`qualifies`) is pure; `Responder` owns the map and the expiry times. Sources a
//! scan can forge are never blocked on that evidence alone: a spoofed SYN scan can name any
//! address, so decoy clusters, distributed scans and backscatter (unsolicited SYN-ACK/RST, the
//! signature of someone else spoofing *our* address) never qualify, and allowlisted sources never
//! do either.
use std::{collections::HashMap, net::IpAddr, time::Duration};

use scanwatch_common::cnt;

use crate::{
    alert::{Alert, AlertKind, Evidence},
    config::ResponseConfig,
    vocab::Direction,
};

/// Evidence in an `evasion` alert that the source itself sent the probes (not backscatter).
const SELF_EVASION: [usize; 4] = [cnt::FRAG_FIRST, cnt::FRAG_LATER, cnt::SRCPORT_TRICK, cnt::BADSUM];

/// Where blocks are enforced (the XDP program's BLOCKLIST map in the live agent).
pub trait BlockTable {
    /// Start dropping `ip`'s packets; `reason` is a small code of the finding kind.
    fn insert(&mut self, ip: IpAddr, reason: u32) -> Result<(), String>;
    fn remove(&mut self, ip: IpAddr) -> Result<(), String>;
}

/// The source to block for this alert, if it qualifies.
pub fn qualifies(a: &Alert, cfg: &ResponseConfig) -> Option<IpAddr> {
    if a.direction != Direction::Inbound || a.allowlisted || a.severity < cfg.block_min_severity {
        return None;
    }
    let kind_ok = match a.kind {
        AlertKind::HorizontalScan
        | AlertKind::VerticalScan
        | AlertKind::BlockScan
        | AlertKind::StealthScan
        | AlertKind::SlowScan
        | AlertKind::HoneyportHit => true,
        AlertKind::Evasion => {
            SELF_EVASION.iter().any(|k| a.counts.detail.get(&Evidence::counter(*k)).copied().unwrap_or(0) > 0)
        }
        AlertKind::DecoyCluster | AlertKind::DistributedScan | AlertKind::OutboundScan | AlertKind::Notice => false,
    };
    if !kind_ok {
        return None;
    }
    a.source.ip
}

/// Block-list value: the alert kind that caused the block (the kernel only tests presence).
fn reason_code(k: AlertKind) -> u32 {
    k as u32 + 1
}

pub struct Responder {
    map: Box<dyn BlockTable + Send>,
    cfg: ResponseConfig,
    /// Blocked source → monotonic time its block ends.
    until: HashMap<IpAddr, Duration>,
    /// Inserts refused (map full or `max_blocked` reached), reported once per burst.
    refused: u64,
}

impl Responder {
    pub fn new(map: Box<dyn BlockTable + Send>, cfg: ResponseConfig) -> Self {
        Responder { map, cfg, until: HashMap::new(), refused: 0 }
    }

    pub fn blocked_count(&self) -> usize {
        self.until.len()
    }

    /// Block the alert's source if it qualifies; mark the alert `blocked` when its source is
    /// blocked now (also for non-qualifying alerts of an already blocked source).
    pub fn apply(&mut self, now: Duration, a: &mut Alert) {
        if let Some(ip) = qualifies(a, &self.cfg) {
            let end = now + self.cfg.block_ttl;
            if let Some(t) = self.until.get_mut(&ip) {
                *t = end;
            } else if self.until.len() >= self.cfg.max_blocked as usize {
                self.refuse(&ip, "response.max_blocked reached");
            } else {
                match self.map.insert(ip, reason_code(a.kind)) {
                    Ok(()) => {
                        eprintln!(
                            "scanwatch: blocking {ip} for {:?} ({} alert, severity {})",
                            self.cfg.block_ttl,
                            a.kind.as_str(),
                            a.severity.as_str()
                        );
                        self.until.insert(ip, end);
                    }
                    Err(e) => self.refuse(&ip, &format!("block list insert failed: {e}")),
                }
            }
        }
        if a.direction == Direction::Inbound && !a.allowlisted {
            if let Some(ip) = a.source.ip {
                a.blocked = self.until.contains_key(&ip);
            }
        }
    }

    fn refuse(&mut self, ip: &IpAddr, why: &str) {
        self.refused += 1;
        if self.refused.is_power_of_two() {
            eprintln!("scanwatch: WARNING not blocking {ip}: {why} ({} refused so far)", self.refused);
        }
    }

    /// Lift the blocks whose time is up. Returns how many were lifted.
    pub fn expire(&mut self, now: Duration) -> usize {
        let done: Vec<IpAddr> = self.until.iter().filter(|(_, t)| **t <= now).map(|(ip, _)| *ip).collect();
        for ip in &done {
            self.until.remove(ip);
            if let Err(e) = self.map.remove(*ip) {
                eprintln!("scanwatch: WARNING cannot unblock {ip}: {e}");
            } else {
                eprintln!("scanwatch: unblocked {ip}");
            }
        }
        done.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::alert::{AlertSource, Counts, HostInfo, Targets, Technique};
    use crate::vocab::Severity;

    fn alert(kind: AlertKind, severity: Severity, detail: &[(&str, u64)]) -> Alert {
        Alert {
            time: String::new(),
            kind,
            severity,
            confidence: 0.9,
            direction: Direction::Inbound,
            source: AlertSource { ip: Some("198.51.100.7".parse().expect("ip")), process: None, related: Vec::new() },
            targets: Targets::default(),
            window: "10s".into(),
            counts: Counts {
                probes: 100,
                failures: 100,
                fail_ratio: Some(1.0),
                detail: detail
                    .iter()
                    .map(|(k, v)| (Evidence::from_name(k).expect("evidence name"), *v))
                    .collect::<BTreeMap<_, _>>(),
            },
            fingerprint: None,
            technique: Technique::for_source(Direction::Inbound, None),
            host: HostInfo { name: "h".into(), role: "server".into() },
            allowlisted: false,
            blocked: false,
            reason: String::new(),
            update: false,
            alert_id: String::new(),
        }
    }

    fn cfg() -> ResponseConfig {
        crate::config::Config::default_embedded().response
    }

    #[test]
    fn scans_at_or_above_the_severity_qualify() {
        let ip: IpAddr = "198.51.100.7".parse().expect("ip");
        assert_eq!(qualifies(&alert(AlertKind::VerticalScan, Severity::High, &[]), &cfg()), Some(ip));
        assert_eq!(qualifies(&alert(AlertKind::HoneyportHit, Severity::Critical, &[]), &cfg()), Some(ip));
        assert_eq!(qualifies(&alert(AlertKind::VerticalScan, Severity::Medium, &[]), &cfg()), None);
    }

    #[test]
    fn forgeable_evidence_never_qualifies() {
        for k in [AlertKind::DecoyCluster, AlertKind::DistributedScan, AlertKind::Notice] {
            assert_eq!(qualifies(&alert(k, Severity::Critical, &[]), &cfg()), None, "{k:?}");
        }
        // Backscatter (someone spoofing our address) is not the sender's doing.
        let bs = alert(AlertKind::Evasion, Severity::Critical, &[("unsolicited_synack", 40)]);
        assert_eq!(qualifies(&bs, &cfg()), None);
        let frag = alert(AlertKind::Evasion, Severity::High, &[("frag_first", 40)]);
        assert!(qualifies(&frag, &cfg()).is_some());
    }

    #[test]
    fn allowlisted_and_outbound_never_qualify() {
        let mut a = alert(AlertKind::VerticalScan, Severity::Critical, &[]);
        a.allowlisted = true;
        assert_eq!(qualifies(&a, &cfg()), None);
        let mut o = alert(AlertKind::OutboundScan, Severity::Critical, &[]);
        o.direction = Direction::Outbound;
        assert_eq!(qualifies(&o, &cfg()), None);
    }
}
