//! Tier (c), outbound: real scanners started inside the lab's attacker namespace against the lab
//! target (../shared/LAB.md); the agent's system-wide process hooks must raise an `outbound_scan`
//! alert naming the scanning process (exe, uid, pid), and benign clients must raise none.
//!
//! Other engineers may run lab tests at the same time and the hooks see every process on the
//! machine, so every assertion is filtered by the process this test started (its pid, or for
//! shell loops its children's parent pid).
use std::time::Duration;

use scanwatch_tests::{
    assert_ok, dump, expect_alert, finish_child, is_outbound, lab_lock, proc_of, start_lab_agent, Lab,
};
use serde_json::Value;

/// The alert's process is the one we started (tgid), or a task of it.
fn by_tgid(v: &Value, pid: u32) -> bool {
    is_outbound(v) && proc_of(v)["tgid"].as_u64() == Some(u64::from(pid))
}

/// The alert's process is the one we started or a child it forked (hping3 --scan sends from a
/// forked child that inherited the raw socket).
fn by_tgid_or_child(v: &Value, pid: u32) -> bool {
    by_tgid(v, pid) || (is_outbound(v) && proc_of(v)["ppid"].as_u64() == Some(u64::from(pid)))
}

/// The alert's process is a child of `ppid` (shell loops: one short-lived child per probe).
fn by_parent(v: &Value, ppid: u32) -> bool {
    is_outbound(v)
        && (proc_of(v)["ppid"].as_u64() == Some(u64::from(ppid))
            || proc_of(v)["tgid"].as_u64() == Some(u64::from(ppid)))
}

/// The alert's process was grouped under the anchor `pid` (`source.process.anchor.pid`).
fn by_anchor(v: &Value, pid: u32) -> bool {
    is_outbound(v) && proc_of(v)["anchor"]["pid"].as_u64() == Some(u64::from(pid))
}

