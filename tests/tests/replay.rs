//! `scanwatch replay`: captures recorded DURING the test from real scanners in the lab (the real
//! agent watching the same traffic live), replayed through the real XDP program; the replay must
//! raise the same alert kinds the live agent raised, and a benign client must stay silent. Also
//! the capture reader on files written by tcpdump / editcap / mergecap in every supported format
//! and link type, and truncated files. Root is required; without it these fail loudly.
use std::collections::BTreeSet;
use std::io::Read;
use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use scanwatch::packet::{PacketSpec, L4, SYN};
use scanwatch::replay::{frame, pcap::CaptureReader};
use scanwatch_tests::{assert_ok, dump, lab_lock, scanwatch_bin, AgentProc, Lab};
use serde_json::Value;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "replay tests need root (BPF_PROG_TEST_RUN, lab namespaces, tcpdump)");
}

fn tool(name: &str) {
    let ok = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().is_ok_and(|o| o.status.success());
    assert!(ok, "{name} is not installed (cargo xtask setup installs it)");
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("scanwatch-replay-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `tcpdump -w FILE` running until stopped (SIGINT, so it flushes).
struct Recorder {
    child: Option<Child>,
}

impl Recorder {
    fn start(args: &[&str], file: &Path) -> Recorder {
        tool("tcpdump");
        let mut child = Command::new("tcpdump")
            .args(["-U", "-Z", "root", "-s", "0", "-w"])
            .arg(file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tcpdump: {e}"));
        let mut err = child.stderr.take().expect("piped");
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        while !seen.contains("listening on") {
            match err.read(&mut buf) {
                Ok(0) | Err(_) => panic!("tcpdump did not start: {seen}"),
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut err, &mut std::io::sink());
        });
        // "listening on" is printed a moment before the socket filter is in place (seen on the
        // "any" device): the first packets would be missed.
        std::thread::sleep(Duration::from_millis(500));
        Recorder { child: Some(child) }
    }

    fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.halt();
    }
}

/// `scanwatch replay ARGS`: (alerts, stderr, summary JSON, exit success).
fn replay(args: &[&str]) -> (Vec<Value>, String, Value, bool) {
    let out = Command::new(scanwatch_bin())
        .arg("replay")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scanwatch replay: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let alerts: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("replay stdout line is not JSON ({e}): {l}\nstderr: {stderr}")))
        .collect();
    let summary = stderr
        .lines()
        .find_map(|l| l.strip_prefix("scanwatch: replay summary "))
        .map(|j| serde_json::from_str(j).unwrap_or_else(|e| panic!("summary is not JSON ({e}): {j}")))
        .unwrap_or_else(|| panic!("no replay summary on stderr:\n{stderr}"));
    (alerts, stderr, summary, out.status.success())
}

fn kinds_of(alerts: &[Value], ip: &str) -> BTreeSet<String> {
    alerts
        .iter()
        .filter(|v| v["source"]["ip"] == ip || v["source"]["related"].as_array().is_some_and(|r| r.iter().any(|x| x == ip)))
        .filter_map(|v| v["kind"].as_str().map(str::to_string))
        .collect()
}

