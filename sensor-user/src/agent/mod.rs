//! `sluice run`: drain the kernel every tick, attribute, aggregate, print.

use std::{
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, Context, Result};
// Per-tick maps and sets keyed by flow keys and cookies: see flows.rs.
use foldhash::{HashMap, HashMapExt, HashSet};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use sensor_common::{
    counter, maps, FlowCounters, FlowKey, DIR_EGRESS, DIR_UNKNOWN,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    config::Config,
    container::{self, Container},
    detect::{Detector, DnsObs, FlowObs, JobInfo, ProcInfo, TickInput},
    events::{self, KernelEvent},
    flows::{self, Attribution, DeltaTracker, Owner},
    kernel::{batch, loader::Sensor},
    metrics::{self, Metrics},
    output::{self, Sink},
    process_table::{boottime_ns, ProcessTable, Procfs},
    naming::Namer,
    record,
    services::Catalog,
    spool::Spool,
    state,
};

mod cgroups;
mod owners;
mod report;
use owners::{KernelOwners, LiveScan, Owners};

/// Exec records kept per tick for the detector; beyond this an exec storm's
/// remainder is counted, not kept.
const MAX_EXECS_PER_TICK: usize = 20_000;
/// Deltas held for a scan in flight, at most (about 100 bytes each).
const MAX_DEFERRED: usize = 65_536;
/// How often the ring buffer is drained when the kernel does not wake us.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// Flows idle this long are retired from the kernel map.
const IDLE_RETIRE: Duration = Duration::from_secs(300);
const IPPROTO_TCP: u8 = 6;
/// Every this many ticks, closed sockets that never carried traffic are swept
/// from the kernel's owner map (a full map walk, so not every tick).
const SWEEP_EVERY_TICKS: u64 = 12;
/// How often a sender's executable is checked for deletion.
const EXE_RECHECK: Duration = Duration::from_secs(10);

pub struct Agent {
    config: Config,
    sensor: Sensor,
    flows_map: BpfHashMap<MapData, FlowKey, FlowCounters>,
    /// Socket owners for the cgroup backend's flows (see `owners`).
    owners: Owners<KernelOwners, LiveScan>,
    dirs_map: BpfHashMap<MapData, u64, u8>,
    counters: PerCpuArray<MapData, u64>,
    procs: ProcessTable,
    procfs: Procfs,
    /// uid -> name, for `user.name`.
    users: crate::users::Users,
    tracker: DeltaTracker,
    sink: Sink<Spool>,
    /// Output records dropped as last reported.
    output_dropped: u64,
    ctx: output::Context,
    detector: Detector,
    namer: Namer,
    recorder: Option<record::Writer<std::io::BufWriter<std::fs::File>>>,
    /// `sluice top`'s view, and the socket it is served on (if any).
    top: crate::top::table::Table,
    control: Option<crate::control::Control>,
    /// Containment, when a rule asks for it (`respond`).
    respond: Option<crate::respond::Responder<crate::respond::KernelDeny>>,
    pending_execs: Vec<ProcInfo>,
    /// (pid, start) -> (executable deleted or memfd, when last checked).
    exe_gone: HashMap<(u32, u64), (bool, Instant)>,
    last_save: Instant,
    /// Deltas of sockets the background scan is still placing, held for
    /// the tick it finishes in (bounded by MAX_DEFERRED).
    deferred: Vec<flows::Delta>,
    /// The last tick, at shutdown: nothing is held back.
    stopping: bool,
    /// A state save still being written (see `save_state`).
    saving: Option<std::thread::JoinHandle<()>>,
    /// cgroup id -> cgroup v2 path (a miss starts a walk in the background).
    cgroup_paths: cgroups::CgroupPaths,
    containers: container::Resolver,
    last_tick: Instant,
    last_counters: Vec<u64>,
    last_naming: crate::naming::Stats,
    pub stats: Stats,
    pub metrics: Metrics,
    /// `stats` as last published to `metrics` (they take increments).
    published: Stats,
}

