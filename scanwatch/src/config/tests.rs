//! Configuration: parsing, overlay and validation errors naming the key.
use super::*;

fn err(s: &str) -> String {
    match Config::from_toml_str(s) {
        Ok(_) => panic!("config should have been rejected:\n{s}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn embedded_default_parses() {
    let c = Config::default_embedded();
    assert_eq!(c.agent.role, "server");
    assert_eq!(c.agent.sweep_interval, Duration::from_secs(1));
    assert_eq!(c.detect.windows.len(), 4);
    assert_eq!(c.detect.windows[3], Duration::from_secs(86_400));
    assert!(c.honeyports.tcp.contains(&4444) && c.honeyports.tcp.contains(&31337));
    for role in [
        "server",
        "workstation",
        "scanner",
        "dns-resolver",
        "proxy",
        "ci-runner",
    ] {
        assert!(c.roles.contains_key(role), "missing role {role}");
    }
    assert_eq!(c.role().name, "server");
    assert_eq!(c.xdp.ringbuf_bytes, 1 << 20);
    assert_eq!(c.alerts.min_severity, Severity::Info);
}

#[test]
fn default_honeyports_avoid_real_services() {
    let c = Config::default_embedded();
    let real = [
        22, 25, 53, 80, 110, 143, 443, 445, 993, 3306, 3389, 5432, 6379, 8080, 8443,
    ];
    for p in c.honeyports.tcp.iter().chain(&c.honeyports.udp) {
        assert!(!real.contains(p), "honeyport {p} is a real service port");
    }
}

#[test]
fn user_file_overrides_only_what_it_sets() {
    let c = Config::from_toml_str("[xdp]\nport_threshold = 50\n[agent]\nrole = \"workstation\"\n")
        .expect("valid");
    assert_eq!(c.xdp.port_threshold, 50);
    assert_eq!(c.xdp.host_threshold, 16);
    assert_eq!(c.role().name, "workstation");
    assert_eq!(c.role().outbound_severity, Severity::Critical);
}

#[test]
fn roles_can_be_overridden_and_added() {
    let c = Config::from_toml_str(
        r#"
        [agent]
        role = "bastion"
        [roles.server]
        inbound_multiplier = 3.0
        [roles.bastion]
        inherits = "workstation"
        outbound_multiplier = 2.0
        [roles.bastion.honeyports]
        tcp = [2323, 31337]
        "#,
    )
    .expect("valid");
    assert_eq!(c.roles["server"].inbound_multiplier, 3.0);
    assert_eq!(c.roles["server"].outbound_severity, Severity::High);
    let b = c.role();
    assert_eq!(b.outbound_multiplier, 2.0);
    assert_eq!(b.outbound_severity, Severity::Critical);
    assert_eq!(c.effective_honeyports().tcp, vec![2323, 31337]);
    // A role list that names only tcp keeps the global udp honeyports (nothing dropped silently).
    assert_eq!(c.effective_honeyports().udp, Config::default_embedded().honeyports.udp);
    // Global honeyports for other roles.
    assert!(Config::default_embedded()
        .effective_honeyports()
        .tcp
        .contains(&4444));
}

#[test]
fn bad_ringbuf_names_key() {
    let e = err("[xdp]\nringbuf_bytes = 1000\n");
    assert_eq!(e, "xdp.ringbuf_bytes: 1000 is not a power of two");
    let e = err("[xdp]\nringbuf_bytes = 1024\n");
    assert!(
        e.starts_with("xdp.ringbuf_bytes:") && e.contains("page size"),
        "{e}"
    );
}

#[test]
fn unknown_keys_name_section() {
    assert_eq!(err("[xdp]\nfoo = 1\n"), "unknown key `foo` in [xdp]");
    assert_eq!(
        err("[detect.trw]\ngamma = 1\n"),
        "unknown key `gamma` in [detect.trw]"
    );
    assert_eq!(
        err("[roles.server]\ncolour = \"red\"\n"),
        "unknown key `colour` in [roles.server]"
    );
    assert_eq!(
        err("[bogus]\nx = 1\n"),
        "unknown key `bogus` in [top level]"
    );
}

#[test]
fn unknown_role_lists_known() {
    let e = err("[agent]\nrole = \"bogus\"\n");
    assert!(
        e.starts_with("agent.role: unknown role \"bogus\" (known: ci-runner, dns-resolver"),
        "{e}"
    );
    assert!(e.contains("server") && e.contains("workstation"), "{e}");
}

#[test]
fn type_and_value_errors_name_key() {
    let e = err("[xdp]\nport_threshold = \"many\"\n");
    assert!(e.starts_with("xdp.port_threshold:"), "{e}");
    let e = err("[agent]\nsweep_interval = \"10 parsecs\"\n");
    assert!(e.starts_with("agent.sweep_interval:"), "{e}");
    let e = err("[detect]\nwindows = [\"10s\", \"5s\"]\nport_thresholds=[1,2]\nhost_thresholds=[1,2]\noutbound_port_thresholds=[1,2]\noutbound_host_thresholds=[1,2]\n");
    assert!(
        e.starts_with("detect.windows[1]: windows must be strictly increasing"),
        "{e}"
    );
    let e = err("[detect]\nwindows = [\"10s\"]\n");
    assert!(
        e.starts_with("detect.port_thresholds: has 4 entries"),
        "{e}"
    );
    let e = err("[detect.trw]\ntheta1 = 0.9\n");
    assert!(e.starts_with("detect.trw.theta1:"), "{e}");
    let e = err("[allowlist.networks]\nlab = [\"10.0.0.0/33\"]\n");
    assert!(e.starts_with("allowlist.networks.lab[0]:"), "{e}");
    let e = err("[response]\nblock_min_severity = \"urgent\"\n");
    assert!(e.starts_with("response.block_min_severity:"), "{e}");
    let e = err("[response]\nmax_blocked = 5000\n");
    assert!(e.starts_with("response.max_blocked:"), "{e}");
    let e = err("[response]\nblock_ttl = \"0s\"\n");
    assert!(e.starts_with("response.block_ttl:"), "{e}");
    let e = err("[xdp]\nfirst_contact = \"yes\"\n");
    assert!(e.starts_with("xdp.first_contact:"), "{e}");
    let e = err("[alerts]\nmin_severity = \"loud\"\n");
    assert!(e.starts_with("alerts.min_severity:"), "{e}");
    let e = err("[agent]\nxdp_mode = \"turbo\"\n");
    assert!(e.starts_with("agent.xdp_mode:"), "{e}");
    let e = err("[roles.server]\noutbound_severity = \"meh\"\n");
    assert!(e.starts_with("roles.server.outbound_severity:"), "{e}");
    let e = err("[honeyports]\ntcp = [0]\n");
    assert!(e.starts_with("honeyports.tcp[0]:"), "{e}");
    let e = err("[roles.x]\ninherits = \"nope\"\n");
    assert!(e.starts_with("roles.x.inherits:"), "{e}");
    let e = err("[alerts]\nupdate_interval = \"0s\"\n");
    assert!(e.starts_with("alerts.update_interval:"), "{e}");
    assert!(err("[xdp\n").starts_with("invalid TOML"));
}

#[test]
fn allowlist_networks_match() {
    let c = Config::from_toml_str("[allowlist.networks]\nmon = [\"10.9.0.0/24\"]\n").expect("ok");
    assert_eq!(
        c.allowlist.network_for(&"10.9.0.4".parse().expect("ip")),
        Some("mon")
    );
    assert_eq!(
        c.allowlist.network_for(&"10.8.0.4".parse().expect("ip")),
        None
    );
}

#[test]
fn honeyport_lists_extend_or_replace_the_defaults() {
    let defaults = Config::default_embedded().honeyports;
    // `tcp_extra` adds to the defaults; nothing to warn about.
    let c = Config::from_toml_str("[honeyports]\ntcp_extra = [2323]\n").expect("valid");
    let mut want = defaults.tcp.clone();
    want.push(2323);
    want.sort_unstable();
    assert_eq!(c.honeyports.tcp, want);
    assert_eq!(c.honeyports.udp, defaults.udp);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // `tcp` replaces them, and the configuration says so.
    let c = Config::from_toml_str("[honeyports]\ntcp = [2323]\n").expect("valid");
    assert_eq!(c.honeyports.tcp, vec![2323]);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("honeyports.tcp replaces the default list") && c.warnings[0].contains("tcp_extra"), "{}", c.warnings[0]);
    // A role's `udp_extra` adds to the global list.
    let c = Config::from_toml_str("[roles.server.honeyports]\nudp_extra = [9999]\n").expect("valid");
    assert!(c.effective_honeyports().udp.contains(&9999) && c.effective_honeyports().udp.len() == defaults.udp.len() + 1);
    assert_eq!(c.effective_honeyports().tcp, defaults.tcp);
    assert!(err("[honeyports]\ntcp_extra = [0]\n").starts_with("honeyports.tcp_extra[0]"));
}

#[test]
fn errors_speak_in_user_terms() {
    let e = err("[honeyports]\ntcp = [70000]\n");
    assert!(e.starts_with("honeyports.tcp"), "{e}");
    assert!(e.contains("70000 is not a port: a whole number 0–65535"), "{e}");
    assert!(!e.contains("u16"), "{e}");
    let e = err("[xdp]\nmax_sources = -1\n");
    assert!(e.contains("-1 is not a whole number 0–4294967295") && !e.contains("u32"), "{e}");
    let e = err("[detect]\nmin_fail_ratio = \"half\"\n");
    assert!(!e.contains("f64"), "{e}");
}

#[test]
fn cidr_with_host_bits_is_accepted_with_a_warning() {
    let c = Config::from_toml_str("[allowlist.networks]\nlab = [\"10.99.0.2/24\", \"10.98.0.0/24\"]\n").expect("valid");
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].starts_with("allowlist.networks.lab[0]"), "{}", c.warnings[0]);
    assert!(c.warnings[0].contains("host bits set") && c.warnings[0].contains("10.99.0.0/24"), "{}", c.warnings[0]);
    assert_eq!(c.allowlist.network_for(&"10.99.0.200".parse().expect("ip")), Some("lab"));
}

#[test]
fn interface_modes_are_named_and_checked() {
    let c = Config::from_toml_str("[agent]\ninterface_modes = { eth1 = \"gateway\", span0 = \"mirror\" }\n").expect("valid");
    assert_eq!(c.agent.interface_modes.get("eth1"), Some(&super::InterfaceMode::Gateway));
    assert_eq!(c.agent.interface_modes.get("span0"), Some(&super::InterfaceMode::Mirror));
    assert!(Config::from_toml_str("").expect("defaults").agent.interface_modes.is_empty());
    let e = err("[agent]\ninterface_modes = { eth1 = \"router\" }\n");
    assert!(e.starts_with("agent.interface_modes.eth1:") && e.contains("router"), "{e}");
    let e = err("[agent]\ninterface_modes = { \"a/b\" = \"host\" }\n");
    assert!(e.starts_with("agent.interface_modes.a/b:"), "{e}");
}
