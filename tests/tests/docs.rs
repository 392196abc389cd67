//! The documentation's quoted output, checked: every JSON sample in the README
//! and `docs/` must be a record sluice could write (ECS, or OCSF when it has a
//! `class_uid`), and a sample marked `<!-- sample: replay FILE [CONFIG] -->`
//! must be exactly what `sluice replay` prints for that shipped recording, so
//! a change to the output cannot leave the docs showing an older one.
//! No root needed: replay runs no kernel programs.

use std::{path::Path, process::Command};

use serde_json::Value;
use sluice_tests::{ecs, ocsf, sluice_bin, workspace};

/// A fenced JSON block of a markdown page, and the marker line above it.
struct Sample {
    page: String,
    line: usize,
    marker: Option<String>,
    json: String,
}

fn samples(page: &Path) -> Vec<Sample> {
    let text = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
    let name = page.strip_prefix(workspace()).unwrap_or(page).display().to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```json" {
            i += 1;
            continue;
        }
        let marker = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().strip_prefix("<!-- sample:"))
            .and_then(|m| m.strip_suffix("-->"))
            .map(|m| m.trim().to_string());
        let end = (i + 1..lines.len()).find(|&j| lines[j].trim() == "```").unwrap_or_else(|| panic!("{name}:{}: unclosed block", i + 1));
        out.push(Sample { page: name.clone(), line: i + 1, marker, json: lines[i + 1..end].join("\n") });
        i = end + 1;
    }
    out
}

fn pages() -> Vec<std::path::PathBuf> {
    let mut p = vec![workspace().join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(workspace().join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    p.extend(docs);
    p
}

/// What `sluice replay FILE [--config CONFIG]` prints, one value per line.
fn replay(args: &str) -> Vec<Value> {
    let mut words = args.split_whitespace();
    let file = words.next().expect("a sample marker names its recording");
    let mut c = Command::new(sluice_bin());
    c.current_dir(workspace()).arg("replay").arg(file);
    if let Some(config) = words.next() {
        c.args(["--config", config]);
    }
    let out = c.output().expect("running sluice replay");
    assert!(out.status.success(), "sluice replay {args}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("replay prints JSON lines")).collect()
}

#[test]
fn every_json_sample_in_the_docs_is_a_valid_record_and_replayed_ones_are_current() {
    let mut checked = 0;
    let mut replayed = 0;
    for page in pages() {
        for s in samples(&page) {
            let at = format!("{}:{}", s.page, s.line);
            let v: Value = serde_json::from_str(&s.json).unwrap_or_else(|e| panic!("{at}: not JSON: {e}"));
            let bad = if v.get("class_uid").is_some() { ocsf::violations(&v) } else { ecs::violations(&v) };
            assert!(bad.is_empty(), "{at}: the sample is not a record sluice writes: {bad:?}");
            checked += 1;
            let Some(m) = s.marker.as_deref().and_then(|m| m.strip_prefix("replay ")) else { continue };
            let out = replay(m);
            assert!(
                out.contains(&v),
                "{at}: `sluice replay {m}` no longer prints this sample; it prints:\n{}",
                out.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
            );
            replayed += 1;
        }
    }
    eprintln!("measured: {checked} JSON samples checked, {replayed} of them against a replay");
    assert!(replayed >= 1, "no sample is checked against a replay");
}
