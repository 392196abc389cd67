//! What `sluice top` shows, kept by the agent: per carrier process and
//! destination, the bytes of the last tick (the rate now) and of the window,
//! and the rules that alerted on that process or its job within the window.
//! Fed each tick with what the detector saw (so only bytes it judges: egress,
//! off-host), pure apart from that; the agent serves `snapshot` on its local
//! socket (`control`).

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::detect::{Alert, FlowObs, ProcInfo};

/// Rows kept at most (the smallest by window total go first).
const ROWS_MAX: usize = 4096;
/// Rows a snapshot carries at most (by window total).
const SNAPSHOT_ROWS: usize = 200;

/// One row of the live view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub pid: u32,
    /// The carrier: the process whose socket sent the bytes.
    pub process: String,
    /// The job's command (what a user, service or container started), when
    /// the carrier is not its own job.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub job: String,
    /// The destination's name, else its address.
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub remote: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Bytes per second over the last tick.
    pub rate: f64,
    /// Bytes sent within the window.
    pub window_bytes: u64,
    /// Rule ids that alerted on this process or its job within the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerted: Vec<String>,
}

/// What the agent's local socket answers to `top`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub backend: String,
    pub host: String,
    /// Unix time of the tick it describes.
    pub at: f64,
    pub tick_s: f64,
    pub window_s: f64,
    /// Kernel and agent drop counters since start (name, value): what a
    /// reader needs to trust the numbers.
    pub counters: Vec<(String, u64)>,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Key {
    pid: u32,
    start_ns: u64,
    destination: String,
    remote: String,
}

struct Entry {
    row: Row,
    job_key: String,
    /// (tick time, bytes) within the window.
    history: VecDeque<(f64, u64)>,
}

pub struct Table {
    window_s: f64,
    entries: HashMap<Key, Entry>,
    /// (time, rule id, job key, pid) of alerts within the window.
    alerts: VecDeque<(f64, String, String, u32)>,
}

impl Table {
    pub fn new(window_s: f64) -> Self {
        Self { window_s, entries: HashMap::new(), alerts: VecDeque::new() }
    }

    /// Fold one tick: `flows` as the detector saw them, `alerts` it raised,
    /// `service` the catalog's name for a domain.
    pub fn tick(&mut self, t: f64, tick_s: f64, flows: &[FlowObs], alerts: &[Alert], service: impl Fn(&str) -> Option<String>) {
        let mut now: HashMap<Key, u64> = HashMap::new();
        for f in flows.iter().filter(|f| f.bytes_out > 0) {
            let key = key_of(f);
            *now.entry(key.clone()).or_default() += f.bytes_out;
            if !self.entries.contains_key(&key) {
                let row = new_row(f, service(f.domain.as_deref().unwrap_or("")));
                self.entries.insert(key, Entry { row, job_key: f.process.job_key(), history: VecDeque::new() });
            }
        }
        for a in alerts {
            self.alerts.push_back((t, a.rule.id.to_string(), a.process.job_key(), a.process.pid));
        }
        let horizon = t - self.window_s;
        while self.alerts.front().is_some_and(|(at, ..)| *at <= horizon) {
            self.alerts.pop_front();
        }
        let alerts = &self.alerts;
        self.entries.retain(|k, e| {
            if let Some(b) = now.get(k) {
                e.history.push_back((t, *b));
            }
            while e.history.front().is_some_and(|(at, _)| *at <= horizon) {
                e.history.pop_front();
            }
            e.row.window_bytes = e.history.iter().map(|(_, b)| b).sum();
            e.row.rate = now.get(k).map_or(0.0, |b| *b as f64 / tick_s.max(1e-3));
            let mut rules: Vec<String> =
                alerts.iter().filter(|(_, _, job, pid)| *job == e.job_key || *pid == k.pid).map(|(_, r, ..)| r.clone()).collect();
            rules.sort_unstable();
            rules.dedup();
            e.row.alerted = rules;
            !e.history.is_empty()
        });
        if self.entries.len() > ROWS_MAX {
            let mut sizes: Vec<u64> = self.entries.values().map(|e| e.row.window_bytes).collect();
            sizes.sort_unstable_by(|a, b| b.cmp(a));
            let floor = sizes[ROWS_MAX - 1];
            self.entries.retain(|_, e| e.row.window_bytes >= floor);
        }
    }

    /// The rows with the most bytes in the window, largest first.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = self.entries.values().map(|e| e.row.clone()).collect();
        rows.sort_by(|a, b| b.window_bytes.cmp(&a.window_bytes).then(a.pid.cmp(&b.pid)));
        rows.truncate(SNAPSHOT_ROWS);
        rows
    }
}

