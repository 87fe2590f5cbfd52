//! `scanwatch hunt` on generated Zeek conn.logs with known answers, in both formats, through the
//! real binary: a day of traffic in which benign high fan-out sources (a DNS resolver, a web
//! proxy, a monitoring poller, ordinary clients) must stay silent, an allowlisted vulnerability
//! scanner is reported only at low/info, a vertical and a horizontal scan are found, and a slow
//! scan hidden in a day of the same workstation's normal traffic is found.
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use scanwatch_tests::scanwatch_bin;

/// 2023-11-14T22:13:20Z.
const T0: f64 = 1_700_000_000.0;
const HOUR: f64 = 3600.0;

const RESOLVER: &str = "10.10.0.53";
const PROXY: &str = "10.10.0.80";
const POLLER: &str = "10.10.0.99";
const VULNSCAN: &str = "10.10.0.5";
const VERTICAL: &str = "10.66.0.7";
const HORIZONTAL: &str = "192.0.2.66";
const SLOW: &str = "10.10.0.42";

const CONFIG: &str = "[agent]\nhostname = \"sensor-1\"\n\n[allowlist.networks]\nvulnscan = [\"10.10.0.5/32\"]\n";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone)]
struct Conn {
    ts: f64,
    orig: String,
    sport: u16,
    resp: String,
    dport: u16,
    proto: &'static str,
    state: &'static str,
    history: &'static str,
    duration: f64,
    orig_pkts: u32,
    resp_pkts: u32,
}

#[derive(Clone, Copy)]
enum Shape {
    /// Full TCP connection (SF).
    Ok,
    /// SYN answered by RST (REJ).
    Rej,
    /// SYN, no answer (S0).
    S0,
    /// Half-open probe of an open port: SYN, SYN-ACK, RST (RSTO).
    HalfOpen,
    UdpOk,
    UdpS0,
}

struct Gen {
    rng: Rng,
    conns: Vec<Conn>,
}

impl Gen {
    fn add(&mut self, ts: f64, orig: &str, resp: &str, dport: u16, shape: Shape) {
        let sport = 32768 + self.rng.below(28000) as u16;
        let (proto, state, history, duration, op, rp) = match shape {
            Shape::Ok => ("tcp", "SF", "ShADadFf", 0.05 + self.rng.unit() * 20.0, 6, 5),
            Shape::Rej => ("tcp", "REJ", "Sr", 0.0002, 1, 1),
            Shape::S0 => ("tcp", "S0", "S", 0.0, 1, 0),
            Shape::HalfOpen => ("tcp", "RSTO", "ShR", 0.0004, 2, 1),
            Shape::UdpOk => ("udp", "SF", "Dd", 0.01 + self.rng.unit() * 0.2, 1, 1),
            Shape::UdpS0 => ("udp", "S0", "D", 0.0, 1, 0),
        };
        self.conns.push(Conn {
            ts,
            orig: orig.to_string(),
            sport,
            resp: resp.to_string(),
            dport,
            proto,
            state,
            history,
            duration,
            orig_pkts: op,
            resp_pkts: rp,
        });
    }
}