/// Record `scan` on the root veth while the live agent watches it; replay the recording; the
/// attacker's alert kinds must be the same both ways and include `expected` (None: both silent).
fn live_vs_replay(name: &str, expected: Option<&str>, scan: &dyn Fn(&Lab) -> Output, services: &[u16]) {
    require_root();
    let _g = lab_lock();
    let lab = Lab::new();
    let dir = TempDir::new(&name.replace([' ', '/'], "_"));
    let file = dir.path("rec.pcap");
    let _servers: Vec<_> = services.iter().map(|p| lab.serve_tcp(*p)).collect();
    let agent = AgentProc::start(&scanwatch_bin(), &["run", "--interface", &lab.root_veth, "--no-outbound"]);
    let rec = Recorder::start(&["-i", &lab.root_veth], &file);
    let atk = lab.attacker_ip.to_string();
    assert_ok(&scan(&lab), name);
    if let Some(k) = expected {
        let found = agent.wait_for(|v| v["kind"] == k && v["source"]["ip"] == atk.as_str(), Duration::from_secs(10));
        assert!(found.is_some(), "{name}: the live agent raised no {k}:\n{}\n{}", dump(&agent.alerts()), agent.stderr());
    }
    // Late sweeps and slow-window ticks of the live agent.
    std::thread::sleep(Duration::from_secs(4));
    rec.stop();
    let capture_end_us =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_micros() as i64;
    let (live, live_err) = agent.stop();
    let live_kinds = kinds_of(&live, &atk);

    if let Some(keep) = std::env::var_os("REPLAY_KEEP_DIR") {
        let to = Path::new(&keep).join(format!("{}.pcap", name.replace([' ', '/'], "_")));
        let _ = std::fs::copy(&file, &to);
    }
    let f = file.to_string_lossy().into_owned();
    let (alerts, stderr, summary, ok) = replay(&[&f]);
    assert!(ok, "{name}: replay failed:\n{stderr}");
    let replay_kinds = kinds_of(&alerts, &atk);
    eprintln!("{name}: live {live_kinds:?} replay {replay_kinds:?} summary {summary}");
    assert!(summary["packets"].as_u64().unwrap_or(0) > 0, "{name}: nothing recorded: {summary}");
    assert_eq!(summary["xdp_runs"], summary["packets"], "{name}: every packet went through the XDP program: {summary}");
    assert_eq!(summary["xdp_run_errors"], 0, "{summary}");
    match expected {
        Some(k) => assert!(replay_kinds.contains(k), "{name}: replay raised no {k}:\n{}\n{stderr}", dump(&alerts)),
        None => assert!(alerts.is_empty(), "{name}: benign capture raised alerts on replay:\n{}\n{stderr}", dump(&alerts)),
    }
    assert_eq!(
        live_kinds,
        replay_kinds,
        "{name}: live and replay kinds differ\nlive:\n{}\nlive stderr:\n{live_err}\nreplay:\n{}\nreplay stderr:\n{stderr}",
        dump(&live),
        dump(&alerts)
    );
    // Alert times are the capture's, not the replay's wall clock: the first replayed alert is
    // no later than the end of the recording (the replay ran after it) and within a minute of
    // the first live alert. (Compared as instants: a string prefix flaked when the two
    // straddled a 10-minute mark.)
    let first_live = live.first().and_then(|v| v["time"].as_str()).map(str::to_string);
    if let (Some(lt), Some(rt)) = (first_live, alerts.first().and_then(|v| v["time"].as_str())) {
        let us = |t: &str| scanwatch::hunt::parse_time_arg(t).unwrap_or_else(|e| panic!("alert time {t:?}: {e:#}"));
        let apart = (us(&lt) - us(rt)).abs();
        assert!(us(rt) <= capture_end_us, "replayed alert time {rt} is after the recording ended: the replay's own clock");
        assert!(apart < 60_000_000, "replayed alert time {rt} is the capture's time, as live {lt} ({apart} µs apart)");
    }
}

#[test]
fn nmap_syn_scan_replays_as_live() {
    live_vs_replay(
        "nmap -sS",
        Some("vertical_scan"),
        &|l: &Lab| l.nmap(&["-sS", "--top-ports", "200", "-T4", "-n", "-Pn"], &l.target_ip.to_string()),
        &[22, 80],
    );
}

#[test]
fn nmap_null_scan_replays_as_live() {
    live_vs_replay(
        "nmap -sN",
        Some("stealth_scan"),
        &|l: &Lab| l.nmap(&["-sN", "-p", "1-100", "-T4", "-n", "-Pn"], &l.target_ip.to_string()),
        &[],
    );
}

#[test]
fn nmap_xmas_scan_replays_as_live() {
    live_vs_replay(
        "nmap -sX",
        Some("stealth_scan"),
        &|l: &Lab| l.nmap(&["-sX", "-p", "1-100", "-T4", "-n", "-Pn"], &l.target_ip.to_string()),
        &[],
    );
}

#[test]
fn masscan_replays_as_live() {
    live_vs_replay("masscan", Some("horizontal_scan"), &|l: &Lab| l.masscan("80", &l.target_net, 2000), &[]);
}

#[test]
fn icmp_sweep_replays_as_live() {
    live_vs_replay(
        "nmap -sn -PE",
        Some("horizontal_scan"),
        &|l: &Lab| l.nmap(&["-sn", "-PE", "--disable-arp-ping", "-T4", "-n"], &l.target_net),
        &[],
    );
}

