//! Which container (and Kubernetes pod) a sender runs in: the runtime and id
//! from its cgroup path (`cgroup_path`), names and image from the runtime's own
//! files on the node (`runtime_files`), else from the kubelet's log directories
//! or pod list (`kube`). The result rides on flows and alerts as ECS
//! `container.*` and `orchestrator.*`.

pub mod cgroup_path;
pub mod kube;
pub mod runtime_files;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::config::Containers as Config;

/// What a cgroup path alone says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub id: String,
    /// containerd | cri-o | docker | podman
    pub runtime: &'static str,
    pub pod_uid: Option<String>,
}

/// A sender's container, as flows and alerts (and record files) carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub runtime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Pod metadata is re-read at most this often when a pod is not known yet.
const REFRESH_MIN: Duration = Duration::from_secs(10);
/// After a failed kubelet request, wait this long before the next.
const KUBELET_BACKOFF: Duration = Duration::from_secs(60);
const KUBELET_TIMEOUT: Duration = Duration::from_secs(1);
/// Cached path and pid answers; cleared wholesale when full (cheap to rebuild).
const CACHE_MAX: usize = 16_384;
/// Log directory entries read per refresh at most.
const SCAN_LIMIT: usize = 100_000;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub refreshes: u64,
    pub kubelet_errors: u64,
}

pub struct Resolver {
    cfg: Config,
    by_path: HashMap<String, Option<ContainerRef>>,
    by_pid: HashMap<(u32, u64), Option<ContainerRef>>,
    index: kube::Index,
    last_refresh: Option<Instant>,
    kubelet_retry_at: Option<Instant>,
    /// The kubelet request in flight, on a thread of its own: it may take
    /// its whole timeout, and the tick (which drains the ring buffer) must
    /// not wait for it.
    kubelet: Option<std::sync::mpsc::Receiver<anyhow::Result<kube::Index>>>,
    /// v1 hierarchies are mounted, so a process's container may show only in
    /// /proc/<pid>/cgroup, not in its v2 path.
    v1_mounted: bool,
    runtime_files: runtime_files::Reader,
    /// What the runtime's files said, by container id, and when a miss may be
    /// asked again (a container's files exist before its first packet, so a
    /// miss is rare: a runtime whose files are not mounted here).
    runtime_meta: HashMap<String, (Option<runtime_files::Meta>, Instant)>,
    pub stats: Stats,
}

impl Resolver {
    pub fn new(cfg: Config, v1_mounted: bool) -> Self {
        Self {
            by_path: HashMap::new(),
            by_pid: HashMap::new(),
            index: kube::Index::default(),
            last_refresh: None,
            kubelet_retry_at: None,
            kubelet: None,
            v1_mounted,
            runtime_files: runtime_files::Reader::new(cfg.runtime_roots()),
            runtime_meta: HashMap::new(),
            stats: Stats::default(),
            cfg,
        }
    }

    /// The container of a sender: from its cgroup v2 path, else (on hosts with
    /// v1 hierarchies) from `/proc/<pid>/cgroup` while the process lives.
    pub fn resolve(&mut self, cgroup_v2: Option<&str>, pid: u32, start_ns: u64) -> Option<Container> {
        if !self.cfg.enabled {
            return None;
        }
        let mut r = cgroup_v2.and_then(|p| cached(&mut self.by_path, p.to_string(), || cgroup_path::parse(p)));
        if r.is_none() && self.v1_mounted && pid > 0 {
            r = cached(&mut self.by_pid, (pid, start_ns), || {
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok().and_then(|t| cgroup_path::parse_proc_cgroup(&t))
            });
        }
        r.map(|r| self.describe(r))
    }

    /// Add the names the runtime's files, else the pod metadata, know.
    fn describe(&mut self, r: ContainerRef) -> Container {
        let own = self.runtime_meta(&r).unwrap_or_default();
        self.take_kubelet_answer();
        let known = |idx: &kube::Index| r.pod_uid.as_ref().is_none_or(|u| idx.pods.contains_key(u) && idx.containers.contains_key(&r.id));
        let named = own.name.is_some() && (r.pod_uid.is_none() || own.pod.as_ref().is_some_and(|p| p.name.is_some()));
        if r.pod_uid.is_some() && !named && !known(&self.index) {
            self.refresh();
        }
        let meta = self.index.containers.get(&r.id);
        // The pod UID is the cgroup path's; a bundle naming another pod is not believed.
        let own_pod = own.pod.filter(|p| Some(&p.uid) == r.pod_uid.as_ref());
        Container {
            runtime: r.runtime.to_string(),
            name: own.name.or_else(|| meta.map(|m| m.name.clone())),
            image: own.image.or_else(|| meta.and_then(|m| m.image.clone())),
            pod: r.pod_uid.map(|uid| {
                let p = self.index.pods.get(&uid);
                Pod {
                    name: own_pod.as_ref().and_then(|o| o.name.clone()).or_else(|| p.map(|p| p.name.clone())),
                    namespace: own_pod.as_ref().and_then(|o| o.namespace.clone()).or_else(|| p.map(|p| p.namespace.clone())),
                    uid,
                }
            }),
            id: r.id,
        }
    }

