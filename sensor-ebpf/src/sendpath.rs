//! The send-path backends: probes on tcp_sendmsg, tcp_sendpage, udp_sendmsg,
//! udpv6_sendmsg, mptcp_sendmsg, tcp_bpf_sendmsg and, for TCP sockets with an
//! upper-layer protocol (kTLS), inet_sendmsg (bytes out), and on tcp_recvmsg /
//! tcp_cleanup_rbuf (bytes in), run in the
//! context of the thread doing the I/O, so bytes go to the process that really
//! sent them, at the moment it sent them.
//!
//! - `fentry`: fexit programs read the return value: only bytes the kernel
//!   accepted count, a failed or partial send is not inflated (iovisor/bcc#2440).
//! - `kprobe`: a kprobe stashes the arguments per thread, the kretprobe reads the
//!   return value, for kernels without BPF trampolines.
//!
//! Struct fields are read at offsets the agent took from the running kernel's
//! BTF and patched in as globals: nothing is laid out for one kernel.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::LruHashMap,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use sensor_common::{counter, FlowKey};

use crate::{
    add_volume, count, flow_counters, global,
    heads::{self, IPPROTO_TCP, IPPROTO_UDP},
};

#[unsafe(no_mangle)]
static SKC_DADDR: u32 = 0;
#[unsafe(no_mangle)]
static SKC_RCV_SADDR: u32 = 4;
#[unsafe(no_mangle)]
static SKC_DPORT: u32 = 12;
#[unsafe(no_mangle)]
static SKC_NUM: u32 = 14;
#[unsafe(no_mangle)]
static SKC_FAMILY: u32 = 16;
#[unsafe(no_mangle)]
static SKC_V6_DADDR: u32 = 56;
#[unsafe(no_mangle)]
static SKC_V6_RCV_SADDR: u32 = 72;
#[unsafe(no_mangle)]
static MSG_NAME: u32 = 0;
/// `msghdr.msg_iter` and `iov_iter` fields; the loader sets ITER_UBUF/IOVEC to
/// this kernel's enum values (255: absent, nothing is copied).
#[unsafe(no_mangle)]
static MSG_ITER: u32 = 16;
#[unsafe(no_mangle)]
static ITER_TYPE_OFF: u32 = 0;
#[unsafe(no_mangle)]
static ITER_OFFSET_OFF: u32 = 8;
#[unsafe(no_mangle)]
static ITER_COUNT_OFF: u32 = 16;
#[unsafe(no_mangle)]
static ITER_PTR_OFF: u32 = 24;
#[unsafe(no_mangle)]
static ITER_UBUF: u32 = 255;
#[unsafe(no_mangle)]
static ITER_IOVEC: u32 = 255;
/// Which argument of tcp_recvmsg is `int flags` (3 since 5.19, 4 before,
/// when `nonblock` came first), from BTF; u32::MAX: receive bytes are taken
/// from tcp_cleanup_rbuf alone.
#[unsafe(no_mangle)]
static RECV_FLAGS_ARG: u32 = u32::MAX;
/// `socket.sk`, `sock.sk_protocol`, `sock.sk_type` and
/// `inet_connection_sock.icsk_ulp_ops` (BTF), for telling a TCP socket with
/// an upper-layer protocol (kTLS) apart; u32::MAX: not known, so no socket
/// is taken for one (the loader says what that leaves uncounted).
#[unsafe(no_mangle)]
static SOCKET_SK_OFF: u32 = 24;
#[unsafe(no_mangle)]
static SK_PROTOCOL_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static SK_TYPE_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static ICSK_ULP_OPS_OFF: u32 = u32::MAX;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;

/// Arguments saved at kprobe entry for the kretprobe, per thread.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Stash {
    sk: u64,
    msg: u64,
}

#[map]
static STASH: LruHashMap<u64, Stash> = LruHashMap::with_max_entries(16384, 0);

/// A tcp_recvmsg in progress, per thread: its socket, and whether it only
/// peeks (MSG_PEEK consumes nothing).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Receiving {
    sk: u64,
    peek: u32,
    _pad: u32,
}

