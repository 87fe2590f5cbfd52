//! `[depth]`: protocol depth (first client payloads, TLS ClientHellos, the per-actor timeline and
//! its persisted store). Raw form, overlay and validation in one file; `[depth.patterns.NAME]`
//! tables merge by name, so a user file adds its own pattern sets or replaces a named default.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::vocab::parse_duration;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDepth {
    pub(super) enabled: Option<bool>,
    pub(super) enumeration_min: Option<u32>,
    pub(super) banner_grab_min: Option<u32>,
    pub(super) auth_attempts: Option<u32>,
    pub(super) auth_window: Option<String>,
    pub(super) store_path: Option<String>,
    pub(super) retention: Option<String>,
    pub(super) max_actors: Option<u32>,
    pub(super) save_interval: Option<String>,
    pub(super) cluster_by_ja4: Option<bool>,
    pub(super) patterns: Option<BTreeMap<String, RawPatternSet>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPatternSet {
    pub(super) kind: Option<String>,
    #[serde(rename = "match")]
    pub(super) matches: Option<Vec<String>>,
}

impl RawDepth {
    pub(super) fn overlay(&mut self, o: RawDepth) {
        macro_rules! take {
            ($($f:ident),*) => { $( if o.$f.is_some() { self.$f = o.$f; } )* };
        }
        take!(enabled, enumeration_min, banner_grab_min, auth_attempts, auth_window, store_path, retention,
            max_actors, save_interval, cluster_by_ja4);
        if let Some(p) = o.patterns {
            self.patterns.get_or_insert_with(BTreeMap::new).extend(p);
        }
    }

    pub(super) fn validate(self) -> Result<DepthConfig, ConfigError> {
        let dur = |v: Option<String>, key: &str| -> Result<Duration, ConfigError> {
            let s = v.ok_or_else(|| ConfigError::invalid(key, "missing"))?;
            let d = parse_duration(&s).map_err(|e| ConfigError::invalid(key, e))?;
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be positive"));
            }
            Ok(d)
        };
        let num = |v: Option<u32>, key: &str| -> Result<u32, ConfigError> {
            match v {
                Some(0) => Err(ConfigError::invalid(key, "must be at least 1")),
                Some(n) => Ok(n),
                None => Err(ConfigError::invalid(key, "missing")),
            }
        };
        let mut patterns = Vec::new();
        for (name, p) in self.patterns.unwrap_or_default() {
            let key = format!("depth.patterns.{name}");
            let kind_s = p.kind.ok_or_else(|| ConfigError::invalid(format!("{key}.kind"), "missing"))?;
            let kind = PatternKind::from_name(&kind_s).ok_or_else(|| {
                ConfigError::invalid(
                    format!("{key}.kind"),
                    format!("unknown kind {kind_s:?} (use {})", PatternKind::NAMES.join(", ")),
                )
            })?;
            let mut matches = Vec::new();
            for (i, m) in p.matches.unwrap_or_default().into_iter().enumerate() {
                if m.is_empty() || m.len() > 256 {
                    return Err(ConfigError::invalid(format!("{key}.match[{i}]"), "must be 1 to 256 bytes"));
                }
                matches.push(m.to_ascii_lowercase());
            }
            patterns.push(PatternSet { name, kind, matches });
        }
        let max_actors = num(self.max_actors, "depth.max_actors")?;
        if max_actors > MAX_ACTORS_LIMIT {
            return Err(ConfigError::invalid(
                "depth.max_actors",
                format!("{max_actors} exceeds {MAX_ACTORS_LIMIT} (the store's documented size bound)"),
            ));
        }
        Ok(DepthConfig {
            enabled: self.enabled.unwrap_or(true),
            enumeration_min: num(self.enumeration_min, "depth.enumeration_min")?,
            banner_grab_min: num(self.banner_grab_min, "depth.banner_grab_min")?,
            auth_attempts: num(self.auth_attempts, "depth.auth_attempts")?,
            auth_window: dur(self.auth_window, "depth.auth_window")?,
            store_path: self.store_path.filter(|s| !s.is_empty()).map(PathBuf::from),
            retention: dur(self.retention, "depth.retention")?,
            max_actors,
            save_interval: dur(self.save_interval, "depth.save_interval")?,
            cluster_by_ja4: self.cluster_by_ja4.unwrap_or(true),
            patterns,
        })
    }
}

