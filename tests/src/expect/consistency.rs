//! A report's internal arithmetic, whatever the kernel and backend ([`consistency`]).

use serde_json::Value;

use super::{Verdict, at, int, list, num, show, text};

/// Headroom bases a report can name (`headroom_basis`).
pub const BASIS_SPAN: &str = "irq_span";
pub const BASIS_CALLBACK: &str = "period_callback";
pub const BASIS_CSD: &str = "async_csd";

/// `watchdog.thresh_s` in ns.
fn thresh_ns(r: &Value) -> Option<i64> {
    int(r, "/watchdog/thresh_s").map(|t| t.saturating_mul(1_000_000_000))
}

/// The report's internal arithmetic, whatever the kernel and backend: every timer-interrupt
/// span figure holds its period timers (`timers_ns <= duration_ns`, at least one timer), the
/// per-CPU span figures agree with each other, each headroom is `watchdog_thresh` minus the
/// IRQs-off figure its `headroom_basis` names and that figure is the worst of the CPU's (the
/// node's: of every CPU's), and each cgroup's spread fits its CPUs. Returns what is wrong.
/// Every check compares figures of the one report with each other (a span with the callbacks
/// inside it, a headroom with the figure it names), never a time with a threshold: the
/// emulation's speed changes the figures, not whether they agree.
pub fn consistency(r: &Value) -> Vec<String> {
    let mut v = Verdict::default();
    let thresh = thresh_ns(r);
    let cpus = list(r, "/cpus");
    // (headroom, worst figure) of every CPU that has one.
    let cpu_worst: Vec<(Option<i64>, i64)> = cpus
        .iter()
        .filter_map(|c| {
            check_cpu_spans(c, &mut v);
            check_cpu_headroom(c, thresh, &mut v)
        })
        .collect();
    let spans_total: i64 = cpus.iter().filter_map(|c| int(c, "/irq_spans")).sum();
    check_node(r, spans_total, &cpu_worst, thresh, &mut v);
    let ncpus = int(r, "/ncpus").unwrap_or(0);
    for g in list(r, "/cgroups") {
        let name = text(g, "/path")
            .map(str::to_string)
            .unwrap_or_else(|| format!("cgroup {}", show(at(g, "/id"))));
        check_cgroup_span(g, &name, cpus, &mut v);
        check_cgroup_headroom(g, &name, thresh, &mut v);
        if let Some(sp) = at(g, "/spread") {
            check_spread(sp, &name, int(g, "/periods").unwrap_or(0), ncpus, &mut v);
        }
    }
    v.failures
}

/// A CPU's timer-interrupt spans: its worst span holds its timers and is its longest, and the
/// span distributions count the same spans.
fn check_cpu_spans(c: &Value, v: &mut Verdict) {
    let cpu = int(c, "/cpu").unwrap_or(-1);
    let spans = int(c, "/irq_spans").unwrap_or(0);
    let max_span = int(c, "/max_irq_span_ns");
    let worst_timers = match at(c, "/worst_irq_span") {
        Some(w) => {
            let d = int(w, "/duration_ns").unwrap_or(-1);
            let tn = int(w, "/timers_ns").unwrap_or(-1);
            let t = int(w, "/timers").unwrap_or(0);
            v.need(t >= 1 && (0..=d).contains(&tn), || {
                format!(
                    "cpus[{cpu}].worst_irq_span {w}: want timers >= 1 and timers_ns <= duration_ns"
                )
            });
            v.need(
                max_span == Some(d) && int(w, "/cpu") == Some(cpu) && spans > 0,
                || {
                    format!(
                        "cpus[{cpu}].worst_irq_span {w} disagrees with max_irq_span_ns {} / irq_spans {spans}",
                        show(at(c, "/max_irq_span_ns"))
                    )
                },
            );
            Some(t)
        }
        None => {
            v.need(spans == 0 && max_span.is_none(), || {
                format!(
                    "cpus[{cpu}] has irq_spans {spans} and max_irq_span_ns {} but no worst_irq_span",
                    show(at(c, "/max_irq_span_ns"))
                )
            });
            None
        }
    };
    if let Some(s) = at(c, "/irq_span_ns") {
        v.need(
            int(s, "/count") == Some(spans) && int(s, "/max") == max_span,
            || {
                format!(
                    "cpus[{cpu}].irq_span_ns {s} disagrees with irq_spans {spans} / max_irq_span_ns {max_span:?}"
                )
            },
        );
    }
    if let Some(s) = at(c, "/period_timers_per_span") {
        v.need(
            int(s, "/count") == Some(spans)
                && int(s, "/min").is_some_and(|m| m >= 1)
                && worst_timers.is_none_or(|t| int(s, "/max").is_some_and(|m| m >= t)),
            || {
                format!(
                    "cpus[{cpu}].period_timers_per_span {s}: want count {spans}, min >= 1, max >= the worst span's timers {worst_timers:?}"
                )
            },
        );
    }
    if let Some(sh) = num(c, "/period_timer_share") {
        v.need((0.0..=1.0).contains(&sh), || {
            format!("cpus[{cpu}].period_timer_share {sh} is not within 0..1")
        });
    }
}

