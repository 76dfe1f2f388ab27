//! `cfstrace report FILE --svg OUT.svg`: the capture as a picture.
//!
//! Upper panel: each top cgroup's period-timer callback time (IRQs off) over the run, and the
//! worst timer-interrupt span of the busiest CPUs, on a log scale, with a dashed line at each
//! plotted cgroup's period, a red line at the hard-lockup watchdog's threshold, and the culprit
//! marked at its worst callback. Lower panel: the callback-time histogram (log buckets), all
//! callbacks and the culprit's.
//!
//! The series are gathered in the same pass over the capture as the report, per time bucket
//! (the bucket's maximum, at the time it happened), with a bounded number of buckets per series:
//! an hour of capture makes an SVG of the same size as ten seconds.
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::Path;

use hdrhistogram::{Counter, Histogram};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::format::thresh;
use crate::analysis::CALLBACK_NS_CAP;
use crate::model::records::CaptureLine;
use crate::report::{CgroupReport, Report, human_ns};

/// Points kept per series at most (each the maximum of its time bucket).
pub const MAX_POINTS: usize = 300;
/// Cgroups plotted: the top ones by IRQs-off time (the culprit always among them).
pub const TOP_CGROUPS: usize = 5;
/// CPUs whose worst interrupt span is plotted.
pub const TOP_CPUS: usize = 3;
/// Histogram buckets per decade of callback time.
pub const BUCKETS_PER_DECADE: f64 = 5.0;
/// Picture size, pixels.
pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 960;

/// A time series kept as per-bucket maxima with bounded memory: when there are more than
/// `cap` buckets, the bucket width doubles and neighbouring buckets merge (keeping the larger).
/// Each bucket remembers when its maximum happened, so the plotted point sits at the real time
/// of the worst value and the series' overall maximum is never lost.
#[derive(Debug, Clone)]
pub struct MaxSeries {
    width_ns: u64,
    cap: usize,
    /// bucket index -> (time, value) of the bucket's maximum.
    buckets: BTreeMap<u64, (u64, u64)>,
}

impl MaxSeries {
    pub fn new(cap: usize) -> MaxSeries {
        MaxSeries {
            width_ns: 1_000_000,
            cap: cap.max(2),
            buckets: BTreeMap::new(),
        }
    }

    /// `t_ns`: time since the start of the recording.
    pub fn add(&mut self, t_ns: u64, v: u64) {
        let e = self
            .buckets
            .entry(t_ns / self.width_ns)
            .or_insert((t_ns, v));
        if v > e.1 {
            *e = (t_ns, v);
        }
        while self.buckets.len() > self.cap {
            self.width_ns *= 2;
            let mut merged: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
            for (k, (t, v)) in std::mem::take(&mut self.buckets) {
                let e = merged.entry(k / 2).or_insert((t, v));
                if v > e.1 {
                    *e = (t, v);
                }
            }
            self.buckets = merged;
        }
    }

    /// (time, value) of each bucket's maximum, in time order.
    pub fn points(&self) -> Vec<(u64, u64)> {
        self.buckets.values().copied().collect()
    }

    /// The worst (time, value) of the whole series.
    pub fn max(&self) -> Option<(u64, u64)> {
        self.buckets
            .values()
            .copied()
            .reduce(|a, b| if b.1 > a.1 { b } else { a })
    }

    pub fn bucket_width_ns(&self) -> u64 {
        self.width_ns
    }
}

/// Histogram bucket of a callback time: `BUCKETS_PER_DECADE` per decade of nanoseconds.
pub fn hist_bucket(ns: u64) -> i32 {
    ((ns.max(1) as f64).log10() * BUCKETS_PER_DECADE).floor() as i32
}

/// [lo, hi) nanoseconds of a histogram bucket.
pub fn hist_bounds(bucket: i32) -> (f64, f64) {
    (
        10f64.powf(bucket as f64 / BUCKETS_PER_DECADE),
        10f64.powf((bucket + 1) as f64 / BUCKETS_PER_DECADE),
    )
}

/// Callback times for the histogram panel: an hdrhistogram at the aggregator's precision
/// (2 significant digits, auto-resizing), read back as [`BUCKETS_PER_DECADE`] log buckets.
/// Each of its own buckets goes whole to the log bucket of its middle value, so a callback
/// within 0.4 % of a log bucket's edge may be drawn in its neighbour; the counts always add
/// up to the callbacks.
#[derive(Debug, Clone)]
pub struct LogHistogram<C: Counter> {
    ns: Histogram<C>,
}

impl<C: Counter> Default for LogHistogram<C> {
    fn default() -> Self {
        LogHistogram {
            ns: Histogram::new(2).expect("constant sigfig is valid"),
        }
    }
}

