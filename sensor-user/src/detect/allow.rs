//! What allowlist entries match. Entries are written by people, names come
//! from the system: match whole paths and whole path components, never
//! substrings, so "backup" does not allow "/tmp/backup-exfil" and
//! "backup.service" does not allow "evil-backup.service".

/// An `allow_executables` entry: a full path matches that file only; a bare
/// basename (no '/') matches a program of that name in any directory, which
/// a copy in /tmp also has (weaker, documented).
pub fn executable_matches(entry: &str, executable: &str) -> bool {
    if entry.is_empty() || executable.is_empty() {
        return false;
    }
    if entry.contains('/') {
        return entry == executable;
    }
    executable.rsplit('/').next() == Some(entry)
}

/// An `allow_cgroups` entry against a cgroup v2 path and the container id
/// parsed from it: a container id (the whole id, or a prefix of at least 12
/// hex characters), else one or more whole, consecutive path components.
pub fn cgroup_matches(entry: &str, path: &str, container_id: Option<&str>) -> bool {
    let entry = entry.trim_matches('/');
    if entry.is_empty() {
        return false;
    }
    let hex = entry.len() >= 12 && entry.chars().all(|c| c.is_ascii_hexdigit());
    if hex && container_id.is_some_and(|id| id.starts_with(entry)) {
        return true;
    }
    let want: Vec<&str> = entry.split('/').collect();
    let have: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    have.windows(want.len()).any(|w| w == want.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_by_full_path_or_bare_name_never_substring() {
        assert!(executable_matches("/usr/bin/restic", "/usr/bin/restic"));
        assert!(!executable_matches("/usr/bin/restic", "/tmp/restic"));
        assert!(executable_matches("restic", "/tmp/restic"), "a bare name is weaker: any directory");
        assert!(!executable_matches("restic", "/tmp/restic-exfil"));
        assert!(!executable_matches("bin", "/usr/bin/restic"));
        assert!(!executable_matches("", "/usr/bin/restic"));
    }

    #[test]
    fn cgroups_by_whole_components_or_container_id() {
        let svc = "/system.slice/backup.service";
        assert!(cgroup_matches("backup.service", svc, None));
        assert!(cgroup_matches("system.slice/backup.service", svc, None));
        assert!(!cgroup_matches("backup", svc, None));
        assert!(!cgroup_matches("backup.service", "/system.slice/evil-backup.service", None));
        let pod = "/kubepods.slice/kubepods-pod1.slice/cri-containerd-4f1d2e3a4b5c6d7e.scope";
        let id = Some("4f1d2e3a4b5c6d7e");
        assert!(cgroup_matches("4f1d2e3a4b5c", pod, id));
        assert!(!cgroup_matches("4f1d2", pod, id), "too short a prefix");
        assert!(cgroup_matches("cri-containerd-4f1d2e3a4b5c6d7e.scope", pod, id));
        assert!(!cgroup_matches("cri-containerd-4f1d2", pod, id));
    }
}
