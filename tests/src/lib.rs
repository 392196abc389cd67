//! Harness for sluice's end-to-end tests: the real `sluice` binary with the real
//! eBPF programs, real programs uploading, and test hosts in network namespaces
//! the tests create and remove. Every wait is bounded.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

pub mod ecs;
pub mod ocsf;

pub const MB: u64 = 1_000_000;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The sluice binary under test (`cargo xtask test` sets SLUICE_BIN).
pub fn sluice_bin() -> PathBuf {
    // Relative paths are taken from the workspace root (tests run in tests/).
    workspace().join(std::env::var_os("SLUICE_BIN").map(PathBuf::from).unwrap_or_else(|| "target/debug/sluice".into()))
}

/// A helper binary of this crate (built by `cargo xtask test`).
pub fn helper_bin(name: &str) -> PathBuf {
    sluice_bin().parent().expect("bin dir").join(name)
}

pub fn fixture(name: &str) -> PathBuf {
    workspace().join("tests/fixtures").join(name)
}

/// The end-to-end tests load eBPF programs: root is required, and a run without
/// it must fail loudly, not pass by skipping.
pub fn require_root() {
    // SAFETY: geteuid takes no arguments and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "end-to-end tests load eBPF programs and create network namespaces: run them as root (cargo xtask test)");
}

