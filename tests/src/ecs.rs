//! Every record sluice writes, checked against the Elastic Common Schema's
//! field list (`tests/ecs/fields.tsv`, derived from ECS's `ecs_flat.yml`):
//! each leaf outside `sluice.*` must be an ECS field, holding a JSON value of
//! that field's type (or an array of them: any ECS field may be one).

use std::{collections::HashMap, net::IpAddr, sync::OnceLock};

use serde_json::Value;

fn fields() -> &'static HashMap<String, String> {
    static FIELDS: OnceLock<HashMap<String, String>> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let text = std::fs::read_to_string(crate::workspace().join("tests/ecs/fields.tsv")).expect("tests/ecs/fields.tsv");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('\t'))
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    })
}

/// What is wrong with `record` as ECS: one line per field, empty if nothing.
pub fn violations(record: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", record, &mut out);
    out
}

fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        // An object's fields are leaves of their own, unless ECS types the
        // whole object (`flattened`, `object`).
        Value::Object(m) if !matches!(fields().get(prefix).map(String::as_str), Some("flattened" | "object" | "nested")) => {
            for (k, child) in m {
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                if name != "sluice" {
                    walk(&name, child, out);
                }
            }
        }
        _ => check(prefix, v, out),
    }
}

fn check(name: &str, v: &Value, out: &mut Vec<String>) {
    let Some(ty) = fields().get(name) else {
        return out.push(format!("{name}: not an ECS field (sluice's own fields belong under sluice.*)"));
    };
    let values: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        one => vec![one],
    };
    for one in values {
        if !of_type(ty, one) {
            out.push(format!("{name}: {one} is not an ECS {ty}"));
        }
    }
}

fn of_type(ty: &str, v: &Value) -> bool {
    match ty {
        "keyword" | "constant_keyword" | "wildcard" | "match_only_text" => v.is_string(),
        "long" | "integer" => v.is_i64() || v.is_u64(),
        "float" | "double" | "scaled_float" => v.is_number(),
        "boolean" => v.is_boolean(),
        "ip" => v.as_str().is_some_and(|s| s.parse::<IpAddr>().is_ok()),
        // ISO 8601 with a zone, as sluice writes it (2026-12-02T05:24:11.749Z).
        "date" => v.as_str().is_some_and(|s| s.len() >= 20 && s.as_bytes()[10] == b'T' && s.ends_with('Z')),
        "flattened" | "object" | "nested" => v.is_object(),
        "geo_point" => v.is_object() || v.is_string(),
        _ => false,
    }
}

/// The fields Elastic's shipped "Data Exfiltration Detection" ML module reads
/// on network events (its datafeed sums `source.bytes` per `destination.*`,
/// with `host.name`, `user.name`, `process.name`, `source.ip` and
/// `destination.ip` as influencers, over `event.category: network`).
pub const EXFIL_MODULE_FIELDS: &[&str] =
    &["source.bytes", "source.ip", "destination.ip", "host.name", "user.name", "process.name", "event.category"];

/// The fields of `EXFIL_MODULE_FIELDS` missing from a flow record.
pub fn missing_for_exfil_module(record: &Value) -> Vec<&'static str> {
    EXFIL_MODULE_FIELDS.iter().copied().filter(|f| f.split('.').try_fold(record, |v, k| v.get(k)).is_none_or(Value::is_null)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_outside_ecs_or_of_the_wrong_type_are_named() {
        let ok = json!({"@timestamp": "2026-12-02T05:24:11.749Z", "source": {"ip": "10.0.0.1", "port": 1, "bytes": 5},
            "event": {"category": ["network"]}, "sluice": {"anything": 1}, "network": {"community_id": "1:x"}});
        assert!(violations(&ok).is_empty(), "{:?}", violations(&ok));
        let bad = json!({"source": {"ip": "not-an-ip", "port": "1"}, "process": {"sluice_args_truncated": true}});
        let v = violations(&bad);
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v.iter().any(|e| e.starts_with("process.sluice_args_truncated: not an ECS field")));
        assert_eq!(missing_for_exfil_module(&ok), vec!["destination.ip", "host.name", "user.name", "process.name"]);
    }
}
