//! The live terminal view of `cfstrace watch`: a full-screen frame redrawn every interval on
//! the alternate screen, and the guard that gives the terminal back. crossterm does the
//! terminal: its size, the alternate screen, the cursor, the colours.
//!
//! The guard follows Netflix/bpftop's `TerminalManager`: entering the view installs (once) a
//! panic hook that restores the terminal before the panic message is printed, and the guard's
//! `Drop` restores it on every other way out (Ctrl-C and SIGTERM end the loop through the stop
//! flag, errors return through `?`). Restoring happens exactly once, whichever comes first.
//! Raw mode is never entered: the view reads no keys, so Ctrl-C stays a signal and the
//! terminal's own line settings need no restoring.
//!
//! Rendering is pure (a [`Frame`] in, lines out) so it is unit-tested without a terminal.
use std::collections::HashMap;
use std::io::{self, Write as _};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossterm::cursor::{Hide, MoveTo, Show};
use crossterm::style::{Print, ResetColor};
use crossterm::terminal::{Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{execute, queue};
use hdrhistogram::Histogram;

use super::columns::{Column, Layout, QUOTA_LEGEND};
use super::format::{HeadroomPhrase, Line, Tone, alert_line, ellipsize_middle};
use crate::report::{CpuReport, Report, human_ns};

/// Block characters, by level (0: nothing).
pub const BLOCKS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// A CPU (or histogram bin) with nothing in it.
pub const EMPTY: char = '·';

/// Callback-time histogram bins per cgroup row: bin 0 is under 2 us, bin i (1..=14) is
/// [2^i, 2^(i+1)) us, bin 15 is 32.768 ms and more.
pub const HIST_BINS: usize = 16;

/// Microseconds from which everything shares the last bin.
const LAST_BIN_US: u64 = 1 << (HIST_BINS - 1);

/// One cgroup's callback times in an interval, for its row's strip: an hdrhistogram of whole
/// microseconds with no significant digit, whose buckets are then exactly the log2 bins
/// ([0, 2), [2, 4), [4, 8) ...), read back with its log iterator. Values from
/// [`LAST_BIN_US`] up are recorded there, which bounds it to a few dozen counters.
#[derive(Clone, Debug)]
pub struct CallbackBins {
    us: Histogram<u32>,
}

impl Default for CallbackBins {
    fn default() -> CallbackBins {
        CallbackBins {
            us: Histogram::new_with_bounds(1, LAST_BIN_US, 0).expect("constant bounds are valid"),
        }
    }
}

impl CallbackBins {
    pub fn record(&mut self, ns: u64) {
        // In bounds by construction; u32 counters saturate, never wrap.
        self.us.saturating_record((ns / 1_000).min(LAST_BIN_US));
    }

    /// Callbacks per bin.
    pub fn bins(&self) -> [u64; HIST_BINS] {
        let mut bins = [0; HIST_BINS];
        if self.us.is_empty() {
            return bins;
        }
        for (i, step) in self.us.iter_log(2, 2.0).enumerate() {
            bins[i.min(HIST_BINS - 1)] += step.count_since_last_iteration();
        }
        bins
    }
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

/// Give the terminal back if the view is on (once): attributes reset, cursor shown,
/// alternate screen left. From the panic hook too: stdout's lock is reentrant, so a panic
/// while drawing still gets through.
fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = execute!(io::stdout(), ResetColor, Show, LeaveAlternateScreen);
    }
}

/// The terminal in live-view mode; dropping it gives the terminal back.
pub struct TerminalGuard {
    _private: (),
}

impl TerminalGuard {
    pub fn enter() -> io::Result<TerminalGuard> {
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        ACTIVE.store(true, Ordering::SeqCst);
        let guard = TerminalGuard { _private: () };
        execute!(
            io::stdout(),
            EnterAlternateScreen,
            Hide,
            MoveTo(0, 0),
            Clear(ClearType::All)
        )?;
        Ok(guard)
    }

