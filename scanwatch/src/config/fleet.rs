//! `[fleet]`: NATS connection, agent publishing and correlator settings. Raw (all optional,
//! unknown keys rejected) → validated [`FleetConfig`], errors naming `fleet.<key>`.
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::vocab::parse_duration;

/// Longest agent id / site name (a NATS subject token).
pub const MAX_NAME: usize = 64;

/// Names (agent ids, sites) are subject tokens: ASCII letters, digits, `-` and `_`.
pub fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub servers: Option<Vec<String>>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub nkey_seed_file: Option<String>,
    pub tls_ca: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub site: Option<String>,
    pub agent_id: Option<String>,
    pub publish_interval: Option<String>,
    pub buffer: Option<u32>,
    pub shards: Option<u32>,
    pub subject_prefix: Option<String>,
    pub stream: Option<String>,
    pub retention: Option<String>,
    pub group: Option<String>,
    pub lease: Option<String>,
    pub ack_wait: Option<String>,
    pub replay: Option<String>,
    pub host_thresholds: Option<Vec<u32>>,
}

impl RawFleet {
    /// Overlay `o` (the user's) on `self` (the defaults).
    pub fn overlay(&mut self, o: RawFleet) {
        macro_rules! take {
            ($($f:ident),*) => { $( if o.$f.is_some() { self.$f = o.$f; } )* };
        }
        take!(servers, user, password, nkey_seed_file, tls_ca, tls_cert, tls_key, site, agent_id,
            publish_interval, buffer, shards, subject_prefix, stream, retention, group, lease,
            ack_wait, replay, host_thresholds);
    }
}

/// Validated `[fleet]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// NATS URLs (`nats://host:4222`, `tls://host:4222`); empty = fleet publishing off.
    pub servers: Vec<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub nkey_seed_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub site: String,
    /// Default: the agent's host name (made subject-safe).
    pub agent_id: Option<String>,
    pub publish_interval: Duration,
    /// Records buffered by the agent (channel + unsent batches) before it drops.
    pub buffer: u32,
    pub shards: u32,
    pub subject_prefix: String,
    pub stream: String,
    /// Stream max age (the correlator creates the stream).
    pub retention: Duration,
    /// Correlator group: durable consumer and lease names start with it.
    pub group: String,
    pub lease: Duration,
    pub ack_wait: Duration,
    /// How much of a shard's history a correlator replays when it takes the shard over.
    pub replay: Duration,
    /// Fleet-wide distinct-destination thresholds per `detect.windows` (the correlator's
    /// `detect.host_thresholds`).
    pub host_thresholds: Vec<u32>,
}

impl FleetConfig {
    pub fn enabled(&self) -> bool {
        !self.servers.is_empty()
    }
}

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: format!("fleet.{key}"), reason: reason.into() }
}

fn req<T>(v: Option<T>, key: &str) -> Result<T, ConfigError> {
    v.ok_or_else(|| bad(key, "missing (no default)"))
}

fn duration(v: Option<String>, key: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(&req(v, key)?).map_err(|e| bad(key, e))?;
    if d.is_zero() {
        return Err(bad(key, "must be greater than zero"));
    }
    Ok(d)
}

fn path(v: Option<String>) -> Option<PathBuf> {
    v.filter(|s| !s.is_empty()).map(PathBuf::from)
}

