//! The detector: pure logic over one tick of observations at a time. The live
//! agent and `sluice replay` feed it the same `TickInput`s, so every rule is
//! testable deterministically, with time taken from the input, never the clock.

pub mod baseline;
pub mod catalog;
pub mod window;

use std::{
    collections::{HashMap, VecDeque},
    hash::{Hash, Hasher},
    net::IpAddr,
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use self::{
    baseline::{Params, Score, Table},
    window::SlidingSum,
};
use crate::{
    config::Detect,
    container::Container,
    services::{is_upload_category, Catalog, Service},
};

/// A process as the detector sees it (and as `sluice record` stores it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// One (process, destination) flow record of one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowObs {
    pub process: ProcInfo,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    pub transport: String,
    /// egress | ingress | unknown
    pub direction: String,
    /// loopback | private | link-local | multicast | public
    pub scope: String,
    #[serde(default)]
    pub domain: Option<String>,
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
}

/// A rule's identity and mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    pub name: &'static str,
    pub severity: &'static str,
    /// ECS event.severity (numeric): Elastic's risk-score scale.
    pub severity_num: u8,
    pub techniques: &'static [(&'static str, &'static str)],
}

pub const EXFIL_TOOL: Rule = Rule {
    id: "sluice.exfil_tool_upload",
    name: "Mega client or bulk-sync tool uploading",
    severity: "high",
    severity_num: 73,
    techniques: &[("T1567.002", "Exfiltration Over Web Service: Exfiltration to Cloud Storage")],
};
pub const WATCHED_APP: Rule = Rule {
    id: "sluice.watched_app_upload",
    name: "Application that should not upload is uploading",
    severity: "medium",
    severity_num: 47,
    techniques: &[("T1567", "Exfiltration Over Web Service"), ("T1048", "Exfiltration Over Alternative Protocol")],
};
pub const ARCHIVE_THEN_UPLOAD: Rule = Rule {
    id: "sluice.archive_then_upload",
    name: "Archive created, then uploaded from the same process tree",
    severity: "high",
    severity_num: 73,
    techniques: &[("T1560.001", "Archive Collected Data: Archive via Utility"), ("T1567", "Exfiltration Over Web Service")],
};
pub const VOLUME_ANOMALY: Rule = Rule {
    id: "sluice.volume_anomaly",
    name: "Upload volume far above this program's baseline",
    severity: "medium",
    severity_num: 47,
    techniques: &[("T1567", "Exfiltration Over Web Service"), ("T1048", "Exfiltration Over Alternative Protocol")],
};
pub const SLOW_DRIP: Rule = Rule {
    id: "sluice.slow_drip",
    name: "Sustained upload over hours under the per-window bar",
    severity: "medium",
    severity_num: 47,
    techniques: &[("T1030", "Data Transfer Size Limits")],
};

pub const QUIET_PROGRAM: Rule = Rule {
    id: "sluice.quiet_program_upload",
    name: "Program that never used the network is uploading",
    severity: "medium",
    severity_num: 47,
    techniques: &[("T1567", "Exfiltration Over Web Service"), ("T1048", "Exfiltration Over Alternative Protocol")],
};

pub const RATIO_INVERSION: Rule = Rule {
    id: "sluice.ratio_inversion",
    name: "Download-heavy program sending far more than it receives",
    severity: "medium",
    severity_num: 47,
    techniques: &[("T1048", "Exfiltration Over Alternative Protocol"), ("T1567", "Exfiltration Over Web Service")],
};

pub const FIRST_STORAGE: Rule = Rule {
    id: "sluice.first_storage_destination",
    name: "Program sends to a cloud-storage service for the first time",
    severity: "low",
    severity_num: 21,
    techniques: &[("T1567.002", "Exfiltration Over Web Service: Exfiltration to Cloud Storage")],
};

pub const RULES: [Rule; 8] = [
    EXFIL_TOOL,
    WATCHED_APP,
    ARCHIVE_THEN_UPLOAD,
    VOLUME_ANOMALY,
    SLOW_DRIP,
    QUIET_PROGRAM,
    RATIO_INVERSION,
    FIRST_STORAGE,
];

/// What alerting remembers across restarts: dedup periods and which programs a
/// rule already caught, so a restart does not re-raise a burst of old alerts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertMemory {
    /// (rule, entity, destination, last alert time, suppressed since)
    pub dedup: Vec<(String, String, String, f64, u64)>,
    /// (identity, last alert time)
    pub alerted: Vec<(String, f64)>,
}

