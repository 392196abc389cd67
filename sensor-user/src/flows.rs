//! From the kernel's cumulative per-(socket, peer) counters to per-tick records
//! per (process, destination). Pure logic: the agent feeds it map snapshots and
//! socket owners, tests feed it whatever they like.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// Every tick hashes every flow key (56 bytes) a few times: foldhash (per-process
// random seed) instead of SipHash, which was a fifth of a tick at 20k flows.
use foldhash::HashMap;

use sensor_common::{FlowCounters, FlowKey, DIR_EGRESS, DIR_INGRESS, DIR_UNKNOWN};

use crate::naming::Destination;

const IPPROTO_TCP: u8 = 6;

/// Bytes and packets: what moved on a flow in some window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Volume {
    /// Transport payload (outbound TCP: new sequence space only).
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// L3 bytes including headers and retransmissions.
    pub wire_bytes_out: u64,
    pub wire_bytes_in: u64,
    pub packets_out: u64,
    pub packets_in: u64,
}

impl Volume {
    /// The quantities of a kernel counter set (its TCP bookkeeping is not one).
    pub fn of(c: &FlowCounters) -> Volume {
        Volume {
            bytes_out: c.bytes_out,
            bytes_in: c.bytes_in,
            wire_bytes_out: c.wire_bytes_out,
            wire_bytes_in: c.wire_bytes_in,
            packets_out: c.packets_out,
            packets_in: c.packets_in,
        }
    }

    /// `self - prev`, or None if any counter went backwards (the entry was
    /// evicted and recreated in between).
    pub fn minus(&self, prev: &Volume) -> Option<Volume> {
        Some(Volume {
            bytes_out: self.bytes_out.checked_sub(prev.bytes_out)?,
            bytes_in: self.bytes_in.checked_sub(prev.bytes_in)?,
            wire_bytes_out: self.wire_bytes_out.checked_sub(prev.wire_bytes_out)?,
            wire_bytes_in: self.wire_bytes_in.checked_sub(prev.wire_bytes_in)?,
            packets_out: self.packets_out.checked_sub(prev.packets_out)?,
            packets_in: self.packets_in.checked_sub(prev.packets_in)?,
        })
    }

    pub fn add(&mut self, o: &Volume) {
        self.bytes_out += o.bytes_out;
        self.bytes_in += o.bytes_in;
        self.wire_bytes_out += o.wire_bytes_out;
        self.wire_bytes_in += o.wire_bytes_in;
        self.packets_out += o.packets_out;
        self.packets_in += o.packets_in;
    }

    pub fn is_zero(&self) -> bool {
        *self == Volume::default()
    }
}

/// What moved on one kernel flow since the last tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    pub key: FlowKey,
    pub volume: Volume,
}

/// What the next tick needs of a live kernel flow: its counters as last
/// read, its creation stamp, and how long it has been idle.
#[derive(Debug, Clone, Copy)]
struct Seen {
    volume: Volume,
    /// Outbound TCP: the kernel's next sequence number at the last read.
    next_seq: Option<u32>,
    created_ns: u64,
    /// Ticks since it last moved.
    idle: u32,
    /// The read that last saw it (entries no read sees are gone).
    read: u32,
}

/// Remembers last tick's cumulative counters to turn each read of the kernel
/// map into deltas. Updated in place, one entry at a time, as the map is
/// read (`begin`, `observe` per entry, `end`): no snapshot of the map is held.
#[derive(Default)]
pub struct DeltaTracker {
    prev: HashMap<FlowKey, Seen>,
    read: u32,
    /// Positions the previous agent left (`handover`), until first seen or
    /// `expect_reads` reads have passed.
    expected: HashMap<FlowKey, u32>,
    expect_reads: u32,
    /// Bytes counted from handed-over positions: sent while no agent was loaded.
    pub handed_over: u64,
    /// Kernel entries that disappeared between ticks without being retired by us
    /// (LRU eviction under pressure): their last tick's bytes are lost.
    pub vanished: u64,
    /// Entries evicted and created again between two reads (another creation
    /// stamp): counted whole, not as the difference from the old entry.
    pub recreated: u64,
}

