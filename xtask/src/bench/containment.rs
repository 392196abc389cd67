//! Section 7: containment. A 1 GB upload at a bounded rate by a binary named
//! mega-put, with `exfil_tool_upload` enforcing (and then in dry-run) on a 1 s
//! tick: the bytes that left after the alert line, and the time from the
//! alert line to the uploader's failed send. Then what the packet programs
//! cost with containment off and enforcing: translated size and ns per run.

use super::*;

/// The upload: 1 GB, paced at 200 MB/s (5 s), so it is still running when the
/// first tick's alert comes.
const BYTES: u64 = 1_000_000_000;
const RATE: u64 = 200_000_000;
/// How often the lines of sluice and the uploader are looked at: the cut-off
/// time's resolution.
const POLL: Duration = Duration::from_millis(5);

pub(super) struct CutRow {
    pub(super) mode: &'static str,
    /// MB that arrived after the alert line's count.
    pub(super) after_mb: Vec<f64>,
    /// ms from the alert line to the uploader's failed (or, in dry-run, last) send.
    pub(super) cutoff_ms: Vec<f64>,
    pub(super) arrived_mb: Vec<f64>,
}

pub(super) struct CostRow {
    pub(super) name: String,
    pub(super) mode: &'static str,
    pub(super) xlated: u64,
    pub(super) ns: Vec<f64>,
}

fn config(b: &Bins, mode: &str) -> Result<PathBuf> {
    let path = b.dir.join(format!("respond-{mode}.toml"));
    let rules = match mode {
        "off" => String::new(),
        m => format!("[respond]\nrules = {{ \"sluice.exfil_tool_upload\" = \"{m}\" }}\nttl = \"2s\"\n"),
    };
    // The sink is on loopback, which the detector skips by default.
    fs::write(&path, format!("[detect]\ninclude_loopback = true\n{rules}"))?;
    Ok(path)
}

pub(super) fn containment(b: &Bins, plan: Plan) -> Result<(Vec<CutRow>, Vec<CostRow>)> {
    let tool = b.dir.join("mega-put");
    fs::copy(&b.netload, &tool)?;
    let mut cuts = Vec::new();
    for mode in ["enforce", "dry-run"] {
        let cfg = config(b, mode)?;
        let mut row = CutRow { mode, after_mb: vec![], cutoff_ms: vec![], arrived_mb: vec![] };
        for rep in 0..plan.reps {
            println!("xtask bench: containment ({mode}), run {}/{}", rep + 1, plan.reps);
            let (after, ms, arrived) = one_cut(b, &tool, &cfg)?;
            row.after_mb.push(after as f64 / 1e6);
            row.cutoff_ms.push(ms);
            row.arrived_mb.push(arrived as f64 / 1e6);
        }
        cuts.push(row);
    }
    Ok((cuts, cost(b, plan)?))
}

/// One upload under sluice with `cfg`: (bytes after the alert, ms from the
/// alert line to the uploader's end, bytes that arrived).
fn one_cut(b: &Bins, tool: &Path, cfg: &Path) -> Result<(u64, f64, u64)> {
    let sluice = b.sluice(&["--config", cfg.to_str().unwrap(), "--tick", "1s", "--emit", "alerts"])?;
    let (p1, p2) = (free_port(), free_port());
    let sink = Running::spawn(Command::new(&b.netload).args(["sink", "idle", "127.0.0.1", &p1.to_string(), "3"]))?;
    sink.wait_line("ready", Duration::from_secs(20))?;
    let resume = b.sink("tcp", "127.0.0.1", p2)?;
    let upload = Running::spawn(Command::new(tool).args(["contained", "127.0.0.1", &p1.to_string(), &BYTES.to_string(), &RATE.to_string(), &p2.to_string()]))?;
    let is_alert = |l: &String| l.contains("\"sluice.exfil_tool_upload\"") && l.contains("\"kind\":\"alert\"");
    let ended = |l: &String| ["aborted", "stalled", "finished"].iter().any(|w| l.starts_with(w));
    let (mut alert_at, mut end_at, mut alert) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && (alert_at.is_none() || end_at.is_none()) {
        if alert_at.is_none() {
            if let Some(l) = sluice.lines.lock().unwrap().iter().find(|l| is_alert(l)) {
                alert = Some(l.clone());
                alert_at = Some(Instant::now());
            }
        }
        if end_at.is_none() && upload.lines.lock().unwrap().iter().any(ended) {
            end_at = Some(Instant::now());
        }
        thread::sleep(POLL);
    }
    sink.wait_line("received", Duration::from_secs(30))?;
    upload.wait_line("resumed", Duration::from_secs(40))?;
    let arrived = word_after(&sink.text(), "received").unwrap_or(0.0) as u64;
    let said = upload.text();
    drop(resume);
    sluice.stop();
    let alert: Value = serde_json::from_str(&alert.ok_or_else(|| anyhow!("no exfil_tool_upload alert; the uploader said: {said}"))?)?;
    let at_alert = alert["sluice"]["bytes_out"].as_u64().unwrap_or(0);
    let (Some(a), Some(e)) = (alert_at, end_at) else { bail!("the upload did not end within 60 s: {said}") };
    let ms = if e >= a { (e - a).as_secs_f64() * 1e3 } else { -((a - e).as_secs_f64() * 1e3) };
    Ok((arrived.saturating_sub(at_alert), ms, arrived))
}