/// Validate; `n_windows` is the length of `detect.windows`.
pub fn validate(r: RawFleet, n_windows: usize) -> Result<FleetConfig, ConfigError> {
    let servers = r.servers.unwrap_or_default();
    for (i, s) in servers.iter().enumerate() {
        let rest = s.split_once("://").map_or(s.as_str(), |(scheme, rest)| {
            if matches!(scheme, "nats" | "tls") {
                rest
            } else {
                ""
            }
        });
        let host_port = rest.rsplit_once('@').map_or(rest, |(_, hp)| hp);
        if host_port.is_empty() || host_port.contains(['/', ' ']) {
            return Err(bad(&format!("servers[{i}]"), format!("{s:?} is not nats://host[:port] or tls://host[:port]")));
        }
    }
    let user = r.user.filter(|s| !s.is_empty());
    let password = r.password.filter(|s| !s.is_empty());
    if password.is_some() && user.is_none() {
        return Err(bad("password", "set without fleet.user"));
    }
    let nkey_seed_file = path(r.nkey_seed_file);
    if nkey_seed_file.is_some() && user.is_some() {
        return Err(bad("nkey_seed_file", "use either fleet.user/password or an nkey, not both"));
    }
    let (tls_cert, tls_key) = (path(r.tls_cert), path(r.tls_key));
    if tls_cert.is_some() != tls_key.is_some() {
        return Err(bad(if tls_cert.is_some() { "tls_key" } else { "tls_cert" }, "client certificate and key go together"));
    }
    let site = req(r.site, "site")?;
    if !name_ok(&site) {
        return Err(bad("site", format!("{site:?}: 1-64 letters, digits, '-' or '_' (it is a subject token)")));
    }
    let agent_id = r.agent_id.filter(|s| !s.is_empty());
    if let Some(a) = &agent_id {
        if !name_ok(a) {
            return Err(bad("agent_id", format!("{a:?}: 1-64 letters, digits, '-' or '_' (it is a subject token)")));
        }
    }
    let buffer = req(r.buffer, "buffer")?;
    if buffer == 0 {
        return Err(bad("buffer", "must be at least 1"));
    }
    let shards = req(r.shards, "shards")?;
    if !(1..=1024).contains(&shards) {
        return Err(bad("shards", format!("{shards} is not in 1..=1024")));
    }
    let token_list = |v: Option<String>, key: &str| -> Result<String, ConfigError> {
        let s = req(v, key)?;
        if s.is_empty() || !s.split('.').all(name_ok) {
            return Err(bad(key, format!("{s:?}: dot-separated tokens of letters, digits, '-' or '_'")));
        }
        Ok(s)
    };
    let subject_prefix = token_list(r.subject_prefix, "subject_prefix")?;
    let stream = req(r.stream, "stream")?;
    if !name_ok(&stream) {
        return Err(bad("stream", format!("{stream:?}: letters, digits, '-' or '_'")));
    }
    let group = req(r.group, "group")?;
    if !name_ok(&group) {
        return Err(bad("group", format!("{group:?}: letters, digits, '-' or '_'")));
    }
    let host_thresholds = req(r.host_thresholds, "host_thresholds")?;
    if host_thresholds.len() != n_windows {
        return Err(bad(
            "host_thresholds",
            format!("has {} entries but detect.windows has {n_windows}", host_thresholds.len()),
        ));
    }
    if let Some(i) = host_thresholds.iter().position(|t| *t == 0) {
        return Err(bad(&format!("host_thresholds[{i}]"), "must be at least 1"));
    }
    let lease = duration(r.lease, "lease")?;
    if lease < Duration::from_secs(1) {
        return Err(bad("lease", "must be at least 1s"));
    }
    Ok(FleetConfig {
        servers,
        user,
        password,
        nkey_seed_file,
        tls_ca: path(r.tls_ca),
        tls_cert,
        tls_key,
        site,
        agent_id,
        publish_interval: duration(r.publish_interval, "publish_interval")?,
        buffer,
        shards,
        subject_prefix,
        stream,
        retention: duration(r.retention, "retention")?,
        group,
        lease,
        ack_wait: duration(r.ack_wait, "ack_wait")?,
        replay: duration(r.replay, "replay")?,
        host_thresholds,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(s: &str) -> String {
        Config::from_toml_str(s).map(|_| ()).expect_err("should fail").to_string()
    }

    #[test]
    fn defaults_leave_fleet_off() {
        let c = Config::default_embedded();
        assert!(!c.fleet.enabled());
        assert_eq!(c.fleet.host_thresholds.len(), c.detect.windows.len());
    }

    #[test]
    fn fleet_errors_name_the_key() {
        assert!(err("[fleet]\nservers = [\"http://x\"]").starts_with("fleet.servers[0]:"));
        assert!(err("[fleet]\npassword = \"x\"").starts_with("fleet.password:"));
        assert!(err("[fleet]\nsite = \"a.b\"").starts_with("fleet.site:"));
        assert!(err("[fleet]\nshards = 0").starts_with("fleet.shards:"));
        assert!(err("[fleet]\ntls_cert = \"/c.pem\"").starts_with("fleet.tls_key:"));
        assert!(err("[fleet]\nhost_thresholds = [1]").starts_with("fleet.host_thresholds:"));
        assert!(err("[fleet]\npublish_interval = \"soon\"").starts_with("fleet.publish_interval:"));
        assert_eq!(err("[fleet]\nbogus = 1"), "unknown key `bogus` in [fleet]");
        let ok = Config::from_toml_str(
            "[fleet]\nservers = [\"nats://127.0.0.1:4222\"]\nuser = \"a\"\npassword = \"b\"\nsite = \"dc-1\"",
        )
        .expect("valid");
        assert!(ok.fleet.enabled());
        assert_eq!(ok.fleet.site, "dc-1");
    }
}
