//! Reason sentences, rendered from the alert's own fields only.
//!
//! Every number a reason states is read from the [`Alert`] it is written into (targets, counts,
//! window, process), after those fields are final; nothing is computed on the side. So the
//! sentence and the JSON cannot disagree (the property test in `detect/tests_truth.rs` checks
//! it for every kind over many generated timelines).
use std::fmt::Write as _;

use crate::alert::{Alert, Evidence};

use super::features::service_class;

/// Facts about a finding that are not numbers of the alert (how it was decided).
#[derive(Debug, Clone, Default)]
pub(super) struct Notes {
    /// The sequential test, not the fan-out threshold, decided.
    pub by_trw: bool,
    /// Timing class of the actor (`bursty`, `periodic`, ...), if known.
    pub timing: Option<&'static str>,
    /// What the finding is, in words (`a vertical scan`), said right after the numbers.
    pub what: Option<String>,
    /// Free text appended as is (allowlist, role, baseline novelty); must hold no numbers.
    pub tail: Vec<String>,
}

fn actor(a: &Alert) -> String {
    if let Some(p) = &a.source.process {
        let name = p.exe.as_deref().unwrap_or(&p.comm);
        return format!("{name} (tgid {}, pid {}, uid {})", p.tgid, p.pid, p.uid);
    }
    a.source.ip.map_or_else(|| "an unknown source".to_string(), |ip| ip.to_string())
}

fn count(a: &Alert, name: &str) -> u64 {
    a.counts.get(name).unwrap_or(0)
}

/// How each evidence counter is said ("3 NULL", "4 first fragments").
const LABELS: [(&str, &str); 23] = [
    ("null", "NULL"),
    ("fin", "FIN"),
    ("xmas", "Xmas"),
    ("maimon", "Maimon"),
    ("ack", "bare-ACK"),
    ("synfin", "SYN+FIN"),
    ("custom_flags", "custom-flag"),
    ("frag_first", "first fragments"),
    ("frag_later", "later fragments"),
    ("srcport_trick", "from a DNS/Kerberos source port"),
    ("badsum", "with a bad TCP checksum"),
    ("unsolicited_synack", "unsolicited SYN-ACK"),
    ("unsolicited_rst", "unsolicited RST"),
    ("honeyport", "to honeyports"),
    ("udp", "UDP"),
    ("udp_closed", "to closed UDP ports"),
    ("icmp_echo", "ICMP echo"),
    ("arp_who_has", "ARP who-has"),
    ("raw_probe", "crafted raw packets"),
    ("raw_socket", "raw sockets opened"),
    ("sctp_init", "SCTP INIT"),
    ("sctp_cookie_echo", "SCTP COOKIE ECHO"),
    ("ip_proto", "packets of other IP protocols"),
];

/// The label of evidence counter `name` (for tests and the README).
pub(super) fn label(name: &str) -> Option<&'static str> {
    LABELS.iter().find(|(k, _)| *k == name).map(|(_, l)| *l)
}

/// "; evidence: 3 NULL, 2 Xmas" for every evidence counter the alert carries.
fn evidence(a: &Alert) -> String {
    let items: Vec<String> =
        a.counts.detail.iter().filter_map(|(k, v)| label(k.name()).map(|l| format!("{v} {l}"))).collect();
    if items.is_empty() {
        String::new()
    } else {
        format!("; evidence: {}", items.join(", "))
    }
}

/// The outcome clause: "(F failed, S succeeded: P% failed)"; empty when no outcome is known.
fn outcome(a: &Alert) -> String {
    match a.counts.fail_percent() {
        Some(p) => format!(" ({} failed, {} succeeded: {p}% failed)", a.counts.failures, a.counts.successes),
        None => String::new(),
    }
}

