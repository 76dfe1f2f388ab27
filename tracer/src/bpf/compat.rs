//! What each probe family can attach to, in which styles, and what each way needs: a table the
//! one attach ladder ([`super::attach`]) walks. Nothing here runs; it says what to try, in
//! which order for a backend, and how the report names it (kunai's compat table is the model).
use tracer_ebpf::{
    HOW_ENQUEUE_ENTITY, HOW_ENQUEUE_TASK_FAIR, HOW_LOOPS, HOW_RUNNABLE, HOW_UNTHROTTLE,
};

use crate::model::probe::{Backend, Probe, Style};

pub const PERIOD_TIMER_FN: &str = "sched_cfs_period_timer";
pub const DISTRIBUTE_FN: &str = "distribute_cfs_runtime";
pub const UNTHROTTLE_FN: &str = "unthrottle_cfs_rq";
pub const ENQUEUE_ENTITY_FN: &str = "enqueue_entity";
pub const ENQUEUE_TASK_FAIR_FN: &str = "enqueue_task_fair";
pub const NR_RUNNING_TP: &str = "sched_update_nr_running_tp";
/// The CSD that unthrottles a CPU's remote-queued cfs_rqs (6.3+, commit 8ad075c2eb1f).
pub const CSD_UNTHROTTLE_FN: &str = "__cfsb_csd_unthrottle";
pub const CSD_ENTRY_TP: &str = "csd_function_entry";
pub const CSD_EXIT_TP: &str = "csd_function_exit";
/// The timer interrupt's handler: its span holds every period-timer callback it runs.
pub const HRTIMER_INTERRUPT_FN: &str = "hrtimer_interrupt";
/// x86 `irq_vectors` tracepoints around the local APIC timer interrupt.
pub const LOCAL_TIMER_ENTRY_TP: &str = "local_timer_entry";
pub const LOCAL_TIMER_EXIT_TP: &str = "local_timer_exit";

/// Every kernel function the table names, for one pass over kallsyms.
pub const FUNCTIONS: [&str; 7] = [
    PERIOD_TIMER_FN,
    DISTRIBUTE_FN,
    UNTHROTTLE_FN,
    ENQUEUE_ENTITY_FN,
    ENQUEUE_TASK_FAIR_FN,
    CSD_UNTHROTTLE_FN,
    HRTIMER_INTERRUPT_FN,
];

/// Where one program goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// kprobe or kretprobe (the program's section says which) on a function, attached to its
    /// symbol in kallsyms (which may carry a `.isra.0`-style suffix).
    Kprobe(&'static str),
    Fentry(&'static str),
    Fexit(&'static str),
    RawTp(&'static str),
    /// A BTF-typed raw tracepoint: its pointer arguments can be read directly.
    BtfTp(&'static str),
}

/// One way to attach a family: its programs, exit first (an exit goes live before its entry,
/// so no frame opens that cannot close; a lone counter has one program).
#[derive(Clone, Copy, Debug)]
pub struct Way {
    pub style: Style,
    pub programs: &'static [(&'static str, Hook)],
    /// How the report names where it sits (the function, or the tracepoints and their filter).
    pub target: &'static str,
}

/// A probe family: the ways to attach it, best first within each style.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub probe: Probe,
    pub ways: &'static [Way],
    /// The kernel function it stands for, which must be a symbol (None: tracepoints only).
    pub function: Option<&'static str>,
    /// `HOW_*` bits the events carry when it is attached (the counting probes).
    pub bits: u32,
}

impl Family {
    /// The styles to try for `backend`, in order.
    pub fn order(&self, backend: Backend) -> &'static [Style] {
        use Style::{Fentry, Kprobe, RawTp, Tracepoint};
        match (self.probe, backend) {
            (Probe::Runnable, _) => &[RawTp],
            // The timer interrupt: the local_timer tracepoints first, also under auto (the
            // cheapest hook, the whole interrupt, and no live patching of the hottest path's
            // ftrace site on every later attach or detach, which hung Debian 6.1 guests under
            // multi-threaded TCG); kprobe where they are missing; never a BPF trampoline.
            (Probe::IrqSpan, Backend::Auto) => &[Tracepoint, Kprobe],
            (Probe::IrqSpan, Backend::Kprobe) => &[Kprobe],
            (Probe::IrqSpan, _) => &[Tracepoint],
            (_, Backend::Auto) => &[Fentry, Kprobe, Tracepoint],
            (_, Backend::Fentry) => &[Fentry],
            (_, Backend::Kprobe) => &[Kprobe],
            (_, Backend::Tracepoint) => &[Tracepoint],
        }
    }

    pub fn ways_of(&self, style: Style) -> impl Iterator<Item = &'static Way> + '_ {
        self.ways.iter().filter(move |w| w.style == style)
    }
}

