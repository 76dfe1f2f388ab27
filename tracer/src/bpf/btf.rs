//! Kernel structure offsets from the running kernel's BTF. aya-ebpf has no CO-RE for Rust, so
//! the programs get these as globals; a field the kernel lacks stays `OFFSET_UNAVAILABLE` and the
//! figure it feeds is reported unavailable, never read from a wrong offset.
use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};
use tracer_ebpf::{KernelLayout, OFFSET_UNAVAILABLE};

pub const SYSFS_VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "no kernel BTF at {SYSFS_VMLINUX_BTF} (the kernel needs CONFIG_DEBUG_INFO_BTF=y); pass --btf FILE with this kernel's BTF (BTFHub's file for this kernel release, or one extracted from its vmlinux with `pahole --btf_encode_detached`)"
    )]
    Missing,
    #[error("cannot read BTF from {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse BTF from {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: anyhow_free::BtfRsError,
    },
    #[error(
        "BTF in {path} has no `struct {name}`: is CONFIG_CFS_BANDWIDTH enabled in this kernel?"
    )]
    NoStruct { path: PathBuf, name: &'static str },
}

/// btf-rs returns anyhow errors; keep them as text so this module's error stays `thiserror`.
mod anyhow_free {
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct BtfRsError(pub String);
}

/// What the BTF said, field by field, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutFacts {
    pub layout: KernelLayout,
    /// Fields that were not found (e.g. `cfs_bandwidth.period`), for degraded-mode messages.
    pub missing: Vec<String>,
    /// `kernfs_node.id` is the pre-5.5 union rather than a plain u64.
    pub kn_id_is_union: bool,
    /// Which of `cfs_rq.h_nr_queued` (6.14+) / `h_nr_running` gives the queued tasks.
    pub h_nr_field: Option<&'static str>,
    pub source: PathBuf,
}

pub fn btf_path(explicit: Option<&Path>) -> Result<PathBuf, BtfError> {
    match explicit {
        Some(p) => Ok(p.to_path_buf()),
        None if Path::new(SYSFS_VMLINUX_BTF).exists() => Ok(PathBuf::from(SYSFS_VMLINUX_BTF)),
        None => Err(BtfError::Missing),
    }
}

/// The kernel's BTF, read once and parsed once per run. The bytes go into an anonymous memory
/// file (memfd) that btf-rs maps lazily (its cached backend parses every type up front: about
/// 40 MB for a 6.x vmlinux) and aya parses once for fentry targets (see [`KernelBtf::bytes`]).
/// Before, vmlinux was parsed up to four times, and btf-rs over the file seeked for every type
/// it resolved (about 380,000 lseek calls a run).
pub struct KernelBtf {
    btf: Btf,
    map: memmap2::Mmap,
    /// Keeps the memory file alive (btf-rs maps it through its own descriptor).
    _memfd: std::fs::File,
    pub path: PathBuf,
}

impl KernelBtf {
    pub fn read(path: &Path) -> Result<Self, BtfError> {
        let read_err = |source| BtfError::Read {
            path: path.to_path_buf(),
            source,
        };
        let bytes = std::fs::read(path).map_err(read_err)?;
        let memfd = memory_file(&bytes).map_err(read_err)?;
        drop(bytes);
        // SAFETY: the memory file is ours alone and never written again while mapped.
        let map = unsafe { memmap2::Mmap::map(&memfd) }.map_err(read_err)?;
        let fd_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&memfd));
        let btf = Btf::from_file_with_backend(&fd_path, btf_rs::Backend::Mmap).map_err(|e| {
            BtfError::Parse {
                path: path.to_path_buf(),
                source: anyhow_free::BtfRsError(format!("{e:#}")),
            }
        })?;
        Ok(Self {
            btf,
            map,
            _memfd: memfd,
            path: path.to_path_buf(),
        })
    }

    /// The raw BTF, for aya (which parses it into its own form for fentry targets).
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Whether a function is described in BTF (fentry needs that).
    pub fn has_func(&self, func: &str) -> bool {
        self.btf
            .resolve_types_by_name(func)
            .map(|v| v.iter().any(|t| matches!(t, Type::Func(_))))
            .unwrap_or(false)
    }

    /// Whether `struct name` has a member `field` (doctor's evidence of a kernel change).
    pub fn has_member(&self, name: &str, field: &str) -> bool {
        member_offset(&self.btf, name, field).is_some()
    }

    /// Read the offsets the programs need. `period_timer_fn` and `csd_unthrottle_fn` are
    /// filled in by the caller (kallsyms).
    pub fn layout(&self) -> Result<LayoutFacts, BtfError> {
        read_layout(&self.btf, &self.path)
    }
}