impl DeltaTracker {
    /// A whole read at once: what moved on each entry (tests, `replay`).
    pub fn update(&mut self, snapshot: impl IntoIterator<Item = (FlowKey, FlowCounters)>) -> Vec<Delta> {
        self.begin();
        let out = snapshot.into_iter().filter_map(|(key, cur)| self.observe(&key, &cur).map(|volume| Delta { key, volume })).collect();
        self.end();
        out
    }

    /// A new read of the kernel map starts.
    pub fn begin(&mut self) {
        self.read = self.read.wrapping_add(1);
    }

    /// One entry of this read: what moved on it since the last (None: nothing).
    pub fn observe(&mut self, key: &FlowKey, cur: &FlowCounters) -> Option<Volume> {
        let now = Volume::of(cur);
        let read = self.read;
        let next_seq = (key.protocol == IPPROTO_TCP && cur.seq_out_valid != 0).then_some(cur.next_seq_out);
        let Some(s) = self.prev.get_mut(key) else {
            let idle = u32::from(now.is_zero());
            self.prev.insert(*key, Seen { volume: now, next_seq, created_ns: cur.created_ns, idle, read });
            let mut first = now;
            if let (Some(saved), Some(next)) = (self.expected.remove(key), next_seq) {
                let missed = crate::handover::gap(saved, next, now.bytes_out);
                first.bytes_out += missed;
                self.handed_over += missed;
            }
            return (!first.is_zero()).then_some(first);
        };
        s.next_seq = next_seq;
        // Evicted and created again since the last read: all of it is new,
        // even where it has grown past the old entry's counters.
        let recreated = s.created_ns != cur.created_ns;
        if recreated {
            self.recreated += 1;
            self.vanished += 1;
        }
        // Counters only grow; one that went backwards (an entry without a
        // stamp, recreated) is all new too.
        let moved = if recreated { now } else { now.minus(&s.volume).unwrap_or(now) };
        s.idle = if moved.is_zero() { if recreated { 1 } else { s.idle.saturating_add(1) } } else { 0 };
        s.volume = now;
        s.created_ns = cur.created_ns;
        s.read = read;
        (!moved.is_zero()).then_some(moved)
    }

    /// The read is complete: entries it did not see are gone from the kernel.
    /// (After a read that failed part-way, do not call this: the entries it
    /// did not reach are still there.)
    pub fn end(&mut self) {
        self.expect_reads = self.expect_reads.saturating_sub(1);
        if self.expect_reads == 0 {
            self.expected.clear();
        }
        let (read, before) = (self.read, self.prev.len());
        self.prev.retain(|_, s| s.read == read);
        self.vanished += (before - self.prev.len()) as u64;
    }

    /// Positions a previous agent left for flows this one has not seen yet:
    /// the first read of each counts the sequence space since (for `reads`
    /// reads; a flow not seen by then has ended).
    pub fn expect(&mut self, positions: impl IntoIterator<Item = (FlowKey, u32)>, reads: u32) {
        self.expected.extend(positions);
        self.expect_reads = reads;
    }

    /// Where every live outbound TCP flow's sequence stood at the last read.
    pub fn positions(&self) -> Vec<(FlowKey, u32)> {
        self.prev.iter().filter_map(|(k, s)| s.next_seq.map(|n| (*k, n))).collect()
    }

    /// The agent deleted this entry from the kernel map on purpose.
    pub fn forget(&mut self, key: &FlowKey) {
        self.prev.remove(key);
    }

    /// Keys that have not moved for at least `ticks` ticks.
    pub fn idle_for(&self, ticks: u32) -> Vec<FlowKey> {
        self.prev.iter().filter(|(_, s)| s.idle >= ticks).map(|(k, _)| *k).collect()
    }

    /// Every live flow, and whether it moved in the last read.
    pub fn live(&self) -> impl Iterator<Item = (&FlowKey, bool)> {
        self.prev.iter().map(|(k, s)| (k, s.idle == 0))
    }

    pub fn len(&self) -> usize {
        self.prev.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prev.is_empty()
    }
}

/// Who owns a socket, as far as the agent can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    pub direction: u8,
    pub attribution: Attribution,
    /// Which holder of `pid` (its start, CLOCK_BOOTTIME ns): 0 is the current
    /// one; set when the pid was reused and the socket was the previous holder's.
    pub start_ns: u64,
}

