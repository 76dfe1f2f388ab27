//! The vocabulary of attaching: the probes by name, the backends a user asks for, the styles a
//! probe is attached with, each attempt and why it failed, and why a recording stopped. Typed
//! here once; every room, the capture and the report use these (serialized as the same
//! snake_case strings captures have always held).
use std::fmt;

use serde::{Deserialize, Serialize};

/// A probe as the capture header and the report's `probes` section name it: the BPF probe
/// families `--probes` chooses from, and `kmsg` (the /dev/kmsg reader). Declared in the order
/// of their names, which is the order of the `probes` maps in captures and reports.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Probe {
    /// The async-unthrottle CSD of 6.3+ kernels.
    AsyncUnthrottle,
    /// `distribute_cfs_runtime` passes per callback (needs period_timer).
    Distribute,
    /// Entities enqueued per callback (needs period_timer).
    Enqueue,
    /// The timer interrupt around the callbacks (the watchdog's headroom).
    IrqSpan,
    /// The kernel's own "period too short" messages (/dev/kmsg; not a BPF probe).
    #[value(skip)]
    Kmsg,
    /// The period-timer callback's frame: its IRQs-off time, CPU, cgroup, period and quota.
    PeriodTimer,
    /// Tasks made runnable per callback (needs period_timer).
    Runnable,
    /// cfs_rqs unthrottled per callback, their CPUs and queued tasks (needs period_timer).
    Unthrottle,
}

impl Probe {
    /// The BPF probe families, in the order they are attached (the frames first: a counter
    /// counts only inside an open frame).
    pub const FAMILIES: [Probe; 7] = [
        Probe::PeriodTimer,
        Probe::IrqSpan,
        Probe::Distribute,
        Probe::Unthrottle,
        Probe::Enqueue,
        Probe::Runnable,
        Probe::AsyncUnthrottle,
    ];

    /// Every probe in the order a report lists them.
    pub const REPORT_ORDER: [Probe; 8] = [
        Probe::PeriodTimer,
        Probe::IrqSpan,
        Probe::Distribute,
        Probe::Unthrottle,
        Probe::AsyncUnthrottle,
        Probe::Enqueue,
        Probe::Runnable,
        Probe::Kmsg,
    ];

    /// The counting probes count inside the period-timer frame: without it they count nothing.
    pub fn needs_period_timer(self) -> bool {
        matches!(
            self,
            Probe::Distribute | Probe::Unthrottle | Probe::Enqueue | Probe::Runnable
        )
    }
}

/// The attach styles a user can ask for (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Backend {
    /// Best per probe: fentry, then kprobe, then tracepoints.
    Auto,
    /// kprobe/kretprobe (works back to RHEL 8 kernels).
    Kprobe,
    /// fentry/fexit (cheapest; needs BTF and trampoline support).
    Fentry,
    /// hrtimer_expire_entry/exit tracepoints: callback time and cgroup only.
    Tracepoint,
}

/// How a probe was attached (a probe's `how`, a capture's `backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Style {
    Fentry,
    Kprobe,
    /// Tracepoints (raw, or BTF-typed) filtered on the function they stand for.
    Tracepoint,
    /// A bare raw tracepoint that is itself the event (`sched_update_nr_running_tp`).
    RawTp,
    /// Read from a file (`/dev/kmsg`).
    Read,
    /// Not attached: left out by `--probes` (a capture's `backend` when its period-timer
    /// frame was).
    None,
}

/// Where an attempt stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Before loading anything: the kernel lacks what the style needs (the symbol, its BTF,
    /// the tracepoint), or the backend or `--probes` excludes it.
    Check,
    /// Loading the program (the verifier, or the kernel refusing the program type).
    Load,
    /// Attaching the loaded program.
    Attach,
}

/// One try at attaching a probe in one style that did not work: the attach ladder records
/// these, the report's `reason` is written from them, and the tests' oracle reads them (errno
/// and stage) instead of parsing the prose.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AttachAttempt {
    pub style: Style,
    pub stage: Stage,
    /// The OS error the kernel gave, when there was one (1 EPERM, 2 ENOENT, 95 EOPNOTSUPP...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// What failed, in words.
    pub message: String,
}

impl AttachAttempt {
    pub fn check(style: Style, message: impl Into<String>) -> Self {
        Self {
            style,
            stage: Stage::Check,
            errno: None,
            message: message.into(),
        }
    }