impl<C: Counter> LogHistogram<C> {
    pub fn record(&mut self, ns: u64) {
        // Clamped like the report's distributions; a full counter saturates, never wraps.
        let v = ns.min(CALLBACK_NS_CAP);
        if self.ns.record(v).is_err() {
            self.ns.saturating_record(v);
        }
    }

    /// Log bucket ([`hist_bucket`]) -> callbacks, the empty ones left out.
    pub fn buckets(&self) -> BTreeMap<i32, u64> {
        let mut out = BTreeMap::new();
        for v in self.ns.iter_recorded() {
            let mid = self.ns.median_equivalent(v.value_iterated_to());
            *out.entry(hist_bucket(mid)).or_default() += v.count_at_value().as_u64();
        }
        out
    }
}

#[derive(Debug, Clone)]
struct CgroupSeries {
    callbacks: MaxSeries,
    // u32 counters: one cgroup's timer fires at most 1000 times a second.
    hist: LogHistogram<u32>,
}

/// What the picture needs from a capture, gathered line by line.
#[derive(Debug, Clone)]
pub struct PlotData {
    origin_ns: u64,
    cgroups: HashMap<u64, CgroupSeries>,
    spans: BTreeMap<u32, MaxSeries>,
    hist_all: LogHistogram<u64>,
    last_ns: u64,
}

impl PlotData {
    /// `origin_ns`: the recording's start (the header's `started_mono_ns`, same clock as the
    /// events' timestamps).
    pub fn new(origin_ns: u64) -> PlotData {
        PlotData {
            origin_ns,
            cgroups: HashMap::new(),
            spans: BTreeMap::new(),
            hist_all: LogHistogram::default(),
            last_ns: 0,
        }
    }

    pub fn feed(&mut self, line: &CaptureLine) {
        match line {
            CaptureLine::Period(p) => {
                let t = p.ts_ns.saturating_sub(self.origin_ns);
                self.last_ns = self.last_ns.max(t + p.duration_ns);
                let s = self
                    .cgroups
                    .entry(p.cgroup_id)
                    .or_insert_with(|| CgroupSeries {
                        callbacks: MaxSeries::new(MAX_POINTS),
                        hist: LogHistogram::default(),
                    });
                s.callbacks.add(t, p.duration_ns);
                s.hist.record(p.duration_ns);
                self.hist_all.record(p.duration_ns);
            }
            CaptureLine::IrqSpan(x) => {
                let t = x.ts_ns.saturating_sub(self.origin_ns);
                self.last_ns = self.last_ns.max(t + x.duration_ns);
                self.spans
                    .entry(x.cpu)
                    .or_insert_with(|| MaxSeries::new(MAX_POINTS))
                    .add(t, x.duration_ns);
            }
            _ => {}
        }
    }

    /// A cgroup's callback-time series (time since start, ns).
    pub fn cgroup_points(&self, id: u64) -> Vec<(u64, u64)> {
        self.cgroups
            .get(&id)
            .map(|s| s.callbacks.points())
            .unwrap_or_default()
    }

    /// The CPUs with the worst interrupt spans, worst first.
    pub fn top_cpus(&self, n: usize) -> Vec<u32> {
        let mut v: Vec<(u32, u64)> = self
            .spans
            .iter()
            .filter_map(|(c, s)| s.max().map(|m| (*c, m.1)))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.into_iter().take(n).map(|(c, _)| c).collect()
    }
}

/// The cgroups to plot: the top `n` by IRQs-off time (the report's order), only those with
/// callbacks, the culprit always included (in place of the last when it is not in the top).
pub fn select_cgroups(rep: &Report, n: usize) -> Vec<&CgroupReport> {
    let mut v: Vec<&CgroupReport> = rep.cgroups.iter().filter(|c| c.periods > 0).collect();
    v.sort_by_key(|c| std::cmp::Reverse(c.total_callback_ns));
    v.truncate(n);
    if let Some(cul) = &rep.culprit
        && n > 0
        && !v.iter().any(|c| c.id == cul.cgroup.id)
    {
        v.pop();
        v.push(&cul.cgroup);
    }
    v
}

