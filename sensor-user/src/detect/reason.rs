//! The words of an alert: sizes and the who/where phrases every reason uses.
//! Names and arguments come from the traffic's senders, so they are bounded
//! here (the output layer escapes them).

use super::{FlowObs, ProcInfo};

/// 1536 -> "1.5 KiB"
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Arguments shown at most, and characters of each.
const SHOWN_ARGS: usize = 8;
const SHOWN_ARG_CHARS: usize = 80;

/// A command line for a sentence: the first arguments, each cut short.
pub fn command_of(executable: &str, args: &[String]) -> String {
    if args.is_empty() {
        return executable.to_string();
    }
    let mut parts: Vec<String> = args
        .iter()
        .take(SHOWN_ARGS)
        .map(|a| if a.chars().count() > SHOWN_ARG_CHARS { format!("{}...", a.chars().take(SHOWN_ARG_CHARS).collect::<String>()) } else { a.clone() })
        .collect();
    if args.len() > SHOWN_ARGS {
        parts.push(format!("... ({} more)", args.len() - SHOWN_ARGS));
    }
    parts.join(" ")
}

pub fn command(p: &ProcInfo) -> String {
    command_of(&p.executable, &p.args)
}

/// Who sent: the job's command and, when another process of the job carried
/// the bytes, that carrier: "`python3 up.py` (pid 20) through its ssh
/// (pid 21, /usr/bin/ssh)", or "`curl -T f` (pid 7, /usr/bin/curl)".
pub fn who(p: &ProcInfo) -> String {
    if p.pid == 0 && p.executable.is_empty() {
        return "an unknown process (sockets older than sluice whose owner it could not find, all counted together)".into();
    }
    match p.job.as_ref().filter(|j| j.pid != p.pid) {
        Some(j) => format!(
            "`{}` (pid {}) through {} (pid {}, {})",
            command_of(&j.executable, &j.args),
            j.pid,
            p.name,
            p.pid,
            p.executable
        ),
        None => format!("{} (pid {}, {})", p.name, p.pid, p.executable),
    }
}

/// "mega.nz (1.2.3.4:443)" or "1.2.3.4:443"
pub fn where_to(f: &FlowObs) -> String {
    let to = match &f.domain {
        Some(d) => format!("{d} ({}:{})", f.remote_ip, f.remote_port),
        None => format!("{}:{}", f.remote_ip, f.remote_port),
    };
    match &f.via_proxy {
        Some(p) => format!("{to} through the local proxy {p}"),
        None => to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::JobInfo;

    #[test]
    fn who_names_the_job_and_the_carrier() {
        let mut p = ProcInfo { pid: 21, name: "ssh".into(), executable: "/usr/bin/ssh".into(), ..Default::default() };
        assert_eq!(who(&p), "ssh (pid 21, /usr/bin/ssh)");
        p.job = Some(JobInfo { pgid: 20, pid: 20, entity_id: "20-1".into(), executable: "/usr/bin/python3".into(), args: vec!["python3".into(), "up.py".into()] });
        assert_eq!(who(&p), "`python3 up.py` (pid 20) through ssh (pid 21, /usr/bin/ssh)");
        let long: Vec<String> = (0..20).map(|i| format!("{i}{}", "x".repeat(100))).collect();
        let c = command_of("/bin/x", &long);
        assert!(c.len() < 800 && c.ends_with("(12 more)"), "{c}");
    }
}
