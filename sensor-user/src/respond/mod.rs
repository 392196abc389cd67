//! Containment (opt-in, `[respond]`): when a rule in `enforce` mode alerts,
//! the alert's process and what it started are contained for the TTL, and
//! for an alert on a job's total the whole job (the agent passes its root and
//! the processes below it, unless that root is a shell, a supervisor or
//! guarded). Their pids go into the
//! kernel's `DENY_TGID` (new sockets refused; processes they fork later are
//! added by the kernel), their sockets into `DENY` (egress packets dropped by
//! the cgroup_skb programs; sockets found later join at each tick), and their
//! TCP connections are then aborted (`abort`, unless `respond.abort` is off).
//! `dry-run` writes the same record and drops nothing. The guard (pid 1,
//! sluice itself, sshd, systemd, kubelet, container runtimes and the
//! configured executables) is never contained. Everything is lifted at its
//! TTL, and when sluice stops (its programs go with it: fail open), unless
//! `respond.keep` hands the containments to the next agent.
//!
//! Decisions are pure over what the agent passes in; the kernel maps are
//! behind `DenyMaps`, which the tests replace.

pub mod abort;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use abort::{Aborted, Tuple};

use crate::{
    config::{Respond as Config, RespondMode},
    detect::{Alert, ProcInfo},
    output::{self, Context},
};

/// Never contained, by executable file name.
const GUARD: &[&str] = &[
    "sshd", "systemd", "init", "kubelet", "containerd", "containerd-shim", "containerd-shim-runc-v2", "dockerd", "runc", "crun",
    "conmon", "crio", "podman", "sluice",
];
/// Containments held at most; past it the oldest is lifted (the kernel maps
/// are LRUs too, so a flood of alerts cannot grow them).
const ACTIVE_MAX: usize = 256;

/// A socket whose owner the agent knows, and its TCP connection where it is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The socket's cookie or, where `cookie_known` is false (the send-path
    /// backends' flow keys), its kernel address: the deny map needs the
    /// cookie, which is then asked of sock_diag by `tcp`.
    pub key: u64,
    pub cookie_known: bool,
    pub pid: u32,
    pub tcp: Option<Tuple>,
}

/// The kernel's deny maps, and the kernel's way to end a connection.
pub trait DenyMaps {
    fn deny_socket(&mut self, cookie: u64, id: u32);
    fn allow_socket(&mut self, cookie: u64);
    fn deny_process(&mut self, tgid: u32, id: u32);
    fn allow_process(&mut self, tgid: u32);
    fn abort(&mut self, pid: u32, cookie: u64, tcp: &Tuple) -> anyhow::Result<Aborted>;
    /// The cookie of `pid`'s open TCP connection `tcp`.
    fn cookie_of(&mut self, pid: u32, tcp: &Tuple) -> anyhow::Result<Option<u64>>;
    /// Every contained process, with its containment's id: those the agent
    /// put there, and those the kernel added as contained processes forked them.
    fn contained(&self) -> Vec<(u32, u32)>;
}

/// `DENY` and `DENY_TGID` in the kernel, and sock_diag's SOCK_DESTROY.
pub struct KernelDeny {
    pub sockets: aya::maps::HashMap<aya::maps::MapData, u64, u32>,
    pub processes: aya::maps::HashMap<aya::maps::MapData, u32, u32>,
    pub aborter: abort::Aborter,
}

impl DenyMaps for KernelDeny {
    fn deny_socket(&mut self, cookie: u64, id: u32) {
        let _ = self.sockets.insert(cookie, id, 0);
    }
    fn allow_socket(&mut self, cookie: u64) {
        let _ = self.sockets.remove(&cookie);
    }
    fn deny_process(&mut self, tgid: u32, id: u32) {
        let _ = self.processes.insert(tgid, id, 0);
    }
    fn allow_process(&mut self, tgid: u32) {
        let _ = self.processes.remove(&tgid);
    }
    fn abort(&mut self, pid: u32, cookie: u64, tcp: &Tuple) -> anyhow::Result<Aborted> {
        self.aborter.abort(pid, cookie, tcp)
    }
    fn cookie_of(&mut self, pid: u32, tcp: &Tuple) -> anyhow::Result<Option<u64>> {
        self.aborter.cookie_of(pid, tcp)
    }
    fn contained(&self) -> Vec<(u32, u32)> {
        self.processes.iter().filter_map(Result::ok).collect()
    }
}

