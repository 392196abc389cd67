//! Section 4: bytes attributed to the right process and peer, per send path and backend.

use super::*;

/// (name, sink kind, sink address, sink connections, sender argv with P for the
/// port, F for the payload file, W for the work dir; bytes when the sender
/// prints no "sent N"; bytes counted at this peer address)
pub(super) type Case = (&'static str, &'static str, &'static str, u32, &'static str, u64, &'static str);

pub(super) const CASES: [Case; 32] = [
    ("tcp4-write", "tcp", "127.0.0.1", 1, "$NL send 127.0.0.1 P 4000000", 0, "127.0.0.1"),
    ("tcp4-write-64B", "tcp", "127.0.0.1", 1, "$NL send 127.0.0.1 P 1000000 64", 0, "127.0.0.1"),
    ("tcp4-sendmsg", "tcp", "127.0.0.1", 1, "$NL sendmsg 127.0.0.1 P 4000000", 0, "127.0.0.1"),
    ("tcp4-sendfile", "tcp", "127.0.0.1", 1, "$NL sendfile 127.0.0.1 P F", 0, "127.0.0.1"),
    ("tcp4-splice", "tcp", "127.0.0.1", 1, "$NL splice 127.0.0.1 P F", 0, "127.0.0.1"),
    ("tcp4-io_uring", "tcp", "127.0.0.1", 1, "$NL uring 127.0.0.1 P 4000000", 0, "127.0.0.1"),
    ("tcp4-tls-write-writev", "tcp", "127.0.0.1", 1, "$NL tls 127.0.0.1 P example.org 4000000", 0, "127.0.0.1"),
    ("tcp4-4-threads", "tcp", "127.0.0.1", 4, "$NL threads 127.0.0.1 P example.org 4 1000000", 0, "127.0.0.1"),
    ("tcp4-1ms-sender", "tcp", "127.0.0.1", 1, "$BU 127.0.0.1 P 1000000", 1_000_000, "127.0.0.1"),
    ("tcp4-fork-inherited", "tcp", "127.0.0.1", 1, "$NL inherit 127.0.0.1 P 4000000", 0, "127.0.0.1"),
    ("tcp4-exec-after-connect", "tcp", "127.0.0.1", 1, "$NL exec-send 127.0.0.1 P W/fdsend fdsend 3 4000000", 0, "127.0.0.1"),
    ("tcp4-v4-mapped", "tcp", "127.0.0.1", 1, "$NL send ::ffff:127.0.0.1 P 4000000", 0, "127.0.0.1"),
    ("tcp4-main-thread-exits", "tcp", "127.0.0.1", 1, "$NL thread-exit 127.0.0.1 P 500000 4", 0, "127.0.0.1"),
    ("mptcp4-write", "mptcp", "127.0.0.1", 1, "$NL mptcp 127.0.0.1 P 4000000", 0, "127.0.0.1"),
    ("tcp4-32-blocked-senders", "slow", "127.0.0.1", 1, "$NL blocked 32 127.0.0.1 P 250000", 0, "127.0.0.1"),
    ("tcp4-sockmap-sk_msg", "tcp", "127.0.0.1", 1, "$NL sockmap 127.0.0.1 P 4000000", 0, "127.0.0.1"),
    ("tcp4-ktls-write", "tcp", "127.0.0.1", 1, "$NL ktls 127.0.0.1 P ktls.example.org 4000000", 0, "127.0.0.1"),
    ("tcp4-ktls-sendfile", "tcp", "127.0.0.1", 1, "$NL ktls 127.0.0.1 P ktls.example.org 0 F", 0, "127.0.0.1"),
    ("tcp4-ktls-rx-only-write", "tcp", "127.0.0.1", 1, "$NL ktls-rx 127.0.0.1 P ktls.example.org 4000000", 0, "127.0.0.1"),
    ("tcp6-write", "tcp", "::1", 1, "$NL send ::1 P 4000000", 0, "::1"),
    ("tcp6-write-64B", "tcp", "::1", 1, "$NL send ::1 P 1000000 64", 0, "::1"),
    ("tcp6-sendmsg", "tcp", "::1", 1, "$NL sendmsg ::1 P 4000000", 0, "::1"),
    ("tcp6-sendfile", "tcp", "::1", 1, "$NL sendfile ::1 P F", 0, "::1"),
    ("tcp6-splice", "tcp", "::1", 1, "$NL splice ::1 P F", 0, "::1"),
    ("tcp6-io_uring", "tcp", "::1", 1, "$NL uring ::1 P 4000000", 0, "::1"),
    ("udp4-sendto", "udp", "127.0.0.1", 1, "$NL udp 127.0.0.1 P 2000 1200", 0, "127.0.0.1"),
    ("udp4-sendto-8KB", "udp", "127.0.0.1", 1, "$NL udp 127.0.0.1 P 300 8000", 0, "127.0.0.1"),
    ("udp4-sendmmsg", "udp", "127.0.0.1", 1, "$NL sendmmsg 127.0.0.1 P 2000 1200", 0, "127.0.0.1"),
    ("udp4-connected-send", "udp", "127.0.0.1", 1, "$NL quic 127.0.0.1 P 2000", 0, "127.0.0.1"),
    ("udp6-socket-to-v4-mapped", "udp", "127.0.0.1", 1, "$NL udp ::ffff:127.0.0.1 P 2000 1200", 0, "127.0.0.1"),
    ("udp6-sendto", "udp", "::1", 1, "$NL udp ::1 P 2000 1200", 0, "::1"),
    ("udp6-sendmmsg", "udp", "::1", 1, "$NL sendmmsg ::1 P 2000 1200", 0, "::1"),
];

/// The scenario script (POSIX sh, busybox's too) as (function definitions,
/// body): the body runs every case `reps` times against the sensor already
/// running, reporting SCENARIO/CHILD/SENT lines.
pub(super) fn accuracy_script(reps: usize) -> (String, String) {
    let mut defs = vm::WAIT_FOR.to_string();
    defs.push_str(
        r#"
# acc NAME PORT KIND ADDR CONNS -- sender...
acc() {
  name=$1; port=$2; kind=$3; addr=$4; conns=$5; shift 6
  case $kind in
    tcp) $NL sink tcp $addr $port $conns > $W/sink-$B-$name 2>&1 & ;;
    *) $NL sink $kind $addr $port > $W/sink-$B-$name 2>&1 & ;;
  esac
  SK=$!
  wait_for $W/sink-$B-$name ready 200
  sh -c 'echo "SCENARIO '"$B"' '"$name"' pid=$$"; exec "$@"' sh "$@" > $W/send-$B-$name 2>&1
  sed -n "/^SCENARIO /p; s/^child pid=/CHILD $B $name pid=/p; s/^sent /SENT $B $name /p; s/^unavailable /UNAVAILABLE $B $name /p" $W/send-$B-$name
  # TCP and MPTCP sinks end at EOF; a UDP sink would wait for 3 s of silence.
  if [ "$kind" = udp ]; then sleep 0.3; else wait_for $W/sink-$B-$name received 600; fi
  kill $SK 2>/dev/null
  wait $SK 2>/dev/null
}
"#,
    );
    let mut s = String::from("dd if=/dev/zero of=$W/payload.bin bs=1000000 count=4 2>/dev/null\ncp $NL $W/fdsend\n");
    for rep in 0..reps {
        for (i, (name, kind, addr, conns, sender, _, _)) in CASES.iter().enumerate() {
            let port = 20000 + rep * 100 + i;
            let cmd = sender.replace(" P", &format!(" {port}")).replace(" F", " $W/payload.bin").replace(" W/", " $W/");
            let _ = writeln!(s, "acc {name}-r{rep} {port} {kind} {addr} {conns} -- {cmd}");
        }
    }
    s.push_str("sleep 2.5\n");
    (defs, s)
}

