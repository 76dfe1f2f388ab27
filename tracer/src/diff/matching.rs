//! Which cgroup of one report is which of the other. By path first; then, for those left, by
//! the workload's identity, strongest first: a container moved to another path keeps its id
//! (another cgroup driver), a container restarted keeps its name, a pod its name, a YARN
//! container's successor its application, a service its unit. A key pairs two cgroups only
//! when exactly one cgroup on each side is left with it: an ambiguous key pairs nothing, so no
//! pair is a guess.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::workload::WorkloadKind;
use crate::report::CgroupReport;

/// How a pair was matched, strongest first (the order they are tried in).
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MatchBy {
    /// The same cgroup path (or both unresolved).
    Path,
    /// The same container id (YARN container name, docker/podman/CRI id) at another path.
    ContainerId,
    /// The same container name as its runtime keeps it (a restarted container).
    ContainerName,
    /// The same kubernetes pod (namespace/name, else uid).
    Pod,
    /// The same YARN application.
    YarnApplication,
    /// The same systemd unit.
    Unit,
}

impl MatchBy {
    pub const ALL: [MatchBy; 6] = [
        MatchBy::Path,
        MatchBy::ContainerId,
        MatchBy::ContainerName,
        MatchBy::Pod,
        MatchBy::YarnApplication,
        MatchBy::Unit,
    ];

    /// `path`, `container id`, ...: how the text says it.
    pub fn label(self) -> &'static str {
        match self {
            MatchBy::Path => "path",
            MatchBy::ContainerId => "container id",
            MatchBy::ContainerName => "container name",
            MatchBy::Pod => "pod",
            MatchBy::YarnApplication => "YARN application",
            MatchBy::Unit => "systemd unit",
        }
    }

    /// The cgroup's key of this kind, if it has one.
    fn key(self, c: &CgroupReport) -> Option<String> {
        let w = &c.workload;
        let kind = format!("{:?}", w.kind);
        match self {
            MatchBy::Path => Some(c.name().into_owned()),
            MatchBy::ContainerId => w.container.as_ref().map(|id| format!("{kind}/{id}")),
            MatchBy::ContainerName => w
                .name
                .as_ref()
                .map(|n| format!("{kind}/{}/{n}", w.namespace.as_deref().unwrap_or_default())),
            MatchBy::Pod => match (&w.namespace, &w.pod, &w.pod_uid) {
                (Some(ns), Some(pod), _) => Some(format!("{ns}/{pod}")),
                (_, _, Some(uid)) => Some(uid.clone()),
                _ => None,
            },
            MatchBy::YarnApplication => w.application.clone(),
            // A YARN or container cgroup's unit is its scope, never the thing it runs.
            MatchBy::Unit => (w.kind == WorkloadKind::Systemd)
                .then(|| w.unit.clone())
                .flatten(),
        }
    }
}

/// The outcome: pairs `(before index, after index, how)` in the before side's order, and the
/// indices left on each side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matching {
    pub pairs: Vec<(usize, usize, MatchBy)>,
    pub only_before: Vec<usize>,
    pub only_after: Vec<usize>,
}

pub fn match_cgroups(before: &[CgroupReport], after: &[CgroupReport]) -> Matching {
    let mut b_of_a: Vec<Option<(usize, MatchBy)>> = vec![None; after.len()];
    let mut a_of_b: Vec<Option<usize>> = vec![None; before.len()];
    for by in MatchBy::ALL {
        let keys = |side: &[CgroupReport], taken: &dyn Fn(usize) -> bool| {
            let mut m: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for (i, c) in side.iter().enumerate() {
                if let Some(k) = by.key(c).filter(|_| !taken(i)) {
                    m.entry(k).or_default().push(i);
                }
            }
            m
        };
        let kb = keys(before, &|i| a_of_b[i].is_some());
        let ka = keys(after, &|j| b_of_a[j].is_some());
        for (k, bs) in &kb {
            if let (&[i], Some(&[j])) = (bs.as_slice(), ka.get(k).map(Vec::as_slice)) {
                a_of_b[i] = Some(j);
                b_of_a[j] = Some((i, by));
            }
        }
    }
    let mut pairs: Vec<(usize, usize, MatchBy)> = b_of_a
        .iter()
        .enumerate()
        .filter_map(|(j, m)| m.map(|(i, by)| (i, j, by)))
        .collect();
    pairs.sort_by_key(|p| p.0);
    Matching {
        pairs,
        only_before: (0..before.len()).filter(|i| a_of_b[*i].is_none()).collect(),
        only_after: (0..after.len()).filter(|j| b_of_a[*j].is_none()).collect(),
    }
}
