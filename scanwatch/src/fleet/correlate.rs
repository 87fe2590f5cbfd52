//! `scanwatch fleet`: the correlator.
//!
//! Work units are (family, shard): `src` shards (records keyed by source) and `dst` shards
//! (records keyed by site). Each unit is one durable pull consumer, `<group>-<family>-<shard>`,
//! filtered on the unit's subjects, with `AckPolicy::All`. Instances of one group share the
//! units through leases in the KV bucket `scanwatch-leases` (`<group>.unit.<family>.<shard>` =
//! instance id, the bucket's max age = `fleet.lease`, renewed every lease/3; instance heartbeats
//! `<group>.inst.<id>`): each instance holds at most ceil(units / live instances) and releases
//! the excess, so a new instance gets its share and a dead instance's leases expire and are taken.
//!
//! A unit's state is its [`FleetView`]. When an instance takes a unit, it first replays the last
//! `fleet.replay` of the unit's subjects up to the durable consumer's acknowledged position
//! (without alerting: those alerts were raised by the previous owner), then continues from the
//! durable consumer; records the previous owner received but never acknowledged are redelivered
//! after `fleet.ack_wait`. After each pulled batch the view is fed to the engine, its fleet
//! alerts are published to `<prefix>.fleet.alert` and acknowledged by JetStream, and only then is
//! the input acknowledged: an alert the correlator acknowledged input for is in the stream.
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, kv, stream};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::record::{decode, MAX_MESSAGE};
use super::view::{FleetAlert, FleetView};
use super::{Family, Subjects};
use crate::config::Config;

/// Messages pulled per request: bounds the work between two awaits (the lease renewal shares
/// the thread), and the records acknowledged at once.
const FETCH: usize = 16;
/// How long a pull waits for messages before the unit runs its idle work.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// KV bucket of the leases.
pub const LEASE_BUCKET: &str = "scanwatch-leases";

/// Options beyond the config file.
#[derive(Debug, Clone)]
pub struct Options {
    /// Instance id (default: random).
    pub instance: Option<String>,
    /// Families this instance works on.
    pub families: Vec<Family>,
    /// Wait until this many instances are live before claiming units (benchmarks start several
    /// at once).
    pub expect_instances: usize,
    /// Stop once the group has processed this many records (benchmarks).
    pub stop_after_records: Option<Arc<AtomicU64>>,
    pub stop_at: Option<u64>,
    /// Do not write alerts to the output (benchmarks).
    pub quiet: bool,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            instance: None,
            families: vec![Family::Src, Family::Dst],
            expect_instances: 1,
            stop_after_records: None,
            stop_at: None,
            quiet: false,
            duration: None,
        }
    }
}

/// Counters of one instance.
#[derive(Debug, Default)]
pub struct Stats {
    pub records: AtomicU64,
    pub messages: AtomicU64,
    pub alerts: AtomicU64,
    pub replayed_records: AtomicU64,
    pub units_taken: AtomicU64,
    pub units_released: AtomicU64,
    /// Rejected messages by reason.
    pub rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    fn reject(&self, reason: &'static str) {
        if let Ok(mut m) = self.rejected.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let rejected: BTreeMap<String, u64> = self
            .rejected
            .lock()
            .map(|m| m.iter().map(|(k, v)| ((*k).to_string(), *v)).collect())
            .unwrap_or_default();
        serde_json::json!({
            "records": self.records.load(Ordering::Relaxed),
            "messages": self.messages.load(Ordering::Relaxed),
            "alerts": self.alerts.load(Ordering::Relaxed),
            "replayed_records": self.replayed_records.load(Ordering::Relaxed),
            "units_taken": self.units_taken.load(Ordering::Relaxed),
            "units_released": self.units_released.load(Ordering::Relaxed),
            "rejected": rejected,
        })
    }
}