/// A day of traffic. Records come out in the order Zeek writes them: by connection end.
fn day() -> Vec<Conn> {
    let mut g = Gen { rng: Rng(0x5eed_1234_abcd_9876), conns: Vec::new() };
    let servers: Vec<String> = (1..=5).map(|i| format!("10.20.0.{i}")).collect();
    let ext = |i: u64| format!("100.{}.{}.{}", 64 + i / 65_536 % 64, i / 256 % 256, i % 256);

    // Ordinary clients: their servers every ~2 minutes, the resolver every ~5 minutes.
    for c in 1..=10 {
        let me = format!("10.10.1.{c}");
        let mut t = T0 + g.rng.unit() * 60.0;
        while t < T0 + 24.0 * HOUR {
            let s = servers[g.rng.below(5) as usize].clone();
            g.add(t, &me, &s, 443, Shape::Ok);
            if g.rng.below(3) == 0 {
                g.add(t + 0.5, &me, RESOLVER, 53, Shape::UdpOk);
            }
            t += 90.0 + g.rng.unit() * 60.0;
        }
    }
    // DNS resolver: a few upstream queries every 30 s from a pool of 500 servers (5 % unanswered),
    // and hourly bursts of 40 new upstreams within 5 s.
    let mut t = T0;
    while t < T0 + 24.0 * HOUR {
        for _ in 0..3 {
            let up = ext(g.rng.below(500));
            let shape = if g.rng.below(20) == 0 { Shape::UdpS0 } else { Shape::UdpOk };
            let at = t + g.rng.unit() * 30.0;
            g.add(at, RESOLVER, &up, 53, shape);
        }
        t += 30.0;
    }
    for h in 0..24 {
        for k in 0..40 {
            let up = ext(1000 + h * 40 + k);
            let at = T0 + f64::from(h as u32) * HOUR + 1800.0 + g.rng.unit() * 5.0;
            g.add(at, RESOLVER, &up, 53, Shape::UdpOk);
        }
    }
    // Web proxy: two upstream connections every 10 s to a pool of 600 sites on 443/80 (3 % fail),
    // and hourly bursts of 30 new sites within 10 s.
    let mut t = T0;
    while t < T0 + 24.0 * HOUR {
        for _ in 0..2 {
            let site = ext(5000 + g.rng.below(600));
            let port = if g.rng.below(5) == 0 { 80 } else { 443 };
            let shape = match g.rng.below(100) {
                0 | 1 => Shape::S0,
                2 => Shape::Rej,
                _ => Shape::Ok,
            };
            let at = t + g.rng.unit() * 10.0;
            g.add(at, PROXY, &site, port, shape);
        }
        t += 10.0;
    }
    for h in 0..24u32 {
        for k in 0..30u64 {
            let site = ext(8000 + u64::from(h) * 30 + k);
            let at = T0 + f64::from(h) * HOUR + 900.0 + g.rng.unit() * 10.0;
            g.add(at, PROXY, &site, 443, Shape::Ok);
        }
    }
    // Monitoring poller: every 15 minutes, 100 hosts on ssh, node-exporter and SNMP within 20 s;
    // two of the hosts are down all day.
    for round in 0..96u32 {
        let base = T0 + f64::from(round) * 900.0 + 60.0;
        for hst in 1..=100u32 {
            let host = format!("10.20.3.{hst}");
            let at = base + g.rng.unit() * 20.0;
            let down = hst >= 99;
            g.add(at, POLLER, &host, 22, if down { Shape::S0 } else { Shape::Ok });
            g.add(at + 0.1, POLLER, &host, 9100, if down { Shape::S0 } else { Shape::Ok });
            g.add(at + 0.2, POLLER, &host, 161, if down { Shape::UdpS0 } else { Shape::UdpOk });
        }
    }
    // Authorised vulnerability scanner (allowlisted): 20 hosts x 200 ports over 10 minutes.
    let start = T0 + 2.0 * HOUR;
    for hst in 1..=20u32 {
        for port in 1..=200u16 {
            let at = start + f64::from(hst - 1) * 30.0 + f64::from(port) * 0.15;
            let shape = if port == 22 { Shape::HalfOpen } else { Shape::Rej };
            g.add(at, VULNSCAN, &format!("10.20.3.{hst}"), port, shape);
        }
    }
    // Vertical scan: 1000 ports of one server within 20 s.
    let start = T0 + 5.0 * HOUR;
    for port in 1..=1000u16 {
        let shape = if [22, 80, 443].contains(&port) { Shape::HalfOpen } else { Shape::Rej };
        g.add(start + f64::from(port) * 0.02, VERTICAL, "10.20.0.10", port, shape);
    }
    // Horizontal scan from outside: RDP on a /24 within a minute.
    let start = T0 + 9.0 * HOUR;
    for hst in 1..=254u32 {
        let shape = match hst % 50 {
            0 => Shape::HalfOpen,
            7 => Shape::Rej,
            _ => Shape::S0,
        };
        g.add(start + f64::from(hst) * 0.2, HORIZONTAL, &format!("10.20.1.{hst}"), 3389, shape);
    }
    // A workstation's normal day: its servers every minute, 30 web sites, the resolver ...
    let mut t = T0 + 10.0;
    let mut site = 0u64;
    while t < T0 + 24.0 * HOUR {
        let s = servers[g.rng.below(5) as usize].clone();
        let port = [443, 445, 389][g.rng.below(3) as usize];
        g.add(t, SLOW, &s, port, Shape::Ok);
        if g.rng.below(40) == 0 && site < 30 {
            g.add(t + 1.0, SLOW, &ext(20_000 + site), 443, Shape::Ok);
            site += 1;
        }
        if g.rng.below(4) == 0 {
            g.add(t + 2.0, SLOW, RESOLVER, 53, Shape::UdpOk);
        }
        t += 50.0 + g.rng.unit() * 20.0;
    }
    // ... and hidden in it a slow vertical scan: one port every ~4 minutes for 8 hours.
    let mut t = T0 + 10.0 * HOUR;
    for i in 0..120u16 {
        let port = 20 + i * 7;
        let shape = if i % 3 == 0 { Shape::S0 } else { Shape::Rej };
        g.add(t, SLOW, "10.20.0.200", port, shape);
        t += 180.0 + g.rng.unit() * 120.0;
    }
    let mut conns = g.conns;
    conns.sort_by(|a, b| (a.ts + a.duration).total_cmp(&(b.ts + b.duration)));
    conns
}

