//! Tier (c): one test per real-tool inbound scenario. Each runs a real scanner inside the lab's
//! attacker namespace (../shared/LAB.md) against the lab's own prefix while the real agent watches
//! the root-side veth, and checks that the scenario is shown as exactly its expected alert kind
//! (and, where the tool leaves a mark, the fingerprint's `tool_hint`).
//!
//! Only alerts whose `source.ip` (or, for multi-source kinds, `source.related`) is one of the
//! scenario's own lab sources are looked at, so other engineers' concurrent lab runs cannot
//! confuse the assertions. Every test prints the detection latency (scan start to alert) with
//! `eprintln!` (run with `--nocapture` to see it; `LAB_INBOUND_DUMP=1` also prints every alert of
//! the scenario). Root is required; without it these fail loudly.
use std::collections::BTreeSet;
use std::process::Output;
use std::time::{Duration, Instant};

use scanwatch_tests::{assert_ok, dump, lab_lock, scanwatch_bin, AgentProc, Lab};
use serde_json::Value;

/// Bound on the wait for the expected alert after the scanner finished.
const DETECT_BOUND: Duration = Duration::from_secs(10);
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

/// One scenario: what the scanner is, which sources it uses and what must be shown.
struct Scenario<'a> {
    name: &'a str,
    /// Lab source addresses of the scan (the attacker, plus spoofed decoys).
    sources: Vec<String>,
    /// The kind the scenario must raise.
    expected: &'a str,
    /// Other kinds that are also correct for these sources (e.g. each decoy's own fan-out).
    tolerated: &'a [&'a str],
    /// Extra check on the expected alert (tool hint, counts, targets).
    check: &'a dyn Fn(&Value, &[Value]),
}

/// Runs `scan` (in a thread, so latency is measured while it runs), waits for the expected kind,
/// then checks every alert of the scenario's sources. Returns the expected alert.
fn run_scenario(lab: &Lab, sc: &Scenario<'_>, scan: &(dyn Fn(&Lab) -> Output + Sync)) -> Value {
    let agent = start_agent(lab);
    let (srcs, expected) = (&sc.sources, sc.expected);
    let t0 = Instant::now();
    let (found, out, scan_time) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let o = scan(lab);
            (o, t0.elapsed())
        });
        // Waits during the scan; the bound only starts counting once the scan is done.
        let mut found = None;
        while found.is_none() {
            let done = h.is_finished();
            found = agent
                .wait_for(|v| v["kind"] == expected && involves(v, srcs), Duration::from_millis(500))
                .map(|v| (v, t0.elapsed()));
            if done {
                break;
            }
        }
        let (out, scan_time) = h.join().expect("scanner thread");
        if found.is_none() {
            found = agent
                .wait_for(|v| v["kind"] == expected && involves(v, srcs), DETECT_BOUND)
                .map(|v| (v, t0.elapsed()));
        }
        (found, out, scan_time)
    });
    assert_ok(&out, sc.name);
    let Some((alert, latency)) = found else {
        let mine: Vec<Value> = agent.alerts().into_iter().filter(|v| involves(v, srcs)).collect();
        panic!(
            "{}: no {expected} alert for {srcs:?} within {DETECT_BOUND:?} after the scan ({scan_time:?})\n\
             alerts of these sources:\n{}\nagent stderr:\n{}",
            sc.name,
            dump(&mine),
            agent.stderr()
        );
    };
    eprintln!(
        "LATENCY {}: {expected} after {:.3}s from scan start (scanner ran {:.3}s)",
        sc.name,
        latency.as_secs_f64(),
        scan_time.as_secs_f64()
    );
    std::thread::sleep(SETTLE);
    let (alerts, stderr) = agent.stop();
    let mine: Vec<Value> = alerts.into_iter().filter(|v| involves(v, srcs)).collect();
    let kinds: BTreeSet<String> = mine.iter().filter_map(|v| v["kind"].as_str().map(str::to_string)).collect();
    eprintln!("KINDS {}: {kinds:?}", sc.name);
    if std::env::var_os("LAB_INBOUND_DUMP").is_some() {
        eprintln!("ALERTS {}:\n{}", sc.name, dump(&mine));
    }
    for k in &kinds {
        assert!(
            k == expected || sc.tolerated.contains(&k.as_str()),
            "{}: raised {k}, expected exactly {expected} (tolerated {:?})\nalerts:\n{}\nagent stderr:\n{stderr}",
            sc.name,
            sc.tolerated,
            dump(&mine)
        );
    }
    assert_eq!(alert["direction"], "inbound", "{alert}");
    (sc.check)(&alert, &mine);
    alert
}

