//! `cargo xtask bench-replay`: `scanwatch replay` against `tcpdump -r FILE -w /dev/null` on the
//! same generated capture, in the same run (interleaved rounds, fastest of each), as packets/s
//! and the ratio.
//!
//! The capture is a realistic mix for a busy server under scanning: established TCP data both
//! ways and bare ACKs of many clients, benign handshakes, DNS over UDP, and SYN scans (nmap-like
//! vertical scans and a masscan-like horizontal sweep) answered by RST / SYN-ACK.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

fn csum(mut sum: u64, b: &[u8]) -> u64 {
    let mut i = 0;
    while i + 1 < b.len() {
        sum += u64::from(u16::from_be_bytes([b[i], b[i + 1]]));
        i += 2;
    }
    if i < b.len() {
        sum += u64::from(b[i]) << 8;
    }
    sum
}

fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Ethernet / IPv4 / TCP or UDP with correct checksums.
struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    #[allow(clippy::too_many_arguments, reason = "a packet's header fields")]
    fn ipv4(&mut self, src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, l4: &[u8]) -> &[u8] {
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
        let tot = (20 + l4.len()) as u16;
        let mut ip = [0x45, 0, 0, 0, 0, 1, 0x40, 0, ttl, proto, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        ip[2..4].copy_from_slice(&tot.to_be_bytes());
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let c = !fold(csum(0, &ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        b.extend_from_slice(&ip);
        let start = b.len();
        b.extend_from_slice(l4);
        // Pseudo-header checksum over the L4 segment.
        let mut ps = csum(0, &src);
        ps = csum(ps, &dst);
        ps += u64::from(proto) + l4.len() as u64;
        let coff = if proto == 6 { 16 } else { 6 };
        b[start + coff] = 0;
        b[start + coff + 1] = 0;
        let c = !fold(csum(ps, &b[start..]));
        b[start + coff..start + coff + 2].copy_from_slice(&c.to_be_bytes());
        &self.buf
    }
}

fn tcp(sport: u16, dport: u16, seq: u32, flags: u8, window: u16, opts: &[u8], payload: usize) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + opts.len() + payload);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.push((((20 + opts.len()) / 4) as u8) << 4);
    t.push(flags);
    t.extend_from_slice(&window.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(opts);
    t.resize(20 + opts.len() + payload, 0x61);
    t
}

fn udp(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.resize(8 + payload, 0x62);
    u
}

use crate::rng::Rng;

/// Write `n` packets (pcap, microseconds, Ethernet) at about 20,000 packets/s of capture time.
pub fn generate(path: &Path, n: u64) -> Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).with_context(|| format!("create {}", path.display()))?);
    w.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    w.write_all(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0])?;
    w.write_all(&65535u32.to_le_bytes())?;
    w.write_all(&1u32.to_le_bytes())?;
    let mut b = Builder { buf: Vec::with_capacity(1600) };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let server = [10, 60, 0, 1];
    let mut t_us: u64 = 1_700_000_000_000_000;
    let nmap_opts = [2, 4, 5, 0xb4];
    let linux_opts = [2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
    let emit = |w: &mut BufWriter<File>, t: u64, frame: &[u8]| -> Result<()> {
        w.write_all(&((t / 1_000_000) as u32).to_le_bytes())?;
        w.write_all(&((t % 1_000_000) as u32).to_le_bytes())?;
        w.write_all(&(frame.len() as u32).to_le_bytes())?;
        w.write_all(&(frame.len() as u32).to_le_bytes())?;
        w.write_all(frame)?;
        Ok(())
    };
    let mut i = 0u64;
    let mut scan_port = [0u16; 4];
    let mut sweep_host = 0u32;
    while i < n {
        t_us += 25 + rng.below(50);
        let r = rng.below(100);
        let client = [10, 61, (rng.below(8)) as u8, (1 + rng.below(250)) as u8];
        let cport = 32768 + rng.below(28000) as u16;
        if r < 45 {
            // Established data, both directions.
            let len = 100 + rng.below(1300) as usize;
            let f = if rng.below(2) == 0 {
                b.ipv4(client, server, 6, 64, &tcp(cport, 443, 1000, ACK | PSH, 502, &[], len)).to_vec()
            } else {
                b.ipv4(server, client, 6, 64, &tcp(443, cport, 1000, ACK | PSH, 502, &[], len)).to_vec()
            };
            emit(&mut w, t_us, &f)?;
            i += 1;
        } else if r < 65 {
            // Bare ACKs of established flows.
            let f = b.ipv4(client, server, 6, 64, &tcp(cport, 443, 1000, ACK, 502, &[], 0)).to_vec();
            emit(&mut w, t_us, &f)?;
            i += 1;
        } else if r < 72 {
            // Benign handshake: SYN, SYN-ACK, ACK.
            for (k, f) in [
                b.ipv4(client, server, 6, 64, &tcp(cport, 443, 7, SYN, 64240, &linux_opts, 0)).to_vec(),
                b.ipv4(server, client, 6, 64, &tcp(443, cport, 9, SYN | ACK, 65160, &linux_opts, 0)).to_vec(),
                b.ipv4(client, server, 6, 64, &tcp(cport, 443, 8, ACK, 502, &[], 0)).to_vec(),
            ]
            .iter()
            .enumerate()
            {
                emit(&mut w, t_us + k as u64 * 100, f)?;
            }
            i += 3;
        } else if r < 76 {
            // DNS query and answer.
            let q = b.ipv4(client, [10, 60, 0, 53], 17, 64, &udp(cport, 53, 40)).to_vec();
            let a = b.ipv4([10, 60, 0, 53], client, 17, 64, &udp(53, cport, 120)).to_vec();
            emit(&mut w, t_us, &q)?;
            emit(&mut w, t_us + 300, &a)?;
            i += 2;
        } else if r < 94 {
            // nmap-like vertical SYN scans from four scanners, each answered by RST (or SYN-ACK
            // on 22/443 and the scanner's RST).
            let s = rng.below(4) as usize;
            scan_port[s] = scan_port[s].wrapping_add(1).max(1);
            let p = scan_port[s];
            let atk = [198, 51, 100, 10 + s as u8];
            let syn = b.ipv4(atk, server, 6, 44, &tcp(40000 + s as u16, p, 77, SYN, 1024, &nmap_opts, 0)).to_vec();
            emit(&mut w, t_us, &syn)?;
            if p == 22 || p == 443 {
                let sa = b.ipv4(server, atk, 6, 64, &tcp(p, 40000 + s as u16, 5, SYN | ACK, 65160, &linux_opts, 0)).to_vec();
                let rst = b.ipv4(atk, server, 6, 64, &tcp(40000 + s as u16, p, 78, RST, 0, &[], 0)).to_vec();
                emit(&mut w, t_us + 50, &sa)?;
                emit(&mut w, t_us + 100, &rst)?;
                i += 3;
            } else {
                let rst = b.ipv4(server, atk, 6, 64, &tcp(p, 40000 + s as u16, 0, RST | ACK, 0, &[], 0)).to_vec();
                emit(&mut w, t_us + 50, &rst)?;
                i += 2;
            }
        } else {
            // masscan-like sweep of port 80 over a /16, answered by RST.
            sweep_host = sweep_host.wrapping_add(1);
            let dst = [10, 62, (sweep_host >> 8) as u8, sweep_host as u8];
            let atk = [203, 0, 113, 7];
            let syn = b.ipv4(atk, dst, 6, 255, &tcp(61000, 80, sweep_host, SYN, 1024, &[], 0)).to_vec();
            let rst = b.ipv4(dst, atk, 6, 64, &tcp(80, 61000, 0, RST | ACK, 0, &[], 0)).to_vec();
            emit(&mut w, t_us, &syn)?;
            emit(&mut w, t_us + 40, &rst)?;
            i += 2;
        }
    }
    w.flush()?;
    Ok(())
}

