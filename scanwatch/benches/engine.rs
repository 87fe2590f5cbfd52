//! Userspace cost of the agent's hot paths (Criterion), each next to a baseline measured in the
//! same run: `cargo bench -p scanwatch --bench engine`.
//! - sweep: the engine ingesting 1,000 changed source snapshots (one agent sweep of a busy host)
//!   vs. only building those snapshots;
//! - held: the engine taking 8,192 one-probe sources (a full first-contact read under a flood)
//!   vs. only building them;
//! - decode: turning 32,768 first-contact slots into held probes vs. only copying the slots.
use std::{hint::black_box, net::IpAddr, time::Duration};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use scanwatch::{
    config::Config,
    detect::{Engine, HeldProbe, SourceSnapshot},
    source::live::first_contact::{held_probe, Listeners},
};
use scanwatch_common::{cnt, probe, FcSlot, FIRST_CONTACT_SLOTS};

fn ip(i: u32) -> IpAddr {
    IpAddr::from((0xc633_0000u32 + i).to_be_bytes()) // 198.51.x.y
}

/// Source `i` at sweep `round`: a slow vertical scanner (ports grow by 3 a sweep, all closed).
fn snapshot(i: u32, round: u64) -> SourceSnapshot {
    let mut counts = [0u64; cnt::N];
    let probes = 3 * (round + 1);
    counts[cnt::PACKETS] = probes;
    counts[cnt::SYN] = probes;
    counts[cnt::SYN_CLOSED] = probes;
    counts[cnt::FAILED] = probes;
    SourceSnapshot {
        ip: ip(i),
        first_seen_ns: 1_000,
        last_seen_ns: 1_000 + round * 1_000_000_000,
        counts,
        distinct_ports: probes as f64,
        distinct_hosts: 1.0,
        sample_ports: (0..probes.min(16) as u16).map(|p| 1000 + p).collect(),
        sample_hosts: Vec::new(),
        fingerprints: Vec::new(),
        blocked: false,
    }
}

fn held(n: u32) -> Vec<HeldProbe> {
    (0..n).map(|i| HeldProbe { ip: ip(i), dport: Some((i % 60_000) as u16 + 1), dst: None, failed: true }).collect()
}

fn slots() -> Vec<FcSlot> {
    (0..FIRST_CONTACT_SLOTS)
        .map(|i| {
            let key = scanwatch::vocab::ip_to_key(ip(i));
            // SAFETY: same size, any bit pattern is valid.
            let addr: [u64; 2] = unsafe { std::mem::transmute(key.addr) };
            let mut s = FcSlot { addr, dport: (i % 60_000) as u16 + 1, kind: probe::PORT, proto: 6, nb: 1, ..FcSlot::default() };
            s.bumps[0] = cnt::SYN as u8;
            s
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let cfg = Config::default_embedded();
    let mut g = c.benchmark_group("sweep_1000_sources");
    let mut round = 0u64;
    g.bench_function("baseline_build_snapshots", |b| {
        b.iter(|| {
            round += 1;
            for i in 0..1000 {
                black_box(snapshot(i, round));
            }
        })
    });
    let mut engine = Engine::new(&cfg, "bench".into());
    let mut round = 0u64;
    g.bench_function("engine_observe_source", |b| {
        b.iter(|| {
            round += 1;
            let now = Duration::from_secs(round);
            for i in 0..1000 {
                black_box(engine.observe_source(now, &snapshot(i, round)));
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("held_8192_probes");
    g.bench_function("baseline_build_probes", |b| b.iter(|| black_box(held(8192))));
    g.bench_function("engine_observe_held", |b| {
        b.iter_batched(
            || Engine::new(&cfg, "bench".into()),
            |mut e| black_box(e.observe_held(Duration::from_secs(1), &held(8192))),
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let table = slots();
    let listeners = Listeners::from_ports([22, 80, 443]);
    let mut g = c.benchmark_group("decode_32768_slots");
    g.bench_function("baseline_copy_slots", |b| b.iter(|| black_box(table.clone())));
    g.bench_function("held_probe_decode", |b| {
        b.iter(|| black_box(table.iter().filter_map(|s| held_probe(s, &listeners)).collect::<Vec<_>>()))
    });
    g.finish();
}

criterion_group! {
    name = engine;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(engine);
