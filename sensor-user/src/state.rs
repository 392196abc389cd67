//! Learned state that must survive restarts (baselines), in one versioned JSON
//! file written atomically: a temp file in the same directory, fsync, rename.
//! A corrupt, truncated or foreign file is reported and set aside (renamed, not
//! deleted), never fatal; an unwritable path is reported, and the agent runs on.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::detect::{baseline::Table, AlertMemory, Habits};

/// 2: identities hashed with FNV-1a (stable across Rust releases) instead of
/// `DefaultHasher`; baseline models carry snapshots. A version 1 file is
/// migrated: what is keyed by executable or host is kept, what is keyed by a
/// v1 identity hash (which no longer matches anything) is dropped and relearned.
pub const STATE_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub sluice_state: u32,
    pub saved_at: f64,
    pub baselines: Table,
    #[serde(default)]
    pub habits: Habits,
    #[serde(default)]
    pub alerts: AlertMemory,
    /// The agent's `agent.id`, kept across restarts.
    #[serde(default)]
    pub agent_id: String,
    /// Written by a clean stop only: where each live TCP flow's sequence
    /// stood, for the next agent (`handover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<crate::handover::Handover>,
}

/// Held for the agent's life: one agent per state file. Two agents writing one
/// file would overwrite each other's baselines; agents with their own state
/// files coexist (each attaches its own programs, and both see everything).
/// The kernel drops an flock with its holder, so a killed agent leaves no
/// stale lock behind.
pub struct Lock {
    _file: std::fs::File,
}

/// Take `<state path>.lock`. `Ok(None)` when it cannot even be created (a
/// read-only place: the agent runs with baselines in memory, as `save` says).
pub fn lock(path: &Path) -> Result<Option<Lock>, String> {
    use std::os::unix::io::AsRawFd;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let Ok(mut f) = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&lock_path) else {
        return Ok(None);
    };
    // SAFETY: a valid open fd; flock has no memory effects.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&lock_path).ok().and_then(|t| t.trim().parse::<u32>().ok());
        return Err(format!(
            "another sluice{} is running with the state file {}; two agents sharing one state file would overwrite each other's baselines. \
             Stop it, or give this one its own file with --state",
            holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            path.display()
        ));
    }
    let _ = f.set_len(0).and_then(|_| writeln!(f, "{}", std::process::id()));
    Ok(Some(Lock { _file: f }))
}

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write state file {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// What loading found.
#[derive(Debug)]
pub enum Loaded {
    Fresh,
    Restored(Box<State>),
    /// An older version, brought up to this one (see `STATE_VERSION`).
    Migrated(Box<State>),
    /// The file was unusable; it now lives at `moved_to`.
    SetAside { reason: String, moved_to: PathBuf },
}

pub fn load(path: &Path, now: f64) -> Result<Loaded, StateError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Fresh),
        Err(source) => return Err(StateError::Read { path: path.display().to_string(), source }),
    };
    let reason = match serde_json::from_slice::<serde_json::Value>(&text) {
        Err(e) => format!("not valid JSON ({e})"),
        Ok(v) => match v.get("sluice_state").and_then(|x| x.as_u64()) {
            None => "not a sluice state file (no \"sluice_state\" version)".to_string(),
            Some(1) => match serde_json::from_value::<State>(v) {
                Ok(s) => return Ok(Loaded::Migrated(Box::new(migrate_v1(s)))),
                Err(e) => format!("malformed version 1 file ({e})"),
            },
            Some(ver) if ver != STATE_VERSION as u64 => format!("state format version {ver}, this sluice reads {STATE_VERSION}"),
            Some(_) => match serde_json::from_value::<State>(v) {
                Ok(s) => return Ok(Loaded::Restored(Box::new(s))),
                Err(e) => format!("malformed ({e})"),
            },
        },
    };
    let moved_to = PathBuf::from(format!("{}.corrupt-{}", path.display(), now as u64));
    std::fs::rename(path, &moved_to).map_err(|source| StateError::Write { path: path.display().to_string(), source })?;
    Ok(Loaded::SetAside { reason, moved_to })
}

/// Keep what a v1 file knows by executable and host; drop identity-keyed
/// baselines and alert memory (v1 identity hashes match nothing now).
fn migrate_v1(mut s: State) -> State {
    s.sluice_state = STATE_VERSION;
    let by_exe_or_host = |k: &String| k.starts_with("exe:") || k.starts_with('@');
    s.baselines.models.retain(|k, _| by_exe_or_host(k));
    s.baselines.pinned.retain(by_exe_or_host);
    s.alerts = Default::default();
    s
}

pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(state).map_err(|e| StateError::Write { path: path.display().to_string(), source: std::io::Error::other(e) })?;
    write(path, &bytes)
}

