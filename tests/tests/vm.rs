//! The fentry and kprobe backends on Debian's kernel, from the serial log of the
//! qemu guest that `cargo xtask vm-test` boots (the scenarios run inside the
//! guest; this checks what sluice printed there). Bytes come from the send call's
//! return value on these backends, so the bar is 1% of the payload.

use std::collections::HashMap;

use serde_json::Value;
use sluice_tests::bytes_out_to;

struct Run {
    flows: Vec<Value>,
    alerts: Vec<Value>,
    err: String,
}

struct Guest {
    check: String,
    kernel: String,
    /// backend -> flow records, alerts, stderr
    runs: HashMap<String, Run>,
    /// (backend, scenario) -> sender pid
    pids: HashMap<(String, String), u32>,
    /// backend -> the containment run's records, and what its sender, sinks and sensor said
    respond: HashMap<String, (Vec<Value>, String)>,
    errors: Vec<String>,
}

fn section<'a>(text: &'a str, begin: &str, end: &str) -> Option<&'a str> {
    let s = text.find(begin)? + begin.len();
    let e = text[s..].find(end)? + s;
    Some(&text[s..e])
}

fn guest() -> Guest {
    let path = std::env::var("SLUICE_VM_LOG").expect("run through `cargo xtask vm-test` (it boots the guest and sets SLUICE_VM_LOG)");
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let text = String::from_utf8_lossy(&raw).replace('\r', "");
    let mut g = Guest {
        check: section(&text, "=====CHECK=====", "=====END CHECK=====").unwrap_or("").to_string(),
        kernel: text.split("=====KERNEL ").nth(1).and_then(|s| s.split("=====").next()).unwrap_or("").to_string(),
        runs: HashMap::new(),
        pids: HashMap::new(),
        respond: HashMap::new(),
        errors: text.lines().filter(|l| l.starts_with("SCENARIO-ERROR")).map(str::to_string).collect(),
    };
    for b in ["fentry", "kprobe", "cgroup"] {
        let out = section(
            &text,
            &format!("=====BEGIN {b}=====\n"),
            &format!("=====END {b}====="),
        )
        .unwrap_or_else(|| panic!("no output section for {b} in {path}"));
        let (alerts, flows): (Vec<Value>, Vec<Value>) = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<Value>(l)
                    .unwrap_or_else(|e| panic!("{b}: not JSON ({e}): {l}"))
            })
            .partition(|r| r["event"]["kind"] == "alert");
        let err = section(
            &text,
            &format!("=====STDERR {b}=====\n"),
            &format!("=====END STDERR {b}====="),
        )
        .unwrap_or("")
        .to_string();
        g.runs.insert(b.to_string(), Run { flows, alerts, err });
    }
    for b in ["fentry", "kprobe"] {
        let recs = section(&text, &format!("=====BEGIN respond-{b}=====\n"), &format!("=====END respond-{b}====="))
            .unwrap_or_else(|| panic!("no containment section for {b} in {path}"))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{b}: not JSON ({e}): {l}")))
            .collect();
        let said = section(&text, &format!("=====RESPOND {b}=====\n"), &format!("=====END RESPOND {b}=====")).unwrap_or("").to_string();
        g.respond.insert(b.to_string(), (recs, said));
    }
    // CHILD lines come after their SCENARIO line: the child's pid replaces it.
    for l in text.lines().filter(|l| l.starts_with("SCENARIO ") || l.starts_with("CHILD ")) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let [_, b, name, pid] = f[..] {
            let pid = pid.trim_start_matches("pid=").parse().expect("pid");
            g.pids.insert((b.to_string(), name.to_string()), pid);
        }
    }
    g
}

