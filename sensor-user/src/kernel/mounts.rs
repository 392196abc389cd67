//! Finding (or making) the filesystems the sensor needs: the cgroup v2 hierarchy
//! its cgroup programs attach to, and bpffs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Mount point of the cgroup v2 hierarchy from a /proc/self/mounts text.
/// Hybrid hosts mount it at /sys/fs/cgroup/unified, pure v2 hosts at /sys/fs/cgroup.
pub fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, path, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(path)))
    })
}

/// /proc/mounts escapes spaces and friends as octal (`\040`).
fn unescape_mount_path(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host's cgroup v2 root, when configured (`kernel.cgroup_root`): inside a
/// container the runtime's own cgroup2 mount shows only the container's
/// subtree, so the DaemonSet mounts the host's elsewhere and says where.
static CGROUP_ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Use `path` as the cgroup v2 root from now on (checked to be cgroup2). On a
/// hybrid host the host's /sys/fs/cgroup is a tmpfs of v1 hierarchies with the
/// v2 one at `unified/`, which is taken instead.
pub fn set_cgroup_root(path: &str) -> Result<()> {
    let chosen = [PathBuf::from(path), Path::new(path).join("unified")]
        .into_iter()
        .find(|p| is_cgroup2(p))
        .ok_or_else(|| anyhow::anyhow!("kernel.cgroup_root = {path:?} is not a cgroup v2 mount, nor is its unified/ (mount the host's /sys/fs/cgroup there)"))?;
    let _ = CGROUP_ROOT.set(chosen);
    Ok(())
}

fn is_cgroup2(p: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs is plain C data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a writable statfs.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC }
}

/// Does this process live in a cgroup namespace other than init's (a
/// container)? The kernel gives its initial namespaces fixed inode numbers
/// (include/linux/proc_ns.h: PROC_CGROUP_INIT_INO), so no access to pid 1 is
/// needed. `None` when /proc does not say.
fn in_cgroup_namespace() -> Option<bool> {
    const PROC_CGROUP_INIT_INO: u64 = 0xEFFF_FFFB;
    let link = std::fs::read_link("/proc/self/ns/cgroup").ok()?;
    let ino = link.to_str()?.strip_prefix("cgroup:[")?.strip_suffix(']')?.parse::<u64>().ok()?;
    Some(ino != PROC_CGROUP_INIT_INO)
}

pub fn cgroup2_mount() -> Result<PathBuf> {
    if let Some(p) = CGROUP_ROOT.get() {
        return Ok(p.clone());
    }
    if in_cgroup_namespace() == Some(true) {
        bail!(
            "sluice runs in a cgroup namespace of its own (a container), where the cgroup2 mount shows only its own cgroups; \
             mount the host's /sys/fs/cgroup into the container (for example at /host/sys/fs/cgroup) and set kernel.cgroup_root to it"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    match cgroup2_mount_in(&mounts) {
        Some(p) => Ok(p),
        None => bail!(
            "no cgroup v2 hierarchy is mounted; the cgroup backend attaches there. \
             Mount one with `mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified`"
        ),
    }
}

/// Every cgroup under `root` by id (the directory's inode, which is what
/// bpf_get_current_cgroup_id returns), as a path relative to the root ("/a/b").
/// At most `limit` directories are visited.
pub fn cgroup_ids(root: &std::path::Path, limit: usize) -> std::collections::HashMap<u64, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::HashMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        if out.len() >= limit {
            break;
        }
        if let Ok(m) = std::fs::metadata(&dir) {
            out.insert(m.ino(), if rel.is_empty() { "/".to_string() } else { rel.clone() });
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let name = e.file_name().to_string_lossy().into_owned();
                stack.push((e.path(), format!("{rel}/{name}")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_ids_map_inodes_to_paths() {
        use std::os::unix::fs::MetadataExt;
        let d = std::env::temp_dir().join(format!("sluice-cgtree-{}", std::process::id()));
        std::fs::create_dir_all(d.join("kubepods/cri-containerd-abc.scope")).unwrap();
        let ids = cgroup_ids(&d, 100);
        let ino = std::fs::metadata(d.join("kubepods/cri-containerd-abc.scope")).unwrap().ino();
        assert_eq!(ids.get(&ino).map(String::as_str), Some("/kubepods/cri-containerd-abc.scope"));
        assert_eq!(cgroup_ids(&d, 1).len(), 1, "bounded");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn hybrid_and_pure_v2() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount_in(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let pure = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(cgroup2_mount_in(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount_in("proc /proc proc rw 0 0\n"), None);
        assert_eq!(cgroup2_mount_in("none /a\\040b cgroup2 rw 0 0"), Some(PathBuf::from("/a b")));
    }
}
