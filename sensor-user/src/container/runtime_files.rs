//! Container names and images from the files the runtime itself wrote when it
//! created the container, on the node, outside every container's mount
//! namespace: a process inside cannot rewrite them, and they are there before
//! its first packet (unlike the kubelet's log directories, which name only
//! Kubernetes pods, and its pod list, which needs a port most clusters close).
//!
//! | runtime | file | fields |
//! |---|---|---|
//! | containerd (CRI) | `<state>/io.containerd.runtime.v2.task/<ns>/<id>/config.json` | `io.kubernetes.cri.*` annotations |
//! | CRI-O | `<state>/overlay-containers/<id>/userdata/config.json` | `io.kubernetes.*` annotations |
//! | Podman | `<storage>/overlay-containers/containers.json` | `names`, `metadata.image-name` |
//! | Docker | `<root>/containers/<id>/config.v2.json` | `Name`, `Config.Image` |
//!
//! Pure parsing apart from `Reader::lookup`'s file reads, which are bounded in
//! size; every name is bounded in length, since whoever starts a container
//! chooses it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Deserialize;

use super::{ContainerRef, Pod};

/// A bundle's config.json is a few KiB; Podman's containers.json lists every
/// container on the host, about 1 KiB each.
const BUNDLE_MAX: u64 = 4 << 20;
const PODMAN_INDEX_MAX: u64 = 64 << 20;
/// Names and image references longer than this are cut (Kubernetes names are
/// at most 253 bytes; an image reference with a digest is about 150).
const NAME_MAX: usize = 256;
/// containerd namespaces tried for a bundle, after `k8s.io`, at most.
const NAMESPACES_MAX: usize = 64;

/// What the runtime's files say about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub name: Option<String>,
    pub image: Option<String>,
    pub pod: Option<Pod>,
}

/// Where each runtime keeps its files on this node ("" = not read).
#[derive(Debug, Clone, Default)]
pub struct Roots {
    pub containerd: String,
    pub crio: String,
    pub podman: String,
    pub docker: String,
}

/// Reads on demand; Podman's one index file is parsed again only when it changes.
#[derive(Default)]
pub struct Reader {
    roots: Roots,
    podman: Option<(SystemTime, HashMap<String, Meta>)>,
}

impl Reader {
    pub fn new(roots: Roots) -> Self {
        Self { roots, podman: None }
    }

    /// The container's metadata, if its runtime's files are readable here.
    pub fn lookup(&mut self, r: &ContainerRef) -> Option<Meta> {
        let root = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        match r.runtime {
            "containerd" => containerd_bundle(&root(&self.roots.containerd)?, &r.id)
                .and_then(|p| read_bounded(&p, BUNDLE_MAX))
                .and_then(|t| from_cri_annotations(&t)),
            "cri-o" => {
                let p = root(&self.roots.crio)?.join("overlay-containers").join(&r.id).join("userdata/config.json");
                read_bounded(&p, BUNDLE_MAX).and_then(|t| from_crio_annotations(&t))
            }
            "podman" => self.podman_index()?.get(&r.id).cloned(),
            "docker" => {
                let p = root(&self.roots.docker)?.join("containers").join(&r.id).join("config.v2.json");
                read_bounded(&p, BUNDLE_MAX).and_then(|t| from_docker_config(&t))
            }
            _ => None,
        }
    }

    fn podman_index(&mut self) -> Option<&HashMap<String, Meta>> {
        if self.roots.podman.is_empty() {
            return None;
        }
        let path = Path::new(&self.roots.podman).join("overlay-containers/containers.json");
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        if self.podman.as_ref().is_none_or(|(t, _)| *t != mtime) {
            let index = read_bounded(&path, PODMAN_INDEX_MAX).map(|t| from_podman_index(&t)).unwrap_or_default();
            self.podman = Some((mtime, index));
        }
        self.podman.as_ref().map(|(_, m)| m)
    }
}

/// A file's text, unless it is missing, unreadable or larger than `max`.
fn read_bounded(path: &Path, max: u64) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    f.take(max + 1).read_to_string(&mut text).ok()?;
    (text.len() as u64 <= max).then_some(text)
}

/// containerd's bundle: Kubernetes' namespace first, then any other (nerdctl's
/// `default`, Docker's `moby`).
fn containerd_bundle(state: &Path, id: &str) -> Option<PathBuf> {
    let tasks = state.join("io.containerd.runtime.v2.task");
    let k8s = tasks.join("k8s.io").join(id).join("config.json");
    if k8s.is_file() {
        return Some(k8s);
    }
    std::fs::read_dir(&tasks).ok()?.flatten().take(NAMESPACES_MAX).map(|ns| ns.path().join(id).join("config.json")).find(|p| p.is_file())
}

