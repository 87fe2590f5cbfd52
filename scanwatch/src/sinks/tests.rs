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
        annotations: Default::default(),
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

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("scanwatch-sink-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

#[test]
fn file_sink_rotates_by_size_and_keeps_the_newest_files() {
    let dir = tmpdir("rotate");
    let path = dir.join("alerts.jsonl");
    let spec = SinkSpec::parse(
        "archive",
        &table(&format!("type = \"file\"\npath = {:?}\nmax_bytes = 4096\nkeep = 2\n", path.display().to_string())),
    )
    .expect("valid file sink");
    let mut set = SinkSet::build(&[spec]).expect("build");
    let line_len = crate::output::render_line(&alert("a0000"), Format::Alert).expect("render").len() + 1;
    let per_file = 4096 / line_len;
    let total = per_file * 4 + 1;
    for i in 0..total {
        assert_eq!(set.write(&alert(&format!("a{i:04}"))), 0);
    }
    set.flush();
    let read = |p: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line")["alert_id"].as_str().expect("id").to_string())
            .collect()
    };
    let cur = read(&path);
    let one = read(&dir.join("alerts.jsonl.1"));
    let two = read(&dir.join("alerts.jsonl.2"));
    assert!(!dir.join("alerts.jsonl.3").exists(), "keep = 2 removes older files");
    for f in [&path, &dir.join("alerts.jsonl.1"), &dir.join("alerts.jsonl.2")] {
        let len = std::fs::metadata(f).expect("meta").len();
        assert!(len <= 4096, "{} is {len} bytes", f.display());
    }
    // Newest lines in the live file, then .1, then .2, with nothing lost between them.
    assert_eq!(cur.last().map(String::as_str), Some(format!("a{:04}", total - 1).as_str()));
    let mut all = two.clone();
    all.extend(one);
    all.extend(cur);
    let first: usize = all[0][1..].parse().expect("index");
    let expect: Vec<String> = (first..total).map(|i| format!("a{i:04}")).collect();
    assert_eq!(all, expect, "consecutive across rotations");
    assert_eq!(all.len(), per_file * 3 - (per_file - 1) + (total - 1) % per_file, "{} lines kept", all.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn file_sink_recreates_a_file_removed_under_it_and_renders_its_format() {
    let dir = tmpdir("recreate");
    let path = dir.join("sub/ecs.jsonl");
    let spec = SinkSpec::parse("e", &table(&format!("type = \"file\"\npath = {:?}\nformat = \"ecs\"\n", path.display().to_string())))
        .expect("valid");
    let mut set = SinkSet::build(&[spec]).expect("build");
    set.write(&alert("one"));
    std::fs::remove_file(&path).expect("rm");
    set.write(&alert("two"));
    let text = std::fs::read_to_string(&path).expect("re-created");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("json");
    assert_eq!(v["event"]["id"], "two");
    assert_eq!(v["event"]["kind"], "alert");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn file_and_syslog_tables_name_their_bad_keys() {
    for (t, key) in [
        ("type = \"file\"\n", "(table)"),
        ("type = \"file\"\npath = \"/tmp/x\"\nkeep = 5000\n", "keep"),
        ("type = \"file\"\npath = \"/tmp/x\"\nmax_bytes = 10\n", "max_bytes"),
        ("type = \"file\"\npath = \"/tmp/x\"\nrotate = true\n", "rotate"),
        ("type = \"syslog\"\nfacility = \"local9\"\n", "facility"),
        ("type = \"syslog\"\ntransport = \"tcp\"\n", "address"),
        ("type = \"syslog\"\ntransport = \"udp\"\naddress = \"collector\"\n", "address"),
        ("type = \"syslog\"\napp_name = \"two words\"\n", "app_name"),
        ("type = \"syslog\"\ntransport = \"tcp\"\naddress = \"h:1\"\nqueue = 0\n", "queue"),
    ] {
        let e = SinkSpec::parse("s", &table(t)).expect_err(t);
        assert_eq!(e.key, key, "{t}: {e}");
    }
    let e = SinkSpec::parse("s", &table("type = \"syslog\"\ntransport = \"carrier\"\n")).expect_err("transport");
    assert!(e.to_string().contains("carrier"), "{e}");
}

#[test]
fn syslog_message_is_rfc5424_with_structured_data() {
    let h = syslog::Header { facility: 16, hostname: "web-01".into(), app_name: "scanwatch".into(), procid: 77 };
    let mut a = alert("id\"]1");
    a.severity = Severity::High;
    let m = syslog::format_message(&h, &a, "{\"x\":1}");
    // local0 (16) * 8 + err (3) = 131.
    assert_eq!(
        m,
        "<131>1 1970-01-01T00:00:00.000Z web-01 scanwatch 77 vertical_scan [scanwatch@32473 kind=\"vertical_scan\" \
         severity=\"high\" alert_id=\"id\\\"\\]1\" direction=\"inbound\" src=\"192.0.2.1\"] {\"x\":1}"
    );
}

#[test]
fn syslog_udp_and_unix_datagrams_carry_one_message_each() {
    let dir = tmpdir("syslog");
    let path = dir.join("log.sock");
    let unix = std::os::unix::net::UnixDatagram::bind(&path).expect("bind unix");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let specs = [
        SinkSpec::parse("u", &table(&format!("type = \"syslog\"\naddress = {:?}\nformat = \"ocsf\"\n", path.display().to_string()))).expect("unix"),
        SinkSpec::parse("n", &table(&format!("type = \"syslog\"\ntransport = \"udp\"\naddress = \"{}\"\n", udp.local_addr().expect("addr")))).expect("udp"),
    ];
    let mut set = SinkSet::build(&specs).expect("build");
    assert_eq!(set.write(&alert("d1")), 0);
    let mut buf = vec![0u8; 65536];
    unix.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    let n = unix.recv(&mut buf).expect("unix datagram");
    let m = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(m.starts_with("<28>1 "), "daemon.warning: {m}");
    let json = &m[m.find("] ").expect("end of SD") + 2..];
    let v: serde_json::Value = serde_json::from_str(json).expect("OCSF JSON in MSG");
    assert_eq!(v["class_uid"], 2004);
    udp.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    let n = udp.recv(&mut buf).expect("udp datagram");
    let m = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(m.contains("alert_id=\"d1\""), "{m}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn syslog_tcp_collector_gone_does_not_block_and_buffers_until_it_returns() {
    use std::io::{BufRead, Read};
    // Reserve a port, then close it: the collector is away when the agent starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let spec = SinkSpec::parse("t", &table(&format!("type = \"syslog\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nqueue = 4\n")))
        .expect("tcp");
    let mut set = SinkSet::build(&[spec]).expect("build");
    let t0 = std::time::Instant::now();
    let mut dropped = 0;
    for i in 0..10 {
        dropped += set.write(&alert(&format!("t{i}")));
    }
    assert!(t0.elapsed() < std::time::Duration::from_secs(2), "writes never wait for the collector: {:?}", t0.elapsed());
    // One frame may be in the writer's hands, `queue` more in the queue; the rest are counted.
    assert!((5..=6).contains(&dropped), "dropped {dropped}");
    assert_eq!(set.stats()["t"].dropped, dropped as u64);
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("collector comes back");
    let (conn, _) = listener.accept().expect("the writer reconnects");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    let mut r = std::io::BufReader::new(conn);
    let mut got = Vec::new();
    while got.len() < 10 - dropped {
        // Octet counting: "LEN SP MSG".
        let mut len = Vec::new();
        r.read_until(b' ', &mut len).expect("length");
        let n: usize = String::from_utf8_lossy(&len).trim().parse().expect("octet count");
        let mut msg = vec![0u8; n];
        r.read_exact(&mut msg).expect("frame");
        let m = String::from_utf8(msg).expect("utf8");
        assert!(m.starts_with("<"), "{m}");
        let id = m.split("alert_id=\"").nth(1).and_then(|s| s.split('"').next()).expect("alert id").to_string();
        got.push(id);
    }
    assert_eq!(got[0], "t0", "the buffered findings arrive in order: {got:?}");
}

#[test]
fn a_full_disk_is_retried_then_counted_as_dropped() {
    // /dev/full accepts the open and fails every write with ENOSPC.
    let spec = SinkSpec::parse("disk", &table("type = \"file\"\npath = \"/dev/full\"\n")).expect("valid");
    let mut set = SinkSet::build(&[spec]).expect("opens");
    assert_eq!(set.write(&alert("lost")), 1, "the finding is reported dropped");
    assert_eq!(set.stats()["disk"], SinkStats { written: 0, failures: MAX_ATTEMPTS as u64, dropped: 1 });
}
