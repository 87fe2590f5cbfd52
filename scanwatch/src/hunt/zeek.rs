//! Zeek `conn.log` parser: the ASCII writer's TSV (driven by its `#separator` / `#fields` header)
//! and the JSON writer's lines, one line at a time.
//!
//! TSV: the header block (`#separator` with its `\x09` escape form, `#set_separator`,
//! `#empty_field`, `#unset_field`, `#path`, `#open`, `#fields`, `#types`, `#close`) may appear
//! again anywhere (several logs concatenated, a writer restarted with other fields): every
//! `#fields` line re-maps the columns. Values equal to `#unset_field` (`-`) are unset, values equal
//! to `#empty_field` (`(empty)`) are empty.
//!
//! JSON: one object per line with the flat Zeek names (`"id.orig_h"`) or a nested `"id"` object;
//! `ts` as epoch seconds (number) or an ISO 8601 / RFC 3339 string
//! (`LogAscii::json_timestamps = JSON::TS_ISO8601`). Unknown keys are ignored.
//!
//! The format is told from the content: a first line starting with `#` is a TSV header, one
//! starting with `{` a JSON object; anything else is refused ([`FormatError`]).

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// An address as 16 bytes: IPv6, or IPv4 mapped into IPv6 (`::ffff:a.b.c.d`), like the kernel's
/// per-source keys.
pub type Addr = [u8; 16];

/// The address as the engine expects it (IPv4 for mapped addresses).
pub fn addr_to_ip(a: &Addr) -> IpAddr {
    Ipv6Addr::from(*a).to_canonical()
}

/// IPv4-mapped or IPv6 bytes of an address.
pub fn ip_to_addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Other,
}

impl Proto {
    pub const ALL: [Proto; 4] = [Proto::Tcp, Proto::Udp, Proto::Icmp, Proto::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Other => "other",
        }
    }

    /// IP protocol number (0 for other).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => 1,
            Proto::Other => 0,
        }
    }

    fn parse(b: &[u8]) -> Proto {
        match b {
            b"tcp" => Proto::Tcp,
            b"udp" => Proto::Udp,
            b"icmp" => Proto::Icmp,
            // unknown_transport, and anything a newer Zeek adds.
            _ => Proto::Other,
        }
    }
}

/// Zeek's `conn_state` (see Zeek's `base/protocols/conn/main.zeek`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// Attempt seen, no reply.
    S0,
    /// Established, not terminated.
    S1,
    /// Normal establishment and termination.
    SF,
    /// Attempt rejected (RST in reply to the SYN).
    Rej,
    /// Established, originator close attempt, no reply from the responder.
    S2,
    /// Established, responder close attempt, no reply from the originator.
    S3,
    /// Established, originator aborted (sent a RST).
    Rsto,
    /// Responder sent a RST.
    Rstr,
    /// Originator sent a SYN followed by a RST, no SYN-ACK from the responder.
    Rstos0,
    /// Responder sent a SYN-ACK followed by a RST, no SYN from the originator.
    Rstrh,
    /// Originator sent a SYN followed by a FIN, no SYN-ACK ("half open").
    Sh,
    /// Responder sent a SYN-ACK followed by a FIN, no SYN from the originator.
    Shr,
    /// No SYN seen, just midstream traffic.
    Oth,
    /// Unset (`-`) or absent.
    Unknown,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::S0 => "S0",
            ConnState::S1 => "S1",
            ConnState::SF => "SF",
            ConnState::Rej => "REJ",
            ConnState::S2 => "S2",
            ConnState::S3 => "S3",
            ConnState::Rsto => "RSTO",
            ConnState::Rstr => "RSTR",
            ConnState::Rstos0 => "RSTOS0",
            ConnState::Rstrh => "RSTRH",
            ConnState::Sh => "SH",
            ConnState::Shr => "SHR",
            ConnState::Oth => "OTH",
            ConnState::Unknown => "-",
        }
    }

    fn parse(b: &[u8]) -> Option<ConnState> {
        Some(match b {
            b"S0" => ConnState::S0,
            b"S1" => ConnState::S1,
            b"SF" => ConnState::SF,
            b"REJ" => ConnState::Rej,
            b"S2" => ConnState::S2,
            b"S3" => ConnState::S3,
            b"RSTO" => ConnState::Rsto,
            b"RSTR" => ConnState::Rstr,
            b"RSTOS0" => ConnState::Rstos0,
            b"RSTRH" => ConnState::Rstrh,
            b"SH" => ConnState::Sh,
            b"SHR" => ConnState::Shr,
            b"OTH" => ConnState::Oth,
            _ => return None,
        })
    }
}

/// Letters of Zeek's `history` field: upper case for the originator, lower case for the
/// responder.
const HISTORY_LETTERS: &[u8; 12] = b"SHADFRCGTWIQ";

/// The bit of every byte of a `history` string: originator letters from bit 0, responder
/// (lower-case) letters from bit 16, `^` (direction flipped) bit 31.
const HISTORY_BITS: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < HISTORY_LETTERS.len() {
        let l = HISTORY_LETTERS[i];
        t[l as usize] = 1 << i;
        t[l.to_ascii_lowercase() as usize] = 1 << (16 + i);
        i += 1;
    }
    t[b'^' as usize] = 1 << 31;
    t
};

/// A `history` string as bits: which letters each side showed, and the first letter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct History {
    bits: u32,
    /// First letter (0 when the history is empty or unset).
    pub first: u8,
}

impl History {
    pub fn parse(b: &[u8]) -> History {
        let mut bits = 0u32;
        for &c in b {
            // Other letters (a newer Zeek's) carry nothing this hunt uses (no bit).
            bits |= HISTORY_BITS[c as usize];
        }
        History { bits, first: b.first().copied().unwrap_or(0) }
    }

    fn bit(letter: u8) -> u32 {
        HISTORY_LETTERS.iter().position(|l| *l == letter).map_or(0, |i| 1 << i)
    }

