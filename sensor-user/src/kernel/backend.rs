//! Probe backends and how `auto` chooses between them.

use std::fmt;

use crate::config::Probe;

/// Where bytes are counted. All backends share the exec/fork/exit tracepoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// fexit on tcp_sendmsg/udp_sendmsg and friends (BTF + BPF trampolines).
    Fentry,
    /// kprobes/kretprobes on the same functions (kernels without trampolines).
    Kprobe,
    /// cgroup_skb + cgroup sock/sock_addr hooks (locked-down kernels).
    Cgroup,
}

impl Backend {
    /// Preference order for `auto`: probes at the send call see the sending
    /// thread and the exact byte count; cgroup_skb sees packets.
    pub const PREFERENCE: [Backend; 3] = [Backend::Fentry, Backend::Kprobe, Backend::Cgroup];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Fentry => "fentry",
            Backend::Kprobe => "kprobe",
            Backend::Cgroup => "cgroup",
        }
    }

    pub fn from_probe(p: Probe) -> Option<Backend> {
        match p {
            Probe::Auto => None,
            Probe::Fentry => Some(Backend::Fentry),
            Probe::Kprobe => Some(Backend::Kprobe),
            Probe::Cgroup => Some(Backend::Cgroup),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome of trying one backend: usable, or why not.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub backend: Backend,
    pub usable: Result<(), String>,
}

/// The first usable backend in preference order, or every reason none is.
pub fn choose(verdicts: &[Verdict]) -> Result<Backend, String> {
    for b in Backend::PREFERENCE {
        if let Some(v) = verdicts.iter().find(|v| v.backend == b) {
            if v.usable.is_ok() {
                return Ok(b);
            }
        }
    }
    Err(verdicts
        .iter()
        .map(|v| format!("{}: {}", v.backend, v.usable.as_ref().err().map(String::as_str).unwrap_or("ok")))
        .collect::<Vec<_>>()
        .join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(b: Backend, ok: bool) -> Verdict {
        Verdict { backend: b, usable: if ok { Ok(()) } else { Err(format!("{b} refused")) } }
    }

    #[test]
    fn auto_prefers_fentry_then_kprobe_then_cgroup() {
        let all = [v(Backend::Cgroup, true), v(Backend::Kprobe, true), v(Backend::Fentry, true)];
        assert_eq!(choose(&all), Ok(Backend::Fentry));
        let no_fentry = [v(Backend::Fentry, false), v(Backend::Kprobe, true), v(Backend::Cgroup, true)];
        assert_eq!(choose(&no_fentry), Ok(Backend::Kprobe));
        let locked = [v(Backend::Fentry, false), v(Backend::Kprobe, false), v(Backend::Cgroup, true)];
        assert_eq!(choose(&locked), Ok(Backend::Cgroup));
    }

    #[test]
    fn nothing_usable_lists_every_reason() {
        let none = [v(Backend::Fentry, false), v(Backend::Kprobe, false), v(Backend::Cgroup, false)];
        let e = choose(&none).unwrap_err();
        assert!(e.contains("fentry refused") && e.contains("kprobe refused") && e.contains("cgroup refused"), "{e}");
    }
}
