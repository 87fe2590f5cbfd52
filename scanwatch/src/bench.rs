//! XDP per-packet cost via BPF_PROG_TEST_RUN, as ratios to an empty XDP_PASS program measured
//! in the same run.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};

use scanwatch_common::{cfgflag, stat, XdpConfig};

use crate::{
    loader::{self, LoadOptions},
    packet::{PacketSpec, L4, ACK, PSH, SYN},
};

pub struct Row {
    pub name: &'static str,
    /// `repeat`: one packet, kernel repeat loop; `rotating`: repeat loop with the source
    /// rewritten before each run; `one-per-run`: distinct packets, one kernel run each.
    pub method: &'static str,
    pub ns: f64,
    /// The empty program measured alongside, by the same method.
    pub baseline_ns: f64,
    pub ratio: f64,
}

pub struct Report {
    pub repeat: u32,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn table(&self) -> String {
        let mut s = format!("{:<34} {:>12} {:>10} {:>12} {:>8}\n", "shape", "method", "ns/pkt", "baseline ns", "ratio");
        for r in &self.rows {
            s.push_str(&format!(
                "{:<34} {:>12} {:>10.1} {:>12.1} {:>7.2}x\n",
                r.name, r.method, r.ns, r.baseline_ns, r.ratio
            ));
        }
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "repeat": self.repeat,
            "results": self.rows.iter().map(|r| serde_json::json!({
                "shape": r.name, "method": r.method, "ns_per_packet": r.ns,
                "baseline_ns_per_packet": r.baseline_ns, "ratio_to_baseline": r.ratio
            })).collect::<Vec<_>>()
        })
    }
}

fn prog<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    let p: &mut Xdp = ebpf.program_mut(name).ok_or_else(|| anyhow::anyhow!("no program {name}"))?.try_into()?;
    if p.fd().is_err() {
        p.load()?;
    }
    Ok(p)
}

fn run_once(p: &Xdp, pkt: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let r = p.test_run(TestRunOptions { data_in: Some(pkt), repeat, ..TestRunOptions::default() })?;
    anyhow::ensure!(r.return_value == 2, "program returned {} instead of XDP_PASS", r.return_value);
    Ok(r.duration.as_nanos() as f64)
}

/// Baseline and program, interleaved 7 times (`repeat` runs each); the fastest of each (ns per
/// packet). Interference from other work on the machine only ever adds time, so the minimum is
/// the stable figure, and interleaving keeps both sides exposed to the same machine state.
fn measure_pair(ebpf: &mut Ebpf, base: &str, prog_name: &str, pkt: &[u8], repeat: u32) -> anyhow::Result<(f64, f64)> {
    measure_rounds(ebpf, base, prog_name, &|_| pkt.to_vec(), repeat)
}

/// Rounds of the interleaved measurement.
const ROUNDS: u32 = 7;

/// [`measure_pair`] with the packet of each round given by `pkt(round)` (the rotating benchmark
/// starts every round from a different source, so no round repeats an earlier one's sources).
fn measure_rounds(
    ebpf: &mut Ebpf,
    base: &str,
    prog_name: &str,
    pkt: &dyn Fn(u32) -> Vec<u8>,
    repeat: u32,
) -> anyhow::Result<(f64, f64)> {
    prog(ebpf, base)?;
    prog(ebpf, prog_name)?;
    let (mut b, mut t) = (f64::MAX, f64::MAX);
    for r in 0..ROUNDS {
        let p = pkt(r);
        b = b.min(run_once(prog(ebpf, base)?, &p, repeat)?);
        t = t.min(run_once(prog(ebpf, prog_name)?, &p, repeat)?);
    }
    Ok((b, t))
}

/// Average over distinct packets, one kernel run each (each its own source); the baseline runs
/// the same packets, interleaved in blocks.
fn measure_each(ebpf: &mut Ebpf, pkts: &[Vec<u8>]) -> anyhow::Result<(f64, f64)> {
    prog(ebpf, BASE)?;
    prog(ebpf, PROG_XDP)?;
    let (mut b, mut t) = (0.0, 0.0);
    for chunk in pkts.chunks(500) {
        for pkt in chunk {
            b += run_once(prog(ebpf, BASE)?, pkt, 1)?;
        }
        for pkt in chunk {
            t += run_once(prog(ebpf, PROG_XDP)?, pkt, 1)?;
        }
    }
    let n = pkts.len() as f64;
    Ok((b / n, t / n))
}