#[map]
static RECEIVING: LruHashMap<u64, Receiving> = LruHashMap::with_max_entries(16384, 0);

const MSG_PEEK: i32 = 2;

/// Thread -> the socket it is in tcp_bpf_sendmsg on (fentry backend).
#[map]
static BPF_SENDING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Thread -> the upper-layer socket whose send tcp_sendmsg / tcp_sendpage
/// has just counted, for the enclosing inet_sendmsg / inet_sendpage to leave
/// alone (a ULP that keeps TCP's own sendmsg: kTLS with TLS_RX only).
#[map]
static ULP_COUNTED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Thread -> the upper-layer socket it is in inet_sendmsg / inet_sendpage on
/// (kprobe backend: the kretprobe has only the return value).
#[map]
static INET_SENDING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn read<T>(base: *const u8, off: u32) -> Option<T> {
    // SAFETY: a probe read, which faults safely; offsets are from BTF.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) }.ok()
}

fn mapped_v4(a: [u8; 4]) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[10] = 0xff;
    m[11] = 0xff;
    m[12..].copy_from_slice(&a);
    m
}

/// (socket, peer) key from the socket's own fields; for an unconnected UDP send
/// the peer comes from the message's destination address instead.
#[inline(always)]
fn key_of(sk: *const u8, msg: *const u8, protocol: u8) -> Option<FlowKey> {
    let family: u16 = read(sk, global(&SKC_FAMILY))?;
    let mut key = FlowKey {
        cookie: sk as u64,
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port: read(sk, global(&SKC_NUM))?,
        remote_port: u16::from_be(read(sk, global(&SKC_DPORT))?),
        protocol,
        ip_version: 4,
        _pad: [0; 2],
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad2: 0,
    };
    if family == AF_INET {
        key.local_addr = mapped_v4(read(sk, global(&SKC_RCV_SADDR))?);
        key.remote_addr = mapped_v4(read(sk, global(&SKC_DADDR))?);
    } else if family == AF_INET6 {
        let base = sk.wrapping_add(global(&SKC_V6_DADDR) as usize);
        // SAFETY: 16-byte probe reads into 16-byte fields (they fault safely).
        unsafe { bpf_probe_read_kernel_buf(base, &mut key.remote_addr) }.ok()?;
        let base = sk.wrapping_add(global(&SKC_V6_RCV_SADDR) as usize);
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel_buf(base, &mut key.local_addr) }.ok()?;
        key.ip_version = 6;
    } else {
        return None;
    }
    if !msg.is_null() {
        // struct sockaddr_in / sockaddr_in6: a userspace ABI, stable by definition.
        let name: *const u8 = read(msg, global(&MSG_NAME)).unwrap_or(core::ptr::null());
        if !name.is_null() {
            let sa_family: u16 = read(name, 0)?;
            let port: u16 = read(name, 2)?;
            if sa_family == AF_INET {
                key.remote_addr = mapped_v4(read(name, 4)?);
                key.remote_port = u16::from_be(port);
            } else if sa_family == AF_INET6 {
                // SAFETY: a probe read of sin6_addr (offset 8 by the ABI).
                unsafe { bpf_probe_read_kernel_buf(name.wrapping_add(8), &mut key.remote_addr) }.ok()?;
                key.remote_port = u16::from_be(port);
            }
        }
    }
    // IPv4-mapped peers (AF_INET6 socket, IPv4 on the wire) report as IPv4.
    let r = &key.remote_addr;
    if r[..10] == [0u8; 10] && r[10] == 0xff && r[11] == 0xff {
        key.ip_version = 4;
    }
    Some(key)
}

