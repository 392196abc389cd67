//! Finding and aborting a contained TCP connection through sock_diag.
//!
//! Finding: the send-path backends key flows by the socket's kernel address,
//! not its cookie, so the cookie the deny map needs is asked of sock_diag by
//! the connection's addresses and ports (SOCK_DIAG_BY_FAMILY, exact).
//!
//! Aborting (`respond.abort`): sock_diag's
//! SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY) ends it as tcp_abort does, so the
//! uploader's next send fails with ECONNABORTED at once instead of
//! retransmitting into the drop for the minutes TCP takes to give up. The
//! request names the connection by its addresses and ports and by its socket
//! cookie: the kernel refuses (ESTALE) when the tuple now belongs to another
//! socket, so a reused port is never cut.
//!
//! sock_diag answers only for the network namespace of the netlink socket
//! asking; a connection in another one (a pod, a container) is aborted
//! through a netlink socket made there (setns, so CAP_SYS_ADMIN). Without it
//! the connection is still dropped, only not aborted, and the record says why.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
};

use anyhow::{bail, Context, Result};
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, SOCK_DESTROY, SOCK_DIAG_BY_FAMILY},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::Socket;

use crate::sockets;

/// Netlink sockets kept, one per network namespace; past it they are all
/// closed and made again as needed (namespaces come and go with pods).
const NAMESPACES_MAX: usize = 64;
/// Replies read for one request before giving up on its answer.
const REPLIES_MAX: usize = 8;

/// A TCP connection as this host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// What became of one abort asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aborted {
    /// The kernel ended the connection.
    Yes,
    /// No such socket any more (closed meanwhile, or its tuple reused).
    Gone,
}

/// The kernel's idiag_cookie when a request names no particular socket.
const NO_COOKIE: u64 = u64::MAX;

/// The netlink sockets lookups and aborts go through, by network namespace.
#[derive(Default)]
pub struct Aborter {
    by_netns: HashMap<u64, Socket>,
    seq: u32,
}

impl Aborter {
    /// Abort the connection `cookie` (`tuple`) of process `pid`.
    pub fn abort(&mut self, pid: u32, cookie: u64, tuple: &Tuple) -> Result<Aborted> {
        let (sock, seq) = self.socket_for(pid)?;
        destroy(sock, seq, cookie, tuple)
    }

    /// The cookie of process `pid`'s TCP connection `tuple`, if it is still open.
    pub fn cookie_of(&mut self, pid: u32, tuple: &Tuple) -> Result<Option<u64>> {
        let (sock, seq) = self.socket_for(pid)?;
        lookup(sock, seq, tuple)
    }

    /// The netlink socket in `pid`'s network namespace, and a fresh sequence number.
    fn socket_for(&mut self, pid: u32) -> Result<(&Socket, u32)> {
        // The process may have exited since the tick began: its sockets then
        // close with it, or live on in a process it forked (same namespace).
        let ns = sockets::netns_of(pid).with_context(|| format!("no network namespace for pid {pid} (it exited)"))?;
        if !self.by_netns.contains_key(&ns) {
            if self.by_netns.len() >= NAMESPACES_MAX {
                self.by_netns.clear();
            }
            let sock = match sockets::netns_of(std::process::id()) == Some(ns) {
                true => sockets::diag_socket()?,
                false => sockets::in_namespace_of(pid, sockets::diag_socket)?,
            };
            set_timeout(&sock)?;
            self.by_netns.insert(ns, sock);
        }
        self.seq = self.seq.wrapping_add(1);
        Ok((&self.by_netns[&ns], self.seq))
    }
}

/// Replies come at once; the bound keeps a wedged kernel from holding a tick.
fn set_timeout(sock: &Socket) -> Result<()> {
    let tv = libc::timeval { tv_sec: 1, tv_usec: 0 };
    // SAFETY: `tv` is a valid timeval that outlives the call; the fd is the socket's own.
    let rc = unsafe {
        libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const tv).cast(), std::mem::size_of::<libc::timeval>() as libc::socklen_t)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setting the sock_diag socket's receive timeout");
    }
    Ok(())
}

