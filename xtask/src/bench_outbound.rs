//! `cargo xtask bench-outbound`: what the agent's outbound hooks cost a process that sends UDP
//! datagrams (unconnected `sendto`), measured as that process's datagrams/s without and with the
//! agent in the same run, plus the agent's own CPU over the sender's window.
//!
//! Lab (../shared/LAB.md): two network namespaces this command makes, `swob-s` (the sender and
//! the agent, XDP on its veth `swob-s0`) and `swob-p` (the peers), joined by one veth pair and
//! nothing else: no default route, no NAT, no bridge. The peer namespace owns all of
//! 10.83.0.0/22 as local addresses (AnyIP route), the sender is 10.83.255.1, so every datagram
//! stays in the two namespaces. They are deleted on exit, on error and on Ctrl-C, and leftovers of
//! a killed run are removed at the next start (an exclusive lock keeps two runs apart).
//!
//! The sender is this binary (`xtask udp-blast`, hidden), re-executed inside the sender
//! namespace: plain `libc::sendto` on one unconnected UDP socket, 32-byte payloads, for a fixed
//! time, at full speed or paced (sleep, then spin to each datagram's due time). Rows:
//! * `one peer`: every datagram to one address:port (a media / QUIC-like stream);
//! * `1000 peers`: round-robin over 1,000 addresses of the peer prefix, one port;
//! * `dns-like`: the sender binds port 53, receives one query from each of 1,000 client
//!   (address, port) pairs of the peer namespace (through the watched veth), then replies to
//!   them round-robin;
//! * the same three paced at `--rate` (default 100,000/s: the target is a process at
//!   100k datagrams/s losing ≤ 5 % of its rate with the agent using ≤ 5 % of a core).
//!
//! Every round measures every row without the agent and, with the agent started (`scanwatch run
//! -i swob-s0`, default configuration, the same invocation as the lab tests), again; every
//! second round starts with the agent. The best rate of each side over the rounds is reported,
//! the agent's CPU (utime + stime from /proc/<pid>/stat between the sender's start and end) as
//! the mean over rounds, with the process events written / lost during each row (the agent's
//! metrics endpoint) and the `outbound_scan` lines naming each row's sender (started from a shell
//! of its own, so that it is its own actor for the agent).
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const NS_SEND: &str = "swob-s";
const NS_PEER: &str = "swob-p";
const IF_SEND: &str = "swob-s0";
const IF_PEER: &str = "swob-p0";
/// The lab prefix (checked unused by the root namespace before anything is made).
const PREFIX_MARK: &str = "10.83.";
const SENDER_IP: Ipv4Addr = Ipv4Addr::new(10, 83, 255, 1);
const PEER_GW: Ipv4Addr = Ipv4Addr::new(10, 83, 255, 2);
const PEER_NET: &str = "10.83.0.0/22";
/// First peer address; peers are PEER_BASE + i (i < 1,000 stays inside the /22).
const PEER_BASE: Ipv4Addr = Ipv4Addr::new(10, 83, 0, 1);
const PORT_ONE: u16 = 4433;
const PORT_RR: u16 = 4434;
const DNS_PORT: u16 = 53;
const PEERS: u32 = 1000;
const CLIENTS: u32 = 1000;
const LOCK: &str = "/run/scanwatch-lab/bench-outbound.lock";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub struct Opts {
    pub secs: f64,
    pub rounds: u32,
    pub rate: u64,
    /// Extra arguments after `scanwatch run -i swob-s0` (e.g. `--no-outbound`: the cost of the
    /// XDP program alone).
    pub agent_args: Vec<String>,
}

// ------------------------------------------------------------------------------------------------
// the sender (hidden subcommand `udp-blast`, runs inside the sender namespace)
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every datagram to one peer.
    One,
    /// Round-robin over `peers` consecutive addresses.
    Rr,
    /// Bind `port`, take one query from each of `peers` clients, reply to them round-robin.
    Dns,
}

pub struct Blast {
    pub mode: Mode,
    pub dst: Ipv4Addr,
    pub port: u16,
    pub peers: u32,
    pub secs: f64,
    pub rate: u64,
}

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = port.to_be();
    sa.sin_addr = libc::in_addr { s_addr: u32::from(ip).to_be() };
    sa
}

