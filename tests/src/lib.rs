//! Lab harness for scanwatch integration tests and benchmarks.
//!
//! Rules (see `shared/LAB.md`): scanners run only inside network namespaces created here, they
//! target only the lab's own prefix, rates are modest, every run is time-bounded and teardown is
//! guaranteed (Drop + stale cleanup of crashed runs).
//!
//! Topology of one [`Lab`] with slot `N` (1..=250, allocated system-wide under a file lock):
//!
//! ```text
//!  root netns (agent runs here, XDP on swrN)        netns swatkN (scanners run here)
//!  ------------------------------------------        --------------------------------
//!  swrN  fe80::1/64 (nodad)                <====>    swaN  10.78.N.2/32, fd78:N::2/128 (nodad)
//!        fd77:N::10/128 (nodad)                            fe80::2/64 (nodad)
//!  local 10.77.N.0/24 dev swrN  (AnyIP)                    10.77.N.0/24 dev swaN (device route)
//!  local fd77:N::/64  dev swrN  (AnyIP)                    fd77:N::/64 via fe80::1 dev swaN
//!  10.78.N.2/32 dev swrN, fd78:N::2/128 via fe80::2        lo up; no default route, no NAT
//!  ipv4 forwarding off on swrN
//! ```
//!
//! The root namespace answers for every address of `10.77.N.0/24` and `fd77:N::/64` (closed ports
//! answer RST, [`Lab::serve_tcp`] opens ports). State files under `/run/scanwatch-lab/` record the
//! creating pid (+ its start time) so [`cleanup_stale`] can remove leftovers of crashed runs.

pub mod flood;
pub mod mmdb;

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::ops::RangeInclusive;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Directory holding per-lab state files (`lab-<slot>`) and the allocation lock.
pub const STATE_DIR: &str = "/run/scanwatch-lab";
/// Root-side veth name prefix (`swr<slot>`).
pub const ROOT_VETH_PREFIX: &str = "swr";
/// Attacker-side veth name prefix (`swa<slot>`).
pub const ATK_VETH_PREFIX: &str = "swa";
/// Attacker netns name prefix (`swatk<slot>`).
pub const NETNS_PREFIX: &str = "swatk";
/// Slots are 1..=MAX_SLOT; slot N owns 10.77.N.0/24, 10.78.N.2, fd77:N::/64, fd78:N::2.
pub const MAX_SLOT: u32 = 250;
/// Upper bound on any scanner rate the helpers accept (LAB.md rule 3).
pub const MAX_RATE: u32 = 20_000;
/// Default wall-clock bound for commands run inside the lab netns.
pub const DEFAULT_TIMEOUT_SECS: u32 = 120;

fn python3() -> &'static str {
    // /usr/bin/python3 is readable by unprivileged users (pyenv shims under /root are not).
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

// ------------------------------------------------------------------------------------------------
// small helpers
// ------------------------------------------------------------------------------------------------

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("lab tests need root (euid != 0): they create network namespaces and veths");
    }
}

/// Runs a command in the current (root) namespace; returns Output (never panics on exit status).
fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", args))
}

/// Runs a command and panics with its stderr if it fails.
fn must(args: &[&str]) -> Output {
    let out = run(args);
    if !out.status.success() {
        panic!(
            "lab setup command failed: {:?}\nstatus: {}\nstderr: {}\nstdout: {}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    out
}

/// Runs a command ignoring every failure (teardown paths).
fn quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn write_sysctl(path: &str, val: &str) {
    if let Err(e) = fs::write(path, val) {
        panic!("cannot write {val} to {path}: {e}");
    }
}

/// Process start time (field 22 of /proc/<pid>/stat), used to detect pid reuse.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // rest starts at field 3 (state); starttime is field 22 -> index 19.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn owner_alive(pid: u32, start: u64) -> bool {
    proc_start_time(pid) == Some(start)
}

/// Global (cross-process) lock for slot allocation and stale cleanup.
struct FileLock(fs::File);
impl FileLock {
    fn acquire() -> FileLock {
        fs::create_dir_all(STATE_DIR).unwrap_or_else(|e| panic!("cannot create {STATE_DIR}: {e}"));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(format!("{STATE_DIR}/.lock"))
            .unwrap_or_else(|e| panic!("cannot open {STATE_DIR}/.lock: {e}"));
        // SAFETY: valid fd owned by `f`.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            panic!(
                "flock {STATE_DIR}/.lock: {}",
                std::io::Error::last_os_error()
            );
        }
        FileLock(f)
    }
}
impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: valid fd.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn state_file(slot: u32) -> String {
    format!("{STATE_DIR}/lab-{slot}")
}

fn parse_state(text: &str) -> Option<(u32, u64)> {
    let mut pid = None;
    let mut start = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("pid=") {
            pid = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("start=") {
            start = v.trim().parse().ok();
        }
    }
    Some((pid?, start?))
}

/// Removes every kernel object belonging to `slot` (netns, veth pair; routes go with the device).
fn teardown_slot(slot: u32) {
    let ns = format!("{NETNS_PREFIX}{slot}");
    let rv = format!("{ROOT_VETH_PREFIX}{slot}");
    let av = format!("{ATK_VETH_PREFIX}{slot}");
    // Kill whatever still runs inside the lab netns (only processes in *our* namespace).
    if Path::new(&format!("/run/netns/{ns}")).exists() {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &ns])
            .stderr(Stdio::null())
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    // SAFETY: plain kill(2).
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
    }
    // Deleting either end removes the pair and every route/address bound to swrN.
    quiet(&["ip", "link", "del", &rv]);
    quiet(&["ip", "link", "del", &av]);
    quiet(&["ip", "netns", "del", &ns]);
    // In case the device vanished before its routes did (should not happen), drop them explicitly.
    let (v4, v6) = slot_prefixes(slot);
    quiet(&["ip", "route", "del", "table", "local", "local", &v4]);
    quiet(&["ip", "-6", "route", "del", "table", "local", "local", &v6]);
    let _ = fs::remove_file(format!("{STATE_DIR}/blocklist-{slot}.conf"));
}