#[test]
fn benign_client_replays_silent() {
    live_vs_replay(
        "benign client",
        None,
        &|l: &Lab| {
            let t = l.target_ip;
            let script = format!(
                "import socket,time\nfor i in range(300):\n s=socket.create_connection(('{t}',8080 if i%2 else 8443),timeout=2)\n s.sendall(b'hello')\n s.close()\n time.sleep(0.005)"
            );
            l.exec(&["/usr/bin/python3", "-c", &script])
        },
        &[8080, 8443],
    );
}

// ------------------------------------------------------------------------------------------------
// The reader on captures written by the real tools.
// ------------------------------------------------------------------------------------------------

/// A little-endian microsecond pcap of Ethernet frames (the tools convert it to the rest).
fn write_pcap(path: &Path, frames: &[(u32, u32, Vec<u8>)]) {
    let mut v = Vec::new();
    for w in [0xa1b2_c3d4u32.to_le_bytes().to_vec(), vec![2, 0, 4, 0], vec![0; 8], 65535u32.to_le_bytes().to_vec(), 1u32.to_le_bytes().to_vec()] {
        v.extend_from_slice(&w);
    }
    for (s, us, d) in frames {
        for x in [*s, *us, d.len() as u32, d.len() as u32] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(d);
    }
    std::fs::write(path, v).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

type Decoded = (Duration, Option<IpAddr>, Option<scanwatch::outcome::Seen>);

/// Every packet of `path` as (time, source, tracker view), or the reader's error after them.
fn read_all(path: &Path) -> (Vec<Decoded>, Option<String>, Vec<u32>) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut r = CaptureReader::new(std::io::BufReader::new(f)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (mut out, mut links, mut eth) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        match r.next_packet() {
            Ok(Some(p)) => {
                frame::to_ethernet(p.linktype, p.data, &mut eth).unwrap_or_else(|e| panic!("{}: link type {}: {e:?}", path.display(), p.linktype));
                let (src, seen) = frame::decode(&eth);
                out.push((p.ts, src, seen));
                links.push(p.linktype);
            }
            Ok(None) => return (out, None, links),
            Err(e) => return (out, Some(e.to_string()), links),
        }
    }
}

