//! Process enrichment from procfs, with a bounded cache. Scanners are often short-lived: the
//! kernel's identity (tgid, comm, uid) captured at event time is always kept, procfs is read at
//! once on first sight, and a process already gone is reported with what was captured and
//! `exited: true` — never dropped.
//!
//! Lineage of processes that are gone before procfs could be read (a shell loop forks one
//! subshell per probe, each lives a millisecond) comes from the kernel's process connector
//! (netlink `NETLINK_CONNECTOR`, `CN_IDX_PROC`): every fork (parent → child) and exec is
//! recorded, so a reaped child still gets its parent pid and — if it never exec'd — its
//! parent's executable, and groups with its siblings.
//!
//! Each process also gets an *anchor* (`ProcessInfo::anchor`): the long-lived ancestor its
//! outbound activity is grouped under. Probers are often separated from the loop that spawns them
//! by a short-lived wrapper per probe (`timeout 1 bash -c ...`, `xargs -I{} sh -c 'nc ...'`,
//! `sudo`, `nice`); grouping by the direct parent would put every probe in its own entity. The
//! climb ([`choose_anchor`]) goes up at most [`MAX_CLIMB`] levels and stops at the first ancestor
//! that is a *spawner* (forked two or more children while the agent watched) or *long-lived*
//! (running at least two seconds before the prober started). Both are properties a per-probe
//! wrapper cannot have (one child, born with the probe); both are fixed for the lifetime of a
//! prober, which is resolved once and cached, so a long scan never changes entity.
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::vocab::ProcessInfo;

/// Upper bound on cached processes; the least recently used half is dropped beyond it.
const MAX_CACHED: usize = 4096;
/// Upper bound on remembered fork/exec records; the oldest half is dropped beyond it.
const MAX_LINEAGE: usize = 65_536;
/// Levels climbed above a process to find its anchor (and the longest `ancestry`).
pub use crate::vocab::process::MAX_ANCESTRY as MAX_CLIMB;
/// Levels of `ancestry` reported even when the anchor is closer.
const MIN_ANCESTRY: usize = 4;
/// An ancestor running this long before the prober started is long-lived (an anchor).
const LONG_LIVED_NS: u64 = 2_000_000_000;
/// A fork record whose time differs more than this from a live process's start is a recycled
/// pid's (the fork of the live process was not seen).
const RECORD_SLACK_NS: u64 = 1_000_000_000;

pub struct ProcCache {
    entries: HashMap<u32, (ProcessInfo, u64)>,
    users: HashMap<u32, String>,
    tick: u64,
    lineage: Option<Arc<ForkTracker>>,
    stop: Arc<AtomicBool>,
}

impl Drop for ProcCache {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Default for ProcCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcCache {
    pub fn new() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let lineage = match ForkTracker::open() {
            Ok(t) => {
                let t = Arc::new(t);
                ForkTracker::spawn_drainer(t.clone(), stop.clone());
                Some(t)
            }
            Err(e) => {
                log::info!("process connector unavailable ({e}): exited children keep only the kernel's identity");
                None
            }
        };
        Self { entries: HashMap::new(), users: load_users(), tick: 0, lineage, stop }
    }

    /// Whether fork/exec lineage from the process connector is available.
    pub fn has_lineage(&self) -> bool {
        self.lineage.is_some()
    }

    /// What the process connector recorded about `tgid` (after draining pending messages).
    fn lineage_of(&self, tgid: u32) -> Option<Lineage> {
        self.lineage.as_ref().and_then(|t| t.lookup(tgid))
    }

    /// Identity for `tgid`, enriched once from procfs. `comm`/`uid` are the kernel's capture.
    pub fn get(&mut self, tgid: u32, pid: u32, comm: &str, uid: Option<u32>) -> ProcessInfo {
        self.tick += 1;
        let tick = self.tick;
        if let Some((info, seen)) = self.entries.get_mut(&tgid) {
            // A recycled pid with a different comm is a different process.
            if comm.is_empty() || info.comm == comm {
                *seen = tick;
                let mut out = info.clone();
                out.pid = pid;
                return out;
            }
        }
        let info = self.read(tgid, pid, comm, uid);
        if self.entries.len() >= MAX_CACHED {
            let mut ages: Vec<u64> = self.entries.values().map(|(_, s)| *s).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.entries.retain(|_, (_, s)| *s > cut);
        }
        self.entries.insert(tgid, (info.clone(), tick));
        info
    }