/// All routes of the root namespace (v4 + v6, all tables) as text.
fn root_routes() -> String {
    let mut s =
        String::from_utf8_lossy(&run(&["ip", "-o", "route", "show", "table", "all"]).stdout)
            .to_string();
    s.push_str(&String::from_utf8_lossy(
        &run(&["ip", "-o", "-6", "route", "show", "table", "all"]).stdout,
    ));
    s
}

fn slot_prefixes(slot: u32) -> (String, String) {
    (format!("10.77.{slot}.0/24"), format!("fd77:{slot:x}::/64"))
}

fn parse_slot(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok().filter(|s| (1..=MAX_SLOT).contains(s))
}

fn cleanup_stale_locked() {
    let mut live: HashSet<u32> = HashSet::new();
    if let Ok(rd) = fs::read_dir(STATE_DIR) {
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().to_string();
            let Some(slot) = parse_slot(&name, "lab-") else {
                continue;
            };
            let text = fs::read_to_string(ent.path()).unwrap_or_default();
            match parse_state(&text) {
                Some((pid, start)) if owner_alive(pid, start) => {
                    live.insert(slot);
                }
                _ => {
                    teardown_slot(slot);
                    let _ = fs::remove_file(ent.path());
                }
            }
        }
    }
    // Orphans without a state file (state files are written before anything is created).
    let mut orphans: HashSet<u32> = HashSet::new();
    if let Ok(rd) = fs::read_dir("/run/netns") {
        for ent in rd.flatten() {
            if let Some(s) = parse_slot(&ent.file_name().to_string_lossy(), NETNS_PREFIX) {
                orphans.insert(s);
            }
        }
    }
    if let Ok(rd) = fs::read_dir("/sys/class/net") {
        for ent in rd.flatten() {
            let n = ent.file_name().to_string_lossy().to_string();
            if let Some(s) =
                parse_slot(&n, ROOT_VETH_PREFIX).or_else(|| parse_slot(&n, ATK_VETH_PREFIX))
            {
                orphans.insert(s);
            }
        }
    }
    for s in orphans.difference(&live) {
        teardown_slot(*s);
    }
}

/// Teardown of leftovers from crashed earlier runs: every `swatk<N>` netns / `swr<N>`/`swa<N>`
/// veth whose state file names a dead creator (pid + start time), or that has no state file.
pub fn cleanup_stale() {
    require_root();
    let _g = FileLock::acquire();
    cleanup_stale_locked();
}

static LAB_LOCK: Mutex<()> = Mutex::new(());

/// Serialises lab tests within one test binary (the agent's process hooks are system-wide).
/// Recovers from poisoning (a failed test must not fail every later test).
pub fn lab_lock() -> MutexGuard<'static, ()> {
    LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ------------------------------------------------------------------------------------------------
// target guard
// ------------------------------------------------------------------------------------------------

fn v4_in(ip: Ipv4Addr, net: Ipv4Addr, len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (u32::from(ip) & mask) == (u32::from(net) & mask)
}

fn v6_in(ip: Ipv6Addr, net: Ipv6Addr, len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    (u128::from(ip) & mask) == (u128::from(net) & mask)
}

// ------------------------------------------------------------------------------------------------
// Lab
// ------------------------------------------------------------------------------------------------

/// One attacker namespace wired to the root namespace; see the module docs for the topology.
#[derive(Debug)]
pub struct Lab {
    /// Slot number N (1..=250), unique system-wide while the lab lives.
    pub id: u32,
    /// Attacker network namespace (`swatk<N>`).
    pub netns: String,
    /// Root-namespace veth end (`swr<N>`): attach XDP here.
    pub root_veth: String,
    /// Attacker-side veth end (`swa<N>`), inside `netns`.
    pub atk_veth: String,
    /// "10.77.N.0/24": every address is local to the root namespace.
    pub target_net: String,
    /// "fd77:N::/64": every address is local to the root namespace.
    pub target_net6: String,
    /// 10.77.N.10
    pub target_ip: Ipv4Addr,
    /// fd77:N::10 (also configured as an address on the root veth)
    pub target_ip6: Ipv6Addr,
    /// 10.78.N.2 (outside the target /24)
    pub attacker_ip: Ipv4Addr,
    /// fd78:N::2
    pub attacker_ip6: Ipv6Addr,
    /// MAC of the root veth (masscan --router-mac / zmap -G).
    pub root_mac: String,
    /// MAC of the attacker veth.
    pub atk_mac: String,
    /// Root veth ifindex (for XDP attach by index).
    pub root_ifindex: u32,
    /// Link-local of the root veth (IPv6 next hop of the attacker).
    pub root_ll6: Ipv6Addr,
    /// Wall time Lab::new took.
    pub setup_time: Duration,
    torn_down: AtomicBool,
}

static STALE_ONCE: Once = Once::new();

