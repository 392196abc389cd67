//! Names of the globals the loader sets from the running kernel's tracepoint
//! format files (offsets change between kernels: 6.1 has `char[16]` comms in
//! `sched_process_fork`, 6.18 has `__data_loc` strings).

pub const EXEC_FILENAME_OFF: &str = "EXEC_FILENAME_OFF";
/// 1 = containment off (the object's default), 0 = on (`respond`).
pub const RESPOND_OFF: &str = "RESPOND_OFF";
pub const NEWTASK_PID_OFF: &str = "NEWTASK_PID_OFF";
pub const NEWTASK_FLAGS_OFF: &str = "NEWTASK_FLAGS_OFF";
pub const EXECVE_ARGV_OFF: &str = "EXECVE_ARGV_OFF";
pub const EXECVEAT_ARGV_OFF: &str = "EXECVEAT_ARGV_OFF";
pub const EXEC_OLD_PID_OFF: &str = "EXEC_OLD_PID_OFF";
pub const SETPGID_PID_OFF: &str = "SETPGID_PID_OFF";
pub const SETPGID_PGID_OFF: &str = "SETPGID_PGID_OFF";
pub const SETPGID_RET_OFF: &str = "SETPGID_RET_OFF";
pub const SETSID_RET_OFF: &str = "SETSID_RET_OFF";
/// Field offsets from the kernel's BTF, for the send-path probes.
pub const SKC_DADDR: &str = "SKC_DADDR";
pub const SKC_RCV_SADDR: &str = "SKC_RCV_SADDR";
pub const SKC_DPORT: &str = "SKC_DPORT";
pub const SKC_NUM: &str = "SKC_NUM";
pub const SKC_FAMILY: &str = "SKC_FAMILY";
pub const SKC_V6_DADDR: &str = "SKC_V6_DADDR";
pub const SKC_V6_RCV_SADDR: &str = "SKC_V6_RCV_SADDR";
pub const MSG_NAME: &str = "MSG_NAME";
pub const SS_SKADDR_OFF: &str = "SS_SKADDR_OFF";
pub const SS_OLDSTATE_OFF: &str = "SS_OLDSTATE_OFF";
pub const SS_NEWSTATE_OFF: &str = "SS_NEWSTATE_OFF";
pub const SS_PROTOCOL_OFF: &str = "SS_PROTOCOL_OFF";
/// `sock_common.skc_cookie` (BTF), for the cgroup backend's owner-on-send.
pub const SKC_COOKIE: &str = "SKC_COOKIE";
/// `task_struct.signal` and `signal_struct.live` (BTF): a process has
/// exited when its last thread has, whichever thread that is.
pub const TASK_SIGNAL_OFF: &str = "TASK_SIGNAL_OFF";
pub const SIGNAL_LIVE_OFF: &str = "SIGNAL_LIVE_OFF";
/// `task_struct.mm`, `mm_struct.arg_start` / `arg_end` (BTF): where every
/// exec leaves the new program's argv.
pub const TASK_MM_OFF: &str = "TASK_MM_OFF";
pub const MM_ARG_START_OFF: &str = "MM_ARG_START_OFF";
pub const MM_ARG_END_OFF: &str = "MM_ARG_END_OFF";
/// The executed file's path, walked in the kernel (BTF): `mm_struct.exe_file`,
/// `file.f_path`, `path.mnt`/`dentry`, `dentry.d_parent`/`d_name`,
/// `qstr.name`, `vfsmount.mnt_root`, `mount.mnt`/`mnt_parent`/`mnt_mountpoint`.
pub const MM_EXE_FILE_OFF: &str = "MM_EXE_FILE_OFF";
pub const FILE_F_PATH_OFF: &str = "FILE_F_PATH_OFF";
pub const PATH_MNT_OFF: &str = "PATH_MNT_OFF";
pub const PATH_DENTRY_OFF: &str = "PATH_DENTRY_OFF";
pub const DENTRY_PARENT_OFF: &str = "DENTRY_PARENT_OFF";
pub const DENTRY_NAME_OFF: &str = "DENTRY_NAME_OFF";
pub const QSTR_NAME_OFF: &str = "QSTR_NAME_OFF";
pub const VFSMOUNT_ROOT_OFF: &str = "VFSMOUNT_ROOT_OFF";
pub const MOUNT_MNT_OFF: &str = "MOUNT_MNT_OFF";
pub const MOUNT_PARENT_OFF: &str = "MOUNT_PARENT_OFF";
pub const MOUNT_MOUNTPOINT_OFF: &str = "MOUNT_MOUNTPOINT_OFF";
/// `socket.sk`, `sock.sk_protocol`, `sock.sk_type`,
/// `inet_connection_sock.icsk_ulp_ops` (BTF): which sockets carry an
/// upper-layer protocol (kTLS) whose sends bypass tcp_sendmsg.
pub const SOCKET_SK_OFF: &str = "SOCKET_SK_OFF";
pub const SK_PROTOCOL_OFF: &str = "SK_PROTOCOL_OFF";
pub const SK_TYPE_OFF: &str = "SK_TYPE_OFF";
pub const ICSK_ULP_OPS_OFF: &str = "ICSK_ULP_OPS_OFF";
/// Position of `int flags` among tcp_recvmsg's arguments (BTF).
pub const RECV_FLAGS_ARG: &str = "RECV_FLAGS_ARG";
/// `struct msghdr.msg_iter` and the `struct iov_iter` fields read to copy
/// the first bytes of a send, and the `iter_type` values (their order
/// changed in 6.5).
pub const MSG_ITER: &str = "MSG_ITER";
pub const ITER_TYPE_OFF: &str = "ITER_TYPE_OFF";
pub const ITER_OFFSET_OFF: &str = "ITER_OFFSET_OFF";
pub const ITER_COUNT_OFF: &str = "ITER_COUNT_OFF";
pub const ITER_PTR_OFF: &str = "ITER_PTR_OFF";
pub const ITER_UBUF: &str = "ITER_UBUF";
pub const ITER_IOVEC: &str = "ITER_IOVEC";
