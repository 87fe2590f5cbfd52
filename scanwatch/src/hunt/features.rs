//! Hunt features: what one conn.log record means for its originator, and the bounded per-source
//! state that mirrors the kernel's per-source entry (`SrcState`) so the real engine can be fed
//! the same [`SourceSnapshot`]s the live agent sweeps from the kernel.
//!
//! # Classification (one record → probe shape and outcome)
//!
//! | proto | `conn_state` (and `history`) | probe (counter) | outcome | classic failed |
//! |---|---|---|---|---|
//! | tcp | `S0` (SYN, no reply) | SYN | failed | yes |
//! | tcp | `REJ` (SYN answered by RST) | SYN | failed | yes |
//! | tcp | `RSTOS0` (SYN then originator RST, no SYN-ACK) | SYN | failed | yes |
//! | tcp | `SH` (SYN then originator FIN, no SYN-ACK) | SYN | failed | yes |
//! | tcp | `RSTO` (established, originator reset: also a half-open SYN scan finding an open port) | SYN | succeeded (the port answered) | yes |
//! | tcp | `S1` `SF` `S2` `S3` (established) | SYN | succeeded | no |
//! | tcp | `RSTR` (responder reset) | SYN | succeeded if the responder's SYN-ACK (`h`) was seen or the history is unknown, failed if the history shows `S` without `h` | no |
//! | tcp | `RSTRH` `SHR` (responder only, no SYN from the originator) | none | — | no |
//! | tcp | `OTH` (midstream) / unset: originator `Q` (SYN+FIN) | SYNFIN (stealth) | failed if the responder reset | no |
//! | tcp | `OTH` / unset: first letter `F`, no originator data | FIN (weak stealth) | failed if the responder reset | no |
//! | tcp | `OTH` / unset: history only originator `A`, no data, ≤ 2 packets | ACK (weak stealth) | unknown | no |
//! | tcp | unset state, history `S…`: `h` seen → succeeded, else failed | SYN | as said | — |
//! | tcp | other `OTH` (long-lived connections picked up midstream) | none | — | no |
//! | udp | `S0` (no reply) | UDP | failed | yes |
//! | udp | `SF` `S1`… (a reply was seen) | UDP | succeeded | no |
//! | udp | `SHR` (responder only) | none | — | no |
//! | udp | `OTH` / unset | UDP | from `resp_pkts`: > 0 succeeded, 0 failed, unset unknown | no |
//! | icmp | echo request (type 8, v6 128) | ICMP_ECHO (host probe, no port) | from `resp_pkts` (> 0 succeeded, 0 failed) | as the state says |
//! | icmp | any other type (errors, replies) | none | — | as the state says |
//!
//! Any probe whose originator history has `C` (bad checksum) also counts BADSUM (evasion), and a
//! TCP or UDP probe to a configured honeyport counts HONEYPORT (and raises the engine's honeyport
//! event). "Classic failed" is exactly the T1046 hunt's set (`S0 REJ RSTO RSTOS0 SH`), shown in the
//! table beside this module's own view. `no_handshake` counts TCP attempts whose SYN never got a
//! SYN-ACK (`S` without `h`).
//!
//! # Outcomes count once per first contact
//!
//! As in the threshold random walk (Jung et al. 2004), an outcome is counted only for a source's
//! first contact with a (destination, port, protocol) within [`PAIR_TTL`]: a host's day of
//! connections to the same few servers adds one success per server, not thousands, so a slow
//! scan's failures hidden in that day are not diluted, and a client retrying a dead server counts
//! one failure, not one per retry. Successes of every protocol are reported through `SYN_OPEN`
//! (the engine's success counter), failures through `FAILED` (with `SYN_CLOSED` for TCP).
//!
//! # Bounds
//!
//! At most `max_sources` sources (default `xdp.max_sources`, as the kernel map); when full, the
//! least recently seen eighth is evicted (as the engine evicts entities) after its pending
//! changes are swept. First contacts live in a fixed 2-way table of [`PAIR_SLOTS`] entries.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use scanwatch_common::{addr_fold32, cnt, hll_slot, port_hll_slot, HLL_REGS, PORT_HLL_REGS, SAMPLE_PORTS};

use super::zeek::{addr_to_ip, Addr, ConnState, Proto, Record};
use crate::alert::{AlertKind, Severity};
use crate::detect::SourceSnapshot;

/// How long a (source, destination, port, protocol) stays "known" after its last connection.
pub const PAIR_TTL_MINUTES: u32 = 24 * 60;
pub const PAIR_TTL: std::time::Duration = std::time::Duration::from_secs(PAIR_TTL_MINUTES as u64 * 60);
/// First-contact table entries (2-way sets; 8 bytes each: 16 MiB).
pub const PAIR_SLOTS: usize = 1 << 21;
/// Destinations sampled per source (exact; shown in alerts).
pub const SAMPLE_HOSTS: usize = 16;

