//! The agent's run loop: drain the ring buffer, sweep the per-source map, enrich, feed the
//! detection engine, write alerts. All I/O lives here; detection is pure (`detect`).
use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use scanwatch_common::{
    cnt, kind, outcome, stat, tool, FpKey, FpValue, InboundEvent, ProcEvent, SrcKey, SrcState,
    XdpConfig, MAP_BLOCKLIST, MAP_EVENTS, MAP_FINGERPRINTS, MAP_FIRST_CONTACT, MAP_KNOWN, MAP_SUSPECT, MAP_SOURCES, MAP_STATS,
};
use tokio::io::unix::AsyncFd;

use crate::{
    alert::Alert,
    config::Config,
    detect::{
        BaselineLearner, Engine, FingerprintInfo, HeldProbe, InboundEventKind, InboundObservation, OutboundAction,
        OutboundObservation, SourceSnapshot,
    },
    enrich::ProcCache,
    loader::{self, LoadOptions, XdpModeChoice},
    first_contact::{FirstContactView, HeldReader, Listeners},
    response::Responder,
    sinks::jsonl::JsonlSink,
    sketch::{distinct_ports, hll_estimate},
};

/// Monotonic clock, the same one `bpf_ktime_get_ns` reads. Per-source times in SOURCES come
/// from `bpf_ktime_get_coarse_ns` (the same clock at tick resolution, up to one tick behind).
pub fn monotonic() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

