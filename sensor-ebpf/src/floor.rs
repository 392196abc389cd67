//! Empty programs, never loaded by the agent: `cargo xtask bench` attaches them
//! next to sluice's own on the same hooks, so the kernel's own run-time stats
//! (`kernel.bpf_stats_enabled`) give the floor each hook costs before any work.

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, tracepoint},
    programs::{SkBuffContext, SockAddrContext, SockContext, TracePointContext},
};

#[cgroup_skb]
pub fn floor_skb(_ctx: SkBuffContext) -> i32 {
    1
}

#[tracepoint]
pub fn floor_tp(_ctx: TracePointContext) -> u32 {
    0
}

#[cgroup_sock(sock_create)]
pub fn floor_sock_create(_ctx: SockContext) -> i32 {
    1
}

#[cgroup_sock_addr(connect4)]
pub fn floor_connect4(_ctx: SockAddrContext) -> i32 {
    1
}