/// SIGINT and SIGTERM, taken over before anything answers `/healthz`: a
/// supervisor that sees the agent healthy and stops it at once must get a
/// clean shutdown (the last tick flushed, state saved), not the default
/// action of a signal nobody handles yet.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Needs a tokio runtime (call it inside `block_on`).
    pub fn install() -> Result<Self> {
        Ok(Self { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
    }
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub events: u64,
    pub decode_errors: u64,
    pub ticks: u64,
    pub flow_records: u64,
    pub sockets_retired: u64,
    pub procfs_resolved: u64,
    pub alerts: u64,
    pub execs_dropped: u64,
}

impl Agent {
    pub fn new(
        mut config: Config,
        catalog: Arc<Catalog>,
        mut sensor: Sensor,
        out: Spool,
        record_to: Option<&std::path::Path>,
    ) -> Result<Self> {
        let take = |sensor: &mut Sensor, name: &str| {
            sensor.ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
        };
        let flows = take(&mut sensor, maps::FLOWS)?;
        let socks = take(&mut sensor, maps::SOCKS)?;
        let flows_map = BpfHashMap::try_from(flows)?;
        let socks_map = BpfHashMap::try_from(socks)?;
        let changed_map = BpfHashMap::try_from(take(&mut sensor, maps::SOCKS_CHANGED)?)?;
        let listeners_map = BpfHashMap::try_from(take(&mut sensor, maps::LISTENERS)?)?;
        let skb_cgroup = BpfHashMap::try_from(take(&mut sensor, maps::SKB_CGROUP)?)?;
        let dirs_map = BpfHashMap::try_from(take(&mut sensor, maps::DIRS)?)?;
        let respond = match config.respond.rules.is_empty() {
            true => None,
            false => Some(crate::respond::Responder::new(
                config.respond.clone(),
                crate::respond::KernelDeny {
                    sockets: BpfHashMap::try_from(take(&mut sensor, maps::DENY)?)?,
                    processes: BpfHashMap::try_from(take(&mut sensor, maps::DENY_TGID)?)?,
                    aborter: crate::respond::abort::Aborter::default(),
                },
                std::process::id(),
            )),
        };
        let counters = PerCpuArray::try_from(take(&mut sensor, maps::COUNTERS)?)?;
        let procfs = Procfs::default();
        let mut procs = ProcessTable::default();
        let seeded = procs.seed(&procfs, procfs.pids());
        eprintln!("sluice: process table seeded with {seeded} processes from /proc");
        let host_name = if config.agent.host_name.is_empty() { output::host_name() } else { config.agent.host_name.clone() };
        let mut ctx = output::Context { host_name, backend: sensor.backend.name(), agent_id: String::new() };
        let v1 = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| container::v1_mounted_in(&m));
        let containers = container::Resolver::new(config.containers.clone(), v1);
        let format = config.agent.format;
        let metrics = Metrics::with_alerts_by_rule(config.metrics.alerts_by_rule.unwrap_or_else(|| metrics::is_loopback(&config.metrics.addr)));
        metrics.backend.get_or_create(&metrics::BackendLabel { backend: ctx.backend.to_string() }).set(1);
        metrics.map_capacity.get_or_create(&metrics::MapLabel { map: "flows".into() }).set(config.kernel.flows_max.into());
        metrics.map_capacity.get_or_create(&metrics::MapLabel { map: "sockets".into() }).set(config.kernel.sockets_max.into());
        let mut detector = Detector::new(config.detect.clone()).with_catalog(catalog.clone());
        let namer = Namer::new(catalog, config.destinations.dns_cache_max);
        let (agent_id, positions, kept) = restore_state(&mut config, &mut detector);
        ctx.agent_id = agent_id.unwrap_or_else(new_agent_id);
        let recorder = match record_to {
            Some(path) => {
                let f = std::fs::File::create(path).with_context(|| format!("creating record file {}", path.display()))?;
                Some(record::Writer::new(std::io::BufWriter::new(f), &ctx.host_name, ctx.backend, &ctx.agent_id)?)
            }
            None => None,
        };
        let top = crate::top::table::Table::new(config.detect.short_window.as_secs_f64());
        let config_tick = config.agent.tick;
        let control = start_control(&config.agent.control_socket);
        let mut agent = Self {
            config,
            sensor,
            flows_map,
            owners: Owners::new(KernelOwners { socks: socks_map, changed: changed_map, listeners: listeners_map, skb_cgroup }, LiveScan::default()),
            dirs_map,
            counters,
            procs,
            procfs,
            users: {
                let mut u = crate::users::Users::default();
                u.refresh(Instant::now());
                u
            },
            tracker: handed_over_tracker(positions, config_tick),
            sink: Sink::new(out, format),
            output_dropped: 0,
            ctx,
            detector,
            namer,
            recorder,
            top,
            control,
            respond,
            pending_execs: Vec::new(),
            exe_gone: HashMap::new(),
            last_save: Instant::now(),
            saving: None,
            deferred: Vec::new(),
            stopping: false,
            cgroup_paths: cgroups::CgroupPaths::default(),
            containers,
            last_tick: Instant::now(),
            last_counters: vec![0; counter::LEN as usize],
            last_naming: Default::default(),
            stats: Stats::default(),
            metrics,
            published: Stats::default(),
        };
        let seeded = agent.owners.seed(&mut agent.procs, &agent.procfs, Instant::now());
        match seeded {
            Ok(n) => eprintln!("sluice: {n} sockets older than the sensor attributed through sock_diag and /proc"),
            Err(e) => eprintln!("sluice: cannot attribute pre-existing sockets (their bytes will show pid 0): {e:#}"),
        }
        agent.put_back(kept)?;
        Ok(agent)
    }

    /// The containments the previous agent handed over (`respond.keep`), put
    /// back before the first tick, with their records.
    fn put_back(&mut self, kept: Vec<crate::respond::Containment>) -> Result<()> {
        let (Some(r), false) = (&mut self.respond, kept.is_empty()) else { return Ok(()) };
        if !self.config.respond.keep {
            eprintln!("sluice: {} containments were handed over, and are not put back (respond.keep is off)", kept.len());
            return Ok(());
        }
        let procs = &self.procs;
        // A start read from /proc is in clock ticks; one from the kernel's exec event, in ns.
        let alive = |pid: u32, start: u64| procs.get_at(pid, 0).is_some_and(|p| start == 0 || p.start_ns.abs_diff(start) <= 20_000_000);
        let records = r.restore(&self.ctx, kept, output::unix_secs(SystemTime::now()), alive);
        for json in &records {
            self.sink.record(json, || json["event"]["reason"].as_str().unwrap_or_default().to_string()).context("writing to stdout")?;
        }
        Ok(())
    }

    /// Decode and apply one ring buffer record.
    fn on_event(&mut self, bytes: &[u8]) {
        self.stats.events += 1;
        match events::decode(bytes) {
            Ok(KernelEvent::Payload(p)) => {
                let now = output::unix_secs(SystemTime::now());
                self.namer.on_payload(p.kind, &p.key, p.offset, &p.data, now);
            }
            Ok(ev) => {
                self.procs.apply(&ev, &self.procfs);
                if let KernelEvent::Exec(e) = &ev {
                    self.metrics.execs.inc();
                    if self.pending_execs.len() < MAX_EXECS_PER_TICK {
                        let info = self.proc_info(e.pid, 0);
                        self.pending_execs.push(info);
                    } else {
                        self.stats.execs_dropped += 1;
                    }
                }
            }
            Err(e) => {
                self.stats.decode_errors += 1;
                if self.stats.decode_errors <= 10 {
                    eprintln!("sluice: dropped a malformed kernel event: {e}");
                }
            }
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            let bytes = item.to_vec();
            drop(item);
            self.on_event(&bytes);
        }
    }

    /// The detector's view of a process (the holder of `pid` that started at
    /// `start_ns`, 0 = the current one): identity, ancestry and job from the table.
    fn proc_info(&self, pid: u32, start_ns: u64) -> ProcInfo {
        let p = self.procs.get_at(pid, start_ns);
        let mut ancestors = Vec::new();
        let mut cur = p.map(|p| p.ppid).unwrap_or(0);
        while cur > 1 && ancestors.len() < 8 && !ancestors.iter().any(|(a, _)| *a == cur) {
            let exe = self.procs.get(cur).map(|a| a.executable.clone()).unwrap_or_default();
            ancestors.push((cur, exe));
            cur = self.procs.get(cur).map(|a| a.ppid).unwrap_or(0);
        }
        match p {
            Some(p) => {
                let job = self.procs.job_of(p);
                ProcInfo {
                    pid,
                    ppid: p.ppid,
                    entity_id: p.entity_id(),
                    name: p.name.clone(),
                    executable: p.executable.clone(),
                    args: p.args.clone(),
                    uid: p.uid,
                    ancestors,
                    start_ns: p.start_ns,
                    job: Some(JobInfo {
                        pgid: job.pgid,
                        pid: job.root.pid,
                        entity_id: job.root.entity_id(),
                        executable: job.root.executable.clone(),
                        args: job.root.args.clone(),
                    }),
                    exe_deleted: self.exe_gone.get(&(pid, p.start_ns)).is_some_and(|(gone, _)| *gone),
                    parent_name: self.procs.get(p.ppid).map(|q| q.name.clone()).unwrap_or_default(),
                    parent_args: self.procs.get(p.ppid).map(|q| q.args.clone()).unwrap_or_default(),
                    user_name: self.users.name(p.uid).map(str::to_string),
                }
            }
            None => ProcInfo {
                pid,
                ppid: 0,
                entity_id: format!("{pid}-0"),
                name: String::new(),
                executable: String::new(),
                args: Vec::new(),
                uid: 0,
                ancestors,
                start_ns: 0,
                job: None,
                exe_deleted: false,
                ..ProcInfo::default()
            },
        }
    }

    /// Whether each sender's executable file is gone (deleted while it runs,
    /// or a memfd): one readlink per process per `EXE_RECHECK`, not per flow.
    fn check_executables(&mut self, pids: impl Iterator<Item = (u32, u64)>) {
        let now = Instant::now();
        for (pid, start) in pids {
            let Some(p) = self.procs.get_at(pid, start) else { continue };
            let key = (pid, p.start_ns);
            if self.exe_gone.get(&key).is_some_and(|(_, at)| now.duration_since(*at) < EXE_RECHECK) {
                continue;
            }
            let gone = match std::fs::read_link(format!("/proc/{pid}/exe")) {
                Ok(link) => {
                    let l = link.as_os_str().as_encoded_bytes();
                    l.ends_with(b" (deleted)") || l.starts_with(b"/memfd:")
                }
                // Exited (or a kernel thread): keep what was seen while it lived.
                Err(_) => self.exe_gone.get(&key).is_some_and(|(g, _)| *g),
            };
            self.exe_gone.insert(key, (gone, now));
        }
        if self.exe_gone.len() > 4 * self.procs.len().max(1024) {
            self.exe_gone.retain(|(pid, start), _| self.procs.get_at(*pid, *start).is_some());
        }
    }

    /// Read the kernel's flow map in batches, folding each entry's delta
    /// straight into this tick's records (no copy of the map is held). The
    /// deltas of sockets whose owner no record knows are handed back, to be
    /// placed after a scan.
    fn read_flows(&mut self, unix_now: f64) -> (flows::Aggregate, Vec<flows::Delta>) {
        let mut agg = flows::Aggregate::default();
        let mut unknown = Vec::new();
        let (tracker, owners, procs, namer, dirs) = (&mut self.tracker, &self.owners, &self.procs, &mut self.namer, &self.dirs_map);
        tracker.begin();
        let mut fold = |k: &FlowKey, c: &FlowCounters| {
            let Some(volume) = tracker.observe(k, c) else { return };
            let d = flows::Delta { key: *k, volume };
            let owner = if k.pid != 0 {
                sender_owner(k, c, procs, dirs)
            } else {
                match owners.owner(k.cookie, procs) {
                    Some(o) => o,
                    None => return unknown.push(d),
                }
            };
            agg.add(&d, owner, namer.destination(k, flows::ip_of(&k.remote_addr), unix_now));
        };
        match batch::read_each(&self.flows_map, self.stats.ticks == 1, &mut fold) {
            Ok(()) => tracker.end(),
            // Entries it did not reach are still in the kernel, not gone: the
            // tracker keeps them for the next read.
            Err((e, n)) => eprintln!("sluice: reading the flow map failed after {n} entries ({e}); the rest is counted next tick"),
        }
        (agg, unknown)
    }

    /// One tick: read the kernel's flows, attribute, aggregate, emit, retire.
    pub fn tick(&mut self) -> Result<()> {
        let now = Instant::now();
        let window = now.duration_since(self.last_tick);
        self.last_tick = now;
        self.stats.ticks += 1;
        let at = SystemTime::now();
        let unix_now = output::unix_secs(at);
        self.namer.expire(unix_now);
        self.users.refresh(now);

        // Owners from the mirror of the kernel's owner map, brought up to
        // date from what changed (the sweep reads it whole).
        let sweep = self.stats.ticks.is_multiple_of(SWEEP_EVERY_TICKS);
        let held = self.owners.sync(sweep);
        let (mut agg, mut unknown) = self.read_flows(unix_now);
        unknown.append(&mut self.deferred);
        // Sockets the mirror does not know: made since the sync (one lookup
        // each), else older than the sensor or evicted unread (a rate-limited
        // scan); then their deltas.
        if !unknown.is_empty() {
            for d in &unknown {
                self.owners.note_tuple(d.key.cookie, owners::Tuple::of(&d.key));
            }
            let mut cookies: Vec<u64> = unknown.iter().map(|d| d.key.cookie).collect();
            cookies.sort_unstable();
            cookies.dedup();
            cookies.retain(|&c| !self.owners.fetch(c));
            // What a finished scan placed is in the mirror now.
            if !cookies.is_empty() {
                self.owners.resolve(&cookies, &mut self.procs, &self.procfs, now);
            }
            for d in unknown {
                let owner = self.owners.owner(d.key.cookie, &self.procs);
                // Held while the scan that may place them runs (fail closed:
                // past the bound, or once it gave up, judged as unknown).
                if owner.is_none() && !self.stopping && self.owners.waiting_on(d.key.cookie) && self.deferred.len() < MAX_DEFERRED {
                    self.deferred.push(d);
                    continue;
                }
                let name = self.namer.destination(&d.key, flows::ip_of(&d.key.remote_addr), unix_now);
                agg.add(&d, owner.unwrap_or_else(|| self.owners.unknown_owner(d.key.cookie)), name);
            }
        }
        let records = agg.finish();
        // What the rest of the tick needs of the live flows, from the tracker.
        let mut cookies: HashSet<u64> = HashSet::default();
        let mut active: HashSet<u64> = HashSet::default();
        for (k, moved) in self.tracker.live().filter(|(k, _)| k.pid == 0) {
            cookies.insert(k.cookie);
            if moved {
                active.insert(k.cookie);
            }
        }
        let dns_senders = dns_senders(self.tracker.live().map(|(k, _)| k));

        let ownerless: u64 = records.iter().filter(|r| r.owner.pid == 0).map(|r| r.volume.bytes_out).sum();
        self.metrics.ownerless_bytes.inc_by(ownerless);
        // One lookup per sending process, not per record.
        let mut by_process: HashMap<(u32, u64, u64), Rc<Sender>> = HashMap::new();
        let senders: Vec<Rc<Sender>> = records
            .iter()
            .map(|r| {
                let k = (r.owner.pid, r.owner.start_ns, r.owner.cgroup_id);
                if let Some(s) = by_process.get(&k) {
                    return s.clone();
                }
                let s = Rc::new(self.sender(k.0, k.1, k.2));
                by_process.insert(k, s.clone());
                s
            })
            .collect();
        if self.config.agent.emit.flows() {
            for (r, s) in records.iter().zip(&senders) {
                if !self.config.flows.include_loopback && r.scope() == flows::Scope::Loopback {
                    continue;
                }
                let p = self.procs.get_at(r.owner.pid, r.owner.start_ns);
                let who = output::Who {
                    process: p,
                    parent: p.and_then(|p| self.procs.get(p.ppid)),
                    user_name: self.users.name(r.owner.uid),
                    container: s.container.as_ref(),
                };
                let json = match self.sink.format {
                    crate::config::Format::Ocsf => crate::ocsf::flow(&self.ctx, at, window, r, who),
                    _ => output::flow_json(&self.ctx, at, window, r, who),
                };
                self.sink
                    .record(&json, || output::flow_text(at, r, p))
                    .context("writing to stdout")?;
                self.stats.flow_records += 1;
            }
        }
        self.detect(at, window, &records, senders, &dns_senders)?;
        self.sink.flush().context("flushing stdout")?;

        if now.duration_since(self.last_save) >= self.config.state.save_every {
            self.save_state(false);
            self.last_save = now;
        }
        self.retire(&cookies, &active);
        self.retire_idle_flows();
        if let Some(held) = held.filter(|_| sweep) {
            self.sweep_closed(&cookies, &held);
        }
        self.stats.procfs_resolved = self.owners.resolved;
        self.stats.sockets_retired = self.owners.retired;
        self.report_counters();
        let grace = (self.config.agent.tick * 2 + Duration::from_secs(5)).as_nanos() as u64;
        self.procs.reap(boottime_ns(), grace);
        self.publish(self.tracker.len(), window);
        // The tick's records, observations and owner table are freed by now:
        // hand the pages back (glibc keeps freed arena memory resident, about
        // as much again as is live at 100k flows; this costs ~1 ms).
        // SAFETY: malloc_trim only releases free memory; it takes no pointers.
        unsafe { libc::malloc_trim(0) };
        self.metrics.tick_done(now.elapsed(), unix_now);
        Ok(())
    }

    /// Where a sender runs: its cgroup v2 path and container, if any.
    fn sender(&mut self, pid: u32, incarnation: u64, cgroup_id: u64) -> Sender {
        let cgroup = self.cgroup_paths.path(cgroup_id, self.stats.ticks);
        let start_ns = self.procs.get_at(pid, incarnation).map(|p| p.start_ns).unwrap_or(0);
        let container = self.containers.resolve(cgroup.as_deref(), pid, start_ns);
        Sender { cgroup, container }
    }

    /// The detector's view of record `i`. An upstream flow of a local proxy
    /// (`proxy::join`) is its client's upload, carried by the proxy.
    fn flow_obs(&self, i: usize, r: &flows::FlowRecord, sender: Sender, records: &[flows::FlowRecord], joins: &[crate::proxy::Join]) -> FlowObs {
        let joined = joins.iter().find(|j| j.upstream == i);
        let (process, via_proxy, target) = match joined {
            Some(j) => {
                let c = &records[j.client];
                let proxy = self.procs.get(j.proxy_pid).map(|p| p.name.clone()).unwrap_or_default();
                let target = c.destination.proxy_target.as_ref().map(|(h, _)| h.clone()).filter(|h| h.parse::<std::net::IpAddr>().is_err());
                (self.proc_info(c.owner.pid, c.owner.start_ns), Some(format!("{proxy} (pid {}): {}", j.proxy_pid, j.how)), target)
            }
            None => (self.proc_info(r.owner.pid, r.owner.start_ns), None, None),
        };
        FlowObs {
            process,
            via_proxy,
            remote_ip: r.remote_ip,
            remote_port: r.remote_port,
            transport: flows::transport(r.protocol).to_string(),
            direction: flows::direction(r.owner.direction).to_string(),
            scope: r.scope().as_str().to_string(),
            // The upstream's own name first; else the target the client asked for (a claim).
            domain: r.destination.domain.clone().or(target),
            domain_corroborated: r.destination.corroborated,
            cgroup: sender.cgroup,
            container: sender.container,
            bytes_out: r.volume.bytes_out,
            bytes_in: r.volume.bytes_in,
        }
    }

    /// This tick's DNS queries per (asking process, registered domain): the
    /// query socket's owner from the kernel's socket record, else its sender
    /// on the send path (`dns_senders`), else pid 0 (judged as unknown).
    fn dns_observations(&mut self, dns_senders: &DnsSenders) -> Vec<DnsObs> {
        self.namer
            .take_queries()
            .into_iter()
            .map(|((cookie, domain), t)| {
                let (pid, start_ns) = match self.owners.owner(cookie, &self.procs) {
                    Some(o) => (o.pid, o.start_ns),
                    None => (
                        dns_senders
                            .get(&(t.local_port, t.server))
                            .copied()
                            .flatten()
                            .unwrap_or(0),
                        0,
                    ),
                };
                DnsObs {
                    process: self.proc_info(pid, start_ns),
                    domain,
                    queries: t.queries,
                    name_bytes: t.name_bytes,
                    data_names: t.data_names,
                    longest_label: t.longest_label,
                }
            })
            .collect()
    }

    /// Hand this tick to the detector (and the record file); print its alerts.
    fn detect(
        &mut self,
        at: SystemTime,
        window: Duration,
        records: &[flows::FlowRecord],
        senders: Vec<Rc<Sender>>,
        dns_senders: &DnsSenders,
    ) -> Result<()> {
        self.check_executables(
            records
                .iter()
                .filter(|r| r.volume.bytes_out > 0)
                .map(|r| (r.owner.pid, r.owner.start_ns)),
        );
        let dns = self.dns_observations(dns_senders);
        let joins = crate::proxy::join(records);
        let (mut flows, mut network_users) = (Vec::new(), HashSet::default());
        for (i, (r, sender)) in records.iter().zip(senders).enumerate() {
            if self.detector.could_judge(r.volume.bytes_out, flows::direction(r.owner.direction), r.scope().as_str()) {
                flows.push(self.flow_obs(i, r, (*sender).clone(), records, &joins));
            } else if let Some(p) = self.procs.get_at(r.owner.pid, r.owner.start_ns) {
                network_users.insert(p.executable.as_str());
            }
        }
        let mut network_users: Vec<String> = network_users.into_iter().map(str::to_string).collect();
        network_users.sort_unstable();
        let input = TickInput {
            dns,
            t: output::unix_secs(at),
            window_s: window.as_secs_f64(),
            execs: std::mem::take(&mut self.pending_execs),
            flows,
            network_users,
        };
        if let Some(rec) = &mut self.recorder {
            if !input.flows.is_empty() || !input.execs.is_empty() || !input.dns.is_empty() || !input.network_users.is_empty() {
                rec.tick(&input).context("writing the record file")?;
            }
        }
        let alerts = self.detector.tick(&input);
        self.publish_top(&input, &alerts);
        let evicted = self.detector.evictions();
        self.metrics.detector_evictions.inc_by(evicted.saturating_sub(self.metrics.detector_evictions.get()));
        if self.config.agent.emit.alerts() {
            for a in &alerts {
                self.metrics.alerts.get_or_create(&metrics::RuleLabel { rule: a.rule.id.to_string() }).inc();
                let json = match self.sink.format {
                    crate::config::Format::Ocsf => crate::ocsf::alert(&self.ctx, a),
                    _ => output::alert_json(&self.ctx, a),
                };
                self.sink.record(&json, || output::alert_text(a)).context("writing to stdout")?;
                self.stats.alerts += 1;
            }
        }
        // After the alerts: on the stream, a containment follows its alert.
        self.respond(&alerts, input.t)
    }

    /// Containment: this tick's alerts whose rule asks for it, the sockets the
    /// contained processes made since, and the containments whose TTL ended.
    fn respond(&mut self, alerts: &[crate::detect::Alert], now: f64) -> Result<()> {
        let Some(r) = &mut self.respond else { return Ok(()) };
        // Every socket with a known owner (the cgroup backend's owner map, and
        // the send-path backends' flow keys, which carry the sender): only
        // on a tick with an alert or a containment in force, since the owner
        // map can hold 65,536 entries.
        let owned = if alerts.is_empty() && !r.holding() { Vec::new() } else { held(&self.owners, &self.tracker) };
        let mut records = Vec::new();
        for a in alerts {
            // An alert on a job's total (`level: job`: an upload split over 30
            // children of one driver) holds the job it names, from its root (the
            // command a user, service or container started) down: the driver
            // stops, and the kernel contains its next children at fork. Any
            // other alert holds the carrier and what it started, since a
            // process without job control shares its process group with
            // whatever ran it (a CI runner, `timeout`, `make`). Nor is the root
            // taken when it is an interactive shell, a supervisor or guarded.
            let brief = |p: &crate::process_table::Process| ProcInfo { pid: p.pid, name: p.name.clone(), executable: p.executable.clone(), start_ns: p.start_ns, ..ProcInfo::default() };
            let guard = &self.config.respond.guard;
            let job_level = a.indicators.iter().any(|i| i == "level: job");
            let root = a.process.job.as_ref().filter(|_| job_level).and_then(|j| self.procs.get_at(j.pid, 0)).filter(|p| {
                use crate::process_table::{is_interactive_shell, is_supervisor};
                p.pid > 1 && !is_interactive_shell(p) && !is_supervisor(p) && crate::respond::guarded(&brief(p), std::process::id(), guard).is_none()
            });
            let top = root.map_or(a.process.pid, |p| p.pid);
            let members: Vec<ProcInfo> = self.procs.descendants(top, 64).into_iter().map(brief).collect();
            let root = root.map(brief);
            if let Some(rec) = r.on_alert(&self.ctx, a, root.as_ref(), &members, &owned, now) {
                if rec["event"]["action"] == "sluice.contain" && rec["event"]["outcome"] != "failure" {
                    let mode = crate::respond::mode_name(self.config.respond.mode(a.rule.id));
                    self.metrics.containments.get_or_create(&metrics::NameLabel { name: mode.to_string() }).inc();
                }
                records.push(rec);
            }
        }
        let lifts = self.control.as_ref().map(|c| c.take_lifts()).unwrap_or_default();
        records.extend(r.tick(&self.ctx, &owned, &lifts, now));
        if let Some(c) = &self.control {
            c.publish_containments(r.list(now).to_string());
        }
        for json in &records {
            self.sink.record(json, || json["event"]["reason"].as_str().unwrap_or_default().to_string()).context("writing to stdout")?;
        }
        Ok(())
    }

    /// Fold this tick into `sluice top`'s view and publish it, when a socket serves it.
    fn publish_top(&mut self, input: &TickInput, alerts: &[crate::detect::Alert]) {
        let Some(control) = &self.control else { return };
        let catalog = self.detector.catalog();
        self.top.tick(input.t, self.config.agent.tick.as_secs_f64(), &input.flows, alerts, |d| catalog.lookup(d).map(|s| s.name.clone()));
        let m = &self.metrics;
        let snapshot = crate::top::table::Snapshot {
            backend: self.ctx.backend.to_string(),
            host: self.ctx.host_name.clone(),
            at: input.t,
            tick_s: self.config.agent.tick.as_secs_f64(),
            window_s: self.config.detect.short_window.as_secs_f64(),
            // Short names: they share the status line of an 80-column terminal.
            counters: vec![
                ("drops".into(), m.ringbuf_drops.get()),
                ("evicted".into(), m.flows_evicted.get()),
                ("unwritten".into(), m.output_dropped.get()),
                ("ownerless".into(), m.ownerless_bytes.get()),
            ],
            rows: self.top.rows(),
        };
        if let Ok(json) = serde_json::to_string(&snapshot) {
            control.publish(json);
        }
    }

    /// Retire closed, idle sockets' owners (`Owners::retire`) and drop their
    /// flows from the kernel map in one pass over the live flows.
    fn retire(&mut self, cookies: &HashSet<u64>, active: &HashSet<u64>) {
        let after = self.config.flows.retire_after;
        let gone = self.owners.retire(cookies, active, boottime_ns(), after, Instant::now());
        if gone.is_empty() {
            return;
        }
        let keys: Vec<FlowKey> = self.tracker.live().filter(|(k, _)| k.pid == 0 && gone.contains(&k.cookie)).map(|(k, _)| *k).collect();
        for k in &keys {
            let _ = self.flows_map.remove(k);
            self.tracker.forget(k);
        }
    }

    /// Sweep owner entries of closed sockets without flows (`Owners::sweep`).
    fn sweep_closed(&mut self, with_flows: &HashSet<u64>, held: &HashSet<u64>) {
        let left = self.owners.sweep(held, with_flows, boottime_ns(), self.config.flows.retire_after);
        self.metrics.map_entries.get_or_create(&metrics::MapLabel { map: "sockets".into() }).set(left as i64);
    }

    /// Drop flows idle for a while from the kernel map (a socket that speaks
    /// again starts a fresh entry, counted from zero): send-path flows have no
    /// release hook, and on the cgroup backend a socket that stays open keeps
    /// its entries: a listener holds one per client whose SYN it answered,
    /// which no later packet touches (a third of the entries with 50k
    /// loopback connections, `cargo xtask bench`, section 3).
    fn retire_idle_flows(&mut self) {
        let ticks = (IDLE_RETIRE.as_secs_f64() / self.config.agent.tick.as_secs_f64()).ceil().max(1.0) as u32;
        for k in self.tracker.idle_for(ticks) {
            let _ = self.flows_map.remove(&k);
            self.tracker.forget(&k);
        }
    }

    /// Save what the detector learned. The state is serialized here (a
    /// consistent copy) and written, fsynced and renamed on a thread of its
    /// own, so a slow disk does not hold the tick; `wait` (at shutdown)
    /// writes on this thread after any save still in flight.
    fn save_state(&mut self, wait: bool) {
        if self.config.state.path.is_empty() {
            return;
        }
        if let Some(h) = self.saving.take_if(|h| wait || h.is_finished()) {
            let _ = h.join();
        }
        if self.saving.is_some() {
            // The previous save is still writing: this one waits for the next period.
            return;
        }
        let st = state::State {
            sluice_state: state::STATE_VERSION,
            saved_at: output::unix_secs(SystemTime::now()),
            baselines: self.detector.baselines.clone(),
            habits: self.detector.habits.clone(),
            alerts: self.detector.alert_memory(),
            agent_id: self.ctx.agent_id.clone(),
            // Only the last save of a clean stop: a periodic one's positions
            // would be older than bytes reported after it.
            handover: self.stopping.then(|| crate::handover::Handover {
                boot_id: crate::handover::boot_id(),
                flows: self.tracker.positions().into_iter().map(|(k, n)| crate::handover::Position { key: k, next_seq: n }).collect(),
                containments: match (&self.respond, self.config.respond.keep) {
                    (Some(r), true) => r.kept(),
                    _ => Vec::new(),
                },
            }),
        };
        let path = std::path::PathBuf::from(&self.config.state.path);
        let bytes = match serde_json::to_vec(&st) {
            Ok(b) => b,
            Err(e) => return eprintln!("sluice: cannot serialize the learned state ({e}); it is kept in memory only"),
        };
        let write = move || {
            if let Err(e) = state::write(&path, &bytes) {
                eprintln!("sluice: {e}; learned baselines are kept in memory only");
            }
        };
        if wait {
            return write();
        }
        match std::thread::Builder::new().name("sluice-state".into()).spawn(write) {
            Ok(h) => self.saving = Some(h),
            Err(e) => eprintln!("sluice: cannot start the state writer ({e}); the state is saved at the next period"),
        }
    }

    /// Kernel counters as (name, value), for `Drop`-time summaries and tests.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        counter::NAMES.iter().copied().zip(self.last_counters.iter().copied()).collect()
    }

    /// Run until SIGINT/SIGTERM; the last partial tick is flushed before return.
    pub async fn run(mut self, signals: Signals) -> Result<Stats> {
        let Signals { interrupt: mut sigint, terminate: mut sigterm } = signals;
        let ring = RingBuf::try_from(
            self.sensor.ebpf.take_map(maps::EVENTS).ok_or_else(|| anyhow!("map EVENTS missing"))?,
        )?;
        let payloads = RingBuf::try_from(
            self.sensor.ebpf.take_map(maps::PAYLOADS).ok_or_else(|| anyhow!("map PAYLOADS missing"))?,
        )?;
        // SAFETY: each RingBuf owns its fd and lives inside its AsyncFd, so the
        // fd cannot be closed or reused while it is registered.
        let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|_| anyhow!("cannot poll the ring buffer fd"))?;
        // SAFETY: as above.
        let mut payloads = unsafe { AsyncFd::register(payloads) }.map_err(|_| anyhow!("cannot poll the payload ring buffer fd"))?;
        let mut interval = tokio::time::interval(self.config.agent.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await; // the first tick fires at once
        // The kernel wakes us only when its ring is filling (see `wakeup` in the
        // eBPF crate); otherwise events wait at most this long.
        let mut drain_every = tokio::time::interval(DRAIN_EVERY);
        drain_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        eprintln!(
            "sluice: ready: backend={} programs={} tick={:?} emit={:?}",
            self.sensor.backend,
            self.sensor.attached.len(),
            self.config.agent.tick,
            self.config.agent.emit
        );
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard.context("waiting on the ring buffer")?;
                    self.drain(guard.get_inner_mut());
                    guard.clear_ready();
                }
                guard = payloads.readable_mut() => {
                    let mut guard = guard.context("waiting on the payload ring buffer")?;
                    self.drain(guard.get_inner_mut());
                    guard.clear_ready();
                }
                _ = drain_every.tick() => {
                    self.drain(ring.get_mut());
                    self.drain(payloads.get_mut());
                }
                _ = interval.tick() => {
                    // Exec events and names first, so this tick's flows are named.
                    self.drain(ring.get_mut());
                    self.drain(payloads.get_mut());
                    self.tick()?;
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
            }
        }
        self.drain(ring.get_mut());
        self.drain(payloads.get_mut());
        self.stopping = true;
        self.tick()?;
        self.save_state(true);
        if !self.sink.get_mut().close(Duration::from_secs(5)) {
            eprintln!("sluice: the output consumer is not reading; records still queued are lost");
        }
        eprintln!(
            "sluice: stopping: {} ticks, {} kernel events ({} malformed), {} flow records, {} alerts, {} sockets resolved from /proc, {} execs over the per-tick cap",
            self.stats.ticks,
            self.stats.events,
            self.stats.decode_errors,
            self.stats.flow_records,
            self.stats.alerts,
            self.stats.procfs_resolved,
            self.stats.execs_dropped
        );
        Ok(self.stats.clone())
    }
}