/// Every outbound alert about the lab target (only this test probes it) is one incident anchored
/// to `anchor`, whose prober is `comm`, and whose largest port count is sensible for `n` ports.
/// Returns the incident's last line.
fn one_anchored_incident(lab: &Lab, (alerts, stderr): &(Vec<Value>, String), anchor: u32, comm: &str, n: f64) -> Value {
    // Agent warnings (a full ring buffer: another process flooding the system-wide hooks).
    // and the process-event counters: every process on the machine feeds the hooks, so another
    // process flooding them makes the agent drop events (`proc_events_dropped`), ours included.
    let counter = |name: &str| {
        let key = format!("\"{name}\":");
        stderr.rfind(&key).map(|i| stderr[i + key.len()..].chars().take_while(char::is_ascii_digit).collect::<String>())
    };
    let mut warnings: String = stderr.lines().filter(|l| l.contains("WARNING")).take(5).collect::<Vec<_>>().join("\n");
    warnings.push_str(&format!(
        "\nproc_events {:?}, proc_events_dropped {:?}",
        counter("proc_events"),
        counter("proc_events_dropped")
    ));
    let target = lab.target_ip.to_string();
    let about_target = |v: &&Value| {
        is_outbound(v)
            && v["targets"]["sample_hosts"].as_array().is_some_and(|h| h.iter().any(|h| h.as_str() == Some(target.as_str())))
    };
    let mine: Vec<&Value> = alerts.iter().filter(about_target).collect();
    assert!(!mine.is_empty(), "no outbound_scan about {target}:\n{}", dump(alerts));
    let ids: std::collections::BTreeSet<String> = mine.iter().map(|v| v["alert_id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "the run split into several incidents:\n{}\nagent warnings:\n{warnings}", dump(alerts));
    for v in &mine {
        assert!(by_anchor(v, anchor), "anchor should be pid {anchor}: {v}");
        assert_eq!(proc_of(v)["comm"], comm, "{v}");
        assert_eq!(proc_of(v)["uid"].as_u64(), Some(0), "{v}");
    }
    let ports = max_target(alerts, |v| by_anchor(v, anchor), "port_count");
    assert!(sensible(ports, n), "port_count {ports} for {n} ports:\n{}\nagent warnings:\n{warnings}", dump(alerts));
    let last = (*mine.last().expect("alerts")).clone();
    let anc = &proc_of(&last)["anchor"];
    eprintln!(
        "anchored incident: {} lines, max port_count {ports}, anchor {anc}, ppid {}, ancestry {}; {warnings}",
        mine.len(),
        proc_of(&last)["ppid"],
        proc_of(&last)["ancestry"]
    );
    let depth = anc["depth"].as_u64().unwrap_or(0);
    assert!((1..=6).contains(&depth), "{last}");
    assert!(["spawner", "long_lived"].contains(&anc["rule"].as_str().unwrap_or("")), "{last}");
    // The ancestry is the chain up to the anchor.
    let chain = proc_of(&last)["ancestry"].as_array().cloned().unwrap_or_default();
    assert!(chain.len() >= depth as usize, "{last}");
    assert_eq!(chain[depth as usize - 1]["pid"].as_u64(), Some(u64::from(anchor)), "{last}");
    last
}

/// Largest `targets.<field>` over every alert matching `pred` (every line of the incident: first,
/// updates, and the final line the agent writes when the scan went quiet or the agent stops).
/// The first line can come early in the scan and the counts are a window's, so for a scan of N
/// the largest reported count lies in (N/2, N] (plus sketch error): assertions use [`sensible`].
fn sensible(count: f64, n: f64) -> bool {
    count > 0.45 * n && count <= 1.3 * n
}

fn max_target(alerts: &[Value], pred: impl Fn(&Value) -> bool, field: &str) -> f64 {
    alerts
        .iter()
        .filter(|v| pred(v))
        .filter_map(|v| v["targets"][field].as_f64())
        .fold(0.0, f64::max)
}

/// Common checks of an attributed alert: exe suffix, uid, tgid, and the pid is the process (or
/// one of its threads for multi-threaded senders such as masscan / zmap).
fn check_process(a: &Value, exe_suffix: &str, uid: u64, tgid: u32) {
    let p = proc_of(a);
    assert!(
        p["exe"].as_str().is_some_and(|e| e.ends_with(exe_suffix)),
        "exe should end with {exe_suffix}: {a}"
    );
    assert_eq!(p["uid"].as_u64(), Some(uid), "{a}");
    assert_eq!(p["tgid"].as_u64(), Some(u64::from(tgid)), "{a}");
    let pid = p["pid"].as_u64().unwrap_or(0);
    assert!(
        pid == u64::from(tgid) || std::path::Path::new(&format!("/proc/{tgid}/task/{pid}")).exists() || pid > u64::from(tgid),
        "pid {pid} is neither the process {tgid} nor one of its threads: {a}"
    );
    assert_eq!(a["direction"], "outbound", "{a}");
}

/// Every sampled target of the alert is one of the lab's hosts (the alert describes our scan).
fn targets_in_lab(lab: &Lab, a: &Value) {
    let hosts = a["targets"]["sample_hosts"].as_array().expect("sample_hosts");
    assert!(!hosts.is_empty(), "{a}");
    for h in hosts {
        let ip: std::net::IpAddr = h.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad host {h}"));
        assert!(lab.target_in_prefix(ip), "target {ip} outside the lab prefix: {a}");
    }
}

/// Lab-prefix check for targets we hand to tools spawned directly (LAB.md rule 2).
fn guarded(lab: &Lab, target: &str) -> String {
    lab.assert_targets(target);
    target.to_string()
}

// ------------------------------------------------------------------------------------------------
// scanners
// ------------------------------------------------------------------------------------------------

#[test]
fn nmap_syn_scan_is_attributed_with_pid_exe_uid() {
    let _g = lab_lock();
    let lab = Lab::new();
    let agent = start_lab_agent(&lab);
    let t = guarded(&lab, &lab.target_ip.to_string());
    let child = lab.spawn(&["nmap", "-sS", "-p", "1-300", "-T4", "-n", "-Pn", "--host-timeout", "60s", &t]);
    let pid = child.id();
    assert_ok(&finish_child(child, 90), "nmap -sS");
    let a = expect_alert(agent.wait_for(|v| by_tgid(v, pid), Duration::from_secs(10)), "outbound_scan for nmap", &agent);
    check_process(&a, "/nmap", 0, pid);
    targets_in_lab(&lab, &a);
    assert_eq!(proc_of(&a)["pid"].as_u64(), Some(u64::from(pid)), "nmap sends from its main thread: {a}");
    assert!(a["counts"]["raw_probe"].as_u64().unwrap_or(0) > 0, "raw probes counted: {a}");
    std::thread::sleep(Duration::from_secs(3));
    let (alerts, _) = agent.stop();
    let ports = max_target(&alerts, |v| by_tgid(v, pid), "port_count");
    let hosts = max_target(&alerts, |v| by_tgid(v, pid), "host_count");
    assert!(sensible(ports, 300.0), "port_count {ports} for 300 ports:\n{}", dump(&alerts));
    assert!(hosts <= 2.0, "host_count {hosts}:\n{}", dump(&alerts));
    // One entity named after nmap, grouped under a long-lived ancestor.
    let ids: std::collections::BTreeSet<String> =
        alerts.iter().filter(|v| by_tgid(v, pid)).map(|v| v["alert_id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "nmap split into several incidents:\n{}", dump(&alerts));
    let last = alerts.iter().rev().find(|v| by_tgid(v, pid)).expect("alert");
    assert_eq!(proc_of(last)["comm"], "nmap", "{last}");
    assert!(proc_of(last)["anchor"]["pid"].as_u64().is_some_and(|a| a != u64::from(pid)), "{last}");
}

#[test]
fn masscan_packet_socket_scan_is_attributed() {
    let _g = lab_lock();
    let lab = Lab::new();
    let agent = start_lab_agent(&lab);
    let t = guarded(&lab, &lab.target_ip.to_string());
    let ip = lab.attacker_ip.to_string();
    let child = lab.spawn(&[
        "masscan", "-p", "1-200", "--rate", "2000", "-e", &lab.atk_veth, "--adapter-ip", &ip, "--adapter-mac",
        &lab.atk_mac, "--router-mac", &lab.root_mac, "--wait", "1", &t,
    ]);
    let pid = child.id();
    assert_ok(&finish_child(child, 60), "masscan");
    let a = expect_alert(agent.wait_for(|v| by_tgid(v, pid), Duration::from_secs(10)), "outbound_scan for masscan", &agent);
    check_process(&a, "/masscan", 0, pid);
    targets_in_lab(&lab, &a);
    assert!(a["counts"]["raw_probe"].as_u64().unwrap_or(0) > 0, "per-packet probes seen: {a}");
    std::thread::sleep(Duration::from_secs(3));
    let (alerts, _) = agent.stop();
    let ports = max_target(&alerts, |v| by_tgid(v, pid), "port_count");
    let hosts = max_target(&alerts, |v| by_tgid(v, pid), "host_count");
    assert!(sensible(ports, 200.0), "port_count {ports} for 200 ports:\n{}", dump(&alerts));
    assert!(hosts <= 2.0, "host_count {hosts}:\n{}", dump(&alerts));
}

#[test]
fn zmap_horizontal_scan_is_attributed() {
    let _g = lab_lock();
    let lab = Lab::new();
    let agent = start_lab_agent(&lab);
    let net = guarded(&lab, &lab.target_net);
    let ip = lab.attacker_ip.to_string();
    let bl = lab.zmap_blocklist();
    let child = lab.spawn(&[
        "zmap", "-M", "tcp_synscan", "-p", "80", "-r", "2000", "-i", &lab.atk_veth, "-S", &ip, "-G", &lab.root_mac,
        "-b", &bl, "-c", "1", "-T", "1", "-o", "-", "--disable-syslog", &net,
    ]);
    let pid = child.id();
    assert_ok(&finish_child(child, 60), "zmap");
    let a = expect_alert(agent.wait_for(|v| by_tgid(v, pid), Duration::from_secs(10)), "outbound_scan for zmap", &agent);
    check_process(&a, "/zmap", 0, pid);
    targets_in_lab(&lab, &a);
    assert!(a["counts"]["raw_probe"].as_u64().unwrap_or(0) > 0, "per-packet probes seen: {a}");
    // zmap's connect()s go to AF_UNIX paths (/dev/log): not network failures.
    assert_eq!(a["counts"]["failures"].as_u64(), Some(0), "unix-socket connects counted as failures: {a}");
    std::thread::sleep(Duration::from_secs(3));
    let (alerts, _) = agent.stop();
    let ports = max_target(&alerts, |v| by_tgid(v, pid), "port_count");
    let hosts = max_target(&alerts, |v| by_tgid(v, pid), "host_count");
    assert!(sensible(hosts, 256.0), "host_count {hosts} for a /24:\n{}", dump(&alerts));
    assert!(ports <= 2.0, "port_count {ports}:\n{}", dump(&alerts));
    let a = alerts.iter().rev().find(|v| by_tgid(v, pid)).expect("alert");
    assert!(a["reason"].as_str().unwrap_or("").contains("horizontal"), "{a}");
}

#[test]
fn hping3_scan_is_attributed() {
    let _g = lab_lock();
    let lab = Lab::new();
    let agent = start_lab_agent(&lab);
    let t = guarded(&lab, &lab.target_ip.to_string());
    let child = lab.spawn(&["hping3", "-I", &lab.atk_veth, "--scan", "1-200", "-S", &t]);
    let pid = child.id();
    assert_ok(&finish_child(child, 60), "hping3 --scan");
    let a = expect_alert(agent.wait_for(|v| by_tgid_or_child(v, pid), Duration::from_secs(10)), "outbound_scan for hping3", &agent);
    // hping3 --scan forks: the child sends on the raw socket the parent opened.
    let sender = proc_of(&a)["tgid"].as_u64().unwrap_or(0) as u32;
    check_process(&a, "/hping3", 0, sender);
    targets_in_lab(&lab, &a);
    assert!(sender == pid || proc_of(&a)["ppid"].as_u64() == Some(u64::from(pid)), "{a}");
    assert!(a["counts"]["raw_probe"].as_u64().unwrap_or(0) > 0, "raw probes counted: {a}");
    std::thread::sleep(Duration::from_secs(3));
    let (alerts, _) = agent.stop();
    let ports = max_target(&alerts, |v| by_tgid_or_child(v, pid), "port_count");
    let hosts = max_target(&alerts, |v| by_tgid_or_child(v, pid), "host_count");
    assert!(sensible(ports, 200.0), "port_count {ports} for 200 ports:\n{}", dump(&alerts));
    assert!(hosts <= 2.0, "host_count {hosts}:\n{}", dump(&alerts));
}

/// Bash /dev/tcp loop: every probe is a forked subshell that lives a millisecond. Attribution
/// must group them into one entity (uid, exe, parent) named after the shell.
#[test]
fn bash_dev_tcp_loop_subshells_are_grouped() {
    let _g = lab_lock();
    let lab = Lab::new();
    let agent = start_lab_agent(&lab);
    let t = guarded(&lab, &lab.target_ip.to_string());
    let script = format!("for p in $(seq 1 200); do (echo > /dev/tcp/{t}/$p) 2>/dev/null; done; echo done");
    let child = lab.spawn(&["bash", "-c", &script]);
    let bash = child.id();
    assert_ok(&finish_child(child, 90), "bash /dev/tcp loop");
    let a = expect_alert(agent.wait_for(|v| by_parent(v, bash), Duration::from_secs(10)), "outbound_scan for bash loop", &agent);
    let p = proc_of(&a);
    assert!(p["comm"] == "bash", "{a}");
    assert_eq!(p["uid"].as_u64(), Some(0), "{a}");
    std::thread::sleep(Duration::from_secs(3));
    let (alerts, _) = agent.stop();
    let mine: Vec<&Value> = alerts.iter().filter(|v| by_parent(v, bash)).collect();
    // One entity: every alert of the loop carries the same alert id (updates escalate it).
    let ids: std::collections::BTreeSet<String> = mine.iter().map(|v| v["alert_id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "subshells split into several entities:\n{}", dump(&alerts));
    let last = mine.last().expect("alerts");
    let lp = proc_of(last);
    assert!(lp["exe"].as_str().is_some_and(|e| e.ends_with("/bash")), "exe names bash: {last}");
    assert_eq!(lp["ppid"].as_u64(), Some(u64::from(bash)), "grouped by the loop's shell: {last}");
    assert_eq!(lp["anchor"]["pid"].as_u64(), Some(u64::from(bash)), "anchored to the loop's shell: {last}");
    assert_eq!(lp["anchor"]["depth"].as_u64(), Some(1), "{last}");
    let ports = max_target(&alerts, |v| by_parent(v, bash), "port_count");
    assert!(sensible(ports, 200.0), "port_count {ports} for 200 ports:\n{}", dump(&alerts));
}

/// `timeout 1 bash -c "echo >/dev/tcp/T/$p"` per port: prober bash → one `timeout` per probe →
/// the loop shell. The anchor (the loop shell, a spawner) groups the 200 probes in one incident;
/// `ppid` stays the real parent (a `timeout`).
#[test]
fn timeout_wrapped_dev_tcp_loop_is_grouped_under_the_loop_shell() {
    let _g = lab_lock();
    let lab = Lab::new();
    let agent = start_lab_agent(&lab);
    let t = guarded(&lab, &lab.target_ip.to_string());
    let script =
        format!("for p in $(seq 1 200); do timeout 1 bash -c \"echo > /dev/tcp/{t}/$p\" 2>/dev/null; done; echo done");
    let child = lab.spawn(&["bash", "-c", &script]);
    let shell = child.id();
    let out = finish_child(child, 120);
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"), "{out:?}");
    expect_alert(agent.wait_for(|v| by_anchor(v, shell), Duration::from_secs(10)), "outbound_scan under the loop shell", &agent);
    std::thread::sleep(Duration::from_secs(3));
    let run = agent.stop();
    let last = one_anchored_incident(&lab, &run, shell, "bash", 200.0);
    let p = proc_of(&last);
    assert_ne!(p["ppid"].as_u64(), Some(u64::from(shell)), "ppid is the real parent (a timeout): {last}");
    assert_eq!(p["anchor"]["depth"].as_u64(), Some(2), "{last}");
    assert!(p["anchor"]["exe"].as_str().is_some_and(|e| e.ends_with("/bash")), "{last}");
    let wrapper = p["ancestry"][0]["exe"].as_str().unwrap_or("");
    assert!(wrapper.ends_with("/timeout") || wrapper == "[exited]" || wrapper == "[timeout]", "{last}");
}

/// `xargs -P 8 -I{} sh -c 'nc -z -w1 T {}'`: nc → one `sh -c` per probe → xargs. One incident
/// anchored to xargs.
#[test]
fn xargs_parallel_sh_wrapped_nc_is_grouped_under_xargs() {
    let _g = lab_lock();
    let lab = Lab::new();
    let agent = start_lab_agent(&lab);
    let t = guarded(&lab, &lab.target_ip.to_string());
    let list = std::env::temp_dir().join(format!("scanwatch-xargs-ports-{}", std::process::id()));
    std::fs::write(&list, (1..=200).map(|p| format!("{p}\n")).collect::<String>()).expect("port list");
    let cmd = format!("nc -z -w1 {t} {{}}");
    let child = lab.spawn(&["xargs", "-a", list.to_str().expect("path"), "-P", "8", "-I{}", "sh", "-c", &cmd]);
    let xargs = child.id();
    let out = finish_child(child, 120);
    let _ = std::fs::remove_file(&list);
    // nc -z exits 1 for a closed port; xargs then exits 123.
    assert!(out.status.code().is_some_and(|c| c == 0 || c == 123), "{out:?}");
    expect_alert(agent.wait_for(|v| by_anchor(v, xargs), Duration::from_secs(10)), "outbound_scan under xargs", &agent);
    std::thread::sleep(Duration::from_secs(3));
    let run = agent.stop();
    let last = one_anchored_incident(&lab, &run, xargs, "nc", 200.0);
    let p = proc_of(&last);
    assert_ne!(p["ppid"].as_u64(), Some(u64::from(xargs)), "ppid is the real parent (an sh): {last}");
    assert!(p["anchor"]["exe"].as_str().is_some_and(|e| e.ends_with("/xargs")), "{last}");
}

/// GNU parallel: `parallel -j8 nc -z -w1 T ::: 1..200`: nc (exec'd by the job's shell) → perl
/// `parallel`. One incident anchored to parallel.
#[test]
fn gnu_parallel_nc_jobs_are_grouped_under_parallel() {
    let _g = lab_lock();
    let lab = Lab::new();
    let agent = start_lab_agent(&lab);
    let t = guarded(&lab, &lab.target_ip.to_string());
    let ports: Vec<String> = (1..=200).map(|p: u32| p.to_string()).collect();
    let mut args = vec!["parallel", "--will-cite", "-j8", "nc", "-z", "-w1", &t, ":::"];
    args.extend(ports.iter().map(String::as_str));
    let child = lab.spawn(&args);
    let parallel = child.id();
    let out = finish_child(child, 120);
    // parallel exits with the number of failed jobs (closed ports: nc -z fails), capped at 101.
    assert!(out.status.code().is_some(), "{out:?}");
    expect_alert(agent.wait_for(|v| by_anchor(v, parallel), Duration::from_secs(10)), "outbound_scan under parallel", &agent);
    std::thread::sleep(Duration::from_secs(3));
    let run = agent.stop();
    let last = one_anchored_incident(&lab, &run, parallel, "nc", 200.0);
    assert_eq!(proc_of(&last)["anchor"]["comm"], "parallel", "{last}");
}

#[test]
fn unprivileged_bash_loop_as_nobody_is_attributed() {
    let _g = lab_lock();
    let lab = Lab::new();
    let agent = start_lab_agent(&lab);
    let t = guarded(&lab, &lab.target_ip.to_string());
    let script = format!("for p in $(seq 1 150); do (echo > /dev/tcp/{t}/$p) 2>/dev/null; done; echo done");
    let child = lab.spawn_as("nobody", &["bash", "-c", &script]);
    let bash = child.id();
    assert_ok(&finish_child(child, 90), "bash loop as nobody");
    let a = expect_alert(agent.wait_for(|v| by_parent(v, bash), Duration::from_secs(10)), "outbound_scan for nobody's loop", &agent);
    let p = proc_of(&a);
    assert_eq!(p["uid"].as_u64(), Some(65534), "{a}");
    assert_eq!(p["user"], "nobody", "{a}");
    assert_eq!(p["comm"], "bash", "{a}");
    std::thread::sleep(Duration::from_secs(2));
    let (alerts, _) = agent.stop();
    let mine: Vec<&Value> = alerts.iter().filter(|v| by_parent(v, bash)).collect();
    let ids: std::collections::BTreeSet<String> = mine.iter().map(|v| v["alert_id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "subshells split into several entities:\n{}", dump(&alerts));
    let last = mine.last().expect("alerts");
    assert!(proc_of(last)["exe"].as_str().is_some_and(|e| e.ends_with("/bash")), "exe names bash: {last}");
    assert_eq!(proc_of(last)["ppid"].as_u64(), Some(u64::from(bash)), "{last}");
}

#[test]
fn unprivileged_python_loop_as_nobody_is_attributed_with_pid() {
    let _g = lab_lock();
    let lab = Lab::new();
    let agent = start_lab_agent(&lab);
    let t = guarded(&lab, &lab.target_ip.to_string());
    let script = format!(
        "import socket\nfor p in range(1, 301):\n s=socket.socket()\n s.settimeout(0.5)\n s.connect_ex(('{t}', p))\n s.close()\n"
    );
    let child = lab.spawn_as("nobody", &["/usr/bin/python3", "-c", &script]);
    let pid = child.id();
    assert_ok(&finish_child(child, 90), "python loop as nobody");
    let a = expect_alert(agent.wait_for(|v| by_tgid(v, pid), Duration::from_secs(10)), "outbound_scan for python as nobody", &agent);
    check_process(&a, "", 65534, pid);
    targets_in_lab(&lab, &a);
    assert!(proc_of(&a)["exe"].as_str().unwrap_or("").contains("python3"), "{a}");
    assert_eq!(proc_of(&a)["user"], "nobody", "{a}");
}

/// A scanner that is gone before the agent looks at procfs is still reported, with the kernel's
/// capture (comm, pid, uid) and `exited: true`. The agent is paused (SIGSTOP) while the scanner
/// runs so its events wait in the ring buffer until the process has exited.
#[test]
fn exited_scanner_is_reported_with_kernel_identity() {
    let _g = lab_lock();
    let lab = Lab::new();
    let agent = start_lab_agent(&lab);
    let t = guarded(&lab, &lab.target_ip.to_string());
    let script = format!(
        "import socket\nfor p in range(1, 151):\n s=socket.socket()\n s.settimeout(0.5)\n s.connect_ex(('{t}', p))\n s.close()\n"
    );
    agent.signal(libc::SIGSTOP);
    let child = lab.spawn_as("nobody", &["/usr/bin/python3", "-c", &script]);
    let pid = child.id();
    let out = finish_child(child, 90);
    // Make sure the process is really gone (reaped) before the agent resumes.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    agent.signal(libc::SIGCONT);
    assert_ok(&out, "short-lived python scanner");
    let a = expect_alert(agent.wait_for(|v| by_tgid(v, pid), Duration::from_secs(10)), "outbound_scan for the exited scanner", &agent);
    let p = proc_of(&a);
    assert_eq!(p["exited"], true, "{a}");
    assert_eq!(p["comm"], "python3", "{a}");
    assert_eq!(p["uid"].as_u64(), Some(65534), "{a}");
    assert_eq!(p["user"], "nobody", "{a}");
    assert_eq!(p["pid"].as_u64(), Some(u64::from(pid)), "{a}");
}

// ------------------------------------------------------------------------------------------------
// benign controls
// ------------------------------------------------------------------------------------------------

#[test]
fn curl_loop_against_two_open_services_raises_nothing() {
    let _g = lab_lock();
    let lab = Lab::new();
    let s1 = lab.serve_tcp(8080);
    let s2 = lab.serve_tcp(8081);
    let agent = start_lab_agent(&lab);
    let t = guarded(&lab, &lab.target_ip.to_string());
    let script = format!(
        "for i in $(seq 1 60); do curl -s -m 2 -o /dev/null http://{t}:8080/; curl -s -m 2 -o /dev/null http://{t}:8081/; done; echo done"
    );
    let child = lab.spawn(&["bash", "-c", &script]);
    let bash = child.id();
    let out = finish_child(child, 120);
    assert!(out.status.success() || String::from_utf8_lossy(&out.stdout).contains("done"), "{out:?}");
    assert!(s1.accepted() >= 55 && s2.accepted() >= 55, "connects succeeded: {} {}", s1.accepted(), s2.accepted());
    std::thread::sleep(Duration::from_secs(4));
    let (alerts, stderr) = agent.stop();
    let bad: Vec<&Value> = alerts
        .iter()
        .filter(|v| by_parent(v, bash) || (is_outbound(v) && proc_of(v)["exe"].as_str().is_some_and(|e| e.ends_with("/curl"))))
        .collect();
    assert!(bad.is_empty(), "curl loop raised outbound_scan: {bad:#?}\n{stderr}");
}

#[test]
fn package_manager_like_burst_raises_nothing() {
    let _g = lab_lock();
    let lab = Lab::new();
    let n = lab.id as u8;
    let addrs: Vec<std::net::SocketAddr> =
        [20u8, 21, 22].iter().map(|h| format!("10.77.{n}.{h}:443").parse().unwrap()).collect();
    let servers: Vec<_> = addrs.iter().map(|a| lab.serve_tcp_on(*a)).collect();
    let agent = start_lab_agent(&lab);
    let hosts: Vec<String> = addrs.iter().map(|a| guarded(&lab, &a.ip().to_string())).collect();
    let script = format!(
        "import socket\nhosts={hosts:?}\nok=0\nfor i in range(30):\n s=socket.create_connection((hosts[i%3],443),timeout=2)\n s.sendall(b'x')\n s.close()\n ok+=1\nprint('ok', ok)\n"
    );
    let child = lab.spawn(&["/usr/bin/python3", "-c", &script]);
    let pid = child.id();
    let out = finish_child(child, 60);
    assert_ok(&out, "package-manager-like burst");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok 30"), "{out:?}");
    // The lab servers poll accept() every 10 ms: the client can finish before they catch up.
    let accepted = || servers.iter().map(|s| s.accepted()).sum::<u64>();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while accepted() < 30 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(accepted() >= 30);
    std::thread::sleep(Duration::from_secs(4));
    let (alerts, stderr) = agent.stop();
    let bad: Vec<&Value> = alerts.iter().filter(|v| by_tgid(v, pid)).collect();
    assert!(bad.is_empty(), "package-manager-like burst raised outbound_scan: {bad:#?}\n{stderr}");
}