/// How the owner was learned (reported, so an analyst can weigh it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    /// A hook in the owner's own context: socket(), connect(), sendto(), bind().
    Kernel,
    /// Accepted on a port the owner had bound.
    Listener,
    /// Socket older than the sensor: sock_diag inode matched in /proc/<pid>/fd.
    Procfs,
    Unknown,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Kernel => "kernel",
            Attribution::Listener => "listener",
            Attribution::Procfs => "procfs",
            Attribution::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Loopback,
    Private,
    LinkLocal,
    Multicast,
    Public,
    Unspecified,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Loopback => "loopback",
            Scope::Private => "private",
            Scope::LinkLocal => "link-local",
            Scope::Multicast => "multicast",
            Scope::Public => "public",
            Scope::Unspecified => "unspecified",
        }
    }
}

/// The kernel's 16-byte address as what it really is (v4-mapped becomes v4).
pub fn ip_of(addr: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn scope(ip: IpAddr) -> Scope {
    match ip {
        IpAddr::V4(v4) => scope_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return scope_v4(v4);
            }
            let seg0 = v6.segments()[0];
            if v6.is_loopback() {
                Scope::Loopback
            } else if v6.is_unspecified() {
                Scope::Unspecified
            } else if v6.is_multicast() {
                Scope::Multicast
            } else if seg0 & 0xffc0 == 0xfe80 {
                Scope::LinkLocal
            } else if seg0 & 0xfe00 == 0xfc00 {
                // Unique local addresses (fc00::/7).
                Scope::Private
            } else {
                Scope::Public
            }
        }
    }
}

fn scope_v4(v4: Ipv4Addr) -> Scope {
    let o = v4.octets();
    if v4.is_loopback() {
        Scope::Loopback
    } else if v4.is_unspecified() {
        Scope::Unspecified
    } else if v4.is_multicast() || v4.is_broadcast() {
        Scope::Multicast
    } else if v4.is_link_local() {
        Scope::LinkLocal
    } else if v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1])) {
        // RFC 1918 plus carrier-grade NAT (100.64.0.0/10).
        Scope::Private
    } else {
        Scope::Public
    }
}

pub fn transport(protocol: u8) -> &'static str {
    match protocol {
        6 => "tcp",
        17 => "udp",
        1 | 58 => "icmp",
        _ => "other",
    }
}

pub fn direction(d: u8) -> &'static str {
    match d {
        DIR_EGRESS => "egress",
        DIR_INGRESS => "ingress",
        _ => "unknown",
    }
}

/// One (process, destination) for one tick: the unit of `--emit flows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    pub owner: Owner,
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    pub protocol: u8,
    pub volume: Volume,
    /// Kernel flows (sockets) rolled into this record.
    pub sockets: u32,
    /// The destination's name and service, the best any of its sockets had.
    pub destination: Destination,
}

impl FlowRecord {
    pub fn scope(&self) -> Scope {
        scope(self.remote_ip)
    }
}

/// Per-(process, holder, peer, port, transport) records, built one delta at a
/// time while the kernel map is read.
#[derive(Default)]
pub struct Aggregate {
    by: HashMap<(u32, u64, IpAddr, u16, u8), FlowRecord>,
}

impl Aggregate {
    /// Fold `d`, owned by `owner` and named `name`, into its record.
    pub fn add(&mut self, d: &Delta, owner: Owner, name: Destination) {
        let remote_ip = ip_of(&d.key.remote_addr);
        let k = (owner.pid, owner.start_ns, remote_ip, d.key.remote_port, d.key.protocol);
        let r = self.by.entry(k).or_insert_with(|| FlowRecord {
            owner,
            local_ip: ip_of(&d.key.local_addr),
            local_port: d.key.local_port,
            remote_ip,
            remote_port: d.key.remote_port,
            protocol: d.key.protocol,
            volume: Volume::default(),
            sockets: 0,
            destination: Destination::default(),
        });
        r.destination.merge(name);
        // A listening socket (direction unknown: it only saw the SYN) and the
        // socket it accepted merge here; the one that knows the direction wins,
        // whatever order the map was read in.
        if r.owner.direction == DIR_UNKNOWN && owner.direction != DIR_UNKNOWN {
            r.owner = owner;
        }
        r.volume.add(&d.volume);
        r.sockets += 1;
    }

