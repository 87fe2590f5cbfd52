//! The pipeline every source runs through:
//!
//! ```text
//! source (live kernel | pcap replay | Zeek conn.log | fleet)  →  Stamped observations
//!   → enrich (process identity and lineage from /proc)        →  detect (pure engine) → findings
//!   → enrich findings (ASN)  → response (opt-in XDP block / dry-run, evidence pcap)
//!   → sinks (output format per sink)
//! ```
//!
//! [`Pipeline::push`] takes one stamped observation through every stage; [`run`] drives it from
//! the live kernel source until a signal or the deadline, serving the control socket and the
//! metrics endpoint from the same loop (the loop owns all state; requests queue to it), reloading
//! the configuration on SIGHUP and detaching everything on SIGTERM / SIGINT.
use std::time::{Duration, Instant};

use crate::asn::AsnDb;
use crate::config::Config;
use crate::control::activity::Activity;
use crate::control::server::Incoming;
use crate::control::{Request, Response, ResponseStatus, Status};
use crate::detect::{Engine, Observation, Observer, OutboundObservation, Stamped};
use crate::enrich::ProcCache;
use crate::evidence::EvidenceCapture;
use crate::response::{NoTable, Responder};
use crate::sinks::SinkSet;
use crate::source::live::LiveSource;
use crate::vocab::monotonic;

/// Entries in each top list of the status.
const TOP_N: usize = 20;

/// Stages after the source, over any observer (the engine, or the baseline learner).
pub struct Pipeline<O: Observer> {
    pub engine: O,
    procs: Option<ProcCache>,
    responder: Option<Responder>,
    pub sinks: SinkSet,
    pub asn: Option<AsnDb>,
    pub evidence: Option<EvidenceCapture>,
    pub activity: Activity,
    /// Where the engine's actor store is persisted (`depth.store_path`), if anywhere.
    actor_store: Option<std::path::PathBuf>,
}

impl<O: Observer> Pipeline<O> {
    pub fn new(engine: O, sinks: SinkSet, responder: Option<Responder>) -> Self {
        Pipeline {
            engine,
            procs: None,
            responder,
            sinks,
            asn: None,
            evidence: None,
            activity: Activity::default(),
            actor_store: None,
        }
    }

    /// Persist the observer's actor store at `path` every `depth.save_interval` and on
    /// [`Pipeline::save_actors`].
    pub fn with_actor_store(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.actor_store = path;
        self
    }

    /// Write the actor store now (`force`) or when due. A failed write is reported, not fatal.
    pub fn save_actors(&mut self, now: std::time::Duration, force: bool) {
        let Some(path) = &self.actor_store else { return };
        if let Some(store) = self.engine.actors_due(now, force) {
            if let Err(e) = crate::depth::store::save(path, &store) {
                eprintln!("scanwatch: depth.store_path: {e}");
            }
        }
    }

    /// One observation through enrichment, detection, response and the sinks.
    pub fn push(&mut self, s: Stamped) {
        let alerts = match s.obs {
            Observation::ProcessAction(pa) => {
                let procs = self.procs.get_or_insert_with(ProcCache::new);
                let process = procs.get(pa.tgid, pa.pid, &pa.comm, pa.uid);
                let obs = OutboundObservation { process, action: pa.action };
                let mut alerts = Vec::new();
                for _ in 0..pa.repeat.max(1) {
                    alerts.extend(self.engine.observe_outbound(s.at, &obs));
                }
                alerts
            }
            ref obs => {
                if let (Some(r), Observation::Tick) = (self.responder.as_mut(), obs) {
                    r.expire(s.at);
                }
                if matches!(obs, Observation::Tick) {
                    self.save_actors(s.at, false);
                }
                self.engine.observe(&s)
            }
        };
        for mut a in alerts {
            if let Some(db) = self.asn.as_mut() {
                db.annotate(&mut a);
            }
            if let Some(r) = self.responder.as_mut() {
                r.apply(s.at, &mut a);
            }
            if let Some(e) = self.evidence.as_mut() {
                e.on_alert(&mut a);
            }
            self.activity.record(&a);
            self.sinks.write(&a);
        }
    }

