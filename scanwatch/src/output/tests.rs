//! ECS and OCSF field names and values for an inbound and an outbound finding.
use std::collections::BTreeMap;

use super::*;
use crate::alert::{AlertKind, AlertSource, Annotations, Counts, Evidence, HostInfo, Incident, Shape, Targets, Technique};
use crate::vocab::{Direction, ProcessInfo, Severity};

pub(crate) fn inbound() -> Alert {
    let mut detail = BTreeMap::new();
    detail.insert(Evidence::counter(scanwatch_common::cnt::XMAS), 4);
    Alert {
        time: "2026-03-01T12:00:00.250Z".into(),
        kind: AlertKind::VerticalScan,
        severity: Severity::High,
        confidence: 0.87,
        direction: Direction::Inbound,
        source: AlertSource { ip: Some("203.0.113.9".parse().expect("ip")), process: None, related: vec![] },
        targets: Targets { host_count: 1, port_count: 300, sample_ports: vec![22, 80], sample_hosts: vec!["10.0.0.5".into()] },
        shape: Shape::new("tcp", "syn"),
        window: "10s".into(),
        counts: Counts::new(310, 300, 9, detail),
        fingerprint: None,
        technique: Technique::active_scanning(),
        host: HostInfo { name: "web-01".into(), role: "server".into() },
        allowlisted: false,
        blocked: true,
        reason: "300 ports in 10s".into(),
        update: false,
        alert_id: "00aa".into(),
        incident: Incident::default(),
        depth: None,
        annotations: Annotations { asn: Some(64500), org: Some("Example Net".into()), evidence: Some("/var/lib/scanwatch/evidence/x.pcap".into()), ..Default::default() },
    }
}

fn outbound() -> Alert {
    let mut a = inbound();
    a.kind = AlertKind::OutboundScan;
    a.direction = Direction::Outbound;
    a.blocked = false;
    a.update = true;
    a.technique = Technique::network_service_discovery();
    a.source = AlertSource {
        ip: None,
        process: Some(ProcessInfo {
            pid: 4243,
            tgid: 4242,
            comm: "nmap".into(),
            exe: Some("/usr/bin/nmap".into()),
            cmdline: Some("nmap -sT 10.0.0.0/24".into()),
            uid: 1000,
            user: Some("alice".into()),
            ppid: Some(4000),
            parent_exe: Some("/usr/bin/bash".into()),
            ancestry: vec![crate::vocab::Ancestor { pid: 4000, exe: "/usr/bin/bash".into() }],
            anchor: Some(crate::vocab::ProcessAnchor {
                pid: 4000,
                exe: Some("/usr/bin/bash".into()),
                comm: Some("bash".into()),
                start_time: Some(900),
                depth: 1,
                rule: "long_lived".into(),
                forks: 3,
            }),
            ..Default::default()
        }),
        related: vec![],
    };
    a.annotations = Annotations::default();
    a
}

#[test]
fn ecs_names_and_values() {
    let v = render(&inbound(), Format::Ecs).expect("ecs");
    assert_eq!(v["@timestamp"], "2026-03-01T12:00:00.250Z");
    assert_eq!(v["event"]["kind"], "alert");
    assert_eq!(v["event"]["category"], serde_json::json!(["network", "intrusion_detection"]));
    assert_eq!(v["event"]["type"], serde_json::json!(["denied"]), "blocked source");
    assert_eq!(v["event"]["severity"], 4);
    assert_eq!(v["event"]["risk_score"], 87.0);
    assert_eq!(v["rule"]["name"], "vertical_scan");
    assert_eq!(v["source"]["ip"], "203.0.113.9");
    assert_eq!(v["source"]["as"]["number"], 64500);
    assert_eq!(v["source"]["as"]["organization"]["name"], "Example Net");
    assert_eq!(v["destination"]["ip"], "10.0.0.5");
    assert_eq!(v["destination"]["port"], 22);
    assert_eq!(v["threat"]["framework"], "MITRE ATT&CK");
    assert_eq!(v["threat"]["technique"]["id"][0], "T1595");
    assert_eq!(v["threat"]["tactic"]["name"][0], "Reconnaissance");
    assert_eq!(v["network"]["direction"], "inbound");
    assert_eq!(v["host"]["name"], "web-01");
    assert_eq!(v["scanwatch"]["counts"]["xmas"], 4);
    assert_eq!(v["scanwatch"]["evidence"], "/var/lib/scanwatch/evidence/x.pcap");
    assert!(v.get("process").is_none());

    let o = render(&outbound(), Format::Ecs).expect("ecs");
    assert_eq!(o["event"]["type"], serde_json::json!(["info"]));
    assert_eq!(o["process"]["pid"], 4242);
    assert_eq!(o["process"]["executable"], "/usr/bin/nmap");
    assert_eq!(o["process"]["command_line"], "nmap -sT 10.0.0.0/24");
    assert_eq!(o["process"]["parent"]["pid"], 4000);
    assert_eq!(o["scanwatch"]["process_anchor"]["pid"], 4000);
    assert_eq!(o["scanwatch"]["process_anchor"]["rule"], "long_lived");
    assert_eq!(o["user"]["id"], "1000");
    assert_eq!(o["user"]["name"], "alice");
    assert_eq!(o["threat"]["technique"]["id"][0], "T1046");
    assert_eq!(o["threat"]["tactic"]["id"][0], "TA0007");
    assert_eq!(o["network"]["direction"], "outbound");
}

