//! Agent configuration.
//!
//! Parsing happens in two stages:
//! 1. The TOML text is read into "raw" serde structs whose fields are all optional and which
//!    reject unknown keys (`#[serde(deny_unknown_fields)]`). The user's raw configuration is
//!    overlaid on the raw embedded defaults ([`DEFAULT_CONFIG_TOML`]), so a user file only needs
//!    the keys it changes.
//! 2. The merged raw configuration is validated into [`Config`], whose fields are all present and
//!    typed (durations, CIDRs, severities, ...).
//!
//! Every error names the offending key by its full dotted path, e.g.
//! `xdp.ringbuf_bytes: 1000 is not a power of two`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::alert::Severity;

/// The embedded default configuration (printed by `scanwatch config default`).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default_config.toml");

/// Page size the ring buffer size must be a multiple of.
const PAGE_SIZE: u32 = 4096;
/// Upper bound on the number of scoring windows (memory per entity grows with it).
pub const MAX_WINDOWS: usize = 8;

/// Configuration errors. Messages name the bad key with its full dotted path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML at all.
    #[error("invalid TOML: {0}")]
    Syntax(String),
    #[error("unknown key `{key}` in [{section}]")]
    UnknownKey { key: String, section: String },
    /// A key has a wrong type or an invalid value.
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), reason: reason.into() }
    }
}

// ---------------------------------------------------------------------------------------------
// Validated configuration.
// ---------------------------------------------------------------------------------------------

/// The complete, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub agent: AgentConfig,
    pub xdp: XdpSettings,
    pub honeyports: HoneyportConfig,
    pub detect: DetectConfig,
    pub allowlist: AllowlistConfig,
    pub alerts: AlertConfig,
    pub response: ResponseConfig,
    /// `[fleet]` (NATS publishing and the correlator).
    pub fleet: crate::fleet::config::FleetConfig,
    /// All roles (built-in ones from the defaults plus user additions), by name.
    pub roles: BTreeMap<String, RoleProfile>,
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpModeSetting {
    /// Native (driver) mode, falling back to generic SKB mode.
    Auto,
    Native,
    Skb,
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Interfaces to attach to; empty = the default-route interface.
    pub interfaces: Vec<String>,
    /// Name of the active role (a key of [`Config::roles`]).
    pub role: String,
    pub sweep_interval: Duration,
    pub hostname: Option<String>,
    pub xdp_mode: XdpModeSetting,
    /// Watch outbound activity of local processes.
    pub outbound: bool,
    /// Learned baseline file (JSON, from `scanwatch baseline`) loaded at start.
    pub baseline: Option<PathBuf>,
}

/// `[xdp]`: settings pushed into the kernel programs and maps.
#[derive(Debug, Clone, PartialEq)]
pub struct XdpSettings {
    pub short_window: Duration,
    pub port_threshold: u32,
    pub host_threshold: u32,
    pub max_sources: u32,
    pub max_fingerprints: u32,
    pub max_procs: u32,
    /// Power of two and a multiple of the page size (validated).
    pub ringbuf_bytes: u32,
    pub lookup_sockets: bool,
    pub verify_checksums: bool,
    /// Hold a source's first scan-shaped packet in the first-contact table (no per-source state
    /// for one-packet sources: spoofed floods stay cheap).
    pub first_contact: bool,
    /// Drop packets from sources in the kernel block list (opt-in).
    pub enforce_blocklist: bool,
}

/// Honeyports: ports no legitimate service uses; any touch alerts immediately.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HoneyportConfig {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
}

/// Threshold random walk parameters (Jung et al. 2004).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrwConfig {
    /// Target false-positive rate.
    pub alpha: f64,
    /// Target false-negative rate.
    pub beta: f64,
    /// Probability a connection attempt of a benign source succeeds.
    pub theta0: f64,
    /// Probability a connection attempt of a scanner succeeds (< theta0).
    pub theta1: f64,
}

