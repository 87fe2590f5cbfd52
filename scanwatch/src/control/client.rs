//! `scanwatch status`, `scanwatch top` and `scanwatch block`: clients of the running agent's
//! control socket.
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{Client, Request, Response, Status};

/// Where the agent's control socket is (`control.socket`).
#[derive(Args, Debug, Clone)]
pub struct SocketArg {
    /// The agent's control socket (`control.socket` of its configuration).
    #[arg(long, default_value = "/run/scanwatch/control.sock")]
    pub socket: PathBuf,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
    /// Entries shown per top list.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Refresh period (seconds).
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Stop after this many refreshes (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub iterations: u64,
}

#[derive(Subcommand, Debug)]
pub enum BlockCmd {
    /// The sources blocked now (in dry-run: those that would be), with packets dropped.
    List {
        #[command(flatten)]
        socket: SocketArg,
        #[arg(long)]
        json: bool,
    },
    /// Block a source until removed (or for --ttl).
    Add {
        ip: IpAddr,
        /// Lift the block after this long (`10m`, `1h`; a bare number is seconds).
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Lift a block.
    Del {
        ip: IpAddr,
        #[command(flatten)]
        socket: SocketArg,
    },
}

fn checked(r: Response) -> anyhow::Result<Response> {
    if r.ok {
        Ok(r)
    } else {
        anyhow::bail!("{}", r.error.unwrap_or_else(|| "refused".into()))
    }
}

fn status_of(c: &mut Client) -> anyhow::Result<Status> {
    let r = checked(c.request(&Request::Status)?)?;
    r.status.map(|s| *s).ok_or_else(|| anyhow::anyhow!("the agent sent no status"))
}

pub fn status(a: &StatusArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let mut c = Client::connect(&a.socket.socket)?;
    let s = status_of(&mut c)?;
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
    } else {
        write!(out, "{}", render(&s, a.top))?;
    }
    Ok(())
}

/// Live view: the status redrawn every `interval` (ANSI clear + home; plain text otherwise).
pub fn top(a: &TopArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let mut c = Client::connect(&a.socket.socket)?;
    let interval = Duration::from_secs_f64(a.interval.clamp(0.1, 3600.0));
    let mut n = 0u64;
    let mut prev: Option<Status> = None;
    loop {
        let s = status_of(&mut c)?;
        let rate = |name: &str| -> f64 {
            match &prev {
                Some(p) => {
                    let dt = (s.uptime_secs - p.uptime_secs).max(1e-3);
                    (s.kernel.get(name).copied().unwrap_or(0).saturating_sub(p.kernel.get(name).copied().unwrap_or(0))) as f64 / dt
                }
                None => 0.0,
            }
        };
        let rows = 8;
        write!(out, "\x1b[2J\x1b[H")?;
        writeln!(
            out,
            "scanwatch top — {} pid {} up {:.0}s   packets {:.0}/s  syn {:.0}/s  events {:.0}/s  blocked drops {:.0}/s   (Ctrl-C quits)",
            s.hostname,
            s.pid,
            s.uptime_secs,
            rate("packets"),
            rate("syn"),
            rate("events"),
            rate("blocked")
        )?;
        write!(out, "{}", render(&s, rows))?;
        out.flush()?;
        n += 1;
        if a.iterations != 0 && n >= a.iterations {
            return Ok(());
        }
        prev = Some(s);
        std::thread::sleep(interval);
    }
}

pub fn block(cmd: &BlockCmd, out: &mut impl Write) -> anyhow::Result<()> {
    match cmd {
        BlockCmd::List { socket, json } => {
            let r = checked(Client::connect(&socket.socket)?.request(&Request::BlockList)?)?;
            let blocks = r.blocks.unwrap_or_default();
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&serde_json::json!({ "dry_run": r.dry_run, "blocks": blocks }))?)?;
                return Ok(());
            }
            if r.dry_run {
                writeln!(out, "dry-run: nothing is blocked; these sources would be:")?;
            }
            writeln!(out, "{:<40} {:>10} {:>12} {:<16} {:>6} {:>10} {:>10}", "SOURCE", "PACKETS", "BYTES", "REASON", "CONF", "AGE", "EXPIRES")?;
            for b in &blocks {
                writeln!(
                    out,
                    "{:<40} {:>10} {:>12} {:<16} {:>6.2} {:>9.0}s {:>10}",
                    b.ip.to_string(),
                    b.packets.map_or("-".into(), |p| p.to_string()),
                    b.bytes.map_or("-".into(), |p| p.to_string()),
                    if b.manual { "manual" } else { b.reason.as_str() },
                    b.confidence,
                    b.age_secs,
                    b.expires_in_secs.map_or("never".into(), |e| format!("{e:.0}s")),
                )?;
            }
            writeln!(out, "{} entries", blocks.len())?;
        }
        BlockCmd::Add { ip, ttl, socket } => {
            let ttl_secs = match ttl {
                None => None,
                Some(t) => Some(match t.trim().parse::<f64>() {
                    Ok(v) if v.is_finite() && v > 0.0 => v,
                    _ => crate::vocab::parse_duration(t).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?.as_secs_f64(),
                }),
            };
            checked(Client::connect(&socket.socket)?.request(&Request::BlockAdd { ip: *ip, ttl_secs })?)?;
            writeln!(out, "blocked {ip}")?;
        }
        BlockCmd::Del { ip, socket } => {
            checked(Client::connect(&socket.socket)?.request(&Request::BlockDel { ip: *ip })?)?;
            writeln!(out, "unblocked {ip}")?;
        }
    }
    Ok(())
}

