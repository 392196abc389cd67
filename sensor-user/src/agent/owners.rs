//! Who owns each socket the cgroup backend counts (the send-path backends
//! carry the sender in the flow key itself): the kernel's owner map first,
//! then owners remembered after the kernel let go of them, then, for sockets
//! no hook saw (older than the sensor, or evicted before they were read), a
//! rate-limited sock_diag + /proc scan.
//!
//! The agent keeps a mirror of the kernel's owner map, brought up to date each
//! tick from the cookies the kernel marked as written (`SOCKS_CHANGED`), not
//! by reading the whole map (100k entries were a sixth of a tick's CPU); it
//! reads it whole on sweep ticks, or when the marks overflowed. An owner the
//! kernel's LRU evicts under socket churn stays in the mirror.
//!
//! The decisions (which sockets are retired, which owner entries are swept,
//! which unknown cookies are due a scan) are pure functions over a snapshot;
//! `Owners` applies them through two small interfaces, the kernel map
//! (`OwnerMap`) and the scan (`SocketScan`), which the tests below replace
//! with doubles.

use std::time::{Duration, Instant};

use anyhow::Result;
use foldhash::{HashMap, HashMapExt, HashSet};
use sensor_common::{ListenKey, ListenValue, SockInfo, COMM_LEN, DIR_EGRESS, DIR_INGRESS, DIR_UNKNOWN, ORIGIN_LISTENER, ORIGIN_PROCFS};

use crate::{
    flows::{Attribution, Owner},
    process_table::{ProcSource, ProcessTable},
    sockets,
};

/// A flow's protocol and addresses (`FlowKey`'s), as a namespace's
/// `/proc/<pid>/net` listing shows its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub local: sockets::Endpoint,
    pub remote: sockets::Endpoint,
    pub protocol: u8,
}

impl Tuple {
    pub fn of(k: &sensor_common::FlowKey) -> Self {
        Tuple { local: (k.local_addr, k.local_port), remote: (k.remote_addr, k.remote_port), protocol: k.protocol }
    }
}

