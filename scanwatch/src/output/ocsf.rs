//! OCSF 1.x rendering of a finding: a Detection Finding (class 2004, category 2 "Findings")
//! whose `evidences` describe the network activity it is about — `src_endpoint` (the scanner's
//! address, with its autonomous system when known), `dst_endpoint` (the first sampled target),
//! `connection_info.direction_id`, and for outbound findings the local `process` (its ancestry
//! as `lineage`; the grouping anchor in `unmapped.process_anchor`). `finding_info`
//! carries the stable id, the kind as title and the ATT&CK technique and tactic. A blocked source
//! adds the Security Control profile's `action_id = 2` (Denied) / `disposition_id = 2` (Blocked).
use serde_json::{json, Map, Value};

use crate::alert::Alert;
use crate::vocab::{Direction, Severity};

pub const OCSF_VERSION: &str = "1.3.0";
pub const CLASS_UID: u32 = 2004;
pub const CATEGORY_UID: u32 = 2;

fn severity_id(s: Severity) -> u8 {
    // OCSF: 1 Informational, 2 Low, 3 Medium, 4 High, 5 Critical.
    s as u8 + 1
}

/// The finding as an OCSF Detection Finding.
pub fn render(a: &Alert) -> Value {
    let activity_id: u32 = if a.update { 2 } else { 1 };
    let (tactic_id, tactic_name) = super::tactic_of(&a.technique.id);
    let time = super::unix_millis(&a.time);
    let confidence = (a.confidence * 100.0).round().clamp(0.0, 100.0) as u32;
    let confidence_id = match confidence {
        0..=39 => 1,
        40..=79 => 2,
        _ => 3,
    };
    let mut evidence = Map::new();
    let mut src = Map::new();
    if let Some(ip) = a.source.ip {
        src.insert("ip".into(), json!(ip.to_string()));
    }
    if let Some(asn) = a.annotations.asn {
        let mut asys = json!({ "number": asn });
        if let Some(org) = &a.annotations.org {
            asys["name"] = json!(org);
        }
        src.insert("autonomous_system".into(), asys);
    }
    if a.direction == Direction::Outbound {
        src.insert("hostname".into(), json!(a.host.name));
    }
    if !src.is_empty() {
        evidence.insert("src_endpoint".into(), Value::Object(src));
    }
    let mut dst = Map::new();
    if let Some(h) = a.targets.sample_hosts.first() {
        dst.insert("ip".into(), json!(h));
    }
    if let Some(p) = a.targets.sample_ports.first() {
        dst.insert("port".into(), json!(p));
    }
    if a.direction == Direction::Inbound {
        dst.insert("hostname".into(), json!(a.host.name));
    }
    evidence.insert("dst_endpoint".into(), Value::Object(dst));
    let (dir_id, dir) = match a.direction {
        Direction::Inbound => (1, "Inbound"),
        Direction::Outbound => (2, "Outbound"),
    };
    evidence.insert("connection_info".into(), json!({ "direction_id": dir_id, "direction": dir }));
    if let Some(p) = &a.source.process {
        let mut proc = json!({ "pid": p.tgid, "tid": p.pid, "name": p.comm, "user": { "uid": p.uid.to_string() } });
        if let Some(exe) = &p.exe {
            let name = exe.rsplit('/').next().unwrap_or(exe);
            proc["file"] = json!({ "path": exe, "name": name, "type_id": 1 });
        }
        if let Some(c) = &p.cmdline {
            proc["cmd_line"] = json!(c);
        }
        if let Some(u) = &p.user {
            proc["user"]["name"] = json!(u);
        }
        if let Some(pp) = p.ppid {
            proc["parent_process"] = json!({ "pid": pp });
            if let Some(pe) = &p.parent_exe {
                proc["parent_process"]["file"] = json!({ "path": pe, "type_id": 1 });
            }
        }
        if !p.ancestry.is_empty() {
            // OCSF `lineage`: the ancestors' paths, parent first.
            proc["lineage"] = json!(p.ancestry.iter().map(|a| a.exe.as_str()).collect::<Vec<_>>());
        }
        evidence.insert("process".into(), proc);
    }
    let mut evidences = vec![Value::Object(evidence)];
    for ip in &a.source.related {
        evidences.push(json!({ "src_endpoint": { "ip": ip.to_string() }, "connection_info": { "direction_id": dir_id, "direction": dir } }));
    }
    let mut doc = json!({
        "class_uid": CLASS_UID,
        "class_name": "Detection Finding",
        "category_uid": CATEGORY_UID,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": if a.update { "Update" } else { "Create" },
        "type_uid": CLASS_UID * 100 + activity_id,
        "severity_id": severity_id(a.severity),
        "severity": match a.severity {
            Severity::Info => "Informational",
            Severity::Low => "Low",
            Severity::Medium => "Medium",
            Severity::High => "High",
            Severity::Critical => "Critical",
        },
        "status_id": 1,
        "status": "New",
        "is_alert": a.severity > Severity::Info,
        "confidence_score": confidence,
        "confidence_id": confidence_id,
        "message": a.reason,
        "metadata": {
            "version": OCSF_VERSION,
            "product": { "name": "scanwatch", "vendor_name": "scanwatch", "version": env!("CARGO_PKG_VERSION") },
            "uid": a.alert_id,
        },
        "finding_info": {
            "uid": a.alert_id,
            "title": a.kind.as_str(),
            "desc": a.reason,
            "types": [a.kind.as_str()],
            "analytic": { "name": a.kind.as_str(), "type_id": 1, "type": "Rule" },
            "attacks": [{
                "technique": { "uid": a.technique.id, "name": a.technique.name },
                "tactic": { "uid": tactic_id, "name": tactic_name },
                "version": "15",
            }],
        },
        "device": { "hostname": a.host.name, "type_id": 1, "type": "Server" },
        "evidences": evidences,
        "unmapped": {
            "window": a.window,
            "targets": a.targets,
            "counts": a.counts,
            "role": a.host.role,
            "allowlisted": a.allowlisted,
            "fingerprint": a.fingerprint,
            "annotations": a.annotations,
            "protocol": a.shape.protocol,
            "shape": a.shape.shape,
            "incident": a.incident,
        },
    });
    if let Some(anchor) = a.source.process.as_ref().and_then(|p| p.anchor.as_ref()) {
        doc["unmapped"]["process_anchor"] = json!(anchor);
    }
    if let Some(t) = time {
        doc["time"] = json!(t);
        doc["finding_info"]["last_seen_time"] = json!(t);
    }
    if a.blocked {
        doc["metadata"]["profiles"] = json!(["security_control"]);
        doc["action_id"] = json!(2);
        doc["action"] = json!("Denied");
        doc["disposition_id"] = json!(2);
        doc["disposition"] = json!("Blocked");
    }
    doc
}