/// What a record contributes to its originator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Unknown,
    Failed,
    Succeeded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Not a probe by the originator (midstream, responder-only, ICMP errors, other protocols).
    None,
    /// A port probe (TCP, UDP): port and host fan-out.
    Port,
    /// A portless probe (ICMP echo): host fan-out only.
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub probe: ProbeKind,
    /// Shape counter (`cnt::SYN`, `UDP`, `ICMP_ECHO`, `FIN`, `ACK`, `SYNFIN`).
    pub shape: usize,
    pub outcome: Outcome,
    pub badsum: bool,
    /// In the classic T1046 failed set (S0, REJ, RSTO, RSTOS0, SH).
    pub classic_failed: bool,
    /// A TCP SYN never answered by a SYN-ACK.
    pub no_handshake: bool,
}

const NOT_A_PROBE: Class = Class {
    probe: ProbeKind::None,
    shape: cnt::PACKETS,
    outcome: Outcome::Unknown,
    badsum: false,
    classic_failed: false,
    no_handshake: false,
};

/// Classify one record (see the module table).
pub fn classify(r: &Record) -> Class {
    use ConnState as S;
    let h = &r.history;
    let classic_failed = matches!(r.state, S::S0 | S::Rej | S::Rsto | S::Rstos0 | S::Sh);
    let base = Class { classic_failed, badsum: h.orig(b'C'), ..NOT_A_PROBE };
    let from_pkts = match r.resp_pkts {
        Some(0) => Outcome::Failed,
        Some(_) => Outcome::Succeeded,
        None => Outcome::Unknown,
    };
    match r.proto {
        Proto::Tcp => {
            let syn = |outcome| Class {
                probe: ProbeKind::Port,
                shape: cnt::SYN,
                outcome,
                no_handshake: !h.is_empty() && h.orig(b'S') && !h.resp(b'H'),
                ..base
            };
            match r.state {
                S::S0 | S::Rej | S::Rstos0 | S::Sh => syn(Outcome::Failed),
                S::Rsto | S::S1 | S::SF | S::S2 | S::S3 => syn(Outcome::Succeeded),
                S::Rstr => {
                    if !h.is_empty() && h.orig(b'S') && !h.resp(b'H') {
                        syn(Outcome::Failed)
                    } else {
                        syn(Outcome::Succeeded)
                    }
                }
                S::Rstrh | S::Shr => base,
                S::Oth | S::Unknown => {
                    let rst = h.resp(b'R');
                    let fail_if_reset = if rst { Outcome::Failed } else { Outcome::Unknown };
                    let data = h.orig(b'D') || h.resp(b'D');
                    if h.orig(b'S') && r.state == S::Unknown {
                        syn(if h.resp(b'H') { Outcome::Succeeded } else { Outcome::Failed })
                    } else if h.orig(b'Q') {
                        Class { probe: ProbeKind::Port, shape: cnt::SYNFIN, outcome: fail_if_reset, ..base }
                    } else if h.first == b'F' && !h.orig(b'D') && !h.orig(b'S') {
                        Class { probe: ProbeKind::Port, shape: cnt::FIN, outcome: fail_if_reset, ..base }
                    } else if h.first == b'A'
                        && !data
                        && !h.orig(b'S')
                        && !h.orig(b'F')
                        && !h.resp(b'H')
                        && r.orig_pkts.is_some_and(|p| p <= 2)
                    {
                        Class { probe: ProbeKind::Port, shape: cnt::ACK, ..base }
                    } else {
                        base
                    }
                }
            }
        }
        Proto::Udp => {
            let udp = |outcome| Class { probe: ProbeKind::Port, shape: cnt::UDP, outcome, ..base };
            match r.state {
                S::S0 => udp(Outcome::Failed),
                S::Shr | S::Rstrh => base,
                S::Oth | S::Unknown => udp(from_pkts),
                _ => udp(Outcome::Succeeded),
            }
        }
        Proto::Icmp => {
            let echo = if is_v4(&r.orig_h) { 8 } else { 128 };
            if r.orig_p == echo {
                Class { probe: ProbeKind::Host, shape: cnt::ICMP_ECHO, outcome: from_pkts, ..base }
            } else {
                base
            }
        }
        Proto::Other => base,
    }
}

fn is_v4(a: &Addr) -> bool {
    a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff
}

/// What the timeline needs of a record, with its classification and first-contact flags (56
/// bytes where the record and its class take 96: the reorder buffer holds up to 262,144 of
/// them). Computed on the collector thread (the first-contact table is keyed by minutes and
/// tolerates the log's end-time order), so the timeline only applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    pub ts_us: i64,
    pub orig_h: Addr,
    pub resp_h: Addr,
    pub resp_p: u16,
    pub proto: Proto,
    /// [`Class::shape`] (a `cnt` index).
    shape: u8,
    pub probe: ProbeKind,
    pub outcome: Outcome,
    pub badsum: bool,
    pub classic_failed: bool,
    pub no_handshake: bool,
    /// First contact of (destination, port, protocol) within [`PAIR_TTL`].
    pub first: bool,
    /// The destination is new for the source within [`PAIR_TTL`].
    pub new_host: bool,
    /// The (port, protocol) is new for the source within [`PAIR_TTL`].
    pub new_port: bool,
}