    /// The originator showed `letter` (given in upper case: `b'S'`, `b'A'`, ...).
    pub fn orig(&self, letter: u8) -> bool {
        self.bits & Self::bit(letter) != 0
    }

    /// The responder showed `letter` (given in upper case).
    pub fn resp(&self, letter: u8) -> bool {
        self.bits & (Self::bit(letter) << 16) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// Zeek flipped the direction (`^`).
    pub fn flipped(&self) -> bool {
        self.bits & (1 << 31) != 0
    }
}

/// One connection: the fields the hunt uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Connection start, microseconds since the Unix epoch.
    pub ts_us: i64,
    pub orig_h: Addr,
    pub resp_h: Addr,
    /// For ICMP: the type.
    pub orig_p: u16,
    /// For ICMP: the code.
    pub resp_p: u16,
    pub proto: Proto,
    pub state: ConnState,
    pub history: History,
    pub orig_pkts: Option<u32>,
    pub resp_pkts: Option<u32>,
}

/// A line that could not be used (counted; the file goes on).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    #[error("{got} fields where the #fields header has {want}")]
    FieldCount { got: usize, want: usize },
    #[error("{field}: cannot parse {value:?}")]
    BadValue { field: &'static str, value: String },
    #[error("{field}: missing")]
    Missing { field: &'static str },
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("no #fields header in effect for this line")]
    NoHeader,
}

/// The input is not a conn.log (the rest of the file is refused).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormatError {
    #[error("not a Zeek conn.log: no #fields header and no JSON object (line {line} starts {start:?})")]
    Unrecognised { line: u64, start: String },
    #[error("#fields header on line {line} has no {field} column (columns: {have})")]
    MissingField { line: u64, field: &'static str, have: String },
    #[error("#separator on line {line}: {reason}")]
    Separator { line: u64, reason: String },
}

/// What a line was.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Record(Record),
    /// A header or comment line (`#...`).
    Header,
    /// Empty line.
    Blank,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ParseError {
    Line(LineError),
    Format(FormatError),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Line(e) => e.fmt(f),
            ParseError::Format(e) => e.fmt(f),
        }
    }
}

impl FormatError {
    /// The same error with its line number moved by `base` (a chunk parsed with line numbers
    /// counted from its own start).
    pub fn shifted(self, base: u64) -> FormatError {
        match self {
            FormatError::Unrecognised { line, start } => FormatError::Unrecognised { line: line + base, start },
            FormatError::MissingField { line, field, have } => FormatError::MissingField { line: line + base, field, have },
            FormatError::Separator { line, reason } => FormatError::Separator { line: line + base, reason },
        }
    }
}

impl From<LineError> for ParseError {
    fn from(e: LineError) -> Self {
        ParseError::Line(e)
    }
}

/// Which format the file showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Unknown,
    Tsv,
    Json,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Unknown => "unknown",
            Format::Tsv => "tsv",
            Format::Json => "json",
        }
    }
}

// Column slots of the fields the hunt reads.
const F_TS: usize = 0;
const F_ORIG_H: usize = 1;
const F_ORIG_P: usize = 2;
const F_RESP_H: usize = 3;
const F_RESP_P: usize = 4;
const F_PROTO: usize = 5;
const F_STATE: usize = 6;
const F_HISTORY: usize = 7;
const F_ORIG_PKTS: usize = 8;
const F_RESP_PKTS: usize = 9;
const N_SLOTS: usize = 10;
const FIELD_NAMES: [&str; N_SLOTS] = [
    "ts",
    "id.orig_h",
    "id.orig_p",
    "id.resp_h",
    "id.resp_p",
    "proto",
    "conn_state",
    "history",
    "orig_pkts",
    "resp_pkts",
];
/// Slots a `#fields` header must have.
const REQUIRED: [usize; 5] = [F_TS, F_ORIG_H, F_RESP_H, F_RESP_P, F_PROTO];
const NO_SLOT: u8 = u8::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Columns {
    n: usize,
    /// Column index -> slot (`NO_SLOT` for columns the hunt does not read).
    slot_of: Vec<u8>,
    /// Slot -> the last column holding it (the one whose value a line's slot gets), if any.
    col_of: [Option<usize>; N_SLOTS],
}

/// Separator positions a line's fields are cut at in one pass (more fields take the slower
/// per-field path).
const MAX_FAST_FIELDS: usize = 64;

impl Columns {
    fn new(slot_of: Vec<u8>) -> Columns {
        let mut col_of = [None; N_SLOTS];
        for (c, s) in slot_of.iter().enumerate() {
            if let Some(slot) = col_of.get_mut(usize::from(*s)) {
                *slot = Some(c);
            }
        }
        Columns { n: slot_of.len(), slot_of, col_of }
    }
}

/// `a == b`, with the one-byte case (`-`, most short values) compared without a call.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && if a.len() == 1 { a[0] == b[0] } else { a == b }
}

/// Line-at-a-time parser of one input stream (one file).
#[derive(Debug, Clone)]
pub struct ConnLogParser {
    format: Format,
    sep: Vec<u8>,
    empty: Vec<u8>,
    unset: Vec<u8>,
    cols: Option<Columns>,
    line: u64,
    records: u64,
}

impl Default for ConnLogParser {
    fn default() -> Self {
        ConnLogParser {
            format: Format::Unknown,
            sep: vec![b'\t'],
            empty: b"(empty)".to_vec(),
            unset: b"-".to_vec(),
            cols: None,
            line: 0,
            records: 0,
        }
    }
}

impl ConnLogParser {
    pub fn new() -> ConnLogParser {
        ConnLogParser::default()
    }

    /// Lines read so far (the number of the last line parsed).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The format seen so far (the first meaningful line decides; later lines may mix).
    pub fn format(&self) -> Format {
        self.format
    }

    /// Count lines from zero again (a chunk parsed on its own numbers its lines from its start;
    /// the caller adds the lines before it).
    pub fn rebase_lines(&mut self) {
        self.line = 0;
    }