    fn user_name(&self, uid: u32) -> Option<String> {
        self.users.get(&uid).cloned()
    }

    fn read(&self, tgid: u32, pid: u32, comm: &str, uid: Option<u32>) -> ProcessInfo {
        let mut info = ProcessInfo {
            pid,
            tgid,
            comm: comm.to_string(),
            exe: None,
            cmdline: None,
            uid: uid.unwrap_or(u32::MAX),
            user: None,
            ppid: None,
            parent_exe: None,
            ancestry: Vec::new(),
            anchor: None,
            cgroup: None,
            container_id: None,
            start_time: None,
            exited: false,
        };
        // Drained before procfs is read: the fork record of a child precedes its first event.
        let lineage = self.lineage_of(tgid);
        let Ok(p) = procfs::process::Process::new(tgid as i32) else {
            // Already reaped: the kernel's capture, plus lineage when the connector saw the fork.
            info.exited = true;
            info.user = uid.and_then(|u| self.user_name(u));
            if let Some(l) = lineage.filter(|l| l.ppid > 0) {
                info.ppid = Some(l.ppid);
                self.fill_lineage(&mut info, Some(l));
                self.inherit_exe(&mut info, Some(l));
            }
            return info;
        };
        info.exe = p.exe().ok().map(|e| e.display().to_string());
        info.cmdline = p.cmdline().ok().filter(|c| !c.is_empty()).map(|c| c.join(" "));
        if let Ok(st) = p.stat() {
            if info.comm.is_empty() {
                info.comm = st.comm.clone();
            }
            info.ppid = Some(st.ppid as u32);
            info.start_time = Some(st.starttime);
            // Zombie (exited, not yet reaped) or dying: exe and cmdline are gone already.
            if matches!(st.state, 'Z' | 'X') {
                info.exited = true;
            }
        }
        if uid.is_none() {
            if let Ok(s) = p.status() {
                info.uid = s.ruid;
            }
        }
        info.user = self.user_name(info.uid);
        if let Ok(cgs) = p.cgroups() {
            // Prefer the unified (v2) path; fall back to the first controller's.
            let path = cgs.0.iter().find(|c| c.hierarchy == 0).or_else(|| cgs.0.first()).map(|c| c.pathname.clone());
            info.container_id = path.as_deref().and_then(container_id);
            info.cgroup = path;
        }
        self.fill_lineage(&mut info, lineage);
        if info.exe.is_none() && info.cmdline.is_none() {
            // No image and no command line: the task has released its memory, i.e. it is
            // exiting (its state may not read Z yet). Report it as exited.
            info.exited = true;
            self.inherit_exe(&mut info, lineage);
        }
        info
    }

    /// Record of `tgid` without draining (the caller drained just before).
    fn peek(&self, tgid: u32) -> Option<Lineage> {
        let t = self.lineage.as_ref()?;
        let st = t.state.lock().unwrap_or_else(|e| e.into_inner());
        st.map.get(&tgid).copied()
    }

    /// Remembers what procfs shows of a live ancestor (start, parent) whose fork the connector
    /// did not see (it predates the agent): once it exits, its children's lookups still find its
    /// start (the entity key) and its parent.
    fn remember(&self, tgid: u32, start_ns: u64, ppid: u32) -> Option<Lineage> {
        let t = self.lineage.as_ref()?;
        let mut st = t.state.lock().unwrap_or_else(|e| e.into_inner());
        st.seq += 1;
        let seq = st.seq;
        let e = st.map.entry(tgid).or_insert(Lineage { ppid, execd: false, seq, forks: 0, born: 0 });
        if e.born != 0 && e.born.abs_diff(start_ns) >= RECORD_SLACK_NS {
            // A recycled pid's record: this process's fork was not seen.
            *e = Lineage { ppid, execd: false, seq, forks: 0, born: 0 };
        }
        if e.born == 0 {
            e.born = start_ns.max(1);
        }
        if e.ppid == 0 {
            e.ppid = ppid;
        }
        Some(*e)
    }

