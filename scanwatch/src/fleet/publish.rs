//! Agent → NATS. The run loop hands records to a bounded channel with `try_send` (it never
//! waits: a full channel drops the record and counts it); a publisher task batches them per
//! subject (one batch = many records, see [`super::record`]), publishes every
//! `fleet.publish_interval` with JetStream acknowledgements, keeps unacknowledged batches for the
//! next round within `fleet.buffer` records (oldest dropped first, counted) and says on stderr
//! when NATS goes away and comes back.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use tokio::sync::mpsc;

use super::config::FleetConfig;
use super::record::{fp_hash_from_hex, tool_index, Encoder, Fp, Held, Summary, MAX_FPS, MAX_PORTS};
use super::{shard_of, site_shard, Family, Subjects};
use crate::alert::Alert;
use crate::config::Config;
use crate::detect::{HeldProbe, InboundObservation, Observer, OutboundObservation, SourceSnapshot};

/// A batch is sent once it reaches this size, even before the interval.
const BATCH_BYTES: usize = 256 * 1024;
/// How long one publish may wait for its JetStream acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct OwnedSummary {
    time_ns: u64,
    snap: SourceSnapshot,
}

#[derive(Debug, Clone)]
enum Item {
    Held(Held),
    Summary(Box<OwnedSummary>),
    Alert { time_ns: u64, json: String },
}

/// Publisher counters (shared with the handle).
#[derive(Debug, Default)]
pub struct Counters {
    pub queued: AtomicU64,
    /// The channel was full (the publisher is behind or NATS is unreachable).
    pub dropped_full: AtomicU64,
    /// Unacknowledged batches beyond `fleet.buffer` records.
    pub dropped_buffer: AtomicU64,
    pub published_records: AtomicU64,
    pub published_batches: AtomicU64,
    pub publish_errors: AtomicU64,
}

/// The run loop's side of the publisher.
pub struct Handle {
    tx: Option<mpsc::Sender<Item>>,
    pub counters: Arc<Counters>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub agent: String,
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A host name as a subject token (letters, digits, '-', '_'; at most 64).
pub fn agent_token(name: &str) -> String {
    let t: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .take(super::record::MAX_NAME)
        .collect();
    if t.is_empty() {
        "agent".into()
    } else {
        t
    }
}

impl Handle {
    fn send(&self, item: Item) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(item) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.counters.dropped_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn held(&self, probes: &[HeldProbe]) {
        let t = unix_ns();
        for p in probes {
            self.send(Item::Held(Held {
                time_ns: t,
                src: p.ip,
                dst: p.dst,
                dport: p.dport,
                // The held probe's protocol is not kept by the engine's HeldProbe: port probes are
                // counted as TCP, portless ones as ICMP echo.
                proto: if p.dport.is_some() { 6 } else { 1 },
                failed: p.failed,
                fp_hash: 0,
            }));
        }
    }

    pub fn source(&self, s: &SourceSnapshot) {
        self.send(Item::Summary(Box::new(OwnedSummary { time_ns: unix_ns(), snap: s.clone() })));
    }

    pub fn alerts(&self, alerts: &[Alert]) {
        for a in alerts {
            if let Ok(json) = serde_json::to_string(a) {
                self.send(Item::Alert { time_ns: unix_ns(), json });
            }
        }
    }