/// Write an already serialized state (`save`'s slow half: the file, fsync and
/// rename, which the agent runs off its tick thread).
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let err = |source| StateError::Write { path: path.display().to_string(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "state".into()),
        std::process::id()
    ));
    let result = (|| {
        // 0600: baselines say what every program on this host does and where
        // it sends, which is no one else's business.
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_agent_per_state_file() {
        let dir = std::env::temp_dir().join(format!("sluice-lock-{}", std::process::id()));
        let path = dir.join("state.json");
        let held = lock(&path).unwrap().expect("lock created");
        let e = lock(&path).err().expect("a second lock is refused");
        assert!(e.contains(&format!("(pid {})", std::process::id())) && e.contains("--state"), "{e}");
        assert!(lock(&dir.join("other.json")).unwrap().is_some(), "another state file is another agent");
        drop(held);
        assert!(lock(&path).unwrap().is_some(), "released with its holder");
        assert!(lock(Path::new("/proc/sluice-no/state.json")).unwrap().is_none(), "unwritable: no lock, no error");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    use crate::detect::baseline::{Params, Table};

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-state-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn state() -> State {
        let mut t = Table::default();
        let p = Params { alpha: 0.1, sigma_floor: 0.5, max_daily_drift: 0.7, snapshot_every: 3600.0 };
        t.train("/usr/bin/rclone#1", 1000, 1.0, &p, 10);
        t.train("/usr/bin/rclone#1", 2000, 2.0, &p, 10);
        State { sluice_state: STATE_VERSION, saved_at: 2.0, baselines: t, habits: Default::default(), alerts: Default::default(), agent_id: "a1".into(), handover: None }
    }

    #[test]
    fn round_trip_and_missing_is_fresh() {
        let d = dir();
        let p = d.join("sub/state.json");
        assert!(matches!(load(&p, 0.0).unwrap(), Loaded::Fresh));
        save(&p, &state()).unwrap();
        let Loaded::Restored(s) = load(&p, 0.0).unwrap() else { panic!() };
        assert_eq!(s.baselines.get("/usr/bin/rclone#1").unwrap().samples, 2);
        assert!(std::fs::read_dir(p.parent().unwrap()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp-")));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "only its owner reads the baselines");
    }

    #[test]
    fn corrupt_truncated_and_foreign_files_are_set_aside() {
        let d = dir();
        let p = d.join("state.json");
        save(&p, &state()).unwrap();
        let full = std::fs::read(&p).unwrap();
        for (bytes, what) in [
            (full[..full.len() / 2].to_vec(), "not valid JSON"),
            (b"{\"hello\": 1}".to_vec(), "not a sluice state file"),
            (b"{\"sluice_state\": 99}".to_vec(), "version 99"),
            (b"{\"sluice_state\": 2, \"baselines\": 7}".to_vec(), "malformed"),
        ] {
            std::fs::write(&p, &bytes).unwrap();
            let Loaded::SetAside { reason, moved_to } = load(&p, 42.0).unwrap() else { panic!("{what}") };
            assert!(reason.contains(what), "{reason}");
            assert!(!p.exists() && moved_to.exists(), "moved, not deleted");
            assert_eq!(std::fs::read(&moved_to).unwrap(), bytes, "nothing overwritten");
            std::fs::remove_file(moved_to).unwrap();
        }
    }

    #[test]
    fn a_version_1_file_is_migrated_keeping_executable_and_host_baselines() {
        let d = dir();
        let p = d.join("state.json");
        let mut old = state();
        let params = Params { alpha: 0.1, sigma_floor: 0.5, max_daily_drift: 0.7, snapshot_every: 3600.0 };
        old.baselines.train("exe:/usr/bin/rclone", 5000, 1.0, &params, 10);
        old.baselines.train("@host", 9000, 1.0, &params, 10);
        old.sluice_state = 1;
        let mut v = serde_json::to_value(&old).unwrap();
        // v1 models had no snapshots.
        for m in v["baselines"]["models"].as_object_mut().unwrap().values_mut() {
            m.as_object_mut().unwrap().retain(|k, _| !k.contains("snap"));
        }
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        let Loaded::Migrated(s) = load(&p, 0.0).unwrap() else { panic!("not migrated") };
        assert_eq!(s.sluice_state, STATE_VERSION);
        assert!(s.baselines.get("exe:/usr/bin/rclone").is_some() && s.baselines.get("@host").is_some());
        assert!(s.baselines.get("/usr/bin/rclone#1").is_none(), "v1 identity keys are dropped");
    }

    #[test]
    fn an_unwritable_path_is_an_error_not_a_panic() {
        let e = save(Path::new("/proc/sluice-cannot-write-here/state.json"), &state()).unwrap_err();
        assert!(e.to_string().contains("/proc/sluice-cannot-write-here"), "{e}");
    }
}
