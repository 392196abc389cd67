//! The detector: pure logic over one tick of observations at a time. The live
//! agent and `sluice replay` feed it the same `TickInput`s, so every rule is
//! testable deterministically, with time taken from the input, never the clock.
//!
//! Each tick, every in-scope flow is turned into a `Subject` (its facts and the
//! window totals of every level it belongs to, computed once), and every rule
//! in `rules/` looks at it and may return a `Finding`; `raise` deduplicates
//! findings into `Alert`s.

pub mod allow;
pub mod baseline;
pub mod catalog;
pub mod memory;
pub mod reason;
pub mod rules;
pub mod subject;
pub mod window;

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use serde::{Deserialize, Serialize};

pub use self::{
    memory::{AlertMemory, Habit, Habits},
    reason::human_bytes,
    rules::*,
    subject::identity,
};
use self::{
    baseline::{Params, Score, Table},
    memory::{DedupState, Entities, Tumble, MAX_BASELINES, MAX_ENTITIES},
    subject::Subject,
};
use crate::{
    config::Detect,
    container::Container,
    services::{Catalog, Service},
};

/// A process as the detector sees it (and as `sluice record` stores it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub entity_id: String,
    pub name: String,
    pub executable: String,
    pub args: Vec<String>,
    pub uid: u32,
    /// (pid, executable) of the parent, grandparent, ... (at most 8).
    #[serde(default)]
    pub ancestors: Vec<(u32, String)>,
    /// CLOCK_BOOTTIME ns at fork (0 = unknown): orders an archiver and an upload.
    #[serde(default)]
    pub start_ns: u64,
    /// The job it belongs to (the command a user, service or container
    /// started); `None` = the process is its own job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobInfo>,
    /// Its executable file was deleted while it runs, or is an anonymous memfd.
    #[serde(default)]
    pub exe_deleted: bool,
    /// The parent's name and args (its executable is the first ancestor's),
    /// and the user's name, for the output's `process.parent` and `user.name`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
}

/// A job: its key (the process group) and the command that started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub pgid: u32,
    pub pid: u32,
    pub entity_id: String,
    pub executable: String,
    pub args: Vec<String>,
}

impl ProcInfo {
    /// The job's key: its process group (which outlives its leader: a pgid
    /// is not reused while any member lives), else the process itself.
    pub fn job_key(&self) -> String {
        match &self.job {
            Some(j) if j.pgid != 0 => format!("job:{}", j.pgid),
            Some(j) => format!("job:{}", j.entity_id),
            None => format!("job:{}", self.entity_id),
        }
    }

    /// The job's command line, for reasons ("python3 up.py").
    pub fn job_command(&self) -> String {
        let args = self.job.as_ref().map(|j| &j.args).unwrap_or(&self.args);
        let exe = self.job.as_ref().map(|j| &j.executable).unwrap_or(&self.executable);
        if args.is_empty() { exe.clone() } else { args.join(" ") }
    }

    /// The parent's executable, when the table knew it.
    pub fn parent_executable(&self) -> Option<&str> {
        self.ancestors.first().filter(|(pid, exe)| *pid == self.ppid && !exe.is_empty()).map(|(_, exe)| exe.as_str())
    }

    /// The job's pid (its leader or top process).
    pub fn job_pid(&self) -> u32 {
        self.job.as_ref().map(|j| j.pid).unwrap_or(self.pid)
    }
}