const FIELDS_A: &str = "ts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents";
const TYPES_A: &str = "time\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\tbool\tbool\tcount\tstring\tcount\tcount\tcount\tcount\tset[string]";

fn header(extra_field: bool) -> String {
    let (f, t) = if extra_field {
        (format!("{FIELDS_A}\tip_proto"), format!("{TYPES_A}\tcount"))
    } else {
        (FIELDS_A.to_string(), TYPES_A.to_string())
    };
    format!(
        "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n#open\t2023-11-14-22-13-20\n#fields\t{f}\n#types\t{t}\n"
    )
}

fn tsv_line(i: usize, c: &Conn, extra_field: bool) -> String {
    let dur = if c.duration == 0.0 { "-".to_string() } else { format!("{:.6}", c.duration) };
    let (ob, rb) = if c.state == "SF" { ("517", "4380") } else { ("0", "0") };
    let mut l = format!(
        "{:.6}\tC{i:08x}\t{}\t{}\t{}\t{}\t{}\t-\t{dur}\t{ob}\t{rb}\t{}\tT\tT\t0\t{}\t{}\t{}\t{}\t{}\t(empty)",
        c.ts,
        c.orig,
        c.sport,
        c.resp,
        c.dport,
        c.proto,
        c.state,
        c.history,
        c.orig_pkts,
        c.orig_pkts * 52,
        c.resp_pkts,
        c.resp_pkts * 52
    );
    if extra_field {
        l.push_str(if c.proto == "tcp" { "\t6" } else { "\t17" });
    }
    l
}

/// Two concatenated logs, the second with a different `#fields` layout (header change mid-stream).
fn to_tsv(conns: &[Conn]) -> String {
    let half = conns.len() / 2;
    let mut s = header(false);
    for (i, c) in conns[..half].iter().enumerate() {
        s.push_str(&tsv_line(i, c, false));
        s.push('\n');
    }
    s.push_str("#close\t2023-11-15-10-00-00\n");
    s.push_str(&header(true));
    for (i, c) in conns[half..].iter().enumerate() {
        s.push_str(&tsv_line(half + i, c, true));
        s.push('\n');
    }
    s.push_str("#close\t2023-11-15-22-13-20\n");
    s
}

