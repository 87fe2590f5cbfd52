//! `cargo xtask bench-hunt`: `scanwatch hunt` against the classic pandas T1046 hunt on the same
//! generated Zeek conn.log (≥ 5,000,000 records of a realistic day), wall time and peak RSS of
//! both measured in the same run (wait4 rusage of each child), ratios printed.
//!
//! The log: 2,000 internal clients (their servers by a Zipf-like preference, web through two
//! proxies, DNS through three resolvers), the resolvers' upstream queries, the proxies' upstream
//! connections, a monitoring poller on 500 hosts, ICMP pings, IPv6 clients, midstream (OTH)
//! connections, and a few scans: vertical, horizontal, a /16 sweep and two slow scans hidden in
//! normal workstation traffic. Records are written in connection-end order, as Zeek does.
//! pandas comes from PyPI into a venv under the target directory, created by this command.

use std::collections::BinaryHeap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

const T0: f64 = 1_717_200_000.0; // 2024-06-01T00:00:00Z
const DAY: f64 = 86_400.0;

const PANDAS_HUNT: &str = r##"
# The classic T1046 hunt: load the conn.log, group by source, distinct destinations and ports,
# share of connections that never completed, flag wide fan-out with a high failure ratio.
import sys
import pandas as pd

path = sys.argv[1]
fields = None
with open(path) as f:
    for line in f:
        if line.startswith("#fields"):
            fields = line.rstrip("\n").split("\t")[1:]
            break
df = pd.read_csv(path, sep="\t", comment="#", names=fields, header=None,
                 na_values=["-", "(empty)"], keep_default_na=False, low_memory=False)
df["failed"] = df["conn_state"].isin(["S0", "REJ", "RSTO", "RSTOS0", "SH"])
g = df.groupby("id.orig_h").agg(conns=("uid", "size"), hosts=("id.resp_h", "nunique"),
                                ports=("id.resp_p", "nunique"), failed=("failed", "sum"))
g["failed_ratio"] = g["failed"] / g["conns"]
flagged = g[((g["hosts"] >= 40) | (g["ports"] >= 80)) & (g["failed_ratio"] >= 0.5)]
print(f"pandas: {len(df)} records, {len(g)} sources, {len(flagged)} flagged", file=sys.stderr)
for ip, r in flagged.sort_values("ports", ascending=False).iterrows():
    print(f"{ip}\t{int(r.conns)}\t{int(r.hosts)}\t{int(r.ports)}\t{r.failed_ratio:.3f}")
"##;

use crate::rng::Rng;

#[derive(Clone, Copy)]
enum Shape {
    Sf,
    S0,
    Rej,
    Rsto,
    Rstr,
    Sh,
    S1,
    Oth,
    UdpSf,
    UdpS0,
    Ping,
    PingLost,
}

struct Conn {
    end: f64,
    ts: f64,
    orig: String,
    resp: String,
    dport: u16,
    shape: Shape,
    dur: f64,
}

impl PartialEq for Conn {
    fn eq(&self, o: &Self) -> bool {
        self.end == o.end
    }
}
impl Eq for Conn {}
impl PartialOrd for Conn {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Conn {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Min-heap on the end time.
        o.end.total_cmp(&self.end)
    }
}

fn v4(a: u32) -> String {
    format!("{}.{}.{}.{}", a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255)
}

struct Gen<W: Write> {
    rng: Rng,
    heap: BinaryHeap<Conn>,
    out: W,
    n: u64,
}