    /// Close the channel, let the publisher send what it holds (bounded wait), print counters.
    pub async fn finish(mut self) {
        self.tx = None;
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let c = &self.counters;
        eprintln!(
            "scanwatch: fleet: agent {}: published {} records in {} batches; dropped {} (channel full) + {} (buffer bound); {} publish errors",
            self.agent,
            c.published_records.load(Ordering::Relaxed),
            c.published_batches.load(Ordering::Relaxed),
            c.dropped_full.load(Ordering::Relaxed),
            c.dropped_buffer.load(Ordering::Relaxed),
            c.publish_errors.load(Ordering::Relaxed),
        );
    }
}

/// Start publishing when `[fleet]` names servers. An authentication failure is an error here;
/// an unreachable server is not (the client reconnects in the background, records are buffered).
pub async fn start(cfg: &Config, hostname: &str) -> anyhow::Result<Option<Handle>> {
    let fc = &cfg.fleet;
    if !fc.enabled() {
        return Ok(None);
    }
    let agent = fc.agent_id.clone().unwrap_or_else(|| agent_token(hostname));
    let client = super::nats::connect(fc, &format!("agent {agent}"), false).await?;
    let (tx, rx) = mpsc::channel(fc.buffer as usize);
    let counters = Arc::new(Counters::default());
    let task = tokio::spawn(publisher(jetstream::new(client), fc.clone(), agent.clone(), rx, counters.clone()));
    eprintln!(
        "scanwatch: fleet: agent {agent} of site {} publishing to {} every {:?} ({} source shards)",
        fc.site,
        fc.servers.join(","),
        fc.publish_interval,
        fc.shards
    );
    Ok(Some(Handle { tx: Some(tx), counters, task: Some(task), agent }))
}

fn summary_record(o: &OwnedSummary) -> Summary<'_> {
    let s = &o.snap;
    let mut ports = [0u16; MAX_PORTS];
    let n_ports = s.sample_ports.len().min(MAX_PORTS);
    ports[..n_ports].copy_from_slice(&s.sample_ports[..n_ports]);
    let mut fps = [Fp::default(); MAX_FPS];
    let n_fp = s.fingerprints.len().min(MAX_FPS);
    for (d, f) in fps.iter_mut().zip(s.fingerprints.iter().rev()) {
        *d = Fp { hash: fp_hash_from_hex(&f.hash), initial_ttl: f.initial_ttl, tool: tool_index(&f.tool_hint), text: &f.text };
    }
    Summary {
        time_ns: o.time_ns,
        src: s.ip,
        first_seen_ns: s.first_seen_ns,
        counts: std::array::from_fn(|i| u32::try_from(s.counts[i]).unwrap_or(u32::MAX)),
        distinct_ports: s.distinct_ports as f32,
        distinct_hosts: s.distinct_hosts as f32,
        n_ports: n_ports as u8,
        ports,
        n_fp: n_fp as u8,
        fps,
    }
}

struct Pending {
    subjects: Subjects,
    site: String,
    agent: String,
    shards: u32,
    open: HashMap<String, Encoder>,
    ready: VecDeque<(String, Vec<u8>, u32)>,
    ready_records: u64,
}

impl Pending {
    fn encoder(&mut self, subject: String) -> &mut Encoder {
        let (agent, site) = (&self.agent, &self.site);
        self.open.entry(subject).or_insert_with(|| Encoder::new(agent, site))
    }

    fn add(&mut self, item: &Item) {
        let mut touched: [Option<String>; 2] = [None, None];
        match item {
            Item::Held(h) => {
                for (i, f) in [Family::Src, Family::Dst].into_iter().enumerate() {
                    let subj = self.subject(f, h.src);
                    self.encoder(subj.clone()).held(h);
                    touched[i] = Some(subj);
                }
            }
            Item::Summary(o) => {
                let rec = summary_record(o);
                for (i, f) in [Family::Src, Family::Dst].into_iter().enumerate() {
                    let subj = self.subject(f, rec.src);
                    self.encoder(subj.clone()).summary(&rec);
                    touched[i] = Some(subj);
                }
            }
            Item::Alert { time_ns, json } => {
                let subj = self.subjects.agent_alerts(&self.site, &self.agent);
                self.encoder(subj.clone()).alert(*time_ns, json);
                touched[0] = Some(subj);
            }
        }
        for subj in touched.into_iter().flatten() {
            if self.open.get(&subj).is_some_and(|e| e.len() >= BATCH_BYTES) {
                self.seal(&subj);
            }
        }
    }

    fn subject(&self, f: Family, src: std::net::IpAddr) -> String {
        let shard = match f {
            Family::Src => shard_of(src, self.shards),
            Family::Dst => site_shard(&self.site, self.shards),
        };
        self.subjects.records(f, shard, &self.site, &self.agent)
    }

    fn seal(&mut self, subj: &str) {
        if let Some(e) = self.open.remove(subj) {
            let n = e.records();
            self.ready_records += u64::from(n);
            self.ready.push_back((subj.to_string(), e.finish(), n));
        }
    }

    fn seal_all(&mut self) {
        let subjects: Vec<String> = self.open.keys().cloned().collect();
        for s in subjects {
            self.seal(&s);
        }
    }

    /// Drop the oldest batches beyond `bound` records; returns the records dropped.
    fn bound(&mut self, bound: u64) -> u64 {
        let mut dropped = 0;
        while self.ready_records > bound {
            let Some((_, _, n)) = self.ready.pop_front() else { break };
            self.ready_records -= u64::from(n);
            dropped += u64::from(n);
        }
        dropped
    }
}

