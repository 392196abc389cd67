//! Byte accounting on the cgroup backend: cgroup_skb egress/ingress on the cgroup
//! v2 root see every packet of every socket on the host. Counters live in the
//! kernel (one LRU map, atomic adds), so a 10 Gbit/s upload costs the agent one
//! map entry per tick, not work per packet.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_get_socket_cookie, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use sensor_common::{
    counter, FlowCounters, FlowKey, ListenKey, SockInfo, DIR_INGRESS, ORIGIN_LISTENER, PAYLOAD_DNS, PAYLOAD_DNS_QUERY,
    tcp_advance,
};

use crate::{
    add_volume, count, flow_counters, owner_changed,
    heads::{self, Source, IPPROTO_TCP, IPPROTO_UDP},
    respond, LISTENERS, SKB_CGROUP, SOCKS,
};

const DNS_PORT: u16 = 53;

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    let cookie = cookie_of(&ctx);
    if respond::drop_egress(cookie) {
        return 0;
    }
    account(&ctx, cookie, true);
    1
}

#[cgroup_skb(ingress)]
pub fn skb_ingress(ctx: SkBuffContext) -> i32 {
    account(&ctx, cookie_of(&ctx), false);
    1
}

/// DNS answers only, for the send-path backends (which count bytes elsewhere
/// but learn names the same way).
#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    // SAFETY: the helper takes the program's own skb context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut c_void) };
    if let Some(p) = parse(&ctx, cookie, false) {
        capture_dns(&ctx, &p, PAYLOAD_DNS);
    }
    1
}

/// DNS queries only, for the send-path backends: an answer is believed only
/// when it matches a query that left this host.
#[cgroup_skb(egress)]
pub fn dns_egress(ctx: SkBuffContext) -> i32 {
    let cookie = cookie_of(&ctx);
    // Containment on the send-path backends: this is their egress hook too.
    if respond::drop_egress(cookie) {
        return 0;
    }
    if let Some(p) = parse(&ctx, cookie, true) {
        capture_dns(&ctx, &p, PAYLOAD_DNS_QUERY);
    }
    1
}

/// What the header parse learned besides the key.
struct Parsed {
    key: FlowKey,
    /// Transport payload bytes in this skb (GSO: the whole super-packet).
    payload: u32,
    /// Offset of the transport payload in the skb.
    payload_off: u32,
    /// TCP only: sequence number of the first byte and SYN/FIN flags.
    tcp: Option<(u32, bool, bool)>,
}

#[inline(always)]
fn cookie_of(ctx: &SkBuffContext) -> u64 {
    // SAFETY: the helper takes the program's own skb context.
    unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut c_void) }
}

#[inline(always)]
fn account(ctx: &SkBuffContext, cookie: u64, egress: bool) {
    if cookie == 0 {
        count(counter::SKB_NO_SOCKET);
        return;
    }
    let Some(p) = parse(ctx, cookie, egress) else {
        count(counter::SKB_PARSE_FAIL);
        return;
    };
    let wire = ctx.len() as u64;
    let Some((c, created)) = flow_counters(&p.key) else { return };
    // SAFETY: a live FLOWS value; other CPUs may add meanwhile, which only
    // makes the capture offset stale (head_step tolerates it).
    let before = unsafe { ((*c).bytes_out, (*c).packets_out) };
    let counted = add(c, &p, wire, egress);
    if egress {
        capture_head(ctx, c, &p, counted, before);
        capture_dns(ctx, &p, PAYLOAD_DNS_QUERY);
    } else {
        capture_dns(ctx, &p, PAYLOAD_DNS);
    }
    if created && !adopt_accepted(cookie, &p.key) {
        remember_cgroup(ctx, cookie);
    }
}

/// The cgroup of a socket no hook has an owner for, at its flow's first
/// packet: a connection older than the sensor, whose process only the agent's
/// scan can name (and cannot, in a network namespace it may not enter), while
/// the socket's cgroup already says its container. One lookup per new flow.
#[inline(always)]
fn remember_cgroup(ctx: &SkBuffContext, cookie: u64) {
    // SAFETY: the helper takes the program's own skb context; it reads the
    // cgroup the socket was charged to (0 without a full socket).
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    if cgroup != 0 {
        // An LRU: a full map evicts its oldest entry rather than refuse.
        let _ = SKB_CGROUP.insert(&cookie, &cgroup, 0);
    }
}

