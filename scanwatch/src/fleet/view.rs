//! The fleet view: every agent's records about a source merged into one fleet-wide source, fed
//! to the same detection engine the agents run (pure: no I/O; driven by the records' event time).
//!
//! Per source and agent the view keeps the counters it has already accounted for, so repeated
//! cumulative summaries add only their increase, a held first-contact probe followed by the
//! agent's summary (which replays that probe into its counters) is not counted twice, and a
//! re-created kernel entry (new `first_seen`) counts afresh. Fleet-wide:
//! * counters are the sum over agents (monotone),
//! * distinct destinations are the sum of the agents' distinct-host estimates (agents watch
//!   different hosts; an agent that only holds probes counts its distinct held destinations),
//! * distinct ports are the larger of the union of the agents' port samples and the largest
//!   agent estimate.
//!
//! Sources with a single held probe in the whole fleet go to the engine's held-probe input
//! (distributed scans of one probe per source); every other source is a snapshot.
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use scanwatch_common::cnt;

use super::record::{fp_hash_from_hex, Batch, Held, Record, Summary};
use super::Family;
use crate::alert::{Alert, AlertKind};
use crate::config::Config;
use crate::vocab::canonical_ip;
use crate::detect::{Engine, FingerprintInfo, HeldProbe, SourceSnapshot};

/// Agents remembered per source (further agents' records still count in the totals).
const MAX_AGENTS_PER_SOURCE: usize = 1024;
/// Exact destination ports kept per source.
const MAX_PORTS: usize = 256;
const MAX_FPS: usize = 4;
const MAX_DSTS: usize = 16;
/// Distinct agent ids interned (beyond: records are rejected with reason `too_many_agents`).
const MAX_AGENT_IDS: usize = 1 << 20;
/// Agents named in a fleet alert.
pub const AGENTS_OUT: usize = 64;
/// The engine's periodic work runs at most this often (event time).
const TICK_EVERY: Duration = Duration::from_secs(1);

/// A fleet alert: the engine's alert plus the agents that saw the activity.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetAlert {
    pub alert: Alert,
    /// `site/agent`, sorted, at most [`AGENTS_OUT`].
    pub agents: Vec<String>,
    pub agent_count: usize,
}

impl FleetAlert {
    /// The alert JSON plus `agents` and `agent_count`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.alert).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("agents".into(), self.agents.clone().into());
            o.insert("agent_count".into(), self.agent_count.into());
        }
        v
    }
}

/// One agent's view of one source (compact: a fleet has many of these).
#[derive(Debug, Clone)]
struct AgentState {
    /// `first_seen_ns` of the agent's kernel entry the counters below belong to (0: held only).
    epoch: u64,
    /// Counters already added to the fleet totals for this epoch.
    prev: [u32; cnt::N],
    /// Held probes already counted: (port or 0, proto).
    held: [(u16, u8); HELD_KEYS],
    n_held: u8,
    /// Distinct destinations this agent contributes.
    hosts: f32,
    ports_est: f32,
}

/// Held probes remembered per (source, agent) for de-duplication.
const HELD_KEYS: usize = 4;

#[derive(Debug, Clone)]
struct FleetSource {
    first_seen: Duration,
    last_seen: Duration,
    /// Agents with state for this source (ids; bounded by MAX_AGENTS_PER_SOURCE).
    agents: Vec<u32>,
    overflow_agents: u64,
    total: [u64; cnt::N],
    ports: Vec<u16>,
    ports_est: f64,
    hosts_est: f64,
    dsts: Vec<IpAddr>,
    fps: Vec<FingerprintInfo>,
    dirty: bool,
    /// The single held probe when that is all the fleet knows about the source.
    only_held: Option<HeldProbe>,
}

/// A fast keyed hash for the view's maps (source addresses are attacker-chosen: the seed is
/// random per view, so colliding addresses cannot be precomputed).
#[derive(Clone)]
pub struct SeededHasher(u64);

impl std::hash::Hasher for SeededHasher {
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }
    fn write_u8(&mut self, x: u8) {
        self.write_u64(u64::from(x));
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

#[derive(Clone)]
pub struct Seeded(u64);

impl Default for Seeded {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        Seeded(h.finish())
    }
}

impl std::hash::BuildHasher for Seeded {
    type Hasher = SeededHasher;
    fn build_hasher(&self) -> SeededHasher {
        SeededHasher(self.0)
    }
}

