//! The stdout contract: one ECS JSON object per line (or one readable text line).
//! Every untrusted string goes through serde_json (JSON) or `escape_control`
//! (text), so no process name can break a line or forge a record.

use std::{
    io::Write,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde_json::{json, Map, Value};

use crate::{
    config::Format,
    container::Container,
    detect::{Alert, ProcInfo},
    flows::{self, FlowRecord},
    naming::{Destination, NameSource},
    process_table::{boot_to_wall, Process},
    services::Service,
    text::escape_control,
};

/// The ECS release whose field list the output is checked against
/// (`tests/ecs/`); every field sluice emits outside `sluice.*` exists there
/// with the type it has here.
pub const ECS_VERSION: &str = "9.0.0";

/// Fields every line carries.
#[derive(Debug, Clone)]
pub struct Context {
    pub host_name: String,
    pub backend: &'static str,
    /// This agent's id (`agent.id`): kept in the state file, so it survives
    /// restarts; empty when there is none (a replay, or no state file).
    pub agent_id: String,
}

/// `ecs`, `agent` and `event.module`, on every record.
pub(crate) fn add_common(v: &mut Value, ctx: &Context) {
    v["ecs"] = json!({ "version": ECS_VERSION });
    let mut agent = json!({ "type": "sluice", "version": env!("CARGO_PKG_VERSION"), "name": ctx.host_name });
    if !ctx.agent_id.is_empty() {
        agent["id"] = json!(ctx.agent_id);
    }
    v["agent"] = agent;
    v["event"]["module"] = json!("sluice");
}

/// What the agent knows of a flow's process besides the record itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct Who<'a> {
    pub process: Option<&'a Process>,
    pub parent: Option<&'a Process>,
    pub user_name: Option<&'a str>,
    pub container: Option<&'a Container>,
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// ECS `process` object; `None` fields are left out rather than invented.
pub fn process_json(pid: u32, p: Option<&Process>, parent: Option<&Process>) -> Value {
    let mut m = Map::new();
    m.insert("pid".into(), json!(pid));
    if let Some(p) = p {
        m.insert("name".into(), json!(p.name));
        if !p.executable.is_empty() {
            m.insert("executable".into(), json!(p.executable));
        }
        m.insert("args".into(), json!(p.args));
        m.insert("args_count".into(), json!(p.args.len()));
        m.insert("parent".into(), parent_json(p.ppid, parent.filter(|q| q.pid == p.ppid).map(|q| (q.name.as_str(), q.executable.as_str(), &q.args[..]))));
        m.insert("entity_id".into(), json!(p.entity_id()));
        if p.start_ns != 0 {
            m.insert("start".into(), json!(timestamp(boot_to_wall(p.start_ns))));
        }
        if let Some(end) = p.exited_ns {
            m.insert("end".into(), json!(timestamp(boot_to_wall(end))));
        }
    }
    Value::Object(m)
}

/// ECS `process.parent`: its pid, and its name, executable and args when known.
fn parent_json(ppid: u32, known: Option<(&str, &str, &[String])>) -> Value {
    let mut v = json!({ "pid": ppid });
    if let Some((name, exe, args)) = known {
        if !name.is_empty() {
            v["name"] = json!(name);
        }
        if !exe.is_empty() {
            v["executable"] = json!(exe);
        }
        if !args.is_empty() {
            v["args"] = json!(args);
        }
    }
    v
}

/// One `flow-summary` event for `--emit flows`. Bytes and packets are also
/// in ECS's own fields (`source.*` is the local side, which sent
/// `source.bytes`), which the pipelines users run already sum: Elastic's
/// data exfiltration module sums `source.bytes` per destination.
pub fn flow_json(ctx: &Context, at: SystemTime, window: Duration, r: &FlowRecord, who: Who) -> Value {
    let (p, container) = (who.process, who.container);
    let vol = &r.volume;
    let net_type = if r.remote_ip.is_ipv4() { "ipv4" } else { "ipv6" };
    let mut v = json!({
        "@timestamp": timestamp(at),
        "event": {
            "kind": "event",
            "category": ["network"],
            "type": ["connection"],
            "action": "flow-summary",
            "dataset": "sluice.flow",
        },
        "host": { "name": ctx.host_name },
        "process": process_json(r.owner.pid, p, who.parent),
        "user": { "id": r.owner.uid.to_string() },
        "source": { "ip": r.local_ip.to_string(), "port": r.local_port, "bytes": vol.bytes_out, "packets": vol.packets_out },
        "destination": destination_json(r.remote_ip, r.remote_port, r.destination.domain.as_deref()),
        "network": {
            "transport": flows::transport(r.protocol),
            "type": net_type,
            "iana_number": r.protocol.to_string(),
            "direction": flows::direction(r.owner.direction),
            "bytes": vol.bytes_out + vol.bytes_in,
            "packets": vol.packets_out + vol.packets_in,
        },
        "sluice": {
            "destination": sluice_destination_json(&r.destination),
            "bytes_out": r.volume.bytes_out,
            "bytes_in": r.volume.bytes_in,
            "wire_bytes_out": r.volume.wire_bytes_out,
            "wire_bytes_in": r.volume.wire_bytes_in,
            "packets_out": r.volume.packets_out,
            "packets_in": r.volume.packets_in,
            "window_s": window.as_secs_f64(),
            "sockets": r.sockets,
            "cgroup_id": r.owner.cgroup_id,
            "peer_scope": r.scope().as_str(),
            "attribution": r.owner.attribution.as_str(),
            "backend": ctx.backend,
        },
    });
    // What ECS has no field for: argv cut at the kernel's bound, or never seen.
    if let Some(p) = p.filter(|p| p.args_truncated || p.args_unknown) {
        v["sluice"]["process"] = json!({ "args_truncated": p.args_truncated, "args_unknown": p.args_unknown });
    }
    v["destination"]["bytes"] = json!(vol.bytes_in);
    v["destination"]["packets"] = json!(vol.packets_in);
    if let Some(id) = crate::community_id::v1(0, r.protocol, (r.local_ip, r.local_port), (r.remote_ip, r.remote_port)) {
        v["network"]["community_id"] = json!(id);
    }
    if let Some(name) = who.user_name {
        v["user"]["name"] = json!(name);
    }
    add_common(&mut v, ctx);
    let d = &r.destination;
    if let Some(p) = d.protocol {
        v["network"]["protocol"] = json!(p.as_str());
    }
    if let (Some(name), Some(NameSource::TlsSni)) = (&d.domain, d.source) {
        v["tls"] = json!({ "client": { "server_name": name } });
    }
    if let Some(path) = &d.http_path {
        v["url"] = json!({ "path": path });
    }
    add_container(&mut v, container);
    v
}

/// ECS `container` and, for a Kubernetes pod, `orchestrator` (the pod as the
/// resource: `orchestrator.resource.{type,id,name}`, `orchestrator.namespace`).
fn add_container(v: &mut Value, c: Option<&Container>) {
    let Some(c) = c else { return };
    let mut cv = json!({ "id": c.id, "runtime": c.runtime });
    if let Some(n) = &c.name {
        cv["name"] = json!(n);
    }
    if let Some(i) = &c.image {
        cv["image"] = json!({ "name": i });
    }
    v["container"] = cv;
    if let Some(pod) = &c.pod {
        let mut o = json!({ "type": "kubernetes", "resource": { "type": "pod", "id": pod.uid } });
        if let Some(n) = &pod.name {
            o["resource"]["name"] = json!(n);
        }
        if let Some(ns) = &pod.namespace {
            o["namespace"] = json!(ns);
        }
        v["orchestrator"] = o;
    }
}

/// ECS `destination`: address, and the name when one is known.
fn destination_json(ip: IpAddr, port: u16, domain: Option<&str>) -> Value {
    let mut d = json!({ "ip": ip.to_string(), "port": port });
    if let Some(n) = domain {
        d["domain"] = json!(n);
    }
    d
}

/// `sluice.destination`: where the name came from and the catalog's service.
fn sluice_destination_json(d: &Destination) -> Value {
    let mut v = service_json(d.service.as_deref());
    if let Some(src) = d.source {
        v["name_source"] = json!(src.as_str());
        // A name the sender put in its own bytes is a claim until a DNS answer
        // this host asked for maps it to this address.
        v["name_corroborated"] = json!(d.corroborated);
    }
    if d.tls_no_sni {
        v["tls_no_sni"] = json!(true);
    }
    if let Some((host, port)) = &d.proxy_target {
        // This flow asked a proxy for somewhere else (CONNECT, SOCKS).
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        v["proxy_target"] = json!(format!("{host}:{port}"));
    }
    v
}

fn service_json(s: Option<&Service>) -> Value {
    match s {
        Some(s) => json!({ "service": s.name, "service_id": s.id, "category": s.category }),
        None => json!({}),
    }
}

/// ECS `process` object from the detector's view of a process.
pub(crate) fn proc_info_json(p: &ProcInfo) -> Value {
    json!({
        "pid": p.pid,
        "name": p.name,
        "executable": p.executable,
        "args": p.args,
        "args_count": p.args.len(),
        "parent": parent_json(p.ppid, p.parent_executable().map(|exe| (p.parent_name.as_str(), exe, &p.parent_args[..]))),
        "entity_id": p.entity_id,
    })
}

/// Unix seconds (the detector's clock) as a SystemTime.
pub fn unix(t: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0))
}