/// `[detect]`: detection engine tuning.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectConfig {
    /// Scoring windows, strictly increasing.
    pub windows: Vec<Duration>,
    /// Inbound distinct-port thresholds, one per window.
    pub port_thresholds: Vec<u32>,
    /// Inbound distinct-host thresholds, one per window.
    pub host_thresholds: Vec<u32>,
    pub outbound_port_thresholds: Vec<u32>,
    pub outbound_host_thresholds: Vec<u32>,
    pub min_fail_ratio: f64,
    pub privileged_weight: f64,
    pub trw: TrwConfig,
    pub trw_min_fanout: u32,
    pub slow_min_window: Duration,
    pub stealth_min: u32,
    pub weak_stealth_min: u32,
    pub evasion_min: u32,
    pub unsolicited_min: u32,
    pub decoy_window: Duration,
    pub decoy_min_sources: u32,
    pub decoy_min_ports: u32,
    pub decoy_min_overlap: f64,
    pub distributed_window: Duration,
    pub distributed_min_sources: u32,
    pub distributed_min_ports: u32,
    pub distributed_min_hosts: u32,
    pub max_inbound_entities: usize,
    pub max_outbound_entities: usize,
    pub entity_idle: Duration,
    pub baseline_margin: f64,
}

/// `[allowlist]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AllowlistConfig {
    /// Named CIDR sets of trusted sources.
    pub networks: BTreeMap<String, Vec<Cidr>>,
    /// Executables (full paths) whose outbound activity is expected.
    pub executables: Vec<String>,
    /// User names or numeric uids whose outbound activity is expected.
    pub users: Vec<String>,
}

impl AllowlistConfig {
    /// Name of the first network set containing `ip`, if any.
    pub fn network_for(&self, ip: &IpAddr) -> Option<&str> {
        self.networks
            .iter()
            .find(|(_, cidrs)| cidrs.iter().any(|c| c.contains(ip)))
            .map(|(name, _)| name.as_str())
    }
}

/// `[alerts]`: alert lifecycle and rate limiting.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertConfig {
    pub suppression_window: Duration,
    pub escalation_factor: f64,
    /// Alerts per second.
    pub rate_limit: f64,
    pub burst: u32,
    pub summary_interval: Duration,
    pub min_severity: Severity,
}

/// `[response]`: the opt-in active response (only with `xdp.enforce_blocklist = true`).
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseConfig {
    /// Inbound scanners alerted at this severity or above are dropped in XDP.
    pub block_min_severity: Severity,
    /// How long a source stays blocked after its last qualifying alert.
    pub block_ttl: Duration,
    /// Most sources blocked at once (the kernel map holds 4,096).
    pub max_blocked: u32,
}

/// A host role: how much fan-out is normal for this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleProfile {
    pub name: String,
    pub description: String,
    /// Multiplies the inbound thresholds of every window.
    pub inbound_multiplier: f64,
    /// Multiplies the outbound thresholds of every window.
    pub outbound_multiplier: f64,
    /// Outbound fan-out to many hosts on `expected_service_ports` is normal (resolver, proxy).
    /// With an empty port list, host fan-out on any port is normal (only port fan-out counts).
    pub outbound_fanout_expected: bool,
    pub expected_service_ports: Vec<u16>,
    /// Executables expected to scan from this host (alerts become low severity, allowlisted).
    pub expected_scanners: Vec<String>,
    /// Severity of an unexpected outbound scan from this host.
    pub outbound_severity: Severity,
    /// Honeyports replacing the global ones for this role.
    pub honeyports: Option<HoneyportConfig>,
}

impl Config {
    /// The embedded default configuration.
    pub fn default_embedded() -> Config {
        match Self::from_toml_str("") {
            Ok(c) => c,
            // The embedded defaults are validated by a unit test; this cannot happen in a
            // released build.
            Err(e) => panic!("embedded default configuration is invalid: {e}"),
        }
    }