#[inline(always)]
fn account(sk: *const c_void, msg: *const c_void, protocol: u8, bytes: i64, egress: bool) {
    if bytes <= 0 || sk.is_null() {
        return;
    }
    let Some(key) = key_of(sk as *const u8, msg as *const u8, protocol) else {
        count(counter::SEND_READ_FAIL);
        return;
    };
    let Some((c, _)) = flow_counters(&key) else { return };
    if egress {
        heads::at_send_return(c, &key, protocol, sk as u64, bytes as u64);
    }
    // SAFETY: `c` is a live FLOWS value and `d` a DIRS value. `direction` is
    // set once, to the same value by whichever CPU gets there (both read the
    // connection's one DIRS entry), so the plain store cannot tear anything.
    if protocol == IPPROTO_TCP && unsafe { (*c).direction } == 0 {
        if let Some(d) = unsafe { DIRS.get(&(sk as u64)) } {
            unsafe { (*c).direction = *d as u32 };
        }
    }
    // The send path sees payload only: wire bytes are what the socket accepted.
    add_volume(c, bytes as u64, bytes as u64, egress);
}

/// The user buffer a sendmsg is about to copy from: (address, bytes) of its
/// first segment (`ITER_UBUF` for write/send, the first iovec for sendmsg).
/// Kernel-internal iterators (kvec, bvec: kTLS, sendfile) are not copied.
#[inline(always)]
fn first_user_segment(msg: *const u8) -> Option<(u64, u64)> {
    let iter = msg.wrapping_add(global(&MSG_ITER) as usize);
    let kind: u8 = read(iter, global(&ITER_TYPE_OFF))?;
    let skip: u64 = read(iter, global(&ITER_OFFSET_OFF))?;
    let count: u64 = read(iter, global(&ITER_COUNT_OFF))?;
    let ptr: u64 = read(iter, global(&ITER_PTR_OFF))?;
    if kind as u32 == global(&ITER_UBUF) {
        return Some((ptr + skip, count));
    }
    if kind as u32 == global(&ITER_IOVEC) {
        // struct iovec { void *iov_base; size_t iov_len; }: a userspace ABI.
        let base: u64 = read(ptr as *const u8, 0)?;
        let len: u64 = read(ptr as *const u8, 8)?;
        return Some((base + skip, len.saturating_sub(skip).min(count)));
    }
    None
}

/// At the entry of tcp_sendmsg / udp(v6)_sendmsg: copy the first bytes of a
/// new connection (TLS, HTTP) or its first QUIC datagrams for naming.
#[inline(always)]
fn capture_send(sk: *const c_void, msg: *const c_void, protocol: u8) {
    if sk.is_null() || msg.is_null() {
        return;
    }
    let udp_msg = if protocol == heads::IPPROTO_UDP { msg as *const u8 } else { core::ptr::null() };
    let Some(key) = key_of(sk as *const u8, udp_msg, protocol) else { return };
    let Some((c, _)) = flow_counters(&key) else { return };
    if !heads::capturing(c) {
        return;
    }
    let Some((addr, avail)) = first_user_segment(msg as *const u8) else { return };
    heads::at_send_entry(c, &key, protocol, sk as u64, addr, avail);
}

/// The int a probed function returned (upper half of the register is noise).
#[inline(always)]
fn ret_int(r: u64) -> i64 {
    r as u32 as i32 as i64
}

// ---- fentry backend: one fexit program per function (typed by its BTF) ----
// The prototypes below are the ones each hook reads its arguments and return
// value by; `sensor-user/src/kernel/prototypes.rs` holds the same table and
// the loader refuses a kernel whose BTF disagrees.

// int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size);
// Returns the bytes queued, or a negative errno.
#[fexit(function = "tcp_sendmsg")]
pub fn fexit_tcp_sendmsg(ctx: FExitContext) -> u32 {
    let sk: *const c_void = ctx.arg(0);
    // Under tcp_bpf_sendmsg (a socket in a sockmap, no sk_msg verdict to
    // run): that call counts these bytes at its own return.
    if bpf_sending(sk) {
        return 0;
    }
    let ret = ctx.ret::<u64>().map(ret_int).unwrap_or(0);
    account(sk, core::ptr::null(), IPPROTO_TCP, ret, true);
    note_counted(sk);
    0
}

