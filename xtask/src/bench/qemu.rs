//! Booting a bench guest through the VM tests' boot (`crate::vm::boot`: single-threaded TCG,
//! the console logged line by line), and reading its console: the blocks its /init prints
//! between markers.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::guest::{M_BEGIN, M_DONE, M_END, M_FAIL, M_INIT};
use super::proc;
use crate::vm::console::{kernel_message, kernel_problem};
use crate::vm::kernels::Kernel;
use crate::vm::{Engine, Limits, Machine, Watch, boot};

/// How a guest is booted.
pub struct Boot<'a> {
    pub kernel: &'a Kernel,
    pub initrd: &'a Path,
    pub cpus: u32,
    pub mem_mb: u32,
    /// `bench.*` parameters for the guest's /init.
    pub params: String,
    pub log: &'a Path,
    /// Killed after this long in all, or this long without a line from its /init (wall time:
    /// the bench's guests run alone, and a stalled guest must not cost four times the limit).
    pub timeout: Duration,
    pub silence: Duration,
}

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
            .find(|l| kernel_problem(l).is_some())
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

/// Kernel messages and the guest's heartbeat are no progress: a guest repeating hung-task
/// warnings is stuck, and the silence limit must catch it.
fn idle_line(l: &str) -> bool {
    is_kernel_line(l) || l.starts_with("bench-hb:")
}

/// The lines shown as they come: the guest's own `bench:` lines and its markers of note.
fn echo(l: &str) -> bool {
    l.starts_with("bench") || l.contains(M_INIT) || l.contains(M_FAIL)
}

fn is_kernel_line(l: &str) -> bool {
    kernel_message(l).is_some()
}

pub fn boot(b: &Boot) -> Result<Console> {
    let append = format!("loglevel=4 {}", b.params);
    let m = Machine {
        vmlinuz: &b.kernel.vmlinuz,
        initrd: b.initrd,
        cpus: b.cpus,
        mem_mb: b.mem_mb,
        append: &append,
        engine: Engine::Tcg,
    };
    let w = Watch {
        log: b.log,
        limits: Limits {
            timeout: b.timeout,
            silence: b.silence,
            wall_factor: 1,
        },
        init_marker: M_INIT,
        idle_line,
        echo,
        cancelled: proc::interrupted,
        kvm_init_deadline: None,
    };
    let guest = boot::run(&m, &w)?;
    proc::check()?;
    Ok(Console {
        killed: guest.killed(),
        lines: guest.lines,
    })
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