    /// The runtime's files on this container, read once (a miss again after
    /// `REFRESH_MIN`).
    fn runtime_meta(&mut self, r: &ContainerRef) -> Option<runtime_files::Meta> {
        let now = Instant::now();
        if let Some((m, at)) = self.runtime_meta.get(&r.id) {
            if m.is_some() || now.duration_since(*at) < REFRESH_MIN {
                return m.clone();
            }
        }
        if self.runtime_meta.len() >= CACHE_MAX {
            self.runtime_meta.clear();
        }
        let m = self.runtime_files.lookup(r);
        self.runtime_meta.insert(r.id.clone(), (m.clone(), now));
        m
    }

    fn refresh(&mut self) {
        let now = Instant::now();
        if self.last_refresh.is_some_and(|t| now.duration_since(t) < REFRESH_MIN) {
            return;
        }
        self.last_refresh = Some(now);
        self.stats.refreshes += 1;
        // Local and bounded: read now, so a new pod is named in this tick.
        let idx = kube::scan_log_dirs(&self.cfg.pod_logs, &self.cfg.container_logs, SCAN_LIMIT);
        self.merge(idx);
        if !self.cfg.kubelet_url.is_empty() && self.kubelet.is_none() && self.kubelet_retry_at.is_none_or(|t| now >= t) {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let url = self.cfg.kubelet_url.clone();
            let spawned = std::thread::Builder::new().name("sluice-kubelet".into()).spawn(move || {
                let _ = tx.send(kube::fetch_pod_list(&url, KUBELET_TIMEOUT));
            });
            match spawned {
                Ok(_) => self.kubelet = Some(rx),
                Err(e) => eprintln!("sluice: cannot start the kubelet request ({e}); pod names from log directories only"),
            }
        }
    }

    /// Merge the kubelet's answer, once it has come.
    fn take_kubelet_answer(&mut self) {
        let Some(rx) = &self.kubelet else { return };
        let answer = match rx.try_recv() {
            Ok(a) => a,
            Err(std::sync::mpsc::TryRecvError::Empty) => return,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(anyhow::anyhow!("the kubelet request thread ended without an answer")),
        };
        self.kubelet = None;
        match answer {
            Ok(k) => self.merge(k),
            Err(e) => {
                self.stats.kubelet_errors += 1;
                self.kubelet_retry_at = Some(Instant::now() + KUBELET_BACKOFF);
                eprintln!("sluice: kubelet pod list unavailable (pod names from log directories only; retry in {KUBELET_BACKOFF:?}): {e:#}");
            }
        }
    }

    /// Keep what a source said before if it is silent now (a pod that ended
    /// may still have flows in this tick).
    fn merge(&mut self, idx: kube::Index) {
        self.index.merge(idx);
        if self.index.pods.len() > CACHE_MAX * 4 {
            self.index = kube::Index::default();
        }
    }
}

fn cached<K: std::hash::Hash + Eq>(m: &mut HashMap<K, Option<ContainerRef>>, k: K, f: impl FnOnce() -> Option<ContainerRef>) -> Option<ContainerRef> {
    if let Some(v) = m.get(&k) {
        return v.clone();
    }
    if m.len() >= CACHE_MAX {
        m.clear();
    }
    let v = f();
    m.insert(k, v.clone());
    v
}