    /// Walks the lineage above `info` and fills `ancestry`, `parent_exe` and `anchor`. Each
    /// step prefers the connector's record (the parent that forked the process, even after
    /// it exited or the child was reparented) and falls back to procfs.
    fn fill_lineage(&self, info: &mut ProcessInfo, own: Option<Lineage>) {
        let tick = tick_ns();
        // A fork record far from the live process's start is a recycled pid's.
        let own = own.filter(|l| match (l.born_ns(), info.start_time) {
            (Some(b), Some(t)) => b.abs_diff(t.saturating_mul(tick)) < RECORD_SLACK_NS,
            _ => true,
        });
        let prober_start = info
            .start_time
            .map(|t| t.saturating_mul(tick))
            .or_else(|| own.and_then(|l| l.born_ns()))
            .unwrap_or_else(|| clock_ns(libc::CLOCK_BOOTTIME));
        let mut next = own.map(|l| l.ppid).filter(|&p| p > 0).or(info.ppid);
        let mut levels: Vec<Level> = Vec::new();
        for _ in 0..MAX_CLIMB {
            let Some(pp) = next.filter(|&p| p > 0) else { break };
            let pr = procfs::process::Process::new(pp as i32).ok();
            let st = pr.as_ref().and_then(|p| p.stat().ok());
            let proc_start = st.as_ref().map(|s| s.starttime.saturating_mul(tick));
            let mut rec = self.peek(pp).filter(|l| match (l.born_ns(), proc_start) {
                (Some(b), Some(s)) => b.abs_diff(s) < RECORD_SLACK_NS,
                _ => true,
            });
            if let (Some(s), Some(stat)) = (proc_start, st.as_ref()) {
                if rec.is_none_or(|l| l.born == 0) {
                    rec = self.remember(pp, s, stat.ppid as u32).or(rec);
                }
            }
            let exe = pr.as_ref().map(|p| {
                p.exe().map(|e| e.display().to_string()).unwrap_or_else(|_| {
                    st.as_ref().map(|s| format!("[{}]", s.comm)).unwrap_or_default()
                })
            });
            levels.push(Level {
                node: ChainNode { pid: pp, start_ns: rec.and_then(|l| l.born_ns()).or(proc_start), forks: rec.map_or(0, |l| l.forks) },
                exe,
                comm: st.as_ref().map(|s| s.comm.clone()),
            });
            next = rec.map(|l| l.ppid).filter(|&p| p > 0).or(st.as_ref().map(|s| s.ppid as u32));
            if pp == 1 {
                break;
            }
        }
        let chain: Vec<ChainNode> = levels.iter().map(|l| l.node.clone()).collect();
        let anchor = choose_anchor(prober_start, &chain);
        info.parent_exe = levels.first().and_then(|l| l.exe.clone());
        let keep = anchor.map_or(0, |(i, _)| i + 1).max(MIN_ANCESTRY).min(levels.len());
        info.ancestry = levels[..keep]
            .iter()
            .map(|l| crate::vocab::Ancestor {
                pid: l.node.pid,
                exe: l.exe.clone().unwrap_or_else(|| "[exited]".to_string()),
            })
            .collect();
        info.anchor = anchor.map(|(i, rule)| {
            let l = &levels[i];
            crate::vocab::ProcessAnchor {
                pid: l.node.pid,
                exe: l.exe.clone(),
                comm: l.comm.clone(),
                start_time: l.node.start_ns.map(|s| s / tick),
                depth: (i + 1) as u8,
                rule: rule.as_str().to_string(),
                forks: l.node.forks,
            }
        });
    }

    /// A child that exited before its exe could be read runs its parent's image if it never
    /// exec'd (fork without exec: subshells, forked workers). Decided from the connector's
    /// record; without one (the fork predates the agent), from the comm the child inherited.
    fn inherit_exe(&self, info: &mut ProcessInfo, lineage: Option<Lineage>) {
        let Some(pp) = info.ppid.filter(|&p| p > 0) else { return };
        let Some(parent_exe) = info.parent_exe.clone().filter(|e| !e.starts_with('[') && !e.is_empty()) else {
            return;
        };
        let parent_comm = procfs::process::Process::new(pp as i32).and_then(|p| p.stat()).map(|s| s.comm).ok();
        let same_comm = parent_comm.as_deref() == Some(info.comm.as_str());
        let never_execd = match lineage {
            Some(l) => !l.execd && (l.ppid == 0 || l.ppid == pp),
            None => false,
        };
        if same_comm && (never_execd || lineage.is_none()) {
            info.exe = Some(parent_exe);
        }
    }
}

