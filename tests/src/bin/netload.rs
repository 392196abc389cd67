//! Workloads for the VM scenarios, where there is no python or curl: a few
//! statically understood senders and a sink, all bounded.
//!
//!     netload sink tcp|udp ADDR PORT          count bytes until EOF (tcp) or 3 s of silence (udp)
//!     netload send ADDR PORT BYTES            one TCP connection, write BYTES
//!     netload udp ADDR PORT COUNT SIZE        COUNT datagrams of SIZE bytes with sendto()
//!     netload sendfile ADDR PORT FILE         sendfile(2) FILE over one TCP connection
//!     netload tls ADDR PORT SNI BYTES         a ClientHello naming SNI (in a write() and a
//!                                             writev()), then BYTES, over one TCP connection
//!     netload quic ADDR PORT COUNT            COUNT 1200-byte datagrams, the first a QUIC v1 Initial
//!     netload dns-send ADDR PORT NAME BYTES   receive a DNS answer NAME -> ADDR from 127.0.0.1:53,
//!                                             then send BYTES to ADDR:PORT (named by DNS alone)
//!
//! Prints "ready" when listening and "received N" / "sent N" at the end.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

fn addr(a: &str, p: &str) -> SocketAddr {
    let port: u16 = p.parse().expect("port");
    let ip: std::net::IpAddr = a.parse().expect("address");
    SocketAddr::new(ip, port)
}

fn main() {
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.get(1..).unwrap_or(&[]) {
        ["sink", "tcp", ip, port] => {
            let l = TcpListener::bind(addr(ip, port)).expect("bind");
            println!("ready");
            let (mut c, _) = l.accept().expect("accept");
            c.set_read_timeout(Some(Duration::from_secs(120))).ok();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k as u64,
                }
            }
            println!("received {n}");
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
        ["send", ip, port, bytes] => {
            let n: usize = bytes.parse().expect("bytes");
            let mut s = TcpStream::connect(addr(ip, port)).expect("connect");
            let chunk = vec![b's'; 1 << 20];
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                s.write_all(&chunk[..k]).expect("send");
                left -= k;
            }
            s.shutdown(std::net::Shutdown::Write).ok();
            let _ = s.read(&mut [0u8; 1]);
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
            let f = std::fs::File::open(file).expect("open");
            let len = f.metadata().expect("stat").len() as usize;
            let mut s = TcpStream::connect(addr(ip, port)).expect("connect");
            let mut left = len;
            while left > 0 {
                // SAFETY: valid fds for the call's duration; offset NULL = file position.
                let k = unsafe { libc::sendfile(s.as_raw_fd(), f.as_raw_fd(), std::ptr::null_mut(), left) };
                assert!(k > 0, "sendfile failed");
                left -= k as usize;
            }
            s.shutdown(std::net::Shutdown::Write).ok();
            let _ = s.read(&mut [0u8; 1]);
            println!("sent {len}");
        }
        ["tls", ip, port, sni, bytes] => {
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
            s.shutdown(std::net::Shutdown::Write).ok();
            let _ = s.read(&mut [0u8; 1]);
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
        ["dns-send", ip, port, name, bytes] => {
            let n: usize = bytes.parse().expect("bytes");
            let target: std::net::Ipv4Addr = ip.parse().expect("IPv4 address");
            let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let server = UdpSocket::bind("127.0.0.1:53").expect("bind port 53");
            server.send_to(&sluice_tests::dns_answer(name, target), rx.local_addr().unwrap()).expect("answer");
            rx.set_read_timeout(Some(Duration::from_secs(5))).ok();
            rx.recv(&mut [0u8; 512]).expect("the answer");
            let mut s = TcpStream::connect(addr(ip, port)).expect("connect");
            s.write_all(&vec![b'd'; n]).expect("send");
            s.shutdown(std::net::Shutdown::Write).ok();
            let _ = s.read(&mut [0u8; 1]);
            println!("sent {n}");
        }
        _ => {
            eprintln!("usage: netload sink tcp|udp ADDR PORT | send ADDR PORT BYTES | udp ADDR PORT COUNT SIZE | sendfile ADDR PORT FILE");
            std::process::exit(2);
        }
    }
}
