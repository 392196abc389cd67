//! What one flow is, for the rules: who sent it, where to, and the window
//! totals of every subject it belongs to, computed once per flow per tick.

use std::sync::Arc;

use super::{FlowObs, ProcInfo};
use crate::services::Service;

pub struct Subject<'a> {
    pub f: &'a FlowObs,
    /// The tick's end (unix seconds) and length.
    pub t: f64,
    pub window_s: f64,
    pub short_s: f64,
    pub long_s: f64,
    /// Bucket width of the short windows (the tick, clamped).
    pub bucket: f64,
    pub service: Option<Arc<Service>>,
    /// Identity key (executable + argv shape), destination key, both, executable key.
    pub id: String,
    pub dest: String,
    pub key_dest: String,
    pub key_exe: String,
    /// Short-window totals of the identity, and of identity x destination.
    pub id_out: u64,
    pub id_in: u64,
    pub kd_out: u64,
    /// Long-window total of the identity.
    pub long_out: u64,
    /// The job's key (its process group) and the registered-domain-or-IP key.
    pub job: String,
    pub site: String,
    /// Short-window totals (out, in) of the job.
    pub job_out: u64,
    pub job_in: u64,
    /// The sender's executable has a mature baseline (learned rules judge it).
    pub learned: bool,
    /// Why where the sender (or its job) runs from is suspicious.
    pub origin: Vec<String>,
    /// Command-line and origin evidence (curl -T, rclone copy, /dev/shm, ...).
    pub indicators: Vec<String>,
}

/// A process's facts for one tick (see `Detector::process_facts`).
#[derive(Debug, Clone)]
pub struct ProcessFacts {
    pub id: String,
    pub key_exe: String,
    pub job: String,
    pub origin: Vec<String>,
    pub indicators: Vec<String>,
}

/// The levels an upload is judged at, smallest first: what crossed a bar is
/// named on the alert with that level's total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Job,
    Executable,
    Destination,
    Host,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Job, Level::Executable, Level::Destination, Level::Host];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Job => "job",
            Level::Executable => "executable",
            Level::Destination => "destination",
            Level::Host => "host",
        }
    }
}

impl Subject<'_> {
    /// The window key of `level` for this flow.
    pub fn level_key(&self, level: Level) -> &str {
        match level {
            Level::Job => &self.job,
            Level::Executable => &self.key_exe,
            Level::Destination => &self.site,
            Level::Host => super::HOST_KEY,
        }
    }
}

/// Process identity: executable plus a hash of the argv "shape" (numbers
/// folded, first four arguments), so `python3 backup.py` and `python3 app.py`
/// are different entities while `curl -T a` and `curl -T b` stay apart only by
/// their file arguments' shape.
/// The hash is FNV-1a over the folded bytes (each argument ended by a NUL):
/// identities are persisted in the state file, so the hash must not change
/// with the Rust release the way `DefaultHasher` may.
pub fn identity(p: &ProcInfo) -> String {
    let mut h = Fnv1a::default();
    for a in p.args.iter().skip(1).take(4) {
        let folded: String = a.chars().take(64).map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
        h.write(folded.as_bytes());
        h.write(&[0]);
    }
    format!("{}#{:08x}", p.executable, h.0 as u32)
}

/// 64-bit FNV-1a (http://www.isthe.com/chongo/tech/comp/fnv/): stable by definition.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The destination key: the name when there is one, else the address.
pub fn destination(f: &FlowObs) -> String {
    f.domain.clone().unwrap_or_else(|| f.remote_ip.to_string())
}

/// The destination level's key: the registered domain of the name (so the
/// transfer nodes of one service add up: gfs1.userstorage.mega.co.nz and
/// gfs2... are both mega.co.nz), else the address.
pub fn site(f: &FlowObs) -> String {
    let registered = f.domain.as_deref().and_then(|d| {
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        psl::domain_str(&d).map(str::to_string).or(Some(d))
    });
    format!("site:{}", registered.unwrap_or_else(|| f.remote_ip.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> ProcInfo {
        ProcInfo {
            executable: "/usr/bin/python3".into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..ProcInfo::default()
        }
    }

    #[test]
    fn identities_are_stable_across_releases_and_fold_numbers() {
        // Pinned: a change here orphans every identity baseline in state files.
        assert_eq!(identity(&p(&["python3", "backup.py"])), "/usr/bin/python3#cb93da30");
        assert_eq!(identity(&p(&["python3", "part-1"])), identity(&p(&["python3", "part-9"])));
        assert_ne!(identity(&p(&["python3", "a", "b"])), identity(&p(&["python3", "ab"])));
    }

    #[test]
    fn transfer_nodes_of_one_service_are_one_site() {
        let mut f = FlowObs {
            process: p(&[]),
            remote_ip: "203.0.113.9".parse().unwrap(),
            remote_port: 443,
            transport: "tcp".into(),
            direction: "egress".into(),
            scope: "public".into(),
            domain: Some("gfs270n122.userstorage.mega.co.nz".into()),
            domain_corroborated: false,
            via_proxy: None,
            cgroup: None,
            container: None,
            bytes_out: 1,
            bytes_in: 0,
        };
        assert_eq!(site(&f), "site:mega.co.nz");
        f.domain = Some("Upload.Example.COM.".into());
        assert_eq!(site(&f), "site:example.com");
        f.domain = None;
        assert_eq!(site(&f), "site:203.0.113.9");
    }
}
