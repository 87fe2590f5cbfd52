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
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;


use crate::vocab::{Cidr, Severity};

/// The embedded default configuration (printed by `scanwatch config default`).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../default_config.toml");

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
    /// All roles (built-in ones from the defaults plus user additions), by name.
    pub roles: BTreeMap<String, RoleProfile>,
    /// `[sinks.NAME]`, each validated by its own sink type; empty means stdout.
    pub sinks: Vec<crate::sinks::SinkSpec>,
    /// `[depth]`: first payloads, TLS fingerprints, the actor timeline.
    pub depth: DepthConfig,
    /// `[fleet]` (NATS publishing and the correlator; `config/fleet.rs`).
    pub fleet: fleet::FleetConfig,
    pub metrics: MetricsConfig,
    pub control: ControlConfig,
    pub evidence: EvidenceConfig,
    pub enrich: EnrichConfig,
    /// Accepted but probably not meant (a CIDR with host bits set, a honeyport list replacing
    /// the defaults): `config check` and `run` print them.
    pub warnings: Vec<String>,
}

/// XDP attach mode (`agent.xdp_mode`, `run --xdp-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeSetting {
    /// Native (driver) mode, falling back to generic SKB mode.
    Auto,
    Native,
    Skb,
}

/// How an interface's traffic is judged (`agent.interface_modes`; detected when not set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum InterfaceMode {
    /// Traffic is for this host: the socket table tells open from closed ports.
    Host,
    /// The host forwards: traffic to addresses that are not the host's is judged by the
    /// replies seen on the interfaces it crosses.
    Gateway,
    /// Mirror (SPAN) port: nothing is for this host; every packet is judged by its replies.
    Mirror,
}

impl InterfaceMode {
    pub fn name(self) -> &'static str {
        match self {
            InterfaceMode::Host => "host",
            InterfaceMode::Gateway => "gateway",
            InterfaceMode::Mirror => "mirror",
        }
    }

    pub fn parse(s: &str) -> Option<InterfaceMode> {
        match s {
            "host" => Some(InterfaceMode::Host),
            "gateway" => Some(InterfaceMode::Gateway),
            "mirror" => Some(InterfaceMode::Mirror),
            _ => None,
        }
    }
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
    /// Interface → mode, overriding detection (`agent.interface_modes`).
    pub interface_modes: BTreeMap<String, InterfaceMode>,
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
    /// Skip the socket lookup for TCP ports no socket uses (`xdp.port_filter`).
    pub port_filter: bool,
    pub verify_checksums: bool,
    /// Hold a source's first scan-shaped packet in the first-contact table (no per-source state
    /// for one-packet sources: spoofed floods stay cheap).
    pub first_contact: bool,
    /// Drop packets from sources in the kernel block list (opt-in).
    pub enforce_blocklist: bool,
    /// New-fingerprint events per second the XDP program may send (0 = no limit); beyond it they
    /// are shed and counted (`fingerprint_events_shed`), the fingerprint stays in its map.
    pub fingerprint_events_per_sec: u32,
    /// Outbound events one local process may send per second (0 = no limit); beyond it they are
    /// counted in the kernel (`proc_events_shed`) and reported by the agent's process sweep.
    pub process_events_per_sec: u32,
    /// A process's sends / connects to one destination and port are one event per this window
    /// (zero = every send is an event); repeats are counted in the kernel.
    pub process_pair_window: std::time::Duration,
}

/// Honeyports: ports no legitimate service uses; any touch alerts immediately. In the file,
/// `tcp` / `udp` replace the default lists and `tcp_extra` / `udp_extra` add to them.
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
    /// Sources probing disjoint slices of one target's ports at once that make one
    /// `distributed_scan` (a split port range).
    pub split_min_sources: u32,
    /// Distinct ports each of them must probe within `distributed_window`.
    pub split_min_ports: u32,
    /// Most a member's port range (and port sample) may overlap another member's.
    pub split_max_overlap: f64,
    /// Distinct IP protocol numbers from one source within a window that make a `protocol_scan`.
    pub protocol_scan_min: u32,
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
    /// At most one update line per open incident per this interval (severity rise or counts so far).
    pub update_interval: Duration,
    /// An incident closes (with its `final` line) when its actor has been quiet this long.
    pub close_after: Duration,
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
    /// Most sources blocked at once (the kernel map holds 4,096); past it the lowest-confidence
    /// (then oldest) automatic block gives way to a new one at least as confident.
    pub max_blocked: u32,
    /// Report what would be blocked (`would_block` in the alert), never insert.
    pub dry_run: bool,
    /// Named CIDR sets (measurement projects, partners) alerted on but never blocked.
    pub never_block: BTreeMap<String, Vec<Cidr>>,
}

impl ResponseConfig {
    /// Name of the first never-block set containing `ip`.
    pub fn never_block_set(&self, ip: &IpAddr) -> Option<&str> {
        self.never_block.iter().find(|(_, c)| c.iter().any(|c| c.contains(ip))).map(|(n, _)| n.as_str())
    }
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
        let notes = replaced_defaults(&defaults, &user);
        let mut merged = defaults;
        merged.overlay(user);
        let mut cfg = merged.validate()?;
        cfg.warnings.extend(notes);
        Ok(cfg)
    }

    /// Read and parse a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_layers(Some(path), &toml::Table::new())
    }

    /// The configuration in layers, validated once: the embedded defaults, then the file (if
    /// any), then `overrides` — the command line's flags as a TOML table (`agent.role`, ...), so
    /// a bad flag value is reported with its configuration key like any other.
    pub fn load_layers(path: Option<&Path>, overrides: &toml::Table) -> Result<Config, ConfigError> {
        let mut merged = RawConfig::parse(DEFAULT_CONFIG_TOML)?;
        let mut notes = Vec::new();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
            let user = RawConfig::parse(&text)?;
            notes = replaced_defaults(&merged, &user);
            merged.overlay(user);
        }
        merged.overlay(RawConfig::from_table(overrides)?);
        let mut cfg = merged.validate()?;
        cfg.warnings.extend(notes);
        Ok(cfg)
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

/// Notes for user lists that replace default ones and drop some of their entries.
fn replaced_defaults(defaults: &RawConfig, user: &RawConfig) -> Vec<String> {
    let mut out = Vec::new();
    let (Some(d), Some(u)) = (&defaults.honeyports, &user.honeyports) else { return out };
    for (proto, dl, ul) in [("tcp", &d.tcp, &u.tcp), ("udp", &d.udp, &u.udp)] {
        let (Some(dl), Some(ul)) = (dl, ul) else { continue };
        let dropped: Vec<String> = dl.iter().filter(|p| !ul.contains(p)).map(u16::to_string).collect();
        if !dropped.is_empty() {
            out.push(format!(
                "honeyports.{proto} replaces the default list: {} default honeyport(s) are off ({}); \
                 to add ports to the defaults instead, use honeyports.{proto}_extra",
                dropped.len(),
                dropped.join(", ")
            ));
        }
    }
    out
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



/// Overlay `o` on `s`: every field set in `o` replaces the one in `s`.
macro_rules! overlay_fields {
    ($s:ident, $o:ident; $($f:ident),* $(,)?) => {
        { $( if $o.$f.is_some() { $s.$f = $o.$f; } )* }
    };
}

mod depth;
mod ops;
pub mod fleet;
mod raw;
mod validate;

pub use ops::{ControlConfig, EnrichConfig, EvidenceConfig, MetricsConfig};
#[cfg(test)]
mod tests;

use raw::RawConfig;
pub use depth::{DepthConfig, PatternKind, PatternSet, MAX_ACTORS_LIMIT};