impl Lab {
    #[expect(clippy::new_without_default, reason = "creating a lab has side effects (namespaces, veths); it is not a default value")]
    /// Creates the lab. Panics with a clear message on any failure (and tears down what was made).
    pub fn new() -> Lab {
        require_root();
        let t0 = Instant::now();
        for tool in ["ip", "timeout"] {
            if run(&["sh", "-c", &format!("command -v {tool}")])
                .stdout
                .is_empty()
            {
                panic!("lab tests need `{tool}` installed");
            }
        }
        let slot = {
            let _g = FileLock::acquire();
            STALE_ONCE.call_once(cleanup_stale_locked);
            Self::claim_slot()
        };
        let netns = format!("{NETNS_PREFIX}{slot}");
        let root_veth = format!("{ROOT_VETH_PREFIX}{slot}");
        let atk_veth = format!("{ATK_VETH_PREFIX}{slot}");
        let (target_net, target_net6) = slot_prefixes(slot);
        let s16 = slot as u16;
        let mut lab = Lab {
            id: slot,
            netns,
            root_veth,
            atk_veth,
            target_net,
            target_net6,
            target_ip: Ipv4Addr::new(10, 77, slot as u8, 10),
            target_ip6: Ipv6Addr::new(0xfd77, s16, 0, 0, 0, 0, 0, 0x10),
            attacker_ip: Ipv4Addr::new(10, 78, slot as u8, 2),
            attacker_ip6: Ipv6Addr::new(0xfd78, s16, 0, 0, 0, 0, 0, 0x2),
            root_mac: String::new(),
            atk_mac: String::new(),
            root_ifindex: 0,
            root_ll6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
            setup_time: Duration::ZERO,
            torn_down: AtomicBool::new(false),
        };
        // If setup panics, `lab` is dropped during unwinding and Drop tears everything down.
        lab.build();
        lab.setup_time = t0.elapsed();
        lab
    }

    fn claim_slot() -> u32 {
        // Caller holds the FileLock. Start at a pid-dependent offset to spread concurrent runs.
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = std::process::id();
        let start = proc_start_time(pid).unwrap_or(0);
        let base = pid.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
        let routes = root_routes();
        for i in 0..MAX_SLOT {
            let slot = (base.wrapping_add(i) % MAX_SLOT) + 1;
            // Skip slots whose prefixes the machine already uses for something else.
            let marks = [
                format!("10.77.{slot}."),
                format!("10.78.{slot}."),
                format!("fd77:{slot:x}:"),
                format!("fd78:{slot:x}:"),
            ];
            if marks.iter().any(|m| routes.contains(m.as_str())) {
                continue;
            }
            let path = state_file(slot);
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            let Ok(mut f) = f else { continue };
            let _ = writeln!(f, "pid={pid}\nstart={start}");
            // Leftovers that somehow lack a state file are ours to clear now.
            teardown_slot(slot);
            return slot;
        }
        panic!("no free lab slot (1..={MAX_SLOT}) under {STATE_DIR}; run cleanup_stale()?");
    }