/// A SystemTime as unix seconds (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// One alert line.
pub fn alert_json(ctx: &Context, a: &Alert) -> Value {
    let mut evidence = json!({
        "destination": service_json(a.service.as_deref()),
        "bytes_out": a.bytes_out,
        "bytes_in": a.bytes_in,
        "window_s": a.window_s,
        "score": a.score,
        "severity": a.rule.severity,
        "suppressed": a.suppressed,
        "indicators": a.indicators,
        "backend": ctx.backend,
    });
    if let Some(b) = &a.baseline {
        evidence["baseline"] = json!({ "mean": b.mean_bytes, "stddev": b.stddev_bytes, "samples": b.samples });
    }
    let mut v = json!({
        "@timestamp": timestamp(unix(a.t)),
        "event": {
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["info"],
            "action": a.rule.id,
            "dataset": "sluice.alert",
            "severity": a.rule.severity_num,
            "reason": a.reason,
        },
        "rule": { "id": a.rule.id, "name": a.rule.name, "ruleset": "sluice" },
        "host": { "name": ctx.host_name },
        "process": proc_info_json(&a.process),
        "user": { "id": a.process.uid.to_string() },
        "threat": {
            "framework": "MITRE ATT&CK",
            "tactic": { "id": ["TA0010"], "name": ["Exfiltration"] },
            "technique": {
                "id": a.rule.techniques.iter().map(|t| t.0).collect::<Vec<_>>(),
                "name": a.rule.techniques.iter().map(|t| t.1).collect::<Vec<_>>(),
            },
        },
        "sluice": evidence,
    });
    // An event about a process (a tool started) has no destination yet.
    if let Some(ip) = a.remote_ip {
        v["destination"] = destination_json(ip, a.remote_port, a.domain.as_deref());
        v["network"] = json!({ "transport": a.transport });
    }
    if let Some(j) = &a.process.job {
        v["sluice"]["job"] = json!({ "pid": j.pid, "pgid": j.pgid, "executable": j.executable, "args": j.args, "entity_id": j.entity_id });
    }
    if let Some(name) = &a.process.user_name {
        v["user"]["name"] = json!(name);
    }
    // A tunnel's zone is the registered domain its queries were under.
    if let Some(zone) = a.domain.as_deref().filter(|_| a.rule.id == crate::detect::DNS_TUNNEL.id) {
        v["dns"] = json!({ "type": "query", "question": { "registered_domain": zone } });
    }
    add_common(&mut v, ctx);
    add_container(&mut v, a.container.as_ref());
    v
}