    /// The source is done: the engine's open incidents close (their `final` lines) through the
    /// response stage and the sinks.
    pub fn finish(&mut self, now: std::time::Duration) {
        for mut a in self.engine.finish(now) {
            if let Some(r) = self.responder.as_mut() {
                r.apply(now, &mut a);
            }
            self.sinks.write(&a);
        }
    }

    /// Sources blocked by the response stage now.
    pub fn blocked_count(&self) -> Option<usize> {
        self.responder.as_ref().map(Responder::blocked_count)
    }

    pub fn responder(&self) -> Option<&Responder> {
        self.responder.as_ref()
    }

    pub fn responder_mut(&mut self) -> Option<&mut Responder> {
        self.responder.as_mut()
    }
}

/// Re-reads the configuration the agent was started with (file + command line) on SIGHUP.
pub type Reloader = Box<dyn Fn() -> anyhow::Result<Config> + Send>;

fn hostname(cfg: &Config) -> String {
    cfg.agent.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
    })
}

/// Run the agent: the live kernel source through the detection engine until `duration` elapses
/// or SIGINT/SIGTERM arrives.
pub async fn run(cfg: Config, duration: Option<Duration>) -> anyhow::Result<()> {
    run_reloadable(cfg, duration, None).await
}

/// [`run`], re-reading the configuration with `reload` on SIGHUP.
pub async fn run_reloadable(cfg: Config, duration: Option<Duration>, reload: Option<Reloader>) -> anyhow::Result<()> {
    let fleet = crate::fleet::publish::start(&cfg, &hostname(&cfg)).await?;
    let mut engine = Engine::new(&cfg, hostname(&cfg));
    engine.set_wall_clock(monotonic(), std::time::SystemTime::now());
    if let Some(path) = &cfg.agent.baseline {
        match crate::detect::Baseline::load(path) {
            Ok(b) => {
                eprintln!("scanwatch: baseline {} loaded: {}", path.display(), b.describe());
                engine.set_baseline(b);
            }
            Err(e) => anyhow::bail!("agent.baseline: {}: {e}", path.display()),
        }
    }
    if let (true, Some(path)) = (cfg.depth.enabled, &cfg.depth.store_path) {
        match crate::depth::store::load(path, cfg.depth.max_actors) {
            Ok(store) => {
                eprintln!("scanwatch: actor store {}: {} actors", path.display(), store.actors.len());
                engine.load_actors(monotonic(), store);
            }
            Err(e) => anyhow::bail!("depth.store_path: {e}"),
        }
    }
    let sinks = SinkSet::build(&cfg.sinks)?;
    let Some(fleet) = fleet else { return run_live_with(&cfg, duration, engine, sinks, reload).await.map(|_| ()) };
    let tee = run_live_with(&cfg, duration, crate::fleet::publish::Tee::new(engine, fleet), sinks, reload).await?;
    tee.finish().await;
    Ok(())
}

/// The live loop over any observer; returns it when done.
pub async fn run_live<O: Observer>(
    cfg: &Config,
    duration: Option<Duration>,
    engine: O,
    sinks: SinkSet,
) -> anyhow::Result<O> {
    run_live_with(cfg, duration, engine, sinks, None).await
}

fn open_asn(cfg: &Config) -> anyhow::Result<Option<AsnDb>> {
    Ok(match &cfg.enrich.asn_db {
        Some(p) => {
            let db = AsnDb::open(p)?;
            eprintln!("scanwatch: ASN database {} loaded: inbound findings get asn and org", p.display());
            Some(db)
        }
        None => None,
    })
}

