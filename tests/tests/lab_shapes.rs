//! Tier (c): the scan shapes issue 15 found missed, each with real tools in the lab's attacker
//! namespace (../shared/LAB.md) against the lab's own prefix while the real agent watches the
//! root-side veth:
//! - TCP probes with a custom flag set carrying neither SYN nor ACK (`hping3 -U -P`) →
//!   `stealth_scan`, `custom_flags` counted;
//! - SCTP INIT scans (`nmap -sY`) → `vertical_scan` with protocol `sctp`, shape `init`;
//! - SCTP COOKIE-ECHO scans (`nmap -sZ`) → `stealth_scan`, protocol `sctp`, shape `cookie_echo`;
//! - IP-protocol scans (`nmap -sO`) → `protocol_scan` naming the distinct protocol numbers;
//! - four sources splitting one port range between them (each `nmap -sS -S SRC` on a disjoint
//!   slice) → one `distributed_scan` incident listing all four;
//! - masscan and nmap -sS against open ports (each resets what answered) → their scan alert,
//!   never an `evasion` "backscatter" incident;
//! - a benign control (connects to two open services, pings, a few SCTP-free UDP datagrams to an
//!   open port) → nothing.
//!
//! Only alerts naming the scenario's own lab sources are looked at (concurrent lab runs of other
//! engineers share the machine). Root is required; without it these fail loudly.
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use scanwatch_tests::{assert_ok, dump, lab_lock, scanwatch_bin, AgentProc, Lab};
use serde_json::Value;

/// Bound on the wait for the expected alert after the scanner finished.
const DETECT_BOUND: Duration = Duration::from_secs(12);
/// After the expected alert, time for late sweeps to show any other (wrong) kind.
const SETTLE: Duration = Duration::from_secs(3);

fn start_agent(lab: &Lab) -> AgentProc {
    AgentProc::start(&scanwatch_bin(), &["run", "--interface", &lab.root_veth])
}

/// The alert names one of `ips` as its source (or as a related source of a multi-source kind).
fn involves(v: &Value, ips: &[String]) -> bool {
    let src = v["source"]["ip"].as_str();
    let related = v["source"]["related"].as_array();
    ips.iter().any(|ip| {
        src == Some(ip.as_str()) || related.is_some_and(|r| r.iter().any(|x| x.as_str() == Some(ip.as_str())))
    })
}

fn count(v: &Value, name: &str) -> u64 {
    v["counts"][name].as_u64().unwrap_or(0)
}

fn ports(v: &Value) -> u64 {
    v["targets"]["port_count"].as_u64().unwrap_or(0)
}

fn kinds(alerts: &[Value]) -> BTreeSet<String> {
    alerts.iter().filter_map(|v| v["kind"].as_str().map(str::to_string)).collect()
}

/// Runs `scan` while the agent watches, waits for an alert matching `want` naming one of
/// `sources`, lets late sweeps settle, and returns (that alert, every alert of the sources,
/// the agent's stderr).
fn run_scan(
    lab: &Lab,
    name: &str,
    sources: &[String],
    want: &(dyn Fn(&Value) -> bool + Sync),
    scan: &(dyn Fn(&Lab) -> Output + Sync),
) -> (Value, Vec<Value>, String) {
    let agent = start_agent(lab);
    let t0 = Instant::now();
    let (found, out, scan_time) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let o = scan(lab);
            (o, t0.elapsed())
        });
        let mut found = None;
        while found.is_none() {
            let done = h.is_finished();
            found = agent.wait_for(|v| want(v) && involves(v, sources), Duration::from_millis(500)).map(|v| (v, t0.elapsed()));
            if done {
                break;
            }
        }
        let (out, scan_time) = h.join().expect("scanner thread");
        if found.is_none() {
            found = agent.wait_for(|v| want(v) && involves(v, sources), DETECT_BOUND).map(|v| (v, t0.elapsed()));
        }
        (found, out, scan_time)
    });
    assert_ok(&out, name);
    let Some((alert, latency)) = found else {
        let mine: Vec<Value> = agent.alerts().into_iter().filter(|v| involves(v, sources)).collect();
        panic!(
            "{name}: no expected alert for {sources:?} within {DETECT_BOUND:?} after the scan ({scan_time:?})\n\
             alerts of these sources:\n{}\nagent stderr:\n{}",
            dump(&mine),
            agent.stderr()
        );
    };
    eprintln!(
        "LATENCY {name}: {} after {:.3}s from scan start (scanner ran {:.3}s)",
        alert["kind"],
        latency.as_secs_f64(),
        scan_time.as_secs_f64()
    );
    std::thread::sleep(SETTLE);
    let (alerts, stderr) = agent.stop();
    let mine: Vec<Value> = alerts.into_iter().filter(|v| involves(v, sources)).collect();
    eprintln!("KINDS {name}: {:?}", kinds(&mine));
    if std::env::var_os("LAB_SHAPES_DUMP").is_some() {
        eprintln!("ALERTS {name}:\n{}", dump(&mine));
    }
    (alert, mine, stderr)
}

