//! Process lifecycle from stable tracepoints. Field offsets are not baked in: the
//! loader reads them from the running kernel's tracefs format files and patches
//! the globals below (their initial values are the 6.x layout).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user,
        generated::{
            bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns, bpf_probe_read_user as read_user_raw, bpf_probe_read_user_str,
        },
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use sensor_common::{
    counter, EventHeader, ExecEvent, ExitEvent, ForkEvent, ARGV_LEN, ARG_CHUNK, COMM_LEN,
    EVENT_EXEC, EVENT_EXIT, EVENT_FORK, EXEC_ARGV_FROM_MM, EXEC_ARGV_MISSING, EXEC_ARGV_PARTIAL,
    EXEC_ARGV_TRUNCATED, EXEC_PATH_FROM_FILE, EXEC_PATH_TRUNCATED, EXE_NAME_MAX, EXE_WALK_DEPTH,
    EXE_WALK_LEN, MAX_ARGS, PATH_LEN,
};

use crate::{count, global, ARGV, ARGV_SCRATCH, EVENTS, EXE_SCRATCH};

#[unsafe(no_mangle)]
static EXEC_FILENAME_OFF: u32 = 8;
#[unsafe(no_mangle)]
static EXEC_OLD_PID_OFF: u32 = 16;
#[unsafe(no_mangle)]
static NEWTASK_PID_OFF: u32 = 8;
#[unsafe(no_mangle)]
static NEWTASK_FLAGS_OFF: u32 = 32;
#[unsafe(no_mangle)]
static EXECVE_ARGV_OFF: u32 = 24;
#[unsafe(no_mangle)]
static EXECVEAT_ARGV_OFF: u32 = 32;
/// `task_struct.signal`, `signal_struct.live`: patched from BTF; u32::MAX
/// (no BTF) falls back to "the leader's exit is the process's".
#[unsafe(no_mangle)]
static TASK_SIGNAL_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static SIGNAL_LIVE_OFF: u32 = u32::MAX;
/// `task_struct.mm`, `mm_struct.arg_start`/`arg_end`: patched from BTF.
#[unsafe(no_mangle)]
static TASK_MM_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static MM_ARG_START_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static MM_ARG_END_OFF: u32 = u32::MAX;
// The executed file's path walk (see `exe_path`); u32::MAX: not patched.
#[unsafe(no_mangle)]
static MM_EXE_FILE_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static FILE_F_PATH_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static PATH_MNT_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static PATH_DENTRY_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static DENTRY_PARENT_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static DENTRY_NAME_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static QSTR_NAME_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static VFSMOUNT_ROOT_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static MOUNT_MNT_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static MOUNT_PARENT_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
static MOUNT_MOUNTPOINT_OFF: u32 = u32::MAX;

const CLONE_THREAD: u64 = 0x0001_0000;

