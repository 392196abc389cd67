//! Fixed workloads for `cargo xtask bench`: the same program, the same work,
//! with and without a sensor, so ratios compare like with like.
//!
//!     benchload stream ADDR PORT WRITE SECONDS   write WRITE-byte chunks to one TCP connection for
//!                                                SECONDS; prints "bytes N seconds S"
//!     benchload spawn N PROGRAM                  fork+exec+wait PROGRAM N times; prints "seconds S"
//!     benchload mesh CONNS                       CONNS loopback connections (both ends in this
//!                                                process, 2*CONNS flows), each writing a byte a
//!                                                second until stdin closes; prints "ready"
//!     benchload procs N                          N idle processes (clone with a shared address
//!                                                space: cheap) until stdin closes; prints "ready"
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

fn addr(a: &str, p: &str) -> SocketAddr {
    SocketAddr::new(a.parse().expect("address"), p.parse().expect("port"))
}

/// Raise the open-file limit to what the kernel allows (mesh holds 2*CONNS fds).
fn raise_nofile() {
    let max = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20);
    let lim = libc::rlimit { rlim_cur: max, rlim_max: max };
    // SAFETY: a valid rlimit struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}

/// Block until stdin reaches EOF (the bench closes it to end a workload).
fn until_stdin_closes() {
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

fn stream(dst: SocketAddr, write: usize, seconds: f64) {
    let mut s = TcpStream::connect(dst).expect("connect");
    let chunk = vec![b's'; write];
    let mut sent = 0u64;
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    // Check the clock every 256 writes: a clock read per 64-byte write would be
    // a good part of what is measured.
    'outer: loop {
        for _ in 0..256 {
            s.write_all(&chunk).expect("send");
            sent += write as u64;
        }
        if start.elapsed() >= limit {
            break 'outer;
        }
    }
    let took = start.elapsed().as_secs_f64();
    sluice_tests::finish(s);
    println!("bytes {sent} seconds {took:.6}");
}

fn spawn(n: usize, program: &str) {
    let start = Instant::now();
    for _ in 0..n {
        let st = std::process::Command::new(program).status().expect("spawn");
        assert!(st.success(), "{program} failed");
    }
    println!("seconds {:.6}", start.elapsed().as_secs_f64());
}

fn mesh(conns: usize) {
    raise_nofile();
    // Four listening ports: one (address, port) pair has ~28k ephemeral ports.
    let listeners: Vec<TcpListener> = (0..4).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    let mut ends = Vec::with_capacity(conns * 2);
    for i in 0..conns {
        let l = &listeners[i % listeners.len()];
        let c = TcpStream::connect(l.local_addr().unwrap()).expect("connect (raise net.ipv4.ip_local_port_range?)");
        let (a, _) = l.accept().expect("accept");
        c.set_nonblocking(true).ok();
        a.set_nonblocking(true).ok();
        ends.push(c);
        ends.push(a);
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        until_stdin_closes();
        d.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let mut buf = [0u8; 64];
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        let t = Instant::now();
        // Every connection moves every second: all flows are live each tick.
        for pair in ends.chunks_mut(2) {
            let _ = pair[0].write(b"m");
            let _ = pair[1].read(&mut buf);
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
}

extern "C" fn idle(_: *mut libc::c_void) -> libc::c_int {
    // SAFETY: raw syscalls only (no libc state: this child shares the parent's memory).
    unsafe {
        libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        loop {
            libc::syscall(libc::SYS_pause);
        }
    }
}

fn procs(n: usize) {
    const STACK: usize = 16 * 1024;
    let mut stacks = vec![0u8; n * STACK];
    let mut pids = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: each child gets its own 16 KiB stack; it only makes raw syscalls.
        let top = unsafe { stacks.as_mut_ptr().add((i + 1) * STACK) } as *mut libc::c_void;
        let pid = unsafe { libc::clone(idle, top, libc::CLONE_VM | libc::SIGCHLD, std::ptr::null_mut()) };
        assert!(pid > 0, "clone failed after {i} processes (raise kernel.pid_max?)");
        pids.push(pid);
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    until_stdin_closes();
    for p in &pids {
        // SAFETY: our own children.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    for p in &pids {
        unsafe { libc::waitpid(*p, std::ptr::null_mut(), 0) };
    }
    drop(stacks);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.get(1..).unwrap_or(&[]) {
        ["stream", ip, port, write, seconds] => stream(addr(ip, port), write.parse().expect("write size"), seconds.parse().expect("seconds")),
        ["spawn", n, program] => spawn(n.parse().expect("count"), program),
        ["mesh", conns] => mesh(conns.parse().expect("connections")),
        ["procs", n] => procs(n.parse().expect("count")),
        _ => {
            eprintln!("usage: see the top of tests/src/bin/benchload.rs");
            std::process::exit(2);
        }
    }
}
