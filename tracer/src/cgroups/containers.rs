//! Container and pod names from the runtimes' own state on the node.
//!
//! The path names a container by id only (`model::workload::classify`); the name an operator
//! gave it lives in the runtime's state files:
//! - docker: `/var/lib/docker/containers/<id>/config.v2.json`, field `Name` (`/web-1`); the data
//!   root moves with `data-root` in `/etc/docker/daemon.json`.
//! - podman (root): `/var/lib/containers/storage/<driver>-containers/containers.json`, the
//!   container store's array of `{"id", "names"}` (the overlay driver's is `overlay-containers`).
//! - kubernetes: the kubelet's log directories. `/var/log/pods/<namespace>_<pod>_<uid>/` gives
//!   a pod uid's namespace and pod name; `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`
//!   (a symlink, only its name is read) gives a container id's name.
//!
//! Reading is bounded (file size caps, entry caps, no symlink followed for a state file) and
//! never fails naming: a missing or garbled file only means no name.
use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use crate::model::workload::{Workload, WorkloadKind};

/// Largest docker `config.v2.json` read (they are a few KB; env and labels can grow them).
const DOCKER_CONFIG_MAX: u64 = 1 << 20;
/// Largest podman `containers.json` read (about 500 bytes a container).
const PODMAN_STORE_MAX: u64 = 32 << 20;
/// Largest `/etc/docker/daemon.json` read.
const DAEMON_JSON_MAX: u64 = 64 << 10;
/// Most entries of a directory listed (storage drivers, pod and container log names).
const DIR_ENTRIES_MAX: usize = 100_000;
/// Most docker names remembered; past it the cache starts over.
const DOCKER_CACHE_MAX: usize = 4096;

/// Where the runtimes keep their state. Default: the node's own (`/`-rooted) paths; tests
/// root them in a temp dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRoots {
    /// `/etc/docker/daemon.json`: its `data-root` overrides `docker_data`.
    pub docker_daemon_json: PathBuf,
    /// `/var/lib/docker`.
    pub docker_data: PathBuf,
    /// `/var/lib/containers/storage` (podman as root).
    pub podman_storage: PathBuf,
    /// `/var/log/pods`.
    pub kubelet_pod_logs: PathBuf,
    /// `/var/log/containers`.
    pub kubelet_container_logs: PathBuf,
}

impl StateRoots {
    /// The standard locations under `root` (`/` on a live node).
    pub fn under(root: &Path) -> Self {
        StateRoots {
            docker_daemon_json: root.join("etc/docker/daemon.json"),
            docker_data: root.join("var/lib/docker"),
            podman_storage: root.join("var/lib/containers/storage"),
            kubelet_pod_logs: root.join("var/log/pods"),
            kubelet_container_logs: root.join("var/log/containers"),
        }
    }
}

impl Default for StateRoots {
    fn default() -> Self {
        Self::under(Path::new("/"))
    }
}

/// A file's identity for a cache: re-read only when it changes.
type Stamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len()))
}

/// Something read from a file or directory, kept until the file's stamp changes.
struct Cached<T> {
    stamp: Stamp,
    value: T,
}

/// A kubelet pod: (namespace, pod name).
type PodName = (String, String);
/// A kubelet container: (namespace, pod name, container name).
type PodContainerName = (String, String, String);

/// Adds container and pod names to workloads. Holds caches; one per namer.
pub struct ContainerNames {
    roots: StateRoots,
    /// docker's data root, once daemon.json was looked at.
    docker_data: Option<PathBuf>,
    docker: HashMap<String, Option<String>>,
    /// podman: per containers.json, id -> first name.
    podman: HashMap<PathBuf, Cached<HashMap<String, String>>>,
    /// kubelet: pod uid -> (namespace, pod).
    pods: Option<Cached<HashMap<String, PodName>>>,
    /// kubelet: container id -> (namespace, pod, container).
    k8s_containers: Option<Cached<HashMap<String, PodContainerName>>>,
}