    fn build(&mut self) {
        let (ns, rv, av) = (
            self.netns.clone(),
            self.root_veth.clone(),
            self.atk_veth.clone(),
        );
        let slot = self.id;
        must(&["ip", "netns", "add", &ns]);
        must(&[
            "ip", "link", "add", &rv, "type", "veth", "peer", "name", &av,
        ]);
        must(&["ip", "link", "set", &av, "netns", &ns]);

        // --- root side ----------------------------------------------------------------------
        // No auto link-local (would need DAD); fixed fe80::1 nodad instead.
        must(&["ip", "link", "set", &rv, "addrgenmode", "none"]);
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{rv}/accept_dad"), "0");
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{rv}/rp_filter"), "0");
        // Defence in depth: nothing arriving on the lab veth is ever forwarded off-box.
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{rv}/forwarding"), "0");
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{rv}/forwarding"), "0");
        must(&["ip", "link", "set", &rv, "up"]);
        must(&["ip", "-6", "addr", "add", "fe80::1/64", "dev", &rv, "nodad"]);
        let t6 = format!("{}/128", self.target_ip6);
        must(&["ip", "-6", "addr", "add", &t6, "dev", &rv, "nodad"]);
        // AnyIP: the root namespace owns the whole target prefixes.
        must(&[
            "ip",
            "route",
            "add",
            "table",
            "local",
            "local",
            &self.target_net,
            "dev",
            &rv,
        ]);
        must(&[
            "ip",
            "-6",
            "route",
            "add",
            "table",
            "local",
            "local",
            &self.target_net6,
            "dev",
            &rv,
        ]);
        // Return routes to the attacker.
        must(&[
            "ip",
            "route",
            "add",
            &format!("{}/32", self.attacker_ip),
            "dev",
            &rv,
        ]);
        must(&[
            "ip",
            "-6",
            "route",
            "add",
            &format!("{}/128", self.attacker_ip6),
            "via",
            "fe80::2",
            "dev",
            &rv,
        ]);

        // --- attacker side -----------------------------------------------------------------
        let nsx = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", ns.as_str()];
            v.extend_from_slice(args);
            must(&v)
        };
        let nsip = |args: &[&str]| {
            let mut v = vec!["ip", "-n", ns.as_str()];
            v.extend_from_slice(args);
            must(&v)
        };
        nsip(&["link", "set", "lo", "up"]);
        nsip(&["link", "set", &av, "addrgenmode", "none"]);
        nsx(&[
            "sh",
            "-c",
            &format!(
                "echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter && \
                 echo 0 > /proc/sys/net/ipv4/conf/default/rp_filter && \
                 echo 0 > /proc/sys/net/ipv4/conf/{av}/rp_filter && \
                 echo 0 > /proc/sys/net/ipv6/conf/{av}/accept_dad && \
                 echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && \
                 echo 0 > /proc/sys/net/ipv6/conf/{av}/disable_ipv6"
            ),
        ]);
        nsip(&["link", "set", &av, "up"]);
        nsip(&[
            "addr",
            "add",
            &format!("{}/32", self.attacker_ip),
            "dev",
            &av,
        ]);
        nsip(&["-6", "addr", "add", "fe80::2/64", "dev", &av, "nodad"]);
        nsip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/128", self.attacker_ip6),
            "dev",
            &av,
            "nodad",
        ]);
        nsip(&[
            "route",
            "add",
            &self.target_net,
            "dev",
            &av,
            "src",
            &self.attacker_ip.to_string(),
        ]);
        nsip(&[
            "-6",
            "route",
            "add",
            &self.target_net6,
            "via",
            "fe80::1",
            "dev",
            &av,
            "src",
            &self.attacker_ip6.to_string(),
        ]);

        self.root_mac = fs::read_to_string(format!("/sys/class/net/{rv}/address"))
            .unwrap_or_else(|e| panic!("cannot read MAC of {rv}: {e}"))
            .trim()
            .to_string();
        self.root_ifindex = fs::read_to_string(format!("/sys/class/net/{rv}/ifindex"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("cannot read ifindex of {rv}"));
        let out = nsx(&["cat", &format!("/sys/class/net/{av}/address")]);
        self.atk_mac = String::from_utf8_lossy(&out.stdout).trim().to_string();

        // Empty zmap blocklist (zmap's default one contains 10/8).
        let bl = format!("{STATE_DIR}/blocklist-{slot}.conf");
        fs::write(&bl, "").unwrap_or_else(|e| panic!("cannot write {bl}: {e}"));

        // Sanity check: the root side must be reachable (fails fast instead of odd scanner errors).
        let t = self.target_ip.to_string();
        let ok = (0..20).any(|_| {
            let o = self.exec_timeout(5, &["ping", "-c", "1", "-W", "1", "-n", &t]);
            o.status.success() || {
                std::thread::sleep(Duration::from_millis(50));
                false
            }
        });
        if !ok {
            panic!("lab {}: attacker cannot ping {} after setup", self.id, t);
        }
    }

    /// Path of an empty zmap blocklist file for this lab.
    pub fn zmap_blocklist(&self) -> String {
        format!("{STATE_DIR}/blocklist-{}.conf", self.id)
    }

    fn ns_command(&self, prefix: &[&str], args: &[&str]) -> Command {
        assert!(!args.is_empty(), "empty command");
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns])
            .args(prefix)
            .args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs `args` inside the attacker netns (bounded by `timeout` 120 s) and waits.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_timeout(DEFAULT_TIMEOUT_SECS, args)
    }

    /// Like [`Lab::exec`] with an explicit bound in seconds (SIGTERM, then SIGKILL 5 s later).
    pub fn exec_timeout(&self, secs: u32, args: &[&str]) -> Output {
        let s = secs.to_string();
        self.ns_command(&["timeout", "-k", "5", &s], args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {:?} in {}: {e}", args, self.netns))
    }

    /// Runs `args` inside the attacker netns in the background (no timeout wrapper, so the child
    /// pid is the command itself: `ip netns exec` execs). stdout/stderr are piped (read or drop
    /// them). Lab's Drop SIGKILLs everything still running in the netns.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.ns_command(&[], args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {:?} in {}: {e}", args, self.netns))
    }

    /// Runs `args` inside the attacker netns as `user` (setpriv: real+effective uid/gid of the
    /// user, its groups, no capabilities), bounded by 120 s.
    pub fn exec_as(&self, user: &str, args: &[&str]) -> Output {
        let (ru, rg) = (
            format!("--reuid={user}"),
            format!("--regid={}", user_gid(user)),
        );
        self.ns_command(
            &[
                "timeout",
                "-k",
                "5",
                &DEFAULT_TIMEOUT_SECS.to_string(),
                "setpriv",
                &ru,
                &rg,
                "--init-groups",
                "--",
            ],
            args,
        )
        .env("HOME", "/")
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?} as {user} in {}: {e}", args, self.netns))
    }

    /// Background version of [`Lab::exec_as`] (child pid is `setpriv`, which execs the command).
    pub fn spawn_as(&self, user: &str, args: &[&str]) -> Child {
        let (ru, rg) = (
            format!("--reuid={user}"),
            format!("--regid={}", user_gid(user)),
        );
        self.ns_command(&["setpriv", &ru, &rg, "--init-groups", "--"], args)
            .env("HOME", "/")
            .current_dir("/")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {:?} as {user} in {}: {e}", args, self.netns))
    }

    /// True iff `ip` is inside this lab's target prefixes (10.77.N.0/24 or fd77:N::/64).
    pub fn target_in_prefix(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => v4_in(a, Ipv4Addr::new(10, 77, self.id as u8, 0), 24),
            IpAddr::V6(a) => v6_in(
                a,
                Ipv6Addr::new(0xfd77, self.id as u16, 0, 0, 0, 0, 0, 0),
                64,
            ),
        }
    }

    /// Panics unless every target in `spec` (IPs or CIDRs separated by spaces/commas) lies wholly
    /// inside the lab prefixes. Hostnames, ranges and other nmap syntax are rejected.
    pub fn assert_targets(&self, spec: &str) {
        let items: Vec<&str> = spec.split([' ', ',']).filter(|s| !s.is_empty()).collect();
        assert!(!items.is_empty(), "empty scan target");
        for item in items {
            let (addr, len) = match item.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (item, None),
            };
            let ip: IpAddr = addr
                .parse()
                .unwrap_or_else(|_| panic!("scan target {item:?} is not an IP/CIDR (refusing)"));
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let min = if ip.is_ipv4() { 24 } else { 64 };
            let len: u32 = match len {
                Some(l) => l
                    .parse()
                    .unwrap_or_else(|_| panic!("bad prefix length in {item:?}")),
                None => max,
            };
            assert!(
                len >= min && len <= max && self.target_in_prefix(ip),
                "scan target {item:?} is outside the lab prefixes {} / {} (refusing)",
                self.target_net,
                self.target_net6
            );
        }
    }

    /// A listening TCP service on `target_ip:port` in the root namespace; echoes and closes.
    pub fn serve_tcp(&self, port: u16) -> Server {
        Server::start(SocketAddr::new(IpAddr::V4(self.target_ip), port))
    }

    /// Same as [`Lab::serve_tcp`] on `[target_ip6]:port`.
    pub fn serve_tcp6(&self, port: u16) -> Server {
        Server::start(SocketAddr::new(IpAddr::V6(self.target_ip6), port))
    }

    /// Any address of the lab prefixes (the root side owns them all).
    pub fn serve_tcp_on(&self, addr: SocketAddr) -> Server {
        assert!(
            self.target_in_prefix(addr.ip()),
            "{addr} is outside the lab prefix"
        );
        Server::start(addr)
    }

    // --- scanners --------------------------------------------------------------------------------

    /// `nmap <extra> <target>` in the attacker netns, bounded by 120 s (+ nmap --host-timeout).
    pub fn nmap(&self, extra: &[&str], target: &str) -> Output {
        self.assert_targets(target);
        for (i, a) in extra.iter().enumerate() {
            assert!(
                !["-iR", "-iL", "--resume", "--excludefile"].contains(a),
                "nmap option {a} not allowed in the lab"
            );
            let prev_takes_value =
                i > 0 && extra[i - 1].starts_with('-') && !extra[i - 1].contains('=');
            if !a.starts_with('-') && !prev_takes_value {
                if let Ok(ip) = a.split('/').next().unwrap_or("").parse::<IpAddr>() {
                    assert!(
                        self.target_in_prefix(ip),
                        "extra nmap arg {a} is outside the lab prefix"
                    );
                }
            }
        }
        let mut args: Vec<&str> = vec!["nmap"];
        args.extend_from_slice(extra);
        if target.contains(':') && !extra.contains(&"-6") {
            args.push("-6");
        }
        args.extend(["--host-timeout", "110s"]);
        args.extend(target.split([' ', ',']).filter(|s| !s.is_empty()));
        self.exec_timeout(DEFAULT_TIMEOUT_SECS, &args)
    }

    /// masscan over `target_cidr` (IPv4) from the attacker netns: raw packets to the root veth MAC.
    pub fn masscan(&self, ports: &str, target_cidr: &str, rate: u32) -> Output {
        self.assert_targets(target_cidr);
        assert!(
            rate > 0 && rate <= MAX_RATE,
            "masscan rate {rate} exceeds {MAX_RATE}"
        );
        let rate_s = rate.to_string();
        let ip = self.attacker_ip.to_string();
        let mut args = vec![
            "masscan",
            "-p",
            ports,
            "--rate",
            &rate_s,
            "-e",
            &self.atk_veth,
            "--adapter-ip",
            &ip,
            "--adapter-mac",
            &self.atk_mac,
            "--router-mac",
            &self.root_mac,
            "--wait",
            "2",
        ];
        args.extend(target_cidr.split([' ', ',']).filter(|s| !s.is_empty()));
        self.exec_timeout(DEFAULT_TIMEOUT_SECS, &args)
    }

    /// zmap TCP SYN scan of one port over `target_cidr` (IPv4) from the attacker netns.
    pub fn zmap(&self, port: u16, target_cidr: &str, rate: u32) -> Output {
        self.assert_targets(target_cidr);
        assert!(
            rate > 0 && rate <= MAX_RATE,
            "zmap rate {rate} exceeds {MAX_RATE}"
        );
        let (p, r) = (port.to_string(), rate.to_string());
        let ip = self.attacker_ip.to_string();
        let bl = self.zmap_blocklist();
        let mut args = vec![
            "zmap",
            "-M",
            "tcp_synscan",
            "-p",
            &p,
            "-r",
            &r,
            "-i",
            &self.atk_veth,
            "-S",
            &ip,
            "-G",
            &self.root_mac,
            "-b",
            &bl,
            "-c",
            "2",
            "-T",
            "1",
            "-o",
            "-",
            "--disable-syslog",
        ];
        args.extend(target_cidr.split([' ', ',']).filter(|s| !s.is_empty()));
        self.exec_timeout(DEFAULT_TIMEOUT_SECS, &args)
    }

    /// `hping3 --scan <ports> -S <target>` (bounded by 60 s).
    pub fn hping3_scan(&self, ports: &str, target: &str) -> Output {
        self.assert_targets(target);
        assert!(!target.contains('/'), "hping3 scans one host");
        self.exec_timeout(
            60,
            &[
                "hping3",
                "-I",
                &self.atk_veth,
                "--scan",
                ports,
                "-S",
                target,
            ],
        )
    }

    /// One SYN per spoofed source: `hping3 -S -c 1 -a SRC -p PORT target` for each (source, port)
    /// pair, all in parallel. The sources must be in the attacker's /24 (10.78.N.0/24) and need
    /// root-side /32 routes into the lab veth so the target's replies stay in the lab.
    pub fn hping3_spoofed_syns(&self, probes: &[(Ipv4Addr, u16)], target: &str) -> Output {
        self.assert_targets(target);
        assert!(!target.contains('/'), "hping3 probes one host");
        let mut script = String::new();
        for (src, port) in probes {
            let o = src.octets();
            assert!(
                o[0] == 10 && o[1] == 78 && u32::from(o[2]) == self.id && o[3] > 4,
                "spoofed source {src} is outside this lab's attacker /24 (or reserved)"
            );
            script.push_str(&format!(
                "hping3 -q -I {} -S -c 1 -a {src} -p {port} {target} >/dev/null 2>&1 &\n",
                self.atk_veth
            ));
        }
        script.push_str("wait\n");
        self.exec_timeout(60, &["bash", "-c", &script])
    }

    /// Python full-connect loop over `ports` (prints `open <port>` lines), as root.
    pub fn python_connect_loop(&self, ports: RangeInclusive<u16>, target: &str) -> Output {
        let script = self.connect_script(&ports, target);
        self.exec(&[python3(), "-c", &script])
    }

    /// Same as [`Lab::python_connect_loop`] as an unprivileged `user` (process attribution tests).
    pub fn python_connect_loop_as(
        &self,
        user: &str,
        ports: RangeInclusive<u16>,
        target: &str,
    ) -> Output {
        let script = self.connect_script(&ports, target);
        self.exec_as(user, &[python3(), "-c", &script])
    }

    fn connect_script(&self, ports: &RangeInclusive<u16>, target: &str) -> String {
        self.assert_targets(target);
        assert!(!target.contains('/'), "connect loop scans one host");
        let fam = if target.contains(':') {
            "AF_INET6"
        } else {
            "AF_INET"
        };
        format!(
            "import socket\n\
             for p in range({lo}, {hi}):\n\
             \x20   s = socket.socket(socket.{fam}, socket.SOCK_STREAM)\n\
             \x20   s.settimeout(0.5)\n\
             \x20   if s.connect_ex(('{target}', p)) == 0: print('open', p, flush=True)\n\
             \x20   s.close()\n\
             print('done', flush=True)\n",
            lo = ports.start(),
            hi = *ports.end() as u32 + 1,
        )
    }

    /// Starts `tcpdump -l -n -i <root veth> <filter>` in the ROOT namespace (sees exactly what the
    /// agent's XDP program sees). Call [`Capture::stop`] to get the captured lines.
    pub fn capture(&self, filter: &str) -> Capture {
        let mut args = vec!["-l", "-n", "-i", self.root_veth.as_str()];
        args.extend(filter.split_whitespace());
        let mut child = Command::new("tcpdump")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tcpdump: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                l2.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        // Wait for "listening on" so no early packet is missed.
        let mut err = child.stderr.take().expect("piped");
        let mut buf = [0u8; 256];
        let mut seen = String::new();
        while !seen.contains("listening on") {
            match err.read(&mut buf) {
                Ok(0) | Err(_) => panic!("tcpdump failed to start: {seen}"),
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        let drain = std::thread::spawn(move || {
            let _ = std::io::copy(&mut err, &mut std::io::sink());
        });
        Capture {
            child: Some(child),
            lines,
            threads: vec![reader, drain],
        }
    }

    /// Tears the lab down now (also done by Drop; idempotent, never panics).
    pub fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let _g = FileLock::acquire_nopanic();
        teardown_slot(self.id);
        let _ = fs::remove_file(state_file(self.id));
    }
}

