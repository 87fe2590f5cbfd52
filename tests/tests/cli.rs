//! The agent's command line where it needs the kernel (root): `check`, and `baseline` → `run`
//! with the learned baseline. Uses the real binary. (The unprivileged commands are tested in
//! scanwatch/tests/cli.rs.)
use std::{process::Command, time::Duration};

use scanwatch_tests::{lab_lock, scanwatch_bin, AgentProc, Lab};

fn run(args: &[&str]) -> std::process::Output {
    Command::new(scanwatch_bin()).args(args).output().expect("run scanwatch")
}

fn tmp(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("scanwatch-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).expect("write temp file");
    p
}

#[test]
fn check_reports_features_and_hook_choices() {
    let out = run(&["check"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["BTF", "kprobes", "program type XDP: yes", "ring buffer map: yes", "connect", "tcp_outcome"] {
        assert!(text.contains(needle), "check output lacks {needle}:\n{text}");
    }
    // This machine has no kprobe PMU: connect must fall back to the tracepoint.
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    let connect = text.lines().find(|l| l.trim_start().starts_with("connect ")).expect("connect line");
    if kprobes {
        assert!(connect.contains("-> kprobe:"), "{connect}");
    } else {
        assert!(connect.contains("-> tracepoint:syscalls:sys_enter_connect"), "{connect}");
    }
}

#[test]
fn baseline_learns_and_run_uses_it() {
    let _g = lab_lock();
    let lab = Lab::new();
    let _svc = lab.serve_tcp(8080);
    let out_path = std::env::temp_dir().join(format!("scanwatch-baseline-{}.json", std::process::id()));
    let mut learner = Command::new(scanwatch_bin())
        .args(["baseline", "--interface", &lab.root_veth, "--duration", "4", "--output"])
        .arg(&out_path)
        .spawn()
        .expect("start baseline");
    std::thread::sleep(Duration::from_millis(1500));
    let target = lab.target_ip.to_string();
    let script = format!(
        "import socket\nfor i in range(20):\n s=socket.create_connection(('{target}',8080),timeout=2)\n s.close()"
    );
    assert!(lab.exec(&["/usr/bin/python3", "-c", &script]).status.success());
    let status = learner.wait().expect("baseline exits");
    assert!(status.success(), "baseline failed");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_path).expect("baseline written")).expect("baseline is JSON");
    assert!(json.is_object(), "{json}");
    // `run` accepts the learned baseline through the config.
    let cfg = tmp("with-baseline.toml", &format!("[agent]\nbaseline = {:?}\n", out_path.display().to_string()));
    let agent = AgentProc::start(&scanwatch_bin(), &["run", "-c", cfg.to_str().expect("path"), "-i", &lab.root_veth]);
    let (_, stderr) = agent.stop();
    assert!(stderr.contains("scanwatch: ready"), "{stderr}");
    let _ = std::fs::remove_file(&out_path);
}

/// `bench --repeat N` works for small N too (every round of the rotating benchmark starts from
/// new sources, so no round repeats another's).
#[test]
fn bench_runs_with_any_repeat_count() {
    for n in ["1", "7"] {
        let out = run(&["bench", "--repeat", n]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "bench --repeat {n} failed: {err}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("rotating"), "bench --repeat {n} output:\n{text}");
    }
}

/// `bench --call-floor N` times N one-packet runs of the empty program (the replay floor) and
/// prints them as one JSON object.
#[test]
fn bench_call_floor_reports_the_cost_of_one_test_run() {
    let out = run(&["bench", "--call-floor", "2000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["calls"], 2000, "{v}");
    let ns = v["ns_per_call"].as_f64().expect("ns_per_call");
    // A syscall that copies a packet and runs a program costs more than 50 ns and, on any
    // machine this runs on, far less than a millisecond.
    assert!(ns > 50.0 && ns < 1e6, "{v}");
    let rate = v["calls_per_second"].as_f64().expect("calls_per_second");
    assert!((rate * ns / 1e9 - 1.0).abs() < 1e-6, "rate and cost disagree: {v}");
}

/// A second agent on an interface where the first one's XDP program is attached is refused with
/// a message that names the attached program (as the kernel reports it) and what to do.
#[test]
fn busy_interface_names_the_attached_xdp_program() {
    let _g = lab_lock();
    let lab = Lab::new();
    let first = AgentProc::start(&scanwatch_bin(), &["run", "-i", &lab.root_veth, "--no-outbound"]);
    let out = Command::new(scanwatch_bin())
        .args(["run", "-i", &lab.root_veth, "--no-outbound", "--duration", "2s"])
        .output()
        .expect("second agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second agent attached to a busy interface:\n{err}");
    assert!(err.contains(&format!("interface `{}` is busy", lab.root_veth)), "{err}");
    assert!(err.contains("`scanwatch_xdp`, program id"), "the attached program is named: {err}");
    assert!(err.contains(&format!("ip link set dev {} xdp off", lab.root_veth)), "{err}");
    let (_, stderr) = first.stop();
    assert!(stderr.contains("scanwatch: ready"), "{stderr}");
}
