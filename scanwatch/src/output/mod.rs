//! Output stage: findings rendered for the outside world. `alert` is scanwatch's own JSON
//! object (documented in the README); a sink chooses the format per sink.
use serde::Deserialize;

use crate::alert::Alert;

/// The field layout of a rendered finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// scanwatch's alert object, one per line.
    #[default]
    Alert,
}

/// The finding as a JSON value in `format`.
pub fn render(alert: &Alert, format: Format) -> Result<serde_json::Value, serde_json::Error> {
    match format {
        Format::Alert => serde_json::to_value(alert),
    }
}

/// The finding as one JSON line (no trailing newline).
pub fn render_line(alert: &Alert, format: Format) -> Result<String, serde_json::Error> {
    match format {
        Format::Alert => serde_json::to_string(alert),
    }
}
