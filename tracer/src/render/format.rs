//! Cells and colours the terminal renderings share (the text table and the live view):
//! widths counted in characters; colours named here as [`Tone`]s, their escape sequences
//! written by crossterm, and only when asked for.
use std::fmt::Write as _;

use crossterm::style::{ContentStyle, Stylize as _};

use crate::model::host::WatchdogFacts;
use crate::report::{
    BASIS_CSD, BASIS_SPAN, CgroupReport, HeadroomAlert, Report, Stats, decimals_against, human_ns,
    top_comms,
};

/// The few looks the terminal views use. Named, not raw styles, so the views and their tests
/// say what a cell means and crossterm alone knows the escape sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Bold,
    Dim,
    Red,
    Yellow,
    BoldRed,
    /// Bold bright white on red: the headroom cell under `--highlight-under`.
    Alert,
}

impl Tone {
    pub fn style(self) -> ContentStyle {
        let s = ContentStyle::new();
        match self {
            Tone::Bold => s.bold(),
            Tone::Dim => s.dim(),
            Tone::Red => s.dark_red(),
            Tone::Yellow => s.dark_yellow(),
            Tone::BoldRed => s.bold().dark_red(),
            Tone::Alert => s.bold().on_dark_red().white(),
        }
    }
}

/// A copy of `report` whose every string went through the one terminal escape
/// ([`crate::model::escape::terminal`]): what the text table and the live view draw from.
pub fn escaped(report: &Report) -> Report {
    use crate::model::escape::{for_terminal, terminal};
    // The report reads back its own JSON (`diff` relies on it; a unit test checks the
    // fixtures). Should a figure ever not (a NaN is JSON's null), the fields that carry names
    // are escaped one by one: those parts hold no float.
    if let Ok(r) = for_terminal(report) {
        return r;
    }
    let mut r = report.clone();
    let text = |s: &mut String| *s = terminal(s).into_owned();
    let cgroup = |c: &mut crate::report::CgroupReport| {
        c.facts = for_terminal(&c.facts).unwrap_or_else(|_| c.facts.clone());
        c.parents = for_terminal(&c.parents).unwrap_or_else(|_| c.parents.clone());
    };
    text(&mut r.hostname);
    text(&mut r.kernel);
    r.warnings.iter_mut().for_each(text);
    r.cgroups.iter_mut().for_each(cgroup);
    if let Some(c) = &mut r.culprit {
        cgroup(&mut c.cgroup);
        text(&mut c.headline);
        text(&mut c.reason);
        if let Some(p) = c.busiest_by_total.as_mut().and_then(|b| b.path.as_mut()) {
            text(p);
        }
    }
    if let Some(g) = &mut r.gate {
        text(&mut g.why);
    }
    r
}

/// Shorten to `width` chars with an ellipsis in the middle (both ends of a cgroup path
/// matter: the slice it sits in and the container id at its tip).
pub fn ellipsize_middle(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width || width < 3 {
        return s.to_string();
    }
    // The tip (container id, unit) identifies the cgroup best: give it two thirds.
    let head = (width - 1) / 3;
    let tail = width - 1 - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

/// Cut to `width` chars with an ellipsis at the end.
pub fn shorten(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut t: String = s.chars().take(width - 1).collect();
    t.push('…');
    t
}

/// Left-align to `width` chars (not bytes: paths may hold the ellipsis).
pub fn pad(s: &str, width: usize) -> String {
    let n = s.chars().count();
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(n)));
    out
}

/// `s` in `tone` (crossterm's escape sequences), only when `color`.
pub fn paint(s: &str, tone: Tone, color: bool) -> String {
    if color {
        tone.style().apply(s).to_string()
    } else {
        s.to_string()
    }
}

/// One terminal line as pieces of text, each plain or in one [`Tone`]: cut to the terminal's
/// width by visible characters first, styled by crossterm last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Line {
    spans: Vec<(String, Option<Tone>)>,
}

impl Line {
    pub fn new() -> Line {
        Line::default()
    }

    /// Plain text.
    pub fn push(&mut self, s: &str) -> &mut Line {
        self.push_in(s, None)
    }