fn attacker(lab: &Lab) -> Vec<String> {
    vec![lab.attacker_ip.to_string()]
}

/// Some alert of the scenario (first or escalation update) carries `hint` as fingerprint tool hint.
fn has_tool_hint(mine: &[Value], hint: &str) -> bool {
    mine.iter().any(|v| v["fingerprint"]["tool_hint"] == hint)
}

fn nmap_scenario(name: &str, extra: &[&str], expected: &str, check: &dyn Fn(&Value, &[Value])) -> Value {
    let _g = lab_lock();
    let lab = Lab::new();
    let target = lab.target_ip.to_string();
    let sc = Scenario { name, sources: attacker(&lab), expected, tolerated: &[], check };
    run_scenario(&lab, &sc, &|l: &Lab| l.nmap(extra, &target))
}

fn count(v: &Value, name: &str) -> u64 {
    v["counts"][name].as_u64().unwrap_or(0)
}

fn ports(v: &Value) -> u64 {
    v["targets"]["port_count"].as_u64().unwrap_or(0)
}

/// A vertical scan's incident: the first alert comes from the kernel's 25-port threshold event,
/// or — when a periodic sweep reads the source a few milliseconds into the scan, before that —
/// from the sequential test, which needs `detect.trw_min_fanout` (5) ports; either way the
/// incident (the first alert and its updates) reaches the port threshold.
fn vertical_fan_out(first: &Value, mine: &[Value]) {
    assert!(ports(first) >= 5, "first alert below the sequential test's fan-out: {first}");
    let best = mine.iter().filter(|v| v["kind"] == "vertical_scan").map(ports).max().unwrap_or(0);
    assert!(best >= 25, "no alert of the incident reached 25 ports: {}", dump(mine));
}

// ------------------------------------------------------------------------------------------------
// Stealth probe shapes: NULL, FIN, Xmas, ACK.
// ------------------------------------------------------------------------------------------------

fn stealth_check(counter: &'static str) -> impl Fn(&Value, &[Value]) {
    move |a: &Value, mine: &[Value]| {
        let best = mine.iter().map(|v| count(v, counter)).max().unwrap_or(0);
        assert!(best >= 10, "{counter} counted in the stealth alert: {}", dump(mine));
        assert!(mine.iter().map(ports).max().unwrap_or(0) >= 25, "fan-out shown: {}", dump(mine));
        assert!(a["targets"]["host_count"].as_u64().unwrap_or(99) <= 2, "{a}");
    }
}

#[test]
fn nmap_null_scan_is_stealth_scan() {
    nmap_scenario("nmap -sN", &["-sN", "-p", "1-100", "-T4", "-n", "-Pn"], "stealth_scan", &stealth_check("null"));
}

#[test]
fn nmap_fin_scan_is_stealth_scan() {
    nmap_scenario("nmap -sF", &["-sF", "-p", "1-100", "-T4", "-n", "-Pn"], "stealth_scan", &stealth_check("fin"));
}

#[test]
fn nmap_xmas_scan_is_stealth_scan() {
    nmap_scenario("nmap -sX", &["-sX", "-p", "1-100", "-T4", "-n", "-Pn"], "stealth_scan", &stealth_check("xmas"));
}