/// A further target host of a [`Lab`] (fleet tests): its own veth pair between the lab's attacker
/// namespace and the root namespace, and its own target prefix (the `10.77.M.0/24` of another
/// claimed slot `M`, IPv4 only), so one scanner source reaches several hosts, each watched by its
/// own agent on `root_veth`. Replies to the attacker leave through the lab's own veth (one
/// return route per attacker address). Torn down on drop, and by the stale-lab cleanup (slot
/// state file) if the test process dies.
#[derive(Debug)]
pub struct LabHost {
    pub slot: u32,
    /// Root-namespace end (`swr<M>`): attach this host's agent here.
    pub root_veth: String,
    /// Attacker-side end (`swa<M>`), inside the lab's attacker namespace.
    pub atk_veth: String,
    /// "10.77.M.0/24": every address is local to the root namespace.
    pub target_net: String,
    /// 10.77.M.10
    pub target_ip: Ipv4Addr,
    torn_down: AtomicBool,
}

impl Lab {
    /// Adds another target host reachable from this lab's attacker namespace.
    pub fn add_host(&self) -> LabHost {
        let slot = {
            let _g = FileLock::acquire();
            Self::claim_slot()
        };
        let host = LabHost {
            slot,
            root_veth: format!("{ROOT_VETH_PREFIX}{slot}"),
            atk_veth: format!("{ATK_VETH_PREFIX}{slot}"),
            target_net: slot_prefixes(slot).0,
            target_ip: Ipv4Addr::new(10, 77, slot as u8, 10),
            torn_down: AtomicBool::new(false),
        };
        // A panic below drops `host`, which tears down what was made.
        let (rv, av, ns) = (host.root_veth.as_str(), host.atk_veth.as_str(), self.netns.as_str());
        must(&["ip", "link", "add", rv, "type", "veth", "peer", "name", av]);
        must(&["ip", "link", "set", av, "netns", ns]);
        must(&["ip", "link", "set", rv, "addrgenmode", "none"]);
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{rv}/rp_filter"), "0");
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{rv}/forwarding"), "0");
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{rv}/forwarding"), "0");
        must(&["ip", "link", "set", rv, "up"]);
        must(&["ip", "route", "add", "table", "local", "local", &host.target_net, "dev", rv]);
        must(&["ip", "-n", ns, "link", "set", av, "addrgenmode", "none"]);
        must(&["ip", "netns", "exec", ns, "sh", "-c", &format!("echo 0 > /proc/sys/net/ipv4/conf/{av}/rp_filter")]);
        must(&["ip", "-n", ns, "link", "set", av, "up"]);
        let src = self.attacker_ip.to_string();
        must(&["ip", "-n", ns, "route", "add", &host.target_net, "dev", av, "src", &src]);
        host
    }
}

