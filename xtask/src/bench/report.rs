//! BENCHMARKS.md and the console table: the machine, the commit, and each figure with its
//! value, goal, method and spread; a figure that could not be measured says why.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use super::{Section, stats};
use crate::cmd;

/// A markdown table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut s = line(&self.header);
        s.push_str(&format!("|{}\n", "---|".repeat(self.header.len())));
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }

    /// Aligned plain text for the terminal.
    pub fn plain(&self) -> String {
        let n = self.header.len();
        let mut w = vec![0; n];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let mut s = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = w[i.min(n - 1)]))
                .collect();
            s.push_str(cells.join("  ").trim_end());
            s.push('\n');
        }
        s
    }
}

/// Where the figures were measured.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub ram_gib: f64,
    pub virt: String,
    pub kernel: String,
    pub os: String,
    pub commit: String,
    pub date: String,
    /// /proc/loadavg's 1, 5, 15 minute figures when the bench started and ended: other work
    /// on the machine shows here (the figures' noise comes with it).
    pub load_start: String,
    pub load_end: String,
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Machine {
    pub fn collect() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |k: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let ram_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let hypervisor = field("flags").is_some_and(|f| f.split(' ').any(|x| x == "hypervisor"));
        Machine {
            cpu: field("model name").unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            ram_gib: ram_kib / 1024.0 / 1024.0,
            virt: if hypervisor {
                "virtual machine (cpuinfo: hypervisor)".into()
            } else {
                "bare metal (no hypervisor flag)".into()
            },
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            os: os_name(),
            commit: commit(),
            date: output_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
            load_start: loadavg(),
            load_end: String::new(),
        }
    }
}

fn os_name() -> String {
    let text = fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default()
}

fn output_line(c: &mut Command) -> String {
    cmd::output(c)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e:#})"))
}

/// `git rev-parse --short HEAD`, plus `+dirty` when the tree differs from it (BENCHMARKS.md
/// itself aside: the bench rewrites it).
fn commit() -> String {
    let root = cmd::workspace_root();
    let head =
        output_line(
            Command::new("git")
                .current_dir(&root)
                .args(["rev-parse", "--short", "HEAD"]),
        );
    let status = cmd::output(Command::new("git").current_dir(&root).args([
        "status",
        "--porcelain",
        "--",
        ".",
        ":!BENCHMARKS.md",
    ]))
    .unwrap_or_default();
    if status.trim().is_empty() {
        head
    } else {
        format!("{head}+dirty")
    }
}

fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "-",
    }
}

/// Every section's summary lines (or why it was not measured), one table.
pub fn summary(sections: &[Section]) -> Table {
    let mut t = Table::new(&["figure", "what", "value", "goal", "met"]);
    for s in sections {
        match &s.outcome {
            Ok(m) => {
                for l in &m.lines {
                    t.row(vec![
                        s.id.to_string(),
                        l.what.clone(),
                        l.value.clone(),
                        l.goal.clone(),
                        met(l.met).into(),
                    ]);
                }
            }
            Err(why) => t.row(vec![
                s.id.to_string(),
                s.title.clone(),
                format!("not measured: {}", first_line(why)),
                s.goal.to_string(),
                "-".into(),
            ]),
        }
    }
    t
}

/// Every figure that missed its goal, and every figure not measured, one line each: what a
/// reader of BENCHMARKS.md must not miss.
pub fn misses(sections: &[Section]) -> Vec<String> {
    let mut out = Vec::new();
    for s in sections {
        match &s.outcome {
            Ok(m) => out.extend(
                m.lines
                    .iter()
                    .filter(|l| l.met == Some(false))
                    .map(|l| format!("{} {}: {} (goal: {})", s.id, l.what, l.value, l.goal)),
            ),
            Err(why) => out.push(format!(
                "{} {}: not measured: {}",
                s.id,
                s.title,
                first_line(why)
            )),
        }
    }
    out
}