/// Add one packet to the flow's counters; returns the payload bytes counted.
#[inline(always)]
fn add(c: *mut FlowCounters, p: &Parsed, wire: u64, egress: bool) -> u32 {
    match p.tcp {
        Some((seq, syn, fin)) if egress => {
            // SAFETY: `c` is this flow's live value, and egress TCP for one
            // socket runs under its lock (new_tcp_out_bytes' contract): its
            // egress counters have one writer at a time, so plain adds.
            unsafe {
                let payload = new_tcp_out_bytes(c, seq, syn, fin, p.payload);
                (*c).bytes_out += payload as u64;
                (*c).wire_bytes_out += wire;
                (*c).packets_out += 1;
                payload
            }
        }
        // Ingress runs before the socket lock, and a UDP socket's datagrams
        // can leave from several CPUs at once: atomic adds.
        _ => {
            add_volume(c, p.payload as u64, wire, egress);
            p.payload
        }
    }
}

/// `N` bytes at the constant offset `OFF` in the packet: read in place where
/// the linear data holds them (the headers, nearly always), else copied by
/// the helper. Constant offsets only: a variable one (IPv4 options, IPv6
/// extension headers) leaves 6.1's verifier with ranges it cannot follow.
#[inline(always)]
fn in_place<const OFF: usize, const N: usize>(ctx: &SkBuffContext) -> Option<[u8; N]> {
    // SAFETY: reading two fields of the program's own context.
    let (data, end) = unsafe { ((*ctx.skb.skb).data as usize, (*ctx.skb.skb).data_end as usize) };
    if data + OFF + N <= end {
        // SAFETY: inside the linear packet data, checked just above.
        return Some(unsafe { core::ptr::read_unaligned((data + OFF) as *const [u8; N]) });
    }
    ctx.load(OFF).ok()
}

/// The transport header at `l4_off`: in place right after a plain IPv4 or
/// IPv6 header, else copied.
#[inline(always)]
fn transport<const N: usize>(ctx: &SkBuffContext, l4_off: usize) -> Option<[u8; N]> {
    match l4_off {
        20 => in_place::<20, N>(ctx),
        40 => in_place::<40, N>(ctx),
        _ => ctx.load(l4_off).ok(),
    }
}

/// Copy the start of an outbound TCP stream (new bytes only: a retransmission
/// counts nothing and is not copied twice) or the first QUIC datagrams.
/// `before` is the flow's (bytes_out, packets_out) before this packet.
#[inline(always)]
fn capture_head(ctx: &SkBuffContext, c: *mut FlowCounters, p: &Parsed, counted: u32, before: (u64, u64)) {
    if counted == 0 || !heads::capturing(c) {
        return;
    }
    // New bytes are the segment's tail (a partial retransmission's head is old).
    let start = p.payload_off + (p.payload - counted);
    let first: [u8; 5] = if !heads::undecided(c) {
        [0; 5]
    } else if counted >= 5 {
        ctx.load(start as usize).unwrap_or([0; 5])
    } else {
        // A SOCKS5 greeting is a segment of 3 or 4 bytes.
        ctx.load::<[u8; 3]>(start as usize).map(|b| [b[0], b[1], b[2], 0, 0]).unwrap_or([0; 5])
    };
    if let Some((kind, offset)) = heads::decide(c, p.key.protocol, first, before) {
        heads::emit(kind, &p.key, 0, offset, Source::Skb(ctx, start), counted as u64);
    }
}

/// Copy a DNS answer (UDP or TCP from port 53) for the agent's name cache,
/// or a query (UDP to port 53) it must match.
#[inline(always)]
fn capture_dns(ctx: &SkBuffContext, p: &Parsed, kind: u32) {
    if p.key.remote_port != DNS_PORT || p.payload == 0 || (kind == PAYLOAD_DNS_QUERY && p.tcp.is_some()) {
        return;
    }
    let offset = match p.tcp {
        Some((seq, _, _)) => seq as u64,
        None => 0,
    };
    heads::emit(kind, &p.key, 0, offset, Source::Skb(ctx, p.payload_off), p.payload as u64);
}

/// New outbound TCP payload in this segment (see `sensor_common::tcp_advance`).
/// Transmit for one socket runs under its lock, so this read-modify-write of the
/// sequence state has one writer at a time, in sequence order.
///
/// # Safety
/// `c` is a live FLOWS value of an egress TCP flow, called from its egress hook.
#[inline(always)]
unsafe fn new_tcp_out_bytes(c: *mut FlowCounters, seq: u32, syn: bool, fin: bool, payload: u32) -> u32 {
    // SAFETY: the contract above: one writer (the socket lock holder).
    unsafe {
        let known = if (*c).seq_out_valid != 0 { Some((*c).next_seq_out) } else { None };
        let (next, counted) = tcp_advance(known, seq, syn, fin, payload);
        (*c).next_seq_out = next;
        (*c).seq_out_valid = 1;
        counted
    }
}

