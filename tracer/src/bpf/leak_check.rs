//! Attach and detach the programs many times and check, through the bpf syscalls
//! (BPF_PROG_GET_NEXT_ID / BPF_MAP_GET_NEXT_ID / BPF_LINK_GET_NEXT_ID), that nothing is left
//! behind: a tracer run on a production node must leave the kernel as it found it.
use std::collections::BTreeSet;

use crate::bpf::loader::{ProbeError, Tracer, TracerOptions};

#[derive(Debug, thiserror::Error)]
pub enum LeakCheckError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("listing loaded BPF objects: {0}")]
    List(String),
}

/// BPF objects of ours that are loaded now, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loaded {
    pub programs: usize,
    pub maps: usize,
    pub links: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakReport {
    pub cycles: u32,
    pub before: Loaded,
    /// What one attached tracer holds (so the check is known to see our objects at all).
    pub while_attached: Loaded,
    pub after: Loaded,
}

impl LeakReport {
    /// More of ours loaded after than before. (Fewer is fine: an earlier tracer in this
    /// process may still have been on its way out when the baseline was taken.)
    pub fn leaked(&self) -> bool {
        self.after.programs > self.before.programs
            || self.after.maps > self.before.maps
            || self.after.links > self.before.links
    }

    /// The check could not have failed if it did not see our objects while attached.
    pub fn saw_ours(&self) -> bool {
        self.while_attached.programs > 0 && self.while_attached.maps > 0
    }
}

/// The kernel keeps the first 15 bytes of an object's name.
fn kernel_name(s: &str) -> String {
    s.chars().take(15).collect()
}

/// Our program names (from the embedded object) and map names, as the kernel shows them. The
/// maps include aya-log's `AYA_LOGS` (created at every level, a page at `off`); another aya-log
/// tool's map of that name counts as ours, which can only matter if it comes or goes mid-check.
fn our_names() -> Result<(BTreeSet<String>, BTreeSet<String>), LeakCheckError> {
    let obj = aya_obj::Object::parse(crate::EBPF_OBJECT)
        .map_err(|e| LeakCheckError::List(e.to_string()))?;
    let progs = obj.programs.keys().map(|n| kernel_name(n)).collect();
    let maps = obj.maps.keys().map(|n| kernel_name(n)).collect();
    Ok((progs, maps))
}

/// An object listed by id and freed before it could be opened (ENOENT): another tool's, or one
/// of ours on its way out. It is not loaded any more, so it is not counted, and not an error.
fn vanished(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.raw_os_error() == Some(libc::ENOENT);
        }
        cur = err.source();
    }
    false
}

/// The listed object, `None` if it vanished while listing, or the error.
fn listed<T, E: std::error::Error + 'static>(r: Result<T, E>) -> Result<Option<T>, LeakCheckError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if vanished(&e) => Ok(None),
        Err(e) => Err(LeakCheckError::List(e.to_string())),
    }
}

fn count(progs: &BTreeSet<String>, maps: &BTreeSet<String>) -> Result<Loaded, LeakCheckError> {
    let mut l = Loaded::default();
    let mut our_prog_ids = BTreeSet::new();
    for p in aya::programs::loaded_programs() {
        let Some(p) = listed(p)? else { continue };
        if p.name_as_str().is_some_and(|n| progs.contains(n)) {
            l.programs += 1;
            our_prog_ids.insert(p.id());
        }
    }
    for m in aya::maps::loaded_maps() {
        let Some(m) = listed(m)? else { continue };
        if m.name_as_str().is_some_and(|n| maps.contains(n)) {
            l.maps += 1;
        }
    }
    for k in aya::programs::loaded_links() {
        // Links listing needs 5.8+; older kernels simply list none.
        let Ok(k) = k else { break };
        if our_prog_ids.contains(&k.program_id()) {
            l.links += 1;
        }
    }
    Ok(l)
}

/// Attach and detach `cycles` times with `opts`, counting our objects before, while attached
/// and after.
pub fn attach_cycles(opts: &TracerOptions, cycles: u32) -> Result<LeakReport, LeakCheckError> {
    let (progs, maps) = our_names()?;
    // A tracer this process just dropped is still being freed; let that settle first.
    let settle = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut before = count(&progs, &maps)?;
    while before != Loaded::default() && std::time::Instant::now() < settle {
        std::thread::sleep(std::time::Duration::from_millis(50));
        before = count(&progs, &maps)?;
    }
    let mut while_attached = before;
    for i in 0..cycles {
        let t = Tracer::start(opts)?;
        if i == 0 {
            while_attached = count(&progs, &maps)?;
        }
        drop(t);
    }
    // The kernel frees detached links and programs after an RCU grace period / from a
    // workqueue, so give it a moment before calling anything a leak.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut after = count(&progs, &maps)?;
    while after != before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        after = count(&progs, &maps)?;
    }
    Ok(LeakReport {
        cycles,
        before,
        while_attached,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_freed_while_listing_is_skipped_not_an_error() {
        let gone = aya::sys::SyscallError {
            call: "bpf_map_get_fd_by_id",
            io_error: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        let gone = aya::maps::MapError::from(gone);
        assert!(matches!(listed::<(), _>(Err(gone)), Ok(None)));
        let denied = aya::maps::MapError::from(aya::sys::SyscallError {
            call: "bpf_map_get_fd_by_id",
            io_error: std::io::Error::from_raw_os_error(libc::EPERM),
        });
        assert!(listed::<(), _>(Err(denied)).is_err());
    }
    use crate::model::probe::Backend;

    /// Real kernel: our objects are visible while attached and gone after.
    #[test]
    fn attach_cycles_leave_nothing_behind() {
        let (p, m) = our_names().unwrap();
        assert!(p.contains("period_timer_kp"), "{p:?}");
        assert!(m.contains(crate::bpf::logs::MAP), "{m:?}");
        let r = attach_cycles(&TracerOptions::new(Backend::Auto, None), 3).unwrap();
        assert!(r.saw_ours(), "{r:?}");
        assert!(!r.leaked(), "{r:?}");
    }
}
