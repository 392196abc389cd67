//! Workloads for the VM scenarios, where there is no python or curl: a few
//! statically understood senders and a sink, all bounded.
//!
//!     netload sink tcp|udp ADDR PORT [N]      count bytes until EOF on N connections (tcp, default 1,
//!                                             served in parallel) or 3 s of silence (udp)
//!     netload send ADDR PORT BYTES [WRITE]    one TCP connection, write BYTES (WRITE bytes a call, 1 MiB)
//!     netload sendmsg ADDR PORT BYTES         sendmsg(2) with two iovecs per call
//!     netload sendmmsg ADDR PORT COUNT SIZE   COUNT datagrams in sendmmsg(2) batches of 16
//!     netload splice ADDR PORT FILE           FILE -> pipe -> socket with splice(2)
//!     netload uring ADDR PORT BYTES           IORING_OP_SEND submissions of 64 KiB
//!     netload inherit ADDR PORT BYTES         connect, fork: the child sends BYTES on the
//!                                             parent's socket and prints "child pid=N"
//!     netload exec-send ADDR PORT PROGRAM ARGS...
//!                                             connect, then exec PROGRAM with the socket as fd 3
//!                                             (same pid, another program sends)
//!     netload fdsend FD BYTES                 write BYTES to an inherited fd
//!     netload threads ADDR PORT SNI N BYTES   N threads, each its own connection: a ClientHello
//!                                             naming SNI, then BYTES
//!     netload udp ADDR PORT COUNT SIZE        COUNT datagrams of SIZE bytes with sendto()
//!     netload sendfile ADDR PORT FILE         sendfile(2) FILE over one TCP connection
//!     netload tls ADDR PORT SNI BYTES [LABEL] a ClientHello naming SNI (in a write() and a
//!                                             writev()), then BYTES, over one TCP connection
//!     netload tls-split ADDR PORT SNI BYTES   the ClientHello split over two TLS records, then BYTES
//!     netload ktls ADDR PORT SNI BYTES [FILE] a ClientHello naming SNI in the clear, then kernel TLS
//!                                             (TCP_ULP "tls", TLS_TX with a fixed AES-GCM-128 key) and
//!                                             BYTES written, or FILE sent with sendfile(2); where the
//!                                             kernel has no kTLS, "unavailable REASON" and nothing more
//!     netload ktls-rx ADDR PORT SNI BYTES     the same with TLS_RX only: the socket has the TLS upper
//!                                             layer, and its sends still go through tcp_sendmsg
//!     netload thread-exit ADDR PORT CHUNK COUNT
//!                                             the main thread exits (exit(2), as pthread_exit); a worker
//!                                             sends COUNT chunks of CHUNK bytes, one every 0.5 s
//!     netload mptcp ADDR PORT BYTES           BYTES over one MPTCP connection (IPPROTO_MPTCP, IPv4)
//!                                             (`sink mptcp ADDR PORT` listens as MPTCP)
//!     netload exec-untouched FILE PROGRAM ARGS...
//!                                             execve PROGRAM with ARGS read from a fresh
//!                                             mapping of FILE (written first) that nothing has
//!                                             touched: pages the kernel has not faulted in
//!     netload blocked N ADDR PORT EACH        N threads, each one send() of EACH bytes on a socket
//!                                             with a 16 KiB send buffer: all N block in the kernel
//!                                             while `sink slow ADDR PORT` (accepts for 3 s, then
//!                                             reads) is not reading
//!     netload sink waitall ADDR PORT          one TCP connection read with MSG_PEEK, then
//!                                             MSG_WAITALL recv()s of 1 MB, until EOF
//!     netload chdir-send DIR ADDR PORT BYTES  chdir(DIR) at once, then (0.3 s later) send BYTES
//!     netload sockmap ADDR PORT BYTES         BYTES over a TCP connection put in a sockmap with an
//!                                             sk_msg program that passes everything (so its sends
//!                                             go through tcp_bpf_sendmsg, not tcp_sendmsg)
//!     netload dns-tunnel ZONE COUNT           COUNT UDP queries to 127.0.0.1:53 (received there),
//!                                             each name 30 bytes of data in hex under ZONE
//!     netload socks5 ADDR PORT HOST BYTES     a SOCKS5 greeting (a 3-byte write) and a CONNECT
//!                                             to HOST:443 (sent without waiting for replies), then BYTES;
//!                                             both written from pages not yet mapped (see `cold`)
//!     netload quic ADDR PORT COUNT            COUNT 1200-byte datagrams, the first a QUIC v1 Initial
//!     netload dns-send ADDR PORT NAME BYTES [udp]
//!                                             ask 127.0.0.1:53 for NAME and answer it NAME -> ADDR
//!                                             (dns-unsolicited: the answer without the query),
//!                                             then send BYTES to ADDR:PORT (named by DNS alone)
//!     netload contained ADDR PORT BYTES RATE PORT2
//!                                             containment's uploader: BYTES at RATE bytes/s on one TCP
//!                                             connection until a send fails ("aborted ERRNO after N") or
//!                                             stalls 3 s ("stalled N"); then a send on a UDP socket made at
//!                                             the start ("udp-send ok|ERRNO"), socket() tried every 0.2 s
//!                                             until allowed (at most 30 s: "refused N"), and 1 MB to PORT2
//!     netload sink idle ADDR PORT SECONDS     one TCP connection's bytes until EOF or SECONDS of silence
//!
//! LABEL is ignored: it gives otherwise identical senders different command lines.
//! Prints "ready" when listening and "received N" / "sent N" at the end.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use sluice_tests::finish;

