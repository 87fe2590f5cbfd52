//! Tier (c): alerts as incidents, with real scanners against the real agent binary. A single
//! nmap / masscan scan must yield at most 3 lines per actor and direction (first, at most one
//! update, final), every line of an incident carries one id, one kind and one shape, and an ICMP
//! sweep after a stealth scan of the same source reports only the sweep's own counts and samples.
//!
//! The agent runs with `alerts.close_after = "3s"` so incidents close (with their final line)
//! while the test watches. With `LAB_COMPARE_BIN=/path/to/other/scanwatch` each line-count test
//! also runs the same scan against that binary with its default configuration and prints both
//! counts (`LINES <scan>: ...`), for before/after comparisons in one run; nothing is asserted
//! about the other binary. Root is required; without it these fail loudly.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use scanwatch_tests::{assert_ok, dump, lab_lock, scanwatch_bin, AgentProc, Lab};
use serde_json::Value;

/// Quiet time that closes an incident in these tests.
const CLOSE_AFTER: &str = "3s";

fn config_file() -> PathBuf {
    let p = std::env::temp_dir().join(format!("scanwatch-lab-incidents-{}.toml", std::process::id()));
    std::fs::write(&p, format!("[alerts]\nclose_after = \"{CLOSE_AFTER}\"\n")).expect("write config");
    p
}

