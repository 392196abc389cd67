//! Deployment end to end on this host's kernel: container and pod attribution
//! for processes placed in cgroups shaped like each runtime's (and in network
//! namespaces of their own, as pods are), the metrics and health endpoint
//! scraped while the counters move, file output with rotation, and start-up
//! errors that say what to do.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sluice_tests::*;

const ALERTS: &[&str] = &["--tick", "1s", "--probe", "cgroup", "--emit", "all"];

fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let root = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
    });
    PathBuf::from(root.expect("a cgroup v2 mount (the cgroup backend needs one anyway)"))
}

/// A cgroup directory tree removed (innermost first) when the test ends.
struct CgroupDir {
    dirs: Vec<PathBuf>,
}

impl CgroupDir {
    fn create(root: &Path, rel: &str) -> CgroupDir {
        let mut dirs = Vec::new();
        let mut cur = root.to_path_buf();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            cur = cur.join(part);
            if !cur.exists() {
                std::fs::create_dir(&cur).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", cur.display()));
                dirs.push(cur.clone());
            }
        }
        CgroupDir { dirs }
    }

    fn leaf(&self) -> &Path {
        self.dirs.last().expect("a new cgroup")
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A 64-hex container id and an RFC 4122 pod UID unique to this test run.
fn ids(tag: u32) -> (String, String) {
    let id = format!("{:016x}", 0x5eed_0000_0000_0000u64 | (std::process::id() as u64) << 8 | tag as u64).repeat(4);
    let uid = format!("5b6c1a2e-9f3d-4c1b-8a7e-{:012x}", (std::process::id() as u64) << 8 | tag as u64);
    (id, uid)
}

#[test]
fn a_containerd_pod_uploading_is_tagged_with_its_container_and_pod_and_the_metrics_move() {
    require_root();
    let host = TestHost::create().unwrap();
    let (id, uid) = ids(1);
    // The systemd-driver layout a kubelet + containerd node uses.
    let rel = format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    );
    let cg = CgroupDir::create(&cgroup2_root(), &rel);
    // The kubelet's log directories, which name the pod and the container.
    let logs = TempDir::new("kubelogs");
    std::fs::create_dir_all(logs.0.join(format!("pods/payments_api-7d9f8-xk2lp_{uid}/uploader"))).unwrap();
    std::fs::create_dir_all(logs.0.join("containers")).unwrap();
    std::fs::write(logs.0.join(format!("containers/api-7d9f8-xk2lp_payments_uploader-{id}.log")), "").unwrap();
    let dir = TempDir::new("pod");
    let config = dir.0.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[containers]\npod_logs = \"{}\"\ncontainer_logs = \"{}\"\n",
            logs.0.join("pods").display(),
            logs.0.join("containers").display()
        ),
    )
    .unwrap();
    let tool = dir.0.join("megasync");
    std::fs::copy("/usr/bin/curl", &tool).unwrap();
    let payload = dir.0.join("x.bin");
    std::fs::File::create(&payload).unwrap().set_len(20 * MB).unwrap();

    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let sluice = Sluice::start(&[ALERTS, &["--config", config.to_str().unwrap(), "--metrics-addr", &metrics_addr]].concat()).unwrap();
    assert!(retry(Duration::from_secs(10), || http_get(&metrics_addr, "/healthz").is_ok_and(|(s, _)| s == 200)), "healthz never answered 200");
    let (status, before) = http_get(&metrics_addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert_eq!(metric(&before, "sluice_backend_info{backend=\"cgroup\"}"), Some(1.0), "{before}");
    assert_eq!(metric(&before, "sluice_alerts_total{rule=\"sluice.exfil_tool_upload\"}"), None);

    // The pod: its own network namespace (the test host's) and the container's
    // cgroup; the server is on this side of the veth, as a service off the node.
    let port = free_port();
    let sink = Sink::start(None, "http", &host.local_v4, port, &[]).unwrap();
    // Into the cgroup first: `ip netns exec` remounts /sys for the namespace.
    // It execs without forking, so the pid is the uploader's.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {} {} -sS -o /dev/null -T {} http://{}:{port}/",
        cg.leaf().display(),
        host.name,
        tool.display(),
        payload.display(),
        host.local_v4
    );
    let pid = run_child(Command::new("/bin/sh").args(["-c", &script]), Duration::from_secs(60)).unwrap();
    sink.received().unwrap();
    let recs = sluice
        .wait_for("the Mega rule", Duration::from_secs(20), |r| alerts_of(r, "sluice.exfil_tool_upload").iter().any(|a| a["process"]["pid"] == pid))
        .unwrap();
    // The alert is written during a tick, which is counted once it ends: the
    // first tick can still be finishing.
    let ticks_before = metric(&before, "sluice_ticks_total").unwrap_or(0.0);
    let mut after = String::new();
    assert!(retry(Duration::from_secs(10), || {
        after = http_get(&metrics_addr, "/metrics").map(|(_, b)| b).unwrap_or_default();
        metric(&after, "sluice_ticks_total").unwrap_or(0.0) > ticks_before
    }));
    let recs_all = sluice.stop().unwrap();

    let a = alerts_of(&recs, "sluice.exfil_tool_upload").into_iter().find(|a| a["process"]["pid"] == pid).unwrap().clone();
    assert_eq!(a["container"]["id"], id.as_str(), "{a}");
    assert_eq!(a["container"]["runtime"], "containerd");
    assert_eq!(a["container"]["name"], "uploader");
    assert_eq!(a["orchestrator"]["type"], "kubernetes");
    assert_eq!(a["orchestrator"]["namespace"], "payments");
    assert_eq!(a["orchestrator"]["resource"]["type"], "pod");
    assert_eq!(a["orchestrator"]["resource"]["name"], "api-7d9f8-xk2lp");
    assert_eq!(a["orchestrator"]["resource"]["id"], uid.as_str());
    let flow = flows_of(&recs_all, pid).into_iter().find(|f| f["destination"]["port"] == port).expect("the pod's flow record").clone();
    assert_eq!(flow["container"]["id"], id.as_str());
    assert_eq!(flow["orchestrator"]["resource"]["name"], "api-7d9f8-xk2lp");
    assert_eq!(flow["network"]["direction"], "egress");
    // A process outside any container carries neither.
    assert!(recs_all.iter().filter(|r| r["process"]["pid"] != pid).all(|r| r.get("orchestrator").is_none()));

    let moved = |series: &str| (metric(&before, series).unwrap_or(0.0), metric(&after, series).unwrap_or(0.0));
    let (e0, e1) = moved("sluice_kernel_events_total");
    assert!(e1 > e0, "kernel events did not move: {e0} -> {e1}");
    let (t0, t1) = moved("sluice_ticks_total");
    assert!(t1 > t0, "ticks did not move: {t0} -> {t1}");
    assert_eq!(moved("sluice_alerts_total{rule=\"sluice.exfil_tool_upload\"}").1, 1.0, "{after}");
    assert!(moved("sluice_flow_records_total").1 > 0.0, "{after}");
    assert!(metric(&after, "sluice_tick_duration_seconds_count").unwrap_or(0.0) >= t1, "{after}");
    assert!(metric(&after, "sluice_map_capacity{map=\"flows\"}").unwrap_or(0.0) >= 1024.0, "{after}");
    assert!(metric(&after, "sluice_processes_tracked").unwrap_or(0.0) > 0.0, "{after}");
}

