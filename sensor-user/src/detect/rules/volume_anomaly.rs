//! Learned: fires when a window's upload is far above what this program (per
//! destination, else overall, else its executable, else the whole host while
//! its own keys are young) usually sends: z-score of ln(bytes) against an EWMA
//! baseline, over an absolute floor. An upload command line lowers the bar.

use super::{Finding, Rule};
use crate::detect::{
    baseline,
    reason::{human_bytes, where_to, who},
    subject::Subject,
    Detector, HOST_KEY,
};

pub const RULE: Rule = Rule {
    id: "sluice.volume_anomaly",
    name: "Upload volume far above this program's baseline",
    severity: "medium",
    severity_num: 47,
    techniques: &[("T1567", "Exfiltration Over Web Service"), ("T1048", "Exfiltration Over Alternative Protocol")],
};

pub fn check(d: &mut Detector, s: &Subject) -> Option<Finding> {
    let r = d.cfg.volume_anomaly.clone();
    if !r.enabled || s.kd_out < r.floor {
        return None;
    }
    let t = s.t;
    let mature = |m: &baseline::Model| m.samples >= r.min_samples && t - m.first_t >= r.min_age.as_secs_f64();
    let (m, level) = [(&s.key_dest, "destination"), (&s.id, "program"), (&s.key_exe, "executable")]
        .into_iter()
        .map(|(k, l)| (k.as_str(), l))
        .chain([(HOST_KEY, "host")])
        .find_map(|(k, l)| d.baselines.get(k).filter(|m| mature(m)).map(|m| (*m, l)))?;
    let sc = m.score(s.kd_out, t, &d.params);
    // A command line that public rules flag as an upload (curl -T, wget
    // --post-file, rclone copy ...) counts as evidence: it raises the score
    // and so lowers the bar.
    let bonus = if s.indicators.is_empty() { 0.0 } else { r.cmdline_bonus };
    if sc.z + bonus < r.sigma {
        return None;
    }
    let reason = format!(
        "{} sent {} to {} in the last {} s; its {} baseline is {} +/- {} per {} s ({} samples), z = {:.1}",
        who(&s.f.process),
        human_bytes(s.kd_out),
        where_to(s.f),
        s.short_s,
        level,
        human_bytes(sc.mean_bytes as u64),
        human_bytes(sc.stddev_bytes.max(0.0) as u64),
        s.short_s,
        sc.samples,
        sc.z
    );
    // Never train on a window that alerted (no poisoning).
    d.spoil_windows(&[&s.id, &s.key_dest, &s.key_exe, HOST_KEY]);
    Some(Finding {
        rule: RULE,
        entity: s.id.clone(),
        dest: s.dest.clone(),
        bytes_out: s.kd_out,
        bytes_in: s.id_in,
        window_s: s.short_s,
        baseline: Some(sc),
        score: sc.z + bonus,
        reason,
        indicators: s.indicators.clone(),
    })
}
