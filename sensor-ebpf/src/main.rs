//! sluice's kernel programs. One object holds every backend's programs; the agent
//! loads and attaches only the set its backend needs (a program that is never
//! loaded costs nothing, so the fentry/kprobe programs of a later backend can live
//! here without breaking kernels that forbid them).
//!
//! - `process`: exec/fork/exit from stable tracepoints, argv captured at syscall
//!   entry, emitted on the `EVENTS` ring buffer.
//! - `groups`: process-group changes (setpgid, setsid), the agent's jobs.
//! - `sockets`: who owns each socket (cgroup sock / sock_addr hooks, process
//!   context), keyed by socket cookie.
//! - `traffic`: bytes in/out per (socket, peer) from cgroup_skb, aggregated in the
//!   kernel so userspace pays per tick, not per packet.
//! - `floor`: empty programs for `cargo xtask bench` (the cost of a hook
//!   before any work); the agent never loads them.
#![no_std]
#![no_main]
// Atomic adds on map values (see traffic::xadd); needs RUSTC_BOOTSTRAP for this crate.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod floor;
mod groups;
mod heads;
mod process;
mod respond;
mod sendpath;
mod sockets;
mod traffic;

use core::intrinsics::AtomicOrdering;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use sensor_common::{
    counter, ArgvBuf, FlowCounters, FlowKey, ListenKey, ListenValue, SockInfo,
};

/// exec/fork/exit events. 8 MiB holds ~5,000 exec events (1.6 KiB each): the
/// agent drains it continuously, so this only has to absorb scheduling hiccups.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Payload copies (connection starts, DNS), on a ring of their own: a flood of
/// them can fill this one, never the one exec, fork and exit events use.
#[map]
static PAYLOADS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Per CPU: (start of the current rate window, copies made in it).
#[map]
static PAYLOAD_BUDGET: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Wake the agent only once this much waits in `EVENTS`; below it the agent
/// drains on its own 100 ms timer.
const WAKE_AT: u64 = 2 * 1024 * 1024;

/// Flags for submitting to `EVENTS`. A wakeup per record is an irq_work (a
/// self-IPI, a VM exit on a virtualized host): measured at ~10 us of every
/// fork and exec event before this (`cargo xtask bench`, section 5), most of
/// what the sensor cost an exec storm.
#[inline(always)]
fn wakeup() -> u64 {
    wakeup_for(&EVENTS)
}

#[inline(always)]
fn wakeup_for(ring: &RingBuf) -> u64 {
    if ring.query(BPF_RB_AVAIL_DATA as u64) >= WAKE_AT {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// What the kernel side dropped or could not do, per CPU (no atomics needed).
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

/// argv read at `sys_enter_execve*`, keyed by thread id, until the exec succeeds
/// (or fails: `sys_exit_execve*` removes it). LRU so execs that never return
/// cannot fill it.
#[map]
static ARGV: LruHashMap<u32, ArgvBuf> = LruHashMap::with_max_entries(4096, 0);

/// Scratch space to build an `ArgvBuf` (too large for the 512-byte BPF stack).
/// setpgid(pid, pgid) arguments per thread, from syscall entry to exit
/// (resolved: 0s replaced by the caller and the pid), as (pid << 32) | pgid.
#[map]
static SETPGID: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

#[map]
static ARGV_SCRATCH: PerCpuArray<ArgvBuf> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch for walking an executed file's path (`process::exe_path`).
#[map]
static EXE_SCRATCH: PerCpuArray<[u8; sensor_common::EXE_WALK_LEN + sensor_common::EXE_NAME_MAX]> =
    PerCpuArray::with_max_entries(1, 0);

/// Socket cookie -> owner. Sizes are defaults; the agent may resize at load.
#[map]
static SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(65536, 0);

/// Cookies whose SOCKS entry was written since the agent last drained them:
/// it mirrors SOCKS and re-reads only these each tick. A plain hash, not an
/// LRU: when full an insert fails (counted), and the agent, finding it full,
/// reads all of SOCKS instead; nothing is evicted unseen.
#[map]
static SOCKS_CHANGED: HashMap<u64, u8> = HashMap::with_max_entries(sensor_common::maps::SOCKS_CHANGED_MAX, 0);

/// Mark `cookie`'s owner entry as written (after every SOCKS write).
#[inline(always)]
fn owner_changed(cookie: u64) {
    if SOCKS_CHANGED.insert(&cookie, &1, 0).is_err() {
        count(counter::OWNER_CHANGES_LOST);
    }
}

/// (socket, peer) -> cumulative byte and packet counters.
#[map]
static FLOWS: LruHashMap<FlowKey, FlowCounters> = LruHashMap::with_max_entries(65536, 0);

/// Socket cookie -> the cgroup v2 id its packets were charged to, for sockets
/// with no SOCKS entry at their flow's first packet (cgroup backend: older
/// than the sensor). An LRU: the agent reads an entry within a tick or two.
#[map]
static SKB_CGROUP: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Bound (port, protocol) -> the binding socket and its owner.
#[map]
static LISTENERS: LruHashMap<ListenKey, ListenValue> = LruHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a live per-CPU slot: no other CPU writes it, so a plain add
        // is race-free.
        unsafe { *slot += 1 };
    }
}