/// Log-scale y range (ns) covering every value and line: a decade-aligned floor below the
/// smallest, and room above the largest.
pub fn y_range(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for v in values.into_iter().filter(|v| *v > 0.0 && v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if hi <= 0.0 {
        return (1e3, 1e10);
    }
    let lo = 10f64.powf(lo.log10().floor()).max(1.0);
    let hi = 10f64.powf((hi * 1.5).log10().ceil());
    if hi <= lo { (lo, lo * 10.0) } else { (lo, hi) }
}

/// A label safe in any SVG: no control characters (XML refuses them), not too long.
pub fn label(s: &str, max: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if clean.chars().count() <= max {
        return clean;
    }
    let tail: String = clean
        .chars()
        .rev()
        .take(max.saturating_sub(1))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

/// The cgroup's name ([`report::cgroup_name`]), safe as a label.
fn cgroup_name(c: &CgroupReport) -> String {
    label(&c.name(), 60)
}

const PALETTE: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];
const CULPRIT: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const SPAN: [RGBColor; 3] = [
    RGBColor(0x55, 0x55, 0x55),
    RGBColor(0x88, 0x88, 0x88),
    RGBColor(0xaa, 0xaa, 0xaa),
];

fn s(ns: u64) -> f64 {
    ns as f64 / 1e9
}

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Render the report and its series as an SVG document.
pub fn render(rep: &Report, plot: &PlotData) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        draw(rep, plot, &root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Write the SVG to `path`.
pub fn write_svg(rep: &Report, plot: &PlotData, path: &Path) -> anyhow::Result<()> {
    let svg = render(rep, plot).map_err(|e| anyhow::anyhow!("drawing the plot: {e}"))?;
    let mut f = crate::outfile::create_private(path)?;
    f.write_all(svg.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

fn draw(rep: &Report, plot: &PlotData, root: &DrawingArea<SVGBackend, Shift>) -> DrawResult<()> {
    root.fill(&WHITE)?;
    let title = format!(
        "cfstrace: {} ({}, {} CPUs), {:.1} s, {} period-timer callbacks, watchdog_thresh {}",
        label(&rep.hostname, 40),
        label(&rep.kernel, 40),
        rep.ncpus,
        rep.duration_s,
        rep.events.periods,
        thresh(&rep.watchdog),
    );
    let root = root.titled(&title, ("sans-serif", 20))?;
    let (upper, lower) = root.split_vertically(600);
    draw_timeline(rep, plot, &upper)?;
    let culprit_id = rep.culprit.as_ref().map(|c| c.cgroup.id);
    draw_histogram(rep, plot, culprit_id, &lower)
}

/// The upper panel's chart: time since the start (s) against IRQs-off time (ns, log).
type Timeline<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, LogCoord<f64>>>;

/// Upper panel: the top cgroups' callbacks and the busiest CPUs' interrupt spans over time.
fn draw_timeline(
    rep: &Report,
    plot: &PlotData,
    area: &DrawingArea<SVGBackend, Shift>,
) -> DrawResult<()> {
    let thresh_ns = rep
        .watchdog
        .thresh_s
        .filter(|t| *t > 0)
        .map(|t| t as f64 * 1e9);
    let chosen = select_cgroups(rep, TOP_CGROUPS);
    let culprit_id = rep.culprit.as_ref().map(|c| c.cgroup.id);
    let cpus = plot.top_cpus(TOP_CPUS);
    let x_max = s(plot.last_ns.max((rep.duration_s * 1e9) as u64)).max(1e-3);

    let mut yvals: Vec<f64> = Vec::new();
    for c in &chosen {
        yvals.extend(plot.cgroup_points(c.id).iter().map(|p| p.1 as f64));
        if let Some(p) = c.kernel_period_us.or(c.period_us) {
            yvals.push(p as f64 * 1e3);
        }
    }
    for cpu in &cpus {
        yvals.extend(plot.spans[cpu].points().iter().map(|p| p.1 as f64));
    }
    yvals.extend(thresh_ns);
    let (ylo, yhi) = y_range(yvals);

    let mut chart = panel(
        area,
        "Callback time (IRQs off) over time, top cgroups; worst timer-interrupt span per CPU",
    )
    .build_cartesian_2d(0f64..x_max, (ylo..yhi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds since the recording started")
        .y_desc("time with IRQs off (log)")
        .y_label_formatter(&|v| human_ns(*v as u64))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;

    // The watchdog's threshold: a callback (or interrupt) this long is a hard-lockup panic.
    if let Some(t) = thresh_ns {
        chart
            .draw_series(LineSeries::new(
                [(0.0, t), (x_max, t)],
                CULPRIT.stroke_width(3),
            ))?
            .label(format!(
                "watchdog_thresh {} (hard-lockup panic at this IRQs-off time)",
                human_ns(t as u64)
            ))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], CULPRIT.stroke_width(3)));
    }
    let mut labels: Vec<Label> = Vec::new();
    let colors: Vec<RGBColor> = chosen
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if Some(c.id) == culprit_id {
                CULPRIT
            } else {
                PALETTE[i % PALETTE.len()]
            }
        })
        .collect();
    for (c, &color) in chosen.iter().zip(&colors) {
        if let Some(l) = draw_cgroup(&mut chart, plot, c, color, Some(c.id) == culprit_id, x_max)? {
            labels.push(l);
        }
    }
    if let Some(t) = thresh_ns {
        labels.push(Label::below(
            format!("watchdog_thresh {}", human_ns(t as u64)),
            14,
            CULPRIT,
            chart.backend_coord(&(0.0, t)),
        ));
    }
    labels.extend(period_labels(&chart, &chosen, &colors, x_max));
    for (i, cpu) in cpus.iter().enumerate() {
        let color = SPAN[i % SPAN.len()];
        let pts: Vec<(f64, f64)> = plot.spans[cpu]
            .points()
            .into_iter()
            .map(|(t, v)| (s(t), v as f64))
            .collect();
        let worst = plot.spans[cpu].max().map_or(0, |m| m.1);
        chart
            .draw_series(DashedLineSeries::new(pts, 4, 3, color.stroke_width(1)))?
            .label(format!(
                "timer-interrupt span, CPU {cpu} (worst {})",
                human_ns(worst)
            ))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(1)));
    }
    if chosen.is_empty() {
        chart.draw_series(std::iter::once(Text::new(
            "no period-timer callback in this capture",
            (x_max * 0.3, (ylo * yhi).sqrt()),
            ("sans-serif", 20),
        )))?;
    }
    // The legend's corner is taken: labels go around it.
    let legend = legend_box(&chart, &chosen, cpus.len(), thresh_ns.is_some());
    let base = area.get_base_pixel();
    for ((x, y), i) in place_labels(&labels, chart.plotting_area().get_pixel_range(), legend) {
        let l = &labels[i];
        area.draw(&Text::new(
            l.text.clone(),
            (x - base.0, y - base.1),
            ("sans-serif", l.size).into_font().color(&l.color),
        ))?;
    }
    draw_legend(&mut chart)
}