/// Upper bound of `depth.max_actors` (each stored actor is at most ~2.5 KiB of JSON).
pub const MAX_ACTORS_LIMIT: u32 = 262_144;

/// What a pattern set recognises, and where in a request it looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PatternKind {
    /// Enumeration: a substring of the User-Agent header (zgrab, masscan, Nmap Scripting Engine, ...).
    ScannerAgent,
    /// Enumeration: a substring of the request target of a scanner script (NSE's 404 checks, ...).
    NseRequest,
    /// Exploitation: a substring of the request target, raw or percent-decoded (`../`, `%2e%2e`).
    PathTraversal,
    /// Exploitation: a substring of the decoded target, header values or body (`;wget `, `$(`).
    ShellMetacharacters,
    /// Exploitation: a substring of the decoded request path (`/cgi-bin/`, `/.env`, ...).
    ExploitPath,
}

impl PatternKind {
    pub const NAMES: [&'static str; 5] =
        ["scanner_agent", "nse_request", "path_traversal", "shell_metacharacters", "exploit_path"];

    pub fn from_name(s: &str) -> Option<PatternKind> {
        Some(match s {
            "scanner_agent" => PatternKind::ScannerAgent,
            "nse_request" => PatternKind::NseRequest,
            "path_traversal" => PatternKind::PathTraversal,
            "shell_metacharacters" => PatternKind::ShellMetacharacters,
            "exploit_path" => PatternKind::ExploitPath,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PatternKind::ScannerAgent => "scanner_agent",
            PatternKind::NseRequest => "nse_request",
            PatternKind::PathTraversal => "path_traversal",
            PatternKind::ShellMetacharacters => "shell_metacharacters",
            PatternKind::ExploitPath => "exploit_path",
        }
    }

    /// Does a match mean an exploitation attempt (rather than enumeration)?
    pub fn is_exploit(self) -> bool {
        matches!(self, PatternKind::PathTraversal | PatternKind::ShellMetacharacters | PatternKind::ExploitPath)
    }
}

/// One named list of case-insensitive substrings (stored lower-case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternSet {
    pub name: String,
    pub kind: PatternKind,
    pub matches: Vec<String>,
}

/// `[depth]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthConfig {
    pub enabled: bool,
    /// Recognised probes / scanner requests from one actor that make it `enumeration`.
    pub enumeration_min: u32,
    /// Connections closed without client data (banner grabs, nmap's NULL probe) that count as
    /// enumeration on their own.
    pub banner_grab_min: u32,
    /// Authentication attempts (HTTP Authorization headers, POSTs to login paths) within
    /// `auth_window` that count as an exploitation attempt.
    pub auth_attempts: u32,
    pub auth_window: Duration,
    /// The persisted actor store (JSON); None keeps actors in memory only.
    pub store_path: Option<PathBuf>,
    /// How long an actor is remembered after it was last seen.
    pub retention: Duration,
    /// Most actors kept (least recently seen dropped first).
    pub max_actors: u32,
    /// How often the store is written (and at shutdown).
    pub save_interval: Duration,
    /// Sources sharing a JA4 and a TCP fingerprint are one actor (cluster) on the timeline.
    pub cluster_by_ja4: bool,
    pub patterns: Vec<PatternSet>,
}

impl DepthConfig {
    /// Pattern sets of one kind.
    pub fn sets(&self, kind: PatternKind) -> impl Iterator<Item = &PatternSet> {
        self.patterns.iter().filter(move |p| p.kind == kind)
    }
}