/// A named cgroup v1 hierarchy of our own (no controllers), so the v1 case runs
/// on any host, hybrid or pure v2.
struct V1Hierarchy(PathBuf);

impl V1Hierarchy {
    fn mount() -> V1Hierarchy {
        let dir = std::env::temp_dir().join(format!("sluice-v1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "cgroup", "-o", &format!("none,name=sluicetest{}", std::process::id()), "cgroup"])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a named cgroup v1 hierarchy at {}", dir.display());
        V1Hierarchy(dir)
    }
}

impl Drop for V1Hierarchy {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_docker_container_on_a_cgroup_v1_hierarchy_is_recognised_from_proc() {
    require_root();
    let host = TestHost::create().unwrap();
    let v1 = V1Hierarchy::mount();
    let (id, _) = ids(2);
    // Docker's cgroupfs layout; the v2 path stays the root, as on a v1 host.
    let cg = CgroupDir::create(&v1.0, &format!("docker/{id}"));
    let dir = TempDir::new("docker");
    let tool = dir.0.join("rclone");
    std::fs::copy("/usr/bin/curl", &tool).unwrap();
    let payload = dir.0.join("x.bin");
    std::fs::File::create(&payload).unwrap().set_len(12 * MB).unwrap();
    let sluice = Sluice::start(ALERTS).unwrap();
    let port = free_port();
    let sink = Sink::start(Some(&host), "http", &host.peer_v4, port, &[]).unwrap();
    // Rate-limited so the sender is alive at a tick: a v1 path is read from
    // /proc/<pid>/cgroup, which exists only while the process does.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} -sS -o /dev/null --limit-rate 4M -T {} http://{}:{port}/",
        cg.leaf().display(),
        tool.display(),
        payload.display(),
        host.peer_v4
    );
    let pid = run_child(Command::new("/bin/sh").args(["-c", &script]), Duration::from_secs(60)).unwrap();
    sink.received().unwrap();
    let recs = sluice
        .wait_for("the rclone alert", Duration::from_secs(20), |r| alerts_of(r, "sluice.exfil_tool_upload").iter().any(|a| a["process"]["pid"] == pid))
        .unwrap();
    drop(sluice);
    let a = alerts_of(&recs, "sluice.exfil_tool_upload").into_iter().find(|a| a["process"]["pid"] == pid).unwrap().clone();
    assert_eq!(a["container"]["id"], id.as_str(), "{a}");
    assert_eq!(a["container"]["runtime"], "docker");
    assert!(a.get("orchestrator").is_none(), "not a pod: {a}");
}

#[test]
fn output_to_a_file_rotates_by_size_and_keeps_whole_json_lines() {
    require_root();
    let dir = TempDir::new("outfile");
    let out = dir.0.join("flows.json");
    let config = dir.0.join("sluice.toml");
    std::fs::write(&config, "[output]\nrotate_size = \"4KiB\"\nrotate_keep = 3\n").unwrap();
    let target = format!("file:{}", out.display());
    let sluice = Sluice::start(&["--tick", "200ms", "--probe", "cgroup", "--emit", "flows", "--config", config.to_str().unwrap(), "--output", &target]).unwrap();
    // Flow records: many short loopback uploads, each its own connection
    // (client and accepted socket both report).
    loopback_connections(40, 20_000);
    std::thread::sleep(Duration::from_secs(2));
    let stdout_records = sluice.stop().unwrap();
    assert!(stdout_records.is_empty(), "records went to stdout too: {}", stdout_records.len());
    let rotated: Vec<PathBuf> = (1..=4).map(|n| dir.0.join(format!("flows.json.{n}"))).filter(|p| p.exists()).collect();
    assert!(!rotated.is_empty(), "nothing rotated");
    assert!(!dir.0.join("flows.json.4").exists(), "more than rotate_keep files");
    let mut lines = 0;
    for f in rotated.iter().chain([&out]) {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.len() as u64 <= 4096 + 2048, "{} is {} bytes, over the size by more than a record", f.display(), text.len());
        assert!(text.is_empty() || text.ends_with('\n'), "{} ends mid-record", f.display());
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", f.display()));
            assert_eq!(v["event"]["action"], "flow-summary");
            lines += 1;
        }
    }
    assert!(lines >= 4, "{lines} records");
}

