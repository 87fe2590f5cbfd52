//! Stage 2: the merged raw configuration into the typed [`Config`]; every error names the dotted
//! key.
use std::collections::BTreeMap;
use std::time::Duration;

use super::raw::*;
use super::*;
use crate::vocab::{parse_duration, Cidr, Severity};

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
        let agent = self.agent.unwrap_or_default();
        let xdp = self.xdp.unwrap_or_default();
        let hp = self.honeyports.unwrap_or_default();
        let det = self.detect.unwrap_or_default();
        let allow = self.allowlist.unwrap_or_default();
        let al = self.alerts.unwrap_or_default();
        let resp = self.response.unwrap_or_default();
        let raw_roles = self.roles.unwrap_or_default();
        let depth = self.depth.unwrap_or_default().validate()?;

        let honeyports = honeyports(hp, "honeyports", None)?;
        let mut warnings = Vec::new();

        // Roles first: agent.role is checked against them.
        let mut roles = BTreeMap::new();
        for name in raw_roles.keys() {
            let role = resolve_role(name, &raw_roles, &honeyports)?;
            roles.insert(name.clone(), role);
        }

        let role = req(agent.role, "agent.role")?;
        if !roles.contains_key(&role) {
            let known: Vec<&str> = roles.keys().map(String::as_str).collect();
            return Err(ConfigError::invalid(
                "agent.role",
                format!("unknown role {role:?} (known: {})", known.join(", ")),
            ));
        }
        let interfaces = req(agent.interfaces, "agent.interfaces")?;
        for (i, name) in interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                return Err(ConfigError::invalid(
                    format!("agent.interfaces[{i}]"),
                    format!("{name:?} is not a valid interface name"),
                ));
            }
        }
        let xdp_mode = match req(agent.xdp_mode, "agent.xdp_mode")?.as_str() {
            "auto" => XdpModeSetting::Auto,
            "native" | "drv" => XdpModeSetting::Native,
            "skb" | "generic" => XdpModeSetting::Skb,
            other => {
                return Err(ConfigError::invalid(
                    "agent.xdp_mode",
                    format!("unknown mode {other:?} (use auto, native or skb)"),
                ))
            }
        };
        let mut interface_modes = BTreeMap::new();
        for (name, mode) in agent.interface_modes.unwrap_or_default() {
            let key = format!("agent.interface_modes.{name}");
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                return Err(ConfigError::invalid(key, format!("{name:?} is not a valid interface name")));
            }
            let Some(m) = InterfaceMode::parse(&mode) else {
                return Err(ConfigError::invalid(key, format!("unknown mode {mode:?} (use host, gateway or mirror)")));
            };
            interface_modes.insert(name, m);
        }
        let agent = AgentConfig {
            interfaces,
            role,
            sweep_interval: positive(dur(agent.sweep_interval, "agent.sweep_interval")?, "agent.sweep_interval")?,
            hostname: agent.hostname.filter(|h| !h.is_empty()),
            xdp_mode,
            outbound: req(agent.outbound, "agent.outbound")?,
            baseline: agent.baseline.filter(|b| !b.is_empty()).map(PathBuf::from),
            interface_modes,
        };

        let ringbuf_bytes = req(xdp.ringbuf_bytes, "xdp.ringbuf_bytes")?;
        if !ringbuf_bytes.is_power_of_two() {
            return Err(ConfigError::invalid(
                "xdp.ringbuf_bytes",
                format!("{ringbuf_bytes} is not a power of two"),
            ));
        }
        if ringbuf_bytes > scanwatch_common::LIMIT_RINGBUF_BYTES {
            return Err(ConfigError::invalid(
                "xdp.ringbuf_bytes",
                format!("{ringbuf_bytes} is above the limit of {} bytes", scanwatch_common::LIMIT_RINGBUF_BYTES),
            ));
        }
        if ringbuf_bytes % PAGE_SIZE != 0 {
            return Err(ConfigError::invalid(
                "xdp.ringbuf_bytes",
                format!("{ringbuf_bytes} is not a multiple of the page size ({PAGE_SIZE})"),
            ));
        }
        let xdp = XdpSettings {
            short_window: positive(dur(xdp.short_window, "xdp.short_window")?, "xdp.short_window")?,
            port_threshold: req(xdp.port_threshold, "xdp.port_threshold")?,
            host_threshold: req(xdp.host_threshold, "xdp.host_threshold")?,
            max_sources: bounded(xdp.max_sources, scanwatch_common::LIMIT_MAX_SOURCES, "xdp.max_sources")?,
            max_fingerprints: bounded(
                xdp.max_fingerprints,
                scanwatch_common::LIMIT_MAX_FINGERPRINTS,
                "xdp.max_fingerprints",
            )?,
            max_procs: bounded(xdp.max_procs, scanwatch_common::LIMIT_MAX_PROCS, "xdp.max_procs")?,
            ringbuf_bytes,
            lookup_sockets: req(xdp.lookup_sockets, "xdp.lookup_sockets")?,
            port_filter: req(xdp.port_filter, "xdp.port_filter")?,
            verify_checksums: req(xdp.verify_checksums, "xdp.verify_checksums")?,
            first_contact: req(xdp.first_contact, "xdp.first_contact")?,
            enforce_blocklist: xdp.enforce_blocklist.unwrap_or(false),
            fingerprint_events_per_sec: req(xdp.fingerprint_events_per_sec, "xdp.fingerprint_events_per_sec")?,
            process_events_per_sec: req(xdp.process_events_per_sec, "xdp.process_events_per_sec")?,
            process_pair_window: dur(xdp.process_pair_window, "xdp.process_pair_window")?,
        };


        let windows_raw = req(det.windows, "detect.windows")?;
        if windows_raw.is_empty() || windows_raw.len() > MAX_WINDOWS {
            return Err(ConfigError::invalid(
                "detect.windows",
                format!("needs 1 to {MAX_WINDOWS} windows, got {}", windows_raw.len()),
            ));
        }
        let mut windows = Vec::with_capacity(windows_raw.len());
        for (i, w) in windows_raw.iter().enumerate() {
            let key = format!("detect.windows[{i}]");
            let d = positive(parse_duration(w).map_err(|e| ConfigError::invalid(&key, e))?, &key)?;
            if windows.last().is_some_and(|prev| *prev >= d) {
                return Err(ConfigError::invalid(key, "windows must be strictly increasing"));
            }
            windows.push(d);
        }
        let n = windows.len();
        let thresholds = |v: Option<Vec<u32>>, key: &str| -> Result<Vec<u32>, ConfigError> {
            let v = req(v, key)?;
            if v.len() != n {
                return Err(ConfigError::invalid(
                    key,
                    format!("has {} entries but detect.windows has {n}", v.len()),
                ));
            }
            if let Some(i) = v.iter().position(|t| *t == 0) {
                return Err(ConfigError::invalid(format!("{key}[{i}]"), "must be at least 1"));
            }
            Ok(v)
        };
        let raw_trw = det.trw.unwrap_or_default();
        let trw = TrwConfig {
            alpha: unit_open(raw_trw.alpha, "detect.trw.alpha")?,
            beta: unit_open(raw_trw.beta, "detect.trw.beta")?,
            theta0: unit_open(raw_trw.theta0, "detect.trw.theta0")?,
            theta1: unit_open(raw_trw.theta1, "detect.trw.theta1")?,
        };
        if trw.theta1 >= trw.theta0 {
            return Err(ConfigError::invalid(
                "detect.trw.theta1",
                format!("{} must be below detect.trw.theta0 ({})", trw.theta1, trw.theta0),
            ));
        }
        let detect = DetectConfig {
            port_thresholds: thresholds(det.port_thresholds, "detect.port_thresholds")?,
            host_thresholds: thresholds(det.host_thresholds, "detect.host_thresholds")?,
            outbound_port_thresholds: thresholds(
                det.outbound_port_thresholds,
                "detect.outbound_port_thresholds",
            )?,
            outbound_host_thresholds: thresholds(
                det.outbound_host_thresholds,
                "detect.outbound_host_thresholds",
            )?,
            windows,
            min_fail_ratio: ratio(det.min_fail_ratio, "detect.min_fail_ratio")?,
            privileged_weight: at_least(det.privileged_weight, 1.0, "detect.privileged_weight")?,
            trw,
            trw_min_fanout: nonzero(det.trw_min_fanout, "detect.trw_min_fanout")?,
            slow_min_window: positive(dur(det.slow_min_window, "detect.slow_min_window")?, "detect.slow_min_window")?,
            stealth_min: nonzero(det.stealth_min, "detect.stealth_min")?,
            weak_stealth_min: nonzero(det.weak_stealth_min, "detect.weak_stealth_min")?,
            evasion_min: nonzero(det.evasion_min, "detect.evasion_min")?,
            unsolicited_min: nonzero(det.unsolicited_min, "detect.unsolicited_min")?,
            decoy_window: positive(dur(det.decoy_window, "detect.decoy_window")?, "detect.decoy_window")?,
            decoy_min_sources: at_least_u32(det.decoy_min_sources, 2, "detect.decoy_min_sources")?,
            decoy_min_ports: nonzero(det.decoy_min_ports, "detect.decoy_min_ports")?,
            decoy_min_overlap: ratio(det.decoy_min_overlap, "detect.decoy_min_overlap")?,
            distributed_window: positive(dur(det.distributed_window, "detect.distributed_window")?, "detect.distributed_window")?,
            distributed_min_sources: at_least_u32(det.distributed_min_sources, 2, "detect.distributed_min_sources")?,
            distributed_min_ports: nonzero(det.distributed_min_ports, "detect.distributed_min_ports")?,
            distributed_min_hosts: nonzero(det.distributed_min_hosts, "detect.distributed_min_hosts")?,
            split_min_sources: at_least_u32(det.split_min_sources, 2, "detect.split_min_sources")?,
            split_min_ports: at_least_u32(det.split_min_ports, 4, "detect.split_min_ports")?,
            split_max_overlap: ratio(det.split_max_overlap, "detect.split_max_overlap")?,
            protocol_scan_min: at_least_u32(det.protocol_scan_min, 3, "detect.protocol_scan_min")?,
            max_inbound_entities: nonzero(det.max_inbound_entities, "detect.max_inbound_entities")? as usize,
            max_outbound_entities: nonzero(det.max_outbound_entities, "detect.max_outbound_entities")? as usize,
            entity_idle: positive(dur(det.entity_idle, "detect.entity_idle")?, "detect.entity_idle")?,
            baseline_margin: at_least(det.baseline_margin, 1.0, "detect.baseline_margin")?,
        };

        let mut networks = BTreeMap::new();
        for (name, list) in allow.networks.unwrap_or_default() {
            let mut cidrs = Vec::with_capacity(list.len());
            for (i, c) in list.iter().enumerate() {
                let key = format!("allowlist.networks.{name}[{i}]");
                let cidr = c.parse::<Cidr>().map_err(|e| ConfigError::invalid(&key, e))?;
                let given = c.split('/').next().and_then(|a| a.trim().parse::<std::net::IpAddr>().ok());
                if given.is_some_and(|a| crate::vocab::canonical_ip(a) != cidr.addr()) {
                    warnings.push(format!(
                        "{key}: {c:?} has host bits set; it is taken as the network {cidr}"
                    ));
                }
                cidrs.push(cidr);
            }
            networks.insert(name, cidrs);
        }
        let allowlist = AllowlistConfig {
            networks,
            executables: allow.executables.unwrap_or_default(),
            users: allow.users.unwrap_or_default(),
        };

        let rate_limit = req(al.rate_limit, "alerts.rate_limit")?;
        if !(rate_limit > 0.0 && rate_limit.is_finite()) {
            return Err(ConfigError::invalid(
                "alerts.rate_limit",
                format!("{rate_limit} must be a positive number of alerts per second"),
            ));
        }
        let min_severity = req(al.min_severity, "alerts.min_severity")?;
        let alerts = AlertConfig {
            update_interval: positive(dur(al.update_interval, "alerts.update_interval")?, "alerts.update_interval")?,
            close_after: positive(dur(al.close_after, "alerts.close_after")?, "alerts.close_after")?,
            rate_limit,
            burst: nonzero(al.burst, "alerts.burst")?,
            summary_interval: positive(dur(al.summary_interval, "alerts.summary_interval")?, "alerts.summary_interval")?,
            min_severity: severity(&min_severity, "alerts.min_severity")?,
        };

        let max_blocked = nonzero(resp.max_blocked, "response.max_blocked")?;
        if max_blocked > scanwatch_common::BLOCKLIST_ENTRIES {
            return Err(ConfigError::invalid(
                "response.max_blocked",
                format!("{max_blocked} exceeds the kernel block list's {} entries", scanwatch_common::BLOCKLIST_ENTRIES),
            ));
        }
        let block_min_severity = req(resp.block_min_severity, "response.block_min_severity")?;
        let response = ResponseConfig {
            block_min_severity: severity(&block_min_severity, "response.block_min_severity")?,
            block_ttl: positive(dur(resp.block_ttl, "response.block_ttl")?, "response.block_ttl")?,
            max_blocked,
            dry_run: resp.dry_run.unwrap_or(false),
            never_block: super::ops::never_block(resp.never_block)?,
        };
        let metrics = super::ops::metrics(self.metrics)?;
        let control = super::ops::control(self.control)?;
        let evidence = super::ops::evidence(self.evidence)?;
        let enrich = super::ops::enrich(self.enrich)?;

        let mut sinks = Vec::new();
        for (name, table) in self.sinks.unwrap_or_default() {
            let spec = crate::sinks::SinkSpec::parse(&name, &table)
                .map_err(|e| ConfigError::invalid(format!("sinks.{name}.{}", e.key), e.reason))?;
            sinks.push(spec);
        }
        let fleet = super::fleet::validate(self.fleet.unwrap_or_default(), detect.windows.len())?;
        Ok(Config {
            agent, xdp, honeyports, detect, allowlist, alerts, response, roles, sinks, metrics, control, evidence, enrich,
            warnings, depth, fleet,
        })
    }
}

