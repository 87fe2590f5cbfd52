//! Connection outcomes from what the other direction shows: SYN-ACK = open, RST = closed, ICMP
//! unreachable = closed (port unreachable) or filtered, nothing within a timeout = no answer.
//!
//! Used where no local socket table can say whether a probed port was open: captures replayed
//! offline (`scanwatch replay`) and a gateway that forwards other hosts' traffic. Pure: no I/O,
//! no clock — every call carries the packet's time. Bounded: at most `max_pending` probes wait
//! for an answer; when full, the oldest is resolved early as "no answer" and counted in
//! [`TrackerStats::evicted`].
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use scanwatch_common::tcpflag::{ACK, FIN, PSH, RST, SYN, URG};

const TCP: u8 = 6;
const UDP: u8 = 17;

/// What an ICMP destination-unreachable said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icmp {
    /// ICMP type 3 code 3 / ICMPv6 type 1 code 4: nothing listens there.
    PortUnreachable,
    /// Any other unreachable code (administratively prohibited, host unreachable, ...).
    Other(u8),
}

/// One packet as the tracker needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Tcp { src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8 },
    Udp { src: IpAddr, dst: IpAddr, sport: u16, dport: u16 },
    /// An ICMP/ICMPv6 destination unreachable sent by `from`, quoting the packet it refused.
    Unreachable { from: IpAddr, probe_src: IpAddr, probe_dst: IpAddr, proto: u8, sport: u16, dport: u16, kind: Icmp },
}

/// The kind of probe waiting for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// TCP SYN (connection attempt, or a SYN scan probe).
    Syn,
    /// TCP NULL / FIN / Xmas: a closed port answers RST, an open one stays silent.
    Stealth,
    /// A UDP datagram: a closed port answers ICMP port unreachable.
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// SYN-ACK, or any UDP datagram back.
    Open,
    /// RST, or ICMP port unreachable.
    Closed,
    /// ICMP unreachable other than "port unreachable" (a filter said no).
    Filtered,
    /// Nothing within the timeout (or evicted while waiting).
    NoAnswer,
}

/// A probe whose outcome is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Who sent the probe.
    pub prober: IpAddr,
    pub target: IpAddr,
    pub proto: u8,
    pub dport: u16,
    pub kind: ProbeKind,
    pub outcome: Outcome,
    /// Time of the probe.
    pub sent: Duration,
    /// Time of the answer (or of the timeout).
    pub at: Duration,
}

impl Resolved {
    /// The connection / probe reached a service.
    pub fn success(&self) -> bool {
        self.outcome == Outcome::Open
    }

