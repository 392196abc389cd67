//! `sluice record` / `sluice replay`: the detector's input, one tick per JSON
//! line after a header line. Replaying a file runs the same detector on the
//! same input with time taken from the records, so the same file always gives
//! the same alerts (tests, tuning, incident review).

use std::io::{BufRead, Write};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::detect::TickInput;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub sluice_record: u32,
    pub host: String,
    pub backend: String,
    /// The recording agent's `agent.id` (absent in older recordings).
    #[serde(default)]
    pub agent_id: String,
}

pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, host: &str, backend: &str, agent_id: &str) -> Result<Self> {
        let h = Header { sluice_record: FORMAT_VERSION, host: host.into(), backend: backend.into(), agent_id: agent_id.into() };
        serde_json::to_writer(&mut out, &h)?;
        out.write_all(b"\n")?;
        Ok(Self { out })
    }

    pub fn tick(&mut self, t: &TickInput) -> Result<()> {
        serde_json::to_writer(&mut self.out, t)?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        Ok(())
    }
}

/// Read a record: the header, then every tick, with errors naming the line.
pub fn read(input: impl BufRead) -> Result<(Header, Vec<TickInput>)> {
    let mut lines = input.lines().enumerate();
    let Some((_, first)) = lines.next() else { bail!("empty record file: no header line") };
    let first = first.context("reading line 1")?;
    let header: Header = serde_json::from_str(&first)
        .context("line 1 is not a sluice record header (expected {\"sluice_record\": 1, ...})")?;
    if header.sluice_record != FORMAT_VERSION {
        bail!("record format version {} is not supported (this sluice reads version {FORMAT_VERSION})", header.sluice_record);
    }
    let mut ticks = Vec::new();
    let mut last_t = f64::MIN;
    for (i, line) in lines {
        let line = line.with_context(|| format!("reading line {}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let t: TickInput = serde_json::from_str(&line).with_context(|| format!("line {}: not a tick record", i + 1))?;
        if !t.t.is_finite() || t.t < last_t {
            bail!("line {}: time {} goes backwards or is not a number (previous {last_t})", i + 1, t.t);
        }
        last_t = t.t;
        ticks.push(t);
    }
    Ok((header, ticks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_clear_errors() {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf, "h", "cgroup", "a1").unwrap();
        w.tick(&TickInput { t: 1.0, window_s: 5.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![] }).unwrap();
        w.tick(&TickInput { t: 2.0, window_s: 5.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![] }).unwrap();
        let (h, ticks) = read(&buf[..]).unwrap();
        assert_eq!(h.host, "h");
        assert_eq!(ticks.len(), 2);

        let e = read(&b"not json\n"[..]).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = read(&b"{\"sluice_record\":9,\"host\":\"h\",\"backend\":\"x\"}\n"[..]).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        let bad = format!("{}\n{{\"t\":5,\"window_s\":1}}\n{{\"t\":4,\"window_s\":1}}\n", String::from_utf8(buf.clone()).unwrap().lines().next().unwrap());
        let e = format!("{:#}", read(bad.as_bytes()).unwrap_err());
        assert!(e.contains("line 3") && e.contains("backwards"), "{e}");
        let e = format!("{:#}", read(&b"{\"sluice_record\":1,\"host\":\"h\",\"backend\":\"x\"}\n{\"t\":\"x\"}\n"[..]).unwrap_err());
        assert!(e.contains("line 2"), "{e}");
    }
}
