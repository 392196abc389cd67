//! Everything that talks to the kernel: finding mounts and tracepoint layouts,
//! choosing a probe backend, loading and attaching the eBPF programs.

pub mod backend;
pub mod batch;
pub mod btf;
pub mod loader;
pub mod mounts;
pub mod preflight;
pub mod privileges;
pub mod prototypes;
pub mod retprobe;
pub mod tracefs;

/// The eBPF object, built by `cargo xtask build-ebpf` and embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SLUICE_EBPF_OBJECT"));
