//! The live kernel source: loads and attaches the programs, then turns what the kernel reports
//! into stamped observations — ring-buffer records, periodic sweeps of the per-source map, and
//! reads of the first-contact table — and maintains the filters the XDP program reads.
//!
//! Files: `maps.rs` (typed map access), `records.rs` (ring-buffer decoding), `sweep.rs`
//! (per-source snapshots), `first_contact.rs` (one-probe sources), `filters.rs` (filter upkeep),
//! `tracepoints.rs` (tracepoint layouts checked against the running kernel).
use std::net::IpAddr;
use std::time::Duration;

use aya::maps::RingBuf;
use aya::Ebpf;
use scanwatch_common::{stat, XdpConfig, MAP_EVENTS};
use tokio::io::unix::AsyncFd;

use crate::config::Config;
use crate::detect::{Observation, Stamped};
use crate::loader::{self, LoadOptions};
use crate::response::BlockTable;
use crate::vocab::{ip_to_key, monotonic};

pub mod filters;
pub mod first_contact;
pub mod forwarded;
pub mod ifmode;
pub mod maps;
pub mod ports;
pub mod records;
pub mod procs;
pub mod sweep;
pub mod table;
pub mod tracepoints;

use first_contact::{FirstContactView, HeldReader, Listeners};
use maps::KernelMaps;

/// How often the first-contact table is read for one-probe sources.
const HELD_SCAN: Duration = Duration::from_secs(5);

/// How often the known-source filter is rebuilt from the live SOURCES keys.
const KNOWN_REBUILD: Duration = Duration::from_secs(600);

/// How often the host's addresses are re-read into `LOCAL_ADDRS` (gateway mode).
const ADDR_REFRESH: Duration = Duration::from_secs(10);

/// How often a full ring buffer is reported.
const LOSS_REPORT: Duration = Duration::from_secs(60);

/// Map sizes and settings derived from the config.
pub fn load_options(cfg: &Config, enforce_blocklist: bool) -> LoadOptions {
    let hp = cfg.effective_honeyports();
    let x = &cfg.xdp;
    let mut flags = 0;
    if x.lookup_sockets {
        flags |= scanwatch_common::cfgflag::LOOKUP_SOCKETS;
    }
    if x.verify_checksums {
        flags |= scanwatch_common::cfgflag::VERIFY_CSUM;
    }
    if x.first_contact {
        flags |= scanwatch_common::cfgflag::FIRST_CONTACT;
    }
    LoadOptions {
        max_sources: x.max_sources,
        source_seed: loader::random_seed(),
        max_fingerprints: x.max_fingerprints,
        max_procs: x.max_procs,
        ringbuf_bytes: x.ringbuf_bytes,
        enforce_blocklist,
        xdp: XdpConfig {
            short_window_ns: x.short_window.as_nanos() as u64,
            port_threshold: x.port_threshold,
            host_threshold: x.host_threshold,
            flags,
            enforce_blocklist: u32::from(enforce_blocklist),
            fp_event_budget: XdpConfig::fp_budget_for(x.fingerprint_events_per_sec, aya::util::online_cpus().map_or(1, |c| c.len() as u32)),
            _pad: 0,
        },
        own_tgid: std::process::id(),
        // Per 100 ms budget window; a non-zero rate keeps at least one event per window.
        proc_events_per_window: match x.process_events_per_sec {
            0 => 0,
            n => n.div_ceil(10),
        },
        pair_window_ns: x.process_pair_window.as_nanos() as u64,
        honeyports_tcp: hp.tcp,
        honeyports_udp: hp.udp,
        first_payload: cfg.depth.enabled,
        // Set by `LiveSource::open` from the interface modes.
        gateway: false,
    }
}

/// The kernel's inbound block list, as the response stage sees it.
pub struct KernelBlockTable(maps::Blocklist);

impl BlockTable for KernelBlockTable {
    fn insert(&mut self, ip: IpAddr, reason: u32) -> Result<(), String> {
        let entry = scanwatch_common::BlockEntry { reason, ..Default::default() };
        self.0.insert(ip_to_key(ip), entry, 0).map_err(|e| e.to_string())
    }
    fn dropped(&self, ip: IpAddr) -> Option<(u64, u64)> {
        self.0.get(&ip_to_key(ip), 0).ok().map(|e| (e.packets, e.bytes))
    }
    fn remove(&mut self, ip: IpAddr) -> Result<(), String> {
        self.0.remove(&ip_to_key(ip)).map_err(|e| e.to_string())
    }
}

