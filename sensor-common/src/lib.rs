//! The kernel/user boundary of sluice: every type that crosses a BPF map or the
//! ring buffer, laid out `#[repr(C)]` so the eBPF object and the agent agree byte
//! for byte. Nothing here allocates or depends on std, so `sensor-ebpf` can use it.
//!
//! One module per capability, each `Pod` impl and size assertion beside its
//! type (a size that changes on one side only is a compile error):
//! `ring` (record framing), `process` (exec/fork/exit/pgid), `sockets`
//! (ownership), `flows` (byte accounting), `heads` (payload copies),
//! `counter` (what the kernel dropped), `globals` and `maps` (names the
//! loader patches or looks up).
#![no_std]

pub mod counter;
mod flows;
pub mod globals;
mod heads;
pub mod maps;
mod process;
mod ring;
mod sockets;

pub use flows::*;
pub use heads::*;
pub use process::*;
pub use ring::*;
pub use sockets::*;