impl Default for ContainerNames {
    fn default() -> Self {
        Self::new(StateRoots::default())
    }
}

impl ContainerNames {
    pub fn new(roots: StateRoots) -> Self {
        ContainerNames {
            roots,
            docker_data: None,
            docker: HashMap::new(),
            podman: HashMap::new(),
            pods: None,
            k8s_containers: None,
        }
    }

    /// Fill in `name` (and for kubernetes `namespace` and `pod`) where the runtime's state
    /// says them; leave the workload as it is otherwise.
    pub fn add_names(&mut self, w: &mut Workload) {
        match w.kind {
            WorkloadKind::Docker => {
                if let Some(id) = w.container.as_deref().filter(|id| is_hex64(id)) {
                    w.name = self.docker_name(id);
                }
            }
            WorkloadKind::Podman => {
                if let Some(id) = w.container.as_deref().filter(|id| is_hex64(id)) {
                    w.name = self.podman_name(id);
                }
            }
            WorkloadKind::Kubernetes => self.kubernetes_names(w),
            WorkloadKind::Yarn | WorkloadKind::Systemd | WorkloadKind::Cgroup => {}
        }
    }

    fn docker_name(&mut self, id: &str) -> Option<String> {
        if let Some(n) = self.docker.get(id) {
            return n.clone();
        }
        let data = self
            .docker_data
            .get_or_insert_with(|| {
                docker_data_root(&self.roots.docker_daemon_json)
                    .unwrap_or_else(|| self.roots.docker_data.clone())
            })
            .clone();
        let name = read_bounded(
            &data.join("containers").join(id).join("config.v2.json"),
            DOCKER_CONFIG_MAX,
        )
        .and_then(|b| serde_json::from_slice::<DockerConfig>(&b).ok())
        .map(|c| c.name.trim_start_matches('/').to_string())
        .filter(|n| !n.is_empty());
        if self.docker.len() >= DOCKER_CACHE_MAX {
            self.docker.clear();
        }
        self.docker.insert(id.to_string(), name.clone());
        name
    }

    fn podman_name(&mut self, id: &str) -> Option<String> {
        // One store per storage driver (`overlay-containers`, `vfs-containers`, ...).
        let stores: Vec<PathBuf> = list_dir(&self.roots.podman_storage)
            .into_iter()
            .filter(|d| d.ends_with("-containers"))
            .map(|d| self.roots.podman_storage.join(d).join("containers.json"))
            .collect();
        for store in stores {
            let Some(st) = stamp(&store) else { continue };
            let fresh = self.podman.get(&store).is_some_and(|c| c.stamp == st);
            if !fresh {
                let value = read_podman_store(&store);
                self.podman
                    .insert(store.clone(), Cached { stamp: st, value });
            }
            if let Some(n) = self.podman.get(&store).and_then(|c| c.value.get(id)) {
                return Some(n.clone());
            }
        }
        None
    }

    fn kubernetes_names(&mut self, w: &mut Workload) {
        if let Some(id) = w.container.as_deref().filter(|id| is_hex64(id)) {
            let dir = &self.roots.kubelet_container_logs;
            let listing = refresh(&mut self.k8s_containers, dir, container_log_names);
            if let Some((ns, pod, container)) = listing.and_then(|m| m.get(id)) {
                w.namespace = Some(ns.clone());
                w.pod = Some(pod.clone());
                w.name = Some(container.clone());
                return;
            }
        }
        if let Some(uid) = w.pod_uid.as_deref() {
            let dir = &self.roots.kubelet_pod_logs;
            let listing = refresh(&mut self.pods, dir, pod_log_names);
            if let Some((ns, pod)) = listing.and_then(|m| m.get(uid)) {
                w.namespace = Some(ns.clone());
                w.pod = Some(pod.clone());
            }
        }
    }
}