    /// The kernel said no to this style as such (not to this program): EPERM (trampolines not
    /// permitted), EOPNOTSUPP/ENOTSUPP, or ENOENT from opening a raw tracepoint it does not
    /// offer to BPF.
    pub fn kernel_refused(&self) -> bool {
        const EPERM: i32 = 1;
        const ENOENT: i32 = 2;
        const EOPNOTSUPP: i32 = 95;
        const ENOTSUPP: i32 = 524;
        match (self.stage, self.errno) {
            (Stage::Check, _) | (_, None) => false,
            (_, Some(EPERM | EOPNOTSUPP | ENOTSUPP)) => true,
            (Stage::Attach, Some(ENOENT)) => self.style == Style::RawTp,
            _ => false,
        }
    }
}

/// How one probe was attached, or why not.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProbeStatus {
    pub attached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub how: Option<Style>,
    /// The kernel function or tracepoint it sits on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Why it is not attached (or degraded), in words a person can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The styles tried before the one that worked (or all, when none did), in order.
    /// Absent from captures before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttachAttempt>,
}

impl ProbeStatus {
    pub fn attached(how: Style, target: impl Into<String>) -> Self {
        Self {
            attached: true,
            how: Some(how),
            target: Some(target.into()),
            reason: None,
            attempts: Vec::new(),
        }
    }

    pub fn not_attached(reason: impl Into<String>) -> Self {
        Self {
            attached: false,
            how: None,
            target: None,
            reason: Some(reason.into()),
            attempts: Vec::new(),
        }
    }
}

/// Why a recording stopped (a capture's end line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum StopReason {
    /// `--duration` ran out.
    Duration,
    /// Ctrl-C or SIGTERM (forwarded to CMD, when there was one).
    Interrupted,
    /// `record -- CMD`: CMD exited.
    CommandExited,
    /// A watcher of the events stopped it (`cfstrace storm`'s guard).
    Guard,
}

/// The names of the model's enums: `as_str` (the capture's and report's spelling, as serde
/// writes it) and `Display` (the same, padded as asked).
macro_rules! named {
    ($($t:ty),+) => {$(
        impl $t {
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    )+};
}

named!(Probe, Backend, Style, StopReason);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_serdes_padded() {
        fn same<T: Serialize + fmt::Display>(v: T) {
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{v}\""));
        }
        use Style::*;
        for s in [Fentry, Kprobe, Tracepoint, RawTp, Read, None] {
            same(s);
        }
        for b in [
            Backend::Auto,
            Backend::Kprobe,
            Backend::Fentry,
            Backend::Tracepoint,
        ] {
            same(b);
        }
        for r in [
            StopReason::Duration,
            StopReason::Interrupted,
            StopReason::CommandExited,
            StopReason::Guard,
        ] {
            same(r);
        }
        assert_eq!(format!("[{:<8}]", Style::RawTp), "[raw_tp  ]");
    }

    #[test]
    fn names_as_captures_hold_them() {
        for p in Probe::REPORT_ORDER {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
            assert_eq!(serde_json::from_str::<Probe>(&json).unwrap(), p);
        }
        // The enum's order is its names' order: BTreeMaps keyed by it list probes as the
        // string-keyed maps of older captures did.
        let mut by_name = Probe::REPORT_ORDER.to_vec();
        by_name.sort();
        let mut names: Vec<&str> = Probe::REPORT_ORDER.iter().map(|p| p.as_str()).collect();
        names.sort();
        assert_eq!(
            by_name.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            names
        );
        assert_eq!(serde_json::to_string(&Style::RawTp).unwrap(), "\"raw_tp\"");
        assert_eq!(
            serde_json::to_string(&StopReason::CommandExited).unwrap(),
            "\"command_exited\""
        );
    }

    #[test]
    fn what_counts_as_the_kernel_refusing() {
        let at = |style, stage, errno| AttachAttempt {
            style,
            stage,
            errno,
            message: String::new(),
        };
        assert!(at(Style::Fentry, Stage::Load, Some(1)).kernel_refused());
        assert!(at(Style::Kprobe, Stage::Attach, Some(95)).kernel_refused());
        assert!(at(Style::RawTp, Stage::Attach, Some(2)).kernel_refused());
        assert!(!at(Style::Kprobe, Stage::Attach, Some(2)).kernel_refused());
        assert!(!at(Style::Fentry, Stage::Load, Some(22)).kernel_refused());
        assert!(!at(Style::Fentry, Stage::Check, Some(1)).kernel_refused());
    }
}
