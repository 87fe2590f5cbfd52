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