/// The cgroup programs' translated size and ns per run, containment off and
/// enforcing, under 1 s of 64 KiB loopback writes per repetition.
fn cost(b: &Bins, plan: Plan) -> Result<Vec<CostRow>> {
    let _stats = Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", "1");
    let mut rows: Vec<CostRow> = Vec::new();
    for mode in ["off", "enforce"] {
        println!("xtask bench: containment's per-program cost, containment {mode}");
        let before: HashSet<u64> = prog_stats()?.keys().copied().collect();
        let sluice = b.sluice(&["--config", config(b, mode)?.to_str().unwrap()])?;
        let mine: HashMap<u64, ProgStat> = prog_stats()?.into_iter().filter(|(id, _)| !before.contains(id)).collect();
        for _ in 0..plan.reps {
            let s0 = prog_stats()?;
            let port = free_port();
            let sink = b.sink("tcp", "127.0.0.1", port)?;
            b.output(&b.benchload, &["stream", "127.0.0.1", &port.to_string(), "65536", "1"])?;
            sink.wait_line("received", Duration::from_secs(30))?;
            let s1 = prog_stats()?;
            for (id, ProgStat { name, xlated, .. }) in &mine {
                let (Some(p1), Some(p0)) = (s1.get(id), s0.get(id)) else { continue };
                let runs = p1.run_cnt - p0.run_cnt;
                if runs < 1.0 || !name.starts_with("skb_") && !name.starts_with("sock_create") && !name.starts_with("connect4") {
                    continue;
                }
                let ns = (p1.run_time_ns - p0.run_time_ns) / runs;
                match rows.iter_mut().find(|r| r.mode == mode && &r.name == name) {
                    Some(r) => r.ns.push(ns),
                    None => rows.push(CostRow { name: name.clone(), mode, xlated: *xlated, ns: vec![ns] }),
                }
            }
        }
        sluice.stop();
    }
    Ok(rows)
}

/// This section's tables and targets, for BENCHMARKS.md.
pub(super) fn render(r: &mut String, cuts: &[CutRow], costs: &[CostRow]) {
    let _ = writeln!(r, "\n## 7. Containment: a 1 GB upload by a binary named mega-put\n");
    let _ = writeln!(
        r,
        "`exfil_tool_upload` in enforce mode, then dry-run; 1 s tick; the upload paced at {} MB/s to a loopback sink. \"After the alert\" is what the sink received beyond the bytes the alert counted; the cut-off time runs from the alert line on stdout to the uploader's failed send (in dry-run, to its last), both seen by polling every {} ms (0: in the same poll; the containment is made in the tick that writes the alert).\n",
        RATE / 1_000_000,
        POLL.as_millis()
    );
    let _ = writeln!(r, "| mode | MB after the alert | alert line to cut-off (ms) | MB that arrived of 1000 |\n| --- | --- | --- | --- |");
    for c in cuts {
        let _ = writeln!(r, "| {} | {} | {} | {} |", c.mode, fmt_stats(&c.after_mb, 2), fmt_stats(&c.cutoff_ms, 0), fmt_stats(&c.arrived_mb, 1));
    }
    if let Some(e) = cuts.iter().find(|c| c.mode == "enforce") {
        let tick_mb = RATE as f64 / 1e6;
        let _ = writeln!(r, "\nTarget: under one tick's worth at the link's rate ({tick_mb:.0} MB) after the alert: {}.", verdict(stats(&e.after_mb).2 < tick_mb));
    }
    if let Some(d) = cuts.iter().find(|c| c.mode == "dry-run") {
        let _ = writeln!(r, "Target: dry-run drops nothing (all 1000 MB arrive): {}.\n", verdict(stats(&d.arrived_mb).1 >= 1000.0));
    }
    let _ = writeln!(r, "Containment's checks with it off and enforcing: the packet and socket programs' translated size (`bpftool prog show`) and ns per run under 1 s of 64 KiB loopback writes.\n");
    let _ = writeln!(r, "| program | containment | translated bytes | ns per run |\n| --- | --- | --- | --- |");
    let mut sorted: Vec<&CostRow> = costs.iter().collect();
    sorted.sort_by(|a, b| (&a.name, a.mode).cmp(&(&b.name, b.mode)));
    for c in sorted {
        let _ = writeln!(r, "| {} | {} | {} | {} |", c.name, c.mode, c.xlated, fmt_stats(&c.ns, 0));
    }
}