pub fn alert_text(a: &Alert) -> String {
    escape_control(&format!(
        "{} ALERT {} {}: {}{}",
        timestamp(unix(a.t)),
        a.rule.severity,
        a.rule.id,
        a.reason,
        if a.suppressed > 0 { format!(" ({} similar suppressed)", a.suppressed) } else { String::new() }
    ))
}

/// One line of `--format text` for a flow record.
pub fn flow_text(at: SystemTime, r: &FlowRecord, p: Option<&Process>) -> String {
    let (name, exe) = p.map(|p| (p.name.as_str(), p.executable.as_str())).unwrap_or(("?", "?"));
    escape_control(&format!(
        "{} flow pid={} name={} exe={} {} {}:{}{} {} {} out={} in={} scope={}",
        timestamp(at),
        r.owner.pid,
        name,
        exe,
        flows::direction(r.owner.direction),
        r.remote_ip,
        r.remote_port,
        match (&r.destination.domain, &r.destination.service) {
            (Some(d), Some(s)) => format!(" ({d}, {})", s.name),
            (Some(d), None) => format!(" ({d})"),
            _ => String::new(),
        },
        flows::transport(r.protocol),
        r.owner.attribution.as_str(),
        r.volume.bytes_out,
        r.volume.bytes_in,
        r.scope().as_str(),
    ))
}

