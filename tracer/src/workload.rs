//! Cgroup path -> workload (YARN, docker, kubernetes, systemd). Pure: no filesystem access.
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Yarn,
    Docker,
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
    /// YARN container name, or the docker / CRI container id (64 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
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
pub fn classify(path: &str) -> Workload {
    todo!("helper: {path}")
}