impl<W: Write> Gen<W> {
    fn add(&mut self, ts: f64, orig: String, resp: String, dport: u16, shape: Shape) -> Result<()> {
        let dur = match shape {
            Shape::Sf | Shape::Rstr => {
                if self.rng.below(200) == 0 {
                    60.0 + self.rng.unit() * 900.0
                } else {
                    0.01 + self.rng.unit() * 8.0
                }
            }
            Shape::S1 | Shape::Oth => 30.0 + self.rng.unit() * 200.0,
            Shape::UdpSf | Shape::Ping => 0.001 + self.rng.unit() * 0.1,
            Shape::Rej | Shape::Rsto => 0.0005,
            _ => 0.0,
        };
        self.heap.push(Conn { end: ts + dur, ts, orig, resp, dport, shape, dur });
        // Write everything that ended before this start (Zeek logs at connection end).
        while self.heap.peek().is_some_and(|c| c.end <= ts) {
            if let Some(c) = self.heap.pop() {
                self.write(&c)?;
            }
        }
        Ok(())
    }

    fn write(&mut self, c: &Conn) -> Result<()> {
        let (proto, state, hist, op, rp, ob, rb, service) = match c.shape {
            Shape::Sf => ("tcp", "SF", "ShADadFf", 8, 7, 712, 15_840, "ssl"),
            Shape::S0 => ("tcp", "S0", "S", 1, 0, 0, 0, "-"),
            Shape::Rej => ("tcp", "REJ", "Sr", 1, 1, 0, 0, "-"),
            Shape::Rsto => ("tcp", "RSTO", "ShADadR", 5, 4, 310, 1_200, "-"),
            Shape::Rstr => ("tcp", "RSTR", "ShADadr", 6, 5, 420, 2_960, "http"),
            Shape::Sh => ("tcp", "SH", "SF", 2, 0, 0, 0, "-"),
            Shape::S1 => ("tcp", "S1", "ShADad", 14, 12, 2_113, 9_912, "ssh"),
            Shape::Oth => ("tcp", "OTH", "DdA", 3, 2, 96, 64, "-"),
            Shape::UdpSf => ("udp", "SF", "Dd", 1, 1, 38, 120, "dns"),
            Shape::UdpS0 => ("udp", "S0", "D", 1, 0, 38, 0, "dns"),
            Shape::Ping => ("icmp", "OTH", "-", 1, 1, 56, 56, "-"),
            Shape::PingLost => ("icmp", "OTH", "-", 1, 0, 56, 0, "-"),
        };
        let icmp = proto == "icmp";
        let sport = if icmp { 8 } else { 20_000 + (self.n % 40_000) as u16 };
        let dport = if icmp { 0 } else { c.dport };
        let dur = if c.dur == 0.0 { "-".to_string() } else { format!("{:.6}", c.dur) };
        self.n += 1;
        writeln!(
            self.out,
            "{:.6}\tC{:010x}\t{}\t{sport}\t{}\t{dport}\t{proto}\t{service}\t{dur}\t{ob}\t{rb}\t{state}\tT\tF\t0\t{hist}\t{op}\t{}\t{rp}\t{}\t-",
            c.ts,
            self.n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 24,
            c.orig,
            c.resp,
            op * 52 + ob,
            rp * 52 + rb
        )?;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        while let Some(c) = self.heap.pop() {
            self.write(&c)?;
        }
        self.out.flush()?;
        Ok(())
    }
}

