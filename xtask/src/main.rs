//! `cargo xtask <command>`: everything that is not plain cargo. Each command
//! installs what it needs first (`setup`), so a fresh Debian machine goes from
//! clone to running sensor or green test suite with one command.

mod bench;
mod deploy;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install missing Debian packages and bpf-linker (idempotent; quick when all is present).
    Setup,
    /// Build the eBPF object with Debian's rustc for bpfel-unknown-none.
    BuildEbpf,
    /// Build (release) and run `sluice run` with the given arguments (needs root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The whole test suite: unit tests, end-to-end scenarios on this host's
    /// kernel (cgroup backend), then the fentry and kprobe backends in qemu.
    Test,
    /// Only the qemu part: Debian's kernel, --probe fentry then --probe kprobe.
    VmTest,
    /// Build the release binary (eBPF object embedded): target/release/sluice.
    Build,
    /// Benchmarks (release build, ~20 min, needs root): send-path overhead and
    /// exec storms side by side with a bpftrace peer, scale, accuracy per
    /// backend, per-program cost, alert latency, containment. Writes BENCHMARKS.md.
    Bench {
        /// Fewer, smaller runs: a smoke test of the harness, not numbers to quote.
        #[arg(long)]
        quick: bool,
        /// Only the containment section, printed and not written to BENCHMARKS.md.
        #[arg(long)]
        containment_only: bool,
    },
    /// Validate deploy/ offline (manifests, image file, unit), run the
    /// emulated pod with the binary, then build the image from local bases and
    /// run the agent container with podman beside real workload containers
    /// (needs root).
    DeployCheck,
    /// Build the container image from deploy/container/Containerfile with
    /// podman or docker (compiles inside; needs the bases' registries).
    Image {
        #[arg(long, default_value = "sluice:0.1.0")]
        tag: String,
        /// KEY=VALUE for the Containerfile (BUILD_BASE, RUNTIME_BASE); repeatable.
        #[arg(long = "build-arg")]
        build_args: Vec<String>,
    },
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// The host cargo (rustup's), the one running us.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

pub fn ebpf_object() -> PathBuf {
    root().join("sensor-ebpf/target/bpfel-unknown-none/release/sensor-ebpf")
}

fn build_ebpf() -> Result<()> {
    let linker = setup::bpf_linker().context("bpf-linker not found; run `cargo xtask setup`")?;
    let mut c = Command::new(setup::DEBIAN_CARGO);
    c.current_dir(root().join("sensor-ebpf"))
        .args(["build", "--release", "--target", "bpfel-unknown-none"])
        // Debian's rustc ships a prebuilt core for the BPF target: no build-std.
        .env("RUSTC", setup::DEBIAN_RUSTC)
        // aya-ebpf uses unstable features (asm_experimental_arch); allow them for
        // these crates only, not for the whole compiler.
        .env("RUSTC_BOOTSTRAP", "aya_ebpf,aya_ebpf_bindings,aya_ebpf_cty,aya_ebpf_macros,sensor_ebpf,sensor_common")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", linker)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTUP_TOOLCHAIN");
    run(&mut c)?;
    println!("xtask: eBPF object at {}", ebpf_object().display());
    Ok(())
}

/// The eBPF object, then the release `sluice` embedding it.
fn build_release() -> Result<PathBuf> {
    setup::ensure()?;
    build_ebpf()?;
    run(cargo().args(["build", "--release", "-p", "sensor-user", "--bin", "sluice"]))?;
    Ok(root().join("target/release/sluice"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::ensure(),
        Cmd::BuildEbpf => {
            setup::ensure()?;
            build_ebpf()
        }
        Cmd::Build => {
            let bin = build_release()?;
            println!("xtask: {}", bin.display());
            Ok(())
        }
        Cmd::DeployCheck => {
            let bin = build_release()?;
            deploy::check(&bin)?;
            deploy::containers(&bin)
        }
        Cmd::Image { tag, build_args } => deploy::image(&tag, &build_args),
        Cmd::Run { args } => {
            let bin = build_release()?;
            let mut c = Command::new(&bin);
            c.arg("run").args(args);
            let err = std::os::unix::process::CommandExt::exec(&mut c);
            bail!("exec {}: {err}", bin.display())
        }
        Cmd::Test => {
            setup::ensure()?;
            setup::ensure_test_tools()?;
            build_ebpf()?;
            // Build once; the end-to-end tests run these binaries.
            run(cargo().args(["build", "-p", "sensor-user", "-p", "sluice-tests", "--bins"]))?;
            let bin = root().join("target/debug/sluice");
            run(cargo().args(["test", "--workspace", "--exclude", "sluice-tests"]))?;
            // Serial: each scenario runs its own sensor and measures bytes; on two
            // cores, parallel uploads would only make timings noisy. `--lib`: the
            // harness's own checkers (ECS, OCSF) have unit tests; `docs`: the quoted output.
            run(cargo()
                .args(["test", "-p", "sluice-tests", "--lib", "--test", "host_cgroup", "--test", "host_detect", "--test", "host_names", "--test", "host_deploy", "--test", "host_faults", "--test", "host_adversarial", "--test", "host_evasion", "--test", "host_top", "--test", "host_respond", "--test", "docs", "--", "--test-threads=1"])
                .env("SLUICE_BIN", &bin))?;
            deploy::check(&bin)?;
            // The image ships the release binary.
            deploy::containers(&build_release()?)?;
            vm::vm_test(cargo)
        }
        Cmd::Bench { quick, containment_only } => {
            setup::ensure()?;
            build_ebpf()?;
            let plan = if quick { bench::Plan::quick() } else { bench::Plan::full() };
            match containment_only {
                true => bench::containment_only(cargo, plan),
                false => bench::bench(cargo, plan),
            }
        }
        Cmd::VmTest => {
            setup::ensure()?;
            build_ebpf()?;
            vm::vm_test(cargo)
        }
    }
}