fn sh(cmd: &mut Command) {
    let o = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert_ok(&o, &format!("{cmd:?}"));
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn reader_reads_what_editcap_and_mergecap_write() {
    tool("editcap");
    tool("mergecap");
    let dir = TempDir::new("formats");
    let (a, b, a6, b6) = (ip("10.1.2.3"), ip("10.9.9.9"), ip("fd00::3"), ip("fd00::9"));
    let udp = PacketSpec { l4: L4::Udp { sport: 5353, dport: 161, payload: vec![1, 2, 3] }, ..PacketSpec::tcp(a, b, 0, 0, 0) };
    let echo = PacketSpec { l4: L4::Echo, ..PacketSpec::tcp(a, b, 0, 0, 0) };
    let mut vlan = PacketSpec::nmap_syn(a, b, 8080);
    vlan.vlans = vec![100];
    let mut qinq = PacketSpec::nmap_syn(a, b, 8081);
    qinq.vlans = vec![200, 300];
    let plain: Vec<Vec<u8>> = vec![
        PacketSpec::nmap_syn(a, b, 22).build(),
        udp.build(),
        echo.build(),
        PacketSpec::tcp(b, a, 22, 40000, SYN | scanwatch::packet::ACK).build(),
    ];
    let v6: Vec<Vec<u8>> = vec![PacketSpec::linux_syn(a6, b6, 40001, 443).build(), PacketSpec::linux_syn(a6, b6, 40002, 444).build()];
    let tagged = vec![vlan.build(), qinq.build()];
    let stamp = |i: usize| (1_700_000_000 + i as u32, 123_456 + i as u32);
    let frames = |v: &[Vec<u8>]| -> Vec<(u32, u32, Vec<u8>)> { v.iter().enumerate().map(|(i, f)| (stamp(i).0, stamp(i).1, f.clone())).collect() };
    let base4 = dir.path("v4.pcap");
    let base6 = dir.path("v6.pcap");
    let base_vlan = dir.path("vlan.pcap");
    write_pcap(&base4, &frames(&plain));
    write_pcap(&base6, &frames(&v6));
    write_pcap(&base_vlan, &frames(&tagged));
    let (want4, e, _) = read_all(&base4);
    assert!(e.is_none());
    assert_eq!(want4.len(), 4);
    assert!(matches!(want4[1].2, Some(scanwatch::outcome::Seen::Udp { dport: 161, .. })), "{:?}", want4[1]);
    let (want6, _, _) = read_all(&base6);
    let (want_vlan, _, _) = read_all(&base_vlan);
    assert!(matches!(want_vlan[1].2, Some(scanwatch::outcome::Seen::Tcp { dport: 8081, .. })), "QinQ decoded: {:?}", want_vlan[1]);

    let p = |n: &str| dir.path(n);
    sh(Command::new("editcap").args(["-F", "pcapng"]).arg(&base4).arg(p("v4.pcapng")));
    sh(Command::new("editcap").args(["-F", "nsecpcap"]).arg(&base4).arg(p("v4.nsec.pcap")));
    sh(Command::new("editcap").args(["-F", "pcapng"]).arg(&base_vlan).arg(p("vlan.pcapng")));
    // Raw IP: cut the 14-byte Ethernet header and relabel.
    sh(Command::new("editcap").args(["-C", "14", "-T", "rawip"]).arg(&base4).arg(p("v4.raw.pcap")));
    sh(Command::new("editcap").args(["-C", "14", "-T", "rawip4"]).arg(&base4).arg(p("v4.raw4.pcap")));
    sh(Command::new("editcap").args(["-C", "14", "-T", "rawip6"]).arg(&base6).arg(p("v6.raw6.pcap")));
    sh(Command::new("editcap").args(["-C", "14", "-T", "rawip", "-F", "pcapng"]).arg(&base6).arg(p("v6.raw.pcapng")));
    for (file, want, links) in [
        ("v4.pcapng", &want4, vec![1u32]),
        ("v4.nsec.pcap", &want4, vec![1]),
        ("vlan.pcapng", &want_vlan, vec![1]),
        ("v4.raw.pcap", &want4, vec![101]),
        ("v4.raw4.pcap", &want4, vec![228]),
        ("v6.raw6.pcap", &want6, vec![229]),
        ("v6.raw.pcapng", &want6, vec![101]),
    ] {
        let (got, err, lt) = read_all(&p(file));
        assert!(err.is_none(), "{file}: {err:?}");
        assert_eq!(&got, want, "{file}: same packets, times and decoded fields as the original");
        let lt: BTreeSet<u32> = lt.into_iter().collect();
        assert_eq!(lt, links.into_iter().collect(), "{file}: link types");
    }
    // Several interfaces with different link types in one pcapng (mergecap keeps one IDB each).
    sh(Command::new("mergecap").args(["-F", "pcapng", "-w"]).arg(p("mixed.pcapng")).arg(&base4).arg(p("v6.raw6.pcap")).arg(p("vlan.pcapng")));
    let (got, err, lt) = read_all(&p("mixed.pcapng"));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.len(), want4.len() + want6.len() + want_vlan.len());
    assert_eq!(lt.iter().copied().collect::<BTreeSet<u32>>(), [1u32, 229].into_iter().collect());
    let mut all: Vec<Decoded> = want4.iter().chain(want6.iter()).chain(want_vlan.iter()).cloned().collect();
    let mut got_sorted = got.clone();
    let key = |d: &Decoded| format!("{:?}", d);
    all.sort_by_key(key);
    got_sorted.sort_by_key(key);
    assert_eq!(got_sorted, all, "mixed pcapng holds every packet of the three inputs");

    // Truncated pcapng: the packets before the cut block, then an error naming its offset.
    let ng = std::fs::read(p("v4.pcapng")).expect("read");
    let blocks = pcapng_blocks(&ng);
    let (third_off, third_len) = blocks.iter().filter(|(_, _, t)| *t == 6).nth(2).map(|(o, l, _)| (*o, *l)).expect("3rd packet block");
    std::fs::write(p("cut.pcapng"), &ng[..third_off + third_len / 2]).expect("write");
    let (got, err, _) = read_all(&p("cut.pcapng"));
    assert_eq!(got.len(), 2, "the two packets before the cut");
    let err = err.expect("truncation is an error");
    assert!(err.contains(&format!("byte offset {third_off}")), "error names the offset of the cut block: {err}");
}