// Shapes are `cnt` indices, stored in a byte.
const _: () = assert!(cnt::N <= 256);

impl Classified {
    pub fn new(r: &Record, c: Class, first: bool, new_host: bool, new_port: bool) -> Classified {
        Classified {
            ts_us: r.ts_us,
            orig_h: r.orig_h,
            resp_h: r.resp_h,
            resp_p: r.resp_p,
            proto: r.proto,
            shape: c.shape as u8,
            probe: c.probe,
            outcome: c.outcome,
            badsum: c.badsum,
            classic_failed: c.classic_failed,
            no_handshake: c.no_handshake,
            first,
            new_host,
            new_port,
        }
    }

    /// The record's classification.
    pub fn class(&self) -> Class {
        Class {
            probe: self.probe,
            shape: usize::from(self.shape),
            outcome: self.outcome,
            badsum: self.badsum,
            classic_failed: self.classic_failed,
            no_handshake: self.no_handshake,
        }
    }
}

/// Classification plus the first-contact memory.
#[derive(Debug)]
pub struct Classifier {
    pairs: PairTable,
}

impl Classifier {
    pub fn new(pair_slots: usize) -> Classifier {
        Classifier { pairs: PairTable::new(pair_slots) }
    }

    /// Classify a batch in order (the same as one [`Classifier::classify`] after the other).
    pub fn classify_all(&mut self, records: Vec<Record>) -> Vec<Classified> {
        let mut out = Vec::with_capacity(records.len());
        const AHEAD: usize = 8;
        for (i, r) in records.iter().enumerate() {
            // The first-contact table is far bigger than the caches: ask for the sets of a
            // record a few ahead while this one is classified.
            if let Some(n) = records.get(i + AHEAD) {
                self.pairs.prefetch(&n.orig_h, &n.resp_h, n.resp_p, n.proto.number());
            }
            out.push(self.classify(*r));
        }
        out
    }

    pub fn classify(&mut self, r: Record) -> Classified {
        let c = classify(&r);
        if c.probe == ProbeKind::None {
            return Classified::new(&r, c, false, false, false);
        }
        let port = if c.probe == ProbeKind::Host { 0 } else { r.resp_p };
        let minute = (r.ts_us.max(0) / 60_000_000).min(i64::from(u32::MAX)) as u32;
        let proto = r.proto.number();
        let first = self.pairs.first_contact(&r.orig_h, &r.resp_h, port, proto, minute);
        // A repeat of a known (destination, port) is neither a new host nor a new port.
        let new_host = first && self.pairs.new_host(&r.orig_h, &r.resp_h, minute);
        let new_port = first && c.probe == ProbeKind::Port && self.pairs.new_port(&r.orig_h, port, proto, minute);
        Classified::new(&r, c, first, new_host, new_port)
    }
}

// ---------------------------------------------------------------------------------------------
// Sketches
// ---------------------------------------------------------------------------------------------

pub use crate::sketch::IncHll;

/// The kernel's fold of a destination address (host sketch item).
pub fn dst_fold(a: &Addr) -> u32 {
    let w0 = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let w1 = u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    addr_fold32(&[w0, w1])
}

// ---------------------------------------------------------------------------------------------
// Per-source state
// ---------------------------------------------------------------------------------------------

/// The first distinct values seen, at most `N`, in order, inline.
#[derive(Debug, Clone, Copy)]
pub struct Sample<T, const N: usize> {
    items: [T; N],
    len: u8,
}

impl<T: Copy + Default + PartialEq, const N: usize> Sample<T, N> {
    const FITS: () = assert!(N <= u8::MAX as usize);

    pub fn new() -> Self {
        let () = Self::FITS;
        Sample { items: [T::default(); N], len: 0 }
    }

