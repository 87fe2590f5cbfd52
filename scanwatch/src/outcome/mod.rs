//! Connection outcomes from what the other direction shows: SYN-ACK = open, RST = closed, ICMP
//! unreachable = closed (port unreachable) or filtered, nothing within a timeout = no answer.
//!
//! The tracker also keeps the flows the capture showed to be connected (or refused), so a
//! SYN-ACK or RST that belongs to no flow is reported as unsolicited (backscatter, or a
//! scanner resetting what it probed), and a bare ACK / FIN-ACK outside any flow that draws a RST
//! is an ACK / Maimon scan probe — what a host's socket table tells the live XDP program.
//!
//! Used where no local socket table can say whether a probed port was open: captures replayed
//! offline (`scanwatch replay`) and a gateway that forwards other hosts' traffic. Pure: no I/O,
//! no clock — every call carries the packet's time. Bounded: at most `max_pending` probes wait
//! for an answer; when full, the oldest is resolved early as "no answer" and counted in
//! [`TrackerStats::evicted`].
pub mod overlay;

use std::collections::VecDeque;

// foldhash: seeded per process (inputs are network addresses), much cheaper than SipHash on the
// per-packet path.
use foldhash::{HashMap, HashMapExt};
use std::net::IpAddr;
use std::time::Duration;

use scanwatch_common::tcpflag::{ACK, FIN, PSH, RST, SYN, URG};

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

/// SCTP chunk types the tracker reads (RFC 9260 3.2).
pub mod sctp_chunk {
    pub const INIT: u8 = 1;
    pub const INIT_ACK: u8 = 2;
    pub const ABORT: u8 = 6;
    pub const COOKIE_ECHO: u8 = 10;
    pub const COOKIE_ACK: u8 = 11;
}

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
    /// `payload`: the segment carries data (it belongs to a connection).
    Tcp { src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8, payload: bool },
    Udp { src: IpAddr, dst: IpAddr, sport: u16, dport: u16 },
    /// An SCTP packet and the type of its first chunk (`sctp_chunk::*`).
    Sctp { src: IpAddr, dst: IpAddr, sport: u16, dport: u16, chunk: u8 },
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
    /// A bare ACK outside any known flow (ACK scan): a RST answer confirms no connection.
    Ack,
    /// A FIN-ACK outside any known flow (Maimon scan): a RST answer confirms no connection.
    Maimon,
    /// An SCTP INIT (nmap -sY): INIT-ACK = open, ABORT = closed, nothing = failed (as a SYN).
    SctpInit,
    /// An SCTP COOKIE ECHO (nmap -sZ): ABORT = closed, silence = open or filtered.
    SctpCookie,
}

/// A SYN-ACK or RST sent by `from` that answers nothing the capture showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsolicited {
    pub from: IpAddr,
    pub to: IpAddr,
    /// The port it was sent to.
    pub dport: u16,
    /// true: SYN-ACK; false: RST.
    pub synack: bool,
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
            Outcome::Closed | Outcome::Filtered => !matches!(self.kind, ProbeKind::Ack | ProbeKind::Maimon),
            // A silent stealth or UDP probe means "open or filtered": no verdict.
            Outcome::NoAnswer => matches!(self.kind, ProbeKind::Syn | ProbeKind::SctpInit),
        }
    }

    /// An ACK / FIN-ACK probe that the target answered with RST: no connection existed.
    pub fn orphan(&self) -> bool {
        matches!(self.kind, ProbeKind::Ack | ProbeKind::Maimon) && self.outcome == Outcome::Closed
    }
}

#[derive(Debug, Clone, Copy)]
pub struct TrackerConfig {
    /// How long a probe waits for its answer.
    pub timeout: Duration,
    /// Probes waiting at once (memory bound: about 100 bytes each).
    pub max_pending: usize,
    /// Connected / refused flows remembered at once (about 100 bytes each).
    pub max_flows: usize,
    /// A flow with no packet for this long is forgotten.
    pub flow_idle: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig { timeout: Duration::from_secs(3), max_pending: 1 << 18, max_flows: 1 << 18, flow_idle: Duration::from_secs(300) }
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
    pub unsolicited: u64,
}