fn stat(ebpf: &Ebpf, i: u32) -> anyhow::Result<u64> {
    let m: PerCpuArray<&MapData, [u64; stat::N as usize]> =
        PerCpuArray::try_from(ebpf.map(scanwatch_common::MAP_STATS).ok_or_else(|| anyhow::anyhow!("no STATS map"))?)?;
    Ok(m.get(&0, 0)?.iter().map(|v| v[i as usize]).sum())
}

const BASE: &str = "xdp_pass_baseline";

const PROG_XDP: &str = scanwatch_common::PROG_XDP;

/// `scanwatch bench --call-floor N`: N BPF_PROG_TEST_RUN calls of the empty program, one packet
/// each, through the same raw syscall `replay` uses, timed from user space: what one packet costs
/// a replay before the program, the reader or the engine do anything (fastest of 3 rounds).
pub fn call_floor(n: u32) -> anyhow::Result<serde_json::Value> {
    use std::os::fd::{AsFd, AsRawFd};
    let mut ebpf = loader::load_object(&LoadOptions::default(), crate::ebpf_bench_object())?;
    let p = prog(&mut ebpf, BASE)?;
    let fd = p.fd()?.as_fd().as_raw_fd();
    let pkt = PacketSpec::nmap_syn(IpAddr::V4(Ipv4Addr::new(10, 98, 0, 7)), IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)), 80).build();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        for _ in 0..n.max(1) {
            let r = crate::replay::source::test_run(fd, &pkt)?;
            anyhow::ensure!(r == 2, "empty program returned {r}");
        }
        best = best.min(t.elapsed().as_nanos() as f64 / f64::from(n.max(1)));
    }
    Ok(serde_json::json!({ "calls": n, "packet_bytes": pkt.len(), "ns_per_call": best, "calls_per_second": 1e9 / best }))
}