type FastMap<K, V> = HashMap<K, V, Seeded>;

/// Counters of a view (and the correlator's rejections).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ViewStats {
    pub batches: u64,
    pub records: u64,
    pub held: u64,
    pub summaries: u64,
    pub agent_alerts: u64,
    pub duplicate_held: u64,
    pub sources: usize,
    pub sources_evicted: u64,
    pub agent_overflow: u64,
    pub alerts: u64,
}

/// One shard's fleet view and engine.
#[derive(Debug)]
pub struct FleetView {
    engine: Engine,
    family: Family,
    sources: FastMap<IpAddr, FleetSource>,
    /// (source, agent) → that agent's state for the source.
    pairs: FastMap<(IpAddr, u32), AgentState>,
    dirty: Vec<IpAddr>,
    agent_ids: HashMap<String, u32>,
    agent_names: Vec<String>,
    max_sources: usize,
    idle: Duration,
    now: Duration,
    last_tick: Duration,
    pub stats: ViewStats,
}

/// The correlator's engine configuration: the agent's, with the fleet's destination thresholds.
pub fn engine_config(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    c.detect.host_thresholds = cfg.fleet.host_thresholds.clone();
    c
}

impl FleetView {
    pub fn new(cfg: &Config, family: Family, name: String) -> FleetView {
        let ecfg = engine_config(cfg);
        let mut engine = Engine::new(&ecfg, name);
        engine.set_wall_clock(Duration::ZERO, UNIX_EPOCH);
        FleetView {
            engine,
            family,
            sources: FastMap::default(),
            pairs: FastMap::default(),
            dirty: Vec::new(),
            agent_ids: HashMap::new(),
            agent_names: Vec::new(),
            max_sources: ecfg.detect.max_inbound_entities.saturating_mul(2).max(1024),
            idle: ecfg.detect.entity_idle,
            now: Duration::ZERO,
            last_tick: Duration::ZERO,
            stats: ViewStats::default(),
        }
    }

    /// Move event time forward (idle periods: the correlator advances it with the wall clock).
    pub fn advance_to(&mut self, t: Duration) {
        if t > self.now {
            self.now = t;
        }
    }

    /// Event time of the newest record seen (Unix time).
    pub fn now(&self) -> Duration {
        self.now
    }

    fn agent_id(&mut self, site: &str, agent: &str) -> Option<u32> {
        let mut key = String::with_capacity(site.len() + agent.len() + 1);
        key.push_str(site);
        key.push('/');
        key.push_str(agent);
        if let Some(i) = self.agent_ids.get(&key) {
            return Some(*i);
        }
        if self.agent_names.len() >= MAX_AGENT_IDS {
            return None;
        }
        let i = self.agent_names.len() as u32;
        self.agent_names.push(key.clone());
        self.agent_ids.insert(key, i);
        Some(i)
    }

    /// Merge one decoded batch. Returns false when the batch's agent could not be admitted.
    pub fn ingest(&mut self, b: &Batch<'_>) -> bool {
        let Some(agent) = self.agent_id(b.site, b.agent) else { return false };
        self.stats.batches += 1;
        for r in &b.records {
            self.stats.records += 1;
            let t = Duration::from_nanos(r.time_ns());
            if t > self.now {
                self.now = t;
            }
            match r {
                Record::Held(h) => self.held(agent, h, t),
                Record::Summary(s) => self.summary(agent, s, t),
                Record::Alert { .. } => self.stats.agent_alerts += 1,
            }
        }
        true
    }

    /// The source's entry (created, evicting the oldest eighth when full) and the agent's state
    /// for it (None when the source already has MAX_AGENTS_PER_SOURCE agents).
    fn entry(&mut self, ip: IpAddr, agent: u32, t: Duration) -> (&mut FleetSource, Option<&mut AgentState>) {
        if !self.sources.contains_key(&ip) && self.sources.len() >= self.max_sources {
            self.stats.sources_evicted += evict_oldest(&mut self.sources, self.max_sources);
            let sources = &self.sources;
            self.pairs.retain(|(ip, _), _| sources.contains_key(ip));
        }
        let s = self.sources.entry(ip).or_insert_with(|| FleetSource {
            first_seen: t,
            last_seen: t,
            agents: Vec::new(),
            overflow_agents: 0,
            total: [0; cnt::N],
            ports: Vec::new(),
            ports_est: 0.0,
            hosts_est: 0.0,
            dsts: Vec::new(),
            fps: Vec::new(),
            dirty: false,
            only_held: None,
        });
        if t > s.last_seen {
            s.last_seen = t;
        }
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(ip);
        }
        let a = match self.pairs.entry((ip, agent)) {
            std::collections::hash_map::Entry::Occupied(o) => Some(o.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => {
                if s.agents.len() >= MAX_AGENTS_PER_SOURCE {
                    s.overflow_agents += 1;
                    None
                } else {
                    s.agents.push(agent);
                    Some(v.insert(AgentState {
                        epoch: 0,
                        prev: [0; cnt::N],
                        held: [(0, 0); HELD_KEYS],
                        n_held: 0,
                        hosts: 0.0,
                        ports_est: 0.0,
                    }))
                }
            }
        };
        (s, a)
    }