    pub fn as_slice(&self) -> &[T] {
        &self.items[..usize::from(self.len)]
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Cache hints for what [`Sample::insert`] reads first (nothing changes).
    pub fn prefetch(&self) {
        crate::detect::prefetch(&self.len);
        crate::detect::prefetch(self.items.as_ptr());
    }

    /// Add `v` if it is new and there is room; true when added.
    pub fn insert(&mut self, v: T) -> bool {
        let n = usize::from(self.len);
        if n >= N || self.items[..n].contains(&v) {
            return false;
        }
        self.items[n] = v;
        self.len += 1;
        true
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> Default for Sample<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Table features of one source over its life in the state table.
#[derive(Debug, Clone, Default)]
pub struct SourceFeatures {
    pub first_ts_us: i64,
    pub last_ts_us: i64,
    pub conns: u64,
    /// Connections per [`Proto::ALL`].
    pub per_proto: [u64; 4],
    /// Probes (records with a probe shape).
    pub probes: u64,
    pub classic_failed: u64,
    pub no_handshake: u64,
    pub first_contacts: u64,
    pub first_failed: u64,
    pub first_succeeded: u64,
    pub alerts: u32,
    pub max_severity: Option<Severity>,
    /// Sorted, distinct.
    pub alert_kinds: Vec<AlertKind>,
}

/// One source: the kernel `SrcState` equivalents plus the table features.
#[derive(Debug, Clone)]
pub struct SourceState {
    pub addr: Addr,
    /// Unique per incarnation (the engine tells a re-created entry by a changed value).
    pub incarnation: u64,
    pub counts: [u32; cnt::N],
    pub ports: IncHll<PORT_HLL_REGS>,
    pub hosts: IncHll<HLL_REGS>,
    /// The first ports and destinations, inline (read for every probe: no separate allocation
    /// to fetch).
    pub sample_ports: Sample<u16, SAMPLE_PORTS>,
    pub sample_hosts: Sample<Addr, SAMPLE_HOSTS>,
    /// Destinations / (port, protocol)s new within [`PAIR_TTL`] (exact up to table collisions):
    /// the distinct counts the engine gets. The HyperLogLog sketches (kernel hashing) serve the
    /// table; their estimates move in steps of several items per register at thousands of
    /// destinations, which would read as bursts of new hosts.
    pub novel_hosts: u32,
    pub novel_ports: u32,
    /// Engine-visible change since the last sweep.
    pub dirty: bool,
    /// The samples grew since the last snapshot (the engine's known ports/hosts are cumulative,
    /// so unchanged samples are not sent again).
    samples_changed: bool,
    pub f: SourceFeatures,
}

impl SourceState {
    fn new(addr: Addr, ts_us: i64, incarnation: u64) -> SourceState {
        SourceState {
            addr,
            incarnation,
            counts: [0; cnt::N],
            ports: IncHll::default(),
            hosts: IncHll::default(),
            sample_ports: Sample::new(),
            sample_hosts: Sample::new(),
            novel_hosts: 0,
            novel_ports: 0,
            dirty: false,
            samples_changed: true,
            f: SourceFeatures { first_ts_us: ts_us, last_ts_us: ts_us, ..SourceFeatures::default() },
        }
    }

    /// Lifetime distinct destination ports, as the agent computes them from a kernel entry.
    pub fn distinct_ports(&self) -> f64 {
        let n = self.sample_ports.len();
        if n < SAMPLE_PORTS {
            n as f64
        } else {
            self.ports.estimate().max(SAMPLE_PORTS as f64)
        }
    }

    pub fn distinct_hosts(&self) -> f64 {
        self.hosts.estimate()
    }

    /// The engine's view: what the agent would read from the kernel map. The samples are only
    /// included when they grew since the last snapshot (the engine accumulates them).
    pub fn snapshot(&mut self) -> SourceSnapshot {
        let with_samples = std::mem::replace(&mut self.samples_changed, false);
        let mut counts = [0u64; cnt::N];
        for (c, v) in counts.iter_mut().zip(self.counts.iter()) {
            *c = u64::from(*v);
        }
        SourceSnapshot {
            ip: addr_to_ip(&self.addr),
            first_seen_ns: self.incarnation,
            last_seen_ns: (self.f.last_ts_us.max(0) as u64).saturating_mul(1000),
            counts,
            distinct_ports: f64::from(self.novel_ports).max(self.sample_ports.len() as f64),
            distinct_hosts: f64::from(self.novel_hosts),
            sample_ports: if with_samples { self.sample_ports.as_slice().to_vec() } else { Vec::new() },
            sample_hosts: if with_samples { self.sample_hosts.as_slice().iter().map(addr_to_ip).collect() } else { Vec::new() },
            fingerprints: Vec::new(),
            blocked: false,
            protocols: [0; 4],
        }
    }

    fn bump(&mut self, c: usize) {
        if let Some(v) = self.counts.get_mut(c) {
            *v = v.saturating_add(1);
        }
    }

    /// Apply one classified record. `first` says whether it is the source's first contact with
    /// its (destination, port, protocol). `sketches`: keep the HyperLogLog sketches (only the
    /// feature table reads them; the engine gets the exact novel counts). Returns true when the
    /// engine must see a new snapshot.
    pub fn apply(&mut self, x: &Classified, honeyport: bool, sketches: bool) -> bool {
        let (r, c, first) = (x, &x.class(), x.first);
        let f = &mut self.f;
        f.conns += 1;
        f.last_ts_us = f.last_ts_us.max(r.ts_us);
        f.first_ts_us = f.first_ts_us.min(r.ts_us);
        let pi = match r.proto {
            Proto::Tcp => 0,
            Proto::Udp => 1,
            Proto::Icmp => 2,
            Proto::Other => 3,
        };
        f.per_proto[pi] += 1;
        f.classic_failed += u64::from(c.classic_failed);
        f.no_handshake += u64::from(c.no_handshake);
        if c.probe == ProbeKind::None {
            return false;
        }
        f.probes += 1;
        let mut dirty = false;
        self.bump(cnt::PACKETS);
        self.bump(c.shape);
        if c.shape != cnt::SYN && c.shape != cnt::UDP && c.shape != cnt::ICMP_ECHO {
            // Stealth shapes are detector inputs of their own.
            dirty = true;
        }
        if c.badsum {
            self.bump(cnt::BADSUM);
            dirty = true;
        }
        if honeyport {
            self.bump(cnt::HONEYPORT);
            dirty = true;
        }
        if x.new_host {
            self.novel_hosts = self.novel_hosts.saturating_add(1);
            dirty = true;
        }
        if x.new_port {
            self.novel_ports = self.novel_ports.saturating_add(1);
            dirty = true;
        }
        if c.probe == ProbeKind::Port {
            if sketches {
                self.ports.set(port_hll_slot(u32::from(r.resp_p)));
            }
            if self.sample_ports.insert(r.resp_p) {
                self.samples_changed = true;
                dirty = true;
            }
        }
        if sketches {
            self.hosts.set(hll_slot(dst_fold(&r.resp_h)));
        }
        if self.sample_hosts.insert(r.resp_h) {
            self.samples_changed = true;
            dirty = true;
        }
        if first {
            let f = &mut self.f;
            f.first_contacts += 1;
            match c.outcome {
                Outcome::Failed => {
                    f.first_failed += 1;
                    self.bump(cnt::FAILED);
                    if c.shape == cnt::SYN {
                        self.bump(cnt::SYN_CLOSED);
                    }
                    dirty = true;
                }
                Outcome::Succeeded => {
                    f.first_succeeded += 1;
                    self.bump(cnt::SYN_OPEN);
                    dirty = true;
                }
                Outcome::Unknown => {}
            }
        }
        self.dirty |= dirty;
        dirty
    }

    pub fn note_alert(&mut self, kind: AlertKind, severity: Severity) {
        let f = &mut self.f;
        f.alerts = f.alerts.saturating_add(1);
        f.max_severity = Some(f.max_severity.map_or(severity, |s| s.max(severity)));
        if let Err(pos) = f.alert_kinds.binary_search(&kind) {
            f.alert_kinds.insert(pos, kind);
        }
    }
}

/// Hasher for 128-bit keys (addresses): one multiply-fold, no SipHash.
#[derive(Default, Clone, Copy)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 = fold(self.0 ^ u64::from_le_bytes(w), 0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = fold(fold(v as u64, 0x9e37_79b9_7f4a_7c15) ^ (v >> 64) as u64, 0xc2b2_ae3d_27d4_eb4f);
    }
}

#[inline]
fn fold(a: u64, k: u64) -> u64 {
    let m = u128::from(a) * u128::from(k ^ 0xa076_1d64_78bd_642f);
    (m as u64) ^ ((m >> 64) as u64)
}

pub type AddrMap<V> = HashMap<u128, V, BuildHasherDefault<AddrHasher>>;

/// Bounded table of per-source states.
#[derive(Debug)]
pub struct SourceTable {
    map: AddrMap<Box<SourceState>>,
    cap: usize,
    next_incarnation: u64,
    /// Keys of sources with an engine-visible change since the last sweep.
    dirty: Vec<u128>,
    pub evicted: u64,
}

impl SourceTable {
    pub fn new(cap: usize) -> SourceTable {
        SourceTable {
            map: AddrMap::default(),
            cap: cap.max(8),
            next_incarnation: 1,
            dirty: Vec::new(),
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get_mut(&mut self, addr: &Addr) -> Option<&mut SourceState> {
        self.map.get_mut(&u128::from_be_bytes(*addr)).map(|b| &mut **b)
    }

    /// The state of `addr`, created if missing. When the table is full, the least recently seen
    /// eighth is first removed and returned in `evicted` (the caller sweeps their pending changes
    /// and keeps their table rows).
    pub fn entry(&mut self, addr: &Addr, ts_us: i64, evicted: &mut Vec<Box<SourceState>>) -> &mut SourceState {
        let key = u128::from_be_bytes(*addr);
        if self.map.len() < self.cap {
            // Not full: one lookup, nothing to evict.
            let next = &mut self.next_incarnation;
            return self.map.entry(key).or_insert_with(|| {
                let inc = (*next).max((ts_us.max(0) as u64).saturating_mul(1000));
                *next = inc.saturating_add(1);
                Box::new(SourceState::new(*addr, ts_us, inc))
            });
        }
        if !self.map.contains_key(&key) {
            if self.map.len() >= self.cap {
                let mut ages: Vec<(i64, u128)> = self.map.iter().map(|(k, v)| (v.f.last_ts_us, *k)).collect();
                let n = (self.cap / 8).max(1).min(ages.len());
                ages.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
                for (_, k) in ages.iter().take(n) {
                    if let Some(s) = self.map.remove(k) {
                        evicted.push(s);
                    }
                }
                self.dirty.retain(|k| self.map.contains_key(k));
                self.evicted += n as u64;
            }
            // Unique and increasing, at least the creation time in ns (as the kernel's stamp).
            let inc = self.next_incarnation.max((ts_us.max(0) as u64).saturating_mul(1000));
            // Saturating: an absurd timestamp (year 586,000+) must not overflow (found by the fuzzer).
            self.next_incarnation = inc.saturating_add(1);
            self.map.insert(key, Box::new(SourceState::new(*addr, ts_us, inc)));
        }
        self.map.entry(key).or_insert_with(|| Box::new(SourceState::new(*addr, ts_us, 0)))
    }

    /// Cache hints for the state of `addr` that [`SourceState::apply`] reads and writes
    /// (nothing changes; the sketches only the table reads are left out).
    pub fn prefetch(&self, addr: &Addr) {
        if let Some(s) = self.map.get(&u128::from_be_bytes(*addr)) {
            crate::detect::prefetch_bytes(&s.f, std::mem::size_of::<SourceFeatures>());
            crate::detect::prefetch_bytes(&s.counts, std::mem::size_of_val(&s.counts));
            crate::detect::prefetch(&s.dirty);
            crate::detect::prefetch(&s.novel_hosts);
            s.sample_ports.prefetch();
            s.sample_hosts.prefetch();
        }
    }

    /// Note that `addr`'s state changed in a way the engine must see at the next sweep.
    pub fn mark_dirty(&mut self, addr: &Addr) {
        self.dirty.push(u128::from_be_bytes(*addr));
    }

    /// Keys of the sources changed since the last sweep (a key may be listed twice; see
    /// [`SourceTable::snapshot_dirty`]).
    pub fn take_dirty_keys(&mut self) -> Vec<u128> {
        std::mem::take(&mut self.dirty)
    }

    /// The snapshot of the source under `key` if it changed since its last one (then no longer
    /// changed).
    pub fn snapshot_dirty(&mut self, key: u128) -> Option<SourceSnapshot> {
        let s = self.map.get_mut(&key)?;
        if !s.dirty {
            return None;
        }
        s.dirty = false;
        Some(s.snapshot())
    }

    pub fn note_alert(&mut self, ip: IpAddr, kind: AlertKind, severity: Severity) {
        let addr = super::zeek::ip_to_addr(ip);
        if let Some(s) = self.map.get_mut(&u128::from_be_bytes(addr)) {
            s.note_alert(kind, severity);
        }
    }

    /// Every state, sorted by address (for the final table).
    pub fn drain_sorted(&mut self) -> Vec<Box<SourceState>> {
        let mut v: Vec<(u128, Box<SourceState>)> = self.map.drain().collect();
        v.sort_unstable_by_key(|(k, _)| *k);
        v.into_iter().map(|(_, s)| s).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &SourceState> {
        self.map.values().map(|b| &**b)
    }
}

/// Fixed-size memory of (source, destination, port, protocol) first contacts: 2-way sets of
/// (32-bit tag, last-seen minute). A lost entry (set overflow) makes a later repeat count as a
/// first contact again; a tag collision (1 in 2^32 per set) hides one first contact.
#[derive(Debug)]
pub struct PairTable {
    slots: SlotMem,
    mask: usize,
}

/// Zeroed `u64` slots. A table of at least [`HUGE_PAGE`] bytes is mapped on its own, aligned to
/// and advised for transparent huge pages: every lookup lands on a random line of the 16 MiB
/// table, and with 4 KiB pages nearly every one also missed the TLB (a page walk per lookup).
/// Contents and results are those of a plain vector; only the page size differs (and the
/// kernel may still use small pages).
#[derive(Debug)]
enum SlotMem {
    Heap(Vec<u64>),
    Mapped { map: *mut libc::c_void, map_len: usize, slots: *mut u64, len: usize },
}

const HUGE_PAGE: usize = 2 << 20;

// SAFETY: `Mapped` owns its mapping exclusively (like a Vec owns its buffer); it is only reached
// through `&self` / `&mut self`.
unsafe impl Send for SlotMem {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for SlotMem {}

impl SlotMem {
    fn zeroed(n: usize) -> SlotMem {
        let bytes = n * std::mem::size_of::<u64>();
        if bytes < HUGE_PAGE {
            return SlotMem::Heap(vec![0; n]);
        }
        let map_len = bytes + HUGE_PAGE;
        // SAFETY: a fresh private anonymous mapping (zero-filled by the kernel), checked below;
        // the slots are the `bytes` after its first 2 MiB boundary, inside the `map_len` mapped.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if map == libc::MAP_FAILED {
                return SlotMem::Heap(vec![0; n]);
            }
            let pad = (HUGE_PAGE - (map as usize) % HUGE_PAGE) % HUGE_PAGE;
            let slots = map.cast::<u8>().add(pad);
            // A hint: without transparent huge pages the table works the same on small pages.
            let _ = libc::madvise(slots.cast(), bytes, libc::MADV_HUGEPAGE);
            SlotMem::Mapped { map, map_len, slots: slots.cast(), len: n }
        }
    }
}

impl std::ops::Deref for SlotMem {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        match self {
            SlotMem::Heap(v) => v,
            // SAFETY: `len` zero-initialised u64s inside the live mapping (see `zeroed`).
            SlotMem::Mapped { slots, len, .. } => unsafe { std::slice::from_raw_parts(*slots, *len) },
        }
    }
}

impl std::ops::DerefMut for SlotMem {
    fn deref_mut(&mut self) -> &mut [u64] {
        match self {
            SlotMem::Heap(v) => v,
            // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
            SlotMem::Mapped { slots, len, .. } => unsafe { std::slice::from_raw_parts_mut(*slots, *len) },
        }
    }
}

impl Drop for SlotMem {
    fn drop(&mut self) {
        if let SlotMem::Mapped { map, map_len, .. } = *self {
            // SAFETY: the mapping made in `zeroed`, unmapped once.
            unsafe {
                libc::munmap(map, map_len);
            }
        }
    }
}

impl PairTable {
    pub fn new(slots: usize) -> PairTable {
        let n = slots.next_power_of_two().max(2);
        PairTable { slots: SlotMem::zeroed(n), mask: (n / 2) - 1 }
    }