/// The counters of `key`, created (zeroed) if this is its first packet or send.
/// Returns whether this call created it, so callers can do first-time work.
#[inline(always)]
fn flow_counters(key: &FlowKey) -> Option<(*mut FlowCounters, bool)> {
    if let Some(c) = FLOWS.get_ptr_mut(key) {
        return Some((c, false));
    }
    // NOEXIST: if another CPU created it since our lookup, add to theirs.
    // SAFETY: bpf_ktime_get_boot_ns takes no arguments.
    let fresh = FlowCounters { created_ns: unsafe { bpf_ktime_get_boot_ns() }, ..FlowCounters::default() };
    let created = FLOWS.insert(key, &fresh, BPF_NOEXIST as u64).is_ok();
    match FLOWS.get_ptr_mut(key) {
        Some(c) => Some((c, created)),
        None => {
            count(counter::FLOW_STORE_FAIL);
            None
        }
    }
}

/// Atomic add to a shared map value (BPF_XADD), never a racy `+=`. core's
/// AtomicU64 has no fetch_add on the BPF target (no CAS), so the intrinsic it
/// would lower to is called directly; the result is unused, which lets LLVM
/// emit the plain XADD every BPF-capable kernel accepts.
///
/// # Safety
/// `dst` points at a live, aligned u64 (a map value field).
#[inline(always)]
unsafe fn xadd(dst: *mut u64, v: u64) {
    // SAFETY: the caller's contract; the add is atomic, so CPUs racing on
    // one flow lose nothing.
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, v) };
}

/// Count one packet (cgroup backend) or one send/receive call (send path).
#[inline(always)]
fn add_volume(c: *mut FlowCounters, payload: u64, wire: u64, egress: bool) {
    // SAFETY: `c` is a live FLOWS value (from flow_counters); every field is
    // added with XADD, as other CPUs add to the same flow.
    unsafe {
        if egress {
            xadd(&raw mut (*c).bytes_out, payload);
            xadd(&raw mut (*c).wire_bytes_out, wire);
            xadd(&raw mut (*c).packets_out, 1);
        } else {
            xadd(&raw mut (*c).bytes_in, payload);
            xadd(&raw mut (*c).wire_bytes_in, wire);
            xadd(&raw mut (*c).packets_in, 1);
        }
    }
}

/// Read a global the loader patched in (`EbpfLoader::set_global`). The volatile
/// read stops LLVM from folding the compile-time default into the code.
#[inline(always)]
fn global(value: &u32) -> u32 {
    // SAFETY: a reference to a global, read as itself.
    unsafe { core::ptr::read_volatile(value) }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