/// What sluice has learned of an executable's network habits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Habit {
    pub first_seen: f64,
    pub last_seen: f64,
    /// Most it ever sent in one short window that did not alert.
    pub max_window: u64,
}

/// Executables by path -> habits; bounded, stalest evicted first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Habits {
    pub by_exe: HashMap<String, Habit>,
    /// When this host's observation began (unix seconds; 0 = not yet).
    #[serde(default)]
    pub observing_since: f64,
    /// Storage services each executable has sent to ("exe\u{0}service").
    #[serde(default)]
    pub storage_pairs: std::collections::HashSet<String>,
}

impl Habits {
    fn seen(&mut self, exe: &str, t: f64) {
        if exe.is_empty() {
            return;
        }
        if let Some(h) = self.by_exe.get_mut(exe) {
            h.last_seen = t;
            return;
        }
        if self.by_exe.len() >= MAX_BASELINES {
            // Drop the stalest 1/16 in one pass (amortized O(log n) per insert).
            let mut by_age: Vec<(f64, String)> = self.by_exe.iter().map(|(k, h)| (h.last_seen, k.clone())).collect();
            let n = by_age.len() / 16 + 1;
            by_age.select_nth_unstable_by(n - 1, |a, b| a.0.total_cmp(&b.0));
            for (_, k) in by_age.into_iter().take(n) {
                self.by_exe.remove(&k);
            }
        }
        self.by_exe.insert(exe.to_string(), Habit { first_seen: t, last_seen: t, max_window: 0 });
    }
}

/// One alert, with its evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub t: f64,
    pub rule: Rule,
    pub process: ProcInfo,
    pub remote_ip: IpAddr,
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

/// 1536 -> "1.5 KiB"
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Process identity: executable plus a hash of the argv "shape" (numbers
/// folded, first four arguments), so `python3 backup.py` and `python3 app.py`
/// are different entities while `curl -T a` and `curl -T b` stay apart only by
/// their file arguments' shape.
pub fn identity(p: &ProcInfo) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for a in p.args.iter().skip(1).take(4) {
        let folded: String = a.chars().take(64).map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
        folded.hash(&mut h);
    }
    format!("{}#{:08x}", p.executable, h.finish() as u32)
}

fn destination(f: &FlowObs) -> String {
    f.domain.clone().unwrap_or_else(|| f.remote_ip.to_string())
}

/// The windowed state of one entity.
#[derive(Debug, Clone)]
struct Entity {
    out: SlidingSum,
    inb: SlidingSum,
    last: FlowObs,
}

/// Windowed entities, bounded: when full, entities whose windows emptied are
/// swept (at most once per tick, so a flood costs O(n) per tick, not per flow),
/// then one arbitrary entity makes room. Memory stays bounded; at worst a
/// flooded entity's window restarts from zero.
#[derive(Debug, Default)]
struct Entities {
    map: HashMap<String, Entity>,
    last_sweep: f64,
}

impl Entities {
    fn get(&self, key: &str) -> Option<&Entity> {
        self.map.get(key)
    }

    fn bump(&mut self, key: &str, f: &FlowObs, t: f64, bucket: f64, span: f64) -> (u64, u64) {
        if self.map.len() >= MAX_ENTITIES && !self.map.contains_key(key) {
            if self.last_sweep != t {
                self.last_sweep = t;
                self.map.retain(|_, e| {
                    e.out.expire(t);
                    !e.out.is_empty()
                });
            }
            if self.map.len() >= MAX_ENTITIES {
                if let Some(k) = self.map.keys().next().cloned() {
                    self.map.remove(&k);
                }
            }
        }
        let e = self.map.entry(key.to_string()).or_insert_with(|| Entity {
            out: SlidingSum::new(bucket, span),
            inb: SlidingSum::new(bucket, span),
            last: f.clone(),
        });
        e.out.add(t, f.bytes_out);
        e.inb.add(t, f.bytes_in);
        e.last = f.clone();
        (e.out.total(), e.inb.total())
    }
}

/// A tumbling window that feeds a baseline when it closes.
#[derive(Debug, Clone, Copy)]
struct Tumble {
    start: f64,
    bytes: u64,
    alerted: bool,
}

#[derive(Debug, Clone, Copy)]
struct DedupState {
    last_t: f64,
    suppressed: u64,
}