/// An anonymous in-memory file holding `bytes`.
fn memory_file(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    // SAFETY: a valid NUL-terminated name; the fd is owned by the File below.
    let fd = unsafe { libc::memfd_create(c"cfstrace-btf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    std::io::Write::write_all(&mut f, bytes)?;
    Ok(f)
}

fn read_layout(btf: &Btf, path: &Path) -> Result<LayoutFacts, BtfError> {
    let mut missing = Vec::new();
    let mut off = |s: &'static str, f: &str| -> u64 {
        match member_offset(btf, s, f) {
            Some(o) => o,
            None => {
                missing.push(format!("{s}.{f}"));
                OFFSET_UNAVAILABLE
            }
        }
    };
    let hrtimer_function = off("hrtimer", "function");
    let cfsb_period_timer = off("cfs_bandwidth", "period_timer");
    let cfsb_period = off("cfs_bandwidth", "period");
    let cfsb_quota = off("cfs_bandwidth", "quota");
    let tg_cfs_bandwidth = off("task_group", "cfs_bandwidth");
    let tg_css = off("task_group", "css");
    let css_cgroup = off("cgroup_subsys_state", "cgroup");
    // Validates the programs' per-CPU timer -> cgroup cache; without it every callback reads
    // the whole chain.
    let css_serial_nr = off("cgroup_subsys_state", "serial_nr");
    let cgroup_kn = off("cgroup", "kn");
    let kn_id = off("kernfs_node", "id");
    // Async unthrottle (6.3+): absent before, which only disables that figure.
    let rq_cfsb_csd = off("rq", "cfsb_csd");
    let rq_cfsb_csd_list = off("rq", "cfsb_csd_list");
    let cfs_rq_throttled_csd_list = off("cfs_rq", "throttled_csd_list");
    let cfs_rq_tg = off("cfs_rq", "tg");
    let cfs_rq_throttled = off("cfs_rq", "throttled");
    // Per-period spread: the CPU of each unthrottled cfs_rq.
    let cfs_rq_rq = off("cfs_rq", "rq");
    let rq_cpu = off("rq", "cpu");
    // Renamed in 6.14 (h_nr_running -> h_nr_queued): by name, whichever this kernel has.
    let (cfs_rq_h_nr_queued, h_nr_field) = match member_offset(btf, "cfs_rq", "h_nr_queued") {
        Some(o) => (o, Some("h_nr_queued")),
        None => match member_offset(btf, "cfs_rq", "h_nr_running") {
            Some(o) => (o, Some("h_nr_running")),
            None => {
                missing.push("cfs_rq.h_nr_queued (or h_nr_running)".into());
                (OFFSET_UNAVAILABLE, None)
            }
        },
    };
    let tg_css_cgroup = if tg_css == OFFSET_UNAVAILABLE || css_cgroup == OFFSET_UNAVAILABLE {
        OFFSET_UNAVAILABLE
    } else {
        tg_css + css_cgroup
    };
    let tg_css_serial_nr = if tg_css == OFFSET_UNAVAILABLE || css_serial_nr == OFFSET_UNAVAILABLE {
        OFFSET_UNAVAILABLE
    } else {
        tg_css + css_serial_nr
    };

    if cfsb_period_timer == OFFSET_UNAVAILABLE && tg_cfs_bandwidth == OFFSET_UNAVAILABLE {
        return Err(BtfError::NoStruct {
            path: path.to_path_buf(),
            name: "cfs_bandwidth",
        });
    }
    // Before 5.5 `kernfs_node.id` was `union kernfs_node_id { struct { u32 ino, generation }; u64 id; }`:
    // the directory's inode number is the low half.
    let kn_id_is_union = member_type(btf, "kernfs_node", "id")
        .map(|t| matches!(t, Type::Union(_)))
        .unwrap_or(false);
    let kn_id_mask = if kn_id_is_union {
        0xffff_ffff
    } else {
        u64::MAX
    };
    Ok(LayoutFacts {
        layout: KernelLayout {
            period_timer_fn: 0,
            hrtimer_function,
            cfsb_period_timer,
            cfsb_period,
            cfsb_quota,
            tg_cfs_bandwidth,
            tg_css_cgroup,
            cgroup_kn,
            kn_id,
            kn_id_mask,
            csd_unthrottle_fn: 0,
            rq_cfsb_csd,
            rq_cfsb_csd_list,
            cfs_rq_throttled_csd_list,
            cfs_rq_tg,
            cfs_rq_throttled,
            cfs_rq_rq,
            rq_cpu,
            cfs_rq_h_nr_queued,
            tg_css_serial_nr,
        },
        missing,
        kn_id_is_union,
        h_nr_field,
        source: path.to_path_buf(),
    })
}

/// The first struct named `name` that has members (skipping forward declarations).
fn find_struct(btf: &Btf, name: &str) -> Option<btf_rs::Struct> {
    btf.resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
}

/// Byte offset of `field` in `struct name`, looking through anonymous structs and unions.
fn member_offset(btf: &Btf, name: &str, field: &str) -> Option<u64> {
    let s = find_struct(btf, name)?;
    find_member(btf, &s, field, 0).map(|(bits, _)| u64::from(bits / 8))
}

fn member_type(btf: &Btf, name: &str, field: &str) -> Option<Type> {
    let s = find_struct(btf, name)?;
    find_member(btf, &s, field, 0).map(|(_, t)| t)
}

/// Depth-first search; returns (bit offset, resolved member type with typedefs/qualifiers peeled).
fn find_member(btf: &Btf, s: &btf_rs::Struct, field: &str, base: u32) -> Option<(u32, Type)> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let ty = peel(btf, btf.resolve_chained_type(m).ok()?);
        if name == field {
            return Some((base + m.bit_offset(), ty));
        }
        if name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = &ty
            && let Some(found) = find_member(btf, inner, field, base + m.bit_offset())
        {
            return Some(found);
        }
    }
    None
}