/// Writes records to stdout (or any writer) in the configured format.
pub struct Sink<W: Write> {
    out: W,
    pub format: Format,
    pub lines: u64,
}

impl<W: Write> Sink<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self { out, format, lines: 0 }
    }

    /// `json` is written as one line in JSON mode, `text` in text mode.
    pub fn record(&mut self, json: &Value, text: impl FnOnce() -> String) -> std::io::Result<()> {
        // One write per whole line, so a rotating file never splits a record.
        let mut line = match self.format {
            Format::Json | Format::Ocsf => serde_json::to_vec(json)?,
            Format::Text => text().into_bytes(),
        };
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.lines += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::flows::{Attribution, Owner, Volume};

    fn record() -> FlowRecord {
        FlowRecord {
            owner: Owner { pid: 42, uid: 1000, cgroup_id: 9, direction: sensor_common::DIR_EGRESS, attribution: Attribution::Kernel, start_ns: 0 },
            local_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            local_port: 40000,
            remote_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            remote_port: 443,
            protocol: 6,
            volume: Volume {
                bytes_out: 5_000_000,
                bytes_in: 1_000,
                wire_bytes_out: 5_200_000,
                wire_bytes_in: 6_000,
                packets_out: 100,
                packets_in: 50,
            },
            sockets: 1,
            destination: Destination::default(),
        }
    }

    fn hostile_process() -> Process {
        Process {
            pid: 42,
            ppid: 1,
            uid: 1000,
            gid: 1000,
            name: "evil\n{\"x\":1}".into(),
            executable: "/tmp/\x1b[2Jmega\\xff".into(),
            args: vec!["a\"b".into(), "c\u{0}d".into(), "\r\n".into()],
            args_truncated: true,
            args_unknown: false,
            cgroup_id: 9,
            pgid: 0,
            start_ns: 5,
            exited_ns: None,
        }
    }

    #[test]
    fn json_line_is_one_valid_object_with_ecs_fields() {
        let ctx = Context { host_name: "h".into(), backend: "cgroup", agent_id: "a1".into() };
        let p = hostile_process();
        let parent = Process { pid: 1, name: "bash".into(), executable: "/usr/bin/bash".into(), args: vec!["-bash".into()], ..Process::default() };
        let who = Who { process: Some(&p), parent: Some(&parent), user_name: Some("alice"), container: None };
        let v = flow_json(&ctx, SystemTime::UNIX_EPOCH, Duration::from_secs(5), &record(), who);
        let mut sink = Sink::new(Vec::new(), Format::Json);
        sink.record(&v, String::new).unwrap();
        let text = String::from_utf8(sink.out).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "exactly one line: {text}");
        let back: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(back["event"]["action"], "flow-summary");
        assert_eq!(back["process"]["name"], "evil\n{\"x\":1}");
        assert_eq!(back["process"]["args"][1], "c\u{0}d");
        assert_eq!(back["destination"]["port"], 443);
        assert_eq!(back["network"]["direction"], "egress");
        assert_eq!(back["sluice"]["bytes_out"], 5_000_000);
        assert_eq!(back["sluice"]["peer_scope"], "private");
        assert_eq!(back["@timestamp"], "1970-01-01T00:00:00.000Z");
        assert!(back.get("tls").is_none() && back["destination"].get("domain").is_none());
        // ECS's own byte and packet fields (source = the local side, which sent).
        assert_eq!((back["source"]["bytes"].as_u64(), back["source"]["packets"].as_u64()), (Some(5_000_000), Some(100)));
        assert_eq!((back["destination"]["bytes"].as_u64(), back["destination"]["packets"].as_u64()), (Some(1_000), Some(50)));
        assert_eq!((back["network"]["bytes"].as_u64(), back["network"]["packets"].as_u64()), (Some(5_001_000), Some(150)));
        let cid = crate::community_id::v1(0, 6, ("10.0.0.1".parse().unwrap(), 40000), ("10.0.0.2".parse().unwrap(), 443)).unwrap();
        assert_eq!(back["network"]["community_id"], cid);
        assert_eq!((back["user"]["name"].as_str(), back["user"]["id"].as_str()), (Some("alice"), Some("1000")));
        assert_eq!(back["process"]["parent"], json!({ "pid": 1, "name": "bash", "executable": "/usr/bin/bash", "args": ["-bash"] }));
        assert_eq!(back["sluice"]["process"]["args_truncated"], true);
        assert_eq!((back["ecs"]["version"].as_str(), back["event"]["module"].as_str()), (Some(ECS_VERSION), Some("sluice")));
        assert_eq!(back["agent"], json!({ "type": "sluice", "version": env!("CARGO_PKG_VERSION"), "name": "h", "id": "a1" }));
    }

    #[test]
    fn a_named_flow_carries_domain_service_and_tls_fields() {
        let ctx = Context { host_name: "h".into(), backend: "cgroup", agent_id: "a1".into() };
        let mut r = record();
        r.destination = Destination {
            domain: Some("content.dropboxapi.com".into()),
            source: Some(NameSource::TlsSni),
            protocol: Some(crate::naming::AppProtocol::Tls),
            tls_no_sni: false,
            http_path: None,
            service: crate::services::Catalog::builtin().lookup("content.dropboxapi.com").cloned(),
            corroborated: false,
            proxy_target: None,
        };
        let c = Container {
            id: "4f1d".into(),
            runtime: "containerd".into(),
            name: Some("web".into()),
            image: Some("registry/web:1.2".into()),
            pod: Some(crate::container::Pod { uid: "u-1".into(), name: Some("api-1".into()), namespace: Some("payments".into()) }),
        };
        let v = flow_json(&ctx, SystemTime::UNIX_EPOCH, Duration::from_secs(5), &r, Who { container: Some(&c), ..Who::default() });
        assert_eq!(v["container"]["id"], "4f1d");
        assert_eq!(v["container"]["runtime"], "containerd");
        assert_eq!(v["container"]["image"]["name"], "registry/web:1.2");
        assert_eq!(v["orchestrator"]["type"], "kubernetes");
        assert_eq!(v["orchestrator"]["namespace"], "payments");
        assert_eq!(v["orchestrator"]["resource"]["name"], "api-1");
        assert_eq!(v["orchestrator"]["resource"]["id"], "u-1");
        assert_eq!(v["destination"]["domain"], "content.dropboxapi.com");
        assert_eq!(v["tls"]["client"]["server_name"], "content.dropboxapi.com");
        assert_eq!(v["network"]["protocol"], "tls");
        assert_eq!(v["sluice"]["destination"]["service"], "Dropbox");
        assert_eq!(v["sluice"]["destination"]["category"], "storage");
        assert_eq!(v["sluice"]["destination"]["name_source"], "tls-sni");
        assert!(flow_text(SystemTime::UNIX_EPOCH, &r, None).contains("(content.dropboxapi.com, Dropbox)"));
    }

    #[test]
    fn alert_line_carries_rule_mitre_and_evidence() {
        let ctx = Context { host_name: "h".into(), backend: "cgroup", agent_id: "a1".into() };
        let p = hostile_process();
        let info = ProcInfo {
            pid: p.pid,
            ppid: p.ppid,
            entity_id: p.entity_id(),
            name: p.name.clone(),
            executable: p.executable.clone(),
            args: p.args.clone(),
            uid: 1000,
            ancestors: vec![(1, "/usr/bin/bash".into())],
            parent_name: "bash".into(),
            user_name: Some("alice".into()),
            ..ProcInfo::default()
        };
        let a = Alert {
            t: 1_700_000_000.0,
            rule: crate::detect::EXFIL_TOOL,
            process: info,
            remote_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
            remote_port: 443,
            transport: "tcp".into(),
            domain: Some("g.api.mega.co.nz".into()),
            service: crate::services::Catalog::builtin().lookup("g.api.mega.co.nz").cloned(),
            bytes_out: 1 << 30,
            bytes_in: 0,
            window_s: 60.0,
            baseline: None,
            score: 1.0,
            container: Some(Container { id: "c".into(), runtime: "docker".into(), name: None, image: None, pod: None }),
            reason: "evil\nsent 1.0 GiB".into(),
            suppressed: 3,
            indicators: vec!["tool: MEGAcmd".into()],
        };
        let mut sink = Sink::new(Vec::new(), Format::Json);
        sink.record(&alert_json(&ctx, &a), || alert_text(&a)).unwrap();
        let text = String::from_utf8(sink.out).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        let v: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["event"]["kind"], "alert");
        assert_eq!(v["rule"]["id"], "sluice.exfil_tool_upload");
        assert_eq!(v["threat"]["framework"], "MITRE ATT&CK");
        assert_eq!(v["threat"]["technique"]["id"][0], "T1567.002");
        assert_eq!(v["destination"]["domain"], "g.api.mega.co.nz");
        assert_eq!(v["sluice"]["destination"]["service"], "MEGA");
        assert_eq!(v["sluice"]["destination"]["category"], "storage");
        assert_eq!(v["sluice"]["suppressed"], 3);
        assert_eq!(v["container"]["runtime"], "docker");
        assert!(v.get("orchestrator").is_none());
        assert_eq!(v["event"]["severity"], 73);
        assert_eq!(v["process"]["parent"], json!({ "pid": 1, "name": "bash", "executable": "/usr/bin/bash" }));
        assert_eq!((v["user"]["name"].as_str(), v["agent"]["id"].as_str(), v["event"]["module"].as_str()), (Some("alice"), Some("a1"), Some("sluice")));
        let line = alert_text(&a);
        assert!(!line.contains('\n') && line.contains("ALERT high sluice.exfil_tool_upload") && line.contains("3 similar suppressed"), "{line}");
    }

    #[test]
    fn text_line_escapes_control_characters() {
        let p = hostile_process();
        let line = flow_text(SystemTime::UNIX_EPOCH, &record(), Some(&p));
        assert!(!line.contains('\n') && !line.contains('\x1b'), "{line}");
        assert!(line.contains("out=5000000"));
    }
}