// static int tcp_bpf_sendmsg(struct sock *sk, struct msghdr *msg, size_t size);
// A socket in a sockmap with an sk_msg program sends through this instead of
// tcp_sendmsg (the verdict's data leaves by tcp_bpf_push, below
// tcp_sendmsg): counted at its return, like tcp_sendmsg.
#[fentry(function = "tcp_bpf_sendmsg")]
pub fn fentry_tcp_bpf_sendmsg(ctx: FEntryContext) -> u32 {
    let sk: *const c_void = ctx.arg(0);
    let _ = BPF_SENDING.insert(&bpf_get_current_pid_tgid(), &(sk as u64), 0);
    0
}

#[fexit(function = "tcp_bpf_sendmsg")]
pub fn fexit_tcp_bpf_sendmsg(ctx: FExitContext) -> u32 {
    let _ = BPF_SENDING.remove(&bpf_get_current_pid_tgid());
    let ret = ctx.ret::<u64>().map(ret_int).unwrap_or(0);
    account(ctx.arg(0), core::ptr::null(), IPPROTO_TCP, ret, true);
    note_counted(ctx.arg(0));
    0
}

/// Whether this thread is inside tcp_bpf_sendmsg on `sk`.
#[inline(always)]
fn bpf_sending(sk: *const c_void) -> bool {
    // SAFETY: this thread's own entry, read once.
    unsafe { BPF_SENDING.get(&bpf_get_current_pid_tgid()) }.is_some_and(|s| *s == sk as u64)
}

// int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags);
// sendfile/splice before 6.5 (then folded into tcp_sendmsg).
#[fexit(function = "tcp_sendpage")]
pub fn fexit_tcp_sendpage(ctx: FExitContext) -> u32 {
    let ret = ctx.ret::<u64>().map(ret_int).unwrap_or(0);
    account(ctx.arg(0), core::ptr::null(), IPPROTO_TCP, ret, true);
    note_counted(ctx.arg(0));
    0
}

// int inet_sendmsg(struct socket *sock, struct msghdr *msg, size_t size);
// int inet6_sendmsg(struct socket *sock, struct msghdr *msg, size_t size);
// ssize_t inet_sendpage(struct socket *sock, struct page *page, int offset, size_t size, int flags);
//   (before 6.5; sendfile then goes through inet_sendmsg)
// A TCP socket with an upper-layer protocol has its own sendmsg: kTLS after
// TLS_TX (tls_sw_sendmsg, tls_sw_sendpage) and espintcp queue records with
// tcp_sendmsg_locked / do_tcp_sendpages and never call tcp_sendmsg. Those
// functions live in modules, loaded when first used (often after the
// sensor), and fentry cannot reach module functions here: the socket layer
// above them is in vmlinux, so they are counted at its return, as the
// plaintext the application handed over. Every other socket returns at once.
#[fexit(function = "inet_sendmsg")]
pub fn fexit_inet_sendmsg(ctx: FExitContext) -> u32 {
    let ret = ctx.ret::<u64>().map(ret_int).unwrap_or(0);
    upper_layer_sent(socket_sk(ctx.arg(0)), ret);
    0
}

#[fexit(function = "inet6_sendmsg")]
pub fn fexit_inet6_sendmsg(ctx: FExitContext) -> u32 {
    let ret = ctx.ret::<u64>().map(ret_int).unwrap_or(0);
    upper_layer_sent(socket_sk(ctx.arg(0)), ret);
    0
}

#[fexit(function = "inet_sendpage")]
pub fn fexit_inet_sendpage(ctx: FExitContext) -> u32 {
    let ret = ctx.ret::<u64>().map(ret_int).unwrap_or(0);
    upper_layer_sent(socket_sk(ctx.arg(0)), ret);
    0
}

/// Whether a `struct socket *` is an IPv4 or IPv6 one (containment's LSM
/// hooks leave local sockets, AF_UNIX and netlink, alone).
#[inline(always)]
pub(crate) fn socket_is_inet(sock: *const c_void) -> bool {
    let sk = socket_sk(sock);
    !sk.is_null() && matches!(read::<u16>(sk as *const u8, global(&SKC_FAMILY)), Some(AF_INET | AF_INET6))
}