/// Run `sluice ARGS` expecting a failure; its stderr.
fn fails(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success(), "{cmd:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn start_up_errors_name_what_to_do() {
    require_root();
    // Root without capabilities (an empty bounding set): the caps are named.
    let e = fails(Command::new("setpriv").args(["--bounding-set", "-all", "--inh-caps", "-all"]).arg(sluice_bin()).args(["run", "--state", ""]));
    assert!(e.contains("missing CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_PTRACE") && e.contains("grant CAP_BPF"), "{e}");
    // A metrics port in use, before anything is loaded.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let e = fails(Command::new(sluice_bin()).args(["run", "--state", "", "--metrics-addr", &addr]));
    assert!(e.contains(&format!("binding the metrics listener on {addr}")) && e.contains("in use"), "{e}");
    let e = fails(Command::new(sluice_bin()).args(["run", "--state", "", "--metrics-addr", "localhost"]));
    assert!(e.contains("metrics.addr") && e.contains("127.0.0.1:9464"), "{e}");
    // Output that cannot be written, or is not an output.
    let e = fails(Command::new(sluice_bin()).args(["run", "--state", "", "--output", "file:/proc/sluice-nowhere/alerts.json"]));
    assert!(e.contains("opening the output file /proc/sluice-nowhere/alerts.json"), "{e}");
    let e = fails(Command::new(sluice_bin()).args(["run", "--state", "", "--output", "syslog"]));
    assert!(e.contains("the command line") && e.contains("file:PATH"), "{e}");
    // A cgroup root that is not the cgroup v2 hierarchy.
    let dir = TempDir::new("cgroot");
    let config = dir.0.join("sluice.toml");
    std::fs::write(&config, format!("[kernel]\ncgroup_root = \"{}\"\n", dir.0.display())).unwrap();
    let e = fails(Command::new(sluice_bin()).args(["run", "--state", "", "--config", config.to_str().unwrap()]));
    assert!(e.contains("kernel.cgroup_root") && e.contains("is not a cgroup v2 mount"), "{e}");
    // A backend this kernel refuses is named with the reason and a hint (this
    // host forbids fentry; the qemu guest allows it, and vm.rs covers it there).
    let check = Command::new(sluice_bin()).arg("check").output().unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    if report.lines().any(|l| l.trim_start().starts_with("fentry   not usable")) {
        let e = fails(Command::new(sluice_bin()).args(["run", "--state", "", "--probe", "fentry"]));
        assert!(e.contains("starting the fentry backend") && e.contains("sluice: hint:"), "{e}");
    }
}