fn iso(ts: f64) -> String {
    let secs = ts.floor() as i64;
    let us = ((ts - secs as f64) * 1e6).round() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{us:06}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// JSON lines; every other `ts` as an ISO 8601 string, the rest as epoch seconds.
fn to_json(conns: &[Conn]) -> String {
    let mut s = String::new();
    for (i, c) in conns.iter().enumerate() {
        let ts = if i % 2 == 0 { format!("{:.6}", c.ts) } else { format!("\"{}\"", iso(c.ts)) };
        let dur = if c.duration == 0.0 { String::new() } else { format!("\"duration\":{:.6},", c.duration) };
        s.push_str(&format!(
            "{{\"ts\":{ts},\"uid\":\"C{i:08x}\",\"id.orig_h\":\"{}\",\"id.orig_p\":{},\"id.resp_h\":\"{}\",\"id.resp_p\":{},\"proto\":\"{}\",{dur}\"conn_state\":\"{}\",\"local_orig\":true,\"local_resp\":true,\"missed_bytes\":0,\"history\":\"{}\",\"orig_pkts\":{},\"orig_ip_bytes\":{},\"resp_pkts\":{},\"resp_ip_bytes\":{}}}\n",
            c.orig, c.sport, c.resp, c.dport, c.proto, c.state, c.history, c.orig_pkts, c.orig_pkts * 52, c.resp_pkts, c.resp_pkts * 52
        ));
    }
    s
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("scanwatch-hunt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write fixture");
    p
}

fn config(dir: &Path) -> PathBuf {
    write(dir, "hunt.toml", CONFIG.as_bytes())
}

fn hunt(args: &[&str]) -> Output {
    Command::new(scanwatch_bin()).arg("hunt").args(args).output().expect("run scanwatch hunt")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(["-c", "-6"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip (Debian package gzip) must be installed");
    let mut stdin = child.stdin.take().expect("gzip stdin");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).expect("feed gzip"));
    let out = child.wait_with_output().expect("gzip output");
    writer.join().expect("gzip writer");
    assert!(out.status.success(), "gzip failed");
    out.stdout
}

fn alerts(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("alert line is not JSON ({e}): {l}")))
        .collect()
}

fn src(a: &serde_json::Value) -> String {
    a["source"]["ip"].as_str().unwrap_or("-").to_string()
}

fn kinds_of(alerts: &[serde_json::Value], ip: &str) -> BTreeSet<String> {
    alerts.iter().filter(|a| src(a) == ip).map(|a| a["kind"].as_str().unwrap_or("?").to_string()).collect()
}

