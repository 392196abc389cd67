//! Tracepoint field offsets, read from the running kernel's format files so the
//! eBPF programs never assume one kernel's layout.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where tracefs is mounted, mounting it if it is not (root can; a clear error otherwise).
pub fn tracefs_root() -> Result<PathBuf> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("events").is_dir() {
            return Ok(PathBuf::from(p));
        }
    }
    let target = "/sys/kernel/tracing";
    // SAFETY: NUL-terminated C string literals and a null data pointer, as mount(2) takes.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "tracefs is not mounted and mounting it failed ({}); run `mount -t tracefs tracefs {target}`",
            std::io::Error::last_os_error()
        );
    }
    Ok(PathBuf::from(target))
}

/// Offset of `field` in a tracepoint format description.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        // "const char *const * argv" / "__data_loc char[] filename" / "char comm[16]"
        let name = decl.rsplit([' ', '*']).next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        let off = line.split(';').find_map(|p| p.trim().strip_prefix("offset:"))?;
        off.trim().parse().ok()
    })
}

/// Read `events/<category>/<name>/format` and return the offset of `field`.
pub fn offset(root: &Path, category: &str, name: &str, field: &str) -> Result<u32> {
    let path = root.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("tracepoint {category}:{name} is missing ({})", path.display()))?;
    field_offset(&text, field)
        .with_context(|| format!("tracepoint {category}:{name} has no field {field:?} on this kernel"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_618: &str = "name: sched_process_fork\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
    const FORK_61: &str = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
    const EXECVE: &str = "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:const char * filename;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:const char *const * argv;\toffset:24;\tsize:8;\tsigned:0;\n";

    #[test]
    fn offsets_differ_between_kernels_and_are_found() {
        assert_eq!(field_offset(FORK_618, "child_pid"), Some(20));
        assert_eq!(field_offset(FORK_61, "child_pid"), Some(44));
        assert_eq!(field_offset(FORK_61, "child_comm"), Some(28));
        assert_eq!(field_offset(FORK_618, "child_comm"), Some(16));
    }

    #[test]
    fn pointer_fields() {
        assert_eq!(field_offset(EXECVE, "argv"), Some(24));
        assert_eq!(field_offset(EXECVE, "filename"), Some(16));
        assert_eq!(field_offset(EXECVE, "envp"), None);
    }

    #[test]
    fn names_are_matched_whole() {
        assert_eq!(field_offset(FORK_618, "pid"), None);
        assert_eq!(field_offset(FORK_618, "parent_pid"), Some(12));
    }
}