/// The cached listing of `dir`, re-read when the directory changed (an entry added or
/// removed changes its mtime).
fn refresh<'a, T>(
    cache: &'a mut Option<Cached<T>>,
    dir: &Path,
    parse: fn(Vec<String>) -> T,
) -> Option<&'a T> {
    let st = stamp(dir)?;
    if cache.as_ref().is_none_or(|c| c.stamp != st) {
        *cache = Some(Cached {
            stamp: st,
            value: parse(list_dir(dir)),
        });
    }
    cache.as_ref().map(|c| &c.value)
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Deserialize)]
struct DaemonJson {
    #[serde(rename = "data-root")]
    data_root: Option<PathBuf>,
}

#[derive(Deserialize)]
struct PodmanStoreEntry {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// `data-root` of daemon.json, if set (an absolute path on the node, so not re-rooted).
fn docker_data_root(daemon_json: &Path) -> Option<PathBuf> {
    let b = read_bounded(daemon_json, DAEMON_JSON_MAX)?;
    serde_json::from_slice::<DaemonJson>(&b)
        .ok()?
        .data_root
        .filter(|p| p.is_absolute())
}

/// id -> first name of one podman container store; empty if unreadable.
fn read_podman_store(path: &Path) -> HashMap<String, String> {
    read_bounded(path, PODMAN_STORE_MAX)
        .and_then(|b| serde_json::from_slice::<Vec<PodmanStoreEntry>>(&b).ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.id, e.names.into_iter().next()?)))
        .collect()
}

/// `/var/log/pods` entries `<namespace>_<pod>_<uid>` -> uid -> (namespace, pod). Namespaces,
/// pod names and uids hold no `_`, so the split is exact.
fn pod_log_names(entries: Vec<String>) -> HashMap<String, PodName> {
    entries
        .into_iter()
        .filter_map(|e| {
            let mut it = e.split('_');
            let (ns, pod, uid) = (it.next()?, it.next()?, it.next()?);
            if it.next().is_some() || ns.is_empty() || pod.is_empty() || uid.is_empty() {
                return None;
            }
            Some((uid.to_string(), (ns.to_string(), pod.to_string())))
        })
        .collect()
}

/// `/var/log/containers` entries `<pod>_<namespace>_<container>-<id>.log` -> id ->
/// (namespace, pod, container).
fn container_log_names(entries: Vec<String>) -> HashMap<String, PodContainerName> {
    entries
        .into_iter()
        .filter_map(|e| {
            let (rest, id) = e.strip_suffix(".log")?.rsplit_once('-')?;
            if !is_hex64(id) {
                return None;
            }
            let mut it = rest.split('_');
            let (pod, ns, container) = (it.next()?, it.next()?, it.next()?);
            if it.next().is_some() || [pod, ns, container].iter().any(|s| s.is_empty()) {
                return None;
            }
            Some((
                id.to_string(),
                (ns.to_string(), pod.to_string(), container.to_string()),
            ))
        })
        .collect()
}

