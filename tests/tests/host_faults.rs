//! Faults around the agent, end to end on this host's kernel: an output
//! consumer that stops reading or goes away, a second agent on one host, bad
//! configuration and state files, crashes and restarts, and floods beyond the
//! kernel maps' capacity.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
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

/// `sluice run ARGS` expected to refuse: its stderr (stdout must stay empty).
fn refused(args: &[&str]) -> String {
    let out = Command::new(sluice_bin()).arg("run").args(args).stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success(), "sluice ran with {args:?}");
    assert!(out.stdout.is_empty(), "stdout written by a refused start: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn config_files_with_unknown_keys_wrong_types_or_out_of_range_values_are_refused_by_name() {
    let dir = TempDir::new("configs");
    for (name, text, says) in [
        ("unknown-key.toml", "[agent]\ntick_rate = \"1s\"\n", "tick_rate"),
        ("unknown-section.toml", "[detection]\nsigma = 2\n", "detection"),
        ("wrong-type.toml", "[kernel]\nflows_max = \"lots\"\n", "flows_max"),
        ("bad-duration.toml", "[detect]\nshort_window = \"a minute\"\n", "a minute"),
        ("out-of-range.toml", "[kernel]\nflows_max = 10\n", "kernel.flows_max = 10: allowed 1024 to 4194304"),
        ("negative.toml", "[detect.volume_anomaly]\nalpha = -1.0\n", "alpha"),
        ("save-storm.toml", "[state]\nsave_every = \"0s\"\n", "state.save_every"),
        ("not-toml.toml", "[agent\ntick = ", "not-toml.toml"),
    ] {
        let path = dir.0.join(name);
        std::fs::write(&path, text).unwrap();
        let err = refused(&["--config", path.to_str().unwrap(), "--state", ""]);
        assert!(err.contains(name) || err.contains(says), "{name}: the error names neither the file nor the key:\n{err}");
        assert!(err.contains(says), "{name}: expected {says:?} in:\n{err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "{name} was rewritten");
    }
    // Flags are checked by the same rules.
    let err = refused(&["--tick", "1ms", "--state", ""]);
    assert!(err.contains("agent.tick") && err.contains("the command line"), "{err}");
}

#[test]
fn unusable_state_files_are_set_aside_or_left_alone_and_the_agent_runs() {
    require_root();
    let dir = TempDir::new("states");
    let run = |state: &std::path::Path| -> String {
        let s = Sluice::start(&["--probe", "cgroup", "--tick", "1s", "--state", state.to_str().unwrap()]).unwrap();
        let err = s.stderr_text();
        s.stop().unwrap_or_else(|e| panic!("{}: {e}", state.display()));
        err
    };
    // Wrong version (a newer sluice's file), someone else's JSON, a truncated
    // (empty) file: each is moved aside with the reason, and a fresh one saved.
    for (name, content, reason) in [
        ("newer.json", &b"{\"sluice_state\": 99, \"saved_at\": 1}"[..], "state format version 99, this sluice reads 2"),
        ("foreign.json", b"{\"hello\": \"world\"}", "not a sluice state file"),
        ("empty.json", b"", "not valid JSON"),
    ] {
        let path = dir.0.join(name);
        std::fs::write(&path, content).unwrap();
        let err = run(&path);
        assert!(err.contains(&format!("state file {} is unusable ({reason}", path.display())), "{name}:\n{err}");
        let aside: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{name}.corrupt-")))
            .collect();
        assert_eq!(aside.len(), 1, "{name}: the old file is kept aside");
        assert_eq!(std::fs::read(aside[0].path()).unwrap(), content, "{name}: kept byte for byte");
        let saved: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(saved["sluice_state"], 2, "{name}: a fresh state was saved at shutdown");
    }
    // A version 1 file (identities hashed another way): migrated, keeping
    // what it learned per executable and dropping what no key matches now.
    let v1 = dir.0.join("v1.json");
    let model = r#"{"mean":14.0,"var":0.1,"samples":30,"first_t":1.0,"last_t":2.0,"day_start_mean":14.0,"day_start_t":1.0}"#;
    let text = format!(r#"{{"sluice_state":1,"saved_at":2,"baselines":{{"models":{{"exe:/usr/bin/rsync":{model},"/usr/bin/rsync#1a2b3c4d":{model}}}}}}}"#);
    std::fs::write(&v1, text).unwrap();
    let err = run(&v1);
    assert!(err.contains("state migrated from the previous format") && err.contains("restored 1 baselines"), "{err}");
    let saved: Value = serde_json::from_slice(&std::fs::read(&v1).unwrap()).unwrap();
    assert_eq!(saved["sluice_state"], 2);
    assert!(saved["baselines"]["models"]["exe:/usr/bin/rsync"].is_object(), "{saved}");
    // A state path sluice cannot read (a directory): never replaced.
    let unreadable = dir.0.join("a-directory");
    std::fs::create_dir(&unreadable).unwrap();
    std::fs::write(unreadable.join("keep"), "x").unwrap();
    let err = run(&unreadable);
    assert!(err.contains("cannot read state file") && err.contains("not saving"), "{err}");
    assert!(unreadable.join("keep").exists() && unreadable.is_dir(), "the unreadable path was touched");
    // A state path that cannot be written (its parent is a file): said at
    // start, and at each save; the agent runs.
    let file = dir.0.join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let err = run(&file.join("state.json"));
    assert!(err.contains("cannot write next to the state file"), "{err}");
    assert!(err.contains("kept in memory only"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

#[test]
fn after_kill_9_a_restart_restores_what_was_learned_and_raises_no_duplicate_alerts() {
    require_root();
    let host = TestHost::create().unwrap();
    let dir = TempDir::new("crash");
    let state = dir.0.join("state.json");
    let config = dir.0.join("sluice.toml");
    std::fs::write(&config, "[state]\nsave_every = \"1s\"\n").unwrap();
    let tool = dir.0.join("syncd");
    std::fs::copy(helper_bin("netload"), &tool).unwrap();
    let args = ["--probe", "cgroup", "--tick", "1s", "--emit", "all", "--config", config.to_str().unwrap(), "--state", state.to_str().unwrap()];
    let upload = || {
        let port = free_port();
        let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
        let pid = run_child(
            Command::new(&tool).args(["tls", &host.peer_v4, &port.to_string(), "gfs208n140.userstorage.mega.co.nz", "6000000"]),
            Duration::from_secs(60),
        )
        .unwrap();
        sink.received().unwrap();
        (pid, port)
    };
    let mega = |r: &[Value], pid: u32| alerts_of(r, "sluice.exfil_tool_upload").iter().any(|a| a["process"]["pid"] == pid);

    let first = Sluice::start(&args).unwrap();
    let (pid, _) = upload();
    let before = first.wait_for("the Mega alert", Duration::from_secs(20), |r| mega(r, pid)).unwrap();
    let agent_id = before[0]["agent"]["id"].as_str().expect("agent.id").to_string();
    // Two saves' worth, then a crash: no shutdown work at all.
    thread::sleep(Duration::from_millis(2500));
    first.kill();
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).expect("a state file saved before the crash")).unwrap();
    assert!(saved["alerts"]["dedup"].as_array().is_some_and(|d| !d.is_empty()), "the alert's dedup entry was saved: {saved}");

    // The same program uploads the same way again after the restart: the flow
    // is seen, the alert is not repeated (one per hour per program).
    let second = Sluice::start(&args).unwrap();
    assert!(second.stderr_text().contains("restored"), "{}", second.stderr_text());
    let (pid2, port2) = upload();
    let recs = second
        .wait_for("the second upload's flow", Duration::from_secs(20), |r| bytes_out_to(r, pid2, &host.peer_v4, port2) >= 6_000_000)
        .unwrap();
    thread::sleep(Duration::from_secs(2));
    let recs = [recs, second.records()].concat();
    assert!(!mega(&recs, pid2), "the restart raised the alert again");
    let recs = second.stop().unwrap();
    assert!(recs.iter().all(|r| r["event"]["kind"] != "alert" || r["process"]["pid"] != pid2), "no alert at all for the repeat");
    // The agent is the same one to a SIEM: its id came back with the state.
    assert!(!recs.is_empty() && recs.iter().all(|r| r["agent"]["id"] == agent_id.as_str()), "agent.id changed across the restart");
}

#[test]
fn sigterm_at_any_point_of_a_tick_leaves_a_whole_state_file() {
    require_root();
    let dir = TempDir::new("sigterm");
    let state = dir.0.join("state.json");
    let config = dir.0.join("sluice.toml");
    std::fs::write(&config, "[state]\nsave_every = \"1s\"\n[detect]\nshort_window = \"1s\"\n").unwrap();
    let args = ["--probe", "cgroup", "--tick", "200ms", "--emit", "flows", "--config", config.to_str().unwrap(), "--state", state.to_str().unwrap()];
    // Traffic throughout, so ticks and saves have work to do when the signal lands.
    let busy = KillOnDrop(
        Command::new("/usr/bin/python3")
            .args(["-c", "import socket,time\nl=socket.socket();l.bind(('127.0.0.1',0));l.listen(64)\nfor i in range(4000):\n  c=socket.create_connection(l.getsockname());c.sendall(b'x'*20000);a,_=l.accept();a.recv(65536);c.close();a.close();time.sleep(0.005)\n"])
            .spawn()
            .unwrap(),
    );
    for i in 0..6u64 {
        let s = Sluice::start(&args).unwrap();
        // Land the signal at a different point of the 200 ms tick each time.
        thread::sleep(Duration::from_millis(1100 + i * 37));
        s.stop().unwrap_or_else(|e| panic!("round {i}: {e}"));
        let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap_or_else(|e| panic!("round {i}: state not whole: {e}"));
        assert_eq!(saved["sluice_state"], 2);
    }
    drop(busy);
    let aside = std::fs::read_dir(&dir.0).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains("corrupt")).count();
    assert_eq!(aside, 0, "a restart found a corrupt state file");
    let temps = std::fs::read_dir(&dir.0).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).count();
    assert_eq!(temps, 0, "temporary files left behind");
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn floods_beyond_the_kernel_maps_are_counted_memory_stays_bounded_and_no_exec_is_lost() {
    require_root();
    let dir = TempDir::new("flood");
    let config = dir.0.join("sluice.toml");
    // The smallest maps sluice allows, so a test-sized flood overflows them.
    std::fs::write(&config, "[kernel]\nflows_max = 1024\nsockets_max = 1024\n").unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Agent::start(
        &["--probe", "cgroup", "--tick", "1s", "--state", "", "--metrics-addr", &metrics, "--config", config.to_str().unwrap()],
        Stdio::null(),
    );
    let pid = agent.child.id();
    let rss_before = rss_kib(pid);
    // 2,000 connections open at once (4,000 sockets and flow entries, both
    // ends), each having sent 2 KB, held across a tick, then closed.
    let flood = "import resource,socket,time\n\
        resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))\n\
        l=socket.socket(); l.bind(('127.0.0.1',0)); l.listen(4096)\n\
        held=[]\n\
        for i in range(2000):\n    c=socket.create_connection(l.getsockname()); c.sendall(b'f'*2000); a,_=l.accept(); held+=[c,a]\n\
        time.sleep(2.5)\n";
    run_child(Command::new("/usr/bin/python3").args(["-c", flood]), Duration::from_secs(120)).unwrap();
    let events_before = scrape(&metrics, "sluice_kernel_events_total");
    // 5,000 fork+exec+exit of a trivial program.
    let storm = Command::new("/bin/sh").args(["-c", "i=0; while [ $i -lt 5000 ]; do /bin/true; i=$((i+1)); done"]).status().unwrap();
    assert!(storm.success());
    thread::sleep(Duration::from_secs(3));
    let m = http_get(&metrics, "/metrics").unwrap().1;
    let get = |s: &str| metric(&m, s).unwrap_or(0.0);
    let evicted = get("sluice_flows_evicted_total");
    let events = get("sluice_kernel_events_total") - events_before;
    let drops: f64 = ["ringbuf_drop_exec", "ringbuf_drop_fork", "ringbuf_drop_exit"]
        .iter()
        .map(|n| get(&format!("sluice_kernel_counter_total{{name=\"{n}\"}}")))
        .sum();
    let rss_after = rss_kib(pid);
    eprintln!("measured: flood: {evicted} flow evictions counted, {events} kernel events for 5000 execs, {drops} ring drops, RSS {rss_before} -> {rss_after} KiB");
    assert!(evicted > 0.0, "12,000 flows through a 1,024-entry map and no eviction counted:\n{m}");
    assert!(get("sluice_map_entries{map=\"flows\"}") <= 1024.0);
    assert_eq!(drops, 0.0, "exec/fork/exit events lost:\n{m}");
    // fork, exec and exit of each /bin/true (the shell's own events on top).
    assert!(events >= 15_000.0, "only {events} kernel events for 5,000 execs");
    assert!(rss_after < 64 * 1024, "RSS {rss_after} KiB after the floods");
    assert_eq!(http_get(&metrics, "/healthz").unwrap().0, 200, "the agent fell behind");
    assert!(agent.stop(Duration::from_secs(30)).is_some_and(|s| s.success()));
}

#[test]
fn floods_of_dns_answers_tcp_dns_trickles_and_client_hellos_during_an_exec_storm_lose_no_exec() {
    require_root();
    let host = TestHost::create().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Agent::start(&["--probe", "cgroup", "--tick", "1s", "--state", "", "--metrics-addr", &metrics], Stdio::null());
    let pid = agent.child.id();
    let rss_before = rss_kib(pid);
    // A socket here that the test host floods with datagrams from port 53
    // (each one a DNS copy for the agent), and 3,000 ClientHellos sent from
    // here to the test host (each a connection-start copy).
    let port = free_port();
    let rx = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{}',{port}))\ns.settimeout(2)\nprint('ready',flush=True)\ntry:\n    while True: s.recv(4096)\nexcept OSError: pass\n",
        host.local_v4
    );
    let mut receiver = Command::new("/usr/bin/python3").args(["-c", &rx]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(receiver.stdout.take().unwrap()), &mut line).unwrap();
    let _receiver = KillOnDrop(receiver);
    let flood = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{}',53))\nd=b'\\x12\\x34\\x81\\x80'+bytes(1200)\nfor i in range(200000): s.sendto(d,('{}',{port}))\n",
        host.peer_v4, host.local_v4
    );
    let mut flooder = KillOnDrop(host.command("/usr/bin/python3").args(["-c", &flood]).spawn().unwrap());
    let hello: String = client_hello(Some("flood.example"), 400).iter().map(|b| format!("\\x{b:02x}")).collect();
    let sink_port = free_port();
    let _sink = KillOnDrop(
        host.command("/usr/bin/python3")
            .args(["-c", &format!("import socket\nl=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('{}',{sink_port})); l.listen(4096); l.settimeout(60)\nwhile True:\n    c,_=l.accept(); c.close()\n", host.peer_v4)])
            .spawn()
            .unwrap(),
    );
    thread::sleep(Duration::from_millis(500));
    let hellos = format!(
        "import socket\nfor i in range(3000):\n    c=socket.create_connection(('{}',{sink_port}), timeout=5)\n    try: c.sendall(b'{hello}')\n    except OSError: pass\n    c.close()\n",
        host.peer_v4
    );
    let mut helloer = KillOnDrop(
        Command::new("/usr/bin/python3")
            .args(["-c", &hellos])
            .spawn()
            .unwrap(),
    );
    // 1,500 DNS-over-TCP connections to a test-host "resolver" that answers
    // each with the start of a 64 KiB message and then trickles a byte a
    // second: more partial reassemblies than the agent keeps (512).
    let trickle_server = "import selectors,socket,time\nl=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('0.0.0.0',53)); l.listen(4096)\nimport resource; resource.setrlimit(resource.RLIMIT_NOFILE,(8192,8192))\nconns=[]; end=time.time()+40; last=0\nl.settimeout(0.05)\nwhile time.time()<end:\n    try:\n        c,_=l.accept(); c.sendall(b'\\xff\\xff'+bytes(200)); conns.append(c)\n    except OSError: pass\n    if time.time()-last>=1:\n        last=time.time()\n        for c in conns:\n            try: c.send(b'\\x00')\n            except OSError: pass\n";
    let _trickler = KillOnDrop(
        host.command("/usr/bin/python3")
            .args(["-c", trickle_server])
            .spawn()
            .unwrap(),
    );
    thread::sleep(Duration::from_millis(300));
    let trickle_clients = format!(
        "import resource,socket,time\nresource.setrlimit(resource.RLIMIT_NOFILE,(8192,8192))\ncs=[]\nfor i in range(1500):\n    try: cs.append(socket.create_connection(('{}',53), timeout=5))\n    except OSError: pass\ntime.sleep(4)\nprint(len(cs),flush=True)\n",
        host.peer_v4
    );
    let mut trickled = KillOnDrop(
        Command::new("/usr/bin/python3")
            .args(["-c", &trickle_clients])
            .spawn()
            .unwrap(),
    );
    let execs_before = scrape(&metrics, "sluice_execs_total");
    let storm = Command::new("/bin/sh").args(["-c", "i=0; while [ $i -lt 3000 ]; do /bin/true; i=$((i+1)); done"]).status().unwrap();
    assert!(storm.success());
    let _ = flooder.0.wait();
    let _ = helloer.0.wait();
    let _ = trickled.0.wait();
    thread::sleep(Duration::from_secs(3));
    let m = http_get(&metrics, "/metrics").unwrap().1;
    let get = |s: &str| metric(&m, s).unwrap_or(0.0);
    let counter = |n: &str| get(&format!("sluice_kernel_counter_total{{name=\"{n}\"}}"));
    let execs = get("sluice_execs_total") - execs_before;
    let lost = counter("ringbuf_drop_exec") + counter("ringbuf_drop_fork") + counter("ringbuf_drop_exit");
    let shed = counter("payload_rate_limited") + counter("ringbuf_drop_payload");
    let tcp_dns_evicted = get("sluice_naming_total{name=\"tcp_dns_evicted\"}");
    let rss_after = rss_kib(pid);
    eprintln!("measured: name flood: {execs} execs seen of 3000+, {lost} process events lost, {shed} payload copies shed, {tcp_dns_evicted} TCP DNS reassemblies evicted, RSS {rss_before} -> {rss_after} KiB");
    assert!(
        tcp_dns_evicted >= 1.0,
        "1,500 partial TCP DNS messages and no reassembly evicted: the bound did not hold\n{m}"
    );
    assert_eq!(
        lost, 0.0,
        "exec/fork/exit events lost to a name flood:\n{m}"
    );
    assert!(execs >= 3000.0, "only {execs} execs seen of the 3,000 run");
    assert!(rss_after < 128 * 1024, "RSS {rss_after} KiB after the flood");
    assert_eq!(http_get(&metrics, "/healthz").unwrap().0, 200, "the agent fell behind");
    assert!(agent.stop(Duration::from_secs(30)).is_some_and(|s| s.success()));
}

