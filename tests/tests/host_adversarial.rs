//! An attacker who knows sluice is there, end to end on this host's kernel (the
//! cgroup backend): evasions that must still be attributed and alerted, and
//! hostile input that must not break the output. The send-path backends run the
//! backend-dependent cases (send calls, shared sockets) in the VM (`vm.rs`).

use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sluice_tests::*;

const FLOWS: &[&str] = &["--emit", "flows", "--tick", "1s", "--probe", "cgroup"];
const ALL: &[&str] = &["--emit", "all", "--tick", "1s", "--probe", "cgroup"];
const MEGA_NODE: &str = "gfs208n140.userstorage.mega.co.nz";

fn netload() -> String {
    helper_bin("netload").to_string_lossy().into_owned()
}

/// `netload ARGS` to completion (bounded); its pid.
fn netload_run(args: &[&str]) -> u32 {
    run_child(Command::new(netload()).args(args), Duration::from_secs(60)).unwrap()
}

fn flow_to(records: &[Value], pid: u32, port: u16) -> Option<&Value> {
    records.iter().find(|r| r["event"]["action"] == "flow-summary" && r["process"]["pid"] == pid && r["destination"]["port"] == port)
}

#[test]
fn a_socket_shared_across_fork_or_exec_counts_for_the_process_that_sends() {
    require_root();
    let sluice = Sluice::start(FLOWS).unwrap();
    // connect() in the parent, every byte written by a forked child.
    let port = free_port();
    let sink = Sink::start(None, "tcp", "127.0.0.1", port, &[]).unwrap();
    let out = Command::new(netload()).args(["inherit", "127.0.0.1", &port.to_string(), "4000000"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let child: u32 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("child pid=")?.parse().ok())
        .expect("netload prints its child's pid");
    assert_eq!(sink.received().unwrap(), 4_000_000);
    // connect() by netload, then the same pid execs head, which writes.
    let port2 = free_port();
    let sink2 = Sink::start(None, "tcp", "127.0.0.1", port2, &[]).unwrap();
    let exec_pid = netload_run(&["exec-send", "127.0.0.1", &port2.to_string(), "/bin/sh", "-c", "exec head -c 4000000 /dev/zero >&3"]);
    assert_eq!(sink2.received().unwrap(), 4_000_000);

    let recs = sluice
        .wait_for("both flows", Duration::from_secs(20), |r| {
            flow_to(r, child, port).is_some() && flow_to(r, exec_pid, port2).is_some_and(|f| f["process"]["name"] == "head")
        })
        .unwrap();
    let to_child = bytes_out_to(&recs, child, "127.0.0.1", port);
    assert_ratio("bytes the forked child sent on its parent's socket", to_child, 4_000_000, 0.99, 1.03);
    let parent_bytes: u64 = recs
        .iter()
        .filter(|r| r["destination"]["port"] == port && r["process"]["pid"] != child)
        .map(|r| r["sluice"]["bytes_out"].as_u64().unwrap_or(0))
        .sum();
    assert!(parent_bytes < 100_000, "the parent that only connected got {parent_bytes} bytes");
    let f = flow_to(&recs, exec_pid, port2).unwrap();
    assert_eq!(f["process"]["executable"], "/usr/bin/head", "{f}");
    assert_ratio("bytes head sent after the exec", bytes_out_to(&recs, exec_pid, "127.0.0.1", port2), 4_000_000, 0.99, 1.03);
    sluice.stop().unwrap();
}

#[test]
fn sendmsg_sendmmsg_sendfile_splice_and_io_uring_uploads_are_counted() {
    require_root();
    let dir = TempDir::new("sendcalls");
    let file = dir.0.join("payload.bin");
    std::fs::write(&file, incompressible(8_000_000, 3)).unwrap();
    let file = file.to_string_lossy().into_owned();
    let sluice = Sluice::start(FLOWS).unwrap();
    let mut cases = Vec::new();
    for (call, want) in [("sendmsg", 8_000_000u64), ("sendfile", 8_000_000), ("splice", 8_000_000), ("uring", 8_000_000)] {
        let port = free_port();
        let sink = Sink::start(None, "tcp", "127.0.0.1", port, &[]).unwrap();
        let p = port.to_string();
        let arg = if call == "sendfile" || call == "splice" { file.clone() } else { want.to_string() };
        let pid = netload_run(&[call, "127.0.0.1", &p, &arg]);
        assert_eq!(sink.received().unwrap(), want, "{call}");
        cases.push((call, pid, port, want));
    }
    let port = free_port();
    let sink = Sink::start(None, "udp", "127.0.0.1", port, &["4800000"]).unwrap();
    let pid = netload_run(&["sendmmsg", "127.0.0.1", &port.to_string(), "4000", "1200"]);
    let got = sink.received().unwrap();
    assert!(got >= 4_700_000, "the sink lost datagrams on loopback: {got}");
    cases.push(("sendmmsg", pid, port, 4_800_000));

    let recs = sluice
        .wait_for("a flow per send call", Duration::from_secs(20), |r| cases.iter().all(|(_, pid, port, _)| flow_to(r, *pid, *port).is_some()))
        .unwrap();
    for (call, pid, port, want) in cases {
        let got = bytes_out_to(&recs, pid, "127.0.0.1", port);
        eprintln!("measured: cgroup: {call}: {got} of {want} bytes");
        // cgroup_skb sees packets: the payload exactly, or a little more when a
        // datagram's bytes are counted by the wire (the bar is 3%).
        assert_ratio(call, got, want, 0.99, 1.03);
    }
    sluice.stop().unwrap();
}

#[test]
fn a_renamed_mega_client_in_tmp_with_a_false_argv0_splitting_its_upload_is_caught_by_destination() {
    require_root();
    let host = TestHost::create().unwrap();
    // A copy in /tmp that calls itself a kernel thread: nothing in its name,
    // path or argv says Mega; only where it sends does.
    let dir = TempDir::new("renamed");
    let tool = dir.0.join("kworker");
    std::fs::copy(helper_bin("netload"), &tool).unwrap();
    let sluice = Sluice::start(ALL).unwrap();

    // 1. Four threads, four parallel connections, 1.5 MB each (each under the 5 MiB floor).
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &["4"]).unwrap();
    let threaded = run_child(
        Command::new(&tool).arg0("[kworker/u8:2]").args(["threads", &host.peer_v4, &port.to_string(), MEGA_NODE, "4", "1500000"]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(sink.received().unwrap() >= 6_000_000);

    // 2. Six short-lived children of one shell, 1 MB each, every command line
    //    different (so no two share an identity).
    let port2 = free_port();
    let sink2 = Sink::start(Some(&host), "tcp", &host.peer_v4, port2, &["6"]).unwrap();
    let script = format!(
        "for l in a b c d e f; do \"$0\" tls {} {port2} {MEGA_NODE} 1000000 part-$l & done; wait",
        host.peer_v4
    );
    let shell = run_child(Command::new("/bin/sh").arg("-c").arg(&script).arg(&tool), Duration::from_secs(60)).unwrap();
    assert!(sink2.received().unwrap() >= 6_000_000);

    let mega = |r: &[Value], pred: &dyn Fn(&Value) -> bool| alerts_of(r, "sluice.exfil_tool_upload").into_iter().any(pred);
    let recs = sluice
        .wait_for("both Mega alerts", Duration::from_secs(20), |r| {
            mega(r, &|a| a["process"]["pid"] == threaded) && mega(r, &|a| a["process"]["parent"]["pid"] == shell)
        })
        .unwrap();
    let alerts = alerts_of(&recs, "sluice.exfil_tool_upload");
    let a = alerts.iter().find(|a| a["process"]["pid"] == threaded).unwrap();
    assert_eq!(a["process"]["executable"], tool.to_str().unwrap());
    assert_eq!(a["process"]["args"][0], "[kworker/u8:2]");
    assert!(a["event"]["reason"].as_str().unwrap().contains("storage service, so this is an upload to MEGA"), "{a}");
    assert!(a["sluice"]["bytes_out"].as_u64().unwrap() >= 5 * 1024 * 1024, "{a}");
    let b = alerts.iter().find(|a| a["process"]["parent"]["pid"] == shell).unwrap();
    assert_eq!(b["sluice"]["destination"]["service"], "MEGA");
    assert!(b["sluice"]["bytes_out"].as_u64().unwrap() >= 5 * 1024 * 1024, "the children's bytes add up: {b}");
    sluice.stop().unwrap();
}

#[test]
fn ipv6_and_udp_uploads_to_mega_still_alert() {
    require_root();
    let host = TestHost::create().unwrap();
    let dir = TempDir::new("v6udp");
    let tool = dir.0.join("syncd");
    std::fs::copy(helper_bin("netload"), &tool).unwrap();
    let sluice = Sluice::start(ALL).unwrap();
    // IPv6: named by its ClientHello.
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v6, port, &[]).unwrap();
    let v6 = run_child(Command::new(&tool).args(["tls", &host.peer_v6, &port.to_string(), MEGA_NODE, "6000000"]), Duration::from_secs(60)).unwrap();
    assert!(sink.received().unwrap() >= 6_000_000);
    // UDP (QUIC is encrypted: named by the DNS answer that preceded it).
    let port2 = free_port();
    let sink2 = Sink::start(Some(&host), "udp", &host.peer_v4, port2, &["6000000"]).unwrap();
    let udp = run_child(
        Command::new(&tool).args(["dns-send", &host.peer_v4, &port2.to_string(), MEGA_NODE, "6000000", "udp"]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(sink2.received().unwrap() >= 5_500_000, "loopback-speed UDP into a namespace lost too much");

    let recs = sluice
        .wait_for("the IPv6 and UDP Mega alerts", Duration::from_secs(20), |r| {
            let a = alerts_of(r, "sluice.exfil_tool_upload");
            a.iter().any(|a| a["process"]["pid"] == v6) && a.iter().any(|a| a["process"]["pid"] == udp)
        })
        .unwrap_or_else(|e| {
            let ours: Vec<String> =
                sluice.records().iter().filter(|r| r["process"]["pid"] == v6 || r["process"]["pid"] == udp).map(|r| r.to_string()).collect();
            panic!("{e}\nrecords of the two senders:\n{}", ours.join("\n"))
        });
    let alerts = alerts_of(&recs, "sluice.exfil_tool_upload");
    let a = alerts.iter().find(|a| a["process"]["pid"] == v6).unwrap();
    assert_eq!(a["destination"]["ip"], host.peer_v6.as_str());
    let b = alerts.iter().find(|a| a["process"]["pid"] == udp).unwrap();
    assert_eq!(b["network"]["transport"], "udp", "{b}");
    assert_eq!(b["destination"]["domain"], MEGA_NODE);
    sluice.stop().unwrap();
}

/// Spawn `program args` so that it gets pid `want` (ns_last_pid, bounded
/// retries): it waits on stdin before exec'ing, so a try that got another pid
/// is killed without having run. Returns the released child's pid.
fn spawn_with_pid(want: u32, program: &str, args: &[&str]) -> Option<u32> {
    use std::io::Write;
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (want - 1).to_string()).ok()?;
        let mut gate = Command::new("/bin/sh")
            .args(["-c", "read go && exec \"$0\" \"$@\""])
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        if gate.id() == want {
            gate.stdin.take()?.write_all(b"go\n").ok()?;
            let mut gate = KillOnDrop(gate);
            let _ = retry(Duration::from_secs(30), || gate.0.try_wait().ok().flatten().is_some());
            return Some(want);
        }
        let _ = gate.kill();
        let _ = gate.wait();
    }
    None
}

#[test]
fn a_pid_reused_by_another_program_is_a_new_process() {
    require_root();
    let sluice = Sluice::start(FLOWS).unwrap();
    let port = free_port();
    let sink = Sink::start(None, "tcp", "127.0.0.1", port, &[]).unwrap();
    let first = netload_run(&["send", "127.0.0.1", &port.to_string(), "2000000"]);
    sink.received().unwrap();
    // The first program is gone; another takes its pid.
    let port2 = free_port();
    let sink2 = Sink::start(None, "tcp", "127.0.0.1", port2, &[]).unwrap();
    let burst = helper_bin("burst").to_string_lossy().into_owned();
    let second = spawn_with_pid(first, &burst, &["127.0.0.1", &port2.to_string(), "3000000"])
        .expect("could not get the same pid again in 200 tries");
    assert_eq!(sink2.received().unwrap(), 3_000_000);

    let recs = sluice
        .wait_for("both programs' flows", Duration::from_secs(20), |r| flow_to(r, first, port).is_some() && flow_to(r, second, port2).is_some())
        .unwrap();
    let a = flow_to(&recs, first, port).unwrap();
    let b = flow_to(&recs, second, port2).unwrap();
    assert_eq!(a["process"]["name"], "netload", "{a}");
    assert_eq!(b["process"]["name"], "burst", "{b}");
    assert_ne!(a["process"]["entity_id"], b["process"]["entity_id"], "one pid, two processes, two entity ids");
    assert_ratio("the second program's bytes", bytes_out_to(&recs, second, "127.0.0.1", port2), 3_000_000, 0.99, 1.03);
    assert_ratio("the first program's bytes", bytes_out_to(&recs, first, "127.0.0.1", port), 2_000_000, 0.99, 1.03);
    sluice.stop().unwrap();
}

#[test]
fn hostile_names_and_command_lines_keep_json_lines_whole_and_text_lines_escaped() {
    use std::os::unix::ffi::OsStrExt;
    require_root();
    let dir = TempDir::new("argv");
    // The executable's own name: a newline with a forged record after it, an
    // ANSI escape, invalid UTF-8.
    let exe = dir.0.join(std::ffi::OsStr::from_bytes(b"up\n{\"event\":{\"kind\":\"alert\"}}\x1b[31m\xff"));
    std::fs::copy(helper_bin("netload"), &exe).unwrap();
    let text_out = dir.0.join("flows.txt");
    let json = Sluice::start(FLOWS).unwrap();
    let text_arg = format!("file:{}", text_out.display());
    let text = Sluice::start(&[FLOWS, &["--format", "text", "--output", &text_arg]].concat()).unwrap();

    let port = free_port();
    let sink = Sink::start(None, "tcp", "127.0.0.1", port, &[]).unwrap();
    let long = "L".repeat(4096);
    let hostile: Vec<&std::ffi::OsStr> = vec![
        "--x=\n{\"event\":{\"kind\":\"alert\"}}".as_ref(),
        "\x1b]0;pwned\x07\x1b[2J\x1b[31mred".as_ref(),
        "\"double\" 'single' \\back\\ `tick`".as_ref(),
        std::ffi::OsStr::from_bytes(b"bad\xff\xfeutf8\xc3"),
        long.as_ref(),
    ];
    // netload's tls mode ignores trailing arguments.
    let pid = run_child(
        Command::new(&exe).args(["tls", "127.0.0.1", &port.to_string(), "example.org", "300000"]).args(&hostile),
        Duration::from_secs(30),
    )
    .unwrap();
    sink.received().unwrap();
    json.wait_for("the hostile flow", Duration::from_secs(20), |r| flow_to(r, pid, port).is_some()).unwrap();
    let text_has_it = || std::fs::read(&text_out).is_ok_and(|t| String::from_utf8_lossy(&t).contains(&format!("pid={pid} ")));
    assert!(retry(Duration::from_secs(20), text_has_it), "no text line for pid {pid}");
    // stop() fails on any stdout line that is not exactly one JSON object.
    let recs = json.stop().unwrap();
    text.stop().unwrap();

    assert!(recs.iter().all(|r| r["event"]["kind"] != "alert"), "a forged record got through");
    let f = flow_to(&recs, pid, port).unwrap();
    let shown_exe = f["process"]["executable"].as_str().unwrap();
    assert!(shown_exe.ends_with("up\n{\"event\":{\"kind\":\"alert\"}}\x1b[31m\\xff"), "{shown_exe:?}");
    let args: Vec<&str> = f["process"]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[6], "--x=\n{\"event\":{\"kind\":\"alert\"}}", "kept exactly, escaped by JSON: {args:?}");
    assert_eq!(args[7], "\x1b]0;pwned\x07\x1b[2J\x1b[31mred");
    assert_eq!(args[8], "\"double\" 'single' \\back\\ `tick`");
    assert_eq!(args[9], "bad\\xff\\xfeutf8\\xc3", "invalid UTF-8 bytes shown as \\xNN");
    // The 4 KiB argument is cut to what the kernel copies, never past a record.
    assert!(args.len() < 10 || args[10].chars().all(|c| c == 'L'), "{args:?}");

    let shown = String::from_utf8(std::fs::read(&text_out).unwrap()).expect("text output is valid UTF-8");
    assert!(!shown.chars().any(|c| c.is_control() && c != '\n'), "a control character reached the text output");
    let ours: Vec<&str> = shown.lines().filter(|l| l.contains(&format!("pid={pid} "))).collect();
    assert!(ours.iter().all(|l| l.contains("up\\n{\"event\"") && l.contains("\\u{1b}[31m\\xff")), "{ours:?}");
    assert!(!shown.lines().any(|l| l.starts_with("{\"event\"")), "a hostile name started a line of its own");
}