/// `sock->sk` of a `struct socket *` (null if unreadable).
#[inline(always)]
fn socket_sk(sock: *const c_void) -> *const c_void {
    if sock.is_null() {
        return core::ptr::null();
    }
    read::<u64>(sock as *const u8, global(&SOCKET_SK_OFF)).unwrap_or(0) as *const c_void
}

/// A TCP stream socket with an upper-layer protocol attached (kTLS,
/// espintcp). `icsk_ulp_ops` is a field of connection-oriented sockets only,
/// so the protocol and type must hold too; it is read first because it is
/// null on almost every socket (one read on the common path).
#[inline(always)]
fn upper_layer(sk: *const c_void) -> bool {
    let ulp = global(&ICSK_ULP_OPS_OFF);
    if sk.is_null() || ulp == u32::MAX {
        return false;
    }
    let sk = sk as *const u8;
    read::<u64>(sk, ulp).is_some_and(|ops| ops != 0)
        && read::<u16>(sk, global(&SK_PROTOCOL_OFF)) == Some(IPPROTO_TCP as u16)
        && read::<u16>(sk, global(&SK_TYPE_OFF)) == Some(SOCK_STREAM)
}

/// After tcp_sendmsg/tcp_sendpage counted a send on `sk`: if it has an
/// upper layer, the socket-layer hook above must not count it again.
#[inline(always)]
fn note_counted(sk: *const c_void) {
    if upper_layer(sk) {
        let _ = ULP_COUNTED.insert(&bpf_get_current_pid_tgid(), &(sk as u64), 0);
    }
}

/// At the socket layer's return: count a send on an upper-layer socket,
/// unless TCP's own sendmsg under it already did.
#[inline(always)]
fn upper_layer_sent(sk: *const c_void, ret: i64) {
    if !upper_layer(sk) {
        return;
    }
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: this thread's own entry, read once.
    if unsafe { ULP_COUNTED.get(&tid) }.is_some_and(|s| *s == sk as u64) {
        let _ = ULP_COUNTED.remove(&tid);
        return;
    }
    account(sk, core::ptr::null(), IPPROTO_TCP, ret, true);
}

// int udp_sendmsg(struct sock *sk, struct msghdr *msg, size_t len);
// int udpv6_sendmsg(struct sock *sk, struct msghdr *msg, size_t len);
// udpv6_sendmsg() hands an IPv4-mapped destination to udp_sendmsg() on the
// same (AF_INET6) socket and returns what it returned: that send is counted
// once, at udpv6_sendmsg, so udp_sendmsg leaves AF_INET6 sockets alone.
#[fexit(function = "udp_sendmsg")]
pub fn fexit_udp_sendmsg(ctx: FExitContext) -> u32 {
    let sk: *const c_void = ctx.arg(0);
    if is_inet6(sk) {
        return 0;
    }
    let ret = ctx.ret::<u64>().map(ret_int).unwrap_or(0);
    account(sk, ctx.arg(1), IPPROTO_UDP, ret, true);
    0
}

/// An AF_INET6 socket (the only kind udp_sendmsg sees from udpv6_sendmsg).
#[inline(always)]
fn is_inet6(sk: *const c_void) -> bool {
    !sk.is_null() && read::<u16>(sk as *const u8, global(&SKC_FAMILY)) == Some(AF_INET6)
}

#[fexit(function = "udpv6_sendmsg")]
pub fn fexit_udpv6_sendmsg(ctx: FExitContext) -> u32 {
    let ret = ctx.ret::<u64>().map(ret_int).unwrap_or(0);
    account(ctx.arg(0), ctx.arg(1), IPPROTO_UDP, ret, true);
    0
}

// static int mptcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t len);
// An MPTCP socket (IPPROTO_MPTCP, open to any user) never calls tcp_sendmsg:
// its subflows are fed from mptcp_sendmsg, which returns the bytes it took.
// `sk` is a struct mptcp_sock, whose first member is the sock with the
// connection's addresses (copied from its first subflow at connect).
#[fexit(function = "mptcp_sendmsg")]
pub fn fexit_mptcp_sendmsg(ctx: FExitContext) -> u32 {
    let ret = ctx.ret::<u64>().map(ret_int).unwrap_or(0);
    account(ctx.arg(0), core::ptr::null(), IPPROTO_TCP, ret, true);
    0
}

