//! The kernel/user boundary of sluice: every type that crosses a BPF map or the
//! ring buffer, laid out `#[repr(C)]` so the eBPF object and the agent agree byte
//! for byte. Nothing here allocates or depends on std, so `sensor-ebpf` can use it.
#![no_std]

/// Task command name length (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Bytes of the executable path captured by the kernel at exec.
pub const PATH_LEN: usize = 256;
/// Bytes of argv captured by the kernel (NUL-separated). A power of two: the eBPF
/// side masks its write offset with `ARGV_LEN - 1` so the verifier can bound it.
pub const ARGV_LEN: usize = 1024;
/// Largest single argument read in one go; the argv buffer carries this much slack
/// past `ARGV_LEN` so a read that starts near the end stays inside the map value.
pub const ARG_CHUNK: usize = 256;
/// Arguments read at most per exec (a bounded loop for the verifier).
pub const MAX_ARGS: u32 = 32;

/// Ring-buffer event kinds (first field of every event).
pub const EVENT_EXEC: u32 = 1;
pub const EVENT_FORK: u32 = 2;
pub const EVENT_EXIT: u32 = 3;
/// First bytes of a connection or a DNS answer, for naming destinations.
pub const EVENT_PAYLOAD: u32 = 4;
/// A process moved to another process group (setpgid, setsid): its job.
pub const EVENT_PGID: u32 = 5;

/// `ExecEvent::flags` bits.
pub const EXEC_ARGV_TRUNCATED: u32 = 1;
pub const EXEC_ARGV_MISSING: u32 = 2;
pub const EXEC_PATH_TRUNCATED: u32 = 4;
/// argv taken from the new program's stack (`mm->arg_start..arg_end`): the
/// syscall-entry copy was missing (a 32-bit `int 0x80` execve passes no
/// syscall tracepoint) or stopped at an unreadable page. NUL-separated, argc
/// not counted (userspace splits).
pub const EXEC_ARGV_FROM_MM: u32 = 8;
/// The syscall-entry copy hit memory it could not read (a page not faulted
/// in): what it holds is a prefix.
pub const EXEC_ARGV_PARTIAL: u32 = 16;
/// `path` is the executed file's own path, walked from its dentry up to the
/// root of the process's mount tree (the string exec was given was relative):
/// NUL-terminated components, leaf first.
pub const EXEC_PATH_FROM_FILE: u32 = 32;

/// Scratch for that walk: components are read at masked offsets below
/// `EXE_WALK_LEN`, each at most `EXE_NAME_MAX` bytes, so the buffer has that
/// much slack; a path longer than `PATH_LEN` keeps the string instead.
pub const EXE_WALK_LEN: usize = 512;
pub const EXE_NAME_MAX: usize = 128;
/// Directories walked at most (bounded for the verifier).
pub const EXE_WALK_DEPTH: u32 = 24;

/// Common prefix of every ring-buffer event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    /// Thread-group id (the process id userspace sees).
    pub pid: u32,
    /// `bpf_ktime_get_boot_ns` at the event.
    pub ktime_ns: u64,
}

/// A successful execve/execveat, emitted from `sched:sched_process_exec`, with the
/// argv captured at `sys_enter_execve*` so even a process that lives 1 ms is named.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub flags: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    /// Bytes used in `path` (without the NUL).
    pub path_len: u32,
    /// Bytes used in `argv` (NUL-separated arguments, each NUL-terminated).
    pub argv_len: u32,
    pub argc: u32,
    pub _pad: u32,
    pub path: [u8; PATH_LEN],
    pub argv: [u8; ARGV_LEN + ARG_CHUNK],
}

/// argv as captured at syscall entry, held per thread until the exec succeeds.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArgvBuf {
    pub len: u32,
    pub argc: u32,
    pub flags: u32,
    pub _pad: u32,
    pub data: [u8; ARGV_LEN + ARG_CHUNK],
}

/// A new process (not a thread), from `task:task_newtask`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    pub header: EventHeader,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// A thread group leader exiting, from `sched:sched_process_exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub header: EventHeader,
}