/// A request about one TCP connection: SOCK_DIAG_BY_FAMILY (`destroy`
/// false: its details back) or SOCK_DESTROY (the same body under the other
/// message type, asking for an acknowledgement).
pub fn request(destroy: bool, seq: u32, cookie: u64, t: &Tuple) -> Vec<u8> {
    let (local, remote) = (t.local.ip().to_canonical(), t.remote.ip().to_canonical());
    let family = if local.is_ipv4() && remote.is_ipv4() { AF_INET } else { AF_INET6 };
    let (local, remote) = match family {
        AF_INET => (local, remote),
        _ => (IpAddr::V6(to_v6(local)), IpAddr::V6(to_v6(remote))),
    };
    let socket_id = SocketId {
        source_port: t.local.port(),
        destination_port: t.remote.port(),
        source_address: local,
        destination_address: remote,
        interface_id: 0,
        // The kernel's idiag_cookie is two u32 words, low word first, each in host order.
        cookie: cookie.to_ne_bytes(),
    };
    let body = InetRequest { family, protocol: IPPROTO_TCP, extensions: ExtensionFlags::empty(), states: StateFlags::all(), socket_id };
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), SockDiagMessage::InetRequest(body).into());
    packet.finalize();
    // finalize() typed it SOCK_DIAG_BY_FAMILY, the crate's only request.
    (packet.header.message_type, packet.header.flags) = match destroy {
        true => (SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK),
        false => (SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST),
    };
    packet.header.sequence_number = seq;
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    buf
}

fn destroy(sock: &Socket, seq: u32, cookie: u64, t: &Tuple) -> Result<Aborted> {
    sock.send(&request(true, seq, cookie, t), 0).context("sending SOCK_DESTROY")?;
    match answer(sock, seq, "SOCK_DESTROY")? {
        NetlinkPayload::Error(e) => match e.code.map(|c| -c.get()) {
            None => Ok(Aborted::Yes),
            Some(libc::ENOENT | libc::ESTALE) => Ok(Aborted::Gone),
            Some(libc::EOPNOTSUPP) => bail!("this kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY is off, or tcp_diag is not loaded)"),
            Some(errno) => Err(std::io::Error::from_raw_os_error(errno)).context("SOCK_DESTROY"),
        },
        _ => bail!("sock_diag answered SOCK_DESTROY with something other than an acknowledgement"),
    }
}

fn lookup(sock: &Socket, seq: u32, t: &Tuple) -> Result<Option<u64>> {
    sock.send(&request(false, seq, NO_COOKIE, t), 0).context("asking sock_diag for a connection")?;
    match answer(sock, seq, "a connection's lookup")? {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => Ok(Some(u64::from_ne_bytes(r.header.socket_id.cookie))),
        NetlinkPayload::Error(e) => match e.code.map(|c| -c.get()) {
            Some(libc::ENOENT) => Ok(None),
            Some(errno) => Err(std::io::Error::from_raw_os_error(errno)).context("sock_diag lookup"),
            None => bail!("sock_diag acknowledged a lookup without answering it"),
        },
        _ => bail!("sock_diag answered a lookup with something other than a socket"),
    }
}

/// The answer to request `seq` (`what`, for errors).
fn answer(sock: &Socket, seq: u32, what: &str) -> Result<NetlinkPayload<SockDiagMessage>> {
    let mut rx = vec![0u8; 4096];
    for _ in 0..REPLIES_MAX {
        let n = sock.recv(&mut &mut rx[..], 0).with_context(|| format!("reading the answer to {what}"))?;
        let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[..n]).map_err(|e| anyhow::anyhow!("malformed sock_diag answer: {e}"))?;
        // A late answer to an earlier request that timed out: not this one's.
        if msg.header.sequence_number == seq {
            return Ok(msg.payload);
        }
    }
    bail!("no answer to {what}")
}