/// The first line of a reason, cut to 240 characters for the summary (the section below it
/// gives the whole reason).
fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("");
    match l.char_indices().nth(240) {
        Some((i, _)) => format!("{} ...", &l[..i]),
        None => l.to_string(),
    }
}

pub fn markdown(machine: &Machine, sections: &[Section], elapsed_s: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Benchmarks\n\n\
         Written by `cargo xtask bench` (see README \"Benchmarks\"); rerun it rather than \
         editing this file. Benchmarks print figures and never fail on a timing: \"met\" says \
         whether a figure reached the goal of issue 9.\n"
    );
    let mut m = Table::new(&["", ""]);
    m.row(vec!["commit".into(), format!("`{}`", machine.commit)]);
    m.row(vec!["date".into(), machine.date.clone()]);
    m.row(vec!["CPU".into(), machine.cpu.clone()]);
    m.row(vec!["cores".into(), machine.cores.to_string()]);
    m.row(vec!["RAM".into(), format!("{:.1} GiB", machine.ram_gib)]);
    m.row(vec!["machine".into(), machine.virt.clone()]);
    m.row(vec!["kernel".into(), machine.kernel.clone()]);
    m.row(vec!["OS".into(), machine.os.clone()]);
    m.row(vec![
        "load average (1, 5, 15 min)".into(),
        format!(
            "{} at the start, {} at the end",
            machine.load_start, machine.load_end
        ),
    ]);
    m.row(vec![
        "bench time".into(),
        format!("{} ({})", stats::sig3(elapsed_s / 60.0), "minutes"),
    ]);
    s.push_str(&m.markdown());
    s.push_str("\n## Summary\n\n");
    s.push_str(&summary(sections).markdown());
    let missed = misses(sections);
    if !missed.is_empty() {
        s.push_str("\n### Goals missed, and figures not measured\n\n");
        for m in &missed {
            let _ = writeln!(s, "- {m}");
        }
    }
    for sec in sections {
        let _ = writeln!(s, "\n## {}: {}\n", sec.id, sec.title);
        let _ = writeln!(s, "Goal: {}\n", sec.goal);
        match &sec.outcome {
            Ok(m) => {
                s.push_str(m.body.trim_end());
                s.push('\n');
            }
            Err(why) => {
                let _ = writeln!(s, "**Not measured.** {}", why.trim_end());
            }
        }
        let _ = writeln!(s, "\nMethod: {}", sec.method.trim_end());
        s.push('\n');
    }
    s
}

pub fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Line, Measured};

    #[test]
    fn tables() {
        let mut t = Table::new(&["a", "bb"]);
        t.row(vec!["xxx".into(), "y".into()]);
        assert_eq!(t.markdown(), "| a | bb |\n|---|---|\n| xxx | y |\n");
        assert_eq!(t.plain(), "a    bb\nxxx  y\n");
    }

    #[test]
    fn a_section_not_measured_says_why() {
        let sections = vec![
            Section {
                id: "P3",
                order: 10,
                title: "reader".into(),
                goal: ">= 5 M/s",
                method: "m".into(),
                outcome: Ok(Measured {
                    lines: vec![Line {
                        what: "decode".into(),
                        value: "6 M/s".into(),
                        goal: ">= 5 M/s".into(),
                        met: Some(true),
                    }],
                    body: "body".into(),
                }),
            },
            Section {
                id: "P4",
                order: 10,
                title: "scale".into(),
                goal: "0 lost",
                method: "m".into(),
                outcome: Err("qemu missing\nmore".into()),
            },
        ];
        let md = markdown(&Machine::default(), &sections, 60.0);
        assert!(
            md.contains("| P3 | decode | 6 M/s | >= 5 M/s | yes |"),
            "{md}"
        );
        assert!(md.contains("| P4 | scale | not measured: qemu missing | 0 lost | - |"));
        assert!(md.contains("**Not measured.** qemu missing\nmore"));
        assert!(md.contains("### Goals missed, and figures not measured\n\n- P4 scale: not measured: qemu missing\n"), "{md}");
    }
}
