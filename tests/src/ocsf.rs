//! OCSF records checked against the schema's own definitions (`tests/ocsf/`,
//! a copy of ocsf/ocsf-schema at a5cfc68, Apache-2.0): a class's attributes
//! are its own, its parents' (`extends`) and those of the profiles it
//! includes; an object's likewise. Every attribute a record carries must be
//! defined there, hold a value of its dictionary type (objects recursively,
//! arrays where the dictionary says so, enum ids from the enum), and every
//! `required` attribute must be present, as must one of an `at_least_one`.

use std::{collections::HashMap, path::PathBuf, sync::OnceLock};

use serde_json::{Map, Value};

struct Schema {
    dir: PathBuf,
    dictionary: Map<String, Value>,
    types: Map<String, Value>,
}

fn schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        let dir = crate::workspace().join("tests/ocsf");
        let d = read(&dir.join("dictionary.json"));
        Schema {
            dictionary: d["attributes"].as_object().cloned().unwrap_or_default(),
            types: d["types"]["attributes"].as_object().cloned().unwrap_or_default(),
            dir,
        }
    })
}

fn read(p: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A class or object definition flattened: attribute -> its definition
/// (dictionary entry overlaid with the class's own), and the constraints.
#[derive(Default)]
struct Def {
    attrs: HashMap<String, Map<String, Value>>,
    at_least_one: Vec<Vec<String>>,
}

fn flatten(file: &std::path::Path, def: &mut Def, depth: u32) {
    flatten_as(file, def, depth, false)
}

/// `profile`: attributes a profile adds, which a record need not carry (a
/// profile applies only when the record says it uses it).
fn flatten_as(file: &std::path::Path, def: &mut Def, depth: u32, profile: bool) {
    assert!(depth < 16, "extends chain too deep at {}", file.display());
    let v = read(file);
    if let Some(parent) = v["extends"].as_str().filter(|p| *p != "object") {
        let dir = file.parent().unwrap();
        let candidates = [
            dir.join(format!("{parent}.json")),
            schema().dir.join(format!("events/{parent}.json")),
            schema().dir.join(format!("objects/{parent}.json")),
            schema().dir.join(format!("objects/_{parent}.json")),
        ];
        if let Some(p) = candidates.iter().find(|p| p.exists()) {
            flatten_as(p, def, depth + 1, profile);
        }
    }
    if let Some(c) = v["constraints"]["at_least_one"].as_array() {
        def.at_least_one = vec![c.iter().filter_map(|s| s.as_str().map(String::from)).collect()];
    }
    for (name, a) in v["attributes"].as_object().into_iter().flatten() {
        if name == "$include" {
            for inc in a.as_array().into_iter().flatten().filter_map(Value::as_str) {
                let p = schema().dir.join(inc);
                if p.exists() {
                    flatten_as(&p, def, depth + 1, profile || inc.starts_with("profiles/"));
                }
            }
            continue;
        }
        let entry = def.attrs.entry(name.clone()).or_insert_with(|| schema().dictionary.get(name).and_then(Value::as_object).cloned().unwrap_or_default());
        for (k, x) in a.as_object().into_iter().flatten() {
            match (entry.get_mut(k), x) {
                // A class adds its values to the dictionary's (0 and 99).
                (Some(Value::Object(mine)), Value::Object(more)) if k == "enum" => mine.extend(more.clone()),
                _ => {
                    entry.insert(k.clone(), x.clone());
                }
            }
        }
        if profile {
            entry.remove("requirement");
        }
    }
}

fn class_def(uid: u64) -> Option<Def> {
    let file = match uid {
        4001 => "events/network/network_activity.json",
        2004 => "events/findings/detection_finding.json",
        _ => return None,
    };
    let mut d = Def::default();
    flatten(&schema().dir.join(file), &mut d, 0);
    Some(d)
}

fn object_def(name: &str) -> Option<Def> {
    let p = schema().dir.join(format!("objects/{name}.json"));
    p.exists().then(|| {
        let mut d = Def::default();
        flatten(&p, &mut d, 0);
        d
    })
}

/// What is wrong with `record` as OCSF: one line per problem.
pub fn violations(record: &Value) -> Vec<String> {
    let mut out = Vec::new();
    match record["class_uid"].as_u64().and_then(class_def) {
        Some(mut def) => {
            // The schema leaves these as placeholders; their values follow
            // from the class: class_uid = category_uid * 1000 + the class's
            // number, type_uid = class_uid * 100 + activity_id.
            for k in ["class_uid", "category_uid", "type_uid"] {
                if let Some(a) = def.attrs.get_mut(k) {
                    a.remove("enum");
                }
            }
            let (class, cat, ty, act) = (record["class_uid"].as_u64(), record["category_uid"].as_u64(), record["type_uid"].as_u64(), record["activity_id"].as_u64());
            if let (Some(class), Some(cat)) = (class, cat) {
                if class / 1000 != cat {
                    out.push(format!(".category_uid: {cat} is not class {class}'s category"));
                }
            }
            if let (Some(class), Some(ty), Some(act)) = (class, ty, act) {
                if ty != class * 100 + act {
                    out.push(format!(".type_uid: {ty} is not class_uid * 100 + activity_id"));
                }
            }
            check_object(&def, record, "", &mut out)
        }
        None => out.push(format!("class_uid {} is not a class this checker has", record["class_uid"])),
    }
    out
}

fn check_object(def: &Def, v: &Value, at: &str, out: &mut Vec<String>) {
    let Some(m) = v.as_object() else { return out.push(format!("{at}: {v} is not an object")) };
    for (name, a) in &def.attrs {
        if a.get("requirement").and_then(Value::as_str) == Some("required") && m.get(name).is_none_or(Value::is_null) {
            out.push(format!("{at}.{name}: required, missing"));
        }
    }
    for group in &def.at_least_one {
        if !group.iter().any(|g| m.contains_key(g)) {
            out.push(format!("{at}: needs at least one of {group:?}"));
        }
    }
    for (k, x) in m {
        let path = format!("{at}.{k}");
        match def.attrs.get(k) {
            Some(a) => check_value(a, x, &path, out),
            None => out.push(format!("{path}: not an attribute here")),
        }
    }
}

fn check_value(a: &Map<String, Value>, v: &Value, at: &str, out: &mut Vec<String>) {
    let ty = a.get("type").and_then(Value::as_str).unwrap_or("");
    if a.get("is_array").and_then(Value::as_bool) == Some(true) {
        match v.as_array() {
            Some(items) => items.iter().enumerate().for_each(|(i, x)| check_one(a, ty, x, &format!("{at}[{i}]"), out)),
            None => out.push(format!("{at}: must be an array")),
        }
    } else {
        check_one(a, ty, v, at, out);
    }
}

fn check_one(a: &Map<String, Value>, ty: &str, v: &Value, at: &str, out: &mut Vec<String>) {
    if ty == "object" || ty == "json_t" {
        return;
    }
    if !ty.ends_with("_t") {
        return match object_def(ty) {
            Some(def) => check_object(&def, v, at, out),
            None => out.push(format!("{at}: object type {ty} not in the schema copy")),
        };
    }
    let base = primitive(ty);
    let ok = match base {
        "string_t" => v.is_string() && (ty != "ip_t" || v.as_str().is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok())),
        "integer_t" | "long_t" => v.is_i64() || v.is_u64(),
        "float_t" => v.is_number(),
        "boolean_t" => v.is_boolean(),
        _ => true,
    };
    if !ok {
        out.push(format!("{at}: {v} is not a {ty}"));
    }
    if ty == "port_t" && v.as_u64().is_some_and(|p| p > 65535) {
        out.push(format!("{at}: {v} is not a port"));
    }
    // Every OCSF enum reserves 0 (Unknown) and 99 (Other).
    if let (Some(e), Some(n)) = (a.get("enum").and_then(Value::as_object), v.as_i64().filter(|n| *n != 0 && *n != 99)) {
        if !e.contains_key(&n.to_string()) {
            out.push(format!("{at}: {n} is not one of {:?}", e.keys().collect::<Vec<_>>()));
        }
    }
}

/// `port_t` -> `integer_t`, `timestamp_t` -> `long_t`, ...
fn primitive(ty: &str) -> &str {
    let mut t = ty;
    for _ in 0..4 {
        match schema().types.get(t).and_then(|d| d["type"].as_str()) {
            Some(base) => t = base,
            None => break,
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn undefined_attributes_wrong_types_bad_enums_and_missing_requirements_are_named() {
        let bad = json!({"class_uid": 4001, "category_uid": 4, "activity_id": 42, "type_uid": 400106, "severity_id": 1, "time": "now",
            "metadata": {"product": {"name": "sluice"}}, "src_endpoint": {"port": 80}, "made_up": 1});
        let v = violations(&bad);
        for want in [".activity_id: 42 is not one of", ".time: \"now\" is not a timestamp_t", ".metadata.version: required, missing", ".made_up: not an attribute here", ".src_endpoint: needs at least one of"] {
            assert!(v.iter().any(|e| e.contains(want)), "{want} not in {v:?}");
        }
    }
}