/// The owner of a send-path flow: the sender is in the key. A datagram is
/// sent by whoever sends it; TCP's direction is what the kernel recorded at
/// its first send, else the connection's state transitions (DIRS).
fn sender_owner(k: &FlowKey, c: &FlowCounters, procs: &ProcessTable, dirs: &BpfHashMap<MapData, u64, u8>) -> Owner {
    let p = procs.get(k.pid);
    let direction = match k.protocol {
        IPPROTO_TCP if c.direction != 0 => c.direction as u8,
        IPPROTO_TCP => dirs.get(&k.cookie, 0).unwrap_or(DIR_UNKNOWN),
        _ => DIR_EGRESS,
    };
    Owner {
        pid: k.pid,
        uid: p.map(|p| p.uid).unwrap_or(0),
        cgroup_id: p.map(|p| p.cgroup_id).unwrap_or(0),
        direction,
        attribution: Attribution::Kernel,
        start_ns: 0,
    }
}

/// A tracker expecting the previous agent's TCP positions for about a minute
/// of reads (a flow not seen again by then has ended, or sent nothing since).
fn handed_over_tracker(positions: Vec<crate::handover::Position>, tick: Duration) -> DeltaTracker {
    let mut t = DeltaTracker::default();
    if !positions.is_empty() {
        eprintln!("sluice: {} TCP flows handed over by the previous agent: what they sent between the two is counted", positions.len());
        let reads = (60.0 / tick.as_secs_f64().max(0.1)).ceil().max(3.0) as u32;
        t.expect(positions.iter().map(|p| (p.key, p.next_seq)), reads);
    }
    t
}