/// What the process connector recorded about one process (pid = tgid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lineage {
    /// Parent tgid at fork (0 = fork not seen).
    ppid: u32,
    /// The process called execve after the fork.
    execd: bool,
    seq: u64,
    /// Children (processes, not threads) it forked while the agent watched.
    forks: u32,
    /// Fork time, ns since boot (CLOCK_BOOTTIME); 0 = fork not seen.
    born: u64,
}

impl Lineage {
    fn born_ns(&self) -> Option<u64> {
        (self.born > 0).then_some(self.born)
    }
}

/// One ancestor as the anchor rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainNode {
    pub pid: u32,
    /// Start, ns since boot (CLOCK_BOOTTIME), when known.
    pub start_ns: Option<u64>,
    /// Children forked while the agent watched.
    pub forks: u32,
}

/// Why an ancestor is the anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnchorRule {
    /// Forked two or more children.
    Spawner,
    /// Running at least [`LONG_LIVED_NS`] before the prober started.
    LongLived,
    /// No ancestor qualified within [`MAX_CLIMB`] levels or the known lineage: the highest one.
    Top,
}

impl AnchorRule {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AnchorRule::Spawner => "spawner",
            AnchorRule::LongLived => "long_lived",
            AnchorRule::Top => "top",
        }
    }
}

/// The anchor among `chain` (parent first) of a prober started at `prober_start_ns` (ns since
/// boot): the first ancestor that forked two or more children, or was running at least two
/// seconds before the prober started. An ancestor with at most one child that started with the
/// prober is a per-probe wrapper (`timeout`, `sh -c`, `sudo`, `env`, `nice`) and is climbed
/// past. When none qualifies within [`MAX_CLIMB`] levels, the highest known ancestor.
pub(crate) fn choose_anchor(prober_start_ns: u64, chain: &[ChainNode]) -> Option<(usize, AnchorRule)> {
    let chain = &chain[..chain.len().min(MAX_CLIMB)];
    for (i, n) in chain.iter().enumerate() {
        if n.forks >= 2 {
            return Some((i, AnchorRule::Spawner));
        }
        if n.start_ns.is_some_and(|s| s.saturating_add(LONG_LIVED_NS) <= prober_start_ns) {
            return Some((i, AnchorRule::LongLived));
        }
    }
    chain.len().checked_sub(1).map(|i| (i, AnchorRule::Top))
}

/// One level of the climb.
struct Level {
    node: ChainNode,
    /// `None`: the process has exited (reaped).
    exe: Option<String>,
    comm: Option<String>,
}

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Nanoseconds per clock tick of procfs start times.
fn tick_ns() -> u64 {
    1_000_000_000 / procfs::ticks_per_second().max(1)
}

#[derive(Default)]
struct LineageMap {
    map: HashMap<u32, Lineage>,
    seq: u64,
    overruns: u64,
}

/// Netlink process-connector listener (fork / exec records), drained by a background thread and
/// on every cache miss.
struct ForkTracker {
    fd: OwnedFd,
    state: Mutex<LineageMap>,
}

const NETLINK_CONNECTOR: i32 = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXEC: u32 = 0x2;
/// nlmsghdr (16) + cn_msg (20) + proc_event header (what, cpu, timestamp: 16).
const EVENT_DATA: usize = 16 + 20 + 16;

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4).map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8).map(|s| u64::from_ne_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
}

/// Offset of proc_event.timestamp_ns (ktime_get_ns: CLOCK_MONOTONIC) in a message.
const EVENT_TIMESTAMP: usize = 16 + 20 + 8;

