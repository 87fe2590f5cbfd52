//! Operations end to end, in one agent run against lab scanners (root; fails loudly without):
//! syslog to a real rsyslogd (unix socket and TCP with octet counting), an ECS file sink, the
//! Prometheus endpoint scraped during the scans, the root-only control socket (`status`, `top`,
//! refusing `nobody`), dry-run and never-block sets, SIGHUP reload (a bad file refused, a good one
//! applied with the sections needing a restart named), `block add/list/del` with packets dropped
//! per entry, an automatic block after the reload, evidence pcaps read back with tshark, ASN
//! enrichment from a written mmdb, and SIGTERM detaching everything with the counters line.
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use scanwatch_tests::mmdb::{asn_database, AsnEntry};
use scanwatch_tests::{assert_ok, expect_alert, lab_lock, scanwatch_bin, AgentProc, Lab};
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Root-side /32 routes for spoofed lab sources, so replies to them stay on the lab veth.
struct Routes(String, Vec<String>);

impl Routes {
    fn add(lab: &Lab, addrs: &[Ipv4Addr]) -> Routes {
        let addrs: Vec<String> = addrs.iter().map(|a| format!("{a}/32")).collect();
        for a in &addrs {
            let st = Command::new("ip").args(["route", "add", a, "dev", &lab.root_veth]).status().expect("ip route add");
            assert!(st.success(), "ip route add {a} dev {}", lab.root_veth);
        }
        Routes(lab.root_veth.clone(), addrs)
    }
}

impl Drop for Routes {
    fn drop(&mut self) {
        for a in &self.1 {
            let _ = Command::new("ip").args(["route", "del", a, "dev", &self.0]).stderr(Stdio::null()).status();
        }
    }
}

/// rsyslogd with a private configuration, stopped by its pid.
struct Rsyslog {
    child: Child,
    out: PathBuf,
}