/// A process joined or started a process group, from `sys_exit_setpgid` (the
/// arguments kept from `sys_enter_setpgid`, emitted only on success) and
/// `sys_exit_setsid`. `header.pid` is the process that moved (a shell moves
/// its children: setpgid(child, child)).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PgidEvent {
    pub header: EventHeader,
    pub pgid: u32,
    pub _pad: u32,
}

/// How the kernel learned who owns a socket (`SockInfo::origin`).
pub const ORIGIN_CREATE: u8 = 1;
pub const ORIGIN_CONNECT: u8 = 2;
pub const ORIGIN_SENDMSG: u8 = 3;
/// Accepted socket, owned by whoever bound its local port.
pub const ORIGIN_LISTENER: u8 = 4;
/// Older than the sensor: resolved by the agent through sock_diag and /proc.
pub const ORIGIN_PROCFS: u8 = 5;

/// `network.direction` as the kernel saw it.
pub const DIR_UNKNOWN: u8 = 0;
/// A local process connected out (or sent an unconnected datagram).
pub const DIR_EGRESS: u8 = 1;
/// A local process accepted the connection.
pub const DIR_INGRESS: u8 = 2;

/// Owner of one socket, keyed by socket cookie in the `SOCKS` map. Written in
/// process context by the cgroup sock / sock_addr hooks, so `tgid` is the real
/// owner, not whoever happened to be on the CPU when a packet went by.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockInfo {
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub created_ns: u64,
    /// Set by `sock_release`; userspace retires the socket's flows once they go idle.
    pub closed_ns: u64,
    pub comm: [u8; COMM_LEN],
    pub family: u16,
    pub sock_type: u16,
    pub protocol: u16,
    pub origin: u8,
    pub direction: u8,
    /// Port given to bind(), if any (the kernel only shows it at post_bind).
    pub bound_port: u16,
    pub _pad: [u8; 6],
}

/// One (socket, peer) pair: the unit of byte accounting in the kernel. Addresses
/// are IPv6 or IPv4-mapped IPv6 (`::ffff:a.b.c.d`), ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    pub _pad: u32,
    /// `bpf_ktime_get_boot_ns` when the entry was created: an entry the LRU
    /// evicted and the next packet recreated has another stamp, so the agent
    /// counts all of it as new, however it compares with the old one's.
    pub created_ns: u64,
}

/// Bytes of payload one `PayloadEvent` carries: a ClientHello with a
/// post-quantum key share is ~1.9 KB, a DNS answer over UDP at most 1232 with
/// the usual EDNS size. A power of two, so the eBPF side can mask lengths.
pub const PAYLOAD_LEN: usize = 2048;
/// Outbound stream bytes captured per connection at most (a ClientHello split
/// across writes or segments is reassembled from these).
pub const HEAD_STREAM_LIMIT: u64 = 4096;
/// Outbound datagrams captured per UDP flow at most (QUIC Initials).
pub const HEAD_DATAGRAM_LIMIT: u64 = 3;

/// `FlowCounters::head`: nothing decided yet, capturing, or done.
pub const HEAD_UNDECIDED: u32 = 0;
pub const HEAD_CAPTURING: u32 = 1;
pub const HEAD_DONE: u32 = 2;

/// Payload copies each CPU may make per `PAYLOAD_RATE_NS` (a flood of
/// ClientHellos or port-53 datagrams costs the agent at most this much work).
pub const PAYLOAD_RATE_MAX: u64 = 2_000;
pub const PAYLOAD_RATE_NS: u64 = 100_000_000;

/// `PayloadEvent::kind`.
/// The start of an outbound TCP stream that looks like TLS or HTTP.
pub const PAYLOAD_STREAM_HEAD: u32 = 1;
/// The first outbound datagrams of a UDP flow that look like QUIC.
pub const PAYLOAD_DATAGRAM_HEAD: u32 = 2;
/// An inbound DNS answer (UDP or TCP from port 53).
pub const PAYLOAD_DNS: u32 = 3;
/// An outbound DNS query (UDP to port 53): what an answer must match.
pub const PAYLOAD_DNS_QUERY: u32 = 4;

