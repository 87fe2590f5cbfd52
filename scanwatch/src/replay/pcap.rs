//! Streaming reader for pcap and pcapng captures.
//!
//! * pcap: both byte orders, microsecond (`a1b2c3d4`) and nanosecond (`a1b23c4d`) timestamps.
//! * pcapng: any number of sections (each Section Header Block sets its own byte order),
//!   Interface Description Blocks with `if_tsresol` / `if_tsoffset`, Enhanced, Simple and the
//!   obsolete Packet Block; every other block type is skipped by its length. Each interface keeps
//!   its own link type, so one file may mix Ethernet, raw IP and Linux cooked captures.
//!
//! Memory is one reusable record buffer: records are read one at a time from any [`Read`], and a
//! record longer than [`MAX_RECORD`] is refused (a corrupt length field never allocates
//! gigabytes). Errors name the byte offset of the record that could not be read; every record
//! before it has already been returned, so a truncated capture loses nothing it holds.
use std::io::{self, Read};
use std::time::Duration;

/// Largest record accepted (pcapng block or pcap packet): far above any real snap length.
pub const MAX_RECORD: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("byte offset {offset}: read error: {source}")]
    Io { offset: u64, source: io::Error },
    #[error("byte offset {offset}: not a pcap or pcapng file (first bytes {magic:02x?})")]
    BadMagic { offset: u64, magic: [u8; 4] },
    #[error("byte offset {offset}: truncated {what}: needs {needed} bytes, the file ends after {got}")]
    Truncated { offset: u64, what: &'static str, needed: u64, got: u64 },
    #[error("byte offset {offset}: corrupt {what}: {reason}")]
    Corrupt { offset: u64, what: &'static str, reason: String },
}

impl PcapError {
    /// Byte offset of the record that could not be read.
    pub fn offset(&self) -> u64 {
        match self {
            PcapError::Io { offset, .. }
            | PcapError::BadMagic { offset, .. }
            | PcapError::Truncated { offset, .. }
            | PcapError::Corrupt { offset, .. } => *offset,
        }
    }
}

/// Which container the file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pcap { nanos: bool, big_endian: bool },
    PcapNg,
}

/// One captured packet, borrowed from the reader's buffer until the next call.
#[derive(Debug)]
pub struct Packet<'a> {
    /// Capture time since the Unix epoch.
    pub ts: Duration,
    /// LINKTYPE_* of the interface it was captured on.
    pub linktype: u32,
    /// Captured bytes (may be shorter than `orig_len` when a snap length cut it).
    pub data: &'a [u8],
    pub orig_len: u32,
    /// Byte offset of the packet's record in the file.
    pub offset: u64,
}

#[derive(Debug, Clone, Copy)]
struct Iface {
    linktype: u32,
    snaplen: u32,
    /// Timestamp units per second (10^6 unless `if_tsresol` says otherwise).
    units_per_sec: u64,
    /// `if_tsoffset`: seconds added to every timestamp.
    offset_secs: i64,
}

/// (data start, captured length, timestamp, link type, original length) of a packet block.
type BlockPacket = (usize, usize, Duration, u32, u32);

const SHB: u32 = 0x0A0D_0D0A;
const BOM: u32 = 0x1A2B_3C4D;

/// Streaming capture reader.
pub struct CaptureReader<R: Read> {
    r: R,
    /// Offset of the next unread byte.
    pos: u64,
    format: Format,
    /// pcapng: byte order of the current section.
    big_endian: bool,
    /// pcap: link type and snap length from the file header.
    pcap_linktype: u32,
    ifaces: Vec<Iface>,
    buf: Vec<u8>,
    done: bool,
    /// Blocks skipped because their type is not one that carries packets (pcapng).
    pub skipped_blocks: u64,
}