    /// Is this the first contact of the pair within [`PAIR_TTL`]? Refreshes the pair either way.
    pub fn first_contact(&mut self, src: &Addr, dst: &Addr, port: u16, proto: u8, minute: u32) -> bool {
        self.first(0, src, dst, port, proto, minute)
    }

    /// Is `dst` new for `src` within [`PAIR_TTL`]?
    pub fn new_host(&mut self, src: &Addr, dst: &Addr, minute: u32) -> bool {
        self.first(1, src, dst, 0, 0, minute)
    }

    /// Is (`port`, `proto`) new for `src` within [`PAIR_TTL`]?
    pub fn new_port(&mut self, src: &Addr, port: u16, proto: u8, minute: u32) -> bool {
        self.first(2, src, &[0; 16], port, proto, minute)
    }

    #[inline]
    fn hash(domain: u64, src: &Addr, dst: &Addr, port: u16, proto: u8) -> u64 {
        let s = u128::from_be_bytes(*src);
        let d = u128::from_be_bytes(*dst);
        let key = domain << 24 | u64::from(port) << 8 | u64::from(proto);
        let mut h = fold(s as u64 ^ key, 0x9e37_79b9_7f4a_7c15);
        h = fold(h ^ (s >> 64) as u64, 0xc2b2_ae3d_27d4_eb4f);
        h = fold(h ^ d as u64, 0x1656_67b1_9e37_79f9);
        fold(h ^ (d >> 64) as u64, 0x27d4_eb2f_1656_67c5)
    }

