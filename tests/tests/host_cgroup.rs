//! End-to-end on this host's kernel (the cgroup backend): the real sluice binary
//! loads the real eBPF programs while real programs upload to test hosts in
//! network namespaces (and over loopback). Each flow must be attributed to the
//! right pid, executable and destination, with 99-103% of the bytes sent
//! (cgroup_skb counts packets, so IP/TCP headers come on top of the payload).

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::*;

const TICK: &[&str] = &["--emit", "flows", "--tick", "1s", "--probe", "cgroup"];

fn first_flow<'a>(records: &'a [Value], pid: u32, ip: &str, port: u16) -> &'a Value {
    flows_of(records, pid)
        .into_iter()
        .find(|r| r["destination"]["ip"] == ip && r["destination"]["port"] == port)
        .unwrap_or_else(|| panic!("no flow record for pid {pid} to {ip}:{port}; records of that pid: {:?}", flows_of(records, pid)))
}

/// Upload `bytes` with the python uploader to `addr:port`, sink running on `host`.
fn python_upload(host: Option<&TestHost>, addr: &str, bytes: u64) -> (Vec<Value>, u32, u16) {
    require_root();
    let port = free_port();
    let sluice = Sluice::start(TICK).unwrap();
    let sink = Sink::start(host, "tcp", addr, port, &[]).unwrap();
    let pid = run_child(
        Command::new("/usr/bin/python3").args(["-c", PY_UPLOAD, addr, &port.to_string(), &bytes.to_string()]),
        Duration::from_secs(120),
    )
    .unwrap();
    assert_eq!(sink.received().unwrap(), bytes, "the sink must receive every byte");
    let records = sluice.stop().unwrap();
    (records, pid, port)
}

