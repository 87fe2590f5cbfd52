//! The pipeline every source runs through:
//!
//! ```text
//! source (live kernel | pcap replay | Zeek conn.log | fleet)  →  Stamped observations
//!   → enrich (process identity and lineage from /proc)        →  detect (pure engine) → findings
//!   → response (opt-in XDP block, marks findings blocked)      →  sinks (output format per sink)
//! ```
//!
//! [`Pipeline::push`] takes one stamped observation through every stage; [`run`] drives it from
//! the live kernel source until a signal or the deadline.
use std::time::Duration;

use crate::config::Config;
use crate::detect::{Engine, Observation, Observer, OutboundObservation, Stamped};
use crate::enrich::ProcCache;
use crate::response::Responder;
use crate::sinks::SinkSet;
use crate::source::live::LiveSource;
use crate::vocab::monotonic;

/// Stages after the source, over any observer (the engine, or the baseline learner).
pub struct Pipeline<O: Observer> {
    pub engine: O,
    procs: Option<ProcCache>,
    responder: Option<Responder>,
    pub sinks: SinkSet,
}

impl<O: Observer> Pipeline<O> {
    pub fn new(engine: O, sinks: SinkSet, responder: Option<Responder>) -> Self {
        Pipeline { engine, procs: None, responder, sinks }
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
                self.engine.observe(&s)
            }
        };
        for mut a in alerts {
            if let Some(r) = self.responder.as_mut() {
                r.apply(s.at, &mut a);
            }
            self.sinks.write(&a);
        }
    }

    /// Sources blocked by the response stage now.
    pub fn blocked_count(&self) -> Option<usize> {
        self.responder.as_ref().map(Responder::blocked_count)
    }
}

/// Run the agent: the live kernel source through the detection engine until `duration` elapses
/// or SIGINT/SIGTERM arrives.
pub async fn run(cfg: Config, duration: Option<Duration>) -> anyhow::Result<()> {
    let hostname = cfg.agent.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
    });
    let mut engine = Engine::new(&cfg, hostname);
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
    let sinks = SinkSet::build(&cfg.sinks)?;
    run_live(&cfg, duration, engine, sinks).await.map(|_| ())
}

/// The live loop over any observer; returns it when done.
pub async fn run_live<O: Observer>(
    cfg: &Config,
    duration: Option<Duration>,
    engine: O,
    sinks: SinkSet,
) -> anyhow::Result<O> {
    let mut source = LiveSource::open(cfg)?;
    let responder = source.take_block_table().map(|t| {
        eprintln!(
            "scanwatch: active response on: inbound scanners alerted at {} or above are dropped for {:?}",
            cfg.response.block_min_severity.as_str(),
            cfg.response.block_ttl
        );
        Responder::new(Box::new(t), cfg.response.clone())
    });
    let mut pipeline = Pipeline::new(engine, sinks, responder);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let mut batch = Vec::new();
    eprintln!("scanwatch: ready (interfaces: {}; outbound: {})", source.attached.join(","), source.outbound);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            r = source.next(&mut batch) => {
                r?;
                for s in batch.drain(..) {
                    pipeline.push(s);
                }
            }
        }
    }
    pipeline.sinks.flush();
    let mut summary = source.counters();
    summary.insert("alerts_written".into(), pipeline.sinks.written().into());
    let dropped: u64 = pipeline.sinks.stats().values().map(|s| s.dropped).sum();
    summary.insert("alerts_dropped".into(), dropped.into());
    if let Some(n) = pipeline.blocked_count() {
        summary.insert("blocked_sources".into(), n.into());
    }
    eprintln!("scanwatch: stopped; counters {}", serde_json::Value::Object(summary));
    Ok(pipeline.engine)
}