#[test]
fn nmap_custom_flags_scan_is_stealth_scan() {
    // --scanflags URGPSH: neither SYN, ACK nor RST, which no TCP stack sends.
    nmap_scenario(
        "nmap --scanflags URGPSH",
        &["-sS", "--scanflags", "URGPSH", "-p", "1-100", "-T4", "-n", "-Pn"],
        "stealth_scan",
        &stealth_check("custom_flags"),
    );
}

#[test]
fn nmap_ack_scan_is_stealth_scan() {
    nmap_scenario("nmap -sA", &["-sA", "-p", "1-100", "-T4", "-n", "-Pn"], "stealth_scan", &stealth_check("ack"));
}

// ------------------------------------------------------------------------------------------------
// Evasion: fragments, source port 53, bad checksums.
// ------------------------------------------------------------------------------------------------

fn evasion_check(counter: &'static str) -> impl Fn(&Value, &[Value]) {
    move |_a: &Value, mine: &[Value]| {
        let best = mine.iter().map(|v| count(v, counter)).max().unwrap_or(0);
        assert!(best >= 3, "{counter} counted in the evasion alert: {}", dump(mine));
        assert!(has_tool_hint(mine, "nmap") || counter == "frag_first", "nmap tool hint: {}", dump(mine));
    }
}

#[test]
fn nmap_fragmented_syn_scan_is_evasion() {
    nmap_scenario("nmap -f", &["-sS", "-f", "-p", "1-100", "-T4", "-n", "-Pn"], "evasion", &evasion_check("frag_first"));
}

#[test]
fn nmap_source_port_53_is_evasion() {
    nmap_scenario(
        "nmap --source-port 53",
        &["-sS", "--source-port", "53", "-p", "1-100", "-T4", "-n", "-Pn"],
        "evasion",
        &evasion_check("srcport_trick"),
    );
}

#[test]
fn nmap_badsum_is_evasion() {
    // A bad-checksum SYN gets no reply, so nmap retries and reports the ports filtered.
    nmap_scenario(
        "nmap --badsum",
        &["-sS", "--badsum", "-p", "1-100", "-T4", "-n", "-Pn", "--max-retries", "1"],
        "evasion",
        &evasion_check("badsum"),
    );
}

// ------------------------------------------------------------------------------------------------
// Decoys: nmap -D with spoofed lab sources.
// ------------------------------------------------------------------------------------------------

/// Root-side /32 routes for the spoofed decoy addresses, so the target's replies to them go back
/// into the lab veth (where nobody answers ARP for them) instead of the default route. The routes
/// go away with the veth at teardown; removed explicitly on drop as well.
struct DecoyRoutes {
    dev: String,
    addrs: Vec<String>,
}

impl DecoyRoutes {
    fn add(lab: &Lab, addrs: &[String]) -> DecoyRoutes {
        for a in addrs {
            let st = std::process::Command::new("ip")
                .args(["route", "add", &format!("{a}/32"), "dev", &lab.root_veth])
                .status()
                .expect("ip route add");
            assert!(st.success(), "cannot add decoy route {a} dev {}", lab.root_veth);
        }
        DecoyRoutes { dev: lab.root_veth.clone(), addrs: addrs.to_vec() }
    }
}