pub fn run(repeat: u32) -> anyhow::Result<Report> {
    let mut ebpf = loader::load_object(&LoadOptions { honeyports_tcp: vec![4444, 31337], ..LoadOptions::default() }, crate::ebpf_bench_object())?;
    let v4 = |a: u8, b: u8, c: u8, d: u8| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    let dst = v4(10, 99, 0, 1);
    let known = v4(10, 98, 0, 7);
    let mut data = PacketSpec::tcp(known, dst, 443, 51000, ACK | PSH);
    if let L4::Tcp { payload, .. } = &mut data.l4 {
        *payload = vec![0x42; 512];
    }
    let established = data.build();
    let syn_known = PacketSpec::nmap_syn(known, dst, 22).build();
    let v6s: IpAddr = IpAddr::V6("fd98::7".parse::<Ipv6Addr>()?);
    let v6d: IpAddr = IpAddr::V6("fd99::1".parse::<Ipv6Addr>()?);
    let syn6 = PacketSpec::linux_syn(v6s, v6d, 40000, 80).build();
    // A bare ACK of a real established connection (loopback), found by the socket lookup, and a
    // bare ACK with no connection (an ACK-scan probe).
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let client = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (_server_side, _) = listener.accept()?;
    let lo = v4(127, 0, 0, 1);
    let ack_est = PacketSpec::tcp(lo, lo, client.local_addr()?.port(), listener.local_addr()?.port(), ACK).build();
    let ack_orphan = PacketSpec::tcp(known, dst, 40000, 80, ACK).build();
    // nmap -sY's INIT and a GRE packet (any other IP protocol: nmap -sO, tunnels).
    let sctp_init = PacketSpec::sctp(known, dst, 40000, 80, 1, 28).build();
    let gre = PacketSpec::ip_proto(known, dst, 47, 24).build();
    let mut malformed = PacketSpec::tcp(known, dst, 1, 2, SYN).build();
    malformed[14] = 0x43; // IHL 3
    let n_new = 20_000usize;
    let new_sources: Vec<Vec<u8>> = (0..n_new)
        .map(|i| PacketSpec::nmap_syn(v4(172, 16 + (i >> 16) as u8, (i >> 8) as u8, i as u8), dst, 80).build())
        .collect();
    // Flood mix: random sources and ports with an established-traffic share (1 in 4).
    let mut rng = 0x1234_5678u32;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng
    };
    let flood: Vec<Vec<u8>> = (0..n_new)
        .map(|i| {
            if i % 4 == 3 {
                established.clone()
            } else {
                let r = next();
                PacketSpec::nmap_syn(v4(100, (r >> 24) as u8 & 63, (r >> 16) as u8, (r >> 8) as u8), dst, (r & 0xffff) as u16).build()
            }
        })
        .collect();

    let mut rows = Vec::new();
    let push = |rows: &mut Vec<Row>, name, method, (b, t): (f64, f64)| {
        rows.push(Row { name, method, ns: t, baseline_ns: b, ratio: t / b });
    };
    // Known sources: admitted by their first two packets.
    for pkt in [&syn_known, &syn_known, &syn6, &syn6] {
        run_once(prog(&mut ebpf, PROG_XDP)?, pkt, 1)?;
    }
    for (name, pkt) in [
        ("established TCP data", &established),
        ("SYN from known source", &syn_known),
        ("IPv6 SYN (known source)", &syn6),
        ("malformed (IPv4 IHL<5)", &malformed),
        ("bare ACK, established connection", &ack_est),
        ("bare ACK, no connection (ACK scan)", &ack_orphan),
        ("SCTP INIT (known source)", &sctp_init),
        ("GRE packet (known source)", &gre),
    ] {
        let m = measure_pair(&mut ebpf, BASE, PROG_XDP, pkt, repeat)?;
        push(&mut rows, name, "repeat", m);
    }
    // Cost attribution: the known-source SYN without the socket lookup.
    let full = XdpConfig::default_config();
    loader::write_config(&mut ebpf, &XdpConfig { flags: full.flags & !cfgflag::LOOKUP_SOCKETS, ..full })?;
    let m = measure_pair(&mut ebpf, BASE, PROG_XDP, &syn_known, repeat)?;
    push(&mut rows, "SYN known, no socket lookup", "repeat", m);
    loader::write_config(&mut ebpf, &full)?;
    // `SCANWATCH_BENCH_QUICK`: only the known-source rows (for comparing program variants).
    let quick = std::env::var_os("SCANWATCH_BENCH_QUICK").is_some();
    if !quick {
        depth_rows(&mut ebpf, &mut rows, repeat)?;
    }

    // The listening-port filter (as the agent runs by default): probes of a known source to a
    // port no socket uses skip the lookup; a port in use is still looked up.
    let unused = std::net::TcpListener::bind("0.0.0.0:0")?.local_addr()?.port();
    let in_use = listener.local_addr()?.port();
    let syn_unused = PacketSpec::nmap_syn(known, dst, unused).build();
    let syn_in_use = PacketSpec::nmap_syn(known, dst, in_use).build();
    let ack_unused = PacketSpec::tcp(known, dst, 40000, unused, ACK).build();
    let mut filtered = full;
    let _ports = crate::source::live::ports::fill(&mut ebpf, &mut filtered).map_err(|e| anyhow::anyhow!("port filter: {e}"))?;
    for (name, pkt) in [
        ("SYN known, closed port, port filter", &syn_unused),
        ("SYN known, port in use, port filter", &syn_in_use),
        ("bare ACK scan probe, port filter", &ack_unused),
    ] {
        let m = measure_pair(&mut ebpf, BASE, PROG_XDP, pkt, repeat)?;
        push(&mut rows, name, "repeat", m);
    }
    // `SCANWATCH_BENCH_SPIN=SECS` (with `_ACK` for the ACK probe): run the closed-port probe for
    // SECS seconds after these rows, printing `SPIN <pid>` first, so `perf record -p <pid>`
    // (with `net.core.bpf_jit_kallsyms = 1`) profiles just this path of the program.
    if let Ok(secs) = std::env::var("SCANWATCH_BENCH_SPIN") {
        let secs: u64 = secs.parse()?;
        let pkt = if std::env::var_os("SCANWATCH_BENCH_SPIN_ACK").is_some() { &ack_unused } else { &syn_unused };
        eprintln!("SPIN {}", std::process::id());
        let t = std::time::Instant::now();
        while t.elapsed().as_secs() < secs {
            run_once(prog(&mut ebpf, PROG_XDP)?, pkt, repeat)?;
        }
    }
    loader::write_config(&mut ebpf, &full)?;
    if quick {
        return Ok(Report { repeat, rows });
    }

    // A new source on every repetition: the rotating entry rewrites the source address (and
    // port) in place before each run; its baseline does the same rewrite and nothing else.
    // Round r starts right after round r-1's last source (the entry advances the address before
    // each run), so any repeat count presents only new sources, in every round.
    let held = stat(&ebpf, stat::FIRST_CONTACT)?;
    let start = u32::from(std::net::Ipv4Addr::new(20, 0, 0, 1));
    let first = |r: u32| {
        let src = std::net::Ipv4Addr::from(start.wrapping_add(r.wrapping_mul(repeat)));
        PacketSpec::nmap_syn(IpAddr::V4(src), dst, 1000).build()
    };
    let m = measure_rounds(&mut ebpf, "xdp_pass_rotating", "scanwatch_xdp_rotating", &first, repeat)?;
    let held = stat(&ebpf, stat::FIRST_CONTACT)? - held;
    let runs = u64::from(ROUNDS) * u64::from(repeat);
    anyhow::ensure!(
        held >= runs * 99 / 100,
        "rotating benchmark did not present new sources ({held} held of {runs} runs)"
    );
    push(&mut rows, "SYN from new source", "rotating", m);

    let m = measure_each(&mut ebpf, &new_sources)?;
    push(&mut rows, "SYN from new source", "one-per-run", m);
    let m = measure_each(&mut ebpf, &flood)?;
    push(&mut rows, "random-source SYN flood mix", "one-per-run", m);
    // What the first-contact tier buys: the same flood with it switched off (every packet of a
    // new source becomes a 1.1 KiB LRU insert, evicting real sources).
    loader::write_config(&mut ebpf, &XdpConfig { flags: full.flags & !cfgflag::FIRST_CONTACT, ..full })?;
    let m = measure_each(&mut ebpf, &flood)?;
    push(&mut rows, "flood mix, first-contact tier off", "one-per-run", m);
    loader::write_config(&mut ebpf, &full)?;
    Ok(Report { repeat, rows })
}

