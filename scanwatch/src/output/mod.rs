//! Output stage: findings rendered for the outside world. A sink chooses the format per sink:
//!
//! * `alert`: scanwatch's own JSON object (documented in the README);
//! * `ecs`: Elastic Common Schema 8.x (`event.kind = "alert"`, `source.*`, `destination.*`,
//!   `process.*`, `threat.technique.*`, `rule.name`; scanwatch's own details under `scanwatch.*`);
//! * `ocsf`: OCSF 1.x Detection Finding (class 2004) whose `evidences` carry the network activity
//!   (source and destination endpoints, connection direction, the local process).
use serde::Deserialize;

use crate::alert::Alert;

pub mod ecs;
pub mod ocsf;

/// The field layout of a rendered finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// scanwatch's alert object, one per line.
    #[default]
    Alert,
    /// Elastic Common Schema.
    Ecs,
    /// OCSF Detection Finding.
    Ocsf,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Alert => "alert",
            Format::Ecs => "ecs",
            Format::Ocsf => "ocsf",
        }
    }
}

/// The finding as a JSON value in `format`.
pub fn render(alert: &Alert, format: Format) -> Result<serde_json::Value, serde_json::Error> {
    match format {
        Format::Alert => serde_json::to_value(alert),
        Format::Ecs => Ok(ecs::render(alert)),
        Format::Ocsf => Ok(ocsf::render(alert)),
    }
}

/// The finding as one JSON line (no trailing newline).
pub fn render_line(alert: &Alert, format: Format) -> Result<String, serde_json::Error> {
    match format {
        Format::Alert => serde_json::to_string(alert),
        other => serde_json::to_string(&render(alert, other)?),
    }
}

/// MITRE ATT&CK tactic of a technique id (T1046 → Discovery, T1595 → Reconnaissance).
pub(crate) fn tactic_of(technique: &str) -> (&'static str, &'static str) {
    match technique {
        "T1595" => ("TA0043", "Reconnaissance"),
        _ => ("TA0007", "Discovery"),
    }
}

/// Unix milliseconds of an RFC 3339 UTC time as the alert carries it
/// (`YYYY-MM-DDTHH:MM:SS[.fff]Z`); `None` when it has another shape.
pub(crate) fn unix_millis(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = t.get(19..)?;
    let (frac, z) = match rest.strip_prefix('.') {
        Some(r) => {
            let digits: String = r.chars().take_while(char::is_ascii_digit).collect();
            let ms = format!("{digits:0<3}").get(0..3)?.parse::<i64>().ok()?;
            (ms, &r[digits.len()..])
        }
        None => (0, rest),
    };
    if z != "Z" || !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) * 1000) + frac)
}

#[cfg(test)]
pub(crate) mod tests;
