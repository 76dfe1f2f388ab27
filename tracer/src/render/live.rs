//! The live terminal view of `cfstrace watch`: a full-screen frame redrawn every interval on
//! the alternate screen, and the guard that gives the terminal back.
//!
//! The guard follows Netflix/bpftop's: entering the view installs (once) a panic hook that
//! restores the terminal before the panic message is printed, and the guard's `Drop` restores
//! it on every other way out (Ctrl-C and SIGTERM end the loop through the stop flag, errors
//! return through `?`). Restoring happens exactly once, whichever comes first.
//!
//! Rendering is pure (a [`Frame`] in, lines out) so it is unit-tested without a terminal.
use std::collections::HashMap;
use std::io::{self, Write as _};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::format::{
    BOLD, BOLD_RED, DIM, RED, RESET, REVERSE_RED, YELLOW, alert_line, ellipsize_middle, fit,
    p50_max, pad, paint, thresh, workload_cell,
};
use crate::report::{CgroupReport, CpuReport, Report, human_ns, seconds};

/// Alternate screen on, cursor hidden, cleared.
pub const ENTER: &str = "\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J";
/// Attributes reset, cursor shown, alternate screen off.
pub const LEAVE: &str = "\x1b[0m\x1b[?25h\x1b[?1049l";

/// Block characters, by level (0: nothing).
pub const BLOCKS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// A CPU (or histogram bin) with nothing in it.
pub const EMPTY: char = '·';

/// Callback-time histogram bins per cgroup row: bin 0 is under 2 us, bin i (1..=14) is
/// [2^i, 2^(i+1)) us, bin 15 is 32.768 ms and more.
pub const HIST_BINS: usize = 16;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

/// Write the restore sequence if the view is on (once). Raw `write(2)` so it works from the
/// panic hook even while the stdout lock or its buffer is in use.
fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let b = LEAVE.as_bytes();
        // SAFETY: writing a valid buffer to fd 1.
        let _ = unsafe { libc::write(1, b.as_ptr().cast(), b.len()) };
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
        let mut out = io::stdout();
        out.write_all(ENTER.as_bytes())?;
        out.flush()?;
        Ok(guard)
    }

    /// Draw a frame over the previous one: home, each line cleared to its end, the rest of
    /// the screen cleared (no flicker from a full clear).
    pub fn draw(&self, lines: &[String]) -> io::Result<()> {
        let mut s = String::from("\x1b[H");
        for (i, l) in lines.iter().enumerate() {
            if i > 0 {
                s.push('\n');
            }
            s.push_str(l);
            s.push_str("\x1b[K");
        }
        s.push_str("\x1b[J");
        let mut out = io::stdout().lock();
        out.write_all(s.as_bytes())?;
        out.flush()
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = io::stdout().flush();
        restore();
    }
}

/// Columns and rows of the terminal on stdout (120 x 40 when it cannot be asked).
pub fn terminal_size() -> (usize, usize) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills a winsize.
    let r = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
    if r == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
        (usize::from(ws.ws_col), usize::from(ws.ws_row))
    } else {
        (120, 40)
    }
}

