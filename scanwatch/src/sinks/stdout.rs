//! `type = "stdout"`: one finding per line on standard output, flushed per finding so a reader
//! sees it at once.
use std::io::Write;
use std::sync::Arc;

use serde::Deserialize;

use super::{Sink, SinkConfig, SinkConfigError, SinkError};
use crate::alert::Alert;
use crate::output::Format;

/// `[sinks.NAME]` with `type = "stdout"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// Field layout of each line (`alert`: scanwatch's own).
    #[serde(default)]
    pub format: Format,
}

impl StdoutConfig {
    pub fn parse(t: &toml::Table) -> Result<Arc<dyn SinkConfig>, SinkConfigError> {
        let c: StdoutConfig =
            toml::Value::Table(t.clone()).try_into().map_err(|e| SinkConfigError::from_toml(&e))?;
        Ok(Arc::new(c))
    }
}

impl SinkConfig for StdoutConfig {
    fn build(&self) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(LineSink { out: std::io::stdout(), format: self.format }))
    }
}

/// Rendered findings as lines on any writer (stdout here; tests use a buffer).
pub struct LineSink<W: Write + Send> {
    pub out: W,
    pub format: Format,
}

impl<W: Write + Send> Sink for LineSink<W> {
    fn write(&mut self, alert: &Alert) -> Result<(), SinkError> {
        let mut line = crate::output::render_line(alert, self.format)?;
        line.push('\n');
        self.out.write_all(line.as_bytes())?;
        self.out.flush()?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(self.out.flush()?)
    }
}
