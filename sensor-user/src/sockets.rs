//! Attributing sockets no hook saw being made: those opened before the agent
//! started. sock_diag lists every TCP/UDP socket with its cookie (the key the
//! kernel side uses) and inode; /proc/<pid>/fd maps the inode to its process.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// TCP_LISTEN in the kernel's state numbering.
pub const TCP_LISTEN: u8 = 10;
/// `SO_NETNS_COOKIE` (asm-generic and x86 value; 5.14+), which libc does not
/// export for this target.
const SO_NETNS_COOKIE: libc::c_int = 71;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSocket {
    pub cookie: u64,
    pub inode: u32,
    pub uid: u32,
    pub protocol: u8,
    pub state: u8,
    pub local_port: u16,
}

/// Every TCP and UDP socket, v4 and v6, on this network namespace.
pub fn dump() -> Result<Vec<DiagSocket>> {
    let mut sock = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag netlink socket")?;
    sock.bind_auto().context("binding the sock_diag socket")?;
    sock.connect(&SocketAddr::new(0, 0)).context("connecting the sock_diag socket")?;
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
            dump_one(&sock, family, protocol, &mut out)
                .with_context(|| format!("sock_diag dump (family {family}, protocol {protocol})"))?;
        }
    }
    Ok(out)
}

fn dump_one(sock: &Socket, family: u8, protocol: u8, out: &mut Vec<DiagSocket>) -> Result<()> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    let mut packet = NetlinkMessage::new(
        hdr,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    sock.send(&buf, 0)?;

    let mut rx = vec![0u8; 64 * 1024];
    // A dump ends with NLMSG_DONE; the bound keeps a misbehaving kernel from
    // holding the agent forever (65,536 batches is millions of sockets).
    for _ in 0..65_536 {
        let n = sock.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off < n {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[off..n])
                .map_err(|e| anyhow::anyhow!("malformed sock_diag reply: {e}"))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => out.push(DiagSocket {
                    cookie: u64::from_ne_bytes(r.header.socket_id.cookie),
                    inode: r.header.inode,
                    uid: r.header.uid,
                    protocol,
                    state: r.header.state,
                    local_port: r.header.socket_id.source_port,
                }),
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => bail!("sock_diag error: {e:?}"),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
    bail!("sock_diag dump did not finish")
}

/// A socket found by `dump_everywhere`, whether it was accepted (its local
/// port has a TCP listener in its own network namespace), and that
/// namespace's cookie (the id `bpf_get_netns_cookie` gives the kernel
/// programs; 0 where this kernel cannot tell it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub sock: DiagSocket,
    pub accepted: bool,
    pub netns: u64,
}

impl Found {
    /// A TCP socket listening for connections.
    pub fn listening(&self) -> bool {
        self.sock.protocol == IPPROTO_TCP && self.sock.state == TCP_LISTEN
    }
}

/// What `dump_everywhere` saw: sockets, and the namespaces it could not list.
#[derive(Debug, Default)]
pub struct Everywhere {
    pub sockets: Vec<Found>,
    /// (namespace inode, why) for each namespace it could not enter or dump.
    pub failed: Vec<(u64, String)>,
}

/// Every TCP and UDP socket of this network namespace and of every other one
/// a process holds (pods, containers, `ip netns exec`): sock_diag answers only
/// for the namespace of the socket asking, so a short-lived thread enters each
/// one (setns, which needs CAP_SYS_ADMIN) and dumps there. Cookies are global,
/// so they join the kernel's flows whatever the namespace; socket inodes are
/// global too, so `inode_owners` finds the process.
pub fn dump_everywhere() -> Result<Everywhere> {
    let mut out = Everywhere::default();
    out.sockets.extend(with_accepted(dump()?, netns_cookie()));
    for (ino, pid) in other_namespaces() {
        match dump_in_namespace_of(pid) {
            Ok((socks, netns)) => out.sockets.extend(with_accepted(socks, netns)),
            Err(e) => out.failed.push((ino, format!("{e:#}"))),
        }
    }
    Ok(out)
}

