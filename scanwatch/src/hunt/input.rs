//! Input stages of `scanwatch hunt`, on threads of their own so parsing and the engine use
//! every core: a reader (file or stdin, gzip told by its magic bytes and decompressed — several
//! concatenated gzip members too —, cut into ~1 MiB chunks at line ends), parse workers (one per
//! core: chunks → records, in parallel) and a collector (chunks back in input order, per-file
//! line numbers, bad lines counted, classification). Channels are bounded and at most
//! [`MAX_INFLIGHT`] chunks are between the reader and the collector, so memory stays bounded
//! whatever the input size.
//!
//! A chunk is parsed in the layout (separator, `#fields` columns, format) in effect at its
//! start. The reader brings that layout forward by skimming each chunk's header lines
//! ([`ConnLogParser::skim`]); the collector checks every chunk's starting layout against the
//! real one left by the chunk before and parses the chunk again in the right one when they
//! differ, so the records are exactly those of one parser reading every line in order.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use super::features::{Classified, Classifier};
use super::zeek::{ConnLogParser, Format, FormatError, LineError, ParseError, Parsed, Record};

/// Bytes per chunk handed from the reader to the parser.
pub const CHUNK: usize = 1 << 20;
/// Most chunks read and not yet collected (queued, being parsed, or waiting for an earlier one).
pub const MAX_INFLIGHT: usize = 16;

/// An input: a file or standard input (`-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    pub fn from_arg(s: &str) -> Input {
        if s == "-" {
            Input::Stdin
        } else {
            Input::File(PathBuf::from(s))
        }
    }

    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "<stdin>".to_string(),
            Input::File(p) => p.display().to_string(),
        }
    }

    /// Size on disk, when known.
    pub fn size(&self) -> Option<u64> {
        match self {
            Input::Stdin => None,
            Input::File(p) => std::fs::metadata(p).ok().filter(|m| m.is_file()).map(|m| m.len()),
        }
    }
}

/// Reading an input failed; what was read before is processed.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot open: {0}")]
    Open(#[source] io::Error),
    #[error("gzip stream broken at compressed byte offset {offset} ({decompressed} bytes of log read and processed before it): {source}")]
    Gzip {
        offset: u64,
        decompressed: u64,
        #[source]
        source: io::Error,
    },
    #[error("read error at byte offset {offset}: {source}")]
    Read {
        offset: u64,
        #[source]
        source: io::Error,
    },
}

/// Reader → parse workers.
#[derive(Debug)]
pub enum Chunk {
    Begin { file: usize },
    /// Whole lines (the last one may lack its `\n` at the end of the input), with the layout
    /// the reader expects at their start.
    Data { file: usize, data: Vec<u8>, layout: Arc<ConnLogParser> },
    End { file: usize, error: Option<InputError> },
}

/// Parse workers → collector: a chunk parsed (Begin and End pass through).
#[derive(Debug)]
pub enum Done {
    Begin { file: usize },
    Data { file: usize, data: Vec<u8>, layout: Arc<ConnLogParser>, chunk: ParsedChunk },
    End { file: usize, error: Option<InputError> },
}

/// A counted bad line, reported with its file and line number.
#[derive(Debug, Clone)]
pub struct BadLine {
    pub file: usize,
    pub line: u64,
    pub error: LineError,
}

/// Parser → engine.
#[derive(Debug)]
pub enum Batch {
    Begin { file: usize },
    /// Classified records inside the time range; `filtered` were outside it.
    Records { file: usize, records: Vec<Classified>, bad: u64, filtered: u64, reported: Vec<BadLine> },
    /// The rest of the file is refused (not a conn.log).
    Refused { file: usize, reason: FormatError },
    End { file: usize, format: Format, lines: u64, error: Option<InputError> },
}

/// Counts the bytes read from the underlying input (for the progress bar and error offsets).
struct Counting<R> {
    inner: R,
    local: u64,
    total: Arc<AtomicU64>,
    /// `local`, readable while a decoder owns this reader.
    offset: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.local += n as u64;
        self.total.fetch_add(n as u64, Ordering::Relaxed);
        self.offset.store(self.local, Ordering::Relaxed);
        Ok(n)
    }
}

/// The reader's side of the bounded pipeline: a credit per chunk in flight, and used chunk
/// buffers coming back for reuse.
pub struct ReaderLinks {
    /// To the parse workers, numbered in input order.
    pub tx: SyncSender<(u64, Chunk)>,
    pub credits: Receiver<()>,
    pub buffers: Receiver<Vec<u8>>,
    pub seq: std::cell::Cell<u64>,
}