pub(super) struct AccRow {
    pub(super) case: &'static str,
    /// backend -> ratios over reps
    pub(super) ratios: HashMap<String, Vec<f64>>,
    /// backend -> why the kernel could not run the case (no kTLS on this host)
    pub(super) unavailable: HashMap<String, String>,
}

/// Parse one backend's records and scenario lines into per-case ratios.
pub(super) fn accuracy_ratios(backend: &str, records: &[Value], log: &str, rows: &mut [AccRow]) {
    let mut pids: HashMap<String, u32> = HashMap::new();
    let mut sent: HashMap<String, f64> = HashMap::new();
    for l in log.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f[..] {
            [kind @ ("SCENARIO" | "CHILD"), b, name, pid] if b == backend => {
                let _ = kind;
                if let Ok(p) = pid.trim_start_matches("pid=").parse() {
                    pids.insert(name.to_string(), p);
                }
            }
            ["SENT", b, name, n] if b == backend => {
                if let Ok(n) = n.parse() {
                    sent.insert(name.to_string(), n);
                }
            }
            ["UNAVAILABLE", b, name, ..] if b == backend => {
                let why = l.splitn(4, ' ').nth(3).unwrap_or("").to_string();
                if let Some(i) = CASES.iter().position(|c| name.rsplit_once("-r").is_some_and(|(n, _)| n == c.0)) {
                    rows[i].unavailable.insert(backend.to_string(), why);
                }
                pids.remove(name);
            }
            _ => {}
        }
    }
    for (i, (case, _, _, _, _, fixed, peer)) in CASES.iter().enumerate() {
        let row = &mut rows[i];
        for (name, &pid) in pids.iter().filter(|(n, _)| n.rsplit_once("-r").is_some_and(|(c, _)| c == *case)) {
            let rep: usize = name.rsplit_once("-r").and_then(|(_, r)| r.parse().ok()).unwrap_or(0);
            let port = 20000 + rep * 100 + i;
            let want = sent.get(name).copied().unwrap_or(*fixed as f64);
            let got: f64 = records
                .iter()
                .filter(|r| r["process"]["pid"] == pid && r["destination"]["port"] == port && r["destination"]["ip"] == *peer)
                .map(|r| r["sluice"]["bytes_out"].as_f64().unwrap_or(0.0))
                .sum();
            if want > 0.0 {
                row.ratios.entry(backend.to_string()).or_default().push(got / want);
            }
        }
    }
}