/// The distinct service classes of `ports`, in port order of first appearance.
fn service_classes(ports: &[u16]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for p in ports {
        let c = service_class(*p);
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

fn finish(a: &Alert, mut s: String, n: &Notes) -> String {
    if n.by_trw {
        s.push_str("; sequential hypothesis test decided scanner");
    }
    let classes = service_classes(&a.targets.sample_ports);
    if classes.len() >= 3 {
        let _ = write!(s, "; sampled ports span services {}", classes.join(", "));
    }
    if let Some(fp) = a.fingerprint.as_ref().filter(|f| f.tool_hint != "unknown" && f.tool_hint != "os-stack") {
        let _ = write!(s, "; fingerprint looks like {}", fp.tool_hint);
    }
    if let Some(t) = n.timing {
        let _ = write!(s, "; timing {t}");
    }
    for t in &n.tail {
        s.push_str("; ");
        s.push_str(t);
    }
    s.push('.');
    s
}

/// Horizontal / vertical / block / stealth / evasion fan-out, slow scan, outbound scan.
pub(super) fn fanout(a: &Alert, slow: bool, n: &Notes) -> String {
    let t = &a.targets;
    let verb = if slow { "slowly probed" } else { "probed" };
    let within = if slow { "over" } else { "within" };
    let mut s = if t.port_count == 0 {
        // Portless probes (ICMP echo, ARP who-has).
        format!("{} {verb} {} hosts {within} {}", actor(a), t.host_count, a.window)
    } else {
        format!("{} {verb} {} distinct ports on {} hosts {within} {}", actor(a), t.port_count, t.host_count, a.window)
    };
    if a.counts.probes > 0 {
        let what = a.shape.describe();
        let what = if what.is_empty() { String::new() } else { format!("{what} ") };
        let _ = write!(s, " with {} {what}probes", a.counts.probes);
    }
    s.push_str(&outcome(a));
    if let Some(w) = &n.what {
        let _ = write!(s, ": {w}");
    }
    s.push_str(&evidence(a));
    if slow {
        s.push_str("; stayed under the short-window thresholds");
    }
    finish(a, s, n)
}

/// Stealth probes below fan-out thresholds.
pub(super) fn stealth(a: &Alert, n: &Notes) -> String {
    let s = format!(
        "{} sent stealth probes among {} probes to {} distinct ports within {}{}",
        actor(a),
        a.counts.probes,
        a.targets.port_count,
        a.window,
        evidence(a)
    );
    finish(a, s, n)
}

/// Evasion marks or backscatter below fan-out thresholds.
pub(super) fn evasion(a: &Alert, n: &Notes) -> String {
    let synack = count(a, "unsolicited_synack");
    let rst = count(a, "unsolicited_rst");
    let marked = ["frag_first", "frag_later", "srcport_trick", "badsum"].iter().any(|k| count(a, k) > 0);
    let s = if marked {
        format!("{} sent {} probes within {} using evasion{}", actor(a), a.counts.probes, a.window, evidence(a))
    } else {
        format!(
            "{} sent {synack} unsolicited SYN-ACK and {rst} unsolicited RST segments within {} (backscatter of spoofed probes or idle-scan zombie use)",
            actor(a),
            a.window
        )
    };
    finish(a, s, n)
}

/// IP-protocol scan.
pub(super) fn protocol_scan(a: &Alert, n: &Notes) -> String {
    let s = format!(
        "{} sent packets of {} distinct IP protocol numbers to {} hosts within {} ({} probes): an IP protocol scan, mapping which protocols this host answers{}",
        actor(a),
        count(a, "protocols"),
        a.targets.host_count,
        a.window,
        a.counts.probes,
        evidence(a)
    );
    finish(a, s, n)
}

/// Honeyport touches: names every port (with its protocol) the alert lists.
pub(super) fn honeyport(a: &Alert, n: &Notes) -> String {
    let ports: Vec<String> =
        a.targets.sample_ports.iter().map(|p| format!("{p}/{}", a.shape.protocol)).collect();
    let which = if ports.is_empty() { String::new() } else { format!(" ({})", ports.join(", ")) };
    let s = if a.targets.port_count == 0 {
        format!(
            "{} touched honeyports {} time(s) within {} (which ports is unknown: their kernel events were lost): no service here uses them",
            actor(a),
            count(a, "honeyport"),
            a.window
        )
    } else {
        format!(
            "{} touched {} honeyport(s){which} {} time(s) within {}: no service here uses them",
            actor(a),
            a.targets.port_count,
            count(a, "honeyport"),
            a.window
        )
    };
    finish(a, s, n)
}

/// Decoy cluster.
pub(super) fn decoy(a: &Alert, same_ttl: bool) -> String {
    let hash = a.fingerprint.as_ref().map_or("?", |f| f.hash.as_str());
    let mut s = format!(
        "{} sources share SYN fingerprint {hash} and probe the same ports ({} in common) within {}: likely decoy scan (nmap -D), the real scanner is one of them",
        a.counts.get(Evidence::Sources.name()).unwrap_or(0),
        a.targets.port_count,
        a.window
    );
    if same_ttl {
        s.push_str("; identical initial TTLs suggest one origin");
    }
    s.push('.');
    s
}

/// Distributed scan.
pub(super) fn distributed(a: &Alert) -> String {
    format!(
        "{} sources, each under the per-source thresholds, together sent {} probes to {} ports on {} of this host's addresses within {}{}: likely a distributed scan.",
        a.counts.get(Evidence::Sources.name()).unwrap_or(0),
        a.counts.probes,
        a.targets.port_count,
        a.targets.host_count,
        a.window,
        outcome(a)
    )
}

/// A port range split between sources.
pub(super) fn split(a: &Alert) -> String {
    let target = a.targets.sample_hosts.first().map_or("one address", String::as_str);
    format!(
        "{} sources each probed a separate slice of the ports of {target} within {}, {} ports and {} probes together{}: one scan split between sources (a distributed scan).",
        a.counts.get(Evidence::Sources.name()).unwrap_or(0),
        a.window,
        a.targets.port_count,
        a.counts.probes,
        outcome(a)
    )
}

/// Prefix of an incident's closing line.
pub(super) fn closing(a: &Alert) -> String {
    format!("Incident closed, actor quiet since {}: {}", a.incident.last_seen, a.reason)
}