#[fentry(function = "mptcp_sendmsg")]
pub fn fentry_mptcp_sendmsg(ctx: FEntryContext) -> u32 {
    capture_send(ctx.arg(0), ctx.arg(1), IPPROTO_TCP);
    0
}

#[fentry(function = "tcp_sendmsg")]
pub fn fentry_tcp_sendmsg(ctx: FEntryContext) -> u32 {
    capture_send(ctx.arg(0), ctx.arg(1), IPPROTO_TCP);
    0
}

#[fentry(function = "udp_sendmsg")]
pub fn fentry_udp_sendmsg(ctx: FEntryContext) -> u32 {
    let sk: *const c_void = ctx.arg(0);
    if !is_inet6(sk) {
        capture_send(sk, ctx.arg(1), IPPROTO_UDP);
    }
    0
}

#[fentry(function = "udpv6_sendmsg")]
pub fn fentry_udpv6_sendmsg(ctx: FEntryContext) -> u32 {
    capture_send(ctx.arg(0), ctx.arg(1), IPPROTO_UDP);
    0
}

// void tcp_cleanup_rbuf(struct sock *sk, int copied);
// int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags, int *addr_len);
//   (before 5.19: ..., size_t len, int nonblock, int flags, int *addr_len)
// Bytes in are what tcp_recvmsg returns to the application, unless it only
// peeked: tcp_recvmsg_locked also calls tcp_cleanup_rbuf inside its wait
// loop with the running total (MSG_WAITALL, SO_RCVLOWAT), and at the end
// with the total again, so summing `copied` over-counts. tcp_cleanup_rbuf
// still counts what is read outside tcp_recvmsg (splice, tcp_read_sock).
#[fentry(function = "tcp_cleanup_rbuf")]
pub fn fentry_tcp_cleanup_rbuf(ctx: FEntryContext) -> u32 {
    let sk: *const c_void = ctx.arg(0);
    if !inside_recvmsg(sk) {
        let copied: i32 = ctx.arg(1);
        account(sk, core::ptr::null(), IPPROTO_TCP, copied as i64, false);
    }
    0
}

#[fentry(function = "tcp_recvmsg")]
pub fn fentry_tcp_recvmsg(ctx: FEntryContext) -> u32 {
    // Both positions exist in every version (5 or 6 arguments).
    let (a3, a4): (u64, u64) = (ctx.arg(3), ctx.arg(4));
    if let Some(flags) = recv_flags(a3, a4) {
        begin_recvmsg(ctx.arg::<*const c_void>(0) as u64, flags);
    }
    0
}

/// `flags` out of arguments 4 and 5, by the BTF-given position. Both are
/// read first and pass through the stack: a load whose ctx offset depends on
/// a global is one the verifier refuses, and LLVM would merge two loads into
/// exactly that.
#[inline(always)]
fn recv_flags(a3: u64, a4: u64) -> Option<i32> {
    // SAFETY: volatile reads of two locals.
    let (a3, a4) = unsafe { (core::ptr::read_volatile(&a3), core::ptr::read_volatile(&a4)) };
    match global(&RECV_FLAGS_ARG) {
        3 => Some(a3 as i32),
        4 => Some(a4 as i32),
        _ => None,
    }
}

#[fexit(function = "tcp_recvmsg")]
pub fn fexit_tcp_recvmsg(ctx: FExitContext) -> u32 {
    let ret = ctx.ret::<u64>().map(ret_int).unwrap_or(0);
    end_recvmsg(ret);
    0
}

#[inline(always)]
fn begin_recvmsg(sk: u64, flags: i32) {
    let r = Receiving { sk, peek: (flags & MSG_PEEK != 0) as u32, _pad: 0 };
    let _ = RECEIVING.insert(&bpf_get_current_pid_tgid(), &r, 0);
}

