//! The sink trait: per-sink configuration errors, bounded retries and counted drops.
use super::*;
use crate::alert::{AlertKind, AlertSource, Counts, HostInfo, Targets, Technique};
use crate::output::Format;
use crate::vocab::{Direction, Severity};

fn alert(id: &str) -> Alert {
    Alert {
        time: crate::vocab::rfc3339_from_unix(0.0),
        kind: AlertKind::VerticalScan,
        severity: Severity::Medium,
        confidence: 0.9,
        direction: Direction::Inbound,
        source: AlertSource { ip: Some("192.0.2.1".parse().expect("ip")), process: None, related: vec![] },
        targets: Targets::default(),
        window: "10s".into(),
        counts: Counts::default(),
        fingerprint: None,
        technique: Technique::active_scanning(),
        host: HostInfo { name: "h".into(), role: "server".into() },
        allowlisted: false,
        blocked: false,
        reason: "r".into(),
        update: false,
        alert_id: id.into(),
    }
}

/// Fails its first `fail` writes, then records.
struct Flaky {
    fail: u32,
    got: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Sink for Flaky {
    fn write(&mut self, a: &Alert) -> Result<(), SinkError> {
        if self.fail > 0 {
            self.fail -= 1;
            return Err(SinkError::Other("collector gone".into()));
        }
        self.got.lock().expect("lock").push(a.alert_id.clone());
        Ok(())
    }
}

fn table(s: &str) -> toml::Table {
    s.parse().expect("toml")
}

#[test]
fn sink_tables_name_their_bad_keys() {
    let e = SinkSpec::parse("out", &table("type = \"stdout\"\ncolour = true\n")).expect_err("unknown key");
    assert_eq!(e.key, "colour", "{e}");
    let e = SinkSpec::parse("out", &table("type = \"carrier-pigeon\"\n")).expect_err("unknown type");
    assert_eq!(e.key, "type");
    assert!(e.reason.contains("stdout"), "lists the known types: {e}");
    let e = SinkSpec::parse("out", &table("format = \"alert\"\n")).expect_err("no type");
    assert_eq!(e.key, "type");
    let e = SinkSpec::parse("out", &table("type = \"stdout\"\nformat = \"xml\"\n")).expect_err("bad format");
    assert!(e.to_string().contains("xml"), "{e}");
    let ok = SinkSpec::parse("out", &table("type = \"stdout\"\nformat = \"alert\"\n")).expect("valid");
    assert_eq!(ok.kind, "stdout");
}

#[test]
fn a_failing_sink_is_retried_then_its_drop_counted_and_others_still_deliver() {
    let a_got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let b_got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut set = SinkSet::from_sinks(vec![
        // Recovers on its second attempt.
        ("a".into(), Box::new(Flaky { fail: 1, got: a_got.clone() })),
        // Fails every attempt of the first finding, then recovers.
        ("b".into(), Box::new(Flaky { fail: MAX_ATTEMPTS, got: b_got.clone() })),
    ]);
    assert_eq!(set.write(&alert("one")), 1, "one sink dropped the first finding");
    assert_eq!(set.write(&alert("two")), 0);
    assert_eq!(*a_got.lock().expect("lock"), vec!["one", "two"]);
    assert_eq!(*b_got.lock().expect("lock"), vec!["two"]);
    let st = set.stats();
    assert_eq!(st["a"], SinkStats { written: 2, failures: 1, dropped: 0 });
    assert_eq!(st["b"], SinkStats { written: 1, failures: MAX_ATTEMPTS as u64, dropped: 1 });
    assert_eq!(set.written(), 3);
}

#[test]
fn line_sink_writes_one_alert_object_per_line() {
    let mut s = stdout::LineSink { out: Vec::new(), format: Format::Alert };
    s.write(&alert("x")).expect("write");
    let mut b = alert("y");
    b.reason = "two\nlines".into();
    s.write(&b).expect("write");
    let text = String::from_utf8(s.out).expect("utf8");
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let v: serde_json::Value = serde_json::from_str(lines[1]).expect("json");
    assert_eq!(v["reason"], "two\nlines");
    assert_eq!(v["source"]["ip"], "192.0.2.1");
}

#[test]
fn no_configured_sink_means_stdout() {
    let set = SinkSet::build(&[]).expect("build");
    assert_eq!(set.stats().keys().collect::<Vec<_>>(), vec!["stdout"]);
}