fn start_agent(bin: &Path, lab: &Lab, with_config: bool) -> AgentProc {
    let cfg = config_file();
    let mut args = vec!["run".to_string(), "--interface".into(), lab.root_veth.clone()];
    if with_config {
        args.extend(["-c".into(), cfg.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    AgentProc::start(bin, &args)
}

/// Inbound lines of the lab's attacker.
fn inbound_of(lab: &Lab, alerts: &[Value]) -> Vec<Value> {
    let atk = lab.attacker_ip.to_string();
    alerts
        .iter()
        .filter(|v| {
            v["direction"] == "inbound"
                && (v["source"]["ip"].as_str() == Some(atk.as_str())
                    || v["source"]["related"].as_array().is_some_and(|r| r.iter().any(|x| x.as_str() == Some(atk.as_str()))))
        })
        .cloned()
        .collect()
}

/// Outbound lines of the scanner `exe_suffix` whose sampled targets are all in this lab.
fn outbound_of(lab: &Lab, alerts: &[Value], exe_suffix: &str) -> Vec<Value> {
    alerts
        .iter()
        .filter(|v| {
            v["direction"] == "outbound"
                && v["source"]["process"]["exe"].as_str().is_some_and(|e| e.ends_with(exe_suffix))
                && v["targets"]["sample_hosts"].as_array().is_some_and(|h| {
                    !h.is_empty()
                        && h.iter().all(|x| x.as_str().and_then(|s| s.parse().ok()).is_some_and(|ip| lab.target_in_prefix(ip)))
                })
        })
        .cloned()
        .collect()
}

/// Lines grouped by incident id, in arrival order.
fn incidents(lines: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for v in lines {
        m.entry(v["alert_id"].as_str().unwrap_or("").to_string()).or_default().push(v.clone());
    }
    m
}

/// Every incident among `lines` is whole: first line first (`seq` 1, `update` false), `seq`
/// counting up, one kind / protocol / shape / start, and closed by a final line.
fn check_incidents(what: &str, lines: &[Value]) {
    for (id, l) in incidents(lines) {
        assert!(!id.is_empty(), "{what}: a line without alert_id:\n{}", dump(&l));
        assert_eq!(l[0]["update_kind"], "first", "{what}: incident {id} does not start with its first line:\n{}", dump(&l));
        assert_eq!(l[0]["update"], false, "{what}: {}", dump(&l));
        for (i, v) in l.iter().enumerate() {
            assert_eq!(v["seq"].as_u64(), Some(i as u64 + 1), "{what}: incident {id} seq:\n{}", dump(&l));
            for f in ["kind", "protocol", "shape", "start"] {
                assert_eq!(v[f], l[0][f], "{what}: incident {id} changed its {f}:\n{}", dump(&l));
            }
        }
        let last = l.last().expect("lines");
        assert_eq!(last["update_kind"], "final", "{what}: incident {id} did not close:\n{}", dump(&l));
        assert!(last["reason"].as_str().is_some_and(|r| r.starts_with("Incident closed")), "{last}");
    }
}

/// Waits until every incident of `select(alerts)` has its final line (bounded).
fn wait_closed(agent: &AgentProc, select: &dyn Fn(&[Value]) -> Vec<Value>, bound: Duration) {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        let lines = select(&agent.alerts());
        let open = incidents(&lines).values().filter(|l| l.last().is_some_and(|v| v["update_kind"] != "final")).count();
        if !lines.is_empty() && open == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs `scan` against `bin` and returns (inbound lines, outbound lines) of the scan.
fn lines_of(
    lab: &Lab,
    bin: &Path,
    with_config: bool,
    scan: &dyn Fn(&Lab) -> Output,
    exe_suffix: &str,
) -> (Vec<Value>, Vec<Value>, String) {
    let agent = start_agent(bin, lab, with_config);
    let out = scan(lab);
    assert_ok(&out, exe_suffix);
    if with_config {
        let select = |a: &[Value]| {
            let mut l = inbound_of(lab, a);
            l.extend(outbound_of(lab, a, exe_suffix));
            l
        };
        wait_closed(&agent, &select, Duration::from_secs(20));
    } else {
        // The other binary: a sweep or two after the scan for its late lines.
        std::thread::sleep(Duration::from_secs(3));
    }
    let (alerts, stderr) = agent.stop();
    (inbound_of(lab, &alerts), outbound_of(lab, &alerts, exe_suffix), stderr)
}

/// One scan: at most 3 lines per actor and direction, every incident whole.
fn at_most_three_lines(name: &str, scan: &dyn Fn(&Lab) -> Output, exe_suffix: &str) {
    let _g = lab_lock();
    let lab = Lab::new();
    let (inb, outb, stderr) = lines_of(&lab, &scanwatch_bin(), true, scan, exe_suffix);
    let compare = std::env::var_os("LAB_COMPARE_BIN").map(|b| {
        let (i, o, _) = lines_of(&lab, Path::new(&b), false, scan, exe_suffix);
        format!("; {}: inbound {} outbound {}", Path::new(&b).display(), i.len(), o.len())
    });
    eprintln!(
        "LINES {name}: inbound {} outbound {} (incidents {} + {}){}",
        inb.len(),
        outb.len(),
        incidents(&inb).len(),
        incidents(&outb).len(),
        compare.unwrap_or_default()
    );
    assert!(!inb.is_empty(), "{name}: no inbound alert for the attacker\nstderr:\n{stderr}");
    assert!(!outb.is_empty(), "{name}: no outbound alert for {exe_suffix}\nstderr:\n{stderr}");
    assert!(inb.len() <= 3, "{name}: {} inbound lines for one scan:\n{}", inb.len(), dump(&inb));
    assert!(outb.len() <= 3, "{name}: {} outbound lines for one scan:\n{}", outb.len(), dump(&outb));
    check_incidents(&format!("{name} inbound"), &inb);
    check_incidents(&format!("{name} outbound"), &outb);
}

#[test]
fn nmap_syn_top1000_is_at_most_three_lines_per_actor_and_direction() {
    at_most_three_lines(
        "nmap -sS --top-ports 1000",
        &|l: &Lab| l.nmap(&["-sS", "--top-ports", "1000", "-T4", "-n", "-Pn"], &l.target_ip.to_string()),
        "nmap",
    );
}

#[test]
fn nmap_all_ports_is_at_most_three_lines_per_actor_and_direction() {
    at_most_three_lines(
        "nmap -sS -p-",
        &|l: &Lab| l.nmap(&["-sS", "-p-", "-T4", "--min-rate", "5000", "-n", "-Pn"], &l.target_ip.to_string()),
        "nmap",
    );
}

#[test]
fn masscan_24_is_at_most_three_lines_per_actor_and_direction() {
    at_most_three_lines("masscan -p80 /24", &|l: &Lab| l.masscan("80", &l.target_net, 10_000), "masscan");
}

/// The case: after a NULL scan of the target, a ping sweep of the lab /24 from the same
/// source is its own incident (protocol icmp, shape echo) whose lines carry the sweep's counts:
/// no ports, no NULL or UDP counters, hosts in the lab.
#[test]
fn icmp_sweep_after_a_stealth_scan_reports_only_its_own_counts() {
    let _g = lab_lock();
    let lab = Lab::new();
    let agent = start_agent(&scanwatch_bin(), &lab, true);
    let target = lab.target_ip.to_string();
    assert_ok(&lab.nmap(&["-sN", "--top-ports", "200", "-T4", "-n", "-Pn"], &target), "nmap -sN");
    let stealth = agent.wait_for(
        |v| v["kind"] == "stealth_scan" && inbound_of(&lab, std::slice::from_ref(v)).len() == 1,
        Duration::from_secs(10),
    );
    assert!(stealth.is_some(), "no stealth_scan:\n{}", dump(&inbound_of(&lab, &agent.alerts())));
    // Past the shortest window (10 s), then an ICMP echo sweep of 64 lab hosts. The attacker's
    // neighbour entries are made permanent first, so the sweep is echo requests only (no kernel
    // ARP resolution mixed in), and nmap sends IP packets (no ARP ping).
    let net = lab.target_net.trim_end_matches("0/24");
    let batch: String = (0..64)
        .map(|k| format!("neigh replace {net}{k} lladdr {} dev {} nud permanent\n", lab.root_mac, lab.atk_veth))
        .collect();
    let batch_file = std::env::temp_dir().join(format!("scanwatch-neigh-{}", std::process::id()));
    std::fs::write(&batch_file, batch).expect("write neigh batch");
    assert_ok(&lab.exec(&["ip", "-batch", batch_file.to_str().expect("path")]), "ip neigh batch");
    std::thread::sleep(Duration::from_secs(11));
    let sweep_net = format!("{net}0/26");
    assert_ok(&lab.nmap(&["-sn", "-PE", "--send-ip", "-n"], &sweep_net), "nmap -sn -PE");
    let sweep = agent.wait_for(
        |v| v["protocol"] == "icmp" && inbound_of(&lab, std::slice::from_ref(v)).len() == 1,
        Duration::from_secs(10),
    );
    let select = |a: &[Value]| inbound_of(&lab, a);
    wait_closed(&agent, &select, Duration::from_secs(15));
    let (alerts, stderr) = agent.stop();
    let mine = inbound_of(&lab, &alerts);
    let Some(sweep) = sweep else {
        panic!("no ICMP line for the sweep:\n{}\nstderr:\n{stderr}", dump(&mine));
    };
    check_incidents("stealth + sweep", &mine);
    let id = sweep["alert_id"].clone();
    let lines: Vec<&Value> = mine.iter().filter(|v| v["alert_id"] == id).collect();
    assert!(lines.len() <= 3, "{}", dump(&mine));
    for v in &lines {
        assert_eq!(v["kind"], "horizontal_scan", "{v}");
        assert_eq!(v["shape"], "echo", "{v}");
        assert!(v["counts"]["icmp_echo"].as_u64().is_some_and(|n| n > 0), "{v}");
        for k in ["null", "fin", "xmas", "udp_closed", "syn"] {
            assert!(v["counts"].get(k).is_none(), "sweep line carries {k} of the earlier scan: {v}");
        }
        assert_eq!(v["targets"]["sample_ports"].as_array().map(Vec::len), Some(0), "{v}");
        let hosts = v["targets"]["host_count"].as_u64().unwrap_or(0);
        // Over the 10 s host threshold (16) from the first line on.
        assert!(hosts >= 16, "{v}");
        let sample = v["targets"]["sample_hosts"].as_array().expect("sample_hosts");
        assert!(sample.len() as u64 <= hosts, "{v}");
        for h in sample {
            let ip = h.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad host {h}"));
            assert!(lab.target_in_prefix(ip), "{v}");
        }
        let reason = v["reason"].as_str().unwrap_or("");
        assert!(reason.contains("ICMP echo") && !reason.contains("NULL"), "{reason}");
        assert!(reason.contains(&format!("probed {hosts} hosts")), "{reason}");
    }
    // The closing line counts the sweep: 64 hosts (HyperLogLog estimate).
    let last = lines.last().expect("lines");
    assert_eq!(last["update_kind"], "final", "{last}");
    let hosts = last["targets"]["host_count"].as_u64().unwrap_or(0);
    assert!((48..=80).contains(&hosts), "{last}");
    // The stealth scan is another incident, with its own id.
    assert!(mine.iter().any(|v| v["kind"] == "stealth_scan" && v["alert_id"] != id), "{}", dump(&mine));
}