/// The control socket, unless configured off or already served by another
/// agent (then this one serves none, and says so: it is not a reason to stop).
fn start_control(path: &str) -> Option<crate::control::Control> {
    if path.is_empty() {
        return None;
    }
    match crate::control::Control::start(std::path::Path::new(path)) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("sluice: warning: no control socket, so `sluice top` cannot read this agent: {e:#}");
            None
        }
    }
}

/// Where a flow's sender runs.
#[derive(Clone)]
struct Sender {
    cgroup: Option<String>,
    container: Option<Container>,
}

/// Load learned state, saying on stderr what happened; never fatal. A file that
/// exists but cannot be read is never overwritten: saving is switched off for
/// this run (and said so).
/// Restore what was learned; return the agent id it was saved with and the
/// previous agent's TCP positions (`handover`), as far as the file has them.
fn restore_state(config: &mut Config, detector: &mut Detector) -> (Option<String>, Vec<crate::handover::Position>, Vec<crate::respond::Containment>) {
    if config.state.path.is_empty() {
        return (None, Vec::new(), Vec::new());
    }
    let path = std::path::Path::new(&config.state.path);
    let now = output::unix_secs(SystemTime::now());
    match state::load(path, now) {
        Ok(state::Loaded::Fresh) => eprintln!("sluice: no state at {}: learning from scratch", path.display()),
        Ok(state::Loaded::Restored(mut s)) => {
            let (positions, kept) = crate::handover::usable(s.handover.take(), s.saved_at, now, &crate::handover::boot_id());
            return (apply_state(detector, *s, "", path), positions, kept);
        }
        Ok(state::Loaded::Migrated(s)) => {
            return (apply_state(detector, *s, "state migrated from the previous format (per-command baselines are relearned): ", path), Vec::new(), Vec::new())
        }
        Ok(state::Loaded::SetAside { reason, moved_to }) => eprintln!(
            "sluice: state file {} is unusable ({reason}); moved to {} and learning from scratch",
            path.display(),
            moved_to.display()
        ),
        Err(e) => {
            eprintln!("sluice: {e}; learning from scratch, and not saving (that would replace a file sluice could not read)");
            config.state.path.clear();
        }
    }
    (None, Vec::new(), Vec::new())
}