#[derive(Deserialize)]
struct Bundle {
    #[serde(default)]
    annotations: HashMap<String, String>,
}

fn annotations(text: &str) -> Option<HashMap<String, String>> {
    serde_json::from_str::<Bundle>(text).ok().map(|b| b.annotations)
}

/// The annotations containerd's CRI plugin writes into every bundle.
pub fn from_cri_annotations(text: &str) -> Option<Meta> {
    let a = annotations(text)?;
    Some(meta(
        &a,
        "io.kubernetes.cri.container-name",
        "io.kubernetes.cri.image-name",
        ["io.kubernetes.cri.sandbox-uid", "io.kubernetes.cri.sandbox-name", "io.kubernetes.cri.sandbox-namespace"],
    ))
}

/// The annotations CRI-O writes into every bundle.
pub fn from_crio_annotations(text: &str) -> Option<Meta> {
    let a = annotations(text)?;
    Some(meta(
        &a,
        "io.kubernetes.container.name",
        "io.kubernetes.cri-o.ImageName",
        ["io.kubernetes.pod.uid", "io.kubernetes.pod.name", "io.kubernetes.pod.namespace"],
    ))
}

fn meta(a: &HashMap<String, String>, name: &str, image: &str, [uid, pod, namespace]: [&str; 3]) -> Meta {
    let get = |k: &str| a.get(k).and_then(|v| bounded(v));
    Meta {
        name: get(name),
        image: get(image),
        pod: get(uid).map(|uid| Pod { uid, name: get(pod), namespace: get(namespace) }),
    }
}

#[derive(Deserialize)]
struct PodmanEntry {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    /// A JSON document in a string: `{"image-name": ..., "name": ...}`.
    #[serde(default)]
    metadata: String,
}

#[derive(Deserialize, Default)]
struct PodmanMetadata {
    #[serde(default, rename = "image-name")]
    image_name: String,
}

/// Podman's (containers/storage's) list of every container it created.
pub fn from_podman_index(text: &str) -> HashMap<String, Meta> {
    let Ok(entries) = serde_json::from_str::<Vec<PodmanEntry>>(text) else { return HashMap::new() };
    entries
        .into_iter()
        .map(|e| {
            let md: PodmanMetadata = serde_json::from_str(&e.metadata).unwrap_or_default();
            let meta = Meta { name: e.names.first().and_then(|n| bounded(n)), image: bounded(&md.image_name), pod: None };
            (e.id, meta)
        })
        .collect()
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default, rename = "Name")]
    name: String,
    #[serde(default, rename = "Config")]
    config: DockerInner,
}

#[derive(Deserialize, Default)]
struct DockerInner {
    #[serde(default, rename = "Image")]
    image: String,
}

/// Docker's per-container `config.v2.json` (its name carries a leading `/`).
pub fn from_docker_config(text: &str) -> Option<Meta> {
    let c: DockerConfig = serde_json::from_str(text).ok()?;
    Some(Meta { name: bounded(c.name.trim_start_matches('/')), image: bounded(&c.config.image), pod: None })
}