/// Generate the benchmark conn.log; returns the record count.
pub fn generate(path: &Path, target_records: u64) -> Result<u64> {
    let f = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut g = Gen { rng: Rng(0x1234_5678_9abc_def1), heap: BinaryHeap::new(), out: BufWriter::with_capacity(1 << 20, f), n: 0 };
    writeln!(
        g.out,
        "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n#open\t2024-06-01-00-00-00\n#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents\n#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\tbool\tbool\tcount\tstring\tcount\tcount\tcount\tcount\tset[string]"
    )?;
    let clients = 2000u32;
    let servers: Vec<(u32, u16)> = (0..200u32)
        .map(|i| (0x0a02_0000 + i + 1, [443u16, 445, 389, 88, 3389, 22, 5432, 8080][i as usize % 8]))
        .collect();
    let resolvers = [0x0a00_0035u32, 0x0a00_0135, 0x0a00_0235];
    let proxies = [0x0a00_0050u32, 0x0a00_0150];
    let poller = 0x0a00_0063u32;
    // Records per second of log time, to reach the target over one day.
    // (The diurnal curve below averages ~0.9; the loop stops at the target.)
    let per_sec = target_records as f64 / DAY * 1.15;
    let mut scan_plan: Vec<(f64, u8)> = vec![
        (T0 + 3.0 * 3600.0, 0),  // vertical
        (T0 + 7.5 * 3600.0, 1),  // horizontal
        (T0 + 13.0 * 3600.0, 2), // /16 sweep
        (T0 + 19.0 * 3600.0, 0),
    ];
    scan_plan.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut sec = 0u32;
    while g.n + (g.heap.len() as u64) < target_records && f64::from(sec) < DAY {
        let base = T0 + f64::from(sec);
        // Poisson-ish count around the mean, busier in the day than at night.
        let hour = (sec / 3600) as f64;
        let diurnal = 0.55 + 0.9 * (((hour - 3.0) / 24.0 * std::f64::consts::TAU).sin().max(-0.4) + 0.4) / 1.4;
        let n = (per_sec * diurnal + g.rng.unit() * 4.0 - 2.0).max(0.0) as u32;
        for _ in 0..n {
            let ts = base + g.rng.unit();
            let r = g.rng.below(1000);
            if r < 560 {
                // A client to one of its servers.
                let c = 0x0a01_0000 + g.rng.below(u64::from(clients)) as u32 + 1;
                let (s, port) = servers[g.rng.zipf(200) as usize];
                let shape = match g.rng.below(100) {
                    0..=86 => Shape::Sf,
                    87..=89 => Shape::Rsto,
                    90..=91 => Shape::Rstr,
                    92..=93 => Shape::S1,
                    94..=95 => Shape::Oth,
                    96 => Shape::S0,
                    97 => Shape::Rej,
                    98 => Shape::Sh,
                    _ => Shape::Sf,
                };
                g.add(ts, v4(c), v4(s), port, shape)?;
            } else if r < 700 {
                // A client's DNS query.
                let c = 0x0a01_0000 + g.rng.below(u64::from(clients)) as u32 + 1;
                let res = resolvers[g.rng.below(3) as usize];
                g.add(ts, v4(c), v4(res), 53, Shape::UdpSf)?;
            } else if r < 790 {
                // A client through the proxy.
                let c = 0x0a01_0000 + g.rng.below(u64::from(clients)) as u32 + 1;
                let p = proxies[g.rng.below(2) as usize];
                g.add(ts, v4(c), v4(p), 3128, Shape::Sf)?;
            } else if r < 850 {
                // A resolver upstream.
                let res = resolvers[g.rng.below(3) as usize];
                let up = 0x6440_0000 + g.rng.zipf(5000) as u32;
                let shape = if g.rng.below(25) == 0 { Shape::UdpS0 } else { Shape::UdpSf };
                g.add(ts, v4(res), v4(up), 53, shape)?;
            } else if r < 935 {
                // A proxy upstream.
                let p = proxies[g.rng.below(2) as usize];
                let site = 0x6480_0000 + g.rng.zipf(20_000) as u32;
                let port = if g.rng.below(6) == 0 { 80 } else { 443 };
                let shape = match g.rng.below(100) {
                    0..=1 => Shape::S0,
                    2 => Shape::Rej,
                    3..=5 => Shape::Rstr,
                    _ => Shape::Sf,
                };
                g.add(ts, v4(p), v4(site), port, shape)?;
            } else if r < 985 {
                // Monitoring poller: 500 hosts x 4 ports, 3 of the hosts down.
                let h = g.rng.below(500) as u32;
                let port = [22u16, 161, 9100, 443][g.rng.below(4) as usize];
                let down = h >= 497;
                let shape = match (port, down) {
                    (161, true) => Shape::UdpS0,
                    (161, false) => Shape::UdpSf,
                    (_, true) => Shape::S0,
                    _ => Shape::Sf,
                };
                g.add(ts, v4(poller), v4(0x0a03_0000 + h + 1), port, shape)?;
            } else if r < 995 {
                // IPv6 clients.
                let c = g.rng.below(300);
                let s = g.rng.zipf(50);
                g.add(ts, format!("2001:db8:10::{c:x}"), format!("2001:db8:20::{s:x}"), 443, Shape::Sf)?;
            } else {
                // Pings.
                let c = 0x0a01_0000 + g.rng.below(u64::from(clients)) as u32 + 1;
                let shape = if g.rng.below(10) == 0 { Shape::PingLost } else { Shape::Ping };
                let dst = v4(0x0a02_0000 + g.rng.below(200) as u32 + 1);
                g.add(ts, v4(c), dst, 0, shape)?;
            }
        }
        // Two slow scans from workstations: one port every ~4 minutes, 10:00-20:00.
        if (10 * 3600..20 * 3600).contains(&sec) && sec.is_multiple_of(240) {
            let k = (sec - 10 * 3600) / 240;
            g.add(base + 0.3, v4(0x0a01_0000 + 1234), v4(0x0a02_0000 + 77), (k * 7 + 20) as u16, Shape::Rej)?;
            g.add(base + 0.6, v4(0x0a01_0000 + 321), v4(0x0a02_0000 + 100 + k % 100), 5985, Shape::S0)?;
        }
        while scan_plan.last().is_some_and(|(t, _)| *t <= base) {
            let Some((_, kind)) = scan_plan.pop() else { break };
            let scanner = 0x0a42_0000 + g.rng.below(250) as u32 + 1;
            match kind {
                0 => {
                    for p in 1..=2000u16 {
                        let shape = if [22, 80, 443, 8080].contains(&p) { Shape::Rsto } else { Shape::Rej };
                        g.add(base + f64::from(p) * 0.01, v4(scanner), v4(0x0a02_0000 + 5), p, shape)?;
                    }
                }
                1 => {
                    for h in 0..4000u32 {
                        let shape = if h % 97 == 0 { Shape::Rsto } else { Shape::S0 };
                        g.add(base + f64::from(h) * 0.02, "198.51.100.23".into(), v4(0x0a04_0000 + h), 445, shape)?;
                    }
                }
                _ => {
                    for h in 0..16_000u32 {
                        let shape = if h % 211 == 0 { Shape::Ping } else { Shape::PingLost };
                        g.add(base + f64::from(h) * 0.005, v4(scanner), v4(0x0a05_0000 + h), 0, shape)?;
                    }
                }
            }
        }
        sec += 1;
    }
    g.finish()?;
    writeln!(g.out, "#close\t2024-06-02-00-00-00")?;
    g.out.flush()?;
    Ok(g.n)
}