#[test]
fn cri_o_podman_and_docker_systemd_layouts_tag_their_flows() {
    require_root();
    let host = TestHost::create().unwrap();
    let root = cgroup2_root();
    let (crio_id, uid) = ids(3);
    let (podman_id, _) = ids(4);
    let (docker_id, _) = ids(5);
    let layouts = [
        (format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-{crio_id}.scope", uid.replace('-', "_")), "cri-o", crio_id, Some(uid.clone())),
        (format!("machine.slice/libpod-{podman_id}.scope/container"), "podman", podman_id, None),
        (format!("system.slice/docker-{docker_id}.scope"), "docker", docker_id, None),
    ];
    let sluice = Sluice::start(&["--tick", "1s", "--probe", "cgroup", "--emit", "flows"]).unwrap();
    let mut sent = Vec::new();
    for (rel, runtime, id, pod) in &layouts {
        let cg = CgroupDir::create(&root, rel);
        let port = free_port();
        let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
        let script = format!("echo $$ > {}/cgroup.procs && exec /usr/bin/python3 -c \"$0\" {} {port} 1000000", cg.leaf().display(), host.peer_v4);
        let pid = run_child(Command::new("/bin/sh").args(["-c", &script, PY_UPLOAD]), Duration::from_secs(30)).unwrap();
        sink.received().unwrap();
        sent.push((pid, port, *runtime, id.clone(), pod.clone(), cg));
    }
    let recs = sluice
        .wait_for("a flow of every sender", Duration::from_secs(20), |r| {
            sent.iter().all(|(pid, port, ..)| flows_of(r, *pid).iter().any(|f| f["destination"]["port"] == *port))
        })
        .unwrap();
    drop(sluice);
    for (pid, port, runtime, id, pod, _) in &sent {
        let f = flows_of(&recs, *pid).into_iter().find(|f| f["destination"]["port"] == *port).unwrap();
        assert_eq!(f["container"]["runtime"], *runtime, "{f}");
        assert_eq!(f["container"]["id"], id.as_str(), "{f}");
        assert_eq!(f["orchestrator"]["resource"]["id"].as_str(), pod.as_deref(), "{f}");
    }
}
