//! `cfstrace diff` as text: the two sides, then the node and each matched cgroup, a verdict
//! line and a table of figures each (before, after, change, %), then the cgroups only one
//! side has and the noise rule. Fits 80 columns: paths are cut in the middle, sentences
//! wrapped.
use std::fmt::Write as _;

use super::format::{Tone, ellipsize_middle, pad, paint};
use crate::diff::{
    CgroupRef, Diff, FigureDiff, Side, Trend, Verdict, VerdictKind, change_text, signed_pct,
    value_text,
};
use crate::model::escape::terminal;
use crate::report::workload_label;

const WIDTH: usize = 80;
const LABEL_W: usize = 16;
const VALUE_W: usize = 11;
const PCT_W: usize = 7;

pub fn render_diff(d: &Diff, color: bool) -> String {
    let mut o = String::new();
    side(&mut o, "before", &d.before);
    side(&mut o, "after", &d.after);
    let n = &d.node;
    let same: Vec<String> = [
        (n.same_host, "host"),
        (n.same_kernel, "kernel"),
        (n.same_ncpus, "CPUs"),
        (n.same_watchdog, "watchdog"),
    ]
    .iter()
    .map(|(s, what)| format!("{} {what}", if *s { "same" } else { "different" }))
    .collect();
    let _ = writeln!(o, "node: {}", same.join(", "));
    o.push('\n');
    verdict_line(&mut o, "NODE", &n.verdict, color);
    table(&mut o, &n.figures);
    for c in &d.cgroups {
        o.push('\n');
        // The name on a line of its own: whole up to 73 characters.
        let _ = writeln!(
            o,
            "CGROUP {}",
            ellipsize_middle(&terminal(&c.before.name), WIDTH - 7)
        );
        verdict_line(&mut o, "", &c.verdict, color);
        let how = if c.before.name == c.after.name {
            format!("  matched by {}", c.matched_by.label())
        } else {
            format!(
                "  matched by {}: after is {}",
                c.matched_by.label(),
                ellipsize_middle(&terminal(&c.after.name), WIDTH - 40)
            )
        };
        let _ = writeln!(o, "{how}");
        table(&mut o, &c.figures);
    }
    only(&mut o, "only before", &d.only_before);
    only(&mut o, "only after", &d.only_after);
    o.push('\n');
    wrap(
        &mut o,
        &format!(
            "noise rule: a change under {}% of the before value, within a quantile's \
             resolution (1/128 of callback times, 1/16 of per-period counts), or under 1 us \
             (times) or 1 (counts) is unchanged; the verdict is the first of worst span, \
             precursors, callback max, p99, p50 that changed; (info): shown, not judged",
            d.noise_pct
        ),
        "",
        "  ",
    );
    o
}

fn side(o: &mut String, which: &str, s: &Side) {
    let thresh = s
        .watchdog_thresh_s
        .map_or_else(|| "unknown".to_string(), |t| format!("{t} s"));
    wrap(
        o,
        &format!(
            "{which:<7}{}: {}, kernel {}, {} CPUs, watchdog_thresh {thresh}, backend {}, \
             {:.1} s, {} callbacks, {} lost",
            s.file, s.hostname, s.kernel, s.ncpus, s.backend, s.duration_s, s.periods, s.lost
        ),
        "",
        "       ",
    );
}

fn verdict_line(o: &mut String, who: &str, v: &Verdict, color: bool) {
    let word = v.verdict.as_str();
    let tone = match v.verdict {
        VerdictKind::Worse => Some(Tone::BoldRed),
        VerdictKind::Better => Some(Tone::Bold),
        _ => None,
    };
    let mut lines = Vec::new();
    // A cgroup's verdict goes under its name, indented; the node's follows `NODE:`.
    let (line, first) = if who.is_empty() {
        (format!("{word}: {}", v.why), "  ")
    } else {
        (format!("{who}: {word}: {}", v.why), "")
    };
    wrap(&mut lines_sink(&mut lines), &line, first, "    ");
    for (i, l) in lines.iter().enumerate() {
        // Only the verdict word is painted, on the first line.
        let l = match (i, tone) {
            (0, Some(t)) if color => l.replacen(word, &paint(word, t, true), 1),
            _ => l.clone(),
        };
        let _ = writeln!(o, "{l}");
    }
}

/// A String that collects lines, for [`wrap`] to write into and the caller to post-process.
fn lines_sink(lines: &mut Vec<String>) -> LineSink<'_> {
    LineSink(lines)
}

struct LineSink<'a>(&'a mut Vec<String>);

impl std::fmt::Write for LineSink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0
            .extend(s.lines().filter(|l| !l.is_empty()).map(str::to_string));
        Ok(())
    }
}

fn table(o: &mut String, figures: &[FigureDiff]) {
    let _ = writeln!(
        o,
        "  {}{:>VALUE_W$} {:>VALUE_W$} {:>VALUE_W$} {:>PCT_W$}  trend",
        pad("figure", LABEL_W),
        "before",
        "after",
        "change",
        "%",
    );
    // Reason -> the figures and sides it stands for: a reason is said once.
    let mut missing: Vec<(String, Vec<String>)> = Vec::new();
    for f in figures {
        let pct = f.change_pct.map_or_else(|| "-".to_string(), signed_pct);
        let trend = match f.trend {
            Some(Trend::Better) => "better",
            Some(Trend::Worse) => "worse",
            Some(Trend::Unchanged) => "same",
            None => "-",
        };
        let judged = if f.judged { "" } else { " (info)" };
        let _ = writeln!(
            o,
            "  {}{:>VALUE_W$} {:>VALUE_W$} {:>VALUE_W$} {:>PCT_W$}  {trend}{judged}",
            pad(f.figure.label(), LABEL_W),
            value_text(f.unit, f.before),
            value_text(f.unit, f.after),
            change_text(f.unit, f.change),
            pct,
        );
        for (which, why) in [("before", &f.before_missing), ("after", &f.after_missing)] {
            if let Some(why) = why {
                let what = format!("{} {which}", f.figure.label());
                match missing.iter_mut().find(|(r, _)| r == why) {
                    Some((_, whats)) => whats.push(what),
                    None => missing.push((why.clone(), vec![what])),
                }
            }
        }
    }
    for (why, whats) in missing {
        wrap(o, &format!("{}: {why}", whats.join(", ")), "  - ", "    ");
    }
}

fn only(o: &mut String, what: &str, cgroups: &[CgroupRef]) {
    if cgroups.is_empty() {
        return;
    }
    let _ = writeln!(o, "\n{what} ({}):", cgroups.len());
    for c in cgroups {
        let label = workload_label(&c.workload).map_or_else(String::new, |l| format!(" ({l})"));
        let name = ellipsize_middle(&c.name, WIDTH - 4 - label.chars().count().min(40));
        wrap(o, &format!("{name}{label}"), "  ", "    ");
    }
}

/// `text` wrapped to 80 columns, never split at a path's hyphens.
fn wrap(o: &mut impl std::fmt::Write, text: &str, first: &str, rest: &str) {
    let options = textwrap::Options::new(WIDTH)
        .initial_indent(first)
        .subsequent_indent(rest)
        .word_splitter(textwrap::WordSplitter::NoHyphenation);
    // Names, files and reasons reach the terminal through here: escaped, colour added after.
    for l in textwrap::wrap(&terminal(text), options) {
        let _ = writeln!(o, "{l}");
    }
}