struct Measured {
    wall: f64,
    max_rss_kib: i64,
    ok: bool,
    stdout: Vec<u8>,
}

/// Run a command, waiting with wait4 for its own rusage (peak RSS).
fn measure(cmd: &mut Command) -> Result<Measured> {
    use std::io::Read;
    let t = Instant::now();
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let mut stdout = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut stdout)?;
    }
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet waited for; status and ru are valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        bail!("wait4 on {pid} failed: {}", std::io::Error::last_os_error());
    }
    let wall = t.elapsed().as_secs_f64();
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok(Measured { wall, max_rss_kib: ru.ru_maxrss, ok, stdout })
}

fn ensure_pandas(dir: &Path) -> Result<PathBuf> {
    let venv = dir.join("venv");
    let py = venv.join("bin/python");
    let has = |py: &Path| Command::new(py).args(["-c", "import pandas"]).status().is_ok_and(|s| s.success());
    if py.exists() && has(&py) {
        return Ok(py);
    }
    crate::apt_install(&["python3-venv"])?;
    crate::run(Command::new("/usr/bin/python3").args(["-m", "venv"]).arg(&venv))?;
    crate::run(Command::new(&py).args(["-m", "pip", "install", "--quiet", "pandas"]))?;
    if !has(&py) {
        bail!("pandas did not install into {}", venv.display());
    }
    Ok(py)
}

