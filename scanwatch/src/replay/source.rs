//! The replay source: packets of a capture through the real XDP program (BPF_PROG_TEST_RUN, many
//! frames per run), the detectors driven by the packets' own clock.
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
//! Batches. One BPF_PROG_TEST_RUN costs ≈ 1.4 µs of kernel entry, allocation and copying
//! before any program runs, several times the detector's own cost, so consecutive frames go to
//! the kernel together: [`pack`] writes a header (count, lengths) and the frames in reverse
//! order into one buffer of at most `REPLAY_MAX_BYTES` (3,520: what BPF_PROG_TEST_RUN keeps in
//! the linear part of a 4 KiB page) and `REPLAY_MAX_FRAMES` (32, the kernel's tail-call limit)
//! frames, and the batch programs (`scanwatch_replay`, `scanwatch_replay_step`;
//! scanwatch-ebpf/src/xdp/replay.rs) run the live program's body on each frame with
//! `[data, data_end)` cut to exactly that frame. What stays as with one run per frame, by
//! construction:
//! * sweeps: a batch never spans a sweep boundary (it ends before the first frame at or past the
//!   next sweep time), so the sweep is taken at the same capture time, between the same frames;
//! * event times: the program stops after a frame that wrote to the event ring and returns how
//!   many frames it ran; the events are drained then and stamped with that frame's capture time
//!   (not the batch's last), and the rest of the batch is resubmitted. No capture-time span
//!   limit on a batch is needed for that;
//! * counting: `runs` counts frames, not calls (`calls` counts calls); `xdp_time` is the sampled
//!   time of all calls;
//! * frames that fit no batch (bigger than `REPLAY_MAX_BYTES` less the header: GRO / jumbo
//!   frames) run alone through the live program `scanwatch_xdp`, loaded when the first one
//!   comes (the load is not counted in the replay's rate).
//!
//! `SCANWATCH_REPLAY_ONE_FRAME_PER_RUN=1` turns batches off (one run of `scanwatch_xdp` per
//! frame, the reference the batch path is tested against: tests/tests/replay.rs
//! `batched_replay_equals_one_frame_per_run`, tests/tests/xdp_prog_test_run.rs
//! `batched_runs_equal_one_run_per_frame`). A kernel that refuses the batch programs gets the
//! same, with a warning.
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
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use scanwatch_common::{
    cfgflag, stat, FpKey, FpValue, XdpConfig, REPLAY_HDR_LEN, REPLAY_MAX_BYTES, REPLAY_MAX_FRAMES, REPLAY_RET_DONE,
};

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
    /// Frames the program ran on (a batch run counts each of its frames).
    pub runs: u64,
    /// Frames BPF_PROG_TEST_RUN refused.
    pub run_errors: u64,
    /// BPF_PROG_TEST_RUN calls (batches and single frames).
    pub calls: u64,
    /// Time spent loading the live program mid-replay (the first frame too big for a batch):
    /// program loading is not part of the replay's rate.
    pub load_time: Duration,
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
    ebpf: aya::Ebpf,
    /// The live program (`scanwatch_xdp`): every frame with `SCANWATCH_REPLAY_ONE_FRAME_PER_RUN=1`
    /// or without the batch programs, else only frames too big for a batch; loaded when first
    /// needed (verifying it costs about as much as a million-frame replay's batches).
    prog_fd: Option<i32>,
    /// The batch entry point (`scanwatch_replay`); None: one frame per run.
    batch_fd: Option<i32>,
    /// The batch buffer (header + frames in reverse order), reused.
    buf: Vec<u8>,
    /// Whether the batch program refused a batch already (logged once).
    batch_refused: bool,
    ring: RingBuf<MapData>,
    sources: maps::Sources,
    fps: BpfHashMap<MapData, FpKey, FpValue>,
    stats: PerCpuArray<MapData, [u64; stat::N as usize]>,
    known: Array<MapData, u64>,
    fc: FirstContactView,
    held: HeldReader,
    dirty: HashSet<IpAddr>,
    /// The way of its set each source held when last read (`SourceTable::get_at`: one slot
    /// read instead of four), forgotten when it outgrows four times the table.
    ways: HashMap<scanwatch_common::SrcKey, u8>,
    ways_cap: usize,
    slot_buf: Vec<scanwatch_common::SrcEntry>,
    pub open_ports: Arc<OpenPorts>,
    sweep_every: Duration,
    next_sweep: Option<Duration>,
    next_held: Duration,
    next_known: Duration,
    now: Duration,
    out: Vec<ToEngine>,
    seen: Vec<(Duration, Seen)>,
    decode_errors: live::records::DecodeErrors,
    decoded: Vec<Stamped>,
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
            // No new-fingerprint event budget: it sheds by the kernel's wall clock (how fast
            // this machine replays), so two replays of one capture would report different
            // events; and a replay cannot overflow the ring it protects (every frame that
            // raised an event ends its run and the ring is drained before the next).
            fp_event_budget: 0,
            ..lopts.xdp
        };
        // A fixed set-index seed: the same capture gives the same evictions, run after run.
        lopts.source_seed = REPLAY_SOURCE_SEED;
        let mut ebpf = crate::loader::load(&lopts)?;
        let take = |ebpf: &mut aya::Ebpf, name: &str| ebpf.take_map(name).ok_or_else(|| anyhow::anyhow!("map {name} missing"));
        let ring = RingBuf::try_from(take(&mut ebpf, scanwatch_common::MAP_EVENTS)?)?;
        let sources = maps::take_sources(&mut ebpf, &lopts)?;
        let fps = BpfHashMap::try_from(take(&mut ebpf, scanwatch_common::MAP_FINGERPRINTS)?)?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, scanwatch_common::MAP_STATS)?)?;
        let known = Array::try_from(take(&mut ebpf, scanwatch_common::MAP_KNOWN)?)?;
        let fc = FirstContactView::new(take(&mut ebpf, scanwatch_common::MAP_FIRST_CONTACT)?)?;
        let batch_fd = if one_frame_per_run() { None } else { load_batch_program(&mut ebpf) };
        // Without the batch programs every frame runs the live program: load it now, so a
        // program the verifier refuses is an error before any packet.
        let prog_fd = if batch_fd.is_none() { Some(live_program_fd(&mut ebpf)?) } else { None };
        Ok(KernelSide {
            ebpf,
            prog_fd,
            batch_fd,
            buf: Vec::with_capacity(REPLAY_MAX_BYTES),
            batch_refused: false,
            ring,
            sources,
            fps,
            stats,
            known,
            fc,
            held: HeldReader::default(),
            dirty: HashSet::new(),
            ways: HashMap::new(),
            ways_cap: cfg.xdp.max_sources as usize,
            slot_buf: Vec::new(),
            open_ports: Arc::new(OpenPorts::default()),
            sweep_every: cfg.agent.sweep_interval.max(Duration::from_millis(10)),
            next_sweep: None,
            next_held: Duration::ZERO,
            next_known: Duration::ZERO,
            now: Duration::ZERO,
            out: Vec::new(),
            seen: Vec::new(),
            decode_errors: live::records::DecodeErrors::default(),
            decoded: Vec::new(),
            st: KernelStats::default(),
        })
    }

    /// Hand the tracker's pending packets on before a message that must follow them.
    fn flush_seen(&mut self) {
        if !self.seen.is_empty() {
            self.out.push(ToEngine::Seen(std::mem::take(&mut self.seen)));
        }
    }

    /// Run one batch of the reader's; returns the messages for the engine (in order).
    ///
    /// Consecutive frames go to the kernel together (one BPF_PROG_TEST_RUN of the batch entry
    /// point, see `scanwatch-ebpf/src/xdp/replay.rs`) as long as they fit the linear test-run
    /// buffer (`REPLAY_MAX_BYTES`, at most `REPLAY_MAX_FRAMES`) and no sweep falls between
    /// them: a sweep is taken before the first frame at or past its time, exactly as with one
    /// run per frame. The program stops after a frame that wrote to the event ring; its events
    /// are drained and stamped with that frame's capture time and the rest is resubmitted. So
    /// every message, its time and its order are those of one run per frame.
    pub fn run_batch(&mut self, b: &Batch) -> Vec<ToEngine> {
        self.seen.reserve(b.frames.len());
        let frames = &b.frames;
        let mut i = 0;
        while i < frames.len() {
            let ts = self.clock(frames[i].ts);
            let f = &frames[i];
            let Some(fd) = self.batch_fd.filter(|_| batchable(f.len as usize)) else {
                self.now = ts;
                self.run_one(&b.bytes, f);
                self.after_frame(f, ts, true);
                i += 1;
                continue;
            };
            // (A batch of one frame is still run by the batch programs: the live program is
            // only loaded for frames that fit no batch.)
            // The batch: frames i..j, none at or past the next sweep.
            let mut bytes = REPLAY_HDR_LEN + f.len as usize;
            let mut now = ts;
            let mut j = i + 1;
            while j < frames.len() && j - i < REPLAY_MAX_FRAMES {
                let g = &frames[j];
                let t = g.ts.max(now);
                if self.next_sweep.is_some_and(|at| t >= at) || !batchable(g.len as usize) || bytes + g.len as usize > REPLAY_MAX_BYTES {
                    break;
                }
                bytes += g.len as usize;
                now = t;
                j += 1;
            }
            let mut k = i;
            while k < j {
                let ran = self.run_packed(fd, &b.bytes, &frames[k..j]);
                if ran == 0 {
                    // Refused (cannot happen with a well-formed batch): one frame per run.
                    for g in &frames[k..j] {
                        let t = g.ts.max(self.now);
                        self.now = t;
                        self.run_one(&b.bytes, g);
                        self.after_frame(g, t, true);
                    }
                    break;
                }
                for (n, g) in frames[k..k + ran].iter().enumerate() {
                    let t = g.ts.max(self.now);
                    self.now = t;
                    self.after_frame(g, t, n + 1 == ran);
                }
                k += ran;
            }
            i = j;
        }
        self.flush_seen();
        std::mem::take(&mut self.out)
    }

    /// The engine's clock for a frame (it never runs backwards: captures are only roughly
    /// ordered), with the sweep due at it taken first.
    fn clock(&mut self, ts: Duration) -> Duration {
        let ts = ts.max(self.now);
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
        ts
    }

    /// What follows a frame's run: its events (`drain`: the ring may hold some), the sweep's
    /// source set, the reply tracker's packet.
    fn after_frame(&mut self, f: &FrameMeta, ts: Duration, drain: bool) {
        if drain {
            self.drain_ring(ts);
        }
        if let Some(src) = f.src {
            self.dirty.insert(src);
        }
        if let Some(seen) = f.seen {
            self.seen.push((ts, seen));
        }
    }

    /// Time one BPF_PROG_TEST_RUN call. The syscall's cost is sampled (1 call in 16, scaled):
    /// reading the clock around every call would cost a few percent of the replay itself.
    fn timed<T>(&mut self, call: impl FnOnce() -> T) -> T {
        let sample = self.st.calls.is_multiple_of(16);
        self.st.calls += 1;
        if sample {
            let t = std::time::Instant::now();
            let r = call();
            self.st.xdp_time += t.elapsed() * 16;
            r
        } else {
            call()
        }
    }

    /// The live program's fd, loaded on first use. A frame shorter than an Ethernet header
    /// needs none: BPF_PROG_TEST_RUN refuses it before running any program, so it goes to the
    /// batch entry as it is.
    fn single_fd(&mut self, len: usize) -> std::io::Result<i32> {
        if let Some(fd) = self.prog_fd {
            return Ok(fd);
        }
        if let (Some(fd), true) = (self.batch_fd, len < 14) {
            return Ok(fd);
        }
        let t = std::time::Instant::now();
        let r = live_program_fd(&mut self.ebpf);
        self.st.load_time += t.elapsed();
        match r {
            Ok(fd) => {
                self.prog_fd = Some(fd);
                Ok(fd)
            }
            Err(e) => Err(std::io::Error::other(format!("{e:#}"))),
        }
    }

    /// One frame, one run of the live program.
    fn run_one(&mut self, bytes: &[u8], f: &FrameMeta) {
        let frame = &bytes[f.start as usize..(f.start + f.len) as usize];
        let r = match self.single_fd(frame.len()) {
            Ok(fd) => self.timed(|| test_run(fd, frame)),
            Err(e) => Err(e),
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
    }

    /// One run of the batch program on `frames` (1..=REPLAY_MAX_FRAMES, all batchable, their
    /// total within REPLAY_MAX_BYTES); returns how many it ran (0: refused).
    fn run_packed(&mut self, fd: i32, bytes: &[u8], frames: &[FrameMeta]) -> usize {
        let mut buf = std::mem::take(&mut self.buf);
        pack(&mut buf, bytes, frames);
        let r = self.timed(|| test_run(fd, &buf));
        self.buf = buf;
        let ran = match r {
            Ok(ret) if ret > REPLAY_RET_DONE && ret <= REPLAY_RET_DONE + frames.len() as u32 => (ret - REPLAY_RET_DONE) as usize,
            Ok(ret) => {
                if !self.batch_refused {
                    log::warn!("the replay batch program refused a {}-frame batch (returned {ret}); running its frames one by one", frames.len());
                    self.batch_refused = true;
                }
                0
            }
            Err(e) => {
                if !self.batch_refused {
                    log::warn!("BPF_PROG_TEST_RUN failed on a {}-frame batch: {e}; running its frames one by one", frames.len());
                    self.batch_refused = true;
                }
                0
            }
        };
        self.st.runs += ran as u64;
        ran
    }

    fn sweep(&mut self, now: Duration) {
        self.flush_seen();
        self.st.sweeps += 1;
        // In address order: the engine sees a sweep's sources in the same order on every run.
        let mut dirty: Vec<IpAddr> = self.dirty.drain().collect();
        dirty.sort_unstable();
        let mut sources = Vec::with_capacity(dirty.len());
        if self.ways.len() > 4 * self.ways_cap {
            self.ways.clear();
        }
        let mut buf = std::mem::take(&mut self.slot_buf);
        for ip in dirty {
            let key = ip_to_key(ip);
            let way = self.ways.entry(key).or_insert(u8::MAX);
            let snap = self.sources.get_at(&key, way, &mut buf).map(|s| live::sweep::snapshot(&key, &s, &self.fps));
            self.st.snapshots += u64::from(snap.is_some());
            sources.push((ip, snap));
        }
        self.slot_buf = buf;
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
        let mut decoded = std::mem::take(&mut self.decoded);
        let (sources, fps) = (&self.sources, &self.fps);
        while let Some(item) = self.ring.next() {
            // The live source's one dispatch table; a threshold / honeyport event comes with
            // its source's kernel state first.
            live::records::decode(&item, now, |k| live::sweep::lookup(sources, fps, k), &mut self.decode_errors, &mut decoded);
        }
        if decoded.is_empty() {
            self.decoded = decoded;
            return;
        }
        self.flush_seen();
        let mut snap = None;
        for s in decoded.drain(..) {
            match s.obs {
                Observation::Source(x) => snap = Some(x),
                Observation::Inbound(ev) => {
                    self.st.events += 1;
                    self.out.push(ToEngine::Event(now, Box::new((snap.take(), ev))));
                }
                _ => {}
            }
        }
        self.decoded = decoded;
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

/// This thread held on the CPU it runs on until dropped (then its previous CPU set again).
/// BPF_PROG_TEST_RUN runs the program on the caller's CPU, and the program's per-CPU state
/// (statistics, the bare-ACK fast path's sampling counter) would otherwise depend on where the
/// scheduler put each call.
pub struct PinnedCpu(Option<libc::cpu_set_t>);

impl PinnedCpu {
    pub fn here() -> PinnedCpu {
        // SAFETY: plain libc calls on this thread (pid 0) with a zeroed, correctly sized set.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old) != 0 {
                return PinnedCpu(None);
            }
            let cpu = libc::sched_getcpu();
            if cpu < 0 {
                return PinnedCpu(None);
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
                log::warn!("cannot pin the replay to one CPU ({}): kernel counters may differ between runs", std::io::Error::last_os_error());
                return PinnedCpu(None);
            }
            PinnedCpu(Some(old))
        }
    }
}