    /// Parse a user configuration (merged over the embedded defaults).
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let defaults = RawConfig::parse(DEFAULT_CONFIG_TOML)?;
        let user = RawConfig::parse(s)?;
        let mut merged = defaults;
        merged.overlay(user);
        merged.validate()
    }

    /// Read and parse a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        Self::from_toml_str(&text)
    }

    /// The active role's profile.
    pub fn role(&self) -> &RoleProfile {
        // `validate` guarantees the role exists; fall back to any role defensively.
        match self.roles.get(&self.agent.role) {
            Some(r) => r,
            None => self.roles.values().next().unwrap_or(&FALLBACK_ROLE),
        }
    }

    /// Honeyports in effect: the role's override, or the global set.
    pub fn effective_honeyports(&self) -> HoneyportConfig {
        self.role().honeyports.clone().unwrap_or_else(|| self.honeyports.clone())
    }
}

static FALLBACK_ROLE: RoleProfile = RoleProfile {
    name: String::new(),
    description: String::new(),
    inbound_multiplier: 1.0,
    outbound_multiplier: 1.0,
    outbound_fanout_expected: false,
    expected_service_ports: Vec::new(),
    expected_scanners: Vec::new(),
    outbound_severity: Severity::High,
    honeyports: None,
};

// ---------------------------------------------------------------------------------------------
// Durations.
// ---------------------------------------------------------------------------------------------

/// Parse a duration such as `"500ms"`, `"10s"`, `"15m"`, `"24h"`, `"7d"` or `"1.5h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s, m, h or d)"))?;
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("{s:?} has no number"));
    }
    let value: f64 = num.parse().map_err(|_| format!("{s:?}: bad number {num:?}"))?;
    let secs_per_unit = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        u => return Err(format!("{s:?}: unknown unit {u:?} (use ms, s, m, h or d)")),
    };
    let secs = value * secs_per_unit;
    if !secs.is_finite() || secs > 10.0 * 365.0 * 86_400.0 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Format a duration compactly with the largest exact unit (`"10s"`, `"15m"`, `"24h"`, `"500ms"`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, len) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000)] {
        if ms.is_multiple_of(len) {
            return format!("{}{unit}", ms / len);
        }
    }
    format!("{ms}ms")
}

// ---------------------------------------------------------------------------------------------
// CIDR matcher.
// ---------------------------------------------------------------------------------------------