pub const PERIOD_TIMER: Family = Family {
    probe: Probe::PeriodTimer,
    ways: &[
        Way {
            style: Style::Fentry,
            programs: &[
                ("period_timer_fexit", Hook::Fexit(PERIOD_TIMER_FN)),
                ("period_timer_fentry", Hook::Fentry(PERIOD_TIMER_FN)),
            ],
            target: PERIOD_TIMER_FN,
        },
        Way {
            style: Style::Kprobe,
            programs: &[
                ("period_timer_kretprobe", Hook::Kprobe(PERIOD_TIMER_FN)),
                ("period_timer_kprobe", Hook::Kprobe(PERIOD_TIMER_FN)),
            ],
            target: PERIOD_TIMER_FN,
        },
        // The entry as a BTF tracepoint where the kernel offers one (a direct load of
        // `timer->function` on every hrtimer), else a raw tracepoint.
        Way {
            style: Style::Tracepoint,
            programs: &[
                ("hrtimer_expire_exit", Hook::RawTp("hrtimer_expire_exit")),
                (
                    "hrtimer_expire_entry_btf",
                    Hook::BtfTp("hrtimer_expire_entry"),
                ),
            ],
            target: "hrtimer_expire_entry/exit (tp_btf/raw_tp) filtered on sched_cfs_period_timer",
        },
        Way {
            style: Style::Tracepoint,
            programs: &[
                ("hrtimer_expire_exit", Hook::RawTp("hrtimer_expire_exit")),
                ("hrtimer_expire_entry", Hook::RawTp("hrtimer_expire_entry")),
            ],
            target: "hrtimer_expire_entry/exit (raw_tp/raw_tp) filtered on sched_cfs_period_timer",
        },
    ],
    function: Some(PERIOD_TIMER_FN),
    bits: 0,
};

pub const IRQ_SPAN: Family = Family {
    probe: Probe::IrqSpan,
    ways: &[
        Way {
            style: Style::Tracepoint,
            programs: &[
                ("local_timer_exit", Hook::RawTp(LOCAL_TIMER_EXIT_TP)),
                ("local_timer_entry", Hook::RawTp(LOCAL_TIMER_ENTRY_TP)),
            ],
            target: "local_timer_entry/exit (raw_tp, irq_vectors): the whole local APIC timer interrupt",
        },
        Way {
            style: Style::Kprobe,
            programs: &[
                ("irq_span_kretprobe", Hook::Kprobe(HRTIMER_INTERRUPT_FN)),
                ("irq_span_kprobe", Hook::Kprobe(HRTIMER_INTERRUPT_FN)),
            ],
            target: HRTIMER_INTERRUPT_FN,
        },
    ],
    function: None,
    bits: 0,
};

pub const DISTRIBUTE: Family = Family {
    probe: Probe::Distribute,
    ways: &[
        Way {
            style: Style::Fentry,
            programs: &[("distribute_fentry", Hook::Fentry(DISTRIBUTE_FN))],
            target: DISTRIBUTE_FN,
        },
        Way {
            style: Style::Kprobe,
            programs: &[("distribute_kprobe", Hook::Kprobe(DISTRIBUTE_FN))],
            target: DISTRIBUTE_FN,
        },
    ],
    function: Some(DISTRIBUTE_FN),
    bits: HOW_LOOPS,
};

