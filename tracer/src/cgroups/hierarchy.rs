//! Which mount holds the cpu controller (cgroup v1 `cpu`, or cgroup2), from
//! /proc/self/mountinfo, and the directory and id of a cgroup path in it.
use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::CgroupFsError;
use crate::model::records::CpuHierarchy;

/// One line of /proc/self/mountinfo, the fields we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Root of the mount within its filesystem (`/` unless a subtree is mounted, e.g. in a
    /// cgroup namespace).
    pub root: String,
    pub mount_point: String,
    pub fstype: String,
    /// Per-superblock options (for cgroup v1, the controllers: `rw,cpu,cpuacct`).
    pub super_options: Vec<String>,
}

/// Undo mountinfo's octal escapes (`\040` is a space, `\134` a backslash).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Only \000-\377 fit a byte; anything else is kept as written.
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse /proc/PID/mountinfo text. Malformed lines are skipped.
///
/// Format: `id parent maj:min root mount_point mount_opts [optional...] - fstype source super_opts`.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            // The optional fields vary in number; the separator `-` ends them.
            let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
            let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
            let fstype = fields.get(sep + 1)?;
            let super_options = fields
                .get(sep + 3)
                .map_or(Vec::new(), |o| o.split(',').map(str::to_string).collect());
            Some(MountInfo {
                root: unescape(root),
                mount_point: unescape(mount_point),
                fstype: fstype.to_string(),
                super_options,
            })
        })
        .collect()
}

/// Pick the cpu controller's hierarchy: a cgroup v1 mount with `cpu` among its controllers
/// wins (the controller is then not on cgroup2), else a cgroup2 mount whose
/// `cgroup.controllers` lists `cpu` (`cgroup2_has_cpu` answers that for a mount point).
/// Among several mounts of the same kind, one of the whole hierarchy (root `/`) is preferred.
pub fn choose_cpu_hierarchy(
    mounts: &[MountInfo],
    mut cgroup2_has_cpu: impl FnMut(&str) -> bool,
) -> Option<CpuHierarchy> {
    let best = |candidates: Vec<&MountInfo>| {
        candidates
            .iter()
            .find(|m| m.root == "/")
            .or(candidates.first())
            .map(|m| m.mount_point.clone())
    };
    let v1: Vec<&MountInfo> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup" && m.super_options.iter().any(|o| o == "cpu"))
        .collect();
    if let Some(mount) = best(v1) {
        return Some(CpuHierarchy { version: 1, mount });
    }
    let v2: Vec<&MountInfo> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2" && cgroup2_has_cpu(&m.mount_point))
        .collect();
    best(v2).map(|mount| CpuHierarchy { version: 2, mount })
}

/// Find where the cpu controller's hierarchy is mounted (from /proc/self/mountinfo).
pub fn find_cpu_hierarchy() -> Result<CpuHierarchy, CgroupFsError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| CgroupFsError::Read {
        path: path.into(),
        source,
    })?;
    choose_cpu_hierarchy(&parse_mountinfo(&text), |mp| {
        fs::read_to_string(Path::new(mp).join("cgroup.controllers"))
            .is_ok_and(|c| c.split_ascii_whitespace().any(|c| c == "cpu"))
    })
    .ok_or(CgroupFsError::NoCpuHierarchy)
}

/// Absolute directory of a path relative to the hierarchy's root (`/` is the root).
/// A name that is not UTF-8 is held as text with its bytes as `\xNN`
/// ([`crate::model::escape::os_name`]): when the literal directory is not there, the one with
/// those bytes is.
pub(super) fn dir_of(mount: &Path, rel: &str) -> PathBuf {
    let literal = mount.join(rel.trim_start_matches('/'));
    if !rel.contains("\\x") || literal.exists() {
        return literal;
    }
    match raw_bytes(rel) {
        Some(raw) => {
            let start = raw.iter().position(|c| *c != b'/').unwrap_or(raw.len());
            mount.join(std::ffi::OsStr::from_bytes(&raw[start..]))
        }
        None => literal,
    }
}