/// An IPv4 or IPv6 network in CIDR notation. IPv4-mapped IPv6 addresses match IPv4 networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max}"));
        }
        Ok(Cidr { addr: mask(addr, prefix), prefix })
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Does this network contain `ip`?
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = canonical_ip(*ip);
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.addr
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("{s:?} is not an IP address"))?;
        let addr = canonical_ip(addr);
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().map_err(|_| format!("{s:?} has a bad prefix"))?,
            None => {
                if addr.is_ipv4() {
                    32
                } else {
                    128
                }
            }
        };
        Cidr::new(addr, prefix).map_err(|e| format!("{s:?}: {e}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, as the kernel keys sources) becomes plain IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6((bits & m).into())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw (stage 1) structures.
// ---------------------------------------------------------------------------------------------

/// Overlay `o` on `s`: every field set in `o` replaces the one in `s`.
macro_rules! overlay_fields {
    ($s:ident, $o:ident; $($f:ident),* $(,)?) => {
        { $( if $o.$f.is_some() { $s.$f = $o.$f; } )* }
    };
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent: Option<RawAgent>,
    xdp: Option<RawXdp>,
    honeyports: Option<RawHoneyports>,
    detect: Option<RawDetect>,
    allowlist: Option<RawAllowlist>,
    alerts: Option<RawAlerts>,
    response: Option<RawResponse>,
    fleet: Option<crate::fleet::config::RawFleet>,
    roles: Option<BTreeMap<String, RawRole>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponse {
    block_min_severity: Option<String>,
    block_ttl: Option<String>,
    max_blocked: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    interfaces: Option<Vec<String>>,
    role: Option<String>,
    sweep_interval: Option<String>,
    hostname: Option<String>,
    xdp_mode: Option<String>,
    outbound: Option<bool>,
    baseline: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawXdp {
    short_window: Option<String>,
    port_threshold: Option<u32>,
    host_threshold: Option<u32>,
    max_sources: Option<u32>,
    max_fingerprints: Option<u32>,
    max_procs: Option<u32>,
    ringbuf_bytes: Option<u32>,
    lookup_sockets: Option<bool>,
    verify_checksums: Option<bool>,
    first_contact: Option<bool>,
    enforce_blocklist: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHoneyports {
    tcp: Option<Vec<u16>>,
    udp: Option<Vec<u16>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrw {
    alpha: Option<f64>,
    beta: Option<f64>,
    theta0: Option<f64>,
    theta1: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetect {
    windows: Option<Vec<String>>,
    port_thresholds: Option<Vec<u32>>,
    host_thresholds: Option<Vec<u32>>,
    outbound_port_thresholds: Option<Vec<u32>>,
    outbound_host_thresholds: Option<Vec<u32>>,
    min_fail_ratio: Option<f64>,
    privileged_weight: Option<f64>,
    trw: Option<RawTrw>,
    trw_min_fanout: Option<u32>,
    slow_min_window: Option<String>,
    stealth_min: Option<u32>,
    weak_stealth_min: Option<u32>,
    evasion_min: Option<u32>,
    unsolicited_min: Option<u32>,
    decoy_window: Option<String>,
    decoy_min_sources: Option<u32>,
    decoy_min_ports: Option<u32>,
    decoy_min_overlap: Option<f64>,
    distributed_window: Option<String>,
    distributed_min_sources: Option<u32>,
    distributed_min_ports: Option<u32>,
    distributed_min_hosts: Option<u32>,
    max_inbound_entities: Option<u32>,
    max_outbound_entities: Option<u32>,
    entity_idle: Option<String>,
    baseline_margin: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllowlist {
    networks: Option<BTreeMap<String, Vec<String>>>,
    executables: Option<Vec<String>>,
    users: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    suppression_window: Option<String>,
    escalation_factor: Option<f64>,
    rate_limit: Option<f64>,
    burst: Option<u32>,
    summary_interval: Option<String>,
    min_severity: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    inherits: Option<String>,
    description: Option<String>,
    inbound_multiplier: Option<f64>,
    outbound_multiplier: Option<f64>,
    outbound_fanout_expected: Option<bool>,
    expected_service_ports: Option<Vec<u16>>,
    expected_scanners: Option<Vec<String>>,
    outbound_severity: Option<String>,
    honeyports: Option<RawHoneyports>,
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
                    return Err(ConfigError::invalid(format!("{path}.{k}"), msg.to_string()));
                }
            }
            Err(ConfigError::invalid(path, whole.to_string().trim().to_string()))
        }
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
    fn parse(s: &str) -> Result<RawConfig, ConfigError> {
        let table: toml::Table =
            s.parse().map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        let mut raw = RawConfig::default();
        for (k, v) in &table {
            match k.as_str() {
                "agent" => raw.agent = Some(de_section(k, v)?),
                "xdp" => raw.xdp = Some(de_section(k, v)?),
                "honeyports" => raw.honeyports = Some(de_section(k, v)?),
                "detect" => raw.detect = Some(de_section(k, v)?),
                "allowlist" => raw.allowlist = Some(de_section(k, v)?),
                "alerts" => raw.alerts = Some(de_section(k, v)?),
                "response" => raw.response = Some(de_section(k, v)?),
                "fleet" => raw.fleet = Some(de_section(k, v)?),
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
    fn overlay(&mut self, o: RawConfig) {
        fn sub<T: Default>(slot: &mut Option<T>, o: Option<T>, f: impl FnOnce(&mut T, T)) {
            if let Some(o) = o {
                f(slot.get_or_insert_with(T::default), o);
            }
        }
        sub(&mut self.agent, o.agent, |s, o| {
            overlay_fields!(s, o; interfaces, role, sweep_interval, hostname, xdp_mode, outbound, baseline)
        });
        sub(&mut self.xdp, o.xdp, |s, o| {
            overlay_fields!(s, o; short_window, port_threshold, host_threshold, max_sources,
                max_fingerprints, max_procs, ringbuf_bytes, lookup_sockets, verify_checksums,
                first_contact, enforce_blocklist)
        });
        sub(&mut self.honeyports, o.honeyports, |s, o| overlay_fields!(s, o; tcp, udp));
        sub(&mut self.detect, o.detect, |s, o| {
            let trw = o.trw;
            overlay_fields!(s, o; windows, port_thresholds, host_thresholds,
                outbound_port_thresholds, outbound_host_thresholds, min_fail_ratio,
                privileged_weight, trw_min_fanout, slow_min_window, stealth_min,
                weak_stealth_min, evasion_min, unsolicited_min, decoy_window, decoy_min_sources,
                decoy_min_ports, decoy_min_overlap, distributed_window, distributed_min_sources,
                distributed_min_ports, distributed_min_hosts, max_inbound_entities,
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
            overlay_fields!(s, o; suppression_window, escalation_factor, rate_limit, burst,
                summary_interval, min_severity)
        });
        sub(&mut self.response, o.response, |s, o| {
            overlay_fields!(s, o; block_min_severity, block_ttl, max_blocked)
        });
        sub(&mut self.fleet, o.fleet, |s, o| s.overlay(o));
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

    fn validate(self) -> Result<Config, ConfigError> {
        let agent = self.agent.unwrap_or_default();
        let xdp = self.xdp.unwrap_or_default();
        let hp = self.honeyports.unwrap_or_default();
        let det = self.detect.unwrap_or_default();
        let allow = self.allowlist.unwrap_or_default();
        let al = self.alerts.unwrap_or_default();
        let resp = self.response.unwrap_or_default();
        let raw_roles = self.roles.unwrap_or_default();
        let raw_fleet = self.fleet.unwrap_or_default();

        // Roles first: agent.role is checked against them.
        let mut roles = BTreeMap::new();
        for name in raw_roles.keys() {
            let role = resolve_role(name, &raw_roles)?;
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
        let agent = AgentConfig {
            interfaces,
            role,
            sweep_interval: positive(dur(agent.sweep_interval, "agent.sweep_interval")?, "agent.sweep_interval")?,
            hostname: agent.hostname.filter(|h| !h.is_empty()),
            xdp_mode,
            outbound: req(agent.outbound, "agent.outbound")?,
            baseline: agent.baseline.filter(|b| !b.is_empty()).map(PathBuf::from),
        };

        let ringbuf_bytes = req(xdp.ringbuf_bytes, "xdp.ringbuf_bytes")?;
        if !ringbuf_bytes.is_power_of_two() {
            return Err(ConfigError::invalid(
                "xdp.ringbuf_bytes",
                format!("{ringbuf_bytes} is not a power of two"),
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
            max_sources: nonzero(xdp.max_sources, "xdp.max_sources")?,
            max_fingerprints: nonzero(xdp.max_fingerprints, "xdp.max_fingerprints")?,
            max_procs: nonzero(xdp.max_procs, "xdp.max_procs")?,
            ringbuf_bytes,
            lookup_sockets: req(xdp.lookup_sockets, "xdp.lookup_sockets")?,
            verify_checksums: req(xdp.verify_checksums, "xdp.verify_checksums")?,
            first_contact: req(xdp.first_contact, "xdp.first_contact")?,
            enforce_blocklist: xdp.enforce_blocklist.unwrap_or(false),
        };

        let honeyports = honeyports(hp, "honeyports")?;

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
            max_inbound_entities: nonzero(det.max_inbound_entities, "detect.max_inbound_entities")? as usize,
            max_outbound_entities: nonzero(det.max_outbound_entities, "detect.max_outbound_entities")? as usize,
            entity_idle: positive(dur(det.entity_idle, "detect.entity_idle")?, "detect.entity_idle")?,
            baseline_margin: at_least(det.baseline_margin, 1.0, "detect.baseline_margin")?,
        };

        let mut networks = BTreeMap::new();
        for (name, list) in allow.networks.unwrap_or_default() {
            let mut cidrs = Vec::with_capacity(list.len());
            for (i, c) in list.iter().enumerate() {
                let cidr = c.parse::<Cidr>().map_err(|e| {
                    ConfigError::invalid(format!("allowlist.networks.{name}[{i}]"), e)
                })?;
                cidrs.push(cidr);
            }
            networks.insert(name, cidrs);
        }
        let allowlist = AllowlistConfig {
            networks,
            executables: allow.executables.unwrap_or_default(),
            users: allow.users.unwrap_or_default(),
        };

        let escalation_factor = req(al.escalation_factor, "alerts.escalation_factor")?;
        if escalation_factor.is_nan() || escalation_factor <= 1.0 {
            return Err(ConfigError::invalid(
                "alerts.escalation_factor",
                format!("{escalation_factor} must be greater than 1"),
            ));
        }
        let rate_limit = req(al.rate_limit, "alerts.rate_limit")?;
        if !(rate_limit > 0.0 && rate_limit.is_finite()) {
            return Err(ConfigError::invalid(
                "alerts.rate_limit",
                format!("{rate_limit} must be a positive number of alerts per second"),
            ));
        }
        let min_severity = req(al.min_severity, "alerts.min_severity")?;
        let alerts = AlertConfig {
            suppression_window: positive(dur(al.suppression_window, "alerts.suppression_window")?, "alerts.suppression_window")?,
            escalation_factor,
            rate_limit,
            burst: nonzero(al.burst, "alerts.burst")?,
            summary_interval: positive(dur(al.summary_interval, "alerts.summary_interval")?, "alerts.summary_interval")?,
            min_severity: severity(&min_severity, "alerts.min_severity")?,
        };

        let max_blocked = nonzero(resp.max_blocked, "response.max_blocked")?;
        if max_blocked > 4096 {
            return Err(ConfigError::invalid(
                "response.max_blocked",
                format!("{max_blocked} exceeds the kernel block list's 4096 entries"),
            ));
        }
        let block_min_severity = req(resp.block_min_severity, "response.block_min_severity")?;
        let response = ResponseConfig {
            block_min_severity: severity(&block_min_severity, "response.block_min_severity")?,
            block_ttl: positive(dur(resp.block_ttl, "response.block_ttl")?, "response.block_ttl")?,
            max_blocked,
        };

        let fleet = crate::fleet::config::validate(raw_fleet, detect.windows.len())?;
        Ok(Config { agent, xdp, honeyports, detect, allowlist, alerts, response, fleet, roles })
    }
}

/// Resolve a role, following `inherits` (default: `server`) for the fields it leaves unset.
fn resolve_role(name: &str, raw: &BTreeMap<String, RawRole>) -> Result<RoleProfile, ConfigError> {
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
            Some(h) => Some(honeyports(h, &p("honeyports"))?),
            None => None,
        },
    })
}

fn honeyports(h: RawHoneyports, path: &str) -> Result<HoneyportConfig, ConfigError> {
    let mut out = HoneyportConfig::default();
    for (proto, list, dst) in [("tcp", h.tcp, &mut out.tcp), ("udp", h.udp, &mut out.udp)] {
        let list = list.unwrap_or_default();
        if let Some(i) = list.iter().position(|p| *p == 0) {
            return Err(ConfigError::invalid(format!("{path}.{proto}[{i}]"), "port 0 is not valid"));
        }
        let mut list = list;
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

#[cfg(test)]
mod tests {
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
        for role in ["server", "workstation", "scanner", "dns-resolver", "proxy", "ci-runner"] {
            assert!(c.roles.contains_key(role), "missing role {role}");
        }
        assert_eq!(c.role().name, "server");
        assert_eq!(c.xdp.ringbuf_bytes, 1 << 20);
        assert_eq!(c.alerts.min_severity, Severity::Info);
    }

    #[test]
    fn default_honeyports_avoid_real_services() {
        let c = Config::default_embedded();
        let real = [22, 25, 53, 80, 110, 143, 443, 445, 993, 3306, 3389, 5432, 6379, 8080, 8443];
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
        assert!(c.effective_honeyports().udp.is_empty());
        // Global honeyports for other roles.
        assert!(Config::default_embedded().effective_honeyports().tcp.contains(&4444));
    }

    #[test]
    fn bad_ringbuf_names_key() {
        let e = err("[xdp]\nringbuf_bytes = 1000\n");
        assert_eq!(e, "xdp.ringbuf_bytes: 1000 is not a power of two");
        let e = err("[xdp]\nringbuf_bytes = 1024\n");
        assert!(e.starts_with("xdp.ringbuf_bytes:") && e.contains("page size"), "{e}");
    }

    #[test]
    fn unknown_keys_name_section() {
        assert_eq!(err("[xdp]\nfoo = 1\n"), "unknown key `foo` in [xdp]");
        assert_eq!(err("[detect.trw]\ngamma = 1\n"), "unknown key `gamma` in [detect.trw]");
        assert_eq!(err("[roles.server]\ncolour = \"red\"\n"), "unknown key `colour` in [roles.server]");
        assert_eq!(err("[bogus]\nx = 1\n"), "unknown key `bogus` in [top level]");
    }

    #[test]
    fn unknown_role_lists_known() {
        let e = err("[agent]\nrole = \"bogus\"\n");
        assert!(e.starts_with("agent.role: unknown role \"bogus\" (known: ci-runner, dns-resolver"), "{e}");
        assert!(e.contains("server") && e.contains("workstation"), "{e}");
    }

    #[test]
    fn type_and_value_errors_name_key() {
        let e = err("[xdp]\nport_threshold = \"many\"\n");
        assert!(e.starts_with("xdp.port_threshold:"), "{e}");
        let e = err("[agent]\nsweep_interval = \"10 parsecs\"\n");
        assert!(e.starts_with("agent.sweep_interval:"), "{e}");
        let e = err("[detect]\nwindows = [\"10s\", \"5s\"]\nport_thresholds=[1,2]\nhost_thresholds=[1,2]\noutbound_port_thresholds=[1,2]\noutbound_host_thresholds=[1,2]\n");
        assert!(e.starts_with("detect.windows[1]: windows must be strictly increasing"), "{e}");
        let e = err("[detect]\nwindows = [\"10s\"]\n");
        assert!(e.starts_with("detect.port_thresholds: has 4 entries"), "{e}");
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
        let e = err("[alerts]\nescalation_factor = 1.0\n");
        assert!(e.starts_with("alerts.escalation_factor:"), "{e}");
        assert!(err("[xdp\n").starts_with("invalid TOML"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 3 s "), Ok(Duration::from_secs(3)));
        for bad in ["", "10", "s", "10x", "-1s", "1.2.3s", "99999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_secs(900)), "15m");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "24h");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn cidr_matching() {
        let c: Cidr = "10.1.0.0/16".parse().expect("cidr");
        assert!(c.contains(&"10.1.200.3".parse().expect("ip")));
        assert!(!c.contains(&"10.2.0.1".parse().expect("ip")));
        // IPv4-mapped IPv6 as keyed by the kernel.
        assert!(c.contains(&"::ffff:10.1.2.3".parse().expect("ip")));
        let v6: Cidr = "fd00:1::/32".parse().expect("cidr");
        assert!(v6.contains(&"fd00:1:ffff::1".parse().expect("ip")));
        assert!(!v6.contains(&"fd00:2::1".parse().expect("ip")));
        assert!(!v6.contains(&"10.1.2.3".parse().expect("ip")));
        let host: Cidr = "192.0.2.7".parse().expect("cidr");
        assert_eq!(host.prefix(), 32);
        assert!(host.contains(&"192.0.2.7".parse().expect("ip")));
        let all: Cidr = "0.0.0.0/0".parse().expect("cidr");
        assert!(all.contains(&"8.8.8.8".parse().expect("ip")));
        assert_eq!("10.1.2.3/8".parse::<Cidr>().expect("cidr").to_string(), "10.0.0.0/8");
        assert!("10.0.0.0/40".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
        let c = Config::from_toml_str("[allowlist.networks]\nmon = [\"10.9.0.0/24\"]\n").expect("ok");
        assert_eq!(c.allowlist.network_for(&"10.9.0.4".parse().expect("ip")), Some("mon"));
        assert_eq!(c.allowlist.network_for(&"10.8.0.4".parse().expect("ip")), None);
    }
}