/// The agent's loop state besides the pipeline.
struct Agent {
    cfg: Config,
    started: Instant,
    hostname: String,
    enforcing: bool,
    reload: Option<Reloader>,
    reloads: u64,
    reload_errors: u64,
}

/// The live loop with an optional SIGHUP reloader.
pub async fn run_live_with<O: Observer>(
    cfg: &Config,
    duration: Option<Duration>,
    engine: O,
    sinks: SinkSet,
    reload: Option<Reloader>,
) -> anyhow::Result<O> {
    let asn = open_asn(cfg)?;
    let evidence = EvidenceCapture::new(&cfg.evidence)
        .map_err(|e| anyhow::anyhow!("evidence.dir: {}: {e}", cfg.evidence.dir.as_deref().unwrap_or(std::path::Path::new("")).display()))?;
    let mut source = LiveSource::open(cfg)?;
    let table = source.take_block_table();
    let enforcing = table.is_some();
    let responder = match table {
        Some(t) => {
            eprintln!(
                "scanwatch: active response on{}: inbound scanners alerted at {} or above are dropped for {:?}",
                if cfg.response.dry_run { " in dry-run (nothing is inserted)" } else { "" },
                cfg.response.block_min_severity.as_str(),
                cfg.response.block_ttl
            );
            Some(Responder::new(Box::new(t), cfg.response.clone()))
        }
        None if cfg.response.dry_run => {
            eprintln!("scanwatch: response dry-run: reporting what would be blocked, inserting nothing");
            Some(Responder::new(Box::new(NoTable), cfg.response.clone()))
        }
        None => None,
    };
    let store_path = cfg.depth.enabled.then(|| cfg.depth.store_path.clone()).flatten();
    let mut pipeline = Pipeline::new(engine, sinks, responder).with_actor_store(store_path);
    if source.outbound {
        // Listen to the process connector from the start: the forks a loop makes before its
        // first probe count towards its anchor (see enrich).
        pipeline.procs = Some(ProcCache::new());
    }
    pipeline.asn = asn;
    pipeline.evidence = evidence;
    if let Some(d) = &cfg.evidence.dir {
        eprintln!("scanwatch: evidence capture on: {} per alert into {}", crate::vocab::format_duration(cfg.evidence.duration), d.display());
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Incoming>(64);
    let mut _socket_guard = None;
    if let Some(p) = &cfg.control.socket {
        match crate::control::server::bind(p) {
            Ok((l, guard)) => {
                _socket_guard = Some(guard);
                tokio::spawn(crate::control::server::serve(l, tx.clone()));
                eprintln!("scanwatch: control socket {} (root only)", p.display());
            }
            Err(e) => eprintln!("scanwatch: WARNING control.socket {}: {e}; status and block commands unavailable", p.display()),
        }
    }
    if let Some(addr) = cfg.metrics.listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                eprintln!("scanwatch: metrics on http://{}/metrics", l.local_addr().unwrap_or(addr));
                tokio::spawn(crate::metrics::serve(l, tx.clone()));
            }
            Err(e) => eprintln!("scanwatch: WARNING metrics.listen {addr}: {e}; no metrics endpoint"),
        }
    }
    drop(tx);
    let mut agent = Agent {
        cfg: cfg.clone(),
        started: Instant::now(),
        hostname: hostname(cfg),
        enforcing,
        reload,
        reloads: 0,
        reload_errors: 0,
    };
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let mut batch = Vec::new();
    let modes: Vec<String> = source.modes.iter().map(|m| format!("{}={}", m.name, m.mode.name())).collect();
    eprintln!(
        "scanwatch: ready (interfaces: {}; outbound: {}; modes: {})",
        source.attached.join(","),
        source.outbound,
        modes.join(",")
    );
    let why = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
            _ = sighup.recv() => agent.reload(&mut pipeline),
            Some(inc) = rx.recv() => {
                let resp = agent.handle(inc.req, &mut pipeline, &source);
                let _ = inc.reply.send(resp);
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break "deadline",
            r = source.next(&mut batch) => {
                r?;
                for s in batch.drain(..) {
                    pipeline.push(s);
                }
            }
        }
    };
    if let Some(e) = pipeline.evidence.as_mut() {
        e.stop_all();
    }
    pipeline.finish(monotonic());
    pipeline.save_actors(monotonic(), true);
    pipeline.sinks.flush();
    let mut summary = source.counters();
    summary.insert("alerts_written".into(), pipeline.sinks.written().into());
    let dropped: u64 = pipeline.sinks.stats().values().map(|s| s.dropped).sum();
    summary.insert("alerts_dropped".into(), dropped.into());
    if let Some(n) = pipeline.blocked_count() {
        summary.insert("blocked_sources".into(), n.into());
    }
    if let Some(r) = pipeline.responder() {
        summary.insert("response_evicted".into(), r.counters.evicted.into());
        summary.insert("response_refused".into(), r.counters.refused.into());
        summary.insert("response_would_block".into(), r.counters.would_block.into());
    }
    if let Some(e) = pipeline.evidence.as_mut() {
        summary.insert("evidence_captures".into(), e.status().started.into());
    }
    summary.insert("reloads".into(), agent.reloads.into());
    // The kernel programs and links are detached when `source` drops, right after this line.
    eprintln!("scanwatch: stopped ({why}); counters {}", serde_json::Value::Object(summary));
    drop(source);
    Ok(pipeline.engine)
}

