//! The replay source: packets of a capture through the real XDP program (BPF_PROG_TEST_RUN, one
//! run per packet), the detectors driven by the packets' own clock.
//!
//! Three threads, joined by bounded channels (memory stays flat for any capture length):
//! * reader: parses the capture files, gives every frame an Ethernet header, decodes what the
//!   reply tracker needs, applies `--since/--until`;
//! * kernel: runs the XDP program on every frame, drains the ring buffer after each run (a
//!   memory-mapped read, no syscall while it is empty), feeds the reply tracker, and every
//!   `agent.sweep_interval` of capture time reads the per-source state of the sources seen since
//!   the previous sweep;
//! * engine: the detection engine and the alert output.
//!
//! Clocks. The kernel stamps per-source state (`first_seen_ns`, `last_seen_ns`, the short
//! window) with its own monotonic clock, which during a replay has nothing to do with capture
//! time. So nothing here compares kernel times with packet times: the sweep reads the sources
//! the capture showed since the previous sweep (tracked here by address), the engine's deltas
//! come from the cumulative counters (a changed `first_seen_ns` still only means "entry
//! re-created"), and the kernel's short-window threshold events are switched off (the engine
//! evaluates every window, the shortest included, on capture time at each sweep).
//!
//! Outcomes. There is no socket table offline: the program is loaded with socket lookup off
//! and [`crate::outcome::ReplyTracker`] decides from the other direction of the capture. Its
//! verdicts are added to the counters the kernel would have set from its socket lookup
//! (`syn_open`, `syn_closed`, `failed`, `udp`, `udp_closed`) before the engine sees them.
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use scanwatch_common::{cfgflag, cnt, kind, stat, FpKey, FpValue, InboundEvent, SrcKey, SrcState, XdpConfig};

use crate::collector::{self, fingerprint_info, ip_to_key, key_to_ip};
use crate::config::Config;
use crate::detect::{HeldProbe, InboundEventKind, InboundObservation, SourceSnapshot};
use crate::first_contact::{FirstContactView, HeldReader, Listeners};
use crate::outcome::{ProbeKind, ReplyTracker, Resolved, Seen, TrackerConfig};
use crate::sketch::{distinct_ports, Hll};

/// Frames per batch handed from the reader to the kernel thread.
pub const BATCH: usize = 512;

/// One frame as the reader hands it on.
#[derive(Debug, Clone, Copy)]
pub struct FrameMeta {
    pub ts: Duration,
    /// Range of the Ethernet frame in the batch's byte buffer.
    pub start: u32,
    pub len: u32,
    /// Source address (IP source, ARP sender) — the key of the per-source state it may touch.
    pub src: Option<IpAddr>,
    pub seen: Option<Seen>,
}

/// A batch of frames (one allocation reused through the pipeline's bounded channel).
#[derive(Debug, Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub frames: Vec<FrameMeta>,
}

/// What the kernel thread sends the engine thread, in capture-time order.
pub enum ToEngine {
    Source(Duration, SourceSnapshot),
    Event(Duration, Option<SourceSnapshot>, InboundObservation),
    Held(Duration, Vec<HeldProbe>),
    Tick(Duration),
}

/// Counters of the kernel thread.
#[derive(Debug, Default, Clone)]
pub struct KernelStats {
    pub runs: u64,
    pub run_errors: u64,
    pub sweeps: u64,
    pub snapshots: u64,
    pub events: u64,
    pub kernel: Vec<(String, u64)>,
    pub tracker: crate::outcome::TrackerStats,
    pub live_sources: u64,
}

/// Per-source counters the kernel would have set from its socket lookup.
#[derive(Debug, Clone)]
struct Overlay {
    counts: [u64; cnt::N],
    /// Ports of probes only the lookup tells from normal traffic (UDP to closed ports, ACK /
    /// FIN-ACK outside a connection): without it the kernel does not count them.
    ports: Hll,
    sample: Vec<u16>,
}

impl Default for Overlay {
    fn default() -> Self {
        Overlay { counts: [0; cnt::N], ports: Hll::default(), sample: Vec::new() }
    }
}

impl Overlay {
    fn port(&mut self, p: u16) {
        self.ports.insert(u32::from(p));
        if self.sample.len() < scanwatch_common::SAMPLE_PORTS && !self.sample.contains(&p) {
            self.sample.push(p);
        }
    }

