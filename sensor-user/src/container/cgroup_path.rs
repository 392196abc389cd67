//! Container identity from a cgroup path: every runtime puts the container id
//! (64 hex digits) in the path of the cgroup it creates, in a shape of its own,
//! and the kubelet puts the pod UID in the parent. Pure string logic.
//!
//! Shapes recognised (systemd driver / cgroupfs driver; cgroup v1 and v2 alike):
//! - containerd (CRI): `.../kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`,
//!   `/kubepods/burstable/pod<uid>/<id>`
//! - CRI-O: `.../crio-<id>.scope`, `/kubepods/.../pod<uid>/crio-<id>`
//!   (`crio-conmon-<id>` is the monitor, not the container)
//! - Docker: `/system.slice/docker-<id>.scope`, `/docker/<id>`
//! - Podman: `/machine.slice/libpod-<id>.scope` (also under a user's slice when
//!   rootless, and with a `/container` child under `--cgroups=split`),
//!   `/libpod_parent/libpod-<id>`
//! - containerd without Kubernetes (nerdctl, ctr): `.../nerdctl-<id>.scope`,
//!   `/<namespace>/<id>` is too generic to claim and is left alone.

use super::ContainerRef;

/// The innermost container a cgroup path names, if any.
pub fn parse(path: &str) -> Option<ContainerRef> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let pod_uid = parts.iter().find_map(|p| pod_uid(p));
    // Innermost first: docker-in-docker or a pod's nested scope name the container
    // that really runs the process.
    for (i, part) in parts.iter().enumerate().rev() {
        let parent = if i > 0 { Some(parts[i - 1]) } else { None };
        if let Some((id, runtime)) = container_component(part, parent, pod_uid.is_some()) {
            return Some(ContainerRef { id: id.to_string(), runtime, pod_uid });
        }
    }
    None
}

/// The container in `/proc/<pid>/cgroup` text (`hierarchy:controllers:path` per
/// line; v2 is the `0::` line, v1 hosts list one line per hierarchy).
pub fn parse_proc_cgroup(text: &str) -> Option<ContainerRef> {
    text.lines().filter_map(|l| l.splitn(3, ':').nth(2)).find_map(parse)
}

fn container_component<'a>(part: &'a str, parent: Option<&str>, in_pod: bool) -> Option<(&'a str, &'static str)> {
    let scoped = |prefix: &str| part.strip_prefix(prefix).map(|r| r.strip_suffix(".scope").unwrap_or(r)).filter(|id| is_id(id));
    if let Some(id) = scoped("cri-containerd-") {
        return Some((id, "containerd"));
    }
    if part.starts_with("crio-conmon-") || part.starts_with("libpod-conmon-") {
        return None;
    }
    if let Some(id) = scoped("crio-") {
        return Some((id, "cri-o"));
    }
    if let Some(id) = scoped("docker-") {
        return Some((id, "docker"));
    }
    if let Some(id) = scoped("libpod-") {
        return Some((id, "podman"));
    }
    if let Some(id) = scoped("nerdctl-") {
        return Some((id, "containerd"));
    }
    if is_id(part) {
        // A bare id: only where the parent says whose it is.
        match parent {
            Some("docker") => return Some((part, "docker")),
            Some(p) if in_pod && pod_uid(p).is_some() => return Some((part, "containerd")),
            _ => {}
        }
    }
    None
}

/// The pod UID of a kubelet pod cgroup: `kubepods-<qos>-pod<uid with _>.slice`
/// (systemd driver) or `pod<uid>` (cgroupfs driver), normalised to dashes.
fn pod_uid(part: &str) -> Option<String> {
    let raw = if let Some(rest) = part.strip_prefix("kubepods-") {
        let rest = rest.strip_suffix(".slice")?;
        rest.rsplit_once("pod").map(|(_, uid)| uid)?
    } else {
        part.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// Container ids are 64 lowercase hex digits for every runtime above.
fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A Kubernetes UID: an RFC 4122 UUID in its 8-4-4-4-12 text form.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1d2e9c0b7a6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e";
    const UID: &str = "5b6c1a2e-9f3d-4c1b-8a7e-0d2f3c4b5a69";

    fn check(path: &str, runtime: &str, pod: Option<&str>) {
        let c = parse(path).unwrap_or_else(|| panic!("no container in {path}"));
        assert_eq!((c.id.as_str(), c.runtime, c.pod_uid.as_deref()), (ID, runtime, pod), "{path}");
    }

    #[test]
    fn kubernetes_runtimes_with_both_cgroup_drivers() {
        let uid_ = UID.replace('-', "_");
        check(&format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"), "containerd", Some(UID));
        check(&format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"), "containerd", Some(UID));
        check(&format!("/kubepods/besteffort/pod{UID}/{ID}"), "containerd", Some(UID));
        check(&format!("/kubepods/pod{UID}/{ID}"), "containerd", Some(UID));
        check(&format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"), "cri-o", Some(UID));
        check(&format!("/kubepods/burstable/pod{UID}/crio-{ID}"), "cri-o", Some(UID));
    }

    #[test]
    fn docker_podman_and_nerdctl() {
        check(&format!("/system.slice/docker-{ID}.scope"), "docker", None);
        check(&format!("/docker/{ID}"), "docker", None);
        check(&format!("/machine.slice/libpod-{ID}.scope"), "podman", None);
        check(&format!("/machine.slice/libpod-{ID}.scope/container"), "podman", None);
        check(&format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"), "podman", None);
        check(&format!("/libpod_parent/libpod-{ID}"), "podman", None);
        check(&format!("/system.slice/nerdctl-{ID}.scope"), "containerd", None);
    }

    #[test]
    fn v1_and_v2_proc_cgroup_files() {
        let v1 = format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n0::/\n");
        assert_eq!(parse_proc_cgroup(&v1).unwrap().runtime, "docker");
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(parse_proc_cgroup(&v2).unwrap().id, ID);
        // A hybrid host whose only v1 path is not a container.
        assert!(parse_proc_cgroup("4:memory:/process_api/05331fdfb399f4b565c399516d251325\n0::/\n").is_none());
    }

    #[test]
    fn not_containers() {
        for p in [
            "/",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/sshd.service",
            "/system.slice/containerd.service",
            &format!("/machine.slice/libpod-conmon-{ID}.scope"),
            &format!("/kubepods/burstable/pod{UID}/crio-conmon-{ID}"),
            &format!("/kubepods/burstable/pod{UID}"),
            &format!("/some/{ID}"),
            "/docker/abc",
            &format!("/system.slice/docker-{}.scope", ID.to_uppercase()),
            &format!("/docker/{ID}\n"),
        ] {
            assert!(parse(p).is_none(), "{p:?}");
        }
    }

    #[test]
    fn hostile_paths_do_not_panic() {
        for p in ["pod", "kubepods-.slice", "kubepods-pod.slice", "/pod/", "//////", "cri-containerd-.scope", "\u{0}\u{ff}/é"] {
            let _ = parse(p);
        }
    }
}