#[test]
fn ocsf_detection_finding_with_its_network_activity() {
    let v = render(&inbound(), Format::Ocsf).expect("ocsf");
    assert_eq!(v["class_uid"], 2004);
    assert_eq!(v["category_uid"], 2);
    assert_eq!(v["activity_id"], 1);
    assert_eq!(v["type_uid"], 200401);
    assert_eq!(v["severity_id"], 4);
    assert_eq!(v["time"], 1_772_366_400_250i64);
    assert_eq!(v["metadata"]["version"], "1.3.0");
    assert_eq!(v["metadata"]["product"]["name"], "scanwatch");
    assert_eq!(v["finding_info"]["uid"], "00aa");
    assert_eq!(v["finding_info"]["title"], "vertical_scan");
    assert_eq!(v["finding_info"]["attacks"][0]["technique"]["uid"], "T1595");
    assert_eq!(v["finding_info"]["attacks"][0]["tactic"]["uid"], "TA0043");
    assert_eq!(v["confidence_score"], 87);
    let e = &v["evidences"][0];
    assert_eq!(e["src_endpoint"]["ip"], "203.0.113.9");
    assert_eq!(e["src_endpoint"]["autonomous_system"]["number"], 64500);
    assert_eq!(e["dst_endpoint"]["ip"], "10.0.0.5");
    assert_eq!(e["dst_endpoint"]["port"], 22);
    assert_eq!(e["connection_info"]["direction_id"], 1);
    assert_eq!(v["disposition_id"], 2, "blocked: Security Control disposition");
    assert_eq!(v["action_id"], 2);

    let o = render(&outbound(), Format::Ocsf).expect("ocsf");
    assert_eq!(o["activity_id"], 2, "an update");
    assert_eq!(o["type_uid"], 200402);
    let p = &o["evidences"][0]["process"];
    assert_eq!(p["pid"], 4242);
    assert_eq!(p["file"]["path"], "/usr/bin/nmap");
    assert_eq!(p["user"]["uid"], "1000");
    assert_eq!(p["parent_process"]["pid"], 4000);
    assert_eq!(p["lineage"], serde_json::json!(["/usr/bin/bash"]));
    assert_eq!(o["unmapped"]["process_anchor"]["pid"], 4000);
    assert_eq!(o["evidences"][0]["connection_info"]["direction_id"], 2);
    assert!(o.get("disposition_id").is_none());
}

#[test]
fn alert_format_keeps_annotations_flat_and_omits_unset_ones() {
    let v = render(&inbound(), Format::Alert).expect("alert");
    assert_eq!(v["asn"], 64500);
    assert_eq!(v["org"], "Example Net");
    assert_eq!(v["evidence"], "/var/lib/scanwatch/evidence/x.pcap");
    assert!(v.get("would_block").is_none());
    let back: Alert = serde_json::from_value(v).expect("round trip");
    assert_eq!(back, inbound());
    let o = render(&outbound(), Format::Alert).expect("alert");
    assert!(o.get("asn").is_none() && o.get("evidence").is_none());
}

#[test]
fn rfc3339_to_unix_millis() {
    assert_eq!(unix_millis("1970-01-01T00:00:00.000Z"), Some(0));
    assert_eq!(unix_millis("2000-02-29T00:00:00Z"), Some(951_782_400_000));
    assert_eq!(unix_millis("2023-11-14T22:13:20.25Z"), Some(1_700_000_000_250));
    assert_eq!(unix_millis("2023-11-14 22:13:20Z"), None);
    assert_eq!(unix_millis("2023-13-14T22:13:20Z"), None);
    assert_eq!(unix_millis("2023-11-14T22:13:20+01:00"), None);
}