/// The running kernel programs and the agent's reading position in them.
pub struct LiveSource {
    // Dropping `ebpf` detaches every program and link.
    _ebpf: Ebpf,
    ring: AsyncFd<RingBuf<aya::maps::MapData>>,
    maps: KernelMaps,
    blocklist: Option<maps::Blocklist>,
    fc_view: FirstContactView,
    held_reader: HeldReader,
    sweep: tokio::time::Interval,
    held_scan: tokio::time::Interval,
    known_rebuild: tokio::time::Interval,
    loss_report: tokio::time::Interval,
    last_sweep_ns: u64,
    /// The sweep in progress (empty when none).
    sweeping: sweep::Sweep,
    /// Flagged sources, re-read on their own timer.
    hot: sweep::HotSources,
    hot_refresh: tokio::time::Interval,
    last_dropped: u64,
    decode_errors: records::DecodeErrors,
    /// The listening-port filter's map, kept mapped while the program runs.
    _tcp_ports: Option<ports::TcpPorts>,
    /// What attached where (`eth0:native`, ...), for the ready line.
    pub attached: Vec<String>,
    /// Outbound hook → the method that attached (`tracepoint:syscalls:sys_enter_connect`, ...).
    pub hooks: Vec<(String, String)>,
    pub outbound: bool,
    /// `PROCS` (outbound on): swept for the events the kernel shed past a process's budget.
    procs: Option<procs::Procs>,
    proc_sweep: procs::ProcSweep,
    proc_tick: tokio::time::Interval,
    /// Each attached interface's mode (host / gateway / mirror) and why.
    pub modes: Vec<ifmode::IfaceMode>,
    /// Gateway / mirror mode: the forwarded-traffic ring and its reply tracker.
    fwd: Option<forwarded::Forwarded>,
    mode_maps: Option<ifmode::ModeMaps>,
    addr_refresh: tokio::time::Interval,
}

