//! Fires when a program whose sessions download (package managers and their
//! fetchers, wget without upload flags) sends many times what it receives:
//! a hijacked updater or a renamed uploader hiding behind a trusted name.

use super::{Finding, Rule};
use crate::detect::{
    catalog,
    reason::{human_bytes, where_to, who},
    subject::Subject,
    Detector,
};

pub const RULE: Rule = Rule {
    id: "sluice.ratio_inversion",
    name: "Download-heavy program sending far more than it receives",
    severity: "medium",
    severity_num: 47,
    techniques: &[("T1048", "Exfiltration Over Alternative Protocol"), ("T1567", "Exfiltration Over Web Service")],
};

pub fn check(d: &mut Detector, s: &Subject) -> Option<Finding> {
    let r = &d.cfg.ratio_inversion;
    let p = &s.f.process;
    if !r.enabled || s.kd_out < r.floor || !catalog::is_download_heavy(&p.executable, &p.args) {
        return None;
    }
    let kd_in = d.short.get(&s.key_dest).map(|e| e.inb.total()).unwrap_or(0);
    let ratio = s.kd_out as f64 / (kd_in.max(1)) as f64;
    if ratio < r.ratio {
        return None;
    }
    let reason = format!(
        "{} sent {} to {} and received {} in the last {} s (out/in {:.0}x); {} normally downloads",
        who(p),
        human_bytes(s.kd_out),
        where_to(s.f),
        human_bytes(kd_in),
        s.short_s,
        ratio,
        catalog::base(&p.executable)
    );
    let mut x = Finding::over_floor(RULE, &s.id, (s.kd_out, kd_in), s, reason, s.indicators.clone());
    x.dest = s.dest.clone();
    x.score = ratio;
    Some(x)
}
