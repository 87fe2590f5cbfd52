//! Cost of delivering one finding, per output format, next to the baseline measured in the same
//! run (scanwatch's own `alert` line): `cargo bench -p scanwatch --bench output`.
//! - render: `alert` (baseline) vs `ecs` vs `ocsf` JSON lines of an outbound finding with its
//!   process and lineage (the largest kind);
//! - syslog: the RFC 5424 frame around an `alert` line vs. the line alone.
use std::{hint::black_box, time::Duration};

use criterion::{criterion_group, criterion_main, Criterion};
use scanwatch::alert::Alert;
use scanwatch::output::{render_line, Format};
use scanwatch::sinks::syslog::{format_message, Header};

fn finding() -> Alert {
    let v = serde_json::json!({
        "time": "2026-01-01T00:00:00.000Z", "kind": "outbound_scan", "severity": "high", "confidence": 0.91,
        "direction": "outbound",
        "source": {"ip": null, "process": {"pid": 4243, "tgid": 4242, "comm": "nmap", "exe": "/usr/bin/nmap",
            "cmdline": "nmap -sS -p- 10.0.0.0/24", "uid": 1000, "user": "alice", "ppid": 4000,
            "parent_exe": "/usr/bin/bash", "ancestry": [{"pid": 4000, "exe": "/usr/bin/bash"}, {"pid": 3000, "exe": "/usr/sbin/sshd"}],
            "cgroup": "/user.slice/user-1000.slice/session-3.scope", "container_id": null, "start_time": 123456, "exited": false}},
        "targets": {"host_count": 254, "port_count": 1000, "sample_ports": [21, 22, 23, 25, 53, 80, 110, 111, 135, 139, 143, 443, 445, 993, 995, 3389],
            "sample_hosts": ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]},
        "window": "60s", "counts": {"probes": 254000, "failures": 250000, "fail_ratio": 0.98, "raw_probe": 254000, "raw_socket": 2},
        "fingerprint": null, "technique": {"id": "T1046", "name": "Network Service Discovery"},
        "host": {"name": "ws-17", "role": "workstation"}, "allowlisted": false, "blocked": false,
        "reason": "/usr/bin/nmap (pid 4242, uid 1000) probed 1000 distinct ports on 254 hosts within 60s", "update": false,
        "alert_id": "0123456789abcdef"
    });
    match serde_json::from_value(v) {
        Ok(a) => a,
        Err(e) => panic!("bench finding: {e}"),
    }
}

fn render(c: &mut Criterion) {
    let a = finding();
    let mut g = c.benchmark_group("render");
    for f in [Format::Alert, Format::Ecs, Format::Ocsf] {
        g.bench_function(f.as_str(), |b| b.iter(|| black_box(render_line(black_box(&a), f).map(|s| s.len()))));
    }
    g.finish();
}

fn syslog(c: &mut Criterion) {
    let a = finding();
    let h = Header { facility: 16, hostname: "ws-17".into(), app_name: "scanwatch".into(), procid: 77 };
    let mut g = c.benchmark_group("syslog");
    g.bench_function("line_only", |b| b.iter(|| black_box(render_line(black_box(&a), Format::Alert).map(|s| s.len()))));
    g.bench_function("rfc5424_frame", |b| {
        b.iter(|| black_box(render_line(black_box(&a), Format::Alert).map(|m| format_message(&h, &a, &m).len())))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = render, syslog
}
criterion_main!(benches);
