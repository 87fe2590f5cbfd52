//! `scanwatch replay FILE... | -`: captures through the real XDP program, alerts as the live
//! agent would raise them. See [`source`] for the pipeline and its clocks.
pub mod frame;
pub mod pcap;
pub mod source;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::alert::Alert;
use crate::config::Config;
use crate::detect::{Engine, HeldProbe, InboundObservation, Observer, OutboundObservation, SourceSnapshot};
use crate::outcome::TrackerConfig;
use crate::pipeline::Pipeline;
use crate::sinks::SinkSet;
use source::{Batch, FrameMeta, KernelSide, ToEngine, BATCH};

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Capture files in time order; "-" is standard input.
    pub files: Vec<PathBuf>,
    /// Only packets at or after this time (since the Unix epoch).
    pub since: Option<Duration>,
    /// Only packets before this time.
    pub until: Option<Duration>,
    /// Progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// How long a probe waits for its answer in the capture.
    pub reply_timeout: Duration,
}

/// Counters of the reader thread.
#[derive(Debug, Default, Clone)]
pub struct ReaderStats {
    pub packets: u64,
    pub bytes: u64,
    /// Outside `--since/--until`.
    pub out_of_range: u64,
    /// Frames no Ethernet header could be made for, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Input errors (truncated / corrupt files), each naming the file and byte offset.
    pub errors: Vec<String>,
}

/// The result of a replay (printed by the command as its summary).
#[derive(Debug, Clone)]
pub struct Summary {
    pub reader: ReaderStats,
    pub kernel: source::KernelStats,
    pub tracker: crate::outcome::TrackerStats,
    pub alerts: BTreeMap<String, u64>,
    /// Alerts a sink could not deliver.
    pub alerts_dropped: u64,
    pub elapsed: Duration,
}

impl Summary {
    pub fn malformed(&self) -> u64 {
        self.kernel.kernel.iter().filter(|(n, _)| n.starts_with("mal_")).map(|(_, v)| v).sum::<u64>()
            + self.reader.skipped.iter().filter(|(k, _)| k.as_str() != "unsupported link type").map(|(_, v)| v).sum::<u64>()
    }

    pub fn kernel_stat(&self, name: &str) -> u64 {
        self.kernel.kernel.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
    }

    pub fn packets_per_sec(&self) -> f64 {
        self.reader.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let t = &self.tracker;
        serde_json::json!({
            "packets": self.reader.packets,
            "xdp_runs": self.kernel.runs,
            "xdp_run_errors": self.kernel.run_errors,
            "xdp_calls": self.kernel.calls,
            "xdp_seconds": self.kernel.xdp_time.as_secs_f64(),
            "out_of_range": self.reader.out_of_range,
            "skipped": self.reader.skipped,
            "malformed": self.malformed(),
            "sources": self.kernel_stat("new_sources"),
            "one_probe_sources": self.kernel_stat("first_contact"),
            "live_sources": self.kernel.live_sources,
            "events": self.kernel.events,
            "sweeps": self.kernel.sweeps,
            "outcomes": {"probes": t.probes, "open": t.open, "closed": t.closed, "filtered": t.filtered,
                         "no_answer": t.no_answer, "evicted": t.evicted, "unsolicited": t.unsolicited},
            "alerts": self.alerts,
            "alerts_dropped": self.alerts_dropped,
            "errors": self.reader.errors,
            "seconds": self.elapsed.as_secs_f64(),
            "packets_per_sec": self.packets_per_sec(),
            "kernel": self.kernel.kernel.iter().filter(|(_, v)| *v > 0).cloned().collect::<BTreeMap<String, u64>>(),
        })
    }

    /// One human line.
    pub fn line(&self) -> String {
        let alerts = if self.alerts.is_empty() {
            "none".to_string()
        } else {
            self.alerts.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        };
        let skipped: u64 = self.reader.skipped.values().sum();
        format!(
            "{} packets ({} skipped, {} outside --since/--until), {} malformed, {} sources ({} more seen once), alerts: {alerts}; {:.2} s, {:.0} packets/s",
            self.reader.packets,
            skipped,
            self.reader.out_of_range,
            self.malformed(),
            self.kernel_stat("new_sources"),
            self.kernel_stat("first_contact").saturating_sub(self.kernel_stat("new_sources")),
            self.elapsed.as_secs_f64(),
            self.packets_per_sec()
        )
    }
}

/// Parse a `--since/--until` value: RFC 3339 (`2024-05-01T12:00:00Z`, `2024-05-01 12:00:00`) or
/// Unix seconds (`1714564800`, `1714564800.5`).
pub fn parse_time(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("{s:?}: negative or non-finite Unix time"));
    }
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?}: {e} (expected RFC 3339 like 2024-05-01T12:00:00Z, or Unix seconds)"))?
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{s:?}: before 1970"))
}