fn apply_state(detector: &mut Detector, s: state::State, how: &str, path: &std::path::Path) -> Option<String> {
    eprintln!(
        "sluice: {how}restored {} baselines and the habits of {} programs from {}",
        s.baselines.models.len(),
        s.habits.by_exe.len(),
        path.display()
    );
    detector.baselines = s.baselines;
    detector.habits = s.habits;
    detector.restore_alert_memory(s.alerts);
    Some(s.agent_id).filter(|id| !id.is_empty())
}

/// A new agent id: a random UUID from the kernel (empty if it cannot say).
fn new_agent_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// (local port, DNS server address) -> the one process that sent from that
/// port to that server (UDP queries; TCP, whose answers' questions count), or None when several did (processes in other
/// network namespaces can share a port: then no one is guessed, and the
/// queries are judged as an unknown process's).
type DnsSenders = HashMap<(u16, [u8; 16]), Option<u32>>;

fn dns_senders<'a>(keys: impl Iterator<Item = &'a FlowKey>) -> DnsSenders {
    let mut out = DnsSenders::new();
    for k in keys.filter(|k| k.pid != 0 && k.remote_port == 53) {
        out.entry((k.local_port, k.remote_addr))
            .and_modify(|p| {
                if *p != Some(k.pid) {
                    *p = None;
                }
            })
            .or_insert(Some(k.pid));
    }
    out
}

