//! `sluice top` against a running agent (cgroup backend) and a real upload:
//! the plain table when stdout is not a terminal, and the full-screen view in
//! an 80x24 tmux session read back with capture-pane, re-sorted with `s` and
//! closed with `q`. Bounded waits throughout; the tmux session is killed at
//! the end whatever happens.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use sluice_tests::*;

const MB: u64 = 1_000_000;

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs (apt-get install tmux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills the tmux session when the test ends.
struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).output();
    }
}

fn top(socket: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(sluice_bin()).arg("top").arg("--socket").arg(socket).args(extra).output().unwrap()
}

/// A renamed curl uploading 24 MB at 2 MB/s: about twelve seconds of live rate.
fn slow_upload(tool: &Path, host: &TestHost, port: u16, payload: &Path) -> Child {
    let url = format!("http://{}:{}/upload", host.peer_v4, port);
    Command::new(tool)
        .args(["-sS", "-o", "/dev/null", "--limit-rate", "2M", "-T"])
        .arg(payload)
        .arg(url)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn top_shows_the_uploader_its_destination_and_its_alert_plain_and_in_an_80x24_terminal() {
    require_root();
    let dir = TempDir::new("top");
    let socket = dir.0.join("control.sock");
    // No agent yet: a clear error, not an empty screen.
    let none = top(&socket, &["--count", "1"]);
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success() && err.contains("no running agent at"), "{err}");

    let host = TestHost::create().unwrap();
    let tool = dir.0.join("mega-put");
    std::fs::copy("/usr/bin/curl", &tool).unwrap();
    let payload = dir.0.join("customers.db");
    std::fs::File::create(&payload).unwrap().set_len(24 * MB).unwrap();
    let port = free_port();
    let sluice = Sluice::start(&["--tick", "1s", "--probe", "cgroup", "--state", "", "--control-socket", socket.to_str().unwrap()]).unwrap();
    let sink = Sink::start(Some(&host), "http", &host.peer_v4, port, &[]).unwrap();
    let mut upload = slow_upload(&tool, &host, port, &payload);

    // Plain: stdout is a pipe here.
    let mut table = String::new();
    let seen = retry(Duration::from_secs(20), || {
        let out = top(&socket, &["--count", "1"]);
        table = String::from_utf8_lossy(&out.stdout).into_owned();
        table.lines().any(|l| l.contains("mega-put") && l.contains(&host.peer_v4) && l.contains("exfil_tool"))
    });
    assert!(seen, "the plain table never showed mega-put, its destination and its alert:\n{table}\n{}", sluice.stderr_text());
    assert!(table.lines().next().unwrap().starts_with("sluice top") && table.contains("cgroup"), "{table}");

    // Full screen in 80x24, as over ssh.
    let name = format!("sluice-top-{}", std::process::id());
    let _session = Session(name.clone());
    let cmd = format!("{} top --socket {} --interval 500ms", sluice_bin().display(), socket.display());
    tmux(&["new-session", "-d", "-s", &name, "-x", "80", "-y", "24", &cmd]);
    let mut screen = String::new();
    let drawn = retry(Duration::from_secs(15), || {
        screen = tmux(&["capture-pane", "-p", "-t", &name]);
        screen.contains("mega-put") && screen.contains("sort rate")
    });
    assert!(drawn, "the terminal view never drew the upload:\n{screen}");
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines.len() <= 24 && lines.iter().all(|l| l.chars().count() <= 80), "not 80x24:\n{screen}");
    assert!(lines[0].starts_with("sluice top") && screen.contains("PROCESS < JOB") && screen.contains("q quit"), "{screen}");
    let row = lines.iter().find(|l| l.contains("mega-put")).unwrap();
    assert!(row.contains("/s") || row.contains(" B") || row.contains("iB"), "a rate and a total: {row}");
    tmux(&["send-keys", "-t", &name, "s"]);
    assert!(retry(Duration::from_secs(5), || tmux(&["capture-pane", "-p", "-t", &name]).contains("sort total")), "s did not re-sort");
    tmux(&["send-keys", "-t", &name, "q"]);
    assert!(
        retry(Duration::from_secs(5), || !tmux(&["list-sessions", "-F", "#{session_name}"]).lines().any(|l| l == name)),
        "q did not quit"
    );

    let _ = upload.wait();
    sink.received().unwrap();
    drop(sluice);
}
