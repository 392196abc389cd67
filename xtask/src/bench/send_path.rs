//! Section 1: loopback TCP throughput per write size, against no sensor, the
//! hooks' floor and the bpftrace peer, and the CPU each send call costs.

use super::*;

pub(super) struct SendRow {
    pub(super) sensor: Sensor,
    pub(super) write: usize,
    /// Throughput divided by the same rep's no-sensor throughput.
    pub(super) ratios: Vec<f64>,
    pub(super) mbps: Vec<f64>,
    /// CPU the sensor process used, in % of one core, while the stream ran.
    pub(super) cpu_pct: Vec<f64>,
}

pub(super) fn send_path(b: &Bins, plan: Plan) -> Result<Vec<SendRow>> {
    let sensors = [Sensor::None, Sensor::Floor, Sensor::Sluice, Sensor::SluiceNoOwner, Sensor::Bpftrace];
    let mut rows: Vec<SendRow> = sensors
        .iter()
        .flat_map(|&s| WRITE_SIZES.iter().map(move |&w| SendRow { sensor: s, write: w, ratios: vec![], mbps: vec![], cpu_pct: vec![] }))
        .collect();
    for rep in 0..plan.reps {
        let mut base: HashMap<usize, f64> = HashMap::new();
        for s in sensors {
            println!("xtask bench: send path, run {}/{}, {}", rep + 1, plan.reps, s.label());
            let sensor = b.sensor(s, BPFTRACE_SEND, &[])?;
            for w in WRITE_SIZES {
                let port = free_port();
                let sink = b.sink("tcp", "127.0.0.1", port)?;
                let c0 = sensor.as_ref().map(|r| cpu_seconds(r.pid())).unwrap_or(0.0);
                let out = b.output(&b.benchload, &["stream", "127.0.0.1", &port.to_string(), &w.to_string(), &plan.stream_s.to_string()])?;
                let c1 = sensor.as_ref().map(|r| cpu_seconds(r.pid())).unwrap_or(0.0);
                sink.wait_line("received", Duration::from_secs(30))?;
                let bytes = word_after(&out, "bytes").context("stream output")?;
                let secs = word_after(&out, "seconds").context("stream output")?;
                let mbps = bytes / secs / 1e6;
                if s == Sensor::None {
                    base.insert(w, mbps);
                }
                let row = rows.iter_mut().find(|r| r.sensor == s && r.write == w).unwrap();
                row.mbps.push(mbps);
                row.ratios.push(mbps / base.get(&w).copied().unwrap_or(mbps));
                row.cpu_pct.push((c1 - c0) / secs * 100.0);
            }
            if let Some(r) = sensor {
                r.stop();
            }
        }
    }
    Ok(rows)
}

/// CPU per send call, from section 1's runs: the sender's extra time per
/// call against no sensor (the programs run in its context), plus the
/// sensor process's own CPU per call; per million calls, and as a share of
/// one CPU at 100k calls/s, the unit bcc's tcptop is quoted in (~13%).
pub(super) fn send_call_cost(r: &mut String, send: &[SendRow]) {
    let _ = writeln!(r, "CPU per send call (the 64 B rows are the per-call cost; larger writes add per-packet work):\n");
    let _ = writeln!(r, "| sensor | write | extra ns per call in the sender | sensor process ns per call | CPU per 1M calls (ms) | % of one CPU at 100k calls/s |\n| --- | --- | --- | --- | --- | --- |");
    let median = |s: Sensor, w: usize| send.iter().find(|x| x.sensor == s && x.write == w).map(|x| (stats(&x.mbps).0, stats(&x.cpu_pct).0));
    for row in send.iter().filter(|x| x.sensor != Sensor::None) {
        let (Some((base, _)), Some((mbps, cpu))) = (median(Sensor::None, row.write), median(row.sensor, row.write)) else { continue };
        // Seconds per call at each throughput (MB/s of `write`-byte calls).
        let per_call = |mbps: f64| row.write as f64 / (mbps * 1e6);
        let extra_ns = (per_call(mbps) - per_call(base)) * 1e9;
        // The sensor process's CPU share, spread over the calls it saw.
        let agent_ns = cpu / 100.0 * per_call(mbps) * 1e9;
        let total_ns = extra_ns.max(0.0) + agent_ns;
        let extra = if extra_ns < 0.0 { "< 0 (faster than no sensor this run: noise)".to_string() } else { format!("{extra_ns:.0}") };
        let _ = writeln!(
            r,
            "| {} | {} B | {extra} | {agent_ns:.0} | {:.0} | {:.1} |",
            row.sensor.label(),
            row.write,
            total_ns,
            total_ns * 1e5 / 1e9 * 100.0
        );
    }
    let _ = writeln!(r);
}

/// This section's table and targets, for BENCHMARKS.md.
pub(super) fn render(r: &mut String, send: &[SendRow]) {
    let _ = writeln!(r, "## 1. Send path: loopback TCP throughput, one connection, fixed write size\n");
    let _ = writeln!(r, "| sensor | write | throughput (MB/s) | ratio vs no sensor | sensor CPU (% of a core) |\n| --- | --- | --- | --- | --- |");
    for row in send {
        let _ = writeln!(
            r,
            "| {} | {} B | {} | {} | {} |",
            row.sensor.label(),
            row.write,
            fmt_stats(&row.mbps, 0),
            if row.sensor == Sensor::None { "1".into() } else { fmt_stats(&row.ratios, 3) },
            if row.sensor == Sensor::None { "-".into() } else { fmt_stats(&row.cpu_pct, 2) }
        );
    }
    let ratio = |s: Sensor, w: usize| send.iter().find(|x| x.sensor == s && x.write == w).map(|x| stats(&x.ratios).0).unwrap_or(f64::NAN);
    let of_floor: Vec<String> = WRITE_SIZES.iter().map(|&w| format!("{:.3} at {w} B", ratio(Sensor::Sluice, w) / ratio(Sensor::Floor, w))).collect();
    let _ = writeln!(
        r,
        "\nTargets: within 3% of the floor at every size (sluice / floor: {}), {}; >= 0.90 of no sensor at 64 B with owner_on_send on: {:.3}, {}; >= 0.97 at 64 KiB: {:.3}, {}. Ahead of the peer at every size: {}.\n",
        of_floor.join(", "),
        verdict(WRITE_SIZES.iter().all(|&w| ratio(Sensor::Sluice, w) / ratio(Sensor::Floor, w) >= 0.97)),
        ratio(Sensor::Sluice, 64),
        verdict(ratio(Sensor::Sluice, 64) >= 0.90),
        ratio(Sensor::Sluice, 65536),
        verdict(ratio(Sensor::Sluice, 65536) >= 0.97),
        verdict(WRITE_SIZES.iter().all(|&w| ratio(Sensor::Sluice, w) >= ratio(Sensor::Bpftrace, w)))
    );
    send_call_cost(r, send);
}