impl Drop for DecoyRoutes {
    fn drop(&mut self) {
        for a in &self.addrs {
            let _ = std::process::Command::new("ip")
                .args(["route", "del", &format!("{a}/32"), "dev", &self.dev])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

#[test]
fn nmap_decoy_scan_is_decoy_cluster() {
    let _g = lab_lock();
    let lab = Lab::new();
    let decoys: Vec<String> = (3..=4).map(|h| format!("10.78.{}.{h}", lab.id)).collect();
    let _routes = DecoyRoutes::add(&lab, &decoys);
    let mut sources = attacker(&lab);
    sources.extend(decoys.iter().cloned());
    let target = lab.target_ip.to_string();
    let dspec = format!("{},ME", decoys.join(","));
    let all = sources.clone();
    let check = move |a: &Value, mine: &[Value]| {
        let mut members: BTreeSet<String> = a["source"]["related"]
            .as_array()
            .map(|r| r.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        members.extend(a["source"]["ip"].as_str().map(str::to_string));
        for s in &all {
            assert!(members.contains(s), "cluster names {s}: {a}");
        }
        assert!(ports(a) >= 3, "common ports shown: {a}");
        assert_eq!(a["fingerprint"]["tool_hint"], "nmap", "{a}");
        let _ = mine;
    };
    let sc = Scenario {
        name: "nmap -D",
        sources,
        expected: "decoy_cluster",
        // Each decoy, seen alone, is a vertical scan; the cluster alert shows that fan-out once.
        tolerated: &[],
        check: &check,
    };
    run_scenario(&lab, &sc, &|l: &Lab| {
        l.nmap(&["-sS", "-D", &dspec, "-p", "1-100", "-T4", "-n", "-Pn"], &target)
    });
}

// ------------------------------------------------------------------------------------------------
// Fan-out scans: IPv6 SYN, zmap, hping3, ping sweep, UDP.
// ------------------------------------------------------------------------------------------------

#[test]
fn nmap_ipv6_syn_scan_is_vertical_scan() {
    let _g = lab_lock();
    let lab = Lab::new();
    let target = lab.target_ip6.to_string();
    let check = |a: &Value, mine: &[Value]| {
        vertical_fan_out(a, mine);
        assert!(has_tool_hint(mine, "nmap"), "nmap tool hint: {}", dump(mine));
    };
    let sc = Scenario {
        name: "nmap -6 -sS",
        sources: vec![lab.attacker_ip6.to_string()],
        expected: "vertical_scan",
        tolerated: &[],
        check: &check,
    };
    run_scenario(&lab, &sc, &|l: &Lab| l.nmap(&["-6", "-sS", "-p", "1-200", "-T4", "-n", "-Pn"], &target));
}

#[test]
fn zmap_one_port_across_24_is_horizontal_scan() {
    let _g = lab_lock();
    let lab = Lab::new();
    let net = lab.target_net.clone();
    let check = |a: &Value, mine: &[Value]| {
        // The first alert may come from the sequential test after a handful of hosts; the
        // escalation updates carry the fan-out.
        let hosts = mine.iter().filter_map(|v| v["targets"]["host_count"].as_u64()).max().unwrap_or(0);
        assert!(hosts >= 16, "{}", dump(mine));
        assert!(ports(a) <= 2, "{a}");
        assert!(has_tool_hint(mine, "zmap"), "zmap tool hint: {}", dump(mine));
    };
    let sc = Scenario { name: "zmap", sources: attacker(&lab), expected: "horizontal_scan", tolerated: &[], check: &check };
    run_scenario(&lab, &sc, &|l: &Lab| l.zmap(80, &net, 2000));
}

#[test]
fn hping3_scan_is_vertical_scan() {
    let _g = lab_lock();
    let lab = Lab::new();
    let target = lab.target_ip.to_string();
    let check = |a: &Value, mine: &[Value]| {
        vertical_fan_out(a, mine);
        assert!(has_tool_hint(mine, "hping3"), "hping3 tool hint: {}", dump(mine));
    };
    let sc = Scenario { name: "hping3 --scan", sources: attacker(&lab), expected: "vertical_scan", tolerated: &[], check: &check };
    run_scenario(&lab, &sc, &|l: &Lab| l.hping3_scan("1-100", &target));
}

#[test]
fn nmap_ping_sweep_is_horizontal_scan() {
    let _g = lab_lock();
    let lab = Lab::new();
    let net = lab.target_net.clone();
    let check = |a: &Value, mine: &[Value]| {
        let hosts = mine.iter().filter_map(|v| v["targets"]["host_count"].as_u64()).max().unwrap_or(0);
        assert!(hosts >= 16, "{a}");
        let echo = mine.iter().map(|v| count(v, "icmp_echo")).max().unwrap_or(0);
        assert!(echo >= 16, "icmp_echo counted: {}", dump(mine));
    };
    let sc = Scenario { name: "nmap -sn", sources: attacker(&lab), expected: "horizontal_scan", tolerated: &[], check: &check };
    // Echo requests only (the ARP variant is the next test).
    run_scenario(&lab, &sc, &|l: &Lab| l.nmap(&["-sn", "-PE", "--disable-arp-ping", "-T4", "-n"], &net));
}

#[test]
fn nmap_arp_sweep_is_horizontal_scan() {
    let _g = lab_lock();
    let lab = Lab::new();
    let net = lab.target_net.clone();
    let check = |a: &Value, mine: &[Value]| {
        let hosts = mine.iter().filter_map(|v| v["targets"]["host_count"].as_u64()).max().unwrap_or(0);
        assert!(hosts >= 16, "{a}");
        let arp = mine.iter().map(|v| count(v, "arp_who_has")).max().unwrap_or(0);
        assert!(arp >= 16, "arp_who_has counted: {}", dump(mine));
    };
    let sc = Scenario { name: "nmap -sn (ARP)", sources: attacker(&lab), expected: "horizontal_scan", tolerated: &[], check: &check };
    // nmap's default host discovery on a directly connected network: ARP who-has only.
    run_scenario(&lab, &sc, &|l: &Lab| l.nmap(&["-sn", "-T4", "-n"], &net));
}

#[test]
fn nmap_udp_scan_is_vertical_scan() {
    let _g = lab_lock();
    let lab = Lab::new();
    let target = lab.target_ip.to_string();
    // The first alert may come from the sequential test (a handful of closed ports); the
    // escalation updates show the fan-out.
    let check = |_a: &Value, mine: &[Value]| {
        assert!(mine.iter().map(ports).max().unwrap_or(0) >= 25, "{}", dump(mine));
        let closed = mine.iter().map(|v| count(v, "udp_closed")).max().unwrap_or(0);
        assert!(closed >= 25, "udp_closed counted: {}", dump(mine));
    };
    let sc = Scenario { name: "nmap -sU", sources: attacker(&lab), expected: "vertical_scan", tolerated: &[], check: &check };
    run_scenario(&lab, &sc, &|l: &Lab| {
        l.nmap(&["-sU", "--top-ports", "50", "-T4", "-n", "-Pn", "--max-retries", "1"], &target)
    });
}

// ------------------------------------------------------------------------------------------------
// One probe per source: the first-contact tier holds every source, the agent reads the table.
// ------------------------------------------------------------------------------------------------

#[test]
fn one_syn_from_each_of_45_spoofed_sources_is_distributed_scan() {
    let _g = lab_lock();
    let lab = Lab::new();
    let probes: Vec<(std::net::Ipv4Addr, u16)> =
        (0..45u8).map(|i| (std::net::Ipv4Addr::new(10, 78, lab.id as u8, 100 + i), 3000 + u16::from(i))).collect();
    let sources: Vec<String> = probes.iter().map(|(ip, _)| ip.to_string()).collect();
    let _routes = DecoyRoutes::add(&lab, &sources);
    let target = lab.target_ip.to_string();
    let check = |a: &Value, _mine: &[Value]| {
        assert!(ports(a) >= 40, "the sources' ports add up: {a}");
        assert!(a["counts"]["sources"].as_u64().unwrap_or(0) >= 40, "{a}");
    };
    let sc = Scenario { name: "hping3 one SYN per spoofed source", sources, expected: "distributed_scan", tolerated: &[], check: &check };
    run_scenario(&lab, &sc, &|l: &Lab| l.hping3_spoofed_syns(&probes, &target));
}