/// Resolve a role, following `inherits` (default: `server`) for the fields it leaves unset.
fn resolve_role(
    name: &str,
    raw: &BTreeMap<String, RawRole>,
    global_honeyports: &HoneyportConfig,
) -> Result<RoleProfile, ConfigError> {
    // Inheritance chain, most specific first.
    let mut chain: Vec<&str> = vec![name];
    let mut cur = name;
    while let Some(r) = raw.get(cur) {
        let next = match &r.inherits {
            Some(n) => n.as_str(),
            None if cur != "server" => "server",
            None => break,
        };
        let Some((next, _)) = raw.get_key_value(next) else {
            if r.inherits.is_none() {
                break; // no built-in server role to fall back to
            }
            return Err(ConfigError::invalid(
                format!("roles.{cur}.inherits"),
                format!("unknown role {next:?}"),
            ));
        };
        if chain.contains(&next.as_str()) {
            if r.inherits.is_none() {
                break;
            }
            return Err(ConfigError::invalid(
                format!("roles.{cur}.inherits"),
                format!("inheritance cycle through {next:?}"),
            ));
        }
        chain.push(next);
        cur = next;
    }
    let mut merged = RawRole::default();
    for n in chain.iter().rev() {
        if let Some(r) = raw.get(*n) {
            let r = r.clone();
            overlay_fields!(merged, r; description, inbound_multiplier, outbound_multiplier,
                outbound_fanout_expected, expected_service_ports, expected_scanners,
                outbound_severity, honeyports);
        }
    }
    let p = |f: &str| format!("roles.{name}.{f}");
    let inbound_multiplier = req(merged.inbound_multiplier, &p("inbound_multiplier"))?;
    let outbound_multiplier = req(merged.outbound_multiplier, &p("outbound_multiplier"))?;
    for (v, key) in [(inbound_multiplier, "inbound_multiplier"), (outbound_multiplier, "outbound_multiplier")] {
        if !(v > 0.0 && v.is_finite()) {
            return Err(ConfigError::invalid(p(key), format!("{v} must be a positive number")));
        }
    }
    let sev = req(merged.outbound_severity, &p("outbound_severity"))?;
    Ok(RoleProfile {
        name: name.to_string(),
        description: merged.description.unwrap_or_default(),
        inbound_multiplier,
        outbound_multiplier,
        outbound_fanout_expected: merged.outbound_fanout_expected.unwrap_or(false),
        expected_service_ports: merged.expected_service_ports.unwrap_or_default(),
        expected_scanners: merged.expected_scanners.unwrap_or_default(),
        outbound_severity: severity(&sev, &p("outbound_severity"))?,
        honeyports: match merged.honeyports {
            Some(h) => Some(honeyports(h, &p("honeyports"), Some(global_honeyports))?),
            None => None,
        },
    })
}