async fn publisher(
    js: jetstream::Context,
    fc: FleetConfig,
    agent: String,
    mut rx: mpsc::Receiver<Item>,
    c: Arc<Counters>,
) {
    let mut p = Pending {
        subjects: Subjects { prefix: fc.subject_prefix.clone() },
        site: fc.site.clone(),
        agent,
        shards: fc.shards,
        open: HashMap::new(),
        ready: VecDeque::new(),
        ready_records: 0,
    };
    let mut tick = tokio::time::interval(fc.publish_interval);
    let mut failing_since: Option<Instant> = None;
    let mut last_drop_report = (Instant::now(), 0u64);
    loop {
        let closed = tokio::select! {
            item = rx.recv() => match item {
                Some(item) => {
                    p.add(&item);
                    if p.ready.is_empty() || failing_since.is_some() {
                        // Nothing sealed by size (or NATS is away: retry on the tick only).
                        continue;
                    }
                    false
                }
                None => true,
            },
            _ = tick.tick() => false,
        };
        p.seal_all();
        while let Some((subj, bytes, n)) = p.ready.pop_front() {
            let res = match js.publish(subj.clone(), bytes.clone().into()).await {
                Ok(ack) => tokio::time::timeout(ACK_TIMEOUT, ack).await.map_err(|_| "acknowledgement timed out".to_string()).and_then(|r| r.map_err(|e| e.to_string())),
                Err(e) => Err(e.to_string()),
            };
            match res {
                Ok(_) => {
                    p.ready_records -= u64::from(n);
                    c.published_records.fetch_add(u64::from(n), Ordering::Relaxed);
                    c.published_batches.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = failing_since.take() {
                        eprintln!("scanwatch: fleet: publishing again after {:.0} s", t.elapsed().as_secs_f64());
                    }
                }
                Err(e) => {
                    c.publish_errors.fetch_add(1, Ordering::Relaxed);
                    p.ready.push_front((subj, bytes, n));
                    if failing_since.is_none() {
                        failing_since = Some(Instant::now());
                        eprintln!(
                            "scanwatch: fleet: publish failed ({e}); keeping up to {} records and retrying every {:?}",
                            fc.buffer, fc.publish_interval
                        );
                    }
                    break;
                }
            }
        }
        let dropped = p.bound(u64::from(fc.buffer));
        c.dropped_buffer.fetch_add(dropped, Ordering::Relaxed);
        let total = c.dropped_buffer.load(Ordering::Relaxed) + c.dropped_full.load(Ordering::Relaxed);
        if total > last_drop_report.1 && last_drop_report.0.elapsed() >= Duration::from_secs(10) {
            eprintln!("scanwatch: fleet: WARNING {total} records dropped so far (buffer {} records)", fc.buffer);
            last_drop_report = (Instant::now(), total);
        }
        if closed {
            break;
        }
    }
}

/// Forwards every observation to the engine and its records and alerts to the fleet publisher:
/// the live loop runs this in place of the engine, unchanged.
pub struct Tee<O: Observer> {
    inner: O,
    fleet: Handle,
}

impl<O: Observer> Tee<O> {
    pub fn new(inner: O, fleet: Handle) -> Self {
        Tee { inner, fleet }
    }

    /// Flush the publisher and print its counters.
    pub async fn finish(self) {
        self.fleet.finish().await;
    }
}

impl<O: Observer> Observer for Tee<O> {
    fn observe_source(&mut self, now: Duration, s: &SourceSnapshot) -> Vec<Alert> {
        self.fleet.source(s);
        let a = self.inner.observe_source(now, s);
        self.fleet.alerts(&a);
        a
    }
    fn observe_inbound_event(&mut self, now: Duration, e: &InboundObservation) -> Vec<Alert> {
        let a = self.inner.observe_inbound_event(now, e);
        self.fleet.alerts(&a);
        a
    }
    fn observe_outbound(&mut self, now: Duration, o: &OutboundObservation) -> Vec<Alert> {
        let a = self.inner.observe_outbound(now, o);
        self.fleet.alerts(&a);
        a
    }
    fn tick(&mut self, now: Duration) -> Vec<Alert> {
        let a = self.inner.tick(now);
        self.fleet.alerts(&a);
        a
    }
    fn observe_held(&mut self, now: Duration, probes: &[HeldProbe]) -> Vec<Alert> {
        self.fleet.held(probes);
        let a = self.inner.observe_held(now, probes);
        self.fleet.alerts(&a);
        a
    }
}
