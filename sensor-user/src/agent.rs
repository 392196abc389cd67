//! `sluice run`: drain the kernel every tick, attribute, aggregate, print.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, Context, Result};
// Per-tick maps and sets keyed by flow keys and cookies: see flows.rs.
use foldhash::{HashMap, HashMapExt, HashSet};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
/// BPF_NOEXIST: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;
use sensor_common::{
    counter, maps, FlowCounters, FlowKey, SockInfo, COMM_LEN, DIR_EGRESS, DIR_INGRESS, DIR_UNKNOWN,
    ORIGIN_LISTENER, ORIGIN_PROCFS,
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
    process_table::{boottime_ns, ProcSource, ProcessTable, Procfs},
    naming::Namer,
    record,
    services::Catalog,
    sockets,
    spool::Spool,
    state,
};

/// Exec records kept per tick for the detector; beyond this an exec storm's
/// remainder is counted, not kept.
const MAX_EXECS_PER_TICK: usize = 20_000;
/// How often the ring buffer is drained when the kernel does not wake us.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// Entries per BPF_MAP_LOOKUP_BATCH call.
const BATCH: usize = 4096;

/// Every entry of a kernel hash map, in batches (`fd` is the map's own), else
/// one by one (before 5.6, or a kernel that refuses batches; said once if `say`).
fn read_map<K: aya::Pod, V: aya::Pod>(map: &BpfHashMap<MapData, K, V>, say: bool) -> Vec<(K, V)> {
    use aya::maps::IterableMap;
    match batch::lookup_all(map.map(), BATCH) {
        Ok(all) => all,
        Err(e) => {
            if say {
                eprintln!("sluice: batch map reads unavailable ({e}); reading kernel maps one entry at a time");
            }
            map.iter().filter_map(Result::ok).collect()
        }
    }
}

/// How long an unresolvable pre-existing socket waits before another /proc scan.
const UNRESOLVED_RETRY: Duration = Duration::from_secs(30);
/// At most one /proc scan for unknown socket owners per this long.
const SCAN_EVERY: Duration = Duration::from_secs(10);
/// Send-path flows idle this long are retired from the kernel map.
const IDLE_RETIRE: Duration = Duration::from_secs(300);
const IPPROTO_TCP: u8 = 6;
/// Every this many ticks, closed sockets that never carried traffic are swept
/// from the kernel's owner map (a full map walk, so not every tick).
const SWEEP_EVERY_TICKS: u64 = 12;
/// How often a sender's executable is checked for deletion.
const EXE_RECHECK: Duration = Duration::from_secs(10);
/// How long a retired socket's owner is remembered (for packets after close).
const OWNER_MEMORY: Duration = Duration::from_secs(300);

