//! Process enrichment from procfs, with a bounded cache. Scanners are often short-lived: the
//! kernel's identity (tgid, comm, uid) captured at event time is always kept, procfs is read at
//! once on first sight, and a process already gone is reported with what was captured and
//! `exited: true` — never dropped.
//!
//! Lineage of processes that are gone before procfs could be read (a shell loop forks one
//! subshell per probe, each lives a millisecond) comes from the kernel's process connector
//! (netlink `NETLINK_CONNECTOR`, `CN_IDX_PROC`): every fork (parent → child) and exec is
//! recorded, so a reaped child still gets its parent pid and — if it never exec'd — its
//! parent's executable, and groups with its siblings (uid, exe, parent).
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
                self.fill_ancestry(&mut info);
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
        self.fill_ancestry(&mut info);
        if info.exe.is_none() && info.cmdline.is_none() {
            // No image and no command line: the task has released its memory, i.e. it is
            // exiting (its state may not read Z yet). Report it as exited.
            info.exited = true;
            self.inherit_exe(&mut info, lineage);
        }
        info
    }

    /// Ancestry: up to 4 levels of (pid, exe), starting at `info.ppid`.
    fn fill_ancestry(&self, info: &mut ProcessInfo) {
        let mut next = info.ppid;
        for _ in 0..4 {
            let Some(pp) = next.filter(|&p| p > 0) else { break };
            let Ok(pr) = procfs::process::Process::new(pp as i32) else { break };
            let exe = pr.exe().map(|e| e.display().to_string()).unwrap_or_else(|_| {
                pr.stat().map(|s| format!("[{}]", s.comm)).unwrap_or_default()
            });
            if info.parent_exe.is_none() {
                info.parent_exe = Some(exe.clone());
            }
            info.ancestry.push(crate::vocab::Ancestor { pid: pp, exe });
            next = pr.stat().ok().map(|s| s.ppid as u32);
        }
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
                Self::apply(st, &data[off..off + len]);
                off += (len + 3) & !3;
            }
        }
        if st.map.len() > MAX_LINEAGE {
            let cut = st.seq.saturating_sub((MAX_LINEAGE / 2) as u64);
            st.map.retain(|_, l| l.seq > cut);
        }
    }

    fn apply(st: &mut LineageMap, msg: &[u8]) {
        let Some(what) = u32_at(msg, 36) else { return };
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
                    st.map.insert(ctgid, Lineage { ppid: ptgid, execd: false, seq });
                }
            }
            PROC_EVENT_EXEC => {
                let Some(tgid) = u32_at(msg, EVENT_DATA + 4) else { return };
                let e = st.map.entry(tgid).or_insert(Lineage { ppid: 0, execd: true, seq });
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