/// (offset, length, type) of every block of a little-endian pcapng file.
fn pcapng_blocks(b: &[u8]) -> Vec<(usize, usize, u32)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 8 <= b.len() {
        let ty = u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let len = u32::from_le_bytes([b[i + 4], b[i + 5], b[i + 6], b[i + 7]]) as usize;
        out.push((i, len, ty));
        i += len.max(12);
    }
    out
}

/// Linux cooked captures (SLL and SLL2), written by tcpdump on the "any" device.
#[test]
fn reader_reads_tcpdump_linux_cooked_captures() {
    require_root();
    let dir = TempDir::new("sll");
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = rx.local_addr().expect("addr").port();
    for (dlt, lt) in [("LINUX_SLL", 113u32), ("LINUX_SLL2", 276)] {
        let file = dir.path(&format!("{dlt}.pcap"));
        let rec = Recorder::start(&["-i", "any", "-y", dlt, "-c", "5", "udp", "and", "dst", "port", &port.to_string()], &file);
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for i in 0..5u8 {
            tx.send_to(&[i; 20], ("127.0.0.1", port)).expect("send");
        }
        std::thread::sleep(Duration::from_millis(500));
        rec.stop();
        let (got, err, links) = read_all(&file);
        assert!(err.is_none(), "{dlt}: {err:?}");
        assert_eq!(got.len(), 5, "{dlt}: five datagrams");
        assert!(links.iter().all(|l| *l == lt), "{dlt}: link type {links:?}");
        for (_, src, seen) in &got {
            assert_eq!(*src, Some(ip("127.0.0.1")));
            assert!(matches!(seen, Some(scanwatch::outcome::Seen::Udp { dport, .. }) if *dport == port), "{dlt}: {seen:?}");
        }
    }
}

/// A truncated capture through the command: alerts of what was read, then the error with the
/// offset, exit status failure.
#[test]
fn replay_of_a_truncated_capture_reports_what_it_read_and_the_offset() {
    require_root();
    let dir = TempDir::new("trunc");
    let (a, b) = (ip("10.44.0.7"), ip("10.45.0.1"));
    // A vertical SYN scan answered by RSTs, 300 ports over 3 seconds, then cut mid-packet.
    let mut frames = Vec::new();
    for i in 0..300u32 {
        let t = (1_700_000_000 + i / 100, (i % 100) * 10_000);
        frames.push((t.0, t.1, PacketSpec::nmap_syn(a, b, 1 + i as u16).build()));
        let rst = PacketSpec::tcp(b, a, 1 + i as u16, 40000, scanwatch::packet::RST | scanwatch::packet::ACK).build();
        frames.push((t.0, t.1 + 100, rst));
    }
    let full = dir.path("full.pcap");
    write_pcap(&full, &frames);
    let bytes = std::fs::read(&full).expect("read");
    let cut = dir.path("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 20]).expect("write");
    let last_off = bytes.len() - (16 + frames.last().map(|f| f.2.len()).unwrap_or(0));
    let (alerts, stderr, summary, ok) = replay(&[cut.to_str().expect("utf8")]);
    assert!(!ok, "a truncated capture fails the command:\n{stderr}");
    assert_eq!(summary["packets"], 599, "{summary}");
    assert!(stderr.contains(&format!("byte offset {last_off}")), "the error names the offset {last_off}:\n{stderr}");
    assert!(kinds_of(&alerts, "10.44.0.7").contains("vertical_scan"), "alerts of the packets before the cut:\n{}\n{stderr}", dump(&alerts));
    let a0 = alerts.iter().find(|v| v["kind"] == "vertical_scan").expect("alert");
    assert!(a0["time"].as_str().is_some_and(|t| t.starts_with("2023-11-14T22:13")), "capture time: {a0}");
    assert!(a0["counts"]["failures"].as_u64().unwrap_or(0) >= 25, "RSTs in the capture are failures: {a0}");
}

/// `--since/--until` keep only the packets inside the window; "-" reads standard input.
#[test]
fn replay_time_window_and_stdin() {
    require_root();
    let dir = TempDir::new("window");
    let (a, b) = (ip("10.46.0.7"), ip("10.47.0.1"));
    // 100 SYNs answered by RST, one per 10 ms from 1700000000 s.
    let mut frames = Vec::new();
    for i in 0..100u32 {
        frames.push((1_700_000_000, i * 10_000, PacketSpec::nmap_syn(a, b, 1 + i as u16).build()));
        let rst = PacketSpec::tcp(b, a, 1 + i as u16, 40000, scanwatch::packet::RST | scanwatch::packet::ACK).build();
        frames.push((1_700_000_000, i * 10_000 + 100, rst));
    }
    let f = dir.path("w.pcap");
    write_pcap(&f, &frames);
    let fs = f.to_str().expect("utf8");
    // [0.25 s, 0.75 s): SYN+RST pairs 25..74.
    let (_, stderr, summary, ok) = replay(&["--since", "1700000000.25", "--until", "2023-11-14T22:13:20.75Z", fs]);
    assert!(ok, "{stderr}");
    assert_eq!(summary["packets"], 200, "{summary}");
    assert_eq!(summary["out_of_range"], 100, "{summary}");
    assert_eq!(summary["xdp_runs"], 100, "{summary}");
    assert_eq!(summary["outcomes"]["closed"], 50, "{summary}");
    // The same file on standard input.
    let out = Command::new(scanwatch_bin())
        .args(["replay", "-"])
        .stdin(std::fs::File::open(&f).expect("open"))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("\"packets\":200"), "{err}");
    // A bad time is refused with the reason.
    let o = Command::new(scanwatch_bin()).args(["replay", "--since", "yesterday", fs]).output().expect("run");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("RFC 3339"), "{}", String::from_utf8_lossy(&o.stderr));
}

