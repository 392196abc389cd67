//! Fires when a program sends a lot over hours (the long window) without any
//! other rule having caught it, and more than its own baseline explains: the
//! T1030 drip that stays under every per-window bar. A baseline learned
//! entirely inside the window may have been learned from the drip itself, so
//! only history older than the window counts; without one, the floor decides,
//! once sluice has watched this host for a whole window (else every steady
//! uploader would alert at install).

use super::{Finding, Rule};
use crate::detect::{
    reason::{human_bytes, where_to, who},
    subject::Subject,
    Detector,
};

pub const RULE: Rule = Rule {
    id: "sluice.slow_drip",
    name: "Sustained upload over hours under the per-window bar",
    severity: "medium",
    severity_num: 47,
    techniques: &[("T1030", "Data Transfer Size Limits")],
};

/// With a mature baseline, the long-window total must exceed this multiple of
/// what the baseline predicts for the span.
const DRIP_OVER_BASELINE: f64 = 3.0;

pub fn check(d: &mut Detector, s: &Subject) -> Option<Finding> {
    let r = &d.cfg.slow_drip;
    let (t, long_s) = (s.t, s.long_s);
    let caught = d.alerted_identity.get(&s.id).is_some_and(|&at| t - at < long_s);
    if !r.enabled || s.long_out < r.floor || caught {
        return None;
    }
    let warmed_up = t - d.habits.observing_since >= long_s;
    let a = &d.cfg.volume_anomaly;
    let expected = d
        .baselines
        .get(&s.id)
        .filter(|m| m.samples >= a.min_samples && m.first_t <= t - long_s)
        .map(|m| m.mean.exp_m1() * (long_s / s.short_s));
    let fire = match expected {
        Some(e) => s.long_out as f64 > DRIP_OVER_BASELINE * e,
        None => warmed_up,
    };
    if !fire {
        return None;
    }
    let explained = match expected {
        Some(e) => format!("; its baseline predicts {} over that span", human_bytes(e as u64)),
        None => String::new(),
    };
    let reason = format!(
        "{} sent {} to {} over the last {:.1} h without crossing any per-window bar (largest 5 min: {}){explained}",
        who(&s.f.process),
        human_bytes(s.long_out),
        where_to(s.f),
        long_s / 3600.0,
        human_bytes(d.long.get(&s.id).map(|e| e.out.peak_bucket).unwrap_or(0))
    );
    let mut x = Finding::over_floor(RULE, &s.id, (s.long_out, 0), s, reason, s.indicators.clone());
    x.window_s = long_s;
    Some(x)
}