/// One containment; saved as it is in the state file when `respond.keep`
/// hands it to the next agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Containment {
    id: u32,
    mode: RespondMode,
    rule: String,
    process: ProcInfo,
    /// pid -> start (CLOCK_BOOTTIME ns, 0 = unknown): the processes contained,
    /// each told from a later process that reuses its pid by its start.
    pids: HashMap<u32, u64>,
    /// The job's root (pid, name) when the containment holds the whole job,
    /// not only the alert's process and what it started.
    #[serde(default)]
    job: Option<(u32, String)>,
    /// The sockets taken in (their `Held::key`), and the cookies put in `DENY`.
    seen: HashSet<u64>,
    cookies: HashSet<u64>,
    /// TCP connections aborted, and why the first one that could not be found or aborted was not.
    aborted: u32,
    abort_error: Option<String>,
    bytes_before: u64,
    until: f64,
}

impl Containment {
    /// Take `h` in if one of its processes owns it: drop its packets and, if
    /// asked, abort its connection.
    fn cut<M: DenyMaps>(&mut self, maps: &mut M, h: &Held, abort: bool) {
        if !self.pids.contains_key(&h.pid) || !self.seen.insert(h.key) || self.mode != RespondMode::Enforce {
            return;
        }
        let cookie = match (h.cookie_known, h.tcp) {
            (true, _) => h.key,
            // A send-path UDP socket is left to the BPF LSM's refusal of its sends.
            (false, None) => return,
            (false, Some(tcp)) => match maps.cookie_of(h.pid, &tcp) {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => return self.failed(e),
            },
        };
        if !self.cookies.insert(cookie) {
            return;
        }
        // Dropped first, so nothing leaves between the abort and the drop.
        maps.deny_socket(cookie, self.id);
        let Some(tcp) = h.tcp.filter(|_| abort) else { return };
        match maps.abort(h.pid, cookie, &tcp) {
            Ok(Aborted::Yes) => self.aborted += 1,
            Ok(Aborted::Gone) => {}
            Err(e) => self.failed(e),
        }
    }

    fn failed(&mut self, e: anyhow::Error) {
        self.abort_error.get_or_insert_with(|| format!("{e:#}"));
    }
}

pub struct Responder<M> {
    cfg: Config,
    maps: M,
    own_pid: u32,
    next_id: u32,
    active: Vec<Containment>,
}

/// Why a process may not be contained, if it may not.
pub fn guarded(p: &ProcInfo, own_pid: u32, extra: &[String]) -> Option<String> {
    let file = p.executable.rsplit('/').next().unwrap_or(&p.executable);
    if p.pid <= 1 || p.pid == own_pid {
        return Some(format!("pid {} is {}", p.pid, if p.pid == own_pid { "sluice itself" } else { "init" }));
    }
    if GUARD.contains(&file) || GUARD.contains(&p.name.as_str()) {
        return Some(format!("{file} is on the built-in guard list"));
    }
    extra.iter().find(|g| **g == p.executable || g.as_str() == file).map(|g| format!("{g} is on respond.guard"))
}

impl<M: DenyMaps> Responder<M> {
    pub fn new(cfg: Config, maps: M, own_pid: u32) -> Self {
        Responder { cfg, maps, own_pid, next_id: 1, active: Vec::new() }
    }

    /// Whether a containment is in force (its sockets are to be followed).
    pub fn holding(&self) -> bool {
        !self.active.is_empty()
    }