fn udp_socket() -> Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket(AF_INET, SOCK_DGRAM): {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind(fd: &OwnedFd, ip: Ipv4Addr, port: u16) -> Result<()> {
    let sa = sockaddr(ip, port);
    // SAFETY: valid fd and a sockaddr_in of the size passed.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), &sa as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in>() as u32)
    };
    if rc != 0 {
        bail!("bind {ip}:{port}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_int_opt(fd: &OwnedFd, level: i32, name: i32, v: i32) {
    // SAFETY: valid fd, pointer to an int of the size passed. Failure only changes buffer sizes.
    unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, &v as *const i32 as *const libc::c_void, 4);
    }
}

/// The sender itself: prints one JSON line (`sent`, `errors`, `secs`, `rate`, `clients`).
pub fn blast(b: Blast) -> Result<()> {
    let fd = udp_socket()?;
    let mut dsts: Vec<libc::sockaddr_in> = Vec::new();
    match b.mode {
        Mode::One => dsts.push(sockaddr(b.dst, b.port)),
        Mode::Rr => {
            for i in 0..b.peers {
                dsts.push(sockaddr(Ipv4Addr::from(u32::from(b.dst) + i), b.port));
            }
        }
        Mode::Dns => {
            bind(&fd, Ipv4Addr::UNSPECIFIED, b.port)?;
            set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
            let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
            // SAFETY: valid fd, pointer to a timeval of the size passed.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                );
            }
            println!("ready");
            std::io::stdout().flush()?;
            let mut seen = std::collections::HashSet::new();
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut buf = [0u8; 512];
            while (seen.len() as u32) < b.peers && Instant::now() < deadline {
                // SAFETY: sockaddr_in is plain data.
                let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_in>() as u32;
                // SAFETY: valid fd, buffer and address storage of the sizes passed.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                        &mut from as *mut _ as *mut libc::sockaddr,
                        &mut len,
                    )
                };
                if n >= 0 && seen.insert((from.sin_addr.s_addr, from.sin_port)) {
                    dsts.push(from);
                }
            }
            if dsts.is_empty() {
                bail!("dns-like sender: no query arrived on port {} within 15 s", b.port);
            }
        }
    }
    // A 32-byte datagram (a small DNS answer / media packet).
    let payload = [0x5au8; 32];
    let salen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    let total = Duration::from_secs_f64(b.secs);
    let (mut sent, mut errors) = (0u64, 0u64);
    let n = dsts.len();
    let mut i = 0usize;
    let start = Instant::now();
    let mut now = start;
    while now - start < total {
        if b.rate > 0 {
            // Due time of datagram number `sent + errors`: sleep while far, spin when close.
            let due = start + Duration::from_secs_f64((sent + errors) as f64 / b.rate as f64);
            if due > now {
                let gap = due - now;
                if gap > Duration::from_micros(200) {
                    std::thread::sleep(gap - Duration::from_micros(100));
                }
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
            }
        }
        let d = &dsts[i];
        i += 1;
        if i == n {
            i = 0;
        }
        // SAFETY: valid fd, payload and sockaddr_in of the sizes passed.
        let rc = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                payload.as_ptr() as *const libc::c_void,
                payload.len(),
                0,
                d as *const _ as *const libc::sockaddr,
                salen,
            )
        };
        if rc < 0 {
            errors += 1;
        } else {
            sent += 1;
        }
        now = Instant::now();
    }
    let secs = (now - start).as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"sent": sent, "errors": errors, "secs": secs, "rate": sent as f64 / secs, "destinations": n, "pid": std::process::id()})
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// the lab
// ------------------------------------------------------------------------------------------------

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

