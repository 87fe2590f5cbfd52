//! Opt-in active response (`xdp.enforce_blocklist = true`): inbound scanners the agent alerted on
//! are added to the kernel block list, where the XDP program drops their packets before any
//! parsing, for `response.block_ttl` after their last qualifying alert.
//!
//! The decision (`qualifies`) is pure; `Responder` owns the map and the expiry times. Sources a
//! scan can forge are never blocked on that evidence alone: a spoofed SYN scan can name any
//! address, so decoy clusters, distributed scans and backscatter (unsolicited SYN-ACK/RST, the
//! signature of someone else spoofing *our* address) never qualify, and allowlisted sources never
//! do either.
//!
//! Around the decision: `response.dry_run` reports what would be blocked (`would_block` in the
//! alert) and never inserts; `response.never_block` names CIDR sets that are alerted on but never
//! blocked (the alert names the set); `response.max_blocked` bounds the list, the weakest
//! automatic entry (lowest confidence, then oldest) giving way to a new one at least as
//! confident; operators add and remove entries through the control socket (`scanwatch block`).
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
    /// Start dropping `ip`'s packets; `reason` is a small code of the finding kind (0 = operator).
    fn insert(&mut self, ip: IpAddr, reason: u32) -> Result<(), String>;
    fn remove(&mut self, ip: IpAddr) -> Result<(), String>;
    /// Packets and bytes dropped from `ip` since it was inserted, when the table counts them.
    fn dropped(&self, _ip: IpAddr) -> Option<(u64, u64)> {
        None
    }
}

/// A table that enforces nothing (dry-run without the kernel block list, tests).
#[derive(Debug, Default)]
pub struct NoTable;

impl BlockTable for NoTable {
    fn insert(&mut self, _ip: IpAddr, _reason: u32) -> Result<(), String> {
        Err("no block list: xdp.enforce_blocklist is off".into())
    }
    fn remove(&mut self, _ip: IpAddr) -> Result<(), String> {
        Ok(())
    }
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
        | AlertKind::ProtocolScan
        | AlertKind::HoneyportHit => true,
        // Seen on completed handshakes: the source address is not spoofed.
        AlertKind::Enumeration | AlertKind::Transition => true,
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

/// Block-list value: the alert kind that caused the block (0 is an operator's block).
fn reason_code(k: AlertKind) -> u32 {
    k as u32 + 1
}

/// One blocked (or, in dry-run, would-be-blocked) source.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The finding kind, or `manual`.
    pub reason: String,
    pub confidence: f64,
    /// Engine time the block started.
    pub since: Duration,
    /// Engine time it ends; `None` = until removed (operator block without a ttl).
    pub until: Option<Duration>,
    /// Added by an operator (`scanwatch block add`): never gives way to automatic blocks.
    pub manual: bool,
}

/// A blocked source as `scanwatch block list` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BlockInfo {
    pub ip: IpAddr,
    pub reason: String,
    pub confidence: f64,
    /// Seconds since the block started.
    pub age_secs: f64,
    /// Seconds left; `None` = until removed.
    pub expires_in_secs: Option<f64>,
    pub manual: bool,
    /// Packets / bytes the kernel dropped from it (`None` in dry-run).
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

/// What the response stage did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResponseCounters {
    pub blocks: u64,
    pub unblocks: u64,
    /// Automatic blocks that gave way to a new one at `max_blocked`.
    pub evicted: u64,
    /// Blocks not made: list full of stronger entries, or the kernel refused.
    pub refused: u64,
    /// Qualifying sources spared because a `never_block` set holds them.
    pub spared: u64,
    /// Dry-run: blocks that would have been made.
    pub would_block: u64,
}

/// A refused operator request, worded for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResponseError(pub String);

pub struct Responder {
    map: Box<dyn BlockTable + Send>,
    cfg: ResponseConfig,
    /// Blocked sources (in dry-run: the sources that would be blocked; nothing is in the map).
    entries: HashMap<IpAddr, Entry>,
    pub counters: ResponseCounters,
}

impl Responder {
    pub fn new(map: Box<dyn BlockTable + Send>, cfg: ResponseConfig) -> Self {
        Responder { map, cfg, entries: HashMap::new(), counters: ResponseCounters::default() }
    }

    /// Apply a reloaded `[response]`: limits and sets take effect for the next decisions. Turning
    /// dry-run on or off forgets the entries of the other mode (dry-run entries were never in the
    /// kernel; real ones are lifted).
    pub fn reconfigure(&mut self, cfg: ResponseConfig) {
        if cfg.dry_run != self.cfg.dry_run {
            if !self.cfg.dry_run {
                for ip in self.entries.keys() {
                    let _ = self.map.remove(*ip);
                }
            }
            self.entries.clear();
        }
        self.cfg = cfg;
    }