// ------------------------------------------------------------------------------------------------
// Batches: many frames per BPF_PROG_TEST_RUN must change nothing.
// ------------------------------------------------------------------------------------------------

/// `scanwatch replay ARGS` with batches (the default) or one BPF_PROG_TEST_RUN per frame
/// (`SCANWATCH_REPLAY_ONE_FRAME_PER_RUN=1`): (alerts, stderr, summary).
fn replay_mode(args: &[&str], one_per_run: bool) -> (Vec<Value>, String, Value) {
    let mut cmd = Command::new(scanwatch_bin());
    cmd.arg("replay").args(args).stdin(Stdio::null());
    if one_per_run {
        cmd.env("SCANWATCH_REPLAY_ONE_FRAME_PER_RUN", "1");
    } else {
        cmd.env_remove("SCANWATCH_REPLAY_ONE_FRAME_PER_RUN");
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run scanwatch replay: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "replay failed (one per run: {one_per_run}):\n{stderr}");
    let alerts = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let summary = stderr
        .lines()
        .find_map(|l| l.strip_prefix("scanwatch: replay summary "))
        .map(|j| serde_json::from_str(j).expect("summary JSON"))
        .unwrap_or_else(|| panic!("no summary:\n{stderr}"));
    (alerts, stderr, summary)
}

/// Alerts as comparable lines: without the per-run random `alert_id` and the engine's pick of
/// `related` decoys (hash-map order: differs between two runs of the same mode), sorted (alerts
/// at one capture time come out in hash-map order too).
fn normalized(alerts: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = alerts
        .iter()
        .map(|a| {
            let mut a = a.clone();
            if let Some(o) = a.as_object_mut() {
                o.remove("alert_id");
            }
            if let Some(s) = a.get_mut("source").and_then(Value::as_object_mut) {
                s.remove("related");
            }
            a.to_string()
        })
        .collect();
    v.sort();
    v
}