    /// Draw a frame over the previous one: each line from its row's start and cleared to its
    /// end, the rest of the screen cleared (no flicker from a full clear).
    pub fn draw(&self, lines: &[String]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        for (row, l) in lines.iter().enumerate() {
            let row = u16::try_from(row).unwrap_or(u16::MAX);
            queue!(
                out,
                MoveTo(0, row),
                Print(l),
                Clear(ClearType::UntilNewLine)
            )?;
        }
        queue!(out, Clear(ClearType::FromCursorDown))?;
        out.flush()
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = io::stdout().flush();
        restore();
    }
}

/// Columns and rows of the terminal (120 x 40 when it cannot be asked).
pub fn terminal_size() -> (usize, usize) {
    match crossterm::terminal::size() {
        Ok((w, h)) if w > 0 && h > 0 => (usize::from(w), usize::from(h)),
        _ => (120, 40),
    }
}

/// The bins as block characters scaled to the fullest bin; an empty bin is `·`, a non-empty
/// one at least `▁`.
pub fn histogram_strip(bins: &[u64]) -> String {
    let max = bins.iter().copied().max().unwrap_or(0);
    bins.iter()
        .map(|&c| {
            if c == 0 || max == 0 {
                EMPTY
            } else {
                let level = (c * 8).div_ceil(max).clamp(1, 8);
                BLOCKS[level as usize]
            }
        })
        .collect()
}

/// Level of an IRQs-off span on a fixed log scale (x4 per step from 4 us): 0 none, 1 < 4 us,
/// 2 < 16 us, 3 < 64 us, 4 < 256 us, 5 < 1 ms, 6 < 4 ms, 7 < 16 ms, 8 >= 16 ms.
pub fn span_level(ns: u64) -> usize {
    if ns == 0 {
        return 0;
    }
    let mut level = 1;
    let mut bound = 4_000u64;
    while ns >= bound && level < 8 {
        level += 1;
        bound *= 4;
    }
    level
}

/// Short enough to follow its title on an 80-column line.
pub const SPAN_LEGEND: &str = "·=0 ▁<4us ▂<16 ▃<64 ▄<256us ▅<1ms ▆<4 ▇<16 █>=16ms";

/// A CPU's worst IRQs-off span: the longest timer interrupt, chain of callbacks, callback or
/// async-unthrottle CSD.
pub fn cpu_worst_ns(c: &CpuReport) -> u64 {
    c.max_irq_span_ns
        .unwrap_or(0)
        .max(c.max_chain_ns)
        .max(c.max_callback_ns)
        .max(c.max_async_ns)
}

/// Worst IRQs-off span per CPU, CPU `i` at index `i`.
fn worst_per_cpu(cpus: &[CpuReport], ncpus: u32) -> Vec<u64> {
    let n = (ncpus as usize).max(cpus.iter().map(|c| c.cpu as usize + 1).max().unwrap_or(0));
    let mut worst = vec![0u64; n];
    for c in cpus {
        worst[c.cpu as usize] = cpu_worst_ns(c);
    }
    worst
}

/// The per-CPU strip: one mark a CPU, eight CPUs a group, as many groups a line as `width`
/// allows, each line labelled with the CPUs it holds (`cpu0-15  ▁▁▂····· ········`) so two
/// marks never read as two values of one CPU; long spans in yellow and red, idle CPUs dim.
pub fn cpu_strip(cpus: &[CpuReport], ncpus: u32, width: usize) -> Vec<Line> {
    let worst = worst_per_cpu(cpus, ncpus);
    let n = worst.len();
    let label = |start: usize, end: usize| format!("cpu{start}-{}", end.saturating_sub(1));
    // Every label as wide as the widest could be.
    let label_w = label(n, n).len() + 1;
    let groups_per_line = (width.saturating_sub(label_w) / 9).max(1);
    let per_line = groups_per_line * 8;
    let mut lines = Vec::new();
    for start in (0..n).step_by(per_line) {
        let end = (start + per_line).min(n);
        let mut l = Line::from(format!("{:<label_w$}", label(start, end)).as_str());
        for (i, &ns) in worst[start..end].iter().enumerate() {
            if i > 0 && i % 8 == 0 {
                l.push(" ");
            }
            let level = span_level(ns);
            let ch = if level == 0 { EMPTY } else { BLOCKS[level] };
            let tone = match level {
                7.. => Some(Tone::Red),
                5..=6 => Some(Tone::Yellow),
                0 => Some(Tone::Dim),
                _ => None,
            };
            l.push_in(ch.encode_utf8(&mut [0; 4]), tone);
        }
        lines.push(l);
    }
    lines
}

