//! `scanwatch fleet bench`: generate records into a real NATS JetStream stream and measure the
//! correlator's throughput with one instance and with two, in the same run, next to the
//! in-memory cost of the same work (decode + fleet view + engine, no NATS) as the baseline.
//!
//! The generated fleet: `agents` agents, `sources` remote sources spread over the source shards,
//! each agent watching `window` sources per shard; each message is one agent's batch of
//! `per_message` records for one shard (successive sweeps of its window: cumulative per-source
//! summaries with growing counters, the first sweep partly held probes), event time advancing so
//! that the whole run spans `span` of agent time. Only the source family is generated (the
//! site family carries the same records on a single shard per site).
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_nats::jetstream;
use scanwatch_common::cnt;

use super::correlate::{self, Options};
use super::record::{decode, Encoder, Fp, Held, Summary, MAX_FPS, MAX_PORTS};
use super::view::FleetView;
use super::{shard_of, Family, Subjects};
use crate::config::Config;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub records: u64,
    pub agents: u32,
    pub sources: u32,
    pub per_message: u32,
    /// Sources each agent watches per shard.
    pub window: u32,
    pub span: Duration,
}

/// Generated messages: (subject, payload, records). Agent `a` watches, on every shard, a window
/// of `window` sources of that shard's pool; one message is one agent's batch for one shard:
/// `per_message / window` successive sweeps of its window (cumulative counters growing), a
/// quarter of the window first seen as held probes.
fn generate(cfg: &Config, o: &BenchOptions) -> Vec<(String, Vec<u8>, u32)> {
    let fc = &cfg.fleet;
    let subjects = Subjects { prefix: fc.subject_prefix.clone() };
    let mut by_shard: Vec<Vec<IpAddr>> = vec![Vec::new(); fc.shards as usize];
    for i in 0..o.sources {
        let ip = IpAddr::V4(Ipv4Addr::from(0x6440_0000u32 + i * 7 + 1));
        by_shard[shard_of(ip, fc.shards) as usize].push(ip);
    }
    let window = o.window.clamp(1, o.per_message) as usize;
    let n_msgs = o.records.div_ceil(u64::from(o.per_message));
    let t0 = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().saturating_sub(o.span).as_nanos() as u64;
    let step = o.span.as_nanos() as u64 / n_msgs.max(1);
    let mut out = Vec::with_capacity(n_msgs as usize);
    let mut left = o.records;
    for m in 0..n_msgs {
        let shard = (m % u64::from(fc.shards)) as usize;
        let a = (m / u64::from(fc.shards)) % u64::from(o.agents);
        let round = (m / (u64::from(fc.shards) * u64::from(o.agents))) as u32;
        let agent = format!("bench-{a:05}");
        let mut e = Encoder::new(&agent, "bench");
        let n = left.min(u64::from(o.per_message)) as u32;
        left -= u64::from(n);
        let t = t0 + m * step;
        let pool = &by_shard[shard];
        let base = (a as usize * 53) % pool.len().max(1);
        for r in 0..n as usize {
            let k = r % window;
            let sweep = (r / window) as u32 + round * (o.per_message / window as u32) + 1;
            let src = pool[(base + k) % pool.len().max(1)];
            let t = t + (r / window) as u64 * 1_000_000;
            if round == 0 && r < window && k.is_multiple_of(4) {
                e.held(&Held { time_ns: t, src, dst: None, dport: Some(443), proto: 6, failed: false, fp_hash: 0 });
                continue;
            }
            let mut counts = [0u32; cnt::N];
            counts[cnt::PACKETS] = sweep * 3;
            counts[cnt::SYN] = sweep * 3;
            counts[cnt::SYN_OPEN] = sweep * 2;
            counts[cnt::SYN_CLOSED] = sweep;
            counts[cnt::FAILED] = sweep;
            let mut ports = [0u16; MAX_PORTS];
            ports[0] = 443;
            ports[1] = 80;
            e.summary(&Summary {
                time_ns: t,
                src,
                first_seen_ns: t0,
                counts,
                distinct_ports: 2.0,
                distinct_hosts: 1.0,
                n_ports: 2,
                ports,
                n_fp: 0,
                fps: [Fp::default(); MAX_FPS],
            });
        }
        let subject = subjects.records(Family::Src, shard as u32, "bench", &agent);
        out.push((subject, e.finish(), n));
    }
    out
}

/// The baseline: the same messages decoded and merged into per-shard views in memory.
fn in_memory(cfg: &Config, msgs: &[(String, Vec<u8>, u32)]) -> anyhow::Result<(u64, Duration)> {
    let mut views: Vec<FleetView> =
        (0..cfg.fleet.shards).map(|_| FleetView::new(cfg, Family::Src, "bench".into())).collect();
    let subjects = Subjects { prefix: cfg.fleet.subject_prefix.clone() };
    let t = Instant::now();
    let mut n = 0u64;
    for (i, (subject, bytes, _)) in msgs.iter().enumerate() {
        let shard: usize = subject.split('.').nth(2).and_then(|s| s.parse().ok()).unwrap_or(0);
        let b = decode(bytes).map_err(|e| anyhow::anyhow!("generated message {i}: {e}"))?;
        if subjects.origin(subject) != Some((b.site, b.agent)) {
            anyhow::bail!("generated message {i}: subject/agent mismatch");
        }
        n += b.records.len() as u64;
        let k = shard % views.len();
        views[k].ingest(&b);
        // The correlator flushes once per pulled batch (up to 16 messages of a shard).
        if i % (16 * views.len()) == 16 * views.len() - 1 {
            for v in &mut views {
                let _ = v.flush();
            }
        }
    }
    for v in &mut views {
        let _ = v.flush();
    }
    Ok((n, t.elapsed()))
}