/// The status as text.
pub fn render(s: &Status, rows: usize) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "scanwatch {} on {} (pid {}), up {:.0}s, cpu {:.2}s, rss {:.1} MiB", s.version, s.hostname, s.pid, s.uptime_secs, s.cpu_seconds, s.rss_bytes as f64 / 1048576.0);
    let _ = writeln!(o, "xdp: {}", if s.xdp.is_empty() { "-".to_string() } else { s.xdp.join(", ") });
    for (h, m) in &s.hooks {
        let _ = writeln!(o, "hook {h}: {m}");
    }
    let k = |n: &str| s.kernel.get(n).copied().unwrap_or(0);
    let malformed: u64 = s.kernel.iter().filter(|(n, _)| n.starts_with("malformed_")).map(|(_, v)| v).sum();
    let _ = writeln!(
        o,
        "kernel: packets {} syn {} malformed {} events {} (dropped {}) live sources {} evictions {} blocked drops {}",
        k("packets"), k("syn"), malformed, k("events") + k("proc_events"), k("events_dropped") + k("proc_events_dropped"),
        k("live_sources"), k("evictions"), k("blocked")
    );
    let total: u64 = s.alerts.values().flat_map(|m| m.values()).sum();
    let _ = write!(o, "alerts: {total}");
    for (kind, by) in &s.alerts {
        let _ = write!(o, "  {kind} {}", by.values().sum::<u64>());
    }
    let _ = writeln!(o);
    for (name, st) in &s.sinks {
        let _ = writeln!(o, "sink {name}: written {} failures {} dropped {}", st.written, st.failures, st.dropped);
    }
    if let Some(r) = &s.response {
        let _ = writeln!(
            o,
            "response: {}{} entries {}/{} blocks {} unblocks {} evicted {} refused {} spared {} would_block {}",
            if r.enforcing { "enforcing" } else { "not enforcing" },
            if r.dry_run { " (dry-run)" } else { "" },
            r.entries.len(), r.max_blocked, r.counters.blocks, r.counters.unblocks, r.counters.evicted, r.counters.refused,
            r.counters.spared, r.counters.would_block
        );
    }
    if let Some(e) = &s.evidence {
        let _ = writeln!(o, "evidence: active {} started {} skipped {} packets {} bytes {}", e.active, e.started, e.skipped, e.packets, e.bytes);
    }
    for (title, list) in [("top sources", &s.top_sources), ("top processes", &s.top_processes)] {
        let _ = writeln!(o, "{title}:");
        if list.is_empty() {
            let _ = writeln!(o, "  (none)");
        }
        for r in list.iter().take(rows) {
            let _ = writeln!(o, "  {:>6.2}  {:<44} {:>4} alerts  {:<8} {:<16} ports {:>5} hosts {:>5}  {}", r.score, r.key, r.alerts, r.severity, r.kind, r.ports, r.hosts, r.last);
        }
    }
    o
}