/// Count one connection's bytes until EOF (bounded by a 120 s read timeout).
fn drain(mut c: TcpStream) -> u64 {
    c.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
    }
    n
}

/// Containment's uploader (see the module's list).
fn contained(dst: SocketAddr, bytes: u64, rate: u64, resume: SocketAddr) {
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    let mut s = TcpStream::connect(dst).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(3))).ok();
    let (chunk, start) = (vec![b'c'; 1 << 16], std::time::Instant::now());
    let mut sent = 0u64;
    let end = loop {
        if sent >= bytes {
            break format!("finished {sent}");
        }
        match s.write(&chunk) {
            Ok(k) => sent += k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break format!("stalled {sent}"),
            Err(e) => break format!("aborted {} after {sent}", e.raw_os_error().unwrap_or(0)),
        }
        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
        std::thread::sleep(due.saturating_sub(start.elapsed()));
    };
    println!("{end}");
    match udp.send_to(b"u", dst) {
        Ok(_) => println!("udp-send ok"),
        Err(e) => println!("udp-send {}", e.raw_os_error().unwrap_or(0)),
    }
    let t = std::time::Instant::now();
    let mut refused = 0;
    let again = loop {
        match TcpStream::connect(resume) {
            Ok(c) => break c,
            Err(_) if t.elapsed() > Duration::from_secs(30) => {
                println!("never lifted");
                return;
            }
            Err(_) => refused += 1,
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("refused {refused} for {:.1}", t.elapsed().as_secs_f64());
    hello_then_upload_on(again, &[], 1_000_000);
    println!("resumed");
}

/// A ClientHello naming `sni`, then `n` bytes, on one connection.
fn tls_upload(dst: SocketAddr, sni: &str, n: usize) {
    hello_then_upload(dst, &sluice_tests::client_hello(Some(sni), 200), n);
}

/// `hello` (a ClientHello, whole or split over records), then `n` bytes.
fn hello_then_upload(dst: SocketAddr, hello: &[u8], n: usize) {
    hello_then_upload_on(TcpStream::connect(dst).expect("connect"), hello, n);
}

fn hello_then_upload_on(mut s: TcpStream, hello: &[u8], n: usize) {
    s.write_all(hello).expect("hello");
    write_chunks(&mut s, n);
    finish(s);
}

/// `data` where no page table maps it yet: a private mapping of a file that
/// holds it, whose pages are mapped only when first used. With `hot` > 0
/// its first `hot` bytes end a page that is mapped (written, not read: a
/// read fault would map the neighbouring page too) and the rest starts on one
/// that is not. The mapping is never unmapped (the process is short-lived).
fn cold(data: &[u8], hot: usize) -> &'static [u8] {
    const PAGE: usize = 4096;
    assert!(hot < PAGE && data.len() <= PAGE, "cold: one page at most");
    let at = PAGE - hot;
    let mut image = vec![0u8; 2 * PAGE];
    image[at..at + data.len()].copy_from_slice(data);
    let path = std::env::temp_dir().join(format!("netload-cold-{}-{hot}", std::process::id()));
    std::fs::write(&path, &image).expect("writing the cold file");
    let f = std::fs::File::open(&path).expect("opening the cold file");
    // SAFETY: a fresh private read-write mapping of a file just written, of
    // its length; nothing else maps it. Only bytes inside it are touched.
    let base = unsafe {
        libc::mmap(std::ptr::null_mut(), 2 * PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE, f.as_raw_fd(), 0)
    };
    assert!(base != libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    let _ = std::fs::remove_file(&path);
    let base = base as *mut u8;
    if hot > 0 {
        // SAFETY: inside the mapping; byte 0 is a zero of the image.
        unsafe { base.write_volatile(0) };
    }
    // SAFETY: `data.len()` bytes from `at` lie inside the mapping, which
    // lives as long as the process.
    unsafe { std::slice::from_raw_parts(base.add(at), data.len()) }
}

/// `n` bytes in 64 KiB writes.
fn write_chunks(s: &mut TcpStream, n: usize) {
    let chunk = vec![b't'; 1 << 16];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        s.write_all(&chunk[..k]).expect("send");
        left -= k;
    }
}

