//! Evidence: after an inbound alert, the source's packets (both directions, the first
//! `evidence.snaplen` bytes of each) go to a pcap file of their own for `evidence.duration`; the
//! alert names the file (`"evidence"`). Bounded three ways: bytes per file
//! (`max_file_bytes`), files in the directory (`max_files`, the oldest removed) and captures at
//! once (`max_active`, further alerts counted as skipped).
//!
//! Capture is in userspace: one `AF_PACKET`/`SOCK_DGRAM` socket per capture, bound to every
//! interface, with a classic BPF filter on the source address attached before the socket is
//! bound (so no other packet is ever queued to it). Why not from XDP through the ring buffer: the
//! XDP program would need a per-packet lookup of a capture set on its hot path for every packet
//! of every source, and copying packet bytes into the shared event ring could starve the
//! detection events; the socket filter costs nothing while no capture runs and runs only on the
//! capture's socket. The price: packets the XDP program drops (a blocked source) are not seen,
//! and only packets after the alert are captured. Files are LINKTYPE_RAW (IP packets without a
//! link header), so captures from any interface type read the same way.
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::alert::Alert;
use crate::config::EvidenceConfig;
use crate::control::EvidenceStatus;
use crate::vocab::{canonical_ip, Direction};

/// pcap link type of raw IPv4/IPv6 packets.
pub const LINKTYPE_RAW: u32 = 101;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const LD_W_ABS: u16 = 0x20;
const LD_B_ABS: u16 = 0x30;
const ALU_AND_K: u16 = 0x54;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;

/// A filter accepting IP packets (at offset 0: no link header) whose source or destination is
/// `ip`; accepted packets are queued whole (the reader keeps `snaplen` bytes and the length).
pub fn host_filter(ip: IpAddr) -> Vec<Insn> {
    let ins = |code, jt, jf, k| Insn { code, jt, jf, k };
    let (version, words, src_off, dst_off): (u32, Vec<u32>, u32, u32) = match canonical_ip(ip) {
        IpAddr::V4(a) => (0x40, vec![u32::from(a)], 12, 16),
        IpAddr::V6(a) => {
            let o = a.octets();
            (0x60, (0..4).map(|i| u32::from_be_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]])).collect(), 8, 24)
        }
    };
    let n = words.len();
    // Layout: [version check: 3] [src compare: 2n] [dst compare: 2n] [accept] [reject].
    let total = 3 + 4 * n + 2;
    let accept = total - 2;
    let reject = total - 1;
    let mut p = vec![ins(LD_B_ABS, 0, 0, 0), ins(ALU_AND_K, 0, 0, 0xf0)];
    // jf to reject: relative offset from the next instruction.
    p.push(ins(JEQ_K, 0, (reject - 3) as u8, version));
    for (block, off) in [(0usize, src_off), (1, dst_off)] {
        for (i, w) in words.iter().enumerate() {
            let at = 3 + block * 2 * n + 2 * i;
            p.push(ins(LD_W_ABS, 0, 0, off + 4 * i as u32));
            let next = at + 2;
            let last = i == n - 1;
            // Mismatch: the next block (dst) or reject; match on the last word: accept.
            let miss = if block == 0 { 3 + 2 * n } else { reject };
            let hit = if last { accept } else { next };
            p.push(ins(JEQ_K, (hit - next) as u8, (miss - next) as u8, *w));
        }
    }
    p.push(ins(RET_K, 0, 0, 0x0004_0000));
    p.push(ins(RET_K, 0, 0, 0));
    p
}

/// Run a filter over a packet (the kernel's semantics for the instructions [`host_filter`] uses);
/// tests check the filter with it before the kernel ever sees it.
pub fn run_filter(prog: &[Insn], pkt: &[u8]) -> u32 {
    let mut a: u32 = 0;
    let mut pc = 0usize;
    while let Some(i) = prog.get(pc) {
        pc += 1;
        match i.code {
            LD_B_ABS => match pkt.get(i.k as usize) {
                Some(b) => a = u32::from(*b),
                None => return 0,
            },
            LD_W_ABS => match pkt.get(i.k as usize..i.k as usize + 4) {
                Some(w) => a = u32::from_be_bytes([w[0], w[1], w[2], w[3]]),
                None => return 0,
            },
            ALU_AND_K => a &= i.k,
            JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            RET_K => return i.k,
            _ => return 0,
        }
    }
    0
}

/// A pcap (microsecond) file being written.
pub struct PcapWriter<W: Write> {
    out: W,
    pub bytes: u64,
    pub packets: u64,
}

