//! The words of an alert: sizes and the who/where phrases every reason uses.

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

/// "curl (pid 7, /usr/bin/curl)"
pub fn who(p: &ProcInfo) -> String {
    format!("{} (pid {}, {})", p.name, p.pid, p.executable)
}

/// "mega.nz (1.2.3.4:443)" or "1.2.3.4:443"
pub fn where_to(f: &FlowObs) -> String {
    match &f.domain {
        Some(d) => format!("{d} ({}:{})", f.remote_ip, f.remote_port),
        None => format!("{}:{}", f.remote_ip, f.remote_port),
    }
}