/// An address as the tracker keys it: its 16 bytes as two words (an IPv4 address in the low
/// word), hashed and compared as two integers — the tables are on the per-packet path. The
/// family is kept in the key beside it (`v6`), so nothing of an `IpAddr` is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Addr([u64; 2]);

impl Addr {
    fn of(ip: IpAddr) -> Addr {
        match ip {
            IpAddr::V4(a) => Addr([0, u64::from(u32::from(a))]),
            IpAddr::V6(a) => {
                let v = u128::from(a);
                Addr([(v >> 64) as u64, v as u64])
            }
        }
    }

    fn ip(self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::from(((u128::from(self.0[0]) << 64) | u128::from(self.0[1])).to_be_bytes())
        } else {
            IpAddr::from((self.0[1] as u32).to_be_bytes())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    prober: Addr,
    target: Addr,
    sport: u16,
    dport: u16,
    proto: u8,
    v6: bool,
}

impl Key {
    fn new(prober: IpAddr, target: IpAddr, proto: u8, sport: u16, dport: u16) -> Key {
        Key { prober: Addr::of(prober), target: Addr::of(target), sport, dport, proto, v6: prober.is_ipv6() }
    }
}

/// A TCP flow by its two ends, lower end (address, then port) first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowId {
    lo: Addr,
    hi: Addr,
    lo_port: u16,
    hi_port: u16,
    v6: bool,
}