pub fn bench_hunt(root: &Path, records: u64) -> Result<()> {
    if records < 5_000_000 {
        eprintln!("xtask: note: fewer than 5,000,000 records ({records}); the issue's benchmark uses at least 5M");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let dir = target.join("hunt-bench");
    std::fs::create_dir_all(&dir)?;
    crate::build(root)?;
    let bin = target.join("release/scanwatch");
    let py = ensure_pandas(&dir)?;
    let script = dir.join("pandas_hunt.py");
    std::fs::write(&script, PANDAS_HUNT)?;

    let log = dir.join(format!("conn-{records}.log"));
    if !log.exists() {
        let t = Instant::now();
        let tmp = dir.join("conn.log.partial");
        let n = generate(&tmp, records)?;
        std::fs::rename(&tmp, &log)?;
        eprintln!("xtask: generated {n} records ({} MB) in {:.1} s", std::fs::metadata(&log)?.len() / 1_000_000, t.elapsed().as_secs_f64());
    }
    // Count the records (this also warms the page cache: both hunts read the file from memory).
    let n = {
        use std::io::BufRead;
        let mut n = 0u64;
        for l in std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&log)?).split(b'\n') {
            if !l?.starts_with(b"#") {
                n += 1;
            }
        }
        n
    };

    eprintln!("xtask: scanwatch hunt {} ...", log.display());
    let sw = measure(Command::new(&bin).arg("hunt").arg(&log))?;
    if !sw.ok {
        bail!("scanwatch hunt failed");
    }
    eprintln!("xtask: pandas T1046 hunt ...");
    let pd = measure(Command::new(&py).arg(&script).arg(&log))?;
    if !pd.ok {
        bail!("the pandas hunt failed");
    }
    let sw_alerts: Vec<serde_json::Value> = String::from_utf8_lossy(&sw.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut sw_sources: Vec<String> = sw_alerts
        .iter()
        .filter_map(|a| Some(format!("{} {}", a["source"]["ip"].as_str()?, a["kind"].as_str()?)))
        .collect();
    sw_sources.sort();
    sw_sources.dedup();
    let pd_flagged: Vec<String> = String::from_utf8_lossy(&pd.stdout).lines().map(str::to_string).collect();

    let rate = |m: &Measured| n as f64 / m.wall;
    println!("hunt benchmark: {n} records, {} MB conn.log (TSV), 2 cores", std::fs::metadata(&log)?.len() / 1_000_000);
    println!("{:<22} {:>9} {:>14} {:>12}", "", "wall s", "records/s", "peak RSS MB");
    for (name, m) in [("scanwatch hunt", &sw), ("pandas (T1046 hunt)", &pd)] {
        println!("{name:<22} {:>9.2} {:>14.0} {:>12.1}", m.wall, rate(m), m.max_rss_kib as f64 / 1024.0);
    }
    let speed = pd.wall / sw.wall;
    let mem = pd.max_rss_kib as f64 / sw.max_rss_kib.max(1) as f64;
    println!("ratio: scanwatch is {speed:.1}x faster (target >= 20x) in 1/{mem:.1} of the memory (target <= 1/20)");
    println!("scanwatch alerts ({}): {}", sw_sources.len(), sw_sources.join(", "));
    println!("pandas flagged ({}): {}", pd_flagged.len(), pd_flagged.iter().map(|l| l.split('\t').next().unwrap_or("")).collect::<Vec<_>>().join(", "));
    let json = serde_json::json!({
        "records": n,
        "scanwatch": {"wall_s": sw.wall, "records_per_s": rate(&sw), "max_rss_kib": sw.max_rss_kib, "alerts": sw_sources},
        "pandas": {"wall_s": pd.wall, "records_per_s": rate(&pd), "max_rss_kib": pd.max_rss_kib, "flagged": pd_flagged},
        "speed_ratio": speed,
        "memory_ratio": mem,
    });
    let out = target.join("bench-hunt.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("written {}", out.display());
    Ok(())
}