pub struct Detector {
    cfg: Detect,
    params: Params,
    short: Entities,
    long: Entities,
    tumbles: HashMap<String, Tumble>,
    pub baselines: Table,
    pub habits: Habits,
    /// Archiver executions by the pid of their parent: (t, archiver process).
    archives: HashMap<u32, VecDeque<(f64, ProcInfo)>>,
    dedup: HashMap<(String, String, String), DedupState>,
    /// Recent MEGAcmd client commands (mega-put, mega-exec, ...): the bytes
    /// leave from mega-cmd-server, and these say who asked.
    mega_clients: VecDeque<(f64, ProcInfo)>,
    /// Last alert time per identity (slow drip stays quiet for what was caught).
    alerted_identity: HashMap<String, f64>,
    now: f64,
    /// Destination names -> services (the shipped catalog plus the user's).
    catalog: Arc<Catalog>,
}

/// Entities tracked at most (per map); beyond it the stalest are dropped.
const MAX_ENTITIES: usize = 100_000;
const MAX_BASELINES: usize = 50_000;
/// Slow drip on a program with a mature baseline: the long-window total must
/// exceed this multiple of what its baseline predicts for the span.
const DRIP_OVER_BASELINE: f64 = 3.0;
/// Baseline key of everything this host uploads per window.
const HOST_KEY: &str = "@host";
/// How many ancestors up a rule looks for the tool, watched app or archiver
/// that a process works for.
const TREE_DEPTH: usize = 3;
/// Recent exec records kept per parent (archivers) and overall (MEGAcmd clients).
const RECENT_EXECS: usize = 64;

/// Append to a bounded queue of recent exec records, dropping the oldest.
fn push_recent(q: &mut VecDeque<(f64, ProcInfo)>, item: (f64, ProcInfo)) {
    q.push_back(item);
    while q.len() > RECENT_EXECS {
        q.pop_front();
    }
}

/// Pinned baseline keys at most (names are attacker-controlled: bound them too).
const MAX_PINNED: usize = 1_000;