/// A CPU's headroom: thresh - the figure its basis names, which is the CPU's worst. Returns
/// (headroom, worst figure) where the CPU has a basis.
fn check_cpu_headroom(
    c: &Value,
    thresh: Option<i64>,
    v: &mut Verdict,
) -> Option<(Option<i64>, i64)> {
    let cpu = int(c, "/cpu").unwrap_or(-1);
    let max_span = int(c, "/max_irq_span_ns");
    let figure = |basis: &str| match basis {
        BASIS_SPAN => max_span,
        BASIS_CALLBACK => int(c, "/max_callback_ns"),
        BASIS_CSD => int(c, "/max_async_ns"),
        _ => None,
    };
    let worst = [BASIS_SPAN, BASIS_CALLBACK, BASIS_CSD]
        .iter()
        .filter_map(|b| figure(b))
        .max()
        .unwrap_or(0);
    let h = int(c, "/headroom_ns");
    let Some(b) = text(c, "/headroom_basis") else {
        v.need(worst == 0 && h.is_none(), || {
            format!("cpus[{cpu}] has no headroom_basis (headroom {h:?}, worst figure {worst} ns)")
        });
        return None;
    };
    let f = figure(b);
    v.need(f == Some(worst) && worst > 0, || {
        format!(
            "cpus[{cpu}].headroom_basis {b:?} names {f:?} ns, but the CPU's worst IRQs-off \
             figure is {worst} ns (spans {max_span:?}, callback {}, CSD {})",
            show(at(c, "/max_callback_ns")),
            show(at(c, "/max_async_ns"))
        )
    });
    if let Some(t) = thresh {
        v.need(h == Some(t - worst), || {
            format!(
                "cpus[{cpu}].headroom_ns is {h:?}, want watchdog_thresh {t} - {b} {worst} = {}",
                t - worst
            )
        });
    }
    Some((h, worst))
}

/// The node: its span and period counts add up, and its headroom is the worst CPU's.
fn check_node(
    r: &Value,
    spans_total: i64,
    cpu_worst: &[(Option<i64>, i64)],
    thresh: Option<i64>,
    v: &mut Verdict,
) {
    v.need(
        int(r, "/events/irq_spans").unwrap_or(0) == spans_total,
        || {
            format!(
                "events.irq_spans is {}, the CPUs' irq_spans add up to {spans_total}",
                show(at(r, "/events/irq_spans"))
            )
        },
    );
    v.need(
        int(r, "/events/periods_in_span").unwrap_or(0) <= int(r, "/events/periods").unwrap_or(0),
        || {
            format!(
                "events.periods_in_span {} > events.periods {}",
                show(at(r, "/events/periods_in_span")),
                show(at(r, "/events/periods"))
            )
        },
    );
    let node_h = int(r, "/headroom_ns");
    let (b, worst) = match (
        text(r, "/headroom_basis"),
        cpu_worst.iter().map(|w| w.1).max(),
    ) {
        (Some(b), Some(worst)) => (b, worst),
        (None, None) => {
            v.need(node_h.is_none(), || {
                format!("headroom_ns {node_h:?} without a headroom_basis")
            });
            return;
        }
        (b, w) => {
            v.failures.push(format!(
                "headroom_basis {b:?} but the CPUs' worst IRQs-off figure is {w:?}"
            ));
            return;
        }
    };
    let w = at(r, "/worst_irqs_off");
    let wd = w.and_then(|w| int(w, "/duration_ns"));
    v.need(
        w.and_then(|w| text(w, "/basis")) == Some(b) && wd == Some(worst),
        || {
            format!(
                "worst_irqs_off {} (headroom_basis {b:?}) is not the worst CPU figure {worst} ns",
                show(w)
            )
        },
    );
    if b == BASIS_SPAN
        && let Some(w) = w
    {
        let tn = int(w, "/period_timers_ns").unwrap_or(-1);
        v.need(
            int(w, "/period_timers").is_some_and(|t| t >= 1) && (0..=worst).contains(&tn),
            || {
                format!(
                    "worst_irqs_off {w}: want period_timers >= 1 and period_timers_ns <= duration_ns"
                )
            },
        );
    }
    if let Some(t) = thresh {
        v.need(node_h == Some(t - worst), || {
            format!(
                "headroom_ns is {node_h:?}, want watchdog_thresh {t} - {b} {worst} = {}",
                t - worst
            )
        });
        let min_cpu = cpu_worst.iter().filter_map(|w| w.0).min();
        v.need(node_h == min_cpu, || {
            format!("headroom_ns {node_h:?} is not the lowest CPU headroom {min_cpu:?}")
        });
    }
}

