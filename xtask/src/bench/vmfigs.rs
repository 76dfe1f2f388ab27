//! The guests' figures, read from their consoles: P1 per backend, the measured dispatch costs,
//! P2 (direct and accounting) on the co-firing storm, and P4 at scale.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use super::bpfstats::{self, Attachments, Sample, Style};
use super::capture::Summary;
use super::p1::{self, Windows};
use super::p2::{self, Dispatch, Run, Set};
use super::qemu::Console;
use super::report::Table;
use super::stats::ns;
use super::{Line, Measured};

fn progs(c: &Console, name: &str) -> Result<Sample> {
    let text = c.text(name).with_context(|| c.why_missing(name))?;
    bpfstats::parse_progs(&text).with_context(|| format!("block {name}"))
}

fn floats(c: &Console, name: &str) -> Result<Vec<f64>> {
    let text = c.text(name).with_context(|| c.why_missing(name))?;
    text.split_whitespace()
        .map(|x| {
            x.parse::<f64>()
                .with_context(|| format!("block {name}: {x:?}"))
        })
        .collect()
}

/// P1 of one backend in one guest.
pub fn p1(c: &Console, label: &str, backend: &str, windows: usize) -> Result<Measured> {
    let key = |s: &str| format!("p1.{backend}.{s}");
    if let Some(f) = c.failure(&format!("p1.{backend}")) {
        bail!("{f}");
    }
    let times = floats(c, &key("t"))?;
    let mut samples = Vec::new();
    for (i, t) in times.iter().enumerate() {
        samples.push((*t, progs(c, &key(&format!("s{i}")))?));
    }
    let w = Windows {
        before_peer: progs(c, &key("before"))?,
        after_peer: progs(c, &key("after"))?,
        samples,
        attachments: Attachments::parse(
            &c.text(&key("perf")).unwrap_or_default(),
            &c.text(&key("link")).unwrap_or_default(),
        ),
    };
    let rows = p1::compare(&w)?;
    if rows.is_empty() {
        bail!("no cfstrace program ran during the windows");
    }
    let notes = format!(
        "Single-threaded TCG emulation: every figure is tens of times a bare machine's; the \
         ratios are what compares. `--backend {backend}`; the timer interrupt is timed on the \
         irq_vectors tracepoints under fentry and on `hrtimer_interrupt` under kprobe, as \
         cfstrace does."
    );
    Ok(p1::measured(
        &format!("{label} {backend}"),
        &rows,
        windows,
        &notes,
    ))
}