/// A honeyport list: `tcp` / `udp` replace the list below (`base`: the global list, for a role;
/// none for the global list, whose defaults are the layer below), `tcp_extra` / `udp_extra` add.
fn honeyports(h: RawHoneyports, path: &str, base: Option<&HoneyportConfig>) -> Result<HoneyportConfig, ConfigError> {
    let mut out = HoneyportConfig::default();
    let lists = [
        ("tcp", h.tcp, h.tcp_extra, base.map(|b| &b.tcp), &mut out.tcp),
        ("udp", h.udp, h.udp_extra, base.map(|b| &b.udp), &mut out.udp),
    ];
    for (proto, list, extra, below, dst) in lists {
        let list = list.or_else(|| below.cloned()).unwrap_or_default();
        if let Some(i) = list.iter().position(|p| *p == 0) {
            return Err(ConfigError::invalid(format!("{path}.{proto}[{i}]"), "port 0 is not valid"));
        }
        let extra = extra.unwrap_or_default();
        if let Some(i) = extra.iter().position(|p| *p == 0) {
            return Err(ConfigError::invalid(format!("{path}.{proto}_extra[{i}]"), "port 0 is not valid"));
        }
        let mut list: Vec<u16> = list.into_iter().chain(extra).collect();
        list.sort_unstable();
        list.dedup();
        *dst = list;
    }
    Ok(out)
}