pub(super) fn accuracy(b: &Bins, plan: Plan, rows: &mut [AccRow]) -> Result<()> {
    println!("xtask bench: accuracy matrix on this host (cgroup), {} runs of {} scenarios", plan.reps, CASES.len());
    let work = b.dir.join("acc");
    fs::create_dir_all(&work)?;
    let out_path = work.join("flows.jsonl");
    let sluice = Running::spawn(
        Command::new(&b.sluice)
            .args(["run", "--probe", "cgroup", "--state", "", "--emit", "flows", "--tick", "1s", "--output"])
            .arg(format!("file:{}", out_path.display())),
    )?;
    sluice.wait_line("sluice: ready", Duration::from_secs(60))?;
    let (defs, cases) = accuracy_script(plan.reps);
    let script = format!("B=cgroup\nNL={}\nBU={}\nW={}\n{defs}{cases}", b.netload.display(), b.burst.display(), work.display());
    let out = Command::new("/bin/sh").arg("-c").arg(&script).output()?;
    sluice.stop();
    let log = String::from_utf8_lossy(&out.stdout);
    if log.contains("SCENARIO-ERROR") {
        bail!("accuracy scenarios failed:\n{log}");
    }
    let records: Vec<Value> = fs::read_to_string(&out_path)?.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    accuracy_ratios("cgroup", &records, &log, rows);
    if plan.vm {
        println!("xtask bench: accuracy matrix in the qemu guest (fentry, kprobe)");
        // The functions first, then each backend's sensor around the same cases.
        let init = format!(
            "{}{defs}W=/tmp\nNL=/netload\nBU=/burst\nload_ktls\nfor B in fentry kprobe; do\n  \
             /sluice run --probe $B --emit flows --tick 1s --state \"\" > /tmp/out-$B.jsonl 2> /tmp/err-$B.log &\n  SP=$!\n  \
             wait_for /tmp/err-$B.log \"sluice: ready\" 1200 || true\n{cases}  kill -TERM $SP\n  wait $SP\n  \
             echo \"=====BEGIN $B=====\"\n  cat /tmp/out-$B.jsonl\n  echo \"=====END $B=====\"\ndone\n\
             echo \"=====DONE=====\"\npoweroff -f\n",
            vm::PROLOGUE
        );
        let bin = root().join("target/release");
        let initrd = vm::build_initramfs(&init, &[(bin.join("sluice"), "sluice"), (bin.join("netload"), "netload"), (bin.join("burst"), "burst")])?;
        let log_path = vm::boot(&initrd, "bench-serial.log", Duration::from_secs(1500))?;
        let raw = String::from_utf8_lossy(&fs::read(&log_path)?).replace('\r', "");
        for backend in ["fentry", "kprobe"] {
            let recs: Vec<Value> = raw
                .split(&format!("=====BEGIN {backend}=====\n"))
                .nth(1)
                .and_then(|s| s.split(&format!("=====END {backend}=====")).next())
                .unwrap_or("")
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            accuracy_ratios(backend, &recs, &raw, rows);
        }
    }
    Ok(())
}

