//! Prometheus text exposition (format 0.0.4) of the agent's [`Status`] on `GET /metrics`.
//!
//! The values are read when scraped (kernel counters from the per-CPU map, the response and sink
//! counters from the agent's loop), so the exposition is written here rather than through a
//! registry of live metric objects (`prometheus-client` keeps its own atomics, which would be a
//! second copy of counters the kernel and the loop already own).
use std::fmt::Write as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::control::server::Incoming;
use crate::control::{Request, Status};

/// Escape a label value (`\`, `"`, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", esc(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }
}

/// Kernel counters exported under their own metric names (the rest as `scanwatch_kernel_total`).
const KERNEL_NAMED: &[(&str, &str, &str)] = &[
    ("packets", "scanwatch_packets_total", "Packets seen by the XDP program."),
    ("syn", "scanwatch_syn_packets_total", "TCP SYNs seen by the XDP program."),
    ("events", "scanwatch_events_total", "Inbound events written to the ring buffer."),
    ("events_dropped", "scanwatch_events_dropped_total", "Inbound events lost: ring buffer full."),
    ("proc_events", "scanwatch_process_events_total", "Process-hook events written to the ring buffer."),
    ("proc_events_dropped", "scanwatch_process_events_dropped_total", "Process-hook events lost: ring buffer full."),
    ("blocked", "scanwatch_blocked_packets_total", "Packets dropped in XDP from blocked sources."),
    ("evictions", "scanwatch_source_evictions_total", "Per-source kernel entries evicted by the LRU."),
    ("new_sources", "scanwatch_new_sources_total", "Per-source kernel entries created."),
];

/// The status as Prometheus text.
pub fn render(s: &Status) -> String {
    let mut o = Out(String::new());
    o.family("scanwatch_info", "gauge", "Agent version and host.");
    o.sample("scanwatch_info", &[("version", &s.version), ("host", &s.hostname)], 1.0);
    o.family("scanwatch_uptime_seconds", "gauge", "Seconds since the agent started.");
    o.sample("scanwatch_uptime_seconds", &[], s.uptime_secs);
    for (key, name, help) in KERNEL_NAMED {
        o.family(name, "counter", help);
        o.sample(name, &[], s.kernel.get(*key).copied().unwrap_or(0) as f64);
    }
    o.family("scanwatch_malformed_packets_total", "counter", "Packets the XDP parser rejected, by reason (passed on unharmed).");
    for (k, v) in s.kernel.iter().filter(|(k, _)| k.starts_with("malformed_")) {
        o.sample("scanwatch_malformed_packets_total", &[("reason", k.trim_start_matches("malformed_"))], *v as f64);
    }
    o.family("scanwatch_kernel_total", "counter", "Other kernel counters, by name.");
    for (k, v) in &s.kernel {
        if !k.starts_with("malformed_") && !KERNEL_NAMED.iter().any(|(n, _, _)| n == k) && k != "live_sources" {
            o.sample("scanwatch_kernel_total", &[("counter", k)], *v as f64);
        }
    }
    o.family("scanwatch_live_sources", "gauge", "Per-source kernel entries now.");
    o.sample("scanwatch_live_sources", &[], s.kernel.get("live_sources").copied().unwrap_or(0) as f64);
    o.family("scanwatch_hook_info", "gauge", "Attach method in use per hook (value 1).");
    for x in &s.xdp {
        let (iface, mode) = x.split_once(':').unwrap_or((x, ""));
        o.sample("scanwatch_hook_info", &[("hook", &format!("xdp:{iface}")), ("method", &format!("xdp-{mode}"))], 1.0);
    }
    for (h, m) in &s.hooks {
        o.sample("scanwatch_hook_info", &[("hook", h), ("method", m)], 1.0);
    }
    o.family("scanwatch_alerts_total", "counter", "Findings emitted, by kind and severity.");
    for (kind, by) in &s.alerts {
        for (sev, n) in by {
            o.sample("scanwatch_alerts_total", &[("kind", kind), ("severity", sev)], *n as f64);
        }
    }
    o.family("scanwatch_sink_written_total", "counter", "Findings delivered, per sink.");
    for (n, st) in &s.sinks {
        o.sample("scanwatch_sink_written_total", &[("sink", n)], st.written as f64);
    }
    o.family("scanwatch_sink_failures_total", "counter", "Delivery attempts that failed, per sink.");
    for (n, st) in &s.sinks {
        o.sample("scanwatch_sink_failures_total", &[("sink", n)], st.failures as f64);
    }
    o.family("scanwatch_sink_dropped_total", "counter", "Findings not delivered after every retry, per sink.");
    for (n, st) in &s.sinks {
        o.sample("scanwatch_sink_dropped_total", &[("sink", n)], st.dropped as f64);
    }
    if let Some(r) = &s.response {
        o.family("scanwatch_blocked_sources", "gauge", "Sources in the block list now (in dry-run: that would be).");
        o.sample("scanwatch_blocked_sources", &[("dry_run", if r.dry_run { "true" } else { "false" })], r.entries.len() as f64);
        o.family("scanwatch_response_total", "counter", "Response actions, by action.");
        let c = r.counters;
        for (a, v) in [("block", c.blocks), ("unblock", c.unblocks), ("evicted", c.evicted), ("refused", c.refused), ("spared", c.spared), ("would_block", c.would_block)] {
            o.sample("scanwatch_response_total", &[("action", a)], v as f64);
        }
        o.family("scanwatch_block_dropped_packets", "gauge", "Packets dropped per block-list entry since it was added.");
        for b in &r.entries {
            if let Some(p) = b.packets {
                o.sample("scanwatch_block_dropped_packets", &[("source", &b.ip.to_string())], p as f64);
            }
        }
    }
    if let Some(e) = &s.evidence {
        o.family("scanwatch_evidence_captures", "gauge", "Evidence captures running now.");
        o.sample("scanwatch_evidence_captures", &[], e.active as f64);
        o.family("scanwatch_evidence_total", "counter", "Evidence capture counters.");
        for (k, v) in [("started", e.started), ("skipped", e.skipped), ("packets", e.packets), ("bytes", e.bytes), ("files_removed", e.files_removed), ("errors", e.errors)] {
            o.sample("scanwatch_evidence_total", &[("counter", k)], v as f64);
        }
    }
    if let Some(a) = &s.asn {
        o.family("scanwatch_asn_lookups_total", "counter", "ASN database lookups, by result.");
        o.sample("scanwatch_asn_lookups_total", &[("result", "hit")], a.hits as f64);
        o.sample("scanwatch_asn_lookups_total", &[("result", "miss")], a.misses as f64);
    }
    o.family("scanwatch_reloads_total", "counter", "Configuration reloads (SIGHUP), by result.");
    o.sample("scanwatch_reloads_total", &[("result", "applied")], s.reloads as f64);
    o.sample("scanwatch_reloads_total", &[("result", "refused")], s.reload_errors as f64);
    o.family("process_cpu_seconds_total", "counter", "User and system CPU time of the agent.");
    o.sample("process_cpu_seconds_total", &[], s.cpu_seconds);
    o.family("process_resident_memory_bytes", "gauge", "Resident memory of the agent.");
    o.sample("process_resident_memory_bytes", &[], s.rss_bytes as f64);
    o.0
}