impl ReaderLinks {
    /// Send one message once a credit is free; false when the pipeline is gone.
    fn send(&self, c: Chunk) -> bool {
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        self.credits.recv().is_ok() && self.tx.send((seq, c)).is_ok()
    }

    /// A buffer of at least `want` bytes' capacity. A reused one keeps its length and old
    /// bytes: they are overwritten, not zeroed again (zeroing every chunk cost as much as
    /// reading it).
    fn buffer(&self, want: usize) -> Vec<u8> {
        match self.buffers.try_recv() {
            Ok(mut b) => {
                b.reserve(want.saturating_sub(b.len()));
                b
            }
            Err(_) => Vec::with_capacity(want),
        }
    }
}

/// Read every input in turn and send its chunks (reader thread).
pub fn read_inputs(inputs: &[Input], links: &ReaderLinks, progress: &Arc<AtomicU64>) {
    for (file, input) in inputs.iter().enumerate() {
        if !links.send(Chunk::Begin { file }) {
            return;
        }
        let error = read_one(input, file, links, progress).err();
        if !links.send(Chunk::End { file, error }) {
            return;
        }
    }
}

fn read_one(input: &Input, file: usize, links: &ReaderLinks, progress: &Arc<AtomicU64>) -> Result<(), InputError> {
    let raw: Box<dyn Read + Send> = match input {
        Input::Stdin => Box::new(io::stdin()),
        Input::File(p) => Box::new(std::fs::File::open(p).map_err(InputError::Open)?),
    };
    let offset = Arc::new(AtomicU64::new(0));
    let mut counted = Counting { inner: raw, local: 0, total: progress.clone(), offset: offset.clone() };
    // The first two bytes tell gzip (1f 8b); a pipe may deliver them one at a time.
    let mut magic = Vec::with_capacity(2);
    while magic.len() < 2 {
        let mut b = [0u8; 2];
        let want = 2 - magic.len();
        match counted.read(&mut b[..want]) {
            Ok(0) => break,
            Ok(n) => magic.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(InputError::Read { offset: offset.load(Ordering::Relaxed), source }),
        }
    }
    let gzip = magic == [0x1f, 0x8b];
    let chained = io::Cursor::new(magic).chain(counted);
    let mut reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(1 << 16, chained)))
    } else {
        Box::new(chained)
    };
    // The layout each chunk starts in, brought forward over the header lines.
    let mut tracker = ConnLogParser::new();
    let mut send = |data: Vec<u8>| {
        let layout = Arc::new(tracker.clone());
        tracker.skim(&data);
        links.send(Chunk::Data { file, data, layout })
    };
    let mut produced: u64 = 0;
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let mut buf = links.buffer(CHUNK + carry.len() + 1);
        // `buf[..filled]` is the chunk so far; the bytes after it are scratch.
        let mut filled = carry.len();
        if buf.len() < filled {
            buf.resize(filled, 0);
        }
        buf[..filled].copy_from_slice(&carry);
        carry.clear();
        let mut eof = false;
        let mut failure = None;
        while filled < CHUNK {
            let want = CHUNK.max(filled + 1);
            if buf.len() < want {
                buf.resize(want, 0);
            }
            match reader.read(&mut buf[filled..want]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    filled += n;
                    produced += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        buf.truncate(filled);
        if let Some(source) = failure {
            // Everything read so far is still parsed (a cut last line counts as a bad line).
            if !buf.is_empty() && !send(buf) {
                return Ok(());
            }
            let at = offset.load(Ordering::Relaxed);
            return Err(if gzip {
                InputError::Gzip { offset: at, decompressed: produced, source }
            } else {
                InputError::Read { offset: at, source }
            });
        }
        if !eof {
            if let Some(pos) = memchr::memrchr(b'\n', &buf) {
                carry.extend_from_slice(&buf[pos + 1..]);
                buf.truncate(pos + 1);
            }
        }
        if !buf.is_empty() && !send(buf) {
            return Ok(());
        }
        if eof {
            return Ok(());
        }
    }
}

/// `--since` / `--until` (microseconds since the epoch; `until` exclusive).
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeRange {
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
}

impl TimeRange {
    pub fn contains(&self, ts_us: i64) -> bool {
        self.since_us.is_none_or(|t| ts_us >= t) && self.until_us.is_none_or(|t| ts_us < t)
    }
}

