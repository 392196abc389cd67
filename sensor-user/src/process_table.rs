//! Who is who: every live process (seeded from /proc at start, then kept current
//! by the kernel's exec/fork/exit events), plus recently exited ones for a grace
//! period so bytes they sent in their last tick are still attributed.

// Looked up per flow per tick: foldhash (randomly seeded) over SipHash.
use foldhash::HashMap;

use crate::{events::KernelEvent, text::lossless};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Kernel comm (at most 15 bytes).
    pub name: String,
    pub executable: String,
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// The kernel gave no argv for this exec (both copies failed): `args` is
    /// empty, not the previous program's.
    pub args_unknown: bool,
    pub cgroup_id: u64,
    /// Process group (0 = unknown): a shell with job control gives each job its
    /// own, and services, cron jobs and containers start their own session.
    pub pgid: u32,
    /// CLOCK_BOOTTIME ns at fork (or exec, or /proc start time when seeded).
    pub start_ns: u64,
    pub exited_ns: Option<u64>,
}

impl Process {
    /// ECS `process.entity_id`: stable for this process's life, unique across
    /// pid reuse.
    pub fn entity_id(&self) -> String {
        format!("{}-{}", self.pid, self.start_ns)
    }
}

/// Facts about a live process read from /proc (the I/O lives in `seed`).
pub trait ProcSource {
    fn read(&self, pid: u32) -> Option<Process>;
    fn cwd(&self, pid: u32) -> Option<String>;
}

#[derive(Default)]
pub struct ProcessTable {
    procs: HashMap<u32, Process>,
    /// The previous, exited holder of a pid a new process took, kept for the
    /// same grace period: bytes it sent in its last tick are still its own.
    departed: HashMap<u32, Process>,
}

impl ProcessTable {
    /// Live descendants of `pid` (children, their children, ...), at most `max`.
    pub fn descendants(&self, pid: u32, max: usize) -> Vec<&Process> {
        let mut out: Vec<&Process> = Vec::new();
        let mut frontier = vec![pid];
        while let Some(parent) = frontier.pop() {
            for p in self.procs.values().filter(|p| p.ppid == parent && p.pid != pid && p.exited_ns.is_none()) {
                if out.len() >= max {
                    return out;
                }
                if !out.iter().any(|o| o.pid == p.pid) {
                    out.push(p);
                    frontier.push(p.pid);
                }
            }
        }
        out
    }

    /// The process that holds `pid` now (or last did).
    pub fn get(&self, pid: u32) -> Option<&Process> {
        self.procs.get(&pid)
    }

    /// The incarnation of `pid` that started at `start_ns` (0: the current one).
    pub fn get_at(&self, pid: u32, start_ns: u64) -> Option<&Process> {
        match self.departed.get(&pid) {
            Some(d) if start_ns != 0 && d.start_ns == start_ns => Some(d),
            _ => self.procs.get(&pid),
        }
    }

    /// Which incarnation of `pid` owned a socket whose owner the kernel recorded
    /// with command name `comm` (at connect or send time) and which was created
    /// at `created_ns`: the departed one if that name is its own and not the new
    /// holder's, or if both share the name and the socket is older than the new
    /// holder. Returns its start (0: the current process).
    pub fn incarnation(&self, pid: u32, comm: &str, created_ns: u64) -> u64 {
        let (Some(old), Some(new)) = (self.departed.get(&pid), self.procs.get(&pid)) else { return 0 };
        if old.name == comm && (new.name != comm || created_ns < new.start_ns) {
            old.start_ns
        } else {
            0
        }
    }

    /// Whether an exited earlier holder of `pid` is still kept (only then can
    /// `incarnation` be other than 0).
    pub fn has_departed(&self, pid: u32) -> bool {
        self.departed.contains_key(&pid)
    }

