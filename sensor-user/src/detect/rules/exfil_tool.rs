//! Fires when a Mega client or bulk-sync tool (by executable or argv[0], or a
//! helper it started), or anything sending to a service the catalog marks as
//! an exfiltration tool's, moves more than the floor in the short window.
//! These tools are how ransomware crews take data (Splunk "Mega Utility
//! Execution", Netography on Mega): their upload is the event, whatever the
//! program calls itself.

use super::{Finding, Rule, TREE_DEPTH};
use crate::detect::{
    catalog,
    reason::{human_bytes, where_to, who},
    subject::Subject,
    Detector, MAX_PINNED,
};

pub const RULE: Rule = Rule {
    id: "sluice.exfil_tool_upload",
    name: "Mega client or bulk-sync tool uploading",
    severity: "high",
    severity_num: 73,
    techniques: &[("T1567.002", "Exfiltration Over Web Service: Exfiltration to Cloud Storage")],
};

/// How the flow is tied to a tool: (product, the ancestor that is the tool, the
/// service it was known by when caught by destination).
type Tool = (String, Option<(u32, String)>, Option<String>);

fn tool_of(s: &Subject) -> Option<Tool> {
    let p = &s.f.process;
    match catalog::exfil_tool(&p.executable, &p.args) {
        Some(product) => Some((product, None)),
        None => p
            .ancestors
            .iter()
            .take(TREE_DEPTH)
            .find_map(|(pid, exe)| catalog::exfil_tool(exe, &[]).map(|pr| (pr, Some((*pid, exe.clone()))))),
    }
    // Whatever the program calls itself, sending to Mega is using Mega.
    .map(|(pr, via)| (pr.to_string(), via, None))
    .or_else(|| s.service.as_ref().filter(|svc| svc.exfil_tool).map(|svc| (svc.name.clone(), None, Some(svc.name.clone()))))
}

pub fn check(d: &mut Detector, s: &Subject) -> Option<Finding> {
    let r = d.cfg.exfil_tool_upload.clone();
    if !r.enabled {
        return None;
    }
    let (product, via, by_dest) = tool_of(s)?;
    let p = &s.f.process;
    let tree = match (&via, &by_dest) {
        (Some((pid, _)), _) => Some(format!("tool-tree:{pid}")),
        // Caught by destination: everything one parent's children send to that
        // service counts together, so an upload split across short-lived
        // helpers with different command lines still adds up.
        (None, Some(svc)) if p.ppid > 1 => Some(format!("service-tree:{}|{svc}", p.ppid)),
        _ => None,
    };
    let by_tree = d.subject_totals(tree, s);
    // A process that crossed the floor by itself is its own alert (siblings
    // each uploading a lot are not one event); the parent's sum is for the
    // ones that split below it.
    let (entity, total, total_in) = if via.is_none() && s.id_out >= r.floor { (s.id.clone(), s.id_out, s.id_in) } else { by_tree };
    if total < r.floor {
        return None;
    }
    // Never let a table flood evict what we know of these tools.
    if d.baselines.pinned.len() < MAX_PINNED {
        d.baselines.pinned.insert(s.id.clone());
        d.baselines.pinned.insert(s.key_dest.clone());
    }
    // The rule in plain words: what the tool is for, and that past the floor
    // its use is a bulk transfer off the host.
    let floor = human_bytes(r.floor);
    let why = match (&via, &by_dest) {
        (_, Some(svc)) => format!(
            "that name belongs to {svc}'s storage service, so this is an upload to {svc} whatever the program calls itself, \
             and more than {floor} of it is a bulk transfer of data off this host"
        ),
        (Some((pid, exe)), _) => format!(
            "it was started by {} (pid {pid}), which is {product}, a client whose job is pushing files to cloud storage; \
             more than {floor} from its helpers is a bulk transfer off this host, the way ransomware crews take data",
            catalog::base(exe)
        ),
        (None, None) => format!(
            "{} is {product}, a client whose job is pushing files to cloud storage; more than {floor} through it is a bulk \
             transfer off this host, the way ransomware crews take data",
            catalog::base(&p.executable)
        ),
    };
    let mut reason = format!("{} sent {} to {} in the last {} s; {why}", who(p), human_bytes(total), where_to(s.f), s.short_s);
    let mut ind = s.indicators.clone();
    ind.push(format!("tool: {product}"));
    // The MEGAcmd server uploads on behalf of a client command of the same
    // user: name the latest one.
    let b = catalog::base(&p.executable);
    if b.starts_with("mega-cmd-server") || b == "megacmdserver" {
        if let Some((_, c)) = d.mega_clients.iter().rev().find(|(_, c)| c.uid == p.uid) {
            reason.push_str(&format!("; requested by `{}` (pid {})", c.args.join(" "), c.pid));
            ind.push(format!("requested by: {} (pid {})", c.args.join(" "), c.pid));
        }
    }
    Some(Finding::over_floor(RULE, &entity, (total, total_in), s, reason, ind))
}
