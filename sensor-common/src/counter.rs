//! Indexes of the per-CPU `COUNTERS` array: what the kernel side lost or skipped.

pub const RINGBUF_DROP_EXEC: u32 = 0;
pub const RINGBUF_DROP_FORK: u32 = 1;
pub const RINGBUF_DROP_EXIT: u32 = 2;
pub const ARGV_STORE_FAIL: u32 = 3;
pub const SOCK_STORE_FAIL: u32 = 4;
pub const FLOW_STORE_FAIL: u32 = 5;
pub const SKB_PARSE_FAIL: u32 = 6;
pub const SKB_NO_SOCKET: u32 = 7;
pub const EXEC_NO_ARGV: u32 = 8;
pub const SEND_READ_FAIL: u32 = 9;
pub const RINGBUF_DROP_PAYLOAD: u32 = 10;
pub const RINGBUF_DROP_PGID: u32 = 11;
pub const PAYLOAD_RATE_LIMITED: u32 = 12;
/// An accepted socket left to the agent: its port is bound in several network namespaces.
pub const LISTENER_AMBIGUOUS: u32 = 13;
/// A socket-owner change the kernel could not mark for the agent's mirror
/// (`SOCKS_CHANGED` full): the agent reads all of SOCKS instead.
pub const OWNER_CHANGES_LOST: u32 = 14;
/// A send's first bytes lay on a page no page table mapped yet (a probe may
/// not fault one in): copied at the send's return instead.
pub const HEAD_READ_FAULT: u32 = 15;
/// ... and could not be read at its return either: that flow's start is not named.
pub const HEAD_RETRY_FAULT: u32 = 16;
/// Containment: packets of a contained socket dropped on egress.
pub const DENIED_PACKETS: u32 = 17;
/// Containment: sockets a contained process tried to create, refused (EPERM).
pub const DENIED_SOCKETS: u32 = 18;
/// Containment: connects and sends of a contained process, refused (EPERM; BPF LSM).
pub const DENIED_SENDS: u32 = 19;
pub const LEN: u32 = 20;
/// Names in index order, for metrics and diagnostics.
pub const NAMES: [&str; LEN as usize] = [
    "ringbuf_drop_exec",
    "ringbuf_drop_fork",
    "ringbuf_drop_exit",
    "argv_store_fail",
    "sock_store_fail",
    "flow_store_fail",
    "skb_parse_fail",
    "skb_no_socket",
    "exec_no_argv",
    "send_read_fail",
    "ringbuf_drop_payload",
    "ringbuf_drop_pgid",
    "payload_rate_limited",
    "listener_ambiguous",
    "owner_changes_lost",
    "head_read_fault",
    "head_retry_fault",
    "denied_packets",
    "denied_sockets",
    "denied_sends",
];