fn open_input(path: &PathBuf) -> std::io::Result<(Box<dyn Read + Send>, Option<u64>)> {
    if path.as_os_str() == "-" {
        return Ok((Box::new(std::io::stdin()), None));
    }
    let f = std::fs::File::open(path)?;
    let len = f.metadata().ok().map(|m| m.len());
    Ok((Box::new(f), len))
}

/// The reader thread: every file in order, batches of Ethernet frames to `tx`.
fn read_inputs(opts: &ReplayOptions, tx: std::sync::mpsc::SyncSender<Batch>, bar: &indicatif::ProgressBar) -> ReaderStats {
    let mut st = ReaderStats::default();
    let mut batch = Batch::default();
    let mut eth = Vec::with_capacity(2048);
    let mut done_bytes = 0u64;
    'files: for path in &opts.files {
        let name = path.display().to_string();
        let (input, _) = match open_input(path) {
            Ok(x) => x,
            Err(e) => {
                st.errors.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut rd = match pcap::CaptureReader::new(std::io::BufReader::with_capacity(1 << 20, input)) {
            Ok(r) => r,
            Err(e) => {
                st.errors.push(format!("{name}: {e}"));
                continue;
            }
        };
        loop {
            let pkt = match rd.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    st.errors.push(format!("{name}: {e} ({} packets read before it)", st.packets));
                    break;
                }
            };
            st.packets += 1;
            if opts.since.is_some_and(|s| pkt.ts < s) || opts.until.is_some_and(|u| pkt.ts >= u) {
                st.out_of_range += 1;
                continue;
            }
            if let Err(why) = frame::to_ethernet(pkt.linktype, pkt.data, &mut eth) {
                let k = match why {
                    frame::FrameSkip::UnsupportedLink(_) => "unsupported link type",
                    frame::FrameSkip::ShortLinkHeader => "shorter than the link header",
                    frame::FrameSkip::UnknownNetwork => "unknown network protocol",
                };
                *st.skipped.entry(k.to_string()).or_default() += 1;
                continue;
            }
            let (src, seen) = frame::decode(&eth);
            let start = batch.bytes.len() as u32;
            batch.bytes.extend_from_slice(&eth);
            batch.frames.push(FrameMeta { ts: pkt.ts, start, len: eth.len() as u32, src, seen });
            if batch.frames.len() >= BATCH {
                let pos = done_bytes + rd.position();
                bar.set_position(pos);
                if tx.send(std::mem::take(&mut batch)).is_err() {
                    break 'files;
                }
            }
        }
        done_bytes += rd.position();
        st.bytes = done_bytes;
        bar.set_position(done_bytes);
    }
    if !batch.frames.is_empty() {
        let _ = tx.send(batch);
    }
    st
}

/// The detection engine, counting the alerts it raises by kind (for the summary).
struct Counted {
    engine: Engine,
    kinds: BTreeMap<String, u64>,
}

impl Counted {
    fn count(&mut self, alerts: Vec<Alert>) -> Vec<Alert> {
        for a in &alerts {
            let k = serde_json::to_value(a.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            *self.kinds.entry(k).or_insert(0) += 1;
        }
        alerts
    }
}

impl Observer for Counted {
    fn observe_source(&mut self, now: Duration, s: &SourceSnapshot) -> Vec<Alert> {
        let a = self.engine.observe_source(now, s);
        self.count(a)
    }
    fn observe_inbound_event(&mut self, now: Duration, e: &InboundObservation) -> Vec<Alert> {
        let a = self.engine.observe_inbound_event(now, e);
        self.count(a)
    }
    fn observe_outbound(&mut self, now: Duration, o: &OutboundObservation) -> Vec<Alert> {
        let a = self.engine.observe_outbound(now, o);
        self.count(a)
    }
    fn observe_held(&mut self, now: Duration, probes: &[HeldProbe]) -> Vec<Alert> {
        let a = self.engine.observe_held(now, probes);
        self.count(a)
    }
    fn tick(&mut self, now: Duration) -> Vec<Alert> {
        let a = self.engine.tick(now);
        self.count(a)
    }
}

/// The engine thread: the source's outcome stage, then the one pipeline (detection, sinks).
fn run_engine(
    cfg: &Config,
    tracker: TrackerConfig,
    open: std::sync::Arc<source::OpenPorts>,
    rx: std::sync::mpsc::Receiver<Vec<ToEngine>>,
    sinks: SinkSet,
) -> anyhow::Result<(BTreeMap<String, u64>, crate::outcome::TrackerStats, u64)> {
    let host = cfg.agent.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
    });
    let mut engine = Engine::new(cfg, host);
    // Engine time is Unix time: alert timestamps are the packets' own.
    engine.set_wall_clock(Duration::ZERO, UNIX_EPOCH);
    if let Some(path) = &cfg.agent.baseline {
        match crate::detect::Baseline::load(path) {
            Ok(b) => engine.set_baseline(b),
            Err(e) => anyhow::bail!("agent.baseline: {}: {e}", path.display()),
        }
    }
    let mut pipeline = Pipeline::new(Counted { engine, kinds: BTreeMap::new() }, sinks, None);
    let mut side = source::EngineSide::new(cfg, tracker, open);
    let mut obs = Vec::new();
    let mut last = Duration::ZERO;
    for msgs in rx {
        for m in msgs {
            if let ToEngine::Sweep { now, .. } = &m {
                last = *now;
            }
            side.handle(m, &mut obs);
            for s in obs.drain(..) {
                pipeline.push(s);
            }
        }
    }
    side.finish(last, &mut obs);
    for s in obs.drain(..) {
        pipeline.push(s);
    }
    pipeline.sinks.flush();
    let dropped: u64 = pipeline.sinks.stats().values().map(|s| s.dropped).sum();
    Ok((std::mem::take(&mut pipeline.engine.kinds), side.tracker_stats(), dropped))
}