/// A name as claimed by whoever started the container: empty is none, and a
/// long one is cut at a character boundary.
fn bounded(s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    let mut end = s.len().min(NAME_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(s[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1d2e9c0b7a6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e";
    const UID: &str = "5b6c1a2e-9f3d-4c1b-8a7e-0d2f3c4b5a69";

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-rtfiles-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn cref(runtime: &'static str) -> ContainerRef {
        ContainerRef { id: ID.into(), runtime, pod_uid: None }
    }

    #[test]
    fn containerd_bundle_annotations_name_the_container_its_image_and_pod() {
        let d = dir("containerd");
        write(
            &d.join(format!("io.containerd.runtime.v2.task/k8s.io/{ID}/config.json")),
            &format!(
                r#"{{"ociVersion":"1.1.0","annotations":{{"io.kubernetes.cri.container-type":"container",
                "io.kubernetes.cri.container-name":"uploader","io.kubernetes.cri.image-name":"registry.example/backup:2.1",
                "io.kubernetes.cri.sandbox-name":"payments-api-7d9f8-xk2lp","io.kubernetes.cri.sandbox-namespace":"payments",
                "io.kubernetes.cri.sandbox-uid":"{UID}"}}}}"#
            ),
        );
        let mut r = Reader::new(Roots { containerd: d.display().to_string(), ..Roots::default() });
        let m = r.lookup(&cref("containerd")).expect("the bundle is read");
        assert_eq!(m.name.as_deref(), Some("uploader"));
        assert_eq!(m.image.as_deref(), Some("registry.example/backup:2.1"));
        let pod = m.pod.expect("the sandbox annotations name the pod");
        assert_eq!((pod.uid.as_str(), pod.name.as_deref(), pod.namespace.as_deref()), (UID, Some("payments-api-7d9f8-xk2lp"), Some("payments")));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_nerdctl_bundle_in_another_namespace_is_found() {
        let d = dir("nerdctl");
        write(&d.join(format!("io.containerd.runtime.v2.task/default/{ID}/config.json")), r#"{"annotations":{"nerdctl/name":"x"}}"#);
        let mut r = Reader::new(Roots { containerd: d.display().to_string(), ..Roots::default() });
        assert_eq!(r.lookup(&cref("containerd")), Some(Meta::default()), "found, though it names nothing CRI would");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn crio_bundle_annotations() {
        let d = dir("crio");
        write(
            &d.join(format!("overlay-containers/{ID}/userdata/config.json")),
            &format!(
                r#"{{"annotations":{{"io.kubernetes.container.name":"web","io.kubernetes.cri-o.ImageName":"quay.io/x/web:1",
                "io.kubernetes.pod.name":"web-0","io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.uid":"{UID}"}}}}"#
            ),
        );
        let mut r = Reader::new(Roots { crio: d.display().to_string(), ..Roots::default() });
        let m = r.lookup(&cref("cri-o")).unwrap();
        assert_eq!((m.name.as_deref(), m.image.as_deref()), (Some("web"), Some("quay.io/x/web:1")));
        assert_eq!(m.pod.and_then(|p| p.namespace).as_deref(), Some("shop"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn podman_index_is_reread_when_it_changes() {
        let d = dir("podman");
        let index = d.join("overlay-containers/containers.json");
        let entry = |name: &str| {
            format!(r#"[{{"id":"{ID}","names":["{name}"],"image":"27146b","metadata":"{{\"image-name\":\"localhost/workload:test\",\"name\":\"{name}\"}}"}}]"#)
        };
        write(&index, &entry("uploader"));
        let mut r = Reader::new(Roots { podman: d.display().to_string(), ..Roots::default() });
        let m = r.lookup(&cref("podman")).unwrap();
        assert_eq!((m.name.as_deref(), m.image.as_deref()), (Some("uploader"), Some("localhost/workload:test")));
        // A renamed container: the file's mtime moves, the index is read again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(&index, &entry("renamed"));
        assert_eq!(r.lookup(&cref("podman")).unwrap().name.as_deref(), Some("renamed"));
        assert!(r.lookup(&ContainerRef { id: "0".repeat(64), runtime: "podman", pod_uid: None }).is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn docker_config() {
        let m = from_docker_config(r#"{"Name":"/backup-job","Config":{"Image":"restic/restic:0.16"}}"#).unwrap();
        assert_eq!((m.name.as_deref(), m.image.as_deref()), (Some("backup-job"), Some("restic/restic:0.16")));
    }

    #[test]
    fn hostile_files_give_nothing_or_bounded_names() {
        assert!(from_cri_annotations("not json").is_none());
        assert!(from_podman_index(r#"{"id": 1}"#).is_empty());
        assert_eq!(from_podman_index(&format!(r#"[{{"id":"{ID}","metadata":"{{broken"}}]"#))[ID], Meta::default());
        let long = "é".repeat(400);
        let m = from_docker_config(&format!(r#"{{"Name":"/{long}"}}"#)).unwrap();
        let name = m.name.unwrap();
        assert!(name.len() <= NAME_MAX && name.chars().all(|c| c == 'é'), "cut at a character boundary");
        // Too large to be a bundle: not read at all.
        let d = dir("big");
        let p = d.join("big.json");
        write(&p, &" ".repeat(BUNDLE_MAX as usize + 1));
        assert!(read_bounded(&p, BUNDLE_MAX).is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unconfigured_roots_read_nothing() {
        let mut r = Reader::new(Roots::default());
        for rt in ["containerd", "cri-o", "podman", "docker"] {
            assert!(r.lookup(&cref(rt)).is_none(), "{rt}");
        }
    }
}
