//! The replay source: packets of a capture through the real XDP program (BPF_PROG_TEST_RUN, one
//! run per packet), the detectors driven by the packets' own clock.
//!
//! Three threads, joined by bounded channels (memory stays flat for any capture length):
//! * reader: parses the capture files, gives every frame an Ethernet header, decodes what the
//!   reply tracker needs, applies `--since/--until`;
//! * kernel ([`KernelSide`]): runs the XDP program on every frame, drains the ring buffer after
//!   each run (a memory-mapped read, no syscall while it is empty), and every
//!   `agent.sweep_interval` of capture time reads the per-source state of the sources the
//!   capture showed since the previous sweep, and every 5 s the first-contact table;
//! * engine ([`EngineSide`]): the reply tracker (in packet order, interleaved with the sweeps
//!   exactly where they happened), the outcome counters it adds to the kernel's, the detection
//!   engine and the alert output.
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
//! (`syn_open`, `syn_closed`, `failed`, `udp`, `udp_closed`, `ack`, `maimon`,
//! `unsolicited_synack`, `unsolicited_rst`) before the engine sees them.
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use scanwatch_common::{cfgflag, stat, FpKey, FpValue, XdpConfig};

use crate::config::Config;
use crate::detect::{HeldProbe, InboundObservation, Observation, SourceSnapshot, Stamped};
use crate::outcome::overlay::ReplyOverlay;
use crate::outcome::{Resolved, Seen, TrackerConfig, TrackerStats};
use crate::source::live::first_contact::{FirstContactView, HeldReader, Listeners};
use crate::source::live::{self as live, filters, maps};
use crate::vocab::ip_to_key;

/// Seed of the per-source table's set index in a replay (live agents draw theirs at random).
const REPLAY_SOURCE_SEED: u32 = 0x5ca7_0001;

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

/// A batch of frames.
#[derive(Debug, Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub frames: Vec<FrameMeta>,
}

/// What the kernel thread sends the engine thread, in capture-time order.
pub enum ToEngine {
    /// Packets for the reply tracker (time, what it needs).
    Seen(Vec<(Duration, Seen)>),
    /// A sweep at `now`: the kernel state of the sources seen since the previous one (None: the
    /// source has no kernel entry), the one-probe sources read from the first-contact table.
    Sweep { now: Duration, sources: Vec<(IpAddr, Option<SourceSnapshot>)>, held: Option<Vec<HeldProbe>> },
    /// A ring-buffer event with its source's kernel state (honeyport, threshold); boxed: far
    /// rarer than the other messages.
    Event(Duration, Box<(Option<SourceSnapshot>, InboundObservation)>),
}

/// TCP ports the capture showed open (SYN-ACK), shared by the engine thread (writer) and the
/// kernel thread (reader: outcomes of one-probe sources held in the first-contact table).
pub struct OpenPorts([AtomicU64; 1024]);