/// A running `sluice run`, its stdout parsed line by line.
pub struct Sluice {
    child: Child,
    _state: Option<TempDir>,
    records: Arc<Mutex<Vec<Value>>>,
    bad_lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Sluice {
    /// Start `sluice run ARGS` and wait until it says it is attached.
    pub fn start(args: &[&str]) -> Result<Sluice> {
        Self::spawn("run", args)
    }

    /// Start `sluice record FILE ARGS`.
    pub fn record(file: &Path, args: &[&str]) -> Result<Sluice> {
        let file = file.to_str().context("record path is not UTF-8")?;
        Self::spawn("record", &[&[file], args].concat())
    }

    fn spawn(command: &str, args: &[&str]) -> Result<Sluice> {
        // Each sensor learns alone: never the host's /var/lib/sluice state.
        let own_state = TempDir::new("state");
        let state_path = own_state.0.join("state.json");
        let mut cmd = Command::new(sluice_bin());
        cmd.arg(command).args(args);
        if !args.contains(&"--state") {
            cmd.arg("--state").arg(&state_path);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", sluice_bin().display()))?;
        let records = Arc::new(Mutex::new(Vec::new()));
        let bad_lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        let (r, b) = (records.clone(), bad_lines.clone());
        thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                match serde_json::from_slice::<Value>(&line) {
                    Ok(v) if v.is_object() => r.lock().unwrap().push(v),
                    _ => b.lock().unwrap().push(String::from_utf8_lossy(&line).into_owned()),
                }
            }
        });
        let err = child.stderr.take().expect("piped stderr");
        let e = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                e.lock().unwrap().push(line);
            }
        });
        let mut s = Sluice { child, _state: Some(own_state), records, bad_lines, stderr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if s.stderr.lock().unwrap().iter().any(|l| l.contains("sluice: ready")) {
                return Ok(s);
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                bail!("sluice exited early ({status}); stderr:\n{}", s.stderr_text());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("sluice did not get ready in 60 s; stderr:\n{}", s.stderr_text())
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn records(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (bounded) until `pred` holds over the records seen so far.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let recs = self.records();
            if pred(&recs) {
                return Ok(recs);
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}; {} records; stderr:\n{}", recs.len(), self.stderr_text());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL (a crash, the OOM killer): no shutdown work at all. Returns
    /// every record it printed before.
    pub fn kill(mut self) -> Vec<Value> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        thread::sleep(Duration::from_millis(200));
        self.records()
    }

    /// SIGTERM, wait for a clean exit (bounded), return every record it printed.
    pub fn stop(mut self) -> Result<Vec<Value>> {
        // SAFETY: kill(2) on a child this owns (and has not reaped).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                bail!("sluice did not stop within 30 s of SIGTERM; stderr:\n{}", self.stderr_text());
            }
            thread::sleep(Duration::from_millis(50));
        };
        // Let the reader threads reach EOF.
        thread::sleep(Duration::from_millis(200));
        if !status.success() {
            bail!("sluice exited with {status}; stderr:\n{}", self.stderr_text());
        }
        let bad = self.bad_lines.lock().unwrap().clone();
        if !bad.is_empty() {
            bail!("sluice printed {} lines that are not JSON objects, first: {:?}", bad.len(), bad[0]);
        }
        let records = self.records();
        // Every record of every end-to-end run is ECS (sluice's own fields
        // aside), or OCSF as the schema defines it (`--format ocsf`).
        let check = |r: &Value| if r.get("class_uid").is_some() { ocsf::violations(r) } else { ecs::violations(r) };
        let mut wrong: Vec<String> = records.iter().flat_map(check).collect();
        wrong.sort();
        wrong.dedup();
        if !wrong.is_empty() {
            bail!("sluice wrote {} fields that are not ECS as ECS defines them: {wrong:?}", wrong.len());
        }
        Ok(records)
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Alert records of `rule`.
pub fn alerts_of<'a>(records: &'a [Value], rule: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event"]["kind"] == "alert" && r["rule"]["id"] == rule).collect()
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sluice-{tag}-{}-{}", std::process::id(), NS_SEQ.fetch_add(1, Ordering::SeqCst)));
        std::fs::create_dir_all(&p).expect("creating a temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bytes that do not compress (xorshift), for archives that must stay large.
pub fn incompressible(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Flow-summary records of `pid`.
pub fn flows_of(records: &[Value], pid: u32) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["event"]["action"] == "flow-summary" && r["process"]["pid"] == pid)
        .collect()
}

/// `sluice.<field>` summed over every flow record of `pid` to `ip:port`.
pub fn sum_to(records: &[Value], pid: u32, ip: &str, port: u16, field: &str) -> u64 {
    flows_of(records, pid)
        .iter()
        .filter(|r| r["destination"]["ip"] == ip && r["destination"]["port"] == port)
        .map(|r| r["sluice"][field].as_u64().unwrap_or(0))
        .sum()
}

/// Bytes `pid` sent to `ip:port` over all records.
pub fn bytes_out_to(records: &[Value], pid: u32, ip: &str, port: u16) -> u64 {
    sum_to(records, pid, ip, port, "bytes_out")
}

/// Assert `got` is within [lo, hi] of `want` (cgroup_skb sees packets, so
/// IP and transport headers are counted on top of the payload).
pub fn assert_ratio(what: &str, got: u64, want: u64, lo: f64, hi: f64) {
    let r = got as f64 / want as f64;
    eprintln!("measured: {what}: {got} of {want} bytes attributed, ratio {r:.5}");
    assert!(
        (lo..=hi).contains(&r),
        "{what}: attributed {got} bytes for {want} sent, ratio {r:.4}, expected {lo}..={hi}"
    );
}

static NS_SEQ: AtomicU32 = AtomicU32::new(0);

/// A test host: a network namespace joined to this one by a veth pair, with
/// IPv4 10.213.N.0/30 and IPv6 fd53:5c:0:N::/64. Removed on drop.
pub struct TestHost {
    pub name: String,
    pub host_veth: String,
    pub local_v4: String,
    pub peer_v4: String,
    pub local_v6: String,
    pub peer_v6: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Test hosts left behind by a run that was killed (SIGKILL skips Drop): their
/// veth keeps 10.213.N.1 on this host, and a new host reusing N would route to
/// the dead namespace and get refused. Names carry the creating pid, so a
/// leftover is one whose pid is gone.
fn sweep_stale_test_hosts() {
    let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
        let Some((pid, n)) = name.strip_prefix("slh").and_then(|r| r.split_once('x')) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &format!("sluice-t{pid}-{n}")]);
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// Whether any link on this host already holds an address in 10.213.N.0/30.
fn subnet_in_use(n: u32) -> bool {
    Command::new("ip")
        .args(["-o", "addr", "show", "to", &format!("10.213.{n}.0/30")])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false)
}