pub const UNTHROTTLE: Family = Family {
    probe: Probe::Unthrottle,
    ways: &[
        Way {
            style: Style::Fentry,
            programs: &[("unthrottle_fentry", Hook::Fentry(UNTHROTTLE_FN))],
            target: UNTHROTTLE_FN,
        },
        Way {
            style: Style::Kprobe,
            programs: &[("unthrottle_kprobe", Hook::Kprobe(UNTHROTTLE_FN))],
            target: UNTHROTTLE_FN,
        },
    ],
    function: Some(UNTHROTTLE_FN),
    bits: HOW_UNTHROTTLE,
};

/// `enqueue_entity`, where it is a symbol.
pub const ENQUEUE_ENTITY: Family = Family {
    probe: Probe::Enqueue,
    ways: &[
        Way {
            style: Style::Fentry,
            programs: &[("enqueue_fentry", Hook::Fentry(ENQUEUE_ENTITY_FN))],
            target: ENQUEUE_ENTITY_FN,
        },
        Way {
            style: Style::Kprobe,
            programs: &[("enqueue_kprobe", Hook::Kprobe(ENQUEUE_ENTITY_FN))],
            target: ENQUEUE_ENTITY_FN,
        },
    ],
    function: Some(ENQUEUE_ENTITY_FN),
    bits: HOW_ENQUEUE_ENTITY,
};

/// Where `enqueue_entity` is inlined (6.18+ task-based throttle): `enqueue_task_fair`, which
/// the unthrottle calls per task inside the frame. The same programs, another target.
pub const ENQUEUE_TASK_FAIR: Family = Family {
    probe: Probe::Enqueue,
    ways: &[
        Way {
            style: Style::Fentry,
            programs: &[("enqueue_fentry", Hook::Fentry(ENQUEUE_TASK_FAIR_FN))],
            target: ENQUEUE_TASK_FAIR_FN,
        },
        Way {
            style: Style::Kprobe,
            programs: &[("enqueue_kprobe", Hook::Kprobe(ENQUEUE_TASK_FAIR_FN))],
            target: ENQUEUE_TASK_FAIR_FN,
        },
    ],
    function: Some(ENQUEUE_TASK_FAIR_FN),
    bits: HOW_ENQUEUE_TASK_FAIR,
};

pub const RUNNABLE: Family = Family {
    probe: Probe::Runnable,
    ways: &[Way {
        style: Style::RawTp,
        programs: &[("nr_running", Hook::RawTp(NR_RUNNING_TP))],
        target: NR_RUNNING_TP,
    }],
    function: None,
    bits: HOW_RUNNABLE,
};

pub const ASYNC_UNTHROTTLE: Family = Family {
    probe: Probe::AsyncUnthrottle,
    ways: &[
        Way {
            style: Style::Fentry,
            programs: &[
                ("csd_unthrottle_fexit", Hook::Fexit(CSD_UNTHROTTLE_FN)),
                ("csd_unthrottle_fentry", Hook::Fentry(CSD_UNTHROTTLE_FN)),
            ],
            target: CSD_UNTHROTTLE_FN,
        },
        Way {
            style: Style::Kprobe,
            programs: &[
                ("csd_unthrottle_kretprobe", Hook::Kprobe(CSD_UNTHROTTLE_FN)),
                ("csd_unthrottle_kprobe", Hook::Kprobe(CSD_UNTHROTTLE_FN)),
            ],
            target: CSD_UNTHROTTLE_FN,
        },
        Way {
            style: Style::Tracepoint,
            programs: &[
                ("csd_function_exit", Hook::RawTp(CSD_EXIT_TP)),
                ("csd_function_entry", Hook::RawTp(CSD_ENTRY_TP)),
            ],
            target: "csd_function_entry/exit (raw_tp) filtered on __cfsb_csd_unthrottle",
        },
    ],
    function: Some(CSD_UNTHROTTLE_FN),
    bits: 0,
};