fn key_of(f: &FlowObs) -> Key {
    Key {
        pid: f.process.pid,
        start_ns: f.process.start_ns,
        destination: f.domain.clone().unwrap_or_default(),
        remote: remote(f),
    }
}

fn remote(f: &FlowObs) -> String {
    match f.remote_ip {
        std::net::IpAddr::V6(ip) => format!("[{ip}]:{}", f.remote_port),
        ip => format!("{ip}:{}", f.remote_port),
    }
}

fn new_row(f: &FlowObs, service: Option<String>) -> Row {
    Row {
        pid: f.process.pid,
        process: process_name(&f.process),
        job: job_command(&f.process),
        destination: f.domain.clone().unwrap_or_else(|| f.remote_ip.to_string()),
        service,
        remote: remote(f),
        container: f.container.as_ref().map(|c| c.name.clone().unwrap_or_else(|| c.id.chars().take(12).collect())),
        rate: 0.0,
        window_bytes: 0,
        alerted: Vec::new(),
    }
}

fn process_name(p: &ProcInfo) -> String {
    if p.pid == 0 {
        return "(unknown process)".into();
    }
    p.name.clone()
}

/// The job's command when the carrier is not the job's own leader.
fn job_command(p: &ProcInfo) -> String {
    match &p.job {
        Some(j) if j.pid != p.pid => {
            let mut words = j.args.clone();
            if words.is_empty() {
                words.push(j.executable.clone());
            }
            crate::text::escape_control(&words.join(" "))
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::JobInfo;

    fn flow(pid: u32, name: &str, domain: Option<&str>, bytes: u64) -> FlowObs {
        let process = ProcInfo { pid, name: name.into(), executable: format!("/usr/bin/{name}"), start_ns: pid as u64, ..ProcInfo::default() };
        FlowObs {
            process,
            via_proxy: None,
            remote_ip: "10.0.0.9".parse().unwrap(),
            remote_port: 443,
            transport: "tcp".into(),
            direction: "egress".into(),
            scope: "private".into(),
            domain: domain.map(Into::into),
            domain_corroborated: false,
            cgroup: None,
            container: None,
            bytes_out: bytes,
            bytes_in: 0,
        }
    }

    #[test]
    fn rate_is_the_last_tick_and_the_total_spans_the_window() {
        let mut t = Table::new(60.0);
        let up = flow(7, "curl", Some("upload.example"), 2_000_000);
        t.tick(100.0, 2.0, &[up.clone()], &[], |d| (d == "upload.example").then(|| "Example Storage".into()));
        t.tick(102.0, 2.0, &[up.clone(), flow(8, "ssh", None, 10)], &[], |_| None);
        let rows = t.rows();
        assert_eq!(rows[0].process, "curl");
        assert_eq!((rows[0].rate, rows[0].window_bytes), (1_000_000.0, 4_000_000));
        assert_eq!(rows[0].service.as_deref(), Some("Example Storage"));
        assert_eq!((rows[1].destination.as_str(), rows[1].remote.as_str()), ("10.0.0.9", "10.0.0.9:443"));
        // Quiet for a tick: rate 0, total kept; past the window: gone.
        t.tick(104.0, 2.0, &[], &[], |_| None);
        assert_eq!((t.rows()[0].rate, t.rows()[0].window_bytes), (0.0, 4_000_000));
        t.tick(163.0, 2.0, &[], &[], |_| None);
        assert!(t.rows().is_empty());
    }

    #[test]
    fn a_job_alert_marks_its_carriers_rows() {
        let mut t = Table::new(60.0);
        let mut child = flow(9, "curl", None, 50_000_000);
        child.process.job = Some(JobInfo { pgid: 5, pid: 5, entity_id: "e".into(), executable: "/usr/bin/bash".into(), args: vec!["bash".into(), "backup.sh".into()] });
        let mut alert_proc = child.process.clone();
        alert_proc.pid = 5;
        let mut alert = crate::detect::test_alert(alert_proc);
        alert.t = 10.0;
        t.tick(10.0, 1.0, &[child, flow(11, "git", None, 5)], &[alert], |_| None);
        let rows = t.rows();
        assert_eq!((rows[0].job.as_str(), rows[0].alerted.clone()), ("bash backup.sh", vec!["sluice.exfil_tool_upload".to_string()]));
        assert!(rows[1].alerted.is_empty() && rows[1].job.is_empty());
        t.tick(71.0, 1.0, &[], &[], |_| None);
        assert!(t.rows().is_empty(), "the alert and the bytes left the window");
    }
}