impl ForkTracker {
    fn open() -> std::io::Result<ForkTracker> {
        // SAFETY: plain socket(2); the fd is owned by `OwnedFd` right after.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                NETLINK_CONNECTOR,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Bursts of forks (a shell loop) must not overflow while the agent is busy.
        let size: libc::c_int = 8 << 20;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: valid fd and option value.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
        // SAFETY: zeroed sockaddr_nl is valid; fields set below.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = CN_IDX_PROC;
        // SAFETY: valid fd and sockaddr.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut msg = Vec::with_capacity(40);
        msg.extend_from_slice(&40u32.to_ne_bytes()); // nlmsg_len
        msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&4u16.to_ne_bytes()); // len
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        // SAFETY: zeroed sockaddr_nl addresses the kernel (nl_pid 0).
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: valid fd, buffer and address.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ForkTracker { fd, state: Mutex::new(LineageMap::default()) })
    }

    /// Background drainer: keeps the socket from overflowing while no process event arrives.
    fn spawn_drainer(t: Arc<ForkTracker>, stop: Arc<AtomicBool>) {
        let _ = std::thread::Builder::new().name("scanwatch-cnproc".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd { fd: t.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, Duration::from_millis(500).as_millis() as i32) };
                let mut st = t.state.lock().unwrap_or_else(|e| e.into_inner());
                t.drain(&mut st);
            }
        });
    }

    fn lookup(&self, tgid: u32) -> Option<Lineage> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.drain(&mut st);
        st.map.get(&tgid).copied()
    }

    /// Reads every queued message (non-blocking). Caller holds the state lock, so a lookup
    /// never misses a message another reader took but has not applied yet.
    fn drain(&self, st: &mut LineageMap) {
        let mut buf = [0u8; 8192];
        // Fork times arrive in CLOCK_MONOTONIC; procfs start times count from boot (suspend
        // included): converted with the offset between the two clocks now.
        let boot_off = clock_ns(libc::CLOCK_BOOTTIME).saturating_sub(clock_ns(libc::CLOCK_MONOTONIC));
        loop {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::ENOBUFS) => {
                        st.overruns += 1;
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => break,
                }
            }
            if n == 0 {
                break;
            }
            let data = &buf[..n as usize];
            let mut off = 0usize;
            while let Some(len) = u32_at(data, off).map(|l| l as usize) {
                if len < 16 || off + len > data.len() {
                    break;
                }
                Self::apply(st, &data[off..off + len], boot_off);
                off += (len + 3) & !3;
            }
        }
        if st.map.len() > MAX_LINEAGE {
            let cut = st.seq.saturating_sub((MAX_LINEAGE / 2) as u64);
            st.map.retain(|_, l| l.seq > cut);
        }
    }

    fn apply(st: &mut LineageMap, msg: &[u8], boot_off: u64) {
        let Some(what) = u32_at(msg, 36) else { return };
        let born = u64_at(msg, EVENT_TIMESTAMP).map_or(0, |t| t.saturating_add(boot_off));
        st.seq += 1;
        let seq = st.seq;
        match what {
            PROC_EVENT_FORK => {
                let (Some(ptgid), Some(cpid), Some(ctgid)) =
                    (u32_at(msg, EVENT_DATA + 4), u32_at(msg, EVENT_DATA + 8), u32_at(msg, EVENT_DATA + 12))
                else {
                    return;
                };
                // Threads share their process's lineage.
                if cpid == ctgid {
                    st.map.insert(ctgid, Lineage { ppid: ptgid, execd: false, seq, forks: 0, born });
                    let p = st.map.entry(ptgid).or_insert(Lineage { ppid: 0, execd: false, seq, forks: 0, born: 0 });
                    p.forks = p.forks.saturating_add(1);
                    // An active spawner stays in the bounded map.
                    p.seq = seq;
                }
            }
            PROC_EVENT_EXEC => {
                let Some(tgid) = u32_at(msg, EVENT_DATA + 4) else { return };
                let e = st.map.entry(tgid).or_insert(Lineage { ppid: 0, execd: true, seq, forks: 0, born: 0 });
                e.execd = true;
                e.seq = seq;
            }
            _ => {}
        }
    }
}

/// uid → user name from /etc/passwd (no NSS: the agent must not block on a directory service).
fn load_users() -> HashMap<u32, String> {
    let mut m = HashMap::new();
    if let Ok(text) = std::fs::read_to_string("/etc/passwd") {
        for line in text.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 2 {
                if let Ok(uid) = f[2].parse() {
                    m.entry(uid).or_insert_with(|| f[0].to_string());
                }
            }
        }
    }
    m
}

