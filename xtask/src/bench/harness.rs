//! The harness every section runs on: the sensors compared, background
//! processes with their output collected, /proc and metrics readers, and the
//! median-and-spread statistics.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Sensor {
    None,
    /// Empty programs on the hooks sluice's send path uses (cgroup_skb egress
    /// and ingress, sock_create, connect4, sock:sock_send_length): what the
    /// hooks themselves cost, which no sensor on them can beat.
    Floor,
    Sluice,
    /// sluice with `kernel.owner_on_send = false`: what that hook costs.
    SluiceNoOwner,
    Bpftrace,
}

impl Sensor {
    pub(super) fn label(self) -> &'static str {
        match self {
            Sensor::None => "no sensor",
            Sensor::Floor => "floor: empty programs on sluice's hooks",
            Sensor::Sluice => "sluice (cgroup)",
            Sensor::SluiceNoOwner => "sluice, owner_on_send off",
            Sensor::Bpftrace => "bpftrace peer",
        }
    }
}

/// A background process whose output lines are collected; killed on drop.
pub(super) struct Running {
    pub(super) child: Child,
    pub(super) lines: Arc<Mutex<Vec<String>>>,
    pub(super) stdin: Option<ChildStdin>,
}

impl Running {
    pub(super) fn spawn(cmd: &mut Command) -> Result<Running> {
        let shown = format!("{cmd:?}");
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("starting {shown}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        for r in [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let l = lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    l.lock().unwrap().push(line);
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Running { child, lines, stdin })
    }

    pub(super) fn wait_line(&self, what: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let seen = || self.lines.lock().unwrap().iter().any(|l| l.contains(what));
        while Instant::now() < deadline {
            if seen() {
                return Ok(());
            }
            if is_zombie(self.child.id()) {
                // Its last lines may still be in the reader threads.
                thread::sleep(Duration::from_millis(300));
                if seen() {
                    return Ok(());
                }
                bail!("exited before {what:?}:\n{}", self.text());
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("no {what:?} within {timeout:?}:\n{}", self.text())
    }

    pub(super) fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Close stdin (the workloads' stop signal), SIGTERM, wait (bounded).
    pub(super) fn stop(mut self) {
        drop(self.stdin.take());
        // SAFETY: kill(2) on a child this owns (and has not reaped).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gone or a zombie (exited, not yet reaped): polled through /proc so a
/// shared `&Running` can ask.
pub(super) fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z')).unwrap_or(true)
}

/// User + system CPU seconds `pid` has used.
pub(super) fn cpu_seconds(pid: u32) -> f64 {
    // SAFETY: sysconf takes a constant and cannot fail unsafely.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = f.get(11..13).map(|x| x.iter().filter_map(|v| v.parse::<f64>().ok()).sum()).unwrap_or(0.0);
    ticks / hz
}

pub(super) fn rss_mib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse::<f64>().ok()))
        .unwrap_or(0.0)
        / 1024.0
}

pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

pub(super) fn scrape(addr: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

pub(super) fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok()).unwrap_or(0.0)
}

/// (median, min, max)
pub(super) fn stats(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    (med, s[0], s[n - 1])
}

pub(super) fn fmt_stats(v: &[f64], digits: usize) -> String {
    let (m, lo, hi) = stats(v);
    format!("{m:.digits$} ({lo:.digits$}-{hi:.digits$})")
}

pub(super) struct Bins {
    pub(super) sluice: PathBuf,
    pub(super) netload: PathBuf,
    pub(super) benchload: PathBuf,
    pub(super) burst: PathBuf,
    pub(super) floor: PathBuf,
    pub(super) dir: PathBuf,
}

impl Bins {
    pub(super) fn sluice(&self, extra: &[&str]) -> Result<Running> {
        let r = Running::spawn(Command::new(&self.sluice).args(["run", "--probe", "cgroup", "--state", ""]).args(extra))?;
        r.wait_line("sluice: ready", Duration::from_secs(60))?;
        Ok(r)
    }

    pub(super) fn sensor(&self, s: Sensor, bpftrace: &str, extra: &[&str]) -> Result<Option<Running>> {
        Ok(match s {
            Sensor::None => None,
            Sensor::Floor => {
                let r = Running::spawn(&mut Command::new(&self.floor))?;
                r.wait_line("ready", Duration::from_secs(30))?;
                Some(r)
            }
            Sensor::Sluice => Some(self.sluice(extra)?),
            Sensor::SluiceNoOwner => {
                let config = self.dir.join("no-owner.toml");
                fs::write(&config, "[kernel]\nowner_on_send = false\n")?;
                Some(self.sluice(&[extra, &["--config", config.to_str().unwrap()]].concat())?)
            }
            Sensor::Bpftrace => {
                let r = Running::spawn(Command::new("bpftrace").args(["-e", bpftrace]))?;
                r.wait_line("Attaching", Duration::from_secs(60))?;
                // bpftrace prints before its probes are all attached.
                thread::sleep(Duration::from_millis(500));
                Some(r)
            }
        })
    }

    pub(super) fn sink(&self, kind: &str, addr: &str, port: u16) -> Result<Running> {
        let r = Running::spawn(Command::new(&self.netload).args(["sink", kind, addr, &port.to_string()]))?;
        r.wait_line("ready", Duration::from_secs(20))?;
        Ok(r)
    }

    pub(super) fn output(&self, bin: &Path, args: &[&str]) -> Result<String> {
        let out = Command::new(bin).args(args).stdin(Stdio::null()).output().with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!("{} {args:?} failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

pub(super) fn word_after(text: &str, key: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    while let Some(w) = it.next() {
        if w == key {
            return it.next()?.parse().ok();
        }
    }
    None
}
