//! Process groups, the agent's notion of a job: a shell with job control,
//! setsid(1), systemd, cron and container runtimes move a process into a new
//! group between its fork and its exec, often before the agent could read
//! /proc (a job that lives 200 ms is gone by then). Seen here, in order on the
//! ring with the fork and exec events, the group is never stale.
//!
//! Kernel interfaces relied on (stable syscall tracepoints; offsets from
//! tracefs, patched by the loader):
//!   syscalls:sys_enter_setpgid   pid_t pid; pid_t pgid;  (0 = the caller / pid)
//!   syscalls:sys_exit_setpgid    long ret;               (0 on success)
//!   syscalls:sys_exit_setsid     long ret;               (the new session = group id)

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_boot_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use sensor_common::{counter, EventHeader, PgidEvent, EVENT_PGID};

use crate::{count, global, EVENTS, SETPGID};

#[unsafe(no_mangle)]
static SETPGID_PID_OFF: u32 = 16;
#[unsafe(no_mangle)]
static SETPGID_PGID_OFF: u32 = 24;
#[unsafe(no_mangle)]
static SETPGID_RET_OFF: u32 = 16;
#[unsafe(no_mangle)]
static SETSID_RET_OFF: u32 = 16;

#[tracepoint(category = "syscalls", name = "sys_enter_setpgid")]
pub fn sys_enter_setpgid(ctx: TracePointContext) -> u32 {
    let _ = try_enter_setpgid(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_setpgid")]
pub fn sys_exit_setpgid(ctx: TracePointContext) -> u32 {
    let _ = try_exit_setpgid(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_setsid")]
pub fn sys_exit_setsid(ctx: TracePointContext) -> u32 {
    let _ = try_exit_setsid(&ctx);
    0
}

fn try_enter_setpgid(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: offsets come from this kernel's tracefs format; read_at checks bounds.
    let pid = unsafe { ctx.read_at::<u64>(global(&SETPGID_PID_OFF) as usize) }? as u32;
    let pgid = unsafe { ctx.read_at::<u64>(global(&SETPGID_PGID_OFF) as usize) }? as u32;
    // Both arguments are pids of the caller's pid namespace, which inside a
    // container are not the agent's. So only a process moving itself is taken
    // (0, or its own pid): a job-control shell and posix_spawn have the child
    // call setpgid(0, ...) itself too. `pgid` 0 means "the caller's pid"; a
    // group joined by number is taken as given (in a container it may be a
    // namespaced number: that member then keys a job of its own).
    let tgid = (pid_tgid >> 32) as u32;
    if pid != 0 && pid != tgid {
        return Ok(());
    }
    let pid = tgid;
    let pgid = if pgid == 0 { pid } else { pgid };
    SETPGID.insert(&(pid_tgid as u32), &((u64::from(pid) << 32) | u64::from(pgid)), 0).map_err(i64::from)
}

fn try_exit_setpgid(ctx: &TracePointContext) -> Result<(), i64> {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: a value of our own map, copied out before the remove.
    let Some(args) = (unsafe { SETPGID.get(&tid) }).copied() else { return Ok(()) };
    let _ = SETPGID.remove(&tid);
    // SAFETY: as above.
    let ret = unsafe { ctx.read_at::<i64>(global(&SETPGID_RET_OFF) as usize) }?;
    if ret == 0 {
        emit((args >> 32) as u32, args as u32);
    }
    Ok(())
}

fn try_exit_setsid(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: as in try_enter_setpgid.
    let ret = unsafe { ctx.read_at::<i64>(global(&SETSID_RET_OFF) as usize) }?;
    if ret > 0 {
        // The caller leads a new session and a new group, both numbered as it.
        emit((bpf_get_current_pid_tgid() >> 32) as u32, ret as u32);
    }
    Ok(())
}

fn emit(pid: u32, pgid: u32) {
    let Some(mut entry) = EVENTS.reserve::<PgidEvent>(0) else {
        count(counter::RINGBUF_DROP_PGID);
        return;
    };
    // SAFETY: the reservation is sized for a PgidEvent and ours until submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: a helper without arguments.
    ev.header = EventHeader { kind: EVENT_PGID, pid, ktime_ns: unsafe { bpf_ktime_get_boot_ns() } };
    ev.pgid = pgid;
    ev._pad = 0;
    entry.submit(crate::wakeup());
}