fn must(args: &[&str]) -> Result<()> {
    let o = sh(args);
    if !o.status.success() {
        bail!("{args:?} failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

fn kill_ns(ns: &str) {
    if !Path::new(&format!("/run/netns/{ns}")).exists() {
        return;
    }
    let o = sh(&["ip", "netns", "pids", ns]);
    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
        if let Ok(p) = pid.parse::<i32>() {
            // SAFETY: kill(2) of a process inside a namespace this command created.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    let _ = sh(&["ip", "netns", "del", ns]);
}

/// The two namespaces; dropping it kills what still runs in them and deletes them (the veth pair
/// and every route go with them).
struct Lab {
    _lock: File,
}

impl Lab {
    fn new() -> Result<Lab> {
        std::fs::create_dir_all("/run/scanwatch-lab").context("creating /run/scanwatch-lab")?;
        let lock = File::options().create(true).truncate(false).write(true).open(LOCK).with_context(|| format!("opening {LOCK}"))?;
        // SAFETY: valid fd.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!("another bench-outbound run holds {LOCK}");
        }
        // Under the lock any existing bench namespace is a leftover of a killed run.
        kill_ns(NS_SEND);
        kill_ns(NS_PEER);
        let routes = String::from_utf8_lossy(&sh(&["ip", "-o", "route", "show", "table", "all"]).stdout).into_owned();
        if routes.contains(PREFIX_MARK) {
            bail!("the root namespace routes {PREFIX_MARK}0.0/16, this bench's lab prefix: refusing to use it");
        }
        let lab = Lab { _lock: lock };
        lab.build()?;
        Ok(lab)
    }

    fn build(&self) -> Result<()> {
        let (s, p) = (NS_SEND, NS_PEER);
        for ns in [s, p] {
            must(&["ip", "netns", "add", ns])?;
            must(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        must(&["ip", "-n", s, "link", "add", IF_SEND, "type", "veth", "peer", "name", IF_PEER, "netns", p])?;
        for (ns, dev) in [(s, IF_SEND), (p, IF_PEER)] {
            must(&["ip", "netns", "exec", ns, "sh", "-c", &format!(
                "echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter && echo 0 > /proc/sys/net/ipv4/conf/default/rp_filter \
                 && echo 0 > /proc/sys/net/ipv4/conf/{dev}/rp_filter && echo 0 > /proc/sys/net/ipv4/conf/{dev}/forwarding"
            )])?;
            must(&["ip", "-n", ns, "link", "set", dev, "addrgenmode", "none"])?;
            must(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        let (sip, gw) = (SENDER_IP.to_string(), PEER_GW.to_string());
        // Sender side: its address, the peer's, the peer prefix through the peer (one neighbour).
        must(&["ip", "-n", s, "addr", "add", &format!("{sip}/32"), "dev", IF_SEND])?;
        must(&["ip", "-n", s, "route", "add", &format!("{gw}/32"), "dev", IF_SEND, "src", &sip])?;
        must(&["ip", "-n", s, "route", "add", PEER_NET, "via", &gw, "dev", IF_SEND, "src", &sip])?;
        // Peer side: owns the whole /22 (AnyIP), routes back to the sender only.
        must(&["ip", "-n", p, "addr", "add", &format!("{gw}/32"), "dev", IF_PEER])?;
        must(&["ip", "-n", p, "route", "add", "table", "local", "local", PEER_NET, "dev", "lo"])?;
        must(&["ip", "-n", p, "route", "add", &format!("{sip}/32"), "dev", IF_PEER, "src", &gw])?;
        let ok = (0..40).any(|_| {
            sh(&["ip", "netns", "exec", s, "ping", "-c", "1", "-W", "1", "-n", "10.83.0.1"]).status.success() || {
                std::thread::sleep(Duration::from_millis(100));
                false
            }
        });
        if !ok {
            bail!("lab: {s} cannot ping 10.83.0.1 in {p}");
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        kill_ns(NS_SEND);
        kill_ns(NS_PEER);
    }
}

/// Runs `f` on a thread moved into namespace `ns` (sockets it creates belong to that namespace
/// for their whole life, whichever thread uses them later).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let nsf = File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns(2) of this thread only, with a namespace file descriptor.
            if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
    })
}

/// Peer-side sockets: bound, never read (datagrams beyond the small buffer are dropped on
/// arrival, no ICMP is generated). `clients` are the dns-like row's query senders.
struct Peers {
    _sinks: Vec<OwnedFd>,
    clients: Vec<OwnedFd>,
}

fn peers() -> Result<Peers> {
    in_netns(NS_PEER, || {
        let mut sinks = Vec::new();
        for port in [PORT_ONE, PORT_RR] {
            let fd = udp_socket()?;
            set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4096);
            bind(&fd, Ipv4Addr::UNSPECIFIED, port)?;
            sinks.push(fd);
        }
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let fd = udp_socket()?;
            set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4096);
            // 500 client addresses, two ports (ephemeral) each: 1,000 (address, port) pairs.
            bind(&fd, Ipv4Addr::from(u32::from(PEER_BASE) + i / 2), 0)?;
            clients.push(fd);
        }
        Ok(Peers { _sinks: sinks, clients })
    })
}

impl Peers {
    /// One DNS-query-sized datagram from every client to the sender's port 53.
    fn send_queries(&self) {
        let to = sockaddr(SENDER_IP, DNS_PORT);
        let q = [0x11u8; 40];
        for (i, c) in self.clients.iter().enumerate() {
            // SAFETY: valid fd, buffer and sockaddr_in of the sizes passed.
            unsafe {
                libc::sendto(
                    c.as_raw_fd(),
                    q.as_ptr() as *const libc::c_void,
                    q.len(),
                    0,
                    &to as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
            }
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// the agent
// ------------------------------------------------------------------------------------------------

struct Agent {
    child: Child,
    alerts: Arc<Mutex<Vec<serde_json::Value>>>,
    stderr: Arc<Mutex<String>>,
    err_reader: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn start(bin: &Path, extra: &[String]) -> Result<Agent> {
        // `ip netns exec` remounts /sys for the namespace, which hides tracefs: mount it in the
        // private mount namespace `ip netns exec` made, then exec the agent (same pid).
        let script = "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing; exec \"$0\" \"$@\"";
        let mut child = Command::new("ip")
            .args(["netns", "exec", NS_SEND, "sh", "-c", script])
            .arg(bin)
            .args(["run", "-i", IF_SEND])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let alerts = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        let a2 = alerts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    a2.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                }
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let e2 = stderr.clone();
        let err_reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("scanwatch: ready") {
                    let _ = tx.send(());
                }
                let mut g = e2.lock().unwrap_or_else(|e| e.into_inner());
                g.push_str(&line);
                g.push('\n');
            }
        });
        let mut agent = Agent { child, alerts, stderr, err_reader: Some(err_reader) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                break;
            }
            if let Ok(Some(st)) = agent.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                bail!("agent exited ({st}) before it was ready:\n{}", agent.stderr());
            }
            if Instant::now() > deadline || INTERRUPTED.load(Ordering::SeqCst) {
                bail!("agent not ready within 60 s:\n{}", agent.stderr());
            }
        }
        Ok(agent)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// outbound_scan alert lines naming process `tgid`.
    fn alerts_for(&self, tgid: u32) -> usize {
        self.alerts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|v| v["kind"] == "outbound_scan" && v["source"]["process"]["tgid"].as_u64() == Some(u64::from(tgid)))
            .count()
    }

    /// SIGINT, wait ≤ 10 s, then SIGKILL; then the whole stderr is read (its exit line).
    fn stop(&mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(t) = self.err_reader.take() {
            let _ = t.join();
        }
    }

    /// The agent's process-event counters (events written to the ring buffer, events lost because
    /// it was full), from its metrics endpoint (127.0.0.1:9464 of the sender namespace).
    fn proc_counters(&self) -> Option<(u64, u64)> {
        let text = in_netns(NS_SEND, || {
            use std::io::Read;
            let mut c = std::net::TcpStream::connect_timeout(&"127.0.0.1:9464".parse()?, Duration::from_secs(2))?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            c.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut s = String::new();
            c.read_to_string(&mut s)?;
            Ok(s)
        })
        .ok()?;
        let get = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|v| v as u64)
        };
        Some((get("scanwatch_process_events_total")?, get("scanwatch_process_events_dropped_total")?))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Other scanwatch agents on the machine: their hooks are system-wide, so they load this bench's