impl Agent {
    fn status<O: Observer>(&self, p: &mut Pipeline<O>, source: &LiveSource) -> Status {
        let (cpu_seconds, rss_bytes) = crate::control::self_usage();
        let now = monotonic();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            hostname: self.hostname.clone(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            xdp: source.attached.clone(),
            hooks: source.hooks.iter().cloned().collect(),
            kernel: source.counters().into_iter().filter_map(|(k, v)| Some((k, v.as_u64()?))).collect(),
            alerts: p.activity.by_kind(),
            sinks: p.sinks.stats(),
            response: p.responder().map(|r| ResponseStatus {
                enforcing: self.enforcing,
                dry_run: r.dry_run(),
                max_blocked: r.config().max_blocked,
                counters: r.counters,
                entries: r.list(now),
            }),
            evidence: p.evidence.as_mut().map(EvidenceCapture::status),
            asn: p.asn.as_ref().map(|a| a.stats),
            top_sources: p.activity.top_sources(TOP_N),
            top_processes: p.activity.top_processes(TOP_N),
            cpu_seconds,
            rss_bytes,
            reloads: self.reloads,
            reload_errors: self.reload_errors,
        }
    }

    fn handle<O: Observer>(&mut self, req: Request, p: &mut Pipeline<O>, source: &LiveSource) -> Response {
        let now = monotonic();
        match req {
            Request::Status => Response { ok: true, status: Some(Box::new(self.status(p, source))), ..Default::default() },
            Request::BlockList => match p.responder() {
                Some(r) => Response { ok: true, blocks: Some(r.list(now)), dry_run: r.dry_run(), ..Default::default() },
                None => Response::error("active response is off (set xdp.enforce_blocklist = true, or response.dry_run = true)"),
            },
            Request::BlockAdd { ip, ttl_secs } => {
                let ttl = match ttl_secs {
                    Some(t) if !(t.is_finite() && t > 0.0) => return Response::error(format!("ttl_secs {t} must be positive")),
                    Some(t) => Some(Duration::from_secs_f64(t)),
                    None => None,
                };
                match p.responder_mut() {
                    Some(r) => match r.add_manual(now, ip, ttl) {
                        Ok(()) => {
                            eprintln!("scanwatch: operator blocked {ip}");
                            Response::ok()
                        }
                        Err(e) => Response::error(e.to_string()),
                    },
                    None => Response::error("active response is off: set xdp.enforce_blocklist = true to block"),
                }
            }
            Request::BlockDel { ip } => match p.responder_mut() {
                Some(r) => match r.remove(ip) {
                    Ok(()) => Response::ok(),
                    Err(e) => Response::error(e.to_string()),
                },
                None => Response::error("active response is off"),
            },
        }
    }