fn with_accepted(socks: Vec<DiagSocket>, netns: u64) -> impl Iterator<Item = Found> {
    let listening = listening_ports(&socks);
    socks.into_iter().map(move |sock| Found {
        sock,
        accepted: sock.protocol == IPPROTO_TCP && sock.state != TCP_LISTEN && listening.contains(&sock.local_port),
        netns,
    })
}

/// The cookie of this thread's network namespace, read from a socket made in
/// it; 0 where the kernel cannot say (before 5.14).
fn netns_cookie() -> u64 {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the fd is owned (and closed) by `sock` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return 0;
    }
    // SAFETY: a fresh fd nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for the kernel to write 8 bytes and their length.
    let rc = unsafe { libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &mut len) };
    if rc == 0 { cookie } else { 0 }
}

/// `net:[4026531840]` -> 4026531840
fn parse_ns_link(t: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(t).ok()?;
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

fn ns_of(pid: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    parse_ns_link(link.as_os_str().as_encoded_bytes())
}

/// One process per network namespace other than the agent's.
fn other_namespaces() -> Vec<(u64, u32)> {
    let own = ns_of("self");
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    for entry in dir.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        let Ok(pid) = name.parse::<u32>() else { continue };
        if let Some(ino) = ns_of(&name).filter(|i| Some(*i) != own) {
            seen.entry(ino).or_insert(pid);
        }
    }
    let mut v: Vec<(u64, u32)> = seen.into_iter().collect();
    v.sort_unstable();
    v
}

/// `dump()` from inside the network namespace `pid` is in, with that
/// namespace's cookie.
fn dump_in_namespace_of(pid: u32) -> Result<(Vec<DiagSocket>, u64)> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).with_context(|| format!("opening /proc/{pid}/ns/net"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a valid namespace fd; setns changes only this thread's
                // network namespace, and the thread ends after the dump.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(anyhow::Error::new(std::io::Error::last_os_error()).context("entering the network namespace (setns needs CAP_SYS_ADMIN)"));
                }
                Ok((dump()?, netns_cookie()))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the sock_diag thread panicked"))?
    })
}

/// Socket inode -> owning pid, from every /proc/<pid>/fd. Where several
/// processes share a socket (inherited across fork), the lowest pid wins: the
/// parent that made it, most often.
pub fn inode_owners() -> HashMap<u32, u32> {
    let mut owners = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return owners };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            if let Some(inode) = parse_socket_link(target.as_os_str().as_encoded_bytes()) {
                owners.entry(inode).and_modify(|p: &mut u32| *p = (*p).min(pid)).or_insert(pid);
            }
        }
    }
    owners
}

/// `socket:[12345]` -> 12345
fn parse_socket_link(t: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(t).ok()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Local ports with a TCP listener: a pre-existing connection on one of them
/// was accepted (ingress), any other was opened from here (egress).
pub fn listening_ports(all: &[DiagSocket]) -> Vec<u16> {
    all.iter().filter(|s| s.protocol == IPPROTO_TCP && s.state == TCP_LISTEN).map(|s| s.local_port).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link(b"socket:[4026]"), Some(4026));
        assert_eq!(parse_socket_link(b"pipe:[4026]"), None);
        assert_eq!(parse_socket_link(b"/dev/null"), None);
    }

    #[test]
    fn namespace_links() {
        assert_eq!(parse_ns_link(b"net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link(b"mnt:[4026531840]"), None);
    }

    #[test]
    fn listeners() {
        let s = |state, port| DiagSocket { cookie: 1, inode: 1, uid: 0, protocol: IPPROTO_TCP, state, local_port: port };
        assert_eq!(listening_ports(&[s(TCP_LISTEN, 22), s(1, 50000)]), vec![22]);
    }
}
