//! `--format ocsf`: the same records as OCSF events (schema 1.x, checked in
//! the tests against the schema's class definitions): a flow record as
//! Network Activity (class 4001, activity Traffic), an alert as a Detection
//! Finding (class 2004), with the rule, its MITRE ATT&CK mapping, the
//! evidence, and the baseline as an anomaly analysis. What OCSF has no
//! attribute for stays under `unmapped.sluice`, as in the ECS records.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::{
    detect::{Alert, ProcInfo},
    flows::{self, FlowRecord},
    naming::NameSource,
    output::{Context, Who},
    process_table::Process,
};

/// The OCSF schema release the records are checked against (`tests/ocsf/`).
pub const OCSF_VERSION: &str = "1.9.0-dev";

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn metadata(ctx: &Context, log_name: &str) -> Value {
    let mut m = json!({
        "version": OCSF_VERSION,
        "product": { "name": "sluice", "vendor_name": "sluice", "version": env!("CARGO_PKG_VERSION") },
        "log_name": log_name,
    });
    if !ctx.agent_id.is_empty() {
        m["product"]["uid"] = json!(ctx.agent_id);
    }
    m
}

/// The host (OCSF's host profile `device`; type Unknown: sluice does not
/// tell servers from desktops).
fn device(ctx: &Context) -> Value {
    json!({ "hostname": ctx.host_name, "type_id": 0, "type": "Unknown" })
}

fn file(path: &str) -> Option<Value> {
    let name = path.rsplit('/').next().filter(|n| !n.is_empty())?;
    Some(json!({ "path": path, "name": name, "type_id": 1, "type": "Regular File" }))
}

fn user(uid: u32, name: Option<&str>) -> Value {
    let mut u = json!({ "uid": uid.to_string() });
    if let Some(n) = name {
        u["name"] = json!(n);
    }
    u
}

/// An OCSF `process` from what the table knows.
fn process(pid: u32, p: Option<&Process>, parent: Option<&Process>, user_name: Option<&str>) -> Value {
    let mut v = json!({ "pid": pid });
    if let Some(p) = p {
        v["name"] = json!(p.name);
        v["uid"] = json!(p.entity_id());
        v["user"] = user(p.uid, user_name);
        if !p.args.is_empty() {
            v["cmd_line"] = json!(p.args.join(" "));
        }
        if let Some(f) = file(&p.executable) {
            v["file"] = f;
        }
        if let Some(q) = parent.filter(|q| q.pid == p.ppid) {
            v["parent_process"] = process(q.pid, Some(q), None, None);
        } else if p.ppid != 0 {
            v["parent_process"] = json!({ "pid": p.ppid });
        }
    }
    v
}

fn direction(d: u8) -> (u8, &'static str) {
    match flows::direction(d) {
        "egress" => (2, "Outbound"),
        "ingress" => (1, "Inbound"),
        _ => (0, "Unknown"),
    }
}

/// A flow record as Network Activity / Traffic.
pub fn flow(ctx: &Context, at: SystemTime, window: Duration, r: &FlowRecord, who: Who) -> Value {
    let ecs = crate::output::flow_json(ctx, at, window, r, who);
    let vol = &r.volume;
    let (dir_id, dir) = direction(r.owner.direction);
    let mut dst = json!({ "ip": r.remote_ip.to_string(), "port": r.remote_port });
    if let Some(d) = &r.destination.domain {
        dst["domain"] = json!(d);
        dst["hostname"] = json!(d);
    }
    let mut v = json!({
        "class_uid": 4001, "class_name": "Network Activity",
        "category_uid": 4, "category_name": "Network Activity",
        "activity_id": 6, "activity_name": "Traffic",
        "type_uid": 400106, "type_name": "Network Activity: Traffic",
        "severity_id": 1, "severity": "Informational",
        "time": ms(at),
        "start_time": ms(at.checked_sub(window).unwrap_or(at)),
        "end_time": ms(at),
        "metadata": metadata(ctx, "flow"),
        "device": device(ctx),
        "src_endpoint": { "ip": r.local_ip.to_string(), "port": r.local_port },
        "dst_endpoint": dst,
        "traffic": {
            "bytes_out": vol.bytes_out, "bytes_in": vol.bytes_in, "bytes": vol.bytes_out + vol.bytes_in,
            "packets_out": vol.packets_out, "packets_in": vol.packets_in, "packets": vol.packets_out + vol.packets_in,
        },
        "connection_info": {
            "protocol_num": r.protocol, "protocol_name": flows::transport(r.protocol),
            "protocol_ver_id": if r.remote_ip.is_ipv4() { 4 } else { 6 },
            "direction_id": dir_id, "direction": dir,
        },
        "actor": { "process": process(r.owner.pid, who.process, who.parent, who.user_name), "user": user(r.owner.uid, who.user_name) },
        "unmapped": { "sluice": ecs["sluice"].clone() },
    });
    if let Some(id) = ecs["network"]["community_id"].as_str() {
        v["connection_info"]["community_uid"] = json!(id);
    }
    if let (Some(name), Some(NameSource::TlsSni)) = (&r.destination.domain, r.destination.source) {
        v["unmapped"]["tls_sni"] = json!(name);
    }
    // The container and pod as ECS names them (OCSF's container profile
    // is not used yet).
    for k in ["container", "orchestrator"] {
        if let Some(x) = ecs.get(k) {
            v["unmapped"][k] = x.clone();
        }
    }
    v
}

