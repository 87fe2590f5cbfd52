//! Sinks: where rendered findings go. Each sink type lives in its own file with its own
//! configuration struct, parsed from a `[sinks.NAME]` table (`type = "..."` picks the sink),
//! validated apart from being built (a bad key is named by `config check` before anything opens),
//! and built into a [`Sink`] when the pipeline starts. Adding a sink type: its file plus one line
//! in [`REGISTRY`].
//!
//! A sink that fails is retried a bounded number of times per finding; what it still cannot
//! deliver is counted as dropped and reported on stderr — a finding is never lost silently.
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::alert::Alert;

pub mod file;
pub mod stdout;
pub mod syslog;

/// Every sink type: its `type` name and its configuration parser.
pub const REGISTRY: &[(&str, ParseFn)] = &[
    ("stdout", stdout::StdoutConfig::parse),
    ("file", file::FileConfig::parse),
    ("syslog", syslog::SyslogConfig::parse),
];

/// Parses a sink's own table (without the `type` key) into its validated configuration.
pub type ParseFn = fn(&toml::Table) -> Result<Arc<dyn SinkConfig>, SinkConfigError>;

/// A configuration error inside one sink's table: `key` is relative to the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SinkConfigError {
    pub key: String,
    pub reason: String,
}

impl SinkConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        SinkConfigError { key: key.into(), reason: reason.into() }
    }

    /// From a serde error of the table (unknown key, wrong type).
    pub fn from_toml(e: &toml::de::Error) -> Self {
        let msg = e.message().to_string();
        match msg.strip_prefix("unknown field `").and_then(|r| r.split_once('`')) {
            Some((k, _)) => SinkConfigError::new(k, "unknown key"),
            None => SinkConfigError::new("(table)", msg),
        }
    }
}

/// Delivering one finding failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot render the finding: {0}")]
    Render(#[from] serde_json::Error),
    #[error("{0}")]
    Other(String),
}

/// A sink's validated configuration.
pub trait SinkConfig: fmt::Debug + Send + Sync {
    /// Open the sink.
    fn build(&self) -> Result<Box<dyn Sink>, SinkError>;
}

/// A destination for findings.
pub trait Sink: Send {
    /// Deliver one finding; an error means it was not delivered (the caller retries).
    fn write(&mut self, alert: &Alert) -> Result<(), SinkError>;
    /// Make everything written so far durable / visible.
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// One configured sink: its name (`[sinks.NAME]`), type, raw table and parsed configuration.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub name: String,
    pub kind: String,
    pub raw: toml::Table,
    pub config: Arc<dyn SinkConfig>,
}

impl PartialEq for SinkSpec {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name && self.kind == o.kind && self.raw == o.raw
    }
}

impl SinkSpec {
    /// Parse and validate `[sinks.NAME]`. Errors carry the key relative to the table.
    pub fn parse(name: &str, table: &toml::Table) -> Result<SinkSpec, SinkConfigError> {
        let kind = match table.get("type") {
            Some(toml::Value::String(s)) => s.clone(),
            Some(_) => return Err(SinkConfigError::new("type", "must be a string")),
            None => return Err(SinkConfigError::new("type", format!("missing (one of: {})", type_names()))),
        };
        let Some((_, parse)) = REGISTRY.iter().find(|(n, _)| *n == kind) else {
            return Err(SinkConfigError::new("type", format!("unknown sink type {kind:?} (one of: {})", type_names())));
        };
        let mut rest = table.clone();
        rest.remove("type");
        let config = parse(&rest)?;
        Ok(SinkSpec { name: name.to_string(), kind, raw: table.clone(), config })
    }

    /// The sink used when none is configured: JSON lines on stdout.
    pub fn default_stdout() -> SinkSpec {
        let mut t = toml::Table::new();
        t.insert("type".into(), toml::Value::String("stdout".into()));
        match SinkSpec::parse("stdout", &t) {
            Ok(s) => s,
            Err(e) => panic!("built-in stdout sink rejected its own default: {e}"),
        }
    }
}

fn type_names() -> String {
    REGISTRY.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Deliveries per sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkStats {
    pub written: u64,
    /// Attempts that failed (and were retried or dropped).
    pub failures: u64,
    /// Findings not delivered after every retry.
    pub dropped: u64,
}

/// How many times one finding is tried on a failing sink.
pub const MAX_ATTEMPTS: u32 = 3;

/// The pipeline's sinks: every finding goes to each of them.
pub struct SinkSet {
    sinks: Vec<(String, Box<dyn Sink>, SinkStats)>,
}

impl SinkSet {
    /// Build every configured sink (the stdout sink when none is).
    pub fn build(specs: &[SinkSpec]) -> Result<SinkSet, SinkError> {
        let default;
        let specs = if specs.is_empty() {
            default = [SinkSpec::default_stdout()];
            &default[..]
        } else {
            specs
        };
        let mut sinks = Vec::new();
        for s in specs {
            let sink = s.config.build().map_err(|e| SinkError::Other(format!("sinks.{}: {e}", s.name)))?;
            sinks.push((s.name.clone(), sink, SinkStats::default()));
        }
        Ok(SinkSet { sinks })
    }

    /// A set of already built sinks (tests, embedding).
    pub fn from_sinks(sinks: Vec<(String, Box<dyn Sink>)>) -> SinkSet {
        SinkSet { sinks: sinks.into_iter().map(|(n, s)| (n, s, SinkStats::default())).collect() }
    }

    /// No sink at all (the baseline learner's pipeline).
    pub fn none() -> SinkSet {
        SinkSet { sinks: Vec::new() }
    }

    /// Deliver to every sink, retrying each up to [`MAX_ATTEMPTS`] times. Returns the number of
    /// sinks that dropped it.
    pub fn write(&mut self, alert: &Alert) -> usize {
        let mut dropped = 0;
        for (name, sink, st) in &mut self.sinks {
            let mut last = None;
            for _ in 0..MAX_ATTEMPTS {
                match sink.write(alert) {
                    Ok(()) => {
                        st.written += 1;
                        last = None;
                        break;
                    }
                    Err(e) => {
                        st.failures += 1;
                        last = Some(e);
                    }
                }
            }
            if let Some(e) = last {
                st.dropped += 1;
                dropped += 1;
                eprintln!(
                    "scanwatch: WARNING sink {name}: finding {} dropped after {MAX_ATTEMPTS} attempts: {e} ({} dropped so far)",
                    alert.alert_id, st.dropped
                );
            }
        }
        dropped
    }

    pub fn flush(&mut self) {
        for (name, sink, _) in &mut self.sinks {
            if let Err(e) = sink.flush() {
                eprintln!("scanwatch: WARNING sink {name}: flush failed: {e}");
            }
        }
    }

    /// Per-sink delivery counts.
    pub fn stats(&self) -> BTreeMap<String, SinkStats> {
        self.sinks.iter().map(|(n, _, s)| (n.clone(), *s)).collect()
    }

    /// Findings written by every sink together.
    pub fn written(&self) -> u64 {
        self.sinks.iter().map(|(_, _, s)| s.written).sum()
    }
}

#[cfg(test)]
mod tests;
