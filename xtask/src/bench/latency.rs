//! Section 6: seconds from an upload's start to its alert line.

use super::*;

pub(super) fn alert_latency(b: &Bins, plan: Plan) -> Result<Vec<f64>> {
    let config = b.dir.join("latency.toml");
    // The sink is on loopback, which the detector skips by default.
    fs::write(&config, "[detect]\ninclude_loopback = true\n")?;
    let tool = b.dir.join("megasync");
    fs::copy(&b.netload, &tool)?;
    let mut out = Vec::new();
    for rep in 0..plan.reps {
        println!("xtask bench: alert latency, run {}/{}", rep + 1, plan.reps);
        let sluice = b.sluice(&["--config", config.to_str().unwrap()])?;
        let port = free_port();
        let sink = b.sink("tcp", "127.0.0.1", port)?;
        let start = Instant::now();
        let mut upload = Command::new(&tool).args(["send", "127.0.0.1", &port.to_string(), &plan.latency_bytes.to_string()]).stdout(Stdio::null()).spawn()?;
        let deadline = start + Duration::from_secs(120);
        let mut at = None;
        while Instant::now() < deadline {
            if sluice.lines.lock().unwrap().iter().any(|l| l.contains("\"sluice.exfil_tool_upload\"")) {
                at = Some(start.elapsed().as_secs_f64());
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = upload.wait();
        drop(sink);
        sluice.stop();
        out.push(at.ok_or_else(|| anyhow!("no alert within 120 s of a {} byte upload by megasync", plan.latency_bytes))?);
    }
    Ok(out)
}

/// This section's table and targets, for BENCHMARKS.md.
pub(super) fn render(r: &mut String, latency: &[f64], plan: Plan) {
    let _ = writeln!(r, "\n## 6. Alert latency: a {} MB upload by a binary named megasync\n", plan.latency_bytes / 1_000_000);
    let _ = writeln!(
        r,
        "Seconds from the upload's start to the alert line on stdout (default config, 5 s tick, 60 s short window): {}. Target <= one short window + one tick (65 s): {}.\n",
        fmt_stats(latency, 2),
        verdict(stats(latency).2 <= 65.0)
    );
}
