//! Faults around the agent, end to end on this host's kernel: an output
//! consumer that stops reading or goes away, and a second agent on one host.
//! (Issue 8's first cases; the rest of that suite is still to come.)

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use sluice_tests::*;

/// `sluice run ARGS` with stdout as given, stderr collected; waits for "ready".
struct Agent {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    fn start(args: &[&str], stdout: Stdio) -> Agent {
        let mut child = Command::new(sluice_bin())
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (e, err) = (stderr.clone(), child.stderr.take().unwrap());
        thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                e.lock().unwrap().push(l);
            }
        });
        let a = Agent { child, stderr };
        assert!(a.wait_stderr("sluice: ready", Duration::from_secs(60)), "not ready:\n{}", a.stderr_text());
        a
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn wait_stderr(&self, what: &str, timeout: Duration) -> bool {
        retry(timeout, || self.stderr.lock().unwrap().iter().any(|l| l.contains(what)))
    }

    /// SIGTERM; the exit status within `timeout`.
    fn stop(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scrape(addr: &str, series: &str) -> f64 {
    let (status, body) = http_get(addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    metric(&body, series).unwrap_or(0.0)
}

fn flows_args<'a>(state: &'a str, metrics: &'a str, config: &'a str) -> Vec<&'a str> {
    vec!["--tick", "200ms", "--probe", "cgroup", "--emit", "flows", "--state", state, "--metrics-addr", metrics, "--config", config]
}

#[test]
fn a_stdout_nobody_reads_costs_counted_drops_never_a_stalled_agent() {
    require_root();
    let dir = TempDir::new("blocked");
    let config = dir.0.join("sluice.toml");
    std::fs::write(&config, "[output]\nqueue = 64\n").unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    // A pipe whose reader never reads: 64 KiB of pipe, 64 queued records, then drops.
    let agent = Agent::start(&flows_args("", &metrics, config.to_str().unwrap()), Stdio::piped());
    loopback_connections(200, 5_000);
    assert!(agent.wait_stderr("the output is not keeping up: dropped", Duration::from_secs(20)), "{}", agent.stderr_text());
    // The agent itself goes on: ticks keep completing, health stays green.
    let t0 = scrape(&metrics, "sluice_ticks_total");
    thread::sleep(Duration::from_secs(1));
    let t1 = scrape(&metrics, "sluice_ticks_total");
    assert!(t1 >= t0 + 2.0, "ticks stalled behind the blocked output: {t0} -> {t1}");
    assert_eq!(http_get(&metrics, "/healthz").unwrap().0, 200);
    assert!(scrape(&metrics, "sluice_output_dropped_records_total") > 0.0);
    // Shutdown does not wait forever on the stuck reader.
    let status = agent.stop(Duration::from_secs(30)).expect("stopped within 30 s of SIGTERM");
    assert!(status.success(), "{status}");
}

#[test]
fn a_closed_stdout_is_said_and_the_agent_runs_on() {
    require_root();
    let dir = TempDir::new("closed");
    let config = dir.0.join("sluice.toml");
    std::fs::write(&config, "").unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut agent = Agent::start(&flows_args("", &metrics, config.to_str().unwrap()), Stdio::piped());
    drop(agent.child.stdout.take()); // the consumer goes away
    loopback_connections(200, 5_000);
    assert!(agent.wait_stderr("the output failed (", Duration::from_secs(20)), "{}", agent.stderr_text());
    assert!(agent.stderr_text().contains("detection and learning go on"));
    let t0 = scrape(&metrics, "sluice_ticks_total");
    thread::sleep(Duration::from_secs(1));
    assert!(scrape(&metrics, "sluice_ticks_total") > t0, "the agent stopped ticking");
    let status = agent.stop(Duration::from_secs(30)).expect("stopped within 30 s of SIGTERM");
    assert!(status.success(), "{status}");
}

#[test]
fn a_second_agent_on_the_same_state_file_refuses_and_one_with_its_own_runs_alongside() {
    require_root();
    let dir = TempDir::new("twice");
    let state = dir.0.join("state.json");
    let state = state.to_str().unwrap();
    let first = Agent::start(&["--probe", "cgroup", "--tick", "1s", "--state", state], Stdio::null());
    let out = Command::new(sluice_bin()).args(["run", "--probe", "cgroup", "--state", state]).stdin(Stdio::null()).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second agent ran");
    assert!(e.contains(&format!("another sluice (pid {}) is running with the state file {state}", first.child.id())), "{e}");
    // Its own state file: both attach, both see the same upload.
    let other = dir.0.join("other.json");
    let second = Sluice::start(&["--probe", "cgroup", "--tick", "1s", "--emit", "flows", "--state", other.to_str().unwrap()]).unwrap();
    let port = free_port();
    let sink = Sink::start(None, "tcp", "127.0.0.1", port, &[]).unwrap();
    let pid = run_child(Command::new("/usr/bin/python3").args(["-c", PY_UPLOAD, "127.0.0.1", &port.to_string(), "3000000"]), Duration::from_secs(30)).unwrap();
    sink.received().unwrap();
    let recs = second
        .wait_for("the upload", Duration::from_secs(20), |r| bytes_out_to(r, pid, "127.0.0.1", port) >= 3_000_000)
        .unwrap();
    assert_eq!(bytes_out_to(&recs, pid, "127.0.0.1", port), 3_000_000, "the second agent's count");
    drop(second);
    assert!(first.stop(Duration::from_secs(30)).is_some_and(|s| s.success()));
}