    /// The records, in a deterministic order: biggest uploads first.
    pub fn finish(self) -> Vec<FlowRecord> {
        let mut v: Vec<_> = self.by.into_values().collect();
        v.sort_by(|a, b| {
            b.volume
                .bytes_out
                .cmp(&a.volume.bytes_out)
                .then(b.volume.bytes_in.cmp(&a.volume.bytes_in))
                .then(a.owner.pid.cmp(&b.owner.pid))
                .then(a.remote_ip.cmp(&b.remote_ip))
                .then(a.remote_port.cmp(&b.remote_port))
        });
        v
    }
}

/// `Aggregate` over a list of deltas.
pub fn aggregate(
    deltas: &[Delta],
    owner_of: impl Fn(&FlowKey) -> Owner,
    mut name_of: impl FnMut(&FlowKey, IpAddr) -> Destination,
) -> Vec<FlowRecord> {
    let mut agg = Aggregate::default();
    for d in deltas {
        agg.add(d, owner_of(&d.key), name_of(&d.key, ip_of(&d.key.remote_addr)));
    }
    agg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cookie: u64, remote: [u8; 4], port: u16) -> FlowKey {
        let mut r = [0u8; 16];
        r[10] = 0xff;
        r[11] = 0xff;
        r[12..].copy_from_slice(&remote);
        FlowKey {
            cookie,
            local_addr: [0; 16],
            remote_addr: r,
            local_port: 40000,
            remote_port: port,
            protocol: 6,
            ip_version: 4,
            _pad: [0; 2],
            pid: 0,
            _pad2: 0,
        }
    }

    fn c(out: u64, inn: u64) -> FlowCounters {
        FlowCounters {
            bytes_out: out,
            bytes_in: inn,
            wire_bytes_out: out + 40,
            wire_bytes_in: inn + 40,
            packets_out: 1,
            packets_in: 1,
            next_seq_out: 99,
            seq_out_valid: 1,
            ..Default::default()
        }
    }

    fn v(out: u64, inn: u64) -> Volume {
        Volume::of(&c(out, inn))
    }

    #[test]
    fn a_handed_over_position_adds_what_left_while_no_agent_was_loaded() {
        let mut t = DeltaTracker::default();
        let (k, other) = (key(1, [10, 0, 0, 2], 80), key(2, [10, 0, 0, 3], 80));
        t.expect([(k, 1_000), (other, 5)], 2);
        // First sight: 500 bytes counted, the kernel's next sequence is 6,000:
        // 4,500 left between the two agents.
        let cur = FlowCounters { next_seq_out: 6_000, ..c(500, 0) };
        let d = t.update([(k, cur)]);
        assert_eq!((d[0].volume.bytes_out, t.handed_over), (5_000, 4_500));
        // Later reads are plain deltas.
        let d = t.update([(k, FlowCounters { next_seq_out: 6_100, ..c(600, 0) })]);
        assert_eq!(d[0].volume.bytes_out, 100);
        assert_eq!(t.positions(), vec![(k, 6_100)]);
        // A flow first seen after the expectation lapsed gets nothing added.
        t.update([]);
        let d = t.update([(other, FlowCounters { next_seq_out: 1_000, ..c(10, 0) })]);
        assert_eq!((d[0].volume.bytes_out, t.handed_over), (10, 4_500));
    }

    #[test]
    fn deltas_between_snapshots() {
        let mut t = DeltaTracker::default();
        let k = key(1, [10, 0, 0, 2], 80);
        let d0 = t.update([(k, c(100, 10))]);
        assert_eq!((d0[0].volume.bytes_out, d0[0].volume.wire_bytes_out), (100, 140));
        let first = t.update([(k, c(100, 10))]);
        assert!(first.is_empty(), "no movement, no delta: {first:?}");
        let d = t.update([(k, c(350, 15))]);
        assert_eq!((d[0].volume.bytes_out, d[0].volume.bytes_in), (250, 5));
    }

    #[test]
    fn idle_keys_are_reported_after_enough_quiet_ticks() {
        let mut t = DeltaTracker::default();
        let k = key(1, [10, 0, 0, 2], 80);
        t.update([(k, c(100, 0))]);
        t.update([(k, c(100, 0))]);
        assert!(t.idle_for(2).is_empty());
        t.update([(k, c(100, 0))]);
        assert_eq!(t.idle_for(2), vec![k]);
        t.forget(&k);
        assert!(t.idle_for(0).is_empty());
    }

    #[test]
    fn recreated_entry_counts_from_zero_and_eviction_is_counted() {
        let mut t = DeltaTracker::default();
        let k = key(1, [10, 0, 0, 2], 80);
        t.update([(k, c(1000, 0))]);
        assert_eq!(t.update([(k, c(40, 0))])[0].volume.bytes_out, 40);
        t.update(std::iter::empty());
        assert_eq!(t.vanished, 1);
    }

    #[test]
    fn an_entry_recreated_past_the_old_ones_counters_is_counted_whole() {
        let mut t = DeltaTracker::default();
        let k = key(1, [10, 0, 0, 2], 80);
        let stamped = |out, at| FlowCounters { created_ns: at, ..c(out, 0) };
        t.update([(k, stamped(1000, 5))]);
        // Evicted, then 1,500 bytes in a new entry: 1,500 new, not 500.
        assert_eq!(t.update([(k, stamped(1500, 9))])[0].volume.bytes_out, 1500);
        assert_eq!((t.recreated, t.vanished), (1, 1));
        // The same entry moving on: the difference.
        assert_eq!(t.update([(k, stamped(1600, 9))])[0].volume.bytes_out, 100);
    }

    #[test]
    fn aggregate_per_process_and_destination() {
        let owner = |k: &FlowKey| Owner {
            pid: if k.cookie < 10 { 100 } else { 200 },
            uid: 0,
            cgroup_id: 0,
            direction: DIR_EGRESS,
            attribution: Attribution::Kernel,
            start_ns: 0,
        };
        let ds = [
            Delta { key: key(1, [10, 0, 0, 2], 443), volume: v(100, 1) },
            Delta { key: key(2, [10, 0, 0, 2], 443), volume: v(50, 1) },
            Delta { key: key(11, [10, 0, 0, 2], 443), volume: v(7, 0) },
            Delta { key: key(1, [10, 0, 0, 3], 443), volume: v(1, 0) },
        ];
        let r = aggregate(&ds, owner, |_, _| Destination::default());
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].owner.pid, r[0].volume.bytes_out, r[0].sockets), (100, 150, 2));
        assert_eq!(r[0].remote_ip, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
    }

    #[test]
    fn a_known_direction_wins_over_the_listener_socket_in_any_order() {
        let owner = |k: &FlowKey| Owner {
            pid: 7,
            uid: 0,
            cgroup_id: 0,
            direction: if k.cookie == 1 { DIR_UNKNOWN } else { DIR_INGRESS },
            attribution: if k.cookie == 1 { Attribution::Kernel } else { Attribution::Listener },
            start_ns: 0,
        };
        let syn = Delta { key: key(1, [127, 0, 0, 1], 5555), volume: v(0, 60) };
        let data = Delta { key: key(2, [127, 0, 0, 1], 5555), volume: v(10, 5000) };
        for ds in [[syn, data], [data, syn]] {
            let r = aggregate(&ds, owner, |_, _| Destination::default());
            assert_eq!(r.len(), 1);
            assert_eq!((r[0].owner.direction, r[0].volume.bytes_in), (DIR_INGRESS, 5060));
            assert_eq!(r[0].owner.attribution, Attribution::Listener);
        }
    }

    #[test]
    fn scopes() {
        let s = |t: &str| scope(t.parse().unwrap());
        assert_eq!(s("127.0.0.1"), Scope::Loopback);
        assert_eq!(s("::1"), Scope::Loopback);
        assert_eq!(s("::ffff:127.0.0.1"), Scope::Loopback);
        assert_eq!(s("10.1.2.3"), Scope::Private);
        assert_eq!(s("192.168.1.1"), Scope::Private);
        assert_eq!(s("100.100.1.1"), Scope::Private);
        assert_eq!(s("fd00::1"), Scope::Private);
        assert_eq!(s("fe80::1"), Scope::LinkLocal);
        assert_eq!(s("169.254.1.1"), Scope::LinkLocal);
        assert_eq!(s("8.8.8.8"), Scope::Public);
        assert_eq!(s("2001:db8::1"), Scope::Public);
        assert_eq!(s("224.0.0.251"), Scope::Multicast);
    }
}