fn check_backend(b: &str) {
    let g = guest();
    assert!(g.errors.is_empty(), "guest scenario errors: {:?}", g.errors);
    let Run {
        flows: recs,
        alerts,
        err,
    } = &g.runs[b];
    assert!(
        err.contains(&format!("sluice: ready: backend={b}")),
        "{b} did not start on {}:\n{err}",
        g.kernel
    );
    // (scenario, peer, port, bytes the application sent, executables that may send them)
    let netload: &[&str] = &["/netload"];
    let cases = [
        ("tcp4", "127.0.0.1", 9001, 50_000_000u64, netload),
        ("tcp6", "::1", 9002, 20_000_000, netload),
        ("udp", "127.0.0.1", 9003, 6_000_000, netload),
        ("sendfile", "127.0.0.1", 9004, 20_000_000, netload),
        ("burst", "127.0.0.1", 9005, 1_000_000, &["/burst"]),
        ("sendmsg", "127.0.0.1", 9011, 10_000_000, netload),
        ("sendmmsg", "127.0.0.1", 9012, 4_800_000, netload),
        ("splice", "127.0.0.1", 9013, 20_000_000, netload),
        ("uring", "127.0.0.1", 9014, 10_000_000, netload),
        // The forked child's pid (CHILD line), not the parent's that connected.
        ("inherit", "127.0.0.1", 9015, 10_000_000, netload),
        // Same pid, another program (a copy of netload under another name).
        ("exec-send", "127.0.0.1", 9016, 10_000_000, &["/tmp/fdsend"]),
        // A dual-stack socket to an IPv4-mapped peer: udpv6_sendmsg hands
        // the datagram to udp_sendmsg, and it must count once.
        ("udp-mapped", "127.0.0.1", 9022, 6_000_000, netload),
        // IPPROTO_MPTCP never calls tcp_sendmsg.
        ("mptcp", "127.0.0.1", 9023, 20_000_000, netload),
        // The main thread exits first; a worker sends for 10 s after it.
        ("thread-exit", "127.0.0.1", 9021, 10_000_000, netload),
        // 32 threads blocked in tcp_sendmsg at once: more than a kretprobe's
        // default instances (10 on this 1-CPU guest).
        ("blocked", "127.0.0.1", 9024, 32_000_000, netload),
        // A socket in a sockmap with an sk_msg verdict: tcp_bpf_sendmsg, not tcp_sendmsg.
        ("sockmap", "127.0.0.1", 9027, 10_000_000, netload),
        // Kernel TLS after TLS_TX: tls_sw_sendmsg / tls_sw_sendpage (a
        // module loaded after the first sensor started), not tcp_sendmsg;
        // the plaintext handed over is what counts.
        ("ktls", "127.0.0.1", 9028, 20_000_000, netload),
        ("ktls6", "::1", 9029, 10_000_000, netload),
        ("ktls-sendfile", "127.0.0.1", 9030, 20_000_000, netload),
        // The TLS upper layer with TLS_RX only keeps tcp_sendmsg: once, not twice.
        ("ktls-rx", "127.0.0.1", 9031, 10_000_000, netload),
    ];
    for (name, ip, port, want, exes) in cases {
        let pid = *g.pids.get(&(b.to_string(), name.to_string())).unwrap_or_else(|| panic!("{b}/{name} did not run"));
        let got = bytes_out_to(recs, pid, ip, port);
        let ratio = got as f64 / want as f64;
        eprintln!("measured: {b} on {}: {name}: {got} of {want} bytes, ratio {ratio:.5}", g.kernel);
        assert!((0.99..=1.01).contains(&ratio), "{b}/{name}: {got} of {want} bytes attributed to pid {pid} (ratio {ratio:.4}); records of that pid: {:?}",
            recs.iter().filter(|r| r["process"]["pid"] == pid).collect::<Vec<_>>());
        let r = recs.iter().find(|r| r["process"]["pid"] == pid && r["destination"]["port"] == port).unwrap();
        assert!(exes.iter().any(|e| r["process"]["executable"] == *e), "{b}/{name}: sent by one of {exes:?}: {r}");
        assert_eq!(r["sluice"]["backend"], b);
        assert_eq!(r["sluice"]["attribution"], "kernel");
        let transport = if name.starts_with("udp") || name == "sendmmsg" { "udp" } else { "tcp" };
        assert_eq!(r["network"]["transport"], transport, "{r}");
        // Active opens (and datagram senders) are egress: the detector's default scope.
        assert_eq!(r["network"]["direction"], "egress", "{b}/{name}: {r}");
        if name == "tcp6" {
            assert_eq!(r["network"]["type"], "ipv6");
        }
    }
    // exec("./relx") on a tmpfs mounted at /mnt/rel, then chdir("/"): the
    // kernel's walk of the file (across the mount), not cwd + name.
    let pid = g.pids[&(b.to_string(), "relexec".to_string())];
    let rel = recs.iter().find(|r| r["process"]["pid"] == pid && r["destination"]["port"] == 9026).unwrap_or_else(|| panic!("{b}: no relexec flow"));
    assert_eq!(rel["process"]["executable"], "/mnt/rel/relx", "{b}: {rel}");
    // Past the grace period for exited processes, the worker is still netload.
    let pid = g.pids[&(b.to_string(), "thread-exit".to_string())];
    let worker: Vec<&Value> = recs.iter().filter(|r| r["process"]["pid"] == pid && r["destination"]["port"] == 9021).collect();
    assert!(worker.len() >= 8 && worker.iter().all(|r| r["process"]["executable"] == "/netload"), "{b}: a worker record lost its process: {worker:?}");
    // The 1 ms sender is gone long before the tick: named from the kernel's exec record.
    let pid = g.pids[&(b.to_string(), "burst".to_string())];
    let r = recs.iter().find(|r| r["process"]["pid"] == pid).unwrap();
    assert_eq!(r["process"]["name"], "burst");
    assert_eq!(r["process"]["args"][3], "1000000");
    // The receiving side is counted too (bytes the sink read).
    let sink_in: u64 = recs
        .iter()
        .filter(|r| r["source"]["port"] == 9001)
        .map(|r| r["sluice"]["bytes_in"].as_u64().unwrap_or(0))
        .sum();
    let ratio = sink_in as f64 / 50_000_000.0;
    eprintln!("measured: {b}: tcp4 sink bytes_in ratio {ratio:.5}");
    assert!((0.99..=1.01).contains(&ratio), "{b}: sink read {sink_in} of 50000000");
    // A reader that peeks, then waits for whole 1 MB reads (MSG_WAITALL):
    // tcp_cleanup_rbuf runs inside that wait with running totals.
    let waitall_in: u64 = recs.iter().filter(|r| r["source"]["port"] == 9025).map(|r| r["sluice"]["bytes_in"].as_u64().unwrap_or(0)).sum();
    let ratio = waitall_in as f64 / 20_000_000.0;
    eprintln!("measured: {b}: MSG_PEEK + MSG_WAITALL sink bytes_in ratio {ratio:.5}");
    assert!((0.99..=1.01).contains(&ratio), "{b}: the MSG_WAITALL sink read {waitall_in} of 20000000");
    check_names(b, &g, recs, err);
    check_dns_tunnel(b, &g, alerts);
}