/// One chunk parsed on its own: line numbers count from the chunk's start.
#[derive(Debug, Default)]
pub struct ParsedChunk {
    /// Records inside the time range, in input order.
    pub records: Vec<Record>,
    pub bad: u64,
    /// Records outside the time range.
    pub filtered: u64,
    /// The first bad lines (at most the reporting limit), with their line in the chunk.
    pub reported: Vec<(u64, LineError)>,
    /// Lines read (up to and including a refusal).
    pub lines: u64,
    /// The rest of the file is refused from this line (numbered in the chunk) on.
    pub refusal: Option<FormatError>,
    /// The parser after the chunk (its layout is the next chunk's).
    pub end: Option<ConnLogParser>,
}

/// Parse a chunk of whole lines starting in `layout` (the parse workers' job; also the fuzz
/// target's). The result is what a parser in that layout reading the same lines gives.
pub fn parse_chunk(data: &[u8], layout: &ConnLogParser, range: TimeRange, max_reported: usize) -> ParsedChunk {
    let mut parser = layout.clone();
    parser.rebase_lines();
    let mut out = ParsedChunk { records: Vec::with_capacity(data.len() / 100 + 1), ..ParsedChunk::default() };
    let mut start = 0usize;
    let n = data.len();
    let ends = memchr::memchr_iter(b'\n', data).chain(std::iter::once(n));
    for end in ends {
        if end == n && start >= n {
            break;
        }
        let line = &data[start..end];
        start = end + 1;
        match parser.parse_line(line) {
            Ok(Parsed::Record(r)) => {
                if range.contains(r.ts_us) {
                    out.records.push(r);
                } else {
                    out.filtered += 1;
                }
            }
            Ok(Parsed::Header | Parsed::Blank) => {}
            Err(ParseError::Line(error)) => {
                out.bad += 1;
                if out.reported.len() < max_reported {
                    out.reported.push((parser.line(), error));
                }
            }
            Err(ParseError::Format(reason)) => {
                out.refusal = Some(reason);
                break;
            }
        }
    }
    out.lines = parser.line();
    out.end = Some(parser);
    out
}

/// A parse worker: chunks from the shared queue, parsed, to the collector (with their sequence
/// number, so the collector can put them back in order).
pub fn parse_worker(
    rx: &Mutex<Receiver<(u64, Chunk)>>,
    tx: &SyncSender<(u64, Done)>,
    range: TimeRange,
    max_reported: usize,
) {
    loop {
        let next = match rx.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok((seq, c)) = next else { return };
        let done = match c {
            Chunk::Begin { file } => Done::Begin { file },
            Chunk::Data { file, data, layout } => {
                let chunk = parse_chunk(&data, &layout, range, max_reported);
                Done::Data { file, data, layout, chunk }
            }
            Chunk::End { file, error } => Done::End { file, error },
        };
        if tx.send((seq, done)).is_err() {
            return;
        }
    }
}

/// The collector's end of the pipeline.
pub struct CollectorLinks {
    pub rx: Receiver<(u64, Done)>,
    pub tx: SyncSender<Batch>,
    pub credits: SyncSender<()>,
    pub buffers: SyncSender<Vec<u8>>,
}

/// Put parsed chunks back in input order, check their layouts, number their lines, classify
/// their records and send them on as batches (collector thread). At most `max_reported` bad
/// lines are kept with their numbers across the run; all are counted.
pub fn collect(links: &CollectorLinks, max_reported: usize, range: TimeRange, classifier: &mut Classifier) {
    let mut pending: std::collections::BTreeMap<u64, Done> = std::collections::BTreeMap::new();
    let mut next = 0u64;
    let mut state = ConnLogParser::new();
    let mut lines: u64 = 0;
    let mut refused = false;
    let mut reported_total = 0usize;
    for (seq, d) in links.rx.iter() {
        pending.insert(seq, d);
        while let Some(d) = pending.remove(&next) {
            next += 1;
            let out = match d {
                Done::Begin { file } => {
                    state = ConnLogParser::new();
                    lines = 0;
                    refused = false;
                    Some(Batch::Begin { file })
                }
                Done::Data { file, data, layout, chunk } => {
                    let mut batch = None;
                    if !refused {
                        let chunk = if layout.same_layout(&state) {
                            chunk
                        } else {
                            // The reader's guess of the layout was wrong: parse again in the real one.
                            parse_chunk(&data, &state, range, max_reported)
                        };
                        let base = lines;
                        lines += chunk.lines;
                        if let Some(end) = chunk.end {
                            state = end;
                        }
                        let mut reported = Vec::new();
                        for (line, error) in chunk.reported {
                            if reported_total < max_reported {
                                reported_total += 1;
                                reported.push(BadLine { file, line: base + line, error });
                            }
                        }
                        let records: Vec<Classified> = classifier.classify_all(chunk.records);
                        let rec = Batch::Records { file, records, bad: chunk.bad, filtered: chunk.filtered, reported };
                        if links.tx.send(rec).is_err() {
                            return;
                        }
                        if let Some(reason) = chunk.refusal {
                            refused = true;
                            batch = Some(Batch::Refused { file, reason: reason.shifted(base) });
                        }
                    }
                    let _ = links.buffers.try_send(data);
                    batch
                }
                Done::End { file, error } => Some(Batch::End { file, format: state.format(), lines, error }),
            };
            if let Some(b) = out {
                if links.tx.send(b).is_err() {
                    return;
                }
            }
            // The reader may be done (and gone) while chunks are still being collected.
            let _ = links.credits.try_send(());
        }
    }
}