pub struct Agent {
    config: Config,
    sensor: Sensor,
    flows_map: BpfHashMap<MapData, FlowKey, FlowCounters>,
    socks_map: BpfHashMap<MapData, u64, SockInfo>,
    dirs_map: BpfHashMap<MapData, u64, u8>,
    counters: PerCpuArray<MapData, u64>,
    procs: ProcessTable,
    procfs: Procfs,
    tracker: DeltaTracker,
    /// Owners of sockets the kernel map no longer holds (retired or evicted).
    remembered: HashMap<u64, (Owner, Instant)>,
    unresolved: HashMap<u64, Instant>,
    /// When `resolve` last scanned /proc.
    last_scan: Option<Instant>,
    /// Whether the "cannot enter other network namespaces" notice was given.
    said_netns: bool,
    sink: Sink<Spool>,
    /// Output records dropped as last reported.
    output_dropped: u64,
    ctx: output::Context,
    detector: Detector,
    namer: Namer,
    recorder: Option<record::Writer<std::io::BufWriter<std::fs::File>>>,
    pending_execs: Vec<ProcInfo>,
    /// (pid, start) -> (executable deleted or memfd, when last checked).
    exe_gone: HashMap<(u32, u64), (bool, Instant)>,
    last_save: Instant,
    /// cgroup id -> cgroup v2 path (refreshed by a bounded walk on a miss).
    cgroup_paths: std::collections::HashMap<u64, String>,
    cgroup_walked_tick: u64,
    containers: container::Resolver,
    last_tick: Instant,
    last_counters: Vec<u64>,
    last_naming: crate::naming::Stats,
    pub stats: Stats,
    pub metrics: Metrics,
    /// `stats` as last published to `metrics` (they take increments).
    published: Stats,
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
        let dirs_map = BpfHashMap::try_from(take(&mut sensor, maps::DIRS)?)?;
        let counters = PerCpuArray::try_from(take(&mut sensor, maps::COUNTERS)?)?;
        let procfs = Procfs::default();
        let mut procs = ProcessTable::default();
        let seeded = procs.seed(&procfs, procfs.pids());
        eprintln!("sluice: process table seeded with {seeded} processes from /proc");
        let host_name = if config.agent.host_name.is_empty() { output::host_name() } else { config.agent.host_name.clone() };
        let ctx = output::Context { host_name, backend: sensor.backend.name() };
        let v1 = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| container::v1_mounted_in(&m));
        let containers = container::Resolver::new(config.containers.clone(), v1);
        let format = config.agent.format;
        let recorder = match record_to {
            Some(path) => {
                let f = std::fs::File::create(path).with_context(|| format!("creating record file {}", path.display()))?;
                Some(record::Writer::new(std::io::BufWriter::new(f), &ctx.host_name, ctx.backend)?)
            }
            None => None,
        };
        let metrics = Metrics::new();
        metrics.backend.get_or_create(&metrics::BackendLabel { backend: ctx.backend.to_string() }).set(1);
        metrics.map_capacity.get_or_create(&metrics::MapLabel { map: "flows".into() }).set(config.kernel.flows_max.into());
        metrics.map_capacity.get_or_create(&metrics::MapLabel { map: "sockets".into() }).set(config.kernel.sockets_max.into());
        let mut detector = Detector::new(config.detect.clone()).with_catalog(catalog.clone());
        let namer = Namer::new(catalog, config.destinations.dns_cache_max);
        restore_state(&mut config, &mut detector);
        let mut agent = Self {
            config,
            sensor,
            flows_map,
            socks_map,
            dirs_map,
            counters,
            procs,
            procfs,
            tracker: DeltaTracker::default(),
            remembered: HashMap::new(),
            unresolved: HashMap::new(),
            last_scan: None,
            said_netns: false,
            sink: Sink::new(out, format),
            output_dropped: 0,
            ctx,
            detector,
            namer,
            recorder,
            pending_execs: Vec::new(),
            exe_gone: HashMap::new(),
            last_save: Instant::now(),
            cgroup_paths: std::collections::HashMap::new(),
            cgroup_walked_tick: u64::MAX,
            containers,
            last_tick: Instant::now(),
            last_counters: vec![0; counter::LEN as usize],
            last_naming: Default::default(),
            stats: Stats::default(),
            metrics,
            published: Stats::default(),
        };
        match agent.seed_sockets() {
            Ok(n) => eprintln!("sluice: {n} sockets older than the sensor attributed through sock_diag and /proc"),
            Err(e) => eprintln!("sluice: cannot attribute pre-existing sockets (their bytes will show pid 0): {e:#}"),
        }
        Ok(agent)
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

    /// The kernel's record of `cookie`'s owner: from `socks` (this tick's batch
    /// read of the whole map) when given, else one lookup.
    fn sock_info(&self, cookie: u64, socks: Option<&HashMap<u64, SockInfo>>) -> Option<SockInfo> {
        match socks {
            Some(all) => all.get(&cookie).copied(),
            None => self.socks_map.get(&cookie, 0).ok(),
        }
    }

    /// Owner of `cookie`: the kernel's record, else one we remembered.
    fn owner(&self, cookie: u64, socks: Option<&HashMap<u64, SockInfo>>) -> Option<Owner> {
        if let Some(info) = self.sock_info(cookie, socks) {
            let mut o = owner_from(&info);
            o.start_ns = self.procs.incarnation(info.tgid, &crate::text::lossless(&info.comm), info.created_ns);
            return Some(o);
        }
        self.remembered.get(&cookie).map(|(o, _)| *o)
    }

    /// Attribute every socket that exists now through sock_diag and /proc. Run
    /// once right after attaching (hooks see every newer socket), so even a
    /// pre-existing connection that finishes within the first tick is named.
    pub fn seed_sockets(&mut self) -> Result<usize> {
        let found = self.dump_sockets()?;
        let inodes = sockets::inode_owners();
        let mut n = 0;
        for f in &found {
            if let Some(&pid) = inodes.get(&f.sock.inode).filter(|_| f.sock.inode != 0) {
                // Never override what a hook recorded in the owner's own context.
                if self.socks_map.get(&f.sock.cookie, 0).is_err() {
                    self.adopt(f, pid, BPF_NOEXIST);
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Every socket of every network namespace (`sockets::dump_everywhere`);
    /// namespaces it cannot enter are said once: their old sockets stay
    /// ownerless, and are still judged.
    fn dump_sockets(&mut self) -> Result<Vec<sockets::Found>> {
        let all = sockets::dump_everywhere()?;
        if let Some((ino, why)) = all.failed.first() {
            if !self.said_netns {
                self.said_netns = true;
                eprintln!(
                    "sluice: cannot list the sockets of {} other network namespace(s) (net:[{ino}]: {why}); their connections \
                     older than sluice are counted as an unknown owner's",
                    all.failed.len()
                );
            }
        }
        Ok(all.sockets)
    }

    /// Record `pid` as the owner of a socket found through sock_diag, in the
    /// kernel map (so later ticks need no scan) and in our own memory.
    fn adopt(&mut self, f: &sockets::Found, pid: u32, flags: u64) -> Owner {
        let s = &f.sock;
        let direction = if f.accepted { DIR_INGRESS } else { DIR_EGRESS };
        let p = self.procs.get(pid).cloned().or_else(|| self.procfs.read(pid));
        let mut comm = [0u8; COMM_LEN];
        if let Some(p) = &p {
            let n = p.name.len().min(COMM_LEN - 1);
            comm[..n].copy_from_slice(&p.name.as_bytes()[..n]);
            if self.procs.get(pid).is_none() {
                self.procs.insert(p.clone());
            }
        }
        let info = SockInfo {
            tgid: pid,
            tid: pid,
            uid: s.uid,
            gid: p.as_ref().map(|p| p.gid).unwrap_or(0),
            cgroup_id: p.as_ref().map(|p| p.cgroup_id).unwrap_or(0),
            created_ns: 0,
            closed_ns: 0,
            comm,
            family: 0,
            sock_type: 0,
            protocol: s.protocol as u16,
            origin: ORIGIN_PROCFS,
            direction,
            bound_port: 0,
            _pad: [0; 6],
        };
        // Best effort: if the kernel map is full the owner is still remembered here.
        let _ = self.socks_map.insert(s.cookie, info, flags);
        let owner = owner_from(&info);
        self.remembered.insert(s.cookie, (owner, Instant::now()));
        self.unresolved.remove(&s.cookie);
        self.stats.procfs_resolved += 1;
        owner
    }

    /// Fallback for sockets neither a hook nor the start-up snapshot saw (a race
    /// between the two, or an owner the LRU map evicted before we read it): a
    /// sock_diag dump and a walk of every process's fds, so at most one per
    /// `SCAN_EVERY` (with 50,000 processes a walk took seconds; `cargo xtask
    /// bench`, section 3). Cookies that wait are retried at the next scan.
    fn resolve(&mut self, cookies: &[u64]) -> HashMap<u64, Owner> {
        let now = Instant::now();
        let due: Vec<u64> = cookies
            .iter()
            .copied()
            .filter(|c| self.unresolved.get(c).is_none_or(|t| now.duration_since(*t) >= UNRESOLVED_RETRY))
            .collect();
        let mut found = HashMap::new();
        if due.is_empty() || self.last_scan.is_some_and(|t| now.duration_since(t) < SCAN_EVERY) {
            return found;
        }
        self.last_scan = Some(now);
        let diag = match self.dump_sockets() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("sluice: cannot list pre-existing sockets: {e:#}");
                for c in due {
                    self.unresolved.insert(c, now);
                }
                return found;
            }
        };
        let by_cookie: HashMap<u64, sockets::Found> = diag.iter().map(|f| (f.sock.cookie, *f)).collect();
        let inodes = sockets::inode_owners();
        for c in due {
            let hit = by_cookie.get(&c).filter(|f| f.sock.inode != 0).and_then(|f| inodes.get(&f.sock.inode).map(|pid| (*f, *pid)));
            match hit {
                Some((f, pid)) => {
                    found.insert(c, self.adopt(&f, pid, 0));
                }
                None => {
                    self.unresolved.insert(c, now);
                }
            }
        }
        found
    }

    /// One tick: snapshot, attribute, aggregate, emit, retire.
    pub fn tick(&mut self) -> Result<()> {
        let now = Instant::now();
        let window = now.duration_since(self.last_tick);
        self.last_tick = now;
        self.stats.ticks += 1;
        let at = SystemTime::now();

        let snapshot = read_map(&self.flows_map, self.stats.ticks == 1);
        let deltas = self.tracker.update(snapshot.iter().copied());

        // cgroup backend keys (pid 0): owner by socket cookie. Send-path keys
        // carry the sender's pid themselves.
        let active: HashSet<u64> = deltas.iter().filter(|d| d.key.pid == 0).map(|d| d.key.cookie).collect();
        // Send-path TCP direction: as the kernel recorded it in the flow at its
        // first send, else the DIRS map (a flow that only received).
        let moved: HashSet<FlowKey> =
            deltas.iter().filter(|d| d.key.pid != 0 && d.key.protocol == IPPROTO_TCP).map(|d| d.key).collect();
        let send_dirs: HashMap<FlowKey, u8> = snapshot
            .iter()
            .filter(|(k, _)| moved.contains(k))
            .map(|(k, c)| {
                let d = if c.direction != 0 { c.direction as u8 } else { self.dirs_map.get(&k.cookie, 0).unwrap_or(DIR_UNKNOWN) };
                (*k, d)
            })
            .collect();
        // Send-path backends: who sent from each local port to each DNS server,
        // for the queries dns_egress copied (it sees another socket identity).
        let dns_senders = dns_senders(snapshot.iter().map(|(k, _)| k));
        let mut owners: HashMap<u64, Owner> = HashMap::with_capacity(active.len());
        let mut unknown = Vec::new();
        // Owners are looked up for every cgroup-backend socket with a flow (active
        // ones to attribute, idle ones to retire), and the sweep reads them all:
        // past a few hundred, one batch read of SOCKS beats a lookup each.
        let cookies: HashSet<u64> = snapshot.iter().filter(|(k, _)| k.pid == 0).map(|(k, _)| k.cookie).collect();
        let sweep = self.stats.ticks.is_multiple_of(SWEEP_EVERY_TICKS);
        let socks_now: Option<HashMap<u64, SockInfo>> =
            (cookies.len() > 256 || sweep).then(|| read_map(&self.socks_map, false).into_iter().collect());
        for &c in &active {
            match self.owner(c, socks_now.as_ref()) {
                Some(o) => {
                    owners.insert(c, o);
                    // If socket churn makes the kernel's LRU evict this owner, the
                    // connection is still attributed from here.
                    self.remembered.insert(c, (o, now));
                }
                None => unknown.push(c),
            }
        }
        if !unknown.is_empty() {
            owners.extend(self.resolve(&unknown));
        }
        let procs = &self.procs;
        let namer = &mut self.namer;
        let unix_now = output::unix_secs(at);
        namer.expire(unix_now);
        let records = flows::aggregate(&deltas, |k| {
            if k.pid != 0 {
                let p = procs.get(k.pid);
                return Owner {
                    pid: k.pid,
                    uid: p.map(|p| p.uid).unwrap_or(0),
                    cgroup_id: p.map(|p| p.cgroup_id).unwrap_or(0),
                    // A datagram is sent by whoever sends it; TCP as the
                    // connection's state transitions said.
                    direction: if k.protocol == IPPROTO_TCP {
                        send_dirs.get(k).copied().unwrap_or(DIR_UNKNOWN)
                    } else {
                        DIR_EGRESS
                    },
                    attribution: Attribution::Kernel,
                    start_ns: 0,
                };
            }
            owners.get(&k.cookie).copied().unwrap_or(Owner {
                pid: 0,
                uid: 0,
                cgroup_id: 0,
                direction: DIR_UNKNOWN,
                attribution: Attribution::Unknown,
                start_ns: 0,
            })
        }, |k, ip| namer.destination(k, ip, unix_now));

        let ownerless: u64 = records.iter().filter(|r| r.owner.pid == 0).map(|r| r.volume.bytes_out).sum();
        self.metrics.ownerless_bytes.inc_by(ownerless);
        let senders: Vec<Sender> = records.iter().map(|r| self.sender(r.owner.pid, r.owner.start_ns, r.owner.cgroup_id)).collect();
        if self.config.agent.emit.flows() {
            for (r, s) in records.iter().zip(&senders) {
                if !self.config.flows.include_loopback && r.scope() == flows::Scope::Loopback {
                    continue;
                }
                let p = self.procs.get_at(r.owner.pid, r.owner.start_ns);
                let json = output::flow_json(&self.ctx, at, window, r, p, s.container.as_ref());
                self.sink
                    .record(&json, || output::flow_text(at, r, p))
                    .context("writing to stdout")?;
                self.stats.flow_records += 1;
            }
        }
        self.detect(at, window, &records, senders, &dns_senders)?;
        self.sink.flush().context("flushing stdout")?;

        if now.duration_since(self.last_save) >= self.config.state.save_every {
            self.save_state();
            self.last_save = now;
        }
        self.retire(&snapshot, &cookies, &active, socks_now.as_ref());
        self.retire_idle_sends();
        if let Some(all) = socks_now.filter(|_| sweep) {
            self.sweep_closed(&snapshot, all);
        }
        self.report_counters();
        let grace = (self.config.agent.tick * 2 + Duration::from_secs(5)).as_nanos() as u64;
        self.procs.reap(boottime_ns(), grace);
        self.publish(snapshot.len(), window);
        self.metrics.tick_done(now.elapsed(), unix_now);
        Ok(())
    }

    /// Bring the metrics up to date with this tick's stats.
    fn publish(&mut self, flows: usize, window: Duration) {
        let (m, s, p) = (&self.metrics, &self.stats, &mut self.published);
        // Events since the last publish: those of this tick.
        let events = s.events - p.events;
        m.kernel_events.inc_by(events);
        m.malformed_events.inc_by(s.decode_errors - p.decode_errors);
        m.flow_records.inc_by(s.flow_records - p.flow_records);
        m.kernel_events_per_second.set(events as f64 / window.as_secs_f64().max(1e-3));
        m.flows_tracked.set(flows as i64);
        m.map_entries.get_or_create(&metrics::MapLabel { map: "flows".into() }).set(flows as i64);
        m.processes_tracked.set(self.procs.len() as i64);
        *p = s.clone();
    }

    /// The cgroup v2 path of a cgroup id (what the kernel recorded for the
    /// owner, so it resolves after the process is gone): the id is the inode of
    /// the cgroup's directory, so a miss walks the cgroup2 tree once per tick.
    fn cgroup_path(&mut self, cgroup_id: u64) -> Option<String> {
        if cgroup_id == 0 {
            return None;
        }
        if let Some(p) = self.cgroup_paths.get(&cgroup_id) {
            return Some(p.clone());
        }
        if self.cgroup_walked_tick != self.stats.ticks {
            self.cgroup_walked_tick = self.stats.ticks;
            if let Ok(root) = crate::kernel::mounts::cgroup2_mount() {
                self.cgroup_paths = crate::kernel::mounts::cgroup_ids(&root, 50_000);
            }
        }
        self.cgroup_paths.get(&cgroup_id).cloned()
    }

    /// Where a sender runs: its cgroup v2 path and container, if any.
    fn sender(&mut self, pid: u32, incarnation: u64, cgroup_id: u64) -> Sender {
        let cgroup = self.cgroup_path(cgroup_id);
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
                let (pid, start_ns) = match self.owner(cookie, None) {
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
        senders: Vec<Sender>,
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
        let input = TickInput {
            dns,
            t: output::unix_secs(at),
            window_s: window.as_secs_f64(),
            execs: std::mem::take(&mut self.pending_execs),
            flows: records.iter().zip(senders).enumerate().map(|(i, (r, sender))| self.flow_obs(i, r, sender, records, &joins)).collect(),
        };
        if let Some(rec) = &mut self.recorder {
            if !input.flows.is_empty() || !input.execs.is_empty() || !input.dns.is_empty() {
                rec.tick(&input).context("writing the record file")?;
            }
        }
        let alerts = self.detector.tick(&input);
        let evicted = self.detector.evictions();
        self.metrics.detector_evictions.inc_by(evicted.saturating_sub(self.metrics.detector_evictions.get()));
        if self.config.agent.emit.alerts() {
            for a in &alerts {
                self.metrics.alerts.get_or_create(&metrics::RuleLabel { rule: a.rule.id.to_string() }).inc();
                let json = output::alert_json(&self.ctx, a);
                self.sink.record(&json, || output::alert_text(a)).context("writing to stdout")?;
                self.stats.alerts += 1;
            }
        }
        Ok(())
    }

    /// Delete the kernel entries of sockets closed for a while whose flows are
    /// idle, remembering their owners for any straggling packets.
    fn retire(
        &mut self,
        snapshot: &[(FlowKey, FlowCounters)],
        cookies: &HashSet<u64>,
        active: &HashSet<u64>,
        socks: Option<&HashMap<u64, SockInfo>>,
    ) {
        let now_ns = boottime_ns();
        let after = self.config.flows.retire_after.as_nanos() as u64;
        // Only cgroup-backend keys (pid 0) have owners in SOCKS to retire by;
        // send-path keys are retired by idleness (retire_idle_sends).
        let mut retire: HashMap<u64, SockInfo> = HashMap::new();
        for &c in cookies {
            if active.contains(&c) {
                continue;
            }
            if let Some(info) = self.sock_info(c, socks) {
                if info.closed_ns != 0 && now_ns.saturating_sub(info.closed_ns) >= after {
                    retire.insert(c, info);
                }
            }
        }
        let now = Instant::now();
        // One pass over the snapshot, not one per retired socket.
        for (k, _) in snapshot.iter().filter(|(k, _)| k.pid == 0 && retire.contains_key(&k.cookie)) {
            let _ = self.flows_map.remove(k);
            self.tracker.forget(k);
        }
        for (c, info) in retire {
            self.remembered.insert(c, (owner_from(&info), now));
            let _ = self.socks_map.remove(&c);
            self.stats.sockets_retired += 1;
        }
        self.remembered.retain(|_, (_, t)| now.duration_since(*t) < OWNER_MEMORY);
        self.unresolved.retain(|_, t| now.duration_since(*t) < OWNER_MEMORY);
    }

    /// Send-path flows have no release hook: drop the ones idle for a while (a
    /// socket that speaks again starts a fresh entry, counted from zero).
    fn retire_idle_sends(&mut self) {
        let ticks = (IDLE_RETIRE.as_secs_f64() / self.config.agent.tick.as_secs_f64()).ceil().max(1.0) as u32;
        for k in self.tracker.idle_for(ticks) {
            if k.pid != 0 {
                let _ = self.flows_map.remove(&k);
                self.tracker.forget(&k);
            }
        }
    }

    /// Remove owner entries of sockets closed for a while that have no flow
    /// (failed connects, sockets that never sent): LRU would get them in the
    /// end, but only by evicting live sockets' owners first.
    fn sweep_closed(&mut self, snapshot: &[(FlowKey, FlowCounters)], socks: HashMap<u64, SockInfo>) {
        let now_ns = boottime_ns();
        let after = self.config.flows.retire_after.as_nanos() as u64;
        let with_flows: HashSet<u64> = snapshot.iter().map(|(k, _)| k.cookie).collect();
        let mut entries = 0i64;
        let stale: Vec<u64> = socks
            .into_iter()
            .inspect(|_| entries += 1)
            .filter(|(c, info)| {
                info.closed_ns != 0 && now_ns.saturating_sub(info.closed_ns) >= after && !with_flows.contains(c)
            })
            .map(|(c, _)| c)
            .collect();
        self.metrics.map_entries.get_or_create(&metrics::MapLabel { map: "sockets".into() }).set(entries - stale.len() as i64);
        for c in stale {
            let _ = self.socks_map.remove(&c);
            self.stats.sockets_retired += 1;
        }
    }

    /// Kernel-side drops and failures, summed over CPUs; reported when they move.
    fn report_counters(&mut self) {
        let mut moved = Vec::new();
        for i in 0..counter::LEN {
            let Ok(per_cpu) = self.counters.get(&i, 0) else { continue };
            let total: u64 = per_cpu.iter().sum();
            let prev = self.last_counters[i as usize];
            if total != prev {
                let delta = total.saturating_sub(prev);
                let name = counter::NAMES[i as usize];
                self.metrics.kernel_counters.get_or_create(&metrics::NameLabel { name: name.to_string() }).inc_by(delta);
                if name.starts_with("ringbuf_drop") {
                    self.metrics.ringbuf_drops.inc_by(delta);
                }
                moved.push(format!("{}={} (+{})", counter::NAMES[i as usize], total, total.saturating_sub(prev)));
                self.last_counters[i as usize] = total;
            }
        }
        if self.tracker.vanished > 0 {
            self.metrics.flows_evicted.inc_by(self.tracker.vanished);
            moved.push(format!("flows_evicted={}", self.tracker.vanished));
            self.tracker.vanished = 0;
        }
        let profile = self.sensor.retprobes.first().map(|(_, p)| crate::kernel::retprobe::Retprobe::profile(p.tracefs())).unwrap_or_default();
        for (func, probe) in &mut self.sensor.retprobes {
            let missed = probe.newly_missed(&profile);
            if missed > 0 {
                // Each miss is a send whose return (its byte count) was not seen.
                self.metrics.kretprobe_missed.get_or_create(&metrics::NameLabel { name: func.to_string() }).inc_by(missed);
                moved.push(format!("kretprobe_missed_{func}={missed} (sends whose bytes were not counted)"));
            }
        }
        if self.tracker.recreated > 0 {
            self.metrics.flows_recreated.inc_by(self.tracker.recreated);
            moved.push(format!("flows_recreated={}", self.tracker.recreated));
            self.tracker.recreated = 0;
        }
        if !moved.is_empty() {
            eprintln!("sluice: kernel counters: {}", moved.join(" "));
        }
        let out = self.sink.get_ref();
        let dropped = out.dropped();
        if dropped != self.output_dropped {
            let why = out.error().map(|e| format!("the output failed ({e})")).unwrap_or_else(|| "the output is not keeping up".into());
            eprintln!(
                "sluice: {why}: dropped {} records this tick, {dropped} in all; detection and learning go on",
                dropped - self.output_dropped
            );
            self.metrics.output_dropped.inc_by(dropped - self.output_dropped);
            self.output_dropped = dropped;
        }
        if self.namer.stats != self.last_naming {
            for ((name, now), (_, before)) in self
                .namer
                .stats
                .named()
                .into_iter()
                .zip(self.last_naming.named())
            {
                if now > before {
                    self.metrics
                        .naming
                        .get_or_create(&metrics::NameLabel {
                            name: name.to_string(),
                        })
                        .inc_by(now - before);
                }
            }
            self.last_naming = self.namer.stats.clone();
            eprintln!("sluice: naming: {}", naming_summary(&self.namer));
        }
    }

    fn save_state(&mut self) {
        if self.config.state.path.is_empty() {
            return;
        }
        let st = state::State {
            sluice_state: state::STATE_VERSION,
            saved_at: output::unix_secs(SystemTime::now()),
            baselines: self.detector.baselines.clone(),
            habits: self.detector.habits.clone(),
            alerts: self.detector.alert_memory(),
        };
        if let Err(e) = state::save(std::path::Path::new(&self.config.state.path), &st) {
            eprintln!("sluice: {e}; learned baselines are kept in memory only");
        }
    }

    /// Kernel counters as (name, value), for `Drop`-time summaries and tests.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        counter::NAMES.iter().copied().zip(self.last_counters.iter().copied()).collect()
    }

    /// Run until SIGINT/SIGTERM; the last partial tick is flushed before return.
    pub async fn run(mut self) -> Result<Stats> {
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
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
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
        self.tick()?;
        self.save_state();
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

/// Where a flow's sender runs.
struct Sender {
    cgroup: Option<String>,
    container: Option<Container>,
}

/// Load learned state, saying on stderr what happened; never fatal. A file that
/// exists but cannot be read is never overwritten: saving is switched off for
/// this run (and said so).
fn restore_state(config: &mut Config, detector: &mut Detector) {
    if config.state.path.is_empty() {
        return;
    }
    let path = std::path::Path::new(&config.state.path);
    let now = output::unix_secs(SystemTime::now());
    match state::load(path, now) {
        Ok(state::Loaded::Fresh) => eprintln!("sluice: no state at {}: learning from scratch", path.display()),
        Ok(state::Loaded::Restored(s)) => apply_state(detector, *s, "", path),
        Ok(state::Loaded::Migrated(s)) => {
            apply_state(detector, *s, "state migrated from the previous format (per-command baselines are relearned): ", path)
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
}

fn apply_state(detector: &mut Detector, s: state::State, how: &str, path: &std::path::Path) {
    eprintln!(
        "sluice: {how}restored {} baselines and the habits of {} programs from {}",
        s.baselines.models.len(),
        s.habits.by_exe.len(),
        path.display()
    );
    detector.baselines = s.baselines;
    detector.habits = s.habits;
    detector.restore_alert_memory(s.alerts);
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

/// What naming saw so far, for stderr: parsed, unnamed and dropped inputs.
fn naming_summary(n: &Namer) -> String {
    let (heads, sockets, addresses) = n.tracked();
    let counts: Vec<String> = n
        .stats
        .named()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "{} (tracking {heads} stream starts, {sockets} named sockets, {addresses} DNS addresses)",
        counts.join(" ")
    )
}

fn owner_from(info: &SockInfo) -> Owner {
    Owner {
        pid: info.tgid,
        uid: info.uid,
        cgroup_id: info.cgroup_id,
        direction: info.direction,
        attribution: match info.origin {
            ORIGIN_LISTENER => Attribution::Listener,
            ORIGIN_PROCFS => Attribution::Procfs,
            _ => Attribution::Kernel,
        },
        start_ns: 0,
    }
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