fn req<T>(v: Option<T>, key: &str) -> Result<T, ConfigError> {
    v.ok_or_else(|| ConfigError::invalid(key, "missing"))
}

fn dur(v: Option<String>, key: &str) -> Result<Duration, ConfigError> {
    parse_duration(&req(v, key)?).map_err(|e| ConfigError::invalid(key, e))
}

fn positive(d: Duration, key: &str) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

/// A map size: 1 ..= `max` entries (the bound is the ABI crate's).
fn bounded(v: Option<u32>, max: u32, key: &str) -> Result<u32, ConfigError> {
    let n = nonzero(v, key)?;
    if n > max {
        return Err(ConfigError::invalid(key, format!("{n} is above the limit of {max} entries")));
    }
    Ok(n)
}

fn nonzero(v: Option<u32>, key: &str) -> Result<u32, ConfigError> {
    at_least_u32(v, 1, key)
}

fn at_least_u32(v: Option<u32>, min: u32, key: &str) -> Result<u32, ConfigError> {
    let v = req(v, key)?;
    if v < min {
        return Err(ConfigError::invalid(key, format!("{v} must be at least {min}")));
    }
    Ok(v)
}

fn at_least(v: Option<f64>, min: f64, key: &str) -> Result<f64, ConfigError> {
    let v = req(v, key)?;
    if !(v >= min && v.is_finite()) {
        return Err(ConfigError::invalid(key, format!("{v} must be at least {min}")));
    }
    Ok(v)
}

fn ratio(v: Option<f64>, key: &str) -> Result<f64, ConfigError> {
    let v = req(v, key)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(ConfigError::invalid(key, format!("{v} must be between 0 and 1")));
    }
    Ok(v)
}

fn unit_open(v: Option<f64>, key: &str) -> Result<f64, ConfigError> {
    let v = req(v, key)?;
    if !(v > 0.0 && v < 1.0) {
        return Err(ConfigError::invalid(key, format!("{v} must be strictly between 0 and 1")));
    }
    Ok(v)
}

fn severity(s: &str, key: &str) -> Result<Severity, ConfigError> {
    s.parse::<Severity>().map_err(|e| ConfigError::invalid(key, e))
}