/// One (process, destination) flow record of one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowObs {
    pub process: ProcInfo,
    /// The local forward proxy that carried this upload for `process`, and how
    /// the two were joined (`proxy::join`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via_proxy: Option<String>,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    pub transport: String,
    /// egress | ingress | unknown
    pub direction: String,
    /// loopback | private | link-local | multicast | public
    pub scope: String,
    #[serde(default)]
    pub domain: Option<String>,
    /// `domain` is backed by a DNS answer to a query this host sent (else it
    /// is the sender's own claim: SNI, Host). Only such names can allowlist.
    #[serde(default)]
    pub domain_corroborated: bool,
    /// The sender's cgroup v2 path (container runtimes put the container id in it).
    #[serde(default)]
    pub cgroup: Option<String>,
    /// The sender's container and pod, when it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// Everything the detector learns in one tick; one line of a record file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TickInput {
    /// Unix seconds at the end of the tick.
    pub t: f64,
    pub window_s: f64,
    #[serde(default)]
    pub execs: Vec<ProcInfo>,
    #[serde(default)]
    pub flows: Vec<FlowObs>,
    /// Executables whose flows this tick no rule could judge (`could_judge`:
    /// accepted, loopback, receive-only): only their use of the network is
    /// learned (`habits`), so they come without a full observation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_users: Vec<String>,
    /// DNS queries this tick, per (process, registered domain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<DnsObs>,
}

/// What one process asked under one registered domain in one tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsObs {
    pub process: ProcInfo,
    pub domain: String,
    pub queries: u64,
    pub name_bytes: u64,
    /// Distinct names whose labels look like data (long or random-looking).
    pub data_names: u64,
    pub longest_label: usize,
}

/// One alert, with its evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub t: f64,
    pub rule: Rule,
    pub process: ProcInfo,
    /// None for an event about a process, not a flow (a tool started).
    pub remote_ip: Option<IpAddr>,
    pub remote_port: u16,
    pub transport: String,
    pub domain: Option<String>,
    /// The catalog's service for `domain`.
    pub service: Option<Arc<Service>>,
    pub container: Option<Container>,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub window_s: f64,
    pub baseline: Option<Score>,
    pub score: f64,
    pub reason: String,
    /// Alerts of the same (rule, entity, destination) suppressed since the last one.
    pub suppressed: u64,
    pub indicators: Vec<String>,
}

/// An `exfil_tool_upload` alert about `process` (6 MiB out), for tests
/// outside the detector that only need one to exist.
#[cfg(test)]
pub fn test_alert(process: ProcInfo) -> Alert {
    Alert {
        t: 0.0,
        rule: EXFIL_TOOL,
        process,
        remote_ip: None,
        remote_port: 0,
        transport: "tcp".into(),
        domain: None,
        service: None,
        container: None,
        bytes_out: 6 << 20,
        bytes_in: 0,
        window_s: 60.0,
        baseline: None,
        score: 1.0,
        reason: String::new(),
        suppressed: 0,
        indicators: Vec::new(),
    }
}

pub struct Detector {
    pub(crate) cfg: Detect,
    pub(crate) params: Params,
    pub(crate) short: Entities,
    pub(crate) long: Entities,
    /// Short windows of each job, and the rules' own sums (storage services,
    /// DNS names); `bulk_upload` keeps its per-level sums in `bulk`.
    pub(crate) levels: Entities,
    /// `bulk_upload`'s sums per level key: only senders without a learned baseline.
    pub(crate) bulk: Entities,
    /// Exfiltration tools started recently, by job key: (t, the tool).
    pub(crate) tool_execs: HashMap<String, (f64, ProcInfo)>,
    /// This tick's `process_facts`, by entity id (cleared when `facts_t` moves).
    facts: foldhash::HashMap<String, subject::ProcessFacts>,
    facts_t: f64,
    pub(crate) tumbles: foldhash::HashMap<String, Tumble>,
    pub baselines: Table,
    pub habits: Habits,
    /// Archiver executions by their job and their parent (`archive_then_upload::archiver_keys`).
    pub(crate) archives: HashMap<String, VecDeque<(f64, ProcInfo)>>,
    dedup: HashMap<(String, String, String), DedupState>,
    /// Recent MEGAcmd client commands (mega-put, mega-exec, ...): the bytes
    /// leave from mega-cmd-server, and these say who asked.
    pub(crate) mega_clients: VecDeque<(f64, ProcInfo)>,
    /// Last alert time per identity (slow drip stays quiet for what was caught).
    pub(crate) alerted_identity: HashMap<String, f64>,
    now: f64,
    /// Destination names -> services (the shipped catalog plus the user's).
    catalog: Arc<Catalog>,
}

