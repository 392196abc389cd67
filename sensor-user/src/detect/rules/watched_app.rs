//! Fires when an application with no business uploading (office suites,
//! viewers, archivers: MITRE T1567's "watched applications"), or a program it
//! started (an interpreter launched by a macro uploads for it), sends more
//! than the floor in the short window.

use super::{Finding, Rule, TREE_DEPTH};
use crate::detect::{
    catalog,
    reason::{human_bytes, where_to, who},
    subject::Subject,
    Detector,
};

pub const RULE: Rule = Rule {
    id: "sluice.watched_app_upload",
    name: "Application that should not upload is uploading",
    severity: "medium",
    severity_num: 47,
    techniques: &[("T1567", "Exfiltration Over Web Service"), ("T1048", "Exfiltration Over Alternative Protocol")],
};

pub fn check(d: &mut Detector, s: &Subject) -> Option<Finding> {
    let r = d.cfg.watched_app_upload.clone();
    if !r.enabled {
        return None;
    }
    let p = &s.f.process;
    let via = if catalog::is_watched(&p.executable) {
        None
    } else {
        Some(p.ancestors.iter().take(TREE_DEPTH).find(|(_, exe)| catalog::is_watched(exe)).map(|(pid, exe)| (*pid, exe.clone()))?)
    };
    let tree = via.as_ref().map(|(pid, _)| format!("watched-tree:{pid}"));
    let (entity, total, total_in) = d.subject_totals(tree, s);
    if total < r.floor {
        return None;
    }
    let reason = match &via {
        None => format!(
            "{} sent {} to {} in the last {} s; {} is not expected to upload",
            who(p),
            human_bytes(total),
            where_to(s.f),
            s.short_s,
            catalog::base(&p.executable)
        ),
        Some((pid, exe)) => format!(
            "{}, started by {} (pid {pid}), sent {} to {} in the last {} s; {} is not expected to upload",
            who(p),
            catalog::base(exe),
            human_bytes(total),
            where_to(s.f),
            s.short_s,
            catalog::base(exe)
        ),
    };
    Some(Finding::over_floor(RULE, &entity, (total, total_in), s, reason, s.indicators.clone()))
}
