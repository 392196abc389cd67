//! kretprobes with room for every blocked sender, and their misses counted.
//!
//! A kretprobe holds one instance per call in flight; when all are taken, a
//! return passes unseen and the kernel only counts it (`nmissed`). The
//! default is 2 per possible CPU (at least 10): 11 threads blocked in
//! tcp_sendmsg on full send buffers and the 11th's bytes are lost. aya
//! attaches kretprobes through the perf PMU, which has no `maxactive` and no
//! miss count before 6.7, so these are created through tracefs
//! (`r<maxactive>:group/event function`, Documentation/trace/kprobetrace.rst),
//! attached with `PERF_EVENT_IOC_SET_BPF`, and read from `kprobe_profile`.

use std::{
    fs::OpenOptions,
    io::Write,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};
use aya::programs::KProbe;

/// The kernel's ceiling for `maxactive` (KRETPROBE_MAXACTIVE_MAX).
pub const MAXACTIVE: u32 = 4096;

/// One kretprobe event made through tracefs, removed on drop.
pub struct Retprobe {
    tracefs: PathBuf,
    /// `sluice/<event>`, as written to kprobe_events.
    event: String,
    perf: Option<OwnedFd>,
    /// Misses already reported.
    reported: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// The prefix of `struct perf_event_attr` a tracepoint event needs; the rest
/// stays zero (the kernel accepts any size it knows, 64 bytes is VER0).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

impl Retprobe {
    /// Create `r<maxactive>` on `func` and run `prog` (loaded) at its return.
    pub fn attach(prog: &KProbe, func: &str, maxactive: u32, tracefs: PathBuf) -> Result<Retprobe> {
        let name = format!("sluice_{}_{}", std::process::id(), func.replace(['.', '-'], "_"));
        let mut probe = Retprobe { tracefs, event: format!("sluice/{name}"), perf: None, reported: 0 };
        probe.write_events(&format!("r{maxactive}:{} {func}\n", probe.event)).with_context(|| format!("creating kretprobe {func} (maxactive {maxactive})"))?;
        let id_path = probe.tracefs.join("events/sluice").join(&name).join("id");
        let id: u64 = std::fs::read_to_string(&id_path)
            .with_context(|| format!("reading {}", id_path.display()))?
            .trim()
            .parse()
            .context("parsing the kretprobe event id")?;
        let attr = PerfEventAttr { kind: PERF_TYPE_TRACEPOINT, size: std::mem::size_of::<PerfEventAttr>() as u32, config: id, sample_period: 1, wakeup_events: 1, ..Default::default() };
        // SAFETY: perf_event_open with an attr that lives across the call and
        // its true size; pid -1 and cpu 0 is how a BPF program is attached to a
        // trace event (it then runs on every CPU).
        let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, &attr as *const PerfEventAttr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC) };
        if fd < 0 {
            bail!("perf_event_open on kretprobe {func}: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a new fd this owns from here.
        let perf = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let prog_fd = prog.fd().context("the kretprobe program is not loaded")?;
        use std::os::fd::AsFd;
        // SAFETY: ioctls on the perf fd owned above, with the program's fd.
        let ok = unsafe {
            libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog_fd.as_fd().as_raw_fd()) == 0
                && libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) == 0
        };
        if !ok {
            bail!("attaching the BPF program to kretprobe {func}: {}", std::io::Error::last_os_error());
        }
        probe.perf = Some(perf);
        Ok(probe)
    }

    pub fn tracefs(&self) -> &std::path::Path {
        &self.tracefs
    }

    fn write_events(&self, line: &str) -> std::io::Result<()> {
        OpenOptions::new().append(true).open(self.tracefs.join("kprobe_events"))?.write_all(line.as_bytes())
    }

    /// The kernel's hits and misses of every kprobe event, read once a tick
    /// for all the probes (`newly_missed`).
    pub fn profile(tracefs: &std::path::Path) -> String {
        std::fs::read_to_string(tracefs.join("kprobe_profile")).unwrap_or_default()
    }

    /// Returns this probe missed (no free instance) since the last call,
    /// from `profile`'s text.
    pub fn newly_missed(&mut self, profile: &str) -> u64 {
        let total = missed_in(profile, &self.event).unwrap_or(self.reported);
        let new = total.saturating_sub(self.reported);
        self.reported = total;
        new
    }
}

/// `kprobe_profile` lines are `<event> <hits> <misses>`; the event is shown
/// with its group on newer kernels and without it on older ones.
fn missed_in(profile: &str, event: &str) -> Option<u64> {
    let bare = event.rsplit('/').next().unwrap_or(event);
    profile.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f[..] {
            [name, _hits, missed] if name == event || name == bare => missed.parse().ok(),
            _ => None,
        }
    })
}

impl Drop for Retprobe {
    fn drop(&mut self) {
        // The event can only be removed once nothing has it open.
        self.perf = None;
        let _ = self.write_events(&format!("-:{}\n", self.event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_are_read_with_or_without_the_group() {
        let old = "  sluice_7_tcp_sendmsg                          120           3\n  other 5 9\n";
        assert_eq!(missed_in(old, "sluice/sluice_7_tcp_sendmsg"), Some(3));
        let new = "  sluice/sluice_7_udp_sendmsg  4  0\n";
        assert_eq!(missed_in(new, "sluice/sluice_7_udp_sendmsg"), Some(0));
        assert_eq!(missed_in(new, "sluice/sluice_7_tcp_sendmsg"), None);
    }
}
