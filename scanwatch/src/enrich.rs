//! Process enrichment from procfs, with a bounded cache. Scanners are often short-lived: the
//! kernel's identity (tgid, comm, uid) captured at event time is always kept, procfs is read at
//! once on first sight, and a process already gone is reported with what was captured and
//! `exited: true` — never dropped.
use std::collections::HashMap;

use crate::detect::ProcessInfo;

/// Upper bound on cached processes; the least recently used half is dropped beyond it.
const MAX_CACHED: usize = 4096;

pub struct ProcCache {
    entries: HashMap<u32, (ProcessInfo, u64)>,
    users: HashMap<u32, String>,
    tick: u64,
}

impl Default for ProcCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcCache {
    pub fn new() -> Self {
        Self { entries: HashMap::new(), users: load_users(), tick: 0 }
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
        let Ok(p) = procfs::process::Process::new(tgid as i32) else {
            info.exited = true;
            info.user = uid.and_then(|u| self.user_name(u));
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
        // Ancestry: up to 4 levels of (pid, exe).
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
            info.ancestry.push((pp, exe));
            next = pr.stat().ok().map(|s| s.ppid as u32);
        }
        if info.exe.is_none() && info.cmdline.is_none() && info.ppid.is_none() {
            info.exited = true;
        }
        info
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
}