/// Method and path of an HTTP/1.x request head (`GET /metrics HTTP/1.1\r\n...`); `None` when the
/// request line is not `METHOD SP PATH SP HTTP/x`.
pub fn parse_head(buf: &[u8]) -> Option<(String, String)> {
    let end = buf.windows(2).position(|w| w == b"\r\n").unwrap_or(buf.len());
    let line = std::str::from_utf8(&buf[..end]).ok()?;
    let mut parts = line.split(' ');
    let (method, path, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || !path.starts_with('/') || !version.starts_with("HTTP/1.") {
        return None;
    }
    Some((method.to_string(), path.to_string()))
}

/// Serve `GET /metrics` until the loop's receiver is gone.
pub async fn serve(listener: TcpListener, tx: mpsc::Sender<Incoming>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        };
        if tx.is_closed() {
            return;
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), handle(stream, tx)).await;
        });
    }
}

async fn handle(mut stream: TcpStream, tx: mpsc::Sender<Incoming>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 8192 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let (method, path) = parse_head(&buf).unwrap_or_default();
    let (code, ctype, body) = if method != "GET" {
        ("405 Method Not Allowed", "text/plain", "only GET\n".to_string())
    } else if path == "/metrics" || path.starts_with("/metrics?") {
        let (reply, rx) = oneshot::channel();
        let status = match tx.send(Incoming { req: Request::Status, reply }).await {
            Ok(()) => rx.await.ok().and_then(|r| r.status),
            Err(_) => None,
        };
        match status {
            Some(s) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render(&s)),
            None => ("503 Service Unavailable", "text/plain", "agent stopping\n".to_string()),
        }
    } else {
        ("404 Not Found", "text/plain", "see /metrics\n".to_string())
    };
    let head = format!("HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_labels() {
        let mut s = Status { version: "0.1.0".into(), hostname: "h\"1".into(), ..Default::default() };
        s.kernel.insert("packets".into(), 10);
        s.kernel.insert("malformed_tcp".into(), 2);
        s.kernel.insert("ipv4".into(), 9);
        s.hooks.insert("connect".into(), "tracepoint:syscalls:sys_enter_connect".into());
        s.xdp.push("eth0:native".into());
        s.alerts.entry("vertical_scan".into()).or_default().insert("high".into(), 3);
        let t = render(&s);
        assert!(t.contains("scanwatch_info{version=\"0.1.0\",host=\"h\\\"1\"} 1\n"), "{t}");
        assert!(t.contains("\nscanwatch_packets_total 10\n"));
        assert!(t.contains("scanwatch_malformed_packets_total{reason=\"tcp\"} 2\n"));
        assert!(t.contains("scanwatch_kernel_total{counter=\"ipv4\"} 9\n"));
        assert!(t.contains("scanwatch_hook_info{hook=\"connect\",method=\"tracepoint:syscalls:sys_enter_connect\"} 1\n"));
        assert!(t.contains("scanwatch_hook_info{hook=\"xdp:eth0\",method=\"xdp-native\"} 1\n"));
        assert!(t.contains("scanwatch_alerts_total{kind=\"vertical_scan\",severity=\"high\"} 3\n"));
        // Every sample line belongs to a family declared before it.
        let mut declared = std::collections::HashSet::new();
        for l in t.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().expect("name").to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().expect("name");
                assert!(declared.contains(name), "{name} used before its TYPE line");
            }
        }
    }
}
