//! Who owns each socket the cgroup backend counts (the send-path backends
//! carry the sender in the flow key itself): the kernel's owner map first,
//! then owners remembered after the kernel let go of them, then, for sockets
//! no hook saw (older than the sensor, or evicted before they were read), a
//! rate-limited sock_diag + /proc scan.
//!
//! The decisions (which sockets are retired, which owner entries are swept,
//! which unknown cookies are due a scan) are pure functions over a snapshot;
//! `Owners` applies them through two small interfaces, the kernel map
//! (`OwnerMap`) and the scan (`SocketScan`), which the tests below replace
//! with doubles.

use std::time::{Duration, Instant};

use anyhow::Result;
use foldhash::{HashMap, HashMapExt, HashSet};
use sensor_common::{SockInfo, COMM_LEN, DIR_EGRESS, DIR_INGRESS, ORIGIN_LISTENER, ORIGIN_PROCFS};

use crate::{
    flows::{Attribution, Owner},
    process_table::{ProcSource, ProcessTable},
    sockets,
};

/// BPF_NOEXIST: insert only if the key is absent.
pub const BPF_NOEXIST: u64 = 1;
/// How long an unresolvable pre-existing socket waits before another scan.
const UNRESOLVED_RETRY: Duration = Duration::from_secs(30);
/// At most one scan for unknown socket owners per this long (with 50,000
/// processes a /proc walk took seconds; `cargo xtask bench`, section 3).
const SCAN_EVERY: Duration = Duration::from_secs(10);
/// How long a retired socket's owner is remembered (for packets after close).
const OWNER_MEMORY: Duration = Duration::from_secs(300);

/// The kernel's socket-owner map (`SOCKS`), as ownership uses it.
pub trait OwnerMap {
    fn get(&self, cookie: u64) -> Option<SockInfo>;
    /// Best effort: a full map refuses, and the owner is still remembered.
    fn insert(&mut self, cookie: u64, info: SockInfo, flags: u64);
    fn remove(&mut self, cookie: u64);
    /// Every entry (one batch read where the kernel has it).
    fn read_all(&self) -> HashMap<u64, SockInfo>;
}

impl OwnerMap for aya::maps::HashMap<aya::maps::MapData, u64, SockInfo> {
    fn get(&self, cookie: u64) -> Option<SockInfo> {
        aya::maps::HashMap::get(self, &cookie, 0).ok()
    }
    fn insert(&mut self, cookie: u64, info: SockInfo, flags: u64) {
        let _ = aya::maps::HashMap::insert(self, cookie, info, flags);
    }
    fn remove(&mut self, cookie: u64) {
        let _ = aya::maps::HashMap::remove(self, &cookie);
    }
    fn read_all(&self) -> HashMap<u64, SockInfo> {
        super::read_map(self, false).into_iter().collect()
    }
}

/// The sockets that exist now, and which process holds each.
pub trait SocketScan {
    /// Every socket of every network namespace (`sockets::dump_everywhere`).
    fn sockets(&mut self) -> Result<sockets::Everywhere>;
    /// Socket inode -> the pid holding it (`sockets::inode_owners`).
    fn inode_owners(&mut self) -> std::collections::HashMap<u32, u32>;
}

/// The real scan: sock_diag in each namespace, then every /proc/<pid>/fd.
pub struct LiveScan;

impl SocketScan for LiveScan {
    fn sockets(&mut self) -> Result<sockets::Everywhere> {
        sockets::dump_everywhere()
    }
    fn inode_owners(&mut self) -> std::collections::HashMap<u32, u32> {
        sockets::inode_owners()
    }
}

pub struct Owners<M, S> {
    pub map: M,
    scan: S,
    /// Owners of sockets the kernel map no longer holds (retired or evicted).
    remembered: HashMap<u64, (Owner, Instant)>,
    /// Cookies a scan could not place, and when it tried.
    unresolved: HashMap<u64, Instant>,
    last_scan: Option<Instant>,
    /// Whether the "cannot enter other network namespaces" notice was given.
    said_netns: bool,
    /// Owners placed by a scan, and sockets retired, since the start.
    pub resolved: u64,
    pub retired: u64,
}

