//! Per remote source state: cumulative kernel counters turned into per-window deltas, exact
//! samples, the sequential test and timing, bounded per source.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use scanwatch_common::cnt;

use super::features::{bounded_insert, note_seen, privileged_fraction, Timing};
use super::trw::{Trw, TrwParams};
use super::types::{FingerprintInfo, SourceSnapshot};
use super::window::{m, Metrics, MultiWindow};
use crate::alert::Evidence;
use crate::vocab::canonical_ip;

/// Exact ports / hosts remembered per source (samples; distinct counts use the sketches).
pub(super) const KNOWN_PORTS_CAP: usize = 256;
pub(super) const KNOWN_HOSTS_CAP: usize = 64;
pub(super) const FP_CAP: usize = 4;


/// Counters whose names are reported in `counts` (stealth and evasion).
pub(super) const DETAIL_COUNTERS: [usize; 20] = [
    cnt::NULL,
    cnt::FIN,
    cnt::XMAS,
    cnt::MAIMON,
    cnt::ACK,
    cnt::SYNFIN,
    cnt::CUSTOM_FLAGS,
    cnt::FRAG_FIRST,
    cnt::FRAG_LATER,
    cnt::SRCPORT_TRICK,
    cnt::BADSUM,
    cnt::UNSOLICITED_SYNACK,
    cnt::UNSOLICITED_RST,
    cnt::HONEYPORT,
    // Probe shapes of portless / UDP sweeps, so a ping sweep or UDP scan shows what it sent.
    cnt::UDP_CLOSED,
    cnt::ICMP_ECHO,
    cnt::ARP,
    // SCTP probe forms and other IP protocols' packets.
    cnt::SCTP_INIT,
    cnt::SCTP_COOKIE,
    cnt::IP_PROTO,
];

/// Share of a window's probes carrying a technique mark (stealth flag shapes, evasion marks)
/// from which a fan-out is shown as that technique instead of a plain horizontal/vertical scan.
pub(super) const TECHNIQUE_SHARE: f64 = 0.5;

/// Per-source state.
#[derive(Debug, Clone)]
pub(super) struct InboundEntity {
    pub ip: IpAddr,
    pub last_seen: Duration,
    /// Observed since the last tick.
    pub dirty: bool,
    pub(super) kernel_first_seen: Option<u64>,
    pub(super) prev_counts: [u64; cnt::N],
    pub(super) prev_ports_est: f64,
    pub(super) prev_hosts_est: f64,
    /// Sorted, bounded.
    pub known_ports: Vec<u16>,
    pub known_hosts: Vec<IpAddr>,
    pub windows: MultiWindow,
    pub trw: Trw,
    pub timing: Timing,
    pub fingerprints: Vec<FingerprintInfo>,
    pub blocked: bool,
    /// Counters accumulated over the entity's life (across kernel entry re-creations).
    pub lifetime: [u64; cnt::N],
    /// Name of the allowlist network containing the source.
    pub allow_net: Option<String>,
    pub last_fast_trigger: Option<Duration>,
    pub last_fanout_alert: Option<Duration>,
    /// Last kernel threshold event: (time, window ports, window hosts).
    pub(super) kernel_win: Option<(Duration, u32, u32)>,
    /// Distinct honeyports touched (bounded).
    pub(super) honeyports: Vec<u16>,
    /// When each port / host was last seen new (from the kernel's exact port sample and from
    /// events), bounded: the samples an alert lists are those of its own window.
    pub(super) port_seen: BTreeMap<u16, Duration>,
    pub(super) host_seen: BTreeMap<IpAddr, Duration>,
    /// Honeyports touched (port, IP protocol) -> when, bounded.
    pub(super) honey_seen: BTreeMap<(u16, u8), Duration>,
    /// The previous snapshot's port sample (ports in it are not new again).
    prev_sample: Vec<u16>,
    /// Since when the swept counters show a honeyport touch whose kernel event (port and
    /// protocol) has not arrived; after `HONEY_EVENT_WAIT` the touch alerts without them.
    pub(super) honey_unexplained: Option<Duration>,
    /// IP protocol numbers seen from the source so far (bit n = protocol n).
    pub(super) protocols: [u64; 4],
    /// Unsolicited RSTs the source's own SYNs still account for: each SYN answered by a SYN-ACK
    /// may be torn down by two RSTs (the scanner's own and its OS stack's), whenever they come.
    rst_budget: u64,
    /// COOKIE ECHOs the source's own SCTP INITs still account for (one each).
    init_budget: u64,
}



