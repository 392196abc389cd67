//! The destination catalog: domain suffixes -> named services and categories
//! (storage, file-sharing, paste, webhook, tunnel). A TOML data file ships in
//! the binary (`services.toml`, each entry with its source); a user file adds
//! services or replaces built-in ones by id.

use std::{collections::HashMap, path::Path, sync::Arc};

use serde::Deserialize;
use thiserror::Error;

pub const BUILTIN: &str = include_str!("services.toml");

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("reading catalog {0}: {1}")]
    Read(String, std::io::Error),
    #[error("catalog {0}: {1}")]
    Parse(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub category: String,
    pub domains: Vec<String>,
    #[serde(default)]
    pub upload_hosts: Vec<String>,
    #[serde(default)]
    pub upload_paths: Vec<String>,
    /// Sending here is using an exfiltration tool, whatever the program is called.
    #[serde(default)]
    pub exfil_tool: bool,
    pub source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    service: Vec<Service>,
}

const CATEGORIES: [&str; 6] = ["storage", "file-sharing", "paste", "webhook", "tunnel", "messaging"];

/// `name` is `suffix` or one of its subdomains (on a label boundary: "x.mega.nz"
/// is within "mega.nz", "notmega.nz" is not).
pub fn is_within(name: &str, suffix: &str) -> bool {
    name == suffix || name.strip_suffix(suffix).is_some_and(|head| head.ends_with('.'))
}

/// Categories whose services take uploads of files: a first-seen program
/// sending there is worth a look.
pub fn is_upload_category(category: &str) -> bool {
    matches!(category, "storage" | "file-sharing" | "paste" | "webhook")
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    services: Vec<Arc<Service>>,
    /// Lowercased suffix -> index in `services`.
    by_suffix: HashMap<String, usize>,
}

impl Catalog {
    pub fn builtin() -> Catalog {
        // The shipped file is checked by a unit test; failing here is a build bug.
        Catalog::parse(BUILTIN, "built-in catalog").expect("the built-in services.toml parses")
    }

    /// The built-in catalog plus `path`, if given.
    pub fn load(path: Option<&Path>) -> Result<Catalog, CatalogError> {
        let mut c = Catalog::builtin();
        if let Some(p) = path {
            let name = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| CatalogError::Read(name.clone(), e))?;
            c.merge(Catalog::parse(&text, &name)?);
        }
        Ok(c)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Catalog, CatalogError> {
        let f: File = toml::from_str(text).map_err(|e| CatalogError::Parse(origin.into(), e.to_string()))?;
        let mut c = Catalog::default();
        for s in f.service {
            if !CATEGORIES.contains(&s.category.as_str()) {
                return Err(CatalogError::Parse(
                    origin.into(),
                    format!("service {}: category {:?} is not one of {}", s.id, s.category, CATEGORIES.join(", ")),
                ));
            }
            if s.domains.is_empty() || s.domains.iter().any(|d| d.is_empty() || d.contains('/') || d.contains(' ')) {
                return Err(CatalogError::Parse(origin.into(), format!("service {}: domains must be non-empty suffixes like \"example.com\"", s.id)));
            }
            c.add(s);
        }
        Ok(c)
    }

    fn add(&mut self, s: Service) {
        if let Some(i) = self.services.iter().position(|x| x.id == s.id) {
            self.by_suffix.retain(|_, v| *v != i);
            for d in &s.domains {
                self.by_suffix.insert(norm(d), i);
            }
            self.services[i] = Arc::new(s);
            return;
        }
        let i = self.services.len();
        for d in &s.domains {
            self.by_suffix.insert(norm(d), i);
        }
        self.services.push(Arc::new(s));
    }

    fn merge(&mut self, other: Catalog) {
        for s in other.services {
            self.add((*s).clone());
        }
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The service `domain` belongs to: the longest listed suffix on a label
    /// boundary (so "x.blob.core.windows.net" and "mega.nz" both resolve,
    /// "notmega.nz" does not).
    pub fn lookup(&self, domain: &str) -> Option<&Arc<Service>> {
        let d = norm(domain);
        let mut rest = d.as_str();
        loop {
            if let Some(&i) = self.by_suffix.get(rest) {
                return self.services.get(i);
            }
            rest = rest.split_once('.')?.1;
        }
    }
}

fn norm(d: &str) -> String {
    d.trim().trim_end_matches('.').trim_start_matches("*.").to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalog_parses_and_every_entry_names_its_source() {
        let c = Catalog::builtin();
        assert!(c.len() >= 30, "{}", c.len());
        assert!(c.services.iter().all(|s| !s.source.is_empty()));
    }

    #[test]
    fn longest_suffix_on_a_label_boundary() {
        let c = Catalog::builtin();
        let id = |d: &str| c.lookup(d).map(|s| s.id.clone());
        assert_eq!(id("g.api.mega.co.nz").as_deref(), Some("mega"));
        assert_eq!(id("gfs270n122.userstorage.mega.co.nz.").as_deref(), Some("mega"));
        assert_eq!(id("MEGA.NZ").as_deref(), Some("mega"));
        assert_eq!(id("content.dropboxapi.com").as_deref(), Some("dropbox"));
        assert_eq!(id("www.dropbox.com").as_deref(), Some("dropbox"));
        assert_eq!(id("upload.box.com").as_deref(), Some("box"));
        assert_eq!(id("acct.blob.core.windows.net").as_deref(), Some("azure-blob"));
        assert_eq!(id("quiet-sun-42.trycloudflare.com").as_deref(), Some("cloudflare-tunnel"));
        assert_eq!(id("api.telegram.org").as_deref(), Some("telegram-api"));
        assert_eq!(id("notmega.nz"), None);
        assert_eq!(id("example.com"), None);
        assert_eq!(id(""), None);
        assert!(c.lookup("mega.nz").unwrap().exfil_tool);
    }

    #[test]
    fn within_a_domain_on_a_label_boundary() {
        assert!(is_within("mega.nz", "mega.nz") && is_within("g.api.mega.nz", "mega.nz"));
        assert!(!is_within("notmega.nz", "mega.nz") && !is_within("mega.nz", "g.mega.nz"));
    }

    #[test]
    fn a_user_file_adds_and_replaces_by_id() {
        let mut c = Catalog::builtin();
        let user = r#"
[[service]]
id = "corp-drop"
name = "Corp drop box"
category = "storage"
domains = ["drop.corp.example"]
source = "ours"

[[service]]
id = "dropbox"
name = "Dropbox (sanctioned)"
category = "storage"
domains = ["dropbox.com"]
source = "ours"
"#;
        c.merge(Catalog::parse(user, "user").unwrap());
        assert_eq!(c.lookup("a.drop.corp.example").unwrap().id, "corp-drop");
        assert_eq!(c.lookup("www.dropbox.com").unwrap().name, "Dropbox (sanctioned)");
        // The replaced entry's other suffixes are gone with it.
        assert!(c.lookup("content.dropboxapi.com").is_none());
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let e = Catalog::parse("[[service]]\nid = \"x\"\n", "f.toml").unwrap_err().to_string();
        assert!(e.contains("f.toml") && e.contains("missing field"), "{e}");
        let e = Catalog::parse("[[service]]\nid=\"x\"\nname=\"x\"\ncategory=\"cloud\"\ndomains=[\"x.com\"]\nsource=\"s\"\n", "f").unwrap_err();
        assert!(e.to_string().contains("category"), "{e}");
        let e = Catalog::parse("[[service]]\nid=\"x\"\nname=\"x\"\ncategory=\"paste\"\ndomains=[\"x.com\"]\nsource=\"s\"\ncolour=1\n", "f").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