impl LabHost {
    /// A TCP service on `target_ip:port` (see [`Lab::serve_tcp`]).
    pub fn serve_tcp(&self, port: u16) -> Server {
        Server::start(SocketAddr::new(IpAddr::V4(self.target_ip), port))
    }

    /// Tears the host down now (also done by Drop; idempotent, never panics).
    pub fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let _g = FileLock::acquire_nopanic();
        teardown_slot(self.slot);
        let _ = fs::remove_file(state_file(self.slot));
    }
}

impl Drop for LabHost {
    fn drop(&mut self) {
        self.teardown();
    }
}

impl FileLock {
    /// Best-effort lock for teardown paths (Drop must never panic).
    fn acquire_nopanic() -> Option<FileLock> {
        let _ = fs::create_dir_all(STATE_DIR);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(format!("{STATE_DIR}/.lock"))
            .ok()?;
        // SAFETY: valid fd owned by `f`.
        (unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0).then_some(FileLock(f))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn user_gid(user: &str) -> String {
    if user.bytes().all(|b| b.is_ascii_digit()) {
        return user.to_string();
    }
    let c = CString::new(user).unwrap_or_else(|_| panic!("bad user name {user:?}"));
    // SAFETY: getpwnam with a valid C string; we only read pw_gid before any other call.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        panic!("unknown user {user:?}");
    }
    // SAFETY: non-null pointer returned by getpwnam.
    unsafe { (*pw).pw_gid }.to_string()
}

/// Running tcpdump on the root veth; stops on drop.
pub struct Capture {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Capture {
    /// Lines captured so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Stops tcpdump (SIGINT, so buffered lines are flushed) and returns every line.
    pub fn stop(mut self) -> Vec<String> {
        self.halt();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.lines()
    }
    fn halt(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.halt();
    }
}

// ------------------------------------------------------------------------------------------------
// Server
// ------------------------------------------------------------------------------------------------

/// TCP service in the root namespace; accepts, echoes one read (≤ 200 ms), closes. Stops on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<std::sync::atomic::AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(addr: SocketAddr) -> Server {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
        l.set_nonblocking(true).expect("set_nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s2, a2) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        a2.fetch_add(1, Ordering::Relaxed);
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut buf = [0u8; 1024];
                        if let Ok(n) = c.read(&mut buf) {
                            let _ = c.write_all(&buf[..n]);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Server {
            addr,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Agent process
// ------------------------------------------------------------------------------------------------

#[derive(Default)]
struct AgentOut {
    alerts: Vec<serde_json::Value>,
    other_stdout: Vec<String>,
    stderr: String,
    ready: bool,
    stdout_eof: bool,
    stderr_eof: bool,
}

/// The scanwatch binary under test: one JSON alert per stdout line; readiness line
/// "scanwatch: ready" on stderr (or stdout).
pub struct AgentProc {
    child: Option<Child>,
    out: Arc<(Mutex<AgentOut>, Condvar)>,
    readers: Vec<JoinHandle<()>>,
}

/// Readiness marker the agent prints once attached.
pub const READY_MARKER: &str = "scanwatch: ready";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl AgentProc {
    /// Spawns the agent and waits (≤ 60 s) for the readiness line; panics with its stderr otherwise.
    pub fn start(bin: &Path, args: &[&str]) -> AgentProc {
        Self::start_with_env(bin, args, &[])
    }

    /// Like [`AgentProc::start`] with extra environment variables (e.g. RUST_LOG).
    pub fn start_with_env(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> AgentProc {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let out: Arc<(Mutex<AgentOut>, Condvar)> =
            Arc::new((Mutex::new(AgentOut::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let o1 = out.clone();
        let t1 = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (m, cv) = &*o1;
                let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
                if line.contains(READY_MARKER) {
                    g.ready = true;
                }
                match serde_json::from_str::<serde_json::Value>(line.trim()) {
                    Ok(v) if v.is_object() => g.alerts.push(v),
                    _ => g.other_stdout.push(line),
                }
                cv.notify_all();
            }
            let (m, cv) = &*o1;
            m.lock().unwrap_or_else(|e| e.into_inner()).stdout_eof = true;
            cv.notify_all();
        });
        let o2 = out.clone();
        let t2 = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (m, cv) = &*o2;
                let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
                if line.contains(READY_MARKER) {
                    g.ready = true;
                }
                g.stderr.push_str(&line);
                g.stderr.push('\n');
                cv.notify_all();
            }
            let (m, cv) = &*o2;
            m.lock().unwrap_or_else(|e| e.into_inner()).stderr_eof = true;
            cv.notify_all();
        });
        let mut agent = AgentProc {
            child: Some(child),
            out,
            readers: vec![t1, t2],
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            {
                let (m, cv) = &*agent.out;
                let g = m.lock().unwrap_or_else(|e| e.into_inner());
                if g.ready {
                    break;
                }
                let (g, _) = cv
                    .wait_timeout(g, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner());
                if g.ready {
                    break;
                }
            }
            if let Some(st) = agent.try_wait() {
                agent.wait_eof(Duration::from_secs(2));
                panic!(
                    "agent {} exited ({st}) before printing {READY_MARKER:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
                    bin.display(),
                    agent.stderr(),
                    agent.other_stdout().join("\n")
                );
            }
            if Instant::now() > deadline {
                let err = agent.stderr();
                agent.kill_now();
                panic!(
                    "agent {} not ready ({READY_MARKER:?}) within {:?}\n--- stderr ---\n{err}",
                    bin.display(),
                    READY_TIMEOUT
                );
            }
        }
        agent
    }

    /// Waits (bounded) until both output pipes reached EOF, so captured output is complete.
    fn wait_eof(&self, max: Duration) {
        let deadline = Instant::now() + max;
        let (m, cv) = &*self.out;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        while !(g.stdout_eof && g.stderr_eof) {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// OS pid of the agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the agent process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Waits until an alert satisfying `pred` is seen (including ones already received).
    pub fn wait_for(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.out;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = g.alerts.iter().find(|v| pred(v)) {
                return Some(v.clone());
            }
            let now = Instant::now();
            if now >= deadline || g.stdout_eof {
                return None;
            }
            g = cv
                .wait_timeout(g, (deadline - now).min(Duration::from_millis(200)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Alerts (stdout lines that parse as JSON objects) so far.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        self.out
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .alerts
            .clone()
    }

    /// Stdout lines that were not JSON objects.
    pub fn other_stdout(&self) -> Vec<String> {
        self.out
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .other_stdout
            .clone()
    }

    /// Captured stderr so far.
    pub fn stderr(&self) -> String {
        self.out
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stderr
            .clone()
    }

    /// Sends `sig` to the agent (e.g. libc::SIGHUP).
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGINT, wait up to 10 s (then SIGKILL); returns all alerts and the whole stderr.
    pub fn stop(mut self) -> (Vec<serde_json::Value>, String) {
        self.shutdown(Duration::from_secs(10));
        // Bounded: a grandchild holding the pipes open must not hang the test.
        self.wait_eof(Duration::from_secs(5));
        for t in self.readers.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
        (self.alerts(), self.stderr())
    }

    /// SIGINT and wait; returns the exit status (None if it had to be killed).
    fn shutdown(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // Short grace so the agent can detach cleanly; then SIGKILL. Never panics.
        let _ = self.shutdown(Duration::from_secs(3));
    }
}

/// Path to the agent binary: `$SCANWATCH_BIN`, else `<target dir>/release/scanwatch` (target dir
/// derived from the running test executable, then from the workspace). Panics if missing.
pub fn scanwatch_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SCANWATCH_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            panic!("SCANWATCH_BIN={} does not exist", p.display());
        }
        return p;
    }
    let mut candidates = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("release/scanwatch"));
    }
    // test exe: <target>/<profile>/deps/<name>-<hash>
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(target.join("release/scanwatch"));
        }
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    candidates.push(ws.join("target/release/scanwatch"));
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "scanwatch binary not found (looked at {:?}); build it with cargo build --release -p scanwatch \
         or set SCANWATCH_BIN",
        candidates
    );
}