/// A text label of the upper panel, placed by [`place_labels`] so that none overprints
/// another, the legend or the plot's edges.
#[derive(Clone, Debug)]
struct Label {
    text: String,
    size: u32,
    color: RGBColor,
    /// Where it would like its top-left corner (pixels), and which way it moves when taken:
    /// up and down from there.
    want: (i32, i32),
    /// Its point (the culprit's worst callback): the label goes right of it, else left.
    point: Option<(i32, i32)>,
}

/// Width of a text in pixels at a drawn font size of `px`, estimated as SVG viewers draw
/// sans-serif: 0.6 of the size a character (a little wide, on the safe side). The tests judge
/// overlaps with the same estimate.
pub fn text_width(text: &str, px: f64) -> i32 {
    (text.chars().count() as f64 * px * 0.6).ceil() as i32
}

/// The font size plotters' SVG backend writes for a font of `size` (it divides by 1.24).
fn drawn_px(size: u32) -> f64 {
    f64::from(size) / 1.24
}

impl Label {
    /// Just under `at` (a line's left end), inset from the axis.
    fn below(text: String, size: u32, color: RGBColor, at: (i32, i32)) -> Label {
        Label {
            text,
            size,
            color,
            want: (at.0 + 8, at.1 + 4),
            point: None,
        }
    }

    fn width(&self) -> i32 {
        text_width(&self.text, drawn_px(self.size))
    }

    fn height(&self) -> i32 {
        drawn_px(self.size).ceil() as i32
    }

    fn rect(&self, top_left: (i32, i32)) -> Rect {
        Rect {
            x0: top_left.0,
            y0: top_left.1,
            x1: top_left.0 + self.width(),
            y1: top_left.1 + self.height(),
        }
    }
}

/// A box in pixels, `x1`/`y1` exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x0: i32,
    pub y0: i32,
    pub x1: i32,
    pub y1: i32,
}

impl Rect {
    pub fn intersects(&self, o: &Rect) -> bool {
        self.x0 < o.x1 && o.x0 < self.x1 && self.y0 < o.y1 && o.y0 < self.y1
    }
}

/// Top-left corners for `labels` (with their index), in order, each the nearest free spot to
/// where it wants to be: moved up or down in steps of its height, kept inside `plot`, off
/// `legend` and every label placed before it. A label with no free spot is left out rather
/// than drawn over another.
fn place_labels(
    labels: &[Label],
    plot: (std::ops::Range<i32>, std::ops::Range<i32>),
    legend: Option<Rect>,
) -> Vec<((i32, i32), usize)> {
    let (xs, ys) = plot;
    let mut taken: Vec<Rect> = legend.into_iter().collect();
    let mut out = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        let (w, h) = (l.width(), l.height());
        let step = h + 3;
        // Right of its point, else left of it; else where it asked, pushed inside.
        let xs_try: Vec<i32> = match l.point {
            Some((px, _)) => vec![px + 16, px - 16 - w],
            None => vec![l.want.0],
        };
        let clamp_x = |x: i32| x.min(xs.end - 2 - w).max(xs.start + 2);
        let clamp_y = |y: i32| y.min(ys.end - 2 - h).max(ys.start + 2);
        let spot = (0..40).find_map(|k: i32| {
            // 0, -1, +1, -2, +2 ... steps from where it wants to be.
            let dy = if k % 2 == 1 { -(k + 1) / 2 } else { k / 2 } * step;
            xs_try.iter().find_map(|&x| {
                let fits_right = l.point.is_none() || (x >= xs.start + 2 && x + w <= xs.end - 2);
                let at = (clamp_x(x), clamp_y(l.want.1 + dy));
                let r = l.rect(at);
                (fits_right && !taken.iter().any(|t| t.intersects(&r))).then_some(at)
            })
        });
        if let Some(at) = spot {
            taken.push(l.rect(at));
            out.push((at, i));
        }
    }
    out
}