/// A 64-hex-digit container id in a cgroup path (docker, containerd, cri-o, podman).
pub fn container_id(path: &str) -> Option<String> {
    path.split(['/', '-', '.', ':'])
        .find(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        let id = "a".repeat(64);
        assert_eq!(container_id(&format!("/system.slice/docker-{id}.scope")), Some(id.clone()));
        assert_eq!(container_id(&format!("/kubepods/burstable/pod1/{id}")), Some(id));
        assert_eq!(container_id("/user.slice/user-0.slice"), None);
    }

    #[test]
    fn enriches_self_and_marks_dead_as_exited() {
        let mut c = ProcCache::new();
        let me = std::process::id();
        let info = c.get(me, me, "", None);
        assert!(!info.exited);
        assert!(info.exe.as_deref().is_some_and(|e| !e.is_empty()));
        assert!(info.ppid.is_some());
        // pid_max is at most 2^22: this tgid cannot exist.
        let gone = c.get(4_194_305, 4_194_305, "nmap", Some(0));
        assert!(gone.exited);
        assert_eq!(gone.comm, "nmap");
        assert_eq!(gone.user.as_deref(), Some("root"));
    }

    fn own_comm() -> String {
        std::fs::read_to_string("/proc/self/comm").unwrap_or_default().trim().to_string()
    }

    /// A forked child that never exec'd and is already reaped keeps its parent and the parent's
    /// executable (lineage from the process connector), so shell-loop subshells group.
    #[test]
    #[cfg_attr(not(feature = "privileged-tests"), ignore = "needs root (process connector): cargo xtask test runs it")]
    fn reaped_forked_child_inherits_parent_lineage() {
        let mut c = ProcCache::new();
        assert!(c.has_lineage(), "the process connector must be available to root");
        // SAFETY: the child only calls _exit (async-signal-safe).
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: immediate exit in the child.
            unsafe { libc::_exit(0) };
        }
        assert!(child > 0);
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        let me = std::process::id();
        let info = c.get(child as u32, child as u32, &own_comm(), Some(0));
        assert!(info.exited, "{info:?}");
        assert_eq!(info.ppid, Some(me), "{info:?}");
        let my_exe = std::fs::read_link("/proc/self/exe").expect("own exe").display().to_string();
        assert_eq!(info.exe.as_deref(), Some(my_exe.as_str()), "{info:?}");
        assert_eq!(info.comm, own_comm());
    }

    const S: u64 = 1_000_000_000;

    fn node(pid: u32, start_s: Option<u64>, forks: u32) -> ChainNode {
        ChainNode { pid, start_ns: start_s.map(|s| s * S), forks }
    }

    /// `for p in ...; do (echo >/dev/tcp/h/$p); done`: the subshell's parent is the loop shell,
    /// which forked many children: it is the anchor (the direct-parent case is unchanged).
    #[test]
    fn anchor_of_a_subshell_is_its_loop_shell() {
        let chain = [node(50, Some(100), 30), node(10, Some(1), 400)];
        assert_eq!(choose_anchor(101 * S, &chain), Some((0, AnchorRule::Spawner)));
    }

    /// `timeout 1 bash -c ...` per probe: the prober's parent is a young single-child `timeout`,
    /// climbed past to the loop shell; `xargs -I{} sh -c 'nc ...'` the same with `sh` and xargs.
    #[test]
    fn anchor_climbs_past_per_probe_wrappers() {
        // prober started at 100.5 s; timeout forked it at 100.5 s; loop shell forked 2 so far
        // (the `$(seq ...)` subshell and this timeout) and started at 100 s.
        let chain = [node(61, Some(100), 1), node(50, Some(100), 2), node(10, Some(1), 400)];
        assert_eq!(choose_anchor(100 * S + S / 2, &chain), Some((1, AnchorRule::Spawner)));
        // Two wrappers (sudo -> sh -c) under an interactive shell that forked nothing yet seen
        // by the agent but has run for an hour.
        let chain = [node(62, Some(3600), 1), node(61, Some(3600), 1), node(20, Some(10), 0)];
        assert_eq!(choose_anchor(3600 * S, &chain), Some((2, AnchorRule::LongLived)));
        // A wrapper whose fork predates the agent (no record: 0 forks) but old is an anchor.
        let chain = [node(61, Some(10), 0), node(20, Some(5), 3)];
        assert_eq!(choose_anchor(3600 * S, &chain), Some((0, AnchorRule::LongLived)));
    }

    /// `nmap` run from an interactive shell: the shell (long-lived) is the anchor, and the
    /// answer does not depend on how long nmap has been running (it is computed from the
    /// prober's start, not the event time).
    #[test]
    fn anchor_of_a_scanner_from_an_interactive_shell() {
        let chain = [node(20, Some(10), 1), node(1, Some(0), 100)];
        assert_eq!(choose_anchor(500 * S, &chain), Some((0, AnchorRule::LongLived)));
        // `sudo nmap` typed at the same shell: sudo is a single-child wrapper born with nmap.
        let chain = [node(30, Some(500), 1), node(20, Some(10), 1), node(1, Some(0), 100)];
        assert_eq!(choose_anchor(500 * S, &chain), Some((1, AnchorRule::LongLived)));
    }

    /// No qualifying ancestor: the highest known one; the climb is bounded; no lineage: none.
    #[test]
    fn anchor_falls_back_to_the_top_and_is_bounded() {
        let chain = [node(61, Some(100), 1), node(60, None, 0)];
        assert_eq!(choose_anchor(100 * S, &chain), Some((1, AnchorRule::Top)));
        let chain: Vec<ChainNode> = (0..10).map(|i| node(100 - i, Some(100), 1)).collect();
        assert_eq!(choose_anchor(100 * S, &chain), Some((MAX_CLIMB - 1, AnchorRule::Top)));
        let mut chain = chain;
        chain[8] = node(92, Some(1), 50);
        // A spawner beyond MAX_CLIMB levels is not reached.
        assert_eq!(choose_anchor(100 * S, &chain), Some((MAX_CLIMB - 1, AnchorRule::Top)));
        assert_eq!(choose_anchor(100 * S, &[]), None);
    }

    /// Real lineage: this test process forks a throwaway child and a wrapper child; the wrapper
    /// forks a prober and waits; all are reaped before the lookup. The prober's anchor is this
    /// process (a spawner: >= 2 forks seen), one level above the exited wrapper, which the
    /// ancestry shows as `[exited]`.
    #[test]
    #[cfg_attr(not(feature = "privileged-tests"), ignore = "needs root (process connector): cargo xtask test runs it")]
    fn reaped_prober_under_a_reaped_wrapper_is_anchored_to_the_spawner() {
        let mut c = ProcCache::new();
        assert!(c.has_lineage(), "the process connector must be available to root");
        let mut fds = [0i32; 2];
        // SAFETY: pipe(2) into a local array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the children only call fork/write/waitpid/_exit (async-signal-safe).
        let throwaway = unsafe { libc::fork() };
        if throwaway == 0 {
            unsafe { libc::_exit(0) };
        }
        let wrapper = unsafe { libc::fork() };
        if wrapper == 0 {
            unsafe {
                let prober = libc::fork();
                if prober == 0 {
                    libc::_exit(0);
                }
                libc::write(fds[1], (&prober as *const i32).cast(), 4);
                let mut st = 0;
                libc::waitpid(prober, &mut st, 0);
                libc::_exit(0);
            }
        }
        assert!(throwaway > 0 && wrapper > 0);
        let mut prober: i32 = 0;
        let mut status = 0;
        // SAFETY: reading 4 bytes from our pipe; reaping our own children.
        unsafe {
            assert_eq!(libc::read(fds[0], (&mut prober as *mut i32).cast(), 4), 4);
            libc::waitpid(wrapper, &mut status, 0);
            libc::waitpid(throwaway, &mut status, 0);
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        let me = std::process::id();
        let info = c.get(prober as u32, prober as u32, &own_comm(), Some(0));
        assert!(info.exited, "{info:?}");
        assert_eq!(info.ppid, Some(wrapper as u32), "the real parent stays ppid: {info:?}");
        let a = info.anchor.as_ref().expect("anchor");
        assert_eq!(a.pid, me, "{info:?}");
        assert_eq!(a.depth, 2, "{info:?}");
        assert_eq!(a.rule, "spawner", "{info:?}");
        assert!(a.forks >= 2, "{info:?}");
        let my_start = procfs::process::Process::myself().and_then(|p| p.stat()).map(|s| s.starttime).ok();
        assert_eq!(a.start_time, my_start, "{info:?}");
        assert_eq!(info.ancestry[0].pid, wrapper as u32, "{info:?}");
        assert_eq!(info.ancestry[0].exe, "[exited]", "{info:?}");
        assert_eq!(info.ancestry[1].pid, me, "{info:?}");
        // The wrapper itself (reaped) is anchored to the same spawner, one level up.
        let w = c.get(wrapper as u32, wrapper as u32, &own_comm(), Some(0));
        assert_eq!(w.anchor.as_ref().map(|a| (a.pid, a.depth)), Some((me, 1)), "{w:?}");
    }

    /// An anchor whose fork predates the agent (no fork record, so no fork time) keeps its
    /// identity (pid + start time, the entity key) after it exits: the start procfs showed while
    /// it was alive is remembered.
    #[test]
    #[cfg_attr(not(feature = "privileged-tests"), ignore = "needs root (process connector): cargo xtask test runs it")]
    fn reaped_anchor_keeps_its_start_time() {
        let (mut go, mut back) = ([0i32; 2], [0i32; 2]);
        // SAFETY: pipe(2) into local arrays.
        unsafe {
            assert_eq!(libc::pipe(go.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(back.as_mut_ptr()), 0);
        }
        // The spawner is forked before the cache exists (its fork is not seen).
        // SAFETY: the child only calls read/write/fork/waitpid/_exit (async-signal-safe).
        let spawner = unsafe { libc::fork() };
        if spawner == 0 {
            unsafe {
                let mut b = 0u8;
                libc::read(go[0], (&mut b as *mut u8).cast(), 1);
                let mut kids = [0i32; 2];
                for k in kids.iter_mut() {
                    *k = libc::fork();
                    if *k == 0 {
                        libc::_exit(0);
                    }
                }
                let mut st = 0;
                for k in kids {
                    libc::waitpid(k, &mut st, 0);
                }
                libc::write(back[1], kids.as_ptr().cast(), 8);
                libc::read(go[0], (&mut b as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        assert!(spawner > 0);
        let mut c = ProcCache::new();
        assert!(c.has_lineage(), "the process connector must be available to root");
        let mut kids = [0i32; 2];
        let mut status = 0;
        // SAFETY: our pipes and our own child.
        unsafe {
            libc::write(go[1], [1u8].as_ptr().cast(), 1);
            assert_eq!(libc::read(back[0], kids.as_mut_ptr().cast(), 8), 8);
        }
        let alive = c.get(kids[0] as u32, kids[0] as u32, &own_comm(), Some(0));
        let a1 = alive.anchor.clone().expect("anchor");
        assert_eq!((a1.pid, a1.depth, a1.rule.as_str()), (spawner as u32, 1, "spawner"), "{alive:?}");
        let start = procfs::process::Process::new(spawner).and_then(|p| p.stat()).map(|s| s.starttime).ok();
        assert_eq!(a1.start_time, start, "{alive:?}");
        // SAFETY: as above.
        unsafe {
            libc::write(go[1], [1u8].as_ptr().cast(), 1);
            libc::waitpid(spawner, &mut status, 0);
            for fd in go.into_iter().chain(back) {
                libc::close(fd);
            }
        }
        let later = c.get(kids[1] as u32, kids[1] as u32, &own_comm(), Some(0));
        let a2 = later.anchor.clone().expect("anchor after the spawner exited");
        assert_eq!((a2.pid, a2.start_time), (spawner as u32, start), "{later:?}");
        assert_eq!(a2.exe, None, "{later:?}");
        assert_eq!(later.ancestry[0].exe, "[exited]", "{later:?}");
    }

    /// A reaped child that exec'd something else keeps only the kernel's identity + its parent.
    #[test]
    #[cfg_attr(not(feature = "privileged-tests"), ignore = "needs root (process connector): cargo xtask test runs it")]
    fn reaped_execd_child_does_not_inherit_exe() {
        let mut c = ProcCache::new();
        assert!(c.has_lineage(), "the process connector must be available to root");
        let mut ch = std::process::Command::new("/bin/true").spawn().expect("spawn true");
        let pid = ch.id();
        ch.wait().expect("wait true");
        let info = c.get(pid, pid, "true", Some(0));
        assert!(info.exited);
        assert_eq!(info.ppid, Some(std::process::id()), "{info:?}");
        assert_eq!(info.exe, None, "{info:?}");
    }
}
