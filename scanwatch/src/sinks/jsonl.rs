//! JSON-lines sink: one alert object per line on stdout (or a file), flushed per alert so a
//! reader sees it at once.
use std::io::Write;

pub struct JsonlSink<W: Write> {
    out: W,
    pub written: u64,
}

impl<W: Write> JsonlSink<W> {
    pub fn new(out: W) -> Self {
        Self { out, written: 0 }
    }

    pub fn write<T: serde::Serialize>(&mut self, v: &T) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, v)?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        self.written += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_object_per_line() {
        let mut s = JsonlSink::new(Vec::new());
        s.write(&serde_json::json!({"a": 1})).expect("write");
        s.write(&serde_json::json!({"b": "x\ny"})).expect("write");
        let text = String::from_utf8(s.out).expect("utf8");
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(serde_json::from_str::<serde_json::Value>(lines[1]).expect("json")["b"], "x\ny");
    }
}