impl Drop for PinnedCpu {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: restores the set read in `here`, on the same thread.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), old) };
        }
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

/// Whether a frame can go into a batch: one the batch program can cut out (at least an
/// Ethernet header: BPF_PROG_TEST_RUN refuses shorter frames, and such a frame still runs alone
/// to be counted as refused, as always) and that fits a batch with another.
fn batchable(len: usize) -> bool {
    len >= 14 && REPLAY_HDR_LEN + len <= REPLAY_MAX_BYTES
}

/// `SCANWATCH_REPLAY_ONE_FRAME_PER_RUN=1`: no batches, one BPF_PROG_TEST_RUN per frame (the
/// reference the batch path is tested against; also a way out should a kernel refuse the
/// batch program).
fn one_frame_per_run() -> bool {
    std::env::var_os("SCANWATCH_REPLAY_ONE_FRAME_PER_RUN").is_some_and(|v| v == "1")
}

/// Load the live program (if not yet) and return its fd; it stays owned by `ebpf`.
fn live_program_fd(ebpf: &mut aya::Ebpf) -> anyhow::Result<i32> {
    use std::os::fd::{AsFd, AsRawFd};
    Ok(crate::loader::xdp_program(ebpf)?.fd()?.as_fd().as_raw_fd())
}

/// Load the batch programs (same object, same maps as the live program) and put the step
/// program in the tail-call table. A kernel that refuses them gets one frame per run, with a
/// warning.
fn load_batch_program(ebpf: &mut aya::Ebpf) -> Option<i32> {
    use std::os::fd::{AsFd, AsRawFd};
    use scanwatch_common::{MAP_REPLAY_PROGS, PROG_REPLAY, PROG_REPLAY_STEP};
    let r = (|| -> anyhow::Result<i32> {
        let mut load = |name: &str| -> anyhow::Result<aya::programs::ProgramFd> {
            let prog: &mut aya::programs::Xdp =
                ebpf.program_mut(name).ok_or_else(|| anyhow::anyhow!("program {name} missing"))?.try_into()?;
            prog.load().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            Ok(prog.fd()?.try_clone()?)
        };
        let step = load(PROG_REPLAY_STEP)?;
        let entry = load(PROG_REPLAY)?;
        let map = ebpf.map_mut(MAP_REPLAY_PROGS).ok_or_else(|| anyhow::anyhow!("map {MAP_REPLAY_PROGS} missing"))?;
        aya::maps::ProgramArray::try_from(map)?.set(0, &step, 0)?;
        // The programs stay owned by `ebpf` (kept alive in KernelSide); the clones only lend
        // their fd here.
        let fd = ebpf
            .program(PROG_REPLAY)
            .ok_or_else(|| anyhow::anyhow!("program {PROG_REPLAY} missing"))?
            .fd()?
            .as_fd()
            .as_raw_fd();
        drop(entry);
        Ok(fd)
    })();
    match r {
        Ok(fd) => Some(fd),
        Err(e) => {
            log::warn!("replay batches unavailable ({e:#}): one BPF_PROG_TEST_RUN per frame");
            None
        }
    }
}

/// Pack `frames` into `buf` as the batch program reads them: the header (count, lengths in
/// capture order), then the frames last to first.
pub fn pack(buf: &mut Vec<u8>, bytes: &[u8], frames: &[FrameMeta]) {
    debug_assert!(frames.len() <= REPLAY_MAX_FRAMES);
    buf.clear();
    buf.resize(REPLAY_HDR_LEN, 0);
    buf[0..2].copy_from_slice(&(frames.len() as u16).to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        buf[4 + 2 * i..6 + 2 * i].copy_from_slice(&(f.len as u16).to_le_bytes());
    }
    for f in frames.iter().rev() {
        buf.extend_from_slice(&bytes[f.start as usize..(f.start + f.len) as usize]);
    }
}

/// Channel pair sizes: a few batches in flight bound the memory.
pub fn channel<T>() -> (SyncSender<T>, Receiver<T>) {
    sync_channel(4)
}