impl LiveSource {
    /// Load, size and attach the programs as `cfg` says; report every choice on stderr.
    pub fn open(cfg: &Config) -> anyhow::Result<LiveSource> {
        let mut lopts = load_options(cfg, cfg.xdp.enforce_blocklist);
        let mut ifaces = cfg.agent.interfaces.clone();
        if ifaces.is_empty() {
            ifaces.push(
                loader::default_route_interface()
                    .ok_or_else(|| anyhow::anyhow!("no default-route interface found; pass --interface"))?,
            );
        }
        // Interface modes are known before loading: only gateway / mirror deployments carry the
        // forwarded-packet path.
        let modes = ifmode::resolve(&ifaces, &cfg.agent.interface_modes);
        lopts.gateway = modes.iter().any(|m| m.mode != crate::config::InterfaceMode::Host);
        let mut ebpf = loader::load(&lopts)?;
        if let Err(e) = aya_log::EbpfLogger::init(&mut ebpf) {
            log::debug!("no eBPF log map: {e}");
        }
        let mut xdp_cfg = lopts.xdp;
        let tcp_ports = if cfg.xdp.lookup_sockets && cfg.xdp.port_filter {
            match ports::enable(&mut ebpf, &mut xdp_cfg) {
                Ok(p) => {
                    eprintln!("scanwatch: listening-port filter on ({} TCP ports in use)", p.count());
                    Some(p)
                }
                Err(e) => {
                    eprintln!("scanwatch: listening-port filter off (every probe is looked up): {e}");
                    None
                }
            }
        } else {
            None
        };
        let mut attached = Vec::new();
        for i in &ifaces {
            let (mode, fallback) = loader::attach_xdp(&mut ebpf, i, cfg.agent.xdp_mode)?;
            match fallback {
                Some(why) => eprintln!("scanwatch: xdp attached to {i} in {mode} mode (fallback; {why})"),
                None => eprintln!("scanwatch: xdp attached to {i} in {mode} mode"),
            }
            attached.push(format!("{i}:{mode}"));
        }
        for m in &modes {
            eprintln!("scanwatch: interface {m}");
        }
        let mode_maps = ifmode::ModeMaps::install(&mut ebpf, &modes)?;
        let fwd = match &mode_maps {
            Some(mm) => {
                xdp_cfg.flags |= scanwatch_common::cfgflag::FORWARDED;
                loader::write_config(&mut ebpf, &xdp_cfg)?;
                eprintln!(
                    "scanwatch: forwarded traffic judged by its replies ({} local addresses known)",
                    mm.addresses()
                );
                if ifaces.len() < 2 && modes.iter().any(|m| m.mode == crate::config::InterfaceMode::Gateway) {
                    eprintln!(
                        "scanwatch: NOTE replies to forwarded traffic arrive on the other interfaces it crosses: attach to those too"
                    );
                }
                let ring: RingBuf<aya::maps::MapData> = maps::take(&mut ebpf, scanwatch_common::MAP_FWD_EVENTS)?;
                Some(forwarded::Forwarded::new(ring, cfg.xdp.max_sources)?)
            }
            None => None,
        };
        let mut hooks = Vec::new();
        if cfg.agent.outbound {
            if let Some(root) = loader::tracefs_root() {
                let n = tracepoints::check_all(root)?;
                eprintln!("scanwatch: tracepoint layouts match this kernel ({n} tracepoints, {} fields)", scanwatch_common::tp::ALL.len());
            }
            for (hook, method) in loader::attach_outbound(&mut ebpf)? {
                eprintln!("scanwatch: hook {hook} -> {method}");
                hooks.push((hook.to_string(), method));
            }
        }
        let ring: RingBuf<aya::maps::MapData> = maps::take(&mut ebpf, MAP_EVENTS)?;
        // SAFETY: `ring` owns its fd and stays inside the AsyncFd (registered once, closed on drop).
        let ring = unsafe { AsyncFd::register(ring)? };
        let maps = KernelMaps::take_all(&mut ebpf, &lopts)?;
        let blocklist = if lopts.enforce_blocklist { Some(maps::take_blocklist(&mut ebpf)?) } else { None };
        let fc_view = FirstContactView::new(maps::take_first_contact(&mut ebpf)?)?;
        let procs: Option<procs::Procs> =
            if cfg.agent.outbound { Some(maps::take(&mut ebpf, scanwatch_common::MAP_PROCS)?) } else { None };
        let start = tokio::time::Instant::now();
        Ok(LiveSource {
            _ebpf: ebpf,
            ring,
            maps,
            blocklist,
            fc_view,
            held_reader: HeldReader::default(),
            sweep: {
                // A sweep still stepping through a full map when the next is due starts late
                // rather than twice in a row.
                let mut i = tokio::time::interval(cfg.agent.sweep_interval);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            },
            held_scan: tokio::time::interval(HELD_SCAN),
            known_rebuild: tokio::time::interval_at(start + KNOWN_REBUILD, KNOWN_REBUILD),
            loss_report: tokio::time::interval_at(start + LOSS_REPORT, LOSS_REPORT),
            last_sweep_ns: 0,
            sweeping: sweep::Sweep::default(),
            hot: sweep::HotSources::default(),
            hot_refresh: {
                let mut i = tokio::time::interval(sweep::HOT_REFRESH);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            },
            last_dropped: 0,
            decode_errors: records::DecodeErrors::default(),
            _tcp_ports: tcp_ports,
            attached,
            hooks,
            outbound: cfg.agent.outbound,
            modes,
            fwd,
            mode_maps,
            addr_refresh: tokio::time::interval_at(start + ADDR_REFRESH, ADDR_REFRESH),
            procs,
            proc_sweep: procs::ProcSweep::default(),
            proc_tick: tokio::time::interval_at(start + procs::PROC_SWEEP, procs::PROC_SWEEP),
        })
    }

    /// The kernel block list, for the response stage (present when enforcement is on).
    pub fn take_block_table(&mut self) -> Option<KernelBlockTable> {
        self.blocklist.take().map(KernelBlockTable)
    }