/// At tcp_recvmsg's return: the bytes it handed over, unless it peeked.
#[inline(always)]
fn end_recvmsg(ret: i64) {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: a copy out of this thread's own entry (only this thread writes it).
    let Some(r) = (unsafe { RECEIVING.get(&tid) }).copied() else { return };
    let _ = RECEIVING.remove(&tid);
    if r.peek == 0 {
        account(r.sk as *const c_void, core::ptr::null(), IPPROTO_TCP, ret, false);
    }
}

#[inline(always)]
fn inside_recvmsg(sk: *const c_void) -> bool {
    // SAFETY: as above, this thread's own entry.
    unsafe { RECEIVING.get(&bpf_get_current_pid_tgid()) }.is_some_and(|r| r.sk == sk as u64)
}

// ---- kprobe backend: entry stashes arguments, return accounts ----

/// Attached to tcp_sendpage: (sk, page) by thread.
#[kprobe]
pub fn kp_send_entry(ctx: ProbeContext) -> u32 {
    stash(&ctx);
    0
}

#[inline(always)]
fn stash(ctx: &ProbeContext) -> (u64, u64) {
    let sk: u64 = ctx.arg(0).unwrap_or(0);
    let msg: u64 = ctx.arg(1).unwrap_or(0);
    let _ = STASH.insert(&bpf_get_current_pid_tgid(), &Stash { sk, msg }, 0);
    (sk, msg)
}

/// tcp_sendmsg entry: stash, and copy a new connection's first bytes.
#[kprobe]
pub fn kp_tcp_sendmsg_entry(ctx: ProbeContext) -> u32 {
    let (sk, msg) = stash(&ctx);
    capture_send(sk as *const c_void, msg as *const c_void, IPPROTO_TCP);
    0
}

/// udpv6_sendmsg entry: stash, and copy QUIC Initials.
#[kprobe]
pub fn kp_udp_sendmsg_entry(ctx: ProbeContext) -> u32 {
    let (sk, msg) = stash(&ctx);
    capture_send(sk as *const c_void, msg as *const c_void, IPPROTO_UDP);
    0
}

/// udp_sendmsg entry: the same, except under udpv6_sendmsg (an AF_INET6
/// socket), whose entry already stashed these arguments and copied the
/// datagram; its return is counted once, by whichever kretprobe takes the
/// stash first.
#[kprobe]
pub fn kp_udp4_sendmsg_entry(ctx: ProbeContext) -> u32 {
    let sk: u64 = ctx.arg(0).unwrap_or(0);
    if !is_inet6(sk as *const c_void) {
        let (sk, msg) = stash(&ctx);
        capture_send(sk as *const c_void, msg as *const c_void, IPPROTO_UDP);
    }
    0
}

#[inline(always)]
fn kretprobe_account(ctx: &RetProbeContext, protocol: u8, use_msg: bool) {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: this thread's own entry (keyed by its id), copied out.
    let Some(s) = (unsafe { STASH.get(&tid) }).copied() else { return };
    let _ = STASH.remove(&tid);
    let ret = ret_int(ctx.ret::<u64>());
    let msg = if use_msg { s.msg as *const c_void } else { core::ptr::null() };
    account(s.sk as *const c_void, msg, protocol, ret, true);
    if protocol == IPPROTO_TCP {
        note_counted(s.sk as *const c_void);
    }
}

/// tcp_sendmsg / tcp_sendpage return.
#[kretprobe]
pub fn krp_tcp_send(ctx: RetProbeContext) -> u32 {
    kretprobe_account(&ctx, IPPROTO_TCP, false);
    0
}

/// udp_sendmsg / udpv6_sendmsg return.
#[kretprobe]
pub fn krp_udp_send(ctx: RetProbeContext) -> u32 {
    kretprobe_account(&ctx, IPPROTO_UDP, true);
    0
}

/// inet_sendmsg / inet6_sendmsg / inet_sendpage entry: remember an
/// upper-layer socket (see fexit_inet_sendmsg); others are left alone.
#[kprobe]
pub fn kp_inet_send_entry(ctx: ProbeContext) -> u32 {
    let sk = socket_sk(ctx.arg::<u64>(0).unwrap_or(0) as *const c_void);
    if upper_layer(sk) {
        let _ = INET_SENDING.insert(&bpf_get_current_pid_tgid(), &(sk as u64), 0);
    }
    0
}

