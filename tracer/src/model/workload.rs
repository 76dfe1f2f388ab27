//! Cgroup path -> workload (YARN, docker, podman, kubernetes, systemd). Pure: no filesystem
//! access; the names a runtime keeps on the node (container and pod names) are added by
//! `cgroups::containers`.
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Yarn,
    Docker,
    Podman,
    Kubernetes,
    Systemd,
    Cgroup,
}

/// What runs in a cgroup, as far as its path tells. Fields that do not apply are None and
/// are left out of JSON.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    /// YARN `application_<clusterts>_<app>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// YARN container name, or the docker / podman / CRI container id (64 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The container's own name as its runtime keeps it (`docker run --name`, `podman run
    /// --name`, the pod spec's container name); never from the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kubernetes namespace and pod name, from the kubelet's pod log directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Kubernetes pod UID with dashes (the systemd driver's underscores converted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Kubernetes QoS class (guaranteed, burstable, besteffort).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// systemd unit (the deepest `.service`, `.scope` or `.slice` component).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// Classify a path relative to the cpu hierarchy's root, e.g. `/kubepods/burstable/pod<uid>/<id>`.
///
/// Most specific wins: YARN (anywhere in the path, so a docker container started by YARN's
/// docker runtime under its container cgroup still names the YARN application), then
/// kubernetes, then the deepest docker or podman container id, then the deepest systemd unit,
/// else `cgroup`.
pub fn classify(path: &str) -> Workload {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    yarn(&comps)
        .or_else(|| kubernetes(&comps))
        .or_else(|| container(&comps))
        .or_else(|| systemd(&comps))
        .unwrap_or_else(|| Workload::of(WorkloadKind::Cgroup))
}

impl Workload {
    /// A plain cgroup: no application, container, pod or unit known.
    pub fn plain() -> Self {
        Self::of(WorkloadKind::Cgroup)
    }

    fn of(kind: WorkloadKind) -> Self {
        Workload {
            kind,
            application: None,
            container: None,
            name: None,
            namespace: None,
            pod: None,
            pod_uid: None,
            qos: None,
            unit: None,
        }
    }
}

/// `container_[e<epoch>_]<clusterts>_<app>_<attempt>_<n>` -> `application_<clusterts>_<app>`.
fn yarn_container_app(comp: &str) -> Option<String> {
    let rest = comp.strip_prefix("container_")?;
    let mut parts: Vec<&str> = rest.split('_').collect();
    // The epoch (`e06`) only appears after an RM restart with work-preserving recovery.
    if parts.len() == 5 {
        let epoch = parts.remove(0);
        let digits = epoch.strip_prefix('e')?;
        if !all_digits(digits) {
            return None;
        }
    }
    if parts.len() != 4 || !parts.iter().all(|p| all_digits(p)) {
        return None;
    }
    Some(format!("application_{}_{}", parts[0], parts[1]))
}

fn is_yarn_application(comp: &str) -> bool {
    comp.strip_prefix("application_")
        .and_then(|r| r.split_once('_'))
        .is_some_and(|(ts, n)| all_digits(ts) && all_digits(n))
}

fn yarn(comps: &[&str]) -> Option<Workload> {
    // Deepest container wins (a container cgroup is nested under its application's, if any).
    if let Some((comp, app)) = comps
        .iter()
        .rev()
        .find_map(|c| yarn_container_app(c).map(|a| (*c, a)))
    {
        return Some(Workload {
            application: Some(app),
            container: Some(comp.to_string()),
            ..Workload::of(WorkloadKind::Yarn)
        });
    }
    let app = comps.iter().rev().find(|c| is_yarn_application(c))?;
    Some(Workload {
        application: Some(app.to_string()),
        ..Workload::of(WorkloadKind::Yarn)
    })
}

const QOS_CLASSES: [&str; 3] = ["burstable", "besteffort", "guaranteed"];

