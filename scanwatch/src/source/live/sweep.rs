//! Per-source state out of the kernel: the periodic sweep of SOURCES into the engine's
//! snapshots, with each source's fingerprints decoded.
use scanwatch_common::{cnt, tool, FpKey, SrcKey, SrcState};

use super::maps::{Fingerprints, Sources};
use crate::detect::{FingerprintInfo, SourceSnapshot};
use crate::sketch::{distinct_ports, hll_estimate};
use crate::vocab::key_to_ip;

/// Stable text form of a fingerprint (p0f-like, one line) and its short hash.
pub fn fingerprint_info(raw: &scanwatch_common::Fingerprint) -> FingerprintInfo {
    let mut fp = *raw;
    fp.parse_options();
    let opts: Vec<&str> = fp.opts[..usize::from(fp.n_opts).min(fp.opts.len())]
        .iter()
        .map(|k| match k {
            0 => "eol",
            1 => "nop",
            2 => "mss",
            3 => "ws",
            4 => "sok",
            5 => "sack",
            8 => "ts",
            _ => "?",
        })
        .collect();
    let ittl = scanwatch_common::initial_ttl(fp.ttl);
    let text = format!(
        "v{}:ttl={}/{}:df={}:win={}:mss={}:ws={}:opts={}:sack={}:ts={}:plen={}",
        fp.ip_version,
        fp.ttl,
        ittl,
        fp.df,
        fp.window,
        fp.mss,
        if fp.n_opts > 0 && fp.opts.contains(&3) { fp.wscale.to_string() } else { "-".into() },
        if opts.is_empty() { "none".to_string() } else { opts.join(",") },
        fp.sack_ok,
        fp.timestamps,
        fp.payload_len
    );
    FingerprintInfo {
        text,
        hash: format!("{:08x}", fp.hash),
        tool_hint: tool::name(fp.tool_hint).to_string(),
        initial_ttl: ittl,
    }
}

/// Turn a kernel source entry into the engine's snapshot.
pub fn snapshot(key: &SrcKey, s: &SrcState, fps: &Fingerprints) -> SourceSnapshot {
    let mut counts = [0u64; cnt::N];
    for (c, v) in counts.iter_mut().zip(s.counts.iter()) {
        *c = u64::from(*v);
    }
    let n = (s.n_fp as usize).min(s.fp_hashes.len());
    let fingerprints = s.fp_hashes[..n]
        .iter()
        .filter_map(|h| fps.get(&FpKey { src: *key, hash: *h }, 0).ok())
        .map(|v| fingerprint_info(&v.fp))
        .collect();
    SourceSnapshot {
        ip: key_to_ip(key),
        first_seen_ns: s.first_seen_ns,
        last_seen_ns: s.last_seen_ns,
        counts,
        distinct_ports: distinct_ports(&s.port_hll, s.n_sample),
        distinct_hosts: hll_estimate(&s.host_hll),
        sample_ports: s.sample_ports[..(s.n_sample as usize).min(s.sample_ports.len())].to_vec(),
        sample_hosts: Vec::new(),
        fingerprints,
        blocked: false,
        protocols: s.protocols,
    }
}

/// Bound on how far the kernel's per-source times trail CLOCK_MONOTONIC: the coarse clock trails
/// by up to one tick (1–10 ms) and the XDP program reads it once per tick per CPU (one more).
const COARSE_CLOCK_SLACK_NS: u64 = 30_000_000;

/// Sources a sweep hands to the engine per step: a full map (a spoofed flood keeps it at
/// `xdp.max_sources`) is swept in steps of this many, so the agent's memory for a sweep is one
/// step's snapshots, not the whole map's, and ring-buffer records and control requests are
/// served between steps.
pub const SWEEP_STEP: usize = 1024;

/// One sweep of SOURCES: its occupied sets (as marked when the sweep started), read
/// `SWEEP_STEP` slots at a time.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Slot runs still to read, last first.
    runs: Vec<(usize, usize)>,
    since_ns: u64,
}