/// CPU seconds (user + system) of every waited-for child so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// (wall seconds, CPU seconds) of one run.
fn time_cmd(cmd: &mut Command) -> Result<(f64, f64)> {
    let cpu0 = children_cpu();
    let t = Instant::now();
    let out = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).output().with_context(|| format!("{cmd:?}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((secs, children_cpu() - cpu0))
}

/// Generate (or reuse) the capture, then interleave `rounds` runs of each command.
pub fn run(target: &Path, bin: &Path, packets: u64, rounds: u32, file: Option<PathBuf>) -> Result<()> {
    let file = file.unwrap_or_else(|| target.join(format!("bench-replay-{packets}.pcap")));
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    }
    if !file.exists() {
        let t = Instant::now();
        generate(&file, packets)?;
        eprintln!("xtask: generated {} ({packets} packets) in {:.1} s", file.display(), t.elapsed().as_secs_f64());
    }
    let (n, per_call) = count_packets(bin, &file)?;
    let (mut best_sw, mut best_td) = ((f64::MAX, 0.0), (f64::MAX, 0.0));
    for r in 0..rounds {
        let td = time_cmd(Command::new("tcpdump").args(["-r"]).arg(&file).args(["-w", "/dev/null"]))?;
        let sw = time_cmd(Command::new(bin).args(["replay", "--quiet"]).arg(&file))?;
        eprintln!(
            "xtask: round {}: tcpdump {:.2} s ({:.2} s CPU), scanwatch replay {:.2} s ({:.2} s CPU, program load included)",
            r + 1,
            td.0,
            td.1,
            sw.0,
            sw.1
        );
        if td.0 < best_td.0 {
            best_td = td;
        }
        if sw.0 < best_sw.0 {
            best_sw = sw;
        }
    }
    let (sw_rate, td_rate) = (n as f64 / best_sw.0, n as f64 / best_td.0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("capture: {} ({n} packets); load average at the end: {}", file.display(), load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    println!("tcpdump -r FILE -w /dev/null : {td_rate:>10.0} packets/s  ({:.2} s wall, {:.2} s CPU; fastest of {rounds})", best_td.0, best_td.1);
    println!(
        "scanwatch replay FILE        : {sw_rate:>10.0} packets/s  ({:.2} s wall, {:.2} s CPU; fastest of {rounds}; the XDP program run on every packet)",
        best_sw.0, best_sw.1
    );
    println!("ratio scanwatch / tcpdump    : {:.3} wall-clock rate (target ≥ 0.333), {:.3} CPU cost", sw_rate / td_rate, best_td.1 / best_sw.1.max(1e-9));
    // The floor: the BPF_PROG_TEST_RUN calls this capture needs (one per batch of `per_call`
    // frames) of the empty program, nothing else, on every core at once at best. A replay cannot
    // beat this rate whatever its user-space side does.
    let out = Command::new(bin).args(["bench", "--call-floor", "1000000"]).output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("scanwatch bench --call-floor: {}", String::from_utf8_lossy(&out.stderr)))?;
    let ns = v["ns_per_call"].as_f64().unwrap_or(f64::NAN);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let ceiling = cores * 1e9 * per_call / ns;
    println!(
        "BPF_PROG_TEST_RUN floor      : {ns:.0} ns per call of the empty program ({:.0} calls/s on one core); \
         at {per_call:.1} frames per call, ceiling with all {cores} cores and no other work: {ceiling:.0} packets/s = {:.3} of tcpdump",
        1e9 / ns,
        ceiling / td_rate
    );
    Ok(())
}

/// Packets in the capture, as `scanwatch replay` counts them (and a check it ran every one), and
/// the frames per BPF_PROG_TEST_RUN call it used.
fn count_packets(bin: &Path, file: &Path) -> Result<(u64, f64)> {
    let out = Command::new(bin).args(["replay", "--quiet"]).arg(file).stdout(Stdio::null()).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    let json = err
        .lines()
        .find_map(|l| l.strip_prefix("scanwatch: replay summary "))
        .with_context(|| format!("no summary from scanwatch replay: {err}"))?;
    let v: serde_json::Value = serde_json::from_str(json)?;
    let (p, runs) = (v["packets"].as_u64().unwrap_or(0), v["xdp_runs"].as_u64().unwrap_or(0));
    if p == 0 || p != runs {
        bail!("replay ran the XDP program on {runs} of {p} packets");
    }
    eprintln!("xtask: replay summary: {json}");
    let mut per_call = 1.0;
    if let Some(calls) = v["xdp_calls"].as_u64().filter(|c| *c > 0) {
        per_call = runs as f64 / calls as f64;
        let secs = v["xdp_seconds"].as_f64().unwrap_or(f64::NAN);
        eprintln!(
            "xtask: {runs} frames in {calls} BPF_PROG_TEST_RUN calls ({:.1} frames per call), {:.0} ns per frame inside the syscall",
            runs as f64 / calls as f64,
            secs * 1e9 / runs as f64
        );
    }
    Ok((p, per_call))
}
