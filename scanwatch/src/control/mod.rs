//! The agent's control socket: a root-only unix socket (`control.socket`, mode 0600, peers
//! checked with `SO_PEERCRED`) that answers one JSON request per line with one JSON response per
//! line. `scanwatch status`, `top` and `block` are its clients (`client.rs`); the metrics
//! endpoint renders the same [`Status`].
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"block_list"}`, `{"cmd":"block_add","ip":"…","ttl_secs":600}`,
//! `{"cmd":"block_del","ip":"…"}`. Responses: `{"ok":true,…}` or `{"ok":false,"error":"…"}`.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::response::{BlockInfo, ResponseCounters};
use crate::sinks::SinkStats;

pub mod activity;
pub mod client;
pub mod server;

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    BlockList,
    BlockAdd {
        ip: IpAddr,
        #[serde(default)]
        ttl_secs: Option<f64>,
    },
    BlockDel {
        ip: IpAddr,
    },
}

/// One request line as a peer sent it; the error names the column.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    serde_json::from_slice::<Request>(line).map_err(|e| format!("bad request at column {}: {e}", e.column()))
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<BlockInfo>>,
    /// The response stage is in dry-run (block lists are what would be blocked).
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Response {
    pub fn error(e: impl Into<String>) -> Response {
        Response { ok: false, error: Some(e.into()), ..Default::default() }
    }
    pub fn ok() -> Response {
        Response { ok: true, ..Default::default() }
    }
}

/// One entity ranked by its findings (`top` sources / processes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    /// Source address, or `exe (pid N, uid U)`.
    pub key: String,
    /// Highest (severity weight × confidence) of its findings: info 1, low 2, medium 4, high 8,
    /// critical 16.
    pub score: f64,
    pub alerts: u64,
    pub severity: String,
    pub kind: String,
    pub ports: u64,
    pub hosts: u64,
    /// RFC 3339 time of its last finding.
    pub last: String,
}

/// The response stage's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ResponseStatus {
    /// Blocks go into the kernel (`xdp.enforce_blocklist`).
    pub enforcing: bool,
    pub dry_run: bool,
    pub max_blocked: u32,
    pub counters: ResponseCounters,
    pub entries: Vec<BlockInfo>,
}

/// Evidence capture counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EvidenceStatus {
    pub active: u64,
    pub started: u64,
    /// Alerts not captured: `evidence.max_active` captures were running.
    pub skipped: u64,
    pub packets: u64,
    pub bytes: u64,
    pub files_removed: u64,
    pub errors: u64,
}

/// ASN enrichment counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AsnStatus {
    pub loaded: bool,
    pub hits: u64,
    pub misses: u64,
}

/// Everything `scanwatch status` shows and the metrics endpoint exports.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub hostname: String,
    pub uptime_secs: f64,
    /// `iface:mode` of every XDP attachment.
    pub xdp: Vec<String>,
    /// Outbound hook → method in use (`tracepoint:syscalls:sys_enter_connect`, ...).
    pub hooks: BTreeMap<String, String>,
    /// Kernel counters by name (packets, syn, malformed_*, events, events_dropped, ...).
    pub kernel: BTreeMap<String, u64>,
    /// Findings by kind, then severity.
    pub alerts: BTreeMap<String, BTreeMap<String, u64>>,
    pub sinks: BTreeMap<String, SinkStats>,
    pub response: Option<ResponseStatus>,
    pub evidence: Option<EvidenceStatus>,
    pub asn: Option<AsnStatus>,
    pub top_sources: Vec<Ranked>,
    pub top_processes: Vec<Ranked>,
    /// Agent CPU time (user + system) and resident memory, from /proc/self.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// Reloads applied (SIGHUP) and refused (bad configuration).
    pub reloads: u64,
    pub reload_errors: u64,
}

/// CPU seconds (user + system) and resident bytes of this process.
pub fn self_usage() -> (f64, u64) {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 2..)?.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command.
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |p| p * page);
    (cpu, rss)
}

/// Errors of the client side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot connect to the agent at {path}: {source} (is `scanwatch run` running with control.socket set? are you root?)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("control socket {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("the agent closed the connection without answering (refused: only root may use the control socket)")]
    Closed,
    #[error("bad response from the agent: {0}")]
    Decode(serde_json::Error),
}

/// A connection to the running agent.
pub struct Client {
    path: PathBuf,
    reader: BufReader<std::os::unix::net::UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ControlError> {
        let s = std::os::unix::net::UnixStream::connect(path)
            .map_err(|source| ControlError::Connect { path: path.to_path_buf(), source })?;
        let io = |e| ControlError::Io(path.to_path_buf(), e);
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
        Ok(Client { path: path.to_path_buf(), reader: BufReader::new(s) })
    }

    pub fn request(&mut self, r: &Request) -> Result<Response, ControlError> {
        let io = |e| ControlError::Io(self.path.clone(), e);
        let mut line = serde_json::to_string(r).map_err(ControlError::Decode)?;
        line.push('\n');
        if let Err(e) = self.reader.get_mut().write_all(line.as_bytes()) {
            // The agent may have answered (a refusal) and closed before reading: read that.
            if !matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) {
                return Err(io(e));
            }
        }
        let mut answer = String::new();
        let n = self.reader.read_line(&mut answer).map_err(|e| ControlError::Io(self.path.clone(), e))?;
        if n == 0 {
            return Err(ControlError::Closed);
        }
        serde_json::from_str(&answer).map_err(ControlError::Decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json_lines() {
        let r = Request::BlockAdd { ip: "192.0.2.1".parse().expect("ip"), ttl_secs: Some(60.0) };
        let s = serde_json::to_string(&r).expect("json");
        assert_eq!(s, r#"{"cmd":"block_add","ip":"192.0.2.1","ttl_secs":60.0}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"cmd":"block_del","ip":"2001:db8::1"}"#).expect("del"),
            Request::BlockDel { ip: "2001:db8::1".parse().expect("ip") });
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"block_add","ip":"300.1.1.1"}"#).is_err());
    }

    /// The fuzz target's seed corpus (fuzz/corpus/control), replayed: every input is answered
    /// by a request or an error, never a panic, and both parsers agree with the seeds' names.
    #[test]
    fn fuzz_corpus_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/control");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.expect("entry").path();
            let data = std::fs::read(&p).expect("seed");
            let r = parse_request(&data);
            let h = crate::metrics::parse_head(&data);
            let name = p.file_name().and_then(|f| f.to_str()).unwrap_or_default();
            if name.starts_with("ok-") {
                assert!(r.is_ok(), "{name}: {r:?}");
            }
            if name.starts_with("bad-") {
                assert!(r.is_err() && h.is_none(), "{name}");
            }
            if name.starts_with("http-") {
                assert!(h.is_some(), "{name}");
            }
            n += 1;
        }
        assert!(n >= 6, "seed corpus present ({n} files)");
    }

    #[test]
    fn self_usage_reads_proc() {
        let (cpu, rss) = self_usage();
        assert!(cpu >= 0.0);
        assert!(rss > 1 << 20, "a test binary holds more than 1 MiB: {rss}");
    }
}