/// The stream every record and fleet alert lives in (created or updated by the correlator).
pub async fn ensure_stream(js: &jetstream::Context, cfg: &Config) -> anyhow::Result<stream::Stream> {
    let fc = &cfg.fleet;
    let subjects = Subjects { prefix: fc.subject_prefix.clone() };
    let want = stream::Config {
        name: fc.stream.clone(),
        subjects: vec![subjects.all()],
        max_age: fc.retention,
        storage: stream::StorageType::File,
        max_message_size: MAX_MESSAGE as i32,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    js.get_or_create_stream(want)
        .await
        .map_err(|e| anyhow::anyhow!("fleet: cannot create or open stream {} on {}: {e}", fc.stream, fc.subject_prefix))
}

fn unit_key(group: &str, f: Family, shard: u32) -> String {
    format!("{group}.unit.{}.{shard}", f.token())
}

fn random_id() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{:08x}", t ^ std::process::id().rotate_left(16))
}

struct Unit {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    revision: u64,
}

/// Run a correlator instance until a signal, the duration or the record target.
pub async fn run<W: Write>(cfg: Config, opts: Options, mut out: W) -> anyhow::Result<Arc<Stats>> {
    let fc = cfg.fleet.clone();
    let id = opts.instance.clone().unwrap_or_else(random_id);
    let client = super::nats::connect(&fc, &format!("correlator {id}"), true).await?;
    let js = jetstream::new(client);
    let stream = ensure_stream(&js, &cfg).await?;
    let kv = lease_bucket(&js, fc.lease).await?;
    let stats = Arc::new(Stats::default());
    let (alert_tx, mut alert_rx) = mpsc::unbounded_channel::<String>();
    let units: Vec<(Family, u32)> =
        opts.families.iter().flat_map(|f| (0..fc.shards).map(move |s| (*f, s))).collect();
    eprintln!(
        "scanwatch: ready (fleet correlator {id} of group {}: {} units, {} shards x {:?}; stream {})",
        fc.group,
        units.len(),
        fc.shards,
        opts.families,
        fc.stream
    );
    let mut owned: HashMap<(Family, u32), Unit> = HashMap::new();
    let mut renew = tokio::time::interval(fc.lease / 3);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let inst_key = format!("{}.inst.{id}", fc.group);
    let offset = id.bytes().fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(usize::from(b)));
    let started = Instant::now();
    let mut released: Vec<(Family, u32)> = Vec::new();
    loop {
        if let (Some(c), Some(n)) = (&opts.stop_after_records, opts.stop_at) {
            if c.load(Ordering::Relaxed) >= n {
                break;
            }
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            // Benchmarks: notice the record target soon.
            _ = async { if opts.stop_at.is_some() { tokio::time::sleep(Duration::from_millis(20)).await } else { std::future::pending().await } } => continue,
            a = alert_rx.recv() => {
                if let Some(line) = a {
                    if !opts.quiet {
                        writeln!(out, "{line}")?;
                        out.flush()?;
                    }
                }
            }
            _ = renew.tick() => {
                if let Err(e) = kv.put(&inst_key, id.clone().into()).await {
                    eprintln!("scanwatch: fleet: correlator {id}: heartbeat failed: {e}");
                    continue;
                }
                let live = live_instances(&kv, &fc.group).await.max(1);
                if live < opts.expect_instances && started.elapsed() < Duration::from_secs(60) {
                    continue;
                }
                let fair = units.len().div_ceil(live);
                // Renew what we hold; forget what we lost (another instance took it).
                // All renewals in flight at once: one round trip, not one per unit.
                let mut lost = Vec::new();
                let renewals = futures_util::future::join_all(owned.iter().map(|(u, unit)| {
                    let (kv, key, id, rev, u) = (&kv, unit_key(&fc.group, u.0, u.1), id.clone(), unit.revision, *u);
                    async move { (u, kv.update(key, id.into(), rev).await) }
                }))
                .await;
                for (u, r) in renewals {
                    match r {
                        Ok(r) => {
                            if let Some(unit) = owned.get_mut(&u) {
                                unit.revision = r;
                            }
                        }
                        Err(e) => {
                            eprintln!("scanwatch: fleet: correlator {id}: lost lease of {} shard {}: {e}", u.0.token(), u.1);
                            lost.push(u);
                        }
                    }
                }
                for u in lost {
                    if let Some(unit) = owned.remove(&u) {
                        unit.stop.store(true, Ordering::Relaxed);
                        let _ = unit.task.await;
                    }
                }
                // A unit whose task ended on an error (NATS went away mid-batch) starts again
                // from its durable consumer: replay to the acknowledged position, then the rest.
                for (u, unit) in owned.iter_mut() {
                    if unit.task.is_finished() {
                        unit.stop = Arc::new(AtomicBool::new(false));
                        unit.task = tokio::spawn(unit_task(
                            cfg.clone(),
                            js.clone(),
                            stream.clone(),
                            *u,
                            unit.stop.clone(),
                            stats.clone(),
                            alert_tx.clone(),
                            opts.stop_after_records.clone(),
                        ));
                    }
                }
                // Give back the excess so that newer instances get their share.
                let mut excess: Vec<(Family, u32)> = owned.keys().copied().collect();
                excess.sort();
                let excess: Vec<Unit> = excess.split_off(fair.min(excess.len())).into_iter().filter_map(|u| owned.remove(&u).map(|x| (u, x))).map(|(u, x)| {
                    x.stop.store(true, Ordering::Relaxed);
                    released.push(u);
                    x
                }).collect();
                for x in excess {
                    let _ = x.task.await;
                }
                for u in released.drain(..) {
                    let _ = kv.delete(unit_key(&fc.group, u.0, u.1)).await;
                    stats.units_released.fetch_add(1, Ordering::Relaxed);
                }
                // Take free units up to the fair share.
                for i in 0..units.len() {
                    if owned.len() >= fair {
                        break;
                    }
                    let u = units[(i + offset) % units.len()];
                    if owned.contains_key(&u) {
                        continue;
                    }
                    if let Ok(revision) = kv.create(unit_key(&fc.group, u.0, u.1), id.clone().into()).await {
                        let stop = Arc::new(AtomicBool::new(false));
                        let task = tokio::spawn(unit_task(
                            cfg.clone(),
                            js.clone(),
                            stream.clone(),
                            u,
                            stop.clone(),
                            stats.clone(),
                            alert_tx.clone(),
                            opts.stop_after_records.clone(),
                        ));
                        stats.units_taken.fetch_add(1, Ordering::Relaxed);
                        owned.insert(u, Unit { stop, task, revision });
                    }
                }
            }
        }
    }
    // Stop every unit at once (each finishes its current pull), then give the leases back so
    // other instances take over at once instead of after the lease time.
    for unit in owned.values() {
        unit.stop.store(true, Ordering::Relaxed);
    }
    for (u, unit) in owned.drain() {
        let _ = unit.task.await;
        let _ = kv.delete(unit_key(&fc.group, u.0, u.1)).await;
    }
    let _ = kv.delete(&inst_key).await;
    while let Ok(line) = alert_rx.try_recv() {
        if !opts.quiet {
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    if !opts.quiet {
        eprintln!("scanwatch: fleet: correlator {id} stopped; counters {}", stats.to_json());
    }
    Ok(stats)
}

/// The lease bucket. Its stream is created here rather than with `create_key_value`, whose
/// account-info query does not parse the replies of nats-server 2.9 (Debian's).
async fn lease_bucket(js: &jetstream::Context, lease: Duration) -> anyhow::Result<kv::Store> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{LEASE_BUCKET}"),
        subjects: vec![format!("$KV.{LEASE_BUCKET}.>")],
        max_messages_per_subject: 1,
        max_age: lease,
        duplicate_window: lease,
        // File: leases survive a server restart (and expire by age as usual).
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("fleet: cannot create the lease bucket {LEASE_BUCKET}: {e}"))?;
    // The bucket's max age is the lease: follow fleet.lease when it changed.
    let mut st = js.get_stream(format!("KV_{LEASE_BUCKET}")).await.context("fleet: lease bucket")?;
    let info = st.info().await.context("fleet: lease bucket info")?.clone();
    if info.config.max_age != lease {
        let mut c = info.config;
        c.max_age = lease;
        c.duplicate_window = lease;
        js.update_stream(c).await.map_err(|e| anyhow::anyhow!("fleet: cannot set the lease bucket's max age: {e}"))?;
    }
    js.get_key_value(LEASE_BUCKET).await.context("fleet: cannot open the lease bucket")
}

