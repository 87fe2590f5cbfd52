//! State of the cross-source detectors: the fingerprint index (decoy clusters) and the held
//! one-probe sources (distributed scans). Bounded; evicted by age.
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use super::types::HeldProbe;

pub(super) const MAX_HASHES: usize = 4096;
pub(super) const MAX_MEMBERS: usize = 64;
/// Ports per member kept for overlap computations.
pub(super) const MEMBER_PORTS: usize = 32;
/// Sources listed in `source.related`.
pub(super) const RELATED_OUT: usize = 32;

#[derive(Debug, Clone)]
pub(super) struct Member {
    ip: IpAddr,
    last_seen: Duration,
    ports: Vec<u16>,
    failing: bool,
    ttl: u8,
}

/// Fingerprint hash -> recent sources with that fingerprint (bounded).
#[derive(Debug, Default)]
pub(super) struct FingerprintIndex {
    by_hash: HashMap<String, Vec<Member>>,
}

/// A decoy cluster found for one fingerprint.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DecoyCluster {
    pub members: Vec<IpAddr>,
    pub common_ports: Vec<u16>,
    pub same_ttl: bool,
}

pub(super) fn jaccard(a: &[u16], b: &[u16]) -> f64 {
    let sa: BTreeSet<&u16> = a.iter().collect();
    let sb: BTreeSet<&u16> = b.iter().collect();
    let inter = sa.intersection(&sb).count();
    let union = sa.union(&sb).count();
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

impl FingerprintIndex {
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn note(&mut self, now: Duration, hash: &str, ip: IpAddr, ports: &[u16], failing: bool, ttl: u8) {
        if !self.by_hash.contains_key(hash) && self.by_hash.len() >= MAX_HASHES {
            // Drop the stalest hash.
            if let Some(k) = self
                .by_hash
                .iter()
                .min_by_key(|(_, v)| v.iter().map(|m| m.last_seen).max().unwrap_or_default())
                .map(|(k, _)| k.clone())
            {
                self.by_hash.remove(&k);
            }
        }
        let members = self.by_hash.entry(hash.to_string()).or_default();
        let ports: Vec<u16> = ports.iter().take(MEMBER_PORTS).copied().collect();
        if let Some(m) = members.iter_mut().find(|m| m.ip == ip) {
            m.last_seen = now;
            m.ports = ports;
            m.failing = failing;
            m.ttl = ttl;
            return;
        }
        if members.len() >= MAX_MEMBERS {
            if let Some(pos) = members.iter().enumerate().min_by_key(|(_, m)| m.last_seen).map(|(i, _)| i) {
                members.swap_remove(pos);
            }
        }
        members.push(Member { ip, last_seen: now, ports, failing, ttl });
    }

    pub fn expire(&mut self, now: Duration, window: Duration) {
        for v in self.by_hash.values_mut() {
            v.retain(|m| now.saturating_sub(m.last_seen) < window);
        }
        self.by_hash.retain(|_, v| !v.is_empty());
    }

    /// Sources seen with `hash` within `window` (whatever their ports or outcomes so far).
    pub fn active_members(&self, now: Duration, hash: &str, window: Duration) -> usize {
        self.by_hash
            .get(hash)
            .map_or(0, |v| v.iter().filter(|m| now.saturating_sub(m.last_seen) < window).count())
    }

    /// Sources sharing `hash`, active within `window`, failing, with at least `min_ports` ports
    /// and pairwise port overlap `min_overlap` with a common member.
    pub fn cluster(
        &self,
        now: Duration,
        hash: &str,
        window: Duration,
        min_sources: usize,
        min_ports: usize,
        min_overlap: f64,
    ) -> Option<DecoyCluster> {
        let members: Vec<&Member> = self
            .by_hash
            .get(hash)?
            .iter()
            .filter(|m| now.saturating_sub(m.last_seen) < window && m.failing && m.ports.len() >= min_ports)
            .collect();
        if members.len() < min_sources {
            return None;
        }
        let mut best: Vec<&Member> = Vec::new();
        for a in &members {
            let group: Vec<&Member> =
                members.iter().filter(|b| jaccard(&a.ports, &b.ports) >= min_overlap).copied().collect();
            if group.len() > best.len() {
                best = group;
            }
        }
        if best.len() < min_sources {
            return None;
        }
        let mut common: BTreeSet<u16> = best[0].ports.iter().copied().collect();
        for m in &best[1..] {
            let s: BTreeSet<u16> = m.ports.iter().copied().collect();
            common = common.intersection(&s).copied().collect();
        }
        let ttl0 = best[0].ttl;
        let mut ips: Vec<IpAddr> = best.iter().map(|m| m.ip).collect();
        ips.sort();
        Some(DecoyCluster {
            members: ips,
            common_ports: common.into_iter().collect(),
            same_ttl: best.iter().all(|m| m.ttl == ttl0),
        })
    }
}

/// State of the destination-centric distributed-scan detector.
#[derive(Debug, Default)]
pub(super) struct Distributed {
    pub(super) last_eval: Option<Duration>,
    /// One-probe sources still held in the kernel's first-contact table (they have no per-source
    /// state, so no entity): address → (probe, when the agent first saw it).
    pub(super) held: HashMap<IpAddr, (HeldProbe, Duration)>,
    /// Held probes not recorded because `HELD_CAP` was reached (a random-source flood).
    pub(super) held_dropped: u64,
}

/// Most held one-probe sources remembered for the distributed detector.
pub(super) const HELD_CAP: usize = 8192;

/// Evaluate the distributed detector at most this often.
pub(super) const DISTRIBUTED_EVERY: Duration = Duration::from_secs(5);