/// Where the series legend (top right) will be drawn, estimated as plotters lays it out: a
/// row of 13 px text a series, a 20 px sample before it.
fn legend_box(
    chart: &Timeline<'_, '_>,
    chosen: &[&CgroupReport],
    cpus: usize,
    thresh: bool,
) -> Option<Rect> {
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    // The longest entries are the cgroups' (name, callbacks, p99, max) and the threshold's.
    let longest = chosen
        .iter()
        .map(|c| cgroup_name(c).chars().count() + 45)
        .chain(thresh.then_some(62))
        .chain((cpus > 0).then_some(40))
        .max()?;
    let rows = chosen.len() + cpus + usize::from(thresh);
    let w = text_width(&"x".repeat(longest), drawn_px(13)) + 40;
    let h = rows as i32 * 20 + 12;
    Some(Rect {
        x0: xs.end - w - 10,
        y0: ys.start,
        x1: xs.end,
        y1: ys.start + h + 10,
    })
}

/// The colour of a label that stands for several series.
const LABEL_GREY: RGBColor = RGBColor(0x44, 0x44, 0x44);

/// One label a period shared by plotted cgroups (`period 100 ms (/a, /b)`), just over its
/// dashed line, in the colour of its cgroup (grey when several share it).
fn period_labels(
    chart: &Timeline<'_, '_>,
    chosen: &[&CgroupReport],
    colors: &[RGBColor],
    x_max: f64,
) -> Vec<Label> {
    let mut by_period: Vec<(u64, Vec<String>, RGBColor)> = Vec::new();
    for (c, &color) in chosen.iter().zip(colors) {
        let Some(p) = c.kernel_period_us.or(c.period_us) else {
            continue;
        };
        let name = label(&c.name(), 30);
        match by_period.iter_mut().find(|(q, _, _)| *q == p) {
            Some((_, names, _)) => names.push(name),
            None => by_period.push((p, vec![name], color)),
        }
    }
    by_period
        .into_iter()
        .map(|(p, names, first_color)| {
            // Several cgroups' dashed lines lie on one another: their label is neutral.
            let color = if names.len() > 1 {
                LABEL_GREY
            } else {
                first_color
            };
            let shown = names.len().min(3);
            let mut who = names[..shown].join(", ");
            if names.len() > shown {
                who.push_str(&format!(" +{} more", names.len() - shown));
            }
            let text = format!("period {} ({who})", human_ns(p * 1000));
            let (x, y) = chart.backend_coord(&(x_max * 0.55, p as f64 * 1e3));
            Label {
                text,
                size: 12,
                color,
                // Just over the line.
                want: (x, y - 15),
                point: None,
            }
        })
        .collect()
}

/// One cgroup's callbacks over time, a dashed line at its period, and for the culprit, its
/// worst callback marked.
fn draw_cgroup(
    chart: &mut Timeline<'_, '_>,
    plot: &PlotData,
    c: &CgroupReport,
    color: RGBColor,
    is_culprit: bool,
    x_max: f64,
) -> DrawResult<Option<Label>> {
    let pts: Vec<(f64, f64)> = plot
        .cgroup_points(c.id)
        .into_iter()
        .map(|(t, v)| (s(t), v as f64))
        .collect();
    let name = cgroup_name(c);
    let legend = format!(
        "{}{name}: {} callbacks, p99 {}, max {}",
        if is_culprit { "CULPRIT " } else { "" },
        c.periods,
        human_ns(c.callback_ns.p99),
        human_ns(c.callback_ns.max),
    );
    chart
        .draw_series(LineSeries::new(
            pts.iter().copied(),
            color.stroke_width(if is_culprit { 2 } else { 1 }),
        ))?
        .label(legend)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    chart.draw_series(pts.iter().map(|p| Circle::new(*p, 2, color.filled())))?;
    if let Some(p) = c.kernel_period_us.or(c.period_us) {
        let y = p as f64 * 1e3;
        chart.draw_series(DashedLineSeries::new(
            [(0.0, y), (x_max, y)],
            8,
            6,
            color.stroke_width(1),
        ))?;
    }
    if is_culprit && let Some((t, v)) = plot.cgroups.get(&c.id).and_then(|s| s.callbacks.max()) {
        let at = (s(t), v as f64);
        chart.draw_series([
            Cross::new(at, 10, CULPRIT.stroke_width(3)).into_dyn(),
            Circle::new(at, 12, CULPRIT.stroke_width(2)).into_dyn(),
        ])?;
        let point = chart.backend_coord(&at);
        // Right of the mark (left of it near the right edge), inside the plot: at t≈0 the
        // axis is right there.
        // Above its own line, clear of the 12 px ring.
        return Ok(Some(Label {
            text: format!("culprit worst callback {} ({name})", human_ns(v)),
            size: 14,
            color: CULPRIT,
            want: (point.0 + 16, point.1 - 14 - 12),
            point: Some(point),
        }));
    }
    Ok(None)
}

