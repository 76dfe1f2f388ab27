//! The report as a terse terminal table (bcc `hardirqs` style), what `cfstrace report` and
//! `watch --no-live` print: the host and headroom, the probes, the culprit, the cgroups worst
//! first, lockup precursors, per-CPU IRQs-off time and the warnings.
use std::fmt::Write as _;

use super::columns::{Column, Layout, PER_PERIOD_LEGEND, QUOTA_LEGEND, us_short};
use super::format::{HeadroomPhrase, Tone, alert_line, ellipsize_middle, paint, shorten};
use crate::model::probe::{Probe, ProbeStatus};
use crate::model::records::ParentRecord;
use crate::report::{CpuReport, Report, human_ns, plural_s, precursor_phrase, probe_how};
use crate::verbosity::Verbosity;

const TOP_CGROUPS: usize = 20;
const TOP_CPUS: usize = 8;
/// Paths in the lines under the table are cut here.
const PATH_W: usize = 48;
const PRECURSOR_PATH_W: usize = 76;
/// Probe reasons in the table are cut here; `-v` and `--json` have them whole.
const REASON_W: usize = 110;
/// The attached probes' line wraps here.
const PROBES_W: usize = 80;

/// The whole table; `color` adds ANSI attributes (bold culprit, red low headroom). The probe
/// list is short unless `-v`. On a terminal the cgroup table fits its width; into a file or
/// a pipe it has every column.
pub fn render_text(report: &Report, color: bool) -> String {
    let width = std::io::IsTerminal::is_terminal(&std::io::stdout())
        .then(crossterm::terminal::size)
        .and_then(Result::ok)
        .map(|(w, _)| usize::from(w))
        .filter(|w| *w > 0);
    render_text_fit(report, color, crate::verbosity::get(), width)
}

/// [`render_text`] at a chosen verbosity, every column.
pub fn render_text_as(report: &Report, color: bool, v: Verbosity) -> String {
    render_text_fit(report, color, v, None)
}

/// [`render_text`] at a chosen verbosity, the cgroup table cut to `width` columns if given.
pub fn render_text_fit(report: &Report, color: bool, v: Verbosity, width: Option<usize>) -> String {
    // Every name, reason and warning drawn from here on is escaped for the terminal.
    let report = &super::format::escaped(report);
    let mut o = String::new();
    head(&mut o, report, color);
    probes(&mut o, report, v.detail());
    match &report.culprit {
        Some(c) => {
            let line = format!("CULPRIT: {}", c.headline);
            let _ = writeln!(o, "{}", paint(&line, Tone::Bold, color));
            // The whole reason, wrapped: the table is read in an 80-column terminal too.
            let wrap = textwrap::Options::new(80)
                .initial_indent("  why: ")
                .subsequent_indent("       ");
            for l in wrap_keeping_units(&c.reason, wrap) {
                let _ = writeln!(o, "{l}");
            }
        }
        None => {
            let _ = writeln!(
                o,
                "no CFS period-timer callback seen: no cgroup with a cpu quota was busy"
            );
        }
    }
    cgroup_table(
        &mut o,
        report,
        color,
        width.map_or_else(Layout::all, |w| Layout::fit(w, report)),
    );
    precursors(&mut o, report);
    forecast(&mut o, report);
    cpu_sections(&mut o, report);
    if !report.warnings.is_empty() {
        o.push_str("\nwarnings:\n");
        for w in &report.warnings {
            let _ = writeln!(o, "  ! {w}");
        }
    }
    o
}

/// `text` wrapped, a number never parted from its unit (`312 us`, `10 s`), a path never at its
/// hyphens.
fn wrap_keeping_units(text: &str, options: textwrap::Options<'_>) -> Vec<String> {
    // textwrap breaks at ASCII spaces only: a no-break space holds the pair together.
    const NBSP: char = '\u{a0}';
    let mut held = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut prev_digit = false;
    while let Some(c) = chars.next() {
        let unit_follows = chars.peek().is_some_and(|n| n.is_ascii_alphabetic());
        held.push(if c == ' ' && prev_digit && unit_follows {
            NBSP
        } else {
            c
        });
        prev_digit = c.is_ascii_digit();
    }
    // Paths and names are never split at their hyphens.
    let options = options.word_splitter(textwrap::WordSplitter::NoHyphenation);
    textwrap::wrap(&held, options)
        .into_iter()
        .map(|l| l.replace(NBSP, " "))
        .collect()
}

