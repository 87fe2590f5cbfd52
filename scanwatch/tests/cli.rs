//! The command line without privileges: configuration commands, flag handling and error messages
//! in user terms. Runs the real binary (`cargo test` builds it).
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scanwatch")).args(args).output().expect("run scanwatch")
}

fn tmp(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("scanwatch-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).expect("write temp file");
    p
}

#[test]
fn config_default_is_valid_and_round_trips_through_check() {
    let out = run(&["config", "default"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    assert!(text.contains("[xdp]") && text.contains("[roles.workstation]"));
    let p = tmp("default.toml", &text);
    let chk = run(&["config", "check", p.to_str().expect("path")]);
    assert!(chk.status.success(), "{}", String::from_utf8_lossy(&chk.stderr));
}

#[test]
fn config_check_names_the_bad_key() {
    for (text, needle) in [
        ("[xdp]\nringbuf_bytes = 1000\n", "xdp.ringbuf_bytes"),
        ("[agent]\nbogus = 1\n", "bogus"),
        ("[agent]\nrole = \"nope\"\n", "agent.role"),
        ("[detect]\nwindows = [\"10s\", \"5s\"]\n", "detect.windows"),
        ("[alerts]\nclose_after = \"ten minutes\"\n", "alerts.close_after"),
    ] {
        let p = tmp("bad.toml", text);
        let out = run(&["config", "check", p.to_str().expect("path")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} must be rejected");
        assert!(err.contains(needle), "error for {text:?} names {needle}: {err}");
    }
}

#[test]
fn config_check_names_a_bad_sink_key() {
    for (text, needle) in [
        ("[sinks.out]\ntype = \"stdout\"\ncolour = 1\n", "sinks.out.colour"),
        ("[sinks.out]\ntype = \"pigeon\"\n", "sinks.out.type"),
        ("[sinks.out]\nformat = \"alert\"\n", "sinks.out.type"),
    ] {
        let p = tmp("badsink.toml", text);
        let out = run(&["config", "check", p.to_str().expect("path")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} must be rejected");
        assert!(err.contains(needle), "error for {text:?} names {needle}: {err}");
    }
}

#[test]
fn command_line_flags_are_the_last_configuration_layer() {
    // An unknown role on the command line is refused like one in the file, naming the key.
    let out = run(&["run", "--role", "astronaut", "--duration", "1s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent.role") && err.contains("astronaut"), "{err}");
    // A duration with a unit is accepted by the parser (the run itself then needs root).
    let out = run(&["run", "--duration", "3x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("3x"), "{err}");
}

/// Durations take units everywhere on the command line (`3s`, `500ms`, `2m`), like every duration
/// of the configuration; a bad one is refused naming the flag.
#[test]
fn durations_take_units_on_every_command() {
    for cmd in [&["run", "--role", "astronaut", "--duration"][..], &["baseline", "-o", "/dev/null", "--role", "astronaut", "--duration"][..]] {
        for d in ["3s", "500ms", "2m", "1h", "3"] {
            let mut args = cmd.to_vec();
            args.push(d);
            let out = run(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            // The duration parsed: the error is about the role given with it.
            assert!(err.contains("agent.role"), "{args:?}: {err}");
        }
        let mut args = cmd.to_vec();
        args.push("3 parsecs");
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("--duration") && err.contains("3 parsecs"), "{err}");
    }
}

/// `config check` checks the files the configuration names: a missing or corrupt baseline is an
/// error naming `agent.baseline` (as `run` would fail), a valid one passes.
#[test]
fn config_check_validates_the_baseline_file() {
    let missing = std::env::temp_dir().join(format!("scanwatch-no-such-baseline-{}.json", std::process::id()));
    let p = tmp("missing-baseline.toml", &format!("[agent]\nbaseline = {:?}\n", missing.display().to_string()));
    let out = run(&["config", "check", p.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a missing baseline must fail the check");
    assert!(err.contains("agent.baseline") && err.contains("no-such-baseline"), "{err}");

    let corrupt = tmp("corrupt-baseline.json", "{\"version\": 1, \"windows\": [");
    let p = tmp("corrupt-baseline.toml", &format!("[agent]\nbaseline = {:?}\n", corrupt.display().to_string()));
    let out = run(&["config", "check", p.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("agent.baseline") && err.contains("not a valid baseline"), "{err}");

    let good = tmp(
        "good-baseline.json",
        r#"{"version":1,"windows":["10s"],"learned_seconds":5.0,"sources":{},"executables":{}}"#,
    );
    let p = tmp("good-baseline.toml", &format!("[agent]\nbaseline = {:?}\n", good.display().to_string()));
    let out = run(&["config", "check", p.to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Errors in user terms: a port is "a whole number 0–65535", never a Rust type name.
#[test]
fn config_errors_name_what_a_value_must_be() {
    for (text, key, needle) in [
        ("[honeyports]\ntcp = [70000]\n", "honeyports.tcp", "70000 is not a port: a whole number 0–65535"),
        ("[honeyports]\nudp = [-3]\n", "honeyports.udp", "-3 is not a port: a whole number 0–65535"),
        ("[roles.server]\nexpected_service_ports = [1.5]\n", "roles.server.expected_service_ports", "is not a port"),
        ("[xdp]\nmax_sources = -1\n", "xdp.max_sources", "-1 is not a whole number"),
    ] {
        let p = tmp("terms.toml", text);
        let out = run(&["config", "check", p.to_str().expect("path")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} must be rejected");
        assert!(err.contains(key) && err.contains(needle), "error for {text:?}: {err}");
        for rust in ["u16", "u32", "u64", "usize", "f64"] {
            assert!(!err.contains(rust), "error for {text:?} leaks the type name {rust}: {err}");
        }
    }
}

/// Accepted, but said: a CIDR with host bits set, and a honeyport list replacing the defaults
/// (with the way to extend them instead); `tcp_extra` extends without a word.
#[test]
fn config_check_warns_about_host_bits_and_replaced_honeyports() {
    let p = tmp("hostbits.toml", "[allowlist.networks]\nlab = [\"10.99.0.2/24\"]\n");
    let out = run(&["config", "check", p.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning: allowlist.networks.lab[0]") && err.contains("host bits") && err.contains("10.99.0.0/24"), "{err}");

    let p = tmp("replace.toml", "[honeyports]\ntcp = [2323]\n");
    let out = run(&["config", "check", p.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("honeyports.tcp replaces the default list") && err.contains("31337") && err.contains("tcp_extra"), "{err}");

    let p = tmp("extend.toml", "[honeyports]\ntcp_extra = [2323]\n");
    let out = run(&["config", "check", p.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("warning"), "{err}");
}

/// The alert lifecycle keys exist with units, and the removed ones are refused by name.
#[test]
fn alert_lifecycle_keys_take_durations() {
    let p = tmp("lifecycle.toml", "[alerts]\nupdate_interval = \"2m\"\nclose_after = \"30s\"\n");
    let out = run(&["config", "check", p.to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = tmp("lifecycle-bad.toml", "[alerts]\nupdate_interval = 120\n");
    let out = run(&["config", "check", p.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("alerts.update_interval"), "{err}");
    let p = tmp("lifecycle-old.toml", "[alerts]\nescalation_factor = 2.0\n");
    let out = run(&["config", "check", p.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("escalation_factor"), "{err}");
}

/// `bench --repeat 0` is refused by the parser (any N ≥ 1 runs; that needs root and is tested
/// in the privileged tier).
#[test]
fn bench_repeat_must_be_at_least_one() {
    let out = run(&["bench", "--repeat", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--repeat") && err.contains('0'), "{err}");
}
