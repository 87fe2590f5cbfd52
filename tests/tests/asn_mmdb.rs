//! ASN enrichment from a MaxMind-format database the test writes itself (no privileges needed).
use scanwatch::asn::AsnDb;
use scanwatch_tests::mmdb::{asn_database, AsnEntry};

#[test]
fn asn_and_org_come_from_a_written_mmdb() {
    let dir = std::env::temp_dir().join(format!("scanwatch-asn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("asn.mmdb");
    let bytes = asn_database(&[
        AsnEntry { net: "10.78.0.0".parse().expect("ip"), prefix: 16, asn: 64512, org: "Lab Scanners Inc" },
        AsnEntry { net: "203.0.113.0".parse().expect("ip"), prefix: 24, asn: 64513, org: "Documentation Net — ÜTF-8" },
        AsnEntry { net: "203.0.113.128".parse().expect("ip"), prefix: 25, asn: 64514, org: "More Specific" },
    ]);
    std::fs::write(&path, bytes).expect("write mmdb");
    let mut db = AsnDb::open(&path).expect("our mmdb opens");
    assert_eq!(db.lookup("10.78.3.2".parse().expect("ip")), Some((64512, Some("Lab Scanners Inc".into()))));
    assert_eq!(db.lookup("::ffff:10.78.200.9".parse().expect("ip")), Some((64512, Some("Lab Scanners Inc".into()))), "mapped form");
    assert_eq!(db.lookup("203.0.113.5".parse().expect("ip")).map(|x| x.0), Some(64513));
    assert_eq!(db.lookup("203.0.113.200".parse().expect("ip")).map(|x| x.0), Some(64514), "longest prefix wins");
    assert_eq!(db.lookup("203.0.113.5".parse().expect("ip")).and_then(|x| x.1), Some("Documentation Net — ÜTF-8".into()));
    assert_eq!(db.lookup("192.0.2.1".parse().expect("ip")), None);

    let mut alert: scanwatch::alert::Alert = serde_json::from_value(serde_json::json!({
        "time": "2026-01-01T00:00:00.000Z", "kind": "vertical_scan", "severity": "high", "confidence": 0.9,
        "direction": "inbound", "source": {"ip": "10.78.3.2", "process": null},
        "targets": {"host_count": 1, "port_count": 30, "sample_ports": [22], "sample_hosts": []},
        "window": "10s", "counts": {"probes": 30, "failures": 30, "fail_ratio": 1.0}, "fingerprint": null,
        "technique": {"id": "T1046", "name": "Network Service Discovery"}, "host": {"name": "h", "role": "server"},
        "allowlisted": false, "blocked": false, "reason": "r", "update": false, "alert_id": "x",
        "protocol": "tcp", "shape": "syn", "start": "2026-01-01T00:00:00.000Z",
        "last_seen": "2026-01-01T00:00:00.000Z", "update_kind": "first", "seq": 1
    }))
    .expect("alert");
    db.annotate(&mut alert);
    let v = serde_json::to_value(&alert).expect("json");
    assert_eq!(v["asn"], 64512);
    assert_eq!(v["org"], "Lab Scanners Inc");
    assert_eq!((db.stats.hits, db.stats.misses), (1, 0));

    // A file that is not an mmdb is refused with the path in the message.
    let bad = dir.join("bad.mmdb");
    std::fs::write(&bad, b"not a database").expect("write");
    let e = AsnDb::open(&bad).err().expect("refused");
    assert!(e.to_string().contains("bad.mmdb"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