    /// A new process takes `pid`: an exited holder moves to `departed`.
    fn replace(&mut self, p: Process) {
        if let Some(old) = self.procs.insert(p.pid, p) {
            if old.exited_ns.is_some() {
                self.departed.insert(old.pid, old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn insert(&mut self, p: Process) {
        self.procs.insert(p.pid, p);
    }

    /// Fill the table with every process /proc shows now.
    pub fn seed(&mut self, src: &dyn ProcSource, pids: impl IntoIterator<Item = u32>) -> usize {
        let mut n = 0;
        for pid in pids {
            if let Some(p) = src.read(pid) {
                self.procs.insert(pid, p);
                n += 1;
            }
        }
        n
    }

    pub fn apply(&mut self, ev: &KernelEvent, src: &dyn ProcSource) {
        match ev {
            KernelEvent::Fork(f) => {
                // The child runs its parent's program until it execs.
                let parent = self.procs.get(&f.ppid).cloned();
                let child = Process {
                    pid: f.pid,
                    ppid: f.ppid,
                    uid: f.uid,
                    gid: f.gid,
                    name: parent.as_ref().map(|p| p.name.clone()).unwrap_or_else(|| lossless(&f.comm)),
                    executable: parent.as_ref().map(|p| p.executable.clone()).unwrap_or_default(),
                    args: parent.as_ref().map(|p| p.args.clone()).unwrap_or_default(),
                    args_truncated: parent.as_ref().is_some_and(|p| p.args_truncated),
                    args_unknown: parent.as_ref().is_some_and(|p| p.args_unknown),
                    cgroup_id: f.cgroup_id,
                    pgid: parent.as_ref().map(|p| p.pgid).unwrap_or(0),
                    start_ns: f.ktime_ns,
                    exited_ns: None,
                };
                self.replace(child);
            }
            KernelEvent::Exec(e) => {
                let path = lossless(&e.path);
                let executable = if path.starts_with('/') || path.is_empty() {
                    path
                } else {
                    // A relative path resolves against the cwd, while the process lives.
                    match src.cwd(e.pid) {
                        Some(cwd) => format!("{}/{}", cwd.trim_end_matches('/'), path.trim_start_matches("./")),
                        None => path,
                    }
                };
                let known = self.procs.get(&e.pid);
                let ppid = known
                    .map(|p| p.ppid)
                    .or_else(|| src.read(e.pid).map(|p| p.ppid))
                    .unwrap_or(0);
                let start_ns = known.filter(|p| p.exited_ns.is_none()).map(|p| p.start_ns).unwrap_or(e.ktime_ns);
                // Inherited at fork, or set since by a `Pgid` event (setpgid and
                // setsid come from the kernel in order with fork and exec).
                let pgid = known.map(|p| p.pgid).unwrap_or(0);
                // Never the previous program's: unknown is said as such.
                let args = if e.argv_missing { Vec::new() } else { e.argv.iter().map(|a| lossless(a)).collect() };
                self.replace(
                    Process {
                        pid: e.pid,
                        ppid,
                        uid: e.uid,
                        gid: e.gid,
                        name: lossless(&e.comm),
                        executable,
                        args,
                        args_truncated: e.argv_truncated,
                        args_unknown: e.argv_missing,
                        cgroup_id: e.cgroup_id,
                        pgid,
                        start_ns,
                        exited_ns: None,
                    },
                );
            }
            KernelEvent::Exit { pid, ktime_ns } => {
                if let Some(p) = self.procs.get_mut(pid) {
                    p.exited_ns = Some(*ktime_ns);
                }
            }
            KernelEvent::Pgid { pid, pgid } => {
                if let Some(p) = self.procs.get_mut(pid) {
                    p.pgid = *pgid;
                }
            }
            KernelEvent::Payload(_) => {}
        }
    }

    /// Forget processes that exited more than `grace_ns` before `now_ns`.
    pub fn reap(&mut self, now_ns: u64, grace_ns: u64) -> usize {
        let before = self.procs.len();
        let keep = |p: &Process| p.exited_ns.is_none_or(|t| now_ns.saturating_sub(t) < grace_ns);
        self.procs.retain(|_, p| keep(p));
        self.departed.retain(|_, p| keep(p));
        before - self.procs.len()
    }
}

/// How far up `job_of` walks (the same bound as the ancestry rules see).
pub const JOB_DEPTH: usize = 8;

/// Shells: an interactive one is where a user's jobs start.
const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "tcsh", "csh", "busybox"];

/// Programs that start other people's jobs: a process they start is a job of
/// its own even where the process group says nothing (pgid unknown).
const SUPERVISORS: &[&str] = &[
    "init", "systemd", "sshd", "cron", "crond", "atd", "anacron", "conmon", "runc", "crun", "tini", "dumb-init",
    "docker-init", "tmux", "screen", "login", "kubelet",
];

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A shell a person types into: no script, no `-c`, only options (`-bash`, `bash -l`).
pub fn is_interactive_shell(p: &Process) -> bool {
    let exe = basename(&p.executable);
    SHELLS.contains(&exe) && p.args.iter().skip(1).all(|a| a.starts_with('-') && a != "-c")
}

pub fn is_supervisor(p: &Process) -> bool {
    let exe = basename(&p.executable);
    // containerd-shim, containerd-shim-runc-v2, ...
    SUPERVISORS.contains(&exe) || exe.starts_with("containerd-shim")
}

/// The job a process belongs to: the command a user, service or container
/// started, and everything it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job<'a> {
    /// The process group when known (it outlives its leader, so children a
    /// driver left behind stay in its job), else the top process's pid.
    pub pgid: u32,
    /// The command of the job: its group leader while that lives, else the
    /// highest ancestor of `p` in the same group the table still knows.
    pub root: &'a Process,
}

impl ProcessTable {
    /// Walk up from `p` while the parent is in the same process group (a
    /// pipeline and a script's children share their job's group; a job-control
    /// shell, setsid, services, cron and container runtimes start a new one),
    /// stopping below pid 1, an interactive shell, a supervisor, or a process
    /// the table no longer knows, at most `JOB_DEPTH` levels.
    pub fn job_of<'a>(&'a self, p: &'a Process) -> Job<'a> {
        let mut cur = p;
        for _ in 0..JOB_DEPTH {
            let Some(parent) = self.procs.get(&cur.ppid).filter(|q| q.pid > 1 && q.pid != cur.pid) else { break };
            let other_group = cur.pgid != 0 && parent.pgid != 0 && cur.pgid != parent.pgid;
            if other_group || is_interactive_shell(parent) || is_supervisor(parent) {
                break;
            }
            cur = parent;
        }
        let leader = (p.pgid != 0).then(|| self.procs.get(&p.pgid)).flatten().filter(|l| l.pgid == p.pgid);
        match leader {
            Some(l) => Job { pgid: p.pgid, root: l },
            None => Job { pgid: if p.pgid != 0 { p.pgid } else { cur.pid }, root: cur },
        }
    }
}

/// The real /proc, through the procfs crate.
pub struct Procfs {
    ticks_per_second: u64,
    /// The cgroup v2 mount, found once (not per process read).
    cgroup2: Option<std::path::PathBuf>,
}

impl Default for Procfs {
    fn default() -> Self {
        Self {
            ticks_per_second: procfs::ticks_per_second().max(1),
            cgroup2: crate::kernel::mounts::cgroup2_mount().ok(),
        }
    }
}

impl Procfs {
    pub fn pids(&self) -> Vec<u32> {
        match procfs::process::all_processes() {
            Ok(all) => all.filter_map(|p| p.ok()).map(|p| p.pid as u32).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl ProcSource for Procfs {
    fn read(&self, pid: u32) -> Option<Process> {
        let proc = procfs::process::Process::new(pid as i32).ok()?;
        let stat = proc.stat().ok()?;
        let status = proc.status().ok();
        let executable = proc.exe().map(|p| lossless(p.as_os_str().as_encoded_bytes())).unwrap_or_default();
        let args = proc
            .cmdline()
            .map(|v| v.iter().map(|a| lossless(a.as_bytes())).collect())
            .unwrap_or_default();
        let cgroup_id = self.cgroup2.as_deref().and_then(|root| cgroup_id_of(root, pid)).unwrap_or(0);
        Some(Process {
            pid,
            ppid: stat.ppid.max(0) as u32,
            uid: status.as_ref().map(|s| s.ruid).unwrap_or(0),
            gid: status.as_ref().map(|s| s.rgid).unwrap_or(0),
            name: lossless(stat.comm.as_bytes()),
            executable,
            args,
            args_truncated: false,
            args_unknown: false,
            cgroup_id,
            pgid: stat.pgrp.max(0) as u32,
            start_ns: stat.starttime * 1_000_000_000 / self.ticks_per_second,
            exited_ns: None,
        })
    }

    fn cwd(&self, pid: u32) -> Option<String> {
        let p = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
        Some(lossless(p.as_os_str().as_encoded_bytes()))
    }
}

/// The cgroup v2 id of a process: the inode number of its cgroup directory,
/// which is what bpf_get_current_cgroup_id returns.
fn cgroup_id_of(root: &std::path::Path, pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    std::fs::metadata(root.join(path.trim_start_matches('/'))).ok().map(|m| m.ino())
}

/// Wall-clock time of a CLOCK_BOOTTIME timestamp (for ECS dates).
pub fn boot_to_wall(boot_ns: u64) -> std::time::SystemTime {
    let ago = boottime_ns().saturating_sub(boot_ns);
    std::time::SystemTime::now() - std::time::Duration::from_nanos(ago)
}

/// CLOCK_BOOTTIME now, the clock of the kernel's event timestamps.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Exec, Fork};

    struct NoProc;
    impl ProcSource for NoProc {
        fn read(&self, _: u32) -> Option<Process> {
            None
        }
        fn cwd(&self, pid: u32) -> Option<String> {
            (pid == 77).then(|| "/home/u".to_string())
        }
    }

    fn exec(pid: u32, path: &[u8], argv: &[&[u8]]) -> KernelEvent {
        KernelEvent::Exec(Exec {
            pid,
            tid: pid,
            uid: 1000,
            gid: 1000,
            cgroup_id: 3,
            ktime_ns: 200,
            comm: path.rsplit(|&b| b == b'/').next().unwrap().to_vec(),
            path: path.to_vec(),
            argv: argv.iter().map(|a| a.to_vec()).collect(),
            argv_truncated: false,
            argv_missing: false,
            path_truncated: false,
        })
    }

    #[test]
    fn an_exec_without_argv_says_unknown_and_never_keeps_the_previous_programs() {
        let mut t = ProcessTable::default();
        t.apply(&exec(60, b"/usr/bin/launcher", &[b"launcher", b"--secret-flag"]), &NoProc);
        let KernelEvent::Exec(mut e) = exec(60, b"/usr/bin/python3", &[]) else { unreachable!() };
        e.argv_missing = true;
        t.apply(&KernelEvent::Exec(e), &NoProc);
        let p = t.get(60).unwrap();
        assert_eq!((p.executable.as_str(), p.args.len(), p.args_unknown), ("/usr/bin/python3", 0, true));
    }

    #[test]
    fn fork_then_exec_keeps_parent_and_start() {
        let mut t = ProcessTable::default();
        t.insert(Process {
            pid: 1,
            ppid: 0,
            uid: 0,
            gid: 0,
            name: "bash".into(),
            executable: "/bin/bash".into(),
            args: vec!["bash".into()],
            args_truncated: false,
            args_unknown: false,
            cgroup_id: 3,
            pgid: 1,
            start_ns: 1,
            exited_ns: None,
        });
        t.apply(&KernelEvent::Fork(Fork { pid: 50, ppid: 1, uid: 0, gid: 0, cgroup_id: 3, ktime_ns: 100, comm: b"bash".to_vec() }), &NoProc);
        assert_eq!(t.get(50).unwrap().executable, "/bin/bash");
        assert_eq!(t.get(50).unwrap().pgid, 1, "the group is inherited at fork");
        t.apply(&KernelEvent::Pgid { pid: 50, pgid: 50 }, &NoProc);
        t.apply(&exec(50, b"/usr/bin/curl", &[b"curl", b"-T", b"x"]), &NoProc);
        let p = t.get(50).unwrap();
        assert_eq!((p.ppid, p.start_ns, p.executable.as_str()), (1, 100, "/usr/bin/curl"));
        assert_eq!(p.pgid, 50, "setpgid before exec made it a job of its own");
        assert_eq!(p.args, ["curl", "-T", "x"]);
    }

    #[test]
    fn relative_paths_resolve_against_cwd_and_hostile_bytes_survive() {
        let mut t = ProcessTable::default();
        t.apply(&exec(77, b"./up\xff", &[b"up\n\x1b[2J"]), &NoProc);
        let p = t.get(77).unwrap();
        assert_eq!(p.executable, "/home/u/up\\xff");
        assert_eq!(p.args, ["up\n\x1b[2J"]);
    }

    fn process(pid: u32, ppid: u32, pgid: u32, exe: &str, args: &[&str]) -> Process {
        Process {
            pid,
            ppid,
            uid: 0,
            gid: 0,
            name: basename(exe).into(),
            executable: exe.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            args_truncated: false,
            args_unknown: false,
            cgroup_id: 3,
            pgid,
            start_ns: pid as u64,
            exited_ns: None,
        }
    }

    #[test]
    fn a_job_is_its_process_group_and_its_command_the_group_leader() {
        let mut t = ProcessTable::default();
        t.insert(process(1, 0, 1, "/sbin/init", &["init"]));
        t.insert(process(10, 1, 10, "/usr/sbin/sshd", &["sshd"]));
        t.insert(process(11, 10, 11, "/bin/bash", &["-bash"]));
        // bash runs `python3 up.py`, a job of its own (job control), whose ssh
        // child and 30 python3 helpers share its group.
        t.insert(process(20, 11, 20, "/usr/bin/python3", &["python3", "up.py"]));
        t.insert(process(21, 20, 20, "/usr/bin/ssh", &["ssh", "host", "cat > x"]));
        t.insert(process(22, 20, 20, "/usr/bin/python3", &["python3", "-c", "part 7"]));
        for pid in [20, 21, 22] {
            let p = t.get(pid).unwrap();
            let j = t.job_of(p);
            assert_eq!((j.pgid, j.root.pid), (20, 20), "pid {pid}");
        }
        // The interactive shell is its own job, not sshd's.
        assert_eq!(t.job_of(t.get(11).unwrap()).root.pid, 11);
        // The driver exits and is reaped: its helpers stay one job (the group).
        t.procs.remove(&20);
        let j21 = t.job_of(t.get(21).unwrap());
        let j22 = t.job_of(t.get(22).unwrap());
        assert_eq!((j21.pgid, j22.pgid), (20, 20));
        // Unknown groups (0): the walk stops below the interactive shell.
        t.insert(process(30, 11, 0, "/bin/sh", &["sh", "backup.sh"]));
        t.insert(process(31, 30, 0, "/usr/bin/tar", &["tar", "cf", "-", "."]));
        let j = t.job_of(t.get(31).unwrap());
        assert_eq!((j.pgid, j.root.pid), (30, 30));
    }

    #[test]
    fn exited_processes_stay_for_the_grace_period() {
        let mut t = ProcessTable::default();
        t.apply(&exec(9, b"/bin/true", &[b"true"]), &NoProc);
        t.apply(&KernelEvent::Exit { pid: 9, ktime_ns: 1_000 }, &NoProc);
        assert_eq!(t.reap(1_500, 1_000), 0);
        assert!(t.get(9).is_some());
        assert_eq!(t.reap(2_500, 1_000), 1);
        assert!(t.get(9).is_none());
    }

    #[test]
    fn a_reused_pid_keeps_the_exited_holder_for_its_sockets() {
        let mut t = ProcessTable::default();
        let fork = |pid, ktime_ns| KernelEvent::Fork(Fork { pid, ppid: 1, uid: 0, gid: 0, cgroup_id: 3, ktime_ns, comm: b"sh".to_vec() });
        t.apply(&exec(60, b"/usr/bin/netload", &[b"netload"]), &NoProc);
        t.apply(&KernelEvent::Exit { pid: 60, ktime_ns: 300 }, &NoProc);
        // Another program takes pid 60.
        t.apply(&fork(60, 400), &NoProc);
        t.apply(&exec(60, b"/usr/bin/burst", &[b"burst"]), &NoProc);
        assert_eq!(t.get(60).unwrap().executable, "/usr/bin/burst");
        // A socket the kernel recorded as netload's is the first holder's.
        let old = t.incarnation(60, "netload", 250);
        assert_eq!(old, 200);
        assert_eq!(t.get_at(60, old).unwrap().executable, "/usr/bin/netload");
        // The new holder's own sockets, and sockets it inherited, are its own.
        assert_eq!(t.incarnation(60, "burst", 150), 0);
        assert_eq!(t.get_at(60, 0).unwrap().executable, "/usr/bin/burst");
        // The same name on both: the socket's age decides.
        t.apply(&KernelEvent::Exit { pid: 60, ktime_ns: 500 }, &NoProc);
        t.apply(&fork(60, 600), &NoProc);
        t.apply(&exec(60, b"/usr/bin/burst", &[b"burst"]), &NoProc);
        assert_eq!(t.incarnation(60, "burst", 450), 400);
        assert_eq!(t.incarnation(60, "burst", 650), 0);
        // Both go once the grace period is over.
        t.apply(&KernelEvent::Exit { pid: 60, ktime_ns: 700 }, &NoProc);
        t.reap(10_000, 1_000);
        assert!(t.get(60).is_none() && t.get_at(60, 400).is_none());
    }
}