/// The frames of the batch-boundary capture (see `batched_replay_equals_one_frame_per_run`).
fn batch_mix_frames() -> Vec<(u32, u32, Vec<u8>)> {
    let server = ip("10.52.0.1");
    let mut frames: Vec<(u32, u32, Vec<u8>)> = Vec::new();
    let mut t_us: u64 = 0;
    let push = |frames: &mut Vec<(u32, u32, Vec<u8>)>, t: u64, f: Vec<u8>| {
        frames.push((1_700_000_000 + (t / 1_000_000) as u32, (t % 1_000_000) as u32, f));
    };
    let honey = [1524u16, 31337, 4444];
    for i in 0..6000u32 {
        t_us += 150 + u64::from(i % 7) * 40;
        match i % 10 {
            // Vertical SYN scans from four sources (nmap fingerprint), answered by RST, with a
            // honeyport among the ports now and then.
            0..=3 => {
                let s = i % 4;
                let atk = ip(&format!("198.51.100.{}", 20 + s));
                let port = if i % 997 == 0 { honey[(i as usize / 997) % 3] } else { 1 + (i / 4) as u16 };
                push(&mut frames, t_us, PacketSpec::nmap_syn(atk, server, port).build());
                let rst = PacketSpec::tcp(server, atk, port, 40000, scanwatch::packet::RST | scanwatch::packet::ACK).build();
                push(&mut frames, t_us + 30, rst);
            }
            // A horizontal sweep of port 80 (a new destination each time) from a Linux stack.
            4 | 5 => {
                let dst = ip(&format!("10.53.{}.{}", (i / 250) % 250, 1 + i % 250));
                push(&mut frames, t_us, PacketSpec::linux_syn(ip("203.0.113.9"), dst, 50000, 80).build());
            }
            // Established data of every size: small, just under the batch limit, too big for
            // a batch (a jumbo frame), bigger than a page.
            6 | 7 => {
                let len = [40usize, 700, 1400, 3300, 3400, 3452, 3453, 5000, 9000][(i as usize / 10) % 9];
                let mut p = PacketSpec::tcp(ip("10.54.0.9"), server, 40001, 443, scanwatch::packet::ACK | scanwatch::packet::PSH);
                if let L4::Tcp { payload, .. } = &mut p.l4 {
                    *payload = vec![0x61; len];
                }
                push(&mut frames, t_us, p.build());
            }
            // Malformed frames: an IPv4 header cut short, a TCP header cut short, a runt.
            8 => {
                let b = PacketSpec::nmap_syn(ip("198.51.100.40"), server, 1000 + (i % 300) as u16).build();
                let f = match (i / 10) % 3 {
                    0 => b[..14 + 10].to_vec(),
                    1 => b[..14 + 20 + 6].to_vec(),
                    _ => b[..10].to_vec(),
                };
                push(&mut frames, t_us, f);
            }
            // UDP probes (no answer) and a capture-time step backwards (the clock holds).
            _ => {
                let t = if i % 100 == 9 { t_us.saturating_sub(2_000) } else { t_us };
                let mut p = PacketSpec::tcp(ip("198.51.100.50"), server, 0, 0, 0);
                p.l4 = L4::Udp { sport: 53000, dport: 1 + (i % 500) as u16, payload: vec![0; 8] };
                push(&mut frames, t, p.build());
            }
        }
    }
    // A burst of 1,200 new clients in 60 ms of capture time (two SYNs each: a new fingerprint
    // per source, far more than a live agent's new-fingerprint event budget allows), then a
    // stream of bare ACKs from each (the fast path samples one in 16 per CPU).
    for j in 0..1200u32 {
        let c = ip(&format!("10.60.{}.{}", j / 200, 1 + j % 200));
        t_us += 50;
        let syn = PacketSpec::linux_syn(c, server, 41000 + (j % 1000) as u16, 22).build();
        push(&mut frames, t_us, syn.clone());
        push(&mut frames, t_us + 1, syn);
    }
    for k in 0..4u32 {
        for j in 0..1200u32 {
            let c = ip(&format!("10.60.{}.{}", j / 200, 1 + j % 200));
            t_us += 20;
            let ack = PacketSpec::tcp(c, server, 41000 + (j % 1000) as u16, 22, scanwatch::packet::ACK).build();
            push(&mut frames, t_us + u64::from(k), ack);
        }
    }
    frames
}