/// All of `path` with sendfile(2); its length.
fn sendfile_all(s: &TcpStream, path: &str) -> usize {
    let f = std::fs::File::open(path).expect("open");
    let len = f.metadata().expect("stat").len() as usize;
    let mut left = len;
    while left > 0 {
        // SAFETY: valid fds for the call's duration; offset NULL = file position.
        let k = unsafe { libc::sendfile(s.as_raw_fd(), f.as_raw_fd(), std::ptr::null_mut(), left) };
        assert!(k > 0, "sendfile: {}", std::io::Error::last_os_error());
        left -= k as usize;
    }
    len
}

const IPPROTO_MPTCP: i32 = 262;

/// An IPv4 MPTCP socket, connected to `dst` or listening on it, as std's types
/// (the fd behaves as a TCP socket to read and write).
fn mptcp(dst: SocketAddr, listen: bool) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = dst else { panic!("MPTCP scenarios are IPv4") };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on an fd owned here, with a sockaddr_in that
    // lives across each call and its true length.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_MPTCP);
        assert!(fd >= 0, "socket(IPPROTO_MPTCP): {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let sap = &sa as *const libc::sockaddr_in as *const libc::sockaddr;
        let ok = if listen {
            let one: libc::c_int = 1;
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one as *const _ as *const libc::c_void, 4);
            libc::bind(fd, sap, len) == 0 && libc::listen(fd, 16) == 0
        } else {
            libc::connect(fd, sap, len) == 0
        };
        assert!(ok, "MPTCP {}: {}", if listen { "listen" } else { "connect" }, std::io::Error::last_os_error());
        owned
    }
}

