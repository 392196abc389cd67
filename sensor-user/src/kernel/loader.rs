//! Loading the eBPF object and attaching one backend's programs.

use std::{fs::File, path::Path};

use anyhow::{anyhow, Context, Result};
use aya::{
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use sensor_common::{globals, maps};

use super::{backend::Backend, mounts, privileges, tracefs, EBPF_OBJECT};
use crate::config::Config;

/// Process-lifecycle tracepoints, attached on every backend: (program, category, event).
const PROCESS_TRACEPOINTS: [(&str, &str, &str); 7] = [
    ("sys_enter_execve", "syscalls", "sys_enter_execve"),
    ("sys_enter_execveat", "syscalls", "sys_enter_execveat"),
    ("sys_exit_execve", "syscalls", "sys_exit_execve"),
    ("sys_exit_execveat", "syscalls", "sys_exit_execveat"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("task_newtask", "task", "task_newtask"),
    ("sched_process_exit", "sched", "sched_process_exit"),
];

/// cgroup sock hooks (owner at create/bind, retirement at release), then the
/// sock_addr hooks (owner at connect/sendmsg), then the packet counters: owners
/// are in place before the first packet is counted.
const CGROUP_SOCK: [&str; 4] = ["sock_create", "post_bind4", "post_bind6", "sock_release"];
const CGROUP_SOCK_ADDR: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
const CGROUP_SKB: [(&str, CgroupSkbAttachType); 2] =
    [("skb_egress", CgroupSkbAttachType::Egress), ("skb_ingress", CgroupSkbAttachType::Ingress)];

/// The loaded, attached sensor. Dropping it detaches every program.
pub struct Sensor {
    pub ebpf: Ebpf,
    pub backend: Backend,
    pub attached: Vec<String>,
}

/// Kernel memory for maps was charged to RLIMIT_MEMLOCK before 5.11.
fn raise_memlock() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // Best effort: on 5.11+ it is not needed, and a failure shows up at map creation.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// Explain a load/attach failure in terms a user can act on.
pub fn explain(err: &anyhow::Error) -> Option<&'static str> {
    let text = format!("{err:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        Some("sluice needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN + CAP_SYS_RESOURCE (CAP_SYS_ADMIN on kernels before 5.8)")
    } else {
        None
    }
}

/// Open the object with the running kernel's tracepoint offsets patched in.
pub fn open(config: &Config) -> Result<Ebpf> {
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
    ];
    let mut loader = EbpfLoader::new();
    for (name, off) in &offs {
        loader.override_global(name, off, true);
    }
    loader
        .map_max_entries(maps::FLOWS, config.kernel.flows_max)
        .map_max_entries(maps::SOCKS, config.kernel.sockets_max);
    loader.load(EBPF_OBJECT).context("loading the eBPF object")
}

/// Load and attach `backend`'s programs plus the process tracepoints.
pub fn attach(config: &Config, backend: Backend) -> Result<Sensor> {
    if !backend.built() {
        return Err(anyhow!(
            "the {backend} backend is not in this build yet (only cgroup is); use --probe cgroup or auto"
        ));
    }
    let mut ebpf = open(config)?;
    let mut attached = Vec::new();
    for (prog, category, event) in PROCESS_TRACEPOINTS {
        let tp: &mut TracePoint = program(&mut ebpf, prog)?;
        tp.load().with_context(|| format!("loading tracepoint program {prog}"))?;
        tp.attach(category, event).with_context(|| format!("attaching tracepoint {category}:{event}"))?;
        attached.push(format!("tracepoint/{category}/{event}"));
    }
    match backend {
        Backend::Cgroup => attach_cgroup(&mut ebpf, &mut attached)?,
        Backend::Fentry | Backend::Kprobe => unreachable!("checked by Backend::built"),
    }
    Ok(Sensor { ebpf, backend, attached })
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
    // Coexist with systemd's and other agents' programs on the root. aya attaches
    // through BPF links on 5.7+, which are always multi-attach and reject any
    // flag (EINVAL); the legacy prog_attach path before 5.7 needs ALLOW_MULTI.
    use aya::util::KernelVersion;
    let links = KernelVersion::current().map(|v| v >= KernelVersion::new(5, 7, 0)).unwrap_or(true);
    let mode = if links {
        CgroupAttachMode::Single
    } else {
        CgroupAttachMode::AllowMultiple
    };
    for name in CGROUP_SOCK {
        let p: &mut CgroupSock = program(ebpf, name)?;
        p.load().with_context(|| format!("loading cgroup/{name}"))?;
        p.attach(&cg, mode).with_context(|| format!("attaching {}", at("cgroup", name)))?;
        attached.push(at("cgroup", name));
    }
    for name in CGROUP_SOCK_ADDR {
        let p: &mut CgroupSockAddr = program(ebpf, name)?;
        p.load().with_context(|| format!("loading cgroup/{name}"))?;
        p.attach(&cg, mode).with_context(|| format!("attaching {}", at("cgroup", name)))?;
        attached.push(at("cgroup", name));
    }
    for (name, kind) in CGROUP_SKB {
        let p: &mut CgroupSkb = program(ebpf, name)?;
        p.load().with_context(|| format!("loading cgroup_skb/{name}"))?;
        p.attach(&cg, kind, mode).with_context(|| format!("attaching {}", at("cgroup_skb", name)))?;
        attached.push(at("cgroup_skb", name));
    }
    Ok(())
}

/// Can `backend` be used here? Loads (the verifier runs) but attaches nothing.
pub fn probe(config: &Config, backend: Backend) -> Result<(), String> {
    if !backend.built() {
        return Err("not in this build yet (the tcp_sendmsg backends are the next milestone)".into());
    }
    let mut ebpf = open(config).map_err(|e| format!("{e:#}"))?;
    let load = |ebpf: &mut Ebpf| -> Result<()> {
        for name in CGROUP_SOCK {
            program::<CgroupSock>(ebpf, name)?.load().with_context(|| format!("loading cgroup/{name}"))?;
        }
        for name in CGROUP_SOCK_ADDR {
            program::<CgroupSockAddr>(ebpf, name)?.load().with_context(|| format!("loading cgroup/{name}"))?;
        }
        for (name, _) in CGROUP_SKB {
            program::<CgroupSkb>(ebpf, name)?.load().with_context(|| format!("loading cgroup_skb/{name}"))?;
        }
        mounts::cgroup2_mount()?;
        Ok(())
    };
    load(&mut ebpf).map_err(|e| match explain(&e) {
        Some(hint) => format!("{e:#} ({hint})"),
        None => format!("{e:#}"),
    })
}

/// True if `path` exists (for `sluice check`'s facts).
pub fn exists(path: &str) -> bool {
    Path::new(path).exists()
}