/// A socket no process-context hook has seen is either older than the sensor
/// (the agent resolves those through sock_diag and /proc) or was accepted by the
/// kernel on a listening port: then the listener's owner owns it, and the peer
/// opened the connection. Whether the socket has an owner entry now.
#[inline(always)]
fn adopt_accepted(cookie: u64, key: &FlowKey) -> bool {
    if SOCKS.get_ptr(&cookie).is_some() {
        return true;
    }
    if key.protocol != IPPROTO_TCP {
        return false;
    }
    let lk = ListenKey { port: key.local_port, protocol: IPPROTO_TCP as u16 };
    let Some(listener) = LISTENERS.get_ptr(&lk) else {
        return false;
    };
    // SAFETY: a live LISTENERS value, read once.
    if unsafe { (*listener).ambiguous } != 0 {
        count(counter::LISTENER_AMBIGUOUS);
        return false;
    }
    // SAFETY: a live LISTENERS value, copied out.
    let mut owner: SockInfo = unsafe { (*listener).owner };
    owner.origin = ORIGIN_LISTENER;
    owner.direction = DIR_INGRESS;
    owner.bound_port = 0;
    owner.closed_ns = 0;
    if SOCKS.insert(&cookie, &owner, BPF_NOEXIST as u64).is_ok() {
        owner_changed(cookie);
        return true;
    }
    false
}

/// IPv6 extension headers before the transport header: (transport protocol,
/// its offset, whether this packet carries it). A GSO packet over 64 KiB (BIG
/// TCP, the default on loopback) leaves with a hop-by-hop jumbo header, so
/// without this walk most of a fast IPv6 upload counted as protocol 0.
#[inline(always)]
fn skip_ipv6_extensions(ctx: &SkBuffContext, first: u8) -> Option<(u8, usize, bool)> {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const DEST_OPTS: u8 = 60;
    let mut next = first;
    let mut off = 40usize;
    // Bounded for the verifier; real packets carry one or two.
    for _ in 0..4 {
        match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                let e: [u8; 2] = ctx.load(off).ok()?;
                next = e[0];
                off += (e[1] as usize + 1) * 8;
            }
            FRAGMENT => {
                let e: [u8; 4] = ctx.load(off).ok()?;
                next = e[0];
                off += 8;
                // Not the first fragment: no transport header, all payload.
                if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                    return Some((next, off, false));
                }
            }
            _ => break,
        }
    }
    Some((next, off, true))
}

/// Parse the IP and transport headers (skb data starts at the network header on
/// cgroup_skb). Addresses come from the packet, not the socket, so unconnected
/// UDP sends to many peers are told apart.
#[inline(always)]
fn parse(ctx: &SkBuffContext, cookie: u64, egress: bool) -> Option<Parsed> {
    let mut key = FlowKey {
        cookie,
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port: 0,
        remote_port: 0,
        protocol: 0,
        ip_version: 0,
        _pad: [0; 2],
        pid: 0,
        _pad2: 0,
    };
    // Every IP packet has 20 bytes of header: the version comes with them
    // (a 1-byte bound LLVM folds into a form the verifier does not track).
    let h: [u8; 20] = in_place::<0, 20>(ctx)?;
    let first = h[0];
    let (src, dst, l4_off, has_l4) = match first >> 4 {
        4 => {
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
            // Non-first fragments carry no transport header: all of it is payload.
            (src, dst, ((first & 0x0f) as usize) * 4, frag == 0)
        }
        6 => {
            let h: [u8; 40] = in_place::<0, 40>(ctx)?;
            key.ip_version = 6;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&h[8..24]);
            dst.copy_from_slice(&h[24..40]);
            let (protocol, l4_off, has_l4) = skip_ipv6_extensions(ctx, h[6])?;
            key.protocol = protocol;
            (src, dst, l4_off, has_l4)
        }
        _ => return None,
    };
    let (mut sport, mut dport) = (0u16, 0u16);
    let len = ctx.len();
    let mut payload = len.saturating_sub(l4_off as u32);
    let mut tcp = None;
    let mut payload_off = l4_off as u32;
    if has_l4 && key.protocol == IPPROTO_TCP {
        let h: [u8; 14] = transport(ctx, l4_off)?;
        sport = u16::from_be_bytes([h[0], h[1]]);
        dport = u16::from_be_bytes([h[2], h[3]]);
        let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let doff = ((h[12] >> 4) as u32) * 4;
        let flags = h[13];
        payload = payload.saturating_sub(doff);
        payload_off += doff;
        tcp = Some((seq, flags & 0x02 != 0, flags & 0x01 != 0));
    } else if has_l4 && key.protocol == IPPROTO_UDP {
        let h: [u8; 4] = transport(ctx, l4_off)?;
        sport = u16::from_be_bytes([h[0], h[1]]);
        dport = u16::from_be_bytes([h[2], h[3]]);
        payload = payload.saturating_sub(8);
        payload_off += 8;
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
    Some(Parsed { key, payload, payload_off, tcp })
}
