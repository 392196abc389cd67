//! Containment (opt-in, the agent's `[respond]`): the egress packets of a
//! contained socket are dropped, and a contained process's new sockets (and,
//! with BPF LSM, its connects and sends) are refused. Off unless the agent
//! patches `RESPOND_OFF` to 0 at load: the global lives in the frozen
//! read-only section, whose values the verifier knows, so with containment
//! off it prunes every check below and the programs do what they did before.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{cgroup_sock, lsm, map},
    maps::LruHashMap,
    programs::{LsmContext, SockContext},
};
use sensor_common::{counter, maps::{DENY_MAX, DENY_TGID_MAX}};

use crate::{count, global};

const EPERM: i32 = 1;

/// 1 = containment off (the default); 0 = on. Non-zero by default so the
/// compiler keeps it in .rodata, not .bss.
#[unsafe(no_mangle)]
static RESPOND_OFF: u32 = 1;

/// Contained sockets: cookie -> containment id. An LRU, so a flood of alerts
/// keeps it bounded (the oldest containment's sockets are let go first).
#[map]
static DENY: LruHashMap<u64, u32> = LruHashMap::with_max_entries(DENY_MAX, 0);

/// Contained processes: tgid -> containment id, for the containment's TTL.
#[map]
static DENY_TGID: LruHashMap<u32, u32> = LruHashMap::with_max_entries(DENY_TGID_MAX, 0);

/// Drop this egress packet: its socket is contained.
#[inline(always)]
pub fn drop_egress(cookie: u64) -> bool {
    if global(&RESPOND_OFF) != 0 {
        return false;
    }
    // SAFETY: a lookup whose value is only tested for presence.
    if unsafe { DENY.get(&cookie) }.is_some() {
        count(counter::DENIED_PACKETS);
        return true;
    }
    false
}

/// Refuse the socket being created: its process is contained (socket(2)
/// then fails with EPERM, so the uploader cannot open a fresh connection).
#[inline(always)]
pub fn refuse_socket() -> bool {
    if global(&RESPOND_OFF) != 0 {
        return false;
    }
    if contained() {
        count(counter::DENIED_SOCKETS);
        return true;
    }
    false
}

/// A process that a contained one forks is contained with it (under the same
/// id), so a helper started after the containment cannot carry the upload on.
/// Runs in the parent's context (task_newtask).
#[inline(always)]
pub fn inherit(child: u32) {
    if global(&RESPOND_OFF) != 0 {
        return;
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a lookup whose value is copied out at once.
    if let Some(id) = unsafe { DENY_TGID.get(&parent) }.copied() {
        let _ = DENY_TGID.insert(&child, &id, 0);
    }
}

/// Whether the current process is contained.
#[inline(always)]
fn contained() -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a lookup whose value is only tested for presence.
    unsafe { DENY_TGID.get(&tgid) }.is_some()
}

/// The send-path backends' socket refusal, attached only when a rule
/// enforces (the cgroup backend's own `sock_create` does this check itself).
#[cgroup_sock(sock_create)]
pub fn deny_sock_create(_ctx: SockContext) -> i32 {
    if refuse_socket() { 0 } else { 1 }
}

// BPF LSM hooks, where the kernel runs the BPF LSM (include/linux/lsm_hook_defs.h):
//   LSM_HOOK(int, 0, socket_connect, struct socket *sock, struct sockaddr *address, int addrlen)
//   LSM_HOOK(int, 0, socket_sendmsg, struct socket *sock, struct msghdr *msg, int size)
// A BPF LSM program gets those arguments and then the value the hooks before
// it returned. They refuse a contained process's connects and sends on
// sockets it already holds (a UDP socket, one inherited, one made before the
// containment), not only new sockets; local sockets stay usable.

#[lsm(hook = "socket_connect")]
pub fn lsm_socket_connect(ctx: LsmContext) -> i32 {
    refuse_inet(&ctx)
}

#[lsm(hook = "socket_sendmsg")]
pub fn lsm_socket_sendmsg(ctx: LsmContext) -> i32 {
    refuse_inet(&ctx)
}

/// Both hooks: `struct socket *` first, the earlier hooks' verdict fourth.
#[inline(always)]
fn refuse_inet(ctx: &LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(3);
    if earlier != 0 {
        return earlier;
    }
    if global(&RESPOND_OFF) != 0 || !contained() || !crate::sendpath::socket_is_inet(ctx.arg(0)) {
        return 0;
    }
    count(counter::DENIED_SENDS);
    -EPERM
}