impl TestHost {
    pub fn create() -> Result<TestHost> {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(sweep_stale_test_hosts);
        // Skip subnets another live suite (or anything else) holds.
        let n = (0..250)
            .map(|_| NS_SEQ.fetch_add(1, Ordering::SeqCst) % 250 + 1)
            .find(|&n| !subnet_in_use(n))
            .context("every 10.213.N.0/30 test subnet is in use")?;
        let tag = std::process::id();
        let name = format!("sluice-t{tag}-{n}");
        let host_veth = format!("slh{tag}x{n}");
        let peer_veth = format!("slp{tag}x{n}");
        let h = TestHost {
            name: name.clone(),
            host_veth: host_veth.clone(),
            local_v4: format!("10.213.{n}.1"),
            peer_v4: format!("10.213.{n}.2"),
            local_v6: format!("fd53:5c:0:{n:x}::1"),
            peer_v6: format!("fd53:5c:0:{n:x}::2"),
        };
        ip(&["netns", "add", &name])?;
        ip(&["link", "add", &host_veth, "type", "veth", "peer", "name", &peer_veth])?;
        ip(&["link", "set", &peer_veth, "netns", &name])?;
        ip(&["addr", "add", &format!("{}/30", h.local_v4), "dev", &host_veth])?;
        ip(&["-6", "addr", "add", &format!("{}/64", h.local_v6), "dev", &host_veth, "nodad"])?;
        ip(&["link", "set", &host_veth, "up"])?;
        ip(&["-n", &name, "addr", "add", &format!("{}/30", h.peer_v4), "dev", &peer_veth])?;
        ip(&["-n", &name, "-6", "addr", "add", &format!("{}/64", h.peer_v6), "dev", &peer_veth, "nodad"])?;
        ip(&["-n", &name, "link", "set", &peer_veth, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(h)
    }

    /// A command that runs inside the test host.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_veth]);
    }
}

/// A running `sink.py`: started, waited for until it listens.
pub struct Sink {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Sink {
    /// `mode` is tcp | http | udp; `host` None means this namespace.
    pub fn start(host: Option<&TestHost>, mode: &str, addr: &str, port: u16, extra: &[&str]) -> Result<Sink> {
        let script = fixture("sink.py");
        let mut cmd = match host {
            Some(h) => h.command("/usr/bin/python3"),
            None => Command::new("/usr/bin/python3"),
        };
        let mut child = cmd
            .arg(&script)
            .args([mode, addr, &port.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting sink.py")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped");
        let l = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let sink = Sink { child, lines };
        sink.wait_line("ready", Duration::from_secs(20))?;
        Ok(sink)
    }

    fn wait_line(&self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.starts_with(prefix)) {
                return Ok(l.clone());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(anyhow!("sink did not print {prefix:?} within {timeout:?}"))
    }

    /// Bytes the sink received (waits for it to finish).
    pub fn received(&self) -> Result<u64> {
        let line = self.wait_line("received", Duration::from_secs(120))?;
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).context("malformed sink output")
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed and reaped when the test ends, pass or panic.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `python3 -m http.server` serving `dir` on addr:port (`python3` already set
/// up to run in the right namespace).
pub fn http_server(mut python3: Command, addr: &str, port: u16, dir: &Path) -> KillOnDrop {
    KillOnDrop(
        python3
            .args(["-m", "http.server", "--bind", addr, &port.to_string(), "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting python3 -m http.server"),
    )
}

/// One download attempt with `curl` (already set up for its namespace).
pub fn fetch(mut curl: Command, url: &str) -> bool {
    curl.args(["-sS", "-o", "/dev/null", "--fail", url]).status().map(|s| s.success()).unwrap_or(false)
}

/// Run `cmd` to completion (bounded), return its pid.
///
/// The child is a job of its own (its own process group), as a shell with job
/// control starts each command a user types: sluice sums a job's processes.
pub fn run_child(cmd: &mut Command, timeout: Duration) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let mut child = cmd.stdin(Stdio::null()).process_group(0).spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("{cmd:?} failed: {status}");
            }
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("{cmd:?} did not finish in {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The word after the first `key` in `text` ("refused 20 for 4.0", "refused" -> "20"):
/// how the workloads' progress lines are read.
pub fn word_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_whitespace().skip_while(|w| *w != key).nth(1)
}

/// Try `f` until it succeeds or `timeout` passes (servers take a moment to listen).
pub fn retry(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// A free local port (bind to 0, read it back, release it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(40_123)
}

/// The python uploader: connect, send N bytes, half-close, wait for the peer to
/// close (so every byte left before exit).
pub const PY_UPLOAD: &str = "import socket,sys\n\
a,p,n=sys.argv[1],int(sys.argv[2]),int(sys.argv[3])\n\
s=socket.create_connection((a,p))\n\
buf=b'x'*(1<<20)\n\
while n>0:\n    k=min(n,len(buf)); s.sendall(buf[:k]); n-=k\n\
s.shutdown(socket.SHUT_WR)\n\
s.recv(1)\n";

/// A workload's last step: half-close and wait (at most 60 s) for the sink's
/// EOF, so every byte is counted before the sender exits.
pub fn finish(mut s: std::net::TcpStream) {
    use std::io::Read;
    s.shutdown(std::net::Shutdown::Write).ok();
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let _ = s.read(&mut [0u8; 1]);
}

/// A well-formed TLS ClientHello naming `sni` (no SNI extension for None),
/// padded by `pad` bytes (so it spans writes): what a TLS client's first write
/// looks like to the kernel. Shared by the VM workload and the parser's unit tests.
pub fn client_hello(sni: Option<&str>, pad: usize) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let n = name.as_bytes();
        ext.extend_from_slice(&[0x00, 0x00]);
        ext.extend_from_slice(&((n.len() + 5) as u16).to_be_bytes());
        ext.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
        ext.extend_from_slice(n);
    }
    if pad > 0 {
        ext.extend_from_slice(&[0x00, 0x15]);
        ext.extend_from_slice(&(pad as u16).to_be_bytes());
        ext.resize(ext.len() + pad, 0);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[9u8; 32]); // random
    // Empty session id, one cipher suite, null compression.
    body.extend_from_slice(&[0, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// `client_hello(sni, pad)` with its handshake message split over two TLS
/// records after `at` bytes (RFC 8446 allows it; the parser must join them).
pub fn client_hello_split(sni: Option<&str>, pad: usize, at: usize) -> Vec<u8> {
    let whole = client_hello(sni, pad);
    let hs = &whole[5..];
    let at = at.min(hs.len() - 1);
    let mut out = Vec::new();
    for part in [&hs[..at], &hs[at..]] {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// A DNS query for `name` (A, IN, recursion desired), transaction id 0x1234:
/// the query `dns_answer(name, ..)` answers.
pub fn dns_query(name: &str) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

/// A DNS response: `name` A `ip`, TTL 300.
pub fn dns_answer(name: &str, ip: std::net::Ipv4Addr) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4]);
    m.extend_from_slice(&ip.octets());
    m
}

/// A plain HTTP/1.1 GET (the metrics endpoint): (status, body). Bounded by a
/// 5 s timeout on every read and write.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status line")?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The value of one sample line of a Prometheus exposition (`name{labels}`).
pub fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok())
}

/// `n` short loopback connections of `bytes` each, sent and accepted by one
/// python3 process: 2n flow records (the client's and the accepted socket's).
pub fn loopback_connections(n: u32, bytes: u32) {
    let py = format!(
        r#"
import socket
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(64)
for i in range({n}):
    c = socket.create_connection(l.getsockname()); c.sendall(b"x" * {bytes}); c.close()
    a, _ = l.accept()
    while a.recv(65536): pass
    a.close()
"#
    );
    run_child(Command::new("/usr/bin/python3").args(["-c", &py]), Duration::from_secs(60)).unwrap();
}
