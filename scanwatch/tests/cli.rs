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
        ("[alerts]\nsuppression_window = \"ten minutes\"\n", "alerts.suppression_window"),
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
