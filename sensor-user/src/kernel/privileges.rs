//! Do we have the privileges to load and attach? Checked before anything else so
//! the error names the missing capability instead of a confusing EPERM later.

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Capabilities missing from an effective set (`CapEff` of /proc/self/status)
/// for the sensor: CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN, which implies both on
/// older kernels) to load tracing programs, CAP_NET_ADMIN for cgroup network hooks.
pub fn missing(cap_eff: u64) -> Vec<&'static str> {
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
    let missing = missing(eff);
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "insufficient privileges (euid {}): missing {}; run as root, or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_RESOURCE",
        // SAFETY: geteuid takes no arguments and cannot fail.
        unsafe { libc::geteuid() },
        missing.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_fine_grained_sets_pass() {
        assert!(missing(0x1ff_ffff_ffff).is_empty());
        assert!(missing((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN)).is_empty());
        assert!(missing(1 << CAP_SYS_ADMIN).is_empty());
    }

    #[test]
    fn names_what_is_missing() {
        assert_eq!(missing(0), vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        assert_eq!(missing((1 << CAP_BPF) | (1 << CAP_PERFMON)), vec!["CAP_NET_ADMIN"]);
    }
}