impl<M: OwnerMap, S: SocketScan> Owners<M, S> {
    pub fn new(map: M, scan: S) -> Self {
        Self {
            map,
            scan,
            remembered: HashMap::new(),
            unresolved: HashMap::new(),
            last_scan: None,
            said_netns: false,
            resolved: 0,
            retired: 0,
        }
    }

    /// The kernel's record of `cookie`'s owner: from `socks` (this tick's
    /// read of the whole map) when given, else one lookup.
    pub fn info(&self, cookie: u64, socks: Option<&HashMap<u64, SockInfo>>) -> Option<SockInfo> {
        match socks {
            Some(all) => all.get(&cookie).copied(),
            None => self.map.get(cookie),
        }
    }

    /// Owner of `cookie`: the kernel's record (placed on the right holder of
    /// a reused pid), else one remembered.
    pub fn owner(&self, cookie: u64, socks: Option<&HashMap<u64, SockInfo>>, procs: &ProcessTable) -> Option<Owner> {
        if let Some(info) = self.info(cookie, socks) {
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

    /// Keep `o` for `cookie` past the kernel's entry: if socket churn makes
    /// the LRU evict it, the connection is still attributed from here.
    pub fn remember(&mut self, cookie: u64, o: Owner, now: Instant) {
        match self.remembered.get_mut(&cookie) {
            Some(e) => *e = (o, now),
            None => {
                self.remembered.insert(cookie, (o, now));
            }
        }
    }

    /// Attribute every socket that exists now. Run once right after attaching
    /// (hooks see every newer socket), so even a pre-existing connection that
    /// finishes within the first tick is named. Never overrides what a hook
    /// recorded in the owner's own context.
    pub fn seed(&mut self, procs: &mut ProcessTable, procfs: &impl ProcSource, now: Instant) -> Result<usize> {
        let found = self.dump()?;
        let inodes = self.scan.inode_owners();
        let mut n = 0;
        for f in &found {
            if let Some(&pid) = inodes.get(&f.sock.inode).filter(|_| f.sock.inode != 0) {
                if self.map.get(f.sock.cookie).is_none() {
                    self.adopt(f, pid, BPF_NOEXIST, procs, procfs, now);
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// The scan's sockets; namespaces it cannot enter are said once (their
    /// old sockets stay ownerless, and are still judged).
    fn dump(&mut self) -> Result<Vec<sockets::Found>> {
        let all = self.scan.sockets()?;
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

    /// Record `pid` as the owner of a socket the scan found, in the kernel
    /// map (so later ticks need no scan) and here.
    fn adopt(&mut self, f: &sockets::Found, pid: u32, flags: u64, procs: &mut ProcessTable, procfs: &impl ProcSource, now: Instant) -> Owner {
        let p = procs.get(pid).cloned().or_else(|| procfs.read(pid));
        if let Some(p) = p.as_ref().filter(|_| procs.get(pid).is_none()) {
            procs.insert(p.clone());
        }
        let info = adopted_info(f, pid, p.as_ref());
        self.map.insert(f.sock.cookie, info, flags);
        let owner = owner_from(&info);
        self.remembered.insert(f.sock.cookie, (owner, now));
        self.unresolved.remove(&f.sock.cookie);
        self.resolved += 1;
        owner
    }

    /// Owners for `cookies` no record placed (a race between the hooks and
    /// the start-up scan, or an owner the LRU evicted before it was read):
    /// at most one scan per `SCAN_EVERY`; a cookie it cannot place waits
    /// `UNRESOLVED_RETRY` for the next.
    pub fn resolve(&mut self, cookies: &[u64], procs: &mut ProcessTable, procfs: &impl ProcSource, now: Instant) -> HashMap<u64, Owner> {
        let mut found = HashMap::new();
        let due = due_for_scan(cookies, &self.unresolved, now);
        if due.is_empty() || self.last_scan.is_some_and(|t| now.duration_since(t) < SCAN_EVERY) {
            return found;
        }
        self.last_scan = Some(now);
        let diag = match self.dump() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("sluice: cannot list pre-existing sockets: {e:#}");
                self.unresolved.extend(due.into_iter().map(|c| (c, now)));
                return found;
            }
        };
        let by_cookie: HashMap<u64, sockets::Found> = diag.iter().map(|f| (f.sock.cookie, *f)).collect();
        let inodes = self.scan.inode_owners();
        for c in due {
            let hit = by_cookie.get(&c).filter(|f| f.sock.inode != 0).and_then(|f| inodes.get(&f.sock.inode).map(|pid| (*f, *pid)));
            match hit {
                Some((f, pid)) => {
                    found.insert(c, self.adopt(&f, pid, 0, procs, procfs, now));
                }
                None => {
                    self.unresolved.insert(c, now);
                }
            }
        }
        found
    }

    /// Retire the kernel entries of sockets closed for `after` whose flows
    /// are idle (`cookies` with a flow, `active` ones moved this tick),
    /// remembering their owners for straggling packets. Returns the retired
    /// cookies: the caller drops their flows.
    pub fn retire(&mut self, cookies: &HashSet<u64>, active: &HashSet<u64>, socks: Option<&HashMap<u64, SockInfo>>, now_ns: u64, after: Duration, now: Instant) -> HashSet<u64> {
        let retire = to_retire(cookies, active, |c| self.info(c, socks), now_ns, after);
        let mut gone = HashSet::default();
        for (c, info) in retire {
            self.remembered.insert(c, (owner_from(&info), now));
            self.map.remove(c);
            self.retired += 1;
            gone.insert(c);
        }
        self.remembered.retain(|_, (_, t)| now.duration_since(*t) < OWNER_MEMORY);
        self.unresolved.retain(|_, t| now.duration_since(*t) < OWNER_MEMORY);
        gone
    }

    /// Remove owner entries of sockets closed for `after` that have no flow
    /// (failed connects, sockets that never sent): LRU would get them in the
    /// end, but only by evicting live sockets' owners first. Returns the
    /// entries left.
    pub fn sweep(&mut self, socks: HashMap<u64, SockInfo>, with_flows: &HashSet<u64>, now_ns: u64, after: Duration) -> usize {
        let stale = to_sweep(&socks, with_flows, now_ns, after);
        for &c in &stale {
            self.map.remove(c);
            self.retired += 1;
        }
        socks.len() - stale.len()
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

/// Owner entries closed at least `after` ago that no flow refers to.
pub fn to_sweep(socks: &HashMap<u64, SockInfo>, with_flows: &HashSet<u64>, now_ns: u64, after: Duration) -> Vec<u64> {
    socks.iter().filter(|(c, i)| closed_for(i, now_ns, after) && !with_flows.contains(c)).map(|(c, _)| *c).collect()
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
        direction: if f.accepted { DIR_INGRESS } else { DIR_EGRESS },
        bound_port: 0,
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
        fn read_all(&self) -> HashMap<u64, SockInfo> {
            self.entries.clone()
        }
    }

    /// A scan that finds fixed sockets and counts how often it ran.
    #[derive(Default)]
    struct FakeScan {
        /// (cookie, inode, accepted)
        sockets: Vec<(u64, u32, bool)>,
        /// inode -> pid
        holders: std::collections::HashMap<u32, u32>,
        scans: Cell<u32>,
        fail: bool,
    }

    impl SocketScan for FakeScan {
        fn sockets(&mut self) -> Result<sockets::Everywhere> {
            self.scans.set(self.scans.get() + 1);
            if self.fail {
                anyhow::bail!("sock_diag refused");
            }
            let sockets = self
                .sockets
                .iter()
                .map(|&(cookie, inode, accepted)| sockets::Found {
                    sock: sockets::DiagSocket { cookie, inode, uid: 1000, protocol: 6, state: 1, local_port: 40000 },
                    accepted,
                })
                .collect();
            Ok(sockets::Everywhere { sockets, failed: Vec::new() })
        }
        fn inode_owners(&mut self) -> std::collections::HashMap<u32, u32> {
            self.holders.clone()
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
            &sockets::Found { sock: sockets::DiagSocket { cookie: 0, inode: 0, uid: 1, protocol: 6, state: 1, local_port: 1 }, accepted: false },
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
        let now = Instant::now();
        let gone = o.retire(&set(&[1, 2, 3, 4]), &set(&[2]), None, NOW_NS, MIN, now);
        assert_eq!(gone, set(&[1]));
        assert!(o.map.get(1).is_none() && o.map.get(2).is_some() && o.map.get(3).is_some() && o.map.get(4).is_some());
        // A packet after the retirement is still the owner's.
        assert_eq!(o.owner(1, None, &ProcessTable::default()).map(|w| w.pid), Some(10));
        assert_eq!(o.retired, 1);
        // ...for OWNER_MEMORY, then forgotten.
        o.retire(&HashSet::default(), &HashSet::default(), None, NOW_NS, MIN, now + OWNER_MEMORY);
        assert!(o.owner(1, None, &ProcessTable::default()).is_none());
    }

    #[test]
    fn the_sweep_removes_closed_entries_no_flow_refers_to() {
        let socks: HashMap<u64, SockInfo> =
            [(1, info(10, NOW_NS - 120_000_000_000)), (2, info(11, NOW_NS - 120_000_000_000)), (3, info(12, 0))].into_iter().collect();
        assert_eq!(to_sweep(&socks, &set(&[2]), NOW_NS, MIN), vec![1]);
        let mut o = Owners::new(FakeMap { entries: socks.clone(), refused: Vec::new() }, FakeScan::default());
        assert_eq!(o.sweep(socks, &set(&[2]), NOW_NS, MIN), 2);
        assert!(o.map.get(1).is_none() && o.map.get(2).is_some());
    }

    #[test]
    fn the_scan_places_old_sockets_at_most_once_per_interval_and_retries_the_unplaced_later() {
        let scan = FakeScan { sockets: vec![(7, 70, false), (8, 80, true)], holders: [(70, 4242)].into_iter().collect(), ..Default::default() };
        let mut o = Owners::new(FakeMap::default(), scan);
        let mut procs = ProcessTable::default();
        let t0 = Instant::now();
        let found = o.resolve(&[7, 8], &mut procs, &Procs, t0);
        // 7 is held by pid 4242 (read from procfs, now in the table); 8 by no one.
        let seven = found[&7];
        assert_eq!((seven.pid, seven.attribution, seven.direction), (4242, Attribution::Procfs, DIR_EGRESS));
        assert_eq!(o.map.get(7).map(|i| (i.tgid, i.cgroup_id, i.origin)), Some((4242, 9, ORIGIN_PROCFS)));
        assert!(procs.get(4242).is_some_and(|p| p.name == "rclone"));
        assert!(!found.contains_key(&8));
        // Within SCAN_EVERY: no second scan, whatever is asked.
        assert!(o.resolve(&[8, 9], &mut procs, &Procs, t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(o.scan.scans.get(), 1);
        // After SCAN_EVERY, 9 is due, 8 (tried at t0) waits for UNRESOLVED_RETRY.
        assert_eq!(due_for_scan(&[8, 9], &o.unresolved, t0 + SCAN_EVERY), vec![9]);
        o.resolve(&[8, 9], &mut procs, &Procs, t0 + SCAN_EVERY);
        assert_eq!(o.scan.scans.get(), 2);
        assert_eq!(due_for_scan(&[8], &o.unresolved, t0 + UNRESOLVED_RETRY), vec![8]);
    }

    #[test]
    fn a_failed_scan_marks_every_cookie_for_a_later_retry() {
        let mut o = Owners::new(FakeMap::default(), FakeScan { fail: true, ..Default::default() });
        let t0 = Instant::now();
        assert!(o.resolve(&[5, 6], &mut ProcessTable::default(), &Procs, t0).is_empty());
        assert!(due_for_scan(&[5, 6], &o.unresolved, t0 + Duration::from_secs(1)).is_empty());
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
    fn the_kernel_record_beats_a_remembered_owner() {
        let mut map = FakeMap::default();
        map.entries.insert(1, info(10, 0));
        let mut o = Owners::new(map, FakeScan::default());
        o.remember(1, owner_from(&info(99, 0)), Instant::now());
        assert_eq!(o.owner(1, None, &ProcessTable::default()).map(|w| w.pid), Some(10));
        // A whole-map read given for this tick is used instead of a lookup.
        let all: HashMap<u64, SockInfo> = [(1, info(11, 0))].into_iter().collect();
        assert_eq!(o.owner(1, Some(&all), &ProcessTable::default()).map(|w| w.pid), Some(11));
    }
}