#[kretprobe]
pub fn krp_inet_send(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: this thread's own entry, copied out.
    let Some(sk) = (unsafe { INET_SENDING.get(&tid) }).copied() else { return 0 };
    let _ = INET_SENDING.remove(&tid);
    upper_layer_sent(sk as *const c_void, ret_int(ctx.ret::<u64>()));
    0
}

#[kprobe]
pub fn kp_tcp_cleanup_rbuf(ctx: ProbeContext) -> u32 {
    let sk: u64 = ctx.arg(0).unwrap_or(0);
    if !inside_recvmsg(sk as *const c_void) {
        let copied: i64 = ctx.arg::<u64>(1).map(ret_int).unwrap_or(0);
        account(sk as *const c_void, core::ptr::null(), IPPROTO_TCP, copied, false);
    }
    0
}

/// tcp_recvmsg entry (see fentry_tcp_recvmsg).
#[kprobe]
pub fn kp_tcp_recvmsg_entry(ctx: ProbeContext) -> u32 {
    let (a3, a4): (u64, u64) = (ctx.arg(3).unwrap_or(0), ctx.arg(4).unwrap_or(0));
    if let Some(flags) = recv_flags(a3, a4) {
        begin_recvmsg(ctx.arg(0).unwrap_or(0), flags);
    }
    0
}

#[kretprobe]
pub fn krp_tcp_recvmsg(ctx: RetProbeContext) -> u32 {
    end_recvmsg(ret_int(ctx.ret::<u64>()));
    0
}

// ---- who opened each TCP connection, for both send-path backends ----

#[unsafe(no_mangle)]
static SS_SKADDR_OFF: u32 = 8;
#[unsafe(no_mangle)]
static SS_OLDSTATE_OFF: u32 = 16;
#[unsafe(no_mangle)]
static SS_NEWSTATE_OFF: u32 = 20;
#[unsafe(no_mangle)]
static SS_PROTOCOL_OFF: u32 = 30;

const IPPROTO_MPTCP: u16 = 262;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;

/// `struct sock` address -> DIR_EGRESS / DIR_INGRESS (the send-path backends'
/// socket id is that address, so the agent joins on it).
#[map]
static DIRS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// CLOSE -> SYN_SENT is an active open (connect); SYN_RECV -> ESTABLISHED a
/// passive one (accept). A stable tracepoint, fields at tracefs offsets.
#[aya_ebpf::macros::tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn sock_state(ctx: aya_ebpf::programs::TracePointContext) -> u32 {
    // SAFETY (these three): offsets from this kernel's tracefs format; read_at
    // checks bounds.
    let read = |off: &u32| -> Option<i32> { unsafe { ctx.read_at::<i32>(global(off) as usize) }.ok() };
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(global(&SS_SKADDR_OFF) as usize) }) else { return 0 };
    let proto = unsafe { ctx.read_at::<u16>(global(&SS_PROTOCOL_OFF) as usize) }.unwrap_or(0);
    // An MPTCP socket moves through TCP's states too, as itself (its subflows
    // are the kernel's sockets).
    if proto != IPPROTO_TCP as u16 && proto != IPPROTO_MPTCP {
        return 0;
    }
    let (Some(old), Some(new)) = (read(&SS_OLDSTATE_OFF), read(&SS_NEWSTATE_OFF)) else { return 0 };
    if new == TCP_SYN_SENT {
        let _ = DIRS.insert(&sk, &sensor_common::DIR_EGRESS, 0);
    } else if new == TCP_ESTABLISHED && old == TCP_SYN_RECV {
        let _ = DIRS.insert(&sk, &sensor_common::DIR_INGRESS, 0);
    }
    // Not removed at TCP_CLOSE: a connection that opens, sends and closes
    // within one tick must still be known when the agent reads it. The LRU
    // bounds the map, and a reused address is overwritten by its own open.
    0
}