/// Whether this kernel finds and aborts connections for sluice: a loopback
/// connection of its own, found by its addresses and aborted, must fail its
/// next send (`sluice check`).
pub fn probe() -> Result<()> {
    use std::{io::Write, net::TcpListener};
    let listener = TcpListener::bind("127.0.0.1:0").context("listening on loopback")?;
    let mut client = std::net::TcpStream::connect(listener.local_addr()?).context("connecting on loopback")?;
    let (_server, _) = listener.accept().context("accepting on loopback")?;
    let t = Tuple { local: client.local_addr()?, remote: client.peer_addr()? };
    let mut aborter = Aborter::default();
    let cookie = socket_cookie(&client)?;
    if aborter.cookie_of(std::process::id(), &t)? != Some(cookie) {
        bail!("sock_diag did not find a live loopback connection by its addresses");
    }
    match aborter.abort(std::process::id(), cookie, &t)? {
        Aborted::Yes => {}
        Aborted::Gone => bail!("SOCK_DESTROY did not find a live loopback connection"),
    }
    match client.write_all(b"after") {
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
        other => bail!("an aborted connection's send gave {other:?}, not ECONNABORTED"),
    }
}

fn socket_cookie(s: &std::net::TcpStream) -> Result<u64> {
    let (mut cookie, mut len) = (0u64, std::mem::size_of::<u64>() as libc::socklen_t);
    // SAFETY: `cookie` and `len` are valid for the kernel to write 8 bytes and their length.
    let rc = unsafe { libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_COOKIE, (&raw mut cookie).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("reading a socket cookie (SO_COOKIE)");
    }
    Ok(cookie)
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(l: &str, r: &str) -> Tuple {
        Tuple { local: l.parse().unwrap(), remote: r.parse().unwrap() }
    }

    #[test]
    fn the_request_is_sock_destroy_with_the_tuple_and_cookie_where_the_kernel_reads_them() {
        let b = request(true, 7, 0x1122_3344_5566_7788, &tuple("[::ffff:10.0.0.1]:40000", "10.0.0.2:443"));
        // nlmsghdr (16) + inet_diag_req_v2 (56).
        assert_eq!(b.len(), 72);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), 21, "SOCK_DESTROY");
        assert_eq!(u16::from_ne_bytes(b[6..8].try_into().unwrap()), 1 | 4, "NLM_F_REQUEST | NLM_F_ACK");
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 7);
        // A v4-mapped local address is the IPv4 connection it stands for.
        assert_eq!((b[16], b[17]), (libc::AF_INET as u8, libc::IPPROTO_TCP as u8));
        let id = &b[24..];
        assert_eq!(u16::from_be_bytes([id[0], id[1]]), 40000);
        assert_eq!(u16::from_be_bytes([id[2], id[3]]), 443);
        assert_eq!(&id[4..8], &[10, 0, 0, 1]);
        assert_eq!(&id[20..24], &[10, 0, 0, 2]);
        assert_eq!(u32::from_ne_bytes(id[40..44].try_into().unwrap()), 0x5566_7788, "the cookie's low word first");
        assert_eq!(u32::from_ne_bytes(id[44..48].try_into().unwrap()), 0x1122_3344);
    }

    #[test]
    fn an_ipv6_connection_is_asked_for_as_ipv6() {
        let b = request(false, 1, 1, &tuple("[fd00::1]:5000", "[fd00::2]:80"));
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), 20, "SOCK_DIAG_BY_FAMILY");
        assert_eq!(u16::from_ne_bytes(b[6..8].try_into().unwrap()), 1, "NLM_F_REQUEST");
        assert_eq!(b[16], libc::AF_INET6 as u8);
        assert_eq!(&b[24 + 4..24 + 20], &"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    }

    /// A real connection on loopback, aborted: the sender's next send fails;
    /// another socket's cookie on the same tuple is refused.
    #[test]
    fn a_live_loopback_connection_is_aborted_and_a_wrong_cookie_is_refused() {
        use std::net::TcpListener;
        // SAFETY: geteuid takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: SOCK_DESTROY needs CAP_NET_ADMIN");
            return;
        }
        probe().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let t = Tuple { local: client.local_addr().unwrap(), remote: client.peer_addr().unwrap() };
        let cookie = socket_cookie(&client).unwrap();
        assert_eq!(Aborter::default().abort(std::process::id(), cookie ^ 1, &t).unwrap(), Aborted::Gone);
    }
}
