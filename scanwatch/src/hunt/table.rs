//! The per-source feature table (`scanwatch hunt --table`): TSV for pivoting in other tools, or
//! aligned text for reading.

use std::io::{self, Write};

use super::features::SourceState;
use super::zeek::{addr_to_ip, Proto};
use crate::vocab::rfc3339_from_unix;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TableFormat {
    Tsv,
    Text,
}

/// Column names and the text widths.
pub const COLUMNS: [(&str, usize); 20] = [
    ("source", 39),
    ("first_seen", 27),
    ("last_seen", 27),
    ("conns", 9),
    ("tcp", 9),
    ("udp", 9),
    ("icmp", 7),
    ("other", 6),
    ("probes", 9),
    ("hosts", 7),
    ("ports", 6),
    ("failed", 9),
    ("failed_ratio", 12),
    ("no_handshake", 12),
    ("first_contacts", 14),
    ("first_failed", 12),
    ("first_fail_ratio", 16),
    ("alerts", 6),
    ("max_severity", 12),
    ("alert_kinds", 0),
];

/// Writes rows as they come (evicted sources first, then the rest sorted by address).
pub struct TableWriter {
    format: TableFormat,
    header_done: bool,
    pub rows: u64,
}

fn ratio(n: u64, d: u64) -> String {
    if d == 0 {
        "-".to_string()
    } else {
        format!("{:.3}", n as f64 / d as f64)
    }
}

fn time(us: i64) -> String {
    rfc3339_from_unix(us as f64 / 1e6)
}

/// One source's row.
pub fn row(s: &SourceState) -> Vec<String> {
    let f = &s.f;
    let proto = |p: Proto| f.per_proto[Proto::ALL.iter().position(|x| *x == p).unwrap_or(3)].to_string();
    let kinds: Vec<&str> = f.alert_kinds.iter().map(|k| k.as_str()).collect();
    vec![
        addr_to_ip(&s.addr).to_string(),
        time(f.first_ts_us),
        time(f.last_ts_us),
        f.conns.to_string(),
        proto(Proto::Tcp),
        proto(Proto::Udp),
        proto(Proto::Icmp),
        proto(Proto::Other),
        f.probes.to_string(),
        format!("{:.0}", s.distinct_hosts()),
        format!("{:.0}", s.distinct_ports()),
        f.classic_failed.to_string(),
        ratio(f.classic_failed, f.conns),
        f.no_handshake.to_string(),
        f.first_contacts.to_string(),
        f.first_failed.to_string(),
        ratio(f.first_failed, f.first_failed + f.first_succeeded),
        f.alerts.to_string(),
        f.max_severity.map_or("-".to_string(), |s| s.as_str().to_string()),
        if kinds.is_empty() { "-".to_string() } else { kinds.join(",") },
    ]
}

impl TableWriter {
    pub fn new(format: TableFormat) -> TableWriter {
        TableWriter { format, header_done: false, rows: 0 }
    }

    fn line(&self, out: &mut dyn Write, cells: &[String]) -> io::Result<()> {
        match self.format {
            TableFormat::Tsv => writeln!(out, "{}", cells.join("\t")),
            TableFormat::Text => {
                let mut l = String::new();
                for (i, c) in cells.iter().enumerate() {
                    let w = COLUMNS.get(i).map_or(0, |c| c.1);
                    if i > 0 {
                        l.push(' ');
                    }
                    if i == 0 || i == 1 || i == 2 || w == 0 {
                        l.push_str(&format!("{c:<w$}"));
                    } else {
                        l.push_str(&format!("{c:>w$}"));
                    }
                }
                writeln!(out, "{}", l.trim_end())
            }
        }
    }

    pub fn write(&mut self, out: &mut dyn Write, states: &[Box<SourceState>]) -> io::Result<()> {
        if !self.header_done {
            self.header_done = true;
            let names: Vec<String> = COLUMNS.iter().map(|c| c.0.to_string()).collect();
            self.line(out, &names)?;
        }
        for s in states {
            self.line(out, &row(s))?;
            self.rows += 1;
        }
        Ok(())
    }
}