    /// An alert: contain its process and `job` (the processes it started, or,
    /// when `root` is its job's root, that root and everything below it), with
    /// the sockets of `held` they own, if its rule says so.
    /// The record to write, if any.
    pub fn on_alert(&mut self, ctx: &Context, a: &Alert, root: Option<&ProcInfo>, job: &[ProcInfo], held: &[Held], now: f64) -> Option<Value> {
        let mode = self.cfg.mode(a.rule.id);
        if mode == RespondMode::Off {
            return None;
        }
        if let Some(why) = guarded(&a.process, self.own_pid, &self.cfg.guard) {
            return Some(record(ctx, a.rule.id, &a.process, mode, "failure", json!({ "guarded": why }), now));
        }
        // Already contained (a second rule, a later tick): one containment.
        if self.active.iter().any(|c| c.pids.contains_key(&a.process.pid)) {
            return None;
        }
        let root = root.filter(|r| r.pid != a.process.pid && guarded(r, self.own_pid, &self.cfg.guard).is_none());
        let pids: HashMap<u32, u64> = std::iter::once(&a.process)
            .chain(root)
            .chain(job.iter().filter(|p| guarded(p, self.own_pid, &self.cfg.guard).is_none()))
            .map(|p| (p.pid, p.start_ns))
            .collect();
        let mut c = Containment {
            id: self.next_id,
            mode,
            rule: a.rule.id.to_string(),
            process: a.process.clone(),
            seen: HashSet::new(),
            cookies: HashSet::new(),
            aborted: 0,
            abort_error: None,
            pids,
            job: root.map(|r| (r.pid, r.name.clone())),
            bytes_before: a.bytes_out,
            until: now + self.cfg.ttl.as_secs_f64(),
        };
        self.next_id = self.next_id.wrapping_add(1).max(1);
        if mode == RespondMode::Enforce {
            // Refused new sockets first: none slips out between these steps.
            for &pid in c.pids.keys() {
                self.maps.deny_process(pid, c.id);
            }
        }
        for h in held {
            c.cut(&mut self.maps, h, self.cfg.abort);
        }
        let out = record(ctx, &c.rule, &c.process, mode, outcome(mode), self.details(&c), now);
        self.active.push(c);
        if self.active.len() > ACTIVE_MAX {
            let oldest = self.active.remove(0);
            self.release(&oldest);
        }
        Some(out)
    }