pub fn key_to_ip(k: &SrcKey) -> IpAddr {
    let a = Ipv6Addr::from(k.addr);
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

pub fn ip_to_key(ip: IpAddr) -> SrcKey {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    SrcKey { addr: v6.octets() }
}

/// Stable text form of a fingerprint (p0f-like, one line) and its short hash.
pub fn fingerprint_info(raw: &scanwatch_common::Fingerprint) -> FingerprintInfo {
    let mut fp = *raw;
    fp.parse_options();
    let opts: Vec<&str> = fp.opts[..usize::from(fp.n_opts).min(fp.opts.len())]
        .iter()
        .map(|k| match k {
            0 => "eol",
            1 => "nop",
            2 => "mss",
            3 => "ws",
            4 => "sok",
            5 => "sack",
            8 => "ts",
            _ => "?",
        })
        .collect();
    let ittl = scanwatch_common::initial_ttl(fp.ttl);
    let text = format!(
        "v{}:ttl={}/{}:df={}:win={}:mss={}:ws={}:opts={}:sack={}:ts={}:plen={}",
        fp.ip_version,
        fp.ttl,
        ittl,
        fp.df,
        fp.window,
        fp.mss,
        if fp.n_opts > 0 && fp.opts.contains(&3) { fp.wscale.to_string() } else { "-".into() },
        if opts.is_empty() { "none".to_string() } else { opts.join(",") },
        fp.sack_ok,
        fp.timestamps,
        fp.payload_len
    );
    FingerprintInfo {
        text,
        hash: format!("{:08x}", fp.hash),
        tool_hint: tool::name(fp.tool_hint).to_string(),
        initial_ttl: ittl,
    }
}

/// Settings of one agent run beyond the config file.
pub struct RunOptions {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeChoice,
    pub outbound: bool,
    /// Stop after this long (tests, `baseline`); None = until Ctrl-C / SIGTERM.
    pub duration: Option<Duration>,
    pub enforce_blocklist: bool,
}

/// Map sizes and settings derived from the config.
pub fn load_options(cfg: &Config, enforce_blocklist: bool) -> LoadOptions {
    let hp = cfg.effective_honeyports();
    let x = &cfg.xdp;
    let mut flags = 0;
    if x.lookup_sockets {
        flags |= scanwatch_common::cfgflag::LOOKUP_SOCKETS;
    }
    if x.verify_checksums {
        flags |= scanwatch_common::cfgflag::VERIFY_CSUM;
    }
    if x.first_contact {
        flags |= scanwatch_common::cfgflag::FIRST_CONTACT;
    }
    LoadOptions {
        max_sources: x.max_sources,
        max_fingerprints: x.max_fingerprints,
        max_procs: x.max_procs,
        ringbuf_bytes: x.ringbuf_bytes,
        enforce_blocklist,
        xdp: XdpConfig {
            short_window_ns: x.short_window.as_nanos() as u64,
            port_threshold: x.port_threshold,
            host_threshold: x.host_threshold,
            flags,
            enforce_blocklist: u32::from(enforce_blocklist),
        },
        own_tgid: std::process::id(),
        honeyports_tcp: hp.tcp,
        honeyports_udp: hp.udp,
    }
}

/// What the run loop feeds: the detection engine (`run`) or the baseline learner (`baseline`).
pub trait Observer {
    fn observe_source(&mut self, now: Duration, s: &SourceSnapshot) -> Vec<Alert>;
    fn observe_inbound_event(&mut self, now: Duration, e: &InboundObservation) -> Vec<Alert>;
    fn observe_outbound(&mut self, now: Duration, o: &OutboundObservation) -> Vec<Alert>;
    fn tick(&mut self, now: Duration) -> Vec<Alert>;
    fn observe_held(&mut self, now: Duration, probes: &[HeldProbe]) -> Vec<Alert>;
}

impl Observer for Engine {
    fn observe_source(&mut self, now: Duration, s: &SourceSnapshot) -> Vec<Alert> {
        Engine::observe_source(self, now, s)
    }
    fn observe_inbound_event(&mut self, now: Duration, e: &InboundObservation) -> Vec<Alert> {
        Engine::observe_inbound_event(self, now, e)
    }
    fn observe_outbound(&mut self, now: Duration, o: &OutboundObservation) -> Vec<Alert> {
        Engine::observe_outbound(self, now, o)
    }
    fn tick(&mut self, now: Duration) -> Vec<Alert> {
        Engine::tick(self, now)
    }
    fn observe_held(&mut self, now: Duration, probes: &[HeldProbe]) -> Vec<Alert> {
        Engine::observe_held(self, now, probes)
    }
}

impl Observer for BaselineLearner {
    fn observe_source(&mut self, now: Duration, s: &SourceSnapshot) -> Vec<Alert> {
        BaselineLearner::observe_source(self, now, s);
        Vec::new()
    }
    fn observe_inbound_event(&mut self, now: Duration, e: &InboundObservation) -> Vec<Alert> {
        BaselineLearner::observe_inbound_event(self, now, e);
        Vec::new()
    }
    fn observe_outbound(&mut self, now: Duration, o: &OutboundObservation) -> Vec<Alert> {
        BaselineLearner::observe_outbound(self, now, o);
        Vec::new()
    }
    fn tick(&mut self, now: Duration) -> Vec<Alert> {
        BaselineLearner::tick(self, now);
        Vec::new()
    }
    /// One-probe sources carry nothing a baseline learns from (no fan-out of their own).
    fn observe_held(&mut self, _now: Duration, _probes: &[HeldProbe]) -> Vec<Alert> {
        Vec::new()
    }
}

/// Run the agent until the duration elapses or a signal arrives. Alerts go to `out`.
pub async fn run<W: Write>(cfg: Config, opts: RunOptions, out: W) -> anyhow::Result<()> {
    let hostname = cfg.agent.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
    });
    let fleet = crate::fleet::publish::start(&cfg, &hostname).await?;
    let mut engine = Engine::new(&cfg, hostname);
    engine.set_wall_clock(monotonic(), std::time::SystemTime::now());
    if let Some(path) = &cfg.agent.baseline {
        match crate::detect::Baseline::load(path) {
            Ok(b) => engine.set_baseline(b),
            Err(e) => anyhow::bail!("agent.baseline: {}: {e}", path.display()),
        }
    }
    let Some(fleet) = fleet else { return run_with(&cfg, opts, &mut engine, out).await };
    let res = run_with(&cfg, opts, &mut crate::fleet::publish::Tee::new(&mut engine, &fleet), out).await;
    fleet.finish().await;
    res
}