#[tracepoint(category = "syscalls", name = "sys_enter_execve")]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    capture_argv(&ctx, global(&EXECVE_ARGV_OFF));
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_execveat")]
pub fn sys_enter_execveat(ctx: TracePointContext) -> u32 {
    capture_argv(&ctx, global(&EXECVEAT_ARGV_OFF));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_execve")]
pub fn sys_exit_execve(_ctx: TracePointContext) -> u32 {
    forget_argv();
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_execveat")]
pub fn sys_exit_execveat(_ctx: TracePointContext) -> u32 {
    forget_argv();
    0
}

/// A failed exec returns here with its argv still stored; a successful one was
/// already consumed by `sched_process_exec`. Either way the entry is done.
fn forget_argv() {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = ARGV.remove(&tid);
}

/// Read argv from user memory now: after the exec succeeds the old address space
/// (where these pointers point) is gone.
fn capture_argv(ctx: &TracePointContext, argv_off: u32) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(buf) = ARGV_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; a tracepoint program runs to completion
    // on its CPU, so nothing else uses the slot meanwhile.
    let buf = unsafe { &mut *buf };
    buf.len = 0;
    buf.argc = 0;
    buf.flags = 0;
    // SAFETY: the offset is from this kernel's tracefs format; read_at checks bounds.
    let argv: *const *const u8 = match unsafe { ctx.read_at(argv_off as usize) } {
        Ok(p) => p,
        Err(_) => {
            buf.flags |= EXEC_ARGV_MISSING;
            core::ptr::null()
        }
    };
    let mut off: usize = 0;
    if !argv.is_null() {
        for i in 0..MAX_ARGS {
            // SAFETY: a user-memory probe read, which fails safely.
            let arg: *const u8 = match unsafe { bpf_probe_read_user(argv.wrapping_add(i as usize)) } {
                Ok(p) => p,
                Err(_) => {
                    buf.flags |= EXEC_ARGV_PARTIAL;
                    break;
                }
            };
            if arg.is_null() {
                break;
            }
            if off >= ARGV_LEN || i == MAX_ARGS - 1 {
                buf.flags |= EXEC_ARGV_TRUNCATED;
                break;
            }
            // Masking gives the verifier a bound; the buffer has ARG_CHUNK of
            // slack. The offset goes through map memory with a volatile read so
            // LLVM cannot prove the mask redundant (the loop check above implies
            // it) and drop it: 6.1's verifier then loses the bound and rejects
            // the program, though 6.18's accepts it.
            buf.len = off as u32;
            // SAFETY: a volatile read of the slot's own field.
            let masked = (unsafe { core::ptr::read_volatile(&buf.len) } as usize) & (ARGV_LEN - 1);
            // SAFETY: masked < ARGV_LEN, and `data` has ARG_CHUNK bytes past it.
            let dst = unsafe { buf.data.as_mut_ptr().add(masked) };
            // SAFETY: writes at most ARG_CHUNK bytes at `dst` (in bounds, above)
            // and reads user memory safely.
            let n = unsafe {
                bpf_probe_read_user_str(dst as *mut c_void, ARG_CHUNK as u32, arg as *const c_void)
            };
            if n <= 0 {
                buf.flags |= EXEC_ARGV_PARTIAL;
                break;
            }
            let n = n as usize;
            if n >= ARG_CHUNK {
                buf.flags |= EXEC_ARGV_TRUNCATED;
            }
            off += n;
            buf.argc += 1;
        }
    }
    buf.len = off as u32;
    if ARGV.insert(&tid, buf, 0).is_err() {
        count(counter::ARGV_STORE_FAIL);
    }
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count(counter::RINGBUF_DROP_EXEC);
        return 0;
    };
    // SAFETY: the reservation is sized for the event and ours until submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let uid_gid = bpf_get_current_uid_gid();
    ev.header = EventHeader { kind: EVENT_EXEC, pid: tgid, ktime_ns: unsafe { bpf_ktime_get_boot_ns() } }; // SAFETY: no arguments
    ev.tid = pid_tgid as u32;
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    ev.flags = 0;
    // SAFETY: a helper without arguments.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
    ev.path_len = 0;
    ev.argv_len = 0;
    ev.argc = 0;
    ev._pad = 0;

    // filename is a __data_loc string: low 16 bits offset from the record start.
    // SAFETY: offsets from this kernel's tracefs format (read_at checks
    // bounds); the string is then probe-read into `ev.path`, bounded by its size.
    if let Ok(loc) = unsafe { ctx.read_at::<u32>(global(&EXEC_FILENAME_OFF) as usize) } {
        // SAFETY: an address inside the tracepoint record, only probe-read.
        let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
        // SAFETY: as above.
        if let Ok(s) = unsafe { bpf_probe_read_kernel_str_bytes(src, &mut ev.path) } {
            ev.path_len = s.len() as u32;
            if s.len() >= PATH_LEN - 1 {
                ev.flags |= EXEC_PATH_TRUNCATED;
            }
        }
    }

    // A relative name ("./x") says nothing once the process chdir()s: take
    // the file the kernel executed instead.
    if ev.path_len > 0 && ev.path[0] != b'/' {
        exe_path(ev);
    }

    // The thread that called execve may not have been the leader: by now it has
    // taken the leader's pid, and old_pid is the tid its argv was stored under.
    let mut key = pid_tgid as u32;
    if ARGV.get_ptr(&key).is_none() {
        // SAFETY: an offset from tracefs; read_at checks bounds.
        if let Ok(old) = unsafe { ctx.read_at::<u32>(global(&EXEC_OLD_PID_OFF) as usize) } {
            key = old;
        }
    }
    let mut complete = false;
    if let Some(argv) = ARGV.get_ptr(&key) {
        // SAFETY: a live ARGV value, keyed by this thread (or the thread this
        // exec replaced): only this thread wrote it, and it is read here once.
        let argv = unsafe { &*argv };
        // SAFETY: a fixed-size copy between two buffers of the same size.
        if unsafe { bpf_probe_read_kernel_buf(argv.data.as_ptr(), &mut ev.argv) }.is_ok() {
            ev.argv_len = argv.len;
            ev.argc = argv.argc;
            ev.flags |= argv.flags;
            complete = argv.flags & EXEC_ARGV_PARTIAL == 0;
        }
        let _ = ARGV.remove(&key);
    }
    // No syscall-entry copy, or a partial one: the new program's own stack.
    if !complete && !argv_from_mm(ev) && ev.argv_len == 0 {
        ev.flags |= EXEC_ARGV_MISSING;
        count(counter::EXEC_NO_ARGV);
    }
    entry.submit(crate::wakeup());
    0
}