/// The systemd driver's pod slice: `[<prefix>-]kubepods[-<qos>]-pod<uid_with_underscores>.slice`
/// -> (qos, uid with dashes).
fn systemd_pod_slice(comp: &str) -> Option<(String, String)> {
    let stem = comp.strip_suffix(".slice")?;
    let (before, uid) = stem.rsplit_once("-pod")?;
    if !is_pod_uid(uid) {
        return None;
    }
    // `before` is `kubepods`, `kubepods-burstable`, or the same behind a kubelet cgroup-root
    // prefix (`kubelet-kubepods-burstable` in kind clusters).
    let (head, last) = match before.rsplit_once('-') {
        Some((h, l)) => (h, l),
        None => ("", before),
    };
    let qos = if last.eq_ignore_ascii_case("kubepods") {
        "guaranteed".to_string()
    } else if QOS_CLASSES.iter().any(|q| last.eq_ignore_ascii_case(q))
        && (head == "kubepods" || head.ends_with("-kubepods"))
    {
        last.to_ascii_lowercase()
    } else {
        return None;
    };
    Some((qos, uid.replace('_', "-")))
}

fn is_pod_uid(uid: &str) -> bool {
    uid.len() >= 32
        && uid
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_')
}

fn is_kubepods(comp: &str) -> bool {
    comp == "kubepods"
        || comp == "kubepods.slice"
        || comp.ends_with("-kubepods")
        || comp.ends_with("-kubepods.slice")
}

