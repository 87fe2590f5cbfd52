//! Stage 1: the TOML text into optional, unknown-key-rejecting serde structs, and the overlay of a
//! user file on the embedded defaults.
use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::ConfigError;

// ---------------------------------------------------------------------------------------------
// Raw (stage 1) structures.
// ---------------------------------------------------------------------------------------------


#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) agent: Option<RawAgent>,
    pub(super) xdp: Option<RawXdp>,
    pub(super) honeyports: Option<RawHoneyports>,
    pub(super) detect: Option<RawDetect>,
    pub(super) allowlist: Option<RawAllowlist>,
    pub(super) alerts: Option<RawAlerts>,
    pub(super) response: Option<RawResponse>,
    pub(super) roles: Option<BTreeMap<String, RawRole>>,
    /// `[sinks.NAME]` tables, parsed by the sink types themselves (`crate::sinks`).
    pub(super) sinks: Option<BTreeMap<String, toml::Table>>,
    pub(super) depth: Option<super::depth::RawDepth>,
    pub(super) fleet: Option<super::fleet::RawFleet>,
    pub(super) metrics: Option<super::ops::RawMetrics>,
    pub(super) control: Option<super::ops::RawControl>,
    pub(super) evidence: Option<super::ops::RawEvidence>,
    pub(super) enrich: Option<super::ops::RawEnrich>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResponse {
    pub(super) block_min_severity: Option<String>,
    pub(super) block_ttl: Option<String>,
    pub(super) max_blocked: Option<u32>,
    pub(super) dry_run: Option<bool>,
    pub(super) never_block: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) interfaces: Option<Vec<String>>,
    pub(super) role: Option<String>,
    pub(super) sweep_interval: Option<String>,
    pub(super) hostname: Option<String>,
    pub(super) xdp_mode: Option<String>,
    pub(super) outbound: Option<bool>,
    pub(super) baseline: Option<String>,
    pub(super) interface_modes: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawXdp {
    pub(super) short_window: Option<String>,
    pub(super) port_threshold: Option<u32>,
    pub(super) host_threshold: Option<u32>,
    pub(super) max_sources: Option<u32>,
    pub(super) max_fingerprints: Option<u32>,
    pub(super) max_procs: Option<u32>,
    pub(super) ringbuf_bytes: Option<u32>,
    pub(super) lookup_sockets: Option<bool>,
    pub(super) port_filter: Option<bool>,
    pub(super) verify_checksums: Option<bool>,
    pub(super) first_contact: Option<bool>,
    pub(super) enforce_blocklist: Option<bool>,
    pub(super) fingerprint_events_per_sec: Option<u32>,
    pub(super) process_events_per_sec: Option<u32>,
    pub(super) process_pair_window: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHoneyports {
    /// Replaces the list below it (defaults, or the global list for a role).
    pub(super) tcp: Option<Vec<u16>>,
    pub(super) udp: Option<Vec<u16>>,
    /// Added to the list below it.
    pub(super) tcp_extra: Option<Vec<u16>>,
    pub(super) udp_extra: Option<Vec<u16>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrw {
    pub(super) alpha: Option<f64>,
    pub(super) beta: Option<f64>,
    pub(super) theta0: Option<f64>,
    pub(super) theta1: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDetect {
    pub(super) windows: Option<Vec<String>>,
    pub(super) port_thresholds: Option<Vec<u32>>,
    pub(super) host_thresholds: Option<Vec<u32>>,
    pub(super) outbound_port_thresholds: Option<Vec<u32>>,
    pub(super) outbound_host_thresholds: Option<Vec<u32>>,
    pub(super) min_fail_ratio: Option<f64>,
    pub(super) privileged_weight: Option<f64>,
    pub(super) trw: Option<RawTrw>,
    pub(super) trw_min_fanout: Option<u32>,
    pub(super) slow_min_window: Option<String>,
    pub(super) stealth_min: Option<u32>,
    pub(super) weak_stealth_min: Option<u32>,
    pub(super) evasion_min: Option<u32>,
    pub(super) unsolicited_min: Option<u32>,
    pub(super) decoy_window: Option<String>,
    pub(super) decoy_min_sources: Option<u32>,
    pub(super) decoy_min_ports: Option<u32>,
    pub(super) decoy_min_overlap: Option<f64>,
    pub(super) distributed_window: Option<String>,
    pub(super) distributed_min_sources: Option<u32>,
    pub(super) distributed_min_ports: Option<u32>,
    pub(super) distributed_min_hosts: Option<u32>,
    pub(super) split_min_sources: Option<u32>,
    pub(super) split_min_ports: Option<u32>,
    pub(super) split_max_overlap: Option<f64>,
    pub(super) protocol_scan_min: Option<u32>,
    pub(super) max_inbound_entities: Option<u32>,
    pub(super) max_outbound_entities: Option<u32>,
    pub(super) entity_idle: Option<String>,
    pub(super) baseline_margin: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAllowlist {
    pub(super) networks: Option<BTreeMap<String, Vec<String>>>,
    pub(super) executables: Option<Vec<String>>,
    pub(super) users: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    pub(super) update_interval: Option<String>,
    pub(super) close_after: Option<String>,
    pub(super) rate_limit: Option<f64>,
    pub(super) burst: Option<u32>,
    pub(super) summary_interval: Option<String>,
    pub(super) min_severity: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRole {
    pub(super) inherits: Option<String>,
    pub(super) description: Option<String>,
    pub(super) inbound_multiplier: Option<f64>,
    pub(super) outbound_multiplier: Option<f64>,
    pub(super) outbound_fanout_expected: Option<bool>,
    pub(super) expected_service_ports: Option<Vec<u16>>,
    pub(super) expected_scanners: Option<Vec<String>>,
    pub(super) outbound_severity: Option<String>,
    pub(super) honeyports: Option<RawHoneyports>,
}

/// Deserialize one section, and on failure find the key responsible so the message can name it.
///
/// All raw fields are optional, so a table holding only one of the section's keys deserializes
/// successfully unless that key is unknown or has a bad value: trying keys one at a time pins
/// the error to a key.
fn de_section<T: DeserializeOwned>(path: &str, value: &toml::Value) -> Result<T, ConfigError> {
    match T::deserialize(value.clone()) {
        Ok(v) => Ok(v),
        Err(whole) => {
            let Some(table) = value.as_table() else {
                return Err(ConfigError::invalid(path, format!("expected a table ({whole})")));
            };
            for (k, v) in table {
                let mut single = toml::Table::new();
                single.insert(k.clone(), v.clone());
                if let Err(e) = T::deserialize(toml::Value::Table(single)) {
                    let msg = e.to_string();
                    let msg = msg.trim();
                    if msg.starts_with("unknown field") && !is_nested_error(v, msg, k) {
                        return Err(ConfigError::UnknownKey {
                            key: k.clone(),
                            section: path.to_string(),
                        });
                    }
                    // A nested table with an unknown key of its own.
                    if let (Some(inner), true) = (unknown_field_name(msg), v.is_table()) {
                        return Err(ConfigError::UnknownKey {
                            key: inner,
                            section: format!("{path}.{k}"),
                        });
                    }
                    return Err(ConfigError::invalid(format!("{path}.{k}"), user_terms(msg)));
                }
            }
            Err(ConfigError::invalid(path, whole.to_string().trim().to_string()))
        }
    }
}

/// A serde message in the user's terms: Rust type names (`u16`, `f64`, ...) become what the
/// value must be ("a port: a whole number 0–65535"), naming the value given.
pub(super) fn user_terms(msg: &str) -> String {
    const TYPES: [(&str, &str); 8] = [
        ("u8", "a whole number 0–255"),
        ("u16", "a port: a whole number 0–65535"),
        ("u32", "a whole number 0–4294967295"),
        ("u64", "a whole number ≥ 0"),
        ("usize", "a whole number ≥ 0"),
        ("f64", "a number"),
        ("f32", "a number"),
        ("a sequence", "a list ([...])"),
    ];
    // toml adds a line naming the key ("in `tcp`"); the dotted key is said already.
    let msg = msg.lines().next().unwrap_or(msg);
    let Some((_, ty)) = msg.rsplit_once("expected ") else { return msg.to_string() };
    let ty = ty.trim().trim_end_matches('.');
    let Some((_, want)) = TYPES.iter().find(|(t, _)| *t == ty) else { return msg.to_string() };
    // "invalid value: integer `70000`, expected u16" -> the value between backticks.
    let given = msg.split('`').nth(1);
    match given {
        Some(v) => format!("{v} is not {want}"),
        None => format!("expected {want}"),
    }
}

/// Is an "unknown field" message about a key inside the nested table `v` rather than `k` itself?
fn is_nested_error(v: &toml::Value, msg: &str, k: &str) -> bool {
    v.is_table() && unknown_field_name(msg).is_some_and(|f| f != k)
}

fn unknown_field_name(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name.to_string())
}

impl RawConfig {
    pub(super) fn parse(s: &str) -> Result<RawConfig, ConfigError> {
        let table: toml::Table =
            s.parse().map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        RawConfig::from_table(&table)
    }

    pub(super) fn from_table(table: &toml::Table) -> Result<RawConfig, ConfigError> {
        let mut raw = RawConfig::default();
        for (k, v) in table {
            match k.as_str() {
                "agent" => raw.agent = Some(de_section(k, v)?),
                "xdp" => raw.xdp = Some(de_section(k, v)?),
                "honeyports" => raw.honeyports = Some(de_section(k, v)?),
                "detect" => raw.detect = Some(de_section(k, v)?),
                "allowlist" => raw.allowlist = Some(de_section(k, v)?),
                "alerts" => raw.alerts = Some(de_section(k, v)?),
                "response" => raw.response = Some(de_section(k, v)?),
                "depth" => raw.depth = Some(de_section(k, v)?),
                "fleet" => raw.fleet = Some(de_section(k, v)?),
                "metrics" => raw.metrics = Some(de_section(k, v)?),
                "control" => raw.control = Some(de_section(k, v)?),
                "evidence" => raw.evidence = Some(de_section(k, v)?),
                "enrich" => raw.enrich = Some(de_section(k, v)?),
                "sinks" => {
                    let Some(sinks) = v.as_table() else {
                        return Err(ConfigError::invalid("sinks", "expected a table of sinks ([sinks.NAME])"));
                    };
                    let mut out = BTreeMap::new();
                    for (name, sv) in sinks {
                        let Some(t) = sv.as_table() else {
                            return Err(ConfigError::invalid(format!("sinks.{name}"), "expected a table"));
                        };
                        out.insert(name.clone(), t.clone());
                    }
                    raw.sinks = Some(out);
                }
                "roles" => {
                    let Some(roles) = v.as_table() else {
                        return Err(ConfigError::invalid("roles", "expected a table of roles"));
                    };
                    let mut out = BTreeMap::new();
                    for (name, rv) in roles {
                        out.insert(name.clone(), de_section(&format!("roles.{name}"), rv)?);
                    }
                    raw.roles = Some(out);
                }
                other => {
                    return Err(ConfigError::UnknownKey {
                        key: other.to_string(),
                        section: "top level".to_string(),
                    })
                }
            }
        }
        Ok(raw)
    }

    /// Overlay a user configuration on this one (self = defaults).
    pub(super) fn overlay(&mut self, o: RawConfig) {
        fn sub<T: Default>(slot: &mut Option<T>, o: Option<T>, f: impl FnOnce(&mut T, T)) {
            if let Some(o) = o {
                f(slot.get_or_insert_with(T::default), o);
            }
        }
        sub(&mut self.agent, o.agent, |s, o| {
            overlay_fields!(s, o; interfaces, role, sweep_interval, hostname, xdp_mode, outbound, baseline, interface_modes)
        });
        sub(&mut self.xdp, o.xdp, |s, o| {
            overlay_fields!(s, o; short_window, port_threshold, host_threshold, max_sources,
                max_fingerprints, max_procs, ringbuf_bytes, lookup_sockets, port_filter, verify_checksums,
                first_contact, enforce_blocklist, fingerprint_events_per_sec, process_events_per_sec,
                process_pair_window)
        });
        sub(&mut self.honeyports, o.honeyports, |s, o| {
            // `*_extra` lists of successive layers add up; `tcp` / `udp` replace.
            for (mine, theirs) in [(&mut s.tcp_extra, &o.tcp_extra), (&mut s.udp_extra, &o.udp_extra)] {
                if let Some(t) = theirs {
                    mine.get_or_insert_with(Vec::new).extend(t.iter().copied());
                }
            }
            overlay_fields!(s, o; tcp, udp)
        });
        sub(&mut self.detect, o.detect, |s, o| {
            let trw = o.trw;
            overlay_fields!(s, o; windows, port_thresholds, host_thresholds,
                outbound_port_thresholds, outbound_host_thresholds, min_fail_ratio,
                privileged_weight, trw_min_fanout, slow_min_window, stealth_min,
                weak_stealth_min, evasion_min, unsolicited_min, decoy_window, decoy_min_sources,
                decoy_min_ports, decoy_min_overlap, distributed_window, distributed_min_sources,
                distributed_min_ports, distributed_min_hosts, split_min_sources, split_min_ports,
                split_max_overlap, protocol_scan_min, max_inbound_entities,
                max_outbound_entities, entity_idle, baseline_margin);
            sub(&mut s.trw, trw, |s, o| overlay_fields!(s, o; alpha, beta, theta0, theta1));
        });
        sub(&mut self.allowlist, o.allowlist, |s, o| {
            // Network sets merge by name; lists replace.
            if let Some(nets) = o.networks {
                s.networks.get_or_insert_with(BTreeMap::new).extend(nets);
            }
            overlay_fields!(s, o; executables, users);
        });
        sub(&mut self.alerts, o.alerts, |s, o| {
            overlay_fields!(s, o; update_interval, close_after, rate_limit, burst,
                summary_interval, min_severity)
        });
        sub(&mut self.response, o.response, |s, o| {
            // Never-block sets merge by name, like allowlist networks.
            if let Some(nets) = o.never_block {
                s.never_block.get_or_insert_with(BTreeMap::new).extend(nets);
            }
            overlay_fields!(s, o; block_min_severity, block_ttl, max_blocked, dry_run)
        });
        if let Some(d) = o.depth {
            self.depth.get_or_insert_with(Default::default).overlay(d);
        }
        sub(&mut self.fleet, o.fleet, |s, o| s.overlay(o));
        sub(&mut self.metrics, o.metrics, |s, o| overlay_fields!(s, o; listen));
        sub(&mut self.control, o.control, |s, o| overlay_fields!(s, o; socket));
        sub(&mut self.evidence, o.evidence, |s, o| {
            overlay_fields!(s, o; dir, duration, snaplen, max_file_bytes, max_files, max_active)
        });
        sub(&mut self.enrich, o.enrich, |s, o| overlay_fields!(s, o; asn_db));
        if let Some(sinks) = o.sinks {
            // Sinks merge by name; a named sink's table replaces the earlier one whole.
            self.sinks.get_or_insert_with(BTreeMap::new).extend(sinks);
        }
        if let Some(roles) = o.roles {
            let mine = self.roles.get_or_insert_with(BTreeMap::new);
            for (name, r) in roles {
                let slot = mine.entry(name).or_default();
                overlay_fields!(slot, r; inherits, description, inbound_multiplier,
                    outbound_multiplier, outbound_fanout_expected, expected_service_ports,
                    expected_scanners, outbound_severity, honeyports);
            }
        }
    }

}