/// Every alert of the scenario is one of `allowed` kinds.
fn only_kinds(name: &str, mine: &[Value], allowed: &[&str], stderr: &str) {
    for k in kinds(mine) {
        assert!(allowed.contains(&k.as_str()), "{name}: raised {k}, allowed {allowed:?}\nalerts:\n{}\nagent stderr:\n{stderr}", dump(mine));
    }
}

/// Extra source addresses in the attacker namespace, routed back through the lab veth; removed
/// (routes) on drop — the addresses go with the namespace.
struct ExtraSources {
    dev: String,
    addrs: Vec<String>,
}

impl ExtraSources {
    fn add(lab: &Lab, lasts: &[u8]) -> ExtraSources {
        let mut me = ExtraSources { dev: lab.root_veth.clone(), addrs: Vec::new() };
        for last in lasts {
            let ip = Ipv4Addr::new(10, 78, lab.id as u8, *last).to_string();
            assert_ok(&lab.exec(&["ip", "addr", "add", &format!("{ip}/32"), "dev", &lab.atk_veth]), "add source address");
            let out = Command::new("ip").args(["route", "replace", &format!("{ip}/32"), "dev", &lab.root_veth]).output().expect("ip route");
            assert_ok(&out, "route to extra source");
            me.addrs.push(ip);
        }
        me
    }
}