/// Names in `dir` (at most DIR_ENTRIES_MAX); empty if it cannot be read.
fn list_dir(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .take(DIR_ENTRIES_MAX)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// A regular file's bytes, if it is at most `cap` long. A symlink in the last component is
/// refused (O_NOFOLLOW): a state file is never a link.
fn read_bounded(path: &Path, cap: u64) -> Option<Vec<u8>> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let m = f.metadata().ok()?;
    if !m.is_file() || m.len() > cap {
        return None;
    }
    let mut buf = Vec::with_capacity(m.len() as usize);
    f.take(cap + 1).read_to_end(&mut buf).ok()?;
    (buf.len() as u64 <= cap).then_some(buf)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::workload::classify;

    const DOCKER_ID: &str = "62e2a4a81157298700fa4d8d96eed508524925faa78e2e7cc998ea833f394d4f";
    const PODMAN_ID: &str = "cac53b0ad80d533c1092477dca9e63fddcfaa6d7a280eb8a34c598e1b5c44a5c";
    const CRI_ID: &str = "4e3f9b2c1a0d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";
    const SANDBOX_ID: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";
    const POD_UID: &str = "3f1c2a8e-6b7d-4e59-9a1c-0d2e4f6a8b90";

    /// A `/` in a temp dir holding state files shaped like the real ones (copied from a
    /// docker 20.10 and a podman 4.3 container on this project's host; trimmed).
    struct Node {
        dir: tempfile::TempDir,
    }

    impl Node {
        fn new() -> Node {
            Node {
                dir: tempfile::Builder::new()
                    .prefix("cfstrace-containers-")
                    .tempdir()
                    .unwrap(),
            }
        }

        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let p = self.dir.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, text).unwrap();
            p
        }

        fn mkdir(&self, rel: &str) {
            fs::create_dir_all(self.dir.path().join(rel)).unwrap();
        }

        fn names(&self) -> ContainerNames {
            ContainerNames::new(StateRoots::under(self.dir.path()))
        }

        fn docker(&self, data_root: &str, id: &str, name: &str) {
            self.write(
                &format!("{data_root}/containers/{id}/config.v2.json"),
                &docker_config(id, name),
            );
        }

        fn podman(&self, driver: &str, entries: &[(&str, &str)]) {
            let store: Vec<serde_json::Value> = entries
                .iter()
                .map(|(id, name)| podman_entry(id, name))
                .collect();
            self.write(
                &format!("var/lib/containers/storage/{driver}-containers/containers.json"),
                &serde_json::to_string(&store).unwrap(),
            );
        }
    }

    /// docker 20.10's config.v2.json, as `docker run --name cfs-dprobe` wrote it (trimmed).
    fn docker_config(id: &str, name: &str) -> String {
        serde_json::json!({
            "StreamConfig": {},
            "State": {"Running": true, "Paused": false, "Pid": 19391, "ExitCode": 0,
                      "StartedAt": "2026-12-02T06:21:25.1Z", "Health": null},
            "ID": id,
            "Created": "2026-12-02T06:21:24.9Z",
            "Path": "/bin/sh",
            "Args": ["-c", "while :; do :; done"],
            "Config": {"Hostname": &id[..12], "Cmd": ["/bin/sh", "-c", "while :; do :; done"],
                       "Image": "cfstrace-busybox:test", "Labels": {}},
            "Image": "sha256:374763b6fcedc221449cf934eaaa90f12780df18a7083d0bef3f8f5adb847e7b",
            "NetworkSettings": {"Networks": {"none": {}}},
            "LogPath": format!("/var/lib/docker/containers/{id}/{id}-json.log"),
            "Name": format!("/{name}"),
            "Driver": "overlay2",
            "RestartCount": 0,
            "HasBeenStartedBefore": false
        })
        .to_string()
    }

    /// One entry of podman 4.3's overlay-containers/containers.json.
    fn podman_entry(id: &str, name: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id,
            "names": [name],
            "image": "e3856701fbeb1daabe83c4a78d62c20e57db5431d4683c9731292c5434234386",
            "layer": "c15ede93de1458df05494f5f697ed2c73838a2cf174d253c4d434efe0fcf264e",
            "metadata": format!("{{\"image-name\":\"localhost/cfstrace-busybox:test\",\"name\":\"{name}\",\"created-at\":1796192465}}"),
            "created": "2026-12-02T06:21:05.664992738Z",
            "flags": {"MountLabel": "", "ProcessLabel": ""}
        })
    }

    fn named(names: &mut ContainerNames, path: &str) -> Workload {
        let mut w = classify(path);
        names.add_names(&mut w);
        w
    }

    #[test]
    fn docker_both_drivers_and_data_root() {
        let node = Node::new();
        node.docker("var/lib/docker", DOCKER_ID, "web-1");
        let mut names = node.names();
        for path in [
            format!("/docker/{DOCKER_ID}"),
            format!("/system.slice/docker-{DOCKER_ID}.scope"),
        ] {
            let w = named(&mut names, &path);
            assert_eq!(w.kind, WorkloadKind::Docker);
            assert_eq!(w.container.as_deref(), Some(DOCKER_ID));
            assert_eq!(w.name.as_deref(), Some("web-1"), "{path}");
        }
        // Unknown id: no name.
        let w = named(&mut names, &format!("/docker/{CRI_ID}"));
        assert_eq!(w.name, None);

        // daemon.json moves the data root.
        let node = Node::new();
        let moved = node.dir.path().join("srv/docker");
        node.write(
            "etc/docker/daemon.json",
            &serde_json::json!({"data-root": moved, "log-driver": "json-file"}).to_string(),
        );
        fs::create_dir_all(moved.join("containers").join(DOCKER_ID)).unwrap();
        fs::write(
            moved
                .join("containers")
                .join(DOCKER_ID)
                .join("config.v2.json"),
            docker_config(DOCKER_ID, "moved"),
        )
        .unwrap();
        node.docker("var/lib/docker", DOCKER_ID, "not-this-one");
        let w = named(&mut node.names(), &format!("/docker/{DOCKER_ID}"));
        assert_eq!(w.name.as_deref(), Some("moved"));
    }

    #[test]
    fn podman_both_drivers_not_conmon() {
        let node = Node::new();
        node.podman("overlay", &[(PODMAN_ID, "cfs-probe"), (CRI_ID, "db")]);
        let mut names = node.names();
        for path in [
            format!("/libpod_parent/libpod-{PODMAN_ID}"),
            format!("/machine.slice/libpod-{PODMAN_ID}.scope"),
        ] {
            let w = named(&mut names, &path);
            assert_eq!(w.kind, WorkloadKind::Podman);
            assert_eq!(w.container.as_deref(), Some(PODMAN_ID));
            assert_eq!(w.name.as_deref(), Some("cfs-probe"), "{path}");
        }
        let w = named(
            &mut names,
            &format!("/machine.slice/libpod-conmon-{PODMAN_ID}.scope"),
        );
        assert_eq!((w.kind, w.name), (WorkloadKind::Systemd, None));

        // A container made later: the store changed, so it is re-read.
        let late = SANDBOX_ID;
        node.podman(
            "overlay",
            &[(PODMAN_ID, "cfs-probe"), (CRI_ID, "db"), (late, "late-one")],
        );
        let w = named(&mut names, &format!("/libpod_parent/libpod-{late}"));
        assert_eq!(w.name.as_deref(), Some("late-one"));

        // Another storage driver's store is searched too.
        node.podman("vfs", &[(DOCKER_ID, "on-vfs")]);
        let w = named(&mut names, &format!("/libpod_parent/libpod-{DOCKER_ID}"));
        assert_eq!(w.name.as_deref(), Some("on-vfs"));
    }

    #[test]
    fn kubernetes_pod_and_container_names() {
        let node = Node::new();
        node.mkdir(&format!(
            "var/log/pods/shop_web-7d4b9c-x2x9z_{POD_UID}/nginx"
        ));
        node.mkdir(&format!(
            "var/log/pods/shop_web-7d4b9c-x2x9z_{POD_UID}/sidecar"
        ));
        node.mkdir(
            "var/log/pods/kube-system_coredns-1_11111111-2222-3333-4444-555555555555/coredns",
        );
        node.write(
            &format!("var/log/containers/web-7d4b9c-x2x9z_shop_nginx-{CRI_ID}.log"),
            "",
        );
        let mut names = node.names();
        let u = POD_UID.replace('-', "_");
        let w = named(
            &mut names,
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CRI_ID}.scope"
            ),
        );
        assert_eq!(w.kind, WorkloadKind::Kubernetes);
        assert_eq!(
            (w.namespace.as_deref(), w.pod.as_deref(), w.name.as_deref()),
            (Some("shop"), Some("web-7d4b9c-x2x9z"), Some("nginx"))
        );
        // The pod's sandbox (pause) container has no log: the pod is named, the container not.
        let w = named(
            &mut names,
            &format!("/kubepods/burstable/pod{POD_UID}/{SANDBOX_ID}"),
        );
        assert_eq!(
            (w.namespace.as_deref(), w.pod.as_deref(), w.name.as_deref()),
            (Some("shop"), Some("web-7d4b9c-x2x9z"), None)
        );
        // The pod-level cgroup.
        let w = named(&mut names, &format!("/kubepods/burstable/pod{POD_UID}"));
        assert_eq!(w.pod.as_deref(), Some("web-7d4b9c-x2x9z"));
        assert_eq!(w.name, None);
        // An unknown pod.
        let w = named(
            &mut names,
            "/kubepods/besteffort/podaaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        );
        assert_eq!((w.namespace, w.pod), (None, None));
    }

    #[test]
    fn garbled_missing_oversized_and_linked_state_is_no_name() {
        let node = Node::new();
        let mut names = node.names();
        // Nothing on the node at all.
        for path in [
            format!("/docker/{DOCKER_ID}"),
            format!("/libpod_parent/libpod-{PODMAN_ID}"),
            format!("/kubepods/pod{POD_UID}/{CRI_ID}"),
        ] {
            let w = named(&mut names, &path);
            assert_eq!(w, classify(&path), "{path}");
        }
        // Garbled JSON and a wrong shape.
        node.write(
            &format!("var/lib/docker/containers/{DOCKER_ID}/config.v2.json"),
            "{\"Name\": \"/trunc",
        );
        node.write(
            "var/lib/containers/storage/overlay-containers/containers.json",
            "{\"id\": \"not an array\"}",
        );
        let mut names = node.names();
        assert_eq!(
            named(&mut names, &format!("/docker/{DOCKER_ID}")).name,
            None
        );
        assert_eq!(
            named(&mut names, &format!("/libpod_parent/libpod-{PODMAN_ID}")).name,
            None
        );
        // Oversized.
        let big = format!(
            "{{\"Name\": \"/big\", \"Pad\": \"{}\"}}",
            "x".repeat(DOCKER_CONFIG_MAX as usize)
        );
        node.write(
            &format!("var/lib/docker/containers/{CRI_ID}/config.v2.json"),
            &big,
        );
        assert_eq!(named(&mut names, &format!("/docker/{CRI_ID}")).name, None);
        // A symlinked state file is not followed.
        let elsewhere = node.write("elsewhere.json", &docker_config(SANDBOX_ID, "linked"));
        let dir = node
            .dir
            .path()
            .join(format!("var/lib/docker/containers/{SANDBOX_ID}"));
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("config.v2.json")).unwrap();
        assert_eq!(
            named(&mut names, &format!("/docker/{SANDBOX_ID}")).name,
            None
        );
    }

    #[test]
    fn log_name_parsing() {
        let pods = pod_log_names(vec![
            format!("ns_pod_{POD_UID}"),
            "too_many_parts_here".into(),
            "no-underscores".into(),
            "_pod_uid".into(),
        ]);
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[POD_UID], ("ns".into(), "pod".into()));
        let ctrs = container_log_names(vec![
            format!("my-pod_ns_app-server-{CRI_ID}.log"),
            format!("my-pod_ns_app-{}.log", &CRI_ID[..12]),
            format!("my-pod_ns_app-{SANDBOX_ID}"),
        ]);
        assert_eq!(ctrs.len(), 1);
        assert_eq!(
            ctrs[CRI_ID],
            ("ns".into(), "my-pod".into(), "app-server".into())
        );
    }
}