/// This section's table and targets, for BENCHMARKS.md.
pub(super) fn render(r: &mut String, acc: &[AccRow]) {
    let _ = writeln!(r, "## 4. Accuracy: bytes sluice attributed to the right pid and peer / bytes the application sent\n");
    let backends: Vec<&str> = ["cgroup", "fentry", "kprobe"].into_iter().filter(|b| acc.iter().any(|a| a.ratios.contains_key(*b))).collect();
    let _ = writeln!(r, "| scenario | {} |\n| --- |{}", backends.join(" | "), " --- |".repeat(backends.len()));
    let mut passed: HashMap<&str, usize> = HashMap::new();
    let mut not_run: HashMap<&str, usize> = HashMap::new();
    for row in acc {
        let cells: Vec<String> = backends
            .iter()
            .map(|b| {
                let v = row.ratios.get(*b).cloned().unwrap_or_default();
                if let (true, Some(why)) = (v.is_empty(), row.unavailable.get(*b)) {
                    *not_run.entry(b).or_default() += 1;
                    return format!("n/a: this kernel refused it ({why})");
                }
                let bar = if *b == "cgroup" { 0.03 } else { 0.01 };
                let ok = !v.is_empty() && v.iter().all(|x| (x - 1.0).abs() <= bar);
                if ok {
                    *passed.entry(b).or_default() += 1;
                }
                format!("{}{}", fmt_stats(&v, 4), if ok { "" } else { " **x**" })
            })
            .collect();
        let _ = writeln!(r, "| {} | {} |", row.case, cells.join(" | "));
    }
    let _ = writeln!(
        r,
        "\nPassed (every run within +-3% on cgroup, +-1% on fentry/kprobe): {}.\n",
        backends
            .iter()
            .map(|b| {
                let n = not_run.get(b).copied().unwrap_or(0);
                let skipped = if n > 0 { format!(" ({n} the kernel could not run)") } else { String::new() };
                format!("{b} {}/{}{skipped}", passed.get(b).copied().unwrap_or(0), acc.len() - n)
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
}