impl Drop for ExtraSources {
    fn drop(&mut self) {
        for a in &self.addrs {
            let _ = Command::new("ip")
                .args(["route", "del", &format!("{a}/32"), "dev", &self.dev])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Custom TCP flags (hping3 -U -P): neither SYN nor ACK.
// ------------------------------------------------------------------------------------------------

#[test]
fn hping3_urg_psh_probes_are_stealth_scan() {
    let _g = lab_lock();
    let lab = Lab::new();
    let target = lab.target_ip.to_string();
    let srcs = vec![lab.attacker_ip.to_string()];
    let (alert, mine, stderr) = run_scan(
        &lab,
        "hping3 -U -P --scan 1-100",
        &srcs,
        &|v| v["kind"] == "stealth_scan",
        &|l: &Lab| l.exec_timeout(60, &["hping3", "-I", &l.atk_veth, "--scan", "1-100", "-U", "-P", &target]),
    );
    only_kinds("hping3 -U -P", &mine, &["stealth_scan"], &stderr);
    assert_eq!(alert["protocol"], "tcp", "{alert}");
    let best = mine.iter().map(|v| count(v, "custom_flags")).max().unwrap_or(0);
    assert!(best >= 25, "custom_flags counted: {}", dump(&mine));
    assert!(mine.iter().any(|v| v["shape"] == "custom"), "shape custom: {}", dump(&mine));
}

// ------------------------------------------------------------------------------------------------
// SCTP: INIT (nmap -sY) and COOKIE-ECHO (nmap -sZ).
// ------------------------------------------------------------------------------------------------

#[test]
fn nmap_sctp_init_scan_is_sctp_vertical_scan() {
    let _g = lab_lock();
    let lab = Lab::new();
    let target = lab.target_ip.to_string();
    let srcs = vec![lab.attacker_ip.to_string()];
    let (alert, mine, stderr) = run_scan(
        &lab,
        "nmap -sY",
        &srcs,
        &|v| v["kind"] == "vertical_scan" && v["protocol"] == "sctp",
        &|l: &Lab| l.nmap(&["-sY", "-p", "1-200", "-T4", "-n", "-Pn", "--max-retries", "1"], &target),
    );
    only_kinds("nmap -sY", &mine, &["vertical_scan"], &stderr);
    assert_eq!(alert["shape"], "init", "{alert}");
    assert!(mine.iter().map(|v| count(v, "sctp_init")).max().unwrap_or(0) >= 25, "{}", dump(&mine));
    assert!(mine.iter().map(ports).max().unwrap_or(0) >= 25, "fan-out shown: {}", dump(&mine));
    assert!(mine.iter().any(|v| v["fingerprint"].is_null()), "an SCTP scan has no SYN fingerprint");
}

#[test]
fn nmap_sctp_cookie_echo_scan_is_sctp_stealth_scan() {
    let _g = lab_lock();
    let lab = Lab::new();
    let target = lab.target_ip.to_string();
    let srcs = vec![lab.attacker_ip.to_string()];
    let (alert, mine, stderr) = run_scan(
        &lab,
        "nmap -sZ",
        &srcs,
        &|v| v["kind"] == "stealth_scan" && v["protocol"] == "sctp",
        &|l: &Lab| l.nmap(&["-sZ", "-p", "1-200", "-T4", "-n", "-Pn", "--max-retries", "1"], &target),
    );
    only_kinds("nmap -sZ", &mine, &["stealth_scan"], &stderr);
    assert_eq!(alert["shape"], "cookie_echo", "{alert}");
    assert!(mine.iter().map(|v| count(v, "sctp_cookie_echo")).max().unwrap_or(0) >= 25, "{}", dump(&mine));
}

// ------------------------------------------------------------------------------------------------
// IP-protocol scan (nmap -sO).
// ------------------------------------------------------------------------------------------------

#[test]
fn nmap_ip_protocol_scan_is_protocol_scan() {
    let _g = lab_lock();
    let lab = Lab::new();
    let target = lab.target_ip.to_string();
    let srcs = vec![lab.attacker_ip.to_string()];
    let (alert, mine, stderr) = run_scan(
        &lab,
        "nmap -sO",
        &srcs,
        &|v| v["kind"] == "protocol_scan",
        &|l: &Lab| l.nmap(&["-sO", "-p", "0-255", "-T4", "-n", "-Pn", "--max-retries", "1"], &target),
    );
    only_kinds("nmap -sO", &mine, &["protocol_scan"], &stderr);
    assert_eq!(alert["protocol"], "ip", "{alert}");
    assert_eq!(alert["shape"], "protocol", "{alert}");
    let best = mine.iter().map(|v| count(v, "protocols")).max().unwrap_or(0);
    assert!(best >= 100, "distinct protocol numbers counted: {}", dump(&mine));
    assert!(alert["reason"].as_str().unwrap_or("").contains("IP protocol"), "{alert}");
}

// ------------------------------------------------------------------------------------------------
// Split port range: four sources, each one disjoint slice of 1-1000, same target, same time.
// ------------------------------------------------------------------------------------------------

#[test]
fn four_sources_splitting_a_port_range_are_one_distributed_scan() {
    let _g = lab_lock();
    let lab = Lab::new();
    let extra = ExtraSources::add(&lab, &[31, 32, 33, 34]);
    let srcs = extra.addrs.clone();
    let target = lab.target_ip.to_string();
    let slices = ["1-250", "251-500", "501-750", "751-1000"];
    let want_all = |v: &Value| v["kind"] == "distributed_scan" && srcs.iter().all(|s| involves(v, std::slice::from_ref(s)));
    let (alert, mine, stderr) = run_scan(&lab, "4 × nmap -sS on disjoint slices", &srcs, &want_all, &|l: &Lab| {
        std::thread::scope(|s| {
            let hs: Vec<_> = srcs
                .iter()
                .zip(slices)
                .map(|(src, ports)| {
                    let target = target.clone();
                    s.spawn(move || {
                        l.nmap(&["-sS", "-S", src, "-e", &l.atk_veth, "-p", ports, "-T4", "-n", "-Pn", "--max-retries", "1"], &target)
                    })
                })
                .collect();
            let outs: Vec<Output> = hs.into_iter().map(|h| h.join().expect("nmap thread")).collect();
            for o in &outs {
                assert_ok(o, "nmap slice");
            }
            outs.into_iter().next().expect("four scans")
        })
    });
    // Each source's own fan-out may also show (vertical_scan); nothing else.
    only_kinds("split range", &mine, &["distributed_scan", "vertical_scan"], &stderr);
    assert_eq!(alert["shape"], "split", "{alert}");
    let related = alert["source"]["related"].as_array().map_or(0, Vec::len);
    assert_eq!(related + 1, 4, "all four sources named: {alert}");
    assert!(count(&alert, "sources") == 4, "{alert}");
    assert!(ports(&alert) >= 40, "the slices add up: {alert}");
    assert_eq!(alert["targets"]["sample_hosts"][0], lab.target_ip.to_string(), "{alert}");
    let split_incidents: BTreeSet<&str> = mine
        .iter()
        .filter(|v| v["kind"] == "distributed_scan")
        .filter_map(|v| v["alert_id"].as_str())
        .collect();
    assert_eq!(split_incidents.len(), 1, "one distributed_scan incident: {}", dump(&mine));
}

// ------------------------------------------------------------------------------------------------
// A scanner's own resets after each answered probe are its scan, not backscatter.
// ------------------------------------------------------------------------------------------------

fn resets_are_the_scan(name: &str, scan: &(dyn Fn(&Lab, &str) -> Output + Sync)) {
    let _g = lab_lock();
    let lab = Lab::new();
    // Open ports: every SYN-ACK the target sends is reset by the scanner (and by its kernel).
    let servers: Vec<_> = (0..12u16).map(|i| lab.serve_tcp(8000 + i * 7)).collect();
    let target = lab.target_ip.to_string();
    let srcs = vec![lab.attacker_ip.to_string()];
    let (_alert, mine, stderr) =
        run_scan(&lab, name, &srcs, &|v| v["kind"] == "vertical_scan", &|l: &Lab| scan(l, &target));
    drop(servers);
    only_kinds(name, &mine, &["vertical_scan"], &stderr);
    assert!(
        mine.iter().all(|v| v["shape"] != "unsolicited"),
        "{name}: its own resets reported as backscatter: {}",
        dump(&mine)
    );
    let opened = mine.iter().map(|v| v["counts"]["successes"].as_u64().unwrap_or(0)).max().unwrap_or(0);
    assert!(opened >= 6, "{name}: the open ports were seen open: {}", dump(&mine));
}

#[test]
fn masscan_resets_are_its_scan_not_backscatter() {
    resets_are_the_scan("masscan", &|l: &Lab, t: &str| l.masscan("7990-8100", &format!("{t}/32"), 2000));
}

#[test]
fn nmap_syn_scan_resets_are_its_scan_not_backscatter() {
    resets_are_the_scan("nmap -sS", &|l: &Lab, t: &str| {
        l.nmap(&["-sS", "-p", "7990-8100", "-T4", "-n", "-Pn", "--max-retries", "1"], t)
    });
}

// ------------------------------------------------------------------------------------------------
// Benign control.
// ------------------------------------------------------------------------------------------------

#[test]
fn benign_clients_stay_quiet() {
    let _g = lab_lock();
    let lab = Lab::new();
    let web = lab.serve_tcp(8080);
    let ssh = lab.serve_tcp(2222);
    let agent = start_agent(&lab);
    let t = lab.target_ip.to_string();
    let src = lab.attacker_ip.to_string();
    let script = format!(
        "import socket, time\n\
         for i in range(20):\n\
         \x20   for p in (8080, 2222):\n\
         \x20       s = socket.create_connection(('{t}', p), timeout=2); s.sendall(b'hello'); s.close()\n\
         \x20   time.sleep(0.05)\n"
    );
    assert_ok(&lab.exec_timeout(60, &["python3", "-c", &script]), "benign connects");
    assert_ok(&lab.exec_timeout(20, &["ping", "-c", "5", "-i", "0.2", "-n", &t]), "ping");
    std::thread::sleep(Duration::from_secs(6));
    let (alerts, stderr) = agent.stop();
    let mine: Vec<Value> = alerts.into_iter().filter(|v| involves(v, std::slice::from_ref(&src))).collect();
    assert!(mine.is_empty(), "benign clients raised alerts:\n{}\nagent stderr:\n{stderr}", dump(&mine));
    assert!(web.accepted() >= 20 && ssh.accepted() >= 20, "the services were used");
}
