//! Installing the toolchain the eBPF build and the tests need, only what is missing.
//! Facts behind the choices (verified on Debian 12): rustup's toolchains have no
//! rust-src for the BPF target, Debian's rustc-web 1.96 ships a prebuilt core
//! for bpfel-unknown-none (libstd-rust-web-dev-bpf), and bpf-linker 0.13 links
//! against Debian's LLVM 22 when built with LLVM_PREFIX.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::run;

pub const DEBIAN_CARGO: &str = "/usr/bin/cargo";
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Packages for building the eBPF object and bpf-linker.
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Programs the end-to-end tests drive.
/// binutils: `as --32` and `ld -m elf_i386` build the 32-bit `int 0x80` exec fixture;
/// tmux: `sluice top` is read back from an 80x24 terminal.
const TEST_PACKAGES: &[&str] = &["iproute2", "curl", "python3", "git", "openssl", "binutils", "tmux"];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("missing Debian packages {missing:?}; run as root (or apt-get install them) and retry");
    }
    println!("xtask: installing {missing:?}");
    // A fresh machine's package lists may be empty or stale.
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// A working bpf-linker: on PATH or in cargo's bin directory.
pub fn bpf_linker() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("bpf-linker")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME").or_else(|| std::env::var_os("HOME").map(|h| {
        let mut p = PathBuf::from(h);
        p.push(".cargo");
        p.into_os_string()
    })) {
        candidates.push(PathBuf::from(home).join("bin/bpf-linker"));
    }
    candidates.into_iter().find(|c| {
        Command::new(c).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
    })
}

pub fn ensure() -> Result<()> {
    apt_install(BUILD_PACKAGES)?;
    if bpf_linker().is_none() {
        println!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (links against Debian's LLVM 22, ~1 min)");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run(Command::new(cargo)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features", "--features", "llvm-22"])
            // Without this its build script looks in /usr/lib64 and cannot find -lLLVM.
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
        .context("installing bpf-linker")?;
        if bpf_linker().is_none() {
            bail!("bpf-linker was installed but is not runnable");
        }
    }
    Ok(())
}

/// qemu and Debian's cloud kernel (6.1: BTF, kprobes, fentry) for the VM tests;
/// busybox and cpio to build the guest's initramfs.
pub fn ensure_vm_tools() -> Result<()> {
    apt_install(&["qemu-system-x86", "linux-image-cloud-amd64", "busybox-static", "cpio", "binutils"])
}

/// deploy-check: a venv for the PyPI validators, systemd-analyze for the unit,
/// setpriv and unshare (util-linux) for the emulated pod.
pub fn ensure_deploy_tools() -> Result<()> {
    apt_install(&["python3-venv", "systemd", "util-linux"])
}

/// deploy/containers.py: podman with runc (crun refuses hybrid cgroup hosts),
/// busybox and curl for the workload image it assembles; deploy/unit.py:
/// debootstrap for its Debian root with systemd.
pub fn ensure_container_tools() -> Result<()> {
    apt_install(&["podman", "runc", "busybox-static", "curl", "iproute2", "debootstrap"])
}

/// bench: the peer it compares against (bpftrace) and bpftool for the kernel's
/// per-program run-time statistics.
pub fn ensure_bench_tools() -> Result<()> {
    apt_install(&["bpftrace", "bpftool"])
}

pub fn ensure_test_tools() -> Result<()> {
    apt_install(TEST_PACKAGES)
}
