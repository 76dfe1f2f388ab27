//! The busiest processes of a cgroup and its descendants, from /proc.
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::{CMDLINE_MAX, MAX_PROCESSES};
use crate::model::escape::os_name;
use crate::model::records::ProcessInfo;

/// utime + stime (clock ticks) and comm from /proc/PID/stat. The comm may itself hold `)` or
/// spaces, so the fields are split after the last `)`.
pub fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    // After ")": state(3) ppid(4) ... utime(14) stime(15), numbered as in proc(5).
    let rest: Vec<&str> = stat[close + 1..].split_ascii_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// /proc/PID/cmdline bytes -> one line: NULs to spaces, at most CMDLINE_MAX characters;
/// None for kernel threads and zombies (empty).
pub fn format_cmdline(raw: &[u8]) -> Option<String> {
    let text = os_name(raw);
    let line: String = text
        .trim_end_matches('\0')
        .chars()
        .map(|c| if c == '\0' { ' ' } else { c })
        .take(CMDLINE_MAX)
        .collect();
    let line = line.trim_end().to_string();
    (!line.is_empty()).then_some(line)
}

/// Every directory at or below `dir` (the cgroup and its descendants).
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        out.push(d);
    }
    out
}

/// The MAX_PROCESSES busiest processes (by utime + stime) of `dir` and its descendants, with
/// their command lines when `cmdlines` (else comm only: `--no-cmdline`). Processes that exit
/// while we look are skipped.
pub fn busiest_processes(dir: &Path, cmdlines: bool) -> Vec<ProcessInfo> {
    let pids: BTreeSet<u32> = subtree(dir)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    // One read per pid to rank (stat carries the same comm as /proc/PID/comm: task->comm),
    // the command line only for the ones kept: the root cgroup holds every process.
    let mut ranked: Vec<(u32, String, u64)> = pids
        .into_iter()
        .filter_map(|pid| {
            // A comm is any 15 bytes (prctl PR_SET_NAME): not UTF-8 is kept as `\xNN`.
            let stat = os_name(&fs::read(format!("/proc/{pid}/stat")).ok()?);
            let (comm, ticks) = parse_stat(&stat)?;
            Some((pid, comm, ticks))
        })
        .collect();
    ranked.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    ranked
        .into_iter()
        .filter_map(|(pid, comm, cpu_ticks)| {
            // Not even read when left out (its stat was, a moment ago).
            let cmdline = match cmdlines {
                true => format_cmdline(&fs::read(format!("/proc/{pid}/cmdline")).ok()?),
                false => None,
            };
            Some(ProcessInfo {
                pid,
                comm,
                cmdline,
                cpu_ticks,
            })
        })
        .take(MAX_PROCESSES)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_cmdline() {
        let stat = "4242 (my (odd) comm) R 1 4242 4242 0 -1 4194304 100 0 0 0 1500 250 0 0 20 0 1 0 100 1000 10 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(("my (odd) comm".into(), 1750)));
        assert_eq!(parse_stat("12 (x) R 1"), None);
        assert_eq!(
            format_cmdline(b"python\0-m\0worker\0"),
            Some("python -m worker".into())
        );
        assert_eq!(format_cmdline(b""), None);
        let long = vec![b'a'; 1000];
        assert_eq!(format_cmdline(&long).unwrap().chars().count(), CMDLINE_MAX);
    }
}
