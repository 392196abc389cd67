//! Loading the eBPF object and attaching one backend's programs.

use std::{fs::File, path::Path};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, FEntry, FExit, KProbe, Lsm,
        TracePoint,
    },
    Ebpf, EbpfLoader,
};
use sensor_common::{globals, maps};

use super::{
    backend::Backend,
    btf, mounts, preflight, privileges, prototypes,
    retprobe::{self, Retprobe},
    tracefs, EBPF_OBJECT,
};
use crate::config::Config;

/// Process-lifecycle tracepoints, attached on every backend: (program, category, event).
const PROCESS_TRACEPOINTS: [(&str, &str, &str); 10] = [
    ("sys_enter_execve", "syscalls", "sys_enter_execve"),
    ("sys_enter_execveat", "syscalls", "sys_enter_execveat"),
    ("sys_exit_execve", "syscalls", "sys_exit_execve"),
    ("sys_exit_execveat", "syscalls", "sys_exit_execveat"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("task_newtask", "task", "task_newtask"),
    ("sched_process_exit", "sched", "sched_process_exit"),
    ("sys_enter_setpgid", "syscalls", "sys_enter_setpgid"),
    ("sys_exit_setpgid", "syscalls", "sys_exit_setpgid"),
    ("sys_exit_setsid", "syscalls", "sys_exit_setsid"),
];

/// cgroup sock hooks (owner at create/bind, retirement at release), then the
/// sock_addr hooks (owner at connect/sendmsg), then the packet counters: owners
/// are in place before the first packet is counted.
const CGROUP_SOCK: [&str; 4] = ["sock_create", "post_bind4", "post_bind6", "sock_release"];
const CGROUP_SOCK_ADDR: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
const CGROUP_SKB: [(&str, CgroupSkbAttachType); 2] =
    [("skb_egress", CgroupSkbAttachType::Egress), ("skb_ingress", CgroupSkbAttachType::Ingress)];

/// Containment's BPF LSM programs: (program, hook).
const LSM: [(&str, &str); 2] = [("lsm_socket_connect", "socket_connect"), ("lsm_socket_sendmsg", "socket_sendmsg")];

/// fentry backend: (program, kernel function, optional). tcp_sendpage carried
/// sendfile/splice until 6.5, when it folded into tcp_sendmsg (as did
/// inet_sendpage); mptcp_sendmsg exists where the kernel has MPTCP;
/// inet6_sendmsg is in a module where IPv6 is one. inet_sendmsg and the rest
/// count only sockets with an upper-layer protocol (kTLS).
const FEXIT: [(&str, &str, bool); 10] = [
    ("fexit_inet_sendmsg", "inet_sendmsg", false),
    ("fexit_inet6_sendmsg", "inet6_sendmsg", true),
    ("fexit_inet_sendpage", "inet_sendpage", true),
    ("fexit_tcp_bpf_sendmsg", "tcp_bpf_sendmsg", true),
    ("fexit_tcp_recvmsg", "tcp_recvmsg", false),
    ("fexit_tcp_sendmsg", "tcp_sendmsg", false),
    ("fexit_tcp_sendpage", "tcp_sendpage", true),
    ("fexit_mptcp_sendmsg", "mptcp_sendmsg", true),
    ("fexit_udp_sendmsg", "udp_sendmsg", false),
    ("fexit_udpv6_sendmsg", "udpv6_sendmsg", false),
];
/// Bytes in: what tcp_recvmsg returns, and tcp_cleanup_rbuf outside it.
const FENTRY_RECV: [(&str, &str, bool); 2] = [("fentry_tcp_cleanup_rbuf", "tcp_cleanup_rbuf", false), ("fentry_tcp_recvmsg", "tcp_recvmsg", false)];
/// fentry programs that copy a new connection's first bytes (for its name):
/// (program, function, optional).
const FENTRY_CAPTURE: [(&str, &str, bool); 5] = [
    // Not a capture: marks a thread inside tcp_bpf_sendmsg (sockmap sends).
    ("fentry_tcp_bpf_sendmsg", "tcp_bpf_sendmsg", true),
    ("fentry_tcp_sendmsg", "tcp_sendmsg", false),
    ("fentry_mptcp_sendmsg", "mptcp_sendmsg", true),
    ("fentry_udp_sendmsg", "udp_sendmsg", false),
    ("fentry_udpv6_sendmsg", "udpv6_sendmsg", false),
];

/// kprobe backend: (entry kprobe, kretprobe, function, optional). The sendmsg
/// entries also copy a new connection's first bytes.
const KPROBES: [(&str, &str, &str, bool); 10] = [
    // Upper-layer sockets only (kTLS): see fexit_inet_sendmsg.
    ("kp_inet_send_entry", "krp_inet_send", "inet_sendmsg", false),
    ("kp_inet_send_entry", "krp_inet_send", "inet6_sendmsg", true),
    ("kp_inet_send_entry", "krp_inet_send", "inet_sendpage", true),
    // A nested tcp_sendmsg takes the same stash and counts once.
    ("kp_send_entry", "krp_tcp_send", "tcp_bpf_sendmsg", true),
    ("kp_tcp_recvmsg_entry", "krp_tcp_recvmsg", "tcp_recvmsg", false),
    ("kp_tcp_sendmsg_entry", "krp_tcp_send", "tcp_sendmsg", false),
    ("kp_tcp_sendmsg_entry", "krp_tcp_send", "mptcp_sendmsg", true),
    ("kp_send_entry", "krp_tcp_send", "tcp_sendpage", true),
    ("kp_udp4_sendmsg_entry", "krp_udp_send", "udp_sendmsg", false),
    ("kp_udp_sendmsg_entry", "krp_udp_send", "udpv6_sendmsg", false),
];

/// The loaded, attached sensor. Dropping it detaches every program.
pub struct Sensor {
    pub ebpf: Ebpf,
    pub backend: Backend,
    pub attached: Vec<String>,
    /// The kprobe backend's kretprobes made through tracefs, by function
    /// (their misses are read each tick); each removes its trace event on drop.
    pub retprobes: Vec<(&'static str, Retprobe)>,
}

/// Kernel memory for maps was charged to RLIMIT_MEMLOCK before 5.11.
fn raise_memlock() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // Best effort: on 5.11+ it is not needed, and a failure shows up at map creation.
    // SAFETY: a valid rlimit that lives across the call.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// Explain a load/attach failure in terms a user can act on (see `preflight`).
pub fn explain(err: &anyhow::Error) -> Option<String> {
    let hints = preflight::hints(&format!("{err:#}"), &preflight::Env::read());
    (!hints.is_empty()).then(|| hints.join("; "))
}

/// The object, opened with the running kernel's offsets patched in.
pub struct Opened {
    pub ebpf: Ebpf,
    /// `send_owner` has its offsets (the kernel has `sock:sock_send_length`, 6.3+).
    pub send_owner: bool,
    /// The kernel's BTF, parsed once here (None without it): the offsets
    /// above came from it, and the send-path backends check their hooks' prototypes against it.
    pub btf: Option<btf::Btf>,
}

/// Open the object with the running kernel's tracepoint offsets patched in.
pub fn open(config: &Config) -> Result<Opened> {
    privileges::check().map_err(|e| anyhow!(e))?;
    raise_memlock();
    let tf = tracefs::tracefs_root()?;
    let offs = [
        (globals::EXEC_FILENAME_OFF, tracefs::offset(&tf, "sched", "sched_process_exec", "filename")?),
        (globals::EXEC_OLD_PID_OFF, tracefs::offset(&tf, "sched", "sched_process_exec", "old_pid")?),
        (globals::NEWTASK_PID_OFF, tracefs::offset(&tf, "task", "task_newtask", "pid")?),
        (globals::NEWTASK_FLAGS_OFF, tracefs::offset(&tf, "task", "task_newtask", "clone_flags")?),
        (globals::EXECVE_ARGV_OFF, tracefs::offset(&tf, "syscalls", "sys_enter_execve", "argv")?),
        (globals::EXECVEAT_ARGV_OFF, tracefs::offset(&tf, "syscalls", "sys_enter_execveat", "argv")?),
        (globals::SETPGID_PID_OFF, tracefs::offset(&tf, "syscalls", "sys_enter_setpgid", "pid")?),
        (globals::SETPGID_PGID_OFF, tracefs::offset(&tf, "syscalls", "sys_enter_setpgid", "pgid")?),
        (globals::SETPGID_RET_OFF, tracefs::offset(&tf, "syscalls", "sys_exit_setpgid", "ret")?),
        (globals::SETSID_RET_OFF, tracefs::offset(&tf, "syscalls", "sys_exit_setsid", "ret")?),
    ];
    let mut loader = EbpfLoader::new();
    for (name, off) in &offs {
        loader.override_global(name, off, true);
    }
    // sock:inet_sock_set_state: who opened each TCP connection (send-path backends).
    let mut state_offs = Vec::new();
    for (g, field) in [
        (globals::SS_SKADDR_OFF, "skaddr"),
        (globals::SS_OLDSTATE_OFF, "oldstate"),
        (globals::SS_NEWSTATE_OFF, "newstate"),
        (globals::SS_PROTOCOL_OFF, "protocol"),
    ] {
        if let Ok(off) = tracefs::offset(&tf, "sock", "inet_sock_set_state", field) {
            state_offs.push((g, off));
        }
    }
    for (name, off) in &state_offs {
        loader.override_global(name, off, true);
    }
    // struct sock_common / msghdr fields for the send-path probes, from BTF.
    // Without BTF those backends refuse to start (see need_btf). Parsed once:
    // vmlinux BTF is megabytes.
    let btf = btf::Btf::from_sys_fs().ok();
    let field_offs = match &btf {
        Some(b) => [
            send_path_offsets(b).unwrap_or_default(),
            send_capture_offsets(b),
            process_fact_offsets(b),
            recv_flags_offset(b),
            upper_layer_offsets(b),
        ]
        .concat(),
        None => group_exit_missing(),
    };
    for (name, off) in &field_offs {
        loader.override_global(name, off, true);
    }
    // The cgroup backend's owner-on-send hook: the tracepoint's `sk`, and where
    // the socket cookie lives in it.
    let sk_at = tracefs::offset(&tf, "sock", "sock_send_length", "sk").ok();
    let cookie_at = btf.as_ref().and_then(|b| b.field_offset("sock_common", "skc_cookie").ok());
    let send_owner = sk_at == Some(sensor_common::SEND_LEN_SK_OFF) && cookie_at.is_some();
    if let Some(cookie) = &cookie_at {
        loader.override_global(globals::SKC_COOKIE, cookie, true);
    }
    // Containment's checks exist in the programs only when a rule enforces.
    let respond_off: u32 = u32::from(!config.respond.enforcing());
    loader.override_global(globals::RESPOND_OFF, &respond_off, true);
    loader
        .map_max_entries(maps::FLOWS, config.kernel.flows_max)
        .map_max_entries(maps::SOCKS, config.kernel.sockets_max);
    let ebpf = loader.load(EBPF_OBJECT).context("loading the eBPF object")?;
    Ok(Opened { ebpf, send_owner, btf })
}

/// Field offsets the send-path probes read, from the running kernel's BTF.
pub fn send_path_offsets(b: &btf::Btf) -> Result<Vec<(&'static str, u32)>, String> {
    let f = |s: &str, field: &str| b.field_offset(s, field).map_err(|e| e.to_string());
    Ok(vec![
        (globals::SKC_DADDR, f("sock_common", "skc_daddr")?),
        (globals::SKC_RCV_SADDR, f("sock_common", "skc_rcv_saddr")?),
        (globals::SKC_DPORT, f("sock_common", "skc_dport")?),
        (globals::SKC_NUM, f("sock_common", "skc_num")?),
        (globals::SKC_FAMILY, f("sock_common", "skc_family")?),
        (globals::SKC_V6_DADDR, f("sock_common", "skc_v6_daddr")?),
        (globals::SKC_V6_RCV_SADDR, f("sock_common", "skc_v6_rcv_saddr")?),
        (globals::MSG_NAME, f("msghdr", "msg_name")?),
    ])
}

/// What tells a TCP socket with an upper-layer protocol (kTLS) apart, whose
/// sends bypass tcp_sendmsg and are counted at the socket layer instead;
/// without them those sends are not counted on the send-path backends (said
/// once; the cgroup backend counts them on the wire).
fn upper_layer_offsets(b: &btf::Btf) -> Vec<(&'static str, u32)> {
    let fields = [
        (globals::SOCKET_SK_OFF, "socket", "sk"),
        (globals::SK_PROTOCOL_OFF, "sock", "sk_protocol"),
        (globals::SK_TYPE_OFF, "sock", "sk_type"),
        (globals::ICSK_ULP_OPS_OFF, "inet_connection_sock", "icsk_ulp_ops"),
    ];
    all_or_none(b, &fields, "no BTF for socket.sk, sock.sk_protocol/sk_type or icsk_ulp_ops: kTLS sends are not counted on the send-path backends")
}

/// The offsets of `fields` (global, struct, field), or none of them when
/// one is missing (said once on stderr: `without` says what that costs).
fn all_or_none(b: &btf::Btf, fields: &[(&'static str, &str, &str)], without: &str) -> Vec<(&'static str, u32)> {
    let found: Option<Vec<_>> = fields.iter().map(|&(g, st, f)| b.field_offset(st, f).ok().map(|o| (g, o))).collect();
    found.unwrap_or_else(|| {
        eprintln!("sluice: {without}");
        Vec::new()
    })
}

/// Which tcp_recvmsg argument is `int flags` (its position moved in 5.19);
/// none found: receive bytes come from tcp_cleanup_rbuf alone, said once.
fn recv_flags_offset(b: &btf::Btf) -> Vec<(&'static str, u32)> {
    let at = b.params("tcp_recvmsg").and_then(|p| p.iter().position(|(n, t)| n == "flags" && t == "int"));
    match at {
        Some(i @ (3 | 4)) => vec![(globals::RECV_FLAGS_ARG, i as u32)],
        _ => {
            eprintln!("sluice: tcp_recvmsg has no `int flags` at argument 4 or 5 here; bytes in are summed from tcp_cleanup_rbuf (over-counts MSG_WAITALL and MSG_PEEK)");
            Vec::new()
        }
    }
}

/// Process-fact offsets: `task_struct.signal` and `signal_struct.live`, for
/// telling a process's exit (its last thread's) from its main thread's;
/// `task_struct.mm` and `mm_struct.arg_start/arg_end`, for argv where every
/// exec leaves it.
fn process_fact_offsets(b: &btf::Btf) -> Vec<(&'static str, u32)> {
    let mut offs = match (b.field_offset("task_struct", "signal"), b.field_offset("signal_struct", "live")) {
        (Ok(signal), Ok(live)) => vec![(globals::TASK_SIGNAL_OFF, signal), (globals::SIGNAL_LIVE_OFF, live)],
        _ => group_exit_missing(),
    };
    let f = |s: &str, field: &str| b.field_offset(s, field).ok();
    match (f("task_struct", "mm"), f("mm_struct", "arg_start"), f("mm_struct", "arg_end")) {
        (Some(mm), Some(start), Some(end)) => {
            offs.extend([(globals::TASK_MM_OFF, mm), (globals::MM_ARG_START_OFF, start), (globals::MM_ARG_END_OFF, end)])
        }
        _ => eprintln!("sluice: no BTF for mm_struct.arg_start: an exec whose argv the syscall hook missed has its arguments marked unknown"),
    }
    offs.extend(exe_walk_offsets(b));
    offs
}

/// What walking an executed file's path up to its mount tree's root reads.
fn exe_walk_offsets(b: &btf::Btf) -> Vec<(&'static str, u32)> {
    let fields = [
        (globals::MM_EXE_FILE_OFF, "mm_struct", "exe_file"),
        (globals::FILE_F_PATH_OFF, "file", "f_path"),
        (globals::PATH_MNT_OFF, "path", "mnt"),
        (globals::PATH_DENTRY_OFF, "path", "dentry"),
        (globals::DENTRY_PARENT_OFF, "dentry", "d_parent"),
        (globals::DENTRY_NAME_OFF, "dentry", "d_name"),
        (globals::QSTR_NAME_OFF, "qstr", "name"),
        (globals::VFSMOUNT_ROOT_OFF, "vfsmount", "mnt_root"),
        (globals::MOUNT_MNT_OFF, "mount", "mnt"),
        (globals::MOUNT_PARENT_OFF, "mount", "mnt_parent"),
        (globals::MOUNT_MOUNTPOINT_OFF, "mount", "mnt_mountpoint"),
    ];
    all_or_none(b, &fields, "no BTF for the dentry/mount walk: a program exec'd by a relative name is placed against its cwd as read later")
}

fn group_exit_missing() -> Vec<(&'static str, u32)> {
    eprintln!("sluice: no BTF for task_struct.signal/signal_struct.live: a process is taken as exited when its main thread exits (a worker that outlives it loses its name)");
    Vec::new()
}

/// Offsets to find a send's first user bytes (for naming destinations), or,
/// where this kernel's iov_iter is not understood, values that turn the copy
/// off: the byte counts never depend on these.
fn send_capture_offsets(b: &btf::Btf) -> Vec<(&'static str, u32)> {
    const OFF: u32 = 255;
    let f = |s: &str, field: &str| b.field_offset(s, field).ok();
    let ptr = f("iov_iter", "ubuf").or_else(|| f("iov_iter", "__iov")).or_else(|| f("iov_iter", "iov"));
    let fields = (f("msghdr", "msg_iter"), f("iov_iter", "iter_type"), f("iov_iter", "iov_offset"), f("iov_iter", "count"), ptr);
    let (Some(iter), Some(kind), Some(skip), Some(count), Some(ptr)) = fields else {
        eprintln!("sluice: this kernel's iov_iter is not understood; TLS/QUIC names come from the cgroup backend only");
        return vec![(globals::ITER_UBUF, OFF), (globals::ITER_IOVEC, OFF)];
    };
    let value = |n: &str| b.enum_value(n).and_then(|v| u32::try_from(v).ok()).unwrap_or(OFF);
    vec![
        (globals::MSG_ITER, iter),
        (globals::ITER_TYPE_OFF, kind),
        (globals::ITER_OFFSET_OFF, skip),
        (globals::ITER_COUNT_OFF, count),
        (globals::ITER_PTR_OFF, ptr),
        (globals::ITER_UBUF, value("ITER_UBUF")),
        (globals::ITER_IOVEC, value("ITER_IOVEC")),
    ]
}

/// Load and attach `backend`'s programs plus the process tracepoints.
pub fn attach(config: &Config, backend: Backend) -> Result<Sensor> {
    let Opened { mut ebpf, send_owner, btf } = open(config)?;
    let mut attached = Vec::new();
    let mut retprobes = Vec::new();
    for (prog, category, event) in PROCESS_TRACEPOINTS {
        let tp: &mut TracePoint = program(&mut ebpf, prog)?;
        tp.load().with_context(|| format!("loading tracepoint program {prog}"))?;
        tp.attach(category, event).with_context(|| format!("attaching tracepoint {category}:{event}"))?;
        attached.push(format!("tracepoint/{category}/{event}"));
    }
    match backend {
        Backend::Cgroup => {
            attach_cgroup(&mut ebpf, &mut attached)?;
            if config.kernel.owner_on_send {
                attach_send_owner(&mut ebpf, &mut attached, send_owner);
            }
        }
        Backend::Fentry => attach_fentry(&mut ebpf, &mut attached, btf.as_ref())?,
        Backend::Kprobe => retprobes = attach_kprobe(&mut ebpf, &mut attached, btf.as_ref())?,
    }
    if config.respond.enforcing() {
        attach_respond(&mut ebpf, &mut attached, backend, config.respond.lsm);
    }
    Ok(Sensor { ebpf, backend, attached, retprobes })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    p.try_into().with_context(|| format!("program {name} has an unexpected type"))
}

fn attach_cgroup(ebpf: &mut Ebpf, attached: &mut Vec<String>) -> Result<()> {
    let root = mounts::cgroup2_mount()?;
    let cg = File::open(&root).with_context(|| format!("opening cgroup v2 root {}", root.display()))?;
    let at = |kind: &str, name: &str| format!("{kind}/{name} on {}", root.display());
    let mode = cgroup_mode();
    load_cgroup(ebpf)?;
    for name in CGROUP_SOCK {
        let p: &mut CgroupSock = program(ebpf, name)?;
        p.attach(&cg, mode).with_context(|| format!("attaching {}", at("cgroup", name)))?;
        attached.push(at("cgroup", name));
    }
    for name in CGROUP_SOCK_ADDR {
        let p: &mut CgroupSockAddr = program(ebpf, name)?;
        p.attach(&cg, mode).with_context(|| format!("attaching {}", at("cgroup", name)))?;
        attached.push(at("cgroup", name));
    }
    for (name, kind) in CGROUP_SKB {
        let p: &mut CgroupSkb = program(ebpf, name)?;
        p.attach(&cg, kind, mode).with_context(|| format!("attaching {}", at("cgroup_skb", name)))?;
        attached.push(at("cgroup_skb", name));
    }
    Ok(())
}

/// Containment's hooks beyond the packet drop (which the egress programs
/// every backend attaches do), loaded only when a rule enforces: the
/// send-path backends' refusal of new sockets, and, where the kernel runs
/// the BPF LSM, the refusal of connects and sends. Each is optional: what is
/// missing is said once, and the drop still holds.
fn attach_respond(ebpf: &mut Ebpf, attached: &mut Vec<String>, backend: Backend, lsm: bool) {
    if backend != Backend::Cgroup {
        let r = (|| -> Result<String> {
            let root = mounts::cgroup2_mount()?;
            let cg = File::open(&root).with_context(|| format!("opening cgroup v2 root {}", root.display()))?;
            let p: &mut CgroupSock = program(ebpf, "deny_sock_create")?;
            p.load().context("loading cgroup/deny_sock_create")?;
            p.attach(&cg, cgroup_mode()).context("attaching cgroup/deny_sock_create")?;
            Ok(format!("cgroup/deny_sock_create on {}", root.display()))
        })();
        match r {
            Ok(a) => attached.push(a),
            Err(e) => eprintln!("sluice: containment will not refuse a contained process's new sockets: {e:#}"),
        }
    }
    if !lsm {
        return;
    }
    let r = load_lsm(ebpf).and_then(|()| {
        for (name, hook) in LSM {
            program::<Lsm>(ebpf, name)?.attach().with_context(|| format!("attaching lsm/{hook}"))?;
            attached.push(format!("lsm/{hook}"));
        }
        Ok(())
    });
    if let Err(e) = r {
        eprintln!("sluice: containment will not refuse a contained process's sends on sockets it already holds (its packets are still dropped): {e:#}");
    }
}

/// Load (the verifier runs) containment's BPF LSM programs, where the kernel
/// runs the BPF LSM or cannot say (/sys/kernel/security not mounted).
fn load_lsm(ebpf: &mut Ebpf) -> Result<()> {
    if preflight::bpf_lsm() == Some(false) {
        bail!("the kernel does not run the BPF LSM (\"bpf\" is not in /sys/kernel/security/lsm; boot with lsm=...,bpf)");
    }
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    for (name, hook) in LSM {
        program::<Lsm>(ebpf, name)?.load(hook, &btf).with_context(|| format!("loading lsm/{hook}"))?;
    }
    Ok(())
}

/// Owner-on-send for the cgroup backend (see `send_owner` in the eBPF crate).
/// Optional: before 6.3 there is no such tracepoint, and a socket shared across
/// fork/exec counts as the connecting process's; said once on stderr.
fn attach_send_owner(ebpf: &mut Ebpf, attached: &mut Vec<String>, ready: bool) {
    let r = (|| -> Result<()> {
        if !ready {
            bail!("this kernel has no sock:sock_send_length tracepoint (6.3+) with `sk` at offset 8, or no BTF for struct sock_common");
        }
        let tp: &mut TracePoint = program(ebpf, "send_owner")?;
        tp.load().context("loading tracepoint program send_owner")?;
        tp.attach("sock", "sock_send_length").context("attaching tracepoint sock:sock_send_length")?;
        Ok(())
    })();
    match r {
        Ok(()) => attached.push("tracepoint/sock/sock_send_length".into()),
        Err(e) => eprintln!(
            "sluice: a socket one process connects and another sends on (inherited across fork or exec) will count as the connecting process's: {e:#}"
        ),
    }
}

/// Coexist with systemd's and other agents' programs on the root. aya attaches
/// through BPF links on 5.7+, which are always multi-attach and reject any
/// flag (EINVAL); the legacy prog_attach path before 5.7 needs ALLOW_MULTI.
fn cgroup_mode() -> CgroupAttachMode {
    use aya::util::KernelVersion;
    if KernelVersion::current().map(|v| v >= KernelVersion::new(5, 7, 0)).unwrap_or(true) {
        CgroupAttachMode::Single
    } else {
        CgroupAttachMode::AllowMultiple
    }
}

/// Load (the verifier runs) every program of the cgroup backend, in hook order.
fn load_cgroup(ebpf: &mut Ebpf) -> Result<()> {
    for name in CGROUP_SOCK {
        program::<CgroupSock>(ebpf, name)?.load().with_context(|| format!("loading cgroup/{name}"))?;
    }
    for name in CGROUP_SOCK_ADDR {
        program::<CgroupSockAddr>(ebpf, name)?.load().with_context(|| format!("loading cgroup/{name}"))?;
    }
    for (name, _) in CGROUP_SKB {
        program::<CgroupSkb>(ebpf, name)?.load().with_context(|| format!("loading cgroup_skb/{name}"))?;
    }
    Ok(())
}

fn need_btf() -> Result<()> {
    btf::Btf::from_sys_fs().and_then(|b| send_path_offsets(&b)).map(|_| ()).map_err(|e| anyhow!("{e}: the send-path probes read socket fields at offsets taken from BTF"))
}

fn attach_state_tracepoint(ebpf: &mut Ebpf, attached: &mut Vec<String>) -> Result<()> {
    let tp: &mut TracePoint = program(ebpf, "sock_state")?;
    tp.load().context("loading tracepoint program sock_state")?;
    tp.attach("sock", "inet_sock_set_state").context("attaching tracepoint sock:inet_sock_set_state")?;
    attached.push("tracepoint/sock/inet_sock_set_state".into());
    Ok(())
}

/// Is `e` the kernel saying this function does not exist here?
/// Whether attaching failed because the kernel lacks the function: kprobes
/// say ENOENT, fentry's load (aya) "unknown BTF type" (tcp_sendpage since
/// 6.5, mptcp_sendmsg without MPTCP).
fn missing_function(e: &anyhow::Error) -> bool {
    let t = format!("{e:#}");
    t.contains("not found") || t.contains("No such file") || t.contains("ENOENT") || t.contains("unknown BTF type")
}

/// The send-path backends read raw arguments: refuse a kernel whose hooked
/// functions take or return other types than the probes read (`btf` is the
/// one `open` parsed; need_btf has already refused a kernel without it).
fn check_prototypes(btf: Option<&btf::Btf>) -> Result<()> {
    let btf = btf.ok_or_else(|| anyhow!("the kernel's BTF could not be parsed; the send-path backends need it"))?;
    prototypes::verify(btf).map(|_| ()).map_err(|e| anyhow!(e))
}

fn attach_fentry(ebpf: &mut Ebpf, attached: &mut Vec<String>, ours: Option<&btf::Btf>) -> Result<()> {
    need_btf()?;
    check_prototypes(ours)?;
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    for (name, func, optional) in FEXIT {
        let p: &mut FExit = program(ebpf, name)?;
        let r = p
            .load(func, &btf)
            .with_context(|| format!("loading fexit/{func}"))
            .and_then(|_| p.attach().map(|_| ()).with_context(|| format!("attaching fexit/{func}")));
        optional_attach(r, format!("fexit/{func}"), optional, attached)?;
    }
    for (name, func, optional) in FENTRY_CAPTURE.into_iter().chain(FENTRY_RECV) {
        let p: &mut FEntry = program(ebpf, name)?;
        let r = p
            .load(func, &btf)
            .with_context(|| format!("loading fentry/{func}"))
            .and_then(|_| p.attach().map(|_| ()).with_context(|| format!("attaching fentry/{func}")));
        optional_attach(r, format!("fentry/{func}"), optional, attached)?;
    }
    attach_state_tracepoint(ebpf, attached)?;
    attach_dns(ebpf, attached);
    Ok(())
}

/// Record an attach, or skip an optional hook whose function this kernel lacks.
fn optional_attach(r: Result<()>, what: String, optional: bool, attached: &mut Vec<String>) -> Result<()> {
    match r {
        Ok(()) => attached.push(what),
        Err(e) if optional && missing_function(&e) => eprintln!("sluice: {what}: the function is not in this kernel; skipped"),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// DNS answers on the send-path backends come from a cgroup_skb ingress
/// program too: without cgroup v2 names come from TLS/HTTP only (said once).
fn attach_dns(ebpf: &mut Ebpf, attached: &mut Vec<String>) {
    let r = (|| -> Result<String> {
        let root = mounts::cgroup2_mount()?;
        let cg = File::open(&root).with_context(|| format!("opening cgroup v2 root {}", root.display()))?;
        for (name, kind) in [("dns_ingress", CgroupSkbAttachType::Ingress), ("dns_egress", CgroupSkbAttachType::Egress)] {
            let p: &mut CgroupSkb = program(ebpf, name)?;
            p.load().with_context(|| format!("loading cgroup_skb/{name}"))?;
            p.attach(&cg, kind, cgroup_mode()).with_context(|| format!("attaching cgroup_skb/{name}"))?;
        }
        Ok(format!("cgroup_skb/dns_ingress and dns_egress on {}", root.display()))
    })();
    match r {
        Ok(a) => attached.push(a),
        Err(e) => eprintln!("sluice: DNS answers will not name destinations: {e:#}"),
    }
}

fn attach_kprobe(ebpf: &mut Ebpf, attached: &mut Vec<String>, ours: Option<&btf::Btf>) -> Result<Vec<(&'static str, Retprobe)>> {
    need_btf()?;
    check_prototypes(ours)?;
    for name in [
        "kp_send_entry",
        "kp_tcp_sendmsg_entry",
        "kp_udp_sendmsg_entry",
        "kp_udp4_sendmsg_entry",
        "kp_inet_send_entry",
        "krp_tcp_send",
        "krp_udp_send",
        "krp_inet_send",
        "kp_tcp_cleanup_rbuf",
        "kp_tcp_recvmsg_entry",
        "krp_tcp_recvmsg",
    ] {
        let p: &mut KProbe = program(ebpf, name)?;
        p.load().with_context(|| format!("loading {name}"))?;
    }
    let mut present = Vec::new();
    for (entry, _, func, optional) in KPROBES {
        let entry: &mut KProbe = program(ebpf, entry)?;
        let r = entry.attach(func, 0).map(|_| ()).with_context(|| format!("attaching kprobe/{func}"));
        if r.is_ok() {
            present.push(func);
        }
        optional_attach(r, format!("kprobe/{func}"), optional, attached)?;
    }
    let mut retprobes = Vec::new();
    let tracefs = tracefs::tracefs_root()?;
    for (_, name, func, _) in KPROBES {
        if !present.contains(&func) {
            continue;
        }
        let p: &mut KProbe = program(ebpf, name)?;
        // Room for every sender blocked in the call, and misses counted; where
        // tracefs will not take the event, the PMU's default, said once.
        match Retprobe::attach(p, func, retprobe::MAXACTIVE, tracefs.clone()) {
            Ok(r) => {
                retprobes.push((func, r));
                attached.push(format!("kretprobe/{func} (maxactive {})", retprobe::MAXACTIVE));
            }
            Err(e) => {
                eprintln!("sluice: {e:#}; kretprobe/{func} keeps the kernel's default of 2 per CPU in flight, and its misses are not counted");
                p.attach(func, 0).with_context(|| format!("attaching kretprobe/{func}"))?;
                attached.push(format!("kretprobe/{func}"));
            }
        }
    }
    let p: &mut KProbe = program(ebpf, "kp_tcp_cleanup_rbuf")?;
    p.attach("tcp_cleanup_rbuf", 0).context("attaching kprobe/tcp_cleanup_rbuf")?;
    attached.push("kprobe/tcp_cleanup_rbuf".into());
    attach_state_tracepoint(ebpf, attached)?;
    attach_dns(ebpf, attached);
    Ok(retprobes)
}

/// Containment's primitives on this kernel, for `sluice check`: each program
/// loaded (the verifier runs) as an enforcing rule loads it, and an abort
/// tried on a loopback connection of sluice's own. (what, verdict)
pub fn probe_respond(config: &Config) -> Vec<(&'static str, Result<(), String>)> {
    let mut on = config.clone();
    on.respond.rules.insert("sluice.exfil_tool_upload".into(), crate::config::RespondMode::Enforce);
    let text = |r: Result<()>| r.map_err(|e| format!("{e:#}"));
    let mut ebpf = match open(&on) {
        Ok(o) => o.ebpf,
        Err(e) => return vec![("containment", text(Err(e)))],
    };
    let drop = mounts::cgroup2_mount().map(|_| ()).and_then(|_| {
        program::<CgroupSkb>(&mut ebpf, "skb_egress")?.load().context("loading cgroup_skb/skb_egress")
    });
    let refuse = program::<CgroupSock>(&mut ebpf, "deny_sock_create").and_then(|p| p.load().context("loading cgroup/deny_sock_create"));
    if preflight::bpf_lsm().is_none() {
        eprintln!("sluice: /sys/kernel/security/lsm is not readable: whether the BPF LSM runs is not known");
    }
    let lsm = load_lsm(&mut ebpf);
    vec![
        ("drop a contained socket's packets (cgroup_skb egress)", text(drop)),
        ("refuse its new sockets (cgroup sock_create)", text(refuse)),
        ("refuse its connects and sends (BPF LSM)", text(lsm)),
        ("abort its TCP connections (sock_diag SOCK_DESTROY)", text(crate::respond::abort::probe())),
    ]
}

/// Can `backend` be used here? Loads its programs (the verifier runs); for
/// kprobes, whose loads succeed even where attaching cannot, one probe is
/// attached and dropped again.
pub fn probe(config: &Config, backend: Backend) -> Result<(), String> {
    let Opened { mut ebpf, btf: ours, .. } = open(config).map_err(|e| format!("{e:#}"))?;
    // Every backend runs the process tracepoints: "usable" must include them
    // (a verifier that rejects them rejects the whole sensor).
    for (prog, _, _) in PROCESS_TRACEPOINTS {
        program::<TracePoint>(&mut ebpf, prog)
            .and_then(|p| p.load().with_context(|| format!("loading tracepoint program {prog}")))
            .map_err(|e| format!("{e:#}"))?;
    }
    let refused = |e: anyhow::Error| {
        let t = format!("{e:#}");
        // SAFETY: geteuid takes no arguments and cannot fail.
        if (t.contains("Operation not permitted") || t.contains("EPERM")) && unsafe { libc::geteuid() } == 0 {
            format!("{t} (refused even to root: kernel lockdown or no ftrace/trampoline support)")
        } else if t.contains("devices/kprobe") {
            format!("{t} (this kernel has no kprobes: CONFIG_KPROBES is off)")
        } else {
            t
        }
    };
    match backend {
        Backend::Fentry => {
            return (|| -> Result<()> {
                need_btf()?;
                check_prototypes(ours.as_ref())?;
                let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
                let p: &mut FExit = program(&mut ebpf, "fexit_tcp_sendmsg")?;
                p.load("tcp_sendmsg", &btf).context("loading fexit/tcp_sendmsg")?;
                Ok(())
            })()
            .map_err(refused);
        }
        Backend::Kprobe => {
            return (|| -> Result<()> {
                need_btf()?;
                check_prototypes(ours.as_ref())?;
                let p: &mut KProbe = program(&mut ebpf, "kp_send_entry")?;
                p.load().context("loading kprobe program")?;
                let link = p.attach("tcp_sendmsg", 0).context("attaching a kprobe to tcp_sendmsg")?;
                p.detach(link).context("detaching the test kprobe")?;
                Ok(())
            })()
            .map_err(refused);
        }
        Backend::Cgroup => {}
    }
    load_cgroup(&mut ebpf).and_then(|_| mounts::cgroup2_mount().map(|_| ())).map_err(|e| match explain(&e) {
        Some(hint) => format!("{e:#} ({hint})"),
        None => format!("{e:#}"),
    })
}

/// True if `path` exists (for `sluice check`'s facts).
pub fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_optional_function_is_told_apart_from_a_real_failure() {
        // What aya says when fentry's target is not in the kernel's BTF (6.5+
        // has no tcp_sendpage), and what a kprobe on a missing symbol says.
        assert!(missing_function(&anyhow!("loading fexit/tcp_sendpage: unknown BTF type `tcp_sendpage`")));
        assert!(missing_function(&anyhow!("attaching kprobe/mptcp_sendmsg: No such file or directory (os error 2)")));
        assert!(!missing_function(&anyhow!("loading fexit/tcp_sendmsg: the BPF_PROG_LOAD syscall returned Permission denied (os error 13)")));
    }
}