/// sender too (both sides of every row).
fn other_agents(own: Option<u32>) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            if Some(pid) == own {
                continue;
            }
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            if exe.file_name().is_some_and(|n| n == "scanwatch") && args.get(1).is_some_and(|a| *a == b"run") {
                v.push(pid);
            }
        }
    }
    v
}

// ------------------------------------------------------------------------------------------------
// the bench
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Row {
    name: &'static str,
    mode: Mode,
    paced: bool,
}

const ROWS: [Row; 6] = [
    Row { name: "one peer", mode: Mode::One, paced: false },
    Row { name: "1000 peers round-robin", mode: Mode::Rr, paced: false },
    Row { name: "dns-like, 1000 clients", mode: Mode::Dns, paced: false },
    Row { name: "one peer", mode: Mode::One, paced: true },
    Row { name: "1000 peers round-robin", mode: Mode::Rr, paced: true },
    Row { name: "dns-like, 1000 clients", mode: Mode::Dns, paced: true },
];

#[derive(Default, Clone)]
struct Sample {
    rate: f64,
    sent: u64,
    errors: u64,
    secs: f64,
    destinations: u64,
    /// Agent CPU over the sender's window, % of one core (with the agent only).
    agent_cpu: Option<f64>,
    /// outbound_scan alert lines naming the sender (with the agent only).
    alerts: Option<usize>,
    /// Process events the kernel wrote / dropped (ring buffer full) during the row (with the agent
    /// only; every process on the machine counts, the sender's datagrams are nearly all of them).
    events: Option<u64>,
    events_dropped: Option<u64>,
}