/// Replay the captures; alerts go to `sinks` (the configured ones: stdout by default). Input
/// errors are in the summary (everything before them was replayed); other failures are errors.
pub fn run(cfg: &Config, opts: &ReplayOptions, sinks: SinkSet) -> anyhow::Result<Summary> {
    let mut kernel = KernelSide::load(cfg)?;
    let tracker = TrackerConfig { timeout: opts.reply_timeout, ..TrackerConfig::default() };
    let open = kernel.open_ports.clone();
    // Replay time only: loading the program (≈ 0.5 s) is not part of the packet rate.
    let t0 = Instant::now();
    let total: Option<u64> = opts
        .files
        .iter()
        .map(|p| if p.as_os_str() == "-" { None } else { std::fs::metadata(p).ok().map(|m| m.len()) })
        .sum();
    let bar = if opts.progress && std::io::stderr().is_terminal() {
        let b = match total {
            Some(t) => indicatif::ProgressBar::new(t),
            None => indicatif::ProgressBar::new_spinner(),
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} replay [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        ) {
            b.set_style(style);
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (tx, rx) = source::channel::<Batch>();
    let (etx, erx) = source::channel::<Vec<ToEngine>>();
    let (reader, (kinds, tracker_stats, dropped)) = std::thread::scope(|s| -> anyhow::Result<_> {
        let bar_r = bar.clone();
        let reader = std::thread::Builder::new()
            .name("replay-reader".into())
            .spawn_scoped(s, move || read_inputs(opts, tx, &bar_r))?;
        let engine =
            std::thread::Builder::new().name("replay-engine".into()).spawn_scoped(s, move || run_engine(cfg, tracker, open, erx, sinks))?;
        // The program keeps per-CPU state (counters, the bare-ACK sample): every run on one CPU,
        // so two replays of one capture give the same counts. (After the spawns: a new thread
        // inherits its creator's CPU set.)
        let pinned = source::PinnedCpu::here();
        for b in rx {
            let msgs = kernel.run_batch(&b);
            if !msgs.is_empty() && etx.send(msgs).is_err() {
                break;
            }
        }
        let last = kernel.finish();
        drop(pinned);
        let _ = etx.send(last);
        drop(etx);
        let reader = reader.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
        let kinds = engine.join().map_err(|_| anyhow::anyhow!("engine thread panicked"))??;
        Ok((reader, kinds))
    })?;
    bar.finish_and_clear();
    // (A live program loaded mid-replay for a frame too big for a batch is load time too.)
    let elapsed = t0.elapsed().saturating_sub(kernel.st.load_time);
    Ok(Summary { reader, kernel: kernel.st.clone(), tracker: tracker_stats, alerts: kinds, alerts_dropped: dropped, elapsed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_arguments() {
        assert_eq!(parse_time("1714564800"), Ok(Duration::from_secs(1_714_564_800)));
        assert_eq!(parse_time("1714564800.5"), Ok(Duration::from_millis(1_714_564_800_500)));
        assert_eq!(parse_time("2024-05-01T12:00:00Z"), Ok(Duration::from_secs(1_714_564_800)));
        assert_eq!(parse_time("2024-05-01 12:00:00"), Ok(Duration::from_secs(1_714_564_800)));
        let e = parse_time("yesterday").expect_err("not a time");
        assert!(e.contains("RFC 3339"), "{e}");
        assert!(parse_time("-5").is_err());
    }
}