fn pairs(alerts: &[serde_json::Value]) -> BTreeSet<(String, String)> {
    alerts.iter().map(|a| (src(a), a["kind"].as_str().unwrap_or("?").to_string())).collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The known answers of [`day`].
fn check_day(alerts: &[serde_json::Value], what: &str) {
    let dump = || alerts.iter().map(|a| a.to_string()).collect::<Vec<_>>().join("\n");
    for benign in [RESOLVER, PROXY, POLLER, "10.10.1.1", "10.10.1.5", "10.10.1.10"] {
        assert!(kinds_of(alerts, benign).is_empty(), "{what}: benign {benign} must stay silent:\n{}", dump());
    }
    assert!(
        alerts.iter().all(|a| !src(a).starts_with("10.10.1.")),
        "{what}: ordinary clients must stay silent:\n{}",
        dump()
    );
    let v = kinds_of(alerts, VERTICAL);
    assert!(v.contains("vertical_scan"), "{what}: vertical scan of {VERTICAL} not found: {v:?}\n{}", dump());
    let h = kinds_of(alerts, HORIZONTAL);
    assert!(h.contains("horizontal_scan"), "{what}: horizontal scan of {HORIZONTAL} not found: {h:?}\n{}", dump());
    let hz = alerts.iter().find(|a| src(a) == HORIZONTAL).expect("horizontal alert");
    assert_eq!(hz["technique"]["id"], "T1595", "{what}: external source -> Active Scanning: {hz}");
    assert_eq!(hz["host"]["name"], "sensor-1", "{what}: {hz}");
    // Alert times are the log's times (the scan started at T0 + 9 h = 2023-11-15T07:13:20Z).
    let t = hz["time"].as_str().unwrap_or("");
    assert!(t.starts_with("2023-11-15T07:1"), "{what}: alert time on the log's timeline: {t}");
    let s = kinds_of(alerts, SLOW);
    assert_eq!(
        s,
        BTreeSet::from(["slow_scan".to_string()]),
        "{what}: the slow scan hidden in {SLOW}'s normal day must be found as slow_scan (and nothing else):\n{}",
        dump()
    );
    let sa = alerts.iter().find(|a| src(a) == SLOW).expect("slow alert");
    let window = sa["window"].as_str().unwrap_or("");
    assert!(window == "15m" || window == "24h", "{what}: slow scan window {window}");
    assert!(sa["counts"]["fail_ratio"].as_f64().unwrap_or(0.0) >= 0.5, "{what}: undiluted failure ratio: {sa}");
    let allow: Vec<&serde_json::Value> = alerts.iter().filter(|a| src(a) == VULNSCAN).collect();
    assert!(!allow.is_empty(), "{what}: the allowlisted scanner's activity is still reported:\n{}", dump());
    for a in &allow {
        assert_eq!(a["allowlisted"], true, "{what}: {a}");
        let sev = a["severity"].as_str().unwrap_or("");
        assert!(sev == "low" || sev == "info", "{what}: allowlisted scanner only at low/info, got {sev}: {a}");
    }
}

#[test]
fn both_formats_find_the_scans_and_keep_benign_sources_silent() {
    let dir = tmp_dir("formats");
    let cfg = config(&dir);
    let conns = day();
    let tsv = write(&dir, "conn.log", to_tsv(&conns).as_bytes());
    let json = write(&dir, "conn.json", to_json(&conns).as_bytes());
    let mut seen = Vec::new();
    for (what, file) in [("tsv", &tsv), ("json", &json)] {
        let out = hunt(&["-c", cfg.to_str().expect("path"), file.to_str().expect("path")]);
        let err = stderr(&out);
        assert!(out.status.success(), "{what}: hunt failed: {err}");
        assert!(err.contains(&format!("[{what}]")), "{what}: format detected from the content: {err}");
        assert!(err.contains(&format!("{} records, 0 bad lines", grouped(conns.len()))), "{what}: summary: {err}");
        assert!(err.contains("records/s"), "{what}: {err}");
        let a = alerts(&out);
        check_day(&a, what);
        seen.push(pairs(&a));
    }
    assert_eq!(seen[0], seen[1], "TSV and JSON of the same connections raise the same alerts");
    let _ = std::fs::remove_dir_all(&dir);
}

fn grouped(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn gzip_and_stdin_inputs_give_the_same_answers() {
    let dir = tmp_dir("gzip");
    let cfg = config(&dir);
    let conns = day();
    let tsv = to_tsv(&conns);
    let gz = write(&dir, "conn.log.gz", &gzip(tsv.as_bytes()));
    let out = hunt(&["-c", cfg.to_str().expect("path"), gz.to_str().expect("path")]);
    assert!(out.status.success(), "gzip: {}", stderr(&out));
    let from_gz = alerts(&out);
    check_day(&from_gz, "gzip");

    // stdin: gzip-compressed JSON piped in.
    let mut child = Command::new(scanwatch_bin())
        .args(["hunt", "-c", cfg.to_str().expect("path"), "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hunt");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = gzip(to_json(&conns).as_bytes());
    let writer = std::thread::spawn(move || stdin.write_all(&data).expect("write stdin"));
    let out = child.wait_with_output().expect("hunt output");
    writer.join().expect("stdin writer");
    assert!(out.status.success(), "stdin: {}", stderr(&out));
    assert!(stderr(&out).contains("[json]"), "{}", stderr(&out));
    let from_stdin = alerts(&out);
    check_day(&from_stdin, "stdin");
    assert_eq!(pairs(&from_gz), pairs(&from_stdin));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn table_shows_classic_and_first_contact_failure_ratios() {
    let dir = tmp_dir("table");
    let cfg = config(&dir);
    let conns = day();
    let tsv = write(&dir, "conn.log", to_tsv(&conns).as_bytes());
    let alerts_file = dir.join("alerts.jsonl");
    let out = hunt(&[
        "-c",
        cfg.to_str().expect("path"),
        "--table",
        "--alerts",
        alerts_file.to_str().expect("path"),
        tsv.to_str().expect("path"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().expect("table header").split('\t').collect();
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name}: {head:?}"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == head.len()), "every row has every column");
    let row = |ip: &str| rows.iter().find(|r| r[col("source")] == ip).unwrap_or_else(|| panic!("no row for {ip}"));
    let f = |r: &Vec<&str>, c: &str| r[col(c)].parse::<f64>().unwrap_or_else(|_| panic!("{c} of {r:?}"));

    let slow = row(SLOW);
    // The classic whole-log ratio is diluted by the day's normal traffic; first contacts are not.
    assert!(f(slow, "failed_ratio") < 0.1, "classic ratio of the slow scanner: {slow:?}");
    assert!(f(slow, "first_fail_ratio") >= 0.5, "first-contact ratio of the slow scanner: {slow:?}");
    assert!(slow[col("alert_kinds")].contains("slow_scan"), "{slow:?}");
    let vert = row(VERTICAL);
    assert!(f(vert, "failed_ratio") > 0.9 && f(vert, "ports") >= 900.0, "{vert:?}");
    assert_eq!(f(vert, "conns"), 1000.0);
    let poller = row(POLLER);
    assert!(f(poller, "hosts") >= 90.0 && f(poller, "first_fail_ratio") < 0.1, "{poller:?}");
    assert_eq!(poller[col("alerts")], "0");
    let resolver = row(RESOLVER);
    assert!(f(resolver, "hosts") >= 1000.0 && f(resolver, "udp") > 5000.0, "{resolver:?}");
    assert_eq!(resolver[col("alert_kinds")], "-");
    // With --table the alerts went to the file.
    let a: Vec<serde_json::Value> = std::fs::read_to_string(&alerts_file)
        .expect("alerts file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("alert JSON"))
        .collect();
    check_day(&a, "--alerts file");

    let out = hunt(&["-c", cfg.to_str().expect("path"), "--table", "--table-format", "text", tsv.to_str().expect("path")]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let first = text.lines().next().unwrap_or("");
    assert!(first.starts_with("source ") && first.contains(" first_fail_ratio "), "{first}");
    assert!(text.lines().any(|l| l.starts_with(&format!("{SLOW} "))), "text table lists {SLOW}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_lines_are_counted_and_reported_with_line_numbers() {
    let dir = tmp_dir("bad");
    let conns = day();
    let mut lines: Vec<String> = to_tsv(&conns[..2000]).lines().map(str::to_string).collect();
    // Header is 8 lines; replace data lines at known positions (1-based file line numbers).
    lines[99] = "1700000100.000000\tCbad\t10.0.0.1\t5".to_string();
    let set_field = |line: &str, i: usize, v: &str| {
        let mut f: Vec<&str> = line.split('\t').collect();
        f[i] = v;
        f.join("\t")
    };
    lines[499] = set_field(&lines[499], 2, "10.999.0.1");
    lines[1499] = set_field(&lines[1499], 0, "17x0000000.000000");
    let text = lines.join("\n") + "\n";
    let file = write(&dir, "conn.log", text.as_bytes());
    let out = hunt(&[file.to_str().expect("path")]);
    let err = stderr(&out);
    assert!(out.status.success(), "bad lines are counted, not fatal: {err}");
    let name = file.display().to_string();
    assert!(err.contains(&format!("{name}:100: 4 fields where the #fields header has 21")), "{err}");
    assert!(err.contains(&format!("{name}:500: id.orig_h: cannot parse")), "{err}");
    assert!(err.contains(&format!("{name}:1500: ts: cannot parse")), "{err}");
    assert!(err.contains(&format!("{} records, 3 bad lines", grouped(2000 - 3))), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_without_header_or_json_is_refused_with_the_reason() {
    let dir = tmp_dir("refuse");
    let junk = write(&dir, "notes.txt", b"these are not\nconnection records\n");
    let out = hunt(&[junk.to_str().expect("path")]);
    let err = stderr(&out);
    assert!(!out.status.success(), "refusal is an error: {err}");
    assert!(err.contains("refused") && err.contains("no #fields header and no JSON object"), "{err}");
    let nocol = write(&dir, "dns.log", b"#separator \\x09\n#fields\tts\tuid\tid.orig_h\tid.resp_h\tproto\n1\tC\t10.0.0.1\t10.0.0.2\tudp\n");
    let out = hunt(&[nocol.to_str().expect("path")]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("no id.resp_p column"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncated_gzip_reports_what_was_read_then_the_offset() {
    let dir = tmp_dir("trunc");
    let cfg = config(&dir);
    let conns = day();
    let gz = gzip(to_tsv(&conns).as_bytes());
    let cut = gz.len() * 3 / 4;
    let file = write(&dir, "conn.log.gz", &gz[..cut]);
    let out = hunt(&["-c", cfg.to_str().expect("path"), file.to_str().expect("path")]);
    let err = stderr(&out);
    assert!(!out.status.success(), "a truncated file is an error: {err}");
    assert!(err.contains(&format!("gzip stream broken at compressed byte offset {cut}")), "{err}");
    // What was read before the cut (the first ~18 hours) was processed: the vertical and
    // horizontal scans are reported, and the summary comes before the error.
    let a = alerts(&out);
    assert!(kinds_of(&a, VERTICAL).contains("vertical_scan"), "{err}");
    assert!(kinds_of(&a, HORIZONTAL).contains("horizontal_scan"), "{err}");
    let summary = err.find("records/s").expect("summary");
    let error = err.find("gzip stream broken").expect("error");
    assert!(summary < error, "summary first, then the error: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn since_and_until_select_a_time_range() {
    let dir = tmp_dir("range");
    let cfg = config(&dir);
    let conns = day();
    let file = write(&dir, "conn.log", to_tsv(&conns).as_bytes());
    // 4 h .. 6 h after the start: only the vertical scan (5 h) falls inside.
    let out = hunt(&[
        "-c",
        cfg.to_str().expect("path"),
        "--since",
        &iso(T0 + 4.0 * HOUR),
        "--until",
        &format!("{}", T0 + 6.0 * HOUR),
        file.to_str().expect("path"),
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let a = alerts(&out);
    let sources: BTreeSet<String> = a.iter().map(src).collect();
    assert_eq!(sources, BTreeSet::from([VERTICAL.to_string()]), "{err}");
    let inside = conns.iter().filter(|c| c.ts >= T0 + 4.0 * HOUR && c.ts < T0 + 6.0 * HOUR).count();
    assert!(err.contains(&format!("{} outside --since/--until", grouped(conns.len() - inside))), "{err}");
    let out = hunt(&["--since", "yesterday", file.to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--since"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