fn one_sample(exe: &Path, row: Row, o: &Opts, peers: &Peers, agent: Option<&Agent>) -> Result<Sample> {
    interrupted()?;
    let (dst, port) = match row.mode {
        Mode::One => (PEER_BASE, PORT_ONE),
        Mode::Rr => (PEER_BASE, PORT_RR),
        Mode::Dns => (SENDER_IP, DNS_PORT),
    };
    let rate = if row.paced { o.rate } else { 0 };
    let mode = match row.mode {
        Mode::One => "one",
        Mode::Rr => "rr",
        Mode::Dns => "dns",
    };
    // Started from its own shell: the agent groups processes by (uid, executable, parent), so
    // each row's sender is its own actor (a row's alerts are not an earlier row's incident).
    let mut child = Command::new("ip")
        .args(["netns", "exec", NS_SEND, "sh", "-c", "\"$0\" \"$@\" & wait $!"])
        .arg(exe)
        .args(["udp-blast", "--mode", mode, "--dst", &dst.to_string(), "--port", &port.to_string()])
        .args(["--peers", &PEERS.to_string(), "--secs", &o.secs.to_string(), "--rate", &rate.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the udp-blast sender")?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    if row.mode == Mode::Dns {
        match lines.next() {
            Some(Ok(l)) if l == "ready" => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("dns-like sender did not get ready: {other:?}");
            }
        }
        peers.send_queries();
    }
    // The window: the sender's first datagram is close to this (dns-like: once its queries are
    // in, which takes a few ms after the last one was sent).
    let ev0 = agent.and_then(|a| a.proc_counters());
    let cpu0 = agent.and_then(|a| cpu_ticks(a.pid()));
    let t0 = Instant::now();
    let line = lines.next();
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = agent.and_then(|a| cpu_ticks(a.pid()));
    let st = child.wait()?;
    let line = match line {
        Some(Ok(l)) => l,
        _ => bail!("udp-blast ({}) printed no result ({st})", row.name),
    };
    let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("udp-blast output {line:?}"))?;
    let pid = v["pid"].as_u64().unwrap_or(0) as u32;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let agent_cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some((b - a) as f64 / hz / window * 100.0),
        _ => None,
    };
    // Alerts of the row: give the agent a moment to emit what the window raised.
    let alerts = agent.map(|a| {
        std::thread::sleep(Duration::from_millis(1500));
        a.alerts_for(pid)
    });
    let ev1 = agent.and_then(|a| a.proc_counters());
    let (events, events_dropped) = match (ev0, ev1) {
        (Some(a), Some(b)) => (Some(b.0.saturating_sub(a.0)), Some(b.1.saturating_sub(a.1))),
        _ => (None, None),
    };
    Ok(Sample {
        rate: v["rate"].as_f64().unwrap_or(0.0),
        sent: v["sent"].as_u64().unwrap_or(0),
        errors: v["errors"].as_u64().unwrap_or(0),
        secs: v["secs"].as_f64().unwrap_or(0.0),
        destinations: v["destinations"].as_u64().unwrap_or(0),
        agent_cpu,
        alerts,
        events,
        events_dropped,
    })
}