impl Default for OpenPorts {
    fn default() -> Self {
        OpenPorts(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl OpenPorts {
    fn set(&self, p: u16) {
        self.0[usize::from(p >> 6)].fetch_or(1 << (p & 63), Ordering::Relaxed);
    }
    fn listeners(&self) -> Listeners {
        Listeners::from_ports((0..=u16::MAX).filter(|p| self.0[usize::from(p >> 6)].load(Ordering::Relaxed) & (1 << (p & 63)) != 0))
    }
}

/// Counters of the kernel thread.
#[derive(Debug, Default, Clone)]
pub struct KernelStats {
    pub runs: u64,
    pub run_errors: u64,
    /// Wall time spent inside BPF_PROG_TEST_RUN (the floor of the replay's cost; sampled).
    pub xdp_time: Duration,
    pub sweeps: u64,
    pub snapshots: u64,
    pub events: u64,
    pub kernel: Vec<(String, u64)>,
    pub live_sources: u64,
}

const HELD_EVERY: Duration = Duration::from_secs(5);
const KNOWN_EVERY: Duration = Duration::from_secs(600);

/// The kernel side of a replay.
pub struct KernelSide {
    _ebpf: aya::Ebpf,
    prog_fd: i32,
    ring: RingBuf<MapData>,
    sources: maps::Sources,
    fps: BpfHashMap<MapData, FpKey, FpValue>,
    stats: PerCpuArray<MapData, [u64; stat::N as usize]>,
    known: Array<MapData, u64>,
    fc: FirstContactView,
    held: HeldReader,
    dirty: HashSet<IpAddr>,
    pub open_ports: Arc<OpenPorts>,
    sweep_every: Duration,
    next_sweep: Option<Duration>,
    next_held: Duration,
    next_known: Duration,
    now: Duration,
    out: Vec<ToEngine>,
    seen: Vec<(Duration, Seen)>,
    decode_errors: live::records::DecodeErrors,
    pub st: KernelStats,
}

impl KernelSide {
    /// Load the object as the agent does, with the replay's differences: no socket lookup
    /// (outcomes come from the capture) and no kernel threshold events (kernel-clock windows).
    pub fn load(cfg: &Config) -> anyhow::Result<KernelSide> {
        let mut lopts = live::load_options(cfg, false);
        lopts.xdp = XdpConfig {
            port_threshold: 0,
            host_threshold: 0,
            flags: lopts.xdp.flags & !cfgflag::LOOKUP_SOCKETS,
            ..lopts.xdp
        };
        // A fixed set-index seed: the same capture gives the same evictions, run after run.
        lopts.source_seed = REPLAY_SOURCE_SEED;
        let mut ebpf = crate::loader::load(&lopts)?;
        crate::loader::xdp_program(&mut ebpf)?;
        let take = |ebpf: &mut aya::Ebpf, name: &str| ebpf.take_map(name).ok_or_else(|| anyhow::anyhow!("map {name} missing"));
        let ring = RingBuf::try_from(take(&mut ebpf, scanwatch_common::MAP_EVENTS)?)?;
        let sources = maps::take_sources(&mut ebpf, &lopts)?;
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
            dirty: HashSet::new(),
            open_ports: Arc::new(OpenPorts::default()),
            sweep_every: cfg.agent.sweep_interval.max(Duration::from_millis(10)),
            next_sweep: None,
            next_held: Duration::ZERO,
            next_known: Duration::ZERO,
            now: Duration::ZERO,
            out: Vec::new(),
            seen: Vec::new(),
            decode_errors: live::records::DecodeErrors::default(),
            st: KernelStats::default(),
        })
    }

    /// Hand the tracker's pending packets on before a message that must follow them.
    fn flush_seen(&mut self) {
        if !self.seen.is_empty() {
            self.out.push(ToEngine::Seen(std::mem::take(&mut self.seen)));
        }
    }

    /// Run one batch; returns the messages for the engine (in order).
    pub fn run_batch(&mut self, b: &Batch) -> Vec<ToEngine> {
        self.seen.reserve(b.frames.len());
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
            // The syscall's cost is sampled (1 run in 16, scaled): reading the clock around
            // every run would cost a few percent of the replay itself.
            let r = if self.st.runs.is_multiple_of(16) {
                let t = std::time::Instant::now();
                let r = test_run(self.prog_fd, frame);
                self.st.xdp_time += t.elapsed() * 16;
                r
            } else {
                test_run(self.prog_fd, frame)
            };
            match r {
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
            if let Some(seen) = f.seen {
                self.seen.push((ts, seen));
            }
        }
        self.flush_seen();
        std::mem::take(&mut self.out)
    }

    fn sweep(&mut self, now: Duration) {
        self.flush_seen();
        self.st.sweeps += 1;
        let dirty: Vec<IpAddr> = self.dirty.drain().collect();
        let mut sources = Vec::with_capacity(dirty.len());
        for ip in dirty {
            let key = ip_to_key(ip);
            let snap = self.sources.get(&key).map(|s| live::sweep::snapshot(&key, &s, &self.fps));
            self.st.snapshots += u64::from(snap.is_some());
            sources.push((ip, snap));
        }
        let mut held = None;
        if now >= self.next_held {
            let open = &self.open_ports;
            let probes = self.held.read(&self.fc, || open.listeners());
            if !probes.is_empty() {
                held = Some(probes);
            }
            self.next_held = now + HELD_EVERY;
        }
        if now >= self.next_known {
            if let Err(e) = filters::rebuild_known_filter(&self.sources, &mut self.known) {
                log::warn!("cannot rebuild the known-source filter: {e:#}");
            }
            self.next_known = now + KNOWN_EVERY;
        }
        self.out.push(ToEngine::Sweep { now, sources, held });
    }

    fn drain_ring(&mut self, now: Duration) {
        let mut decoded = Vec::new();
        let (sources, fps) = (&self.sources, &self.fps);
        while let Some(item) = self.ring.next() {
            // The live source's one dispatch table; a threshold / honeyport event comes with
            // its source's kernel state first.
            live::records::decode(&item, now, |k| live::sweep::lookup(sources, fps, k), &mut self.decode_errors, &mut decoded);
        }
        if decoded.is_empty() {
            return;
        }
        self.flush_seen();
        let mut snap = None;
        for s in decoded {
            match s.obs {
                Observation::Source(x) => snap = Some(x),
                Observation::Inbound(ev) => {
                    self.st.events += 1;
                    self.out.push(ToEngine::Event(now, Box::new((snap.take(), ev))));
                }
                _ => {}
            }
        }
    }

    /// End of input: one last sweep a sweep interval after the last packet.
    pub fn finish(&mut self) -> Vec<ToEngine> {
        let end = self.now + self.sweep_every;
        self.next_held = Duration::ZERO;
        self.sweep(end);
        let totals = maps::read_stats(&self.stats);
        self.st.kernel = stat::NAMES
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.is_empty())
            .map(|(i, n)| ((*n).to_string(), totals[i]))
            .collect();
        self.st.live_sources = self.sources.live() as u64;
        std::mem::take(&mut self.out)
    }
}

