//! Kubernetes names for what the cgroup path only numbers: pod UID -> pod name
//! and namespace, container id -> container name (and image).
//!
//! Two sources, both optional:
//! - the kubelet's log directories on the node, which every CRI kubelet writes
//!   and which need no credentials: `/var/log/pods/<namespace>_<pod>_<uid>/` and
//!   `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` (names are
//!   DNS-1123 labels, so `_` cannot occur inside them);
//! - the kubelet's pod list (`GET /pods`, the read-only port 10255 where it is
//!   enabled, or a local proxy), which adds images and pods without logs yet.

use std::{collections::HashMap, path::Path, time::Duration};

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerMeta {
    pub name: String,
    pub image: Option<String>,
}

/// What the sources said at their last refresh.
#[derive(Debug, Default, Clone)]
pub struct Index {
    pub pods: HashMap<String, PodMeta>,
    pub containers: HashMap<String, ContainerMeta>,
}

impl Index {
    /// Merge `other` in; its entries win (the kubelet knows images, logs do not).
    pub fn merge(&mut self, other: Index) {
        self.pods.extend(other.pods);
        for (id, c) in other.containers {
            let e = self.containers.entry(id).or_default();
            e.name = c.name;
            if c.image.is_some() {
                e.image = c.image;
            }
        }
    }
}

/// `<namespace>_<pod>_<uid>` -> (uid, meta)
pub fn parse_pod_dir(name: &str) -> Option<(String, PodMeta)> {
    let mut it = name.splitn(3, '_');
    let (ns, pod, uid) = (it.next()?, it.next()?, it.next()?);
    (!ns.is_empty() && !pod.is_empty() && !uid.is_empty())
        .then(|| (uid.to_string(), PodMeta { name: pod.to_string(), namespace: ns.to_string() }))
}

/// `<pod>_<namespace>_<container>-<64 hex>.log` -> (id, container name)
pub fn parse_container_log(name: &str) -> Option<(String, String)> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let container = rest.splitn(3, '_').nth(2).filter(|c| !c.is_empty())?;
    Some((id.to_string(), container.to_string()))
}

/// Read both log directories ("" skips one). Missing directories are empty,
/// not errors: a node without Kubernetes simply has no pods.
pub fn scan_log_dirs(pods_dir: &str, containers_dir: &str, limit: usize) -> Index {
    let names = |dir: &str| -> Vec<String> {
        if dir.is_empty() {
            return Vec::new();
        }
        std::fs::read_dir(Path::new(dir))
            .map(|rd| rd.flatten().take(limit).filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    };
    Index {
        pods: names(pods_dir).iter().filter_map(|n| parse_pod_dir(n)).collect(),
        containers: names(containers_dir)
            .iter()
            .filter_map(|n| parse_container_log(n))
            .map(|(id, name)| (id, ContainerMeta { name, image: None }))
            .collect(),
    }
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: Metadata,
    #[serde(default)]
    status: Status,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: String,
    uid: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    name: String,
    #[serde(default)]
    image: Option<String>,
    /// `<runtime>://<id>`; absent while the container is being created.
    #[serde(default, rename = "containerID")]
    container_id: Option<String>,
}

/// A kubelet `/pods` answer (a v1 PodList) as an index.
pub fn parse_pod_list(body: &[u8]) -> Result<Index, serde_json::Error> {
    let list: PodList = serde_json::from_slice(body)?;
    let mut idx = Index::default();
    for p in list.items {
        idx.pods.insert(p.metadata.uid.clone(), PodMeta { name: p.metadata.name, namespace: p.metadata.namespace });
        let st = p.status;
        for c in st.container_statuses.into_iter().chain(st.init_container_statuses).chain(st.ephemeral_container_statuses) {
            let Some(id) = c.container_id.as_deref().and_then(|s| s.split_once("://")).map(|(_, id)| id.to_string()) else {
                continue;
            };
            idx.containers.insert(id, ContainerMeta { name: c.name, image: c.image });
        }
    }
    Ok(idx)
}

/// Fetch and parse the kubelet's pod list (plain HTTP; bounded in time and size).
pub fn fetch_pod_list(url: &str, timeout: Duration) -> anyhow::Result<Index> {
    use anyhow::Context;
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(timeout)).build().into();
    let mut resp = agent.get(url).call().with_context(|| format!("GET {url}"))?;
    let body = resp.body_mut().with_config().limit(64 << 20).read_to_vec().with_context(|| format!("reading {url}"))?;
    parse_pod_list(&body).with_context(|| format!("{url} did not answer a PodList"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1d2e9c0b7a6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e";

    #[test]
    fn log_directory_names() {
        assert_eq!(
            parse_pod_dir("payments_api-7d9f8-xk2lp_5b6c1a2e-9f3d-4c1b-8a7e-0d2f3c4b5a69"),
            Some(("5b6c1a2e-9f3d-4c1b-8a7e-0d2f3c4b5a69".into(), PodMeta { name: "api-7d9f8-xk2lp".into(), namespace: "payments".into() }))
        );
        assert_eq!(parse_pod_dir("garbage"), None);
        assert_eq!(parse_container_log(&format!("api-7d9f8-xk2lp_payments_web-server-{ID}.log")), Some((ID.into(), "web-server".into())));
        assert_eq!(parse_container_log("api_payments_web-abc.log"), None);
        assert_eq!(parse_container_log(&format!("nounderscores-{ID}.log")), None);
    }

    #[test]
    fn pod_list_names_pods_and_containers() {
        let body = format!(
            r#"{{"kind":"PodList","items":[{{"metadata":{{"name":"api-1","namespace":"payments","uid":"u-1"}},
              "status":{{"containerStatuses":[{{"name":"web","image":"registry/web:1.2","containerID":"containerd://{ID}"}},
                                              {{"name":"pending","image":"x"}}],
                        "initContainerStatuses":[{{"name":"init","containerID":"cri-o://abc"}}]}}}},
              {{"metadata":{{"name":"bare","uid":"u-2"}}}}]}}"#
        );
        let idx = parse_pod_list(body.as_bytes()).unwrap();
        assert_eq!(idx.pods["u-1"], PodMeta { name: "api-1".into(), namespace: "payments".into() });
        assert_eq!(idx.pods["u-2"].namespace, "");
        assert_eq!(idx.containers[ID], ContainerMeta { name: "web".into(), image: Some("registry/web:1.2".into()) });
        assert_eq!(idx.containers["abc"].name, "init");
        assert_eq!(idx.containers.len(), 2);
        assert!(parse_pod_list(b"<html>").is_err());
    }

    #[test]
    fn merge_keeps_images() {
        let mut a = Index::default();
        a.containers.insert(ID.into(), ContainerMeta { name: "web".into(), image: Some("img".into()) });
        let mut b = Index::default();
        b.containers.insert(ID.into(), ContainerMeta { name: "web".into(), image: None });
        a.merge(b);
        assert_eq!(a.containers[ID].image.as_deref(), Some("img"));
    }
}