fn kubernetes(comps: &[&str]) -> Option<Workload> {
    let pod_level = |i: usize, qos: String, uid: String| {
        let container = comps
            .get(i + 1)
            .map(|c| container_id(c).unwrap_or(c).to_string());
        Workload {
            pod_uid: Some(uid),
            qos: Some(qos),
            container,
            ..Workload::of(WorkloadKind::Kubernetes)
        }
    };
    // systemd driver: the pod slice names itself.
    if let Some((i, (qos, uid))) = comps
        .iter()
        .enumerate()
        .find_map(|(i, c)| systemd_pod_slice(c).map(|p| (i, p)))
    {
        return Some(pod_level(i, qos, uid));
    }
    // cgroupfs driver: kubepods[/<qos>]/pod<uid>[/<container>].
    let k = comps.iter().position(|c| is_kubepods(c))?;
    let mut i = k + 1;
    let mut qos = None;
    if let Some(c) = comps.get(i) {
        let c = c.strip_suffix(".slice").unwrap_or(c);
        let c = c.rsplit('-').next().unwrap_or(c);
        if QOS_CLASSES.iter().any(|q| c.eq_ignore_ascii_case(q)) {
            qos = Some(c.to_ascii_lowercase());
            i += 1;
        }
    }
    match comps.get(i).and_then(|c| c.strip_prefix("pod")) {
        Some(uid) if is_pod_uid(uid) => Some(pod_level(
            i,
            // Guaranteed pods sit directly under kubepods.
            qos.unwrap_or_else(|| "guaranteed".into()),
            uid.replace('_', "-"),
        )),
        // kubepods itself or a QoS tier: kubernetes, but no pod to name.
        _ => Some(Workload {
            qos,
            ..Workload::of(WorkloadKind::Kubernetes)
        }),
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container id: bare 64 hex (cgroupfs driver) or `<runtime>-<64 hex>.scope` (systemd driver).
fn container_id(comp: &str) -> Option<&str> {
    if is_hex64(comp) {
        return Some(comp);
    }
    let stem = comp.strip_suffix(".scope")?;
    ["cri-containerd-", "docker-", "crio-", "containerd-"]
        .iter()
        .find_map(|p| stem.strip_prefix(p))
        .filter(|id| is_hex64(id))
}

/// A docker or podman container's component -> (kind, id).
///
/// docker: `<id>` (cgroupfs driver, under `/docker` or any `--cgroup-parent`) or
/// `docker-<id>.scope` (systemd driver). podman: `libpod-<id>` (cgroupfs driver, under
/// `/libpod_parent`) or `libpod-<id>.scope` (systemd driver, under `machine.slice`, or a user's
/// slice when rootless). podman's `libpod-conmon-<id>.scope` holds its monitor, not the
/// container: it is left to the systemd rule.
fn runtime_container(comp: &str) -> Option<(WorkloadKind, &str)> {
    if is_hex64(comp) {
        return Some((WorkloadKind::Docker, comp));
    }
    let stem = comp.strip_suffix(".scope").unwrap_or(comp);
    if let Some(id) = stem.strip_prefix("libpod-").filter(|id| is_hex64(id)) {
        return Some((WorkloadKind::Podman, id));
    }
    let id = comp
        .strip_suffix(".scope")?
        .strip_prefix("docker-")
        .filter(|id| is_hex64(id))?;
    Some((WorkloadKind::Docker, id))
}

fn container(comps: &[&str]) -> Option<Workload> {
    // Deepest id wins (docker-in-docker, or docker in a podman container, nests them).
    let (kind, id) = comps.iter().rev().find_map(|c| runtime_container(c))?;
    Some(Workload {
        container: Some(id.to_string()),
        ..Workload::of(kind)
    })
}

fn systemd(comps: &[&str]) -> Option<Workload> {
    let unit = comps.iter().rev().find(|c| {
        [".service", ".scope", ".slice"]
            .iter()
            .any(|s| c.len() > s.len() && c.ends_with(s))
    })?;
    Some(Workload {
        unit: Some(unit.to_string()),
        ..Workload::of(WorkloadKind::Systemd)
    })
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use WorkloadKind::{Cgroup, Docker, Kubernetes, Podman, Systemd, Yarn};

    const INCIDENT: &str = "/hadoop-yarn/container_e06_1512098667219_988894_01_000020";
    const INCIDENT_APP: &str = "application_1512098667219_988894";
    const INCIDENT_CONTAINER: &str = "container_e06_1512098667219_988894_01_000020";
    const ID: &str = "4e3f9b2c1a0d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";
    const UID: &str = "3f1c2a8e-6b7d-4e59-9a1c-0d2e4f6a8b90";

    /// What a workload says, in one comparable line: kind, application, container, pod uid,
    /// QoS class, unit.
    type Said<'a> = (
        WorkloadKind,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );

    /// Each path must classify exactly as its row says.
    fn check(rows: &[(String, Said<'_>)]) {
        for (path, want) in rows {
            let w = classify(path);
            let got = (
                w.kind,
                w.application.as_deref(),
                w.container.as_deref(),
                w.pod_uid.as_deref(),
                w.qos.as_deref(),
                w.unit.as_deref(),
            );
            assert_eq!(&got, want, "{path}");
        }
    }

    fn yarn<'a>(app: &'a str, container: Option<&'a str>) -> Said<'a> {
        (Yarn, Some(app), container, None, None, None)
    }

    fn pod<'a>(qos: &'a str, container: Option<&'a str>) -> Said<'a> {
        (Kubernetes, None, container, Some(UID), Some(qos), None)
    }

    fn only(kind: WorkloadKind) -> Said<'static> {
        (kind, None, None, None, None, None)
    }

    #[test]
    fn yarn_containers_and_applications() {
        let incident = yarn(INCIDENT_APP, Some(INCIDENT_CONTAINER));
        check(&[
            (INCIDENT.into(), incident),
            // A docker child of the YARN container is the YARN container's.
            (format!("{INCIDENT}/{ID}"), incident),
            (format!("{INCIDENT}/docker-{ID}.scope"), incident),
            // No epoch, application digits as written.
            (
                "/hadoop-yarn/container_1512098667219_0042_01_000001".into(),
                yarn(
                    "application_1512098667219_0042",
                    Some("container_1512098667219_0042_01_000001"),
                ),
            ),
            (
                "/yarn/application_1512098667219_0042".into(),
                yarn("application_1512098667219_0042", None),
            ),
            // A container under its application's cgroup: the container names both.
            (
                "/yarn/application_1512098667219_0042/container_e01_1512098667219_0042_02_000003"
                    .into(),
                yarn(
                    "application_1512098667219_0042",
                    Some("container_e01_1512098667219_0042_02_000003"),
                ),
            ),
        ]);
    }

    #[test]
    fn not_yarn_lookalikes() {
        let rows: Vec<(String, Said<'_>)> = [
            "/container_e06_x_988894_01_000020",
            "/container_1_2_3",
            "/container_e_1_2_3_4",
            "/application_12",
            "/application_a_1",
            "/container_1_2_3_4_5_6",
        ]
        .map(|p| (p.to_string(), only(Cgroup)))
        .to_vec();
        check(&rows);
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        check(&[
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                pod("burstable", Some(ID)),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                pod("besteffort", Some(ID)),
            ),
            // Guaranteed pods sit directly under kubepods.
            (
                format!("/kubepods/pod{UID}/{ID}"),
                pod("guaranteed", Some(ID)),
            ),
            // Pod-level cgroup: pod only.
            (
                format!("/kubepods/burstable/pod{UID}"),
                pod("burstable", None),
            ),
            // QoS tier and kubepods itself.
            (
                "/kubepods/burstable".into(),
                (Kubernetes, None, None, None, Some("burstable"), None),
            ),
            ("/kubepods".into(), only(Kubernetes)),
        ]);
    }

    #[test]
    fn kubernetes_systemd_driver() {
        let u = UID.replace('-', "_");
        let mut rows: Vec<(String, Said<'_>)> = [
            ("cri-containerd", "burstable"),
            ("docker", "besteffort"),
            ("crio", "burstable"),
        ]
        .map(|(runtime, qos)| {
            (
                format!(
                    "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice/{runtime}-{ID}.scope"
                ),
                pod(qos, Some(ID)),
            )
        })
        .to_vec();
        rows.extend([
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"),
                pod("guaranteed", Some(ID)),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
                pod("burstable", None),
            ),
            // A kubelet cgroup root prefix (kind clusters).
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                pod("besteffort", Some(ID)),
            ),
            // QoS tier slice.
            (
                "/kubepods.slice/kubepods-burstable.slice".into(),
                (Kubernetes, None, None, None, Some("burstable"), None),
            ),
        ]);
        check(&rows);
    }

    #[test]
    fn docker_cgroupfs_and_systemd() {
        let docker = (Docker, None, Some(ID), None, None, None);
        check(&[
            (format!("/docker/{ID}"), docker),
            (format!("/system.slice/docker-{ID}.scope"), docker),
            // --cgroup-parent puts the id under any parent.
            (format!("/batch/{ID}"), docker),
            // Short ids are not container ids.
            ("/docker/abc123".into(), only(Cgroup)),
            (
                format!("/system.slice/docker-{}.scope", &ID[..12]),
                (
                    Systemd,
                    None,
                    None,
                    None,
                    None,
                    Some(&*format!("docker-{}.scope", &ID[..12])),
                ),
            ),
        ]);
    }

    #[test]
    fn podman_cgroupfs_and_systemd() {
        let podman = (Podman, None, Some(ID), None, None, None);
        check(&[
            // cgroupfs driver, as a real `podman --cgroup-manager cgroupfs run` made it here.
            (format!("/libpod_parent/libpod-{ID}"), podman),
            // systemd driver, rootful and rootless.
            (format!("/machine.slice/libpod-{ID}.scope"), podman),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                podman,
            ),
            // A pod's containers sit in the pod's slice.
            (
                format!("/machine.slice/machine-libpod_pod_{ID}.slice/libpod-{ID}.scope"),
                podman,
            ),
            // The monitor is not the container.
            (
                format!("/machine.slice/libpod-conmon-{ID}.scope"),
                (
                    Systemd,
                    None,
                    None,
                    None,
                    None,
                    Some(&*format!("libpod-conmon-{ID}.scope")),
                ),
            ),
            ("/libpod_parent/conmon".into(), only(Cgroup)),
            ("/libpod_parent".into(), only(Cgroup)),
            (format!("/libpod_parent/libpod-{}", &ID[..12]), only(Cgroup)),
            // Deepest wins: docker inside a podman container is the docker container's.
            (
                format!("/libpod_parent/libpod-{ID}/docker/{ID}"),
                (Docker, None, Some(ID), None, None, None),
            ),
        ]);
    }

    #[test]
    fn systemd_deepest_unit() {
        let unit = |u| (Systemd, None, None, None, None, Some(u));
        check(&[
            ("/system.slice/nginx.service".into(), unit("nginx.service")),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.scope".into(),
                unit("app-foo.scope"),
            ),
            // Plain dirs below a unit still belong to it.
            (
                "/batch.slice/etl.service/worker/3".into(),
                unit("etl.service"),
            ),
            ("/batch.slice".into(), unit("batch.slice")),
            // A bare suffix is not a unit.
            ("/.slice".into(), only(Cgroup)),
        ]);
    }

    #[test]
    fn plain_and_root() {
        for p in ["/", "", "//", "/my-group", "/a/b/c"] {
            assert_eq!(classify(p), Workload::plain(), "{p:?}");
        }
    }

    #[test]
    fn json_shape() {
        let v = serde_json::to_value(classify(INCIDENT)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "kind": "yarn",
                "application": INCIDENT_APP,
                "container": INCIDENT_CONTAINER,
            })
        );
        let v = serde_json::to_value(classify("/")).unwrap();
        assert_eq!(v, serde_json::json!({"kind": "cgroup"}));
    }
}