/// Parse `data` the way the pipeline does: cut into chunks of about `chunk_len` bytes at line
/// ends, each parsed on its own in the layout the reader's skim expects, checked and parsed
/// again when the guess was wrong, line numbers put back together. For the tests and the fuzz
/// target, which compare it with one parser reading every line.
pub fn parse_in_chunks(data: &[u8], chunk_len: usize, range: TimeRange, max_reported: usize) -> ParsedChunk {
    let mut tracker = ConnLogParser::new();
    let mut state = ConnLogParser::new();
    let mut out = ParsedChunk::default();
    let mut pos = 0usize;
    while pos < data.len() {
        let want = (pos + chunk_len.max(1)).min(data.len());
        let end = if want == data.len() {
            want
        } else {
            memchr::memchr(b'\n', &data[want..]).map_or(data.len(), |e| want + e + 1)
        };
        let piece = &data[pos..end];
        pos = end;
        let layout = tracker.clone();
        tracker.skim(piece);
        let mut chunk = parse_chunk(piece, &layout, range, max_reported);
        if !layout.same_layout(&state) {
            chunk = parse_chunk(piece, &state, range, max_reported);
        }
        let base = out.lines;
        out.lines += chunk.lines;
        out.records.append(&mut chunk.records);
        out.bad += chunk.bad;
        out.filtered += chunk.filtered;
        for (l, e) in chunk.reported {
            if out.reported.len() < max_reported {
                out.reported.push((base + l, e));
            }
        }
        if let Some(end) = chunk.end {
            state = end;
        }
        if let Some(r) = chunk.refusal {
            out.refusal = Some(r.shifted(base));
            break;
        }
    }
    out.end = Some(state);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents\n#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\tbool\tbool\tcount\tstring\tcount\tcount\tcount\tcount\tset[string]\n";

    /// A log with everything that changes the layout mid-stream: a second header block with
    /// another separator and column order, whitespace before a header, blank and CRLF lines,
    /// bad lines, and a last line without its newline.
    fn mixed_log(records: usize) -> String {
        let mut s = String::from(HEADER);
        for i in 0..records {
            let state = ["SF", "S0", "REJ", "RSTO"][i % 4];
            s.push_str(&format!(
                "{}.{:06}\tC{i}\t10.0.{}.{}\t{}\t10.1.0.{}\t{}\ttcp\t-\t0.1\t1\t2\t{state}\tT\tF\t0\tShADadFf\t3\t100\t{}\t200\t-\n",
                1_700_000_000 + i / 3,
                i * 7919 % 1_000_000,
                i % 7,
                i % 251,
                30_000 + i,
                i % 200,
                1 + i % 1000,
                i % 3,
            ));
            if i % 97 == 5 {
                s.push_str("1700000000\tCbad\t10.0.0.999\t1\t10.1.0.1\t22\ttcp\n");
            }
            if i % 131 == 7 {
                s.push_str("\n\r\n");
            }
        }
        s.push_str("#close\t2024-01-01-00-00-00\n  #path\tconn\n#separator ,\n#fields,id.resp_p,id.orig_h,proto,ts,id.resp_h,conn_state\n");
        for i in 0..records / 2 {
            s.push_str(&format!("{},10.9.0.{},udp,{}.5,10.1.1.{},S0\r\n", 53 + i % 3, i % 250, 1_700_001_000 + i, i % 200));
        }
        s.push_str("443,10.9.0.1,tcp,1700002000,10.1.1.1,REJ");
        s
    }

    fn line_by_line(data: &[u8]) -> ParsedChunk {
        let mut p = ConnLogParser::new();
        let mut out = ParsedChunk::default();
        let body = data.strip_suffix(b"\n").unwrap_or(data);
        for line in body.split(|b| *b == b'\n').take(if data.is_empty() { 0 } else { usize::MAX }) {
            match p.parse_line(line) {
                Ok(Parsed::Record(r)) => out.records.push(r),
                Ok(_) => {}
                Err(ParseError::Line(e)) => {
                    out.bad += 1;
                    out.reported.push((p.line(), e));
                }
                Err(ParseError::Format(e)) => {
                    out.refusal = Some(e);
                    break;
                }
            }
        }
        out.lines = p.line();
        out
    }

    fn assert_same(a: &ParsedChunk, b: &ParsedChunk, what: &str) {
        assert_eq!(a.records, b.records, "{what}: records");
        assert_eq!((a.bad, a.lines), (b.bad, b.lines), "{what}: bad lines, lines");
        assert_eq!(a.reported, b.reported, "{what}: reported bad lines and their numbers");
        assert_eq!(a.refusal, b.refusal, "{what}: refusal");
    }

    #[test]
    fn chunks_cut_anywhere_parse_like_one_parser() {
        let log = mixed_log(300);
        let data = log.as_bytes();
        let want = line_by_line(data);
        assert!(want.records.len() > 400 && want.bad > 2, "{} records, {} bad", want.records.len(), want.bad);
        // Every chunk length from one byte (a chunk per line, headers split from their block)
        // up to the whole log: chunk ends fall in every kind of line.
        for len in (1..200).chain([997, 4096, data.len()]) {
            let got = parse_in_chunks(data, len, TimeRange::default(), usize::MAX);
            assert_same(&got, &want, &format!("chunks of {len}"));
        }
    }

    #[test]
    fn chunked_refusals_and_json_match_one_parser() {
        let json = "{\"ts\":1700000000.5,\"id.orig_h\":\"10.1.1.1\",\"id.resp_h\":\"10.1.1.2\",\"id.resp_p\":80,\"proto\":\"tcp\",\"conn_state\":\"S0\"}\n";
        let cases = [
            json.repeat(50),
            format!("\n\nnot a log\n{}", json.repeat(3)),
            format!("{HEADER}{}#fields\tts\tid.orig_h\n{}", "x\ty\n".repeat(20), "1\t2\n".repeat(5)),
            format!("{}garbage\n{HEADER}", json.repeat(10)),
        ];
        for (i, c) in cases.iter().enumerate() {
            let want = line_by_line(c.as_bytes());
            for len in [1, 7, 64, 300, c.len()] {
                let got = parse_in_chunks(c.as_bytes(), len, TimeRange::default(), usize::MAX);
                assert_same(&got, &want, &format!("case {i}, chunks of {len}"));
            }
        }
    }

    /// Hunt options for one file, defaults otherwise.
    fn file_opts(path: &std::path::Path, table: Option<super::super::table::TableFormat>) -> super::super::HuntOptions {
        super::super::HuntOptions {
            inputs: vec![Input::File(path.to_path_buf())],
            table,
            alerts_file: None,
            since_us: None,
            until_us: None,
            reorder: None,
            max_sources: None,
            progress: false,
        }
    }

    /// Alerts only (no table): the timeline on its own thread feeding the engine on the caller's
    /// raises exactly the alerts of one timeline with its own engine fed record by record.
    #[test]
    fn pipelined_engine_raises_the_alerts_of_one_thread() {
        let mut log = String::from(HEADER);
        let line = |ts: f64, src: &str, dst: &str, port: u32, state: &str, hist: &str, rp: u32| {
            format!("{ts:.6}\tC\t{src}\t40000\t{dst}\t{port}\ttcp\t-\t0.1\t0\t0\t{state}\tT\tT\t0\t{hist}\t1\t40\t{rp}\t40\t-\n")
        };
        let t0 = 1_700_000_000.0;
        for i in 0..600u32 {
            let t = t0 + f64::from(i) * 0.5;
            // Normal clients, a vertical scan (closed ports, 20 a second) and a horizontal one.
            log.push_str(&line(t, &format!("10.0.0.{}", i % 20), "10.1.0.80", 80 + i % 3, "SF", "ShADadFf", 5));
            if (100..300).contains(&i) {
                log.push_str(&line(t + 0.01, "10.5.5.5", "10.1.0.9", 1000 + i, "REJ", "Sr", 1));
                log.push_str(&line(t + 0.02, "10.5.5.5", "10.1.0.9", 2000 + i, "S0", "S", 0));
            }
            if (400..500).contains(&i) {
                log.push_str(&line(t + 0.03, "198.51.100.7", &format!("10.1.1.{}", i - 400), 22, "S0", "S", 0));
            }
        }
        let dir = std::env::temp_dir().join(format!("scanwatch-hunt-pipelined-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("conn.log");
        std::fs::write(&path, &log).expect("write log");
        let cfg = crate::config::Config::default_embedded();
        let opts = file_opts(&path, None);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let report = super::super::run(&cfg, &opts, &mut out, &mut err).expect("hunt");
        let key = |v: &serde_json::Value| {
            (v["time"].to_string(), v["kind"].to_string(), v["source"]["ip"].to_string(), v["counts"].to_string())
        };
        let got: Vec<_> = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| key(&serde_json::from_str::<serde_json::Value>(l).expect("alert JSON")))
            .collect();

        let mut tl = super::super::timeline::Timeline::new(
            &cfg,
            "t".into(),
            super::super::timeline::TimelineOptions::from_config(&cfg),
        );
        for r in line_by_line(log.as_bytes()).records {
            tl.push(r);
        }
        tl.finish();
        let want: Vec<_> = tl.take_alerts().iter().map(|a| key(&serde_json::to_value(a).expect("alert"))).collect();
        assert!(
            want.iter().any(|k| k.1.contains("vertical_scan")) && want.iter().any(|k| k.1.contains("horizontal_scan")),
            "the log raises both scans: {want:?}"
        );
        assert_eq!(got, want, "pipelined alerts differ from one thread's");
        assert_eq!(report.alerts, want.len() as u64);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The real pipeline (reader, parse workers, collector) on a log of several 1 MiB chunks with
    /// a layout change in the middle: plain and gzip inputs give the same table and counts as
    /// the records fed one by one.
    #[test]
    fn pipeline_plain_and_gzip_match_one_by_one() {
        use std::io::Write;
        let log = mixed_log(20_000);
        assert!(log.len() > 2 * CHUNK, "{} bytes", log.len());
        let dir = std::env::temp_dir().join(format!("scanwatch-hunt-chunks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let plain = dir.join("conn.log");
        std::fs::write(&plain, &log).expect("write log");
        let gz = dir.join("conn.log.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(log.as_bytes()).expect("gzip");
        std::fs::write(&gz, enc.finish().expect("gzip")).expect("write gz");

        let cfg = crate::config::Config::default_embedded();
        let run = |path: &std::path::Path| {
            let opts = file_opts(path, Some(super::super::table::TableFormat::Tsv));
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let r = super::super::run(&cfg, &opts, &mut out, &mut err).expect("hunt");
            (r, out, String::from_utf8_lossy(&err).into_owned())
        };
        let (a, table_a, err_a) = run(&plain);
        let (b, table_b, _) = run(&gz);

        // One by one: the same records through one parser and the timeline.
        let want = line_by_line(log.as_bytes());
        let mut topts = super::super::timeline::TimelineOptions::from_config(&cfg);
        topts.keep_rows = true;
        let mut tl = super::super::timeline::Timeline::new(&cfg, "t".into(), topts);
        for r in &want.records {
            tl.push(*r);
        }
        tl.finish();
        let mut table_c = Vec::new();
        let mut tw = super::super::table::TableWriter::new(super::super::table::TableFormat::Tsv);
        tw.write(&mut table_c, &tl.drain_sources()).expect("table");

        assert_eq!(a.records, want.records.len() as u64, "{err_a}");
        assert_eq!((a.records, a.bad_lines, a.sources), (b.records, b.bad_lines, b.sources));
        assert_eq!(a.bad_lines, want.bad);
        assert!(a.errors.is_empty() && b.errors.is_empty(), "{:?} {:?}", a.errors, b.errors);
        assert!(err_a.contains(&format!("conn.log:{}:", want.reported[0].0)), "first bad line reported with its number: {err_a}");
        assert_eq!(table_a, table_b, "plain and gzip tables differ");
        assert_eq!(table_a, table_c, "pipeline and one-by-one tables differ");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