/// The engine thread's side of the source: the reply tracker and the outcome counters it adds
/// to the kernel's ([`ReplyOverlay`], shared with the live agent's gateway mode), turning the
/// kernel thread's messages into the pipeline's stamped observations.
pub struct EngineSide {
    replies: ReplyOverlay,
    /// The last kernel snapshot of each source with kernel state: a source whose outcomes
    /// change while it sends nothing keeps these counters (they cannot have changed).
    kernel: HashMap<IpAddr, SourceSnapshot>,
    max_entries: usize,
    open_ports: Arc<OpenPorts>,
    last: Duration,
}

impl EngineSide {
    pub fn new(cfg: &Config, tracker: TrackerConfig, open_ports: Arc<OpenPorts>) -> EngineSide {
        let max_entries = (cfg.xdp.max_sources as usize).max(1024) * 2;
        EngineSide {
            replies: ReplyOverlay::new(tracker, max_entries),
            kernel: HashMap::new(),
            max_entries,
            open_ports,
            last: Duration::ZERO,
        }
    }

    pub fn tracker_stats(&self) -> TrackerStats {
        self.replies.tracker_stats()
    }

    /// What a resolved probe tells the kernel thread: a TCP port the capture showed open.
    fn on_resolved(open_ports: &OpenPorts) -> impl FnMut(&Resolved) + '_ {
        move |r: &Resolved| {
            if r.success() && r.proto == 6 {
                open_ports.set(r.dport);
            }
        }
    }

    fn feed(&mut self, now: Duration, ip: IpAddr, out: &mut Vec<Stamped>) {
        if let Some(s) = self.replies.merge(ip, self.kernel.get(&ip)) {
            out.push(Stamped::new(now, Observation::Source(s)));
        }
    }

    fn bound(&mut self) {
        if self.kernel.len() > self.max_entries {
            // Least useful first: sources with no outcome counters.
            let replies = &self.replies;
            self.kernel.retain(|ip, _| replies.get(ip).is_some());
            if self.kernel.len() > self.max_entries {
                self.kernel.clear();
            }
        }
        let kernel = &self.kernel;
        self.replies.bound(|ip| kernel.contains_key(ip));
    }

    /// One message from the kernel thread; the observations it makes go to `out`.
    pub fn handle(&mut self, m: ToEngine, out: &mut Vec<Stamped>) {
        match m {
            ToEngine::Seen(items) => {
                let mut on = Self::on_resolved(&self.open_ports);
                for (ts, seen) in items {
                    self.last = ts;
                    self.replies.observe(ts, &seen, &mut on);
                }
            }
            ToEngine::Event(now, ev) => {
                let (snap, ev) = *ev;
                if let Some(s) = snap {
                    self.kernel.insert(ev.ip, s);
                    self.feed(now, ev.ip, out);
                }
                out.push(Stamped::new(now, Observation::Inbound(ev)));
            }
            ToEngine::Sweep { now, sources, held } => {
                self.replies.expire(now, &mut Self::on_resolved(&self.open_ports));
                for (ip, snap) in sources {
                    match snap {
                        Some(s) => {
                            self.kernel.insert(ip, s);
                        }
                        None => {
                            self.kernel.remove(&ip);
                        }
                    }
                    self.replies.mark_dirty(ip);
                }
                for ip in self.replies.take_dirty() {
                    self.feed(now, ip, out);
                }
                if let Some(h) = held {
                    out.push(Stamped::new(now, Observation::Held(h)));
                }
                out.push(Stamped::new(now, Observation::Tick));
                self.bound();
            }
        }
    }

    /// End of input: probes still waiting have no answer; their counters are fed at `now`.
    pub fn finish(&mut self, now: Duration, out: &mut Vec<Stamped>) {
        self.replies.finish(&mut Self::on_resolved(&self.open_ports));
        for ip in self.replies.take_dirty() {
            self.feed(now, ip, out);
        }
        out.push(Stamped::new(now, Observation::Tick));
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
