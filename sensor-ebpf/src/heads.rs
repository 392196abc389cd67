//! Copies of the first bytes of connections (TLS ClientHello, HTTP request
//! line, SOCKS request, QUIC Initial) and of DNS answers, for userspace to name destinations.
//! The kernel only checks a few magic bytes and copies a bounded prefix; every
//! parse happens in the agent. Per flow the copy stops after
//! `HEAD_STREAM_LIMIT` stream bytes or `HEAD_DATAGRAM_LIMIT` datagrams, so an
//! upload costs one or two events, not one per packet.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_probe_read_user, bpf_skb_load_bytes},
    programs::SkBuffContext,
};
use sensor_common::{
    counter, head_step, looks_like_quic, looks_like_stream_head, EventHeader, FlowCounters, FlowKey, PayloadEvent,
    EVENT_PAYLOAD, HEAD_DATAGRAM_LIMIT, HEAD_DONE, HEAD_STREAM_LIMIT, HEAD_UNDECIDED, PAYLOAD_DATAGRAM_HEAD,
    PAYLOAD_LEN, PAYLOAD_RATE_MAX, PAYLOAD_RATE_NS, PAYLOAD_STREAM_HEAD,
};

use crate::{count, PAYLOADS, PAYLOAD_BUDGET};

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
#[inline(always)]
pub fn emit(kind: u32, key: &FlowKey, pid: u32, offset: u64, src: Source, avail: u64) {
    if avail == 0 || !within_budget() {
        return;
    }
    let Some(mut entry) = PAYLOADS.reserve::<PayloadEvent>(0) else {
        count(counter::RINGBUF_DROP_PAYLOAD);
        return;
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
            return;
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
}
