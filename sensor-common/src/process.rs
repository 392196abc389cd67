//! Process lifecycle events (exec, fork, exit, process groups) and the argv
//! and executable-path capture behind them.

use crate::EventHeader;

/// Task command name length (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Bytes of the executable path captured by the kernel at exec.
pub const PATH_LEN: usize = 256;
/// Bytes of argv captured by the kernel (NUL-separated). A power of two: the eBPF
/// side masks its write offset with `ARGV_LEN - 1` so the verifier can bound it.
pub const ARGV_LEN: usize = 1024;
/// Largest single argument read in one go; the argv buffer carries this much slack
/// past `ARGV_LEN` so a read that starts near the end stays inside the map value.
pub const ARG_CHUNK: usize = 256;
/// Arguments read at most per exec (a bounded loop for the verifier).
pub const MAX_ARGS: u32 = 32;

/// `ExecEvent::flags` bits.
pub const EXEC_ARGV_TRUNCATED: u32 = 1;
pub const EXEC_ARGV_MISSING: u32 = 2;
pub const EXEC_PATH_TRUNCATED: u32 = 4;
/// argv taken from the new program's stack (`mm->arg_start..arg_end`): the
/// syscall-entry copy was missing (a 32-bit `int 0x80` execve passes no
/// syscall tracepoint) or stopped at an unreadable page. NUL-separated, argc
/// not counted (userspace splits).
pub const EXEC_ARGV_FROM_MM: u32 = 8;
/// The syscall-entry copy hit memory it could not read (a page not faulted
/// in): what it holds is a prefix.
pub const EXEC_ARGV_PARTIAL: u32 = 16;
/// `path` is the executed file's own path, walked from its dentry up to the
/// root of the process's mount tree (the string exec was given was relative):
/// NUL-terminated components, leaf first.
pub const EXEC_PATH_FROM_FILE: u32 = 32;

/// Scratch for that walk: components are read at masked offsets below
/// `EXE_WALK_LEN`, each at most `EXE_NAME_MAX` bytes, so the buffer has that
/// much slack; a path longer than `PATH_LEN` keeps the string instead.
pub const EXE_WALK_LEN: usize = 512;
pub const EXE_NAME_MAX: usize = 128;
/// Directories walked at most (bounded for the verifier).
pub const EXE_WALK_DEPTH: u32 = 24;

/// A successful execve/execveat, emitted from `sched:sched_process_exec`, with the
/// argv captured at `sys_enter_execve*` so even a process that lives 1 ms is named.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub flags: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    /// Bytes used in `path` (without the NUL).
    pub path_len: u32,
    /// Bytes used in `argv` (NUL-separated arguments, each NUL-terminated).
    pub argv_len: u32,
    pub argc: u32,
    pub _pad: u32,
    pub path: [u8; PATH_LEN],
    pub argv: [u8; ARGV_LEN + ARG_CHUNK],
}
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 1608, "ExecEvent changed size: both sides must agree");

/// argv as captured at syscall entry, held per thread until the exec succeeds.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArgvBuf {
    pub len: u32,
    pub argc: u32,
    pub flags: u32,
    pub _pad: u32,
    pub data: [u8; ARGV_LEN + ARG_CHUNK],
}
const _: () = assert!(core::mem::size_of::<ArgvBuf>() == 1296, "ArgvBuf changed size: both sides must agree");

/// A new process (not a thread), from `task:task_newtask`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    pub header: EventHeader,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 56, "ForkEvent changed size: both sides must agree");

/// A thread group leader exiting, from `sched:sched_process_exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub header: EventHeader,
}
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 16, "ExitEvent changed size: both sides must agree");

/// A process joined or started a process group, from `sys_exit_setpgid` (the
/// arguments kept from `sys_enter_setpgid`, emitted only on success) and
/// `sys_exit_setsid`. `header.pid` is the process that moved (a shell moves
/// its children: setpgid(child, child)).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PgidEvent {
    pub header: EventHeader,
    pub pgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PgidEvent>() == 24, "PgidEvent changed size: both sides must agree");