/// The run loop over any observer.
pub async fn run_with<O: Observer, W: Write>(cfg: &Config, opts: RunOptions, engine: &mut O, out: W) -> anyhow::Result<()> {
    let lopts = load_options(cfg, opts.enforce_blocklist);
    let mut ebpf = loader::load(&lopts)?;
    if let Err(e) = aya_log::EbpfLogger::init(&mut ebpf) {
        log::debug!("no eBPF log map: {e}");
    }
    let mut ifaces = opts.interfaces.clone();
    if ifaces.is_empty() {
        ifaces.push(loader::default_route_interface().ok_or_else(|| {
            anyhow::anyhow!("no default-route interface found; pass --interface")
        })?);
    }
    let mut attached = Vec::new();
    for i in &ifaces {
        let (mode, fallback) = loader::attach_xdp(&mut ebpf, i, opts.xdp_mode)?;
        match fallback {
            Some(why) => eprintln!("scanwatch: xdp attached to {i} in {mode} mode (fallback; {why})"),
            None => eprintln!("scanwatch: xdp attached to {i} in {mode} mode"),
        }
        attached.push(format!("{i}:{mode}"));
    }
    if opts.outbound {
        for (hook, method) in loader::attach_outbound(&mut ebpf)? {
            eprintln!("scanwatch: hook {hook} -> {method}");
        }
    }
    let ring = RingBuf::try_from(ebpf.take_map(MAP_EVENTS).ok_or_else(|| anyhow::anyhow!("map EVENTS missing"))?)?;
    // SAFETY: `ring` owns its fd and stays inside the AsyncFd (registered once, closed on drop).
    let mut ring = unsafe { AsyncFd::register(ring)? };
    let sources: BpfHashMap<MapData, SrcKey, SrcState> =
        BpfHashMap::try_from(ebpf.take_map(MAP_SOURCES).ok_or_else(|| anyhow::anyhow!("map SOURCES missing"))?)?;
    let fps: BpfHashMap<MapData, FpKey, FpValue> = BpfHashMap::try_from(
        ebpf.take_map(MAP_FINGERPRINTS).ok_or_else(|| anyhow::anyhow!("map FINGERPRINTS missing"))?,
    )?;
    let stats: PerCpuArray<MapData, [u64; stat::N as usize]> =
        PerCpuArray::try_from(ebpf.take_map(MAP_STATS).ok_or_else(|| anyhow::anyhow!("map STATS missing"))?)?;
    let mut known: Array<MapData, u64> =
        Array::try_from(ebpf.take_map(MAP_KNOWN).ok_or_else(|| anyhow::anyhow!("map KNOWN_SOURCES missing"))?)?;
    let mut suspect: Array<MapData, u64> =
        Array::try_from(ebpf.take_map(MAP_SUSPECT).ok_or_else(|| anyhow::anyhow!("map SUSPECT_SOURCES missing"))?)?;
    let mut responder = if lopts.enforce_blocklist {
        let map: BpfHashMap<MapData, SrcKey, u32> = BpfHashMap::try_from(
            ebpf.take_map(MAP_BLOCKLIST).ok_or_else(|| anyhow::anyhow!("map BLOCKLIST missing"))?,
        )?;
        eprintln!(
            "scanwatch: active response on: inbound scanners alerted at {} or above are dropped for {:?}",
            cfg.response.block_min_severity.as_str(),
            cfg.response.block_ttl
        );
        Some(Responder::new(map, cfg.response.clone()))
    } else {
        None
    };
    let fc_view = FirstContactView::new(
        ebpf.take_map(MAP_FIRST_CONTACT).ok_or_else(|| anyhow::anyhow!("map FIRST_CONTACT missing"))?,
    )?;
    let mut held_reader = HeldReader::default();
    let mut held_scan = tokio::time::interval(HELD_SCAN);
    let mut known_rebuild = tokio::time::interval_at(tokio::time::Instant::now() + KNOWN_REBUILD, KNOWN_REBUILD);

    let mut sink = JsonlSink::new(out);
    let mut procs = ProcCache::new();
    let mut sweep = tokio::time::interval(cfg.agent.sweep_interval);
    let mut report = tokio::time::interval(Duration::from_secs(60));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut last_sweep_ns = 0u64;
    let mut last_dropped = 0u64;
    eprintln!("scanwatch: ready (interfaces: {}; outbound: {})", attached.join(","), opts.outbound);

    loop {
        let alerts = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let mut alerts = Vec::new();
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    alerts.extend(handle_record(&item, engine, &mut procs, Some((&sources, &fps))));
                }
                guard.clear_ready();
                alerts
            }
            _ = sweep.tick() => {
                let now = monotonic();
                if let Some(r) = responder.as_mut() {
                    r.expire(now);
                }
                let mut alerts = sweep_sources(&sources, &fps, engine, now, last_sweep_ns);
                last_sweep_ns = now.as_nanos() as u64;
                alerts.extend(engine.tick(now));
                alerts
            }
            _ = held_scan.tick() => {
                let held = held_reader.read(&fc_view, Listeners::read);
                engine.observe_held(monotonic(), &held)
            }
            _ = known_rebuild.tick() => {
                if let Err(e) = rebuild_known_filter(&sources, &mut known) {
                    eprintln!("scanwatch: WARNING cannot rebuild the known-source filter: {e:#}");
                }
                if let Err(e) = clear_suspects(&mut suspect) {
                    eprintln!("scanwatch: WARNING cannot clear the suspect-source filter: {e:#}");
                }
                Vec::new()
            }
            _ = report.tick() => {
                let totals = read_stats(&stats);
                let dropped = totals[stat::EVENTS_DROPPED as usize] + totals[stat::PROC_EVENTS_DROPPED as usize];
                if dropped > last_dropped {
                    eprintln!("scanwatch: WARNING ring buffer full: {} events dropped so far", dropped);
                    last_dropped = dropped;
                }
                Vec::new()
            }
        };
        for mut a in alerts {
            if let Some(r) = responder.as_mut() {
                r.apply(monotonic(), &mut a);
            }
            sink.write(&a)?;
        }
    }
    let totals = read_stats(&stats);
    let live = sources.keys().filter(|k| k.is_ok()).count() as u64;
    let mut summary = serde_json::Map::new();
    for (i, name) in stat::NAMES.iter().enumerate() {
        if !name.is_empty() {
            summary.insert((*name).to_string(), totals[i].into());
        }
    }
    summary.insert("live_sources".into(), live.into());
    summary.insert(
        "evictions".into(),
        totals[stat::NEW_SOURCES as usize].saturating_sub(live).into(),
    );
    summary.insert("alerts_written".into(), sink.written.into());
    if let Some(r) = &responder {
        summary.insert("blocked_sources".into(), r.blocked_count().into());
    }
    eprintln!("scanwatch: stopped; counters {}", serde_json::Value::Object(summary));
    // Dropping `ebpf` detaches every program and link.
    Ok(())
}