/// Read a kernel pointer at `base + off`.
#[inline(always)]
fn kptr(base: *const u8, off: u32) -> Option<*const u8> {
    // SAFETY: a probe read, which faults safely.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const *const u8) }.ok()
}

// Kernel layout relied on (fs/d_path.c's prepend_path, 5.x-6.x): a path is
// {vfsmount, dentry}; walking up, a dentry equal to its vfsmount's mnt_root
// continues at the mount's mnt_mountpoint in mnt_parent (the struct mount
// embedding that vfsmount, at `mount.mnt`), until a mount is its own parent.
/// `current->mm->exe_file`'s path into `ev.path` as leaf-first components,
/// when the walk completes and fits; otherwise `ev.path` keeps the string.
#[inline(always)]
fn exe_path(ev: &mut ExecEvent) {
    let offs = [
        global(&TASK_MM_OFF),
        global(&MM_EXE_FILE_OFF),
        global(&FILE_F_PATH_OFF),
        global(&PATH_MNT_OFF),
        global(&PATH_DENTRY_OFF),
        global(&DENTRY_PARENT_OFF),
        global(&DENTRY_NAME_OFF),
        global(&QSTR_NAME_OFF),
        global(&VFSMOUNT_ROOT_OFF),
        global(&MOUNT_MNT_OFF),
        global(&MOUNT_PARENT_OFF),
        global(&MOUNT_MOUNTPOINT_OFF),
    ];
    if offs.contains(&u32::MAX) {
        return;
    }
    let Some(buf) = EXE_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch slot; nothing else runs on it meanwhile.
    let buf = unsafe { &mut *buf };
    let Some(len) = walk_exe(&offs, buf) else { return };
    if len as usize >= PATH_LEN {
        return;
    }
    // SAFETY: copies PATH_LEN bytes of the scratch (longer than that).
    if unsafe { bpf_probe_read_kernel_buf(buf.as_ptr(), &mut ev.path) }.is_ok() {
        ev.path_len = len;
        ev.flags |= EXEC_PATH_FROM_FILE;
    }
}

/// The walk itself: bytes written, or None if it failed or did not reach the root.
#[inline(always)]
fn walk_exe(o: &[u32; 12], buf: &mut [u8; EXE_WALK_LEN + EXE_NAME_MAX]) -> Option<u32> {
    let [task_mm, mm_exe, file_path, path_mnt, path_dentry, d_parent, d_name, qstr_name, mnt_root, mount_mnt, mount_parent, mount_point] = *o;
    // SAFETY: bpf_get_current_task returns the running task.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let file = kptr(kptr(task, task_mm)?, mm_exe)?;
    let path = file.wrapping_add(file_path as usize);
    let mut mnt = kptr(path, path_mnt)?;
    let mut dentry = kptr(path, path_dentry)?;
    let mut mount = mnt.wrapping_sub(mount_mnt as usize);
    let mut off: u32 = 0;
    for _ in 0..EXE_WALK_DEPTH {
        if dentry == kptr(mnt, mnt_root)? {
            let parent = kptr(mount, mount_parent)?;
            if parent == mount {
                return Some(off);
            }
            dentry = kptr(mount, mount_point)?;
            mount = parent;
            mnt = mount.wrapping_add(mount_mnt as usize);
            continue;
        }
        let up = kptr(dentry, d_parent)?;
        if up == dentry {
            return Some(off);
        }
        let name = kptr(dentry.wrapping_add(d_name as usize), qstr_name)?;
        if off as usize >= EXE_WALK_LEN {
            return None;
        }
        // The mask bounds the write for the verifier (see capture_argv).
        // SAFETY: a volatile read of a local.
        let masked = (unsafe { core::ptr::read_volatile(&off) } as usize) & (EXE_WALK_LEN - 1);
        // SAFETY: at most EXE_NAME_MAX bytes at masked < EXE_WALK_LEN, inside
        // the EXE_WALK_LEN + EXE_NAME_MAX buffer; the source read faults safely.
        let n = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel_str(
                buf.as_mut_ptr().add(masked) as *mut c_void,
                EXE_NAME_MAX as u32,
                name as *const c_void,
            )
        };
        if n <= 0 {
            return None;
        }
        off += n as u32;
        dentry = up;
    }
    None
}