impl Rsyslog {
    fn start(dir: &Path, sock: &Path, tcp_port: u16) -> Rsyslog {
        let work = dir.join("rsyslog-work");
        std::fs::create_dir_all(&work).expect("rsyslog work dir");
        let out = dir.join("received.log");
        let conf = format!(
            r#"global(workDirectory="{work}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{sock}" UseSpecialParser="off" ParseHostname="on")
module(load="imtcp")
input(type="imtcp" port="{tcp_port}" address="127.0.0.1")
template(name="fields" type="string" string="%syslogfacility-text%|%syslogseverity-text%|%app-name%|%msgid%|%structured-data%|%msg%\n")
*.* action(type="omfile" file="{out}" template="fields")
"#,
            work = work.display(),
            sock = sock.display(),
            out = out.display()
        );
        let conf_path = dir.join("rsyslog.conf");
        std::fs::write(&conf_path, conf).expect("rsyslog.conf");
        let check = Command::new("rsyslogd").args(["-N1", "-f"]).arg(&conf_path).output().expect("rsyslogd -N1 (is rsyslog installed? cargo xtask setup)");
        assert_ok(&check, "rsyslogd -N1 (config check)");
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rsyslogd");
        let t0 = Instant::now();
        while !(sock.exists() && std::net::TcpStream::connect(("127.0.0.1", tcp_port)).is_ok()) {
            assert!(t0.elapsed() < Duration::from_secs(10), "rsyslogd did not open {} and tcp {tcp_port}", sock.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        Rsyslog { child, out }
    }

    /// SIGTERM (rsyslogd flushes its files) and the lines it wrote.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.out).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(scanwatch_bin()).args(args).stdin(Stdio::null()).output().expect("run scanwatch")
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    text
}

/// The value of the sample `name{labels}` (exact line prefix) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

fn wait_stderr(agent: &AgentProc, needle: &str, t: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let e = agent.stderr();
        if e.contains(needle) {
            return e;
        }
        assert!(t0.elapsed() < t, "agent stderr never said {needle:?}:\n{e}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn config(dir: &Path, lab: &Lab, metrics: u16, tcp: u16, dry_run: bool, extra: &str) -> String {
    let d = dir.display();
    format!(
        r#"[agent]
interfaces = ["{iface}"]
[xdp]
enforce_blocklist = true
[response]
dry_run = {dry_run}
block_min_severity = "low"
block_ttl = "10m"
[response.never_block]
census = ["10.78.{n}.64/27"]
[metrics]
listen = "127.0.0.1:{metrics}"
[control]
socket = "{d}/run/control.sock"
[evidence]
dir = "{d}/evidence"
duration = "60s"
snaplen = 96
[enrich]
asn_db = "{d}/asn.mmdb"
[sinks.out]
type = "stdout"
[sinks.ecs_file]
type = "file"
path = "{d}/alerts-ecs.jsonl"
format = "ecs"
[sinks.rsyslog_unix]
type = "syslog"
address = "{d}/rsyslog.sock"
facility = "local3"
[sinks.rsyslog_tcp]
type = "syslog"
transport = "tcp"
address = "127.0.0.1:{tcp}"
format = "ocsf"
{extra}
"#,
        iface = lab.root_veth,
        n = lab.id,
    )
}

#[test]
fn operations_end_to_end_in_one_agent_run() {
    let _g = lab_lock();
    let lab = Lab::new();
    let dir = std::env::temp_dir().join(format!("scanwatch-ops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    std::fs::write(
        dir.join("asn.mmdb"),
        asn_database(&[AsnEntry { net: Ipv4Addr::new(10, 78, 0, 0), prefix: 16, asn: 64512, org: "Lab Scanners Inc" }]),
    )
    .expect("mmdb");
    let (metrics, tcp) = (free_port(), free_port());
    let syslog = Rsyslog::start(&dir, &dir.join("rsyslog.sock"), tcp);
    let cfg_path = dir.join("scanwatch.toml");
    std::fs::write(&cfg_path, config(&dir, &lab, metrics, tcp, true, "")).expect("config");
    let sock = dir.join("run/control.sock");
    let sock_s = sock.display().to_string();
    let agent = AgentProc::start(&scanwatch_bin(), &["run", "-c", &cfg_path.display().to_string()]);
    let atk = lab.attacker_ip.to_string();
    let target = lab.target_ip.to_string();

    // --- the control socket refuses anyone but root ------------------------------------------
    let mode = std::fs::metadata(&sock).expect("control socket exists");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(mode.mode() & 0o777, 0o600, "socket mode");
    std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o755)).expect("chmod run dir");
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(scanwatch_bin())
            .args(args)
            .current_dir("/")
            .output()
            .expect("setpriv")
    };
    let o = as_nobody(&["status", "--socket", &sock_s]);
    assert!(!o.status.success(), "nobody must not read the status");
    assert!(String::from_utf8_lossy(&o.stderr).contains("Permission denied"), "{}", String::from_utf8_lossy(&o.stderr));
    // Even with the file opened up by mistake, the peer check refuses.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod socket");
    let o = as_nobody(&["block", "add", "10.78.1.1", "--socket", &sock_s]);
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).expect("chmod socket back");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("permission denied: uid 65534 is not root"), "SO_PEERCRED refusal: {err}");
    wait_stderr(&agent, "refused uid 65534", Duration::from_secs(5));

    // --- dry-run: an nmap scan is alerted, enriched, captured and would be blocked ------------
    let out = lab.nmap(&["-sS", "--top-ports", "200", "-T4", "-n", "-Pn"], &target);
    assert_ok(&out, "nmap -sS top 200");
    let a = expect_alert(
        agent.wait_for(|v| v["direction"] == "inbound" && v["source"]["ip"] == atk.as_str(), Duration::from_secs(10)),
        "an inbound alert from the attacker",
        &agent,
    );
    assert_eq!(a["asn"], 64512, "{a}");
    assert_eq!(a["org"], "Lab Scanners Inc");
    assert_eq!(a["would_block"], true, "dry-run reports the block: {a}");
    assert_eq!(a["blocked"], false, "dry-run never blocks: {a}");
    let pcap = PathBuf::from(a["evidence"].as_str().unwrap_or_else(|| panic!("alert names its evidence file: {a}")));
    assert!(pcap.starts_with(dir.join("evidence")) && pcap.exists(), "{}", pcap.display());
    // Packets after the alert go to the evidence file.
    assert_ok(&lab.nmap(&["-sS", "-p", "2000-2100", "-T4", "-n", "-Pn"], &target), "nmap -sS 2000-2100");

    // --- never-block set: alerted and named, never (would-be) blocked -------------------------
    let census = Ipv4Addr::new(10, 78, lab.id as u8, 77);
    let other = Ipv4Addr::new(10, 78, lab.id as u8, 120);
    let _routes = Routes::add(&lab, &[census, other]);
    let probes: Vec<(Ipv4Addr, u16)> = (3000..3040).map(|p| (census, p)).collect();
    assert_ok(&lab.hping3_spoofed_syns(&probes, &target), "hping3 from the census source");
    let c = expect_alert(
        agent.wait_for(|v| v["source"]["ip"] == census.to_string().as_str(), Duration::from_secs(10)),
        "an alert from the never-block source",
        &agent,
    );
    assert_eq!(c["never_block"], "census", "{c}");
    assert!(c.get("would_block").is_none() && c["blocked"] == false, "{c}");

    // --- metrics scraped during the lab run ---------------------------------------------------
    let m = scrape(metrics);
    assert!(sample(&m, "scanwatch_packets_total").unwrap_or(0.0) > 200.0, "{m}");
    assert!(sample(&m, "scanwatch_syn_packets_total").unwrap_or(0.0) > 200.0, "{m}");
    assert!(m.lines().any(|l| l.starts_with("scanwatch_alerts_total{kind=\"") && !l.ends_with(" 0")), "{m}");
    assert_eq!(sample(&m, &format!("scanwatch_hook_info{{hook=\"xdp:{}\",method=\"xdp-native\"}}", lab.root_veth)), Some(1.0), "{m}");
    assert!(m.contains("scanwatch_hook_info{hook=\"connect\",method=\""), "{m}");
    assert!(m.contains("scanwatch_malformed_packets_total{reason=\"tcp\"}"), "{m}");
    assert!(sample(&m, "scanwatch_sink_written_total{sink=\"rsyslog_tcp\"}").unwrap_or(0.0) >= 2.0, "{m}");
    assert_eq!(sample(&m, "scanwatch_sink_dropped_total{sink=\"rsyslog_unix\"}"), Some(0.0), "{m}");
    assert!(sample(&m, "scanwatch_response_total{action=\"would_block\"}").unwrap_or(0.0) >= 1.0, "{m}");
    assert!(sample(&m, "scanwatch_response_total{action=\"spared\"}").unwrap_or(0.0) >= 1.0, "{m}");
    assert!(sample(&m, "scanwatch_asn_lookups_total{result=\"hit\"}").unwrap_or(0.0) >= 2.0, "{m}");
    assert!(sample(&m, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6, "{m}");
    assert!(sample(&m, "process_cpu_seconds_total").is_some(), "{m}");

    // --- status and top -----------------------------------------------------------------------
    let o = cli(&["status", "--socket", &sock_s, "--json"]);
    assert_ok(&o, "scanwatch status --json");
    let st: Value = serde_json::from_slice(&o.stdout).expect("status JSON");
    assert_eq!(st["top_sources"][0]["key"].as_str().map(|k| k == atk || k == census.to_string()), Some(true), "{st}");
    assert!(st["top_sources"].as_array().expect("list").iter().any(|r| r["key"] == atk.as_str()), "{st}");
    assert!(st["top_processes"].as_array().expect("list").iter().any(|r| r["key"].as_str().is_some_and(|k| k.contains("nmap"))), "{st}");
    assert_eq!(st["response"]["dry_run"], true);
    assert!(st["response"]["entries"].as_array().expect("entries").iter().any(|e| e["ip"] == atk.as_str() && e["packets"].is_null()), "{st}");
    assert!(st["hooks"]["connect"].as_str().is_some_and(|m| m.starts_with("tracepoint:") || m.starts_with("kprobe:")), "{st}");
    assert!(st["evidence"]["active"].as_u64().unwrap_or(0) >= 1, "{st}");
    let o = cli(&["status", "--socket", &sock_s]);
    assert_ok(&o, "scanwatch status");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("top sources:") && text.contains(&atk) && text.contains("(dry-run)"), "{text}");
    let o = cli(&["top", "--socket", &sock_s, "--iterations", "2", "--interval", "0.3"]);
    assert_ok(&o, "scanwatch top");
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.matches("\x1b[2J\x1b[H").count(), 2, "two redraws");
    assert!(text.contains("scanwatch top") && text.contains(&atk), "{text}");
    let o = cli(&["block", "add", &atk, "--socket", &sock_s]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("dry_run"), "dry-run refuses inserts: {o:?}");

    // --- SIGHUP: a bad file is refused, a good one applied ------------------------------------
    std::fs::write(&cfg_path, config(&dir, &lab, metrics, tcp, false, "[detect]\nstealth_minimum = 3\n")).expect("bad config");
    agent.signal(libc::SIGHUP);
    let e = wait_stderr(&agent, "reload refused", Duration::from_secs(5));
    assert!(e.contains("stealth_minimum"), "the refusal names the bad key:\n{e}");
    std::fs::write(&cfg_path, config(&dir, &lab, metrics, tcp, false, "[detect]\nstealth_min = 3\n")).expect("config");
    agent.signal(libc::SIGHUP);
    let e = wait_stderr(&agent, "configuration reloaded", Duration::from_secs(5));
    let line = e.lines().find(|l| l.contains("configuration reloaded")).expect("line");
    assert!(line.contains("applied [response]") && line.contains("restart to take effect [detect]"), "{line}");

    // --- operator block: list with packets dropped, del ----------------------------------------
    assert_ok(&cli(&["block", "add", &atk, "--socket", &sock_s]), "block add");
    // The block drops the attacker's ARP too: a permanent neighbour entry in its namespace lets
    // the SYNs out, each of which the XDP program drops and counts on the entry.
    assert_ok(
        &lab.exec(&["ip", "neigh", "replace", &target, "lladdr", &lab.root_mac, "dev", &lab.atk_veth, "nud", "permanent"]),
        "static neighbour",
    );
    let blocked_scan = lab.nmap(&["-sS", "--send-ip", "-p", "1-150", "-T4", "-n", "-Pn", "--max-retries", "1"], &target);
    assert_ok(&blocked_scan, "nmap against the block");
    assert!(String::from_utf8_lossy(&blocked_scan.stdout).contains("150 filtered"), "every port filtered: {}", String::from_utf8_lossy(&blocked_scan.stdout));
    let o = cli(&["block", "list", "--socket", &sock_s, "--json"]);
    assert_ok(&o, "block list");
    let l: Value = serde_json::from_slice(&o.stdout).expect("list JSON");
    assert_eq!(l["dry_run"], false);
    let entry = l["blocks"].as_array().expect("blocks").iter().find(|b| b["ip"] == atk.as_str()).cloned().unwrap_or_else(|| panic!("{l}"));
    assert_eq!(entry["manual"], true);
    assert!(entry["packets"].as_u64().unwrap_or(0) >= 150, "dropped per entry: {entry}");
    assert!(entry["bytes"].as_u64().unwrap_or(0) >= 150 * 40, "{entry}");
    let m = scrape(metrics);
    assert!(sample(&m, &format!("scanwatch_block_dropped_packets{{source=\"{atk}\"}}")).unwrap_or(0.0) >= 150.0, "{m}");
    assert!(sample(&m, "scanwatch_blocked_packets_total").unwrap_or(0.0) >= 150.0, "{m}");
    assert_ok(&cli(&["block", "del", &atk, "--socket", &sock_s]), "block del");
    let o = cli(&["block", "list", "--socket", &sock_s]);
    assert_ok(&o, "block list");
    assert!(!String::from_utf8_lossy(&o.stdout).contains(&atk), "{}", String::from_utf8_lossy(&o.stdout));
    let o = cli(&["block", "del", &atk, "--socket", &sock_s]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not blocked"), "{o:?}");

    // --- after the reload, a new scanner is blocked automatically -----------------------------
    let probes: Vec<(Ipv4Addr, u16)> = (4000..4040).map(|p| (other, p)).collect();
    assert_ok(&lab.hping3_spoofed_syns(&probes, &target), "hping3 from a second source");
    let b = expect_alert(
        agent.wait_for(|v| v["source"]["ip"] == other.to_string().as_str() && v["blocked"] == true, Duration::from_secs(10)),
        "an automatic block of the second source",
        &agent,
    );
    assert_eq!(b["asn"], 64512);
    let o = cli(&["block", "list", "--socket", &sock_s, "--json"]);
    let l: Value = serde_json::from_slice(&o.stdout).expect("list JSON");
    assert!(l["blocks"].as_array().expect("blocks").iter().any(|e| e["ip"] == other.to_string().as_str() && e["manual"] == false), "{l}");

    // --- SIGTERM: detach, counters line ---------------------------------------------------------
    agent.signal(libc::SIGTERM);
    let e = wait_stderr(&agent, "stopped (SIGTERM); counters {", Duration::from_secs(15));
    let (alerts, _) = agent.stop();
    let counters = e.lines().find(|l| l.contains("stopped (SIGTERM)")).and_then(|l| l.split("counters ").nth(1)).expect("counters");
    let counters: Value = serde_json::from_str(counters).expect("counters JSON");
    assert!(counters["packets"].as_u64().unwrap_or(0) > 0 && counters["reloads"] == 1, "{counters}");
    let link = Command::new("ip").args(["link", "show", &lab.root_veth]).output().expect("ip link");
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"), "XDP detached: {}", String::from_utf8_lossy(&link.stdout));
    assert!(!sock.exists(), "control socket removed on exit");

    // --- evidence read back with tshark --------------------------------------------------------
    let t = Command::new("tshark")
        .args(["-r"])
        .arg(&pcap)
        .args(["-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "tcp.flags.syn", "-e", "tcp.flags.reset", "-e", "tcp.dstport"])
        .output()
        .expect("tshark");
    assert_ok(&t, "tshark -r evidence");
    let set = |s: &str| s == "1" || s.eq_ignore_ascii_case("true");
    let rows: Vec<Vec<String>> = String::from_utf8_lossy(&t.stdout).lines().map(|l| l.split('\t').map(str::to_string).collect()).collect();
    let syns = rows.iter().filter(|r| r[0] == atk && set(&r[2]) && r[4].parse::<u16>().is_ok_and(|p| (2000..=2100).contains(&p))).count();
    let rsts = rows.iter().filter(|r| r[1] == atk && set(&r[3])).count();
    assert!(syns >= 90, "the scanner's SYNs to 2000-2100 are in the pcap: {syns} of {} rows", rows.len());
    assert!(rsts >= 50, "and the target's RSTs back: {rsts}");
    assert!(rows.iter().all(|r| r[0] == atk || r[1] == atk), "only the source's packets");
    assert!(std::fs::metadata(&pcap).expect("pcap").len() <= 16 << 20);

    // --- what the sinks delivered ---------------------------------------------------------------
    let received = syslog.stop();
    let unix: Vec<&String> = received.iter().filter(|l| l.starts_with("local3|")).collect();
    let u = unix.iter().find(|l| l.contains(&format!("src=\"{atk}\""))).unwrap_or_else(|| panic!("rsyslog got the attacker's alert over the unix socket: {received:#?}"));
    let f: Vec<&str> = u.splitn(6, '|').collect();
    assert_eq!(f[2], "scanwatch", "app-name: {u}");
    assert!(f[4].starts_with("[scanwatch@32473 kind=\""), "structured data: {u}");
    let j: Value = serde_json::from_str(f[5].trim()).unwrap_or_else(|e| panic!("MSG is the alert JSON ({e}): {u}"));
    assert_eq!(j["source"]["ip"], atk.as_str());
    let ocsf: Vec<Value> = received
        .iter()
        .filter(|l| l.starts_with("daemon|"))
        .filter_map(|l| serde_json::from_str(l.splitn(6, '|').nth(5)?.trim()).ok())
        .collect();
    assert!(ocsf.iter().any(|v| v["class_uid"] == 2004 && v["evidences"][0]["src_endpoint"]["ip"] == atk.as_str()), "OCSF over TCP: {received:#?}");
    let stdout_alerts = alerts.len();
    assert_eq!(ocsf.len() + unix.len(), 2 * stdout_alerts, "every alert through both syslog sinks: {received:#?}");
    let ecs: Vec<Value> = std::fs::read_to_string(dir.join("alerts-ecs.jsonl"))
        .expect("ecs file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("ECS line"))
        .collect();
    assert_eq!(ecs.len(), stdout_alerts);
    let e = ecs.iter().find(|v| v["source"]["ip"] == atk.as_str()).expect("ECS alert of the attacker");
    assert_eq!(e["event"]["kind"], "alert");
    assert_eq!(e["source"]["as"]["number"], 64512);
    assert_eq!(e["scanwatch"]["evidence"], pcap.display().to_string().as_str());
    let _ = std::fs::remove_dir_all(&dir);
}