    pub fn config(&self) -> &ResponseConfig {
        &self.cfg
    }

    pub fn dry_run(&self) -> bool {
        self.cfg.dry_run
    }

    pub fn blocked_count(&self) -> usize {
        if self.cfg.dry_run {
            0
        } else {
            self.entries.len()
        }
    }

    /// Block the alert's source if it qualifies; mark the alert `blocked` when its source is
    /// blocked now (also for non-qualifying alerts of an already blocked source). In dry-run the
    /// alert says `would_block` instead; a source in a never-block set names the set.
    pub fn apply(&mut self, now: Duration, a: &mut Alert) {
        if let Some(ip) = a.source.ip.filter(|_| a.direction == Direction::Inbound) {
            if let Some(set) = self.cfg.never_block_set(&ip) {
                a.annotations.never_block = Some(set.to_string());
            }
        }
        if let Some(ip) = qualifies(a, &self.cfg) {
            if a.annotations.never_block.is_some() {
                self.counters.spared += 1;
            } else {
                self.block(now, ip, a.kind.as_str(), reason_code(a.kind), a.confidence, Some(self.cfg.block_ttl), false);
            }
        }
        if a.direction == Direction::Inbound && !a.allowlisted {
            if let Some(ip) = a.source.ip {
                let listed = self.entries.contains_key(&ip);
                if self.cfg.dry_run {
                    a.annotations.would_block = listed;
                } else {
                    a.blocked = listed;
                }
            }
        }
    }

    /// Insert or extend a block. Returns whether `ip` is blocked (or would be) afterwards.
    #[expect(clippy::too_many_arguments, reason = "one call site each for automatic and operator blocks")]
    fn block(&mut self, now: Duration, ip: IpAddr, reason: &str, code: u32, confidence: f64, ttl: Option<Duration>, manual: bool) -> bool {
        let until = ttl.map(|t| now + t);
        if let Some(e) = self.entries.get_mut(&ip) {
            e.until = match (e.until, until) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            e.confidence = e.confidence.max(confidence);
            e.manual |= manual;
            return true;
        }
        if self.entries.len() >= self.cfg.max_blocked as usize && !self.make_room(confidence, manual) {
            self.refuse(&ip, "response.max_blocked reached and every entry is stronger");
            return false;
        }
        if self.cfg.dry_run {
            eprintln!("scanwatch: dry-run: would block {ip} ({reason}, confidence {confidence:.2})");
            self.counters.would_block += 1;
        } else {
            if let Err(e) = self.map.insert(ip, code) {
                self.refuse(&ip, &format!("block list insert failed: {e}"));
                return false;
            }
            match ttl {
                Some(t) => eprintln!("scanwatch: blocking {ip} for {t:?} ({reason}, confidence {confidence:.2})"),
                None => eprintln!("scanwatch: blocking {ip} until removed ({reason})"),
            }
            self.counters.blocks += 1;
        }
        self.entries.insert(ip, Entry { reason: reason.to_string(), confidence, since: now, until, manual });
        true
    }