/// Sum the per-CPU counters.
pub fn read_stats(stats: &PerCpuArray<MapData, [u64; stat::N as usize]>) -> [u64; stat::N as usize] {
    let mut out = [0u64; stat::N as usize];
    if let Ok(vals) = stats.get(&0, 0) {
        for v in vals.iter() {
            for (o, x) in out.iter_mut().zip(v.iter()) {
                *o += x;
            }
        }
    }
    out
}

/// Turn a kernel source entry into the engine's snapshot.
pub fn snapshot(key: &SrcKey, s: &SrcState, fps: &BpfHashMap<MapData, FpKey, FpValue>) -> SourceSnapshot {
    let mut counts = [0u64; cnt::N];
    for (c, v) in counts.iter_mut().zip(s.counts.iter()) {
        *c = u64::from(*v);
    }
    let n = (s.n_fp as usize).min(s.fp_hashes.len());
    let fingerprints = s.fp_hashes[..n]
        .iter()
        .filter_map(|h| fps.get(&FpKey { src: *key, hash: *h }, 0).ok())
        .map(|v| fingerprint_info(&v.fp))
        .collect();
    SourceSnapshot {
        ip: key_to_ip(key),
        first_seen_ns: s.first_seen_ns,
        last_seen_ns: s.last_seen_ns,
        counts,
        distinct_ports: distinct_ports(&s.port_hll, s.n_sample),
        distinct_hosts: hll_estimate(&s.host_hll),
        sample_ports: s.sample_ports[..(s.n_sample as usize).min(s.sample_ports.len())].to_vec(),
        sample_hosts: Vec::new(),
        fingerprints,
        blocked: false,
    }
}

