//! Byte accounting: the (socket, peer) flow key, its cumulative counters, and
//! TCP sequence tracking that keeps retransmissions out of them.

/// One (socket, peer) pair: the unit of byte accounting in the kernel. Addresses
/// are IPv6 or IPv4-mapped IPv6 (`::ffff:a.b.c.d`), ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct FlowKey {
    pub cookie: u64,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// IPPROTO_TCP / IPPROTO_UDP / other.
    pub protocol: u8,
    /// 4 or 6: the IP version on the wire.
    pub ip_version: u8,
    pub _pad: [u8; 2],
    /// The sending process (tgid) on the send-path backends, where the hook runs
    /// in the sender's context; 0 on the cgroup backend (owner from `SOCKS`).
    pub pid: u32,
    /// Explicit, so every key byte is initialized (the verifier insists).
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 56, "FlowKey changed size: both sides must agree");
// SAFETY: #[repr(C)] plain data; any bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}

/// Cumulative counters of one flow; the kernel only adds, userspace takes
/// deltas between ticks.
///
/// `bytes_*` is transport payload (headers never count). Outbound TCP counts
/// only sequence space not seen before, so retransmissions are not counted
/// twice: transmit for one socket runs under its lock, one segment at a time, in
/// order. Inbound TCP counts every segment's payload: the cgroup ingress filter
/// runs before the socket lock is taken, so segments of one flow can be seen out
/// of order on two CPUs and sequence tracking would drop the earlier one.
/// `wire_bytes_*` is every L3 byte the hook saw, headers and retransmissions
/// included.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub wire_bytes_out: u64,
    pub wire_bytes_in: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    /// Outbound TCP: sequence number after the highest byte counted.
    pub next_seq_out: u32,
    /// Non-zero once `next_seq_out` holds a value.
    pub seq_out_valid: u32,
    /// Whether the start of the outbound stream is being captured (`HEAD_*`).
    pub head: u32,
    /// Send-path TCP: `DIR_*` as the connection's state transitions said,
    /// copied at the first send, so a socket address reused within the tick
    /// cannot lend this flow another connection's direction.
    pub direction: u32,
    /// Non-zero: a send's entry could not read this flow's first bytes and
    /// left them to its return (`RETRY`, by thread; kernel-side only).
    pub head_retry: u32,
    /// `bpf_ktime_get_boot_ns` when the entry was created: an entry the LRU
    /// evicted and the next packet recreated has another stamp, so the agent
    /// counts all of it as new, however it compares with the old one's.
    pub created_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FlowCounters>() == 80, "FlowCounters changed size: both sides must agree");
// SAFETY: #[repr(C)] plain data; any bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowCounters {}

/// TCP sequence accounting for one direction of one flow: given the next
/// expected sequence number (`None` before the first segment), a segment's
/// sequence number, SYN/FIN flags and payload length, return the new next
/// sequence number and how many payload bytes are new. Retransmissions add
/// nothing, a partial retransmission only its new tail, and sequence numbers
/// wrap at 2^32. A gap (segments never seen) counts just this segment.
#[inline(always)]
pub fn tcp_advance(next: Option<u32>, seq: u32, syn: bool, fin: bool, payload: u32) -> (u32, u32) {
    let start = seq.wrapping_add(syn as u32);
    let end = start.wrapping_add(payload);
    let after = end.wrapping_add(fin as u32);
    let Some(next) = next else {
        return (after, payload);
    };
    let new_next = if after.wrapping_sub(next) as i32 > 0 { after } else { next };
    let ahead = end.wrapping_sub(next) as i32;
    let counted = if ahead <= 0 {
        0
    } else if ahead as u32 > payload {
        payload
    } else {
        ahead as u32
    };
    (new_next, counted)
}


#[cfg(test)]
mod tests {
    use super::tcp_advance;

    #[test]
    fn first_segment_counts_and_syn_fin_take_one_sequence_number() {
        assert_eq!(tcp_advance(None, 1000, true, false, 0), (1001, 0));
        assert_eq!(tcp_advance(Some(1001), 1001, false, false, 1448), (2449, 1448));
        assert_eq!(tcp_advance(Some(2449), 2449, false, true, 10), (2460, 10));
        // The FIN's retransmission adds nothing.
        assert_eq!(tcp_advance(Some(2460), 2449, false, true, 10), (2460, 0));
    }

    #[test]
    fn retransmissions_and_overlaps_count_only_new_bytes() {
        assert_eq!(tcp_advance(Some(5000), 3552, false, false, 1448), (5000, 0));
        // Half old, half new.
        assert_eq!(tcp_advance(Some(5000), 4276, false, false, 1448), (5724, 724));
        // A pure ACK.
        assert_eq!(tcp_advance(Some(5000), 5000, false, false, 0), (5000, 0));
    }

    #[test]
    fn wraps_at_two_to_the_32() {
        let (next, n) = tcp_advance(Some(u32::MAX - 99), u32::MAX - 99, false, false, 1000);
        assert_eq!((next, n), (900, 1000));
        assert_eq!(tcp_advance(Some(900), u32::MAX - 99, false, false, 1000), (900, 0));
    }

    #[test]
    fn a_gap_counts_only_the_segment() {
        assert_eq!(tcp_advance(Some(1000), 9000, false, false, 100), (9100, 100));
    }

    #[test]
    fn a_gso_super_segment_counts_whole() {
        assert_eq!(tcp_advance(Some(1), 1, false, false, 65_000), (65_001, 65_000));
    }
}
