//! "One truth per alert": the numbers a reason states are the numbers its JSON carries, and a
//! finding's counts and samples are those of its own window — checked on scripted scenarios
//! that raise every kind, and as a property over generated timelines (proptest).
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use proptest::prelude::*;
use scanwatch_common::cnt;

use super::*;
use crate::alert::{Alert, AlertKind, Counts, UpdateKind};
use crate::config::Config;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

fn t(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

const LOCAL: &str = "192.0.2.10";

/// Cumulative kernel counters of one source, as the sweep reads them.
#[derive(Clone)]
struct Src {
    ip: IpAddr,
    counts: [u64; cnt::N],
    ports: Vec<u16>,
    hosts: u64,
    fp: Option<FingerprintInfo>,
    protocols: [u64; 4],
}

impl Src {
    fn new(addr: &str) -> Src {
        Src { ip: ip(addr), counts: [0; cnt::N], ports: Vec::new(), hosts: 0, fp: None, protocols: [0; 4] }
    }

    fn bump(&mut self, c: usize, n: u64) {
        self.counts[c] += n;
        self.counts[cnt::PACKETS] += n;
    }

    fn port(&mut self, p: u16) {
        if !self.ports.contains(&p) {
            self.ports.push(p);
        }
        self.hosts = self.hosts.max(1);
    }

    fn snap(&self) -> SourceSnapshot {
        SourceSnapshot {
            ip: self.ip,
            first_seen_ns: 1,
            last_seen_ns: 2,
            counts: self.counts,
            distinct_ports: self.ports.len() as f64,
            distinct_hosts: self.hosts as f64,
            sample_ports: self.ports.iter().take(scanwatch_common::SAMPLE_PORTS).copied().collect(),
            sample_hosts: Vec::new(),
            fingerprints: self.fp.iter().cloned().collect(),
            blocked: false,
            protocols: self.protocols,
        }
    }
}

/// One step of a generated timeline.
#[derive(Debug, Clone)]
enum Step {
    /// `n` SYNs to new ports from `start`, every `open`-th answered.
    Syn { src: usize, start: u16, n: u16, open: Option<u16> },
    /// `n` stealth probes of one flag shape to new ports.
    Stealth { src: usize, shape: usize, start: u16, n: u16 },
    /// `n` UDP probes to closed ports.
    Udp { src: usize, start: u16, n: u16 },
    /// SYNs to `n` new ports spread over `n / 4` more hosts.
    Block { src: usize, start: u16, n: u16 },
    /// ICMP echo to `n` more hosts.
    Icmp { src: usize, n: u16 },
    /// ARP who-has for `n` more hosts.
    Arp { src: usize, n: u16 },
    /// Evasion marks: fragments and bad checksums.
    Evasive { src: usize, n: u16 },
    /// Unsolicited SYN-ACK / RST.
    Backscatter { src: usize, n: u16 },
    Honeyport { src: usize, port: u16, udp: bool },
    Threshold { src: usize, ports: u32 },
    /// An outbound process probing `n` ports (connect, raw SYN or UDP).
    Out { proc_: usize, how: usize, start: u16, n: u16, fail: bool },
    /// One-probe sources held in the first-contact table.
    Held { base: u16, n: u16 },
    Wait { secs: u16 },
    /// SCTP INITs (or COOKIE ECHOs) to `n` new ports.
    Sctp { src: usize, cookie: bool, start: u16, n: u16 },
    /// Packets of `n` more IP protocol numbers (from `first`).
    Protos { src: usize, first: u8, n: u8 },
}

const STEALTH_SHAPES: [usize; 7] = [cnt::NULL, cnt::FIN, cnt::XMAS, cnt::MAIMON, cnt::ACK, cnt::SYNFIN, cnt::CUSTOM_FLAGS];
const ADDRS: [&str; 5] = ["203.0.113.7", "203.0.113.8", "203.0.113.9", "10.9.0.5", "2001:db8::5"];

fn nmap_fp() -> FingerprintInfo {
    FingerprintInfo { text: "w1024:m1460:o=M".into(), hash: "9f3a01c2".into(), tool_hint: "nmap".into(), initial_ttl: 64 }
}

fn process(i: usize) -> ProcessInfo {
    ProcessInfo {
        pid: 4000 + i as u32 * 10 + 1,
        tgid: 4000 + i as u32 * 10,
        comm: format!("scan{i}"),
        exe: Some(format!("/usr/bin/scan{i}")),
        uid: 1000 + i as u32,
        ppid: Some(1),
        ..ProcessInfo::default()
    }
}

/// Plays a timeline into a fresh engine; every line emitted, final lines included.
fn play(cfg: &Config, steps: &[Step]) -> Vec<Alert> {
    let mut e = Engine::new(cfg, "host-truth".into());
    let mut srcs: Vec<Src> = ADDRS.iter().map(|a| Src::new(a)).collect();
    let mut out = Vec::new();
    let mut now = 1.0;
    for step in steps {
        now += 0.5;
        let mut touched: Option<usize> = None;
        match step {
            Step::Syn { src, start, n, open } => {
                let s = &mut srcs[*src];
                for k in 0..*n {
                    let p = start.wrapping_add(k);
                    s.bump(cnt::SYN, 1);
                    if open.is_some_and(|o| o > 0 && k % o == 0) {
                        s.counts[cnt::SYN_OPEN] += 1;
                    } else {
                        s.counts[cnt::SYN_CLOSED] += 1;
                        s.counts[cnt::FAILED] += 1;
                    }
                    s.port(p);
                }
                if *src < 3 && s.fp.is_none() {
                    s.fp = Some(nmap_fp());
                }
                touched = Some(*src);
            }
            Step::Block { src, start, n } => {
                let s = &mut srcs[*src];
                for k in 0..*n {
                    s.bump(cnt::SYN, 1);
                    s.counts[cnt::SYN_CLOSED] += 1;
                    s.counts[cnt::FAILED] += 1;
                    s.port(start.wrapping_add(k));
                }
                s.hosts += u64::from(*n / 4);
                touched = Some(*src);
            }
            Step::Stealth { src, shape, start, n } => {
                let s = &mut srcs[*src];
                for k in 0..*n {
                    s.bump(STEALTH_SHAPES[*shape % STEALTH_SHAPES.len()], 1);
                    s.counts[cnt::FAILED] += 1;
                    s.port(start.wrapping_add(k));
                }
                touched = Some(*src);
            }
            Step::Udp { src, start, n } => {
                let s = &mut srcs[*src];
                for k in 0..*n {
                    s.bump(cnt::UDP, 1);
                    s.counts[cnt::UDP_CLOSED] += 1;
                    s.port(start.wrapping_add(k));
                }
                touched = Some(*src);
            }
            Step::Icmp { src, n } => {
                let s = &mut srcs[*src];
                s.bump(cnt::ICMP_ECHO, u64::from(*n));
                s.hosts += u64::from(*n);
                touched = Some(*src);
            }
            Step::Arp { src, n } => {
                let s = &mut srcs[*src];
                s.bump(cnt::ARP, u64::from(*n));
                s.hosts += u64::from(*n);
                touched = Some(*src);
            }
            Step::Evasive { src, n } => {
                let s = &mut srcs[*src];
                for k in 0..*n {
                    s.bump(cnt::FRAG_FIRST, 1);
                    s.bump(cnt::SYN, 1);
                    s.counts[cnt::BADSUM] += 1;
                    s.port(5000 + k);
                }
                touched = Some(*src);
            }
            Step::Backscatter { src, n } => {
                let s = &mut srcs[*src];
                s.bump(cnt::UNSOLICITED_SYNACK, u64::from(*n));
                s.bump(cnt::UNSOLICITED_RST, u64::from(*n / 2));
                touched = Some(*src);
            }
            Step::Honeyport { src, port, udp } => {
                let s = &mut srcs[*src];
                s.bump(cnt::HONEYPORT, 1);
                s.port(*port);
                let ev = InboundObservation {
                    ip: s.ip,
                    dst: ip(LOCAL),
                    kind: InboundEventKind::Honeyport { dport: *port, proto: if *udp { 17 } else { 6 } },
                };
                out.extend(e.observe_inbound_event(t(now), &ev));
                touched = Some(*src);
            }
            Step::Threshold { src, ports } => {
                let ev = InboundObservation {
                    ip: srcs[*src].ip,
                    dst: ip(LOCAL),
                    kind: InboundEventKind::Threshold { ports: true, hosts: false, win_ports: *ports, win_hosts: 1 },
                };
                out.extend(e.observe_inbound_event(t(now), &ev));
            }
            Step::Out { proc_, how, start, n, fail } => {
                let p = process(*proc_);
                for k in 0..*n {
                    let (dst, dport) = (ip("10.0.0.8"), start.wrapping_add(k));
                    let action = match how % 3 {
                        0 => OutboundAction::Connect { dst, dport },
                        1 => OutboundAction::RawProbe { dst, dport, proto: 6, tcp_flags: 0x02 },
                        _ => OutboundAction::UdpSend { dst, dport },
                    };
                    let at = t(now + f64::from(k) * 0.001);
                    out.extend(e.observe_outbound(at, &OutboundObservation { process: p.clone(), action }));
                    if how % 3 == 0 {
                        let o = OutboundAction::Outcome { dst, dport, success: !fail || k % 7 == 0 };
                        out.extend(e.observe_outbound(at, &OutboundObservation { process: p.clone(), action: o }));
                    }
                }
            }
            Step::Held { base, n } => {
                let probes: Vec<HeldProbe> = (0..*n)
                    .map(|i| HeldProbe {
                        ip: ip(&format!("198.18.{}.{}", (base + i) / 250, (base + i) % 250 + 1)),
                        dport: Some(2000 + i),
                        dst: Some(ip(LOCAL)),
                        failed: true,
                    })
                    .collect();
                out.extend(e.observe_held(t(now), &probes));
            }
            Step::Wait { secs } => now += f64::from(*secs),
            Step::Sctp { src, cookie, start, n } => {
                let s = &mut srcs[*src];
                for k in 0..*n {
                    s.bump(if *cookie { cnt::SCTP_COOKIE } else { cnt::SCTP_INIT }, 1);
                    s.port(start.wrapping_add(k));
                }
                touched = Some(*src);
            }
            Step::Protos { src, first, n } => {
                let s = &mut srcs[*src];
                for k in 0..*n {
                    let p = first.wrapping_add(k);
                    s.protocols[usize::from(p >> 6)] |= 1u64 << (p & 63);
                    s.bump(cnt::IP_PROTO, 1);
                }
                s.hosts = s.hosts.max(1);
                touched = Some(*src);
            }
        }
        if let Some(i) = touched {
            out.extend(e.observe_source(t(now), &srcs[i].snap()));
        }
        out.extend(e.tick(t(now)));
    }
    out.extend(e.close_all(t(now + 1.0)));
    out
}

/// Whole numbers stated in `text` (digit runs not inside a word).
fn numbers(text: &str) -> Vec<u64> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            let j = (i..b.len()).find(|&j| !b[j].is_ascii_digit()).unwrap_or(b.len());
            if j == b.len() || !b[j].is_ascii_alphabetic() {
                if let Ok(v) = text[i..j].parse() {
                    out.push(v);
                }
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// Checks one alert: the reason's numbers are the fields', and the fields agree among themselves.
fn check_truth(a: &Alert) -> Result<(), String> {
    let ctx = || format!("\n{}", serde_json::to_string_pretty(a).unwrap_or_default());
    // Fields agree among themselves.
    let c = &a.counts;
    let expect = Counts::new(c.probes, c.failures, c.successes, c.detail.clone());
    if c.fail_ratio != expect.fail_ratio {
        return Err(format!("fail_ratio {:?} is not failures/(failures+successes){}", c.fail_ratio, ctx()));
    }
    if a.targets.sample_ports.len() as u64 > a.targets.port_count.max(a.targets.sample_ports.len() as u64)
        || (a.targets.sample_hosts.len() as u64) > a.targets.host_count
    {
        return Err(format!("a sample is larger than its count{}", ctx()));
    }
    let sorted: BTreeSet<u16> = a.targets.sample_ports.iter().copied().collect();
    if sorted.len() != a.targets.sample_ports.len() {
        return Err(format!("duplicate sample ports{}", ctx()));
    }
    // Strip what is not a count: addresses, times, names, quoted text, the window label.
    let mut r = a.reason.clone();
    let mut cut: Vec<String> = vec![a.incident.last_seen.clone(), a.incident.start.clone(), a.time.clone()];
    cut.extend(a.source.ip.iter().map(IpAddr::to_string));
    cut.extend(a.source.related.iter().map(IpAddr::to_string));
    cut.extend(a.targets.sample_hosts.iter().cloned());
    if let Some(p) = &a.source.process {
        cut.extend(p.exe.iter().cloned());
        cut.push(p.comm.clone());
    }
    if let Some(f) = &a.fingerprint {
        cut.push(f.hash.clone());
    }
    cut.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in cut.iter().filter(|s| !s.is_empty()) {
        r = r.replace(s.as_str(), " ");
    }
    let r = r.replace(&format!(" {}", a.window), " WINDOW");
    let r: String = r.split('"').step_by(2).collect::<Vec<_>>().join(" ");
    let mut allowed: BTreeSet<u64> = [a.targets.port_count, a.targets.host_count, c.probes, c.failures, c.successes]
        .into_iter()
        .chain(c.detail.values().copied())
        .chain(c.fail_percent())
        .chain(a.targets.sample_ports.iter().map(|p| u64::from(*p)))
        .collect();
    if let Some(p) = &a.source.process {
        allowed.extend([u64::from(p.pid), u64::from(p.tgid), u64::from(p.uid)]);
    }
    for n in numbers(&r) {
        if !allowed.contains(&n) {
            return Err(format!("reason states {n}, which no field carries (reason after stripping: {r:?}){}", ctx()));
        }
    }
    // Each kind states its own fields in its own words.
    let has = |s: String| -> Result<(), String> {
        if a.reason.contains(&s) { Ok(()) } else { Err(format!("reason lacks {s:?}{}", ctx())) }
    };
    if a.incident.update_kind == UpdateKind::Final {
        has("Incident closed".into())?;
    }
    match a.kind {
        AlertKind::HorizontalScan
        | AlertKind::VerticalScan
        | AlertKind::BlockScan
        | AlertKind::SlowScan
        | AlertKind::OutboundScan => {
            if a.targets.port_count == 0 {
                has(format!("probed {} hosts", a.targets.host_count))?;
            } else {
                has(format!("{} distinct ports on {} hosts", a.targets.port_count, a.targets.host_count))?;
            }
            has(a.window.clone())?;
            if c.probes > 0 {
                has(format!("with {} {}", c.probes, a.shape.describe()))?;
            }
            if let Some(p) = c.fail_percent() {
                has(format!("({} failed, {} succeeded: {p}% failed)", c.failures, c.successes))?;
            }
            for (k, v) in &c.detail {
                if let Some(l) = super::reason::label(k.name()) {
                    has(format!("{v} {l}"))?;
                }
            }
        }
        AlertKind::StealthScan | AlertKind::Evasion => {
            for (k, v) in &c.detail {
                if let Some(l) = super::reason::label(k.name()) {
                    has(format!("{v} {l}"))?;
                }
            }
        }
        AlertKind::Enumeration => {
            for p in &a.targets.sample_ports {
                has(p.to_string())?;
            }
        }
        AlertKind::Transition => {
            for ph in a.depth.iter().flat_map(|d| d.phases.iter()) {
                has(format!("{} at {}", ph.phase, ph.first))?;
            }
        }
        AlertKind::HoneyportHit => {
            if a.targets.port_count == 0 {
                has("which ports is unknown".into())?;
            } else {
                has(format!("touched {} honeyport(s)", a.targets.port_count))?;
            }
            for p in &a.targets.sample_ports {
                has(format!("{p}/{}", a.shape.protocol))?;
            }
            has(format!("{} time(s)", c.get("honeyport").unwrap_or(0)))?;
        }
        AlertKind::DecoyCluster => {
            has(format!("{} sources share", c.get("sources").unwrap_or(0)))?;
            has(format!("({} in common)", a.targets.port_count))?;
        }
        AlertKind::DistributedScan if a.shape.shape == "split" => {
            has(format!("{} sources each probed a separate slice of the ports of", c.get("sources").unwrap_or(0)))?;
            has(format!("{} ports and {} probes together", a.targets.port_count, c.probes))?;
            if a.targets.host_count != 1 || a.source.related.len() + 1 != c.get("sources").unwrap_or(0) as usize {
                return Err(format!("a split range names one target and every source{}", ctx()));
            }
        }
        AlertKind::ProtocolScan => {
            has(format!("{} distinct IP protocol numbers to {} hosts", c.get("protocols").unwrap_or(0), a.targets.host_count))?;
            has(format!("({} probes)", c.probes))?;
            if a.targets.port_count != 0 {
                return Err(format!("a protocol scan states no ports{}", ctx()));
            }
        }
        AlertKind::DistributedScan => {
            has(format!(
                "{} sources, each under the per-source thresholds, together sent {} probes to {} ports on {}",
                c.get("sources").unwrap_or(0),
                c.probes,
                a.targets.port_count,
                a.targets.host_count
            ))?;
        }
        AlertKind::Notice => {}
    }
    if let Some(p) = &a.source.process {
        has(format!("(tgid {}, pid {}, uid {})", p.tgid, p.pid, p.uid))?;
    }
    Ok(())
}

fn cfg() -> Config {
    Config::from_toml_str("[alerts]\nupdate_interval = \"20s\"\nclose_after = \"30s\"\nrate_limit = 1000.0\nburst = 1000\n")
        .expect("test config")
}

/// Scripted timelines that raise every kind; every line of every one tells one truth.
#[test]
fn every_kind_states_its_own_fields() {
    use Step::*;
    let scripts: Vec<Vec<Step>> = vec![
        // Vertical SYN scan with open ports, then a UDP scan, then quiet.
        vec![Syn { src: 0, start: 1, n: 300, open: Some(50) }, Wait { secs: 40 }, Udp { src: 0, start: 1, n: 200 }],
        // Stealth scans of several shapes, evasion, backscatter.
        vec![
            Stealth { src: 3, shape: 0, start: 100, n: 40 },
            Stealth { src: 3, shape: 2, start: 200, n: 40 },
            Evasive { src: 1, n: 10 },
            Backscatter { src: 2, n: 30 },
        ],
        // Many ports on many hosts.
        vec![Block { src: 2, start: 1, n: 400 }],
        // Ping and ARP sweeps, horizontal fan-out.
        vec![Icmp { src: 4, n: 70 }, Wait { secs: 15 }, Arp { src: 4, n: 50 }],
        // Honeyports (TCP and UDP), then a scan that takes them in.
        vec![
            Honeyport { src: 1, port: 31337, udp: false },
            Honeyport { src: 1, port: 4444, udp: false },
            Honeyport { src: 1, port: 27444, udp: true },
            Wait { secs: 5 },
            Syn { src: 1, start: 1000, n: 200, open: None },
            Honeyport { src: 1, port: 12345, udp: false },
        ],
        // Kernel threshold event ahead of the sweep.
        vec![Threshold { src: 2, ports: 40 }, Syn { src: 2, start: 1, n: 40, open: None }],
        // Decoys: three sources, one fingerprint, the same ports.
        vec![
            Syn { src: 0, start: 20, n: 6, open: None },
            Syn { src: 1, start: 20, n: 6, open: None },
            Syn { src: 2, start: 20, n: 6, open: None },
        ],
        // Distributed: one-probe sources.
        vec![Held { base: 0, n: 60 }, Wait { secs: 10 }, Held { base: 60, n: 10 }],
        // Outbound: connect scan, raw SYN scan, UDP scan.
        vec![
            Out { proc_: 0, how: 0, start: 1, n: 300, fail: true },
            Out { proc_: 1, how: 1, start: 1, n: 300, fail: true },
            Out { proc_: 2, how: 2, start: 1, n: 300, fail: true },
        ],
        // SCTP INIT and COOKIE ECHO scans, an IP-protocol scan.
        vec![
            Sctp { src: 0, cookie: false, start: 1, n: 120 },
            Sctp { src: 3, cookie: true, start: 1, n: 40 },
            Protos { src: 4, first: 0, n: 120 },
            Wait { secs: 5 },
            Protos { src: 4, first: 120, n: 60 },
        ],
        // Three sources splitting one address's port range (the kernel event names it).
        vec![
            Threshold { src: 0, ports: 30 },
            Syn { src: 0, start: 1, n: 120, open: None },
            Threshold { src: 1, ports: 30 },
            Syn { src: 1, start: 300, n: 120, open: None },
            Threshold { src: 3, ports: 30 },
            Syn { src: 3, start: 600, n: 120, open: None },
            Wait { secs: 6 },
        ],
        // A slow scan: a few ports every few minutes over hours.
        (0..40u16).flat_map(|k| [Syn { src: 3, start: 2000 + k * 3, n: 3, open: None }, Wait { secs: 300 }]).collect(),
    ];
    let mut seen: BTreeMap<AlertKind, usize> = BTreeMap::new();
    let mut finals = 0;
    for (i, s) in scripts.iter().enumerate() {
        for a in play(&cfg(), s) {
            if let Err(e) = check_truth(&a) {
                panic!("script {i}: {e}");
            }
            *seen.entry(a.kind).or_default() += 1;
            finals += usize::from(a.incident.update_kind == UpdateKind::Final);
        }
    }
    // Timeline kinds need payload observations, which these scripts do not send: their
    // reasons are checked by check_truth wherever they occur and by detect::timeline's tests.
    let timeline = [AlertKind::Notice, AlertKind::Enumeration, AlertKind::Transition];
    for k in AlertKind::ALL.iter().filter(|k| !timeline.contains(k)) {
        assert!(seen.contains_key(k), "no {k} among {seen:?}");
    }
    assert!(finals >= 9, "{finals}");
}

fn step() -> impl Strategy<Value = Step> {
    let src = 0usize..ADDRS.len();
    prop_oneof![
        (src.clone(), 1u16..3000, 1u16..400, proptest::option::of(1u16..20))
            .prop_map(|(src, start, n, open)| Step::Syn { src, start, n, open }),
        (src.clone(), 1u16..3000, 1u16..400).prop_map(|(src, start, n)| Step::Block { src, start, n }),
        (src.clone(), 0usize..7, 1u16..3000, 1u16..60).prop_map(|(src, shape, start, n)| Step::Stealth { src, shape, start, n }),
        (src.clone(), 1u16..3000, 1u16..200).prop_map(|(src, start, n)| Step::Udp { src, start, n }),
        (src.clone(), 1u16..100).prop_map(|(src, n)| Step::Icmp { src, n }),
        (src.clone(), 1u16..60).prop_map(|(src, n)| Step::Arp { src, n }),
        (src.clone(), 1u16..20).prop_map(|(src, n)| Step::Evasive { src, n }),
        (src.clone(), 1u16..60).prop_map(|(src, n)| Step::Backscatter { src, n }),
        (src.clone(), prop::sample::select(vec![31337u16, 4444, 12345, 27444]), any::<bool>())
            .prop_map(|(src, port, udp)| Step::Honeyport { src, port, udp }),
        (src.clone(), 20u32..200).prop_map(|(src, ports)| Step::Threshold { src, ports }),
        (0usize..3, 0usize..3, 1u16..3000, 1u16..300, any::<bool>())
            .prop_map(|(proc_, how, start, n, fail)| Step::Out { proc_, how, start, n, fail }),
        (0u16..200, 1u16..60).prop_map(|(base, n)| Step::Held { base, n }),
        (0u16..400).prop_map(|secs| Step::Wait { secs }),
        (src.clone(), any::<bool>(), 1u16..3000, 1u16..200).prop_map(|(src, cookie, start, n)| Step::Sctp { src, cookie, start, n }),
        (src, any::<u8>(), 1u8..80).prop_map(|(src, first, n)| Step::Protos { src, first, n }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Over generated timelines of every probe form, source, process and pause: every line's
    /// reason states only numbers its own fields carry, in the words of its kind.
    #[test]
    fn reason_numbers_equal_the_fields(steps in prop::collection::vec(step(), 1..24)) {
        for a in play(&cfg(), &steps) {
            if let Err(e) = check_truth(&a) {
                prop_assert!(false, "{}", e);
            }
        }
    }
}

/// The case: an ICMP sweep well after a stealth scan of the same source reports the
/// sweep's own counts and samples — no ports, no NULL / UDP counters of the earlier scans.
#[test]
fn icmp_sweep_after_a_stealth_scan_reports_only_its_own_window() {
    use Step::*;
    let steps = vec![
        Stealth { src: 0, shape: 0, start: 1, n: 60 },
        Udp { src: 0, start: 500, n: 60 },
        Wait { secs: 30 },
        Icmp { src: 0, n: 65 },
    ];
    let lines = play(&cfg(), &steps);
    let sweep = lines
        .iter()
        .find(|a| a.shape.protocol == "icmp")
        .unwrap_or_else(|| panic!("no ICMP line: {lines:#?}"));
    assert_eq!(sweep.kind, AlertKind::HorizontalScan);
    assert_eq!(sweep.window, "10s");
    assert_eq!(sweep.shape.shape, "echo");
    assert!(sweep.targets.sample_ports.is_empty(), "{sweep:#?}");
    assert_eq!(sweep.targets.port_count, 0, "{sweep:#?}");
    assert_eq!(sweep.targets.host_count, 65);
    assert_eq!(sweep.counts.probes, 65);
    assert_eq!(sweep.counts.get("icmp_echo"), Some(65));
    for k in ["null", "udp_closed", "udp"] {
        assert_eq!(sweep.counts.get(k), None, "{k} carried over: {sweep:#?}");
    }
    assert!(sweep.reason.contains("65 ICMP echo probes"), "{}", sweep.reason);
    // The sweep is its own incident, not an update of the stealth or UDP one.
    assert!(!sweep.update);
    let ids: BTreeSet<&str> = lines.iter().filter(|a| a.incident.update_kind == UpdateKind::First).map(|a| a.alert_id.as_str()).collect();
    assert!(ids.len() >= 3, "{lines:#?}");
}

/// A UDP scan after a NULL scan of the same source is a new incident that says UDP.
#[test]
fn udp_scan_after_a_null_scan_is_its_own_incident() {
    use Step::*;
    let lines = play(&cfg(), &[Stealth { src: 1, shape: 0, start: 1, n: 60 }, Wait { secs: 30 }, Udp { src: 1, start: 500, n: 80 }]);
    let firsts: Vec<&Alert> = lines.iter().filter(|a| a.incident.update_kind == UpdateKind::First).collect();
    let null = firsts.iter().find(|a| a.shape.shape == "null").unwrap_or_else(|| panic!("{lines:#?}"));
    let udp = firsts.iter().find(|a| a.shape.protocol == "udp").unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!(null.kind, AlertKind::StealthScan);
    assert_ne!(null.alert_id, udp.alert_id);
    assert!(udp.reason.contains("UDP"), "{}", udp.reason);
    assert!(!udp.reason.contains("NULL"), "{}", udp.reason);
    assert_eq!(udp.counts.get("null"), None);
}

/// A honeyport alert names the port and protocol; touches during an open scan of the same
/// source are that scan's evidence, not incidents of their own.
#[test]
fn honeyport_names_port_and_protocol_and_joins_an_open_scan() {
    use Step::*;
    let lines = play(&cfg(), &[Honeyport { src: 2, port: 27444, udp: true }]);
    let h = &lines[0];
    assert_eq!((h.kind, h.shape.protocol.as_str()), (AlertKind::HoneyportHit, "udp"));
    assert_eq!(h.targets.sample_ports, vec![27444]);
    assert!(h.reason.contains("27444/udp"), "{}", h.reason);

    let lines = play(&cfg(), &[Syn { src: 0, start: 1, n: 300, open: None }, Honeyport { src: 0, port: 31337, udp: false }]);
    assert!(lines.iter().all(|a| a.kind == AlertKind::VerticalScan), "{lines:#?}");
    let last = lines.last().expect("lines");
    assert_eq!(last.incident.update_kind, UpdateKind::Final);
    assert_eq!(last.counts.get("honeyport"), Some(1), "{last:#?}");
    assert!(last.reason.contains("evidence: 1 to honeyports"), "{}", last.reason);
}

/// The sweep can see a honeyport touch before its kernel event: the incident waits for the
/// event (port and protocol), and alerts without them only when the event never comes.
#[test]
fn honeyport_seen_by_the_sweep_first_waits_for_its_event() {
    let mut e = Engine::new(&cfg(), "h".into());
    let mut s = Src::new("203.0.113.44");
    s.bump(cnt::HONEYPORT, 1);
    s.bump(cnt::SYN, 1);
    s.port(31337);
    assert!(e.observe_source(t(1.0), &s.snap()).is_empty());
    assert!(e.tick(t(1.5)).is_empty());
    let ev = InboundObservation {
        ip: s.ip,
        dst: ip(LOCAL),
        kind: InboundEventKind::Honeyport { dport: 31337, proto: 6 },
    };
    let a = e.observe_inbound_event(t(1.6), &ev);
    assert_eq!(a.len(), 1, "{a:#?}");
    assert_eq!((a[0].shape.protocol.as_str(), a[0].targets.sample_ports.clone()), ("tcp", vec![31337]));
    assert!(e.tick(t(10.0)).iter().all(|l| l.alert_id == a[0].alert_id), "one incident");

    // The event never comes (ring buffer full): the touch still alerts, without port/protocol.
    let mut e = Engine::new(&cfg(), "h".into());
    assert!(e.observe_source(t(1.0), &s.snap()).is_empty());
    assert!(e.tick(t(2.0)).is_empty());
    let late = e.tick(t(4.5));
    assert_eq!(late.len(), 1, "{late:#?}");
    assert_eq!((late[0].kind, late[0].shape.protocol.as_str()), (AlertKind::HoneyportHit, "ip"));
    check_truth(&late[0]).unwrap_or_else(|err| panic!("{err}"));
}