/// How often the first-contact table is read for one-probe sources.
const HELD_SCAN: Duration = Duration::from_secs(5);

/// How often the known-source filter is rebuilt from the live SOURCES keys.
const KNOWN_REBUILD: Duration = Duration::from_secs(600);

/// Rebuild the XDP program's known-source filter from the sources that have state now. Bits of
/// evicted sources otherwise stay set forever, and a saturated filter makes every new source
/// pay a SOURCES lookup. A source admitted while this runs may lose its bit: its next packet
/// then passes the first-contact table once more and finds its state (nothing is lost).
/// Returns the number of bits set.
pub fn rebuild_known_filter(
    sources: &BpfHashMap<MapData, SrcKey, SrcState>,
    known: &mut Array<MapData, u64>,
) -> anyhow::Result<u32> {
    let mut words = vec![0u64; scanwatch_common::KNOWN_WORDS as usize];
    for key in sources.keys() {
        let Ok(key) = key else { continue };
        // SAFETY: [u8; 16] and [u64; 2] have the same size; any bit pattern is valid.
        let w: [u64; 2] = unsafe { std::mem::transmute(key.addr) };
        let (word, bit) = scanwatch_common::known_bit(scanwatch_common::addr_hash(&w));
        words[word as usize] |= bit;
    }
    for (i, w) in words.iter().enumerate() {
        known.set(i as u32, *w, 0)?;
    }
    Ok(words.iter().map(|w| w.count_ones()).sum())
}

/// Forget which sources were suspected of orphan-ACK probing (their bare ACKs go back to one
/// lookup in `ACK_SAMPLE`): a legitimate client with one stray late ACK is not looked up forever.
pub fn clear_suspects(suspect: &mut Array<MapData, u64>) -> anyhow::Result<()> {
    for i in 0..scanwatch_common::SUSPECT_WORDS {
        suspect.set(i, 0, 0)?;
    }
    Ok(())
}

/// Bound on how far `bpf_ktime_get_coarse_ns` trails CLOCK_MONOTONIC (one tick is 1–10 ms).
const COARSE_CLOCK_SLACK_NS: u64 = 20_000_000;

fn sweep_sources<O: Observer>(
    sources: &BpfHashMap<MapData, SrcKey, SrcState>,
    fps: &BpfHashMap<MapData, FpKey, FpValue>,
    engine: &mut O,
    now: Duration,
    since_ns: u64,
) -> Vec<Alert> {
    let mut alerts = Vec::new();
    for item in sources.iter() {
        let Ok((key, s)) = item else { continue };
        // Only sources active since the previous sweep carry new information. The kernel stamps
        // per-source times with the coarse clock, up to one tick behind this one: allow for it.
        if s.last_seen_ns < since_ns.saturating_sub(COARSE_CLOCK_SLACK_NS) {
            continue;
        }
        alerts.extend(engine.observe_source(now, &snapshot(&key, &s, fps)));
    }
    alerts
}

fn read_record<T: Copy>(data: &[u8]) -> Option<T> {
    (data.len() >= std::mem::size_of::<T>())
        // SAFETY: length checked; the kernel wrote a `T` (POD, repr(C)); unaligned read.
        .then(|| unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<T>()) })
}