fn peel(btf: &Btf, mut t: Type) -> Type {
    for _ in 0..16 {
        let next = match &t {
            Type::Typedef(x) => btf.resolve_chained_type(x),
            Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => btf.resolve_chained_type(x),
            Type::TypeTag(x) => btf.resolve_chained_type(x),
            _ => return t,
        };
        match next {
            Ok(n) => t = n,
            Err(_) => return t,
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the host's own BTF: every kernel this runs on in CI has it.
    #[test]
    fn host_btf_gives_the_cgroup_chain() {
        let p = Path::new(SYSFS_VMLINUX_BTF);
        assert!(p.exists(), "host has no {SYSFS_VMLINUX_BTF}");
        let kbtf = KernelBtf::read(p).expect("BTF");
        let facts = kbtf.layout().expect("layout");
        let l = facts.layout;
        for (name, v) in [
            ("hrtimer.function", l.hrtimer_function),
            ("cfs_bandwidth.period_timer", l.cfsb_period_timer),
            ("task_group.cfs_bandwidth", l.tg_cfs_bandwidth),
            ("task_group.css+css.cgroup", l.tg_css_cgroup),
            ("task_group.css+css.serial_nr", l.tg_css_serial_nr),
            ("cgroup.kn", l.cgroup_kn),
            ("kernfs_node.id", l.kn_id),
            // The host is 6.3+: async unthrottle's fields are all there.
            ("rq.cfsb_csd", l.rq_cfsb_csd),
            ("rq.cfsb_csd_list", l.rq_cfsb_csd_list),
            ("cfs_rq.throttled_csd_list", l.cfs_rq_throttled_csd_list),
            ("cfs_rq.tg", l.cfs_rq_tg),
            ("cfs_rq.throttled", l.cfs_rq_throttled),
            ("cfs_rq.rq", l.cfs_rq_rq),
            ("rq.cpu", l.rq_cpu),
        ] {
            assert_ne!(v, OFFSET_UNAVAILABLE, "{name} missing: {:?}", facts.missing);
        }
        assert!(
            !facts.kn_id_is_union,
            "6.x kernels have a u64 kernfs_node.id"
        );
        // 6.14 renamed h_nr_running: the host (6.18) has only the new name.
        assert_eq!(facts.h_nr_field, Some("h_nr_queued"));
        assert_eq!(
            Some(l.cfs_rq_h_nr_queued),
            member_offset(&kbtf.btf, "cfs_rq", "h_nr_queued")
        );
        assert_eq!(member_offset(&kbtf.btf, "cfs_rq", "h_nr_running"), None);
        // css is the first member of task_group on every kernel in the matrix.
        assert_eq!(
            l.tg_css_cgroup, 0,
            "css.cgroup sits at the start of task_group"
        );
        assert!(kbtf.has_func("sched_cfs_period_timer"));
        assert!(!kbtf.has_func("task_group"), "a struct is not a function");
        // cfsb_csd_list follows cfsb_csd in struct rq (a call_single_data_t is 32 bytes).
        assert_eq!(l.rq_cfsb_csd_list, l.rq_cfsb_csd + 32, "{l:?}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = KernelBtf::read(Path::new("/nonexistent/btf"))
            .err()
            .expect("an error");
        assert!(e.to_string().contains("/nonexistent/btf"), "{e}");
        let junk = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(junk.path(), b"not BTF at all").expect("write");
        let e = KernelBtf::read(junk.path()).err().expect("an error");
        assert!(e.to_string().contains("cannot parse BTF"), "{e}");
    }
}
