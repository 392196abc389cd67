//! Start-up failures a user can act on: the facts of this host (kernel,
//! lockdown, BTF, whether we run in a container) turned into hints that say
//! what to change. Pure over an `Env` snapshot, so every hint is unit-tested.

use std::path::Path;

/// The facts the hints depend on.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `uname -r`, e.g. "6.1.0-56-cloud-amd64".
    pub release: String,
    /// The active mode of /sys/kernel/security/lockdown (`none`, `integrity`,
    /// `confidentiality`), if the file exists.
    pub lockdown: Option<String>,
    pub btf: bool,
    /// Inside a container (its mounts are the pod's, not the host's).
    pub in_container: bool,
}

impl Env {
    pub fn read() -> Env {
        let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown").ok().and_then(|t| active_lockdown(&t));
        Env {
            release: std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default(),
            lockdown,
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
            in_container: Path::new("/.dockerenv").exists()
                || Path::new("/run/.containerenv").exists()
                || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        }
    }
}

/// "none [integrity] confidentiality" -> "integrity"
pub fn active_lockdown(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_string())
}

/// Whether the kernel runs the BPF LSM ("bpf" in /sys/kernel/security/lsm);
/// None where securityfs is not mounted (a container's /sys) and it cannot be told.
pub fn bpf_lsm() -> Option<bool> {
    std::fs::read_to_string("/sys/kernel/security/lsm").ok().map(|t| lsm_runs_bpf(&t))
}

/// "lockdown,capability,landlock,yama,apparmor,bpf" -> true
pub fn lsm_runs_bpf(list: &str) -> bool {
    list.trim().split(',').any(|l| l == "bpf")
}

/// (major, minor) of a kernel release string.
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Hints for an error's text (`{:#}` of the chain), most specific first.
pub fn hints(err: &str, env: &Env) -> Vec<String> {
    let mut out = Vec::new();
    // Outside a container the errors themselves say how to mount what is missing.
    let in_container = |what: &str, host_path: &str| {
        env.in_container
            .then(|| format!("{what}: mount the host's {host_path} into the container (deploy/kubernetes/daemonset.yaml does)"))
    };
    if version(&env.release).is_some_and(|v| v < (5, 8)) {
        out.push(format!(
            "this kernel is {}; sluice needs Linux 5.8 or newer (BPF ring buffer, CAP_BPF); the send-path backends need 5.17 (bpf_get_func_ret) for fentry",
            env.release
        ));
    }
    if err.contains("Operation not permitted") || err.contains("EPERM") || err.contains("os error 1)") {
        match env.lockdown.as_deref() {
            Some("confidentiality") => out.push(
                "kernel lockdown is in confidentiality mode, which forbids BPF programs reading kernel memory; boot with lockdown=integrity (or none), or without Secure Boot's lockdown".into(),
            ),
            Some("integrity") if err.contains("fentry") || err.contains("fexit") || err.contains("kprobe") => out.push(
                "kernel lockdown (integrity) or a kernel built without trampolines/kprobes refuses this backend; `--probe cgroup` works under lockdown".into(),
            ),
            _ => {}
        }
        out.push(
            "sluice needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN + CAP_SYS_PTRACE (CAP_SYS_ADMIN on kernels before 5.8, CAP_SYS_RESOURCE before 5.11); in a container also the host PID namespace".into(),
        );
    }
    if (err.contains("btf") || err.contains("BTF")) && !env.btf {
        let what = "no kernel BTF at /sys/kernel/btf/vmlinux (kernels built with CONFIG_DEBUG_INFO_BTF have it); the fentry and kprobe backends need it, `--probe cgroup` does not";
        out.push(in_container(what, "/sys/kernel/btf").unwrap_or_else(|| what.to_string()));
    }
    if err.contains("tracefs") {
        out.extend(in_container("the exec tracepoints are read through tracefs", "/sys/kernel/tracing"));
    }
    if err.contains("cgroup v2") || err.contains("cgroup2") {
        out.extend(in_container("the cgroup backend attaches to the cgroup v2 hierarchy", "/sys/fs/cgroup"));
    }
    if err.contains("memlock") || err.contains("RLIMIT") {
        out.push("raise the locked-memory limit (`ulimit -l unlimited`, LimitMEMLOCK=infinity in systemd) or grant CAP_SYS_RESOURCE; kernels from 5.11 do not need it".into());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bpf_lsm_is_told_from_the_active_list() {
        assert!(lsm_runs_bpf("lockdown,capability,landlock,yama,apparmor,bpf\n"));
        assert!(!lsm_runs_bpf("lockdown,capability,apparmor"));
        assert!(!lsm_runs_bpf("bpfx,notbpf"));
    }

    use super::*;

    fn env(lockdown: Option<&str>, btf: bool, in_container: bool) -> Env {
        Env { release: "6.1.0-56-cloud-amd64".into(), lockdown: lockdown.map(Into::into), btf, in_container }
    }

    #[test]
    fn lockdown_modes() {
        assert_eq!(active_lockdown("none [integrity] confidentiality\n").as_deref(), Some("integrity"));
        assert_eq!(active_lockdown("[none] integrity confidentiality").as_deref(), Some("none"));
        assert_eq!(active_lockdown("garbage"), None);
        let h = hints("loading fexit/tcp_sendmsg: Operation not permitted (os error 1)", &env(Some("confidentiality"), true, false));
        assert!(h[0].contains("confidentiality") && h[0].contains("lockdown=integrity"), "{h:?}");
        let h = hints("loading fexit/tcp_sendmsg: Operation not permitted (os error 1)", &env(Some("integrity"), true, false));
        assert!(h[0].contains("--probe cgroup"), "{h:?}");
        assert!(h.iter().any(|s| s.contains("CAP_BPF")));
    }

    #[test]
    fn missing_mounts_say_how_in_and_out_of_containers() {
        let h = hints("reading BTF: No such file or directory", &env(None, false, true));
        assert!(h[0].contains("/sys/kernel/btf") && h[0].contains("into the container"), "{h:?}");
        let h = hints("tracefs is not mounted and mounting it failed", &env(None, true, true));
        assert!(h[0].contains("/sys/kernel/tracing"), "{h:?}");
        let h = hints("no cgroup v2 hierarchy is mounted", &env(None, true, false));
        assert!(h.is_empty(), "the error itself says how to mount it outside a container: {h:?}");
        let h = hints("reading BTF", &env(None, true, false));
        assert!(h.is_empty(), "BTF is there: the hint would mislead: {h:?}");
    }

    #[test]
    fn old_kernels_are_named() {
        let mut e = env(None, true, false);
        e.release = "5.4.0-150-generic".into();
        assert!(hints("creating map EVENTS: Invalid argument", &e)[0].contains("5.8"));
        assert_eq!(version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(version("weird"), None);
    }
}
