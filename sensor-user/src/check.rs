//! `sluice check`: what this kernel offers, which backend `auto` would pick, and why.

use std::fmt::Write;

use crate::{
    config::Config,
    kernel::{
        backend::{self, Backend, Verdict},
        loader, mounts, tracefs,
    },
};

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// The report, as text (stdout), and the chosen backend if any.
pub fn report(config: &Config) -> (String, Option<Backend>) {
    let mut out = String::new();
    let yes = |b: bool| if b { "yes" } else { "no" };
    let release = read_trim("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into());
    let _ = writeln!(out, "kernel:            {release}");
    // SAFETY: geteuid takes no arguments and cannot fail.
    let _ = writeln!(out, "running as root:   {}", yes(unsafe { libc::geteuid() } == 0));
    let _ = writeln!(out, "BTF (vmlinux):     {}", yes(loader::exists("/sys/kernel/btf/vmlinux")));
    let lockdown = read_trim("/sys/kernel/security/lockdown").unwrap_or_else(|| "not reported (no securityfs lockdown file)".into());
    let _ = writeln!(out, "lockdown:          {lockdown}");
    let _ = writeln!(
        out,
        "kprobes:           {}",
        if loader::exists("/sys/bus/event_source/devices/kprobe") { "kprobe PMU present" } else { "no kprobe PMU (CONFIG_KPROBES off?)" }
    );
    let tf = tracefs::tracefs_root();
    let _ = writeln!(
        out,
        "tracefs:           {}",
        match &tf {
            Ok(p) => p.display().to_string(),
            Err(e) => format!("unavailable: {e:#}"),
        }
    );
    let _ = writeln!(
        out,
        "cgroup v2:         {}",
        match mounts::cgroup2_mount() {
            Ok(p) => p.display().to_string(),
            Err(e) => format!("{e:#}"),
        }
    );
    let _ = writeln!(
        out,
        "hook prototypes:   {}",
        match crate::kernel::btf::Btf::from_sys_fs() {
            Ok(b) => match crate::kernel::prototypes::verify(&b) {
                Ok(lines) => format!("match this kernel's BTF ({})", lines.join("; ")),
                Err(e) => format!("MISMATCH: {e}"),
            },
            Err(e) => format!("not checked: {e}"),
        }
    );
    let verdicts: Vec<Verdict> =
        Backend::PREFERENCE.iter().map(|&b| Verdict { backend: b, usable: loader::probe(config, b) }).collect();
    let _ = writeln!(out, "backends (auto tries them in this order):");
    for v in &verdicts {
        let _ = writeln!(
            out,
            "  {:<8} {}",
            v.backend.name(),
            match &v.usable {
                Ok(()) => "usable: programs load and pass the verifier".to_string(),
                Err(e) => format!("not usable: {e}"),
            }
        );
    }
    let _ = writeln!(out, "containment ([respond], opt-in), what this kernel offers:");
    for (what, verdict) in loader::probe_respond(config) {
        let _ = writeln!(out, "  {what}: {}", match verdict {
            Ok(()) => "yes".to_string(),
            Err(e) => format!("no: {e}"),
        });
    }
    match backend::choose(&verdicts) {
        Ok(b) => {
            let _ = writeln!(out, "auto picks:        {b}");
            (out, Some(b))
        }
        Err(why) => {
            let _ = writeln!(out, "auto picks:        nothing usable ({why})");
            (out, None)
        }
    }
}
