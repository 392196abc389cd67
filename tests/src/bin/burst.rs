//! A sender that lives about a millisecond: connect, send N bytes, exit. Used to
//! prove that a process gone before the next tick is still named (its exec was
//! captured in the kernel).
//!
//!     burst ADDR PORT BYTES
use std::{io::Write, net::TcpStream};

fn main() {
    // args_os: argv[0] may be any bytes (the hostile-name test relies on it).
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    if args.len() != 4 {
        eprintln!("usage: burst ADDR PORT BYTES");
        std::process::exit(2);
    }
    let port: u16 = args[2].parse().expect("port");
    let n: usize = args[3].parse().expect("bytes");
    let addr = if args[1].contains(':') { format!("[{}]:{port}", args[1]) } else { format!("{}:{port}", args[1]) };
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(&vec![b'b'; n]).expect("send");
}