    /// Each tick: the contained processes' sockets made since join `DENY`
    /// (`live`: the sockets seen, with their owners); containments past their
    /// TTL, or named in `lift` (`sluice respond lift`), are lifted. The lift
    /// records to write.
    pub fn tick(&mut self, ctx: &Context, live: &[Held], lift: &[u32], now: f64) -> Vec<Value> {
        if self.active.iter().any(|c| c.mode == RespondMode::Enforce) {
            // Processes the contained ones forked since: the kernel contained them.
            for (pid, id) in self.maps.contained() {
                if let Some(c) = self.active.iter_mut().find(|c| c.id == id) {
                    c.pids.entry(pid).or_insert(0);
                }
            }
        }
        for c in self.active.iter_mut().filter(|c| c.mode == RespondMode::Enforce) {
            for h in live {
                c.cut(&mut self.maps, h, self.cfg.abort);
            }
        }
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.active).into_iter().partition(|c| c.until <= now || lift.contains(&c.id));
        self.active = keep;
        done.iter()
            .map(|c| {
                self.release(c);
                let why = if c.until <= now { format!("its ttl of {} s ended", self.cfg.ttl.as_secs()) } else { "`sluice respond lift` asked".to_string() };
                let mut r = record(ctx, &c.rule, &c.process, c.mode, "success", self.details(c), now);
                r["event"]["action"] = json!("sluice.contain.lift");
                r["event"]["type"] = json!(["allowed", "end"]);
                r["event"]["reason"] = json!(format!("containment {} of {} (pid {}) lifted: {why}", c.id, c.process.name, c.process.pid));
                r
            })
            .collect()
    }

    /// The containments in force, for the next agent (`respond.keep`).
    pub fn kept(&self) -> Vec<Containment> {
        self.active.clone()
    }

    /// Put back the containments the previous agent handed over: those whose
    /// TTL has time left, with those of their processes `alive(pid, start)`
    /// says still run (not another process that reuses a pid). The records to write.
    pub fn restore(&mut self, ctx: &Context, kept: Vec<Containment>, now: f64, alive: impl Fn(u32, u64) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        for mut c in kept.into_iter().filter(|c| c.until > now && self.cfg.mode(&c.rule) == c.mode) {
            c.pids.retain(|&pid, &mut start| alive(pid, start));
            if c.pids.is_empty() || self.active.len() >= ACTIVE_MAX {
                continue;
            }
            if c.mode == RespondMode::Enforce {
                for &pid in c.pids.keys() {
                    self.maps.deny_process(pid, c.id);
                }
                for &cookie in &c.cookies {
                    self.maps.deny_socket(cookie, c.id);
                }
            }
            self.next_id = self.next_id.max(c.id.wrapping_add(1)).max(1);
            let mut r = record(ctx, &c.rule, &c.process, c.mode, outcome(c.mode), self.details(&c), now);
            r["event"]["reason"] = json!(format!(
                "containment {} of {} (pid {}) after {} put back when sluice restarted: {} of its processes still run, held for the {:.0} s left of its ttl",
                c.id, c.process.name, c.process.pid, c.rule, c.pids.len(), c.until - now
            ));
            out.push(r);
            self.active.push(c);
        }
        out
    }

    /// The containments in force, for `sluice respond list`.
    pub fn list(&self, now: f64) -> Value {
        Value::Array(
            self.active
                .iter()
                .map(|c| {
                    let mut d = self.details(c);
                    d["rule"] = json!(c.rule);
                    d["pid"] = json!(c.process.pid);
                    d["name"] = json!(crate::text::escape_control(&c.process.name));
                    d["ttl_left_s"] = json!((c.until - now).max(0.0).round());
                    d
                })
                .collect(),
        )
    }

    fn release(&mut self, c: &Containment) {
        if c.mode != RespondMode::Enforce {
            return;
        }
        for &cookie in &c.cookies {
            self.maps.allow_socket(cookie);
        }
        for &pid in c.pids.keys() {
            self.maps.allow_process(pid);
        }
        // And any the kernel added since the last tick.
        for (pid, _) in self.maps.contained().into_iter().filter(|&(_, id)| id == c.id) {
            self.maps.allow_process(pid);
        }
    }

    fn details(&self, c: &Containment) -> Value {
        let mut pids: Vec<u32> = c.pids.keys().copied().collect();
        pids.sort_unstable();
        json!({
            "id": c.id,
            "mode": mode_name(c.mode),
            "processes": pids,
            "sockets": c.seen.len(),
            "job": c.job.as_ref().map(|(pid, name)| json!({ "pid": pid, "name": crate::text::escape_control(name) })),
            "aborted": c.aborted,
            "abort_error": c.abort_error,
            "bytes_before": c.bytes_before,
            "ttl_s": self.cfg.ttl.as_secs(),
        })
    }
}

pub fn mode_name(m: RespondMode) -> &'static str {
    match m {
        RespondMode::Off => "off",
        RespondMode::DryRun => "dry-run",
        RespondMode::Enforce => "enforce",
    }
}

/// ECS `event.outcome`: a dry run's effect is not known, since nothing was dropped.
fn outcome(m: RespondMode) -> &'static str {
    if m == RespondMode::Enforce { "success" } else { "unknown" }
}

/// Who is contained along with the alert's process, for the reason.
fn with_whom(containment: &Value) -> String {
    match &containment["job"] {
        Value::Null => "what it started".to_string(),
        j => format!("the rest of its job, under {} (pid {})", j["name"].as_str().unwrap_or("?"), j["pid"]),
    }
}

/// What became of its TCP connections, for the reason's end.
fn aborts(containment: &Value) -> String {
    let n = containment["aborted"].as_u64().unwrap_or(0);
    let mut s = match n {
        0 => String::new(),
        1 => "; its TCP connection was aborted".to_string(),
        n => format!("; its {n} TCP connections were aborted"),
    };
    if let Some(e) = containment["abort_error"].as_str() {
        s += &format!("; a connection could not be found or aborted ({e}), so at most its packets are dropped");
    }
    s
}