/// A panel's chart with room for its axis labels, under `caption`.
fn panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut b = ChartBuilder::on(area);
    b.margin(12)
        .margin_right(36)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .caption(caption, ("sans-serif", 17));
    b
}

/// The series' legend, top right, over a light background.
fn draw_legend<'a, 'b: 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>,
) -> DrawResult<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

fn draw_histogram(
    rep: &Report,
    plot: &PlotData,
    culprit_id: Option<u64>,
    area: &DrawingArea<SVGBackend, Shift>,
) -> DrawResult<()> {
    let all = &plot.hist_all.buckets();
    let (bmin, bmax) = match (all.keys().next(), all.keys().next_back()) {
        (Some(a), Some(b)) => (*a, *b),
        _ => (hist_bucket(1_000), hist_bucket(10_000_000)),
    };
    let xlo = hist_bounds(bmin - 1).0;
    let xhi = hist_bounds(bmax + 1).1;
    let cmax = all.values().copied().max().unwrap_or(1).max(1) as f64;
    let mut chart = panel(area, "Callback-time histogram (log buckets, 5 per decade)")
        .build_cartesian_2d((xlo..xhi).log_scale(), (0.8f64..cmax * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("callback time (IRQs off, log)")
        .x_labels(8)
        .y_desc("callbacks (log)")
        .x_label_formatter(&|v| human_ns(*v as u64))
        .y_label_formatter(&|v| format!("{}", *v as u64))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let grey = RGBColor(0xb0, 0xb0, 0xb0);
    chart
        .draw_series(all.iter().map(|(b, n)| {
            let (lo, hi) = hist_bounds(*b);
            Rectangle::new([(lo, 0.8), (hi, *n as f64)], grey.filled())
        }))?
        .label(format!("all callbacks ({})", rep.events.periods))
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], grey.filled()));
    if let Some(id) = culprit_id
        && let Some(cs) = plot.cgroups.get(&id)
    {
        let name = rep
            .culprit
            .as_ref()
            .map(|c| cgroup_name(&c.cgroup))
            .unwrap_or_default();
        let hist = cs.hist.buckets();
        let n: u64 = hist.values().sum();
        chart
            .draw_series(hist.iter().map(|(b, n)| {
                let (lo, hi) = hist_bounds(*b);
                // Narrower, inside the grey bar, so both stay visible.
                let w = (hi / lo).powf(0.2);
                Rectangle::new(
                    [(lo * w, 0.8), (hi / w, *n as f64)],
                    CULPRIT.mix(0.8).filled(),
                )
            }))?
            .label(format!("CULPRIT {name} ({n})"))
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], CULPRIT.filled()));
    }
    draw_legend(&mut chart)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_series_is_bounded_and_keeps_the_worst() {
        let mut m = MaxSeries::new(100);
        // An hour of 100 ms periods, one spike.
        let mut worst = (0, 0);
        for i in 0..36_000u64 {
            let t = i * 100_000_000;
            let v = if i == 12_345 {
                9_000_000
            } else {
                1_000 + (i % 97)
            };
            if v > worst.1 {
                worst = (t, v);
            }
            m.add(t, v);
        }
        let pts = m.points();
        assert!(pts.len() <= 100 && pts.len() >= 50, "{}", pts.len());
        assert_eq!(m.max(), Some(worst));
        assert!(pts.contains(&worst));
        assert!(pts.windows(2).all(|w| w[0].0 < w[1].0), "time order");
        assert!(m.bucket_width_ns() >= 3_600_000_000_000 / 100);
    }

    #[test]
    fn max_series_short_run_keeps_every_point() {
        let mut m = MaxSeries::new(300);
        for i in 0..10u64 {
            m.add(i * 100_000_000, i);
        }
        assert_eq!(m.points().len(), 10);
        // Same bucket: the larger wins, with its own time.
        m.add(100_000_001, 50);
        assert_eq!(m.points()[1], (100_000_001, 50));
    }

    #[test]
    fn histogram_buckets() {
        for (ns, bucket) in [(1, 0), (0, 0), (1_000, 15), (999, 14)] {
            assert_eq!(hist_bucket(ns), bucket, "{ns}");
        }
        let (lo, hi) = hist_bounds(hist_bucket(12_345));
        assert!(lo <= 12_345.0 && 12_345.0 < hi);
        assert!((hi / lo - 10f64.powf(0.2)).abs() < 1e-9);
    }

    #[test]
    fn log_histogram_buckets_add_up() {
        let mut h = LogHistogram::<u32>::default();
        assert!(h.buckets().is_empty());
        // Exact below 256 ns; 2 significant digits above: well inside a bucket, where it was.
        let values = [
            0,
            1,
            3,
            255,
            1_000,
            1_200,
            12_345,
            50_000,
            9_000_000,
            u64::MAX,
        ];
        for v in values {
            h.record(v);
        }
        let b = h.buckets();
        assert_eq!(b.values().sum::<u64>(), values.len() as u64);
        for v in [3, 255, 1_200, 12_345, 50_000, 9_000_000] {
            assert!(b.contains_key(&hist_bucket(v)), "{v}: {b:?}");
        }
        assert_eq!(b[&0], 2, "0 and 1 ns share the first bucket");
        assert_eq!(
            b[&hist_bucket(CALLBACK_NS_CAP)],
            1,
            "clamped like the report"
        );
        // Many in one bucket.
        let mut h = LogHistogram::<u64>::default();
        for i in 0..1_000u64 {
            h.record(20_000 + i);
        }
        assert_eq!(h.buckets().into_iter().collect::<Vec<_>>(), [(21, 1_000)]);
    }

    #[test]
    fn y_range_is_log_friendly() {
        assert_eq!(y_range([]), (1e3, 1e10));
        let (lo, hi) = y_range([2_500.0, 10e9, 0.0]);
        assert_eq!(lo, 1e3);
        assert!(hi >= 10e9 * 1.5, "{hi}");
        let (lo, hi) = y_range([5.0]);
        assert!(lo <= 5.0 && hi > 5.0);
    }

    #[test]
    fn labels_are_safe() {
        assert_eq!(label("a\nb\"<", 10), "a?b\"<");
        let l = label(&"x".repeat(100), 20);
        assert_eq!(l.chars().count(), 20);
        assert!(l.starts_with('…'));
    }

    /// A report and plot data from capture lines, as `cfstrace report --svg` makes them:
    /// cgroup `id` has `n` callbacks of `ns` each; ids from 100 up are never named.
    fn fixture(cgroups: &[(u64, u64, u64)], spans: bool) -> (Report, PlotData) {
        fixture_with(cgroups, spans, false)
    }

    /// [`fixture`], with each cgroup's worst callback its first (at t≈0) when `worst_first`.
    fn fixture_with(
        cgroups: &[(u64, u64, u64)],
        spans: bool,
        worst_first: bool,
    ) -> (Report, PlotData) {
        let header = crate::model::records::test_header();
        let mut plot = PlotData::new(header.started_mono_ns);
        let mut lines = Vec::new();
        for &(id, n, ns) in cgroups {
            // Cgroups from 11 up have a period close to the others' (110 ms): their lines
            // and labels nearly meet.
            let period_us: u64 = if id >= 11 { 110_000 } else { 100_000 };
            let c: crate::model::records::CgroupRecord =
                serde_json::from_value(serde_json::json!({
                    "id": id, "path": format!("/kubepods/cg{id}"), "workload": {"kind": "cgroup"},
                    "processes": [], "period_us": period_us, "quota_us": 1_000,
                }))
                .unwrap_or_else(|e| panic!("{e}"));
            if id < 100 {
                lines.push(CaptureLine::Cgroup(Box::new(c)));
            }
            for i in 0..n {
                lines.push(CaptureLine::Period(crate::model::records::PeriodRecord {
                    ts_ns: header.started_mono_ns + i * 100_000_000 + id,
                    cpu: (id % 4) as u32,
                    duration_ns: if worst_first { ns + n - i } else { ns + i },
                    cgroup_id: id,
                    period_ns: period_us * 1_000,
                    quota_ns: 1_000_000,
                    ..Default::default()
                }));
            }
        }
        if spans {
            for i in 0..50u64 {
                lines.push(CaptureLine::IrqSpan(crate::model::records::IrqSpanRecord {
                    ts_ns: header.started_mono_ns + i * 10_000_000,
                    cpu: 3,
                    duration_ns: 20_000 + i,
                    timers: 1,
                    timers_ns: 10_000,
                    flags: 0,
                }));
            }
        }
        let rep = crate::report::report_replaying(|sink| {
            for l in &lines {
                sink(l);
                plot.feed(l);
            }
            Ok((header, crate::capture::ReplayStats::default()))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        (rep, plot)
    }

    #[test]
    fn series_selection_takes_the_top_and_the_culprit() {
        let cgs: Vec<(u64, u64, u64)> = (1..=8).map(|i| (i, 10, 1_000 * i)).collect();
        let (mut rep, _) = fixture(&cgs, false);
        let ids: Vec<u64> = select_cgroups(&rep, 5).iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![8, 7, 6, 5, 4]);
        // A culprit outside the top still gets plotted.
        let one = rep.cgroups.iter().find(|c| c.id == 1).cloned();
        if let (Some(cul), Some(c)) = (rep.culprit.as_mut(), one) {
            cul.cgroup = c;
        }
        let ids: Vec<u64> = select_cgroups(&rep, 5).iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![8, 7, 6, 5, 1]);
        assert!(select_cgroups(&rep, 0).is_empty());
    }

    #[test]
    fn renders_an_svg_with_its_series() {
        let (rep, plot) = fixture(&[(7, 40, 50_000), (9, 40, 5_000)], true);
        let svg = render(&rep, &plot).unwrap_or_else(|e| panic!("{e}"));
        assert!(svg.starts_with("<svg"), "{}", &svg[..50]);
        for want in [
            "watchdog_thresh 10.0 s",
            "timer-interrupt span, CPU 3",
            "CULPRIT /kubepods/cg7",
            "/kubepods/cg9",
            "culprit worst callback",
            "period 100 ms",
        ] {
            assert!(svg.contains(want), "{want} missing");
        }
        let (rep, plot) = fixture(&[], false);
        let svg = render(&rep, &plot).unwrap_or_else(|e| panic!("{e}"));
        assert!(svg.contains("no period-timer callback"));
        // Named by the one rule.
        let (rep, plot) = fixture(&[(100, 3, 5_000)], false);
        assert_eq!(cgroup_name(&rep.cgroups[0]), "(cgroup 100)");
        let svg = render(&rep, &plot).unwrap_or_else(|e| panic!("{e}"));
        assert!(svg.contains("CULPRIT (cgroup 100)"), "{svg}");
    }

    /// A drawn text: its box estimated as [`text_width`] does, from its anchor.
    fn text_boxes(svg: &str) -> Vec<(String, Rect)> {
        let attr = |tag: &str, name: &str| -> Option<String> {
            let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
            Some(tag[at..].split('"').next()?.to_string())
        };
        let mut out = Vec::new();
        for part in svg.split("<text").skip(1) {
            let Some((tag, rest)) = part.split_once('>') else {
                continue;
            };
            // Rotated axis titles run along the axis, away from the labels.
            if tag.contains("rotate") {
                continue;
            }
            let text = rest
                .split("</text>")
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let num = |n: &str| attr(tag, n).and_then(|v| v.parse::<f64>().ok());
            let (Some(x), Some(y), Some(size)) = (num("x"), num("y"), num("font-size")) else {
                continue;
            };
            let w = text_width(&text, size);
            let x0 = match attr(tag, "text-anchor").as_deref() {
                Some("middle") => x as i32 - w / 2,
                Some("end") => x as i32 - w,
                _ => x as i32,
            };
            // plotters writes the top of the text, moved down by `dy` (0.76em) for the baseline,
            // or the middle (`dy="0.5ex"`).
            let y0 = match attr(tag, "dy").as_deref() {
                Some(d) if d.ends_with("ex") => (y - size / 2.0) as i32,
                _ => y as i32,
            };
            out.push((
                text,
                Rect {
                    x0,
                    y0,
                    x1: x0 + w,
                    y1: y0 + size.ceil() as i32,
                },
            ));
        }
        out
    }

    /// Two cgroups with the same period, a third with a close one, and a culprit whose worst
    /// callback is the first (at t≈0, by the axis): no two texts overprint each other.
    #[test]
    fn labels_never_overprint() {
        for worst_first in [true, false] {
            let (rep, plot) = fixture_with(
                &[(7, 40, 50_000), (9, 40, 5_000), (11, 40, 900)],
                true,
                worst_first,
            );
            let svg = render(&rep, &plot).unwrap_or_else(|e| panic!("{e}"));
            if let Some(dir) = std::env::var_os("CFSTRACE_SVG_OUT") {
                let _ = std::fs::write(
                    std::path::Path::new(&dir).join(format!("labels-{worst_first}.svg")),
                    &svg,
                );
            }
            let boxes = text_boxes(&svg);
            assert!(
                boxes
                    .iter()
                    .any(|(t, _)| t.starts_with("culprit worst callback")),
                "{boxes:?}"
            );
            let merged: Vec<&String> = boxes
                .iter()
                .map(|(t, _)| t)
                .filter(|t| t.starts_with("period 100 ms"))
                .collect();
            assert_eq!(merged.len(), 1, "one label for one period: {merged:?}");
            assert!(
                merged[0].contains("/kubepods/cg7, /kubepods/cg9)"),
                "{merged:?}"
            );
            assert!(
                boxes
                    .iter()
                    .any(|(t, _)| t == "period 110 ms (/kubepods/cg11)"),
                "{boxes:?}"
            );
            for (i, (a, ra)) in boxes.iter().enumerate() {
                for (b, rb) in &boxes[i + 1..] {
                    assert!(!ra.intersects(rb), "{a:?} {ra:?} overprints {b:?} {rb:?}");
                }
            }
        }
    }
}