/// What one interval's frame shows.
pub struct Frame<'a> {
    /// The interval's report, already cut to the cgroups shown (`--cgroup`, `--top`).
    pub report: &'a Report,
    /// Cgroups in the interval before the cut.
    pub total_cgroups: usize,
    /// Callback times of each shown cgroup this interval.
    pub hist: &'a HashMap<u64, CallbackBins>,
    pub elapsed: Duration,
    pub interval: Duration,
    /// The run ended inside this interval (Ctrl-C, `--duration`): how much of it the figures
    /// cover. Shown as a note, so the frame left on screen does not pass for a whole interval.
    pub partial: Option<Duration>,
    /// `--cgroup`, as given.
    pub filter: Option<&'a str>,
}

/// The frame's lines, each at most `width` visible characters, at most `height` of them,
/// coloured (crossterm's escape sequences) when `color`.
pub fn render_frame(f: &Frame<'_>, width: usize, height: usize, color: bool) -> Vec<String> {
    frame_lines(f, width, height)
        .iter()
        .map(|l| l.render(color))
        .collect()
}

/// The frame's lines before styling, cut to `width` x `height`.
pub fn frame_lines(f: &Frame<'_>, width: usize, height: usize) -> Vec<Line> {
    // Every name the frame shows (paths, workloads, comms, the culprit's headline, the filter)
    // escaped for the terminal: a cgroup named `ESC [ 2 J` is shown, never obeyed.
    let report = super::format::escaped(f.report);
    let filter = f.filter.map(crate::model::escape::terminal);
    let f = &Frame {
        report: &report,
        filter: filter.as_deref(),
        ..*f
    };
    let mut lines = status(f, width);
    lines.push(Line::new());
    lines.extend(cpu_lines(f.report, width));
    lines.push(Line::new());
    lines.extend(table(f, width));
    if height > 0 && lines.len() > height {
        lines.truncate(height);
    }
    for l in &mut lines {
        l.fit(width);
    }
    lines
}

/// The host, the headroom now, the interval's events and the culprit.
fn status(f: &Frame<'_>, width: usize) -> Vec<Line> {
    let r = f.report;
    let wd = &r.watchdog;
    let alert = r.headroom_alert.as_ref().filter(|a| a.alert);
    let mut lines = Vec::new();
    let mut title = Line::new();
    // watchdog_thresh is in the headroom line below.
    title
        .push_in("cfstrace watch", Some(Tone::Bold))
        .push(&format!(
            "  {}  kernel {}  {} CPUs  backend {}{}",
            r.hostname,
            r.kernel,
            r.ncpus,
            r.backend,
            if wd.enabled {
                ""
            } else {
                "  watchdog DISABLED"
            },
        ));
    lines.push(title);
    let hr = HeadroomPhrase::of(r, false);
    let mut headroom = Line::new();
    headroom
        .push("headroom ")
        .push_if(&hr.figure, Tone::Alert, alert.is_some())
        .push(&hr.rest);
    lines.push(headroom);
    if let Some(a) = alert {
        let mut l = Line::new();
        l.push_in(&alert_line(a, wd), Some(Tone::BoldRed));
        lines.push(l);
    }
    let e = &r.events;
    let mut events = Line::new();
    events
        .push(&format!(
            "t={:.0}s, last {}{}: {} callbacks, {} timer interrupts, {} async CSDs, ",
            f.elapsed.as_secs_f64(),
            humantime::format_duration(f.interval),
            f.partial.map_or_else(String::new, |length| format!(
                " (partial interval: {:.1} s)",
                length.as_secs_f64()
            )),
            e.periods,
            e.irq_spans,
            e.async_csds,
        ))
        .push_if(&format!("lost {}", e.lost), Tone::Red, e.lost > 0)
        .push(&format!(
            "; cgroups: {} of {}{}",
            r.cgroups.len(),
            f.total_cgroups,
            f.filter
                .map_or_else(String::new, |re| format!(" matching /{re}/")),
        ));
    lines.push(events);
    if let Some(c) = &r.culprit {
        let mut l = Line::new();
        l.push_in(&culprit_line(&c.headline, width), Some(Tone::Bold));
        lines.push(l);
    }
    if let Some(f) = r
        .forecast
        .as_ref()
        .and_then(super::forecast::forecast_headline)
    {
        let mut l = Line::new();
        l.push(&f);
        lines.push(l);
    }
    lines
}