fn u32_at(b: &[u8], i: usize, be: bool) -> u32 {
    let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
    if be {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

fn u16_at(b: &[u8], i: usize, be: bool) -> u16 {
    let a = [b[i], b[i + 1]];
    if be {
        u16::from_be_bytes(a)
    } else {
        u16::from_le_bytes(a)
    }
}

/// Read exactly `buf.len()` bytes; Ok(n) with n < len only at end of input.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> CaptureReader<R> {
    /// Read the file header and detect the format.
    pub fn new(mut r: R) -> Result<Self, PcapError> {
        let mut head = [0u8; 4];
        let n = read_full(&mut r, &mut head).map_err(|source| PcapError::Io { offset: 0, source })?;
        if n < 4 {
            return Err(PcapError::Truncated { offset: 0, what: "file header", needed: 4, got: n as u64 });
        }
        let mut me = CaptureReader {
            r,
            pos: 4,
            format: Format::PcapNg,
            big_endian: false,
            pcap_linktype: 0,
            ifaces: Vec::new(),
            buf: Vec::with_capacity(65536 + 64),
            done: false,
            skipped_blocks: 0,
        };
        let le = u32::from_le_bytes(head);
        let pcap = match le {
            0xa1b2_c3d4 => Some((false, false)),
            0xa1b2_3c4d => Some((true, false)),
            0xd4c3_b2a1 => Some((false, true)),
            0x4d3c_b2a1 => Some((true, true)),
            _ => None,
        };
        if let Some((nanos, be)) = pcap {
            let mut rest = [0u8; 20];
            let got = me.fill(&mut rest, 0, "pcap file header", 24)?;
            debug_assert_eq!(got, 20);
            let major = u16_at(&rest, 0, be);
            if major != 2 {
                return Err(PcapError::Corrupt { offset: 4, what: "pcap file header", reason: format!("version {major} (expected 2)") });
            }
            let snaplen = u32_at(&rest, 12, be);
            // The upper bits of the link-type field carry FCS information (pcap 2.4).
            let network = u32_at(&rest, 16, be) & 0x0fff_ffff;
            me.format = Format::Pcap { nanos, big_endian: be };
            me.big_endian = be;
            me.pcap_linktype = network;
            me.ifaces.push(Iface { linktype: network, snaplen, units_per_sec: if nanos { 1_000_000_000 } else { 1_000_000 }, offset_secs: 0 });
            return Ok(me);
        }
        if le == SHB {
            let mut len_bytes = [0u8; 4];
            me.fill(&mut len_bytes, 0, "pcapng section header", 28)?;
            me.read_shb(0, len_bytes)?;
            return Ok(me);
        }
        Err(PcapError::BadMagic { offset: 0, magic: head })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Fill `buf` entirely or fail with `Truncated` for a record starting at `rec_off` of
    /// `rec_len` bytes.
    fn fill(&mut self, buf: &mut [u8], rec_off: u64, what: &'static str, rec_len: u64) -> Result<usize, PcapError> {
        let n = read_full(&mut self.r, buf).map_err(|source| PcapError::Io { offset: self.pos, source })?;
        self.pos += n as u64;
        if n < buf.len() {
            self.done = true;
            return Err(PcapError::Truncated { offset: rec_off, what, needed: rec_len, got: self.pos - rec_off });
        }
        Ok(n)
    }

    /// Read `len` more bytes of a record into `self.buf` (appending).
    fn fill_buf(&mut self, len: usize, rec_off: u64, what: &'static str, rec_len: u64) -> Result<(), PcapError> {
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        let mut tmp = std::mem::take(&mut self.buf);
        let r = self.fill(&mut tmp[start..], rec_off, what, rec_len);
        self.buf = tmp;
        r.map(|_| ())
    }

    /// The rest of a Section Header Block at `off` whose type and length (`len_bytes`, in a
    /// byte order not known yet) are consumed: the byte-order magic decides.
    fn read_shb(&mut self, off: u64, len_bytes: [u8; 4]) -> Result<(), PcapError> {
        let mut bom = [0u8; 4];
        self.fill(&mut bom, off, "pcapng section header", 28)?;
        let be = match u32::from_le_bytes(bom) {
            BOM => false,
            0x4d3c_2b1a => true,
            other => {
                self.done = true;
                return Err(PcapError::Corrupt { offset: off, what: "pcapng section header", reason: format!("byte-order magic {other:08x}") });
            }
        };
        self.big_endian = be;
        self.buf.clear();
        self.buf.extend_from_slice(&SHB.to_le_bytes());
        self.buf.extend_from_slice(&len_bytes);
        self.buf.extend_from_slice(&bom);
        let len = u32_at(&self.buf, 4, be) as usize;
        self.check_block_len(off, len, 28, "pcapng section header")?;
        self.fill_buf(len - 12, off, "pcapng section header", len as u64)?;
        let major = u16_at(&self.buf, 12, be);
        if major != 1 {
            self.done = true;
            return Err(PcapError::Corrupt { offset: off, what: "pcapng section header", reason: format!("version {major} (expected 1)") });
        }
        let trailer = u32_at(&self.buf, len - 4, be) as usize;
        if trailer != len {
            self.done = true;
            return Err(PcapError::Corrupt { offset: off, what: "pcapng section header", reason: format!("leading length {len} ≠ trailing length {trailer}") });
        }
        self.ifaces.clear();
        Ok(())
    }

    fn check_block_len(&mut self, off: u64, len: usize, min: usize, what: &'static str) -> Result<(), PcapError> {
        if len < min || !len.is_multiple_of(4) || len > MAX_RECORD {
            self.done = true;
            return Err(PcapError::Corrupt { offset: off, what, reason: format!("block length {len}") });
        }
        Ok(())
    }

    /// The next packet, `Ok(None)` at a clean end of file. After an error every later call
    /// returns `Ok(None)`.
    pub fn next_packet(&mut self) -> Result<Option<Packet<'_>>, PcapError> {
        if self.done {
            return Ok(None);
        }
        match self.format {
            Format::Pcap { .. } => self.next_pcap(),
            Format::PcapNg => self.next_pcapng(),
        }
    }

    fn at_eof(&mut self, off: u64, hdr: &mut [u8]) -> Result<bool, PcapError> {
        let n = read_full(&mut self.r, hdr).map_err(|source| PcapError::Io { offset: off, source })?;
        self.pos += n as u64;
        if n == 0 {
            self.done = true;
            return Ok(true);
        }
        if n < hdr.len() {
            self.done = true;
            return Err(PcapError::Truncated { offset: off, what: "record header", needed: hdr.len() as u64, got: n as u64 });
        }
        Ok(false)
    }

    fn next_pcap(&mut self) -> Result<Option<Packet<'_>>, PcapError> {
        let off = self.pos;
        let mut hdr = [0u8; 16];
        if self.at_eof(off, &mut hdr)? {
            return Ok(None);
        }
        let be = self.big_endian;
        let (sec, frac, caplen, orig) = (u32_at(&hdr, 0, be), u32_at(&hdr, 4, be), u32_at(&hdr, 8, be), u32_at(&hdr, 12, be));
        let units = self.ifaces[0].units_per_sec;
        if u64::from(frac) >= units {
            self.done = true;
            return Err(PcapError::Corrupt { offset: off, what: "pcap packet header", reason: format!("fractional timestamp {frac} ≥ {units}") });
        }
        if caplen as usize > MAX_RECORD {
            self.done = true;
            return Err(PcapError::Corrupt { offset: off, what: "pcap packet header", reason: format!("captured length {caplen}") });
        }
        self.buf.clear();
        self.fill_buf(caplen as usize, off, "pcap packet", 16 + u64::from(caplen))?;
        let ts = Duration::from_secs(u64::from(sec)) + Duration::from_nanos(u64::from(frac) * (1_000_000_000 / units));
        Ok(Some(Packet { ts, linktype: self.pcap_linktype, data: &self.buf, orig_len: orig, offset: off }))
    }

    fn next_pcapng(&mut self) -> Result<Option<Packet<'_>>, PcapError> {
        loop {
            let off = self.pos;
            let mut hdr = [0u8; 8];
            if self.at_eof(off, &mut hdr)? {
                return Ok(None);
            }
            self.buf.clear();
            self.buf.extend_from_slice(&hdr);
            // A new section may switch the byte order: its magic reads the same either way.
            if u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) == SHB {
                self.read_shb(off, [hdr[4], hdr[5], hdr[6], hdr[7]])?;
                continue;
            }
            let be = self.big_endian;
            let ty = u32_at(&hdr, 0, be);
            let len = u32_at(&hdr, 4, be) as usize;
            self.check_block_len(off, len, 12, "pcapng block")?;
            self.fill_buf(len - 8, off, "pcapng block", len as u64)?;
            let trailer = u32_at(&self.buf, len - 4, be) as usize;
            if trailer != len {
                self.done = true;
                return Err(PcapError::Corrupt { offset: off, what: "pcapng block", reason: format!("leading length {len} ≠ trailing length {trailer}") });
            }
            match ty {
                1 => self.parse_idb(off)?,
                6 | 2 | 3 => {
                    if let Some((start, caplen, ts, linktype, orig)) = self.parse_packet_block(off, ty)? {
                        return Ok(Some(Packet { ts, linktype, data: &self.buf[start..start + caplen], orig_len: orig, offset: off }));
                    }
                }
                _ => self.skipped_blocks += 1,
            }
        }
    }

    fn parse_idb(&mut self, off: u64) -> Result<(), PcapError> {
        let be = self.big_endian;
        let b = &self.buf;
        if b.len() < 20 {
            self.done = true;
            return Err(PcapError::Corrupt { offset: off, what: "pcapng interface description", reason: format!("block length {}", b.len()) });
        }
        let linktype = u32::from(u16_at(b, 8, be));
        let snaplen = u32_at(b, 12, be);
        let mut iface = Iface { linktype, snaplen, units_per_sec: 1_000_000, offset_secs: 0 };
        // Options: code u16, length u16, value padded to 4.
        let end = b.len() - 4;
        let mut i = 16;
        while i + 4 <= end {
            let code = u16_at(b, i, be);
            let olen = usize::from(u16_at(b, i + 2, be));
            let v = i + 4;
            if code == 0 || v + olen > end {
                break;
            }
            match (code, olen) {
                (9, 1) => {
                    let r = b[v];
                    let exp = u32::from(r & 0x7f);
                    let units = if r & 0x80 != 0 { 2u64.checked_pow(exp) } else { 10u64.checked_pow(exp) };
                    match units {
                        Some(u) if u > 0 => iface.units_per_sec = u,
                        _ => {
                            self.done = true;
                            return Err(PcapError::Corrupt {
                                offset: off,
                                what: "pcapng interface description",
                                reason: format!("if_tsresol {r:#04x} out of range"),
                            });
                        }
                    }
                }
                (14, 8) => {
                    let lo = u64::from(u32_at(b, v, be));
                    let hi = u64::from(u32_at(b, v + 4, be));
                    // Stored as a 64-bit integer in the section's byte order.
                    iface.offset_secs = if be { ((lo << 32) | hi) as i64 } else { ((hi << 32) | lo) as i64 };
                }
                _ => {}
            }
            i = v + olen.div_ceil(4) * 4;
        }
        if self.ifaces.len() >= 65536 {
            self.done = true;
            return Err(PcapError::Corrupt { offset: off, what: "pcapng interface description", reason: "more than 65,536 interfaces".into() });
        }
        self.ifaces.push(iface);
        Ok(())
    }

    /// Where the packet of an EPB / PB / SPB held in `self.buf` is, and what it is.
    fn parse_packet_block(&mut self, off: u64, ty: u32) -> Result<Option<BlockPacket>, PcapError> {
        let be = self.big_endian;
        let b = &self.buf;
        let blen = b.len();
        let corrupt = |reason: String| PcapError::Corrupt { offset: off, what: "pcapng packet block", reason };
        let (iface_id, ts_units, caplen, orig, start) = match ty {
            6 | 2 => {
                if blen < 32 {
                    self.done = true;
                    return Err(corrupt(format!("block length {blen}")));
                }
                let iface = if ty == 6 { u32_at(b, 8, be) } else { u32::from(u16_at(b, 8, be)) };
                let ts = (u64::from(u32_at(b, 12, be)) << 32) | u64::from(u32_at(b, 16, be));
                (iface, Some(ts), u32_at(b, 20, be) as usize, u32_at(b, 24, be), 28)
            }
            _ => {
                if blen < 16 {
                    self.done = true;
                    return Err(corrupt(format!("block length {blen}")));
                }
                let orig = u32_at(b, 8, be);
                let room = blen - 16;
                let snap = self.ifaces.first().map_or(u32::MAX, |i| if i.snaplen == 0 { u32::MAX } else { i.snaplen });
                (0, None, (orig.min(snap) as usize).min(room), orig, 12)
            }
        };
        if start + caplen + 4 > blen {
            self.done = true;
            return Err(corrupt(format!("captured length {caplen} exceeds the block ({blen} bytes)")));
        }
        let Some(iface) = self.ifaces.get(iface_id as usize).copied() else {
            self.done = true;
            return Err(corrupt(format!("interface {iface_id} was not described (interfaces so far: {})", self.ifaces.len())));
        };
        let ts = match ts_units {
            None => Duration::ZERO,
            Some(t) => {
                let u = iface.units_per_sec;
                let secs = (t / u) as i64 + iface.offset_secs;
                let frac = t % u;
                let nanos = (u128::from(frac) * 1_000_000_000 / u128::from(u)) as u32;
                if secs < 0 {
                    Duration::ZERO
                } else {
                    Duration::new(secs as u64, nanos)
                }
            }
        };
        Ok(Some((start, caplen, ts, iface.linktype, orig)))
    }
}