    /// The probe hit nothing: refused, filtered, or (for a SYN) never answered — the same
    /// outcomes Zeek calls REJ / S0.
    pub fn failure(&self) -> bool {
        match self.outcome {
            Outcome::Open => false,
            Outcome::Closed | Outcome::Filtered => true,
            // A silent stealth or UDP probe means "open or filtered": no verdict.
            Outcome::NoAnswer => self.kind == ProbeKind::Syn,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct TrackerConfig {
    /// How long a probe waits for its answer.
    pub timeout: Duration,
    /// Probes waiting at once (memory bound: about 100 bytes each).
    pub max_pending: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig { timeout: Duration::from_secs(3), max_pending: 1 << 18 }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerStats {
    pub probes: u64,
    /// The same probe again while the first still waited (retransmissions).
    pub repeated: u64,
    pub open: u64,
    pub closed: u64,
    pub filtered: u64,
    pub no_answer: u64,
    /// Resolved early as no answer because `max_pending` was reached.
    pub evicted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    prober: IpAddr,
    target: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    sent: Duration,
    kind: ProbeKind,
}

/// Probes waiting for their answer, keyed by flow.
#[derive(Debug)]
pub struct ReplyTracker {
    cfg: TrackerConfig,
    pending: HashMap<Key, Pending>,
    /// Insertion order for expiry; entries already answered are skipped when reached.
    order: VecDeque<(Duration, Key)>,
    stats: TrackerStats,
}

impl ReplyTracker {
    pub fn new(cfg: TrackerConfig) -> ReplyTracker {
        let cfg = TrackerConfig { max_pending: cfg.max_pending.max(1), ..cfg };
        ReplyTracker { cfg, pending: HashMap::new(), order: VecDeque::new(), stats: TrackerStats::default() }
    }

    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Feed one packet seen at `now`; outcomes it settles are appended to `out` (probes that
    /// timed out before `now` first).
    pub fn observe(&mut self, now: Duration, seen: &Seen, out: &mut Vec<Resolved>) {
        self.expire(now, out);
        match *seen {
            Seen::Tcp { src, dst, sport, dport, flags } => {
                let f = flags & 0x3f;
                // An answer to a probe sent the other way?
                if f & (SYN | ACK) == SYN | ACK || f & RST != 0 {
                    let key = Key { prober: dst, target: src, proto: TCP, sport: dport, dport: sport };
                    let outcome = if f & RST != 0 { Outcome::Closed } else { Outcome::Open };
                    self.settle(now, key, outcome, out);
                    return;
                }
                let kind = if f & SYN != 0 && f & ACK == 0 {
                    ProbeKind::Syn
                } else if f == 0 || f == FIN || f == FIN | PSH | URG {
                    ProbeKind::Stealth
                } else {
                    return;
                };
                self.probe(now, Key { prober: src, target: dst, proto: TCP, sport, dport }, kind, out);
            }
            Seen::Udp { src, dst, sport, dport } => {
                let back = Key { prober: dst, target: src, proto: UDP, sport: dport, dport: sport };
                if self.pending.contains_key(&back) {
                    self.settle(now, back, Outcome::Open, out);
                } else {
                    self.probe(now, Key { prober: src, target: dst, proto: UDP, sport, dport }, ProbeKind::Udp, out);
                }
            }
            Seen::Unreachable { probe_src, probe_dst, proto, sport, dport, kind, .. } => {
                let key = Key { prober: probe_src, target: probe_dst, proto, sport, dport };
                let outcome = match kind {
                    Icmp::PortUnreachable => Outcome::Closed,
                    Icmp::Other(_) => Outcome::Filtered,
                };
                self.settle(now, key, outcome, out);
            }
        }
    }

    fn probe(&mut self, now: Duration, key: Key, kind: ProbeKind, out: &mut Vec<Resolved>) {
        if self.pending.contains_key(&key) {
            self.stats.repeated += 1;
            return;
        }
        while self.pending.len() >= self.cfg.max_pending {
            if !self.pop_oldest(now, out, true) {
                break;
            }
        }
        self.stats.probes += 1;
        self.pending.insert(key, Pending { sent: now, kind });
        self.order.push_back((now, key));
        if self.order.len() > 4 * self.cfg.max_pending {
            let live = &self.pending;
            self.order.retain(|(t, k)| live.get(k).is_some_and(|p| p.sent == *t));
        }
    }

    fn settle(&mut self, now: Duration, key: Key, outcome: Outcome, out: &mut Vec<Resolved>) {
        let Some(p) = self.pending.remove(&key) else { return };
        self.count(outcome);
        out.push(Resolved {
            prober: key.prober,
            target: key.target,
            proto: key.proto,
            dport: key.dport,
            kind: p.kind,
            outcome,
            sent: p.sent,
            at: now,
        });
    }

    fn count(&mut self, o: Outcome) {
        match o {
            Outcome::Open => self.stats.open += 1,
            Outcome::Closed => self.stats.closed += 1,
            Outcome::Filtered => self.stats.filtered += 1,
            Outcome::NoAnswer => self.stats.no_answer += 1,
        }
    }

    /// Resolve the oldest waiting probe as no answer. Returns false when nothing waits.
    fn pop_oldest(&mut self, now: Duration, out: &mut Vec<Resolved>, evicted: bool) -> bool {
        while let Some((t, key)) = self.order.pop_front() {
            if self.pending.get(&key).is_some_and(|p| p.sent == t) {
                let at = if evicted { now } else { t + self.cfg.timeout };
                if evicted {
                    self.stats.evicted += 1;
                }
                self.settle(at, key, Outcome::NoAnswer, out);
                return true;
            }
        }
        false
    }

    /// Probes older than the timeout at `now` get "no answer".
    pub fn expire(&mut self, now: Duration, out: &mut Vec<Resolved>) {
        while let Some(&(t, key)) = self.order.front() {
            if t + self.cfg.timeout > now {
                break;
            }
            self.order.pop_front();
            if self.pending.get(&key).is_some_and(|p| p.sent == t) {
                self.settle(t + self.cfg.timeout, key, Outcome::NoAnswer, out);
            }
        }
    }

    /// End of input: everything still waiting has no answer.
    pub fn finish(&mut self, out: &mut Vec<Resolved>) {
        while self.pop_oldest(Duration::ZERO, out, false) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }
    fn t(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
    fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Seen {
        Seen::Tcp { src: ip(src), dst: ip(dst), sport, dport, flags }
    }
    const A: &str = "10.0.0.1";
    const B: &str = "10.0.0.2";

    #[test]
    fn syn_ack_rst_and_silence() {
        let mut tr = ReplyTracker::new(TrackerConfig { timeout: t(1000), max_pending: 100 });
        let mut out = Vec::new();
        tr.observe(t(0), &tcp(A, B, 40000, 22, SYN), &mut out);
        tr.observe(t(1), &tcp(A, B, 40000, 23, SYN), &mut out);
        tr.observe(t(2), &tcp(A, B, 40000, 24, SYN), &mut out);
        tr.observe(t(3), &tcp(A, B, 40000, 22, SYN), &mut out); // retransmission
        assert!(out.is_empty());
        tr.observe(t(5), &tcp(B, A, 22, 40000, SYN | ACK), &mut out);
        tr.observe(t(6), &tcp(B, A, 23, 40000, RST | ACK), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].dport, out[0].outcome, out[0].success(), out[0].failure()), (22, Outcome::Open, true, false));
        assert_eq!((out[1].dport, out[1].outcome, out[1].failure()), (23, Outcome::Closed, true));
        assert_eq!(out[1].prober, ip(A));
        // Port 24 never answers: no answer once the timeout has passed on packet time.
        tr.observe(t(900), &tcp(A, B, 50000, 80, ACK | PSH), &mut out);
        assert_eq!(out.len(), 2, "not yet");
        tr.observe(t(1002), &tcp(A, B, 50000, 80, ACK | PSH), &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!((out[2].dport, out[2].outcome, out[2].failure(), out[2].at), (24, Outcome::NoAnswer, true, t(1002)));
        assert_eq!(tr.pending(), 0);
        let s = tr.stats();
        assert_eq!((s.probes, s.repeated, s.open, s.closed, s.no_answer), (3, 1, 1, 1, 1));
        // A late answer to an expired probe changes nothing.
        tr.observe(t(1100), &tcp(B, A, 24, 40000, RST), &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn stealth_probes_fail_only_on_rst() {
        let mut tr = ReplyTracker::new(TrackerConfig { timeout: t(100), max_pending: 100 });
        let mut out = Vec::new();
        tr.observe(t(0), &tcp(A, B, 1, 80, 0), &mut out); // NULL
        tr.observe(t(0), &tcp(A, B, 1, 81, FIN | PSH | URG), &mut out); // Xmas
        tr.observe(t(0), &tcp(A, B, 1, 82, FIN | ACK), &mut out); // not tracked
        tr.observe(t(10), &tcp(B, A, 81, 1, RST | ACK), &mut out);
        tr.finish(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].dport, out[0].kind, out[0].failure()), (81, ProbeKind::Stealth, true));
        assert_eq!((out[1].dport, out[1].outcome, out[1].failure()), (80, Outcome::NoAnswer, false), "open|filtered");
    }

    #[test]
    fn udp_reply_and_icmp_unreachable() {
        let mut tr = ReplyTracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        let udp = |s: &str, d: &str, sp, dp| Seen::Udp { src: ip(s), dst: ip(d), sport: sp, dport: dp };
        tr.observe(t(0), &udp(A, B, 5353, 53), &mut out);
        tr.observe(t(0), &udp(A, B, 5353, 161), &mut out);
        tr.observe(t(0), &tcp(A, B, 7, 8080, SYN), &mut out);
        tr.observe(t(1), &udp(B, A, 53, 5353), &mut out);
        let unreach = |proto, dport, kind| Seen::Unreachable {
            from: ip(B),
            probe_src: ip(A),
            probe_dst: ip(B),
            proto,
            sport: if proto == 17 { 5353 } else { 7 },
            dport,
            kind,
        };
        tr.observe(t(2), &unreach(17, 161, Icmp::PortUnreachable), &mut out);
        tr.observe(t(3), &unreach(6, 8080, Icmp::Other(13)), &mut out);
        let o: Vec<(u16, Outcome)> = out.iter().map(|r| (r.dport, r.outcome)).collect();
        assert_eq!(o, vec![(53, Outcome::Open), (161, Outcome::Closed), (8080, Outcome::Filtered)]);
        assert!(out.iter().skip(1).all(Resolved::failure));
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_gives_way() {
        let mut tr = ReplyTracker::new(TrackerConfig { timeout: Duration::from_secs(3600), max_pending: 1000 });
        let mut out = Vec::new();
        for i in 0..100_000u32 {
            let src = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            tr.observe(t(u64::from(i)), &Seen::Tcp { src, dst: ip(B), sport: 1, dport: 80, flags: SYN }, &mut out);
            assert!(tr.pending() <= 1000);
            assert!(tr.order.len() <= 4000);
        }
        assert_eq!(tr.stats().evicted, 99_000);
        assert_eq!(out.len(), 99_000);
        assert_eq!(out[0].prober, ip("10.0.0.0"), "oldest first");
        assert!(out.iter().all(|r| r.outcome == Outcome::NoAnswer));
    }
}