    /// Start loading the set of the pair's first-contact entry into the cache (a hint: the table
    /// is not changed). A probe's port; ICMP's host probe uses port 0, which this misses at worst.
    /// The sets of the new-host and new-port entries too (looked up after a first contact).
    pub fn prefetch(&self, src: &Addr, dst: &Addr, port: u16, proto: u8) {
        for h in [
            Self::hash(0, src, dst, port, proto),
            Self::hash(1, src, dst, 0, 0),
            Self::hash(2, src, &[0; 16], port, proto),
        ] {
            let set = (h as usize & self.mask) * 2;
            if let Some(e) = self.slots.get(set) {
                crate::detect::prefetch(e);
            }
        }
    }

    fn first(&mut self, domain: u64, src: &Addr, dst: &Addr, port: u16, proto: u8, minute: u32) -> bool {
        let h = Self::hash(domain, src, dst, port, proto);
        let tag = ((h >> 32) as u32) | 1;
        let set = (h as usize & self.mask) * 2;
        let minute = minute.max(1);
        let mut oldest = set;
        for i in set..set + 2 {
            let e = self.slots[i];
            let (etag, emin) = ((e >> 32) as u32, e as u32);
            if etag == tag {
                // Records are not strictly in time order: a pair is known within the TTL either way.
                let known = minute.abs_diff(emin) < PAIR_TTL_MINUTES;
                self.slots[i] = u64::from(tag) << 32 | u64::from(minute.max(emin));
                return !known;
            }
            if (e as u32) < (self.slots[oldest] as u32) {
                oldest = i;
            }
        }
        self.slots[oldest] = u64::from(tag) << 32 | u64::from(minute);
        true
    }
}


#[cfg(test)]
mod tests {
    use super::super::zeek::{parse_addr, History};
    use super::*;

