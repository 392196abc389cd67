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
    let sock = diag_socket()?;
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
            dump_one(&sock, family, protocol, &mut out)
                .with_context(|| format!("sock_diag dump (family {family}, protocol {protocol})"))?;
        }
    }
    Ok(out)
}

/// A sock_diag netlink socket, talking to the kernel, in this thread's network namespace.
pub fn diag_socket() -> Result<Socket> {
    let mut sock = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag netlink socket")?;
    sock.bind_auto().context("binding the sock_diag socket")?;
    sock.connect(&SocketAddr::new(0, 0)).context("connecting the sock_diag socket")?;
    Ok(sock)
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
    /// The sockets of those namespaces as their `/proc/<pid>/net` files list
    /// them (no cookies: matched to flows by address), with the namespace inode.
    pub listed: Vec<(u64, Listed)>,
}

/// An (address, port) pair, the address as the kernel's flow keys hold it
/// (IPv4 as v4-mapped IPv6).
pub type Endpoint = ([u8; 16], u16);

/// A socket as `/proc/<pid>/net/{tcp,tcp6,udp,udp6}` lists it: the sockets
/// of that process's network namespace, readable with ptrace access to the
/// process (CAP_SYS_PTRACE and hostPID) where sock_diag would have to enter
/// the namespace (CAP_SYS_ADMIN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub local: Endpoint,
    pub remote: Endpoint,
    pub protocol: u8,
    pub state: u8,
    pub uid: u32,
    pub inode: u32,
}

/// Lines read from one `/proc/<pid>/net` file at most (a namespace with more
/// sockets than this has the rest unlisted, and their bytes judged unowned).
const LISTED_MAX: usize = 262_144;

/// The sockets `/proc/<pid>/net/*` lists for `pid`'s network namespace.
pub fn listed_in_namespace_of(pid: u32) -> Vec<Listed> {
    let mut out = Vec::new();
    for (file, protocol) in [("tcp", IPPROTO_TCP), ("tcp6", IPPROTO_TCP), ("udp", IPPROTO_UDP), ("udp6", IPPROTO_UDP)] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) {
            out.extend(parse_proc_net(&text, protocol));
        }
    }
    out
}

/// `/proc/net/tcp`-format text: a header line, then per socket
/// `sl local rem st queues timer retrnsmt uid timeout inode ...`, addresses
/// as hex `ADDR:PORT`. Lines that do not parse are skipped.
pub fn parse_proc_net(text: &str, protocol: u8) -> Vec<Listed> {
    text.lines()
        .skip(1)
        .take(LISTED_MAX)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(Listed {
                local: parse_endpoint(f.get(1)?)?,
                remote: parse_endpoint(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                uid: f.get(7)?.parse().ok()?,
                inode: f.get(9)?.parse().ok()?,
                protocol,
            })
        })
        .collect()
}

/// `0100007F:1F90` (127.0.0.1:8080) or 32 hex digits for IPv6: each 32-bit
/// word of the address is printed in the host's byte order.
fn parse_endpoint(s: &str) -> Option<Endpoint> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> { u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes) };
    let mut out = [0u8; 16];
    match addr.len() {
        8 => out = std::net::Ipv4Addr::from(word(0)?).to_ipv6_mapped().octets(),
        32 => {
            for i in 0..4 {
                out[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
        }
        _ => return None,
    }
    Some((out, port))
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
            Err(e) => {
                out.failed.push((ino, format!("{e:#}")));
                out.listed.extend(listed_in_namespace_of(pid).into_iter().map(|l| (ino, l)));
            }
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

/// The network namespace (its inode) `pid` is in.
pub fn netns_of(pid: u32) -> Option<u64> {
    ns_of(&pid.to_string())
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
    in_namespace_of(pid, || Ok((dump()?, netns_cookie())))
}

/// `f` run on a short-lived thread inside the network namespace `pid` is in
/// (setns, which needs CAP_SYS_ADMIN); sockets it makes stay in that namespace.
pub fn in_namespace_of<T: Send>(pid: u32, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).with_context(|| format!("opening /proc/{pid}/ns/net"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a valid namespace fd; setns changes only this thread's
                // network namespace, and the thread ends after `f`.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(anyhow::Error::new(std::io::Error::last_os_error()).context("entering the network namespace (setns needs CAP_SYS_ADMIN)"));
                }
                f()
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
    fn proc_net_files() {
        // As this kernel prints them (x86_64: each address word little-endian).
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                   0: 02004D0A:B5D6 01004D0A:1F91 01 00000000:00000000 00:00000000 00000000     0        0 424242 1 0000000000000000 20 4 0 10 -1\n\
                   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 7 1 0000000000000000 100 0 0 10 0\n\
                   2: garbage\n";
        let l = parse_proc_net(tcp, IPPROTO_TCP);
        assert_eq!(l.len(), 2, "{l:?}");
        let v4 = |a: [u8; 4]| {
            let mut m = [0u8; 16];
            m[10] = 0xff;
            m[11] = 0xff;
            m[12..].copy_from_slice(&a);
            m
        };
        assert_eq!(l[0], Listed { local: (v4([10, 77, 0, 2]), 46550), remote: (v4([10, 77, 0, 1]), 8081), protocol: IPPROTO_TCP, state: 1, uid: 0, inode: 424242 });
        assert_eq!((l[1].state, l[1].uid, l[1].inode), (TCP_LISTEN, 1000, 7));
        let tcp6 = "header\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 9 1\n";
        let l = parse_proc_net(tcp6, IPPROTO_TCP);
        assert_eq!(l[0].local, (std::net::Ipv6Addr::LOCALHOST.octets(), 8080));
        for bad in ["h\n 0: 0100007F 00000000:0000 0A x x x 0 0 1", "h\n 0: 0100007G:0050 00000000:0000 0A x x x 0 0 1", "h\n 0: 01:0050 00:0 0A x x x 0 0 1"] {
            assert!(parse_proc_net(bad, IPPROTO_TCP).is_empty(), "{bad}");
        }
    }

    #[test]
    fn listeners() {
        let s = |state, port| DiagSocket { cookie: 1, inode: 1, uid: 0, protocol: IPPROTO_TCP, state, local_port: port };
        assert_eq!(listening_ports(&[s(TCP_LISTEN, 22), s(1, 50000)]), vec![22]);
    }
}