fn assert_python_flow(records: &[Value], pid: u32, ip: &str, port: u16, bytes: u64, scope: &str) {
    let got = bytes_out_to(records, pid, ip, port);
    assert_ratio(&format!("python3 pid {pid} -> {ip}:{port}"), got, bytes, 0.99, 1.03);
    let f = first_flow(records, pid, ip, port);
    let wire = sum_to(records, pid, ip, port, "wire_bytes_out");
    assert!(wire >= got, "wire bytes ({wire}) include headers, so never fewer than payload ({got})");
    assert_eq!(f["process"]["executable"], "/usr/bin/python3", "{f}");
    assert_eq!(f["process"]["args"][0], "/usr/bin/python3", "{f}");
    assert_eq!(f["process"]["parent"]["pid"], std::process::id(), "parent is the test process: {f}");
    assert_eq!(f["network"]["transport"], "tcp");
    assert_eq!(f["network"]["direction"], "egress");
    assert_eq!(f["sluice"]["peer_scope"], scope);
    assert_eq!(f["sluice"]["attribution"], "kernel");
    assert_eq!(f["event"]["kind"], "event");
    assert!(f["@timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{f}");
    assert!(f["host"]["name"].is_string());
    assert_eq!(f["user"]["id"], "0");
    // What Elastic's data exfiltration module reads, in ECS's own fields.
    assert_eq!(sluice_tests::ecs::missing_for_exfil_module(f), Vec::<&str>::new(), "{f}");
    assert_eq!((f["user"]["name"].as_str(), f["process"]["parent"]["executable"].as_str()), (Some("root"), std::env::current_exe().ok().and_then(|e| e.to_str().map(str::to_string)).as_deref()), "{f}");
    assert_eq!(f["source"]["bytes"], f["sluice"]["bytes_out"]);
    assert!(f["network"]["community_id"].as_str().is_some_and(|c| c.starts_with("1:")), "{f}");
    assert!(f["agent"]["id"].as_str().is_some_and(|id| id.len() == 36), "{f}");
}

#[test]
fn python_upload_to_test_host_is_attributed_to_its_pid() {
    let host = TestHost::create().unwrap();
    let bytes = 50 * MB;
    let (records, pid, port) = python_upload(Some(&host), &host.peer_v4, bytes);
    assert_python_flow(&records, pid, &host.peer_v4, port, bytes, "private");
    assert_eq!(first_flow(&records, pid, &host.peer_v4, port)["network"]["type"], "ipv4");
}

#[test]
fn python_upload_over_loopback_is_attributed_and_the_server_side_is_ingress() {
    let bytes = 50 * MB;
    let (records, pid, port) = python_upload(None, "127.0.0.1", bytes);
    assert_python_flow(&records, pid, "127.0.0.1", port, bytes, "loopback");
    // The sink's accepted socket: owned by the sink (via its bound port), opened by the peer.
    let server: Vec<&Value> = records
        .iter()
        .filter(|r| r["source"]["port"] == port && r["network"]["direction"] == "ingress")
        .collect();
    assert!(
        !server.is_empty(),
        "no ingress record for the sink's accepted socket on port {port}; records touching it: {:?}",
        records.iter().filter(|r| r["source"]["port"] == port || r["destination"]["port"] == port).collect::<Vec<_>>()
    );
    let received: u64 = server.iter().map(|r| r["sluice"]["bytes_in"].as_u64().unwrap_or(0)).sum();
    assert_ratio("sink bytes_in", received, bytes, 0.99, 1.03);
    assert_eq!(server[0]["sluice"]["attribution"], "listener");
    assert_eq!(server[0]["process"]["executable"], "/usr/bin/python3");
}

#[test]
fn ipv6_and_v4_mapped_uploads_are_attributed() {
    let host = TestHost::create().unwrap();
    let bytes = 20 * MB;
    let (records, pid, port) = python_upload(Some(&host), &host.peer_v6, bytes);
    assert_python_flow(&records, pid, &host.peer_v6, port, bytes, "private");
    assert_eq!(first_flow(&records, pid, &host.peer_v6, port)["network"]["type"], "ipv6");

    // Over ::1, segments beyond 64 KiB (BIG TCP) leave with a hop-by-hop jumbo
    // header between the IPv6 and TCP headers.
    let (records, pid, port) = python_upload(None, "::1", bytes);
    assert_python_flow(&records, pid, "::1", port, bytes, "loopback");

    // An AF_INET6 socket talking to ::ffff:a.b.c.d sends IPv4 on the wire.
    let port = free_port();
    let sluice = Sluice::start(TICK).unwrap();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    let mapped = format!("::ffff:{}", host.peer_v4);
    let script = "import socket,sys\ns=socket.socket(socket.AF_INET6)\ns.connect((sys.argv[1],int(sys.argv[2])))\ns.sendall(b'm'*int(sys.argv[3]))\ns.shutdown(1)\ns.recv(1)\n";
    let pid = run_child(
        Command::new("/usr/bin/python3").args(["-c", script, &mapped, &port.to_string(), &(10 * MB).to_string()]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(sink.received().unwrap(), 10 * MB);
    let records = sluice.stop().unwrap();
    assert_ratio("v4-mapped upload", bytes_out_to(&records, pid, &host.peer_v4, port), 10 * MB, 0.99, 1.03);
    assert_eq!(first_flow(&records, pid, &host.peer_v4, port)["network"]["type"], "ipv4");
}

#[test]
fn curl_put_upload_is_attributed_to_curl() {
    require_root();
    let host = TestHost::create().unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-curl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("payload.bin");
    let bytes = 50 * MB;
    std::fs::write(&file, vec![b'c'; bytes as usize]).unwrap();
    let port = free_port();
    let sluice = Sluice::start(TICK).unwrap();
    let sink = Sink::start(Some(&host), "http", &host.peer_v4, port, &[]).unwrap();
    let url = format!("http://{}:{}/upload", host.peer_v4, port);
    let pid = run_child(
        Command::new("/usr/bin/curl").args(["-sS", "-o", "/dev/null", "-T"]).arg(&file).arg(&url),
        Duration::from_secs(120),
    )
    .unwrap();
    assert_eq!(sink.received().unwrap(), bytes);
    let records = sluice.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_ratio("curl -T", bytes_out_to(&records, pid, &host.peer_v4, port), bytes, 0.99, 1.03);
    let f = first_flow(&records, pid, &host.peer_v4, port);
    assert_eq!(f["process"]["executable"], "/usr/bin/curl");
    assert_eq!(f["process"]["name"], "curl");
    assert!(f["process"]["args"].as_array().unwrap().iter().any(|a| a == "-T"), "{f}");
}

/// 5,000 datagrams of 1,200 bytes to a UDP sink on a test host, sent by
/// `sender(peer, port, count, size)`: (records, pid, peer, port, payload).
fn udp_upload(sender: impl Fn(&str, u16, u64, u64) -> Command) -> (Vec<Value>, u32, String, u16, u64) {
    require_root();
    let host = TestHost::create().unwrap();
    let port = free_port();
    let (count, size) = (5000u64, 1200u64);
    let sluice = Sluice::start(TICK).unwrap();
    let sink = Sink::start(Some(&host), "udp", &host.peer_v4, port, &[&(count * size).to_string()]).unwrap();
    let pid = run_child(&mut sender(&host.peer_v4, port, count, size), Duration::from_secs(60)).unwrap();
    let _ = sink.received();
    (sluice.stop().unwrap(), pid, host.peer_v4.clone(), port, count * size)
}

#[test]
fn unconnected_udp_sender_is_attributed() {
    // sendto() on an unbound, unconnected socket: only the sendmsg hook sees its owner.
    let script = "import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nd=b'u'*int(sys.argv[4])\nfor i in range(int(sys.argv[3])):\n    s.sendto(d,(sys.argv[1],int(sys.argv[2])))\n    if i%200==199: time.sleep(0.002)\n";
    let (records, pid, peer, port, payload) = udp_upload(|peer, port, count, size| {
        let mut c = Command::new("/usr/bin/python3");
        c.args(["-c", script, peer, &port.to_string(), &count.to_string(), &size.to_string()]);
        c
    });
    assert_ratio("udp sendto", bytes_out_to(&records, pid, &peer, port), payload, 0.99, 1.03);
    let f = first_flow(&records, pid, &peer, port);
    assert_eq!(f["network"]["transport"], "udp");
    assert_eq!(f["network"]["direction"], "egress");
    assert_eq!(f["process"]["executable"], "/usr/bin/python3");
}

#[test]
fn udp_from_a_dual_stack_socket_to_a_v4_mapped_peer_counts_once() {
    let (records, pid, peer, port, payload) = udp_upload(|peer, port, count, size| {
        let mut c = Command::new(helper_bin("netload"));
        c.args(["udp", &format!("::ffff:{peer}"), &port.to_string(), &count.to_string(), &size.to_string()]);
        c
    });
    assert_ratio("udp from an AF_INET6 socket to ::ffff:v4", bytes_out_to(&records, pid, &peer, port), payload, 0.99, 1.03);
}

#[test]
fn an_mptcp_upload_is_attributed() {
    require_root();
    let host = TestHost::create().unwrap();
    let port = free_port();
    let netload = helper_bin("netload");
    let sluice = Sluice::start(TICK).unwrap();
    let sink = host.command(netload.to_str().unwrap()).args(["sink", "mptcp", &host.peer_v4, &port.to_string()]).stdout(Stdio::piped()).spawn().unwrap();
    let mut sink = KillOnDrop(sink);
    let mut out = BufReader::new(sink.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let bytes = 20 * MB;
    let pid = run_child(Command::new(&netload).args(["mptcp", &host.peer_v4, &port.to_string(), &bytes.to_string()]), Duration::from_secs(60)).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("received {bytes}"));
    let records = sluice.stop().unwrap();
    // The subflows are the kernel's sockets; their packets carry the bytes.
    assert_ratio("MPTCP upload", bytes_out_to(&records, pid, &host.peer_v4, port), bytes, 0.99, 1.03);
}

#[test]
fn a_process_that_lives_a_millisecond_is_still_named() {
    require_root();
    let host = TestHost::create().unwrap();
    let port = free_port();
    let bytes = MB;
    let burst = helper_bin("burst");
    assert!(burst.is_file(), "{} missing: cargo xtask test builds it", burst.display());
    let sluice = Sluice::start(TICK).unwrap();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    let started = Instant::now();
    let pid = run_child(Command::new(&burst).args([&host.peer_v4, &port.to_string(), &bytes.to_string()]), Duration::from_secs(30)).unwrap();
    let lived = started.elapsed();
    assert_eq!(sink.received().unwrap(), bytes);
    let records = sluice.stop().unwrap();
    eprintln!("burst lived about {lived:?} (spawn to reap, upper bound)");
    // Gone long before the tick: only the kernel's exec record can name it.
    assert_ratio("burst", bytes_out_to(&records, pid, &host.peer_v4, port), bytes, 0.99, 1.03);
    let f = first_flow(&records, pid, &host.peer_v4, port);
    assert_eq!(f["process"]["executable"], burst.to_str().unwrap(), "{f}");
    assert_eq!(f["process"]["name"], "burst");
    assert_eq!(f["process"]["args"][1], host.peer_v4.as_str());
    assert_eq!(f["process"]["args"][3], bytes.to_string());
}

#[test]
fn a_worker_that_outlives_its_main_thread_keeps_its_process_name() {
    require_root();
    let host = TestHost::create().unwrap();
    let port = free_port();
    let netload = helper_bin("netload");
    let sluice = Sluice::start(TICK).unwrap();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    // main() calls pthread_exit at once; the worker sends 500 KB every 0.5 s
    // for 10 s, past the 7 s an exited process is kept for.
    let (chunk, count) = (500_000u64, 20u64);
    let pid = run_child(
        Command::new(&netload).args(["thread-exit", &host.peer_v4, &port.to_string(), &chunk.to_string(), &count.to_string()]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(sink.received().unwrap(), chunk * count);
    let records = sluice.stop().unwrap();
    assert_ratio("thread-exit worker", bytes_out_to(&records, pid, &host.peer_v4, port), chunk * count, 0.99, 1.03);
    let flows: Vec<&Value> = flows_of(&records, pid).into_iter().filter(|r| r["destination"]["port"] == port).collect();
    assert!(flows.len() >= 8, "one record a tick while it sends: {flows:?}");
    assert!(flows.iter().all(|f| f["process"]["executable"] == netload.to_str().unwrap()), "a record lost the process: {flows:?}");
}

/// Run `launcher ARGS... netload send ADDR PORT 1000000 65536` (the launcher
/// execs the rest) to the test host, and return the upload's first flow record's `process.args`.
fn args_of_launched_upload(launcher: &[&str]) -> (Vec<Value>, Vec<String>) {
    let host = TestHost::create().unwrap();
    let port = free_port();
    let netload = helper_bin("netload");
    let sluice = Sluice::start(TICK).unwrap();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    let mut cmd = Command::new(launcher[0]);
    cmd.args(&launcher[1..]).args([netload.to_str().unwrap(), "send", &host.peer_v4, &port.to_string(), "1000000", "65536"]);
    let pid = run_child(&mut cmd, Duration::from_secs(60)).unwrap();
    assert_eq!(sink.received().unwrap(), 1_000_000);
    let records = sluice.stop().unwrap();
    let f = first_flow(&records, pid, &host.peer_v4, port).clone();
    assert_eq!(f["process"]["executable"], netload.to_str().unwrap(), "{f}");
    let args = f["process"]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap_or("").to_string()).collect();
    (vec![f], args)
}

#[test]
fn a_32_bit_int_0x80_exec_gets_its_own_argv_not_the_previous_programs() {
    require_root();
    let dir = TempDir::new("int80");
    let (obj, bin) = (dir.0.join("int80exec.o"), dir.0.join("int80exec"));
    let built = Command::new("as").arg("--32").arg("-o").arg(&obj).arg(fixture("int80exec.s")).status().unwrap().success()
        && Command::new("ld").args(["-m", "elf_i386", "-o"]).arg(&bin).arg(&obj).status().unwrap().success();
    assert!(built, "as --32 / ld -m elf_i386 failed (binutils is installed by cargo xtask test)");
    let (recs, args) = args_of_launched_upload(&[bin.to_str().unwrap()]);
    let netload = helper_bin("netload");
    // The syscall tracepoints never saw this exec: argv comes from the new
    // program's stack, and none of it is int80exec's.
    assert_eq!(args.first().map(String::as_str), netload.to_str(), "{recs:?}");
    assert_eq!(args.last().map(String::as_str), Some("65536"), "{recs:?}");
    assert!(!args.iter().any(|a| a.contains("int80exec")), "stale argv from the launcher: {args:?}");
}

#[test]
fn arguments_in_pages_not_yet_faulted_in_are_all_recorded() {
    require_root();
    let dir = TempDir::new("untouched");
    let netload = helper_bin("netload");
    let file = dir.0.join("args");
    let (recs, args) = args_of_launched_upload(&[netload.to_str().unwrap(), "exec-untouched", file.to_str().unwrap()]);
    // argv[0] is on the launcher's heap (read at syscall entry); the rest
    // only the kernel's copy for the new program holds.
    assert_eq!(args.len(), 6, "arguments lost: {args:?} {recs:?}");
    assert_eq!((args[1].as_str(), args[5].as_str()), ("send", "65536"));
    assert!(recs[0]["sluice"]["process"]["args_truncated"].is_null(), "{recs:?}");
}

#[test]
fn a_program_run_by_a_relative_name_that_changes_directory_keeps_its_own_path() {
    require_root();
    let host = TestHost::create().unwrap();
    let port = free_port();
    // In a temporary directory (often its own mount: the walk crosses it).
    let dir = TempDir::new("relexec");
    let bin = dir.0.join("fetcher");
    std::fs::copy(helper_bin("netload"), &bin).unwrap();
    let sluice = Sluice::start(TICK).unwrap();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    // exec("./fetcher"), which at once moves to /usr/bin: joining the name
    // with its cwd would place it at /usr/bin/fetcher.
    let pid = run_child(
        Command::new("./fetcher").current_dir(&dir.0).args(["chdir-send", "/usr/bin", &host.peer_v4, &port.to_string(), "1000000"]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(sink.received().unwrap(), 1_000_000);
    let records = sluice.stop().unwrap();
    let f = first_flow(&records, pid, &host.peer_v4, port);
    let real = std::fs::canonicalize(&bin).unwrap();
    assert_eq!(f["process"]["executable"], real.to_str().unwrap(), "{f}");
}

#[test]
fn a_port_bound_in_two_network_namespaces_lends_neither_owner_to_the_others_connections() {
    require_root();
    let (one, two) = (TestHost::create().unwrap(), TestHost::create().unwrap());
    let port = free_port();
    let sluice = Sluice::start(TICK).unwrap();
    // Server A (first host's namespace) takes a 15 MB upload, sent at 1 MB a
    // second, and never writes (so no send re-owns its socket); server B
    // binds the same port in the second namespace after it.
    let serve = format!(
        "import socket\nl=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('0.0.0.0',{port})); l.listen(4); l.settimeout(60)\nprint('ready',flush=True)\nc,_=l.accept()\nn=0\nwhile True:\n    d=c.recv(1<<16)\n    if not d: break\n    n+=len(d)\nprint(n,flush=True)\n"
    );
    let idle = format!("import socket,time\nl=socket.socket(); l.bind(('0.0.0.0',{port})); l.listen(4)\nprint('ready',flush=True)\ntime.sleep(40)\n");
    let start = |h: &TestHost, script: &str| {
        let mut c = h.command("/usr/bin/python3").args(["-c", script]).stdout(Stdio::piped()).spawn().unwrap();
        let mut out = BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        (KillOnDrop(c), out)
    };
    let (a, mut a_out) = start(&one, &serve);
    let (b, _) = start(&two, &idle);
    let (a_pid, b_pid) = (a.0.id(), b.0.id());
    let upload = format!("import socket,time\ns=socket.create_connection(('{}',{port}),timeout=60)\nfor i in range(15):\n    s.sendall(b'u'*1000000); time.sleep(1)\ns.close()\n", one.peer_v4);
    assert!(Command::new("/usr/bin/python3").args(["-c", &upload]).status().unwrap().success());
    let mut got = String::new();
    a_out.read_line(&mut got).unwrap();
    assert_eq!(got.trim(), "15000000");
    let records = sluice.stop().unwrap();
    drop((a, b));
    let taken = |pid: u32| -> u64 {
        flows_of(&records, pid).iter().filter(|r| r["source"]["port"] == port).map(|r| r["sluice"]["bytes_in"].as_u64().unwrap_or(0)).sum()
    };
    assert_eq!(taken(b_pid), 0, "the other namespace's listener was credited with A's connection");
    // Left to the agent, A's socket is placed through sock_diag in its namespace.
    let a_bytes = taken(a_pid);
    eprintln!("measured: listener in two namespaces: {a_bytes} of 15000000 bytes placed on the right server ({:?}), none on the other", flows_of(&records, a_pid).iter().map(|r| r["sluice"]["attribution"].clone()).collect::<Vec<_>>());
    assert!(a_bytes > 0, "A's connection never found its owner");
}

#[test]
fn a_socket_older_than_the_sensor_is_attributed_through_sock_diag() {
    require_root();
    let host = TestHost::create().unwrap();
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    // Connect first, send only when told: the sensor never sees connect().
    let script = "import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])))\nprint('connected',flush=True)\nsys.stdin.readline()\ns.sendall(b'o'*int(sys.argv[3]))\ns.shutdown(1)\ns.recv(1)\n";
    let bytes = 10 * MB;
    let mut client = KillOnDrop(
        Command::new("/usr/bin/python3")
            .args(["-c", script, &host.peer_v4, &port.to_string(), &bytes.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(client.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    let sluice = Sluice::start(TICK).unwrap();
    client.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "client did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sink.received().unwrap(), bytes);
    let pid = client.0.id();
    let records = sluice.stop().unwrap();
    assert_ratio("pre-existing socket", bytes_out_to(&records, pid, &host.peer_v4, port), bytes, 0.99, 1.03);
    let f = first_flow(&records, pid, &host.peer_v4, port);
    assert_eq!(f["sluice"]["attribution"], "procfs", "{f}");
    assert_eq!(f["network"]["direction"], "egress", "{f}");
    assert!(f["process"]["executable"].as_str().unwrap().contains("python3"), "{f}");
}

#[test]
fn a_server_listening_before_the_sensor_owns_the_short_connections_it_accepts_after() {
    require_root();
    let host = TestHost::create().unwrap();
    let port = free_port();
    // The server (in the test host's namespace) listens before sluice starts,
    // so no hook sees its bind; each connection it accepts afterwards gets
    // 500 kB and is closed at once, long before any scan could place it.
    let (conns, each) = (20u64, 500_000u64);
    let serve = format!(
        "import socket\nl=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('0.0.0.0',{port})); l.listen(32); l.settimeout(90)\nprint('ready',flush=True)\nfor i in range({conns}):\n    c,_=l.accept(); c.sendall(b'r'*{each}); c.close()\n"
    );
    let mut server = KillOnDrop(host.command("/usr/bin/python3").args(["-c", &serve]).stdout(Stdio::piped()).spawn().unwrap());
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let server_pid = server.0.id();
    let sluice = Sluice::start(TICK).unwrap();
    let fetch = format!(
        "import socket\nn=0\nfor i in range({conns}):\n    s=socket.create_connection(('{}',{port}),timeout=30)\n    while True:\n        d=s.recv(1<<16)\n        if not d: break\n        n+=len(d)\n    s.close()\nprint(n)\n",
        host.peer_v4
    );
    let out = Command::new("/usr/bin/python3").args(["-c", &fetch]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), (conns * each).to_string(), "the client must get every byte");
    let records = sluice.stop().unwrap();
    drop(server);
    let served: Vec<&Value> = flows_of(&records, server_pid).into_iter().filter(|r| r["source"]["port"] == port).collect();
    let sent: u64 = served.iter().map(|r| r["sluice"]["bytes_out"].as_u64().unwrap_or(0)).sum();
    let unknown: u64 = flows_of(&records, 0).iter().filter(|r| r["source"]["port"] == port).map(|r| r["sluice"]["bytes_out"].as_u64().unwrap_or(0)).sum();
    eprintln!("measured: listener older than the sensor: {sent} of {} response bytes on the server, {unknown} unknown", conns * each);
    assert_ratio("responses of a listener older than the sensor", sent, conns * each, 0.99, 1.03);
    for f in &served {
        assert_eq!(f["sluice"]["attribution"], "listener", "{f}");
        assert_eq!(f["network"]["direction"], "ingress", "the client opened it: {f}");
    }
}

#[test]
fn sigterm_flushes_the_last_partial_tick() {
    require_root();
    // A tick far longer than the test: only the shutdown flush can print the flow.
    let sluice = Sluice::start(&["--emit", "flows", "--tick", "10min", "--probe", "cgroup"]).unwrap();
    let port = free_port();
    let sink = Sink::start(None, "tcp", "127.0.0.1", port, &[]).unwrap();
    let pid = run_child(
        Command::new("/usr/bin/python3").args(["-c", PY_UPLOAD, "127.0.0.1", &port.to_string(), &(5 * MB).to_string()]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(sink.received().unwrap(), 5 * MB);
    let records = sluice.stop().unwrap();
    assert_ratio("flushed at exit", bytes_out_to(&records, pid, "127.0.0.1", port), 5 * MB, 0.99, 1.03);
}

#[test]
fn text_format_prints_one_line_per_flow() {
    require_root();
    let mut child = Command::new(sluice_bin())
        .args(["run", "--emit", "flows", "--tick", "1s", "--format", "text", "--state", ""])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let mut lines = err.lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "sluice did not get ready");
        match lines.next() {
            Some(Ok(l)) if l.contains("sluice: ready") => break,
            Some(_) => continue,
            None => panic!("sluice exited early"),
        }
    }
    let port = free_port();
    let sink = Sink::start(None, "tcp", "127.0.0.1", port, &[]).unwrap();
    let pid = run_child(
        Command::new("/usr/bin/python3").args(["-c", PY_UPLOAD, "127.0.0.1", &port.to_string(), &MB.to_string()]),
        Duration::from_secs(60),
    )
    .unwrap();
    sink.received().unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(&format!("pid={pid} ")) && l.contains(&format!("127.0.0.1:{port}")))
        .unwrap_or_else(|| panic!("no text line for pid {pid}:\n{text}"));
    assert!(line.contains(" flow ") && line.contains("exe=/usr/bin/python3") && line.contains("egress"), "{line}");
}

#[test]
fn check_explains_the_backend_choice() {
    require_root();
    let out = Command::new(sluice_bin()).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sluice check failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for key in ["kernel:", "BTF (vmlinux):", "cgroup v2:", "tracefs:", "auto picks:"] {
        assert!(text.contains(key), "missing {key:?}:\n{text}");
    }
    assert!(text.lines().any(|l| l.trim_start().starts_with("cgroup") && l.contains("usable: programs load")), "{text}");
    assert!(text.contains("auto picks:        cgroup"), "{text}");
    // Containment's primitives, each tried (this host's kernel refuses BPF LSM
    // programs, as it refuses fentry; the guest's runs them: tests/tests/vm.rs).
    for primitive in ["cgroup_skb egress): yes", "(cgroup sock_create): yes", "(BPF LSM): ", "(sock_diag SOCK_DESTROY): yes"] {
        assert!(text.contains(primitive), "{primitive}: {text}");
    }
}

#[test]
fn a_backend_this_kernel_refuses_fails_with_a_clear_message() {
    require_root();
    // This host forbids BPF trampolines and has no kprobes.
    let out = Command::new(sluice_bin()).args(["run", "--probe", "fentry"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("starting the fentry backend") && err.contains("sluice check"), "{err}");
    let out = Command::new(sluice_bin()).args(["run", "--probe", "kprobe"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kprobe"), "{err}");
    assert!(out.stdout.is_empty(), "nothing on stdout when nothing ran");
}

#[test]
fn bad_config_is_rejected_before_anything_loads() {
    let dir = std::env::temp_dir().join(format!("sluice-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[agent]\ntick = \"fast\"\n").unwrap();
    let out = Command::new(sluice_bin()).args(["run", "--config"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("fast"), "{err}");
    let out = Command::new(sluice_bin()).args(["run", "--config", "/nonexistent/sluice.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sluice.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_privileges_the_error_names_the_missing_capabilities() {
    require_root();
    // setpriv (util-linux) drops to nobody with no capabilities at all.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(sluice_bin())
        .args(["run", "--emit", "flows"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("insufficient privileges") && err.contains("CAP_BPF") && err.contains("CAP_NET_ADMIN"), "{err}");
    assert!(out.stdout.is_empty());
}