fn sample_json(s: &Sample) -> serde_json::Value {
    serde_json::json!({
        "rate": s.rate, "sent": s.sent, "errors": s.errors, "secs": s.secs, "destinations": s.destinations,
        "agent_cpu_pct": s.agent_cpu, "outbound_scan_alert_lines": s.alerts,
        "proc_events": s.events, "proc_events_dropped": s.events_dropped,
    })
}

pub fn run(root: &Path, target: &Path, bin: &Path, o: &Opts) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-outbound needs root (network namespaces, the agent's eBPF programs)");
    }
    if !bin.is_file() {
        bail!("agent binary {} does not exist", bin.display());
    }
    if o.secs < 1.0 || o.rounds == 0 || o.rate == 0 {
        bail!("--secs must be ≥ 1, --rounds ≥ 1, --rate ≥ 1");
    }
    let exe = std::env::current_exe().context("current_exe")?;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let commit = crate::output(Command::new("git").current_dir(root).args(["rev-parse", "--short", "HEAD"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let others = other_agents(None);
    if !others.is_empty() {
        eprintln!(
            "xtask: WARNING other scanwatch agents run on this machine (pids {others:?}): their outbound hooks load the \
             sender in both columns"
        );
    }
    let t_all = Instant::now();
    let lab = Lab::new()?;
    let peers = peers()?;
    eprintln!("xtask: lab up ({NS_SEND} <-> {NS_PEER}), agent {}", bin.display());
    let mut without: BTreeMap<usize, Vec<Sample>> = BTreeMap::new();
    let mut with: BTreeMap<usize, Vec<Sample>> = BTreeMap::new();
    let mut agent_err = String::new();
    let mut counters = Vec::new();
    let load0 = loadavg();
    for round in 0..o.rounds {
        // Rounds alternate the order (without → with, then with → without) so a drift of the
        // machine's load during the run does not always favour the same side.
        let agent_first = round % 2 == 1;
        for phase in 0..2 {
            interrupted()?;
            if (phase == 0) != agent_first {
                for (i, r) in ROWS.iter().enumerate() {
                    let s = one_sample(&exe, *r, o, &peers, None)?;
                    eprintln!("xtask: round {} without agent: {:<24} {:>8} {:>10.0}/s", round + 1, r.name, pace(r, o), s.rate);
                    without.entry(i).or_default().push(s);
                }
                continue;
            }
            let mut agent = Agent::start(bin, &o.agent_args)?;
            // Let the agent finish its start-up work (first sweeps) before measuring.
            std::thread::sleep(Duration::from_secs(2));
            for (i, r) in ROWS.iter().enumerate() {
                let s = one_sample(&exe, *r, o, &peers, Some(&agent))?;
                eprintln!(
                    "xtask: round {} with agent:    {:<24} {:>8} {:>10.0}/s, agent {:.1} % of a core, {} process events, {} dropped",
                    round + 1,
                    r.name,
                    pace(r, o),
                    s.rate,
                    s.agent_cpu.unwrap_or(f64::NAN),
                    s.events.map_or("?".into(), |v| v.to_string()),
                    s.events_dropped.map_or("?".into(), |v| v.to_string()),
                );
                with.entry(i).or_default().push(s);
            }
            agent.stop();
            agent_err = agent.stderr();
            // The agent's exit line: `scanwatch: stopped (...); counters {...}`.
            if let Some(c) = agent_err
                .lines()
                .find_map(|l| l.split_once("counters ").and_then(|(_, j)| serde_json::from_str::<serde_json::Value>(j).ok()))
            {
                counters.push(c);
            }
        }
    }
    let load1 = loadavg();
    drop(peers);
    drop(lab);

    let best = |v: &Vec<Sample>| v.iter().cloned().fold(Sample::default(), |a, s| if s.rate > a.rate { s } else { a });
    let mean_cpu = |v: &Vec<Sample>| v.iter().filter_map(|s| s.agent_cpu).sum::<f64>() / v.len().max(1) as f64;
    let max_cpu = |v: &Vec<Sample>| v.iter().filter_map(|s| s.agent_cpu).fold(0.0, f64::max);
    println!(
        "outbound cost: UDP datagrams/s of one sender (32-byte unconnected sendto), without / with the agent \
         ({}{}; worktree at {commit}), best of {} rounds of {} s; agent CPU = mean over rounds",
        bin.display(),
        if o.agent_args.is_empty() { String::new() } else { format!(" run -i {IF_SEND} {}", o.agent_args.join(" ")) },
        o.rounds, o.secs
    );
    println!(
        "{:<24} {:>9} {:>12} {:>12} {:>7} {:>12} {:>9} {:>7}  target (≤ 5 % rate loss, ≤ 5 % of a core)",
        "row", "pacing", "without /s", "with /s", "ratio", "agent % core", "ev lost %", "alerts"
    );
    let mut rows_json = Vec::new();
    for (i, r) in ROWS.iter().enumerate() {
        let (wo, wi) = (&without[&i], &with[&i]);
        let (b0, b1) = (best(wo), best(wi));
        let ratio = if b0.rate > 0.0 { b1.rate / b0.rate } else { 0.0 };
        let cpu = mean_cpu(wi);
        let alerts: usize = wi.iter().filter_map(|s| s.alerts).max().unwrap_or(0);
        let met = ratio >= 0.95 && cpu <= 5.0;
        // Share of the kernel's process events lost to a full ring buffer, over the rounds.
        let (ev, lost) = wi.iter().fold((0u64, 0u64), |a, s| (a.0 + s.events.unwrap_or(0), a.1 + s.events_dropped.unwrap_or(0)));
        let lost_pct = if ev + lost > 0 { lost as f64 * 100.0 / (ev + lost) as f64 } else { f64::NAN };
        println!(
            "{:<24} {:>9} {:>12.0} {:>12.0} {:>7.3} {:>12.1} {:>9.1} {:>7}  {}",
            r.name,
            pace(r, o),
            b0.rate,
            b1.rate,
            ratio,
            cpu,
            lost_pct,
            alerts,
            if met { "met" } else { "NOT met" }
        );
        rows_json.push(serde_json::json!({
            "row": r.name, "paced_rate": if r.paced { Some(o.rate) } else { None },
            "without_rate": b0.rate, "with_rate": b1.rate, "ratio": ratio,
            "agent_cpu_pct_mean": cpu, "agent_cpu_pct_max": max_cpu(wi), "proc_events_lost_pct": lost_pct, "target_met": met,
            "without": wo.iter().map(sample_json).collect::<Vec<_>>(),
            "with": wi.iter().map(sample_json).collect::<Vec<_>>(),
        }));
    }
    let notes: Vec<&str> = agent_err.lines().filter(|l| l.contains("WARNING")).collect();
    for n in &notes {
        println!("agent: {n}");
    }
    for (i, c) in counters.iter().enumerate() {
        println!(
            "agent run {}: {} process events read, {} dropped (ring buffer full), {} alert lines",
            i + 1,
            c["proc_events"],
            c["proc_events_dropped"],
            c["alerts_written"]
        );
    }
    let json = serde_json::json!({
        "bench": "bench-outbound", "worktree_commit": commit, "agent_args": o.agent_args,
        "agent_sha256": crate::output(Command::new("sha256sum").arg(bin)).and_then(|o| o.split_whitespace().next().map(str::to_string)), "agent": bin.display().to_string(), "secs": o.secs,
        "rounds": o.rounds, "paced_rate": o.rate, "peers": PEERS, "dns_clients": CLIENTS,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_start": load0, "loadavg_end": load1, "other_agents": others, "agent_warnings": notes, "agent_counters": counters, "rows": rows_json,
        "wall_secs": t_all.elapsed().as_secs_f64(),
    });
    println!("load average (1 min) at start {load0:.2}, at end {load1:.2}, on {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    let out = target.join("bench-outbound.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)?).with_context(|| format!("writing {}", out.display()))?;
    println!("written {} ({:.0} s)", out.display(), t_all.elapsed().as_secs_f64());
    Ok(())
}

/// 1-minute load average (other work on the machine shows up in both columns as noise).
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(f64::NAN)
}

fn pace(r: &Row, o: &Opts) -> String {
    if r.paced {
        format!("{}k/s", o.rate / 1000)
    } else {
        "max".into()
    }
}
