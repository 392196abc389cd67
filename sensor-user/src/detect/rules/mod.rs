//! One rule per file. Each opens with when it fires and why, and exposes its
//! `Rule` (id, name, severity, MITRE mapping) and a `check` over one flow's
//! `Subject` that returns a `Finding` (or nothing). `check_flow` runs them in a
//! fixed order, so replays are deterministic.

pub(crate) mod archive_then_upload;
mod bulk_upload;
pub(crate) mod dns_tunnel;
mod exfil_tool;
pub(crate) mod exfil_tool_exec;
mod first_storage;
mod quiet_program;
mod ratio_inversion;
mod slow_drip;
mod storage_upload;
mod suspicious_origin;
mod volume_anomaly;
mod watched_app;

pub use self::{
    archive_then_upload::RULE as ARCHIVE_THEN_UPLOAD, bulk_upload::RULE as BULK_UPLOAD, dns_tunnel::RULE as DNS_TUNNEL,
    exfil_tool::RULE as EXFIL_TOOL,
    exfil_tool_exec::RULE as EXFIL_TOOL_EXEC, first_storage::RULE as FIRST_STORAGE, quiet_program::RULE as QUIET_PROGRAM,
    ratio_inversion::RULE as RATIO_INVERSION, slow_drip::RULE as SLOW_DRIP, storage_upload::RULE as STORAGE_UPLOAD,
    suspicious_origin::RULE as SUSPICIOUS_ORIGIN, volume_anomaly::RULE as VOLUME_ANOMALY, watched_app::RULE as WATCHED_APP,
};
use super::{baseline::Score, subject::Subject, Detector};

/// A rule's identity and mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    pub name: &'static str,
    pub severity: &'static str,
    /// ECS event.severity (numeric): Elastic's risk-score scale.
    pub severity_num: u8,
    pub techniques: &'static [(&'static str, &'static str)],
}

pub const RULES: [Rule; 13] = [
    EXFIL_TOOL,
    DNS_TUNNEL,
    EXFIL_TOOL_EXEC,
    BULK_UPLOAD,
    STORAGE_UPLOAD,
    SUSPICIOUS_ORIGIN,
    WATCHED_APP,
    ARCHIVE_THEN_UPLOAD,
    VOLUME_ANOMALY,
    SLOW_DRIP,
    QUIET_PROGRAM,
    RATIO_INVERSION,
    FIRST_STORAGE,
];

/// What a rule found: the evidence an alert carries, and the dedup key
/// (`entity`, `dest`) it is suppressed under.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub rule: Rule,
    pub entity: String,
    pub dest: String,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub window_s: f64,
    pub baseline: Option<Score>,
    pub score: f64,
    pub reason: String,
    pub indicators: Vec<String>,
}

impl Finding {
    /// A threshold finding (no baseline, score 1) over the short window.
    pub fn over_floor(rule: Rule, entity: &str, totals: (u64, u64), s: &Subject, reason: String, indicators: Vec<String>) -> Self {
        Finding {
            rule,
            entity: entity.to_string(),
            dest: String::new(),
            bytes_out: totals.0,
            bytes_in: totals.1,
            window_s: s.short_s,
            baseline: None,
            score: 1.0,
            reason,
            indicators,
        }
    }
}

/// Severity of informational events (a first contact, a tool started): they
/// neither explain an upload nor count as having caught it.
pub(crate) const INFO: u8 = 21;

/// How many ancestors up a rule looks for the tool, watched app or archiver
/// that a process works for.
pub(crate) const TREE_DEPTH: usize = 3;

/// A rule's look at one flow.
pub(crate) type Check = fn(&mut Detector, &Subject) -> Option<Finding>;

/// Every flow rule, in a fixed order (each finding is raised before the next
/// rule looks, so `slow_drip` sees what an earlier rule caught this tick).
pub(crate) const CHECKS: [Check; 9] = [
    exfil_tool::check,
    storage_upload::check,
    first_storage::check,
    watched_app::check,
    archive_then_upload::check,
    volume_anomaly::check,
    ratio_inversion::check,
    quiet_program::check,
    slow_drip::check,
];

/// Rules for what no specific rule explains: they run, in order, only while no
/// rule above (or before them here) found anything above low severity for the
/// flow this tick, so one upload is one alert (the facts they would report
/// are already on the other alert: origin as indicators, totals as evidence).
pub(crate) const FALLBACKS: [Check; 2] = [bulk_upload::check, suspicious_origin::check];