    fn held(&mut self, agent: u32, h: &Held, t: Duration) {
        self.stats.held += 1;
        let ip = canonical_ip(h.src);
        let (s, a) = self.entry(ip, agent, t);
        let Some(a) = a else { return };
        let key = (h.dport.unwrap_or(0), h.proto);
        let n = usize::from(a.n_held).min(HELD_KEYS);
        if a.held[..n].contains(&key) {
            self.stats.duplicate_held += 1;
            return;
        }
        if n < HELD_KEYS {
            a.held[n] = key;
        }
        a.n_held = a.n_held.saturating_add(1);
        let mut c = [0u32; cnt::N];
        c[cnt::PACKETS] = 1;
        match (h.proto, h.dport) {
            (6, Some(_)) => {
                c[cnt::SYN] = 1;
                if h.failed {
                    c[cnt::SYN_CLOSED] = 1;
                } else {
                    c[cnt::SYN_OPEN] = 1;
                }
            }
            (17, Some(_)) => {
                c[cnt::UDP] = 1;
                if h.failed {
                    c[cnt::UDP_CLOSED] = 1;
                }
            }
            _ => c[cnt::ICMP_ECHO] = 1,
        }
        if h.failed {
            c[cnt::FAILED] = 1;
        }
        // Held-only agents contribute their distinct held destinations (at least this host).
        let old_hosts = a.hosts;
        if a.epoch == 0 {
            a.hosts = f32::from(a.n_held.max(1));
        }
        let new_hosts = a.hosts;
        for (p, v) in a.prev.iter_mut().zip(c.iter()) {
            *p = p.saturating_add(*v);
        }
        for (tot, v) in s.total.iter_mut().zip(c.iter()) {
            *tot += u64::from(*v);
        }
        s.hosts_est += f64::from(new_hosts - old_hosts);
        if let Some(p) = h.dport {
            insert_sorted(&mut s.ports, p, MAX_PORTS);
        }
        if let Some(d) = h.dst {
            insert_sorted(&mut s.dsts, canonical_ip(d), MAX_DSTS);
        }
        s.ports_est = s.ports_est.max(s.ports.len() as f64);
        let only = s.agents.len() == 1 && s.total[cnt::PACKETS] == 1 && a.epoch == 0;
        s.only_held = only.then_some(HeldProbe { ip, dport: h.dport, dst: h.dst, failed: h.failed });
    }

    fn summary(&mut self, agent: u32, m: &Summary<'_>, t: Duration) {
        self.stats.summaries += 1;
        let ip = canonical_ip(m.src);
        let (s, a) = self.entry(ip, agent, t);
        s.only_held = None;
        let Some(a) = a else { return };
        let counts = &m.counts;
        let same_entry = a.epoch == 0 || a.epoch == m.first_seen_ns;
        let went_back = counts.iter().zip(a.prev.iter()).any(|(c, p)| c < p);
        let fresh = !same_entry || (went_back && a.epoch != 0);
        for ((c, p), tot) in counts.iter().zip(a.prev.iter_mut()).zip(s.total.iter_mut()) {
            let d = if fresh { *c } else { c.saturating_sub(*p) };
            *tot = tot.saturating_add(u64::from(d));
            *p = if fresh { *c } else { (*p).max(*c) };
        }
        a.epoch = m.first_seen_ns.max(1);
        let old_hosts = a.hosts;
        a.hosts = a.hosts.max(m.distinct_hosts).max(1.0);
        a.ports_est = a.ports_est.max(m.distinct_ports);
        s.hosts_est += f64::from(a.hosts - old_hosts);
        for p in m.ports() {
            insert_sorted(&mut s.ports, *p, MAX_PORTS);
        }
        s.ports_est = s.ports_est.max(f64::from(a.ports_est)).max(s.ports.len() as f64);
        for f in m.fps() {
            if s.fps.iter().any(|x| fp_hash_from_hex(&x.hash) == f.hash) {
                continue;
            }
            if s.fps.len() >= MAX_FPS {
                s.fps.remove(0);
            }
            s.fps.push(FingerprintInfo {
                text: f.text.to_string(),
                hash: format!("{:08x}", f.hash),
                tool_hint: scanwatch_common::tool::name(u32::from(f.tool)).to_string(),
                initial_ttl: f.initial_ttl,
            });
        }
    }

