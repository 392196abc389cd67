//! Learned: fires when a program watched through its training period without
//! ever sending more than a trickle in a window (a viewer, an editor, a
//! daemon that never talks) starts uploading.

use super::{Finding, Rule};
use crate::detect::{
    catalog,
    reason::{human_bytes, where_to, who},
    subject::Subject,
    Detector,
};

pub const RULE: Rule = Rule {
    id: "sluice.quiet_program_upload",
    name: "Program that never used the network is uploading",
    severity: "medium",
    severity_num: 47,
    techniques: &[("T1567", "Exfiltration Over Web Service"), ("T1048", "Exfiltration Over Alternative Protocol")],
};

pub fn check(d: &mut Detector, s: &Subject) -> Option<Finding> {
    let r = d.cfg.quiet_program_upload.clone();
    if !r.enabled || s.id_out < r.floor {
        return None;
    }
    let p = &s.f.process;
    let h = d.habits.by_exe.get(&p.executable).copied()?;
    let watched_for = s.t - h.first_seen;
    if watched_for < r.training.as_secs_f64() || h.max_window > r.trickle {
        return None;
    }
    let reason = format!(
        "{} sent {} to {} in the last {} s; in {:.1} days of watching, {} never sent more than {} in a window",
        who(p),
        human_bytes(s.id_out),
        where_to(s.f),
        s.short_s,
        watched_for / 86_400.0,
        catalog::base(&p.executable),
        human_bytes(h.max_window)
    );
    d.spoil_windows(&[&s.id]);
    Some(Finding::over_floor(RULE, &s.id, (s.id_out, s.id_in), s, reason, s.indicators.clone()))
}
