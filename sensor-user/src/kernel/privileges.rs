//! Do we have the privileges to load and attach? Checked before anything else so
//! the error names the missing capability instead of a confusing EPERM later.

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Maps were charged to RLIMIT_MEMLOCK before this kernel (then to the memory
/// cgroup), so only older kernels need CAP_SYS_RESOURCE to raise the limit.
const MEMCG_ACCOUNTING: (u32, u32) = (5, 11);

/// Capabilities missing from an effective set (`CapEff` of /proc/self/status)
/// for the sensor on a kernel of this (major, minor), each with what it is for:
/// CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN, which implies both on older
/// kernels) to load tracing programs, CAP_NET_ADMIN for cgroup network hooks,
/// CAP_SYS_PTRACE to read other users' /proc/<pid>/fd (the owners of
/// connections older than sluice: without it their bytes would have no
/// process to judge), CAP_SYS_RESOURCE before 5.11 for the locked-memory limit.
pub fn missing(cap_eff: u64, kernel: Option<(u32, u32)>) -> Vec<&'static str> {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    let mut out = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            out.push("CAP_BPF");
        }
        if !has(CAP_PERFMON) {
            out.push("CAP_PERFMON");
        }
    }
    if !has(CAP_NET_ADMIN) && !has(CAP_SYS_ADMIN) {
        out.push("CAP_NET_ADMIN");
    }
    if !has(CAP_SYS_PTRACE) {
        out.push("CAP_SYS_PTRACE");
    }
    // An unknown kernel is assumed old: asking for one more capability than
    // needed beats maps that fail to be created.
    if !has(CAP_SYS_RESOURCE) && kernel.is_none_or(|v| v < MEMCG_ACCOUNTING) {
        out.push("CAP_SYS_RESOURCE");
    }
    out
}

/// `CapEff` of this process, if /proc says.
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// An error sentence if the sensor cannot run with our privileges.
pub fn check() -> Result<(), String> {
    let Some(eff) = effective() else { return Ok(()) };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let missing = missing(eff, super::preflight::version(release.trim()));
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "insufficient privileges (euid {}): missing {}; run as root, or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_PTRACE \
         (and CAP_SYS_RESOURCE on kernels before 5.11)",
        // SAFETY: geteuid takes no arguments and cannot fail.
        unsafe { libc::geteuid() },
        missing.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: Option<(u32, u32)> = Some((6, 1));
    const FOUR: u64 = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_PTRACE);

    #[test]
    fn root_and_fine_grained_sets_pass() {
        assert!(missing(0x1ff_ffff_ffff, None).is_empty());
        assert!(missing(FOUR, NEW).is_empty());
        assert!(missing((1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_PTRACE), NEW).is_empty());
        assert!(missing(FOUR | (1 << CAP_SYS_RESOURCE), Some((5, 10))).is_empty());
    }

    #[test]
    fn names_what_is_missing() {
        assert_eq!(missing(0, NEW), vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"]);
        assert_eq!(missing((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYS_PTRACE), NEW), vec!["CAP_NET_ADMIN"]);
        for cap in [CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_PTRACE] {
            assert_eq!(missing(FOUR & !(1 << cap), NEW).len(), 1, "dropping capability {cap} alone is named");
        }
    }

    #[test]
    fn sys_resource_only_where_maps_are_charged_to_memlock() {
        assert_eq!(missing(FOUR, Some((5, 10))), vec!["CAP_SYS_RESOURCE"]);
        assert_eq!(missing(FOUR, None), vec!["CAP_SYS_RESOURCE"], "an unknown kernel is treated as old");
        assert!(missing(FOUR, Some((5, 11))).is_empty());
    }
}
