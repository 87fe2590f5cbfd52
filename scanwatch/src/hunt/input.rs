//! Input stages of `scanwatch hunt`, each on its own thread so parsing and the engine use the
//! second core: a reader (file or stdin, gzip told by its magic bytes and decompressed — several
//! concatenated gzip members too —, cut into ~1 MiB chunks at line ends) and a parser (chunks →
//! records, per-file line numbers, bad lines counted). Channels are bounded, so memory stays
//! bounded whatever the input size.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use super::features::{Classified, Classifier};
use super::zeek::{ConnLogParser, Format, FormatError, LineError, ParseError, Parsed};

/// Bytes per chunk handed from the reader to the parser.
pub const CHUNK: usize = 1 << 20;

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

/// Reader → parser.
#[derive(Debug)]
pub enum Chunk {
    Begin { file: usize },
    Data { file: usize, data: Vec<u8> },
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

/// Read every input in turn and send its chunks (reader thread).
pub fn read_inputs(inputs: &[Input], tx: &SyncSender<Chunk>, progress: &Arc<AtomicU64>) {
    for (file, input) in inputs.iter().enumerate() {
        if tx.send(Chunk::Begin { file }).is_err() {
            return;
        }
        let error = read_one(input, file, tx, progress).err();
        if tx.send(Chunk::End { file, error }).is_err() {
            return;
        }
    }
}

fn read_one(input: &Input, file: usize, tx: &SyncSender<Chunk>, progress: &Arc<AtomicU64>) -> Result<(), InputError> {
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
    let mut produced: u64 = 0;
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let mut buf = Vec::with_capacity(CHUNK + carry.len() + 1);
        buf.append(&mut carry);
        let mut eof = false;
        let mut failure = None;
        while buf.len() < CHUNK {
            let start = buf.len();
            buf.resize(CHUNK.max(start + 1), 0);
            match reader.read(&mut buf[start..]) {
                Ok(0) => {
                    buf.truncate(start);
                    eof = true;
                    break;
                }
                Ok(n) => {
                    buf.truncate(start + n);
                    produced += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(start),
                Err(e) => {
                    buf.truncate(start);
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(source) = failure {
            // Everything read so far is still parsed (a cut last line counts as a bad line).
            if !buf.is_empty() && tx.send(Chunk::Data { file, data: buf }).is_err() {
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
                carry = buf[pos + 1..].to_vec();
                buf.truncate(pos + 1);
            }
        }
        if !buf.is_empty() && tx.send(Chunk::Data { file, data: buf }).is_err() {
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

/// Parse chunks into batches of classified records (parser thread): records outside `range` are
/// counted and dropped, the rest classified (first contacts included). At most `max_reported`
/// bad lines are kept with their numbers across the run; all are counted.
pub fn parse_chunks(
    rx: &Receiver<Chunk>,
    tx: &SyncSender<Batch>,
    max_reported: usize,
    range: TimeRange,
    classifier: &mut Classifier,
) {
    let mut parser = ConnLogParser::new();
    let mut refused = false;
    let mut reported_total = 0usize;
    for msg in rx {
        let out = match msg {
            Chunk::Begin { file } => {
                parser = ConnLogParser::new();
                refused = false;
                Batch::Begin { file }
            }
            Chunk::Data { file, data } => {
                if refused {
                    continue;
                }
                let mut records = Vec::with_capacity(data.len() / 160 + 1);
                let mut reported = Vec::new();
                let mut bad = 0u64;
                let mut filtered = 0u64;
                let mut refusal = None;
                let mut start = 0usize;
                let n = data.len();
                let ends = memchr::memchr_iter(b'\n', &data).chain(std::iter::once(n));
                for end in ends {
                    if end == n && start >= n {
                        break;
                    }
                    let line = &data[start..end];
                    start = end + 1;
                    match parser.parse_line(line) {
                        Ok(Parsed::Record(r)) => {
                            if range.contains(r.ts_us) {
                                records.push(classifier.classify(r));
                            } else {
                                filtered += 1;
                            }
                        }
                        Ok(Parsed::Header | Parsed::Blank) => {}
                        Err(ParseError::Line(error)) => {
                            bad += 1;
                            if reported_total < max_reported {
                                reported_total += 1;
                                reported.push(BadLine { file, line: parser_line(&parser), error });
                            }
                        }
                        Err(ParseError::Format(reason)) => {
                            refusal = Some(reason);
                            break;
                        }
                    }
                }
                if tx.send(Batch::Records { file, records, bad, filtered, reported }).is_err() {
                    return;
                }
                match refusal {
                    Some(reason) => {
                        refused = true;
                        Batch::Refused { file, reason }
                    }
                    None => continue,
                }
            }
            Chunk::End { file, error } => {
                Batch::End { file, format: parser.format(), lines: parser_line(&parser), error }
            }
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}

fn parser_line(p: &ConnLogParser) -> u64 {
    p.line()
}