async fn live_instances(kv: &kv::Store, group: &str) -> usize {
    let prefix = format!("{group}.inst.");
    let Ok(mut keys) = kv.keys().await else { return 1 };
    let mut n = 0;
    while let Some(k) = keys.next().await {
        if k.is_ok_and(|k| k.starts_with(&prefix)) {
            n += 1;
        }
    }
    n
}

#[expect(clippy::too_many_arguments, reason = "a unit task owns its share of the correlator's handles")]
async fn unit_task(
    cfg: Config,
    js: jetstream::Context,
    stream: stream::Stream,
    (family, shard): (Family, u32),
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    alerts: mpsc::UnboundedSender<String>,
    group_records: Option<Arc<AtomicU64>>,
) {
    let fc = &cfg.fleet;
    let tag = format!("{} shard {shard}", family.token());
    if let Err(e) = unit_loop(&cfg, &js, &stream, family, shard, &stop, &stats, &alerts, group_records.as_deref()).await {
        eprintln!("scanwatch: fleet: {tag} of group {}: {e:#}; the lease will pass to another instance", fc.group);
    }
}

#[expect(clippy::too_many_arguments, reason = "see unit_task")]
async fn unit_loop(
    cfg: &Config,
    js: &jetstream::Context,
    stream: &stream::Stream,
    family: Family,
    shard: u32,
    stop: &AtomicBool,
    stats: &Stats,
    alerts: &mpsc::UnboundedSender<String>,
    group_records: Option<&AtomicU64>,
) -> anyhow::Result<()> {
    let fc = &cfg.fleet;
    let subjects = Subjects { prefix: fc.subject_prefix.clone() };
    let filter = subjects.shard_filter(family, shard);
    let name = format!("{}-{}-{shard}", fc.group, family.token());
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: filter.clone(),
                ack_policy: consumer::AckPolicy::All,
                ack_wait: fc.ack_wait,
                max_ack_pending: 100_000,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("consumer {name}: {e}"))?;
    let mut view = FleetView::new(cfg, family, format!("fleet:{}", fc.group));
    let info = consumer.get_info().await.map_err(|e| anyhow::anyhow!("consumer {name} info: {e}"))?;
    let floor = info.ack_floor.stream_sequence;
    if floor > 0 {
        let n = replay(stream, &subjects, &filter, fc.replay, floor, &mut view).await?;
        stats.replayed_records.fetch_add(n, Ordering::Relaxed);
    }
    let fleet_subject = subjects.fleet_alerts();
    let mut last_input = (Instant::now(), view.now());
    let mut busy = true;
    while !stop.load(Ordering::Relaxed) {
        // While messages are waiting, take what is there at once; when idle, wait for more.
        let batch = if busy {
            consumer.fetch().max_messages(FETCH).messages().await
        } else {
            consumer.batch().max_messages(FETCH).expires(FETCH_WAIT).messages().await
        };
        let mut batch = batch.map_err(|e| anyhow::anyhow!("pull from {name}: {e}"))?;
        let mut last = None;
        let mut n_records = 0u64;
        while let Some(m) = batch.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("scanwatch: fleet: {name}: {e}");
                    break;
                }
            };
            stats.messages.fetch_add(1, Ordering::Relaxed);
            n_records += ingest(&subjects, &m.subject, &m.payload, &mut view, stats);
            last = Some(m);
            // One message is up to ~1 MiB of records: let the lease renewal and the other units
            // run between messages.
            tokio::task::yield_now().await;
        }
        busy = last.is_some();
        if last.is_some() {
            last_input = (Instant::now(), view.now());
        } else if last_input.1 > Duration::ZERO {
            // Idle: event time moves on with the wall clock, so windows close and the periodic
            // detectors run even when no agent reports.
            view.advance_to(last_input.1 + last_input.0.elapsed());
        }
        let found = view.flush();
        for a in &found {
            publish_alert(js, &fleet_subject, a).await?;
            let _ = alerts.send(a.to_json().to_string());
            stats.alerts.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(m) = last {
            // AckPolicy::All: this acknowledges every message of the batch, after their alerts
            // are stored.
            m.double_ack().await.map_err(|e| anyhow::anyhow!("ack on {name}: {e}"))?;
            stats.records.fetch_add(n_records, Ordering::Relaxed);
            if let Some(g) = group_records {
                g.fetch_add(n_records, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// Decode one message and merge it; returns its record count (0 when rejected).
fn ingest(subjects: &Subjects, subject: &str, payload: &[u8], view: &mut FleetView, stats: &Stats) -> u64 {
    let b = match decode(payload) {
        Ok(b) => b,
        Err(e) => {
            stats.reject(e.reason());
            return 0;
        }
    };
    // The subject carries <site>.<agent>, which NATS permissions tie to the publishing user:
    // a batch claiming another agent is rejected.
    if subjects.origin(subject) != Some((b.site, b.agent)) {
        stats.reject("agent_mismatch");
        return 0;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    if b.records.iter().any(|r| Duration::from_nanos(r.time_ns()) > now + Duration::from_secs(300)) {
        stats.reject("future_time");
        return 0;
    }
    if !view.ingest(&b) {
        stats.reject("too_many_agents");
        return 0;
    }
    b.records.len() as u64
}

async fn publish_alert(js: &jetstream::Context, subject: &str, a: &FleetAlert) -> anyhow::Result<()> {
    let body = a.to_json().to_string();
    let ack = js
        .publish(subject.to_string(), body.into())
        .await
        .map_err(|e| anyhow::anyhow!("publish fleet alert: {e}"))?;
    ack.await.map_err(|e| anyhow::anyhow!("fleet alert not stored: {e}"))?;
    Ok(())
}

/// Rebuild a unit's state from the last `window` of its subjects up to stream sequence
/// `floor` (the durable consumer's acknowledged position), without alerting.
async fn replay(
    stream: &stream::Stream,
    subjects: &Subjects,
    filter: &str,
    window: Duration,
    floor: u64,
    view: &mut FleetView,
) -> anyhow::Result<u64> {
    let start = SystemTime::now().checked_sub(window).unwrap_or(UNIX_EPOCH);
    let start_ns = start.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
    let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(start_ns)
        .map_err(|e| anyhow::anyhow!("replay start time: {e}"))?;
    let c: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_string(),
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time },
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("replay consumer on {filter}: {e}"))?;
    let scratch = Stats::default();
    let mut n = 0u64;
    'outer: loop {
        let mut batch = c
            .fetch()
            .max_messages(FETCH)
            .expires(FETCH_WAIT)
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("replay pull: {e}"))?;
        let mut got = false;
        while let Some(m) = batch.next().await {
            let Ok(m) = m else { break };
            got = true;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(u64::MAX);
            if seq > floor {
                break 'outer;
            }
            n += ingest(subjects, &m.subject, &m.payload, view, &scratch);
        }
        // Alerts of replayed history were raised by the previous owner.
        let _ = view.flush();
        if !got {
            break;
        }
    }
    Ok(n)
}