fn comm_str(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// The kernel maps a record handler may read to complete an event (sample ports, counts).
pub type SourceMaps<'a> = (&'a BpfHashMap<MapData, SrcKey, SrcState>, &'a BpfHashMap<MapData, FpKey, FpValue>);

/// Dispatch one ring-buffer record on its header kind. For threshold and honeyport events the
/// source's current map entry is fed first, so the immediate alert carries the sample ports and
/// counts instead of waiting for the next sweep.
pub fn handle_record<O: Observer>(data: &[u8], engine: &mut O, procs: &mut ProcCache, maps: Option<SourceMaps<'_>>) -> Vec<Alert> {
    let Some(hdr) = read_record::<scanwatch_common::EventHeader>(data) else { return Vec::new() };
    let now = monotonic();
    match hdr.kind {
        kind::HONEYPORT | kind::THRESHOLD | kind::NEW_FINGERPRINT => {
            let Some(e) = read_record::<InboundEvent>(data) else { return Vec::new() };
            let k = match hdr.kind {
                kind::HONEYPORT => InboundEventKind::Honeyport { dport: e.dport, proto: e.proto },
                kind::THRESHOLD => InboundEventKind::Threshold {
                    ports: e.detail & scanwatch_common::thr::PORTS != 0,
                    hosts: e.detail & scanwatch_common::thr::HOSTS != 0,
                    win_ports: e.win_ports,
                    win_hosts: e.win_hosts,
                },
                _ => InboundEventKind::NewFingerprint(fingerprint_info(&e.fp)),
            };
            let mut alerts = Vec::new();
            if let (Some((sources, fps)), true) = (maps, hdr.kind != kind::NEW_FINGERPRINT) {
                if let Ok(st) = sources.get(&e.src, 0) {
                    alerts.extend(engine.observe_source(now, &snapshot(&e.src, &st, fps)));
                }
            }
            let obs = InboundObservation { ip: key_to_ip(&e.src), dst: key_to_ip(&e.dst), kind: k };
            alerts.extend(engine.observe_inbound_event(now, &obs));
            alerts
        }
        kind::PROC_CONNECT | kind::PROC_SENDTO | kind::PROC_SOCKET | kind::PROC_OUTCOME
        | kind::PROC_CONNECT_RESULT => {
            let Some(e) = read_record::<ProcEvent>(data) else { return Vec::new() };
            let uid = (e.hdr.kind != kind::PROC_OUTCOME).then_some(e.uid);
            let process = procs.get(e.tgid, e.pid, &comm_str(&e.comm), uid);
            let dst = key_to_ip(&e.dst);
            let action = match e.hdr.kind {
                kind::PROC_CONNECT => OutboundAction::Connect { dst, dport: e.dport },
                kind::PROC_SENDTO if e.sock_type == 3 => {
                    OutboundAction::RawProbe { dst, dport: e.dport, proto: e.proto, tcp_flags: e.tcp_flags }
                }
                kind::PROC_SENDTO => OutboundAction::UdpSend { dst, dport: e.dport },
                kind::PROC_SOCKET => OutboundAction::RawSocket { family: e.family, sock_type: e.sock_type },
                kind::PROC_OUTCOME => {
                    OutboundAction::Outcome { dst, dport: e.dport, success: e.value == outcome::ESTABLISHED }
                }
                // Immediate connect() failure: no address in the record; counts as a failure
                // to an unknown peer.
                _ => OutboundAction::Outcome { dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED), dport: 0, success: false },
            };
            // A sendmmsg batch counts once per message; the observation is built once.
            let repeat = if matches!(action, OutboundAction::RawProbe { .. }) { e.count.clamp(1, 1024) } else { 1 };
            let obs = OutboundObservation { process, action };
            let mut alerts = Vec::new();
            for _ in 0..repeat {
                alerts.extend(engine.observe_outbound(now, &obs));
            }
            alerts
        }
        _ => Vec::new(),
    }
}
