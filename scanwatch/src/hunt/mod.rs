//! `scanwatch hunt FILE... | -`: hunt Zeek conn.logs (TSV or JSON, gzip or not) for scanning
//! with the live agent's detection engine, on the log's own timeline.
//!
//! A source of the one pipeline (`crate::pipeline`): records become stamped observations
//! (`Observation::Source` snapshots, `Observation::Inbound` honeyport events, `Observation::Tick`)
//! on the log's clock, the engine turns them into findings, the output stage renders them.
//! Threads: reader (I/O, gzip), parse workers (one per core: chunks of lines → records, in
//! parallel), collector (chunks back in input order, classification) and this one (reorder
//! buffer, per-source state, engine, output); see [`input`]. See [`zeek`] for the formats, [`features`] for what a
//! record means for its source and [`timeline`] for how the engine is driven.

pub mod features;
pub mod input;
pub mod table;
pub mod timeline;
pub mod zeek;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Config;
use input::{Batch, Input};
use table::{TableFormat, TableWriter};
use timeline::{EngineStage, Timeline, TimelineOptions};

/// Bad lines reported with their file and line number (all are counted).
pub const MAX_REPORTED_BAD_LINES: usize = 10;

/// What to hunt and how to report it.
#[derive(Debug, Clone)]
pub struct HuntOptions {
    pub inputs: Vec<Input>,
    /// Write the per-source table to the output instead of alerts.
    pub table: Option<TableFormat>,
    /// Also (with `table`: instead) write the alert JSON lines here.
    pub alerts_file: Option<PathBuf>,
    /// Records with `ts` before this (µs since the epoch) are skipped.
    pub since_us: Option<i64>,
    /// Records with `ts` at or after this are skipped.
    pub until_us: Option<i64>,
    pub reorder: Option<Duration>,
    pub max_sources: Option<usize>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// What a hunt did.
#[derive(Debug, Clone, Default)]
pub struct HuntReport {
    pub records: u64,
    pub bad_lines: u64,
    pub filtered: u64,
    pub late: u64,
    pub sources: u64,
    pub sources_evicted: u64,
    pub alerts: u64,
    pub alerts_by_kind: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// One line per input that was refused or could not be read to its end.
    pub errors: Vec<String>,
}

/// Parse `--since/--until`: RFC 3339 or Unix seconds.
pub fn parse_time_arg(s: &str) -> anyhow::Result<i64> {
    zeek::parse_ts(s.trim().as_bytes())
        .with_context(|| format!("{s:?} is neither RFC 3339 (2024-05-01T12:00:00Z) nor Unix seconds"))
}

fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Run a hunt: alerts (or the table) to `out`, bad-line reports and the summary to `err`.
pub fn run(cfg: &Config, opts: &HuntOptions, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<HuntReport> {
    let started = Instant::now();
    let hostname = cfg.agent.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
    });
    let mut topts = TimelineOptions::from_config(cfg);
    if let Some(r) = opts.reorder {
        topts.reorder = r;
    }
    if let Some(m) = opts.max_sources {
        topts.max_sources = m;
    }
    topts.keep_rows = opts.table.is_some();
    let mut tl = Timeline::new(cfg, hostname.clone(), topts.clone());
    // Alerts only (no table): the engine runs on this thread and the reorder buffer and the
    // per-source state on one of their own, fed in order (the same observations, so the same
    // alerts). The table needs each source's alerts, so it keeps both on this thread.
    let pipelined = opts.table.is_none();
    let mut stage = pipelined.then(|| EngineStage::new(cfg, hostname.clone()));
    if let Some(path) = &cfg.agent.baseline {
        let b = crate::detect::Baseline::load(path).with_context(|| format!("agent.baseline: {}", path.display()))?;
        if let Some(st) = stage.as_mut() {
            st.set_baseline(b.clone());
        }
        tl.set_baseline(b);
    }
    if pipelined {
        tl.queue_observations();
    }
    let mut alerts_file = match &opts.alerts_file {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("--alerts {}", p.display()))?,
        )),
        None => None,
    };
    let mut table = opts.table.map(TableWriter::new);
    let names: Vec<String> = opts.inputs.iter().map(Input::name).collect();
    let total_bytes: Option<u64> = opts.inputs.iter().map(Input::size).sum();
    let bar = if opts.progress {
        let b = match total_bytes {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        let style = match total_bytes {
            Some(_) => "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
            None => "{spinner} [{elapsed_precise}] {bytes} {msg}",
        };
        if let Ok(s) = indicatif::ProgressStyle::with_template(style) {
            b.set_style(s);
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };

    let progress = Arc::new(AtomicU64::new(0));
    let mut report = HuntReport::default();
    let mut formats: Vec<&'static str> = Vec::new();
    let result: anyhow::Result<()> = std::thread::scope(|s| {
        // reader → parse workers (one per core) → collector (input order, classification) → here.
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
        let (ctx, crx) = sync_channel(4);
        let (dtx, drx) = sync_channel(4);
        let (btx, brx) = sync_channel(4);
        let (credit_tx, credit_rx) = sync_channel(input::MAX_INFLIGHT);
        for _ in 0..input::MAX_INFLIGHT {
            let _ = credit_tx.try_send(());
        }
        let (buf_tx, buf_rx) = sync_channel(input::MAX_INFLIGHT);
        let inputs = &opts.inputs;
        let prog = &progress;
        let reader = input::ReaderLinks { tx: ctx, credits: credit_rx, buffers: buf_rx, seq: std::cell::Cell::new(0) };
        s.spawn(move || input::read_inputs(inputs, &reader, prog));
        let range = input::TimeRange { since_us: opts.since_us, until_us: opts.until_us };
        let queue = Arc::new(std::sync::Mutex::new(crx));
        for _ in 0..workers {
            let (q, tx) = (queue.clone(), dtx.clone());
            s.spawn(move || input::parse_worker(&q, &tx, range, MAX_REPORTED_BAD_LINES));
        }
        drop(dtx);
        let slots = topts.pair_slots;
        let collector = input::CollectorLinks { rx: drx, tx: btx, credits: credit_tx, buffers: buf_tx };
        s.spawn(move || {
            let mut classifier = features::Classifier::new(slots);
            input::collect(&collector, MAX_REPORTED_BAD_LINES, range, &mut classifier);
        });
        let mut last_draw = Instant::now();
        let mut on_batch = |b: Batch, err: &mut dyn Write| -> anyhow::Result<()> {
            match b {
                Batch::Begin { .. } => {}
                Batch::Records { records, bad, filtered, reported, .. } => {
                    debug_assert!(records.is_empty(), "records go to the timeline");
                    report.bad_lines += bad;
                    report.filtered += filtered;
                    for b in reported {
                        bar.suspend(|| writeln!(err, "scanwatch hunt: {}:{}: {}", names[b.file], b.line, b.error))?;
                    }
                }
                Batch::Refused { file, reason } => {
                    report.errors.push(format!("{}: refused: {reason}", names[file]));
                }
                Batch::End { file, format, lines, error } => {
                    if format != zeek::Format::Unknown && !formats.contains(&format.as_str()) {
                        formats.push(format.as_str());
                    }
                    if let Some(e) = error {
                        report.errors.push(format!("{}: {e} (after line {lines})", names[file]));
                    }
                }
            }
            Ok(())
        };
        let mut draw = |records: u64| {
            if last_draw.elapsed() > Duration::from_millis(100) {
                last_draw = Instant::now();
                bar.set_position(progress.load(Ordering::Relaxed));
                bar.set_message(format!("{} records", grouped(records)));
            }
        };
        if let Some(stage) = stage.as_mut() {
            // Timeline (reorder buffer, per-source state) on a thread of its own → the engine here.
            let (ftx, frx) = sync_channel::<Front>(8);
            let front = &mut tl;
            s.spawn(move || {
                for msg in brx {
                    let fwd = match msg {
                        Batch::Records { file, records, bad, filtered, reported } => {
                            for x in records {
                                front.push_classified(x);
                            }
                            if ftx.send(Front::Obs(front.take_observations(), front.stats.records)).is_err() {
                                return;
                            }
                            Batch::Records { file, records: Vec::new(), bad, filtered, reported }
                        }
                        other => other,
                    };
                    if ftx.send(Front::Batch(fwd)).is_err() {
                        return;
                    }
                }
                front.finish();
                let _ = ftx.send(Front::Obs(front.take_observations(), front.stats.records));
            });
            let sink: &mut dyn Write = match alerts_file.as_mut() {
                Some(f) => f,
                None => &mut *out,
            };
            for msg in frx {
                match msg {
                    Front::Obs(obs, records) => {
                        for (i, o) in obs.iter().enumerate() {
                            stage.prefetch(&obs, i);
                            for a in stage.observe(o) {
                                // The live agent's rendering (the output stage), one finding per line.
                                let line = crate::output::render_line(&a, crate::output::Format::Alert)?;
                                sink.write_all(line.as_bytes())?;
                                sink.write_all(b"\n")?;
                            }
                        }
                        draw(records);
                    }
                    Front::Batch(b) => on_batch(b, err)?,
                }
            }
            return Ok(());
        }
        for msg in brx {
            match msg {
                Batch::Records { file, records, bad, filtered, reported } => {
                    for x in records {
                        tl.push_classified(x);
                    }
                    on_batch(Batch::Records { file, records: Vec::new(), bad, filtered, reported }, err)?;
                    write_out(&mut tl, out, alerts_file.as_mut(), table.as_mut())?;
                    draw(tl.stats.records);
                }
                other => on_batch(other, err)?,
            }
        }
        Ok(())
    });
    result?;
    if !pipelined {
        tl.finish();
    }
    write_out(&mut tl, out, alerts_file.as_mut(), table.as_mut())?;
    report.sources = tl.sources() as u64 + tl.sources_evicted();
    report.sources_evicted = tl.sources_evicted();
    if let Some(t) = table.as_mut() {
        let rest = tl.drain_sources();
        t.write(out, &rest)?;
    }
    out.flush()?;
    if let Some(f) = alerts_file.as_mut() {
        f.flush()?;
    }
    bar.finish_and_clear();
    report.records = tl.stats.records;
    report.late = tl.stats.late;
    report.alerts_by_kind = match &stage {
        Some(st) => st.alerts_by_kind.clone(),
        None => tl.stats.alerts_by_kind.clone(),
    };
    report.alerts = report.alerts_by_kind.values().sum();
    report.elapsed = started.elapsed();

    let secs = report.elapsed.as_secs_f64().max(1e-9);
    let read = report.records + report.filtered;
    writeln!(
        err,
        "scanwatch hunt: {} input(s) [{}]: {} records, {} bad lines, {} outside --since/--until, {} later than the {}s reorder window",
        opts.inputs.len(),
        if formats.is_empty() { "-".to_string() } else { formats.join(", ") },
        grouped(read),
        grouped(report.bad_lines),
        grouped(report.filtered),
        grouped(report.late),
        topts.reorder.as_secs(),
    )?;
    if let (Some(a), Some(b)) = (tl.stats.first_ts_us, tl.stats.last_ts_us) {
        writeln!(
            err,
            "scanwatch hunt: log time {} .. {}; {} sources ({} evicted), {} engine sweeps of changed sources, {} ticks",
            crate::vocab::rfc3339_from_unix(a as f64 / 1e6),
            crate::vocab::rfc3339_from_unix(b as f64 / 1e6),
            grouped(report.sources),
            grouped(report.sources_evicted),
            grouped(tl.stats.snapshots),
            grouped(tl.stats.ticks),
        )?;
    }
    let kinds: Vec<String> = report.alerts_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    writeln!(
        err,
        "scanwatch hunt: {} alerts{}",
        report.alerts,
        if kinds.is_empty() { String::new() } else { format!(" ({})", kinds.join(", ")) }
    )?;
    writeln!(
        err,
        "scanwatch hunt: {:.2} s, {} records/s",
        secs,
        grouped((read as f64 / secs) as u64)
    )?;
    for e in &report.errors {
        writeln!(err, "scanwatch hunt: error: {e}")?;
    }
    Ok(report)
}

/// Timeline thread → engine (this thread).
enum Front {
    /// Observations in engine order, and the records pushed so far.
    Obs(Vec<crate::detect::Stamped>, u64),
    /// Everything else passes through (record batches without their records).
    Batch(Batch),
}

fn write_out(
    tl: &mut Timeline,
    out: &mut dyn Write,
    alerts_file: Option<&mut std::io::BufWriter<std::fs::File>>,
    table: Option<&mut TableWriter>,
) -> anyhow::Result<()> {
    let alerts = tl.take_alerts();
    if !alerts.is_empty() {
        let sink: Option<&mut dyn Write> = match (alerts_file, table.is_some()) {
            (Some(f), _) => Some(f),
            (None, false) => Some(&mut *out),
            (None, true) => None,
        };
        if let Some(w) = sink {
            for a in &alerts {
                // The live agent's rendering (the output stage), one finding per line.
                let line = crate::output::render_line(a, crate::output::Format::Alert)?;
                w.write_all(line.as_bytes())?;
                w.write_all(b"\n")?;
            }
        }
    }
    if let Some(t) = table {
        let rows = tl.take_evicted_rows();
        if !rows.is_empty() {
            // `out` is only borrowed by the alerts sink when there is no table.
            t.write(out, &rows)?;
        }
    }
    Ok(())
}

/// Fuzzing entry point (`fuzz/fuzz_targets/connlog.rs`, and the unit test replaying its corpus):
/// parse `data` as a conn.log, drive the timeline and the engine with every record, and write
/// the table. Must never panic, whatever the bytes.
pub fn fuzz_connlog(data: &[u8]) {
    static CFG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    let cfg = CFG.get_or_init(Config::default_embedded);
    let mut topts = TimelineOptions::from_config(cfg);
    topts.max_sources = 16;
    topts.max_buffered = 64;
    topts.keep_rows = true;
    topts.pair_slots = 256;
    let mut tl = Timeline::new(cfg, "fuzz".to_string(), topts);
    let mut parser = zeek::ConnLogParser::new();
    let mut table = TableWriter::new(TableFormat::Text);
    let mut sink = std::io::sink();
    let mut records = Vec::new();
    let mut bad = 0u64;
    let mut refusal = None;
    // Lines as the pipeline cuts them: a final `\n` ends the last line, it does not start one.
    let lines = data.strip_suffix(b"\n").unwrap_or(data).split(|b| *b == b'\n').take(if data.is_empty() { 0 } else { usize::MAX });
    for line in lines {
        match parser.parse_line(line) {
            Ok(zeek::Parsed::Record(r)) => {
                records.push(r);
                tl.push(r);
            }
            Ok(_) => {}
            Err(zeek::ParseError::Line(_)) => bad += 1,
            Err(zeek::ParseError::Format(e)) => {
                refusal = Some(e);
                break;
            }
        }
        let _ = tl.take_alerts();
        let rows = tl.take_evicted_rows();
        let _ = table.write(&mut sink, &rows);
    }
    // The parallel pipeline's way (chunks parsed on their own in a guessed layout, checked)
    // reads exactly what one parser reading every line reads.
    let chunk_len = 1 + usize::from(data.first().copied().unwrap_or(0) % 97);
    let chunked = input::parse_in_chunks(data, chunk_len, input::TimeRange::default(), usize::MAX);
    assert_eq!(chunked.records, records, "chunked parse (chunks of {chunk_len}) differs");
    assert_eq!(chunked.bad, bad, "chunked parse (chunks of {chunk_len}) bad lines");
    assert_eq!(chunked.lines, parser.line(), "chunked parse (chunks of {chunk_len}) lines");
    assert_eq!(chunked.refusal, refusal, "chunked parse (chunks of {chunk_len}) refusal");
    tl.finish();
    for a in tl.take_alerts() {
        let _ = serde_json::to_writer(&mut sink, &a);
    }
    let rows = tl.drain_sources();
    let _ = table.write(&mut sink, &rows);
}

#[cfg(test)]
mod tests {
    /// The committed fuzz corpus (and any crash artifacts) replayed through the fuzz entry.
    #[test]
    fn fuzz_corpus_replays_without_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut n = 0;
        for dir in ["corpus/connlog", "artifacts/connlog"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
            for e in entries.flatten() {
                let data = std::fs::read(e.path()).unwrap_or_else(|err| panic!("read {}: {err}", e.path().display()));
                super::fuzz_connlog(&data);
                n += 1;
            }
        }
        assert!(n >= 8, "the seed corpus fuzz/corpus/connlog has {n} files");
    }
}

