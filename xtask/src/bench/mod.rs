//! `cargo xtask bench`: what sluice costs and how exactly it counts, measured
//! side by side in one run (no sensor, sluice, and a bpftrace script doing the
//! same per-process accounting with the probes this kernel allows), every
//! figure repeated and reported as median and spread. Writes BENCHMARKS.md.
//!
//! Not part of the test suite: figures are reported against targets, never
//! asserted (a loaded CI machine must not fail a build over a ratio).

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::{root, run, setup, vm};


mod accuracy;
mod containment;
mod exec_storm;
mod harness;
mod latency;
mod programs;
mod scale;
mod send_path;

use accuracy::*;
use containment::*;
use exec_storm::*;
use harness::*;
use latency::*;
use programs::*;
use scale::*;
use send_path::*;

/// Knobs; `--quick` shrinks them for a smoke run of the harness itself.
#[derive(Clone, Copy)]
pub struct Plan {
    pub reps: usize,
    pub stream_s: f64,
    pub execs: usize,
    pub mesh: [usize; 3],
    pub procs: usize,
    pub latency_bytes: u64,
    pub vm: bool,
}

impl Plan {
    pub fn full() -> Plan {
        Plan { reps: 5, stream_s: 3.0, execs: 20_000, mesh: [500, 5_000, 50_000], procs: 50_000, latency_bytes: 500_000_000, vm: true }
    }
    pub fn quick() -> Plan {
        Plan { reps: 2, stream_s: 1.0, execs: 2_000, mesh: [100, 1_000, 10_000], procs: 2_000, latency_bytes: 50_000_000, vm: true }
    }
}

const WRITE_SIZES: [usize; 3] = [64, 1024, 65536];

/// Per-process byte accounting, bpftrace style, with the probes this kernel
/// allows (tracepoints; no kprobes or fentry here): the peer a user would
/// write instead of installing sluice. Printed every 5 s like sluice's tick.
const BPFTRACE_SEND: &str = "tracepoint:sock:sock_send_length /args->ret > 0/ { @bytes[pid, comm] = sum(args->ret); } interval:s:5 { print(@bytes); clear(@bytes); }";
const BPFTRACE_EXEC: &str = "tracepoint:sched:sched_process_exec { @execs[comm] = count(); } interval:s:5 { print(@execs); clear(@execs); }";

// ---- report ------------------------------------------------------------------

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name")?.split(':').nth(1).map(|s| s.trim().to_string())))
        .unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<f64>().ok()))
        .unwrap_or(0.0)
        / 1024.0
        / 1024.0;
    let kernel = Command::new("uname").arg("-r").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    let cores = thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let bpftrace = Command::new("bpftrace").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem:.0} GiB; kernel {kernel}; peer: {bpftrace}")
}

/// The release binaries, built, and a fresh scratch directory.
fn bins(cargo: impl Fn() -> Command) -> Result<Bins> {
    run(cargo().args(["build", "--release", "-p", "sensor-user", "-p", "sluice-tests", "--bins"]))?;
    let rel = root().join("target/release");
    let dir = root().join("target/bench");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(Bins {
        sluice: rel.join("sluice"),
        netload: rel.join("netload"),
        benchload: rel.join("benchload"),
        burst: rel.join("burst"),
        floor: rel.join("floor"),
        dir,
    })
}

/// Section 7 alone, printed (BENCHMARKS.md holds whole runs only).
pub fn containment_only(cargo: impl Fn() -> Command, plan: Plan) -> Result<()> {
    setup::ensure_bench_tools()?;
    let b = bins(cargo)?;
    let (cuts, costs) = containment(&b, plan)?;
    let mut r = String::new();
    containment::render(&mut r, &cuts, &costs);
    println!("{r}");
    Ok(())
}