/// A capture that exercises every batch boundary: scans raising immediate events (new
/// fingerprints, honeyports) in the middle of batches, frames too big for a batch (run alone by
/// the live program), frames just under the batch limit, truncated (malformed) frames inside
/// batches, a runt shorter than an Ethernet header (skipped by the reader both ways), sweeps
/// every second of capture time, and a time jump backwards. Replayed with batches and with one
/// run per frame, the alerts and every kernel counter must be the same.
#[test]
fn batched_replay_equals_one_frame_per_run() {
    require_root();
    let dir = TempDir::new("batch-eq");
    let frames = batch_mix_frames();
    let f = dir.path("mix.pcap");
    write_pcap(&f, &frames);
    // The default configuration (its new-fingerprint event budget included: replay sets it aside,
    // it would shed by wall time).
    let args = ["--quiet", f.to_str().expect("utf8")];
    let (one, one_err, one_sum) = replay_mode(&args, true);
    let (bat, bat_err, bat_sum) = replay_mode(&args, false);
    eprintln!("one per run: {one_sum}\nbatched: {bat_sum}");
    let n = frames.len() as u64;
    let runts = frames.iter().filter(|(_, _, f)| f.len() < 14).count() as u64;
    assert!(runts > 0);
    for (s, err) in [(&one_sum, &one_err), (&bat_sum, &bat_err)] {
        assert_eq!(s["packets"], n, "{err}");
        // Every frame run once (the runts never reach the kernel: the reader skips them).
        assert_eq!(s["skipped"]["shorter than the link header"].as_u64(), Some(runts), "{s}");
        assert_eq!(s["xdp_runs"].as_u64(), Some(n - runts), "{s}");
        assert_eq!(s["xdp_run_errors"], 0, "{s}");
        assert!(s["malformed"].as_u64().unwrap_or(0) > 0, "{s}");
        assert!(s["events"].as_u64().unwrap_or(0) > 0, "{s}");
        assert!(s["sweeps"].as_u64().unwrap_or(0) >= 2, "{s}");
    }
    assert!(!bat_err.contains("running its frames one by one"), "the batch program refused a batch:\n{bat_err}");
    // Batches were used: one call per frame without them, several frames per call with them.
    assert_eq!(one_sum["xdp_calls"], one_sum["xdp_runs"], "{one_sum}");
    let (calls, runs) = (bat_sum["xdp_calls"].as_u64().unwrap_or(0), bat_sum["xdp_runs"].as_u64().unwrap_or(0));
    assert!(calls > 0 && calls * 3 < runs, "batched replay made {calls} calls for {runs} frames");
    assert!(!bat_err.contains("replay batches unavailable"), "{bat_err}");
    for key in ["kernel", "events", "sweeps", "outcomes", "sources", "one_probe_sources", "live_sources", "malformed", "alerts"] {
        assert_eq!(one_sum[key], bat_sum[key], "{key} differs between one frame per run and batches");
    }
    let kinds: BTreeSet<&str> = bat.iter().filter_map(|a| a["kind"].as_str()).collect();
    for k in ["vertical_scan", "honeyport_hit", "horizontal_scan"] {
        assert!(kinds.contains(k), "no {k} alert: {kinds:?}\n{}", dump(&bat));
    }
    assert_eq!(normalized(&one), normalized(&bat), "alerts differ between one frame per run and batches");
}

/// A replay is reproducible: the same capture replayed twice gives the same alerts (all but the
/// random `alert_id`: related sources, counts, evidence, order), the same events and every
/// kernel counter — nothing depends on how fast this machine replays (new-fingerprint event
/// budget), on which CPU a run landed (per-CPU state such as the bare-ACK fast path's sample),
/// or on hash-map order.
#[test]
fn replaying_one_capture_twice_gives_the_same_result() {
    require_root();
    let dir = TempDir::new("twice");
    let f = dir.path("mix.pcap");
    write_pcap(&f, &batch_mix_frames());
    let args = ["--quiet", f.to_str().expect("utf8")];
    let strip = |alerts: &[Value]| -> Vec<String> {
        alerts
            .iter()
            .map(|a| {
                let mut a = a.clone();
                if let Some(o) = a.as_object_mut() {
                    o.remove("alert_id");
                }
                a.to_string()
            })
            .collect()
    };
    let timing = ["seconds", "packets_per_sec", "xdp_seconds"];
    let (a1, _, mut s1) = replay_mode(&args, false);
    let (a2, _, mut s2) = replay_mode(&args, false);
    for s in [&mut s1, &mut s2] {
        for k in timing {
            s.as_object_mut().expect("summary object").remove(k);
        }
    }
    // Every new fingerprint is an event (the burst would exceed a live agent's budget).
    let fps = s1["kernel"]["new_fingerprints"].as_u64().unwrap_or(0);
    assert!(fps >= 1200, "{s1}");
    assert!(s1["events"].as_u64().unwrap_or(0) >= fps, "new-fingerprint events were shed: {s1}");
    assert_eq!(s1["kernel"]["fingerprint_events_shed"].as_u64().unwrap_or(0), 0, "{s1}");
    assert!(a1.iter().any(|a| a["kind"] == "decoy_cluster" || a["kind"] == "vertical_scan"), "{}", dump(&a1));
    assert_eq!(s1, s2, "two replays of one capture: different summaries");
    assert_eq!(strip(&a1), strip(&a2), "two replays of one capture: different alerts");
}