/// bpftrace's probe name for each dispatch style measured.
const DISPATCH_STYLES: &[(&str, Style)] = &[
    ("kprobe", Style::Kprobe),
    ("kretprobe", Style::Kretprobe),
    ("kfunc", Style::Fentry),
    ("kretfunc", Style::Fexit),
];

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Per-hit dispatch measured in the guest: dd's read(2) loop with a bpftrace program on
/// vfs_read against without; the added time per hit less the program's own run time.
pub fn dispatch(c: &Console, label: &str) -> Result<(Dispatch, Measured)> {
    let mut t = Table::new(&[
        "style",
        "dd without (s, best of 5)",
        "dd with (s, best of 5)",
        "hits per dd",
        "added per hit",
        "program run time per hit",
        "dispatch per hit",
    ]);
    let mut ns_by = BTreeMap::new();
    for (probe, style) in DISPATCH_STYLES {
        let key = |s: &str| format!("dispatch.{probe}.{s}");
        let (Ok(none), Ok(with), Ok(a), Ok(b)) = (
            floats(c, &key("none")),
            floats(c, &key("times")),
            progs(c, &key("before")),
            progs(c, &key("after")),
        ) else {
            t.row(vec![
                style.name().into(),
                format!(
                    "not measured: {}",
                    c.why_missing(&format!("dispatch.{probe}"))
                ),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        };
        // The program that ran on every read: the one with the most new hits.
        let Some(d) = a
            .keys()
            .filter_map(|id| bpfstats::delta(&a, &b, *id))
            .max_by_key(|d| d.hits)
            .filter(|d| d.hits > 0)
        else {
            continue;
        };
        let per_dd = d.hits as f64 / with.len().max(1) as f64;
        let added = (min(&with) - min(&none)) * 1e9 / per_dd;
        let dispatch = (added - d.ns_per_hit()).max(0.0);
        ns_by.insert(*style, dispatch);
        t.row(vec![
            style.name().into(),
            format!("{:.2}", min(&none)),
            format!("{:.2}", min(&with)),
            format!("{per_dd:.0}"),
            ns(added),
            ns(d.ns_per_hit()),
            ns(dispatch),
        ]);
    }
    let Some(fentry) = ns_by.get(&Style::Fentry).copied() else {
        bail!(
            "fentry's dispatch was not measured: {}",
            c.why_missing("dispatch.kfunc")
        );
    };
    // bpftrace 0.17 cannot attach raw tracepoints: they are taken as a trampoline's cost.
    ns_by.insert(Style::Tracepoint, fentry);
    let source = format!(
        "measured in this guest ({label}; table below): dd's read(2) loop with a bpftrace \
         program on `vfs_read`, the best of 5 runs with it against the best of 5 without, less \
         the program's own run time per hit; raw_tp / tp_btf taken as fentry's (bpftrace 0.17 \
         has no raw tracepoint probe)"
    );
    let body = format!(
        "{label}: per-hit dispatch cost outside run_time_ns.\n\n{}",
        t.markdown()
    );
    let lines = ns_by
        .iter()
        .filter(|(s, _)| **s != Style::Tracepoint)
        .map(|(s, v)| Line {
            what: format!("{label}: dispatch per hit, {}", s.name()),
            value: ns(*v),
            goal: "-".into(),
            met: None,
        })
        .collect();
    Ok((Dispatch { ns: ns_by, source }, Measured { lines, body }))
}

/// P2 directly: the interleaved rounds' digests.
pub fn p2_direct(c: &Console, label: &str, rounds: usize) -> Result<Measured> {
    let mut runs = Vec::new();
    for round in 0..rounds {
        for set in Set::ALL {
            let name = format!("p2.{round}.{}", set.name());
            let Some(lines) = c.block(&name) else {
                continue;
            };
            runs.push(Run {
                round,
                set,
                capture: Summary::from_digest(&lines)?,
            });
        }
    }
    if runs.is_empty() {
        bail!("{}", c.why_missing("p2"));
    }
    p2::direct(label, &runs)
}

/// P2 by accounting: the bpf_stats run of the guest.
pub fn p2_accounting(c: &Console, label: &str, dispatch: &Dispatch) -> Result<Measured> {
    let before = progs(c, "p2acct.before")?;
    let mut samples = Vec::new();
    for i in 0.. {
        match c.text(&format!("p2acct.s{i}")) {
            Some(t) => samples.push(bpfstats::parse_progs(&t)?),
            None => break,
        }
    }
    let digest = c
        .block("p2acct.digest")
        .with_context(|| c.why_missing("p2acct"))?;
    let capture = Summary::from_digest(&digest)?;
    p2::accounting(label, &before, &samples, &capture, dispatch)
}

/// `key=value` words of a block.
fn fields(c: &Console, name: &str) -> Result<BTreeMap<String, String>> {
    let text = c.text(name).with_context(|| c.why_missing(name))?;
    Ok(text
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn num(m: &BTreeMap<String, String>, k: &str) -> Result<f64> {
    m.get(k)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {k} in {m:?}"))
}

/// P4 at scale: the measurement `name` (`p4.p100`, `p4.p10`) of the guest's storm.
pub fn p4(c: &Console, label: &str, name: &str) -> Result<Measured> {
    let storm = fields(c, "p4.storm")?;
    if c.block(&format!("{name}.record")).is_none()
        && c.lines
            .iter()
            .any(|l| l.starts_with(&format!("bench: {name}: record attached")))
    {
        let hung = c
            .lines
            .iter()
            .filter(|l| l.contains("blocked for more than"))
            .count();
        bail!(
            "the guest made no progress once the storm was released with cfstrace attached: \
             nothing but kernel messages on its console ({hung} hung-task warnings) until it \
             was killed ({})",
            c.killed.as_deref().unwrap_or("it did not finish")
        );
    }
    if !c
        .lines
        .iter()
        .any(|l| l.starts_with(&format!("bench: {name}: ")))
    {
        bail!("not run: {}", c.why_missing(name));
    }
    let rec = fields(c, &format!("{name}.record"))?;
    let rep = fields(c, &format!("{name}.report"))?;
    let digest = c
        .block(&format!("{name}.digest"))
        .with_context(|| c.why_missing(name))?;
    let cap = Summary::from_digest(&digest)?;
    let end = cap.end.clone().context("the capture has no end line")?;
    if num(&rec, "rc")? != 0.0 || num(&rep, "rc")? != 0.0 {
        bail!("record or report failed: {rec:?} {rep:?}");
    }
    let hwm = num(&rec, "hwm_kib")? * 1024.0;
    let (attach, recorded, stop) = (
        num(&rec, "attach_s")?,
        num(&rec, "recorded_s")?,
        num(&rec, "stop_s")?,
    );
    let (report_s, lines) = (num(&rep, "wall_s")?, num(&rep, "lines")?);
    let cgroups = storm.get("cgroups").cloned().unwrap_or_default();
    let loops = storm.get("loops").cloned().unwrap_or_default();
    let mut t = Table::new(&["figure", "value"]);
    for (k, v) in [
        (
            "throttled cgroups (busy loops)",
            format!("{cgroups} ({loops})"),
        ),
        ("attach, storm frozen", format!("{attach:.1} s")),
        ("recorded under the storm", format!("{recorded:.1} s")),
        ("callbacks written", end.periods.to_string()),
        ("lost", end.lost.to_string()),
        (
            "timer interrupts (kernel totals)",
            cap.interrupts().to_string(),
        ),
        ("peak RSS (VmHWM)", format!("{:.1} MB", hwm / 1e6)),
        ("stop: SIGINT to exit", format!("{stop:.1} s")),
        ("capture lines", format!("{lines:.0}")),
        ("`report --json` wall time", format!("{report_s:.1} s")),
    ] {
        t.row(vec![k.into(), v]);
    }
    let lines_out = vec![
        Line {
            what: format!("{label}: peak RSS, {cgroups} cgroups"),
            value: format!("{:.1} MB", hwm / 1e6),
            goal: "< 64 MB".into(),
            met: Some(hwm < 64e6),
        },
        Line {
            what: format!("{label}: events, {cgroups} cgroups, {recorded:.0} s"),
            value: format!("{} callbacks, {} lost", end.periods, end.lost),
            goal: "0 lost".into(),
            met: Some(end.lost == 0),
        },
        Line {
            what: format!("{label}: time to write the report"),
            value: format!(
                "{report_s:.1} s ({lines:.0} lines; record stopped {stop:.1} s after SIGINT)"
            ),
            goal: "seconds".into(),
            met: Some(report_s < 10.0),
        },
    ];
    Ok(Measured {
        lines: lines_out,
        body: format!(
            "{label}, single-threaded TCG (8 vCPUs share one host thread: each runs at a \
             fraction of a core).\n\n{}",
            t.markdown()
        ),
    })
}

/// The guest's kernel release (the `facts` block).
pub fn release(c: &Console) -> Option<String> {
    let text = c.text("facts")?;
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("release="))
        .map(str::to_string)
}