/// Protocol depth: connections to a real listener on loopback, each made pending by its SYN's
/// socket lookup; then each connection's first data segment (copied into a `PayloadEvent`), and
/// a later data segment of the same connection (the fast path plus the pending-bit test).
fn depth_rows(ebpf: &mut Ebpf, rows: &mut Vec<Row>, repeat: u32) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let dport = listener.local_addr()?.port();
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let n = 2000u16;
    // Admit the source (its first packet is held), then one SYN per connection.
    for sport in 20000..20000 + n {
        run_once(prog(ebpf, PROG_XDP)?, &PacketSpec::linux_syn(lo, lo, sport, dport).build(), 1)?;
    }
    let request = b"GET /index.html HTTP/1.1\r\nHost: bench\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n".to_vec();
    let data = |sport: u16| {
        let mut p = PacketSpec::tcp(lo, lo, sport, dport, ACK | PSH);
        if let L4::Tcp { payload, .. } = &mut p.l4 {
            *payload = request.clone();
        }
        p.build()
    };
    let firsts: Vec<Vec<u8>> = (20001..20000 + n).map(data).collect();
    let (events, dropped) = (stat(ebpf, stat::EVENTS)?, stat(ebpf, stat::EVENTS_DROPPED)?);
    let m = measure_each(ebpf, &firsts)?;
    let emitted = stat(ebpf, stat::EVENTS)? - events;
    let lost = stat(ebpf, stat::EVENTS_DROPPED)? - dropped;
    anyhow::ensure!(
        emitted + lost >= u64::from(n - 1) * 99 / 100 && lost == 0,
        "first-payload benchmark: {emitted} payload events emitted, {lost} dropped, of {} connections",
        n - 1
    );
    rows.push(Row { name: "first payload (event, 88 B sample)", method: "one-per-run", ns: m.1, baseline_ns: m.0, ratio: m.1 / m.0 });
    // The same connections' later data: pending state cleared, so the fast path.
    let m = measure_each(ebpf, &firsts)?;
    anyhow::ensure!(stat(ebpf, stat::EVENTS)? == events + emitted, "later data segments emitted events");
    rows.push(Row { name: "later data, same connections", method: "one-per-run", ns: m.1, baseline_ns: m.0, ratio: m.1 / m.0 });
    let m = measure_pair(ebpf, BASE, PROG_XDP, &firsts[0], repeat)?;
    rows.push(Row { name: "later data, same connection", method: "repeat", ns: m.1, baseline_ns: m.0, ratio: m.1 / m.0 });
    // The same data packets with protocol depth compiled out at load time (`depth.enabled =
    // false`): what the pending-bit test costs the fast path.
    let mut off = loader::load_object(&LoadOptions { first_payload: false, ..LoadOptions::default() }, crate::ebpf_bench_object())?;
    let m = measure_pair(&mut off, BASE, PROG_XDP, &firsts[0], repeat)?;
    rows.push(Row { name: "later data, depth off (load time)", method: "repeat", ns: m.1, baseline_ns: m.0, ratio: m.1 / m.0 });
    let m = measure_each(&mut off, &firsts)?;
    rows.push(Row { name: "data, depth off (load time)", method: "one-per-run", ns: m.1, baseline_ns: m.0, ratio: m.1 / m.0 });
    drop(listener);
    Ok(())
}