    /// At the bound: the weakest automatic entry (lowest confidence, then oldest) gives way to a
    /// new one at least as confident (an operator's always). False when none may.
    fn make_room(&mut self, confidence: f64, manual: bool) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| !e.manual)
            .min_by(|(_, a), (_, b)| a.confidence.total_cmp(&b.confidence).then(a.since.cmp(&b.since)))
            .map(|(ip, e)| (*ip, e.confidence));
        match victim {
            Some((ip, c)) if manual || c <= confidence => {
                self.lift(&ip, "gave way at response.max_blocked");
                self.counters.evicted += 1;
                true
            }
            _ => false,
        }
    }

    fn lift(&mut self, ip: &IpAddr, why: &str) {
        if self.entries.remove(ip).is_none() {
            return;
        }
        if self.cfg.dry_run {
            eprintln!("scanwatch: dry-run: would unblock {ip} ({why})");
            return;
        }
        match self.map.remove(*ip) {
            Ok(()) => eprintln!("scanwatch: unblocked {ip} ({why})"),
            Err(e) => eprintln!("scanwatch: WARNING cannot unblock {ip}: {e}"),
        }
        self.counters.unblocks += 1;
    }

    fn refuse(&mut self, ip: &IpAddr, why: &str) {
        self.counters.refused += 1;
        if self.counters.refused.is_power_of_two() {
            eprintln!("scanwatch: WARNING not blocking {ip}: {why} ({} refused so far)", self.counters.refused);
        }
    }

    /// Lift the blocks whose time is up. Returns how many were lifted.
    pub fn expire(&mut self, now: Duration) -> usize {
        let done: Vec<IpAddr> =
            self.entries.iter().filter(|(_, e)| e.until.is_some_and(|t| t <= now)).map(|(ip, _)| *ip).collect();
        for ip in &done {
            self.lift(ip, "block_ttl over");
        }
        done.len()
    }

    /// An operator's block (`scanwatch block add`): kept until removed or `ttl` passes, never
    /// evicted by automatic blocks. Refused for a never-block source and in dry-run.
    pub fn add_manual(&mut self, now: Duration, ip: IpAddr, ttl: Option<Duration>) -> Result<(), ResponseError> {
        let ip = crate::vocab::canonical_ip(ip);
        if let Some(set) = self.cfg.never_block_set(&ip) {
            return Err(ResponseError(format!("{ip} is in response.never_block.{set}: not blocked")));
        }
        if self.cfg.dry_run {
            return Err(ResponseError("response.dry_run is on: nothing is inserted into the block list".into()));
        }
        if self.block(now, ip, "manual", 0, 1.0, ttl, true) {
            Ok(())
        } else {
            Err(ResponseError(format!("{ip} not blocked (block list full or refused by the kernel; see the agent's log)")))
        }
    }

    /// Lift a block (`scanwatch block del`).
    pub fn remove(&mut self, ip: IpAddr) -> Result<(), ResponseError> {
        let ip = crate::vocab::canonical_ip(ip);
        if !self.entries.contains_key(&ip) {
            return Err(ResponseError(format!("{ip} is not blocked")));
        }
        self.lift(&ip, "removed by an operator");
        Ok(())
    }

    /// Every entry with what the kernel dropped from it, most packets first.
    pub fn list(&self, now: Duration) -> Vec<BlockInfo> {
        let mut out: Vec<BlockInfo> = self
            .entries
            .iter()
            .map(|(ip, e)| {
                let d = if self.cfg.dry_run { None } else { self.map.dropped(*ip) };
                BlockInfo {
                    ip: *ip,
                    reason: e.reason.clone(),
                    confidence: e.confidence,
                    age_secs: now.saturating_sub(e.since).as_secs_f64(),
                    expires_in_secs: e.until.map(|t| t.saturating_sub(now).as_secs_f64()),
                    manual: e.manual,
                    packets: d.map(|x| x.0),
                    bytes: d.map(|x| x.1),
                }
            })
            .collect();
        out.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.ip.cmp(&b.ip)));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::alert::{AlertSource, Counts, HostInfo, Incident, Shape, Targets, Technique};
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
            shape: Shape::new("tcp", "syn"),
            window: "10s".into(),
            counts: Counts::new(
                100,
                100,
                0,
                detail
                    .iter()
                    .map(|(k, v)| (Evidence::from_name(k).expect("evidence name"), *v))
                    .collect::<BTreeMap<_, _>>(),
            ),
            fingerprint: None,
            technique: Technique::for_source(Direction::Inbound, None),
            host: HostInfo { name: "h".into(), role: "server".into() },
            allowlisted: false,
            blocked: false,
            reason: String::new(),
            update: false,
            alert_id: String::new(),
            incident: Incident::default(),
            depth: None,
            annotations: Default::default(),
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

    /// Records what is in the "kernel".
    #[derive(Default, Clone)]
    struct Table(std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<IpAddr>>>);

    impl BlockTable for Table {
        fn insert(&mut self, ip: IpAddr, _reason: u32) -> Result<(), String> {
            self.0.lock().expect("lock").insert(ip);
            Ok(())
        }
        fn remove(&mut self, ip: IpAddr) -> Result<(), String> {
            self.0.lock().expect("lock").remove(&ip);
            Ok(())
        }
        fn dropped(&self, ip: IpAddr) -> Option<(u64, u64)> {
            self.0.lock().expect("lock").contains(&ip).then_some((7, 420))
        }
    }

    fn from(ip: &str, confidence: f64) -> Alert {
        let mut a = alert(AlertKind::VerticalScan, Severity::High, &[]);
        a.source.ip = Some(ip.parse().expect("ip"));
        a.confidence = confidence;
        a
    }

    fn ips(t: &Table) -> Vec<String> {
        t.0.lock().expect("lock").iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_weakest_then_oldest_automatic_block_gives_way_at_the_bound() {
        let t = Table::default();
        let mut c = cfg();
        c.max_blocked = 2;
        let mut r = Responder::new(Box::new(t.clone()), c);
        let s = Duration::from_secs;
        r.apply(s(1), &mut from("192.0.2.1", 0.9));
        r.apply(s(2), &mut from("192.0.2.2", 0.6));
        // Full: a weaker newcomer is refused.
        let mut weak = from("192.0.2.3", 0.5);
        r.apply(s(3), &mut weak);
        assert!(!weak.blocked);
        assert_eq!(r.counters.refused, 1);
        // A stronger one evicts the lowest-confidence entry.
        let mut strong = from("192.0.2.4", 0.8);
        r.apply(s(4), &mut strong);
        assert!(strong.blocked);
        assert_eq!(ips(&t), vec!["192.0.2.1", "192.0.2.4"]);
        assert_eq!(r.counters.evicted, 1);
        // A stronger newcomer again evicts the lowest-confidence entry (.4 at 0.8) ...
        r.apply(s(5), &mut from("192.0.2.5", 0.9));
        assert_eq!(ips(&t), vec!["192.0.2.1", "192.0.2.5"]);
        // ... and at equal confidence the oldest (.1, blocked at 1 s) gives way.
        r.apply(s(6), &mut from("192.0.2.6", 0.9));
        assert_eq!(ips(&t), vec!["192.0.2.5", "192.0.2.6"]);
        assert_eq!(r.counters.evicted, 3);
        // Operator blocks never give way; they evict automatic ones.
        r.add_manual(s(7), "198.51.100.1".parse().expect("ip"), None).expect("manual");
        r.add_manual(s(7), "198.51.100.2".parse().expect("ip"), None).expect("manual");
        assert_eq!(ips(&t), vec!["198.51.100.1", "198.51.100.2"]);
        let mut a = from("192.0.2.9", 1.0);
        r.apply(s(8), &mut a);
        assert!(!a.blocked, "operator entries hold");
        let l = r.list(s(10));
        assert_eq!(l.len(), 2);
        assert!(l.iter().all(|b| b.manual && b.packets == Some(7) && b.bytes == Some(420) && b.expires_in_secs.is_none()));
        r.remove("198.51.100.1".parse().expect("ip")).expect("del");
        assert!(r.remove("198.51.100.1".parse().expect("ip")).is_err(), "gone");
        assert_eq!(ips(&t), vec!["198.51.100.2"]);
    }

    #[test]
    fn dry_run_reports_and_never_inserts() {
        let t = Table::default();
        let mut c = cfg();
        c.dry_run = true;
        let mut r = Responder::new(Box::new(t.clone()), c);
        let mut a = from("192.0.2.1", 0.9);
        r.apply(Duration::from_secs(1), &mut a);
        assert!(a.annotations.would_block && !a.blocked);
        assert!(ips(&t).is_empty());
        assert_eq!(r.counters.would_block, 1);
        assert_eq!(r.blocked_count(), 0);
        assert_eq!(r.list(Duration::from_secs(2))[0].packets, None);
        assert!(r.add_manual(Duration::from_secs(2), "192.0.2.7".parse().expect("ip"), None).is_err());
        // Reload with dry-run off: real blocks from now on.
        let mut c = cfg();
        c.dry_run = false;
        r.reconfigure(c);
        let mut b = from("192.0.2.1", 0.9);
        r.apply(Duration::from_secs(3), &mut b);
        assert!(b.blocked && !b.annotations.would_block);
        assert_eq!(ips(&t), vec!["192.0.2.1"]);
    }

    #[test]
    fn never_block_sets_are_alerted_and_named_but_never_blocked() {
        let t = Table::default();
        let mut c = cfg();
        c.never_block.insert("census".into(), vec!["192.0.2.0/28".parse().expect("cidr")]);
        let mut r = Responder::new(Box::new(t.clone()), c);
        let mut a = from("192.0.2.5", 1.0);
        r.apply(Duration::from_secs(1), &mut a);
        assert_eq!(a.annotations.never_block.as_deref(), Some("census"));
        assert!(!a.blocked);
        assert_eq!(r.counters.spared, 1);
        let e = r.add_manual(Duration::from_secs(1), "192.0.2.6".parse().expect("ip"), None).expect_err("refused");
        assert!(e.to_string().contains("never_block.census"), "{e}");
        let mut b = from("192.0.2.99", 1.0);
        r.apply(Duration::from_secs(1), &mut b);
        assert!(b.blocked && b.annotations.never_block.is_none());
        assert_eq!(ips(&t), vec!["192.0.2.99"]);
    }

    #[test]
    fn blocks_expire_after_their_ttl() {
        let t = Table::default();
        let mut r = Responder::new(Box::new(t.clone()), cfg());
        r.apply(Duration::from_secs(10), &mut from("192.0.2.1", 0.9));
        r.add_manual(Duration::from_secs(10), "192.0.2.2".parse().expect("ip"), Some(Duration::from_secs(5))).expect("manual");
        assert_eq!(r.expire(Duration::from_secs(14)), 0);
        assert_eq!(r.expire(Duration::from_secs(15)), 1, "the operator's 5 s block");
        let ttl = cfg().block_ttl;
        assert_eq!(r.expire(Duration::from_secs(10) + ttl), 1);
        assert!(ips(&t).is_empty());
        assert_eq!(r.counters.unblocks, 2);
    }
}