impl Sweep {
    /// Starts a sweep of the sources active since `since_ns` (kernel monotonic time of the
    /// previous sweep).
    pub fn start(sources: &Sources, since_ns: u64) -> Sweep {
        let mut runs = sources.occupied_runs();
        runs.reverse();
        Sweep { runs, since_ns }
    }

    pub fn is_done(&self) -> bool {
        self.runs.is_empty()
    }

    /// The next step's snapshots (the sources among the next [`SWEEP_STEP`] occupied slots)
    /// of sources active since the sweep's `since_ns`. The kernel stamps per-source times with
    /// the coarse clock, up to one tick behind CLOCK_MONOTONIC: allow for it.
    pub fn step(&mut self, sources: &Sources, fps: &Fingerprints, mut f: impl FnMut(SourceSnapshot)) {
        let since = self.since_ns.saturating_sub(COARSE_CLOCK_SLACK_NS);
        let mut step = Vec::new();
        let mut budget = SWEEP_STEP;
        while budget > 0 {
            let Some((start, n)) = self.runs.pop() else { break };
            let take = n.min(budget);
            step.push((start, take));
            if take < n {
                self.runs.push((start + take, n - take));
            }
            budget -= take;
        }
        let mut buf = Vec::new();
        let r = sources.visit(&step, &mut buf, |e| {
            if e.state.last_seen_ns >= since {
                f(snapshot(&e.key, &e.state, fps));
            }
        });
        if let Err(e) = r {
            log::warn!("cannot read the per-source table: {e}");
        }
        if self.runs.is_empty() {
            self.runs = Vec::new(); // a flood's run list is not kept between sweeps
        }
    }
}

/// The current snapshot of one source, if it has state.
pub fn lookup(sources: &Sources, fps: &Fingerprints, key: &SrcKey) -> Option<SourceSnapshot> {
    sources.get(key).map(|st| snapshot(key, &st, fps))
}


/// Sources the kernel flagged (threshold crossed, honeyport touched), re-read every
/// [`HOT_REFRESH`] on their own: under a random-source flood the map turns over in a fraction of
/// a second and a full sweep cannot keep pace, but the few sources that already look like
/// scanners are followed until they go quiet or leave the map. Bounded at [`HOT_MAX`] (the
/// longest-flagged is dropped first).
#[derive(Debug, Default)]
pub struct HotSources {
    /// Key → kernel time of the last snapshot taken (0 = none yet).
    keys: std::collections::HashMap<SrcKey, u64>,
    /// Insertion order, for the bound.
    order: std::collections::VecDeque<SrcKey>,
}

/// How often flagged sources are re-read.
pub const HOT_REFRESH: std::time::Duration = std::time::Duration::from_millis(250);
/// Most flagged sources followed at once.
pub const HOT_MAX: usize = 512;
/// A flagged source idle this long is no longer followed (the sweep still sees it).
const HOT_IDLE_NS: u64 = 60_000_000_000;

impl HotSources {
    pub fn flag(&mut self, key: SrcKey) {
        if self.keys.contains_key(&key) {
            return;
        }
        while self.order.len() >= HOT_MAX {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        self.keys.insert(key, 0);
        self.order.push_back(key);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Snapshots of the flagged sources that changed since their last one; sources gone from
    /// the map or idle for a minute are dropped. `now_ns`: kernel monotonic time.
    pub fn refresh(&mut self, sources: &Sources, fps: &Fingerprints, now_ns: u64, mut f: impl FnMut(SourceSnapshot)) {
        self.keys.retain(|key, seen| {
            let Some(s) = sources.get(key) else { return false };
            if s.last_seen_ns > *seen {
                *seen = s.last_seen_ns;
                f(snapshot(key, &s, fps));
            }
            now_ns.saturating_sub(s.last_seen_ns) < HOT_IDLE_NS
        });
        let keys = &self.keys;
        self.order.retain(|k| keys.contains_key(k));
    }
}