    /// Same layout: two parsers in this state read every following line the same way (up to
    /// line numbers).
    pub fn same_layout(&self, o: &ConnLogParser) -> bool {
        self.format == o.format
            && self.sep == o.sep
            && self.empty == o.empty
            && self.unset == o.unset
            && self.cols == o.cols
            && (self.records == 0) == (o.records == 0)
    }

    /// Bring the layout forward over a chunk of whole lines without parsing every record: the
    /// lines up to the first record, then only the header lines (`#...`, perhaps after
    /// whitespace). The resulting layout is that of a parser that read every line — a guess
    /// the caller checks with [`ConnLogParser::same_layout`] against the real one.
    pub fn skim(&mut self, data: &[u8]) {
        let mut pos = 0usize;
        // Until the first record, every line may change the state.
        while self.records == 0 && pos < data.len() {
            let end = memchr::memchr(b'\n', &data[pos..]).map_or(data.len(), |e| pos + e);
            if let Err(ParseError::Format(_)) = self.parse_line(&data[pos..end]) {
                // The file is refused here; nothing after counts.
                return;
            }
            pos = end + 1;
        }
        while pos < data.len() {
            let Some(h) = memchr::memchr(b'#', &data[pos..]).map(|h| pos + h) else { return };
            let start = memchr::memrchr(b'\n', &data[..h]).map_or(0, |s| s + 1);
            let end = memchr::memchr(b'\n', &data[h..]).map_or(data.len(), |e| h + e);
            if start >= pos && data[start..h].iter().all(u8::is_ascii_whitespace) {
                if let Err(ParseError::Format(_)) = self.parse_line(&data[start..end]) {
                    return;
                }
            }
            pos = end + 1;
        }
    }

    /// Parse the next line (without its `\n`; a trailing `\r` is ignored). Line numbers count
    /// from 1 and include header and blank lines.
    pub fn parse_line(&mut self, raw: &[u8]) -> Result<Parsed, ParseError> {
        self.line += 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let start = line.iter().position(|c| !c.is_ascii_whitespace());
        let Some(start) = start else { return Ok(Parsed::Blank) };
        match line[start] {
            b'#' => self.header(line).map(|()| Parsed::Header),
            b'{' => {
                if self.format == Format::Unknown {
                    self.format = Format::Json;
                }
                let r = parse_json(&line[start..])?;
                self.records += 1;
                Ok(Parsed::Record(r))
            }
            _ => {
                let Some(cols) = &self.cols else {
                    if self.records == 0 {
                        let shown = String::from_utf8_lossy(&line[..line.len().min(40)]).into_owned();
                        return Err(ParseError::Format(FormatError::Unrecognised { line: self.line, start: shown }));
                    }
                    return Err(LineError::NoHeader.into());
                };
                let r = parse_tsv(line, cols, &self.sep, &self.unset, &self.empty)?;
                self.records += 1;
                Ok(Parsed::Record(r))
            }
        }
    }

    fn header(&mut self, line: &[u8]) -> Result<(), ParseError> {
        if self.format == Format::Unknown {
            self.format = Format::Tsv;
        }
        // `#separator` is written with a space before its value (the separator is not known yet).
        if let Some(rest) = line.strip_prefix(b"#separator") {
            let value = rest.strip_prefix(b" ").or_else(|| rest.strip_prefix(b"\t")).unwrap_or(rest);
            let sep = unescape(value);
            if sep.is_empty() {
                return Err(ParseError::Format(FormatError::Separator {
                    line: self.line,
                    reason: "empty separator".into(),
                }));
            }
            // A new header block: the old columns no longer apply.
            self.sep = sep;
            self.cols = None;
            return Ok(());
        }
        let mut parts = split(line, &self.sep);
        let key = parts.next().unwrap_or_default();
        let value = line.get(key.len() + self.sep.len()..).unwrap_or_default();
        match key {
            b"#empty_field" => self.empty = unescape(value),
            b"#unset_field" => self.unset = unescape(value),
            b"#fields" => {
                let names: Vec<&[u8]> = parts.collect();
                let mut slot_of = vec![NO_SLOT; names.len()];
                for (i, n) in names.iter().enumerate() {
                    if let Some(s) = FIELD_NAMES.iter().position(|f| f.as_bytes() == *n) {
                        slot_of[i] = s as u8;
                    }
                }
                for r in REQUIRED {
                    if !slot_of.contains(&(r as u8)) {
                        let have: Vec<String> =
                            names.iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
                        let mut have = have.join(",");
                        truncate_str(&mut have, 200);
                        self.cols = None;
                        return Err(ParseError::Format(FormatError::MissingField {
                            line: self.line,
                            field: FIELD_NAMES[r],
                            have,
                        }));
                    }
                }
                self.cols = Some(Columns::new(slot_of));
            }
            // #set_separator (no set-valued field is read), #path, #open, #close, #types and
            // comments carry nothing the hunt needs.
            _ => {}
        }
        Ok(())
    }
}

fn truncate_str(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

/// Decode Zeek's `\xNN` escapes (used for the separator: `\x09`).
fn unescape(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\\' && v.get(i + 1) == Some(&b'x') {
            if let (Some(h), Some(l)) = (v.get(i + 2).and_then(hex), v.get(i + 3).and_then(hex)) {
                out.push(h << 4 | l);
                i += 4;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

fn hex(c: &u8) -> Option<u8> {
    (*c as char).to_digit(16).map(|d| d as u8)
}

/// Call `f` with the position of every `needle` byte in `hay`, in order: sixteen bytes at a time
/// on x86_64 (SSE2 compare and mask), then eight at a time (SWAR: an exact per-byte zero test
/// of `word ^ needle`); fields are short.
#[inline]
fn for_each_byte(hay: &[u8], needle: u8, mut f: impl FnMut(usize)) {
    let mut base = 0usize;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
        // SAFETY: SSE2 is part of the x86_64 baseline; each unaligned load reads the 16 bytes
        // hay[base..base + 16], inside `hay` by the loop condition.
        unsafe {
            let pat = _mm_set1_epi8(needle as i8);
            while base + 16 <= hay.len() {
                let v = _mm_loadu_si128(hay.as_ptr().add(base).cast());
                let mut m = _mm_movemask_epi8(_mm_cmpeq_epi8(v, pat)) as u32;
                while m != 0 {
                    f(base + m.trailing_zeros() as usize);
                    m &= m - 1;
                }
                base += 16;
            }
        }
    }
    const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let pat = u64::from(needle) * 0x0101_0101_0101_0101;
    let mut chunks = hay[base..].chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w) ^ pat;
        // High bit set exactly in the bytes of x that are zero.
        let mut m = !(((x & LO7).wrapping_add(LO7)) | x | LO7);
        while m != 0 {
            f(base + (m.trailing_zeros() / 8) as usize);
            m &= m - 1;
        }
        base += 8;
    }
    for (i, b) in chunks.remainder().iter().enumerate() {
        if *b == needle {
            f(base + i);
        }
    }
}