/// Payload bytes the kernel copied for userspace to parse (TLS SNI, HTTP Host,
/// QUIC, DNS). Parsing happens in userspace only: the kernel copies bounded
/// bytes and never interprets them beyond a few magic bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PayloadEvent {
    pub header: EventHeader,
    pub key: FlowKey,
    /// `PAYLOAD_*`.
    pub kind: u32,
    /// Bytes used in `data`.
    pub len: u32,
    /// Stream offset of `data[0]` (outbound TCP), datagram index (outbound
    /// UDP), TCP sequence number (inbound DNS over TCP), 0 otherwise.
    pub offset: u64,
    /// Payload length of the segment, write or datagram `data` came from.
    pub orig_len: u32,
    pub _pad: u32,
    pub data: [u8; PAYLOAD_LEN],
}

/// Whether bytes at the start of a stream look like a TLS handshake record
/// (content type 22, major version 3), an HTTP/1 request line, or a SOCKS
/// client's first message: SOCKS4 CONNECT/BIND (`04 01|02`), or a SOCKS5
/// greeting offering 1-8 methods, the first of them no-auth, GSSAPI or
/// username/password (`05 n 00|01|02`). A SOCKS5 greeting is often a write
/// of 3 bytes, so callers pass what they could read, zero-padded.
#[inline(always)]
pub fn looks_like_stream_head(b: [u8; 5]) -> bool {
    let word = [b[0], b[1], b[2], b[3]];
    (b[0] == 0x16 && b[1] == 0x03)
        || matches!(
            &word,
            b"GET " | b"PUT " | b"POST" | b"HEAD" | b"PATC" | b"DELE" | b"OPTI" | b"CONN"
        )
        || (b[0] == 4 && (b[1] == 1 || b[1] == 2))
        || (b[0] == 5 && b[1] >= 1 && b[1] <= 8 && b[2] <= 2)
}

/// Whether a datagram starts like a QUIC long-header packet of a known
/// version (v1, v2, or a draft): header form and fixed bits set.
#[inline(always)]
pub fn looks_like_quic(b: [u8; 5]) -> bool {
    let version = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
    b[0] & 0xc0 == 0xc0 && (version == 1 || version == 0x6b33_43cf || version >> 8 == 0xff_0000)
}

/// Capture decision for one outbound write or segment: given the flow's head
/// state, the stream offset (or datagram index) of its first new byte and
/// whether its first bytes look interesting, return the new state and whether
/// to copy it. Only the first write can start a capture; it then continues up
/// to `limit`.
#[inline(always)]
pub fn head_step(state: u32, offset: u64, interesting: bool, limit: u64) -> (u32, bool) {
    match state {
        HEAD_UNDECIDED if offset == 0 && interesting => (HEAD_CAPTURING, true),
        HEAD_UNDECIDED => (HEAD_DONE, false),
        HEAD_CAPTURING if offset < limit => (HEAD_CAPTURING, true),
        _ => (HEAD_DONE, false),
    }
}

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

/// Owner of a bound port, so an accepted socket (created by the kernel in softirq,
/// where no hook sees its process) can be attributed to the listening process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub port: u16,
    pub protocol: u16,
}

/// Indexes of the per-CPU `COUNTERS` array: what the kernel side lost or skipped.
pub mod counter {
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
    pub const LEN: u32 = 13;
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
    ];
}

/// Names of the globals the loader sets from the running kernel's tracepoint
/// format files (offsets change between kernels: 6.1 has `char[16]` comms in
/// `sched_process_fork`, 6.18 has `__data_loc` strings).
/// Where `sock:sock_send_length` carries its `sk` (fixed since the tracepoint
/// appeared in 6.3; the loader checks tracefs agrees before attaching).
pub const SEND_LEN_SK_OFF: u32 = 8;