/// The one socket the listings of namespaces the scan could not enter show
/// at `t`'s addresses (an unconnected UDP socket by its local end), as a
/// `Found` with `cookie`. None when none, or more than one, does: two pods'
/// namespaces can hold the same addresses, and no owner is guessed.
fn by_address(cookie: u64, t: &Tuple, listed: &[(u64, sockets::Listed)]) -> Option<sockets::Found> {
    let unspecified = |a: &[u8; 16]| crate::flows::ip_of(a).is_unspecified();
    let local_matches = |l: &sockets::Listed| l.local.1 == t.local.1 && (l.local.0 == t.local.0 || unspecified(&l.local.0));
    let remote_matches = |l: &sockets::Listed| l.remote == t.remote || (t.protocol == IPPROTO_UDP && l.remote.1 == 0 && unspecified(&l.remote.0));
    let mut hits = listed.iter().filter(|(_, l)| l.protocol == t.protocol && l.state != TCP_LISTEN_STATE && local_matches(l) && remote_matches(l));
    let (ns, l) = hits.next()?;
    if hits.any(|(_, other)| other.inode != l.inode) {
        return None;
    }
    let accepted = t.protocol == IPPROTO_TCP
        && listed.iter().any(|(n, x)| n == ns && x.protocol == IPPROTO_TCP && x.state == TCP_LISTEN_STATE && x.local.1 == l.local.1);
    Some(sockets::Found {
        sock: sockets::DiagSocket { cookie, inode: l.inode, uid: l.uid, protocol: l.protocol, state: l.state, local_port: l.local.1 },
        accepted,
        // The namespace's cookie is not in the listing; 0 is "cannot tell".
        netns: 0,
    })
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCP_LISTEN_STATE: u8 = sockets::TCP_LISTEN;

/// BPF_NOEXIST: insert only if the key is absent.
pub const BPF_NOEXIST: u64 = 1;
/// How long an unresolvable pre-existing socket waits before another scan.
const UNRESOLVED_RETRY: Duration = Duration::from_secs(30);
/// At most one scan for unknown socket owners per this long (with 50,000
/// processes a /proc walk took seconds; `cargo xtask bench`, section 3).
const SCAN_EVERY: Duration = Duration::from_secs(10);
/// At most this many cookies wait for the next scan (past it, their bytes
/// are judged as an unknown owner's at once).
const NEXT_MAX: usize = 65_536;
/// How long a retired socket's owner is remembered (for packets after close).
const OWNER_MEMORY: Duration = Duration::from_secs(300);

/// The kernel's socket-owner map (`SOCKS`) and its change marks, as
/// ownership uses them.
pub trait OwnerMap {
    fn get(&self, cookie: u64) -> Option<SockInfo>;
    /// Best effort: a full map refuses, and the owner is still remembered.
    fn insert(&mut self, cookie: u64, info: SockInfo, flags: u64);
    fn remove(&mut self, cookie: u64);
    /// Every entry, handed to `f` (batch reads where the kernel has them).
    fn read_all(&self, f: &mut dyn FnMut(u64, &SockInfo));
    /// The cookies marked as written since the last call, unmarked as they
    /// are read. `None`: changes may have been lost (the marks were full, or
    /// cannot be read), so only a whole read is exact.
    fn take_changed(&mut self) -> Option<Vec<u64>>;
    /// The `LISTENERS` entry for `key`, if any.
    fn listener(&self, key: ListenKey) -> Option<ListenValue>;
    /// Best effort, as `insert`.
    fn set_listener(&mut self, key: ListenKey, value: ListenValue);
    /// The cgroup the kernel saw `cookie`'s packets charged to, for a socket
    /// it had no owner entry for (`SKB_CGROUP`).
    fn socket_cgroup(&self, _cookie: u64) -> Option<u64> {
        None
    }
}

/// A socket whose owner no record or scan placed: its bytes are still
/// judged (fail closed), as an unknown process's.
pub const UNKNOWN_OWNER: Owner = Owner { pid: 0, uid: 0, cgroup_id: 0, direction: DIR_UNKNOWN, attribution: Attribution::Unknown, start_ns: 0 };

/// `SOCKS`, `SOCKS_CHANGED`, `LISTENERS` and `SKB_CGROUP` in the kernel.
pub struct KernelOwners {
    pub socks: aya::maps::HashMap<aya::maps::MapData, u64, SockInfo>,
    pub changed: aya::maps::HashMap<aya::maps::MapData, u64, u8>,
    pub listeners: aya::maps::HashMap<aya::maps::MapData, ListenKey, ListenValue>,
    pub skb_cgroup: aya::maps::HashMap<aya::maps::MapData, u64, u64>,
}

impl OwnerMap for KernelOwners {
    fn get(&self, cookie: u64) -> Option<SockInfo> {
        self.socks.get(&cookie, 0).ok()
    }
    fn insert(&mut self, cookie: u64, info: SockInfo, flags: u64) {
        let _ = self.socks.insert(cookie, info, flags);
    }
    fn remove(&mut self, cookie: u64) {
        let _ = self.socks.remove(&cookie);
    }
    fn read_all(&self, f: &mut dyn FnMut(u64, &SockInfo)) {
        // A read failing part-way leaves the rest as last mirrored.
        let _ = crate::kernel::batch::read_each(&self.socks, false, |c: &u64, i: &SockInfo| f(*c, i));
    }
    fn take_changed(&mut self) -> Option<Vec<u64>> {
        use aya::maps::IterableMap;
        let taken = crate::kernel::batch::take_all::<u64, u8>(self.changed.map(), 4096).ok()?;
        // Full: an insert may have failed since the last drain.
        (taken.len() < sensor_common::maps::SOCKS_CHANGED_MAX as usize).then(|| taken.into_iter().map(|(c, _)| c).collect())
    }
    fn listener(&self, key: ListenKey) -> Option<ListenValue> {
        self.listeners.get(&key, 0).ok()
    }
    fn set_listener(&mut self, key: ListenKey, value: ListenValue) {
        let _ = self.listeners.insert(key, value, 0);
    }
    fn socket_cgroup(&self, cookie: u64) -> Option<u64> {
        self.skb_cgroup.get(&cookie, 0).ok()
    }
}

/// Past this many marked changes in a tick, one whole read is cheaper than
/// a lookup each.
const CHANGED_LOOKUPS_MAX: usize = 8192;

/// What a scan found: every socket of every network namespace
/// (`sockets::dump_everywhere`), and socket inode -> the pid holding it
/// (`sockets::inode_owners`, a walk of every /proc/<pid>/fd).
pub struct Scan {
    pub sockets: sockets::Everywhere,
    pub holders: std::collections::HashMap<u32, u32>,
    /// How long it took (for the metrics).
    pub took: Duration,
}

/// The sockets that exist now, and which process holds each.
pub trait SocketScan {
    /// Scan on this thread (once, at start).
    fn scan(&mut self) -> Result<Scan>;
    /// Start a scan in the background, unless one is running; whether one
    /// is running now.
    fn start(&mut self) -> bool;
    /// The background scan's result, once it is done.
    fn finished(&mut self) -> Option<Result<Scan>>;
}

/// The real scan. In the background it runs on a thread of its own: with
/// 50,000 processes the /proc walk took seconds, and ticks (and the ring
/// buffer's drain) went on only after it (`cargo xtask bench`, section 3).
#[derive(Default)]
pub struct LiveScan {
    running: Option<std::thread::JoinHandle<Result<Scan>>>,
}

fn live_scan() -> Result<Scan> {
    let t = Instant::now();
    Ok(Scan { sockets: sockets::dump_everywhere()?, holders: sockets::inode_owners(), took: t.elapsed() })
}

impl SocketScan for LiveScan {
    fn scan(&mut self) -> Result<Scan> {
        live_scan()
    }
    fn start(&mut self) -> bool {
        if self.running.is_none() {
            match std::thread::Builder::new().name("sluice-scan".into()).spawn(live_scan) {
                Ok(h) => self.running = Some(h),
                Err(e) => eprintln!("sluice: cannot start the socket scan ({e}); unknown owners wait for the next try"),
            }
        }
        self.running.is_some()
    }
    fn finished(&mut self) -> Option<Result<Scan>> {
        let h = self.running.take_if(|h| h.is_finished())?;
        Some(h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the socket scan thread panicked"))))
    }
}

pub struct Owners<M, S> {
    pub map: M,
    scan: S,
    /// The kernel's owner entries as of this tick's `sync`, and owners it
    /// evicted since (until their socket is retired or swept).
    mirror: HashMap<u64, SockInfo>,
    /// Whether the mirror has had its first whole read.
    synced: bool,
    /// Owners of sockets the kernel map no longer holds (retired or evicted).
    remembered: HashMap<u64, (Owner, Instant)>,
    /// Cookies a scan could not place, and when it tried.
    unresolved: HashMap<u64, Instant>,
    /// Cookies the background scan in flight is for (empty: none running).
    waiting: HashSet<u64>,
    /// Cookies due a scan while one ran or within `SCAN_EVERY` of the last:
    /// the next scan's, at most `NEXT_MAX`.
    next: HashSet<u64>,
    last_scan: Option<Instant>,
    /// Whether the "cannot enter other network namespaces" notice was given.
    said_netns: bool,
    /// The addresses of cookies waiting for a scan (`note_tuple`), to find
    /// them in the listings of namespaces the scan cannot enter.
    tuples: HashMap<u64, Tuple>,
    /// Owners placed by a scan, and sockets retired, since the start.
    pub resolved: u64,
    pub retired: u64,
    /// How long each background scan finished since the last `take_scan_times` took.
    scan_times: Vec<Duration>,
}

impl<M: OwnerMap, S: SocketScan> Owners<M, S> {
    pub fn new(map: M, scan: S) -> Self {
        Self {
            map,
            scan,
            mirror: HashMap::new(),
            synced: false,
            remembered: HashMap::new(),
            unresolved: HashMap::new(),
            waiting: HashSet::default(),
            next: HashSet::default(),
            last_scan: None,
            said_netns: false,
            tuples: HashMap::new(),
            resolved: 0,
            retired: 0,
            scan_times: Vec::new(),
        }
    }

    /// Whether a background scan is running.
    pub fn scanning(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// How many unknown sockets wait for the scan running, or the next.
    pub fn waiting(&self) -> usize {
        self.waiting.len() + self.next.len()
    }

    /// The durations of the background scans finished since the last call.
    pub fn take_scan_times(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.scan_times)
    }

    /// Bring the mirror up to date with the kernel: the entries marked as
    /// written since the last tick, or all of them when `full` (sweep ticks),
    /// on the first tick, or when marks were lost. A whole read also returns
    /// the cookies the kernel holds (for the sweep).
    pub fn sync(&mut self, full: bool) -> Option<HashSet<u64>> {
        let changed = if full || !self.synced { None } else { self.map.take_changed().filter(|c| c.len() <= CHANGED_LOOKUPS_MAX) };
        match changed {
            Some(cookies) => {
                for c in cookies {
                    // Gone already (evicted, or retired by us): the mirror keeps what it knew.
                    if let Some(info) = self.map.get(c) {
                        self.mirror.insert(c, info);
                    }
                }
                None
            }
            None => {
                // Marks made before this read are covered by it.
                let _ = self.map.take_changed();
                let mut held = HashSet::default();
                let mirror = &mut self.mirror;
                self.map.read_all(&mut |c, i| {
                    mirror.insert(c, *i);
                    held.insert(c);
                });
                self.synced = true;
                Some(held)
            }
        }
    }

    /// Look `cookie` up in the kernel now (a socket made since the sync) and
    /// mirror it; whether the kernel had it.
    pub fn fetch(&mut self, cookie: u64) -> bool {
        let Some(info) = self.map.get(cookie) else { return false };
        self.mirror.insert(cookie, info);
        true
    }

    /// Every socket the mirror has an owner for: (cookie, owning tgid).
    pub fn owned(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.mirror.iter().map(|(c, i)| (*c, i.tgid))
    }

    /// The kernel's record of `cookie`'s owner, as of this tick's `sync`.
    pub fn info(&self, cookie: u64) -> Option<SockInfo> {
        self.mirror.get(&cookie).copied()
    }

    /// Owner of `cookie`: the kernel's record (placed on the right holder of
    /// a reused pid), else one remembered.
    pub fn owner(&self, cookie: u64, procs: &ProcessTable) -> Option<Owner> {
        if let Some(info) = self.info(cookie) {
            let mut o = owner_from(&info);
            // Only a pid whose previous holder is still kept can be reused
            // (and the comm is decoded only then: this runs per flow per tick).
            if procs.has_departed(info.tgid) {
                o.start_ns = procs.incarnation(info.tgid, &crate::text::lossless(&info.comm), info.created_ns);
            }
            return Some(o);
        }
        self.remembered.get(&cookie).map(|(o, _)| *o)
    }

    /// The addresses of an unknown `cookie`'s flow, for the next scan.
    pub fn note_tuple(&mut self, cookie: u64, tuple: Tuple) {
        if self.tuples.len() >= NEXT_MAX && !self.tuples.contains_key(&cookie) {
            self.tuples.clear();
        }
        self.tuples.insert(cookie, tuple);
    }

    /// What is known of a socket no record or scan placed: the cgroup its
    /// packets were charged to, so its container (a pod's connection older
    /// than the agent, in a network namespace the scan may not enter), with
    /// the process unknown.
    pub fn unknown_owner(&self, cookie: u64) -> Owner {
        Owner { cgroup_id: self.map.socket_cgroup(cookie).unwrap_or(0), ..UNKNOWN_OWNER }
    }

    /// Attribute every socket that exists now. Run once right after attaching
    /// (hooks see every newer socket), so even a pre-existing connection that
    /// finishes within the first tick is named. Never overrides what a hook
    /// recorded in the owner's own context.
    ///
    /// Listening sockets also become `LISTENERS` entries: no hook saw them
    /// bound, and without one the kernel cannot hand the connections they
    /// accept from now on to their owner (each would be unknown until a scan,
    /// and one shorter than that stayed unknown).
    pub fn seed(&mut self, procs: &mut ProcessTable, procfs: &impl ProcSource, now: Instant) -> Result<usize> {
        let scan = self.scan.scan()?;
        let found = self.sockets_of(scan.sockets);
        let holder = |f: &sockets::Found| scan.holders.get(&f.sock.inode).copied().filter(|_| f.sock.inode != 0);
        let mut n = 0;
        for f in &found {
            if let Some(pid) = holder(f) {
                if self.map.get(f.sock.cookie).is_none() {
                    self.adopt(f, pid, BPF_NOEXIST, procs, procfs, now);
                    n += 1;
                }
            }
        }
        for (f, pid, ambiguous) in listeners_to_seed(&found, holder) {
            let owner = adopted_info(&f, pid, procs.get(pid));
            let key = ListenKey { port: f.sock.local_port, protocol: f.sock.protocol.into() };
            let seen = ListenValue { cookie: f.sock.cookie, owner, netns: f.netns, ambiguous: ambiguous.into(), _pad: 0 };
            if let Some(v) = merge_listener(self.map.listener(key), seen) {
                self.map.set_listener(key, v);
            }
        }
        Ok(n)
    }

    /// The scan's sockets; namespaces it cannot enter are said once (their
    /// old sockets stay ownerless, and are still judged).
    fn sockets_of(&mut self, all: sockets::Everywhere) -> Vec<sockets::Found> {
        if let Some((ino, why)) = all.failed.first() {
            if !self.said_netns {
                self.said_netns = true;
                eprintln!(
                    "sluice: cannot list the sockets of {} other network namespace(s) with sock_diag (net:[{ino}]: {why}); their \
                     connections older than sluice are matched by address to /proc/<pid>/net there, else counted as an unknown owner's",
                    all.failed.len()
                );
            }
        }
        all.sockets
    }

    /// Record `pid` as the owner of a socket the scan found, in the kernel
    /// map (so later ticks need no scan) and here.
    fn adopt(&mut self, f: &sockets::Found, pid: u32, flags: u64, procs: &mut ProcessTable, procfs: &impl ProcSource, now: Instant) -> Owner {
        let p = procs.get(pid).cloned().or_else(|| procfs.read(pid));
        if let Some(p) = p.as_ref().filter(|_| procs.get(pid).is_none()) {
            procs.insert(p.clone());
        }
        let info = adopted_info(f, pid, p.as_ref());
        self.map.insert(f.sock.cookie, info, flags);
        if flags != BPF_NOEXIST || !self.mirror.contains_key(&f.sock.cookie) {
            self.mirror.insert(f.sock.cookie, info);
        }
        let owner = owner_from(&info);
        self.remembered.insert(f.sock.cookie, (owner, now));
        self.unresolved.remove(&f.sock.cookie);
        self.tuples.remove(&f.sock.cookie);
        self.resolved += 1;
        owner
    }

    /// Owners for `cookies` no record placed (a race between the hooks and
    /// the start-up scan, or an owner the LRU evicted before it was read).
    /// The scan runs in the background, at most one per `SCAN_EVERY`: this
    /// returns at once, with what a scan that finished since placed; a
    /// cookie it could not place waits `UNRESOLVED_RETRY` for the next.
    /// A cookie due while a scan runs (a socket handed to a process during
    /// the walk) or within `SCAN_EVERY` of the last one is the next scan's.
    /// `waiting_on` tells which cookies the scan in flight, or the next, is for.
    pub fn resolve(&mut self, cookies: &[u64], procs: &mut ProcessTable, procfs: &impl ProcSource, now: Instant) -> HashMap<u64, Owner> {
        let mut found = HashMap::new();
        if let Some(result) = self.scan.finished() {
            let asked: Vec<u64> = self.waiting.drain().chain(cookies.iter().copied()).collect();
            match result {
                Ok(scan) => {
                    self.scan_times.push(scan.took);
                    self.place(scan, &asked, procs, procfs, now, &mut found)
                }
                Err(e) => {
                    eprintln!("sluice: cannot list pre-existing sockets: {e:#}");
                    self.unresolved.extend(asked.into_iter().map(|c| (c, now)));
                }
            }
        }
        let due: Vec<u64> =
            due_for_scan(cookies, &self.unresolved, now).into_iter().filter(|c| !found.contains_key(c) && self.info(*c).is_none()).collect();
        let recent = self.last_scan.is_some_and(|t| now.duration_since(t) < SCAN_EVERY);
        for c in due {
            if self.next.len() < NEXT_MAX && !self.waiting.contains(&c) {
                self.next.insert(c);
            }
        }
        // One a hook has recorded since it was queued needs no scan (and a
        // scan must not overwrite what the hook saw).
        let (mirror, remembered) = (&self.mirror, &self.remembered);
        self.next.retain(|c| !mirror.contains_key(c) && !remembered.contains_key(c));
        if !self.next.is_empty() && self.waiting.is_empty() && !recent {
            self.last_scan = Some(now);
            let due = std::mem::take(&mut self.next);
            if self.scan.start() {
                self.waiting = due;
            } else {
                self.unresolved.extend(due.into_iter().map(|c| (c, now)));
            }
        }
        found
    }

    /// Whether the scan in flight, or the next one, may still place `cookie`.
    pub fn waiting_on(&self, cookie: u64) -> bool {
        self.waiting.contains(&cookie) || self.next.contains(&cookie)
    }

    /// Adopt the owners `scan` found for `asked`; mark the rest unresolved.
    fn place(&mut self, mut scan: Scan, asked: &[u64], procs: &mut ProcessTable, procfs: &impl ProcSource, now: Instant, found: &mut HashMap<u64, Owner>) {
        let holders = scan.holders;
        let listed = std::mem::take(&mut scan.sockets.listed);
        let by_cookie: HashMap<u64, sockets::Found> = self.sockets_of(scan.sockets).into_iter().map(|f| (f.sock.cookie, f)).collect();
        for &c in asked {
            if found.contains_key(&c) {
                continue;
            }
            let socket = by_cookie.get(&c).copied().or_else(|| self.tuples.get(&c).and_then(|t| by_address(c, t, &listed)));
            let hit = socket.filter(|f| f.sock.inode != 0).and_then(|f| holders.get(&f.sock.inode).map(|pid| (f, *pid)));
            match hit {
                Some((f, pid)) => {
                    found.insert(c, self.adopt(&f, pid, 0, procs, procfs, now));
                }
                None => {
                    self.unresolved.insert(c, now);
                }
            }
        }
    }

    /// Retire the kernel entries of sockets closed for `after` whose flows
    /// are idle (`cookies` with a flow, `active` ones moved this tick),
    /// remembering their owners for straggling packets. Returns the retired
    /// cookies: the caller drops their flows.
    pub fn retire(&mut self, cookies: &HashSet<u64>, active: &HashSet<u64>, now_ns: u64, after: Duration, now: Instant) -> HashSet<u64> {
        let retire = to_retire(cookies, active, |c| self.info(c), now_ns, after);
        let mut gone = HashSet::default();
        for (c, info) in retire {
            self.remembered.insert(c, (owner_from(&info), now));
            self.map.remove(c);
            self.mirror.remove(&c);
            self.retired += 1;
            gone.insert(c);
        }
        self.remembered.retain(|_, (_, t)| now.duration_since(*t) < OWNER_MEMORY);
        self.unresolved.retain(|_, t| now.duration_since(*t) < OWNER_MEMORY);
        gone
    }

    /// Remove owner entries of sockets closed for `after` that have no flow
    /// (failed connects, sockets that never sent): LRU would get them in the
    /// end, but only by evicting live sockets' owners first. `held` is what a
    /// whole read (`sync`) found in the kernel; mirrored owners the kernel
    /// evicted go too once no flow needs them. Returns the entries left.
    pub fn sweep(&mut self, held: &HashSet<u64>, with_flows: &HashSet<u64>, now_ns: u64, after: Duration) -> usize {
        let stale = to_sweep(&self.mirror, held, with_flows, now_ns, after);
        for &c in &stale {
            self.map.remove(c);
            self.mirror.remove(&c);
            self.retired += 1;
        }
        self.mirror.retain(|c, _| held.contains(c) || with_flows.contains(c));
        held.len() - stale.len()
    }
}

/// Which of `cookies` a scan may try now: never tried, or tried
/// `UNRESOLVED_RETRY` ago.
pub fn due_for_scan(cookies: &[u64], unresolved: &HashMap<u64, Instant>, now: Instant) -> Vec<u64> {
    cookies.iter().copied().filter(|c| unresolved.get(c).is_none_or(|t| now.duration_since(*t) >= UNRESOLVED_RETRY)).collect()
}

/// Sockets with a flow that moved nothing this tick and whose owner closed
/// them at least `after` ago (`closed_ns`, CLOCK_BOOTTIME; 0 = still open).
pub fn to_retire(
    cookies: &HashSet<u64>,
    active: &HashSet<u64>,
    info: impl Fn(u64) -> Option<SockInfo>,
    now_ns: u64,
    after: Duration,
) -> HashMap<u64, SockInfo> {
    cookies
        .iter()
        .filter(|c| !active.contains(c))
        .filter_map(|&c| info(c).filter(|i| closed_for(i, now_ns, after)).map(|i| (c, i)))
        .collect()
}

/// Kernel-held owner entries closed at least `after` ago that no flow refers to.
/// The listening sockets a start-up scan found that have a holder, one per
/// port: (socket, holder, ambiguous). A port listened on in more than one
/// network namespace (pods on :8080 each), or in one whose cookie is unknown,
/// is ambiguous, as the kernel marks a port bound in two: the packet hook
/// cannot tell which namespace an accepted socket is in, so the agent places
/// those by scan.
pub fn listeners_to_seed(found: &[sockets::Found], holder: impl Fn(&sockets::Found) -> Option<u32>) -> Vec<(sockets::Found, u32, bool)> {
    let mut by_port: std::collections::BTreeMap<u16, (sockets::Found, u32, bool)> = Default::default();
    for f in found.iter().filter(|f| f.listening()) {
        let Some(pid) = holder(f) else { continue };
        by_port
            .entry(f.sock.local_port)
            .and_modify(|(first, _, ambiguous)| *ambiguous |= first.netns != f.netns)
            .or_insert((*f, pid, f.netns == 0));
    }
    by_port.into_values().collect()
}

/// What to write for a listener the start-up scan `seen`, given the kernel's
/// entry for its port: none yet, ours; one from the same namespace (a bind
/// since the programs attached, which is newer), nothing; one from another
/// namespace, that one marked ambiguous.
pub fn merge_listener(kernel: Option<ListenValue>, seen: ListenValue) -> Option<ListenValue> {
    match kernel {
        None => Some(seen),
        Some(k) if k.netns == seen.netns && seen.netns != 0 && seen.ambiguous == 0 => None,
        Some(k) if k.ambiguous != 0 => None,
        Some(k) => Some(ListenValue { ambiguous: 1, ..k }),
    }
}

pub fn to_sweep(socks: &HashMap<u64, SockInfo>, held: &HashSet<u64>, with_flows: &HashSet<u64>, now_ns: u64, after: Duration) -> Vec<u64> {
    socks.iter().filter(|(c, i)| held.contains(c) && closed_for(i, now_ns, after) && !with_flows.contains(c)).map(|(c, _)| *c).collect()
}

fn closed_for(info: &SockInfo, now_ns: u64, after: Duration) -> bool {
    info.closed_ns != 0 && now_ns.saturating_sub(info.closed_ns) >= after.as_nanos() as u64
}

/// The kernel record for a socket a scan placed on `pid` (`p`, if known).
fn adopted_info(f: &sockets::Found, pid: u32, p: Option<&crate::process_table::Process>) -> SockInfo {
    let mut comm = [0u8; COMM_LEN];
    if let Some(p) = p {
        let n = p.name.len().min(COMM_LEN - 1);
        comm[..n].copy_from_slice(&p.name.as_bytes()[..n]);
    }
    SockInfo {
        tgid: pid,
        tid: pid,
        uid: f.sock.uid,
        gid: p.map(|p| p.gid).unwrap_or(0),
        cgroup_id: p.map(|p| p.cgroup_id).unwrap_or(0),
        created_ns: 0,
        closed_ns: 0,
        comm,
        family: 0,
        sock_type: 0,
        protocol: f.sock.protocol as u16,
        origin: ORIGIN_PROCFS,
        // A listener's own packets (its SYN-ACKs) go either way, as the
        // kernel's record of a listener it saw bound says; its accepted
        // sockets say which.
        direction: if f.listening() {
            DIR_UNKNOWN
        } else if f.accepted {
            DIR_INGRESS
        } else {
            DIR_EGRESS
        },
        // A listener's port, so its release retires the LISTENERS entry
        // seeded for it (the kernel does that for a port it saw bound).
        bound_port: if f.listening() { f.sock.local_port } else { 0 },
        _pad: [0; 6],
    }
}

pub fn owner_from(info: &SockInfo) -> Owner {
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
    use std::cell::Cell;

    use super::*;
    use crate::process_table::Process;

    /// The kernel map, as a plain table that records what was asked of it.
    #[derive(Default)]
    struct FakeMap {
        entries: HashMap<u64, SockInfo>,
        /// Inserts that BPF_NOEXIST refused.
        refused: Vec<u64>,
        /// Cookies a kernel hook marked as written.
        changed: Vec<u64>,
        /// The marks overflowed.
        lost: bool,
        whole_reads: Cell<u32>,
        listeners: std::collections::HashMap<(u16, u16), ListenValue>,
        /// SKB_CGROUP: cookie -> the cgroup its packets were charged to.
        skb_cgroup: std::collections::HashMap<u64, u64>,
    }

    impl FakeMap {
        /// What a kernel hook does: write the entry, mark the cookie.
        fn hook_writes(&mut self, cookie: u64, info: SockInfo) {
            self.entries.insert(cookie, info);
            self.changed.push(cookie);
        }
    }

    impl OwnerMap for FakeMap {
        fn get(&self, cookie: u64) -> Option<SockInfo> {
            self.entries.get(&cookie).copied()
        }
        fn insert(&mut self, cookie: u64, info: SockInfo, flags: u64) {
            if flags == BPF_NOEXIST && self.entries.contains_key(&cookie) {
                self.refused.push(cookie);
                return;
            }
            self.entries.insert(cookie, info);
        }
        fn remove(&mut self, cookie: u64) {
            self.entries.remove(&cookie);
        }
        fn read_all(&self, f: &mut dyn FnMut(u64, &SockInfo)) {
            self.whole_reads.set(self.whole_reads.get() + 1);
            for (c, i) in &self.entries {
                f(*c, i);
            }
        }
        fn take_changed(&mut self) -> Option<Vec<u64>> {
            let c = std::mem::take(&mut self.changed);
            (!std::mem::take(&mut self.lost)).then_some(c)
        }
        fn listener(&self, key: ListenKey) -> Option<ListenValue> {
            self.listeners.get(&(key.port, key.protocol)).copied()
        }
        fn set_listener(&mut self, key: ListenKey, value: ListenValue) {
            self.listeners.insert((key.port, key.protocol), value);
        }
        fn socket_cgroup(&self, cookie: u64) -> Option<u64> {
            self.skb_cgroup.get(&cookie).copied()
        }
    }

    /// A scan that finds fixed sockets, counts how often it ran, and can be
    /// held running (a slow /proc walk) until released.
    #[derive(Default)]
    struct FakeScan {
        /// (cookie, inode, accepted)
        sockets: Vec<(u64, u32, bool)>,
        /// Listening sockets: (cookie, inode, port, netns cookie)
        listening: Vec<(u64, u32, u16, u64)>,
        /// inode -> pid
        holders: std::collections::HashMap<u32, u32>,
        /// What namespaces it could not enter list in /proc/<pid>/net.
        listed: Vec<(u64, sockets::Listed)>,
        scans: u32,
        fail: bool,
        hold: bool,
        running: bool,
    }

    impl FakeScan {
        fn result(&self) -> Result<Scan> {
            if self.fail {
                anyhow::bail!("sock_diag refused");
            }
            let found = |cookie, inode, state, local_port, accepted, netns| sockets::Found {
                sock: sockets::DiagSocket { cookie, inode, uid: 1000, protocol: 6, state, local_port },
                accepted,
                netns,
            };
            let sockets = (self.sockets.iter().map(|&(cookie, inode, accepted)| found(cookie, inode, 1, 40000, accepted, 1)))
                .chain(self.listening.iter().map(|&(cookie, inode, port, netns)| found(cookie, inode, sockets::TCP_LISTEN, port, false, netns)))
                .collect();
            let everywhere = sockets::Everywhere { sockets, failed: self.listed.iter().map(|(ns, _)| (*ns, "EPERM".into())).collect(), listed: self.listed.clone() };
            Ok(Scan { sockets: everywhere, holders: self.holders.clone(), took: Duration::from_secs(3) })
        }
    }

    impl SocketScan for FakeScan {
        fn scan(&mut self) -> Result<Scan> {
            self.scans += 1;
            self.result()
        }
        fn start(&mut self) -> bool {
            if !self.running {
                self.scans += 1;
                self.running = true;
            }
            true
        }
        fn finished(&mut self) -> Option<Result<Scan>> {
            if !self.running || self.hold {
                return None;
            }
            self.running = false;
            Some(self.result())
        }
    }

    struct Procs;
    impl ProcSource for Procs {
        fn read(&self, pid: u32) -> Option<Process> {
            Some(Process { pid, name: "rclone".into(), executable: "/usr/bin/rclone".into(), cgroup_id: 9, ..Process::default() })
        }
        fn cwd(&self, _: u32) -> Option<String> {
            None
        }
    }

    fn info(pid: u32, closed_ns: u64) -> SockInfo {
        let mut i = adopted_info(
            &sockets::Found { sock: sockets::DiagSocket { cookie: 0, inode: 0, uid: 1, protocol: 6, state: 1, local_port: 1 }, accepted: false, netns: 1 },
            pid,
            None,
        );
        i.origin = 0;
        i.closed_ns = closed_ns;
        i
    }

    fn set(c: &[u64]) -> HashSet<u64> {
        c.iter().copied().collect()
    }

    const MIN: Duration = Duration::from_secs(60);
    const NOW_NS: u64 = 1_000 * 1_000_000_000;

    #[test]
    fn only_idle_sockets_closed_long_enough_are_retired_and_their_owners_are_remembered() {
        let mut map = FakeMap::default();
        map.entries.insert(1, info(10, NOW_NS - 2 * 60_000_000_000)); // closed 2 min ago, idle
        map.entries.insert(2, info(11, NOW_NS - 2 * 60_000_000_000)); // closed, but moved bytes this tick
        map.entries.insert(3, info(12, NOW_NS - 1_000_000_000)); // closed 1 s ago
        map.entries.insert(4, info(13, 0)); // still open
        let mut o = Owners::new(map, FakeScan::default());
        o.sync(false);
        let now = Instant::now();
        let gone = o.retire(&set(&[1, 2, 3, 4]), &set(&[2]), NOW_NS, MIN, now);
        assert_eq!(gone, set(&[1]));
        assert!(o.map.get(1).is_none() && o.map.get(2).is_some() && o.map.get(3).is_some() && o.map.get(4).is_some());
        // A packet after the retirement is still the owner's.
        assert_eq!(o.owner(1, &ProcessTable::default()).map(|w| w.pid), Some(10));
        assert_eq!(o.retired, 1);
        // ...for OWNER_MEMORY, then forgotten.
        o.retire(&HashSet::default(), &HashSet::default(), NOW_NS, MIN, now + OWNER_MEMORY);
        assert!(o.owner(1, &ProcessTable::default()).is_none());
    }

    #[test]
    fn the_sweep_removes_closed_entries_no_flow_refers_to() {
        let socks: HashMap<u64, SockInfo> =
            [(1, info(10, NOW_NS - 120_000_000_000)), (2, info(11, NOW_NS - 120_000_000_000)), (3, info(12, 0))].into_iter().collect();
        assert_eq!(to_sweep(&socks, &set(&[1, 2, 3]), &set(&[2]), NOW_NS, MIN), vec![1]);
        let mut o = Owners::new(FakeMap { entries: socks, ..Default::default() }, FakeScan::default());
        let held = o.sync(true).unwrap();
        assert_eq!(o.sweep(&held, &set(&[2]), NOW_NS, MIN), 2);
        assert!(o.map.get(1).is_none() && o.map.get(2).is_some());
        assert!(o.info(1).is_none() && o.info(3).is_some());
        // An owner the kernel evicted stays mirrored while a flow needs it.
        o.map.entries.remove(&3);
        let held = o.sync(true).unwrap();
        o.sweep(&held, &set(&[3]), NOW_NS, MIN);
        assert!(o.info(3).is_some());
        let held = o.sync(true).unwrap();
        o.sweep(&held, &HashSet::default(), NOW_NS, MIN);
        assert!(o.info(3).is_none());
    }

    #[test]
    fn the_scan_places_old_sockets_at_most_once_per_interval_and_retries_the_unplaced_later() {
        let scan = FakeScan { sockets: vec![(7, 70, false), (8, 80, true)], holders: [(70, 4242)].into_iter().collect(), ..Default::default() };
        let mut o = Owners::new(FakeMap::default(), scan);
        let mut procs = ProcessTable::default();
        let t0 = Instant::now();
        // The scan starts in the background; nothing is placed yet.
        assert!(o.resolve(&[7, 8], &mut procs, &Procs, t0).is_empty());
        assert!(o.waiting_on(7) && o.waiting_on(8) && o.scan.scans == 1);
        // The next tick takes its result.
        let found = o.resolve(&[7, 8], &mut procs, &Procs, t0 + Duration::from_secs(1));
        // 7 is held by pid 4242 (read from procfs, now in the table); 8 by no one.
        let seven = found[&7];
        assert_eq!((seven.pid, seven.attribution, seven.direction), (4242, Attribution::Procfs, DIR_EGRESS));
        assert_eq!(o.map.get(7).map(|i| (i.tgid, i.cgroup_id, i.origin)), Some((4242, 9, ORIGIN_PROCFS)));
        assert!(procs.get(4242).is_some_and(|p| p.name == "rclone"));
        assert!(!found.contains_key(&8) && !o.waiting_on(8));
        // Within SCAN_EVERY: no second scan, whatever is asked; 9 (new) is
        // the next scan's, 8 (tried at t0+1) waits for UNRESOLVED_RETRY.
        assert!(o.resolve(&[8, 9], &mut procs, &Procs, t0 + Duration::from_secs(5)).is_empty());
        assert!(o.scan.scans == 1 && o.waiting_on(9) && !o.waiting_on(8));
        assert_eq!(due_for_scan(&[8, 9], &o.unresolved, t0 + SCAN_EVERY), vec![9]);
        // After SCAN_EVERY it runs, even if 9 is not asked again.
        o.resolve(&[], &mut procs, &Procs, t0 + SCAN_EVERY);
        assert!(o.scan.scans == 2 && o.waiting_on(9) && !o.waiting_on(8));
        assert_eq!(due_for_scan(&[8], &o.unresolved, t0 + UNRESOLVED_RETRY + Duration::from_secs(1)), vec![8]);
    }

    #[test]
    fn a_slow_scan_never_holds_a_tick() {
        let scan = FakeScan { sockets: vec![(7, 70, false)], holders: [(70, 4242)].into_iter().collect(), hold: true, ..Default::default() };
        let mut o = Owners::new(FakeMap::default(), scan);
        let mut procs = ProcessTable::default();
        let t0 = Instant::now();
        // Ticks while the /proc walk runs: each returns at once, no second
        // scan is started, and the cookie is still waited on.
        for i in 0..30 {
            assert!(o.resolve(&[7], &mut procs, &Procs, t0 + Duration::from_secs(i)).is_empty());
        }
        assert!(o.scan.scans == 1 && o.waiting_on(7) && o.scanning());
        // A socket first seen while the walk runs (handed to a process
        // meanwhile) waits for the next scan, which starts once this one ends.
        assert!(o.resolve(&[7, 8], &mut procs, &Procs, t0 + Duration::from_secs(30)).is_empty());
        assert!(o.waiting_on(8) && o.waiting() == 2);
        o.scan.hold = false;
        o.scan.sockets.push((8, 80, false));
        o.scan.holders.insert(80, 4343);
        let found = o.resolve(&[], &mut procs, &Procs, t0 + Duration::from_secs(31));
        assert_eq!(found.get(&7).map(|w| w.pid), Some(4242));
        assert!(!o.waiting_on(7) && o.waiting_on(8) && o.scanning() && o.scan.scans == 2);
        assert_eq!(o.take_scan_times(), vec![Duration::from_secs(3)]);
        let found = o.resolve(&[], &mut procs, &Procs, t0 + Duration::from_secs(32));
        assert_eq!(found.get(&8).map(|w| w.pid), Some(4343));
        assert!(!o.waiting_on(8) && !o.scanning() && o.waiting() == 0);
    }

    #[test]
    fn a_queued_socket_a_hook_records_meanwhile_is_left_to_the_hook() {
        let scan = FakeScan { sockets: vec![(7, 70, false), (8, 80, false)], holders: [(70, 4242), (80, 4343)].into_iter().collect(), ..Default::default() };
        let mut o = Owners::new(FakeMap::default(), scan);
        let mut procs = ProcessTable::default();
        let t0 = Instant::now();
        o.resolve(&[7], &mut procs, &Procs, t0);
        o.resolve(&[7], &mut procs, &Procs, t0 + Duration::from_secs(1));
        // 8 is queued for the next scan; then its process sends, and the
        // send hook records it.
        o.resolve(&[8], &mut procs, &Procs, t0 + Duration::from_secs(2));
        assert!(o.waiting_on(8));
        o.map.hook_writes(8, info(55, 0));
        o.sync(false);
        o.resolve(&[], &mut procs, &Procs, t0 + SCAN_EVERY + Duration::from_secs(1));
        assert!(!o.waiting_on(8) && o.scan.scans == 1, "no scan for a socket the kernel placed");
        assert_eq!(o.map.get(8).map(|i| i.tgid), Some(55));
    }

    fn v4(a: [u8; 4], port: u16) -> sockets::Endpoint {
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12..].copy_from_slice(&a);
        (m, port)
    }

    fn listed(local: sockets::Endpoint, remote: sockets::Endpoint, state: u8, inode: u32) -> sockets::Listed {
        sockets::Listed { local, remote, protocol: 6, state, uid: 0, inode }
    }

    #[test]
    fn a_connection_in_a_namespace_the_scan_cannot_enter_is_placed_by_its_addresses() {
        let (pod, server) = (v4([10, 77, 0, 2], 46550), v4([10, 77, 0, 1], 8081));
        let scan = FakeScan {
            // Namespace 77: the upload, a listener and its accepted connection.
            listed: vec![
                (77, listed(pod, server, 1, 500)),
                (77, listed(v4([0, 0, 0, 0], 80), v4([0, 0, 0, 0], 0), sockets::TCP_LISTEN, 501)),
                (77, listed(v4([10, 77, 0, 2], 80), v4([10, 77, 0, 9], 5000), 1, 502)),
            ],
            holders: [(500, 4242), (502, 4243)].into_iter().collect(),
            ..Default::default()
        };
        let mut o = Owners::new(FakeMap::default(), scan);
        let (t0, mut procs) = (Instant::now(), ProcessTable::default());
        o.note_tuple(5, Tuple { local: pod, remote: server, protocol: 6 });
        o.note_tuple(6, Tuple { local: v4([10, 77, 0, 2], 80), remote: v4([10, 77, 0, 9], 5000), protocol: 6 });
        o.resolve(&[5, 6, 7], &mut procs, &Procs, t0);
        let found = o.resolve(&[], &mut procs, &Procs, t0 + Duration::from_secs(1));
        assert_eq!(found.get(&5).map(|w| (w.pid, w.cgroup_id)), Some((4242, 9)), "{found:?}");
        assert_eq!(o.map.get(5).map(|i| (i.tgid, i.direction)), Some((4242, DIR_EGRESS)));
        assert_eq!(o.map.get(6).map(|i| i.direction), Some(DIR_INGRESS), "its port has a listener there: accepted");
        assert!(!found.contains_key(&7), "no addresses noted: nothing to match");
    }

    #[test]
    fn the_same_addresses_in_two_namespaces_place_no_one() {
        let (pod, server) = (v4([172, 17, 0, 2], 40000), v4([1, 2, 3, 4], 443));
        let scan = FakeScan {
            listed: vec![(77, listed(pod, server, 1, 500)), (78, listed(pod, server, 1, 600))],
            holders: [(500, 4242), (600, 4343)].into_iter().collect(),
            ..Default::default()
        };
        let mut o = Owners::new(FakeMap::default(), scan);
        let (t0, mut procs) = (Instant::now(), ProcessTable::default());
        o.note_tuple(5, Tuple { local: pod, remote: server, protocol: 6 });
        o.resolve(&[5], &mut procs, &Procs, t0);
        assert!(o.resolve(&[], &mut procs, &Procs, t0 + Duration::from_secs(1)).is_empty());
        assert!(o.map.get(5).is_none(), "judged as an unknown owner's, not guessed");
    }

    #[test]
    fn a_failed_scan_marks_every_cookie_for_a_later_retry() {
        let mut o = Owners::new(FakeMap::default(), FakeScan { fail: true, ..Default::default() });
        let t0 = Instant::now();
        let mut procs = ProcessTable::default();
        assert!(o.resolve(&[5, 6], &mut procs, &Procs, t0).is_empty());
        assert!(o.resolve(&[5, 6], &mut procs, &Procs, t0 + Duration::from_secs(1)).is_empty());
        assert!(!o.waiting_on(5) && due_for_scan(&[5, 6], &o.unresolved, t0 + Duration::from_secs(2)).is_empty());
    }

    #[test]
    fn a_socket_no_scan_places_keeps_the_cgroup_its_packets_were_charged_to() {
        // A pod's connection older than the agent, in a namespace the scan cannot enter.
        let map = FakeMap { skb_cgroup: [(5, 4242)].into_iter().collect(), ..Default::default() };
        let o = Owners::new(map, FakeScan { fail: true, ..Default::default() });
        let owner = o.unknown_owner(5);
        assert_eq!((owner.pid, owner.cgroup_id, owner.attribution), (0, 4242, Attribution::Unknown));
        assert_eq!(o.unknown_owner(6), UNKNOWN_OWNER, "nothing known: nothing claimed");
    }

    #[test]
    fn seeding_never_overrides_an_owner_a_hook_recorded() {
        let scan = FakeScan { sockets: vec![(7, 70, false), (8, 80, true)], holders: [(70, 100), (80, 200)].into_iter().collect(), ..Default::default() };
        let mut map = FakeMap::default();
        map.entries.insert(7, info(55, 0)); // the connect hook saw pid 55
        let mut o = Owners::new(map, scan);
        let n = o.seed(&mut ProcessTable::default(), &Procs, Instant::now()).unwrap();
        assert_eq!(n, 1);
        assert_eq!(o.map.get(7).map(|i| i.tgid), Some(55));
        // The accepted one (its port has a listener) is ingress.
        assert_eq!(o.map.get(8).map(|i| (i.tgid, i.direction)), Some((200, DIR_INGRESS)));
    }

    #[test]
    fn listeners_older_than_the_sensor_are_seeded_so_their_accepted_connections_have_an_owner() {
        // Port 80 (v4 and v6 sockets of one server), port 8080 in two
        // namespaces (two pods), port 9090 held by nobody the walk found,
        // port 7000 already bound since the programs attached (kept).
        let scan = FakeScan {
            listening: vec![(1, 10, 80, 5), (2, 20, 80, 5), (3, 30, 8080, 5), (4, 40, 8080, 6), (5, 50, 9090, 5), (6, 60, 7000, 5)],
            holders: [(10, 100), (20, 100), (30, 300), (40, 400), (60, 600)].into_iter().collect(),
            ..Default::default()
        };
        let mut map = FakeMap::default();
        let bound = ListenValue { cookie: 99, owner: info(77, 0), netns: 5, ambiguous: 0, _pad: 0 };
        map.listeners.insert((7000, 6), bound);
        let mut o = Owners::new(map, scan);
        let mut procs = ProcessTable::default();
        o.seed(&mut procs, &Procs, Instant::now()).unwrap();
        let l = |port| o.map.listeners.get(&(port, 6)).map(|v| (v.cookie, v.owner.tgid, v.netns, v.ambiguous));
        assert_eq!(l(80), Some((1, 100, 5, 0)));
        assert_eq!(o.map.listeners[&(80, 6)].owner.comm[..6], *b"rclone");
        assert_eq!(l(8080).map(|v| v.3), Some(1), "a port in two namespaces lends no owner");
        assert_eq!(l(9090), None);
        assert_eq!(l(7000), Some((99, 77, 5, 0)));
        // The listener's own owner entry carries its port, so its release
        // retires the seeded entry.
        assert_eq!(o.map.get(1).map(|i| (i.bound_port, i.direction)), Some((80, DIR_UNKNOWN)));
    }

    #[test]
    fn a_seeded_listener_marks_a_port_bound_since_in_another_namespace_ambiguous() {
        let seen = |netns, ambiguous| ListenValue { cookie: 1, owner: info(1, 0), netns, ambiguous, _pad: 0 };
        let kernel = ListenValue { cookie: 2, owner: info(2, 0), netns: 5, ambiguous: 0, _pad: 0 };
        assert_eq!(merge_listener(None, seen(5, 0)).map(|v| v.cookie), Some(1));
        assert!(merge_listener(Some(kernel), seen(5, 0)).is_none());
        for other in [seen(6, 0), seen(0, 1), seen(5, 1)] {
            assert_eq!(merge_listener(Some(kernel), other).map(|v| (v.cookie, v.ambiguous)), Some((2, 1)));
        }
        assert!(merge_listener(Some(ListenValue { ambiguous: 1, ..kernel }), seen(6, 0)).is_none());
    }

    #[test]
    fn the_mirror_follows_the_kernels_marks_and_reads_it_whole_only_when_it_must() {
        let procs = ProcessTable::default();
        let pid = |o: &Owners<FakeMap, FakeScan>, c| o.owner(c, &procs).map(|w| w.pid);
        let mut map = FakeMap::default();
        map.entries.insert(1, info(10, 0));
        let mut o = Owners::new(map, FakeScan::default());
        // The first tick reads it whole.
        o.sync(false);
        assert_eq!((pid(&o, 1), o.map.whole_reads.get()), (Some(10), 1));
        // New sockets and a new sender on an old one (a child writing its
        // parent's socket): only the marked cookies are read.
        o.map.hook_writes(2, info(11, 0));
        o.map.hook_writes(1, info(12, 0));
        assert!(o.sync(false).is_none());
        assert_eq!((pid(&o, 1), pid(&o, 2), o.map.whole_reads.get()), (Some(12), Some(11), 1));
        // An owner the kernel's LRU evicted under churn is still known.
        o.map.entries.remove(&2);
        o.sync(false);
        assert_eq!(pid(&o, 2), Some(11));
        // A socket made after this tick's sync: one lookup finds it.
        o.map.entries.insert(4, info(14, 0));
        assert_eq!(pid(&o, 4), None);
        assert!(o.fetch(4) && !o.fetch(5));
        assert_eq!(pid(&o, 4), Some(14));
        // Marks lost (the change map was full): a whole read.
        o.map.entries.insert(3, info(13, 0));
        o.map.lost = true;
        assert!(o.sync(false).is_some());
        assert_eq!((pid(&o, 3), o.map.whole_reads.get()), (Some(13), 2));
    }
}
