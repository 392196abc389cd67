//! Section 3: agent CPU, tick time and memory against live flows and known processes.

use super::*;

pub(super) struct ScaleRow {
    pub(super) flows: usize,
    pub(super) procs: usize,
    pub(super) tracked_flows: f64,
    pub(super) tracked_procs: f64,
    pub(super) cpu_ms_per_tick: Vec<f64>,
    pub(super) tick_ms: Vec<f64>,
    pub(super) rss_mib: Vec<f64>,
}

/// Raise kernel.pid_max for the process-table point; restored on drop.
pub(super) struct PidMax(Option<String>);

impl PidMax {
    pub(super) fn raise(to: u64) -> PidMax {
        let old = fs::read_to_string("/proc/sys/kernel/pid_max").ok();
        if old.as_deref().and_then(|o| o.trim().parse::<u64>().ok()).is_some_and(|o| o < to) {
            let _ = fs::write("/proc/sys/kernel/pid_max", to.to_string());
            return PidMax(old);
        }
        PidMax(None)
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        if let Some(o) = &self.0 {
            let _ = fs::write("/proc/sys/kernel/pid_max", o.trim());
        }
    }
}

/// Connections one `benchload mesh` holds (two fds each).
pub(super) const MESH_PER_PROCESS: usize = 9_000;

pub(super) fn scale(b: &Bins, plan: Plan) -> Result<Vec<ScaleRow>> {
    let config = b.dir.join("scale.toml");
    fs::write(&config, "[kernel]\nflows_max = 262144\nsockets_max = 262144\n")?;
    let mut points: Vec<(usize, usize)> = plan.mesh.iter().map(|&c| (c, 0)).collect();
    points.push((plan.mesh[2], plan.procs));
    let mut rows = Vec::new();
    for (conns, procs) in points {
        println!("xtask bench: scale, {} flows, {procs} extra processes", conns * 2);
        let addr = format!("127.0.0.1:{}", free_port());
        let sluice = b.sluice(&["--tick", "1s", "--metrics-addr", &addr, "--config", config.to_str().unwrap()])?;
        // Several processes: the open-file limit here (20,000, and no
        // CAP_SYS_RESOURCE to raise it) caps one at ~9,000 connections.
        let parts = conns.div_ceil(MESH_PER_PROCESS);
        let mut meshes = Vec::new();
        for _ in 0..parts {
            let m = Running::spawn(Command::new(&b.benchload).args(["mesh", &(conns / parts).to_string()]))?;
            m.wait_line("ready", Duration::from_secs(300))?;
            meshes.push(m);
        }
        let _pid_max = PidMax::raise(4_194_304);
        let idle = if procs > 0 {
            let r = Running::spawn(Command::new(&b.benchload).args(["procs", &procs.to_string()]))?;
            r.wait_line("ready", Duration::from_secs(300))?;
            Some(r)
        } else {
            None
        };
        // Let the agent absorb the set-up (a burst of new flows and forks).
        thread::sleep(Duration::from_secs(4));
        let mut row = ScaleRow { flows: conns * 2, procs, tracked_flows: 0.0, tracked_procs: 0.0, cpu_ms_per_tick: vec![], tick_ms: vec![], rss_mib: vec![] };
        for _ in 0..plan.reps {
            let m0 = scrape(&addr)?;
            let c0 = cpu_seconds(sluice.pid());
            thread::sleep(Duration::from_secs(3));
            let m1 = scrape(&addr)?;
            let c1 = cpu_seconds(sluice.pid());
            let ticks = (metric(&m1, "sluice_ticks_total") - metric(&m0, "sluice_ticks_total")).max(1.0);
            let dur = metric(&m1, "sluice_tick_duration_seconds_sum") - metric(&m0, "sluice_tick_duration_seconds_sum");
            row.cpu_ms_per_tick.push((c1 - c0) * 1000.0 / ticks);
            row.tick_ms.push(dur * 1000.0 / ticks);
            row.rss_mib.push(rss_mib(sluice.pid()));
            row.tracked_flows = metric(&m1, "sluice_flows_tracked");
            row.tracked_procs = metric(&m1, "sluice_processes_tracked");
        }
        if let Some(i) = idle {
            i.stop();
        }
        for m in meshes {
            m.stop();
        }
        sluice.stop();
        rows.push(row);
    }
    Ok(rows)
}

/// This section's table and targets, for BENCHMARKS.md.
pub(super) fn render(r: &mut String, scale: &[ScaleRow]) {
    let _ = writeln!(r, "## 3. Scale: live flows and known processes (each flow sends every second)\n");
    let _ = writeln!(r, "| flows (tracked) | processes (tracked) | agent CPU per 1 s tick (ms) | tick duration (ms) | RSS (MiB) | CPU per 1k flows per tick (ms) |\n| --- | --- | --- | --- | --- | --- |");
    for row in scale {
        let cpu = stats(&row.cpu_ms_per_tick).0;
        let _ = writeln!(
            r,
            "| {} ({:.0}) | {} ({:.0}) | {} | {} | {} | {:.2} |",
            row.flows,
            row.tracked_flows,
            if row.procs == 0 { "host only".to_string() } else { format!("+{}", row.procs) },
            row.tracked_procs,
            fmt_stats(&row.cpu_ms_per_tick, 1),
            fmt_stats(&row.tick_ms, 1),
            fmt_stats(&row.rss_mib, 1),
            cpu / (row.flows as f64 / 1000.0)
        );
    }
    let big = scale.iter().rfind(|x| x.procs == 0).map(|x| stats(&x.rss_mib).2).unwrap_or(f64::NAN);
    let _ = writeln!(r, "\nTarget: RSS <= 64 MiB at the largest flow count: {big:.1} MiB, {}. Linear or better: compare the last column across rows.\n", verdict(big <= 64.0));
}