// Kernel layout relied on (fs/exec.c, all 5.x-6.x): by sched_process_exec the
// new mm is the current task's, and create_elf_tables() has set
// mm->arg_start..arg_end around argv's NUL-terminated strings, which
// copy_strings() wrote into present pages of the new stack.
/// argv from `current->mm->arg_start..arg_end` into `ev` (at most ARGV_LEN
/// bytes, truncation flagged). False when the offsets or a read fail.
#[inline(always)]
fn argv_from_mm(ev: &mut ExecEvent) -> bool {
    let (mm_off, start_off, end_off) = (global(&TASK_MM_OFF), global(&MM_ARG_START_OFF), global(&MM_ARG_END_OFF));
    if mm_off == u32::MAX || start_off == u32::MAX || end_off == u32::MAX {
        return false;
    }
    // SAFETY: probe reads fault safely; offsets from this kernel's BTF; the
    // copy length is bounded to 1..=ARGV_LEN below, inside `ev.argv`.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let Ok(mm) = bpf_probe_read_kernel(task.wrapping_add(mm_off as usize) as *const *const u8) else { return false };
        let Ok(start) = bpf_probe_read_kernel(mm.wrapping_add(start_off as usize) as *const u64) else { return false };
        let Ok(end) = bpf_probe_read_kernel(mm.wrapping_add(end_off as usize) as *const u64) else { return false };
        let len = end.saturating_sub(start);
        if len == 0 {
            return false;
        }
        let n = if len > ARGV_LEN as u64 { ARGV_LEN as u32 } else { len as u32 };
        // The verifier needs the bound where it can see it (see heads::emit).
        let n = core::ptr::read_volatile(&n);
        let n = (n.wrapping_sub(1) & (ARGV_LEN as u32 - 1)) + 1;
        if read_user_raw(ev.argv.as_mut_ptr() as *mut c_void, n, start as *const c_void) != 0 {
            return false;
        }
        ev.argv_len = n;
        ev.argc = 0;
        ev.flags = (ev.flags & !(EXEC_ARGV_PARTIAL | EXEC_ARGV_TRUNCATED)) | EXEC_ARGV_FROM_MM;
        if len > ARGV_LEN as u64 {
            ev.flags |= EXEC_ARGV_TRUNCATED;
        }
    }
    true
}

#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    // Threads share their process's identity; only new processes matter here.
    // SAFETY: offsets from this kernel's tracefs format; read_at checks bounds.
    let flags = unsafe { ctx.read_at::<u64>(global(&NEWTASK_FLAGS_OFF) as usize) }.unwrap_or(0);
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    // SAFETY: as above.
    let Ok(child) = (unsafe { ctx.read_at::<u32>(global(&NEWTASK_PID_OFF) as usize) }) else {
        return 0;
    };
    crate::respond::inherit(child);
    let Some(mut entry) = EVENTS.reserve::<ForkEvent>(0) else {
        count(counter::RINGBUF_DROP_FORK);
        return 0;
    };
    // SAFETY: the reservation is sized for the event and ours until submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let uid_gid = bpf_get_current_uid_gid();
    ev.header = EventHeader { kind: EVENT_FORK, pid: child, ktime_ns: unsafe { bpf_ktime_get_boot_ns() } }; // SAFETY: no arguments
    // The current task is the parent: copy_process runs in its context.
    ev.ppid = (bpf_get_current_pid_tgid() >> 32) as u32;
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    ev._pad = 0;
    // SAFETY: a helper without arguments.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
    entry.submit(crate::wakeup());
    0
}

// Kernel prototype relied on (kernel/exit.c, 5.x-6.x): in do_exit(),
//     group_dead = atomic_dec_and_test(&tsk->signal->live);
// runs before trace_sched_process_exit(tsk), so at this tracepoint
// `signal->live == 0` says the exiting thread is the group's last.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // Fires per thread. A main thread that calls pthread_exit() leaves its
    // workers running: the process exits with its last thread.
    let last = match group_live() {
        Some(live) => live == 0,
        None => pid_tgid as u32 == tgid,
    };
    if !last {
        return 0;
    }
    match EVENTS.reserve::<ExitEvent>(0) {
        Some(mut entry) => {
            // SAFETY: the reservation is sized for the event and ours until submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
            ev.header = EventHeader { kind: EVENT_EXIT, pid: tgid, ktime_ns: unsafe { bpf_ktime_get_boot_ns() } }; // SAFETY: no arguments
            entry.submit(crate::wakeup());
        }
        None => count(counter::RINGBUF_DROP_EXIT),
    }
    0
}

/// The current thread group's `signal->live` count, when BTF gave the offsets.
#[inline(always)]
fn group_live() -> Option<i32> {
    let (signal_off, live_off) = (global(&TASK_SIGNAL_OFF), global(&SIGNAL_LIVE_OFF));
    if signal_off == u32::MAX || live_off == u32::MAX {
        return None;
    }
    // SAFETY: bpf_get_current_task returns the running task; probe reads
    // fault safely and the offsets come from this kernel's BTF.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let signal: *const u8 = bpf_probe_read_kernel(task.wrapping_add(signal_off as usize) as *const *const u8).ok()?;
        bpf_probe_read_kernel(signal.wrapping_add(live_off as usize) as *const i32).ok()
    }
}
