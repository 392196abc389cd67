//! Section 5: each eBPF program's own cost from the kernel's run-time stats,
//! beside an empty program on the same hook.

use super::*;

/// One loaded program, as `bpftool prog show` reports it.
pub(super) struct ProgStat {
    pub(super) name: String,
    pub(super) run_time_ns: f64,
    pub(super) run_cnt: f64,
    /// Translated (post-verifier) code size.
    pub(super) xlated: u64,
}

/// id -> stats of every loaded program.
pub(super) fn prog_stats() -> Result<HashMap<u64, ProgStat>> {
    let out = Command::new("bpftool").args(["prog", "show", "-j"]).output().context("running bpftool")?;
    let v: Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let stat = ProgStat {
                name: p["name"].as_str().unwrap_or("?").to_string(),
                run_time_ns: p["run_time_ns"].as_f64().unwrap_or(0.0),
                run_cnt: p["run_cnt"].as_f64().unwrap_or(0.0),
                xlated: p["bytes_xlated"].as_u64().unwrap_or(0),
            };
            Some((p["id"].as_u64()?, stat))
        })
        .collect())
}

/// The floor (empty program of the same type) for each of sluice's programs.
pub(super) fn floor_for(name: &str) -> &'static str {
    match name {
        "skb_egress" | "skb_ingress" => "floor_skb",
        "sock_create" | "post_bind4" | "post_bind6" | "sock_release" => "floor_sock_crea",
        "connect4" | "connect6" | "sendmsg4" | "sendmsg6" => "floor_connect4",
        _ => "floor_tp",
    }
}

pub(super) struct ProgRow {
    pub(super) who: &'static str,
    /// Names are cut to 15 bytes (sched_process_exec and _exit look alike): rows go by id.
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) ns: Vec<f64>,
    pub(super) runs: Vec<f64>,
}

/// Sluice (and then the bpftrace peer) with the floor programs attached next
/// to them, through a mixed workload; ns per run from the kernel's own stats.
pub(super) fn bpf_cost(b: &Bins, plan: Plan) -> Result<Vec<ProgRow>> {
    let _stats = Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", "1");
    let mut rows: Vec<ProgRow> = Vec::new();
    for who in [Sensor::Sluice, Sensor::Bpftrace] {
        println!("xtask bench: per-program cost, {}", who.label());
        let before: HashSet<u64> = prog_stats()?.keys().copied().collect();
        let sensor = b.sensor(who, BPFTRACE_SEND, &[])?;
        let mine: HashSet<u64> = prog_stats()?.keys().copied().filter(|k| !before.contains(k)).collect();
        let floor = Running::spawn(&mut Command::new(&b.floor))?;
        floor.wait_line("ready", Duration::from_secs(30))?;
        let floors: HashSet<u64> = prog_stats()?.keys().copied().filter(|k| !before.contains(k) && !mine.contains(k)).collect();
        for _ in 0..plan.reps {
            let s0 = prog_stats()?;
            for w in [64usize, 65536] {
                let port = free_port();
                let sink = b.sink("tcp", "127.0.0.1", port)?;
                b.output(&b.benchload, &["stream", "127.0.0.1", &port.to_string(), &w.to_string(), "1"])?;
                sink.wait_line("received", Duration::from_secs(30))?;
            }
            b.output(&b.benchload, &["spawn", "500", "/bin/true"])?;
            let s1 = prog_stats()?;
            for (id, ProgStat { name, run_time_ns: rt1, run_cnt: cnt1, .. }) in &s1 {
                let label = if mine.contains(id) {
                    if who == Sensor::Sluice { "sluice" } else { "bpftrace" }
                } else if floors.contains(id) {
                    "floor (empty program)"
                } else {
                    continue;
                };
                let (rt0, cnt0) = s0.get(id).map(|p| (p.run_time_ns, p.run_cnt)).unwrap_or((0.0, 0.0));
                if cnt1 - cnt0 < 1.0 {
                    continue;
                }
                let ns = (rt1 - rt0) / (cnt1 - cnt0);
                match rows.iter_mut().find(|r| r.who == label && r.id == *id) {
                    Some(r) => {
                        r.ns.push(ns);
                        r.runs.push(cnt1 - cnt0);
                    }
                    None => rows.push(ProgRow { who: label, id: *id, name: name.clone(), ns: vec![ns], runs: vec![cnt1 - cnt0] }),
                }
            }
        }
        floor.stop();
        if let Some(s) = sensor {
            s.stop();
        }
    }
    Ok(rows)
}

/// Set a sysctl for the bench; the old value comes back on drop.
pub(super) struct Sysctl(PathBuf, Option<String>);

impl Sysctl {
    pub(super) fn set(path: &str, value: &str) -> Sysctl {
        let old = fs::read_to_string(path).ok();
        let _ = fs::write(path, value);
        Sysctl(PathBuf::from(path), old)
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Some(o) = &self.1 {
            let _ = fs::write(&self.0, o.trim());
        }
    }
}

/// This section's table and targets, for BENCHMARKS.md.
pub(super) fn render(r: &mut String, progs: &[ProgRow]) {
    let _ = writeln!(r, "## 5. Per-program cost from the kernel (`kernel.bpf_stats_enabled=1`)\n");
    let _ = writeln!(r, "Workload per run: 1 s of 64 B writes, 1 s of 64 KiB writes, 500 execs; the empty programs ran on the same hooks at the same time.\n");
    let _ = writeln!(r, "| program | ns per run | runs per workload | floor: empty program (ns) |\n| --- | --- | --- | --- |");
    for row in progs.iter().filter(|p| p.who != "floor (empty program)") {
        let floor = progs.iter().find(|p| p.who == "floor (empty program)" && p.name == floor_for(&row.name)).map(|p| fmt_stats(&p.ns, 0)).unwrap_or("-".into());
        let _ = writeln!(r, "| {} {} (id {}) | {} | {} | {} |", row.who, row.name, row.id, fmt_stats(&row.ns, 0), fmt_stats(&row.runs, 0), floor);
    }
}
