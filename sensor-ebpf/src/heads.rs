//! Copies of the first bytes of connections (TLS ClientHello, HTTP request
//! line, SOCKS request, QUIC Initial) and of DNS answers, for userspace to name destinations.
//! The kernel only checks a few magic bytes and copies a bounded prefix; every
//! parse happens in the agent. Per flow the copy stops after
//! `HEAD_STREAM_LIMIT` stream bytes or `HEAD_DATAGRAM_LIMIT` datagrams, so an
//! upload costs one or two events, not one per packet.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user_buf,
        generated::{bpf_ktime_get_boot_ns, bpf_probe_read_user, bpf_skb_load_bytes},
    },
    macros::map,
    maps::LruHashMap,
    programs::SkBuffContext,
};
use sensor_common::{
    counter, head_step, looks_like_quic, looks_like_stream_head, EventHeader, FlowCounters, FlowKey, PayloadEvent,
    EVENT_PAYLOAD, HEAD_DATAGRAM_LIMIT, HEAD_DONE, HEAD_STREAM_LIMIT, HEAD_UNDECIDED, PAYLOAD_DATAGRAM_HEAD,
    PAYLOAD_LEN, PAYLOAD_RATE_MAX, PAYLOAD_RATE_NS, PAYLOAD_STREAM_HEAD,
};

use crate::{count, PAYLOADS, PAYLOAD_BUDGET};

/// A send whose entry could not read the user buffer it was about to copy
/// (a page no page table maps yet: a program's untouched .rodata, a fresh
/// file mapping; a probe may not fault it in), per thread: the send's return
/// copies it instead, once the kernel's own copy has mapped the pages.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Retry {
    sk: u64,
    addr: u64,
    avail: u64,
    /// The flow's (bytes_out, packets_out) before the send.
    before: (u64, u64),
}

#[map]
static RETRY: LruHashMap<u64, Retry> = LruHashMap::with_max_entries(4096, 0);

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Where the bytes of one capture come from.
pub enum Source<'a> {
    /// `len` bytes of the skb from byte `off`.
    Skb(&'a SkBuffContext, u32),
    /// A user buffer (the first iovec of a send).
    User(u64),
}

/// Run the head state machine for one outbound write/segment of `c`'s flow.
/// `first` holds its first five bytes (three and zero padding for a 3- or
/// 4-byte write, zeros if unreadable), `before` the
/// flow's (bytes_out, packets_out) before it. Returns the event kind and the
/// offset to copy under, or None.
#[inline(always)]
pub fn decide(c: *mut FlowCounters, protocol: u8, first: [u8; 5], before: (u64, u64)) -> Option<(u32, u64)> {
    // SAFETY: `c` is a live FLOWS value. `head` is a plain read-modify-write:
    // two CPUs deciding one flow at once both copy its first bytes at worst
    // (the agent reassembles by offset, so a duplicate copy changes nothing).
    unsafe {
        let state = (*c).head;
        if state == HEAD_DONE {
            return None;
        }
        let (kind, offset, limit, interesting) = if protocol == IPPROTO_TCP {
            (PAYLOAD_STREAM_HEAD, before.0, HEAD_STREAM_LIMIT, looks_like_stream_head(first))
        } else if protocol == IPPROTO_UDP {
            (PAYLOAD_DATAGRAM_HEAD, before.1, HEAD_DATAGRAM_LIMIT, looks_like_quic(first))
        } else {
            return None;
        };
        let (next, copy) = head_step(state, offset, interesting, limit);
        (*c).head = next;
        if copy { Some((kind, offset)) } else { None }
    }
}

/// Whether the first bytes are needed at all (they are only looked at while undecided).
#[inline(always)]
pub fn undecided(c: *mut FlowCounters) -> bool {
    // SAFETY: a live FLOWS value; a stale read only delays the decision.
    unsafe { (*c).head == HEAD_UNDECIDED }
}

#[inline(always)]
pub fn capturing(c: *mut FlowCounters) -> bool {
    // SAFETY: as above.
    unsafe { (*c).head != HEAD_DONE }
}

/// Run the head state machine for one send of `avail` bytes from the user
/// buffer at `addr`, and copy them if it says so. False: the buffer was
/// not readable (not mapped yet), and nothing was decided on its account.
#[inline(always)]
fn from_user(c: *mut FlowCounters, key: &FlowKey, protocol: u8, addr: u64, avail: u64, before: (u64, u64)) -> bool {
    let mut first = [0u8; 5];
    // SAFETY (both reads): bpf_probe_read_user_buf faults safely on a bad
    // user address and writes at most the slice it is given.
    let read = if !undecided(c) {
        Ok(())
    } else if avail >= 5 {
        unsafe { bpf_probe_read_user_buf(addr as *const u8, &mut first) }
    } else if avail >= 3 {
        // A SOCKS5 greeting is a 3- or 4-byte write.
        unsafe { bpf_probe_read_user_buf(addr as *const u8, &mut first[..3]) }
    } else {
        Ok(())
    };
    if read.is_err() {
        return false;
    }
    match decide(c, protocol, first, before) {
        Some((kind, offset)) => emit(kind, key, key.pid, offset, Source::User(addr), avail),
        None => true,
    }
}

