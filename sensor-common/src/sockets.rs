//! Socket ownership: who owns each socket (`SOCKS`), who listens on each
//! port (`LISTENERS`), and the direction each connection was opened in.

use crate::COMM_LEN;

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
const _: () = assert!(core::mem::size_of::<SockInfo>() == 72, "SockInfo changed size: both sides must agree");
// SAFETY: #[repr(C)] plain data; any bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SockInfo {}

/// Owner of a bound port, so an accepted socket (created by the kernel in softirq,
/// where no hook sees its process) can be attributed to the listening process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub port: u16,
    pub protocol: u16,
}
const _: () = assert!(core::mem::size_of::<ListenKey>() == 4, "ListenKey changed size: both sides must agree");
// SAFETY: #[repr(C)] plain data; any bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ListenKey {}

/// Value of the `LISTENERS` map: who bound the port, and with which socket (so
/// that socket's release can retire the entry and nobody else's can).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ListenValue {
    pub cookie: u64,
    pub owner: SockInfo,
    /// The binder's network namespace (`bpf_get_netns_cookie`).
    pub netns: u64,
    /// Non-zero once a process in another network namespace bound the same
    /// port (pods listening on :8080 each): the packet hook cannot tell which
    /// namespace an accepted socket is in, so none is guessed and the agent
    /// places those sockets itself (sock_diag in each namespace).
    pub ambiguous: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ListenValue>() == 96, "ListenValue changed size: both sides must agree");
// SAFETY: #[repr(C)] plain data; any bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ListenValue {}

/// Where `sock:sock_send_length` carries its `sk` (fixed since the tracepoint
/// appeared in 6.3; the loader checks tracefs agrees before attaching).
pub const SEND_LEN_SK_OFF: u32 = 8;
