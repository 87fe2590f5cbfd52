//! A local process as the enrichment stage describes it; also the `source.process` block of
//! outbound alerts.
use serde::{Deserialize, Serialize};

/// Levels climbed above a process to find its anchor; the longest `ancestry`.
pub const MAX_ANCESTRY: usize = 6;

/// One ancestor of the process (`ancestry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    pub pid: u32,
    pub exe: String,
}

/// The long-lived ancestor an outbound prober is grouped under (`process.anchor`): the nearest
/// ancestor that is a spawner (forked two or more children seen by the process connector) or
/// was already running two seconds before the prober started, climbing past single-child
/// short-lived wrappers (`timeout`, `sh -c`, `sudo`, ...). See `enrich::choose_anchor`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessAnchor {
    pub pid: u32,
    /// Executable (`[comm]` for kernel threads, `None` when the anchor has exited).
    pub exe: Option<String>,
    pub comm: Option<String>,
    /// Start time in clock ticks since boot (the unit of `process.start_time`); with the pid it
    /// identifies the anchor across pid reuse.
    pub start_time: Option<u64>,
    /// Levels above the prober: 1 = its parent.
    pub depth: u8,
    /// Why this ancestor: `spawner` (forked >= 2 children), `long_lived` (running >= 2 s before
    /// the prober started) or `top` (the climb ended: 6 levels or no further lineage known).
    pub rule: String,
    /// Children this ancestor forked while the agent watched (process connector; 0 without it).
    pub forks: u32,
}

/// An enriched local process; also the `source.process` block of outbound alerts.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    pub uid: u32,
    pub user: Option<String>,
    pub ppid: Option<u32>,
    pub parent_exe: Option<String>,
    /// Ancestors, parent first: up to the anchor and at least 4 levels when known (at most 6).
    /// An ancestor that has exited shows `exe: "[exited]"`.
    pub ancestry: Vec<Ancestor>,
    /// The ancestor outbound activity is grouped under (see [`ProcessAnchor`]).
    #[serde(default)]
    pub anchor: Option<ProcessAnchor>,
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub start_time: Option<u64>,
    /// The process had exited when it was enriched (details may be partial).
    pub exited: bool,
}