/// The callback-time bin of a duration.
pub fn hist_bin(ns: u64) -> usize {
    let us = ns / 1_000;
    if us < 2 {
        0
    } else {
        (us.ilog2() as usize).min(HIST_BINS - 1)
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

pub const SPAN_LEGEND: &str = "· none ▁<4us ▂<16us ▃<64us ▄<256us ▅<1ms ▆<4ms ▇<16ms █>=16ms";

/// A CPU's worst IRQs-off span: the longest timer interrupt, chain of callbacks, callback or
/// async-unthrottle CSD.
pub fn cpu_worst_ns(c: &CpuReport) -> u64 {
    c.max_irq_span_ns
        .unwrap_or(0)
        .max(c.max_chain_ns)
        .max(c.max_callback_ns)
        .max(c.max_async_ns)
}

/// The per-CPU strip: `cpu0    ▁▁▂· ····` lines, eight CPUs a group, as many groups a line as
/// `width` allows.
pub fn cpu_strip(cpus: &[CpuReport], ncpus: u32, width: usize, color: bool) -> Vec<String> {
    let n = (ncpus as usize).max(cpus.iter().map(|c| c.cpu as usize + 1).max().unwrap_or(0));
    let mut worst = vec![0u64; n];
    for c in cpus {
        worst[c.cpu as usize] = cpu_worst_ns(c);
    }
    let groups_per_line = (width.saturating_sub(8) / 9).max(1);
    let per_line = groups_per_line * 8;
    let mut lines = Vec::new();
    for start in (0..n).step_by(per_line) {
        let mut l = format!("{:<8}", format!("cpu{start}"));
        for (i, &ns) in worst[start..(start + per_line).min(n)].iter().enumerate() {
            if i > 0 && i % 8 == 0 {
                l.push(' ');
            }
            let level = span_level(ns);
            let ch = if level == 0 { EMPTY } else { BLOCKS[level] };
            let code = match level {
                7.. => Some(RED),
                5..=6 => Some(YELLOW),
                0 => Some(DIM),
                _ => None,
            };
            match code {
                Some(code) if color => {
                    l.push_str(code);
                    l.push(ch);
                    l.push_str(RESET);
                }
                _ => l.push(ch),
            }
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
    /// Callback-time bins of each shown cgroup this interval.
    pub hist: &'a HashMap<u64, [u64; HIST_BINS]>,
    pub elapsed: Duration,
    pub interval: Duration,
    /// `--cgroup`, as given.
    pub filter: Option<&'a str>,
}

const WORKLOAD_MIN_W: usize = 14;
const WORKLOAD_MAX_W: usize = 38;

/// The cgroup's name on one terminal line: a newline in a path shows as `\n`.
fn terminal_name(c: &CgroupReport) -> String {
    c.name().replace('\n', "\\n")
}

/// The frame's lines, each at most `width` visible characters, at most `height` of them.
pub fn render_frame(f: &Frame<'_>, width: usize, height: usize, color: bool) -> Vec<String> {
    let mut lines = status(f, color);
    lines.push(String::new());
    lines.extend(cpu_lines(f.report, width, color));
    lines.push(String::new());
    lines.extend(table(f, width, color));
    if height > 0 && lines.len() > height {
        lines.truncate(height);
    }
    lines.iter().map(|l| fit(l, width)).collect()
}

/// The host, the headroom now, the interval's events and the culprit.
fn status(f: &Frame<'_>, color: bool) -> Vec<String> {
    let r = f.report;
    let wd = &r.watchdog;
    let alert = r.headroom_alert.as_ref().filter(|a| a.alert);
    let mut lines = Vec::new();
    let headroom = match (r.headroom_ns, wd.thresh_s) {
        (Some(h), _) => {
            let pct = r
                .headroom_alert
                .as_ref()
                .and_then(|a| a.headroom_pct)
                .map_or_else(String::new, |p| format!(" ({p:.2}%)"));
            let cell = format!("{}{pct}", seconds(h));
            let cell = paint(&cell, REVERSE_RED, color && alert.is_some());
            let worst = r.worst_irqs_off.as_ref().map_or_else(String::new, |w| {
                format!(
                    "  worst {} {} on cpu{}",
                    w.basis.as_str().replace('_', " "),
                    human_ns(w.duration_ns),
                    w.cpu
                )
            });
            format!("headroom now {cell}{worst}")
        }
        (None, Some(t)) => format!("headroom now {t} s (nothing held IRQs off)"),
        (None, None) => "headroom unknown".to_string(),
    };
    lines.push(format!(
        "{}  {}  kernel {}  backend {}  {} CPUs  watchdog_thresh {}{}",
        paint("cfstrace watch", BOLD, color),
        r.hostname,
        r.kernel,
        r.backend,
        r.ncpus,
        thresh(wd),
        if wd.enabled {
            ""
        } else {
            " (watchdog DISABLED)"
        },
    ));
    lines.push(format!(
        "{headroom}   t={:.0}s, every {}",
        f.elapsed.as_secs_f64(),
        humantime::format_duration(f.interval),
    ));
    if let Some(a) = alert {
        lines.push(paint(&alert_line(a, wd), BOLD_RED, color));
    }
    let e = &r.events;
    let lost = format!("lost {}", e.lost);
    let lost = paint(&lost, RED, color && e.lost > 0);
    lines.push(format!(
        "this interval: {} callbacks, {} timer interrupts, {} async CSDs, {lost}; cgroups: {} \
         of {}{}",
        e.periods,
        e.irq_spans,
        e.async_csds,
        r.cgroups.len(),
        f.total_cgroups,
        f.filter
            .map_or_else(String::new, |re| format!(" matching /{re}/")),
    ));
    if let Some(c) = &r.culprit {
        lines.push(paint(&format!("CULPRIT: {}", c.reason), BOLD, color));
    }
    lines
}

/// The legend of the per-CPU strip with the worst CPU, then the strip.
fn cpu_lines(r: &Report, width: usize, color: bool) -> Vec<String> {
    let worst_cpu = r
        .cpus
        .iter()
        .max_by_key(|c| (cpu_worst_ns(c), std::cmp::Reverse(c.cpu)))
        .filter(|c| cpu_worst_ns(c) > 0)
        .map_or_else(String::new, |c| {
            format!("  worst cpu{} {}", c.cpu, human_ns(cpu_worst_ns(c)))
        });
    let mut lines = vec![format!(
        "worst IRQs-off span per CPU: {SPAN_LEGEND}{worst_cpu}"
    )];
    lines.extend(cpu_strip(&r.cpus, r.ncpus, width, color));
    lines
}

/// The cgroups' table, each row ending in its callback-time histogram.
fn table(f: &Frame<'_>, width: usize, color: bool) -> Vec<String> {
    let r = f.report;
    let enq_is_runnable = !r.figures.enqueued.available && r.figures.runnable.available;
    // The figures take a fixed width; path and workload share the rest (YARN application ids
    // are 32 characters, kubernetes paths longer).
    let fixed = 2 + 8 + 1 + 7 + 3 * (1 + 8) + 2 * (1 + 9) + 1 + 7 + 2 + HIST_BINS;
    let rest = width.saturating_sub(fixed);
    let wl_w = (rest * 2 / 5).clamp(WORKLOAD_MIN_W, WORKLOAD_MAX_W);
    let path_w = rest.saturating_sub(wl_w).clamp(16, 64);
    let header = format!(
        "{} {} {:>8} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7}  {}",
        pad("CGROUP", path_w),
        pad("WORKLOAD", wl_w),
        "IRQ-OFF",
        "PERIODS",
        "CB p50",
        "p99",
        "max",
        "UNTHR/P",
        if enq_is_runnable { "RUN/P" } else { "ENQ/P" },
        "CPUS/P",
        "<2us log2 >32ms"
    );
    let mut lines = vec![paint(&header, BOLD, color)];
    if r.cgroups.is_empty() {
        lines.push(
            "no CFS period-timer callback this interval: no cgroup with a cpu quota was throttled"
                .to_string(),
        );
    }
    let culprit = r.culprit.as_ref().map(|c| c.cgroup.id);
    for c in &r.cgroups {
        let path = pad(&ellipsize_middle(&terminal_name(c), path_w), path_w);
        let wl = pad(&ellipsize_middle(&workload_cell(c, true), wl_w), wl_w);
        let bins = f.hist.get(&c.id).copied().unwrap_or([0; HIST_BINS]);
        let enq = if enq_is_runnable {
            c.runnable_per_period.as_ref()
        } else {
            c.enqueued_per_period.as_ref()
        };
        let row = format!(
            "{path} {wl} {:>8} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7}  ",
            human_ns(c.total_callback_ns),
            c.periods,
            human_ns(c.callback_ns.p50),
            human_ns(c.callback_ns.p99),
            human_ns(c.callback_ns.max),
            p50_max(c.unthrottled_per_period.as_ref()),
            p50_max(enq),
            p50_max(c.spread.as_ref().map(|s| &s.per_period)),
        );
        let row = paint(&row, BOLD, color && culprit == Some(c.id));
        lines.push(format!("{row}{}", histogram_strip(&bins)));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Aggregator;
    use crate::model::records::test_header as header;
    use crate::model::records::{CaptureLine, CgroupFacts, CgroupRecord, PeriodRecord};
    use crate::report::build_report;

    fn report(under_pct: f64, durations: &[u64]) -> Report {
        let mut agg = Aggregator::new();
        agg.feed(&CaptureLine::Cgroup(CgroupRecord {
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
        }));
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

    #[test]
    fn bins_and_strip() {
        for (ns, bin) in [(0, 0), (1_999, 0), (2_000, 1), (40_000, 5)] {
            assert_eq!(hist_bin(ns), bin, "{ns}");
        }
        assert_eq!(hist_bin(u64::MAX), HIST_BINS - 1);
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
        let lines = cpu_strip(&r.cpus, 20, 30, false);
        // 30 columns: 8 for the label, two groups of 8 CPUs a line.
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("cpu0    ▁▃▆·····"), "{lines:?}");
        assert!(lines[1].starts_with("cpu16   ····"), "{lines:?}");
        let colored = cpu_strip(&r.cpus, 4, 80, true);
        assert!(colored[0].contains(YELLOW) && colored[0].contains(DIM));
    }

    #[test]
    fn frame_rows_and_alert() {
        let r = report(100.0, &[3_000, 50_000, 60_000]);
        let mut hist = HashMap::new();
        let mut bins = [0u64; HIST_BINS];
        for d in [3_000u64, 50_000, 60_000] {
            bins[hist_bin(d)] += 1;
        }
        hist.insert(42, bins);
        let f = Frame {
            report: &r,
            total_cgroups: 3,
            hist: &hist,
            elapsed: Duration::from_secs(5),
            interval: Duration::from_secs(1),
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
        assert!(
            row.contains("yarn application_1512098667219_988894"),
            "{row}"
        );
        assert!(row.contains("60.0 us") && row.contains("113 us"), "{row}");
        assert!(row.ends_with("·▄···█··········"), "{row}");
        assert!(!text.contains('\x1b'), "no colour when not asked");
        assert!(plain.iter().all(|l| l.chars().count() <= 200));
        let colored = render_frame(&f, 200, 50, true).join("\n");
        assert!(colored.contains(BOLD_RED) && colored.contains(REVERSE_RED));
        // Small terminal: everything cut to it.
        let small = render_frame(&f, 40, 5, false);
        assert_eq!(small.len(), 5);
        assert!(small.iter().all(|l| l.chars().count() <= 40));
        // Under the threshold: no alert line.
        let calm = report(0.0, &[3_000]);
        let f = Frame { report: &calm, ..f };
        assert!(
            !render_frame(&f, 200, 50, false)
                .join("\n")
                .contains("ALERT")
        );
    }

    #[test]
    fn restore_runs_once() {
        ACTIVE.store(false, Ordering::SeqCst);
        restore(); // not active: writes nothing
        assert!(!ACTIVE.load(Ordering::SeqCst));
    }
}