/// An alert's process (the detector's view of it).
fn alert_process(p: &ProcInfo) -> Value {
    let mut v = json!({ "pid": p.pid, "name": p.name, "uid": p.entity_id, "user": user(p.uid, p.user_name.as_deref()) });
    if !p.args.is_empty() {
        v["cmd_line"] = json!(p.args.join(" "));
    }
    if let Some(f) = file(&p.executable) {
        v["file"] = f;
    }
    let mut parent = json!({ "pid": p.ppid });
    if !p.parent_name.is_empty() {
        parent["name"] = json!(p.parent_name);
    }
    if let Some(f) = p.parent_executable().and_then(file) {
        parent["file"] = f;
    }
    v["parent_process"] = parent;
    v
}

fn severity(s: &str) -> (u8, &'static str) {
    match s {
        "low" => (2, "Low"),
        "medium" => (3, "Medium"),
        "high" => (4, "High"),
        "critical" => (5, "Critical"),
        _ => (0, "Unknown"),
    }
}

/// An alert as a Detection Finding.
pub fn alert(ctx: &Context, a: &Alert) -> Value {
    let ecs = crate::output::alert_json(ctx, a);
    let t = (a.t * 1000.0) as u64;
    let (sev_id, sev) = severity(a.rule.severity);
    let attacks: Vec<Value> = a
        .rule
        .techniques
        .iter()
        .map(|(id, name)| json!({ "tactic": { "uid": "TA0010", "name": "Exfiltration" }, "technique": { "uid": id, "name": name }, "version": "v16" }))
        .collect();
    let mut evidence = json!({ "process": alert_process(&a.process) });
    if let Some(ip) = a.remote_ip {
        let mut dst = json!({ "ip": ip.to_string(), "port": a.remote_port });
        if let Some(d) = &a.domain {
            dst["domain"] = json!(d);
            dst["hostname"] = json!(d);
        }
        evidence["dst_endpoint"] = dst;
    }
    let mut v = json!({
        "class_uid": 2004, "class_name": "Detection Finding",
        "category_uid": 2, "category_name": "Findings",
        "activity_id": 1, "activity_name": "Create",
        "type_uid": 200401, "type_name": "Detection Finding: Create",
        "severity_id": sev_id, "severity": sev,
        "status_id": 1, "status": "New",
        "is_alert": true,
        "time": t,
        "message": a.reason,
        "metadata": metadata(ctx, "alert"),
        "device": device(ctx),
        "actor": { "process": alert_process(&a.process), "user": user(a.process.uid, a.process.user_name.as_deref()) },
        "finding_info": {
            "uid": format!("{}:{}:{}", a.rule.id, a.process.entity_id, t),
            "title": a.rule.name,
            "desc": a.reason,
            "analytic": { "uid": a.rule.id, "name": a.rule.name, "type_id": 1, "type": "Rule" },
            "attacks": attacks,
        },
        "evidences": [evidence],
        "unmapped": { "sluice": ecs["sluice"].clone() },
    });
    if let Some(b) = &a.baseline {
        let target = json!([{ "name": a.process.executable, "type": "executable" }]);
        v["anomaly_analyses"] = json!([{
            "analysis_targets": target,
            "anomalies": [{ "observation_parameter": "bytes sent per window", "observations": [{ "value": a.bytes_out.to_string() }] }],
            "baselines": [{
                "observation_parameter": "bytes sent per window",
                "observation_type": "typical",
                "observations": [{ "value": format!("{:.0}", b.mean_bytes), "count": b.samples }],
            }],
        }]);
    }
    for k in ["container", "orchestrator", "dns"] {
        if let Some(x) = ecs.get(k) {
            v["unmapped"][k] = x.clone();
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{
        flows::{Attribution, Owner, Volume},
        naming::Destination,
    };

    fn ctx() -> Context {
        Context { host_name: "h".into(), backend: "cgroup", agent_id: "8679d9ed-258d-445d-9fcf-257d38dbbe72".into() }
    }

    fn record() -> FlowRecord {
        FlowRecord {
            owner: Owner { pid: 42, uid: 1000, cgroup_id: 9, direction: sensor_common::DIR_EGRESS, attribution: Attribution::Kernel, start_ns: 0 },
            local_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            local_port: 40000,
            remote_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            remote_port: 443,
            protocol: 6,
            volume: Volume { bytes_out: 5_000_000, bytes_in: 1_000, wire_bytes_out: 5_200_000, wire_bytes_in: 6_000, packets_out: 100, packets_in: 50 },
            sockets: 1,
            destination: Destination {
                domain: Some("g.api.mega.co.nz".into()),
                source: Some(NameSource::TlsSni),
                ..Destination::default()
            },
        }
    }

    fn assert_ocsf(v: &Value) {
        let wrong = sluice_tests::ocsf::violations(v);
        assert!(wrong.is_empty(), "not OCSF: {wrong:#?}\n{v:#}");
    }

    #[test]
    fn a_flow_is_network_activity_traffic_as_the_schema_defines_it() {
        let p = Process { pid: 42, ppid: 1, uid: 1000, name: "rclone".into(), executable: "/usr/bin/rclone".into(), args: vec!["rclone".into(), "copy".into()], ..Process::default() };
        let parent = Process { pid: 1, name: "bash".into(), executable: "/usr/bin/bash".into(), ..Process::default() };
        let v = flow(&ctx(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000), Duration::from_secs(5), &record(), Who { process: Some(&p), parent: Some(&parent), user_name: Some("alice"), container: None });
        assert_ocsf(&v);
        assert_eq!((v["class_uid"].as_u64(), v["type_uid"].as_u64()), (Some(4001), Some(400106)));
        assert_eq!((v["traffic"]["bytes_out"].as_u64(), v["traffic"]["bytes_in"].as_u64()), (Some(5_000_000), Some(1_000)));
        assert_eq!(v["connection_info"]["direction_id"], 2);
        assert_eq!(v["dst_endpoint"]["hostname"], "g.api.mega.co.nz");
        assert_eq!(v["actor"]["process"]["parent_process"]["file"]["path"], "/usr/bin/bash");
        assert_eq!(v["actor"]["user"]["name"], "alice");
        assert_eq!(v["time"].as_u64(), Some(1_700_000_000_000));
        // Unknown sender: still a valid event.
        assert_ocsf(&flow(&ctx(), SystemTime::UNIX_EPOCH, Duration::from_secs(5), &record(), Who::default()));
    }

    #[test]
    fn an_alert_is_a_detection_finding_with_its_rule_attack_and_baseline() {
        let info = ProcInfo {
            pid: 42,
            ppid: 1,
            entity_id: "42-5".into(),
            name: "syncd".into(),
            executable: "/opt/syncd".into(),
            args: vec!["syncd".into()],
            uid: 1000,
            ancestors: vec![(1, "/usr/bin/bash".into())],
            parent_name: "bash".into(),
            user_name: Some("alice".into()),
            ..ProcInfo::default()
        };
        let a = Alert {
            t: 1_700_000_000.0,
            rule: crate::detect::VOLUME_ANOMALY,
            process: info,
            remote_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
            remote_port: 443,
            transport: "tcp".into(),
            domain: Some("g.api.mega.co.nz".into()),
            service: None,
            bytes_out: 1 << 30,
            bytes_in: 0,
            window_s: 60.0,
            baseline: Some(crate::detect::baseline::Score { z: 9.0, mean_bytes: 2e6, stddev_bytes: 1e6, samples: 40, age_s: 86400.0 }),
            score: 1.0,
            container: None,
            reason: "syncd sent 1.0 GiB in 60 s, 500x its usual".into(),
            suppressed: 0,
            indicators: vec![],
        };
        let v = alert(&ctx(), &a);
        assert_ocsf(&v);
        assert_eq!((v["class_uid"].as_u64(), v["type_uid"].as_u64(), v["is_alert"].as_bool()), (Some(2004), Some(200401), Some(true)));
        assert_eq!(v["finding_info"]["analytic"]["uid"], a.rule.id);
        assert_eq!(v["finding_info"]["attacks"][0]["tactic"]["uid"], "TA0010");
        assert_eq!(v["anomaly_analyses"][0]["baselines"][0]["observations"][0]["value"], "2000000");
        assert_eq!(v["message"], a.reason);
        assert_eq!(v["evidences"][0]["dst_endpoint"]["ip"], "10.0.0.2");
    }
}