/// A cgroup's worst span holds its callbacks and fits its CPU's longest span.
fn check_cgroup_span(g: &Value, name: &str, cpus: &[Value], v: &mut Verdict) {
    let Some(ws) = at(g, "/worst_irq_span") else {
        return;
    };
    let d = int(ws, "/duration_ns").unwrap_or(-1);
    let pt = int(ws, "/period_timers").unwrap_or(0);
    let ptn = int(ws, "/period_timers_ns").unwrap_or(-1);
    let ot = int(ws, "/own_timers").unwrap_or(0);
    let on = int(ws, "/own_ns").unwrap_or(-1);
    v.need(
        1 <= ot && ot <= pt && 0 <= on && on <= ptn && ptn <= d,
        || {
            format!(
                "{name}: worst_irq_span {ws}: want 1 <= own_timers <= period_timers and \
                 own_ns <= period_timers_ns <= duration_ns"
            )
        },
    );
    let cpu = int(ws, "/cpu");
    let cpu_max = cpus
        .iter()
        .find(|c| int(c, "/cpu") == cpu)
        .and_then(|c| int(c, "/max_irq_span_ns"));
    v.need(cpu_max.is_some_and(|m| m >= d), || {
        format!(
            "{name}: worst_irq_span of {d} ns on cpu {cpu:?}, but that CPU's longest span is {cpu_max:?}"
        )
    });
}

/// A cgroup's headroom: from its worst span or its worst callback, whichever is longer.
fn check_cgroup_headroom(g: &Value, name: &str, thresh: Option<i64>, v: &mut Verdict) {
    let periods = int(g, "/periods").unwrap_or(0);
    let cb_max = int(g, "/callback_ns/max").unwrap_or(0);
    let span = int(g, "/worst_irq_span/duration_ns");
    let h = int(g, "/headroom_ns");
    let Some(b) = text(g, "/headroom_basis") else {
        v.need(periods == 0, || {
            format!("{name}: {periods} periods but no headroom_basis")
        });
        return;
    };
    let (figure, right_basis) = match b {
        BASIS_SPAN => (span, span.is_some_and(|s| s >= cb_max)),
        BASIS_CALLBACK => (Some(cb_max), span.is_none_or(|s| s < cb_max)),
        _ => (None, false),
    };
    let Some(f) = figure else {
        v.failures.push(format!(
            "{name}: headroom_basis {b:?} without the figure it names"
        ));
        return;
    };
    v.need(right_basis, || {
        format!(
            "{name}: headroom_basis {b:?}, but its worst span is {span:?} ns and its worst \
             callback {cb_max} ns"
        )
    });
    if let Some(t) = thresh {
        v.need(h == Some(t - f), || {
            format!(
                "{name}: headroom_ns is {h:?}, want watchdog_thresh {t} - {b} {f} = {}",
                t - f
            )
        });
    }
}

/// A cgroup's spread: an ascending list of the node's CPUs, one count a period.
fn check_spread(sp: &Value, name: &str, periods: i64, ncpus: i64, v: &mut Verdict) {
    let cpus: Vec<i64> = list(sp, "/cpus").iter().filter_map(Value::as_i64).collect();
    let n = int(sp, "/ncpus").unwrap_or(-1);
    let max = int(sp, "/per_period/max").unwrap_or(-1);
    let count = int(sp, "/per_period/count").unwrap_or(-1);
    v.need(
        n == cpus.len() as i64
            && cpus.windows(2).all(|w| w[0] < w[1])
            && cpus.iter().all(|&c| (0..ncpus).contains(&c)),
        || {
            format!(
                "{name}: spread.cpus {cpus:?} / ncpus {n}: want an ascending list of CPUs below \
                 {ncpus}, ncpus its length"
            )
        },
    );
    v.need((0..=n).contains(&max) && max <= ncpus, || {
        format!(
            "{name}: spread.per_period.max {max} exceeds its CPUs ({n}) or the node's ({ncpus})"
        )
    });
    v.need(count == periods, || {
        format!("{name}: spread.per_period.count {count}, want one per period ({periods})")
    });
}