/// Queries leave through dns_egress (no process context there): the tunnel
/// alert must still name the process whose socket sent them.
fn check_dns_tunnel(b: &str, g: &Guest, alerts: &[Value]) {
    let pid = g.pids[&(b.to_string(), "dns-tunnel".to_string())];
    let a = alerts
        .iter()
        .find(|a| a["rule"]["id"] == "sluice.dns_tunnel")
        .unwrap_or_else(|| panic!("{b}: no DNS tunnel alert; alerts: {alerts:?}"));
    assert_eq!(
        a["process"]["pid"], pid,
        "{b}: the tunnel was blamed on another process: {a}"
    );
    assert!(
        a["event"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("exfil-test.net"),
        "{b}: {a}"
    );
}

/// Destination names on the send path: the ClientHello copied from the
/// sender's iovecs (a write() and a writev()), QUIC recognized from the first
/// datagram, and a DNS answer (cgroup_skb ingress on these backends too).
fn check_names(b: &str, g: &Guest, recs: &[Value], err: &str) {
    let flow = |name: &str, port: u16| {
        let pid = *g.pids.get(&(b.to_string(), name.to_string())).unwrap_or_else(|| panic!("{b}/{name} did not run"));
        // The last record: a flow split across ticks may be named only from
        // its second (the name comes with the bytes that complete it).
        recs.iter()
            .filter(|r| r["process"]["pid"] == pid && r["destination"]["port"] == port)
            .last()
            .unwrap_or_else(|| panic!("{b}/{name}: no flow of pid {pid}; stderr:\n{err}"))
            .clone()
    };
    let tls = flow("tls", 9006);
    assert_eq!(tls["destination"]["domain"], "gfs208n140.userstorage.mega.co.nz", "{b}: {tls}\n{err}");
    assert_eq!(tls["sluice"]["destination"]["name_source"], "tls-sni");
    assert_eq!(tls["sluice"]["destination"]["service"], "MEGA");
    assert_eq!(tls["network"]["protocol"], "tls");
    let quic = flow("quic", 9007);
    assert_eq!(quic["network"]["protocol"], "quic", "{b}: {quic}\n{err}");
    let dns = flow("dns", 9008);
    assert_eq!(dns["destination"]["domain"], "upload.box.com", "{b}: {dns}\n{err}");
    assert_eq!(dns["sluice"]["destination"]["name_source"], "dns");
    assert_eq!(dns["sluice"]["destination"]["service"], "Box");
    // The answer matched the query (dns_egress copied it on this backend).
    assert_eq!(dns["sluice"]["destination"]["name_corroborated"], true, "{b}: {dns}");
    // An answer nobody asked for names nothing.
    let forged = flow("dns-forged", 9018);
    assert!(forged["destination"]["domain"].is_null(), "{b}: an unsolicited answer named a flow: {forged}\n{err}");
    let unsolicited = err.rsplit("dns_unsolicited=").next().and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse::<u64>().ok());
    assert!(unsolicited.unwrap_or(0) >= 1, "{b}: the unsolicited answer was not counted:\n{err}");
    // A ClientHello split across two records, copied from the sender's buffers.
    let split = flow("tls-split", 9017);
    assert_eq!(
        split["destination"]["domain"], "split.example.org",
        "{b}: {split}\n{err}"
    );
    assert_eq!(
        split["sluice"]["destination"]["name_corroborated"], false,
        "a claimed name: {split}"
    );
    // A SOCKS5 greeting of 3 bytes, then the request: the flow asked a proxy.
    let socks = flow("socks5", 9019);
    assert_eq!(
        socks["sluice"]["destination"]["proxy_target"], "socks.example.net:443",
        "{b}: {socks}\n{err}"
    );
    assert_eq!(
        socks["sluice"]["destination"]["name_source"], "proxy-request",
        "{b}: {socks}"
    );
    // Both of its writes came from pages not mapped yet: the entry could not
    // read them, the return copied them (netload's `cold`).
    assert!(err.contains("head_read_fault="), "{b}: no send's first bytes faulted at entry:\n{err}");
    assert!(!err.contains("head_retry_fault="), "{b}: a retried copy faulted again:\n{err}");
    // kTLS: the hello went out in the clear before TLS_TX, and names the flow
    // whose records the socket layer counts.
    let ktls = flow("ktls", 9028);
    assert_eq!(ktls["destination"]["domain"], "ktls.example.org", "{b}: {ktls}");
    eprintln!(
        "measured: {b}: tls/quic/dns/forged-dns/split-hello/socks5/ktls scenarios named ({})",
        tls["destination"]["domain"]
    );
}