/// Are cgroup v1 hierarchies mounted (a /proc/self/mounts text)?
pub fn v1_mounted_in(mounts: &str) -> bool {
    mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("cgroup"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1d2e9c0b7a6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e";
    const UID: &str = "5b6c1a2e-9f3d-4c1b-8a7e-0d2f3c4b5a69";

    fn cfg(dir: &std::path::Path) -> Config {
        Config {
            enabled: true,
            pod_logs: dir.join("pods").to_string_lossy().into_owned(),
            container_logs: dir.join("containers").to_string_lossy().into_owned(),
            kubelet_url: String::new(),
            containerd_state: dir.join("containerd").to_string_lossy().into_owned(),
            crio_state: String::new(),
            podman_storage: String::new(),
            docker_root: String::new(),
        }
    }

    #[test]
    fn the_runtimes_bundle_names_the_container_and_its_pod_but_not_another_pod() {
        let d = std::env::temp_dir().join(format!("sluice-bundle-{}", std::process::id()));
        let bundle = d.join(format!("containerd/io.containerd.runtime.v2.task/k8s.io/{ID}"));
        std::fs::create_dir_all(&bundle).unwrap();
        let write = |uid: &str| {
            let text = format!(
                r#"{{"annotations":{{"io.kubernetes.cri.container-name":"uploader","io.kubernetes.cri.image-name":"backup:2",
                "io.kubernetes.cri.sandbox-name":"api-0","io.kubernetes.cri.sandbox-namespace":"payments","io.kubernetes.cri.sandbox-uid":"{uid}"}}}}"#
            );
            std::fs::write(bundle.join("config.json"), text).unwrap();
        };
        write(UID);
        let path = format!("/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope", UID.replace('-', "_"));
        let c = Resolver::new(cfg(&d), false).resolve(Some(&path), 1, 1).unwrap();
        assert_eq!((c.name.as_deref(), c.image.as_deref()), (Some("uploader"), Some("backup:2")));
        let pod = c.pod.unwrap();
        assert_eq!((pod.name.as_deref(), pod.namespace.as_deref()), (Some("api-0"), Some("payments")));
        // The cgroup path's pod UID is the kernel's word; a bundle claiming another pod names none.
        write("00000000-0000-4000-8000-000000000000");
        let c = Resolver::new(cfg(&d), false).resolve(Some(&path), 1, 1).unwrap();
        assert_eq!(c.name.as_deref(), Some("uploader"));
        assert_eq!(c.pod.map(|p| (p.uid, p.name)), Some((UID.to_string(), None)));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn pod_names_come_from_the_kubelet_log_directories() {
        let d = std::env::temp_dir().join(format!("sluice-kube-{}", std::process::id()));
        std::fs::create_dir_all(d.join("pods")).unwrap();
        std::fs::create_dir_all(d.join("containers")).unwrap();
        let mut r = Resolver::new(cfg(&d), false);
        let path = format!("/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope", UID.replace('-', "_"));
        // Not on disk yet: id, runtime and UID only.
        let c = r.resolve(Some(&path), 1, 1).unwrap();
        assert_eq!((c.id.as_str(), c.runtime.as_str(), c.name.clone()), (ID, "containerd", None));
        assert_eq!(c.pod.as_ref().unwrap().uid, UID);
        assert_eq!(c.pod.unwrap().name, None);
        std::fs::create_dir_all(d.join(format!("pods/payments_api-1_{UID}"))).unwrap();
        std::fs::write(d.join(format!("containers/api-1_payments_web-{ID}.log")), "").unwrap();
        r.last_refresh = None; // as if REFRESH_MIN had passed
        let c = r.resolve(Some(&path), 1, 1).unwrap();
        assert_eq!(c.name.as_deref(), Some("web"));
        let pod = c.pod.unwrap();
        assert_eq!((pod.name.as_deref(), pod.namespace.as_deref()), (Some("api-1"), Some("payments")));
        assert_eq!(r.stats.refreshes, 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_kubelet_that_does_not_answer_holds_no_tick_and_its_answer_is_taken_later() {
        use std::io::{Read, Write};
        let d = std::env::temp_dir().join(format!("sluice-kubelet-{}", std::process::id()));
        std::fs::create_dir_all(d.join("pods")).unwrap();
        std::fs::create_dir_all(d.join("containers")).unwrap();
        std::fs::create_dir_all(d.join(format!("pods/payments_api-1_{UID}"))).unwrap();
        // A kubelet that takes the request and answers only when released.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/pods", l.local_addr().unwrap());
        let (release, held) = std::sync::mpsc::channel::<()>();
        let kubelet = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            held.recv().unwrap();
            let body = format!(
                r#"{{"items":[{{"metadata":{{"name":"api-1","namespace":"payments","uid":"{UID}"}},"status":{{"containerStatuses":[{{"name":"web","image":"registry/web:1.2","containerID":"containerd://{ID}"}}]}}}}]}}"#
            );
            let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        });
        let mut r = Resolver::new(Config { kubelet_url: url, ..cfg(&d) }, false);
        let path = format!("/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope", UID.replace('-', "_"));
        // The kubelet holds the request: the pod is named from its log
        // directory at once, and the image is not known yet.
        let c = r.resolve(Some(&path), 1, 1).unwrap();
        assert_eq!(c.pod.as_ref().and_then(|p| p.name.as_deref()), Some("api-1"));
        assert_eq!(c.image, None);
        assert!(r.kubelet.is_some(), "the request is still in flight");
        release.send(()).unwrap();
        kubelet.join().unwrap();
        // A later tick takes the answer.
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.kubelet.is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            r.take_kubelet_answer();
        }
        let c = r.resolve(Some(&path), 1, 1).unwrap();
        assert_eq!(c.image.as_deref(), Some("registry/web:1.2"));
        assert_eq!(r.stats.kubelet_errors, 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn disabled_or_not_a_container() {
        let d = std::env::temp_dir();
        let mut r = Resolver::new(cfg(&d), false);
        assert!(r.resolve(Some("/user.slice"), 1, 1).is_none());
        assert!(r.resolve(None, 1, 1).is_none());
        let mut off = cfg(&d);
        off.enabled = false;
        assert!(Resolver::new(off, false).resolve(Some(&format!("/docker/{ID}")), 1, 1).is_none());
        assert!(v1_mounted_in("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"));
        assert!(!v1_mounted_in("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"));
    }
}