impl<W: Write> PcapWriter<W> {
    pub fn new(mut out: W, snaplen: u32, linktype: u32) -> std::io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&snaplen.to_le_bytes());
        h.extend_from_slice(&linktype.to_le_bytes());
        out.write_all(&h)?;
        Ok(PcapWriter { out, bytes: 24, packets: 0 })
    }

    pub fn packet(&mut self, ts: SystemTime, data: &[u8], orig_len: u32) -> std::io::Result<()> {
        let d = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&(d.as_secs() as u32).to_le_bytes());
        h[4..8].copy_from_slice(&d.subsec_micros().to_le_bytes());
        h[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[12..16].copy_from_slice(&orig_len.max(data.len() as u32).to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(data)?;
        self.bytes += 16 + data.len() as u64;
        self.packets += 1;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// A packet socket receiving only `ip`'s packets.
fn open_socket(ip: IpAddr) -> std::io::Result<OwnedFd> {
    let proto_all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); protocol 0 = nothing is queued before the filter is attached.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let prog: Vec<libc::sock_filter> =
        host_filter(ip).iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect();
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr().cast_mut() };
    // SAFETY: fprog points at `prog`, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_ll is a valid value; ifindex 0 = every interface.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto_all;
    // SAFETY: sll is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

struct Active {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// The evidence stage: starts, bounds and reaps captures.
pub struct EvidenceCapture {
    cfg: EvidenceConfig,
    dir: PathBuf,
    active: HashMap<IpAddr, Active>,
    counters: Arc<Counters>,
    started: u64,
    skipped: u64,
    files_removed: u64,
}

impl EvidenceCapture {
    /// `None` when `evidence.dir` is unset. The directory is created (mode 0750).
    pub fn new(cfg: &EvidenceConfig) -> std::io::Result<Option<EvidenceCapture>> {
        let Some(dir) = cfg.dir.clone() else { return Ok(None) };
        std::fs::create_dir_all(&dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750))?;
        Ok(Some(EvidenceCapture {
            cfg: cfg.clone(),
            dir,
            active: HashMap::new(),
            counters: Arc::new(Counters::default()),
            started: 0,
            skipped: 0,
            files_removed: 0,
        }))
    }

    /// Apply a reloaded `[evidence]` (running captures keep their bounds).
    pub fn reconfigure(&mut self, cfg: &EvidenceConfig) {
        self.cfg = cfg.clone();
        if let Some(d) = &cfg.dir {
            self.dir = d.clone();
        }
    }

    pub fn status(&mut self) -> EvidenceStatus {
        self.reap();
        EvidenceStatus {
            active: self.active.len() as u64,
            started: self.started,
            skipped: self.skipped,
            packets: self.counters.packets.load(Ordering::Relaxed),
            bytes: self.counters.bytes.load(Ordering::Relaxed),
            files_removed: self.files_removed,
            errors: self.counters.errors.load(Ordering::Relaxed),
        }
    }

    fn reap(&mut self) {
        let done: Vec<IpAddr> = self.active.iter().filter(|(_, a)| a.handle.is_finished()).map(|(ip, _)| *ip).collect();
        for ip in done {
            if let Some(a) = self.active.remove(&ip) {
                let _ = a.handle.join();
                log::info!("evidence capture of {ip} done: {}", a.path.display());
            }
        }
    }

    /// Start (or join) the capture of an inbound alert's source and name its file in the alert.
    pub fn on_alert(&mut self, a: &mut Alert) {
        if a.direction != Direction::Inbound {
            return;
        }
        let Some(ip) = a.source.ip.map(canonical_ip) else { return };
        self.reap();
        if let Some(act) = self.active.get(&ip) {
            a.annotations.evidence = Some(act.path.display().to_string());
            return;
        }
        if self.active.len() >= self.cfg.max_active as usize {
            self.skipped += 1;
            if self.skipped.is_power_of_two() {
                eprintln!("scanwatch: WARNING evidence: {} captures running (evidence.max_active); {ip} not captured ({} skipped so far)", self.active.len(), self.skipped);
            }
            return;
        }
        match self.start(ip, a) {
            Ok(path) => a.annotations.evidence = Some(path.display().to_string()),
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("scanwatch: WARNING evidence capture of {ip} not started: {e}");
            }
        }
    }

    fn start(&mut self, ip: IpAddr, a: &Alert) -> std::io::Result<PathBuf> {
        self.prune()?;
        let stamp: String = a.time.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        let name = format!("{stamp}-{}-{}.pcap", a.kind.as_str(), ip.to_string().replace(':', "_"));
        let path = self.dir.join(name);
        let fd = open_socket(ip)?;
        let file = File::create(&path)?;
        let snaplen = self.cfg.snaplen;
        let w = PcapWriter::new(BufWriter::new(file), snaplen, LINKTYPE_RAW)?;
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + self.cfg.duration;
        let (max, counters, st) = (self.cfg.max_file_bytes, self.counters.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name(format!("evidence-{ip}"))
            .spawn(move || capture_loop(&fd, w, snaplen, deadline, max, &st, &counters))?;
        self.started += 1;
        eprintln!("scanwatch: evidence: capturing {ip} for {:?} into {}", self.cfg.duration, path.display());
        self.active.insert(ip, Active { path: path.clone(), stop, handle });
        Ok(path)
    }

    /// Remove the oldest pcap files until a new one fits under `max_files` (running captures'
    /// files are kept).
    fn prune(&mut self) -> std::io::Result<()> {
        let busy: Vec<&Path> = self.active.values().map(|a| a.path.as_path()).collect();
        let mut files: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pcap") && !busy.contains(&p.as_path()))
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        files.sort();
        let limit = self.cfg.max_files as usize;
        let total = files.len() + busy.len();
        if total >= limit {
            for (_, p) in files.iter().take(total + 1 - limit) {
                if std::fs::remove_file(p).is_ok() {
                    self.files_removed += 1;
                }
            }
        }
        Ok(())
    }

    /// Stop every capture and wait for the files to be complete.
    pub fn stop_all(&mut self) {
        for a in self.active.values() {
            a.stop.store(true, Ordering::Relaxed);
        }
        for (_, a) in self.active.drain() {
            let _ = a.handle.join();
        }
    }
}

impl Drop for EvidenceCapture {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn capture_loop<W: Write>(fd: &OwnedFd, mut w: PcapWriter<W>, snaplen: u32, deadline: Instant, max_bytes: u64, stop: &AtomicBool, c: &Counters) {
    let mut buf = vec![0u8; snaplen as usize];
    let mut last_flush = Instant::now();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 200) };
        if n <= 0 {
            if last_flush.elapsed() > Duration::from_secs(1) {
                let _ = w.out.flush();
                last_flush = Instant::now();
            }
            continue;
        }
        loop {
            // SAFETY: buf is valid for buf.len() bytes; MSG_TRUNC returns the packet's real length.
            let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC | libc::MSG_DONTWAIT) };
            if r < 0 {
                break;
            }
            let orig = r as usize;
            let cap = orig.min(buf.len());
            if w.bytes + 16 + cap as u64 > max_bytes {
                let _ = w.out.flush();
                return;
            }
            if w.packet(SystemTime::now(), &buf[..cap], orig as u32).is_err() {
                c.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            c.packets.fetch_add(1, Ordering::Relaxed);
            c.bytes.fetch_add(16 + cap as u64, Ordering::Relaxed);
        }
    }
    let _ = w.out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0u8; 20]);
        p
    }

    fn v6(src: &str, dst: &str) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        p.extend_from_slice(&src.parse::<std::net::Ipv6Addr>().expect("v6").octets());
        p.extend_from_slice(&dst.parse::<std::net::Ipv6Addr>().expect("v6").octets());
        p.extend_from_slice(&[0u8; 20]);
        p
    }

    #[test]
    fn host_filter_matches_either_direction_and_nothing_else() {
        let f = host_filter("10.1.2.3".parse().expect("ip"));
        assert!(run_filter(&f, &v4([10, 1, 2, 3], [10, 9, 9, 9])) > 0);
        assert!(run_filter(&f, &v4([10, 9, 9, 9], [10, 1, 2, 3])) > 0);
        assert_eq!(run_filter(&f, &v4([10, 1, 2, 4], [10, 9, 9, 9])), 0);
        assert_eq!(run_filter(&f, &v6("::a01:203", "fd00::1")), 0, "an IPv6 packet is not the IPv4 host");
        assert_eq!(run_filter(&f, &[0x45, 0]), 0, "short packet");
        // A mapped address filters as its IPv4 form.
        let m = host_filter("::ffff:10.1.2.3".parse().expect("ip"));
        assert_eq!(m, f);
        let f6 = host_filter("fd77:1::5".parse().expect("ip"));
        assert!(run_filter(&f6, &v6("fd77:1::5", "fd77:1::10")) > 0);
        assert!(run_filter(&f6, &v6("fd77:1::10", "fd77:1::5")) > 0);
        assert_eq!(run_filter(&f6, &v6("fd77:1::6", "fd77:1::10")), 0);
        assert_eq!(run_filter(&f6, &v6("fd77:2::5", "fd77:1::10")), 0, "differs in the first word only");
        assert_eq!(run_filter(&f6, &v4([10, 1, 2, 3], [10, 9, 9, 9])), 0);
    }

    #[test]
    fn pcap_header_and_records() {
        let mut w = PcapWriter::new(Vec::new(), 96, LINKTYPE_RAW).expect("header");
        w.packet(UNIX_EPOCH + Duration::from_micros(1_500_000), &[1, 2, 3], 60).expect("packet");
        let b = w.into_inner();
        assert_eq!(&b[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u32::from_le_bytes([b[16], b[17], b[18], b[19]]), 96);
        assert_eq!(u32::from_le_bytes([b[20], b[21], b[22], b[23]]), 101);
        assert_eq!(u32::from_le_bytes([b[24], b[25], b[26], b[27]]), 1);
        assert_eq!(u32::from_le_bytes([b[28], b[29], b[30], b[31]]), 500_000);
        assert_eq!(u32::from_le_bytes([b[32], b[33], b[34], b[35]]), 3);
        assert_eq!(u32::from_le_bytes([b[36], b[37], b[38], b[39]]), 60);
        assert_eq!(b.len(), 24 + 16 + 3);
    }
}