    /// Feed every source changed since the last call to the engine (and run its periodic work
    /// once per second of event time); returns the alerts this view's family reports.
    pub fn flush(&mut self) -> Vec<FleetAlert> {
        let now = self.now;
        let mut raw = Vec::new();
        let mut held = Vec::new();
        let dirty = std::mem::take(&mut self.dirty);
        for ip in dirty {
            let Some(s) = self.sources.get_mut(&ip) else { continue };
            s.dirty = false;
            if let Some(h) = s.only_held {
                held.push(h);
                continue;
            }
            let snap = SourceSnapshot {
                ip,
                first_seen_ns: s.first_seen.as_nanos() as u64,
                last_seen_ns: s.last_seen.as_nanos() as u64,
                counts: s.total,
                distinct_ports: s.ports_est,
                distinct_hosts: s.hosts_est,
                sample_ports: s.ports.iter().take(16).copied().collect(),
                sample_hosts: s.dsts.clone(),
                fingerprints: s.fps.clone(),
                blocked: false,
                protocols: [0; 4],
            };
            raw.extend(self.engine.observe_source(now, &snap));
        }
        if !held.is_empty() {
            raw.extend(self.engine.observe_held(now, &held));
        }
        if now.saturating_sub(self.last_tick) >= TICK_EVERY {
            self.last_tick = now;
            raw.extend(self.engine.tick(now));
            let idle = self.idle;
            let before = self.sources.len();
            self.sources.retain(|_, s| now.saturating_sub(s.last_seen) < idle);
            if self.sources.len() < before {
                self.stats.sources_evicted += (before - self.sources.len()) as u64;
                let sources = &self.sources;
                self.pairs.retain(|(ip, _), _| sources.contains_key(ip));
            }
        }
        self.stats.sources = self.sources.len();
        let out: Vec<FleetAlert> =
            raw.into_iter().filter(|a| self.reports(a.kind)).map(|a| self.fleet_alert(a)).collect();
        self.stats.alerts += out.len() as u64;
        out
    }

    /// Close every open incident (the correlator stopping or giving up its shard): each ends
    /// with its final line, which counts the whole incident.
    pub fn close(&mut self) -> Vec<FleetAlert> {
        let mut out = self.flush();
        let raw = self.engine.close_all(self.now);
        out.extend(raw.into_iter().filter(|a| self.reports(a.kind)).map(|a| self.fleet_alert(a)));
        out
    }

    /// Source shards report per-source findings; the site (destination) shards the
    /// multi-source ones, which only they see whole.
    fn reports(&self, k: AlertKind) -> bool {
        let multi = matches!(k, AlertKind::DistributedScan | AlertKind::DecoyCluster);
        match self.family {
            Family::Src => !multi,
            Family::Dst => multi || k == AlertKind::Notice,
        }
    }

    fn fleet_alert(&self, alert: Alert) -> FleetAlert {
        let mut ids: HashSet<u32> = HashSet::new();
        let mut overflow = 0u64;
        let ips = alert.source.ip.iter().chain(alert.source.related.iter());
        for ip in ips.copied() {
            if let Some(s) = self.sources.get(&canonical_ip(ip)) {
                ids.extend(s.agents.iter().copied());
                overflow += s.overflow_agents;
            }
        }
        let mut agents: Vec<String> =
            ids.iter().filter_map(|i| self.agent_names.get(*i as usize).cloned()).collect();
        agents.sort();
        let agent_count = agents.len() + overflow as usize;
        agents.truncate(AGENTS_OUT);
        FleetAlert { alert, agents, agent_count }
    }
}

fn insert_sorted<T: Ord + Copy>(v: &mut Vec<T>, x: T, cap: usize) {
    if let Err(i) = v.binary_search(&x) {
        if v.len() < cap {
            v.insert(i, x);
        }
    }
}