#[test]
fn check_in_the_guest_picks_fentry_and_finds_kprobe_usable() {
    let g = guest();
    assert!(g.check.contains("fentry   usable"), "{}", g.check);
    assert!(g.check.contains("kprobe   usable"), "{}", g.check);
    assert!(g.check.contains("auto picks:        fentry"), "{}", g.check);
    // Every containment primitive: Debian's kernel runs the BPF LSM.
    for primitive in ["cgroup_skb egress): yes", "(cgroup sock_create): yes", "(BPF LSM): yes", "(sock_diag SOCK_DESTROY): yes"] {
        assert!(g.check.contains(primitive), "{primitive}: {}", g.check);
    }
    // Debian's 6.1 still has tcp_sendpage; every hooked prototype matches.
    assert!(g.check.contains("hook prototypes:   match this kernel's BTF (tcp_sendmsg: matches; tcp_sendpage: matches"), "{}", g.check);
}

/// The cgroup backend counts kTLS where it leaves, as TLS records (this
/// host's own kernel has no kTLS, so the guest is where it is checked).
#[test]
fn cgroup_backend_counts_ktls_records_on_the_wire() {
    let g = guest();
    let Run { flows, err, .. } = &g.runs["cgroup"];
    assert!(err.contains("sluice: ready: backend=cgroup"), "cgroup did not start on {}:\n{err}", g.kernel);
    let pid = g.pids[&("cgroup".to_string(), "ktls".to_string())];
    let got = bytes_out_to(flows, pid, "127.0.0.1", 9028);
    let ratio = got as f64 / 20_000_000.0;
    eprintln!("measured: cgroup on {}: ktls: {got} of 20000000 bytes, ratio {ratio:.5}", g.kernel);
    // Each 16 KiB record carries 29 bytes of header, nonce and tag.
    assert!((0.99..=1.03).contains(&ratio), "cgroup/ktls: {got} of 20000000 (ratio {ratio:.4})");
}