impl InboundEntity {
    pub fn new(ip: IpAddr, windows: &[Duration], allow_net: Option<String>) -> InboundEntity {
        InboundEntity {
            ip,
            last_seen: Duration::ZERO,
            dirty: false,
            kernel_first_seen: None,
            prev_counts: [0; cnt::N],
            prev_ports_est: 0.0,
            prev_hosts_est: 0.0,
            known_ports: Vec::new(),
            known_hosts: Vec::new(),
            windows: MultiWindow::new(windows),
            trw: Trw::default(),
            timing: Timing::default(),
            fingerprints: Vec::new(),
            blocked: false,
            lifetime: [0; cnt::N],
            allow_net,
            last_fast_trigger: None,
            last_fanout_alert: None,
            kernel_win: None,
            honeyports: Vec::new(),
            port_seen: BTreeMap::new(),
            host_seen: BTreeMap::new(),
            honey_seen: BTreeMap::new(),
            prev_sample: Vec::new(),
            honey_unexplained: None,
            protocols: [0; 4],
            rst_budget: 0,
            init_budget: 0,
        }
    }

    /// Turn a cumulative snapshot into deltas and feed the windows. Returns the delta.
    pub fn apply_snapshot(&mut self, now: Duration, s: &SourceSnapshot, trw: &TrwParams) -> Metrics {
        let reset = match self.kernel_first_seen {
            Some(f) => {
                f != s.first_seen_ns
                    || s.counts.iter().zip(self.prev_counts.iter()).any(|(a, b)| a < b)
            }
            None => true,
        };
        if reset {
            self.prev_counts = [0; cnt::N];
        }
        let mut d = [0u64; cnt::N];
        for (i, v) in d.iter_mut().enumerate() {
            *v = s.counts[i].saturating_sub(self.prev_counts[i]);
        }

        // Distinct ports: estimate deltas; a re-created entry starts from zero, so subtract the
        // ports of its exact sample that we already knew.
        let ports_est = s.distinct_ports.max(s.sample_ports.len() as f64);
        let new_ports = if reset {
            // The sample is exact; extrapolate its share of novel ports to the rest.
            let n = s.sample_ports.len() as f64;
            let novel = s.sample_ports.iter().filter(|p| self.known_ports.binary_search(p).is_err()).count() as f64;
            let frac = if n > 0.0 { novel / n } else { 1.0 };
            novel + (ports_est - n).max(0.0) * frac
        } else {
            (ports_est - self.prev_ports_est).max(0.0)
        };
        self.prev_ports_est = if reset { ports_est } else { self.prev_ports_est.max(ports_est) };

        let hosts_est = s.distinct_hosts.max(s.sample_hosts.len() as f64);
        let new_hosts = if reset && !s.sample_hosts.is_empty() {
            let known = s
                .sample_hosts
                .iter()
                .filter(|h| self.known_hosts.binary_search(&canonical_ip(**h)).is_ok())
                .count();
            self.prev_hosts_est = hosts_est;
            (hosts_est - known as f64).max(0.0)
        } else if reset {
            // Without a host sample a re-created entry counts as new hosts: this keeps slow scans
            // visible across LRU evictions; benign clients are kept out by the failure gate.
            self.prev_hosts_est = hosts_est;
            hosts_est
        } else {
            let n = (hosts_est - self.prev_hosts_est).max(0.0);
            self.prev_hosts_est = self.prev_hosts_est.max(hosts_est);
            n
        };
        for p in &s.sample_ports {
            bounded_insert(&mut self.known_ports, *p, KNOWN_PORTS_CAP);
            if reset || !self.prev_sample.contains(p) {
                note_seen(&mut self.port_seen, *p, now);
            }
        }
        self.prev_sample.clone_from(&s.sample_ports);
        for h in &s.sample_hosts {
            bounded_insert(&mut self.known_hosts, canonical_ip(*h), KNOWN_HOSTS_CAP);
            note_seen(&mut self.host_seen, canonical_ip(*h), now);
        }

        let mut mt = Metrics::default();
        // A COOKIE ECHO answers an INIT-ACK: one per INIT of the source's own is an association
        // being set up; the rest (nmap -sZ) are probes no SCTP peer sends.
        self.init_budget = self.init_budget.saturating_add(d[cnt::SCTP_INIT]);
        let own_cookies = d[cnt::SCTP_COOKIE].min(self.init_budget);
        self.init_budget -= own_cookies;
        let stray_cookies = d[cnt::SCTP_COOKIE] - own_cookies;
        let stealth =
            d[cnt::NULL] + d[cnt::XMAS] + d[cnt::MAIMON] + d[cnt::SYNFIN] + d[cnt::CUSTOM_FLAGS] + stray_cookies;
        let weak = d[cnt::FIN] + d[cnt::ACK];
        // A first fragment carries the ports of a probe whose flags the kernel cannot see; an
        // ICMP echo or an ARP who-has is the probe of a ping / ARP sweep; an SCTP INIT is a
        // port probe like a SYN.
        let probes = d[cnt::SYN]
            + stealth
            + weak
            + d[cnt::UDP]
            + d[cnt::FRAG_FIRST]
            + d[cnt::ICMP_ECHO]
            + d[cnt::ARP]
            + d[cnt::SCTP_INIT];
        // Protocol numbers not seen from this source before (an IP-protocol scan's fan-out).
        let mut new_protos = 0u32;
        for (k, w) in s.protocols.iter().enumerate() {
            new_protos += (w & !self.protocols[k]).count_ones();
            self.protocols[k] |= w;
        }
        mt.set(m::NEW_PROTOS, f64::from(new_protos));
        let failures = d[cnt::FAILED].max(d[cnt::SYN_CLOSED] + d[cnt::UDP_CLOSED]);
        let successes = d[cnt::SYN_OPEN];
        mt.set(m::PROBES, probes as f64);
        mt.set(m::FAILURES, failures as f64);
        mt.set(m::SUCCESSES, successes as f64);
        mt.set(m::NEW_PORTS, new_ports);
        mt.set(m::NEW_HOSTS, new_hosts);
        mt.set(m::NEW_PRIV_PORTS, new_ports * privileged_fraction(&self.known_ports));
        mt.set(m::STEALTH, stealth as f64);
        mt.set(m::WEAK_STEALTH, weak as f64);
        mt.set(
            m::EVASION,
            (d[cnt::FRAG_FIRST] + d[cnt::FRAG_LATER] + d[cnt::SRCPORT_TRICK] + d[cnt::BADSUM]) as f64,
        );
        mt.set(m::BADSUM, d[cnt::BADSUM] as f64);
        // Crafted probes: one per probe that carries an evasion mark (a fragmented probe counts
        // once, by its first fragment), so their share of PROBES tells an evasive scan.
        mt.set(m::RAW, (d[cnt::FRAG_FIRST] + d[cnt::SRCPORT_TRICK] + d[cnt::BADSUM]).min(probes) as f64);
        // A source's RSTs tear down its own probes (masscan resets every SYN-ACK it gets, and
        // its OS stack does too; nmap -sS's stack does): up to two per SYN of its own, whichever
        // sweep they fall in. Only the rest can be backscatter of someone spoofing this host.
        self.rst_budget = self.rst_budget.saturating_add(d[cnt::SYN].saturating_mul(2));
        let own_rst = d[cnt::UNSOLICITED_RST].min(self.rst_budget);
        self.rst_budget -= own_rst;
        mt.set(m::UNSOLICITED, (d[cnt::UNSOLICITED_SYNACK] + d[cnt::UNSOLICITED_RST] - own_rst) as f64);
        mt.set(m::HONEYPORT, d[cnt::HONEYPORT] as f64);
        for (i, v) in d.iter().enumerate() {
            mt.set(m::cnt(i), *v as f64);
        }

        if probes > 0 {
            self.timing.observe(now);
        }
        self.trw.observe(trw, failures, successes);
        self.windows.add(now, &mt);
        for (l, v) in self.lifetime.iter_mut().zip(d.iter()) {
            *l = l.saturating_add(*v);
        }
        for fp in &s.fingerprints {
            self.add_fingerprint(fp);
        }
        self.kernel_first_seen = Some(s.first_seen_ns);
        self.prev_counts = s.counts;
        self.blocked = s.blocked;
        self.last_seen = now;
        self.dirty = true;
        mt
    }