fn evict_oldest(m: &mut FastMap<IpAddr, FleetSource>, cap: usize) -> u64 {
    let mut ages: Vec<(Duration, IpAddr)> = m.iter().map(|(k, v)| (v.last_seen, *k)).collect();
    let n = (cap / 8).max(1).min(ages.len());
    if n == 0 {
        return 0;
    }
    ages.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
    for (_, k) in ages.iter().take(n) {
        m.remove(k);
    }
    n as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::record::{decode, Encoder, Fp, MAX_FPS, MAX_PORTS};

    const T0: u64 = 1_800_000_000_000_000_000;

    fn cfg(extra: &str) -> Config {
        Config::from_toml_str(extra).expect("config")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn held(src: &str, port: u16, failed: bool, t_ms: u64) -> Held {
        Held { time_ns: T0 + t_ms * 1_000_000, src: ip(src), dst: None, dport: Some(port), proto: 6, failed, fp_hash: 0 }
    }

    struct Sum {
        src: IpAddr,
        t_ms: u64,
        syn: u32,
        closed: u32,
        open: u32,
        ports: Vec<u16>,
        fp: Option<(u32, u8)>,
    }

    fn summary(e: &mut Encoder, s: &Sum) {
        let mut counts = [0u32; cnt::N];
        counts[cnt::PACKETS] = s.syn;
        counts[cnt::SYN] = s.syn;
        counts[cnt::SYN_CLOSED] = s.closed;
        counts[cnt::FAILED] = s.closed;
        counts[cnt::SYN_OPEN] = s.open;
        let mut ports = [0u16; MAX_PORTS];
        for (d, p) in ports.iter_mut().zip(s.ports.iter()) {
            *d = *p;
        }
        let mut fps = [Fp::default(); MAX_FPS];
        let n_fp = if let Some((hash, tool)) = s.fp {
            fps[0] = Fp { hash, initial_ttl: 64, tool, text: "v4:ttl=50/64:df=0:win=1024:mss=1460:ws=-:opts=mss" };
            1
        } else {
            0
        };
        e.summary(&Summary {
            time_ns: T0 + s.t_ms * 1_000_000,
            src: s.src,
            first_seen_ns: 7,
            counts,
            distinct_ports: s.ports.len() as f32,
            distinct_hosts: 1.0,
            n_ports: s.ports.len().min(MAX_PORTS) as u8,
            ports,
            n_fp,
            fps,
        });
    }

    fn feed(v: &mut FleetView, bytes: Vec<u8>) -> Vec<FleetAlert> {
        let b = decode(&bytes).expect("valid batch");
        assert!(v.ingest(&b));
        v.flush()
    }

    /// Kinds of the new findings (escalation updates of an open one have `update: true`).
    fn kinds(a: &[FleetAlert]) -> Vec<AlertKind> {
        a.iter().filter(|a| !a.alert.update).map(|a| a.alert.kind).collect()
    }

    /// Perimeter playbook, phase 1: one source, one probe to each of 120 hosts (one agent each)
    /// within 60 s → one horizontal_scan from the source shard (the sequential test decides
    /// early, on failed probes; escalations follow as the count grows), naming the agents.
    #[test]
    fn one_probe_per_host_across_120_agents_is_one_horizontal_scan() {
        let c = cfg("");
        let mut src = FleetView::new(&c, Family::Src, "fleet".into());
        let mut alerts = Vec::new();
        for i in 0..120u64 {
            let mut e = Encoder::new(&format!("web-{i:03}"), "dc1");
            e.held(&held("198.51.100.9", 443, true, i * 400));
            alerts.extend(feed(&mut src, e.finish()));
        }
        alerts.extend(src.close());
        // One incident: its first line, then the final line counting the whole sweep.
        assert!(kinds(&alerts).iter().all(|k| *k == AlertKind::HorizontalScan), "{alerts:#?}");
        assert!(alerts.iter().all(|a| a.alert.alert_id == alerts[0].alert.alert_id), "one actor");
        let a = alerts.last().expect("alerts");
        assert_eq!(a.alert.source.ip, Some(ip("198.51.100.9")));
        assert!(a.alert.targets.host_count >= 64, "{:?}", a.alert.targets);
        assert_eq!(a.agent_count as u64, a.alert.targets.host_count, "every host is one agent");
        assert_eq!(a.agents.len(), AGENTS_OUT);
        assert!(a.agents[0].starts_with("dc1/web-"), "{:?}", a.agents);
        assert_eq!(a.to_json()["agent_count"], a.agent_count);
    }

    fn ping(src: &str, t_ms: u64) -> Held {
        Held { time_ns: T0 + t_ms * 1_000_000, src: ip(src), dst: None, dport: None, proto: 1, failed: false, fp_hash: 0 }
    }

    /// Without outcomes (ICMP echo: no failure signal, no sequential decision) the fleet
    /// threshold itself decides: 100 distinct destinations within 60 s alert, 99 do not.
    #[test]
    fn ping_sweep_alerts_at_100_destinations_in_60s() {
        let c = cfg("");
        for (hosts, expect) in [(99u64, 0usize), (120, 1)] {
            let mut src = FleetView::new(&c, Family::Src, "fleet".into());
            let mut alerts = Vec::new();
            for i in 0..hosts {
                let mut e = Encoder::new(&format!("web-{i:03}"), "dc1");
                e.held(&ping("198.51.100.77", i * 400));
                alerts.extend(feed(&mut src, e.finish()));
            }
            let first: Vec<&FleetAlert> = alerts.iter().filter(|a| !a.alert.update).collect();
            assert_eq!(first.len(), expect, "{hosts} hosts: {alerts:#?}");
            if let Some(a) = first.first() {
                assert_eq!(a.alert.kind, AlertKind::HorizontalScan);
                assert_eq!(a.alert.window, "60s");
                assert!(a.alert.targets.host_count >= 100, "{:?}", a.alert.targets);
                assert_eq!(a.agent_count, 100);
            }
        }
    }

    /// A busy client succeeding on 150 hosts raises nothing.
    #[test]
    fn successful_clients_across_hosts_raise_nothing() {
        let c = cfg("");
        let mut src = FleetView::new(&c, Family::Src, "fleet".into());
        let mut dst = FleetView::new(&c, Family::Dst, "fleet".into());
        let mut alerts = Vec::new();
        for i in 0..150u64 {
            let mut e = Encoder::new(&format!("web-{i:03}"), "dc1");
            e.held(&held("10.9.0.5", 443, false, i * 100));
            summary(&mut e, &Sum { src: ip("10.9.0.6"), t_ms: i * 100, syn: 20, closed: 0, open: 20, ports: vec![443, 80], fp: None });
            let bytes = e.finish();
            alerts.extend(feed(&mut src, bytes.clone()));
            alerts.extend(feed(&mut dst, bytes));
        }
        assert!(alerts.is_empty(), "{alerts:#?}");
    }

    /// The lab case: four hosts, two probes each (the first held, the second admitting the
    /// source at that agent), with the correlator's thresholds at 4 destinations.
    #[test]
    fn two_probes_on_each_of_four_hosts_is_one_horizontal_scan() {
        let c = cfg("[fleet]\nhost_thresholds = [4, 4, 8, 8]");
        let mut src = FleetView::new(&c, Family::Src, "fleet".into());
        let mut alerts = Vec::new();
        for (i, host) in ["h1", "h2", "h3", "h4"].iter().enumerate() {
            let t = i as u64 * 300;
            let mut e = Encoder::new(host, "lab");
            e.held(&held("10.78.9.2", 22, true, t));
            alerts.extend(feed(&mut src, e.finish()));
            let mut e = Encoder::new(host, "lab");
            // The summary replays the held probe: two SYNs, the second's outcome known.
            summary(&mut e, &Sum { src: ip("10.78.9.2"), t_ms: t + 50, syn: 2, closed: 1, open: 0, ports: vec![22, 25], fp: Some((0xabcd, 1)) });
            alerts.extend(feed(&mut src, e.finish()));
        }
        assert_eq!(kinds(&alerts), vec![AlertKind::HorizontalScan], "{alerts:#?}");
        assert_eq!(alerts[0].agents, vec!["lab/h1", "lab/h2", "lab/h3", "lab/h4"]);
        assert_eq!(alerts[0].alert.targets.host_count, 4);
        // The held probe and the summary replaying it count once per host: 8 probes in all.
        assert_eq!(src.sources[&ip("10.78.9.2")].total[cnt::SYN], 8);
    }

    /// 45 one-probe sources spread over four hosts, each host seeing ~11: the site shard raises
    /// one distributed_scan; the source shards nothing.
    #[test]
    fn one_probe_sources_across_hosts_are_one_distributed_scan() {
        let c = cfg("");
        let mut src = FleetView::new(&c, Family::Src, "fleet".into());
        let mut dst = FleetView::new(&c, Family::Dst, "fleet".into());
        let (mut a_src, mut a_dst) = (Vec::new(), Vec::new());
        for i in 0..45u16 {
            let mut e = Encoder::new(&format!("h{}", i % 4), "lab");
            e.held(&held(&format!("10.78.9.{}", 10 + i), 1000 + i, true, u64::from(i) * 20));
            let bytes = e.finish();
            a_src.extend(feed(&mut src, bytes.clone()));
            a_dst.extend(feed(&mut dst, bytes));
        }
        // The distributed detector runs at most every 5 s of event time.
        let mut e = Encoder::new("h0", "lab");
        e.held(&held("10.78.9.200", 999, false, 6000));
        a_dst.extend(feed(&mut dst, e.finish()));
        assert!(a_src.is_empty(), "{a_src:#?}");
        assert_eq!(kinds(&a_dst), vec![AlertKind::DistributedScan], "{a_dst:#?}");
        assert_eq!(a_dst[0].agent_count, 4);
    }

    /// nmap -D spread over two hosts: four sources with one scanner fingerprint, each host seeing
    /// two ports from each (under decoy_min_ports = 3 per host), four ports per source fleet-wide
    /// → one decoy_cluster from the site shard.
    #[test]
    fn decoys_across_hosts_are_one_cluster() {
        let c = cfg("");
        let mut src = FleetView::new(&c, Family::Src, "fleet".into());
        let mut dst = FleetView::new(&c, Family::Dst, "fleet".into());
        let (mut a_src, mut a_dst) = (Vec::new(), Vec::new());
        for (h, ports) in [(0u64, [21u16, 22]), (1, [23, 25])] {
            let mut e = Encoder::new(&format!("h{h}"), "lab");
            for s in 0..4 {
                summary(
                    &mut e,
                    &Sum { src: ip(&format!("192.0.2.{}", 10 + s)), t_ms: h * 100, syn: 2, closed: 2, open: 0, ports: ports.to_vec(), fp: Some((0x5eed, 1)) },
                );
            }
            let bytes = e.finish();
            a_src.extend(feed(&mut src, bytes.clone()));
            a_dst.extend(feed(&mut dst, bytes));
        }
        assert!(a_src.is_empty(), "{a_src:#?}");
        assert_eq!(kinds(&a_dst), vec![AlertKind::DecoyCluster], "{a_dst:#?}");
        assert!(a_dst[0].alert.source.related.len() >= 2, "{:?}", a_dst[0].alert.source);
        assert_eq!(a_dst[0].alert.targets.sample_ports, vec![21, 22, 23, 25]);
        assert_eq!(a_dst[0].agents, vec!["lab/h0", "lab/h1"]);
    }

    #[test]
    fn repeated_summaries_and_re_created_entries_count_once() {
        let c = cfg("");
        let mut v = FleetView::new(&c, Family::Src, "fleet".into());
        for t in [0, 1000, 2000] {
            let mut e = Encoder::new("h1", "lab");
            summary(&mut e, &Sum { src: ip("10.1.1.1"), t_ms: t, syn: 10, closed: 0, open: 10, ports: vec![80], fp: None });
            feed(&mut v, e.finish());
        }
        let s = &v.sources[&ip("10.1.1.1")];
        assert_eq!(s.total[cnt::SYN], 10, "same cumulative summary thrice = 10 SYNs");
        let mut e = Encoder::new("h1", "lab");
        let mut b = Encoder::new("h1", "lab");
        std::mem::swap(&mut e, &mut b);
        let mut counts = [0u32; cnt::N];
        counts[cnt::SYN] = 3;
        e.summary(&Summary {
            time_ns: T0 + 3_000_000_000,
            src: ip("10.1.1.1"),
            first_seen_ns: 99,
            counts,
            distinct_ports: 1.0,
            distinct_hosts: 1.0,
            n_ports: 0,
            ports: [0; MAX_PORTS],
            n_fp: 0,
            fps: [Fp::default(); MAX_FPS],
        });
        feed(&mut v, e.finish());
        assert_eq!(v.sources[&ip("10.1.1.1")].total[cnt::SYN], 13, "a re-created entry counts afresh");
    }
}