pub mod globals {
    pub const EXEC_FILENAME_OFF: &str = "EXEC_FILENAME_OFF";
    pub const NEWTASK_PID_OFF: &str = "NEWTASK_PID_OFF";
    pub const NEWTASK_FLAGS_OFF: &str = "NEWTASK_FLAGS_OFF";
    pub const EXECVE_ARGV_OFF: &str = "EXECVE_ARGV_OFF";
    pub const EXECVEAT_ARGV_OFF: &str = "EXECVEAT_ARGV_OFF";
    pub const EXEC_OLD_PID_OFF: &str = "EXEC_OLD_PID_OFF";
    pub const SETPGID_PID_OFF: &str = "SETPGID_PID_OFF";
    pub const SETPGID_PGID_OFF: &str = "SETPGID_PGID_OFF";
    pub const SETPGID_RET_OFF: &str = "SETPGID_RET_OFF";
    pub const SETSID_RET_OFF: &str = "SETSID_RET_OFF";
    /// Field offsets from the kernel's BTF, for the send-path probes.
    pub const SKC_DADDR: &str = "SKC_DADDR";
    pub const SKC_RCV_SADDR: &str = "SKC_RCV_SADDR";
    pub const SKC_DPORT: &str = "SKC_DPORT";
    pub const SKC_NUM: &str = "SKC_NUM";
    pub const SKC_FAMILY: &str = "SKC_FAMILY";
    pub const SKC_V6_DADDR: &str = "SKC_V6_DADDR";
    pub const SKC_V6_RCV_SADDR: &str = "SKC_V6_RCV_SADDR";
    pub const MSG_NAME: &str = "MSG_NAME";
    pub const SS_SKADDR_OFF: &str = "SS_SKADDR_OFF";
    pub const SS_OLDSTATE_OFF: &str = "SS_OLDSTATE_OFF";
    pub const SS_NEWSTATE_OFF: &str = "SS_NEWSTATE_OFF";
    pub const SS_PROTOCOL_OFF: &str = "SS_PROTOCOL_OFF";
    /// `sock_common.skc_cookie` (BTF), for the cgroup backend's owner-on-send.
    pub const SKC_COOKIE: &str = "SKC_COOKIE";
    /// `task_struct.signal` and `signal_struct.live` (BTF): a process has
    /// exited when its last thread has, whichever thread that is.
    pub const TASK_SIGNAL_OFF: &str = "TASK_SIGNAL_OFF";
    pub const SIGNAL_LIVE_OFF: &str = "SIGNAL_LIVE_OFF";
    /// `task_struct.mm`, `mm_struct.arg_start` / `arg_end` (BTF): where every
    /// exec leaves the new program's argv.
    pub const TASK_MM_OFF: &str = "TASK_MM_OFF";
    pub const MM_ARG_START_OFF: &str = "MM_ARG_START_OFF";
    pub const MM_ARG_END_OFF: &str = "MM_ARG_END_OFF";
    /// The executed file's path, walked in the kernel (BTF): `mm_struct.exe_file`,
    /// `file.f_path`, `path.mnt`/`dentry`, `dentry.d_parent`/`d_name`,
    /// `qstr.name`, `vfsmount.mnt_root`, `mount.mnt`/`mnt_parent`/`mnt_mountpoint`.
    pub const MM_EXE_FILE_OFF: &str = "MM_EXE_FILE_OFF";
    pub const FILE_F_PATH_OFF: &str = "FILE_F_PATH_OFF";
    pub const PATH_MNT_OFF: &str = "PATH_MNT_OFF";
    pub const PATH_DENTRY_OFF: &str = "PATH_DENTRY_OFF";
    pub const DENTRY_PARENT_OFF: &str = "DENTRY_PARENT_OFF";
    pub const DENTRY_NAME_OFF: &str = "DENTRY_NAME_OFF";
    pub const QSTR_NAME_OFF: &str = "QSTR_NAME_OFF";
    pub const VFSMOUNT_ROOT_OFF: &str = "VFSMOUNT_ROOT_OFF";
    pub const MOUNT_MNT_OFF: &str = "MOUNT_MNT_OFF";
    pub const MOUNT_PARENT_OFF: &str = "MOUNT_PARENT_OFF";
    pub const MOUNT_MOUNTPOINT_OFF: &str = "MOUNT_MOUNTPOINT_OFF";
    /// Position of `int flags` among tcp_recvmsg's arguments (BTF).
    pub const RECV_FLAGS_ARG: &str = "RECV_FLAGS_ARG";
    /// `struct msghdr.msg_iter` and the `struct iov_iter` fields read to copy
    /// the first bytes of a send, and the `iter_type` values (their order
    /// changed in 6.5).
    pub const MSG_ITER: &str = "MSG_ITER";
    pub const ITER_TYPE_OFF: &str = "ITER_TYPE_OFF";
    pub const ITER_OFFSET_OFF: &str = "ITER_OFFSET_OFF";
    pub const ITER_COUNT_OFF: &str = "ITER_COUNT_OFF";
    pub const ITER_PTR_OFF: &str = "ITER_PTR_OFF";
    pub const ITER_UBUF: &str = "ITER_UBUF";
    pub const ITER_IOVEC: &str = "ITER_IOVEC";
}