/// Baseline key of everything this host uploads per window.
pub(crate) const HOST_KEY: &str = "@host";
/// Recent exec records kept per parent (archivers) and overall (MEGAcmd clients).
const RECENT_EXECS: usize = 64;
/// Pinned baseline keys at most (names are attacker-controlled: bound them too).
pub(crate) const MAX_PINNED: usize = 1_000;

/// Append to a bounded queue of recent exec records, dropping the oldest.
fn push_recent(q: &mut VecDeque<(f64, ProcInfo)>, item: (f64, ProcInfo)) {
    q.push_back(item);
    while q.len() > RECENT_EXECS {
        q.pop_front();
    }
}

impl Detector {
    pub fn new(cfg: Detect) -> Self {
        let a = &cfg.volume_anomaly;
        let params = Params {
            alpha: a.alpha,
            sigma_floor: a.sigma_floor,
            max_daily_drift: a.max_daily_drift,
            snapshot_every: cfg.long_window.as_secs_f64(),
        };
        let mut baselines = Table::default();
        baselines.pinned.insert(HOST_KEY.to_string());
        Self {
            cfg,
            params,
            short: Entities::default(),
            long: Entities::default(),
            levels: Entities::default(),
            bulk: Entities::default(),
            tool_execs: HashMap::new(),
            facts: Default::default(),
            facts_t: f64::NAN,
            tumbles: Default::default(),
            baselines,
            habits: Habits::default(),
            archives: HashMap::new(),
            mega_clients: VecDeque::new(),
            dedup: HashMap::new(),
            alerted_identity: HashMap::new(),
            now: 0.0,
            catalog: Arc::new(Catalog::builtin()),
        }
    }