/// `exec-untouched`: the arguments live in a file mapping no one has read, so
/// a reader that cannot fault pages in (a BPF probe at syscall entry) sees
/// nothing there, while the kernel's own copy for the new program does.
fn exec_untouched(file: &str, program: &str, args: &[&str]) -> ! {
    use std::{ffi::CString, os::fd::AsRawFd};
    let mut blob = Vec::new();
    let mut offsets = Vec::new();
    for a in args {
        offsets.push(blob.len());
        blob.extend_from_slice(a.as_bytes());
        blob.push(0);
    }
    std::fs::write(file, &blob).expect("write the argument file");
    let f = std::fs::File::open(file).expect("open the argument file");
    let prog = CString::new(program).expect("program path");
    // SAFETY: a read-only private mapping of a file this process keeps open,
    // never touched here; execve replaces the process before anything
    // unmaps it, and its strings are NUL-terminated within the file.
    unsafe {
        let base = libc::mmap(std::ptr::null_mut(), blob.len(), libc::PROT_READ, libc::MAP_PRIVATE, f.as_raw_fd(), 0);
        assert!(base != libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        let mut argv: Vec<*const libc::c_char> = vec![prog.as_ptr()];
        argv.extend(offsets.iter().map(|&o| (base as *const libc::c_char).add(o)));
        argv.push(std::ptr::null());
        extern "C" {
            static environ: *const *const libc::c_char;
        }
        libc::execve(prog.as_ptr(), argv.as_ptr(), environ);
    }
    panic!("execve {program}: {}", std::io::Error::last_os_error())
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> i64 {
    // SAFETY: `attr` is a bpf_attr prefix that lives across the call, with its true size.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) as i64 }
}

/// Put `sock` in a new sockmap whose sk_msg program returns SK_PASS: the
/// kernel then sends its writes through tcp_bpf_sendmsg. The program is two
/// instructions (`r0 = 1; exit`), loaded without a BPF toolchain. Returns the
/// map and program fds (closing them undoes nothing the socket needs).
fn sockmap_with_pass_verdict(sock: i32) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    #[repr(C)]
    #[derive(Default)]
    struct MapCreate { map_type: u32, key_size: u32, value_size: u32, max_entries: u32, map_flags: u32 }
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad { prog_type: u32, insn_cnt: u32, insns: u64, license: u64, log_level: u32, log_size: u32, log_buf: u64, kern_version: u32, prog_flags: u32 }
    #[repr(C)]
    #[derive(Default)]
    struct Attach { target_fd: u32, attach_bpf_fd: u32, attach_type: u32, attach_flags: u32 }
    #[repr(C)]
    #[derive(Default)]
    struct Elem { map_fd: u32, _pad: u32, key: u64, value: u64, flags: u64 }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_ATTACH: libc::c_long = 8;
    const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
    const BPF_PROG_TYPE_SK_MSG: u32 = 16;
    const BPF_SK_MSG_VERDICT: u32 = 7;
    // mov64 r0, 1 ; exit
    let insns: [u64; 2] = [0x0000_0001_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let map = bpf(BPF_MAP_CREATE, &mut MapCreate { map_type: BPF_MAP_TYPE_SOCKMAP, key_size: 4, value_size: 4, max_entries: 1, map_flags: 0 });
    assert!(map >= 0, "BPF_MAP_CREATE(sockmap): {}", std::io::Error::last_os_error());
    let prog = bpf(BPF_PROG_LOAD, &mut ProgLoad { prog_type: BPF_PROG_TYPE_SK_MSG, insn_cnt: 2, insns: insns.as_ptr() as u64, license: license.as_ptr() as u64, ..Default::default() });
    assert!(prog >= 0, "BPF_PROG_LOAD(sk_msg): {}", std::io::Error::last_os_error());
    let attached = bpf(BPF_PROG_ATTACH, &mut Attach { target_fd: map as u32, attach_bpf_fd: prog as u32, attach_type: BPF_SK_MSG_VERDICT, attach_flags: 0 });
    assert!(attached == 0, "BPF_PROG_ATTACH(sk_msg verdict): {}", std::io::Error::last_os_error());
    let (key, value) = (0u32, sock as u32);
    let put = bpf(BPF_MAP_UPDATE_ELEM, &mut Elem { map_fd: map as u32, key: &key as *const u32 as u64, value: &value as *const u32 as u64, ..Default::default() });
    assert!(put == 0, "adding the socket to the sockmap: {}", std::io::Error::last_os_error());
    // SAFETY: two new fds this owns from here.
    unsafe { (std::os::fd::OwnedFd::from_raw_fd(map as i32), std::os::fd::OwnedFd::from_raw_fd(prog as i32)) }
}

/// `struct tls12_crypto_info_aes_gcm_128` (include/uapi/linux/tls.h).
#[repr(C)]
struct TlsAesGcm128 {
    version: u16,
    cipher_type: u16,
    iv: [u8; 8],
    key: [u8; 16],
    salt: [u8; 4],
    rec_seq: [u8; 8],
}

/// Hand `s`'s transmit (TLS_TX, 1) or receive (TLS_RX, 2) side to the
/// kernel's TLS (what OpenSSL's KTLS does after the handshake); the error
/// says why not.
fn enable_ktls(s: &TcpStream, direction: libc::c_int) -> std::io::Result<()> {
    let info = TlsAesGcm128 { version: 0x0303, cipher_type: 51, iv: [1; 8], key: [7; 16], salt: [3; 4], rec_seq: [0; 8] };
    // SAFETY: setsockopt with a NUL-free name of its true length, then with
    // a uapi struct of its true size; the socket outlives both calls.
    let ulp = unsafe { libc::setsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_ULP, b"tls".as_ptr() as *const libc::c_void, 3) };
    if ulp != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let size = std::mem::size_of::<TlsAesGcm128>() as libc::socklen_t;
    let tx = unsafe { libc::setsockopt(s.as_raw_fd(), libc::SOL_TLS, direction, &info as *const _ as *const libc::c_void, size) };
    if tx != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn addr(a: &str, p: &str) -> SocketAddr {
    let port: u16 = p.parse().expect("port");
    let ip: std::net::IpAddr = a.parse().expect("address");
    SocketAddr::new(ip, port)
}

fn main() {
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.get(1..).unwrap_or(&[]) {
        ["sink", "tcp", ip, port, rest @ ..] => {
            let conns: usize = rest.first().map_or(1, |n| n.parse().expect("connections"));
            let l = TcpListener::bind(addr(ip, port)).expect("bind");
            println!("ready");
            let workers: Vec<_> = (0..conns)
                .map(|_| {
                    let (c, _) = l.accept().expect("accept");
                    std::thread::spawn(move || drain(c))
                })
                .collect();
            let n: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
            println!("received {n}");
        }
        ["sink", "idle", ip, port, secs] => {
            let l = TcpListener::bind(addr(ip, port)).expect("bind");
            println!("ready");
            let (mut c, _) = l.accept().expect("accept");
            c.set_read_timeout(Some(Duration::from_secs(secs.parse().expect("seconds")))).ok();
            let (mut buf, mut n) = (vec![0u8; 1 << 20], 0u64);
            while let Ok(k @ 1..) = c.read(&mut buf) {
                n += k as u64;
            }
            println!("received {n}");
        }
        ["contained", ip, port, bytes, rate, port2] => {
            contained(addr(ip, port), bytes.parse().expect("bytes"), rate.parse().expect("rate"), addr(ip, port2));
        }
        ["sink", "mptcp", ip, port] => {
            let l = TcpListener::from(mptcp(addr(ip, port), true));
            println!("ready");
            let (c, _) = l.accept().expect("accept");
            println!("received {}", drain(c));
        }
        ["mptcp", ip, port, bytes] => {
            let n: usize = bytes.parse().expect("bytes");
            hello_then_upload_on(TcpStream::from(mptcp(addr(ip, port), false)), &[], n);
            println!("sent {n}");
        }
        ["sink", "waitall", ip, port] => {
            let l = TcpListener::bind(addr(ip, port)).expect("bind");
            println!("ready");
            let (c, _) = l.accept().expect("accept");
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                // SAFETY: recv into a buffer this owns, of its true length.
                let peeked = unsafe { libc::recv(c.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, 65536, libc::MSG_PEEK) };
                if peeked <= 0 {
                    break;
                }
                let got = unsafe { libc::recv(c.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_WAITALL) };
                if got <= 0 {
                    break;
                }
                n += got as u64;
            }
            println!("received {n}");
        }
        ["sink", "slow", ip, port] => {
            let l = TcpListener::bind(addr(ip, port)).expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            println!("ready");
            let (mut held, start) = (Vec::new(), std::time::Instant::now());
            while start.elapsed() < Duration::from_secs(3) {
                match l.accept() {
                    Ok((c, _)) => held.push(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            let readers: Vec<_> = held
                .into_iter()
                .map(|c| {
                    c.set_nonblocking(false).ok();
                    std::thread::spawn(move || drain(c))
                })
                .collect();
            let n: u64 = readers.into_iter().map(|r| r.join().unwrap_or(0)).sum();
            println!("received {n}");
        }
        ["blocked", count, ip, port, each] => {
            let (count, each): (usize, usize) = (count.parse().expect("threads"), each.parse().expect("bytes"));
            let dst = addr(ip, port);
            let senders: Vec<_> = (0..count)
                .map(|_| {
                    std::thread::spawn(move || {
                        let s = TcpStream::connect(dst).expect("connect");
                        let small: libc::c_int = 16 * 1024;
                        // SAFETY: setsockopt on a socket this thread owns, with an int.
                        unsafe { libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, &small as *const _ as *const libc::c_void, 4) };
                        let mut s = s;
                        // One write: tcp_sendmsg waits inside for buffer space.
                        s.write_all(&vec![b'b'; each]).expect("send");
                        finish(s);
                    })
                })
                .collect();
            for t in senders {
                t.join().expect("sender");
            }
            println!("sent {}", count * each);
        }
        ["sink", "udp", ip, port] => {
            let s = UdpSocket::bind(addr(ip, port)).expect("bind");
            s.set_read_timeout(Some(Duration::from_secs(3))).ok();
            println!("ready");
            let mut buf = vec![0u8; 65536];
            let mut n = 0u64;
            while let Ok(k) = s.recv(&mut buf) {
                n += k as u64;
            }
            println!("received {n}");
        }
        ["send", ip, port, bytes, rest @ ..] => {
            let n: usize = bytes.parse().expect("bytes");
            let size: usize = rest.first().map_or(1 << 20, |c| c.parse().expect("write size"));
            let mut s = TcpStream::connect(addr(ip, port)).expect("connect");
            let chunk = vec![b's'; size];
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                s.write_all(&chunk[..k]).expect("send");
                left -= k;
            }
            finish(s);
            println!("sent {n}");
        }
        ["udp", ip, port, count, size] => {
            let (count, size): (usize, usize) = (count.parse().expect("count"), size.parse().expect("size"));
            let dst = addr(ip, port);
            let s = UdpSocket::bind(if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).expect("bind");
            let d = vec![b'u'; size];
            for i in 0..count {
                s.send_to(&d, dst).expect("sendto");
                if i % 100 == 99 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            println!("sent {}", count * size);
        }
        ["sendfile", ip, port, file] => {
            let s = TcpStream::connect(addr(ip, port)).expect("connect");
            let len = sendfile_all(&s, file);
            finish(s);
            println!("sent {len}");
        }
        ["tls", ip, port, sni, bytes, ..] => {
            let n: usize = bytes.parse().expect("bytes");
            let hello = sluice_tests::client_hello(Some(sni), 1200);
            let mut s = TcpStream::connect(addr(ip, port)).expect("connect");
            // write() (ITER_UBUF), then writev() whose first iovec ends the hello.
            s.write_all(&hello[..600]).expect("write");
            let body = vec![b't'; n];
            let iov = [std::io::IoSlice::new(&hello[600..]), std::io::IoSlice::new(&body)];
            let mut sent = s.write_vectored(&iov).expect("writev");
            if sent < hello.len() - 600 {
                s.write_all(&hello[600 + sent..]).expect("write");
                sent = hello.len() - 600;
            }
            s.write_all(&body[sent - (hello.len() - 600)..]).expect("write");
            finish(s);
            println!("sent {}", hello.len() + n);
        }
        [mode @ ("ktls" | "ktls-rx"), ip, port, sni, bytes, file @ ..] => {
            let hello = sluice_tests::client_hello(Some(sni), 200);
            let mut s = TcpStream::connect(addr(ip, port)).expect("connect");
            s.write_all(&hello).expect("hello");
            if let Err(e) = enable_ktls(&s, if *mode == "ktls" { 1 } else { 2 }) {
                println!("unavailable kTLS (TCP_ULP tls / TLS_TX: {e})");
                finish(s);
                return;
            }
            let n = match file.first() {
                Some(path) => sendfile_all(&s, path),
                None => {
                    let n: usize = bytes.parse().expect("bytes");
                    write_chunks(&mut s, n);
                    n
                }
            };
            finish(s);
            println!("sent {}", hello.len() + n);
        }
        ["quic", ip, port, count] => {
            let count: usize = count.parse().expect("count");
            let dst = addr(ip, port);
            let s = UdpSocket::bind(if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).expect("bind");
            s.connect(dst).expect("connect");
            let mut d = vec![0u8; 1200];
            // Long header, Initial, QUIC v1, 8-byte DCID, empty SCID.
            d[..15].copy_from_slice(&[0xc3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0]);
            for i in 0..count {
                s.send(&d).expect("send");
                d[0] = 0x43; // later packets: short header
                if i % 100 == 99 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            println!("sent {}", count * 1200);
        }
        [mode @ ("dns-send" | "dns-unsolicited"), ip, port, name, bytes, rest @ ..] => {
            let n: usize = bytes.parse().expect("bytes");
            let target: std::net::Ipv4Addr = ip.parse().expect("IPv4 address");
            let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let server = UdpSocket::bind("127.0.0.1:53").expect("bind port 53");
            if *mode == "dns-send" {
                // Ask, then answer that query (sluice believes only answers to queries).
                rx.send_to(&sluice_tests::dns_query(name), server.local_addr().unwrap()).expect("query");
                server.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let (_, asker) = server.recv_from(&mut [0u8; 512]).expect("the query");
                server.send_to(&sluice_tests::dns_answer(name, target), asker).expect("answer");
            } else {
                // An answer nobody asked for: must name nothing.
                server.send_to(&sluice_tests::dns_answer(name, target), rx.local_addr().unwrap()).expect("answer");
            }
            rx.set_read_timeout(Some(Duration::from_secs(5))).ok();
            rx.recv(&mut [0u8; 512]).expect("the answer");
            if rest.first() == Some(&"udp") {
                // 1200-byte datagrams (QUIC's size), paced so a local sink keeps up.
                let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
                s.connect(addr(ip, port)).expect("connect");
                let d = vec![b'q'; 1200];
                for i in 0..n.div_ceil(1200) {
                    s.send(&d[..1200.min(n - i * 1200)]).expect("send");
                    if i % 50 == 49 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            } else {
                let mut s = TcpStream::connect(addr(ip, port)).expect("connect");
                s.write_all(&vec![b'd'; n]).expect("send");
                finish(s);
            }
            println!("sent {n}");
        }
        ["sendmsg", ip, port, bytes] => {
            let n: usize = bytes.parse().expect("bytes");
            let s = TcpStream::connect(addr(ip, port)).expect("connect");
            let (head, body) = (vec![b'h'; 100], vec![b'm'; 60_000]);
            let mut left = n;
            while left > 0 {
                let a = left.min(head.len());
                let b = (left - a).min(body.len());
                let mut iov = [
                    libc::iovec { iov_base: head.as_ptr() as *mut _, iov_len: a },
                    libc::iovec { iov_base: body.as_ptr() as *mut _, iov_len: b },
                ];
                // SAFETY: zeroed msghdr is valid; iov outlives the call.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = 2;
                let k = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) };
                assert!(k > 0, "sendmsg failed");
                // A short send: the rest goes in the next call (the counts stay exact).
                left -= k as usize;
            }
            finish(s);
            println!("sent {n}");
        }
        ["sendmmsg", ip, port, count, size] => {
            let (count, size): (usize, usize) = (count.parse().expect("count"), size.parse().expect("size"));
            let dst = addr(ip, port);
            let s = UdpSocket::bind(if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).expect("bind");
            s.connect(dst).expect("connect");
            let d = vec![b'v'; size];
            let mut sent = 0;
            while sent < count {
                let batch = (count - sent).min(16);
                let mut iovs: Vec<libc::iovec> =
                    (0..batch).map(|_| libc::iovec { iov_base: d.as_ptr() as *mut _, iov_len: size }).collect();
                // SAFETY: zeroed mmsghdr is valid; iovs outlive the call.
                let mut msgs: Vec<libc::mmsghdr> = iovs
                    .iter_mut()
                    .map(|iov| {
                        let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                        m.msg_hdr.msg_iov = iov;
                        m.msg_hdr.msg_iovlen = 1;
                        m
                    })
                    .collect();
                // SAFETY: `msgs` holds `batch` initialised mmsghdrs whose buffers outlive the call.
                let k = unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), batch as u32, 0) };
                assert!(k > 0, "sendmmsg failed");
                sent += k as usize;
                std::thread::sleep(Duration::from_micros(500));
            }
            println!("sent {}", count * size);
        }
        ["splice", ip, port, file] => {
            let f = std::fs::File::open(file).expect("open");
            let len = f.metadata().expect("stat").len() as usize;
            let s = TcpStream::connect(addr(ip, port)).expect("connect");
            let mut p = [0i32; 2];
            // SAFETY: p is a valid 2-int array.
            assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0, "pipe");
            let mut left = len;
            while left > 0 {
                // SAFETY: valid fds; NULL offsets use and advance the file position.
                let k = unsafe { libc::splice(f.as_raw_fd(), std::ptr::null_mut(), p[1], std::ptr::null_mut(), left.min(1 << 16), 0) };
                assert!(k > 0, "splice file->pipe failed");
                let mut inpipe = k as usize;
                while inpipe > 0 {
                    let w = unsafe { libc::splice(p[0], std::ptr::null_mut(), s.as_raw_fd(), std::ptr::null_mut(), inpipe, 0) };
                    assert!(w > 0, "splice pipe->socket failed");
                    inpipe -= w as usize;
                }
                left -= k as usize;
            }
            finish(s);
            println!("sent {len}");
        }
        ["uring", ip, port, bytes] => {
            let n: usize = bytes.parse().expect("bytes");
            let s = TcpStream::connect(addr(ip, port)).expect("connect");
            let mut ring = io_uring::IoUring::new(8).expect("io_uring_setup (is io_uring disabled?)");
            let chunk = vec![b'i'; 1 << 16];
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                let op = io_uring::opcode::Send::new(io_uring::types::Fd(s.as_raw_fd()), chunk.as_ptr(), k as u32).build();
                // SAFETY: chunk outlives the submission: we wait for its completion below.
                unsafe { ring.submission().push(&op).expect("submission queue full") };
                ring.submit_and_wait(1).expect("io_uring_enter");
                let cqe = ring.completion().next().expect("a completion");
                assert!(cqe.result() > 0, "IORING_OP_SEND failed: {}", cqe.result());
                left -= cqe.result() as usize;
            }
            finish(s);
            println!("sent {n}");
        }
        ["inherit", ip, port, bytes] => {
            let n: usize = bytes.parse().expect("bytes");
            let s = TcpStream::connect(addr(ip, port)).expect("connect");
            // SAFETY: single-threaded here; the child only writes and _exits.
            match unsafe { libc::fork() } {
                0 => {
                    println!("child pid={}", std::process::id());
                    let chunk = vec![b'c'; 1 << 16];
                    let mut w = &s;
                    let mut left = n;
                    while left > 0 {
                        let k = left.min(chunk.len());
                        if w.write_all(&chunk[..k]).is_err() {
                            // SAFETY: _exit ends the forked child at once (no destructors run, as after fork they must not).
                            unsafe { libc::_exit(1) };
                        }
                        left -= k;
                    }
                    let _ = std::io::stdout().flush();
                    // SAFETY: as above.
                    unsafe { libc::_exit(0) };
                }
                child if child > 0 => {
                    let mut status = 0;
                    // SAFETY: waiting for our own child.
                    unsafe { libc::waitpid(child, &mut status, 0) };
                    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child failed");
                    finish(s);
                    println!("sent {n}");
                }
                _ => panic!("fork failed"),
            }
        }
        ["exec-send", ip, port, program, args @ ..] => {
            let s = TcpStream::connect(addr(ip, port)).expect("connect");
            // fd 3 without close-on-exec survives into the new program (dup2 onto
            // itself keeps the flag, hence the explicit F_SETFD).
            // SAFETY: valid fds.
            assert_eq!(unsafe { libc::dup2(s.as_raw_fd(), 3) }, 3, "dup2");
            assert_eq!(unsafe { libc::fcntl(3, libc::F_SETFD, 0) }, 0, "fcntl");
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new(program).args(args).exec();
            panic!("exec {program}: {err}");
        }
        ["fdsend", fd, bytes] => {
            let (fd, n): (i32, usize) = (fd.parse().expect("fd"), bytes.parse().expect("bytes"));
            let chunk = vec![b'e'; 1 << 16];
            let mut left = n;
            while left > 0 {
                // SAFETY: writing our own buffer to an fd we inherited.
                let k = unsafe { libc::write(fd, chunk.as_ptr() as *const _, left.min(chunk.len())) };
                assert!(k > 0, "write to fd {fd} failed");
                left -= k as usize;
            }
            println!("sent {n}");
        }
        ["tls-split", ip, port, sni, bytes] => {
            let n: usize = bytes.parse().expect("bytes");
            hello_then_upload(addr(ip, port), &sluice_tests::client_hello_split(Some(sni), 200, 30), n);
            println!("sent {n}");
        }
        ["thread-exit", ip, port, chunk, count] => {
            let (chunk, count): (usize, usize) = (chunk.parse().expect("chunk"), count.parse().expect("count"));
            let dst = addr(ip, port);
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(dst).expect("connect");
                let data = vec![b'w'; chunk];
                for _ in 0..count {
                    s.write_all(&data).expect("send");
                    std::thread::sleep(Duration::from_millis(500));
                }
                finish(s);
                println!("sent {}", chunk * count);
                std::process::exit(0);
            });
            // What pthread_exit() in main comes to in the kernel, without the
            // forced unwind Rust's main would abort on: exit(2), this thread only.
            // SAFETY: the worker owns everything it uses; nothing of this
            // thread's stack is shared.
            unsafe { libc::syscall(libc::SYS_exit, 0) };
            unreachable!("exit(2) returned")
        }
        ["exec-untouched", file, program, args @ ..] => exec_untouched(file, program, args),
        ["chdir-send", dir, ip, port, bytes] => {
            std::env::set_current_dir(dir).expect("chdir");
            std::thread::sleep(Duration::from_millis(300));
            let n: usize = bytes.parse().expect("bytes");
            let mut s = TcpStream::connect(addr(ip, port)).expect("connect");
            s.write_all(&vec![b'c'; n]).expect("send");
            finish(s);
            println!("sent {n}");
        }
        ["sockmap", ip, port, bytes] => {
            let n: usize = bytes.parse().expect("bytes");
            let s = TcpStream::connect(addr(ip, port)).expect("connect");
            let _map = sockmap_with_pass_verdict(s.as_raw_fd());
            hello_then_upload_on(s, &[], n);
            println!("sent {n}");
        }
        ["dns-tunnel", zone, count] => {
            let count: u32 = count.parse().expect("count");
            let server = UdpSocket::bind("127.0.0.1:53").expect("bind port 53");
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            for i in 0..count {
                // Distinct data-looking labels (xorshift: no rand crate needed here).
                let data: String = (0..15)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        format!("{:02x}", state as u8)
                    })
                    .collect();
                s.send_to(
                    &sluice_tests::dns_query(&format!("{data}.{i}.{zone}")),
                    "127.0.0.1:53",
                )
                .expect("query");
                let _ = server.recv(&mut [0u8; 512]);
            }
            println!("sent {count}");
        }
        ["socks5", ip, port, host, bytes] => {
            let n: usize = bytes.parse().expect("bytes");
            let mut s = TcpStream::connect(addr(ip, port)).expect("connect");
            // Both writes come from memory the process has not touched yet,
            // as a C client's static greeting in .rodata may be: the greeting
            // from a page not mapped at all, the request from the end of a
            // mapped page into one that is not. A probe at the send's entry
            // cannot read either (it may not fault a page in).
            s.write_all(cold(&[5, 1, 0], 0)).expect("greeting");
            let request = [
                &[5, 1, 0, 3, host.len() as u8][..],
                host.as_bytes(),
                &443u16.to_be_bytes(),
            ]
            .concat();
            hello_then_upload_on(s, cold(&request, 4), n);
            println!("sent {n}");
        }
        ["threads", ip, port, sni, count, bytes] => {
            let (count, n): (usize, usize) = (count.parse().expect("threads"), bytes.parse().expect("bytes"));
            let dst = addr(ip, port);
            let sni = sni.to_string();
            let workers: Vec<_> = (0..count)
                .map(|_| {
                    let sni = sni.clone();
                    std::thread::spawn(move || tls_upload(dst, &sni, n))
                })
                .collect();
            for w in workers {
                w.join().expect("a sender thread failed");
            }
            println!("sent {}", count * n);
        }
        _ => {
            eprintln!("usage: see the top of tests/src/bin/netload.rs");
            std::process::exit(2);
        }
    }
}