    /// Counters the kernel keeps no state for when its lookup is off.
    fn lookup_only(&self) -> bool {
        [cnt::UDP, cnt::ACK, cnt::MAIMON, cnt::UNSOLICITED_SYNACK, cnt::UNSOLICITED_RST].iter().any(|c| self.counts[*c] > 0)
    }
}

fn apply(o: &mut Overlay, r: &Resolved) {
    let c = &mut o.counts;
    match (r.kind, r.success()) {
        (ProbeKind::Syn, true) => c[cnt::SYN_OPEN] += 1,
        (ProbeKind::Syn, false) => {
            c[cnt::SYN_CLOSED] += 1;
            c[cnt::FAILED] += 1;
        }
        (ProbeKind::Stealth, _) if r.failure() => c[cnt::FAILED] += 1,
        (ProbeKind::Udp, _) if r.failure() => {
            c[cnt::UDP] += 1;
            c[cnt::UDP_CLOSED] += 1;
            c[cnt::FAILED] += 1;
            o.port(r.dport);
        }
        (ProbeKind::Ack | ProbeKind::Maimon, _) if r.orphan() => {
            c[if r.kind == ProbeKind::Ack { cnt::ACK } else { cnt::MAIMON }] += 1;
            o.port(r.dport);
        }
        _ => {}
    }
}

/// The kernel side of a replay.
pub struct KernelSide {
    _ebpf: aya::Ebpf,
    prog_fd: i32,
    ring: RingBuf<MapData>,
    sources: BpfHashMap<MapData, SrcKey, SrcState>,
    fps: BpfHashMap<MapData, FpKey, FpValue>,
    stats: PerCpuArray<MapData, [u64; stat::N as usize]>,
    known: Array<MapData, u64>,
    fc: FirstContactView,
    held: HeldReader,
    tracker: ReplyTracker,
    overlay: HashMap<IpAddr, Overlay>,
    max_overlay: usize,
    dirty: HashSet<IpAddr>,
    open_ports: HashSet<u16>,
    sweep_every: Duration,
    next_sweep: Option<Duration>,
    next_held: Duration,
    next_known: Duration,
    now: Duration,
    out: Vec<ToEngine>,
    resolved: Vec<Resolved>,
    pub st: KernelStats,
}

const HELD_EVERY: Duration = Duration::from_secs(5);
const KNOWN_EVERY: Duration = Duration::from_secs(600);