/// A line from `child`'s stdout.
fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    line.trim().to_string()
}

#[test]
fn a_slow_proc_walk_holds_neither_ticks_nor_health_and_its_socket_is_placed_when_it_ends() {
    require_root();
    let host = TestHost::create().unwrap();
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    // A connection older than the sensor, held by no process while the
    // start-up scan runs (in flight to a child over SCM_RIGHTS): no owner is
    // found for it at start, so its bytes send the agent to a background scan.
    let bytes = 20 * MB;
    let mut passer = KillOnDrop(
        Command::new("/usr/bin/python3")
            .args([fixture("fdpass.py").to_str().unwrap(), &host.peer_v4, &port.to_string(), &bytes.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let carrier: u32 = first_line(&mut passer.0).parse().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let sluice = Sluice::start(&["--tick", "200ms", "--probe", "cgroup", "--emit", "flows", "--metrics-addr", &metrics]).unwrap();
    // Then make /proc slow: 50 processes holding 19,000 descriptors each
    // (this machine's per-process limit is 20,000), about a million links
    // for the scan's /proc walk to read: seconds of work.
    let mut holders = KillOnDrop(
        Command::new("/usr/bin/python3").args([fixture("fdhold.py").to_str().unwrap(), "50", "19000"]).stdout(Stdio::piped()).spawn().unwrap(),
    );
    assert_eq!(first_line(&mut holders.0), "ready");
    let mut tell = passer.0.stdin.take().unwrap();
    tell.write_all(b"go\n").unwrap();
    // Watch the agent while the carrier uploads (~4 s) and the scans run,
    // until no socket waits for one.
    let (mut during, mut scans) = (Vec::new(), 0.0);
    let (go, deadline) = (Instant::now(), Instant::now() + Duration::from_secs(120));
    while Instant::now() < deadline {
        let (_, body) = http_get(&metrics, "/metrics").unwrap();
        let health = http_get(&metrics, "/healthz").unwrap().0;
        scans = metric(&body, "sluice_socket_scan_duration_seconds_count").unwrap_or(0.0);
        if metric(&body, "sluice_socket_scan_running") == Some(1.0) {
            during.push((metric(&body, "sluice_ticks_total").unwrap_or(0.0), health));
        }
        if scans >= 1.0 && metric(&body, "sluice_socket_scan_waiting") == Some(0.0) && go.elapsed() > Duration::from_secs(6) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    tell.write_all(b"done\n").unwrap();
    assert_eq!(sink.received().unwrap(), bytes);
    assert!(retry(Duration::from_secs(30), || passer.0.try_wait().unwrap().is_some()), "the carrier did not finish");
    thread::sleep(Duration::from_millis(500));
    let records = sluice.stop().unwrap();
    drop(holders);
    assert!(scans >= 1.0, "no background scan finished");
    let ticks = during.last().map(|d| d.0).unwrap_or(0.0) - during.first().map(|d| d.0).unwrap_or(0.0);
    eprintln!("measured: while the background scan ran, {} samples, {ticks} ticks completed", during.len());
    assert!(ticks >= 2.0, "ticks stalled while the /proc walk ran: {during:?}");
    assert!(during.iter().all(|d| d.1 == 200), "/healthz failed while the /proc walk ran: {during:?}");
    // The bytes sent while it ran were held, then given to the carrier.
    let got = bytes_out_to(&records, carrier, &host.peer_v4, port);
    assert_ratio("a socket placed by a slow background scan", got, bytes, 0.99, 1.03);
    let f = flows_of(&records, carrier).into_iter().find(|r| r["destination"]["port"] == port).unwrap();
    assert_eq!(f["sluice"]["attribution"], "procfs", "{f}");
}
