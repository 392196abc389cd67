//! Socket ownership. These cgroup hooks run in the context of the process that
//! creates, binds, connects or sends on a socket, so `current` is the owner; the
//! packet hooks in `traffic` run wherever the packet happens to be processed
//! (softirq, timers) and must not trust `current`. Every hook returns 1: sluice
//! observes, it never blocks.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel,
        generated::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, tracepoint},
    maps::PerCpuArray,
    programs::{SockAddrContext, SockContext, TracePointContext},
};
use sensor_common::{
    counter, ListenKey, ListenValue, SockInfo, COMM_LEN, DIR_EGRESS, DIR_UNKNOWN, ORIGIN_CONNECT,
    ORIGIN_CREATE, ORIGIN_SENDMSG,
};

use aya_ebpf::EbpfContext;

use crate::{count, global, owner_changed, LISTENERS, SOCKS};

/// Offset of `sock_common.skc_cookie` (BTF); the loader patches it, and
/// attaches `send_owner` only when it found it and the tracepoint's `sk` field
/// is at `sensor_common::SEND_LEN_SK_OFF` (a constant: the verifier wants
/// constant offsets for direct context reads, which cost no helper call).
#[unsafe(no_mangle)]
static SKC_COOKIE: u32 = 0;

/// Per CPU: the (`struct sock` address, sender tgid) last confirmed as the
/// owner, so a stream of writes by one process on one socket costs one compare.
/// A socket freed and reallocated at the same address and then written by the
/// same process on the same CPU, with no other send in between, would skip its
/// check: only if another process had created it and handed it over does that
/// matter, and then the bytes go to the creator, as without this hook.
#[map]
static SEND_SEEN: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// The current task as the owner of a socket.
#[inline(always)]
fn current_owner(family: u32, sock_type: u32, protocol: u32, origin: u8, direction: u8) -> SockInfo {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    SockInfo {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        // SAFETY: helpers that take no arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        // SAFETY: as above.
        created_ns: unsafe { bpf_ktime_get_boot_ns() },
        closed_ns: 0,
        comm: bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]),
        family: family as u16,
        sock_type: sock_type as u16,
        protocol: protocol as u16,
        origin,
        direction,
        bound_port: 0,
        _pad: [0; 6],
    }
}

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    if crate::respond::refuse_socket() {
        return 0;
    }
    // SAFETY: the context's socket, a pointer the verifier checked.
    let sk = unsafe { &*ctx.sock };
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock as *mut c_void) };
    let owner = current_owner(sk.family, sk.type_, sk.protocol, ORIGIN_CREATE, DIR_UNKNOWN);
    if SOCKS.insert(&cookie, &owner, 0).is_err() {
        count(counter::SOCK_STORE_FAIL);
    }
    owner_changed(cookie);
    1
}

#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    record_bind(&ctx);
    1
}

#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    record_bind(&ctx);
    1
}

/// A bound port: remember its owner so sockets the kernel accepts on it later
/// (in softirq, with no process in sight) can be attributed to the listener.
#[inline(always)]
fn record_bind(ctx: &SockContext) {
    // SAFETY: the context's socket, a pointer the verifier checked.
    let sk = unsafe { &*ctx.sock };
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock as *mut c_void) };
    let port = sk.src_port as u16;
    let mut owner = current_owner(sk.family, sk.type_, sk.protocol, ORIGIN_CREATE, DIR_UNKNOWN);
    owner.bound_port = port;
    if let Some(existing) = SOCKS.get_ptr_mut(&cookie) {
        // SAFETY: a live map value; SOCKS values are written only by this socket's own hooks, in the
        // context of the process using it; two CPUs racing on one socket write
        // whole owner fields, and the agent tolerates a mixed owner for a tick.
        unsafe { (*existing).bound_port = port };
    } else if SOCKS.insert(&cookie, &owner, 0).is_err() {
        count(counter::SOCK_STORE_FAIL);
    }
    owner_changed(cookie);
    if port != 0 {
        let key = ListenKey { port, protocol: sk.protocol as u16 };
        // SAFETY: the helper takes the program's own context (5.8+ for cgroup_sock).
        let netns = unsafe { bpf_get_netns_cookie(ctx.sock as *mut c_void) };
        if let Some(l) = LISTENERS.get_ptr_mut(&key) {
            // SAFETY: a live LISTENERS value; binds race only with binds of the
            // same port, and `ambiguous` only ever goes from 0 to 1.
            let l = unsafe { &mut *l };
            if l.netns != netns {
                l.ambiguous = 1;
                return;
            }
        }
        let _ = LISTENERS.insert(&key, &ListenValue { cookie, owner, netns, ambiguous: 0, _pad: 0 }, 0);
    }
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock as *mut c_void) };
    if let Some(info) = SOCKS.get_ptr_mut(&cookie) {
        // SAFETY: a live map value; release is the socket's last hook.
        let info = unsafe { &mut *info };
        // Not deleted here: data queued before close() still leaves after it, on
        // this cookie. The agent retires the socket once its flows go idle.
        // SAFETY: a helper without arguments.
        info.closed_ns = unsafe { bpf_ktime_get_boot_ns() };
        owner_changed(cookie);
        if info.bound_port != 0 {
            let key = ListenKey { port: info.bound_port, protocol: info.protocol };
            if let Some(l) = LISTENERS.get_ptr(&key) {
                // SAFETY: a live map value, read once.
                if unsafe { (*l).cookie } == cookie {
                    let _ = LISTENERS.remove(&key);
                }
            }
        }
    }
    1
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    record_active(&ctx, ORIGIN_CONNECT);
    1
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    record_active(&ctx, ORIGIN_CONNECT);
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    record_active(&ctx, ORIGIN_SENDMSG);
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    record_active(&ctx, ORIGIN_SENDMSG);
    1
}

