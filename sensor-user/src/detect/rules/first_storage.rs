//! An informational event the first time an executable sends to a
//! cloud-storage or file-sharing service: worth a look, not an incident.
//! Pairs are learned silently while the host warms up (the first long window),
//! so an install does not raise one event per program already syncing.

use super::{Finding, Rule};
use crate::{
    detect::{memory::MAX_BASELINES, reason::{where_to, who}, subject::Subject, Detector},
    services::is_upload_category,
};

pub const RULE: Rule = Rule {
    id: "sluice.first_storage_destination",
    name: "Program sends to a cloud-storage service for the first time",
    severity: "low",
    severity_num: 21,
    techniques: &[("T1567.002", "Exfiltration Over Web Service: Exfiltration to Cloud Storage")],
};

pub fn check(d: &mut Detector, s: &Subject) -> Option<Finding> {
    let svc = s.service.as_ref().filter(|svc| is_upload_category(&svc.category))?.name.clone();
    let f = s.f;
    let pair = format!("{}\u{0}{svc}", f.process.executable);
    if d.habits.storage_pairs.contains(&pair) || d.habits.storage_pairs.len() >= MAX_BASELINES {
        return None;
    }
    d.habits.storage_pairs.insert(pair);
    if !d.cfg.first_storage_destination || s.t - d.habits.observing_since < s.long_s {
        return None;
    }
    let reason = format!("{} sent data to {svc} ({}) for the first time since sluice began watching", who(&f.process), where_to(f));
    Some(Finding {
        rule: RULE,
        entity: s.id.clone(),
        dest: svc,
        bytes_out: f.bytes_out,
        bytes_in: f.bytes_in,
        window_s: s.window_s,
        baseline: None,
        score: 0.0,
        reason,
        indicators: s.indicators.clone(),
    })
}