/// At a send's entry (`sk` about to copy `avail` bytes from `addr`): capture
/// what the flow needs, or leave it to the send's return when the buffer
/// cannot be read yet.
#[inline(always)]
pub fn at_send_entry(c: *mut FlowCounters, key: &FlowKey, protocol: u8, sk: u64, addr: u64, avail: u64) {
    // SAFETY: `c` is a live FLOWS value; a racing writer only makes the
    // offset stale, which head_step tolerates, or the retry flag, which
    // costs at most one missed retry.
    unsafe {
        if (*c).head_retry != 0 {
            // An earlier send's retry that its return never took (the send
            // failed): its buffer is gone.
            let _ = RETRY.remove(&bpf_get_current_pid_tgid());
            (*c).head_retry = 0;
        }
        let before = ((*c).bytes_out, (*c).packets_out);
        if from_user(c, key, protocol, addr, avail, before) {
            return;
        }
        count(counter::HEAD_READ_FAULT);
        if RETRY.insert(&bpf_get_current_pid_tgid(), &Retry { sk, addr, avail, before }, 0).is_ok() {
            (*c).head_retry = 1;
        }
    }
}

/// At a send's return, `sent` bytes accepted from `sk`: the copy its entry
/// left here, now that the kernel has read (so mapped) those bytes.
#[inline(always)]
pub fn at_send_return(c: *mut FlowCounters, key: &FlowKey, protocol: u8, sk: u64, sent: u64) {
    // SAFETY: as in at_send_entry; the RETRY entry is this thread's own, copied out.
    unsafe {
        if (*c).head_retry == 0 {
            return;
        }
        let tid = bpf_get_current_pid_tgid();
        let Some(r) = RETRY.get(&tid).copied() else { return };
        if r.sk != sk {
            return; // another thread's send on this flow
        }
        let _ = RETRY.remove(&tid);
        (*c).head_retry = 0;
        let avail = if sent < r.avail { sent } else { r.avail };
        if !from_user(c, key, protocol, r.addr, avail, r.before) {
            count(counter::HEAD_RETRY_FAULT);
        }
    }
}

/// This CPU's copy budget: `PAYLOAD_RATE_MAX` per `PAYLOAD_RATE_NS` window
/// (per-CPU, so no other CPU writes the slot; plain stores are race-free).
#[inline(always)]
fn within_budget() -> bool {
    let Some(slot) = PAYLOAD_BUDGET.get_ptr_mut(0) else { return true };
    // SAFETY: a valid per-CPU map value pointer; bpf_ktime_get_boot_ns takes no arguments.
    unsafe {
        let now = bpf_ktime_get_boot_ns();
        if now.wrapping_sub((*slot)[0]) >= PAYLOAD_RATE_NS {
            (*slot)[0] = now;
            (*slot)[1] = 0;
        }
        if (*slot)[1] >= PAYLOAD_RATE_MAX {
            count(counter::PAYLOAD_RATE_LIMITED);
            return false;
        }
        (*slot)[1] += 1;
    }
    true
}

/// Copy up to `PAYLOAD_LEN` of `avail` bytes into a ring buffer event.
/// False only when the source could not be read (the copy is discarded); a
/// copy dropped for the budget or a full ring is counted and says true.
#[inline(always)]
pub fn emit(kind: u32, key: &FlowKey, pid: u32, offset: u64, src: Source, avail: u64) -> bool {
    if avail == 0 || !within_budget() {
        return true;
    }
    let Some(mut entry) = PAYLOADS.reserve::<PayloadEvent>(0) else {
        count(counter::RINGBUF_DROP_PAYLOAD);
        return true;
    };
    let ev = entry.as_mut_ptr();
    let n = if avail > PAYLOAD_LEN as u64 { PAYLOAD_LEN as u32 } else { avail as u32 };
    // Bound the length where the verifier can see it: LLVM would fold a check
    // it can prove away, so the value goes through the stack first, then a mask
    // keeps it in 1..=PAYLOAD_LEN (n >= 1 here, so the mask changes nothing).
    // SAFETY: a volatile read of a local.
    let n = unsafe { core::ptr::read_volatile(&n) };
    let n = (n.wrapping_sub(1) & (PAYLOAD_LEN as u32 - 1)) + 1;
    // SAFETY: `ev` is the reserved ring record, this program's alone until
    // submit; the copy writes at most n <= PAYLOAD_LEN bytes into `data`, and
    // both sources (the skb, a user address) are read by helpers that fail
    // safely.
    unsafe {
        let dst = (&raw mut (*ev).data) as *mut c_void;
        let ret = match src {
            Source::Skb(ctx, off) => bpf_skb_load_bytes(ctx.skb.skb as *const c_void, off, dst, n),
            Source::User(addr) => bpf_probe_read_user(dst, n, addr as *const c_void),
        };
        if ret != 0 {
            entry.discard(0);
            return false;
        }
        (*ev).header = EventHeader { kind: EVENT_PAYLOAD, pid, ktime_ns: bpf_ktime_get_boot_ns() };
        (*ev).key = *key;
        (*ev).kind = kind;
        (*ev).len = n;
        (*ev).offset = offset;
        (*ev).orig_len = avail.min(u32::MAX as u64) as u32;
        (*ev)._pad = 0;
    }
    entry.submit(crate::wakeup_for(&PAYLOADS));
    true
}
