//! Fires when a program sends a lot over hours (the long window) without any
//! other rule having caught it, and more than its own history explains: the
//! T1030 drip that stays under every per-window bar. It is judged against the
//! baseline's snapshot from before the window began (a drip must not train
//! its own bar), so a program whose volume is steady over its history is not
//! a drip. A program with no history from before the window is judged by the
//! floor alone if it first sent after sluice had been watching for
//! `NEW_AFTER`; one that was already sending when sluice was installed cannot
//! be told from a backup agent, and is not flagged until it has a history to
//! depart from.

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

/// With a history, the long-window total must exceed this multiple of what the
/// baseline predicted, before the window, for the span.
const DRIP_OVER_BASELINE: f64 = 3.0;
/// A program first sending this long after sluice began watching is new.
const NEW_AFTER: f64 = 600.0;

pub fn check(d: &mut Detector, s: &Subject) -> Option<Finding> {
    let r = &d.cfg.slow_drip;
    let (t, long_s) = (s.t, s.long_s);
    let caught = d.alerted_identity.get(&s.id).is_some_and(|&at| t - at < long_s);
    if !r.enabled || s.long_out < r.floor || caught {
        return None;
    }
    let min_samples = d.cfg.volume_anomaly.min_samples;
    let model = d.baselines.get(&s.id);
    let expected = model
        .filter(|m| m.samples >= min_samples)
        .and_then(|m| m.mean_before(t - long_s))
        .map(|mean| mean.exp_m1() * (long_s / s.short_s));
    let first_sent = model.map(|m| m.first_t).unwrap_or(t);
    let fire = match expected {
        Some(e) => s.long_out as f64 > DRIP_OVER_BASELINE * e,
        None => first_sent - d.habits.observing_since >= NEW_AFTER,
    };
    if !fire {
        return None;
    }
    let explained = match expected {
        Some(e) => format!("; before this span its baseline predicted {} for it", human_bytes(e as u64)),
        None => format!(
            "; it first sent {:.1} h after sluice began watching, so no history explains it",
            (first_sent - d.habits.observing_since) / 3600.0
        ),
    };
    let reason = format!(
        "{} sent {} to {} over the last {:.1} h without crossing any per-window bar (largest 5 min: {}){explained}; \
         a steady trickle that adds up to this much is how data leaves under per-minute thresholds",
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

#[cfg(test)]
mod tests {
    use crate::detect::{
        tests::{detector, flow, proc_},
        TickInput,
    };

    /// `hours` of 5 s ticks from one program; `bytes(i)` per tick. The alerts.
    fn replay(hours: u64, bytes: impl Fn(u64) -> u64) -> Vec<crate::detect::Alert> {
        let p = proc_(99, 1, "/usr/bin/node", &["node", "agent.js"]);
        let mut d = detector();
        (0..hours * 720)
            .flat_map(|i| d.tick(&TickInput { t: 5.0 * (i + 1) as f64, window_s: 5.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(&p, bytes(i))] }))
            .collect()
    }

    #[test]
    fn a_steady_heartbeat_since_install_is_not_a_drip() {
        // 50 KB every 5 s for 7 h (216 MB per 6 h window, over the floor).
        let alerts = replay(7, |_| 50_000);
        assert!(alerts.is_empty(), "{:?}", alerts.iter().map(|a| &a.reason).collect::<Vec<_>>());
    }

    #[test]
    fn a_program_that_triples_its_steady_volume_is_a_drip() {
        // 7 h at 50 KB / 5 s, then 7 h at 200 KB / 5 s: still under every per-window bar.
        let alerts = replay(14, |i| if i < 7 * 720 { 50_000 } else { 200_000 });
        let ids: Vec<_> = alerts.iter().map(|a| a.rule.id).collect();
        assert_eq!(ids, [super::RULE.id], "{:?}", alerts.iter().map(|a| &a.reason).collect::<Vec<_>>());
        assert!(alerts[0].reason.contains("before this span its baseline predicted"), "{}", alerts[0].reason);
    }
}