// ------------------------------------------------------------------------------------------------
// Assertion helpers shared by the lab tests
// ------------------------------------------------------------------------------------------------

/// One alert per line.
/// An agent watching the lab's root-side veth (`run --interface`), default config otherwise.
pub fn start_lab_agent(lab: &Lab) -> AgentProc {
    AgentProc::start(&scanwatch_bin(), &["run", "--interface", &lab.root_veth])
}

/// The alert is an `outbound_scan`.
pub fn is_outbound(v: &serde_json::Value) -> bool {
    v["kind"] == "outbound_scan"
}

/// The alert's `source.process` object (outbound alerts).
pub fn proc_of(v: &serde_json::Value) -> &serde_json::Value {
    &v["source"]["process"]
}

/// Waits for a spawned child (bounded: SIGKILL after `secs`), with its output.
pub fn finish_child(child: Child, secs: u64) -> Output {
    let pid = child.id() as i32;
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if d2.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !d2.load(Ordering::Relaxed) {
            // SAFETY: plain kill(2) on our own (still unreaped) child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().expect("wait for child");
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    out
}

pub fn dump(alerts: &[serde_json::Value]) -> String {
    alerts.iter().map(|a| a.to_string()).collect::<Vec<_>>().join("\n")
}

/// The command succeeded; otherwise panic with its status and output.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The awaited alert, or a panic showing every alert so far and the agent's stderr.
pub fn expect_alert<T>(o: Option<T>, what: &str, agent: &AgentProc) -> T {
    o.unwrap_or_else(|| panic!("expected {what}; alerts so far:\n{}\nagent stderr:\n{}", dump(&agent.alerts()), agent.stderr()))
}