    fn rec(proto: Proto, state: ConnState, history: &str, resp_pkts: Option<u32>) -> Record {
        Record {
            ts_us: 0,
            orig_h: parse_addr(b"10.0.0.1").expect("addr"),
            resp_h: parse_addr(b"10.0.0.2").expect("addr"),
            orig_p: if proto == Proto::Icmp { 8 } else { 40000 },
            resp_p: if proto == Proto::Icmp { 0 } else { 22 },
            proto,
            state,
            history: History::parse(history.as_bytes()),
            orig_pkts: Some(1),
            resp_pkts,
        }
    }

    #[test]
    fn classification_table() {
        use ConnState as S;
        use Outcome::*;
        type Case<'a> = (Proto, S, &'a str, Option<u32>, ProbeKind, usize, Outcome, bool);
        let cases: &[Case<'_>] = &[
            (Proto::Tcp, S::S0, "S", Some(0), ProbeKind::Port, cnt::SYN, Failed, true),
            (Proto::Tcp, S::Rej, "Sr", Some(1), ProbeKind::Port, cnt::SYN, Failed, true),
            (Proto::Tcp, S::Rstos0, "SR", Some(0), ProbeKind::Port, cnt::SYN, Failed, true),
            (Proto::Tcp, S::Sh, "SF", Some(0), ProbeKind::Port, cnt::SYN, Failed, true),
            (Proto::Tcp, S::Rsto, "ShR", Some(1), ProbeKind::Port, cnt::SYN, Succeeded, true),
            (Proto::Tcp, S::SF, "ShADadFf", Some(5), ProbeKind::Port, cnt::SYN, Succeeded, false),
            (Proto::Tcp, S::Rstr, "ShADar", Some(3), ProbeKind::Port, cnt::SYN, Succeeded, false),
            (Proto::Tcp, S::Rstr, "Sr", Some(1), ProbeKind::Port, cnt::SYN, Failed, false),
            (Proto::Tcp, S::Shr, "hf", Some(2), ProbeKind::None, cnt::PACKETS, Unknown, false),
            (Proto::Tcp, S::Oth, "F", Some(0), ProbeKind::Port, cnt::FIN, Unknown, false),
            (Proto::Tcp, S::Oth, "Fr", Some(1), ProbeKind::Port, cnt::FIN, Failed, false),
            (Proto::Tcp, S::Oth, "A", Some(0), ProbeKind::Port, cnt::ACK, Unknown, false),
            (Proto::Tcp, S::Oth, "DdAa", Some(9), ProbeKind::None, cnt::PACKETS, Unknown, false),
            (Proto::Tcp, S::Unknown, "Sh", None, ProbeKind::Port, cnt::SYN, Succeeded, false),
            (Proto::Udp, S::S0, "D", Some(0), ProbeKind::Port, cnt::UDP, Failed, true),
            (Proto::Udp, S::SF, "Dd", Some(1), ProbeKind::Port, cnt::UDP, Succeeded, false),
            (Proto::Udp, S::Shr, "d", Some(1), ProbeKind::None, cnt::PACKETS, Unknown, false),
            (Proto::Icmp, S::Oth, "", Some(1), ProbeKind::Host, cnt::ICMP_ECHO, Succeeded, false),
            (Proto::Icmp, S::Oth, "", Some(0), ProbeKind::Host, cnt::ICMP_ECHO, Failed, false),
        ];
        for (proto, state, hist, rp, probe, shape, outcome, classic) in cases {
            let c = classify(&rec(*proto, *state, hist, *rp));
            let what = format!("{proto:?} {state:?} {hist:?}");
            assert_eq!(c.probe, *probe, "{what}");
            if *probe != ProbeKind::None {
                assert_eq!(c.shape, *shape, "{what}");
                assert_eq!(c.outcome, *outcome, "{what}");
            }
            assert_eq!(c.classic_failed, *classic, "{what}");
        }
        let c = classify(&rec(Proto::Tcp, ConnState::S0, "SC", Some(0)));
        assert!(c.badsum && c.no_handshake);
        let mut unreach = rec(Proto::Icmp, ConnState::Oth, "", Some(0));
        unreach.orig_p = 3;
        assert_eq!(classify(&unreach).probe, ProbeKind::None);
    }