/// Map names, shared so a rename on one side is a compile error on the other.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const PAYLOADS: &str = "PAYLOADS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SOCKS: &str = "SOCKS";
    pub const FLOWS: &str = "FLOWS";
    pub const LISTENERS: &str = "LISTENERS";
    pub const ARGV: &str = "ARGV";
    pub const DIRS: &str = "DIRS";
}

/// Value of the `LISTENERS` map: who bound the port, and with which socket (so
/// that socket's release can retire the entry and nobody else's can).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ListenValue {
    pub cookie: u64,
    pub owner: SockInfo,
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
    fn head_capture_starts_only_at_offset_zero_and_stops_at_the_limit() {
        use super::*;
        assert_eq!(head_step(HEAD_UNDECIDED, 0, true, 4096), (HEAD_CAPTURING, true));
        assert_eq!(head_step(HEAD_UNDECIDED, 0, false, 4096), (HEAD_DONE, false));
        // A connection first seen mid-stream (older than the sensor) is never captured.
        assert_eq!(head_step(HEAD_UNDECIDED, 900, true, 4096), (HEAD_DONE, false));
        assert_eq!(head_step(HEAD_CAPTURING, 1448, false, 4096), (HEAD_CAPTURING, true));
        assert_eq!(head_step(HEAD_CAPTURING, 4096, true, 4096), (HEAD_DONE, false));
        assert_eq!(head_step(HEAD_DONE, 0, true, 4096), (HEAD_DONE, false));
        assert!(looks_like_stream_head([0x16, 0x03, 0x01, 0x02, 0]));
        assert!(looks_like_stream_head(*b"PUT /"));
        assert!(!looks_like_stream_head(*b"SSH-2"));
        // SOCKS: a 3-byte SOCKS5 greeting (zero-padded), SOCKS4 CONNECT.
        assert!(looks_like_stream_head([5, 1, 0, 0, 0]));
        assert!(looks_like_stream_head([5, 2, 0, 2, 0]));
        assert!(looks_like_stream_head([4, 1, 0, 80, 1]));
        assert!(!looks_like_stream_head([5, 0, 0, 0, 0]));
        assert!(!looks_like_stream_head([5, 1, 0x80, 0, 0]));
        assert!(looks_like_quic([0xc3, 0, 0, 0, 1]));
        assert!(!looks_like_quic([0x43, 0, 0, 0, 1]));
        assert!(!looks_like_quic([0xc3, 0, 0, 0, 7]));
    }

    #[test]
    fn a_gso_super_segment_counts_whole() {
        assert_eq!(tcp_advance(Some(1), 1, false, false, 65_000), (65_001, 65_000));
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)] plain data with no padding-dependent
    // invariants; any bit pattern is a valid value.
    unsafe impl aya::Pod for SockInfo {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowCounters {}
    unsafe impl aya::Pod for ListenKey {}
    unsafe impl aya::Pod for ListenValue {}
    unsafe impl aya::Pod for PayloadEvent {}
}