/// Host, duration, watchdog and node headroom, and the alert when it is low.
fn head(o: &mut String, report: &Report, color: bool) {
    let wd = &report.watchdog;
    let _ = writeln!(
        o,
        "cfstrace {}  {}  kernel {}  {} CPUs  backend {} (requested {})",
        report.tool_version,
        report.hostname,
        report.kernel,
        report.ncpus,
        report.backend,
        report.backend_requested
    );
    let e = &report.events;
    // Callbacks whose events were lost but the kernel summed are counted too, and said apart.
    let unsent = match e.periods_unsent {
        0 => String::new(),
        n => format!(" (+{n} from the kernel's sums)"),
    };
    let _ = writeln!(
        o,
        "duration {:.2} s  period-timer callbacks {}{unsent}  lost {}",
        report.duration_s, e.periods, e.lost
    );
    if e.partial {
        let line = format!(
            "PARTIAL: {} event(s) lost (ring buffer full): figures counted from events are a \
             lower bound (see the warnings)",
            e.lost
        );
        let _ = writeln!(o, "{}", paint(&line, Tone::Yellow, color));
    }
    let hr = HeadroomPhrase::of(report, true);
    let head = format!(
        "watchdog {}  headroom ",
        if wd.enabled { "enabled" } else { "DISABLED" }
    );
    let figure = paint(&hr.figure, Tone::Red, color && hr.low);
    // Past 80 columns, what the worst IRQs-off time was goes on lines of its own.
    match hr.rest.split_once(" (") {
        Some((of, why)) if head.len() + hr.figure.len() + hr.rest.len() > 80 => {
            let _ = writeln!(o, "{head}{figure}{of}");
            let why = format!("({why}");
            let indent = textwrap::Options::new(80)
                .initial_indent("  ")
                .subsequent_indent("   ");
            for l in wrap_keeping_units(&why, indent) {
                let _ = writeln!(o, "{l}");
            }
        }
        _ => {
            let _ = writeln!(o, "{head}{figure}{}", hr.rest);
        }
    }
    if let Some(a) = report.headroom_alert.as_ref().filter(|a| a.alert) {
        let _ = writeln!(o, "{}", paint(&alert_line(a, wd), Tone::BoldRed, color));
    }
}

/// The probes, in pipeline order (the frame first). Short by default: the attached ones on
/// one line by style (`period_timer tracepoint, runnable raw_tp`), then one line a distinct
/// reason with the probes it applies to; a reason several share (this host's "fentry: EPERM
/// ...") is said once, as a numbered note, and the system's own error text (in brackets) is
/// left out. `full` (`-v`) gives one line a probe, its target and every reason whole.
fn probes(o: &mut String, report: &Report, full: bool) {
    let rows: Vec<(&str, &ProbeStatus, Option<&str>)> = Probe::REPORT_ORDER
        .iter()
        .filter_map(|name| report.probes.get(name).map(|p| (name, p)))
        .map(|(name, p)| {
            let reason = match (p.attached, p.reason.as_deref()) {
                (false, None) => Some("not attached"),
                (_, r) => r,
            };
            (name.as_str(), p, reason)
        })
        .collect();
    if full {
        for (name, p, reason) in &rows {
            let how = probe_how(p).unwrap_or_else(|| "attached".to_string());
            let _ = match (p.attached, reason) {
                (true, None) => writeln!(o, "  {name:<16} {how}"),
                (true, Some(r)) => writeln!(o, "  {name:<16} {how}  ({r})"),
                (false, r) => writeln!(o, "  {name:<16} -  unavailable: {}", r.unwrap_or("")),
            };
        }
        return;
    }
    let notes = Notes::of(rows.iter().filter_map(|r| r.2));
    let attached: Vec<String> = rows
        .iter()
        .filter(|(_, p, _)| p.attached)
        .map(|(name, p, _)| format!("{name} {}", p.how.map_or("attached", |h| h.as_str())))
        .collect();
    if !attached.is_empty() {
        let line = format!("probes: {}", attached.join(", "));
        for l in textwrap::wrap(
            &line,
            textwrap::Options::new(PROBES_W).subsequent_indent("  "),
        ) {
            let _ = writeln!(o, "{l}");
        }
    }
    // One line a distinct (attached, reason): the probes it applies to, then the reason.
    let mut groups: Vec<(bool, String, Vec<&str>)> = Vec::new();
    for (name, p, reason) in &rows {
        let Some(r) = reason else { continue };
        let short = shorten(&notes.shorten(r), REASON_W);
        match groups
            .iter_mut()
            .find(|(a, s, _)| *a == p.attached && *s == short)
        {
            Some((_, _, names)) => names.push(name),
            None => groups.push((p.attached, short, vec![name])),
        }
    }
    for (attached, reason, names) in &groups {
        let names = names.join(", ");
        let _ = if *attached {
            writeln!(o, "  {names}: {reason}")
        } else {
            writeln!(o, "  {names} unavailable: {reason}")
        };
    }
    for (i, note) in notes.list.iter().enumerate() {
        let _ = writeln!(o, "  [{}] {note}", i + 1);
    }
    o.push_str("  (-v: every probe, its target and reasons in full)\n");
}

