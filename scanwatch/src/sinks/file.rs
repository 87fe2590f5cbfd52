//! `type = "file"`: one rendered finding per line in a file, rotated by size.
//!
//! ```toml
//! [sinks.archive]
//! type = "file"
//! path = "/var/log/scanwatch/alerts.jsonl"
//! format = "alert"       # or "ecs", "ocsf"
//! max_bytes = 10485760   # rotate before a line would take the file past this (0 = never)
//! keep = 5               # rotated files kept: alerts.jsonl.1 (newest) .. alerts.jsonl.5
//! ```
//!
//! Each line is one `write` on an `O_APPEND` descriptor. A write that fails (disk full, file
//! system gone read-only) is undone by truncating the file back to its length before the line, so
//! a reader never sees half a finding; the sink set retries and counts the drop. A file removed
//! or rotated away by another program is re-created on the next line.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::{Sink, SinkConfig, SinkConfigError, SinkError};
use crate::alert::Alert;
use crate::output::Format;

/// Largest `keep` accepted (rotated files are renamed one by one on each rotation).
pub const MAX_KEEP: u32 = 1000;

/// `[sinks.NAME]` with `type = "file"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub format: Format,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_max_bytes() -> u64 {
    10 << 20
}

fn default_keep() -> u32 {
    5
}

impl FileConfig {
    pub fn parse(t: &toml::Table) -> Result<Arc<dyn SinkConfig>, SinkConfigError> {
        let c: FileConfig = toml::Value::Table(t.clone()).try_into().map_err(|e| SinkConfigError::from_toml(&e))?;
        if c.path.as_os_str().is_empty() {
            return Err(SinkConfigError::new("path", "must not be empty"));
        }
        if c.path.file_name().is_none() {
            return Err(SinkConfigError::new("path", format!("{} names no file", c.path.display())));
        }
        if c.keep > MAX_KEEP {
            return Err(SinkConfigError::new("keep", format!("{} is more than {MAX_KEEP}", c.keep)));
        }
        if c.max_bytes != 0 && c.max_bytes < 4096 {
            return Err(SinkConfigError::new("max_bytes", format!("{} is below 4096 (0 turns rotation off)", c.max_bytes)));
        }
        Ok(Arc::new(c))
    }
}

impl SinkConfig for FileConfig {
    fn build(&self) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(FileSink::open(self.clone())?))
    }
}

/// The open file and its current length.
pub struct FileSink {
    cfg: FileConfig,
    file: Option<File>,
    len: u64,
    /// Inode of the open file: a path now naming another file means someone rotated it away.
    ino: u64,
    pub rotations: u64,
}

impl FileSink {
    pub fn open(cfg: FileConfig) -> Result<FileSink, SinkError> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut s = FileSink { cfg, file: None, len: 0, ino: 0, rotations: 0 };
        s.reopen()?;
        Ok(s)
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        let f = OpenOptions::new().create(true).append(true).open(&self.cfg.path)?;
        let md = f.metadata()?;
        self.len = md.len();
        self.ino = md.ino();
        self.file = Some(f);
        Ok(())
    }

    fn rotated_name(&self, i: u32) -> PathBuf {
        let mut name = self.cfg.path.clone().into_os_string();
        name.push(format!(".{i}"));
        PathBuf::from(name)
    }

    /// path → path.1 → path.2 … ; the oldest past `keep` is removed.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let keep = self.cfg.keep;
        if keep == 0 {
            remove_if_present(&self.cfg.path)?;
        } else {
            remove_if_present(&self.rotated_name(keep))?;
            for i in (1..keep).rev() {
                rename_if_present(&self.rotated_name(i), &self.rotated_name(i + 1))?;
            }
            rename_if_present(&self.cfg.path, &self.rotated_name(1))?;
        }
        self.rotations += 1;
        self.reopen()
    }

    fn moved_away(&self) -> bool {
        match std::fs::metadata(&self.cfg.path) {
            Ok(md) => md.ino() != self.ino,
            Err(_) => true,
        }
    }
}

fn remove_if_present(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_present(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Sink for FileSink {
    fn write(&mut self, alert: &Alert) -> Result<(), SinkError> {
        let mut line = crate::output::render_line(alert, self.cfg.format)?;
        line.push('\n');
        if self.file.is_none() || self.moved_away() {
            self.reopen()?;
        }
        let n = line.len() as u64;
        if self.cfg.max_bytes > 0 && self.len > 0 && self.len + n > self.cfg.max_bytes {
            self.rotate()?;
        }
        let Some(f) = self.file.as_mut() else {
            return Err(SinkError::Other("file not open".into()));
        };
        if let Err(e) = f.write_all(line.as_bytes()) {
            // Undo a partial line; the next attempt starts from a clean end.
            let _ = f.set_len(self.len);
            self.file = None;
            return Err(e.into());
        }
        self.len += n;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if let Some(f) = self.file.as_mut() {
            f.sync_data()?;
        }
        Ok(())
    }
}