/// `rel` with each `\xNN` of a byte from 0x80 up (what [`crate::model::escape::os_name`]
/// writes for a byte that is not UTF-8) back as that byte; None when there is none.
fn raw_bytes(rel: &str) -> Option<Vec<u8>> {
    let b = rel.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let (mut i, mut any) = (0, false);
    while i < b.len() {
        let byte = b
            .get(i + 2..i + 4)
            .filter(|_| b[i] == b'\\' && b[i + 1] == b'x')
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .filter(|v| *v >= 0x80);
        match byte {
            Some(v) => {
                out.push(v);
                any = true;
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    any.then_some(out)
}

/// The cgroup id (directory inode) of `rel`, e.g. `/kubepods/burstable`.
pub fn id_of_path(hierarchy: &CpuHierarchy, rel: &str) -> Option<u64> {
    fs::metadata(dir_of(Path::new(&hierarchy.mount), rel))
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_MOUNTINFO: &str = "\
23 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mountinfo_lines() {
        let m = parse_mountinfo(HOST_MOUNTINFO);
        assert_eq!(m.len(), 5);
        assert_eq!(
            m[2],
            MountInfo {
                root: "/".into(),
                mount_point: "/sys/fs/cgroup/cpu".into(),
                fstype: "cgroup".into(),
                super_options: vec!["rw".into(), "cpu".into()],
            }
        );
        // Several optional fields, an escaped space, and a garbage line.
        let m = parse_mountinfo(
            "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 master:3 - cgroup cgroup rw,cpu,cpuacct\n\
             garbage line\n\
             40 25 0:40 /a\\040b /mnt/my\\040cg rw - cgroup2 none rw,nsdelegate\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, "/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(m[0].super_options, ["rw", "cpu", "cpuacct"]);
        assert_eq!(m[1].root, "/a b");
        assert_eq!(m[1].mount_point, "/mnt/my cg");
        assert_eq!(m[1].fstype, "cgroup2");
    }

    #[test]
    fn choose_v1_cpu_over_cgroup2() {
        let m = parse_mountinfo(HOST_MOUNTINFO);
        let h = choose_cpu_hierarchy(&m, |_| true).unwrap();
        assert_eq!(
            h,
            CpuHierarchy {
                version: 1,
                mount: "/sys/fs/cgroup/cpu".into()
            }
        );
        // `cpuacct` alone is not `cpu`.
        let only_acct: Vec<MountInfo> = m
            .iter()
            .filter(|x| x.mount_point != "/sys/fs/cgroup/cpu")
            .cloned()
            .collect();
        let h = choose_cpu_hierarchy(&only_acct, |mp| mp == "/sys/fs/cgroup/unified").unwrap();
        assert_eq!(h.version, 2);
        assert_eq!(h.mount, "/sys/fs/cgroup/unified");
        // cgroup2 without cpu: nothing.
        assert_eq!(choose_cpu_hierarchy(&only_acct, |_| false), None);
    }

    #[test]
    fn choose_cgroup2_only_and_prefer_whole_hierarchy() {
        let m = parse_mountinfo(
            "29 23 0:26 /kubepods/x /host-cg rw - cgroup2 cgroup2 rw\n\
             30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
        );
        let h = choose_cpu_hierarchy(&m, |_| true).unwrap();
        assert_eq!((h.version, h.mount.as_str()), (2, "/sys/fs/cgroup"));
        let none = parse_mountinfo("23 1 0:21 / / rw - ext4 /dev/vda1 rw\n");
        assert_eq!(choose_cpu_hierarchy(&none, |_| true), None);
    }

    #[test]
    fn error_message() {
        assert_eq!(
            CgroupFsError::NoCpuHierarchy.to_string(),
            "no cgroup hierarchy with the cpu controller is mounted; mount cgroup2 or the v1 cpu controller"
        );
    }

    #[test]
    fn a_name_that_is_not_utf8_leads_back_to_its_directory() {
        use std::os::unix::ffi::OsStrExt as _;
        let mount = tempfile::tempdir().unwrap();
        let raw = std::ffi::OsStr::from_bytes(b"bad\xff\xfe-\x1b[2J");
        fs::create_dir_all(mount.path().join("a").join(raw)).unwrap();
        // A literal `\x2d` (systemd's escape of '-') stays literal.
        fs::create_dir(mount.path().join("sys\\x2dfoo.slice")).unwrap();
        let rel = format!("/a/{}", crate::model::escape::os_str(raw));
        assert_eq!(rel, "/a/bad\\xff\\xfe-\x1b[2J");
        assert_eq!(dir_of(mount.path(), &rel), mount.path().join("a").join(raw));
        assert!(dir_of(mount.path(), &rel).is_dir());
        assert!(dir_of(mount.path(), "/sys\\x2dfoo.slice").is_dir());
        assert_eq!(raw_bytes("/x\\x2d"), None);
    }
}
