//! Operations sections: `[metrics]`, `[control]`, `[evidence]`, `[enrich]` and the response's
//! `dry_run` / `never_block` keys — raw (stage 1) and validated (stage 2) forms in one place.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::vocab::{parse_duration, Cidr};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    pub(super) socket: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvidence {
    pub(super) dir: Option<String>,
    pub(super) duration: Option<String>,
    pub(super) snaplen: Option<u32>,
    pub(super) max_file_bytes: Option<u64>,
    pub(super) max_files: Option<u32>,
    pub(super) max_active: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnrich {
    pub(super) asn_db: Option<String>,
}

/// `[metrics]`: the Prometheus text endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Address of the HTTP listener (`GET /metrics`); `None` = off (`listen = ""`).
    pub listen: Option<SocketAddr>,
}

/// `[control]`: the root-only status / response socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Unix socket path; `None` = off (`socket = ""`).
    pub socket: Option<PathBuf>,
}

/// `[evidence]`: per-alert packet capture of the alerted source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceConfig {
    /// Directory of the pcap files; `None` = no capture (`dir = ""`).
    pub dir: Option<PathBuf>,
    /// How long the source's packets are captured after its alert.
    pub duration: Duration,
    /// Bytes kept of each packet (headers and the start of the payload).
    pub snaplen: u32,
    /// Largest pcap file; capture of that alert stops there.
    pub max_file_bytes: u64,
    /// Most pcap files kept in `dir`; the oldest are removed.
    pub max_files: u32,
    /// Most captures running at once; further alerts are not captured (counted).
    pub max_active: u32,
}

/// `[enrich]`: offline enrichment databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrichConfig {
    /// MaxMind-format ASN database (GeoLite2-ASN / an ipinfo / iptoasn mmdb); `None` = off.
    pub asn_db: Option<PathBuf>,
}

fn opt_path(s: Option<String>) -> Option<PathBuf> {
    s.filter(|s| !s.is_empty()).map(PathBuf::from)
}

pub(super) fn metrics(r: Option<RawMetrics>) -> Result<MetricsConfig, ConfigError> {
    let r = r.unwrap_or_default();
    let listen = match r.listen.filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| {
            ConfigError::Invalid { key: "metrics.listen".into(), reason: format!("{s:?} is not ip:port ({e})") }
        })?),
    };
    Ok(MetricsConfig { listen })
}

pub(super) fn control(r: Option<RawControl>) -> Result<ControlConfig, ConfigError> {
    let socket = opt_path(r.unwrap_or_default().socket);
    if let Some(p) = &socket {
        if !p.is_absolute() {
            return Err(ConfigError::Invalid { key: "control.socket".into(), reason: format!("{} is not an absolute path", p.display()) });
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if p.as_os_str().len() > 107 {
            return Err(ConfigError::Invalid { key: "control.socket".into(), reason: "longer than 107 bytes".into() });
        }
    }
    Ok(ControlConfig { socket })
}

pub(super) fn evidence(r: Option<RawEvidence>) -> Result<EvidenceConfig, ConfigError> {
    let r = r.unwrap_or_default();
    let bad = |k: &str, reason: String| ConfigError::Invalid { key: format!("evidence.{k}"), reason };
    let duration = match r.duration {
        Some(s) => parse_duration(&s).map_err(|e| bad("duration", e))?,
        None => Duration::from_secs(300),
    };
    if duration.is_zero() {
        return Err(bad("duration", "must be positive".into()));
    }
    let snaplen = r.snaplen.unwrap_or(256);
    if !(64..=65_535).contains(&snaplen) {
        return Err(bad("snaplen", format!("{snaplen} is not in 64 ..= 65535")));
    }
    let max_file_bytes = r.max_file_bytes.unwrap_or(16 << 20);
    if max_file_bytes < 4096 {
        return Err(bad("max_file_bytes", format!("{max_file_bytes} is below 4096")));
    }
    let max_files = r.max_files.unwrap_or(100);
    let max_active = r.max_active.unwrap_or(8);
    if max_files == 0 {
        return Err(bad("max_files", "must be at least 1".into()));
    }
    if max_active == 0 || max_active > 256 {
        return Err(bad("max_active", format!("{max_active} is not in 1 ..= 256")));
    }
    Ok(EvidenceConfig { dir: opt_path(r.dir), duration, snaplen, max_file_bytes, max_files, max_active })
}

pub(super) fn enrich(r: Option<RawEnrich>) -> Result<EnrichConfig, ConfigError> {
    Ok(EnrichConfig { asn_db: opt_path(r.unwrap_or_default().asn_db) })
}

/// `response.never_block`: named CIDR sets that are alerted on but never blocked.
pub(super) fn never_block(r: Option<BTreeMap<String, Vec<String>>>) -> Result<BTreeMap<String, Vec<Cidr>>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, list) in r.unwrap_or_default() {
        let mut cidrs = Vec::with_capacity(list.len());
        for (i, c) in list.iter().enumerate() {
            cidrs.push(c.parse::<Cidr>().map_err(|e| ConfigError::Invalid { key: format!("response.never_block.{name}[{i}]"), reason: e })?);
        }
        out.insert(name, cidrs);
    }
    Ok(out)
}