    /// Wait for the next thing the kernel has to say and append its observations to `out`.
    /// Cancel-safe: every await comes before any work.
    pub async fn next(&mut self, out: &mut Vec<Stamped>) -> anyhow::Result<()> {
        tokio::select! {
            guard = self.ring.readable_mut() => {
                let mut guard = guard?;
                let now = monotonic();
                let (sources, fps) = (&self.maps.sources, &self.maps.fingerprints);
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    if let Some(k) = records::hot_source(&item) {
                        self.hot.flag(k);
                    }
                    records::decode(&item, now, |k| sweep::lookup(sources, fps, k), &mut self.decode_errors, out);
                }
                guard.clear_ready();
            }
            items = forwarded::Forwarded::read(&mut self.fwd) => {
                let items = items?;
                if let Some(f) = self.fwd.as_mut() {
                    f.feed(items);
                }
            }
            _ = self.addr_refresh.tick(), if self.mode_maps.is_some() => {
                if let Some(Err(e)) = self.mode_maps.as_mut().map(ifmode::ModeMaps::refresh) {
                    eprintln!("scanwatch: WARNING cannot refresh the local-address map: {e:#}");
                }
            }
            _ = self.sweep.tick(), if self.sweeping.is_done() => {
                let now = monotonic();
                self.sweeping = sweep::Sweep::start(&self.maps.sources, self.last_sweep_ns);
                self.last_sweep_ns = now.as_nanos() as u64;
                self.sweep_step(out);
            }
            // Ready at once unless this task has used its scheduling budget (then the control
            // socket and the other tasks run first); the ring buffer keeps its turn (random
            // choice among ready branches), so a flood cannot stall the sweep or the reverse.
            _ = tokio::task::coop::consume_budget(), if !self.sweeping.is_done() => {
                self.sweep_step(out);
            }
            _ = self.hot_refresh.tick(), if !self.hot.is_empty() => {
                let now = monotonic();
                self.hot.refresh(&self.maps.sources, &self.maps.fingerprints, now.as_nanos() as u64, |s| out.push(Stamped::new(now, Observation::Source(s))));
            }
            _ = self.proc_tick.tick(), if self.procs.is_some() => {
                if let Some(p) = &self.procs {
                    self.proc_sweep.sweep(p, monotonic(), out);
                }
            }
            _ = self.held_scan.tick() => {
                let held = self.held_reader.read(&self.fc_view, Listeners::read);
                out.push(Stamped::new(monotonic(), Observation::Held(held)));
            }
            _ = self.known_rebuild.tick() => {
                if let Err(e) = filters::rebuild_known_filter(&self.maps.sources, &mut self.maps.known) {
                    eprintln!("scanwatch: WARNING cannot rebuild the known-source filter: {e:#}");
                }
                if let Err(e) = filters::clear_suspects(&mut self.maps.suspect) {
                    eprintln!("scanwatch: WARNING cannot clear the suspect-source filter: {e:#}");
                }
            }
            _ = self.loss_report.tick() => {
                let totals = self.maps.totals();
                let dropped = totals[stat::EVENTS_DROPPED as usize]
                    + totals[stat::PROC_EVENTS_DROPPED as usize]
                    + totals[stat::FWD_DROPPED as usize];
                if dropped > self.last_dropped {
                    eprintln!("scanwatch: WARNING ring buffer full: {dropped} events dropped so far");
                    self.last_dropped = dropped;
                }
            }
        }
        Ok(())
    }

    /// One step of the sweep in progress; the engine's tick follows the last step.
    /// In gateway / mirror mode each snapshot carries the reply tracker's outcome counters, and
    /// the sources whose outcomes changed since the previous sweep are read and fed too.
    fn sweep_step(&mut self, out: &mut Vec<Stamped>) {
        let now = monotonic();
        let fwd = &mut self.fwd;
        self.sweeping.step(&self.maps.sources, &self.maps.fingerprints, |s| {
            let s = match fwd.as_ref() {
                Some(f) => f.merge(s),
                None => s,
            };
            out.push(Stamped::new(now, Observation::Source(s)))
        });
        if self.sweeping.is_done() {
            if let Some(f) = fwd.as_mut() {
                for ip in f.expire(now) {
                    let snap = sweep::lookup(&self.maps.sources, &self.maps.fingerprints, &ip_to_key(ip));
                    if let Some(s) = f.replies.merge(ip, snap.as_ref()) {
                        out.push(Stamped::new(now, Observation::Source(s)));
                    }
                }
            }
            out.push(Stamped::new(now, Observation::Tick));
        }
    }

    /// The kernel's counters and the source's own, by name (the agent's exit line).
    pub fn counters(&self) -> serde_json::Map<String, serde_json::Value> {
        let totals = self.maps.totals();
        let live = self.maps.sources.live() as u64;
        let mut summary = serde_json::Map::new();
        for (i, name) in stat::NAMES.iter().enumerate() {
            if !name.is_empty() {
                summary.insert((*name).to_string(), totals[i].into());
            }
        }
        summary.insert("live_sources".into(), live.into());
        summary.insert("evictions".into(), totals[stat::NEW_SOURCES as usize].saturating_sub(live).into());
        summary.insert("records_short".into(), self.decode_errors.short.into());
        summary.insert("records_unknown_kind".into(), self.decode_errors.unknown_kind.into());
        summary.insert("payload_orphan_chunks".into(), self.decode_errors.payload_orphan_chunks.into());
        if let Some(f) = &self.fwd {
            let t = f.tracker_stats();
            for (k, v) in [
                ("forwarded_bad_records", f.st.bad_records),
                ("forwarded_undecoded", f.st.undecoded),
                ("reply_probes", t.probes),
                ("reply_open", t.open),
                ("reply_closed", t.closed),
                ("reply_filtered", t.filtered),
                ("reply_no_answer", t.no_answer),
                ("reply_evicted", t.evicted),
                ("reply_unsolicited", t.unsolicited),
            ] {
                summary.insert(k.into(), v.into());
            }
        }
        summary
    }
}