/// Read a whole capture from memory the way `replay` does (every packet through the link-layer
/// conversion and the tracker's decoder), checking the reader's invariants; the fuzz target and
/// its corpus replay call this. Returns the packets read and the error that ended the input.
pub fn exercise(data: &[u8]) -> (u64, Option<PcapError>) {
    let mut eth = Vec::new();
    let mut r = match CaptureReader::new(data) {
        Ok(r) => r,
        Err(e) => {
            assert!(e.offset() <= data.len() as u64, "error offset {} beyond the input ({} bytes)", e.offset(), data.len());
            return (0, Some(e));
        }
    };
    let mut n = 0u64;
    let mut last = 0u64;
    loop {
        match r.next_packet() {
            Ok(Some(p)) => {
                assert!(p.offset >= last, "record offsets go forward");
                last = p.offset;
                assert!(p.data.len() <= MAX_RECORD);
                n += 1;
                if super::frame::to_ethernet(p.linktype, p.data, &mut eth).is_ok() {
                    let _ = super::frame::decode(&eth);
                }
            }
            Ok(None) => break,
            Err(e) => {
                assert!(e.offset() <= data.len() as u64, "error offset {} beyond the input ({} bytes)", e.offset(), data.len());
                assert!(e.offset() >= last, "the error is after every packet returned");
                assert!(matches!(r.next_packet(), Ok(None)), "nothing after an error");
                return (n, Some(e));
            }
        }
    }
    assert!(r.position() <= data.len() as u64);
    (n, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap_le(nanos: bool, linktype: u32, pkts: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(if nanos { 0xa1b2_3c4du32 } else { 0xa1b2_c3d4 }).to_le_bytes());
        v.extend_from_slice(&2u16.to_le_bytes());
        v.extend_from_slice(&4u16.to_le_bytes());
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&65535u32.to_le_bytes());
        v.extend_from_slice(&linktype.to_le_bytes());
        for (s, f, d) in pkts {
            v.extend_from_slice(&s.to_le_bytes());
            v.extend_from_slice(&f.to_le_bytes());
            v.extend_from_slice(&(d.len() as u32).to_le_bytes());
            v.extend_from_slice(&(d.len() as u32).to_le_bytes());
            v.extend_from_slice(d);
        }
        v
    }

    type Read3 = (Duration, u32, Vec<u8>);

    fn all<R: Read>(r: &mut CaptureReader<R>) -> (Vec<Read3>, Option<PcapError>) {
        let mut out = Vec::new();
        loop {
            match r.next_packet() {
                Ok(Some(p)) => out.push((p.ts, p.linktype, p.data.to_vec())),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    #[test]
    fn pcap_micro_and_nano() {
        let f = pcap_le(false, 1, &[(10, 500_000, b"abc"), (11, 1, b"de")]);
        let mut r = CaptureReader::new(&f[..]).expect("header");
        let (p, e) = all(&mut r);
        assert!(e.is_none());
        assert_eq!(p[0], (Duration::from_millis(10_500), 1, b"abc".to_vec()));
        assert_eq!(p[1].0, Duration::new(11, 1000));
        let f = pcap_le(true, 101, &[(10, 7, b"x")]);
        let (p, _) = all(&mut CaptureReader::new(&f[..]).expect("header"));
        assert_eq!(p[0], (Duration::new(10, 7), 101, b"x".to_vec()));
    }

    #[test]
    fn truncated_pcap_reports_packets_before_and_the_offset() {
        let f = pcap_le(false, 1, &[(1, 0, &[1; 40]), (2, 0, &[2; 40])]);
        let cut = &f[..f.len() - 10];
        let mut r = CaptureReader::new(cut).expect("header");
        let (p, e) = all(&mut r);
        assert_eq!(p.len(), 1, "the complete first packet is returned");
        let e = e.expect("error");
        assert_eq!(e.offset(), 24 + 16 + 40, "offset of the second record: {e}");
        assert!(e.to_string().contains("byte offset 80"), "{e}");
        assert!(r.next_packet().expect("after error").is_none());
        // Cut inside a record header.
        let (p, e) = all(&mut CaptureReader::new(&f[..24 + 56 + 5]).expect("header"));
        assert_eq!((p.len(), e.expect("error").offset()), (1, 80));
    }

    #[test]
    fn bad_magic_and_absurd_lengths_are_errors() {
        assert!(matches!(CaptureReader::new(&b"GET / HTTP/1.1"[..]), Err(PcapError::BadMagic { .. })));
        assert!(matches!(CaptureReader::new(&b"\xd4\xc3"[..]), Err(PcapError::Truncated { .. })));
        let mut f = pcap_le(false, 1, &[(1, 0, b"abcd")]);
        f[24 + 8..24 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let (p, e) = all(&mut CaptureReader::new(&f[..]).expect("header"));
        assert!(p.is_empty());
        assert!(matches!(e, Some(PcapError::Corrupt { offset: 24, .. })), "{e:?}");
    }

    /// The fuzz target's seed corpus (fuzz/corpus/pcap), replayed as a normal test: every file
    /// is read without a panic and the reader's invariants hold.
    #[test]
    fn fuzz_corpus_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/pcap");
        let mut files = 0;
        let mut packets = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let (n, _) = exercise(&data);
            packets += n;
            files += 1;
        }
        assert!(files >= 8, "seed corpus present ({files} files)");
        assert!(packets >= 10, "the seeds hold packets ({packets})");
    }

    #[test]
    fn big_endian_pcap_and_pcapng_sections() {
        // pcap, big-endian, nanoseconds.
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2_3c4du32.to_be_bytes());
        f.extend_from_slice(&[0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&65535u32.to_be_bytes());
        f.extend_from_slice(&101u32.to_be_bytes());
        for x in [5u32, 999_999_999, 3, 3] {
            f.extend_from_slice(&x.to_be_bytes());
        }
        f.extend_from_slice(b"abc");
        let (p, e) = all(&mut CaptureReader::new(&f[..]).expect("header"));
        assert!(e.is_none());
        assert_eq!(p, vec![(Duration::new(5, 999_999_999), 101, b"abc".to_vec())]);

        // pcapng: a big-endian section (IDB with if_tsresol = 10^-9, EPB), then a
        // little-endian section (IDB default µs, SPB).
        fn block(be: bool, ty: u32, body: &[u8]) -> Vec<u8> {
            let w = |v: u32| if be { v.to_be_bytes() } else { v.to_le_bytes() };
            let len = 12 + body.len() as u32;
            let mut b = w(ty).to_vec();
            b.extend_from_slice(&w(len));
            b.extend_from_slice(body);
            b.extend_from_slice(&w(len));
            b
        }
        let shb = |be: bool| {
            let mut body = if be { 0x1A2B_3C4Du32.to_be_bytes() } else { 0x1A2B_3C4Du32.to_le_bytes() }.to_vec();
            body.extend_from_slice(&if be { [0, 1, 0, 0] } else { [1, 0, 0, 0] });
            body.extend_from_slice(&[0xff; 8]);
            block(be, SHB, &body)
        };
        let mut ng = shb(true);
        let mut idb = vec![0, 228, 0, 0, 0, 0, 0xff, 0xff];
        idb.extend_from_slice(&[0, 9, 0, 1, 9, 0, 0, 0, 0, 0, 0, 0]);
        ng.extend(block(true, 1, &idb));
        let ts: u64 = 7_000_000_123;
        let mut epb = 0u32.to_be_bytes().to_vec();
        epb.extend_from_slice(&((ts >> 32) as u32).to_be_bytes());
        epb.extend_from_slice(&(ts as u32).to_be_bytes());
        epb.extend_from_slice(&4u32.to_be_bytes());
        epb.extend_from_slice(&4u32.to_be_bytes());
        epb.extend_from_slice(b"wxyz");
        ng.extend(block(true, 6, &epb));
        ng.extend(block(true, 0x0000_0BAD, &[1, 2, 3, 4]));
        ng.extend(shb(false));
        ng.extend(block(false, 1, &[1, 0, 0, 0, 0, 0, 0, 0]));
        let mut spb = 2u32.to_le_bytes().to_vec();
        spb.extend_from_slice(&[9, 9, 0, 0]);
        ng.extend(block(false, 3, &spb));
        let mut r = CaptureReader::new(&ng[..]).expect("shb");
        let (p, e) = all(&mut r);
        assert!(e.is_none(), "{e:?}");
        assert_eq!(p[0], (Duration::new(7, 123), 228, b"wxyz".to_vec()));
        assert_eq!((p[1].1, p[1].2.clone()), (1, vec![9, 9]));
        assert_eq!(r.skipped_blocks, 1);
        // A packet block naming an interface that was never described.
        let mut bad = shb(false);
        let mut epb = 3u32.to_le_bytes().to_vec();
        epb.extend_from_slice(&[0; 16]);
        bad.extend(block(false, 6, &epb));
        let (_, e) = all(&mut CaptureReader::new(&bad[..]).expect("shb"));
        assert!(e.expect("error").to_string().contains("interface 3 was not described"));
    }
}