impl KernelSide {
    /// Load the object as the agent does, with the replay's differences: no socket lookup
    /// (outcomes come from the capture) and no kernel threshold events (kernel-clock windows).
    pub fn load(cfg: &Config, tracker: TrackerConfig) -> anyhow::Result<KernelSide> {
        let mut lopts = collector::load_options(cfg, false);
        lopts.xdp = XdpConfig {
            port_threshold: 0,
            host_threshold: 0,
            flags: lopts.xdp.flags & !cfgflag::LOOKUP_SOCKETS,
            ..lopts.xdp
        };
        let mut ebpf = crate::loader::load(&lopts)?;
        crate::loader::xdp_program(&mut ebpf)?;
        let take = |ebpf: &mut aya::Ebpf, name: &str| ebpf.take_map(name).ok_or_else(|| anyhow::anyhow!("map {name} missing"));
        let ring = RingBuf::try_from(take(&mut ebpf, scanwatch_common::MAP_EVENTS)?)?;
        let sources = BpfHashMap::try_from(take(&mut ebpf, scanwatch_common::MAP_SOURCES)?)?;
        let fps = BpfHashMap::try_from(take(&mut ebpf, scanwatch_common::MAP_FINGERPRINTS)?)?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, scanwatch_common::MAP_STATS)?)?;
        let known = Array::try_from(take(&mut ebpf, scanwatch_common::MAP_KNOWN)?)?;
        let fc = FirstContactView::new(take(&mut ebpf, scanwatch_common::MAP_FIRST_CONTACT)?)?;
        // The program stays owned by `ebpf` (kept alive in this struct); runs use its fd.
        let prog_fd = {
            use std::os::fd::{AsFd, AsRawFd};
            crate::loader::xdp_program(&mut ebpf)?.fd()?.as_fd().as_raw_fd()
        };
        Ok(KernelSide {
            _ebpf: ebpf,
            prog_fd,
            ring,
            sources,
            fps,
            stats,
            known,
            fc,
            held: HeldReader::default(),
            tracker: ReplyTracker::new(tracker),
            overlay: HashMap::new(),
            max_overlay: (cfg.xdp.max_sources as usize).max(1024) * 2,
            dirty: HashSet::new(),
            open_ports: HashSet::new(),
            sweep_every: cfg.agent.sweep_interval.max(Duration::from_millis(10)),
            next_sweep: None,
            next_held: Duration::ZERO,
            next_known: Duration::ZERO,
            now: Duration::ZERO,
            out: Vec::new(),
            resolved: Vec::new(),
            st: KernelStats::default(),
        })
    }

    /// Run one batch; returns the messages for the engine (in order).
    pub fn run_batch(&mut self, b: &Batch) -> Vec<ToEngine> {
        for f in &b.frames {
            // The engine's clock never runs backwards (captures are only roughly ordered).
            let ts = f.ts.max(self.now);
            match self.next_sweep {
                None => {
                    self.next_sweep = Some(ts + self.sweep_every);
                    self.next_held = ts + HELD_EVERY;
                    self.next_known = ts + KNOWN_EVERY;
                }
                Some(at) if ts >= at => {
                    self.sweep(ts);
                    self.next_sweep = Some(ts + self.sweep_every);
                }
                _ => {}
            }
            self.now = ts;
            let frame = &b.bytes[f.start as usize..(f.start + f.len) as usize];
            match test_run(self.prog_fd, frame) {
                Ok(_) => self.st.runs += 1,
                Err(e) => {
                    if self.st.run_errors == 0 {
                        log::warn!("BPF_PROG_TEST_RUN failed on a {}-byte frame: {e}", frame.len());
                    }
                    self.st.run_errors += 1;
                }
            }
            self.drain_ring(ts);
            if let Some(src) = f.src {
                self.dirty.insert(src);
            }
            if let Some(seen) = &f.seen {
                if let Some(u) = self.tracker.observe(ts, seen, &mut self.resolved) {
                    let o = self.overlay.entry(u.from).or_default();
                    o.counts[if u.synack { cnt::UNSOLICITED_SYNACK } else { cnt::UNSOLICITED_RST }] += 1;
                    self.dirty.insert(u.from);
                }
                self.take_resolved();
            }
        }
        std::mem::take(&mut self.out)
    }

    fn take_resolved(&mut self) {
        if self.resolved.is_empty() {
            return;
        }
        if self.overlay.len() > self.max_overlay {
            // Keep the outcome counters of sources the kernel still holds.
            let sources = &self.sources;
            self.overlay.retain(|ip, _| sources.get(&ip_to_key(*ip), 0).is_ok());
        }
        for r in self.resolved.drain(..) {
            if r.success() && r.proto == 6 {
                self.open_ports.insert(r.dport);
            }
            let before = self.overlay.get(&r.prober).map(|o| o.counts);
            let o = self.overlay.entry(r.prober).or_default();
            apply(o, &r);
            if before != Some(o.counts) {
                self.dirty.insert(r.prober);
            }
        }
    }

    fn snapshot(&self, ip: IpAddr) -> Option<SourceSnapshot> {
        let key = ip_to_key(ip);
        let kernel = self.sources.get(&key, 0).ok();
        let ov = self.overlay.get(&ip);
        let mut snap = match (&kernel, ov) {
            (Some(s), _) => collector::snapshot(&key, s, &self.fps),
            // UDP or ACK probing and unsolicited segments leave no kernel state without the
            // socket lookup: the counters kept here alone make the source's snapshot.
            (None, Some(o)) if o.lookup_only() => SourceSnapshot {
                ip,
                first_seen_ns: 1,
                last_seen_ns: 1,
                counts: [0; cnt::N],
                distinct_ports: 0.0,
                distinct_hosts: 1.0,
                sample_ports: Vec::new(),
                sample_hosts: Vec::new(),
                fingerprints: Vec::new(),
                blocked: false,
            },
            _ => return None,
        };
        if let Some(o) = ov {
            for (c, v) in snap.counts.iter_mut().zip(o.counts.iter()) {
                *c += v;
            }
            if !o.sample.is_empty() {
                // The kernel's port sketch cannot take these ports: the larger of the two
                // estimates (exact while the sample holds them all).
                let full = o.sample.len() >= scanwatch_common::SAMPLE_PORTS;
                let extra = distinct_ports(&[], o.sample.len() as u32).max(if full { o.ports.estimate() } else { 0.0 });
                snap.distinct_ports = snap.distinct_ports.max(extra);
                for p in &o.sample {
                    if snap.sample_ports.len() < scanwatch_common::SAMPLE_PORTS && !snap.sample_ports.contains(p) {
                        snap.sample_ports.push(*p);
                    }
                }
            }
        }
        Some(snap)
    }

    fn sweep(&mut self, now: Duration) {
        self.st.sweeps += 1;
        self.tracker.expire(now, &mut self.resolved);
        self.take_resolved();
        let dirty: Vec<IpAddr> = self.dirty.drain().collect();
        for ip in dirty {
            if let Some(s) = self.snapshot(ip) {
                self.st.snapshots += 1;
                self.out.push(ToEngine::Source(now, s));
            }
        }
        if now >= self.next_held {
            let open = &self.open_ports;
            let probes = self.held.read(&self.fc, || Listeners::from_ports(open.iter().copied()));
            if !probes.is_empty() {
                self.out.push(ToEngine::Held(now, probes));
            }
            self.next_held = now + HELD_EVERY;
        }
        if now >= self.next_known {
            if let Err(e) = collector::rebuild_known_filter(&self.sources, &mut self.known) {
                log::warn!("cannot rebuild the known-source filter: {e:#}");
            }
            self.next_known = now + KNOWN_EVERY;
        }
        self.out.push(ToEngine::Tick(now));
    }

    fn drain_ring(&mut self, now: Duration) {
        let mut events = Vec::new();
        while let Some(item) = self.ring.next() {
            let data: &[u8] = &item;
            if data.len() >= std::mem::size_of::<InboundEvent>() {
                // SAFETY: length checked; the kernel wrote an InboundEvent (POD, repr(C)).
                events.push(unsafe { std::ptr::read_unaligned::<InboundEvent>(data.as_ptr().cast()) });
            }
        }
        for e in events {
            self.st.events += 1;
            let k = match e.hdr.kind {
                kind::HONEYPORT => InboundEventKind::Honeyport { dport: e.dport, proto: e.proto },
                kind::THRESHOLD => InboundEventKind::Threshold {
                    ports: e.detail & scanwatch_common::thr::PORTS != 0,
                    hosts: e.detail & scanwatch_common::thr::HOSTS != 0,
                    win_ports: e.win_ports,
                    win_hosts: e.win_hosts,
                },
                kind::NEW_FINGERPRINT => InboundEventKind::NewFingerprint(fingerprint_info(&e.fp)),
                _ => continue,
            };
            let ip = key_to_ip(&e.src);
            let snap = if e.hdr.kind == kind::NEW_FINGERPRINT { None } else { self.snapshot(ip) };
            self.out.push(ToEngine::Event(now, snap, InboundObservation { ip, dst: key_to_ip(&e.dst), kind: k }));
        }
    }

    /// End of input: outstanding probes have no answer; one last sweep.
    pub fn finish(&mut self) -> Vec<ToEngine> {
        let end = self.now + self.sweep_every;
        self.tracker.expire(end, &mut self.resolved);
        self.tracker.finish(&mut self.resolved);
        self.take_resolved();
        self.next_held = Duration::ZERO;
        self.sweep(end);
        self.st.tracker = self.tracker.stats();
        let totals = collector::read_stats(&self.stats);
        self.st.kernel = stat::NAMES
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.is_empty())
            .map(|(i, n)| ((*n).to_string(), totals[i]))
            .collect();
        self.st.live_sources = self.sources.keys().filter(|k| k.is_ok()).count() as u64;
        std::mem::take(&mut self.out)
    }
}

/// `union bpf_attr` as used by BPF_PROG_TEST_RUN (include/uapi/linux/bpf.h, `test`).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<TestRunAttr>() == 80);
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// One run of the program on `frame` (the XDP action on success). The raw syscall: aya's
/// `TestRun` does the same with a little more bookkeeping per call, and this is the hot loop.
pub fn test_run(prog_fd: i32, frame: &[u8]) -> std::io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    // SAFETY: bpf(2) with a valid attr of the size passed; the kernel only reads `frame`
    // (data_out is null, so nothing is written back into our memory but `attr`).
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestRunAttr, std::mem::size_of::<TestRunAttr>() as u32)
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr.retval)
}

/// Channel pair sizes: a few batches in flight bound the memory.
pub fn channel<T>() -> (SyncSender<T>, Receiver<T>) {
    sync_channel(4)
}