/// `CULPRIT: <headline>` in `width` columns: the name is cut in its middle so that what the
/// culprit did (after the name) stays on screen.
fn culprit_line(headline: &str, width: usize) -> String {
    const TAG: &str = "CULPRIT: ";
    let full = format!("{TAG}{headline}");
    if full.chars().count() <= width {
        return full;
    }
    match headline.split_once(": ") {
        // Room for a few characters of the name at least; else the end is cut as any line's.
        Some((who, did)) => match width.checked_sub(TAG.len() + 2 + did.chars().count()) {
            Some(room) if room >= 4 => format!("{TAG}{}: {did}", ellipsize_middle(who, room)),
            _ => full,
        },
        None => full,
    }
}

/// Each CPU's worst IRQs-off span: as figures on one line when they fit
/// (`worst IRQs-off per CPU: cpu0 41.0 us  cpu1 63.5 us`), else the legend and the strip.
fn cpu_lines(r: &Report, width: usize) -> Vec<Line> {
    let worst = worst_per_cpu(&r.cpus, r.ncpus);
    let figures: Vec<String> = worst
        .iter()
        .enumerate()
        .map(|(cpu, &ns)| {
            let v = if ns == 0 {
                "-".to_string()
            } else {
                human_ns(ns)
            };
            format!("cpu{cpu} {v}")
        })
        .collect();
    let one_line = format!("worst IRQs-off per CPU: {}", figures.join("  "));
    if one_line.chars().count() <= width {
        return vec![Line::from(one_line.as_str())];
    }
    let mut lines = vec![Line::from(
        format!("worst IRQs-off per CPU: {SPAN_LEGEND}").as_str(),
    )];
    lines.extend(cpu_strip(&r.cpus, r.ncpus, width));
    lines
}

/// The histogram's header, as wide as its strip.
const HIST_HEADER: &str = "CB <2us log2 >32ms";
/// Narrower than this, the columns get the room and the histogram is left out.
const HIST_MIN_WIDTH: usize = 120;

