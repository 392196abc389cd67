//! The agent's local control socket: a Unix stream socket (0600, so root's
//! only) that answers one request per connection, as one JSON line:
//! - `top`: the live view's snapshot (`sluice top`);
//! - `containments`: the containments in force (`sluice respond list`);
//! - `lift ID`: queue containment ID to be lifted at the next tick
//!   (`sluice respond lift`).
//!
//! Replies are prepared by the tick, so a client never waits on it or slows it.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{
        fs::PermissionsExt,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// A request line is a word; anything longer is not one of ours.
const REQUEST_MAX: u64 = 64;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The latest serialized snapshot, replaced by each tick.
pub type Shared = Arc<Mutex<String>>;

/// The bound socket; its file is removed when this is dropped.
pub struct Control {
    path: PathBuf,
    pub snapshot: Shared,
    pub containments: Shared,
    /// Containment ids asked to be lifted, taken by the next tick.
    pub lifts: Arc<Mutex<Vec<u32>>>,
}

/// What the serving thread shares with the agent.
#[derive(Clone)]
struct State {
    snapshot: Shared,
    containments: Shared,
    lifts: Arc<Mutex<Vec<u32>>>,
}

/// Lift requests queued at most (a client looping on `lift` cannot grow it).
const LIFTS_MAX: usize = 1024;

impl Control {
    /// Bind `path` and serve from a thread of its own. Refused when another
    /// live agent answers there (a stale file from a crash is replaced).
    pub fn start(path: &Path) -> Result<Control> {
        if UnixStream::connect(path).is_ok() {
            bail!("another sluice already serves {}", path.display());
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        // Flows name every process and where it sends: root's business only.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).with_context(|| format!("chmod 0600 {}", path.display()))?;
        let state = State {
            snapshot: Arc::new(Mutex::new(String::from("{}"))),
            containments: Arc::new(Mutex::new(String::from("[]"))),
            lifts: Arc::new(Mutex::new(Vec::new())),
        };
        let shared = state.clone();
        std::thread::Builder::new()
            .name("sluice-control".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    // One client at a time, each bounded by its timeouts.
                    let _ = answer(conn, &shared);
                }
            })
            .context("starting the control socket thread")?;
        Ok(Control { path: path.to_path_buf(), snapshot: state.snapshot, containments: state.containments, lifts: state.lifts })
    }

    pub fn publish_containments(&self, json: String) {
        if let Ok(mut s) = self.containments.lock() {
            *s = json;
        }
    }

    /// The lift requests since the last call.
    pub fn take_lifts(&self) -> Vec<u32> {
        self.lifts.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default()
    }

    pub fn publish(&self, json: String) {
        if let Ok(mut s) = self.snapshot.lock() {
            *s = json;
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn answer(conn: UnixStream, state: &State) -> std::io::Result<()> {
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    conn.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&conn, REQUEST_MAX)).read_line(&mut line)?;
    let read = |s: &Shared, empty: &str| s.lock().map(|s| s.clone()).unwrap_or_else(|_| empty.into());
    let words: Vec<&str> = line.split_whitespace().collect();
    let reply = match words.as_slice() {
        ["top"] => read(&state.snapshot, "{}"),
        ["containments"] => read(&state.containments, "[]"),
        ["lift", id] => match (id.parse::<u32>(), state.lifts.lock()) {
            (Ok(id), Ok(mut q)) if q.len() < LIFTS_MAX => {
                q.push(id);
                serde_json::json!({ "queued": id }).to_string()
            }
            (Ok(_), _) => serde_json::json!({ "error": "too many lift requests queued; retry after a tick" }).to_string(),
            (Err(_), _) => serde_json::json!({ "error": "lift takes a containment id (a number)" }).to_string(),
        },
        _ => serde_json::json!({
            "error": format!("unknown request {:?}; this agent answers: top, containments, lift ID", line.trim().chars().take(32).collect::<String>())
        })
        .to_string(),
    };
    let mut w = &conn;
    w.write_all(reply.as_bytes())?;
    w.write_all(b"\n")
}

/// Ask the agent at `path` (the client side, `sluice top`).
pub fn request(path: &Path, what: &str) -> Result<String> {
    use std::io::Read;
    let mut conn = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "no running agent at {} ({e}); start one with `sluice run` (or `cargo xtask run`), or name its socket with --socket",
            path.display()
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!("{}: permission denied (the socket is root's: run as root)", path.display()),
        _ => anyhow::Error::new(e).context(format!("connecting to {}", path.display())),
    })?;
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    conn.write_all(format!("{what}\n").as_bytes())?;
    let mut reply = String::new();
    // A snapshot is at most a few hundred KiB (200 rows).
    conn.take(16 << 20).read_to_string(&mut reply).with_context(|| format!("reading the agent's answer from {}", path.display()))?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_top_refuses_a_second_agent_and_removes_its_file() {
        let dir = std::env::temp_dir().join(format!("sluice-control-{}", std::process::id()));
        let path = dir.join("control.sock");
        let c = Control::start(&path).unwrap();
        c.publish(r#"{"rows":[]}"#.into());
        assert_eq!(request(&path, "top").unwrap().trim(), r#"{"rows":[]}"#);
        assert!(request(&path, "bogus").unwrap().contains("unknown request"));
        assert_eq!(request(&path, "containments").unwrap().trim(), "[]");
        assert_eq!(request(&path, "lift 7").unwrap().trim(), r#"{"queued":7}"#);
        assert!(request(&path, "lift x").unwrap().contains("a number"));
        assert_eq!(c.take_lifts(), vec![7]);
        assert!(c.take_lifts().is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(Control::start(&path).err().unwrap().to_string().contains("another sluice"));
        drop(c);
        assert!(!path.exists());
        let e = request(&path, "top").unwrap_err().to_string();
        assert!(e.contains("no running agent"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