/// Run `instances` correlators (one thread and one current-thread runtime each, like separate
/// processes) of a fresh group until they have processed `total` records. The time measured runs
/// from the first acknowledged batch to the last (start-up and lease claiming excluded).
fn correlators(cfg: &Config, group: &str, instances: usize, total: u64) -> anyhow::Result<(Duration, Vec<u64>)> {
    let done = Arc::new(AtomicU64::new(0));
    let mut c = cfg.clone();
    c.fleet.group = group.to_string();
    let mut handles = Vec::new();
    for i in 0..instances {
        let c = c.clone();
        let done = done.clone();
        handles.push(std::thread::spawn(move || -> anyhow::Result<u64> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let opts = Options {
                instance: Some(format!("bench{i}")),
                families: vec![Family::Src],
                expect_instances: instances,
                stop_after_records: Some(done),
                stop_at: Some(total),
                quiet: true,
                duration: Some(Duration::from_secs(600)),
            };
            let stats = rt.block_on(correlate::run(c, opts, std::io::sink()))?;
            Ok(stats.records.load(Ordering::Relaxed))
        }));
    }
    let (mut first, mut last) = (None, None);
    let (mut first_n, deadline) = (0u64, Instant::now() + Duration::from_secs(600));
    while last.is_none() && Instant::now() < deadline && !handles.iter().all(|h| h.is_finished()) {
        let n = done.load(Ordering::Relaxed);
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
            first_n = n;
        }
        if n >= total {
            last = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut per = Vec::new();
    for h in handles {
        per.push(h.join().map_err(|_| anyhow::anyhow!("correlator thread panicked"))??);
    }
    let (Some(first), Some(last)) = (first, last) else {
        anyhow::bail!("{group}: correlators processed {} of {total} records before stopping", per.iter().sum::<u64>());
    };
    // Records of the first batch were processed before `first`: leave them out of the rate.
    let elapsed = last.duration_since(first).max(Duration::from_millis(1));
    Ok((elapsed.mul_f64(total as f64 / (total - first_n).max(1) as f64), per))
}

pub fn run(mut cfg: Config, o: &BenchOptions) -> anyhow::Result<serde_json::Value> {
    if !cfg.fleet.enabled() {
        anyhow::bail!("fleet bench needs a NATS server: --server nats://127.0.0.1:4222 or fleet.servers");
    }
    cfg.fleet.subject_prefix = "swbench".into();
    cfg.fleet.stream = "SWBENCH".into();
    cfg.fleet.retention = Duration::from_secs(3600);
    // No replay of history at take-over: each measured group starts from the stream's start.
    cfg.fleet.lease = Duration::from_secs(6);
    eprintln!("fleet bench: generating {} records ({} agents, {} sources, {} records/message)", o.records, o.agents, o.sources, o.per_message);
    let msgs = generate(&cfg, o);
    let bytes: usize = msgs.iter().map(|m| m.1.len()).sum();
    let (n_mem, t_mem) = in_memory(&cfg, &msgs)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let t_pub = rt.block_on(async {
        let client = super::nats::connect(&cfg.fleet, "bench", true).await?;
        let js = jetstream::new(client);
        let _ = js.delete_stream(&cfg.fleet.stream).await;
        correlate::ensure_stream(&js, &cfg).await?;
        let t = Instant::now();
        let mut acks = Vec::new();
        for (subject, payload, _) in &msgs {
            acks.push(js.publish(subject.clone(), payload.clone().into()).await.context("publish")?);
            if acks.len() >= 128 {
                for a in acks.drain(..) {
                    a.await.context("publish ack")?;
                }
            }
        }
        for a in acks.drain(..) {
            a.await.context("publish ack")?;
        }
        anyhow::Ok(t.elapsed())
    })?;
    drop(rt);
    eprintln!(
        "fleet bench: {} messages ({:.0} MB, {:.1} bytes/record) stored in {:.1} s",
        msgs.len(),
        bytes as f64 / 1e6,
        bytes as f64 / o.records as f64,
        t_pub.as_secs_f64()
    );
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (t1, _) = correlators(&cfg, &format!("bench1-{stamp}"), 1, o.records)?;
    let (t2, per2) = correlators(&cfg, &format!("bench2-{stamp}"), 2, o.records)?;
    let rate = |n: u64, t: Duration| n as f64 / t.as_secs_f64();
    let (r_mem, r1, r2) = (rate(n_mem, t_mem), rate(o.records, t1), rate(o.records, t2));
    println!("fleet correlator throughput ({} records, {} source shards, same run)", o.records, cfg.fleet.shards);
    println!("{:<44} {:>14} {:>10}", "", "records/s", "x 1 inst.");
    println!("{:<44} {:>14.0} {:>10.2}", "in memory: decode + view + engine, 1 thread", r_mem, r_mem / r1);
    println!("{:<44} {:>14.0} {:>10.2}", "1 correlator instance (NATS, acks)", r1, 1.0);
    println!("{:<44} {:>14.0} {:>10.2}", "2 correlator instances together", r2, r2 / r1);
    println!(
        "{:<44} {:>14}",
        "  records per instance (2 instances)",
        per2.iter().map(u64::to_string).collect::<Vec<_>>().join(" / ")
    );
    Ok(serde_json::json!({
        "records": o.records,
        "messages": msgs.len(),
        "bytes_per_record": bytes as f64 / o.records as f64,
        "in_memory_records_per_s": r_mem,
        "one_instance_records_per_s": r1,
        "two_instances_records_per_s": r2,
        "two_instance_split": per2,
        "two_over_one": r2 / r1,
    }))
}
