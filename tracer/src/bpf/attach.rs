//! The one attach ladder: for a probe family of the compat table, try each way the backend
//! allows, best first, and record every attempt that failed (style, stage, errno, message).
//! The first way that loads and attaches whole wins; a way that comes up half is unloaded, so
//! nothing idle stays in the kernel of the node being diagnosed.
use std::io;

use aya::programs::{Program, ProgramError};
use aya::{Btf, Ebpf};

use super::btf::KernelBtf;
use super::compat::{Family, Hook, Way};
use super::kallsyms::Symbols;
use crate::model::probe::{AttachAttempt, Backend, ProbeStatus, Stage, Style};

/// What a ladder walk found: the status for the report, and the way that worked.
pub struct Outcome {
    pub status: ProbeStatus,
    pub way: Option<&'static Way>,
}

/// Everything a walk needs from the kernel and the loaded object.
pub struct Attacher<'a> {
    pub ebpf: &'a mut Ebpf,
    /// The running kernel's BTF (aya's), for fentry/fexit and BTF tracepoint targets.
    pub btf: Option<&'a Btf>,
    pub kbtf: &'a KernelBtf,
    pub syms: &'a Symbols,
}

impl Attacher<'_> {
    /// Walk `family`'s ways for `backend`. Never fails: a family that cannot attach gets a
    /// status saying why, built from its attempts.
    pub fn attach(&mut self, family: &Family, backend: Backend) -> Outcome {
        let order = family.order(backend);
        let mut attempts = Vec::new();
        // A family that only kprobes and trampolines can reach needs its function as a symbol:
        // one line says it is inlined or absent, rather than one per style.
        if let Some(f) = family.function
            && self.syms.symbol(f).is_none()
            && family
                .ways
                .iter()
                .all(|w| matches!(w.style, Style::Fentry | Style::Kprobe))
        {
            let a = AttachAttempt::check(
                order.first().copied().unwrap_or(Style::Fentry),
                format!("{f} is not in /proc/kallsyms: inlined or absent in this kernel"),
            );
            let mut status = ProbeStatus::not_attached(a.message.clone());
            status.attempts = vec![a];
            return Outcome { status, way: None };
        }
        for &style in order {
            let mut ways = family.ways_of(style).peekable();
            if ways.peek().is_none() {
                // Under auto a style a family lacks is simply skipped; asked for, it is said.
                if backend != Backend::Auto {
                    attempts.push(AttachAttempt::check(
                        style,
                        format!(
                            "the {backend} backend has no probe on {}; use --backend auto, \
                             kprobe or fentry on a kernel with kprobes or BPF trampolines",
                            family.function.unwrap_or(family.probe.as_str())
                        ),
                    ));
                }
                continue;
            }
            for way in ways {
                match self.try_way(family, way) {
                    Ok(()) => {
                        let mut status = ProbeStatus::attached(style, way.target);
                        status.reason = fell_back(&attempts);
                        status.attempts = attempts;
                        return Outcome {
                            status,
                            way: Some(way),
                        };
                    }
                    Err(a) => attempts.push(a),
                }
            }
        }
        let mut status = ProbeStatus::not_attached(prose(&attempts));
        status.attempts = attempts;
        Outcome { status, way: None }
    }

    fn try_way(&mut self, family: &Family, way: &Way) -> Result<(), AttachAttempt> {
        let check = |msg: String| AttachAttempt::check(way.style, msg);
        if let Some(f) = family.function
            && matches!(way.style, Style::Fentry | Style::Kprobe)
        {
            if self.syms.symbol(f).is_none() {
                return Err(check(format!("{f} is not a symbol")));
            }
            if way.style == Style::Fentry && !self.kbtf.has_func(f) {
                return Err(check(format!("{f} has no BTF description")));
            }
        }
        // Load every program first, then attach exit before entry: both go live back to back.
        for (i, &(prog, hook)) in way.programs.iter().enumerate() {
            if let Err(e) = self.load(prog, hook) {
                self.unload_all(&way.programs[..i]);
                return Err(attempt(way.style, Stage::Load, &e));
            }
        }
        for &(prog, hook) in way.programs {
            if let Err(e) = self.attach_one(prog, hook) {
                self.unload_all(way.programs);
                return Err(attempt(way.style, Stage::Attach, &e));
            }
        }
        Ok(())
    }

    fn program(&mut self, prog: &str) -> Result<&mut Program, ProgramError> {
        self.ebpf
            .program_mut(prog)
            .ok_or_else(|| missing(format!("program {prog} missing from the object")))
    }

    fn load(&mut self, prog: &str, hook: Hook) -> Result<(), ProgramError> {
        let btf = self.btf;
        let no_btf = || missing("no kernel BTF to resolve the target".into());
        match (hook, self.program(prog)?) {
            (Hook::Kprobe(_), Program::KProbe(p)) => p.load(),
            (Hook::Fentry(f), Program::FEntry(p)) => p.load(f, btf.ok_or_else(no_btf)?),
            (Hook::Fexit(f), Program::FExit(p)) => p.load(f, btf.ok_or_else(no_btf)?),
            (Hook::RawTp(_), Program::RawTracePoint(p)) => p.load(),
            (Hook::BtfTp(tp), Program::BtfTracePoint(p)) => p.load(tp, btf.ok_or_else(no_btf)?),
            _ => Err(missing(format!(
                "program {prog} is not of the type its hook needs"
            ))),
        }
    }

    fn attach_one(&mut self, prog: &str, hook: Hook) -> Result<(), ProgramError> {
        let symbol = match hook {
            // kprobes attach to the real symbol, which may be a suffixed clone.
            Hook::Kprobe(f) => self.syms.symbol(f).unwrap_or(f).to_string(),
            _ => String::new(),
        };
        match (hook, self.program(prog)?) {
            (Hook::Kprobe(_), Program::KProbe(p)) => p.attach(symbol.as_str(), 0).map(drop),
            (Hook::Fentry(_), Program::FEntry(p)) => p.attach().map(drop),
            (Hook::Fexit(_), Program::FExit(p)) => p.attach().map(drop),
            (Hook::RawTp(tp), Program::RawTracePoint(p)) => p.attach(tp).map(drop),
            (Hook::BtfTp(_), Program::BtfTracePoint(p)) => p.attach().map(drop),
            _ => Err(missing(format!(
                "program {prog} is not of the type its hook needs"
            ))),
        }
    }

    /// Unload (and so detach) programs of a way that did not come up whole.
    fn unload_all(&mut self, programs: &[(&str, Hook)]) {
        for &(prog, _) in programs {
            // Unloading detaches the program's links first; one never loaded is a no-op.
            let _ = match self.ebpf.program_mut(prog) {
                Some(Program::KProbe(p)) => p.unload(),
                Some(Program::FEntry(p)) => p.unload(),
                Some(Program::FExit(p)) => p.unload(),
                Some(Program::RawTracePoint(p)) => p.unload(),
                Some(Program::BtfTracePoint(p)) => p.unload(),
                _ => Ok(()),
            };
        }
    }
}

