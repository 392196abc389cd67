//! Section 2: fork+exec+wait storms, with and without a sensor, and whether every exec was read.

use super::*;

pub(super) struct ExecRow {
    pub(super) sensor: Sensor,
    pub(super) slowdown: Vec<f64>,
    pub(super) seconds: Vec<f64>,
    /// sluice only: exec events it read minus execs run; ring-buffer drops.
    pub(super) seen_minus_expected: Vec<f64>,
    pub(super) drops: Vec<f64>,
}

pub(super) fn exec_storm(b: &Bins, plan: Plan) -> Result<Vec<ExecRow>> {
    let sensors = [Sensor::None, Sensor::Sluice, Sensor::Bpftrace];
    let mut rows: Vec<ExecRow> =
        sensors.iter().map(|&s| ExecRow { sensor: s, slowdown: vec![], seconds: vec![], seen_minus_expected: vec![], drops: vec![] }).collect();
    for rep in 0..plan.reps {
        let mut base = 0.0;
        for s in sensors {
            println!("xtask bench: exec storm, run {}/{}, {}", rep + 1, plan.reps, s.label());
            let addr = format!("127.0.0.1:{}", free_port());
            let sensor = b.sensor(s, BPFTRACE_EXEC, &["--tick", "1s", "--metrics-addr", &addr])?;
            let before = if s == Sensor::Sluice { Some(scrape(&addr)?) } else { None };
            let out = b.output(&b.benchload, &["spawn", &plan.execs.to_string(), "/bin/true"])?;
            let secs = word_after(&out, "seconds").context("spawn output")?;
            if s == Sensor::None {
                base = secs;
            }
            let row = rows.iter_mut().find(|r| r.sensor == s).unwrap();
            row.seconds.push(secs);
            row.slowdown.push(secs / base);
            if let Some(before) = before {
                thread::sleep(Duration::from_secs(2));
                let after = scrape(&addr)?;
                // benchload's own exec is one more than the /bin/true runs.
                let seen = metric(&after, "sluice_execs_total") - metric(&before, "sluice_execs_total") - 1.0;
                row.seen_minus_expected.push(seen - plan.execs as f64);
                let drops: f64 = ["ringbuf_drop_exec", "ringbuf_drop_fork", "ringbuf_drop_exit"]
                    .iter()
                    .map(|n| metric(&after, &format!("sluice_kernel_counter_total{{name=\"{n}\"}}")))
                    .sum();
                row.drops.push(drops);
            }
            if let Some(r) = sensor {
                r.stop();
            }
        }
    }
    Ok(rows)
}

/// This section's table and targets, for BENCHMARKS.md.
pub(super) fn render(r: &mut String, execs: &[ExecRow], plan: Plan) {
    let _ = writeln!(r, "## 2. Exec storm: {} fork+exec+wait of /bin/true\n", plan.execs);
    let _ = writeln!(r, "| sensor | seconds | slowdown vs no sensor | exec events read minus execs run | ring-buffer drops |\n| --- | --- | --- | --- | --- |");
    for row in execs {
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} | {} |",
            row.sensor.label(),
            fmt_stats(&row.seconds, 2),
            if row.sensor == Sensor::None { "1".into() } else { fmt_stats(&row.slowdown, 3) },
            if row.seen_minus_expected.is_empty() { "-".into() } else { fmt_stats(&row.seen_minus_expected, 0) },
            if row.drops.is_empty() { "-".into() } else { fmt_stats(&row.drops, 0) }
        );
    }
    let s = execs.iter().find(|x| x.sensor == Sensor::Sluice);
    let slow = s.map(|x| stats(&x.slowdown).0).unwrap_or(f64::NAN);
    let drops = s.map(|x| stats(&x.drops).2).unwrap_or(f64::NAN);
    let missing = s.map(|x| stats(&x.seen_minus_expected).1).unwrap_or(f64::NAN);
    let _ = writeln!(
        r,
        "\nTargets: 0 drops at {} execs: {} (most in any run: {drops}), none missed (fewest read minus run: {missing}); slowdown <= 1.10: {slow:.3}, {}.\n",
        plan.execs,
        verdict(drops == 0.0 && missing >= 0.0),
        verdict(slow <= 1.10)
    );
}