#[test]
fn fentry_backend_attributes_every_scenario() {
    check_backend("fentry");
}

#[test]
fn kprobe_backend_attributes_every_scenario() {
    check_backend("kprobe");
}

/// Containment on a send-path backend: the Mega-named uploader (5 MB/s) is cut
/// off within about a tick of its alert (packets dropped by dns_egress, the
/// connection aborted), its new sockets are refused by deny_sock_create until
/// the 4 s TTL, and then a new connection sends 1 MB. On fentry the BPF LSM
/// also refuses its sends (on a UDP socket it already held too); kprobe's run
/// has `lsm = false`, so there the drop and the abort alone stop it.
fn check_containment(b: &str) {
    const RATE: u64 = 5_000_000;
    let g = guest();
    let (recs, said) = &g.respond[b];
    let pid = g.pids[&(b.to_string(), "contained".to_string())];
    let alert = recs
        .iter()
        .find(|r| r["rule"]["id"] == "sluice.exfil_tool_upload" && r["process"]["pid"] == pid)
        .unwrap_or_else(|| panic!("{b}: no exfil_tool_upload alert for pid {pid}:\n{said}"));
    let contained = recs.iter().find(|r| r["event"]["action"] == "sluice.contain").unwrap_or_else(|| panic!("{b}: no containment:\n{said}"));
    assert_eq!(contained["event"]["outcome"], "success", "{b}: {contained}");
    assert_eq!(contained["sluice"]["containment"]["aborted"], 1, "{b}: {contained}");
    assert!(recs.iter().any(|r| r["event"]["action"] == "sluice.contain.lift"), "{b}: never lifted:\n{said}");
    assert!(!said.contains("containment will not refuse"), "{b}: a containment hook did not attach:\n{said}");
    let word = |w: &str| sluice_tests::word_after(said, w).unwrap_or("").to_string();
    // Its send failed: EPERM from the LSM, or ECONNABORTED (EPIPE between sends) from the abort.
    let (errno, lsm) = (word("aborted"), b == "fentry");
    let want: &[&str] = if lsm { &["1", "103", "32"] } else { &["103", "32"] };
    assert!(want.contains(&errno.as_str()), "{b}: the upload was not aborted:\n{said}");
    assert_eq!(word("udp-send"), if lsm { "1" } else { "ok" }, "{b}: a send on a UDP socket held from before (EPERM from the BPF LSM only):\n{said}");
    assert_eq!(contained["sluice"]["containment"]["abort_error"], Value::Null, "{b}: {contained}");
    assert!(word("refused").parse::<u32>().unwrap_or(0) > 0, "{b}: new connections were not refused:\n{said}");
    assert!(said.contains("resumed") && said.contains("sink2 received 1000000"), "{b}: the TTL did not let it go:\n{said}");
    let left: u64 = said.lines().find_map(|l| l.strip_prefix("sink1 received ")).and_then(|n| n.trim().parse().ok()).unwrap_or(u64::MAX);
    let at_alert = alert["sluice"]["bytes_out"].as_u64().unwrap_or(0);
    let after = left.saturating_sub(at_alert);
    eprintln!("measured: {b} on {}: containment: {left} bytes arrived, {at_alert} counted at the alert, {after} after it (a tick is {RATE})", g.kernel);
    assert!(after <= 2 * RATE, "{b}: {after} bytes left after the alert: more than two ticks at the link's rate");
}

#[test]
fn fentry_backend_contains_an_upload() {
    check_containment("fentry");
}

#[test]
fn kprobe_backend_contains_an_upload() {
    check_containment("kprobe");
}
