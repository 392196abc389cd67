//! cgroup id -> cgroup v2 path, for the container of a flow's owner (the id
//! is the inode of the cgroup's directory, what the kernel recorded, so it
//! resolves after the process is gone). A miss means walking the cgroup2
//! tree; that walk runs on a thread of its own, and the tick waits for it at
//! most `WAIT`: on a host with a huge cgroup tree the tick goes on (that
//! tick's records of the new cgroup have no container) instead of holding
//! the ring buffer's drain.

use std::{
    collections::HashMap,
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::Duration,
};

/// How long a tick waits for a walk it started: a few thousand cgroups take
/// milliseconds, so the records of a container that just started still name
/// it; a tree of hundreds of thousands costs this tick no more than this.
const WAIT: Duration = Duration::from_millis(250);
/// Directories a walk reads at most.
const WALK_LIMIT: usize = 50_000;

type Walk = fn() -> HashMap<u64, String>;

pub struct CgroupPaths {
    known: HashMap<u64, String>,
    walk: Walk,
    running: Option<Receiver<HashMap<u64, String>>>,
    /// The tick of the last walk started: at most one per tick.
    walked_tick: Option<u64>,
    wait: Duration,
}

fn walk_cgroup2() -> HashMap<u64, String> {
    crate::kernel::mounts::cgroup2_mount().map(|root| crate::kernel::mounts::cgroup_ids(&root, WALK_LIMIT)).unwrap_or_default()
}

impl Default for CgroupPaths {
    fn default() -> Self {
        Self::new(walk_cgroup2, WAIT)
    }
}

impl CgroupPaths {
    pub fn new(walk: Walk, wait: Duration) -> Self {
        Self { known: HashMap::new(), walk, running: None, walked_tick: None, wait }
    }

    /// The path of `id` (0 = unknown): known, else from a walk started now
    /// (at most one per `tick`) if it ends within the wait.
    pub fn path(&mut self, id: u64, tick: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        self.take(Duration::ZERO);
        if let Some(p) = self.known.get(&id) {
            return Some(p.clone());
        }
        if self.running.is_none() && self.walked_tick != Some(tick) {
            self.walked_tick = Some(tick);
            let (tx, rx) = mpsc::sync_channel(1);
            let walk = self.walk;
            let spawned = std::thread::Builder::new().name("sluice-cgroups".into()).spawn(move || {
                let _ = tx.send(walk());
            });
            if spawned.is_ok() {
                self.running = Some(rx);
            }
        }
        self.take(self.wait);
        self.known.get(&id).cloned()
    }

    /// The running walk's result, if it comes within `wait`.
    fn take(&mut self, wait: Duration) {
        let Some(rx) = &self.running else { return };
        let got = if wait.is_zero() { rx.try_recv().map_err(|e| matches!(e, mpsc::TryRecvError::Disconnected)) } else {
            rx.recv_timeout(wait).map_err(|e| matches!(e, RecvTimeoutError::Disconnected))
        };
        match got {
            Ok(paths) => {
                self.known = paths;
                self.running = None;
            }
            // The walk thread died: the next miss starts another.
            Err(true) => self.running = None,
            Err(false) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};

    use super::*;

    /// A walk held until the test releases it (a cgroup tree of millions).
    static HELD: Mutex<bool> = Mutex::new(true);
    static RELEASED: Condvar = Condvar::new();

    fn slow_walk() -> HashMap<u64, String> {
        let mut held = HELD.lock().unwrap();
        while *held {
            held = RELEASED.wait(held).unwrap();
        }
        [(7, "/kubepods.slice/pod-a.slice".to_string())].into_iter().collect()
    }

    #[test]
    fn a_slow_walk_holds_no_tick_and_its_paths_arrive_later() {
        let mut c = CgroupPaths::new(slow_walk, Duration::from_millis(1));
        assert_eq!(c.path(0, 1), None);
        // The walk runs: this tick and the next go on without the path, and
        // no second walk starts.
        assert_eq!(c.path(7, 1), None);
        assert_eq!(c.path(7, 2), None);
        assert!(c.running.is_some() && c.walked_tick == Some(1));
        *HELD.lock().unwrap() = false;
        RELEASED.notify_all();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while c.path(7, 3).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(c.path(7, 3).as_deref(), Some("/kubepods.slice/pod-a.slice"));
        assert!(c.running.is_none());
    }
}