/// `reasons` said short, as the probe list says them: each shared clause replaced by its
/// note's number, the bracketed system errors dropped; and the notes, numbered from 1.
/// (`doctor` lists its probes this way too.)
pub fn shared_reason_notes(reasons: &[&str]) -> (Vec<String>, Vec<String>) {
    let notes = Notes::of(reasons.iter().copied());
    let said = reasons.iter().map(|r| notes.shorten(r)).collect();
    (said, notes.list)
}

/// The reasons several probes share, numbered in order of first appearance.
#[derive(Default)]
struct Notes {
    list: Vec<String>,
}

/// Below this a repeated clause is cheaper said again than referred to.
const NOTE_MIN: usize = 20;

impl Notes {
    /// Each reason is `; `-separated clauses, each `[context: ]style: why [detail]`. A note is
    /// a clause tail (the whole clause, or what follows one of its `: `) that the most reasons
    /// share, the longest of those: `fentry: the kernel refused ...` rather than what follows
    /// `fell back: ` or `enqueue_task_fair: `.
    fn of<'a>(reasons: impl Iterator<Item = &'a str>) -> Self {
        let reasons: Vec<Vec<String>> = reasons
            .map(|r| clauses(r).map(strip_details).collect())
            .collect();
        let mut shared: Vec<(String, usize)> = Vec::new();
        for clauses in &reasons {
            let mut tails: Vec<&str> = clauses.iter().flat_map(|c| tails(c)).collect();
            tails.sort_unstable();
            tails.dedup();
            for t in tails.into_iter().filter(|t| t.len() >= NOTE_MIN) {
                match shared.iter_mut().find(|(s, _)| s == t) {
                    Some((_, n)) => *n += 1,
                    None => shared.push((t.to_string(), 1)),
                }
            }
        }
        let mut list: Vec<String> = Vec::new();
        for c in reasons.iter().flatten() {
            let best = tails(c)
                .filter_map(|t| shared.iter().find(|(s, _)| s == t))
                .filter(|(_, n)| *n >= 2)
                .max_by_key(|(s, n)| (*n, s.len()));
            if let Some((s, _)) = best
                && !list.contains(s)
            {
                list.push(s.clone());
            }
        }
        Notes { list }
    }

    /// `r` without its bracketed details, each noted clause tail replaced by its style and
    /// number: `fentry [1]`.
    fn shorten(&self, r: &str) -> String {
        clauses(r)
            .map(|c| {
                let c = strip_details(c);
                let noted = tails(&c).find_map(|t| {
                    let i = self.list.iter().position(|n| n == t)?;
                    Some((c.len() - t.len(), i + 1))
                });
                match noted {
                    Some((at, n)) => {
                        let label = self.list[n - 1]
                            .split_once(": ")
                            .map(|(w, _)| w)
                            .filter(|w| !w.contains(' '));
                        match label {
                            Some(w) => format!("{}{w} [{n}]", &c[..at]),
                            None => format!("{}[{n}]", &c[..at]),
                        }
                    }
                    None => c,
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// `s` cut at `sep` where it stands outside brackets and parentheses (`(EPERM: ...)` and
/// `[path: os error]` stay whole); the byte offsets of the cuts.
fn cuts<'a>(s: &'a str, sep: &'a str) -> impl Iterator<Item = usize> + 'a {
    let mut depth = 0i32;
    s.char_indices().filter_map(move |(i, ch)| {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            _ => {}
        }
        (depth == 0 && s[i..].starts_with(sep)).then_some(i)
    })
}

/// A reason's `; `-separated clauses.
fn clauses(r: &str) -> impl Iterator<Item = &str> {
    let mut from = 0;
    let mut ends: Vec<usize> = cuts(r, "; ").collect();
    ends.push(r.len());
    ends.into_iter().map(move |end| {
        let c = &r[from..end];
        from = (end + 2).min(r.len());
        c
    })
}

/// The clause itself, then what follows each of its top-level `: `, longest first.
fn tails(c: &str) -> impl Iterator<Item = &str> {
    std::iter::once(c).chain(cuts(c, ": ").map(move |i| &c[i + 2..]))
}

/// The clause without its ` [...]` details (the system's own error text).
fn strip_details(c: &str) -> String {
    let mut out = String::with_capacity(c.len());
    let mut depth = 0usize;
    for ch in c.chars() {
        match ch {
            '[' => {
                if depth == 0 {
                    out.truncate(out.trim_end().len());
                }
                depth += 1;
            }
            ']' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out.trim_end().to_string()
}

/// The top cgroups, worst first (by IRQOFF), each with its parents' quotas under it, in the
/// columns every terminal view shares ([`Layout`]).
fn cgroup_table(o: &mut String, report: &Report, color: bool, layout: Layout) {
    if report.cgroups.is_empty() {
        return;
    }
    o.push('\n');
    let _ = writeln!(o, "{}", layout.header(report));
    let culprit_id = report.culprit.as_ref().map(|c| c.cgroup.id);
    for c in report.cgroups.iter().take(TOP_CGROUPS) {
        let row = layout.row(c, report);
        let _ = writeln!(
            o,
            "{}",
            paint(&row, Tone::Bold, color && culprit_id == Some(c.id))
        );
        // Nested quotas: the limits above it, each with its own period timer.
        if let Some(parents) = c.parents.as_ref().filter(|p| !p.is_empty()) {
            let _ = writeln!(o, "  {}", parents_phrase(parents));
        }
    }
    if report.cgroups.len() > TOP_CGROUPS {
        let _ = writeln!(
            o,
            "... {} more cgroups (--json for all)",
            report.cgroups.len() - TOP_CGROUPS
        );
    }
    let marked = report
        .cgroups
        .iter()
        .take(TOP_CGROUPS)
        .any(|c| c.binding_quota().is_some_and(|q| q.ancestor));
    if [
        Column::UnthrottledPerPeriod,
        Column::EnqueuedPerPeriod,
        Column::CpusPerPeriod,
    ]
    .into_iter()
    .any(|c| layout.shows(c))
    {
        let _ = writeln!(o, "{PER_PERIOD_LEGEND}");
    }
    if marked && layout.shows(Column::Quota) {
        let _ = writeln!(o, "{QUOTA_LEGEND}");
    }
}

/// The lockup forecast, a wrapped paragraph per fit.
fn forecast(o: &mut String, report: &Report) {
    let Some(f) = &report.forecast else {
        return;
    };
    o.push_str("\nLOCKUP FORECAST (IRQs-off time fitted against the work counted in it):\n");
    for (label, sentence) in super::forecast::forecast_sentences(f) {
        let first = format!("  {label:<10} ");
        let wrap = textwrap::Options::new(80)
            .initial_indent(&first)
            .subsequent_indent("             ");
        for l in wrap_keeping_units(&sentence, wrap) {
            let _ = writeln!(o, "{l}");
        }
    }
}

/// The node's precursor counts, the cgroups that had some, and unmatched kernel messages.
fn precursors(o: &mut String, report: &Report) {
    let Some(np) = report.precursors.as_ref().filter(|np| {
        np.period_changes > 0
            || np.callbacks_over_period > 0
            || np.multi_pass_callbacks.is_some_and(|n| n > 0)
            || np.kernel_messages > 0
    }) else {
        return;
    };
    let _ = writeln!(
        o,
        "\nLOCKUP PRECURSORS: {} period change(s) ({} by the kernel, {} written), {} \
         callback(s) at least their period, {} with several distribute passes, {} kernel \
         \"period too short\" message(s)",
        np.period_changes,
        np.period_changes_by_kernel,
        np.period_changes_by_write,
        np.callbacks_over_period,
        np.multi_pass_callbacks
            .map_or_else(|| "n/a".to_string(), |n| n.to_string()),
        np.kernel_messages
    );
    let with_precursors = report
        .cgroups
        .iter()
        .filter_map(|c| Some((c, c.precursors.as_ref().filter(|p| p.any())?)));
    for (c, p) in with_precursors.take(TOP_CPUS) {
        let _ = writeln!(
            o,
            "  {}: {}",
            ellipsize_middle(&c.name(), PRECURSOR_PATH_W),
            precursor_phrase(p)
        );
    }
    for m in &np.unattributed_messages {
        let _ = writeln!(
            o,
            "  (no cgroup matched) cpu{}: period too short, {} (cfs_period_us = {}, \
             cfs_quota_us = {})",
            m.cpu,
            if m.scaled_up {
                "scaled up"
            } else {
                "cannot scale up"
            },
            m.period_us,
            m.quota_us
        );
    }
}

/// CPUs `keep` selects, by `key` descending, then by number.
fn busiest<K: Ord>(
    report: &Report,
    keep: impl Fn(&CpuReport) -> bool,
    key: impl Fn(&CpuReport) -> K,
) -> Vec<&CpuReport> {
    let mut cpus: Vec<&CpuReport> = report.cpus.iter().filter(|c| keep(c)).collect();
    cpus.sort_by(|a, b| key(b).cmp(&key(a)).then(a.cpu.cmp(&b.cpu)));
    cpus
}

/// `title` and the first CPUs' cells on one line.
fn cpu_line(o: &mut String, title: &str, cpus: &[&CpuReport], cell: impl Fn(&CpuReport) -> String) {
    o.push_str(title);
    for c in cpus.iter().take(TOP_CPUS) {
        o.push_str(&cell(c));
    }
    o.push('\n');
}

/// Per-CPU IRQs-off time: the period timers, the timer interrupts around them, the CSDs.
fn cpu_sections(o: &mut String, report: &Report) {
    let cpus = busiest(report, |c| c.period_timers > 0, |c| c.timer_irq_ns);
    if !cpus.is_empty() {
        let title = format!(
            "\nperiod-timer IRQ time by CPU (top {} of {}):",
            cpus.len().min(TOP_CPUS),
            cpus.len()
        );
        cpu_line(o, &title, &cpus, |c| {
            format!(
                "  cpu{} {} / {}",
                c.cpu,
                human_ns(c.timer_irq_ns),
                c.period_timers
            )
        });
        // Several timers served by one interrupt: one IRQs-off span longer than any callback.
        if let Some(c) = cpus.iter().max_by_key(|c| c.max_chain_ns)
            && c.max_chain_ns > c.max_callback_ns
        {
            let _ = writeln!(
                o,
                "longest back-to-back callback chain: {} on cpu{}",
                human_ns(c.max_chain_ns),
                c.cpu
            );
        }
    }
    let cpus = busiest(report, |c| c.irq_spans > 0, |c| c.max_irq_span_ns);
    if !cpus.is_empty() {
        let title = "\ntimer interrupts that ran period timers, by CPU (worst span, p50, \
                     timers/span, timer share):";
        cpu_line(o, title, &cpus, |c| {
            format!(
                "  cpu{} {} p50 {} {:.1}/span {:.0}%",
                c.cpu,
                human_ns(c.max_irq_span_ns.unwrap_or(0)),
                human_ns(c.irq_span_ns.map_or(0, |s| s.p50)),
                c.period_timers_per_span.map_or(0.0, |s| s.mean),
                c.period_timer_share.unwrap_or(0.0) * 100.0
            )
        });
    }
    let n = report.events.async_csds;
    if n > 0 {
        let cpus = busiest(report, |c| c.async_csds > 0, |c| c.async_ns);
        let mut title = format!(
            "\nasync unthrottle (CSD, IRQs off) by CPU: {n} CSD{}",
            plural_s(n)
        );
        if report.events.async_empty > 0 {
            let _ = write!(title, " ({} with nothing to do)", report.events.async_empty);
        }
        title.push(':');
        cpu_line(o, &title, &cpus, |c| {
            format!(
                "  cpu{} {} / {} (max {})",
                c.cpu,
                human_ns(c.async_ns),
                c.async_csds,
                human_ns(c.max_async_ns)
            )
        });
    }
}

/// The parent chain as one line: `under /a/b <- /a (quota 20ms/100ms) <- /`; a chain cut at
/// MAX_PARENTS shows `<- …` before the root.
pub fn parents_phrase(parents: &[ParentRecord]) -> String {
    let mut s = String::from("under ");
    for p in parents {
        s.push_str(&ellipsize_middle(&p.path, PATH_W));
        match (p.quota_us, p.period_us) {
            (Some(q), Some(per)) => {
                let _ = write!(s, " (quota {}/{})", us_short(q), us_short(per));
            }
            (Some(q), None) => {
                let _ = write!(s, " (quota {})", us_short(q));
            }
            _ => {}
        }
        s.push_str(" <- ");
    }
    let top_level = |p: &ParentRecord| p.path.trim_matches('/').split('/').count() <= 1;
    if parents.last().is_some_and(|p| !top_level(p)) {
        s.push_str("… <- ");
    }
    s.push('/');
    s
}

#[cfg(test)]
mod tests;