/// A containment record: ECS `event.type: ["denied"]` with what was contained.
fn record(ctx: &Context, rule: &str, p: &ProcInfo, mode: RespondMode, outcome: &str, containment: Value, now: f64) -> Value {
    let what = match (mode, outcome) {
        (_, "failure") => format!("{} (pid {}) was not contained after {rule}: {}", p.name, p.pid, containment["guarded"].as_str().unwrap_or("guarded")),
        (RespondMode::DryRun, _) => format!(
            "dry run: {} (pid {}) and {} would have been contained after {rule} ({} processes, {} sockets); nothing was dropped",
            p.name, p.pid, with_whom(&containment), containment["processes"].as_array().map_or(0, Vec::len), containment["sockets"]
        ),
        _ => format!(
            "contained {} (pid {}) after {rule}: it and {} ({} processes, {} sockets) may send nothing and open no new socket for {} s{}",
            p.name, p.pid, with_whom(&containment), containment["processes"].as_array().map_or(0, Vec::len), containment["sockets"], containment["ttl_s"], aborts(&containment)
        ),
    };
    let mut v = json!({
        "@timestamp": output::timestamp(output::unix(now)),
        "event": {
            "kind": "event",
            "category": ["network"],
            "type": ["denied"],
            "action": "sluice.contain",
            "outcome": outcome,
            "dataset": "sluice.response",
            "reason": what,
        },
        "rule": { "id": rule, "ruleset": "sluice" },
        "host": { "name": ctx.host_name },
        "process": output::proc_info_json(p),
        "sluice": { "containment": containment },
    });
    output::add_common(&mut v, ctx);
    v
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Config as Full;

    #[derive(Default)]
    struct Maps {
        sockets: HashMap<u64, u32>,
        processes: HashMap<u32, u32>,
        /// (cookie, denied already when asked) of each abort.
        aborts: Vec<(u64, bool)>,
        abort_fails: bool,
    }

    impl DenyMaps for Maps {
        fn deny_socket(&mut self, cookie: u64, id: u32) {
            self.sockets.insert(cookie, id);
        }
        fn allow_socket(&mut self, cookie: u64) {
            self.sockets.remove(&cookie);
        }
        fn deny_process(&mut self, tgid: u32, id: u32) {
            self.processes.insert(tgid, id);
        }
        fn allow_process(&mut self, tgid: u32) {
            self.processes.remove(&tgid);
        }
        fn contained(&self) -> Vec<(u32, u32)> {
            self.processes.iter().map(|(&p, &id)| (p, id)).collect()
        }
        fn cookie_of(&mut self, _pid: u32, tcp: &Tuple) -> anyhow::Result<Option<u64>> {
            // The test connection's cookie, as sock_diag would find it.
            Ok((tcp.local.port() == 40000).then_some(900))
        }
        fn abort(&mut self, _pid: u32, cookie: u64, _tcp: &Tuple) -> anyhow::Result<Aborted> {
            self.aborts.push((cookie, self.sockets.contains_key(&cookie)));
            if self.abort_fails {
                anyhow::bail!("entering the network namespace: Operation not permitted");
            }
            Ok(Aborted::Yes)
        }
    }

    /// (cookie, pid) pairs as sockets; cookies from 100 up are TCP connections.
    fn held(pairs: &[(u64, u32)]) -> Vec<Held> {
        let tcp = Tuple { local: "10.0.0.1:40000".parse().unwrap(), remote: "10.0.0.2:443".parse().unwrap() };
        pairs.iter().map(|&(cookie, pid)| Held { key: cookie, cookie_known: true, pid, tcp: (cookie >= 100).then_some(tcp) }).collect()
    }

    fn responder(toml: &str) -> Responder<Maps> {
        let cfg = Full::from_toml(toml, None).unwrap();
        cfg.validate().unwrap();
        Responder::new(cfg.respond, Maps::default(), 4242)
    }

    fn proc(pid: u32, exe: &str) -> ProcInfo {
        ProcInfo { pid, name: exe.rsplit('/').next().unwrap().into(), executable: exe.into(), ..ProcInfo::default() }
    }

    fn alert(p: ProcInfo) -> Alert {
        crate::detect::test_alert(p)
    }

    fn ctx() -> Context {
        Context { host_name: "h".into(), backend: "cgroup", agent_id: String::new() }
    }

    const ENFORCE: &str = "[respond]\nrules = { \"sluice.exfil_tool_upload\" = \"enforce\" }\nttl = \"30s\"\n";

    #[test]
    fn enforce_denies_the_job_s_sockets_then_lifts_them_at_the_ttl() {
        let mut r = responder(ENFORCE);
        let job = [proc(101, "/bin/bash"), proc(102, "/usr/sbin/sshd")];
        let rec = r.on_alert(&ctx(), &alert(proc(100, "/tmp/mega-put")), None, &job, &held(&[(7, 100), (8, 101), (9, 102), (10, 555)]), 1_000.0).unwrap();
        assert_eq!((rec["event"]["type"][0].as_str(), rec["event"]["outcome"].as_str()), (Some("denied"), Some("success")));
        assert_eq!(rec["sluice"]["containment"]["processes"], json!([100, 101]), "sshd in the job is guarded");
        assert_eq!(r.maps.sockets.keys().copied().collect::<HashSet<_>>(), HashSet::from([7, 8]));
        assert!(r.maps.processes.contains_key(&100) && !r.maps.processes.contains_key(&102));
        // A socket the process made since joins at the next tick; the lift comes at the ttl.
        assert!(r.tick(&ctx(), &held(&[(11, 100), (12, 555)]), &[], 1_010.0).is_empty());
        assert!(r.maps.sockets.contains_key(&11) && !r.maps.sockets.contains_key(&12));
        assert_eq!(r.list(1_010.0)[0]["ttl_left_s"], 20.0);
        let lifted = r.tick(&ctx(), &[], &[], 1_030.0);
        assert_eq!(lifted[0]["event"]["action"], "sluice.contain.lift");
        assert!(r.maps.sockets.is_empty() && r.maps.processes.is_empty());
        let again = r.on_alert(&ctx(), &alert(proc(100, "/tmp/mega-put")), None, &[], &held(&[(7, 100)]), 1_031.0).unwrap();
        assert!(!r.maps.sockets.is_empty(), "contained again after the lift");
        // Lifted by hand before its ttl.
        let id = again["sluice"]["containment"]["id"].as_u64().unwrap() as u32;
        let lifted = r.tick(&ctx(), &[], &[id], 1_032.0);
        assert!(lifted[0]["event"]["reason"].as_str().unwrap().contains("sluice respond lift"), "{}", lifted[0]);
        assert!(r.maps.sockets.is_empty() && r.list(1_032.0).as_array().unwrap().is_empty());
    }

    #[test]
    fn dry_run_records_and_drops_nothing_and_off_does_nothing() {
        let mut r = responder("[respond]\nrules = { \"sluice.exfil_tool_upload\" = \"dry-run\" }\n");
        let rec = r.on_alert(&ctx(), &alert(proc(100, "/tmp/mega-put")), None, &[], &held(&[(7, 100)]), 0.0).unwrap();
        assert_eq!((rec["event"]["outcome"].as_str(), rec["sluice"]["containment"]["mode"].as_str()), (Some("unknown"), Some("dry-run")));
        assert!(rec["event"]["reason"].as_str().unwrap().starts_with("dry run:"));
        assert!(r.maps.sockets.is_empty() && r.maps.processes.is_empty());
        let mut off = responder("");
        assert!(off.on_alert(&ctx(), &alert(proc(100, "/tmp/mega-put")), None, &[], &held(&[(7, 100)]), 0.0).is_none() && !off.holding());
    }

    #[test]
    fn the_guard_is_never_contained() {
        let mut r = responder(&format!("{ENFORCE}guard = [\"/opt/backup/mega-put\"]\n"));
        for p in [proc(1, "/sbin/init"), proc(4242, "/usr/bin/sluice"), proc(9, "/usr/sbin/sshd"), proc(10, "/opt/backup/mega-put")] {
            let rec = r.on_alert(&ctx(), &alert(p.clone()), None, &[], &held(&[(7, p.pid)]), 0.0).unwrap();
            assert_eq!(rec["event"]["outcome"], "failure", "{p:?}");
        }
        assert!(r.maps.sockets.is_empty() && r.maps.processes.is_empty());
    }

    #[test]
    fn tcp_connections_are_aborted_after_their_packets_are_dropped_unless_abort_is_off() {
        let mut r = responder(ENFORCE);
        let rec = r.on_alert(&ctx(), &alert(proc(100, "/tmp/mega-put")), None, &[], &held(&[(7, 100), (300, 100), (301, 100), (302, 555)]), 0.0).unwrap();
        assert_eq!(r.maps.aborts, vec![(300, true), (301, true)], "TCP only, the job's only, each after its drop");
        assert_eq!(rec["sluice"]["containment"]["aborted"], 2);
        assert!(rec["event"]["reason"].as_str().unwrap().ends_with("its 2 TCP connections were aborted"), "{rec}");
        // A connection made since is aborted when it joins.
        r.tick(&ctx(), &held(&[(303, 100)]), &[], 1.0);
        assert_eq!(r.maps.aborts.last(), Some(&(303, true)));

        let mut failing = responder(ENFORCE);
        failing.maps.abort_fails = true;
        let rec = failing.on_alert(&ctx(), &alert(proc(100, "/tmp/mega-put")), None, &[], &held(&[(300, 100)]), 0.0).unwrap();
        assert_eq!(rec["event"]["outcome"], "success", "its packets are still dropped");
        assert!(rec["event"]["reason"].as_str().unwrap().contains("could not be found or aborted (entering the network namespace"), "{rec}");

        let mut kept = responder(&format!("{ENFORCE}abort = false\n"));
        let rec = kept.on_alert(&ctx(), &alert(proc(100, "/tmp/mega-put")), None, &[], &held(&[(300, 100)]), 0.0).unwrap();
        assert!(kept.maps.aborts.is_empty() && kept.maps.sockets.contains_key(&300));
        assert_eq!(rec["sluice"]["containment"]["aborted"], 0);
    }

    #[test]
    fn a_send_path_socket_is_denied_by_the_cookie_sock_diag_finds_for_its_connection() {
        let mut r = responder(ENFORCE);
        let by_address = |key, tcp| Held { key, cookie_known: false, pid: 100, tcp };
        let tcp = held(&[(100, 100)])[0].tcp;
        let other = Some(Tuple { local: "10.0.0.1:40001".parse().unwrap(), remote: "10.0.0.2:443".parse().unwrap() });
        // A TCP key found, one closed since (not found), and a UDP key (left to the LSM).
        let rec = r.on_alert(&ctx(), &alert(proc(100, "/tmp/mega-put")), None, &[], &[by_address(0xffff_8880_0001, tcp), by_address(0xffff_8880_0002, other), by_address(0xffff_8880_0003, None)], 0.0).unwrap();
        assert_eq!(r.maps.sockets.keys().copied().collect::<Vec<_>>(), vec![900], "the cookie, not the kernel address");
        assert_eq!(r.maps.aborts, vec![(900, true)]);
        assert_eq!(rec["sluice"]["containment"]["sockets"], 3);
        r.tick(&ctx(), &[by_address(0xffff_8880_0001, tcp)], &[], 1.0);
        assert_eq!(r.maps.aborts.len(), 1, "a key is looked up once");
    }

    #[test]
    fn a_handed_over_containment_is_put_back_for_what_is_left_of_its_ttl_on_live_processes_only() {
        let mut first = responder(&format!("{ENFORCE}keep = true\n"));
        let job = [ProcInfo { start_ns: 77, ..proc(101, "/bin/sh") }];
        first.on_alert(&ctx(), &alert(ProcInfo { start_ns: 55, ..proc(100, "/tmp/mega-put") }), None, &job, &held(&[(7, 100), (8, 101)]), 1_000.0);
        // Through the state file's JSON, as a restart reads it.
        let kept: Vec<Containment> = serde_json::from_str(&serde_json::to_string(&first.kept()).unwrap()).unwrap();
        assert_eq!(kept, first.kept());

        let mut next = responder(&format!("{ENFORCE}keep = true\n"));
        // pid 101 is another process now (another start).
        let recs = next.restore(&ctx(), kept.clone(), 1_010.0, |pid, start| (pid, start) == (100, 55));
        assert_eq!(recs.len(), 1);
        let reason = recs[0]["event"]["reason"].as_str().unwrap();
        assert!(reason.contains("put back when sluice restarted: 1 of its processes still run, held for the 20 s left"), "{reason}");
        assert_eq!(next.maps.processes.keys().copied().collect::<Vec<_>>(), vec![100]);
        assert_eq!(next.maps.sockets.keys().copied().collect::<HashSet<_>>(), HashSet::from([7, 8]));
        // It ends at its old ttl; and a new containment takes a new id.
        assert_eq!(next.tick(&ctx(), &[], &[], 1_030.0).len(), 1);
        let again = next.on_alert(&ctx(), &alert(proc(300, "/tmp/rclone")), None, &[], &[], 1_031.0).unwrap();
        assert_eq!(again["sluice"]["containment"]["id"], 2);

        let mut late = responder(&format!("{ENFORCE}keep = true\n"));
        assert!(late.restore(&ctx(), kept.clone(), 1_031.0, |_, _| true).is_empty(), "past its ttl");
        let mut now_off = responder("[respond]\nrules = { \"sluice.exfil_tool_upload\" = \"dry-run\" }\n");
        assert!(now_off.restore(&ctx(), kept, 1_010.0, |_, _| true).is_empty() && now_off.maps.sockets.is_empty(), "the rule no longer enforces");
    }

    #[test]
    fn a_process_the_kernel_contained_at_fork_is_followed_and_lifted_with_its_parent() {
        let mut r = responder(ENFORCE);
        r.on_alert(&ctx(), &alert(proc(100, "/tmp/mega-put")), None, &[], &held(&[(7, 100)]), 0.0);
        // task_newtask: pid 100 forked 200 after the containment.
        r.maps.processes.insert(200, 1);
        r.tick(&ctx(), &held(&[(8, 200)]), &[], 1.0);
        assert!(r.maps.sockets.contains_key(&8), "the child's socket is denied too");
        assert_eq!(r.list(1.0)[0]["processes"], json!([100, 200]));
        // Forked again after the last tick, and lifted before the next: still let go.
        r.maps.processes.insert(201, 1);
        r.tick(&ctx(), &[], &[1], 2.0);
        assert!(r.maps.processes.is_empty() && r.maps.sockets.is_empty());
    }

    #[test]
    fn a_job_is_contained_from_its_root_and_a_guarded_root_is_left_out() {
        let mut r = responder(ENFORCE);
        let driver = proc(50, "/usr/bin/python3");
        let siblings = [proc(100, "/usr/bin/python3"), proc(101, "/usr/bin/python3")];
        let rec = r.on_alert(&ctx(), &alert(proc(100, "/usr/bin/python3")), Some(&driver), &siblings, &held(&[(7, 101)]), 0.0).unwrap();
        assert_eq!(rec["sluice"]["containment"]["processes"], json!([50, 100, 101]));
        assert!(rec["event"]["reason"].as_str().unwrap().contains("it and the rest of its job, under python3 (pid 50) (3 processes, 1 sockets)"), "{rec}");
        assert!(r.maps.sockets.contains_key(&7), "a sibling's socket");
        let mut g = responder(ENFORCE);
        let rec = g.on_alert(&ctx(), &alert(proc(100, "/tmp/mega-put")), Some(&proc(9, "/usr/sbin/sshd")), &[], &[], 0.0).unwrap();
        assert_eq!(rec["sluice"]["containment"]["processes"], json!([100]));
        assert!(rec["event"]["reason"].as_str().unwrap().contains("it and what it started"), "{rec}");
    }

    #[test]
    fn a_flood_of_alerts_keeps_the_containments_bounded() {
        let mut r = responder(ENFORCE);
        for pid in 100..(100 + ACTIVE_MAX as u32 * 2) {
            r.on_alert(&ctx(), &alert(proc(pid, "/tmp/mega-put")), None, &[], &held(&[(pid as u64, pid)]), 0.0);
        }
        assert_eq!(r.active.len(), ACTIVE_MAX);
        assert_eq!(r.maps.sockets.len(), ACTIVE_MAX, "the oldest were lifted");
    }

    #[test]
    fn unknown_rules_and_ttls_are_config_errors() {
        let e = Full::from_toml("[respond]\nrules = { \"sluice.nope\" = \"enforce\" }\n", None).unwrap_err().to_string();
        assert!(e.contains("no rule \"sluice.nope\""), "{e}");
        assert!(Full::from_toml("[respond]\nrules = { \"sluice.bulk_upload\" = \"kill\" }\n", None).is_err());
        assert!(Full::from_toml("[respond]\nttl = \"0s\"\n", None).is_err());
    }
}