    /// Cache hints for what a snapshot of this source reads and writes (nothing changes), in
    /// three steps of the pointer chain, each issued some observations after the one before:
    /// 0 the entity itself, 1 its port list and window ring headers, 2 the rings' buckets.
    pub(super) fn prefetch(&self, level: u8) {
        match level {
            0 => super::prefetch_bytes(self, std::mem::size_of::<Self>()),
            1 => {
                super::prefetch(self.known_ports.as_ptr());
                self.windows.prefetch(false);
            }
            _ => self.windows.prefetch(true),
        }
    }

    pub(super) fn add_fingerprint(&mut self, fp: &FingerprintInfo) {
        if let Some(slot) = self.fingerprints.iter_mut().find(|f| f.hash == fp.hash) {
            *slot = fp.clone();
            return;
        }
        if self.fingerprints.len() >= FP_CAP {
            self.fingerprints.remove(0);
        }
        self.fingerprints.push(fp.clone());
    }

    /// The most telling fingerprint: a scanner tool if any, else the latest.
    pub fn best_fingerprint(&self) -> Option<&FingerprintInfo> {
        self.fingerprints
            .iter()
            .rev()
            .find(|f| f.is_scanner_tool())
            .or_else(|| self.fingerprints.last())
    }

    /// Failed probes over the entity's life (the failure counter, or closed-port answers when
    /// those say more).
    fn lifetime_failures(&self) -> u64 {
        self.lifetime[cnt::FAILED].max(self.lifetime[cnt::SYN_CLOSED] + self.lifetime[cnt::UDP_CLOSED])
    }

    /// Known outcomes (failures + successes) over the entity's life.
    pub fn lifetime_outcomes(&self) -> u64 {
        self.lifetime_failures() + self.lifetime[cnt::SYN_OPEN]
    }

    /// Lifetime failure ratio (None if no outcome known).
    pub fn lifetime_fail_ratio(&self) -> Option<f64> {
        let f = self.lifetime_failures();
        let s = self.lifetime[cnt::SYN_OPEN];
        (f + s > 0).then(|| f as f64 / (f + s) as f64)
    }

}

/// The evidence counters of one window's totals (non-zero only).
pub(super) fn window_detail(t: &Metrics) -> BTreeMap<Evidence, u64> {
    DETAIL_COUNTERS
        .iter()
        .map(|i| (*i, t.get(m::cnt(*i)).round() as u64))
        .filter(|(_, v)| *v > 0)
        .map(|(i, v)| (Evidence::counter(i), v))
        .collect()
}