fn missing(msg: String) -> ProgramError {
    ProgramError::IOError(io::Error::other(msg))
}

/// An attempt from an aya error: the first OS error in it gives the errno.
fn attempt(style: Style, stage: Stage, e: &ProgramError) -> AttachAttempt {
    AttachAttempt {
        style,
        stage,
        errno: errno_of(e),
        message: message(e),
    }
}

fn errno_of(e: &ProgramError) -> Option<i32> {
    // Transparent variants hide their io::Error from `source()`: look at them first.
    let direct = match e {
        ProgramError::IOError(io) => Some(io),
        ProgramError::LoadError { io_error, .. } => Some(io_error),
        ProgramError::SyscallError(s) => Some(&s.io_error),
        _ => None,
    };
    direct
        .and_then(io::Error::raw_os_error)
        .or_else(|| errno_in_chain(e))
}

fn errno_in_chain(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<io::Error>()
            && let Some(n) = io.raw_os_error()
        {
            return Some(n);
        }
        cur = c.source();
    }
    None
}

/// The whole error chain on one line: aya's top-level messages alone ("the program could not
/// be loaded") do not say why; the verifier or errno is in the sources. Verifier logs are long:
/// the first lines and the last say enough in a report (the verifier's complaint is the line
/// before its closing statistics, so the tail is the longer part).
pub fn message(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    if s.chars().count() > 900 {
        let head: String = s.chars().take(300).collect();
        let tail: Vec<char> = s.chars().rev().take(550).collect();
        s = format!("{head} ... {}", tail.into_iter().rev().collect::<String>());
    }
    humanize(&s.replace('\n', " "))
}

/// Say what the common refusals mean instead of only quoting the syscall.
fn humanize(s: &str) -> String {
    let s = s
        .replace(" Verifier output: ", " ")
        .trim_end_matches([' ', ';', '.'])
        .to_string();
    if s.contains("kprobe/type") {
        return format!("this kernel has no kprobe PMU (built without CONFIG_KPROBES) [{s}]");
    }
    if s.contains("BPF_PROG_LOAD") && s.contains("Operation not permitted") {
        return format!(
            "the kernel refused the program (EPERM: BPF trampolines not permitted here) [{s}]"
        );
    }
    s
}

/// `fentry: ...; kprobe: ...`: every attempt, in order.
pub fn prose(attempts: &[AttachAttempt]) -> String {
    attempts
        .iter()
        .map(|a| format!("{}: {}", a.style, a.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The note of a probe attached after others failed.
fn fell_back(attempts: &[AttachAttempt]) -> Option<String> {
    (!attempts.is_empty()).then(|| format!("fell back: {}", prose(attempts)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_comes_from_the_chain() {
        let e = ProgramError::IOError(io::Error::from_raw_os_error(1));
        assert_eq!(errno_of(&e), Some(1));
        assert_eq!(errno_of(&missing("x".into())), None);
        let a = attempt(Style::Fentry, Stage::Load, &e);
        assert!(a.kernel_refused());
    }

    #[test]
    fn prose_of_attempts() {
        let a = vec![
            AttachAttempt::check(Style::Fentry, "f has no BTF description"),
            AttachAttempt {
                style: Style::Kprobe,
                stage: Stage::Attach,
                errno: Some(2),
                message: "no kprobe PMU".into(),
            },
        ];
        assert_eq!(
            prose(&a),
            "fentry: f has no BTF description; kprobe: no kprobe PMU"
        );
        assert_eq!(fell_back(&[]), None);
        assert!(fell_back(&a).unwrap().starts_with("fell back: fentry: "));
    }

    #[test]
    fn long_errors_are_cut_in_the_middle() {
        let long = "x".repeat(2000);
        let m = message(&io::Error::other(long));
        assert!(
            m.chars().count() < 900 && m.contains(" ... "),
            "{}",
            m.len()
        );
    }
}