    /// Text in `tone` when `on` (plain otherwise).
    pub fn push_if(&mut self, s: &str, tone: Tone, on: bool) -> &mut Line {
        self.push_in(s, on.then_some(tone))
    }

    pub fn push_in(&mut self, s: &str, tone: Option<Tone>) -> &mut Line {
        // One terminal line: no piece of it may move the cursor or carry an escape.
        let s = &*crate::model::escape::terminal(s);
        match self.spans.last_mut() {
            Some((t, last)) if *last == tone => t.push_str(s),
            _ => self.spans.push((s.to_string(), tone)),
        }
        self
    }

    /// The line's pieces and their tones.
    pub fn spans(&self) -> impl Iterator<Item = (&str, Option<Tone>)> {
        self.spans.iter().map(|(s, t)| (s.as_str(), *t))
    }

    /// The text without styles.
    pub fn text(&self) -> String {
        self.spans.iter().map(|(s, _)| s.as_str()).collect()
    }

    /// Cut to `width` visible characters.
    pub fn fit(&mut self, width: usize) {
        let mut left = width;
        self.spans.retain_mut(|(s, _)| {
            let n = s.chars().count();
            if n > left {
                *s = s.chars().take(left).collect();
            }
            left -= n.min(left);
            !s.is_empty()
        });
    }

    /// The line for a terminal: styled pieces in crossterm's escape sequences when `color`,
    /// the bare text otherwise.
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        for (s, tone) in &self.spans {
            match tone {
                Some(t) if color => {
                    let _ = write!(out, "{}", t.style().apply(s));
                }
                _ => out.push_str(s),
            }
        }
        out
    }
}

impl From<&str> for Line {
    fn from(s: &str) -> Line {
        let mut l = Line::new();
        l.push(s);
        l
    }
}

/// `p50/max` of a per-period count, `-` when not measured.
pub fn p50_max(s: Option<&Stats>) -> String {
    s.map_or_else(|| "-".to_string(), |s| format!("{}/{}", s.p50, s.max))
}

/// The busiest distinct comms, comma-separated, or `-`.
pub fn comms(c: &CgroupReport, n: usize) -> String {
    let comms = top_comms(&c.processes, n);
    if comms.is_empty() {
        "-".to_string()
    } else {
        comms.join(",")
    }
}

/// `10 s`, or `unknown`.
pub fn thresh(wd: &WatchdogFacts) -> String {
    wd.thresh_s
        .map_or_else(|| "unknown".to_string(), |t| format!("{t} s"))
}

/// The node's headroom as every terminal view says it:
/// `headroom 99.9994% of watchdog_thresh 10 s (worst IRQs-off 63.5 us on cpu1)`. The
/// percentage is what matters next to a 10 s threshold, where seconds would all read 9.9999;
/// it is never rounded across 100 % or the highlight threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadroomPhrase {
    /// `99.9994%`, `100%` (nothing held IRQs off), `unknown`.
    pub figure: String,
    /// What follows the figure: the threshold and the worst IRQs-off span.
    pub rest: String,
    /// Below the highlight threshold (`--highlight-under`).
    pub low: bool,
}

impl HeadroomPhrase {
    /// `detail` adds what the worst span was (a timer interrupt and its period timers, a
    /// callback, a CSD): the report table has the room, the live view not.
    pub fn of(report: &Report, detail: bool) -> HeadroomPhrase {
        let thresh_s = report.watchdog.thresh_s.filter(|t| *t > 0);
        let worst = worst_irqs_off(report, detail);
        let low = report.below_highlight(report.headroom_ns);
        match (thresh_s, report.headroom_ns) {
            (Some(t), Some(h)) => HeadroomPhrase {
                figure: headroom_pct(report, Some(h)).unwrap_or_else(|| "-".to_string()),
                rest: format!(" of watchdog_thresh {t} s ({worst})"),
                low,
            },
            (Some(t), None) => HeadroomPhrase {
                figure: "100%".to_string(),
                rest: format!(" of watchdog_thresh {t} s (nothing held IRQs off)"),
                low,
            },
            (None, _) => HeadroomPhrase {
                figure: "unknown".to_string(),
                rest: format!(" (watchdog_thresh unreadable or 0; {worst})"),
                low,
            },
        }
    }

    pub fn text(&self) -> String {
        format!("headroom {}{}", self.figure, self.rest)
    }
}

