//! The floor for `cargo xtask bench`: sluice's eBPF object, but only its empty
//! `floor_*` programs, attached to the hooks sluice uses (cgroup_skb egress and
//! ingress, sock_create and connect4 on the cgroup v2 root, and the
//! sock_send_length tracepoint). Prints "ready", runs until stdin closes.
use std::{fs::File, io::Read};

use anyhow::{Context, Result};
use aya::programs::{
    cgroup_skb::CgroupSkbAttachType, links::CgroupAttachMode, CgroupSkb, CgroupSock, CgroupSockAddr, TracePoint,
};

fn main() -> Result<()> {
    let mut ebpf = aya::EbpfLoader::new().load(sluice::kernel::EBPF_OBJECT).context("loading the eBPF object")?;
    let root = sluice::kernel::mounts::cgroup2_mount()?;
    let cg = File::open(&root).with_context(|| format!("opening {}", root.display()))?;
    let skb: &mut CgroupSkb = ebpf.program_mut("floor_skb").context("floor_skb")?.try_into()?;
    skb.load()?;
    skb.attach(&cg, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)?;
    skb.attach(&cg, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)?;
    let sock: &mut CgroupSock = ebpf.program_mut("floor_sock_create").context("floor_sock_create")?.try_into()?;
    sock.load()?;
    sock.attach(&cg, CgroupAttachMode::Single)?;
    let addr: &mut CgroupSockAddr = ebpf.program_mut("floor_connect4").context("floor_connect4")?.try_into()?;
    addr.load()?;
    addr.attach(&cg, CgroupAttachMode::Single)?;
    let tp: &mut TracePoint = ebpf.program_mut("floor_tp").context("floor_tp")?.try_into()?;
    tp.load()?;
    tp.attach("sock", "sock_send_length")?;
    println!("ready");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