    #[test]
    fn incremental_hll_matches_the_agents_estimate() {
        let mut h = IncHll::<PORT_HLL_REGS>::default();
        for p in 0..5000u32 {
            h.set(port_hll_slot(p));
            if p % 997 == 0 {
                let a = h.estimate();
                let b = crate::sketch::hll_estimate(h.regs());
                assert!((a - b).abs() < 1e-6 * b.max(1.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn first_contacts_repeat_and_expire() {
        let mut t = PairTable::new(1024);
        let a = parse_addr(b"10.0.0.1").expect("addr");
        let b = parse_addr(b"10.0.0.2").expect("addr");
        assert!(t.first_contact(&a, &b, 80, 6, 100));
        assert!(!t.first_contact(&a, &b, 80, 6, 101));
        assert!(t.first_contact(&a, &b, 81, 6, 101));
        assert!(t.first_contact(&a, &b, 80, 17, 101));
        assert!(t.first_contact(&b, &a, 80, 6, 101));
        // Known while active; a first contact again a day after the last connection.
        assert!(!t.first_contact(&a, &b, 80, 6, 101 + PAIR_TTL_MINUTES - 1));
        assert!(t.first_contact(&a, &b, 80, 6, 101 + 3 * PAIR_TTL_MINUTES));
    }

    #[test]
    fn source_table_evicts_least_recent_eighth() {
        let mut t = SourceTable::new(16);
        let mut ev = Vec::new();
        for i in 0..16u8 {
            let a = parse_addr(format!("10.0.1.{i}").as_bytes()).expect("addr");
            t.entry(&a, i64::from(i), &mut ev).f.last_ts_us = i64::from(i);
        }
        assert!(ev.is_empty());
        let a = parse_addr(b"10.0.2.1").expect("addr");
        t.entry(&a, 100, &mut ev);
        assert_eq!(ev.len(), 2);
        assert_eq!(t.len(), 15);
        let gone: Vec<String> = ev.iter().map(|s| addr_to_ip(&s.addr).to_string()).collect();
        assert!(gone.contains(&"10.0.1.0".to_string()) && gone.contains(&"10.0.1.1".to_string()), "{gone:?}");
    }
}
