//! Containment (opt-in, the agent's `[respond]`): the egress packets of a
//! contained socket are dropped, and a contained process's new sockets are
//! refused. Off unless the agent patches `RESPOND_OFF` to 0 at load: the
//! global lives in the frozen read-only section, whose values the verifier
//! knows, so with containment off it prunes every check below and the
//! programs do what they did before.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::map, maps::LruHashMap};
use sensor_common::{counter, maps::{DENY_MAX, DENY_TGID_MAX}};

use crate::{count, global};

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
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a lookup whose value is only tested for presence.
    if unsafe { DENY_TGID.get(&tgid) }.is_some() {
        count(counter::DENIED_SOCKETS);
        return true;
    }
    false
}
