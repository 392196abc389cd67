//! Byte accounting on the cgroup backend: cgroup_skb egress/ingress on the cgroup
//! v2 root see every packet of every socket on the host. Counters live in the
//! kernel (one LRU map, atomic adds), so a 10 Gbit/s upload costs the agent one
//! map entry per tick, not work per packet.

use core::{ffi::c_void, intrinsics::AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::bpf_get_socket_cookie,
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use sensor_common::{
    counter, FlowCounters, FlowKey, ListenKey, SockInfo, DIR_INGRESS, ORIGIN_LISTENER,
};

use crate::{count, FLOWS, LISTENERS, SOCKS};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    account(&ctx, true);
    1
}

#[cgroup_skb(ingress)]
pub fn skb_ingress(ctx: SkBuffContext) -> i32 {
    account(&ctx, false);
    1
}

#[inline(always)]
fn account(ctx: &SkBuffContext, egress: bool) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut c_void) };
    if cookie == 0 {
        count(counter::SKB_NO_SOCKET);
        return;
    }
    let Some(key) = flow_key(ctx, cookie, egress) else {
        count(counter::SKB_PARSE_FAIL);
        return;
    };
    let len = ctx.len() as u64;
    if let Some(c) = FLOWS.get_ptr_mut(&key) {
        add(c, len, egress);
        return;
    }
    // First packet of this (socket, peer).
    let mut fresh = FlowCounters::default();
    if egress {
        fresh.bytes_out = len;
        fresh.packets_out = 1;
    } else {
        fresh.bytes_in = len;
        fresh.packets_in = 1;
    }
    if FLOWS.insert(&key, &fresh, BPF_NOEXIST as u64).is_err() {
        // Another CPU created it between our lookup and insert: add to theirs.
        match FLOWS.get_ptr_mut(&key) {
            Some(c) => add(c, len, egress),
            None => count(counter::FLOW_STORE_FAIL),
        }
        return;
    }
    adopt_accepted(cookie, &key);
}

#[inline(always)]
fn add(c: *mut FlowCounters, len: u64, egress: bool) {
    // Shared map value updated from every CPU: atomic adds (BPF_XADD), never a
    // racy `+=`. core's AtomicU64 has no fetch_add on the BPF target (no CAS), so
    // the intrinsic it would lower to is called directly; the result is unused,
    // which lets LLVM emit the plain XADD every BPF-capable kernel accepts.
    unsafe {
        if egress {
            xadd(&raw mut (*c).bytes_out, len);
            xadd(&raw mut (*c).packets_out, 1);
        } else {
            xadd(&raw mut (*c).bytes_in, len);
            xadd(&raw mut (*c).packets_in, 1);
        }
    }
}

#[inline(always)]
unsafe fn xadd(dst: *mut u64, v: u64) {
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, v) };
}

/// A socket no process-context hook has seen is either older than the sensor
/// (the agent resolves those through sock_diag and /proc) or was accepted by the
/// kernel on a listening port: then the listener's owner owns it, and the peer
/// opened the connection.
#[inline(always)]
fn adopt_accepted(cookie: u64, key: &FlowKey) {
    if SOCKS.get_ptr(&cookie).is_some() || key.protocol != IPPROTO_TCP {
        return;
    }
    let lk = ListenKey { port: key.local_port, protocol: IPPROTO_TCP as u16 };
    let Some(listener) = LISTENERS.get_ptr(&lk) else {
        return;
    };
    let mut owner: SockInfo = unsafe { (*listener).owner };
    owner.origin = ORIGIN_LISTENER;
    owner.direction = DIR_INGRESS;
    owner.bound_port = 0;
    owner.closed_ns = 0;
    let _ = SOCKS.insert(&cookie, &owner, BPF_NOEXIST as u64);
}

/// Parse the IP and transport headers (skb data starts at the network header on
/// cgroup_skb). Addresses come from the packet, not the socket, so unconnected
/// UDP sends to many peers are told apart.
#[inline(always)]
fn flow_key(ctx: &SkBuffContext, cookie: u64, egress: bool) -> Option<FlowKey> {
    let mut key = FlowKey {
        cookie,
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port: 0,
        remote_port: 0,
        protocol: 0,
        ip_version: 0,
        _pad: [0; 2],
    };
    let first: u8 = ctx.load(0).ok()?;
    let (src, dst, l4_off) = match first >> 4 {
        4 => {
            let h: [u8; 20] = ctx.load(0).ok()?;
            key.ip_version = 4;
            key.protocol = h[9];
            let frag = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            // IPv4-mapped IPv6 (::ffff:a.b.c.d): one address format for both.
            src[10] = 0xff;
            src[11] = 0xff;
            dst[10] = 0xff;
            dst[11] = 0xff;
            src[12..16].copy_from_slice(&h[12..16]);
            dst[12..16].copy_from_slice(&h[16..20]);
            // Non-first fragments carry no ports.
            let l4 = if frag == 0 { ((first & 0x0f) as usize) * 4 } else { 0 };
            (src, dst, l4)
        }
        6 => {
            let h: [u8; 40] = ctx.load(0).ok()?;
            key.ip_version = 6;
            key.protocol = h[6];
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&h[8..24]);
            dst.copy_from_slice(&h[24..40]);
            (src, dst, 40)
        }
        _ => return None,
    };
    let (mut sport, mut dport) = (0u16, 0u16);
    if l4_off != 0 && (key.protocol == IPPROTO_TCP || key.protocol == IPPROTO_UDP) {
        if let Ok(ports) = ctx.load::<[u8; 4]>(l4_off) {
            sport = u16::from_be_bytes([ports[0], ports[1]]);
            dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
    }
    if egress {
        key.local_addr = src;
        key.remote_addr = dst;
        key.local_port = sport;
        key.remote_port = dport;
    } else {
        key.local_addr = dst;
        key.remote_addr = src;
        key.local_port = dport;
        key.remote_port = sport;
    }
    Some(key)
}
