//! Elastic Common Schema (8.x) rendering of a finding.
//!
//! Mapping: `@timestamp` ← time; `event.kind = "alert"`, `event.category = ["network",
//! "intrusion_detection"]`, `event.type = ["info"]` (`["denied"]` once the source is blocked),
//! `event.action` ← kind, `event.severity` ← 1..5, `event.risk_score` ← confidence × 100;
//! `rule.name` ← kind; `source.ip` (+ `source.as.*` with an ASN database); `destination.ip` /
//! `destination.port` ← the first sampled target (all targets in `related.ip` and
//! `scanwatch.targets`); `process.*` ← the local process of an outbound finding;
//! (its grouping anchor in `scanwatch.process_anchor`);
//! `threat.framework`, `threat.technique.*`, `threat.tactic.*` ← the ATT&CK technique;
//! `network.direction`; `host.name`. Fields ECS has no name for live under `scanwatch.*`.
use serde_json::{json, Map, Value};

use crate::alert::Alert;
use crate::vocab::{Direction, Severity};

/// ECS version the documents follow.
pub const ECS_VERSION: &str = "8.11.0";

pub(crate) fn severity_number(s: Severity) -> u8 {
    s as u8 + 1
}

/// The finding as an ECS document.
pub fn render(a: &Alert) -> Value {
    let (tactic_id, tactic_name) = super::tactic_of(&a.technique.id);
    let mut doc = Map::new();
    doc.insert("@timestamp".into(), json!(a.time));
    doc.insert("ecs".into(), json!({ "version": ECS_VERSION }));
    doc.insert("message".into(), json!(a.reason));
    doc.insert(
        "event".into(),
        json!({
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": [if a.blocked { "denied" } else { "info" }],
            "action": a.kind.as_str(),
            "severity": severity_number(a.severity),
            "risk_score": (a.confidence * 100.0).round(),
            "id": a.alert_id,
            "module": "scanwatch",
            "dataset": "scanwatch.alert",
            "provider": "scanwatch",
        }),
    );
    doc.insert(
        "rule".into(),
        json!({ "name": a.kind.as_str(), "id": a.kind.as_str(), "ruleset": "scanwatch", "description": a.reason }),
    );
    let mut source = Map::new();
    if let Some(ip) = a.source.ip {
        source.insert("ip".into(), json!(ip.to_string()));
    }
    if let Some(asn) = a.annotations.asn {
        let mut asm = json!({ "number": asn });
        if let Some(org) = &a.annotations.org {
            asm["organization"] = json!({ "name": org });
        }
        source.insert("as".into(), asm);
    }
    if !source.is_empty() {
        doc.insert("source".into(), Value::Object(source));
    }
    let mut dest = Map::new();
    if let Some(h) = a.targets.sample_hosts.first() {
        dest.insert("ip".into(), json!(h));
    }
    if let Some(p) = a.targets.sample_ports.first() {
        dest.insert("port".into(), json!(p));
    }
    if !dest.is_empty() {
        doc.insert("destination".into(), Value::Object(dest));
    }
    if let Some(p) = &a.source.process {
        let mut proc = json!({ "pid": p.tgid, "thread": { "id": p.pid }, "name": p.comm });
        if let Some(exe) = &p.exe {
            proc["executable"] = json!(exe);
        }
        if let Some(c) = &p.cmdline {
            proc["command_line"] = json!(c);
        }
        if let Some(pp) = p.ppid {
            proc["parent"] = json!({ "pid": pp });
            if let Some(pe) = &p.parent_exe {
                proc["parent"]["executable"] = json!(pe);
            }
        }
        doc.insert("process".into(), proc);
        let mut user = json!({ "id": p.uid.to_string() });
        if let Some(u) = &p.user {
            user["name"] = json!(u);
        }
        doc.insert("user".into(), user);
        if let Some(c) = &p.container_id {
            doc.insert("container".into(), json!({ "id": c }));
        }
    }
    doc.insert(
        "threat".into(),
        json!({
            "framework": "MITRE ATT&CK",
            "technique": {
                "id": [a.technique.id],
                "name": [a.technique.name],
                "reference": [format!("https://attack.mitre.org/techniques/{}/", a.technique.id)],
            },
            "tactic": { "id": [tactic_id], "name": [tactic_name] },
        }),
    );
    doc.insert(
        "network".into(),
        json!({ "direction": match a.direction { Direction::Inbound => "inbound", Direction::Outbound => "outbound" } }),
    );
    doc.insert("host".into(), json!({ "name": a.host.name }));
    let mut related: Vec<String> = a.source.ip.iter().map(ToString::to_string).collect();
    related.extend(a.source.related.iter().map(ToString::to_string));
    related.extend(a.targets.sample_hosts.iter().cloned());
    related.dedup();
    if !related.is_empty() {
        doc.insert("related".into(), json!({ "ip": related }));
    }
    if let Some(f) = &a.fingerprint {
        doc.insert("labels".into(), json!({ "tool_hint": f.tool_hint }));
    }
    let mut sw = json!({
        "severity": a.severity.as_str(),
        "confidence": a.confidence,
        "window": a.window,
        "targets": a.targets,
        "counts": a.counts,
        "role": a.host.role,
        "allowlisted": a.allowlisted,
        "blocked": a.blocked,
        "update": a.update,
        "fingerprint": a.fingerprint,
        "protocol": a.shape.protocol,
        "shape": a.shape.shape,
        "incident": a.incident,
    });
    if let Value::Object(ann) = serde_json::to_value(&a.annotations).unwrap_or(Value::Null) {
        for (k, v) in ann {
            sw[k] = v;
        }
    }
    // The long-lived ancestor an outbound finding is grouped under (ECS has no such field).
    if let Some(anchor) = a.source.process.as_ref().and_then(|p| p.anchor.as_ref()) {
        sw["process_anchor"] = json!(anchor);
    }
    doc.insert("scanwatch".into(), sw);
    Value::Object(doc)
}
