//! A local process as the enrichment stage describes it; also the `source.process` block of
//! outbound alerts.
use serde::{Deserialize, Serialize};

/// One ancestor of the process (`ancestry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    pub pid: u32,
    pub exe: String,
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
    /// Up to 4 ancestors, parent first.
    pub ancestry: Vec<Ancestor>,
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub start_time: Option<u64>,
    /// The process had exited when it was enriched (details may be partial).
    pub exited: bool,
}