impl Detector {
    pub fn new(cfg: Detect) -> Self {
        let a = &cfg.volume_anomaly;
        let params = Params { alpha: a.alpha, sigma_floor: a.sigma_floor, max_daily_drift: a.max_daily_drift };
        let mut baselines = Table::default();
        baselines.pinned.insert(HOST_KEY.to_string());
        Self {
            cfg,
            params,
            short: Entities::default(),
            long: Entities::default(),
            tumbles: HashMap::new(),
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

    /// Does this flow count as an upload for the rules?
    fn in_scope(&self, f: &FlowObs) -> bool {
        if f.bytes_out == 0 {
            return false;
        }
        if self.cfg.egress_only && f.direction != "egress" {
            return false;
        }
        if !self.cfg.include_loopback && f.scope == "loopback" {
            return false;
        }
        let exe_base = catalog::base(&f.process.executable);
        if self.cfg.allow_executables.iter().any(|a| *a == f.process.executable || *a == exe_base) {
            return false;
        }
        if self.cfg.allow_users.contains(&f.process.uid) {
            return false;
        }
        if let Some(cg) = &f.cgroup {
            if self.cfg.allow_cgroups.iter().any(|a| !a.is_empty() && cg.contains(a.as_str())) {
                return false;
            }
        }
        let namespace = f.container.as_ref().and_then(|c| c.pod.as_ref()).and_then(|p| p.namespace.as_deref());
        if namespace.is_some_and(|ns| self.cfg.allow_namespaces.iter().any(|a| a == ns)) {
            return false;
        }
        let ip = f.remote_ip.to_string();
        let dom = f.domain.as_deref().unwrap_or("");
        !self.cfg.allow_destinations.iter().any(|d| {
            *d == ip || (!dom.is_empty() && (dom == d || dom.ends_with(&format!(".{d}"))))
        })
    }

    /// Feed one tick; returns the alerts it raises (after dedup).
    pub fn tick(&mut self, input: &TickInput) -> Vec<Alert> {
        let t = input.t;
        self.now = t;
        let short_s = self.cfg.short_window.as_secs_f64();
        let long_s = self.cfg.long_window.as_secs_f64();
        let within = self.cfg.archive_then_upload.within.as_secs_f64();
        let tick_bucket = input.window_s.clamp(0.1, short_s);

        if self.habits.observing_since == 0.0 {
            self.habits.observing_since = t;
        }
        for f in &input.flows {
            self.habits.seen(&f.process.executable, t);
        }
        for e in &input.execs {
            self.habits.seen(&e.executable, t);
            if e.ppid > 1 && catalog::is_archiver(&e.executable) {
                push_recent(self.archives.entry(e.ppid).or_default(), (t, e.clone()));
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

        let mut raised = Vec::new();
        let flows: Vec<&FlowObs> = input.flows.iter().filter(|f| self.in_scope(f)).collect();
        for f in flows {
            let id = identity(&f.process);
            let dest = destination(f);
            let key_dest = format!("{id}|{dest}");
            let (id_out, id_in) = self.short.bump(&id, f, t, tick_bucket, short_s);
            let (kd_out, _) = self.short.bump(&key_dest, f, t, tick_bucket, short_s);
            let (long_out, _) = self.long.bump(&id, f, t, 300.0, long_s);
            let key_exe = format!("exe:{}", f.process.executable);
            for key in [&id, &key_dest, &key_exe, &HOST_KEY.to_string()] {
                let w = self.tumbles.entry(key.clone()).or_insert(Tumble { start: t - input.window_s, bytes: 0, alerted: false });
                w.bytes += f.bytes_out;
            }
            let mut indicators = Vec::new();
            if let Some(c) = catalog::upload_cmdline(&f.process.executable, &f.process.args) {
                indicators.push(format!("command line: {c}"));
            }

            // Mega clients and bulk-sync tools: the process itself, or a child
            // of one (up to three levels), whose bytes count as the tool's.
            let r = self.cfg.exfil_tool_upload.clone();
            let service = self.service_of(f);
            let tool = match catalog::exfil_tool(&f.process.executable, &f.process.args) {
                Some(product) => Some((product, None)),
                None => f
                    .process
                    .ancestors
                    .iter()
                    .take(TREE_DEPTH)
                    .find_map(|(pid, exe)| catalog::exfil_tool(exe, &[]).map(|p| (p, Some((*pid, exe.clone()))))),
            }
            // Whatever the program calls itself, sending to Mega is using Mega.
            .map(|(p, via)| (p.to_string(), via, None))
            .or_else(|| {
                service.as_ref().filter(|s| s.exfil_tool).map(|s| (format!("{}'s storage service (by destination)", s.name), None, Some(s.name.clone())))
            });
            if r.enabled {
                if let Some((product, via, by_dest)) = tool {
                    let tree = match (&via, &by_dest) {
                        (Some((pid, _)), _) => Some(format!("tool-tree:{pid}")),
                        // Caught by destination: everything one parent's children
                        // send to that service counts together, so an upload split
                        // across short-lived helpers with different command lines
                        // (each its own identity, each under the floor) still adds up.
                        (None, Some(svc)) if f.process.ppid > 1 => Some(format!("service-tree:{}|{svc}", f.process.ppid)),
                        _ => None,
                    };
                    let by_tree = self.subject_totals(tree, &id, (id_out, id_in), f, t, tick_bucket, short_s);
                    // A process that crossed the floor by itself is its own alert
                    // (siblings each uploading a lot are not one event); the
                    // parent's sum is for the ones that split below it.
                    let (entity, total, total_in) =
                        if via.is_none() && id_out >= r.floor { (id.clone(), id_out, id_in) } else { by_tree };
                    if total >= r.floor {
                        // Never let a table flood evict what we know of these tools.
                        if self.baselines.pinned.len() < MAX_PINNED {
                            self.baselines.pinned.insert(id.clone());
                            self.baselines.pinned.insert(key_dest.clone());
                        }
                        let tool_name = match &via {
                            None => catalog::base(&f.process.executable),
                            Some((pid, exe)) => format!("its ancestor {} (pid {pid})", catalog::base(exe)),
                        };
                        let mut reason = format!(
                            "{} sent {} to {} in the last {} s; {} is {}, a tool used to exfiltrate to cloud storage",
                            who(&f.process),
                            human_bytes(total),
                            where_to(f),
                            short_s,
                            tool_name,
                            product
                        );
                        let mut ind = indicators.clone();
                        ind.push(format!("tool: {product}"));
                        // The MEGAcmd server uploads on behalf of a client command
                        // of the same user: name the latest one.
                        let b = catalog::base(&f.process.executable);
                        if b.starts_with("mega-cmd-server") || b == "megacmdserver" {
                            if let Some((_, c)) = self.mega_clients.iter().rev().find(|(_, c)| c.uid == f.process.uid) {
                                reason.push_str(&format!("; requested by `{}` (pid {})", c.args.join(" "), c.pid));
                                ind.push(format!("requested by: {} (pid {})", c.args.join(" "), c.pid));
                            }
                        }
                        raised.push(self.alert(EXFIL_TOOL, f, &entity, "", total, total_in, short_s, None, 1.0, reason, ind));
                    }
                }
            }

            // First time this executable sends to a storage service: worth a
            // look, not an incident (learned silently while the host warms up).
            if let Some(svc) = service.as_ref().filter(|s| is_upload_category(&s.category)).map(|s| s.name.as_str()) {
                let pair = format!("{}\u{0}{svc}", f.process.executable);
                if !self.habits.storage_pairs.contains(&pair) && self.habits.storage_pairs.len() < MAX_BASELINES {
                    self.habits.storage_pairs.insert(pair);
                    if self.cfg.first_storage_destination && t - self.habits.observing_since >= long_s {
                        let reason = format!(
                            "{} sent data to {svc} ({}) for the first time since sluice began watching",
                            who(&f.process),
                            where_to(f)
                        );
                        raised.push(self.alert(FIRST_STORAGE, f, &id, svc, f.bytes_out, f.bytes_in, input.window_s, None, 0.0, reason, indicators.clone()));
                    }
                }
            }

            // Applications that should not upload, and what they start (an
            // interpreter or shell launched by an office suite uploads for it).
            let r = self.cfg.watched_app_upload.clone();
            let watched = if catalog::is_watched(&f.process.executable) {
                Some(None)
            } else {
                f.process.ancestors.iter().take(TREE_DEPTH).find(|(_, exe)| catalog::is_watched(exe)).map(|(pid, exe)| Some((*pid, exe.clone())))
            };
            if r.enabled {
                if let Some(via) = watched {
                    let tree = via.as_ref().map(|(pid, _)| format!("watched-tree:{pid}"));
                    let (entity, total, total_in) = self.subject_totals(tree, &id, (id_out, id_in), f, t, tick_bucket, short_s);
                    if total >= r.floor {
                        let reason = match &via {
                            None => format!(
                                "{} sent {} to {} in the last {} s; {} is not expected to upload",
                                who(&f.process),
                                human_bytes(total),
                                where_to(f),
                                short_s,
                                catalog::base(&f.process.executable)
                            ),
                            Some((pid, exe)) => format!(
                                "{}, started by {} (pid {pid}), sent {} to {} in the last {} s; {} is not expected to upload",
                                who(&f.process),
                                catalog::base(exe),
                                human_bytes(total),
                                where_to(f),
                                short_s,
                                catalog::base(exe)
                            ),
                        };
                        raised.push(self.alert(WATCHED_APP, f, &entity, "", total, total_in, short_s, None, 1.0, reason, indicators.clone()));
                    }
                }
            }

            // Archive, then upload from the same process tree (siblings in a
            // pipeline, or children of the script that archived).
            let r = &self.cfg.archive_then_upload;
            if r.enabled {
                let tree_pids: Vec<u32> = std::iter::once(f.process.ppid)
                    .chain(f.process.ancestors.iter().map(|a| a.0))
                    .filter(|&p| p > 1)
                    .take(TREE_DEPTH)
                    .collect();
                if let Some((tree, (at, archiver))) = tree_pids
                    .iter()
                    .find_map(|p| self.archives.get(p).and_then(|q| q.back()).map(|a| (*p, a.clone())))
                {
                    let tree_key = format!("archive-tree:{tree}");
                    let (tree_out, tree_in) = self.short.bump(&tree_key, f, t, tick_bucket, within);
                    if tree_out >= r.floor {
                        let reason = format!(
                            "{} sent {} to {} within {:.0} s of `{}` (pid {}) archiving in the same process tree (parent pid {})",
                            who(&f.process),
                            human_bytes(tree_out),
                            where_to(f),
                            (t - at).max(0.0),
                            archiver.args.join(" "),
                            archiver.pid,
                            tree
                        );
                        let mut ind = indicators.clone();
                        ind.push(format!("archiver: {} (pid {})", archiver.args.join(" "), archiver.pid));
                        raised.push(self.alert(ARCHIVE_THEN_UPLOAD, f, &tree_key, "", tree_out, tree_in, within, None, 1.0, reason, ind));
                    }
                }
            }

            // Volume far above the learned baseline (levels below).
            let r = &self.cfg.volume_anomaly;
            if r.enabled && kd_out >= r.floor {
                let mature = |m: &baseline::Model| m.samples >= r.min_samples && t - m.first_t >= r.min_age.as_secs_f64();
                // Destination, else program, else the whole host while keys are young:
                // a brand-new program that out-uploads everything this host usually
                // sends in a window is anomalous too.
                let model = self
                    .baselines
                    .get(&key_dest)
                    .filter(|m| mature(m))
                    .map(|m| (m, "destination"))
                    .or_else(|| self.baselines.get(&id).filter(|m| mature(m)).map(|m| (m, "program")))
                    .or_else(|| self.baselines.get(&key_exe).filter(|m| mature(m)).map(|m| (m, "executable")))
                    .or_else(|| self.baselines.get(HOST_KEY).filter(|m| mature(m)).map(|m| (m, "host")));
                if let Some((m, level)) = model {
                    let s = m.score(kd_out, t, &self.params);
                    // A command line that public rules flag as an upload (curl -T,
                    // wget --post-file, rclone copy ...) counts as evidence: it
                    // raises the score and so lowers the bar.
                    let bonus = if indicators.is_empty() { 0.0 } else { r.cmdline_bonus };
                    if s.z + bonus >= r.sigma {
                        let reason = format!(
                            "{} sent {} to {} in the last {} s; its {} baseline is {} +/- {} per {} s ({} samples), z = {:.1}",
                            who(&f.process),
                            human_bytes(kd_out),
                            where_to(f),
                            short_s,
                            level,
                            human_bytes(s.mean_bytes as u64),
                            human_bytes(s.stddev_bytes.max(0.0) as u64),
                            short_s,
                            s.samples,
                            s.z
                        );
                        let a = self.alert(VOLUME_ANOMALY, f, &id, &dest, kd_out, id_in, short_s, Some(s), s.z + bonus, reason, indicators.clone());
                        raised.push(a);
                        // Never train on a window that alerted (no poisoning).
                        for key in [id.as_str(), key_dest.as_str(), key_exe.as_str(), HOST_KEY] {
                            if let Some(w) = self.tumbles.get_mut(key) {
                                w.alerted = true;
                            }
                        }
                    }
                }
            }

            // A program whose sessions should download, sending instead.
            let r = &self.cfg.ratio_inversion;
            if r.enabled && kd_out >= r.floor && catalog::is_download_heavy(&f.process.executable, &f.process.args) {
                let kd_in = self.short.get(&key_dest).map(|e| e.inb.total()).unwrap_or(0);
                let ratio = kd_out as f64 / (kd_in.max(1)) as f64;
                if ratio >= r.ratio {
                    let reason = format!(
                        "{} sent {} to {} and received {} in the last {} s (out/in {:.0}x); {} normally downloads",
                        who(&f.process),
                        human_bytes(kd_out),
                        where_to(f),
                        human_bytes(kd_in),
                        short_s,
                        ratio,
                        catalog::base(&f.process.executable)
                    );
                    raised.push(self.alert(RATIO_INVERSION, f, &id, &dest, kd_out, kd_in, short_s, None, ratio, reason, indicators.clone()));
                }
            }

            // A program seen through its training period without ever sending
            // more than a trickle, now uploading.
            let r = &self.cfg.quiet_program_upload;
            if r.enabled && id_out >= r.floor {
                if let Some(h) = self.habits.by_exe.get(&f.process.executable).copied() {
                    let watched_for = t - h.first_seen;
                    if watched_for >= r.training.as_secs_f64() && h.max_window <= r.trickle {
                        let reason = format!(
                            "{} sent {} to {} in the last {} s; in {:.1} days of watching, {} never sent more than {} in a window",
                            who(&f.process),
                            human_bytes(id_out),
                            where_to(f),
                            short_s,
                            watched_for / 86_400.0,
                            catalog::base(&f.process.executable),
                            human_bytes(h.max_window)
                        );
                        raised.push(self.alert(QUIET_PROGRAM, f, &id, "", id_out, id_in, short_s, None, 1.0, reason, indicators.clone()));
                        if let Some(w) = self.tumbles.get_mut(id.as_str()) {
                            w.alerted = true;
                        }
                    }
                }
            }

            // Slow drip: a lot over hours, with nothing else having caught it,
            // and more than the program's own baseline explains (a backup agent
            // or log shipper that always sends this much is not a drip). A
            // baseline learned entirely inside the window may have been learned
            // from the drip itself, so only history older than the window counts;
            // without one, the floor decides, once sluice has watched this host
            // for a whole window (else every steady uploader alerts at install).
            let r = &self.cfg.slow_drip;
            let caught = self.alerted_identity.get(&id).is_some_and(|&at| t - at < long_s);
            let warmed_up = t - self.habits.observing_since >= long_s;
            if r.enabled && long_out >= r.floor && !caught {
                let a = &self.cfg.volume_anomaly;
                let expected = self
                    .baselines
                    .get(&id)
                    .filter(|m| m.samples >= a.min_samples && m.first_t <= t - long_s)
                    .map(|m| m.mean.exp_m1() * (long_s / short_s));
                let fire = match expected {
                    Some(e) => long_out as f64 > DRIP_OVER_BASELINE * e,
                    None => warmed_up,
                };
                if fire {
                    let explained = match expected {
                        Some(e) => format!("; its baseline predicts {} over that span", human_bytes(e as u64)),
                        None => String::new(),
                    };
                    let reason = format!(
                        "{} sent {} to {} over the last {:.1} h without crossing any per-window bar (largest 5 min: {}){explained}",
                        who(&f.process),
                        human_bytes(long_out),
                        where_to(f),
                        long_s / 3600.0,
                        human_bytes(self.long.get(&id).map(|e| e.out.peak_bucket).unwrap_or(0))
                    );
                    raised.push(self.alert(SLOW_DRIP, f, &id, "", long_out, 0, long_s, None, 1.0, reason, indicators.clone()));
                }
            }
        }

        self.close_windows(t, short_s);
        raised.into_iter().flatten().collect()
    }

    /// Totals a rule judges: the process's own window, or, when it matched
    /// through an ancestor (`tree` key), the summed window of everything under
    /// that ancestor, so an upload split across helpers counts as one.
    #[allow(clippy::too_many_arguments)]
    fn subject_totals(
        &mut self,
        tree: Option<String>,
        id: &str,
        own: (u64, u64),
        f: &FlowObs,
        t: f64,
        bucket: f64,
        span: f64,
    ) -> (String, u64, u64) {
        match tree {
            None => (id.to_string(), own.0, own.1),
            Some(k) => {
                let (o, i) = self.short.bump(&k, f, t, bucket, span);
                (k, o, i)
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

    /// Build an alert unless dedup suppresses it.
    #[allow(clippy::too_many_arguments)]
    fn alert(
        &mut self,
        rule: Rule,
        f: &FlowObs,
        entity: &str,
        dest: &str,
        bytes_out: u64,
        bytes_in: u64,
        window_s: f64,
        baseline: Option<Score>,
        score: f64,
        reason: String,
        indicators: Vec<String>,
    ) -> Option<Alert> {
        let t = self.now;
        let suppress = self.cfg.suppress.as_secs_f64();
        let key = (rule.id.to_string(), entity.to_string(), dest.to_string());
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
                        if let Some(k) = self.dedup.keys().next().cloned() {
                            self.dedup.remove(&k);
                        }
                    }
                }
                self.dedup.insert(key, DedupState { last_t: t, suppressed: 0 });
                0
            }
        };
        self.alerted_identity.insert(identity(&f.process), t);
        if self.alerted_identity.len() > MAX_ENTITIES {
            let long_s = self.cfg.long_window.as_secs_f64();
            self.alerted_identity.retain(|_, at| t - *at < long_s);
        }
        Some(Alert {
            t,
            rule,
            process: f.process.clone(),
            remote_ip: f.remote_ip,
            remote_port: f.remote_port,
            transport: f.transport.clone(),
            domain: f.domain.clone(),
            service: self.service_of(f),
            container: f.container.clone(),
            bytes_out,
            bytes_in,
            window_s,
            baseline,
            score,
            reason,
            suppressed,
            indicators,
        })
    }
}

fn who(p: &ProcInfo) -> String {
    format!("{} (pid {}, {})", p.name, p.pid, p.executable)
}

fn where_to(f: &FlowObs) -> String {
    match &f.domain {
        Some(d) => format!("{d} ({}:{})", f.remote_ip, f.remote_port),
        None => format!("{}:{}", f.remote_ip, f.remote_port),
    }
}

#[cfg(test)]
mod tests;