pub fn bench(cargo: impl Fn() -> Command, plan: Plan) -> Result<()> {
    setup::ensure_bench_tools()?;
    if plan.vm {
        setup::ensure_vm_tools()?;
    }
    let b = bins(cargo)?;
    let started = Instant::now();
    // A section that fails is reported as such; the others still run.
    let mut failures = Vec::new();
    let mut section = |name: &str, r: Result<()>| {
        if let Err(e) = r {
            eprintln!("xtask bench: {name} failed: {e:#}");
            failures.push(format!("{name}: {e:#}"));
        }
    };
    let (mut send, mut execs, mut scales, mut progs, mut latency) = (vec![], vec![], vec![], vec![], vec![]);
    section("send path", send_path(&b, plan).map(|v| send = v));
    section("exec storm", exec_storm(&b, plan).map(|v| execs = v));
    section("scale", scale(&b, plan).map(|v| scales = v));
    let mut acc: Vec<AccRow> = CASES.iter().map(|c| AccRow { case: c.0, ratios: HashMap::new(), unavailable: HashMap::new() }).collect();
    section("accuracy", accuracy(&b, plan, &mut acc));
    section("per-program cost", bpf_cost(&b, plan).map(|v| progs = v));
    section("alert latency", alert_latency(&b, plan).map(|v| latency = v));
    let (mut cuts, mut costs) = (vec![], vec![]);
    section("containment", containment(&b, plan).map(|(c, k)| (cuts, costs) = (c, k)));
    let mut report = report(plan, &send, &execs, &scales, &acc, &progs, &latency, (&cuts, &costs), started.elapsed());
    if !failures.is_empty() {
        let _ = writeln!(report, "## Sections that failed in this run

{}
", failures.iter().map(|f| format!("- {f}")).collect::<Vec<_>>().join("\n"));
    }
    println!("{report}");
    fs::write(root().join("BENCHMARKS.md"), &report)?;
    println!("xtask: wrote BENCHMARKS.md");
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    plan: Plan,
    send: &[SendRow],
    execs: &[ExecRow],
    scale: &[ScaleRow],
    acc: &[AccRow],
    progs: &[ProgRow],
    latency: &[f64],
    (cuts, costs): (&[CutRow], &[CostRow]),
    took: Duration,
) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# sluice benchmarks\n");
    let _ = writeln!(
        r,
        "Generated by `cargo xtask bench` in {:.0} min on: {}. Backend on this host: cgroup (the kernel forbids kprobes and BPF trampolines); fentry and kprobe are measured for accuracy in the qemu guest (Debian 6.1, TCG) where noted. Every figure is the median of {} runs, with the spread (min-max) in parentheses; ratios are against the no-sensor run of the same repetition.\n",
        took.as_secs_f64() / 60.0,
        machine(),
        plan.reps
    );
    send_path::render(&mut r, send);
    exec_storm::render(&mut r, execs, plan);
    scale::render(&mut r, scale);
    accuracy::render(&mut r, acc);
    programs::render(&mut r, progs);
    latency::render(&mut r, latency, plan);
    containment::render(&mut r, cuts, costs);
    r.push_str(READING);
    r
}

/// What bounds the figures, independent of one run's numbers.
const READING: &str = "## Reading these figures

- **Loopback is the worst case for the cgroup backend.** Every loopback packet passes both
  `skb_egress` (sender) and `skb_ingress` (receiver) on the same host, so section 1 pays the
  per-packet cost twice. An upload to another host pays `skb_egress` once.
- **Small writes pay per call, not per byte.** `send_owner` (the `sock:sock_send_length`
  tracepoint that gives a socket to whoever writes it: inherited sockets, exec onto a connected
  fd) runs on every send call. The per-CPU check that skips the map is one compare, but the
  tracepoint's dispatch is paid anyway. With 64-byte writes, that is what separates the
  `owner_on_send off` row from the default. At 1 KiB and up, the per-packet programs dominate
  instead.
  Turning it off (`kernel.owner_on_send = false`) trades that cost for attributing a socket's
  bytes to the process that connected it.
- **The bpftrace peer** counts bytes per process from the same tracepoint, with no destination,
  no names, no processes and no detection; its numbers are the floor for doing it with a
  tracepoint script.
- **Scale** counts live flows: every connection writes each second, so every flow moves every
  tick. Idle flows cost the batch read only.
- **Accuracy** divides what sluice attributed to the sender's pid and peer by what the application
  sent (its own count). The cgroup backend counts TCP payload by sequence space (retransmissions
  count once), UDP payload per datagram.
";