/// Every socket with a known owner (the cgroup backend's owner map, and the
/// send-path backends' flow keys, which carry the sender), with its TCP
/// connection's addresses where the flows have them (for the abort).
fn held(owners: &Owners<KernelOwners, LiveScan>, tracker: &flows::DeltaTracker) -> Vec<crate::respond::Held> {
    let tcp: HashMap<u64, crate::respond::Tuple> = tracker
        .live()
        .filter(|(k, _)| k.protocol == libc::IPPROTO_TCP as u8)
        .map(|(k, _)| {
            let at = |ip: &[u8; 16], port| std::net::SocketAddr::new(flows::ip_of(ip), port);
            (k.cookie, crate::respond::Tuple { local: at(&k.local_addr, k.local_port), remote: at(&k.remote_addr, k.remote_port) })
        })
        .collect();
    let with = |(key, pid, cookie_known): (u64, u32, bool)| crate::respond::Held { key, cookie_known, pid, tcp: tcp.get(&key).copied() };
    // The send-path backends' keys carry the sender, and name the socket by
    // its kernel address rather than its cookie.
    let send_path = tracker.live().filter(|(k, _)| k.pid != 0).map(|(k, _)| (k.cookie, k.pid, false));
    owners.owned().map(|(cookie, pid)| (cookie, pid, true)).chain(send_path).map(with).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: u32, local_port: u16, server: u8, protocol: u8) -> FlowKey {
        let mut remote_addr = [0u8; 16];
        remote_addr[15] = server;
        FlowKey {
            cookie: 0,
            local_addr: [0; 16],
            remote_addr,
            local_port,
            remote_port: 53,
            protocol,
            ip_version: 4,
            _pad: [0; 2],
            pid,
            _pad2: 0,
        }
    }

    #[test]
    fn dns_senders_name_one_process_per_port_and_server_and_guess_no_one_when_shared() {
        let keys = [
            key(10, 4000, 1, 17),
            key(10, 4000, 1, 17), // the same sender twice
            key(11, 5000, 1, 17),
            key(12, 5000, 1, 17), // another namespace, same port and server
            key(13, 6000, 1, IPPROTO_TCP), // DNS over TCP: its answers' questions are tallied
            key(0, 7000, 1, 17),  // a packet-hook key: no sender
        ];
        let s = dns_senders(keys.iter());
        let server = key(0, 0, 1, 0).remote_addr;
        assert_eq!(s.get(&(4000, server)), Some(&Some(10)));
        assert_eq!(s.get(&(5000, server)), Some(&None));
        assert_eq!((s.get(&(6000, server)), s.get(&(7000, server))), (Some(&Some(13)), None));
    }
}