fn flow_id(a: IpAddr, ap: u16, b: IpAddr, bp: u16) -> FlowId {
    let (x, y) = (Addr::of(a), Addr::of(b));
    let v6 = a.is_ipv6();
    if (x, ap) <= (y, bp) {
        FlowId { lo: x, hi: y, lo_port: ap, hi_port: bp, v6 }
    } else {
        FlowId { lo: y, hi: x, lo_port: bp, hi_port: ap, v6 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowState {
    /// SYN-ACK or data seen: a connection (any RST in it is normal).
    Connected,
    /// A probe was refused by the flow's lower end (`true`) or upper end (its repeated RSTs
    /// are normal, the prober's are not).
    Refused { by_lo: bool },
}

impl FlowState {
    fn refused_by(fid: &FlowId, answerer: IpAddr) -> FlowState {
        FlowState::Refused { by_lo: Addr::of(answerer) == fid.lo }
    }
}

/// A remembered flow: its state and when it was last seen (ns of packet time).
#[derive(Debug, Clone, Copy)]
struct Flow {
    state: FlowState,
    last: u64,
}

fn ns(t: Duration) -> u64 {
    t.as_nanos().min(u128::from(u64::MAX)) as u64
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
    flows: HashMap<FlowId, Flow>,
    /// (ns queued, flow): a flow seen since it was queued goes back at its last time.
    flow_order: VecDeque<(u64, FlowId)>,
    stats: TrackerStats,
}

impl ReplyTracker {
    pub fn new(cfg: TrackerConfig) -> ReplyTracker {
        let cfg = TrackerConfig { max_pending: cfg.max_pending.max(1), max_flows: cfg.max_flows.max(1), ..cfg };
        ReplyTracker {
            cfg,
            pending: HashMap::new(),
            order: VecDeque::new(),
            flows: HashMap::new(),
            flow_order: VecDeque::new(),
            stats: TrackerStats::default(),
        }
    }

    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Feed one packet seen at `now`; outcomes it settles are appended to `out` (probes that
    /// timed out before `now` first). Returns the segment when it is an unsolicited SYN-ACK/RST.
    pub fn observe(&mut self, now: Duration, seen: &Seen, out: &mut Vec<Resolved>) -> Option<Unsolicited> {
        self.expire(now, out);
        match *seen {
            Seen::Tcp { src, dst, sport, dport, flags, payload } => {
                let f = flags & 0x3f;
                let fid = flow_id(src, sport, dst, dport);
                let back = Key::new(dst, src, TCP, dport, sport);
                if f & (SYN | ACK) == SYN | ACK || f & RST != 0 {
                    let synack = f & RST == 0;
                    // An answer to a probe sent the other way?
                    if let Some(p) = self.pending.get(&back).copied() {
                        let outcome = if synack { Outcome::Open } else { Outcome::Closed };
                        self.settle(now, back, outcome, out);
                        if synack {
                            self.remember(now, fid, FlowState::Connected);
                        } else if matches!(p.kind, ProbeKind::Syn | ProbeKind::Stealth) {
                            self.remember(now, fid, FlowState::refused_by(&fid, src));
                        }
                        // An ACK / FIN-ACK probe's RST proves there was no connection.
                        return None;
                    }
                    match self.flows.get_mut(&fid) {
                        Some(Flow { state: FlowState::Connected, last }) => {
                            *last = ns(now);
                            return None;
                        }
                        Some(Flow { state: FlowState::Refused { by_lo }, .. })
                            if Addr::of(src) == if *by_lo { fid.lo } else { fid.hi } =>
                        {
                            return None
                        }
                        _ => {}
                    }
                    self.stats.unsolicited += 1;
                    return Some(Unsolicited { from: src, to: dst, dport, synack });
                }
                if payload {
                    self.remember(now, fid, FlowState::Connected);
                    return None;
                }
                let kind = if f & SYN != 0 && f & ACK == 0 {
                    ProbeKind::Syn
                } else if f == 0 || f == FIN || f == FIN | PSH | URG {
                    ProbeKind::Stealth
                } else if f == ACK || f == FIN | ACK {
                    if let Some(Flow { state: FlowState::Connected, last }) = self.flows.get_mut(&fid) {
                        *last = ns(now);
                        return None;
                    }
                    if f == ACK {
                        ProbeKind::Ack
                    } else {
                        ProbeKind::Maimon
                    }
                } else {
                    return None;
                };
                self.probe(now, Key::new(src, dst, TCP, sport, dport), kind, out);
            }
            Seen::Udp { src, dst, sport, dport } => {
                let back = Key::new(dst, src, UDP, dport, sport);
                if self.pending.contains_key(&back) {
                    self.settle(now, back, Outcome::Open, out);
                } else {
                    self.probe(now, Key::new(src, dst, UDP, sport, dport), ProbeKind::Udp, out);
                }
            }
            Seen::Sctp { src, dst, sport, dport, chunk } => {
                let back = Key::new(dst, src, SCTP, dport, sport);
                match chunk {
                    sctp_chunk::INIT | sctp_chunk::COOKIE_ECHO => {
                        let kind = if chunk == sctp_chunk::INIT { ProbeKind::SctpInit } else { ProbeKind::SctpCookie };
                        self.probe(now, Key::new(src, dst, SCTP, sport, dport), kind, out);
                    }
                    sctp_chunk::INIT_ACK | sctp_chunk::COOKIE_ACK if self.pending.contains_key(&back) => {
                        self.settle(now, back, Outcome::Open, out);
                    }
                    sctp_chunk::ABORT if self.pending.contains_key(&back) => {
                        self.settle(now, back, Outcome::Closed, out);
                    }
                    _ => {}
                }
            }
            Seen::Unreachable { probe_src, probe_dst, proto, sport, dport, kind, .. } => {
                let key = Key::new(probe_src, probe_dst, proto, sport, dport);
                let outcome = match kind {
                    Icmp::PortUnreachable => Outcome::Closed,
                    Icmp::Other(_) => Outcome::Filtered,
                };
                self.settle(now, key, outcome, out);
            }
        }
        None
    }

    fn remember(&mut self, now: Duration, fid: FlowId, state: FlowState) {
        let now = ns(now);
        if let Some(e) = self.flows.get_mut(&fid) {
            *e = Flow { state, last: now };
            return;
        }
        // A new flow: forget idle flows first, then the oldest when full. Entries of the queue
        // are (time queued, flow); a flow seen since it was queued goes back at its last time.
        let idle = ns(self.cfg.flow_idle);
        while let Some(&(t, old)) = self.flow_order.front() {
            let full = self.flows.len() >= self.cfg.max_flows;
            if t.saturating_add(idle) > now && !full {
                break;
            }
            self.flow_order.pop_front();
            let Some(&Flow { last, .. }) = self.flows.get(&old) else { continue };
            if last.saturating_add(idle) <= now || full {
                self.flows.remove(&old);
            } else {
                self.flow_order.push_back((last, old));
            }
        }
        self.flows.insert(fid, Flow { state, last: now });
        self.flow_order.push_back((now, fid));
    }

    pub fn flows(&self) -> usize {
        self.flows.len()
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
            prober: key.prober.ip(key.v6),
            target: key.target.ip(key.v6),
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
        Seen::Tcp { src: ip(src), dst: ip(dst), sport, dport, flags, payload: false }
    }
    const A: &str = "10.0.0.1";
    const B: &str = "10.0.0.2";

    #[test]
    fn syn_ack_rst_and_silence() {
        let mut tr = ReplyTracker::new(TrackerConfig { timeout: t(1000), max_pending: 100, ..TrackerConfig::default() });
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
        let mut tr = ReplyTracker::new(TrackerConfig { timeout: t(100), max_pending: 100, ..TrackerConfig::default() });
        let mut out = Vec::new();
        tr.observe(t(0), &tcp(A, B, 1, 80, 0), &mut out); // NULL
        tr.observe(t(0), &tcp(A, B, 1, 81, FIN | PSH | URG), &mut out); // Xmas
        tr.observe(t(0), &tcp(A, B, 1, 82, PSH | ACK), &mut out); // not a probe shape
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
    fn sctp_init_ack_open_abort_closed_silence_by_kind() {
        let mut tr = ReplyTracker::new(TrackerConfig { timeout: Duration::from_secs(3), ..TrackerConfig::default() });
        let mut out = Vec::new();
        let (a, b) = (ip("198.51.100.7"), ip("192.0.2.1"));
        let sctp = |src, dst, sport, dport, chunk| Seen::Sctp { src, dst, sport, dport, chunk };
        // INIT to 80 answered INIT-ACK (open), to 81 ABORT (closed), to 82 silence (failed);
        // COOKIE ECHO to 83 ABORT (closed), to 84 silence (no verdict).
        for p in 80..=82 {
            tr.observe(t(0), &sctp(a, b, 40000, p, sctp_chunk::INIT), &mut out);
        }
        for p in 83..=84 {
            tr.observe(t(0), &sctp(a, b, 40000, p, sctp_chunk::COOKIE_ECHO), &mut out);
        }
        tr.observe(t(5), &sctp(b, a, 80, 40000, sctp_chunk::INIT_ACK), &mut out);
        tr.observe(t(6), &sctp(b, a, 81, 40000, sctp_chunk::ABORT), &mut out);
        tr.observe(t(7), &sctp(b, a, 83, 40000, sctp_chunk::ABORT), &mut out);
        // An ABORT nobody asked for settles nothing.
        tr.observe(t(8), &sctp(b, a, 99, 40000, sctp_chunk::ABORT), &mut out);
        tr.expire(t(10_000), &mut out);
        let by_port = |p: u16| out.iter().find(|r| r.dport == p).unwrap_or_else(|| panic!("port {p}: {out:?}"));
        assert!(by_port(80).success() && by_port(80).kind == ProbeKind::SctpInit);
        assert!(by_port(81).failure() && by_port(81).outcome == Outcome::Closed);
        assert!(by_port(82).failure() && by_port(82).outcome == Outcome::NoAnswer);
        assert!(by_port(83).failure() && by_port(83).kind == ProbeKind::SctpCookie);
        assert!(!by_port(84).failure() && !by_port(84).success());
        assert_eq!(out.len(), 5, "{out:?}");
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_gives_way() {
        let mut tr = ReplyTracker::new(TrackerConfig { timeout: Duration::from_secs(3600), max_pending: 1000, ..TrackerConfig::default() });
        let mut out = Vec::new();
        for i in 0..100_000u32 {
            let src = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            tr.observe(t(u64::from(i)), &Seen::Tcp { src, dst: ip(B), sport: 1, dport: 80, flags: SYN, payload: false }, &mut out);
            assert!(tr.pending() <= 1000);
            assert!(tr.order.len() <= 4000);
        }
        assert_eq!(tr.stats().evicted, 99_000);
        assert_eq!(out.len(), 99_000);
        assert_eq!(out[0].prober, ip("10.0.0.0"), "oldest first");
        assert!(out.iter().all(|r| r.outcome == Outcome::NoAnswer));
    }

    #[test]
    fn unsolicited_syn_ack_and_rst_and_orphan_acks() {
        let mut tr = ReplyTracker::new(TrackerConfig { timeout: t(500), ..TrackerConfig::default() });
        let mut out = Vec::new();
        // masscan: SYN, refused by B, then A resets the refused flow itself (live: no socket on B).
        assert_eq!(tr.observe(t(0), &tcp(A, B, 44018, 80, SYN), &mut out), None);
        assert_eq!(tr.observe(t(1), &tcp(B, A, 80, 44018, RST | ACK), &mut out), None);
        assert_eq!(tr.observe(t(2), &tcp(B, A, 80, 44018, RST | ACK), &mut out), None, "B repeating its answer is normal");
        let u = tr.observe(t(3), &tcp(A, B, 44018, 80, RST), &mut out).expect("unsolicited");
        assert_eq!((u.from, u.dport, u.synack), (ip(A), 80, false));
        // nmap -sS on an open port: SYN, SYN-ACK, the prober's kernel resets: all in one flow.
        tr.observe(t(10), &tcp(A, B, 40000, 22, SYN), &mut out);
        assert_eq!(tr.observe(t(11), &tcp(B, A, 22, 40000, SYN | ACK), &mut out), None);
        assert_eq!(tr.observe(t(12), &tcp(A, B, 40000, 22, RST), &mut out), None);
        // Backscatter: a SYN-ACK nobody asked for.
        let u = tr.observe(t(20), &tcp(B, A, 443, 5555, SYN | ACK), &mut out).expect("unsolicited");
        assert!(u.synack);
        // A connection whose start the capture missed: its data makes it known, then ACKs,
        // FIN-ACKs and RSTs inside it are normal.
        let data = Seen::Tcp { src: ip(A), dst: ip(B), sport: 50000, dport: 8080, flags: ACK | PSH, payload: true };
        assert_eq!(tr.observe(t(30), &data, &mut out), None);
        tr.observe(t(31), &tcp(B, A, 8080, 50000, ACK), &mut out);
        tr.observe(t(32), &tcp(B, A, 8080, 50000, FIN | ACK), &mut out);
        assert_eq!(tr.observe(t(33), &tcp(A, B, 50000, 8080, RST | ACK), &mut out), None);
        // ACK scan: bare ACKs outside any flow, answered by RST: orphan probes, not failures.
        tr.observe(t(40), &tcp(A, B, 41000, 25, ACK), &mut out);
        tr.observe(t(40), &tcp(A, B, 41000, 26, FIN | ACK), &mut out);
        tr.observe(t(41), &tcp(B, A, 25, 41000, RST), &mut out);
        tr.observe(t(41), &tcp(B, A, 26, 41000, RST), &mut out);
        let orphans: Vec<(u16, ProbeKind)> = out.iter().filter(|r| r.orphan()).map(|r| (r.dport, r.kind)).collect();
        assert_eq!(orphans, vec![(25, ProbeKind::Ack), (26, ProbeKind::Maimon)]);
        assert!(out.iter().filter(|r| r.orphan()).all(|r| !r.failure()));
        assert_eq!(tr.stats().unsolicited, 2);
    }

    #[test]
    fn flows_are_bounded() {
        let mut tr = ReplyTracker::new(TrackerConfig { max_flows: 500, ..TrackerConfig::default() });
        let mut out = Vec::new();
        for i in 0..50_000u32 {
            let src = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            let data = Seen::Tcp { src, dst: ip(B), sport: 1, dport: 80, flags: ACK | PSH, payload: true };
            tr.observe(t(u64::from(i)), &data, &mut out);
            assert!(tr.flows() <= 500, "{}", tr.flows());
            assert!(tr.flow_order.len() <= 1100);
        }
    }
}