/// A headroom as a percentage of watchdog_thresh: 4 decimals, trailing zeros dropped
/// (`99.9994%`, `99.95%`), more decimals where 4 would round it across 100 % or the
/// highlight threshold. None when watchdog_thresh or the headroom is unknown.
pub fn headroom_pct(report: &Report, h: Option<i64>) -> Option<String> {
    let pct = crate::analysis::headroom::headroom_pct(report.watchdog.thresh_s, h).ok()?;
    let s = report.headroom_pct_text(pct, 4);
    // Only zeros after the last significant decimal go: the value printed stays the same.
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    Some(format!("{s}%"))
}

/// `worst IRQs-off 63.5 us on cpu1`, with `detail` what the span was.
fn worst_irqs_off(report: &Report, detail: bool) -> String {
    let Some(w) = &report.worst_irqs_off else {
        // A report from before `worst_irqs_off`: its worst callback.
        let max = report.cgroups.iter().map(|c| c.callback_ns.max).max();
        return max.map_or_else(
            || "nothing held IRQs off".to_string(),
            |ns| format!("worst IRQs-off {}", human_ns(ns)),
        );
    };
    let mut s = format!("worst IRQs-off {} on cpu{}", human_ns(w.duration_ns), w.cpu);
    if detail {
        let what = if w.basis == BASIS_SPAN {
            let timers = w.period_timers.unwrap_or(0);
            format!(
                ": a timer interrupt whose {timers} period timer{} took {}",
                if timers == 1 { "" } else { "s" },
                human_ns(w.period_timers_ns.unwrap_or(0))
            )
        } else if w.basis == BASIS_CSD {
            ": an async-unthrottle CSD".to_string()
        } else {
            ": a period-timer callback".to_string()
        };
        s.push_str(&what);
    }
    s
}

/// The line both terminal views print when the node's headroom is below the highlight: 4
/// decimals, more where 4 would read as the threshold itself.
pub fn alert_line(a: &HeadroomAlert, wd: &WatchdogFacts) -> String {
    format!(
        "!! HEADROOM ALERT: node headroom {}% of watchdog_thresh ({}) is below {}% \
         (--highlight-under)",
        decimals_against(a.headroom_pct.unwrap_or(0.0), 4, &[a.under_pct, 100.0]),
        thresh(wd),
        a.under_pct
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ellipsis_keeps_both_ends() {
        let p = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abcdef.scope";
        let e = ellipsize_middle(p, 48);
        assert_eq!(e.chars().count(), 48);
        assert!(
            e.starts_with("/kubepods.slice") && e.ends_with("/cri-containerd-abcdef.scope"),
            "{e}"
        );
        assert_eq!(ellipsize_middle("/a", 48), "/a");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(pad("a…", 4), "a…  ");
    }

    #[test]
    fn lines_fit_by_visible_chars() {
        let fit = |l: &Line, w: usize| {
            let mut l = l.clone();
            l.fit(w);
            l
        };
        let mut l = Line::new();
        l.push_if("abc", Tone::Bold, true).push("def");
        assert_eq!(fit(&l, 2).render(false), "ab");
        assert_eq!(fit(&l, 2).render(true), paint("ab", Tone::Bold, true));
        assert_eq!(fit(&l, 4).text(), "abcd");
        assert_eq!(
            fit(&l, 9).render(true),
            paint("abc", Tone::Bold, true) + "def"
        );
        assert_eq!(fit(&Line::from("█▁·"), 2).text(), "█▁");
        // Neighbouring pieces in one tone merge; an unset tone is plain.
        let mut m = Line::new();
        m.push("a")
            .push_if("b", Tone::Red, false)
            .push_if("c", Tone::Red, true);
        assert_eq!(m.spans().count(), 2);
        assert_eq!(m.render(true), format!("ab{}", paint("c", Tone::Red, true)));
    }

    #[test]
    fn paint_uses_crossterm_and_only_when_asked() {
        assert_eq!(paint("x", Tone::Bold, false), "x");
        let bold = paint("x", Tone::Bold, true);
        assert!(
            bold.starts_with('\x1b') && bold.contains('x') && bold.len() > 1,
            "{bold:?}"
        );
    }
}
