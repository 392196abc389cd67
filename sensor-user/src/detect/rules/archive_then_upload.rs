//! Fires when an archiver (tar, zip, 7z, gzip, split, gpg, ...) ran in the
//! same process tree shortly before an upload: collect, pack, send
//! (MITRE T1560.001 then T1567) is the shape of a deliberate exfiltration.

use super::{Finding, Rule, TREE_DEPTH};
use crate::detect::{
    reason::{human_bytes, where_to, who},
    subject::Subject,
    Detector,
};

pub const RULE: Rule = Rule {
    id: "sluice.archive_then_upload",
    name: "Archive created, then uploaded from the same process tree",
    severity: "high",
    severity_num: 73,
    techniques: &[("T1560.001", "Archive Collected Data: Archive via Utility"), ("T1567", "Exfiltration Over Web Service")],
};

pub fn check(d: &mut Detector, s: &Subject) -> Option<Finding> {
    let r = d.cfg.archive_then_upload.clone();
    if !r.enabled {
        return None;
    }
    let p = &s.f.process;
    let within = r.within.as_secs_f64();
    // Siblings in a pipeline, or children of the script that archived.
    let tree_pids: Vec<u32> =
        std::iter::once(p.ppid).chain(p.ancestors.iter().map(|a| a.0)).filter(|&p| p > 1).take(TREE_DEPTH).collect();
    let (tree, (at, archiver)) =
        tree_pids.iter().find_map(|pid| d.archives.get(pid).and_then(|q| q.back()).map(|a| (*pid, a.clone())))?;
    let tree_key = format!("archive-tree:{tree}");
    let (tree_out, tree_in) = d.short.bump(&tree_key, s.f, s.t, s.bucket, within);
    if tree_out < r.floor {
        return None;
    }
    let reason = format!(
        "{} sent {} to {} within {:.0} s of `{}` (pid {}) archiving in the same process tree (parent pid {})",
        who(p),
        human_bytes(tree_out),
        where_to(s.f),
        (s.t - at).max(0.0),
        archiver.args.join(" "),
        archiver.pid,
        tree
    );
    let mut ind = s.indicators.clone();
    ind.push(format!("archiver: {} (pid {})", archiver.args.join(" "), archiver.pid));
    let mut x = Finding::over_floor(RULE, &tree_key, (tree_out, tree_in), s, reason, ind);
    x.window_s = within;
    Some(x)
}