/// The cgroups' table in the columns every terminal view shares ([`Layout`]), as many as the
/// width holds, each row ending in its callback-time histogram on a wide terminal.
fn table(f: &Frame<'_>, width: usize) -> Vec<Line> {
    let r = f.report;
    let hist_w = HIST_HEADER.chars().count().max(HIST_BINS);
    let with_hist = width >= HIST_MIN_WIDTH;
    let layout = Layout::fit(if with_hist { width - 2 - hist_w } else { width }, r);
    let mut header = layout.header(r);
    if with_hist {
        header = format!("{header}  {HIST_HEADER}");
    }
    let mut head = Line::new();
    head.push_in(&header, Some(Tone::Bold));
    let mut lines = vec![head];
    if r.cgroups.is_empty() {
        lines.push(Line::from(
            "no CFS period-timer callback this interval: no cgroup with a cpu quota was throttled",
        ));
    }
    let culprit = r.culprit.as_ref().map(|c| c.cgroup.id);
    for c in &r.cgroups {
        let mut l = Line::new();
        l.push_if(&layout.row(c, r), Tone::Bold, culprit == Some(c.id));
        if with_hist {
            let bins = f
                .hist
                .get(&c.id)
                .map(CallbackBins::bins)
                .unwrap_or_default();
            l.push("  ").push(&histogram_strip(&bins));
        }
        lines.push(l);
    }
    if layout.shows(Column::Quota)
        && r.cgroups
            .iter()
            .any(|c| c.binding_quota().is_some_and(|q| q.ancestor))
    {
        lines.push(Line::from(QUOTA_LEGEND));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Aggregator;
    use crate::model::records::test_header as header;
    use crate::model::records::{CaptureLine, CgroupFacts, CgroupRecord, PeriodRecord};
    use crate::render::format::paint;
    use crate::report::build_report;

    fn report(under_pct: f64, durations: &[u64]) -> Report {
        let mut agg = Aggregator::new();
        agg.feed(&CaptureLine::Cgroup(Box::new(CgroupRecord {
            facts: CgroupFacts {
                id: 42,
                path: Some("/yarn/container_e06_1512098667219_988894_01_000020".into()),
                workload: crate::model::workload::classify(
                    "/yarn/container_e06_1512098667219_988894_01_000020",
                ),
                processes: Vec::new(),
                period_us: Some(10_000),
                quota_us: Some(2_000),
            },
            note: None,
            parents: None,
        })));
        for (i, &d) in durations.iter().enumerate() {
            agg.feed(&CaptureLine::Period(PeriodRecord {
                ts_ns: 1_000_000 * (i as u64 + 1),
                cpu: (i % 3) as u32,
                duration_ns: d,
                cgroup_id: 42,
                quota_ns: 2_000_000,
                period_ns: 10_000_000,
                ..Default::default()
            }));
        }
        let mut r = build_report(&header(), &agg, 1_000_000_000, vec![]);
        r.set_highlight_under(under_pct);
        r
    }

    /// The one bin `ns` lands in.
    fn bin_of(ns: u64) -> usize {
        let mut h = CallbackBins::default();
        h.record(ns);
        let bins = h.bins();
        assert_eq!(bins.iter().sum::<u64>(), 1, "{ns}: {bins:?}");
        bins.iter().position(|&n| n == 1).unwrap_or(usize::MAX)
    }

    #[test]
    fn bins_and_strip() {
        for (ns, bin) in [
            (0, 0),
            (1_999, 0),
            (2_000, 1),
            (3_999, 1),
            (4_000, 2),
            (40_000, 5),
            (16_383_999, 13),
            (16_384_000, 14),
            (32_767_999, 14),
            (32_768_000, 15),
        ] {
            assert_eq!(bin_of(ns), bin, "{ns}");
        }
        assert_eq!(bin_of(u64::MAX), HIST_BINS - 1);
        // Every bin edge, and many in one: counts add up per bin.
        let mut h = CallbackBins::default();
        for i in 1..HIST_BINS {
            let low = (1u64 << i) * 1_000;
            h.record(low);
            h.record(low * 2 - 1);
        }
        h.record(5);
        h.record(10_000_000_000);
        let mut want = [2u64; HIST_BINS];
        want[0] = 1;
        want[HIST_BINS - 1] = 3;
        assert_eq!(h.bins(), want);
        assert_eq!(CallbackBins::default().bins(), [0; HIST_BINS]);
        assert_eq!(histogram_strip(&[0, 1, 4, 8]), "·▁▄█");
        assert_eq!(histogram_strip(&[0, 0]), "··");
        assert_eq!(
            histogram_strip(&[1000, 1]),
            "█▁",
            "a lone callback still shows"
        );
        assert_eq!(span_level(0), 0);
        assert_eq!(span_level(3_999), 1);
        assert_eq!(span_level(4_000), 2);
        assert_eq!(span_level(999_999), 5);
        assert_eq!(span_level(20_000_000), 8);
    }

    #[test]
    fn cpu_strip_wraps_and_marks_levels() {
        let r = report(10.0, &[1_000, 50_000, 3_000_000]);
        let lines: Vec<String> = cpu_strip(&r.cpus, 20, 30).iter().map(Line::text).collect();
        // 30 columns: 9 for the label (`cpu16-19 `), two groups of 8 CPUs a line.
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("cpu0-15  ▁▃▆·····"), "{lines:?}");
        assert!(lines[1].starts_with("cpu16-19 ····"), "{lines:?}");
        let tones: Vec<(String, Option<Tone>)> = cpu_strip(&r.cpus, 4, 80)[0]
            .spans()
            .map(|(s, t)| (s.to_string(), t))
            .collect();
        assert_eq!(
            tones,
            [
                ("cpu0-3 ▁▃".to_string(), None),
                ("▆".to_string(), Some(Tone::Yellow)),
                ("·".to_string(), Some(Tone::Dim)),
            ]
        );
    }

    #[test]
    fn frame_rows_and_alert() {
        let r = report(100.0, &[3_000, 50_000, 60_000]);
        let mut hist: HashMap<u64, CallbackBins> = HashMap::new();
        for d in [3_000u64, 50_000, 60_000] {
            hist.entry(42).or_default().record(d);
        }
        let f = Frame {
            report: &r,
            total_cgroups: 3,
            hist: &hist,
            elapsed: Duration::from_secs(5),
            interval: Duration::from_secs(1),
            partial: None,
            filter: Some("yarn"),
        };
        let plain = render_frame(&f, 200, 50, false);
        let text = plain.join("\n");
        assert!(text.contains("kernel 6.18.44") && text.contains("backend tracepoint"));
        assert!(text.contains("48 CPUs") && text.contains("watchdog_thresh 10 s"));
        assert!(text.contains("!! HEADROOM ALERT"), "{text}");
        assert!(text.contains("cgroups: 1 of 3 matching /yarn/"));
        let row = plain
            .iter()
            .find(|l| l.starts_with("/yarn/container_e06"))
            .expect("the cgroup's row");
        // 200 columns: the path whole, the workload cut in the middle; the quota and the
        // headroom as the report table writes them.
        assert!(row.contains("yarn ap…098667219_988894"), "{row}");
        assert!(
            row.contains("2ms/10ms") && row.contains("99.9994%"),
            "{row}"
        );
        assert!(row.contains("60.0 us") && row.contains("113 us"), "{row}");
        let wide = render_frame(&f, 240, 50, false);
        assert!(
            wide.iter()
                .any(|l| l.contains("yarn application_1512098667219_988894")),
            "{wide:?}"
        );
        assert!(row.ends_with("·▄···█··········"), "{row}");
        assert!(!text.contains('\x1b'), "no colour when not asked");
        assert!(plain.iter().all(|l| l.chars().count() <= 200));
        let tones: Vec<Tone> = frame_lines(&f, 200, 50)
            .iter()
            .flat_map(|l| l.spans().filter_map(|(_, t)| t).collect::<Vec<_>>())
            .collect();
        assert!(tones.contains(&Tone::BoldRed) && tones.contains(&Tone::Alert));
        let colored = render_frame(&f, 200, 50, true);
        assert_eq!(colored.len(), plain.len());
        assert!(colored[0].starts_with(&paint("cfstrace watch", Tone::Bold, true)));
        // Small terminal: everything cut to it.
        let small = render_frame(&f, 40, 5, false);
        assert_eq!(small.len(), 5);
        assert!(small.iter().all(|l| l.chars().count() <= 40));
        assert!(!text.contains("partial"), "{text}");
        // The run ended inside the interval: the frame says how much it covers.
        let cut = Frame {
            partial: Some(Duration::from_millis(420)),
            ..f
        };
        let cut_text = render_frame(&cut, 200, 50, false).join("\n");
        assert!(cut_text.contains("(partial interval: 0.4 s)"), "{cut_text}");
        // Under the threshold: no alert line.
        let calm = report(0.0, &[3_000]);
        let f = Frame { report: &calm, ..f };
        assert!(
            !render_frame(&f, 200, 50, false)
                .join("\n")
                .contains("ALERT")
        );
    }

    /// The screen: `--highlight-under 100` with a 60 us worst callback (headroom
    /// 9.99994 s, 99.9994 %) read "(100.00%)" next to "99.9994% ... below 100%".
    #[test]
    fn headroom_and_alert_agree_near_the_threshold() {
        let hist = HashMap::new();
        let frame = |r: &Report| {
            let f = Frame {
                report: r,
                total_cgroups: 1,
                hist: &hist,
                elapsed: Duration::from_secs(5),
                interval: Duration::from_secs(1),
                partial: None,
                filter: None,
            };
            render_frame(&f, 200, 50, false).join("\n")
        };
        let r = report(100.0, &[60_000]);
        assert_eq!(r.headroom_ns, Some(9_999_940_000));
        assert!(r.headroom_alert.as_ref().unwrap().alert);
        let live = frame(&r);
        assert!(
            live.contains(
                "headroom 99.9994% of watchdog_thresh 10 s (worst IRQs-off 60.0 us on cpu0)"
            ),
            "{live}"
        );
        assert!(
            !live.contains("100.00%") && !live.contains("9.9999 s"),
            "{live}"
        );
        assert!(
            live.contains(
                "!! HEADROOM ALERT: node headroom 99.9994% of watchdog_thresh (10 s) is below 100%"
            ),
            "{live}"
        );
        let text = crate::render::text::render_text(&r, false);
        // Long lines are wrapped: read them as one.
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains(
                "headroom 99.9994% of watchdog_thresh 10 s (worst IRQs-off 60.0 us on cpu0"
            ),
            "{text}"
        );
        assert!(text.contains("node headroom 99.9994% of"), "{text}");
        // 40 us: the percentage stays under 100 %.
        let r = report(100.0, &[40_000]);
        let live = frame(&r);
        assert!(live.contains("headroom 99.9996% of"), "{live}");
        assert!(live.contains("node headroom 99.9996% of"), "{live}");
        let text = crate::render::text::render_text(&r, false);
        assert!(text.contains("headroom 99.9996% of"), "{text}");
        // 0.5 us: 4 decimals would say 100 %, the threshold itself; more are shown.
        let r = report(100.0, &[500]);
        let live = frame(&r);
        assert!(live.contains("headroom 99.99999% of"), "{live}");
        // Under another highlight, far from both: trailing zeros dropped.
        let r = report(10.0, &[60_000]);
        assert!(frame(&r).contains("headroom 99.9994% of"));
        let r = report(10.0, &[5_000_000]);
        assert!(frame(&r).contains("headroom 99.95% of"), "{}", frame(&r));
    }

    const VIEW_MARKER: &str = "cfstrace-view-ends-by=";

    /// Entry point of `the_terminal_is_given_back_on_error_and_on_panic` (this test binary
    /// re-executed on a pseudo-terminal): the view entered, a frame drawn, then an error
    /// returned through `?` or a panic. Without the marker argument it returns at once.
    #[test]
    #[ignore = "entry point for the_terminal_is_given_back_on_error_and_on_panic"]
    fn view_entry() {
        let Some(how) =
            std::env::args().find_map(|a| a.strip_prefix(VIEW_MARKER).map(String::from))
        else {
            return;
        };
        fn view(panic: bool) -> io::Result<()> {
            let guard = TerminalGuard::enter()?;
            guard.draw(&["a frame".to_string()])?;
            assert!(!panic, "a panic in the view");
            Err(io::Error::other("an error in the view"))
        }
        let r = view(how == "panic");
        // Straight to fd 1, past libtest's capture, so it lands after what the guard wrote.
        let _ = writeln!(io::stdout(), "view returned {r:?}");
    }

    /// Everything `view_entry` writes on a pseudo-terminal, ending by `how`.
    fn view_on_a_pty(how: &str) -> String {
        use std::process::{Command, Stdio};
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let (master, slave) = (pty.master, pty.slave);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "--ignored",
                "--test-threads=1",
                // libtest names tests by their path without the crate.
                &format!(
                    "{}::view_entry",
                    module_path!().split_once("::").map_or("", |(_, m)| m)
                ),
                &format!("{VIEW_MARKER}{how}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .unwrap();
        // The child holds the only copies of the slave now: when it exits, reads end (EIO).
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::fs::File::from(master), &mut out);
        child.wait().unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn the_terminal_is_given_back_on_error_and_on_panic() {
        use crossterm::Command as _;
        let ansi = |c: &dyn Fn(&mut String) -> std::fmt::Result| {
            let mut s = String::new();
            c(&mut s).unwrap();
            s
        };
        let enter = ansi(&|s| EnterAlternateScreen.write_ansi(s));
        let leave = ansi(&|s| LeaveAlternateScreen.write_ansi(s));
        let hide = ansi(&|s| Hide.write_ansi(s));
        let show = ansi(&|s| Show.write_ansi(s));
        for (how, after) in [
            (
                "error",
                "view returned Err(Custom { kind: Other, error: \"an error in the view\" })",
            ),
            ("panic", "a panic in the view"),
        ] {
            let out = view_on_a_pty(how);
            let seen = out.replace('\x1b', "<ESC>");
            let at = |s: &str| out.find(s).unwrap_or_else(|| panic!("{s:?} not in {seen}"));
            assert!(
                at(&enter) < at(&hide) && at(&hide) < at("a frame"),
                "{seen}"
            );
            assert!(
                at("a frame") < at(&show) && at(&show) < at(&leave),
                "{seen}"
            );
            assert!(at(&leave) < at(after), "{how}: {seen}");
            assert_eq!(out.matches(&leave).count(), 1, "given back once: {seen}");
        }
    }

    #[test]
    fn the_culprit_line_keeps_what_it_did_in_80_columns() {
        let h = "/kubepods/burstable/pod3f1c2a8e-6b7d-4e59-9a1c-0d2e4f6a8b90/9d2b6c1e4f3a (k8s \
                 pod 3f1c2a8e): 42.0 us of the node's worst IRQs-off span (63.5 us on cpu1)";
        let l = culprit_line(h, 80);
        assert_eq!(l.chars().count(), 80, "{l}");
        assert!(l.starts_with("CULPRIT: /ku…"), "{l}");
        assert!(
            l.ends_with(": 42.0 us of the node's worst IRQs-off span (63.5 us on cpu1)"),
            "{l}"
        );
        assert!(l.contains('…'), "{l}");
        // Short enough: as it is.
        assert_eq!(culprit_line("/a (sh): 1 us", 80), "CULPRIT: /a (sh): 1 us");
    }

    #[test]
    fn restore_runs_once() {
        ACTIVE.store(false, Ordering::SeqCst);
        restore(); // not active: writes nothing
        assert!(!ACTIVE.load(Ordering::SeqCst));
    }

    #[test]
    fn hostile_names_never_reach_the_terminal_raw() {
        let r = crate::render::hostile::report();
        let hist: HashMap<u64, CallbackBins> = HashMap::new();
        let f = Frame {
            report: &r,
            total_cgroups: 1,
            hist: &hist,
            elapsed: Duration::from_secs(5),
            interval: Duration::from_secs(1),
            partial: None,
            filter: Some("evil\x1b[2J\u{9b}"),
        };
        for (w, h) in [(200, 50), (80, 24), (40, 5)] {
            for color in [false, true] {
                let out = render_frame(&f, w, h, color).join("\n");
                if w == 200 {
                    crate::render::hostile::assert_escaped(&out);
                } else {
                    // Cut too narrow to show the tip: still no raw control of the name.
                    assert!(
                        !out.chars()
                            .any(|c| c.is_control() && c != '\x1b' && c != '\n'),
                        "{out:?}"
                    );
                }
            }
        }
        let out = render_frame(&f, 200, 50, false).join("\n");
        assert!(out.contains("matching /evil\\x1b[2J\\u{9b}/"), "{out}");
    }
}
