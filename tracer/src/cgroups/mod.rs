//! Naming cgroups on a live node: find the hierarchy that holds the cpu controller, map a
//! period timer's cgroup id (the kernfs node id, which is the inode number of the cgroup's
//! directory in that mount, on v1 and v2) to its path, and read its bandwidth settings and
//! busiest processes.
//!
//! Touches only the cgroup filesystems, `/proc` and the container runtimes' state files (the storm also starts its busy loops) and
//! imports only the model; never aya or a session.
mod containers;
mod handles;
mod hierarchy;
mod namer;
mod processes;
mod settings;
pub mod storm;

pub use containers::{ContainerNames, StateRoots};
pub use hierarchy::{
    MountInfo, choose_cpu_hierarchy, find_cpu_hierarchy, id_of_path, parse_mountinfo,
};
pub use namer::{CgroupNamer, NamerLimits, NamerStats};
pub use processes::{busiest_processes, format_cmdline, parse_stat};
pub use settings::{
    MAX_PARENTS, ancestor_paths, parent_chain, parents_of, parse_cpu_max, parse_v1_quota,
};

use std::io;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CgroupFsError {
    #[error(
        "no cgroup hierarchy with the cpu controller is mounted; mount cgroup2 or the v1 cpu controller"
    )]
    NoCpuHierarchy,
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// Most ids the namer remembers (~100 bytes a path: ~2 MB at most). A name is written to the
/// capture once, and a miss costs one open_by_handle_at where kernfs handles work, so the cache
/// only saves syscalls: past the cap, entries of removed cgroups go first, then the least
/// recently used half.
pub const CACHE_CAP: usize = 16_384;
/// Where a cgroup cannot be looked up by handle, a miss walks the whole mount, at most this
/// often, so a storm of unknown ids (cgroups created and removed faster than we look) costs one
/// walk per interval, not one per event.
pub const RESCAN_INTERVAL: Duration = Duration::from_millis(200);
/// ...and at most 1/WALK_DUTY of the recorder's time: after a walk that took `d`, the next one
/// waits at least `WALK_DUTY * d` (a node with 100k cgroups is not walked 5 times a second).
pub const WALK_DUTY: u32 = 10;
/// Processes kept per cgroup record.
pub const MAX_PROCESSES: usize = 10;
/// Characters of a command line kept.
pub const CMDLINE_MAX: usize = 256;

const GONE_NOTE: &str = "cgroup gone before it could be named";
const REMOVED_NOTE: &str = "cgroup removed before its settings and processes could be read";