/// connect() or an unconnected sendto(): the caller is reaching out, so it owns
/// the socket and the direction is egress. sendmsg runs per datagram, so the
/// common case (same owner as last time) returns after one lookup.
#[inline(always)]
fn record_active(ctx: &SockAddrContext, origin: u8) {
    // SAFETY: the context's sockaddr, a pointer the verifier checked.
    let sa = unsafe { &*ctx.sock_addr };
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(existing) = SOCKS.get_ptr_mut(&cookie) {
        // SAFETY: a live map value; SOCKS values are written only by this socket's own hooks, in the
    // context of the process using it; two CPUs racing on one socket write
    // whole owner fields, and the agent tolerates a mixed owner for a tick.
        let existing = unsafe { &mut *existing };
        if existing.tgid == tgid && (existing.direction != DIR_UNKNOWN || origin == ORIGIN_SENDMSG) {
            if existing.direction == DIR_UNKNOWN {
                existing.direction = DIR_EGRESS;
                owner_changed(cookie);
            }
            return;
        }
        // A socket inherited across fork/exec or passed over a unix socket:
        // the process reaching out with it now is its owner.
        let bound = existing.bound_port;
        let mut owner = current_owner(sa.family, sa.type_, sa.protocol, origin, DIR_EGRESS);
        owner.bound_port = bound;
        owner.created_ns = existing.created_ns;
        *existing = owner;
        owner_changed(cookie);
        return;
    }
    let owner = current_owner(sa.family, sa.type_, sa.protocol, origin, DIR_EGRESS);
    if SOCKS.insert(&cookie, &owner, 0).is_err() {
        count(counter::SOCK_STORE_FAIL);
    }
    owner_changed(cookie);
}

/// Every send, in the sender's context (`sock_sendmsg`, which write(), send*(),
/// sendfile/splice (6.5+) and io_uring all reach; kernel 6.3+): a socket
/// connected by one process and written by another (inherited across fork or
/// exec, passed over a unix socket) belongs to whoever sends on it now. The
/// cgroup_sock_addr hooks only see connect() and unconnected sendto(), so
/// without this a child's upload on its parent's socket counts as the
/// parent's. The common case, the same process writing the same socket as
/// last time on this CPU, is one compare.
#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn send_owner(ctx: TracePointContext) -> u32 {
    // SAFETY: a constant offset inside the tracepoint record (checked at load).
    let sk = unsafe { core::ptr::read_unaligned((ctx.as_ptr() as *const u8).add(sensor_common::SEND_LEN_SK_OFF as usize) as *const u64) };
    if sk == 0 {
        return 0;
    }
    let tgid = bpf_get_current_pid_tgid() >> 32;
    let Some(seen) = SEND_SEEN.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's own per-CPU slot; no other CPU writes it.
    let seen = unsafe { &mut *seen };
    if seen[0] == sk && seen[1] == tgid {
        return 0;
    }
    *seen = [sk, tgid];
    // skc_cookie is set when a cookie is first asked for: sock_create did, so 0
    // means a socket older than the sensor (the agent resolves those itself).
    let addr = (sk as usize).wrapping_add(global(&SKC_COOKIE) as usize) as *const u64;
    // SAFETY: a probe read, which faults safely; the offset is from BTF.
    let Ok(cookie) = (unsafe { bpf_probe_read_kernel(addr) }) else { return 0 };
    if cookie == 0 {
        return 0;
    }
    let Some(existing) = SOCKS.get_ptr_mut(&cookie) else { return 0 };
    // SAFETY: a live map value; SOCKS values are written only by this socket's own hooks, in the
    // context of the process using it; two CPUs racing on one socket write
    // whole owner fields, and the agent tolerates a mixed owner for a tick.
    let existing = unsafe { &mut *existing };
    if existing.tgid == tgid as u32 {
        return 0;
    }
    // Who sends changes; what the socket is (direction, origin, ports, age) does not.
    let now = current_owner(existing.family as u32, existing.sock_type as u32, existing.protocol as u32, existing.origin, existing.direction);
    existing.tgid = now.tgid;
    existing.tid = now.tid;
    existing.uid = now.uid;
    existing.gid = now.gid;
    existing.cgroup_id = now.cgroup_id;
    existing.comm = now.comm;
    owner_changed(cookie);
    0
}