/// Split on a (possibly multi-byte) separator.
fn split<'a>(line: &'a [u8], sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = Some(line);
    std::iter::from_fn(move || {
        let r = rest?;
        let pos = if sep.len() == 1 {
            memchr::memchr(sep[0], r)
        } else {
            memchr::memmem::find(r, sep)
        };
        match pos {
            Some(p) => {
                rest = r.get(p + sep.len()..);
                Some(&r[..p])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

fn parse_tsv(line: &[u8], cols: &Columns, sep: &[u8], unset: &[u8], empty: &[u8]) -> Result<Record, LineError> {
    let mut slots: [Option<&[u8]>; N_SLOTS] = [None; N_SLOTS];
    let mut n = 0usize;
    if sep.len() == 1 && cols.n <= MAX_FAST_FIELDS && line.len() <= usize::from(u16::MAX) {
        // One pass noting where the separators are (16-bit positions: a small array to clear
        // per line), then the wanted fields cut out by column: the same values as taking each
        // field in turn (a slot held by two columns gets the later one's).
        let mut ends = [0u16; MAX_FAST_FIELDS];
        for_each_byte(line, sep[0], |pos| {
            if let Some(e) = ends.get_mut(n) {
                *e = pos as u16;
            }
            n += 1;
        });
        n += 1;
        if n == cols.n {
            for (slot, col) in slots.iter_mut().zip(cols.col_of.iter()) {
                if let Some(c) = *col {
                    let start = if c == 0 { 0 } else { usize::from(ends[c - 1]) + 1 };
                    let end = if c + 1 == n { line.len() } else { usize::from(ends[c]) };
                    *slot = line.get(start..end);
                }
            }
        }
    } else if sep.len() == 1 {
        // Only the columns the hunt reads are kept; the others are only counted.
        let mut start = 0;
        let mut take = |pos: usize, n: usize, start: usize| {
            if let Some(&s) = cols.slot_of.get(n) {
                if s != NO_SLOT {
                    slots[s as usize] = line.get(start..pos);
                }
            }
        };
        for_each_byte(line, sep[0], |pos| {
            take(pos, n, start);
            n += 1;
            start = pos + 1;
        });
        take(line.len(), n, start);
        n += 1;
    } else {
        for f in split(line, sep) {
            if let Some(&s) = cols.slot_of.get(n) {
                if s != NO_SLOT {
                    slots[s as usize] = Some(f);
                }
            }
            n += 1;
        }
    }
    if n != cols.n {
        return Err(LineError::FieldCount { got: n, want: cols.n });
    }
    // Unset and empty values read as absent.
    for s in slots.iter_mut() {
        if s.is_some_and(|v| same_bytes(v, unset) || same_bytes(v, empty)) {
            *s = None;
        }
    }
    let req = |i: usize| slots[i].ok_or_else(|| LineError::Missing { field: FIELD_NAMES[i] });
    let bad = |i: usize, v: &[u8]| {
        let mut value = String::from_utf8_lossy(v).into_owned();
        truncate_str(&mut value, 60);
        LineError::BadValue { field: FIELD_NAMES[i], value }
    };
    let ts_b = req(F_TS)?;
    let ts_us = parse_ts(ts_b).ok_or_else(|| bad(F_TS, ts_b))?;
    let oh = req(F_ORIG_H)?;
    let orig_h = parse_addr(oh).ok_or_else(|| bad(F_ORIG_H, oh))?;
    let rh = req(F_RESP_H)?;
    let resp_h = parse_addr(rh).ok_or_else(|| bad(F_RESP_H, rh))?;
    let rp = req(F_RESP_P)?;
    let resp_p = parse_u16(rp).ok_or_else(|| bad(F_RESP_P, rp))?;
    let orig_p = match slots[F_ORIG_P] {
        Some(v) => parse_u16(v).ok_or_else(|| bad(F_ORIG_P, v))?,
        None => 0,
    };
    let proto = Proto::parse(req(F_PROTO)?);
    let state = match slots[F_STATE] {
        Some(v) => ConnState::parse(v).ok_or_else(|| bad(F_STATE, v))?,
        None => ConnState::Unknown,
    };
    let history = slots[F_HISTORY].map(History::parse).unwrap_or_default();
    let count = |i: usize| -> Result<Option<u32>, LineError> {
        match slots[i] {
            Some(v) => parse_u64(v).map(|c| Some(c.min(u64::from(u32::MAX)) as u32)).ok_or_else(|| bad(i, v)),
            None => Ok(None),
        }
    };
    Ok(Record {
        ts_us,
        orig_h,
        resp_h,
        orig_p,
        resp_p,
        proto,
        state,
        history,
        orig_pkts: count(F_ORIG_PKTS)?,
        resp_pkts: count(F_RESP_PKTS)?,
    })
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d))?;
    }
    Some(v)
}

fn parse_u16(b: &[u8]) -> Option<u16> {
    if b.len() > 5 {
        return None;
    }
    parse_u64(b).and_then(|v| u16::try_from(v).ok())
}

/// Dotted-quad IPv4 (fast path) or any IPv6 text form.
#[inline]
pub fn parse_addr(b: &[u8]) -> Option<Addr> {
    if let Some(v4) = parse_ipv4(b) {
        // `::ffff:a.b.c.d`, built in a register (one 16-byte store, not byte by byte).
        return Some((0xffff_u128 << 32 | u128::from(v4)).to_be_bytes());
    }
    parse_addr_other(b)
}

/// Any other address form (IPv6).
#[cold]
#[inline(never)]
fn parse_addr_other(b: &[u8]) -> Option<Addr> {
    if b.len() > 64 {
        return None;
    }
    let s = std::str::from_utf8(b).ok()?;
    s.parse::<IpAddr>().ok().map(ip_to_addr)
}

/// Four groups of one to three decimal digits (leading zeros allowed), each at most 255,
/// separated by dots, and nothing else. The address as a big-endian `u32`.
#[inline]
fn parse_ipv4(b: &[u8]) -> Option<u32> {
    if !(7..=15).contains(&b.len()) {
        return None;
    }
    let digit = |i: usize| b.get(i).map(|c| c.wrapping_sub(b'0')).filter(|d| *d <= 9);
    let mut out = 0u32;
    let mut i = 0usize;
    for k in 0..4 {
        let mut v = u32::from(digit(i)?);
        i += 1;
        if let Some(d) = digit(i) {
            v = v * 10 + u32::from(d);
            i += 1;
            if let Some(d) = digit(i) {
                v = v * 10 + u32::from(d);
                i += 1;
            }
        }
        if v > 255 {
            return None;
        }
        out = out << 8 | v;
        if k < 3 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    (i == b.len()).then_some(out)
}

/// A Zeek time: epoch seconds with a fraction (`1331901000.123456`), or an RFC 3339 / ISO 8601
/// UTC string. Microseconds since the epoch.
pub fn parse_ts(b: &[u8]) -> Option<i64> {
    parse_epoch(b).or_else(|| parse_rfc3339(b))
}

/// `[-]SECONDS[.FRACTION]` to microseconds (exact, no float rounding).
pub fn parse_epoch(b: &[u8]) -> Option<i64> {
    let (neg, b) = match b.strip_prefix(b"-") {
        Some(r) => (true, r),
        None => (false, b),
    };
    let (int, frac) = match memchr::memchr(b'.', b) {
        Some(p) => (&b[..p], &b[p + 1..]),
        None => (b, &b""[..]),
    };
    if int.is_empty() || int.len() > 12 || frac.len() > 12 {
        return None;
    }
    // At most 12 digits: no overflow.
    let mut secs: i64 = 0;
    for &c in int {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        secs = secs * 10 + i64::from(d);
    }
    // The first six fraction digits are the microseconds (fewer are padded), the rest must
    // still be digits.
    let mut us: i64 = 0;
    for (i, &c) in frac.iter().enumerate() {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        if i < 6 {
            us = us * 10 + i64::from(d);
        }
    }
    const POW10: [i64; 7] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000];
    us *= POW10[6 - frac.len().min(6)];
    let v = secs.checked_mul(1_000_000)?.checked_add(us)?;
    Some(if neg { -v } else { v })
}

/// `YYYY-MM-DD(T| )HH:MM:SS[.frac](Z|±HH:MM|±HHMM)` to microseconds since the epoch. Also
/// accepts a missing zone (UTC), as some exporters write.
pub fn parse_rfc3339(b: &[u8]) -> Option<i64> {
    let num = |s: &[u8]| -> Option<i64> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        parse_u64(s).map(|v| v as i64)
    };
    if b.len() < 19 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (h, mi, s) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut us = 0i64;
    if let Some(r) = rest.strip_prefix(b".") {
        let n = r.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, c) in r[..n].iter().enumerate().take(6) {
            us += i64::from(c - b'0') * 10i64.pow(5 - i as u32);
        }
        rest = &r[n..];
    }
    let offset = match rest {
        b"" | b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
            let oh = num(&[*h1, *h2])?;
            let om = num(&[*m1, *m2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset;
    secs.checked_mul(1_000_000)?.checked_add(us)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

/// `ts`: a number of epoch seconds or a time string.
#[derive(Debug)]
enum JsonTs {
    Us(i64),
    Bad(String),
}

impl<'de> serde::Deserialize<'de> for JsonTs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JsonTs, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = JsonTs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("epoch seconds or an ISO 8601 time")
            }
            fn visit_f64<E>(self, v: f64) -> Result<JsonTs, E> {
                let us = (v * 1e6).round();
                Ok(if us.is_finite() && us.abs() < 9.0e15 { JsonTs::Us(us as i64) } else { JsonTs::Bad(v.to_string()) })
            }
            fn visit_u64<E>(self, v: u64) -> Result<JsonTs, E> {
                Ok(match i64::try_from(v).ok().and_then(|s| s.checked_mul(1_000_000)) {
                    Some(us) => JsonTs::Us(us),
                    None => JsonTs::Bad(v.to_string()),
                })
            }
            fn visit_i64<E>(self, v: i64) -> Result<JsonTs, E> {
                Ok(match v.checked_mul(1_000_000) {
                    Some(us) => JsonTs::Us(us),
                    None => JsonTs::Bad(v.to_string()),
                })
            }
            fn visit_str<E>(self, v: &str) -> Result<JsonTs, E> {
                Ok(match parse_ts(v.as_bytes()) {
                    Some(us) => JsonTs::Us(us),
                    None => JsonTs::Bad(v.to_string()),
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, serde::Deserialize)]
struct JsonId<'a> {
    #[serde(borrow, default)]
    orig_h: Option<Cow<'a, str>>,
    #[serde(default)]
    orig_p: Option<u64>,
    #[serde(borrow, default)]
    resp_h: Option<Cow<'a, str>>,
    #[serde(default)]
    resp_p: Option<u64>,
}

#[derive(Debug, serde::Deserialize)]
struct JsonConn<'a> {
    #[serde(default)]
    ts: Option<JsonTs>,
    #[serde(rename = "id.orig_h", borrow, default)]
    orig_h: Option<Cow<'a, str>>,
    #[serde(rename = "id.orig_p", default)]
    orig_p: Option<u64>,
    #[serde(rename = "id.resp_h", borrow, default)]
    resp_h: Option<Cow<'a, str>>,
    #[serde(rename = "id.resp_p", default)]
    resp_p: Option<u64>,
    #[serde(borrow, default)]
    id: Option<JsonId<'a>>,
    #[serde(borrow, default)]
    proto: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    conn_state: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    history: Option<Cow<'a, str>>,
    #[serde(default)]
    orig_pkts: Option<u64>,
    #[serde(default)]
    resp_pkts: Option<u64>,
}

fn parse_json(line: &[u8]) -> Result<Record, LineError> {
    let j: JsonConn<'_> = serde_json::from_slice(line).map_err(|e| {
        let mut m = e.to_string();
        truncate_str(&mut m, 120);
        LineError::Json(m)
    })?;
    let bad = |field: &'static str, v: &str| {
        let mut value = v.to_string();
        truncate_str(&mut value, 60);
        LineError::BadValue { field, value }
    };
    let ts_us = match j.ts {
        Some(JsonTs::Us(us)) => us,
        Some(JsonTs::Bad(v)) => return Err(bad("ts", &v)),
        None => return Err(LineError::Missing { field: "ts" }),
    };
    let (mut oh, mut op, mut rh, mut rp) = (j.orig_h, j.orig_p, j.resp_h, j.resp_p);
    if let Some(id) = j.id {
        oh = oh.or(id.orig_h);
        op = op.or(id.orig_p);
        rh = rh.or(id.resp_h);
        rp = rp.or(id.resp_p);
    }
    let addr = |field: &'static str, v: Option<Cow<'_, str>>| -> Result<Addr, LineError> {
        let v = v.ok_or(LineError::Missing { field })?;
        parse_addr(v.as_bytes()).ok_or_else(|| bad(field, &v))
    };
    let port = |field: &'static str, v: Option<u64>| -> Result<Option<u16>, LineError> {
        match v {
            Some(p) => u16::try_from(p).map(Some).map_err(|_| bad(field, &p.to_string())),
            None => Ok(None),
        }
    };
    let orig_h = addr("id.orig_h", oh)?;
    let resp_h = addr("id.resp_h", rh)?;
    let resp_p = port("id.resp_p", rp)?.ok_or(LineError::Missing { field: "id.resp_p" })?;
    let orig_p = port("id.orig_p", op)?.unwrap_or(0);
    let proto = Proto::parse(j.proto.ok_or(LineError::Missing { field: "proto" })?.as_bytes());
    let state = match j.conn_state {
        Some(s) => ConnState::parse(s.as_bytes()).ok_or_else(|| bad("conn_state", &s))?,
        None => ConnState::Unknown,
    };
    let history = j.history.map(|h| History::parse(h.as_bytes())).unwrap_or_default();
    let cap = |v: Option<u64>| v.map(|c| c.min(u64::from(u32::MAX)) as u32);
    Ok(Record {
        ts_us,
        orig_h,
        resp_h,
        orig_p,
        resp_p,
        proto,
        state,
        history,
        orig_pkts: cap(j.orig_pkts),
        resp_pkts: cap(j.resp_pkts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n#open\t2024-01-01-00-00-00\n#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents\n#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\tbool\tbool\tcount\tstring\tcount\tcount\tcount\tcount\tset[string]\n";

    fn parse_all(text: &str) -> (ConnLogParser, Vec<Result<Parsed, ParseError>>) {
        let mut p = ConnLogParser::new();
        let v = text.lines().map(|l| p.parse_line(l.as_bytes())).collect();
        (p, v)
    }

    fn records(v: &[Result<Parsed, ParseError>]) -> Vec<Record> {
        v.iter()
            .filter_map(|r| match r {
                Ok(Parsed::Record(r)) => Some(*r),
                _ => None,
            })
            .collect()
    }

    /// The vector, SWAR and byte-at-a-time parts together find exactly the needle bytes, at
    /// every length and alignment (a needle as the first and last byte of each block too).
    #[test]
    fn for_each_byte_finds_every_needle() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for len in 0..140usize {
            for round in 0..8 {
                let hay: Vec<u8> = (0..len)
                    .map(|i| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        if round == 0 && (i % 16 == 0 || i % 16 == 15) { b'\t' } else if x % 5 == 0 { b'\t' } else { (x >> 8) as u8 | 1 }
                    })
                    .collect();
                let want: Vec<usize> = hay.iter().enumerate().filter(|(_, b)| **b == b'\t').map(|(i, _)| i).collect();
                let mut got = Vec::new();
                for_each_byte(&hay, b'\t', |p| got.push(p));
                assert_eq!(got, want, "length {len}, round {round}");
            }
        }
    }

    #[test]
    fn tsv_with_header_unset_and_empty_values() {
        let text = format!(
            "{HEADER}1700000000.123456\tC1\t10.0.0.1\t50000\t10.0.0.2\t22\ttcp\t-\t-\t-\t-\tREJ\tT\tT\t0\tSr\t1\t44\t1\t40\t(empty)\n\
             1700000001.5\tC2\t2001:db8::1\t8\t2001:db8::2\t0\ticmp\t-\t0.1\t0\t0\tOTH\t-\t-\t0\t-\t1\t28\t0\t0\t-\n#close\t2024-01-01-01-00-00\n"
        );
        let (p, v) = parse_all(&text);
        assert_eq!(p.format(), Format::Tsv);
        let r = records(&v);
        assert_eq!(r.len(), 2, "{v:?}");
        assert_eq!(r[0].ts_us, 1_700_000_000_123_456);
        assert_eq!(addr_to_ip(&r[0].orig_h).to_string(), "10.0.0.1");
        assert_eq!(r[0].resp_p, 22);
        assert_eq!(r[0].state, ConnState::Rej);
        assert!(r[0].history.orig(b'S') && r[0].history.resp(b'R') && !r[0].history.resp(b'H'));
        assert_eq!(r[1].proto, Proto::Icmp);
        assert_eq!(r[1].orig_p, 8);
        assert_eq!(r[1].resp_pkts, Some(0));
        assert!(r[1].history.is_empty());
        assert_eq!(addr_to_ip(&r[1].resp_h).to_string(), "2001:db8::2");
    }

    #[test]
    fn wrong_field_count_and_bad_values_are_line_errors() {
        let text = format!(
            "{HEADER}1700000000\tC1\t10.0.0.1\t5\n1700000000\tC1\t10.0.0.999\t1\t10.0.0.2\t22\ttcp\t-\t-\t-\t-\tS0\t-\t-\t0\tS\t1\t44\t0\t0\t-\n\
             x17\tC1\t10.0.0.1\t1\t10.0.0.2\t22\ttcp\t-\t-\t-\t-\tS0\t-\t-\t0\tS\t1\t44\t0\t0\t-\n\
             17\tC1\t10.0.0.1\t1\t10.0.0.2\t70000\ttcp\t-\t-\t-\t-\tS0\t-\t-\t0\tS\t1\t44\t0\t0\t-\n\
             17\tC1\t10.0.0.1\t1\t10.0.0.2\t7\ttcp\t-\t-\t-\t-\tXX\t-\t-\t0\tS\t1\t44\t0\t0\t-\n"
        );
        let (_, v) = parse_all(&text);
        let errs: Vec<String> = v.iter().filter_map(|r| r.as_ref().err().map(ToString::to_string)).collect();
        assert_eq!(errs.len(), 5, "{errs:?}");
        assert!(errs[0].contains("4 fields where the #fields header has 21"), "{}", errs[0]);
        assert!(errs[1].contains("id.orig_h") && errs[1].contains("10.0.0.999"), "{}", errs[1]);
        assert!(errs[2].starts_with("ts:"), "{}", errs[2]);
        assert!(errs[3].starts_with("id.resp_p"), "{}", errs[3]);
        assert!(errs[4].starts_with("conn_state"), "{}", errs[4]);
    }

    #[test]
    fn header_changes_mid_stream_remap_columns() {
        let text = format!(
            "{HEADER}1700000000\tC1\t10.0.0.1\t1\t10.0.0.2\t22\ttcp\t-\t-\t-\t-\tS0\t-\t-\t0\tS\t1\t44\t0\t0\t-\n\
             #separator ,\n#fields,id.resp_p,id.orig_h,proto,ts,id.resp_h\n\
             443,10.0.0.9,udp,1700000002.25,10.0.0.7\n"
        );
        let (_, v) = parse_all(&text);
        let r = records(&v);
        assert_eq!(r.len(), 2, "{v:?}");
        assert_eq!(r[1].resp_p, 443);
        assert_eq!(r[1].proto, Proto::Udp);
        assert_eq!(r[1].ts_us, 1_700_000_002_250_000);
        assert_eq!(r[1].state, ConnState::Unknown);
        assert_eq!(addr_to_ip(&r[1].orig_h).to_string(), "10.0.0.9");
    }

    #[test]
    fn missing_header_and_missing_columns_refuse_the_file() {
        let (_, v) = parse_all("hello world\n");
        assert!(matches!(&v[0], Err(ParseError::Format(FormatError::Unrecognised { line: 1, .. }))), "{v:?}");
        let (_, v) = parse_all("#separator \\x09\n#fields\tts\tid.orig_h\tid.resp_h\tproto\n");
        match &v[1] {
            Err(ParseError::Format(FormatError::MissingField { field, line, .. })) => {
                assert_eq!((*field, *line), ("id.resp_p", 2));
            }
            other => panic!("expected a refusal naming id.resp_p, got {other:?}"),
        }
    }

    #[test]
    fn json_flat_nested_and_iso_timestamps() {
        let text = r#"{"ts":1700000000.5,"uid":"C1","id.orig_h":"10.1.1.1","id.orig_p":4000,"id.resp_h":"10.1.1.2","id.resp_p":80,"proto":"tcp","conn_state":"SF","history":"ShADadFf","orig_pkts":5,"resp_pkts":4}
{"ts":"2023-11-14T22:13:20.250000Z","id":{"orig_h":"10.1.1.1","orig_p":1,"resp_h":"fe80::1","resp_p":53},"proto":"udp","conn_state":"S0"}
{"ts":"2023-11-14T23:13:20+01:00","id.orig_h":"10.1.1.1","id.resp_h":"10.1.1.3","id.resp_p":22,"proto":"tcp"}
{"ts":1,"id.orig_h":"10.1.1.1","id.resp_h":"10.1.1.3","proto":"tcp"}
{"ts":1,"id.orig_h":"10.1.1.1","id.resp_h":"10.1.1.3","id.resp_p":22,"proto":"tcp",
"#;
        let (p, v) = parse_all(text);
        assert_eq!(p.format(), Format::Json);
        let r = records(&v);
        assert_eq!(r.len(), 3, "{v:?}");
        assert_eq!(r[0].ts_us, 1_700_000_000_500_000);
        assert_eq!(r[0].state, ConnState::SF);
        assert_eq!(r[1].ts_us, 1_700_000_000_250_000);
        assert_eq!(r[1].resp_p, 53);
        assert_eq!(r[2].ts_us, 1_700_000_000_000_000);
        assert!(matches!(v[3], Err(ParseError::Line(LineError::Missing { field: "id.resp_p" }))), "{:?}", v[3]);
        assert!(matches!(v[4], Err(ParseError::Line(LineError::Json(_)))), "{:?}", v[4]);
    }

    /// The previous (byte-at-a-time) IPv4 and epoch parsers, kept as the reference the faster
    /// ones must match exactly.
    fn ipv4_reference(b: &[u8]) -> Option<[u8; 4]> {
        let mut out = [0u8; 4];
        let (mut idx, mut val, mut digits) = (0usize, 0u32, 0);
        for &c in b {
            if c == b'.' {
                if digits == 0 || idx >= 3 {
                    return None;
                }
                out[idx] = u8::try_from(val).ok()?;
                idx += 1;
                val = 0;
                digits = 0;
            } else {
                let d = c.wrapping_sub(b'0');
                if d > 9 || digits >= 3 {
                    return None;
                }
                val = val * 10 + u32::from(d);
                digits += 1;
            }
        }
        if idx != 3 || digits == 0 {
            return None;
        }
        out[3] = u8::try_from(val).ok()?;
        Some(out)
    }

    fn epoch_reference(b: &[u8]) -> Option<i64> {
        let (neg, b) = match b.strip_prefix(b"-") {
            Some(r) => (true, r),
            None => (false, b),
        };
        let (int, frac) = match memchr::memchr(b'.', b) {
            Some(p) => (&b[..p], &b[p + 1..]),
            None => (b, &b""[..]),
        };
        if int.is_empty() || int.len() > 12 || frac.len() > 12 {
            return None;
        }
        let secs = parse_u64(int)? as i64;
        let mut us: i64 = 0;
        for (i, &c) in frac.iter().enumerate() {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            if i < 6 {
                us += i64::from(d) * 10i64.pow(5 - i as u32);
            }
        }
        let v = secs.checked_mul(1_000_000)?.checked_add(us)?;
        Some(if neg { -v } else { v })
    }

    /// Random strings over the parsers' alphabet (digits, dots, a few others), every length up
    /// to 20: the fast IPv4 and epoch parsers accept exactly what the reference ones accept,
    /// with the same values.
    #[test]
    fn fast_ipv4_and_epoch_match_the_reference() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"0123456789012345678901234567890123456789......-x:a ";
        let mut accepted = (0, 0);
        for round in 0..400_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 21) as usize;
            let mut s: Vec<u8> = (0..len)
                .map(|i| alphabet[((x >> (i % 8 * 8)) as usize ^ i * 7 ^ round) % alphabet.len()])
                .collect();
            if round % 3 == 0 {
                // Well-formed-looking dotted quads and epochs, with values around the limits.
                let o = |k: u64| (x >> (k * 9)) % 300;
                s = match round % 2 {
                    0 => format!("{}.{}.{}.{}", o(0), o(1), o(2), o(3)).into_bytes(),
                    _ => format!("{}.{:0w$}", x % 10_000_000_000_000, o(4), w = (x % 9) as usize).into_bytes(),
                };
            }
            assert_eq!(parse_ipv4(&s), ipv4_reference(&s).map(u32::from_be_bytes), "{:?}", String::from_utf8_lossy(&s));
            let mapped = ipv4_reference(&s).map(|v| std::net::Ipv4Addr::from(v).to_ipv6_mapped().octets());
            if mapped.is_some() {
                assert_eq!(parse_addr(&s), mapped, "{:?}", String::from_utf8_lossy(&s));
            }
            assert_eq!(parse_epoch(&s), epoch_reference(&s), "{:?}", String::from_utf8_lossy(&s));
            accepted.0 += usize::from(ipv4_reference(&s).is_some());
            accepted.1 += usize::from(epoch_reference(&s).is_some());
        }
        assert!(accepted.0 > 10_000 && accepted.1 > 10_000, "{accepted:?}");
    }

    /// The one-pass field cut (up to 64 columns, lines up to 64 KiB) and the field-by-field one
    /// (more columns, longer lines) read the same values; a column named twice gives its slot
    /// the later column's value on both.
    #[test]
    fn wide_and_duplicated_columns_read_alike() {
        for extra in [0usize, 3, 70] {
            let names: String = (0..extra).map(|i| format!("\tx{i}")).collect();
            let values: String = (0..extra).map(|i| format!("\t{}", "v".repeat(i % 5))).collect();
            let text = format!(
                "#separator \\x09\n#fields\tts\tid.orig_h\tid.resp_h\tid.resp_p\tproto{names}\tts\n\
                 1\t10.0.0.1\t10.0.0.2\t22\ttcp{values}\t5.25\n\
                 1\t10.0.0.1\t10.0.0.2\t22\ttcp{values}\n"
            );
            let (_, v) = parse_all(&text);
            let r = records(&v);
            assert_eq!(r.len(), 1, "{extra} extra columns: {v:?}");
            assert_eq!((r[0].ts_us, r[0].resp_p), (5_250_000, 22), "{extra} extra columns");
            assert!(
                matches!(&v[3], Err(ParseError::Line(LineError::FieldCount { got, want })) if *got + 1 == *want),
                "{extra} extra columns: {:?}",
                v[3]
            );
        }
        // A line longer than 64 KiB (an absurd history) is cut field by field.
        let text = format!(
            "#separator \\x09\n#fields\tts\tid.orig_h\tid.resp_h\tid.resp_p\tproto\thistory\n\
             7\t10.0.0.1\t10.0.0.2\t22\ttcp\tS{}\n",
            "h".repeat(70_000)
        );
        let (_, v) = parse_all(&text);
        let r = records(&v);
        assert_eq!(r.len(), 1, "{v:?}");
        assert!(r[0].history.orig(b'S') && r[0].history.resp(b'H'));
    }

    #[test]
    fn time_parsers() {
        assert_eq!(parse_epoch(b"1.000001"), Some(1_000_001));
        assert_eq!(parse_epoch(b"12"), Some(12_000_000));
        assert_eq!(parse_epoch(b"1.2.3"), None);
        assert_eq!(parse_rfc3339(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339(b"2000-03-01T00:00:00Z"), Some(951_868_800_000_000));
        assert_eq!(parse_rfc3339(b"2000-03-01T01:30:00+01:30"), Some(951_868_800_000_000));
        assert_eq!(parse_rfc3339(b"2000-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339(b"2000-01-01T00:00:00Zjunk"), None);
    }
}
