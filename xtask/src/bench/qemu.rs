//! Booting a bench guest: qemu, single-threaded TCG (as `cargo xtask vm`: multi-threaded TCG
//! breaks the guests' own text patching, see xtask/src/vm.rs), the console read line by line
//! into a log and a [`Console`]. A smaller copy of vm.rs's boot, to be shared later.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::guest::{M_BEGIN, M_DONE, M_END, M_FAIL, M_INIT};
use super::proc::{self, Guarded};
use crate::kernels::Kernel;

/// How a guest is booted.
pub struct Boot<'a> {
    pub kernel: &'a Kernel,
    pub initrd: &'a Path,
    pub cpus: u32,
    pub mem_mb: u32,
    /// `bench.*` parameters for the guest's /init.
    pub params: String,
    pub log: &'a Path,
    /// Killed after this long in all, or this long without a console line.
    pub timeout: Duration,
    pub silence: Duration,
}

/// Kernel messages that mean the guest kernel broke.
const KERNEL_PROBLEMS: &[&str] = &[
    "Oops",
    "BUG:",
    "Kernel panic",
    "detected stall",
    "soft lockup",
    "hard LOCKUP",
    "general protection fault",
];

/// What a guest printed.
#[derive(Debug, Default)]
pub struct Console {
    pub lines: Vec<String>,
    /// Why qemu was killed, if it was.
    pub killed: Option<String>,
}

impl Console {
    /// The lines of block `name` (between its BEGIN and END markers), if it was printed whole.
    pub fn block(&self, name: &str) -> Option<Vec<&str>> {
        let begin = format!("{M_BEGIN}{name}@@");
        let end = format!("{M_END}{name}@@");
        let i = self.lines.iter().position(|l| l.ends_with(&begin))?;
        let j = self.lines[i..].iter().position(|l| l.ends_with(&end))? + i;
        let mut out: Vec<&str> = self.lines[i + 1..j]
            .iter()
            .map(String::as_str)
            .filter(|l| !is_kernel_line(l))
            .collect();
        // The block's text ends with the guest's own newline, which makes an empty last line.
        if out.last().is_some_and(|l| l.is_empty()) {
            out.pop();
        }
        Some(out)
    }

    /// A block's text on one string (bpftool's JSON).
    pub fn text(&self, name: &str) -> Option<String> {
        self.block(name).map(|l| l.join("\n"))
    }

    /// `@@BENCH-FAIL name why@@` for `name`, or any name under `name.`.
    pub fn failure(&self, name: &str) -> Option<String> {
        self.lines.iter().find_map(|l| {
            let rest = &l[l.find(M_FAIL)? + M_FAIL.len()..];
            let rest = rest.strip_suffix("@@").unwrap_or(rest);
            let (n, why) = rest.split_once(' ').unwrap_or((rest, ""));
            (n == name || n.starts_with(&format!("{name}."))).then(|| format!("{n}: {why}"))
        })
    }

    pub fn done(&self) -> bool {
        self.lines.iter().any(|l| l.contains(M_DONE))
    }

    /// The first kernel problem, with the line it is on.
    pub fn kernel_problem(&self) -> Option<&str> {
        self.lines
            .iter()
            .find(|l| is_kernel_line(l) && KERNEL_PROBLEMS.iter().any(|p| l.contains(p)))
            .map(String::as_str)
    }

    /// Why a part's figures are missing: the guest's own failure line, a kernel problem, or
    /// the guest not finishing.
    pub fn why_missing(&self, name: &str) -> String {
        if let Some(f) = self.failure(name) {
            return format!("the guest reported {f}");
        }
        if let Some(p) = self.kernel_problem() {
            return format!("the guest kernel broke: {p}");
        }
        if let Some(k) = &self.killed {
            return format!("the guest was killed before finishing: {k}");
        }
        if !self.lines.iter().any(|l| l.contains(M_INIT)) {
            return "the guest never reached its /init".into();
        }
        if !self.done() {
            return "the guest stopped before finishing its /init".into();
        }
        format!("the guest printed no `{name}` figures")
    }
}

/// A printk line (`[   12.345678] ...`), which can land in the middle of a block.
fn is_kernel_line(l: &str) -> bool {
    l.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .is_some_and(|(ts, _)| {
            let ts = ts.trim();
            !ts.is_empty() && ts.contains('.') && ts.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
}

pub fn boot(b: &Boot) -> Result<Console> {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-accel", "tcg,thread=single", "-cpu", "max"])
        .args(["-m", &b.mem_mb.to_string(), "-smp", &b.cpus.to_string()])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&b.kernel.vmlinuz)
        .arg("-initrd")
        .arg(b.initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 oops=panic quiet loglevel=4 {}",
            b.params
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut logf =
        fs::File::create(b.log).with_context(|| format!("creating {}", b.log.display()))?;
    let mut g = Guarded::spawn(&mut c, "qemu", libc::SIGKILL, libc::SIGKILL)?;
    let stdout = g.stdout().context("qemu's stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .replace('\r', "");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let start = Instant::now();
    let mut last = Instant::now();
    let mut con = Console::default();
    loop {
        if proc::interrupted() {
            con.killed = Some("interrupted".into());
            break;
        }
        if start.elapsed() > b.timeout {
            con.killed = Some(format!("no power-off after {} s", b.timeout.as_secs()));
            break;
        }
        if last.elapsed() > b.silence {
            con.killed = Some(format!("silent for {} s", b.silence.as_secs()));
            break;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                // Kernel messages are no progress: a guest repeating hung-task warnings is
                // stuck, and the silence limit must catch it.
                if !is_kernel_line(&line) && !line.starts_with("bench-hb:") {
                    last = Instant::now();
                }
                let _ = writeln!(logf, "{line}");
                if line.starts_with("bench") || line.contains(M_INIT) || line.contains(M_FAIL) {
                    println!("  [{:>4}s] {line}", start.elapsed().as_secs());
                }
                con.lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(g);
    if let Some(k) = &con.killed {
        let _ = writeln!(logf, "--- killed: {k} ---");
    }
    proc::check()?;
    Ok(con)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn con(text: &str) -> Console {
        Console {
            lines: text.lines().map(str::to_string).collect(),
            killed: None,
        }
    }

    #[test]
    fn blocks_and_failures() {
        let c = con("@@BENCH-INIT 6.1@@\n\
                     @@BENCH-BEGIN p1.fentry.s0@@\n[{\"id\":1}]\n[    3.250000] random: crng init done\n\n@@BENCH-END p1.fentry.s0@@\n\
                     @@BENCH-FAIL p1.kprobe bpftrace did not attach: x@@\n\
                     [   12.500000] BUG: kernel NULL pointer\n@@BENCH-DONE@@\n");
        assert_eq!(c.block("p1.fentry.s0").unwrap(), vec!["[{\"id\":1}]"]);
        assert_eq!(c.block("p1.fentry.s1"), None);
        assert_eq!(
            c.failure("p1").unwrap(),
            "p1.kprobe: bpftrace did not attach: x"
        );
        assert!(c.failure("p2").is_none());
        assert!(c.done());
        assert!(c.kernel_problem().unwrap().contains("BUG:"));
        assert!(c.why_missing("p2").contains("kernel broke"));
    }
}