    /// Use `catalog` (built-in plus the user's file) to map names to services.
    /// The destination catalog the rules use.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.clone()
    }

    pub fn with_catalog(mut self, catalog: Arc<Catalog>) -> Self {
        self.catalog = catalog;
        self
    }

    fn service_of(&self, f: &FlowObs) -> Option<Arc<Service>> {
        f.domain.as_deref().and_then(|d| self.catalog.lookup(d)).cloned()
    }

    pub fn alert_memory(&self) -> AlertMemory {
        AlertMemory {
            dedup: self.dedup.iter().map(|((r, e, d), s)| (r.clone(), e.clone(), d.clone(), s.last_t, s.suppressed)).collect(),
            alerted: self.alerted_identity.iter().map(|(k, t)| (k.clone(), *t)).collect(),
        }
    }

    pub fn restore_alert_memory(&mut self, m: AlertMemory) {
        for (r, e, d, last_t, suppressed) in m.dedup.into_iter().take(MAX_ENTITIES) {
            self.dedup.insert((r, e, d), DedupState { last_t, suppressed });
        }
        self.alerted_identity.extend(m.alerted.into_iter().take(MAX_ENTITIES));
    }

    /// Could a flow with these facts be judged at all? (The agent asks before
    /// it builds a flow's full observation: most flows on a busy host are
    /// accepted connections or loopback, and only their habit is learned.)
    pub fn could_judge(&self, bytes_out: u64, direction: &str, scope: &str) -> bool {
        // Fail closed: only a connection known to be accepted here is a server
        // answering; bytes of unknown direction (a socket older than sluice in
        // a namespace it could not list) are judged.
        bytes_out > 0 && !(self.cfg.egress_only && direction == "ingress") && (self.cfg.include_loopback || scope != "loopback")
    }

    /// Does this flow count as an upload for the rules?
    fn in_scope(&self, f: &FlowObs) -> bool {
        if !self.could_judge(f.bytes_out, &f.direction, &f.scope) {
            return false;
        }
        if self.allowlisted_process(&f.process) {
            return false;
        }
        if let Some(cg) = &f.cgroup {
            let id = f.container.as_ref().map(|c| c.id.as_str());
            if self.cfg.allow_cgroups.iter().any(|a| allow::cgroup_matches(a, cg, id)) {
                return false;
            }
        }
        let namespace = f.container.as_ref().and_then(|c| c.pod.as_ref()).and_then(|p| p.namespace.as_deref());
        if namespace.is_some_and(|ns| self.cfg.allow_namespaces.iter().any(|a| a == ns)) {
            return false;
        }
        // An address entry always applies; a domain entry only to a name a DNS
        // answer this host asked for backs (anyone can put any name in SNI).
        let ip = f.remote_ip.to_string();
        let dom = f.domain.as_deref().filter(|_| f.domain_corroborated).unwrap_or("");
        !self.cfg.allow_destinations.iter().any(|d| *d == ip || (!dom.is_empty() && crate::services::is_within(dom, d)))
    }

    /// The process, or a program that started it (its helpers work for it),
    /// is allowlisted; or its user is.
    pub(crate) fn allowlisted_process(&self, p: &ProcInfo) -> bool {
        if self.cfg.allow_users.contains(&p.uid) {
            return true;
        }
        let allow = &self.cfg.allow_executables;
        std::iter::once(p.executable.as_str())
            .chain(p.ancestors.iter().map(|(_, exe)| exe.as_str()))
            .any(|exe| allow.iter().any(|a| allow::executable_matches(a, exe)))
    }

    /// Feed one tick; returns the alerts it raises (after dedup).
    pub fn tick(&mut self, input: &TickInput) -> Vec<Alert> {
        let t = input.t;
        self.now = t;
        if self.habits.observing_since == 0.0 {
            self.habits.observing_since = t;
        }
        for f in &input.flows {
            self.habits.seen(&f.process.executable, t);
        }
        for exe in &input.network_users {
            self.habits.seen(exe, t);
        }
        let mut raised = Vec::new();
        for (p, finding) in self.note_execs(input) {
            raised.extend(self.raise(&p, None, finding));
        }
        for q in &input.dns {
            if let Some(finding) = rules::dns_tunnel::check(self, q, t) {
                raised.extend(self.raise(&q.process, None, finding));
            }
        }
        for f in &input.flows {
            if !self.in_scope(f) {
                continue;
            }
            let s = self.subject(f, input);
            let mut explained = false;
            for check in rules::CHECKS {
                if let Some(finding) = check(self, &s) {
                    explained |= finding.rule.severity_num > rules::INFO;
                    raised.extend(self.raise(&f.process, Some(f), finding));
                }
            }
            for check in rules::FALLBACKS {
                if explained {
                    break;
                }
                if let Some(finding) = check(self, &s) {
                    explained = true;
                    raised.extend(self.raise(&f.process, Some(f), finding));
                }
            }
        }
        self.close_windows(t, self.cfg.short_window.as_secs_f64());
        raised
    }

    /// Remember the execs rules look back on (archivers, MEGAcmd clients,
    /// exfiltration tools) and judge the execs themselves.
    fn note_execs(&mut self, input: &TickInput) -> Vec<(ProcInfo, Finding)> {
        let t = input.t;
        let within = self.cfg.archive_then_upload.within.as_secs_f64();
        let mut found = Vec::new();
        for e in &input.execs {
            self.habits.seen(&e.executable, t);
            if let Some(x) = rules::exfil_tool_exec::check(self, e, t) {
                found.push((e.clone(), x));
            }
            if catalog::is_archiver(&e.executable) && self.archives.len() < MAX_ENTITIES {
                for k in rules::archive_then_upload::archiver_keys(e) {
                    push_recent(self.archives.entry(k).or_default(), (t, e.clone()));
                }
            }
            if catalog::is_megacmd_client(&e.executable, &e.args) {
                push_recent(&mut self.mega_clients, (t, e.clone()));
            }
        }
        while self.mega_clients.front().is_some_and(|(at, _)| t - at > within) {
            self.mega_clients.pop_front();
        }
        self.archives.retain(|_, q| {
            while q.front().is_some_and(|(at, _)| t - at > within) {
                q.pop_front();
            }
            !q.is_empty()
        });
        self.tool_execs.retain(|_, (at, _)| t - *at <= within);
        found
    }

    /// The facts of one flow and the window totals of the levels it belongs to.
    fn subject<'a>(&mut self, f: &'a FlowObs, input: &TickInput) -> Subject<'a> {
        let t = input.t;
        let short_s = self.cfg.short_window.as_secs_f64();
        let long_s = self.cfg.long_window.as_secs_f64();
        let bucket = input.window_s.clamp(0.1, short_s);
        let p = &f.process;
        let subject::ProcessFacts { id, key_exe, job, origin, indicators } = self.process_facts(p, t);
        let dest = subject::destination(f);
        let key_dest = format!("{id}|{dest}");
        let (id_out, id_in) = self.short.bump(&id, f, t, bucket, short_s);
        let (kd_out, _) = self.short.bump(&key_dest, f, t, bucket, short_s);
        let (long_out, _) = self.long.bump(&id, f, t, 300.0, long_s);
        for key in [id.as_str(), key_dest.as_str(), key_exe.as_str(), HOST_KEY] {
            match self.tumbles.get_mut(key) {
                Some(w) => w.bytes += f.bytes_out,
                None => {
                    self.tumbles.insert(key.to_string(), Tumble { start: t - input.window_s, bytes: f.bytes_out, alerted: false });
                }
            }
        }
        let site = subject::site(f);
        let (job_out, job_in) = self.levels.bump(&job, f, t, bucket, short_s);
        let learned = self.baselines.get(&key_exe).is_some_and(|m| self.mature(m, t));
        Subject {
            f,
            t,
            short_s,
            long_s,
            bucket,
            window_s: input.window_s,
            service: self.service_of(f),
            id,
            dest,
            key_dest,
            key_exe,
            id_out,
            id_in,
            kd_out,
            long_out,
            job,
            site,
            job_out,
            job_in,
            learned,
            origin,
            indicators,
        }
    }

    /// What is true of a process whatever it sends (identity, job, origin,
    /// command-line evidence), worked out once per process per tick.
    fn process_facts(&mut self, p: &ProcInfo, t: f64) -> subject::ProcessFacts {
        if self.facts_t != t {
            self.facts_t = t;
            self.facts.clear();
        }
        if let Some(f) = self.facts.get(&p.entity_id) {
            return f.clone();
        }
        let mut origin = catalog::origin_flags(&p.executable, &p.name, p.args.first().map(String::as_str), p.exe_deleted);
        if let Some(j) = p.job.as_ref().filter(|j| j.pid != p.pid) {
            for flag in catalog::origin_flags(&j.executable, "", j.args.first().map(String::as_str), false) {
                origin.push(format!("its job's program {flag}"));
            }
        }
        let job = p.job_key();
        let mut indicators = Vec::new();
        if let Some(c) = catalog::upload_cmdline(&p.executable, &p.args) {
            indicators.push(format!("command line: {c}"));
        }
        indicators.extend(origin.iter().map(|o| format!("origin: {o}")));
        if let Some((at, tool)) = self.tool_execs.get(&job) {
            indicators.push(format!("exfil tool started in this job {:.0} s earlier: `{}` (pid {})", (t - at).max(0.0), reason::command(tool), tool.pid));
        }
        let f = subject::ProcessFacts { id: identity(p), key_exe: format!("exe:{}", p.executable), job, origin, indicators };
        self.facts.insert(p.entity_id.clone(), f.clone());
        f
    }

    /// A baseline old and full enough for the learned rules to judge by.
    pub(crate) fn mature(&self, m: &baseline::Model, t: f64) -> bool {
        let a = &self.cfg.volume_anomaly;
        m.samples >= a.min_samples && t - m.first_t >= a.min_age.as_secs_f64()
    }

    /// Add this flow to a rule's own window `key` (a sum the rule keeps apart
    /// from the levels, e.g. only bytes to storage services).
    pub(crate) fn bump_rule_window(&mut self, key: &str, s: &Subject) -> (u64, u64) {
        self.levels.bump(key, s.f, s.t, s.bucket, s.short_s)
    }

    /// Totals a rule judges: the process's own window, or, when it matched
    /// through an ancestor (`tree` key), the summed window of everything under
    /// that ancestor, so an upload split across helpers counts as one.
    pub(crate) fn subject_totals(&mut self, tree: Option<String>, s: &Subject) -> (String, u64, u64) {
        match tree {
            None => (s.id.clone(), s.id_out, s.id_in),
            Some(k) => {
                let (o, i) = self.short.bump(&k, s.f, s.t, s.bucket, s.short_s);
                (k, o, i)
            }
        }
    }

    /// Never train on these keys' current windows (an alerting window is not normal).
    pub(crate) fn spoil_windows(&mut self, keys: &[&str]) {
        for key in keys {
            if let Some(w) = self.tumbles.get_mut(*key) {
                w.alerted = true;
            }
        }
    }

    /// Close tumbling windows that ended; train on those that did not alert.
    fn close_windows(&mut self, t: f64, short_s: f64) {
        let params = self.params;
        let mut done = Vec::new();
        for (k, w) in &self.tumbles {
            if t - w.start >= short_s {
                done.push((k.clone(), *w));
            }
        }
        for (k, w) in done {
            self.tumbles.remove(&k);
            if !w.alerted {
                self.baselines.train(&k, w.bytes, t, &params, MAX_BASELINES);
                // Program-level windows (identity keys: no "|destination", not
                // the executable or host levels) teach its habits.
                if !k.contains('|') && !k.starts_with("exe:") && k != HOST_KEY {
                    if let Some(h) = k.rsplit_once('#').and_then(|(exe, _)| self.habits.by_exe.get_mut(exe)) {
                        h.max_window = h.max_window.max(w.bytes);
                    }
                }
            }
        }
    }

    /// Turn a finding about `p` (and the flow `f`, when it is about one) into
    /// an alert unless dedup suppresses it.
    fn raise(&mut self, p: &ProcInfo, f: Option<&FlowObs>, x: Finding) -> Option<Alert> {
        let t = self.now;
        let suppress = self.cfg.suppress.as_secs_f64();
        let key = (x.rule.id.to_string(), x.entity, x.dest);
        let suppressed = match self.dedup.get_mut(&key) {
            Some(d) if t - d.last_t < suppress => {
                d.suppressed += 1;
                return None;
            }
            Some(d) => {
                let n = d.suppressed;
                *d = DedupState { last_t: t, suppressed: 0 };
                n
            }
            None => {
                if self.dedup.len() >= MAX_ENTITIES {
                    self.dedup.retain(|_, d| t - d.last_t < suppress);
                    if self.dedup.len() >= MAX_ENTITIES {
                        let n = self.dedup.len() / 16 + 1;
                        crate::evict::oldest(&mut self.dedup, n, |_, d| Some(d.last_t));
                    }
                }
                self.dedup.insert(key, DedupState { last_t: t, suppressed: 0 });
                0
            }
        };
        // Informational events do not count as "caught" for slow_drip.
        if x.rule.severity_num > rules::INFO {
            self.alerted_identity.insert(identity(p), t);
        }
        if self.alerted_identity.len() > MAX_ENTITIES {
            let long_s = self.cfg.long_window.as_secs_f64();
            self.alerted_identity.retain(|_, at| t - *at < long_s);
        }
        Some(Alert {
            t,
            rule: x.rule,
            process: p.clone(),
            remote_ip: f.map(|f| f.remote_ip),
            remote_port: f.map(|f| f.remote_port).unwrap_or(0),
            transport: f.map(|f| f.transport.clone()).unwrap_or_default(),
            domain: f.and_then(|f| f.domain.clone()),
            service: f.and_then(|f| self.service_of(f)),
            container: f.and_then(|f| f.container.clone()),
            bytes_out: x.bytes_out,
            bytes_in: x.bytes_in,
            window_s: x.window_s,
            baseline: x.baseline,
            score: x.score,
            reason: x.reason,
            suppressed,
            indicators: x.indicators,
        })
    }

    /// Window entries dropped to stay within bounds (a flood of names).
    pub fn evictions(&self) -> u64 {
        self.short.evicted + self.long.evicted + self.levels.evicted + self.bulk.evicted
    }
}

#[cfg(test)]
pub(crate) mod tests;
