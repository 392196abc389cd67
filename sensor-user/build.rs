//! Embeds the eBPF object. `cargo xtask build-ebpf` (run by every xtask command)
//! builds it with Debian's rustc, which ships a prebuilt core for the BPF target.
use std::path::PathBuf;

fn main() {
    let obj = match std::env::var_os("SLUICE_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../sensor-ebpf/target/bpfel-unknown-none/release/sensor-ebpf"),
    };
    println!("cargo:rerun-if-env-changed=SLUICE_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", obj.display());
    if !obj.is_file() {
        panic!(
            "the eBPF object {} does not exist: run `cargo xtask build-ebpf` (or `cargo xtask run` / `cargo xtask test`, which build it)",
            obj.display()
        );
    }
    println!("cargo:rustc-env=SLUICE_EBPF_OBJECT={}", obj.canonicalize().unwrap_or(obj).display());
}