    /// SIGHUP: re-read the configuration; apply what can change while running (sinks, response,
    /// evidence, ASN database) without touching detection state; name the sections that need a
    /// restart. A configuration that does not validate changes nothing.
    fn reload<O: Observer>(&mut self, p: &mut Pipeline<O>) {
        let Some(reload) = &self.reload else {
            eprintln!("scanwatch: SIGHUP ignored: this agent has no configuration to re-read");
            return;
        };
        let new = match reload() {
            Ok(c) => c,
            Err(e) => {
                self.reload_errors += 1;
                eprintln!("scanwatch: reload refused, the running configuration stays: {e:#}");
                return;
            }
        };
        let old = &self.cfg;
        // Fallible parts first: nothing changes unless all of them succeed.
        let sinks = if new.sinks != old.sinks {
            match SinkSet::build(&new.sinks) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.reload_errors += 1;
                    eprintln!("scanwatch: reload refused, the running configuration stays: {e}");
                    return;
                }
            }
        } else {
            None
        };
        let asn = if new.enrich != old.enrich {
            match open_asn(&new) {
                Ok(a) => Some(a),
                Err(e) => {
                    self.reload_errors += 1;
                    eprintln!("scanwatch: reload refused, the running configuration stays: {e:#}");
                    return;
                }
            }
        } else {
            None
        };
        let mut applied = Vec::new();
        if let Some(s) = sinks {
            p.sinks.flush();
            p.sinks = s;
            applied.push("sinks");
        }
        if let Some(a) = asn {
            p.asn = a;
            applied.push("enrich");
        }
        if new.response != old.response {
            match p.responder.as_mut() {
                Some(r) => r.reconfigure(new.response.clone()),
                None if new.response.dry_run => p.responder = Some(Responder::new(Box::new(NoTable), new.response.clone())),
                None => {}
            }
            applied.push("response");
        }
        if new.evidence != old.evidence {
            match (p.evidence.as_mut(), new.evidence.dir.is_some()) {
                (Some(e), true) => e.reconfigure(&new.evidence),
                (_, false) => p.evidence = None,
                (None, true) => match EvidenceCapture::new(&new.evidence) {
                    Ok(e) => p.evidence = e,
                    Err(e) => eprintln!("scanwatch: WARNING evidence.dir: {e}; no capture"),
                },
            }
            applied.push("evidence");
        }
        let mut restart = Vec::new();
        for (name, changed) in [
            ("agent", new.agent != old.agent),
            ("xdp", new.xdp != old.xdp),
            ("honeyports", new.honeyports != old.honeyports),
            ("detect", new.detect != old.detect),
            ("allowlist", new.allowlist != old.allowlist),
            ("alerts", new.alerts != old.alerts),
            ("roles", new.roles != old.roles),
            ("metrics", new.metrics != old.metrics),
            ("control", new.control != old.control),
        ] {
            if changed {
                restart.push(name);
            }
        }
        // Keep the running values of the sections that need a restart, so the next reload
        // compares against what is really in force.
        let mut kept = new;
        kept.agent = old.agent.clone();
        kept.xdp = old.xdp.clone();
        kept.honeyports = old.honeyports.clone();
        kept.detect = old.detect.clone();
        kept.allowlist = old.allowlist.clone();
        kept.alerts = old.alerts.clone();
        kept.roles = old.roles.clone();
        kept.metrics = old.metrics.clone();
        kept.control = old.control.clone();
        self.cfg = kept;
        self.reloads += 1;
        eprintln!(
            "scanwatch: configuration reloaded (detection state kept): applied [{}]; need a restart to take effect [{}]",
            applied.join(", "),
            restart.join(", ")
        );
    }
}
