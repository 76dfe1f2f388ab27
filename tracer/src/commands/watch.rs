//! `cfstrace watch`: the report's figures for each interval, until Ctrl-C (or `--duration`).
//!
//! Three outputs, one per interval: the live view (stdout a terminal), the plain table (stdout
//! not a terminal) or the `cfstrace.watch/1` JSON Lines stream (`--json`, see
//! [`crate::report::stream`]). The interval the run ends inside (Ctrl-C, SIGTERM, a
//! `--duration` that is not a multiple of `--interval`) is shown, marked partial with its
//! length: its events and losses happened. `--cgroup REGEX` and `--top N` choose
//! the cgroups all three show (the report's `cgroups`, busiest first); the node-wide figures
//! (headroom, events, losses, per-CPU, culprit) always cover every cgroup. Every figure is the
//! interval's own, loss counters included. `--prometheus ADDR` serves /metrics alongside any of
//! them, cumulative over the run (see [`crate::render::prometheus`]).
use std::collections::HashMap;
use std::io::{self, IsTerminal as _};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use regex::Regex;

use crate::analysis::Aggregator;
use crate::analysis::forecast::ForecastMoments;
use std::process::ExitCode;

use crate::cli::WatchArgs;
use crate::model::bounded::IdMap;
use crate::model::records::{CaptureLine, CgroupRecord, LossRecord};
use crate::render::live::{self, CallbackBins, Frame, TerminalGuard};
use crate::render::prometheus::{self, Metrics};
use crate::render::stdout::{Reader, print, print_while_read};
use crate::render::text::render_text;
use crate::report::stream::{Bounds, EndReason, WallClock, WatchLine, WatchSettings, WatchStream};
use crate::report::{self, Report};
use crate::session::signals::Stop;
use crate::session::{PollError, RecordError, Session, monotonic_ns};

/// `--top` when not given.
pub const DEFAULT_TOP: usize = 10;

/// The counters' growth since `earlier` (the session's counters are cumulative).
pub fn loss_since(now: &LossRecord, earlier: &LossRecord) -> LossRecord {
    now.combine(earlier, now.ts_ns, u64::saturating_sub)
}

/// Keep the cgroups `--cgroup` matches, then the first `top` of them (the report keeps them
/// busiest first). Returns how many there were before.
pub fn select_cgroups(rep: &mut Report, filter: Option<&Regex>, top: usize) -> usize {
    let before = rep.cgroups.len();
    if let Some(re) = filter {
        rep.cgroups.retain(|c| re.is_match(&c.name()));
    }
    rep.cgroups.truncate(top);
    before
}

enum Output {
    Live(TerminalGuard),
    Plain { color: bool },
    Json,
}

pub async fn run(opts: &WatchArgs) -> anyhow::Result<ExitCode> {
    let mut stop = Stop::catch().context("catching the stop signals")?;
    watch(opts, &mut stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// A point between two intervals: the wall clock (the lines' bounds) and CLOCK_MONOTONIC (the
/// events' clock, and the intervals' lengths), read together.
#[derive(Clone, Copy)]
struct Boundary {
    wall: WallClock,
    mono_ns: u64,
}

impl Boundary {
    fn now() -> Self {
        Boundary {
            wall: WallClock::now(),
            mono_ns: monotonic_ns(),
        }
    }

    fn until(self, end: Boundary) -> Bounds {
        Bounds {
            start: self.wall,
            end: end.wall,
            length: Duration::from_nanos(end.mono_ns.saturating_sub(self.mono_ns)),
        }
    }
}

/// When an interval ends, counted from the start of the watch.
#[derive(Debug, PartialEq, Eq)]
struct WindowEnd {
    at: Duration,
    /// `--duration` ends the run there.
    last: bool,
    /// `--duration` cut it short of a whole interval.
    cut: bool,
}

/// Where the interval running at `elapsed` ends: on the grid of whole intervals, so a slow
/// frame never makes the intervals drift, and at `--duration` at the latest.
fn next_end(elapsed: Duration, interval: Duration, duration: Option<Duration>) -> WindowEnd {
    let ticks = elapsed.as_nanos() / interval.as_nanos().max(1) + 1;
    let tick = Duration::from_nanos(u64::try_from(interval.as_nanos() * ticks).unwrap_or(u64::MAX));
    match duration {
        Some(d) if d <= tick => WindowEnd {
            at: d,
            last: true,
            cut: d < tick,
        },
        _ => WindowEnd {
            at: tick,
            last: false,
            cut: false,
        },
    }
}

/// The plain output's line above each interval's table.
fn plain_heading(elapsed: Duration, partial: Option<Duration>) -> String {
    match partial {
        Some(length) => format!(
            "--- {:.0}s (partial interval: {:.1} s) ---",
            elapsed.as_secs_f64(),
            length.as_secs_f64()
        ),
        None => format!("--- {:.0}s ---", elapsed.as_secs_f64()),
    }
}

async fn watch(opts: &WatchArgs, stop: &mut Stop) -> anyhow::Result<()> {
    let mut session = Session::start(&opts.trace.options(), None)?;
    let mut metrics = opts
        .prometheus
        .map(|_| Metrics::new(opts.max_cgroups, opts.cgroup.clone()));
    let snapshot = prometheus::Snapshot::default();
    if let (Some(addr), Some(m)) = (opts.prometheus, metrics.as_ref()) {
        snapshot.set(m.render());
        let server = prometheus::bind(addr, snapshot.clone())
            .await
            .with_context(|| format!("cannot serve Prometheus metrics on {addr}"))?;
        let bound = server.local_addr()?;
        // On this runtime: a connection is a task, never in the way of the drain.
        tokio::spawn(server.run());
        crate::info!("cfstrace: serving Prometheus metrics on http://{bound}/metrics");
    }
    let tty = io::stdout().is_terminal();
    let color = tty && std::env::var_os("NO_COLOR").is_none();
    let output = if opts.json {
        let settings = WatchSettings {
            interval: opts.interval,
            duration: opts.duration,
            cgroup_filter: opts.cgroup.as_ref().map(|r| r.as_str().to_string()),
            top: opts.top,
            highlight_under_pct: opts.highlight_under,
        };
        let start = WatchStream::start(&session.header, &settings);
        if print_while_read(&json_lines(&[start])?)? == Reader::Gone {
            return Ok(());
        }
        Output::Json
    } else if tty {
        Output::Live(TerminalGuard::enter().context("setting up the terminal")?)
    } else {
        Output::Plain { color }
    };
    // Names outlive intervals: a cgroup named once is named in every later interval (the
    // latest `MAX_TRACKED` of them: churn cannot grow the map; the namer names a forgotten one
    // again when it calls back).
    let mut names: IdMap<CgroupRecord> = IdMap::default();
    let mut prev_loss = LossRecord::default();
    let mut stream = WatchStream::new();
    let mut last_frame: Vec<String> = Vec::new();
    // Intervals and `--duration` count from when the probes were armed (the header's
    // instant): the first interval holds what they caught since, and is as long as the others.
    let since_armed = monotonic_ns().saturating_sub(session.header.started_mono_ns);
    let started = Instant::now()
        .checked_sub(Duration::from_nanos(since_armed))
        .unwrap_or_else(Instant::now);
    let mut interval_start = Boundary {
        wall: WallClock {
            unix_ns: session.header.started_unix_ns,
        },
        mono_ns: session.header.started_mono_ns,
    };
    let mut stopped = false;
    // The forecast fits the whole run so far, not one interval: pooled interval by interval.
    let mut run_fits = ForecastMoments::default();
    loop {
        let mut agg = Aggregator::new();
        for c in names.values() {
            agg.add_cgroup(c.clone());
        }
        let mut hist: HashMap<u64, CallbackBins> = HashMap::new();
        let end = next_end(started.elapsed(), opts.interval, opts.duration);
        let window_end = tokio::time::Instant::from_std(started + end.at);
        let mut sink = |l: &CaptureLine| {
            match l {
                CaptureLine::Cgroup(c) => {
                    names.insert(c.id, (**c).clone());
                }
                CaptureLine::Period(p) => {
                    hist.entry(p.cgroup_id).or_default().record(p.duration_ns);
                }
                _ => {}
            }
            agg.feed(l);
            if let Some(m) = metrics.as_mut() {
                m.feed(l);
            }
            Ok::<(), ()>(())
        };
        loop {
            let wake = tokio::select! {
                w = session.wait() => w?,
                _ = tokio::time::sleep_until(window_end) => break,
                _ = stop.recv() => {
                    stopped = true;
                    break;
                }
            };
            if let Err(PollError::Totals(e)) = session.handle(wake, &mut sink) {
                return Err(RecordError::Totals(e).into());
            }
        }
        let interval_end = Boundary::now();
        let last = stopped || end.last;
        if last {
            // The run ends here: what the ring buffer still holds happened in this interval.
            if let Err(PollError::Totals(e)) = session.finish(&mut sink).await {
                return Err(RecordError::Totals(e).into());
            }
        }
        let bounds = interval_start.until(interval_end);
        interval_start = interval_end;
        // Cut short by a stop signal or by `--duration`: less than `--interval` of figures.
        let partial = (stopped || end.cut).then_some(bounds.length);
        let loss = session.losses().map_err(RecordError::from)?;
        agg.set_loss(loss_since(&loss, &prev_loss));
        prev_loss = loss;
        let mut rep = report::build_report(
            &session.header,
            &agg,
            u64::try_from(bounds.length.as_nanos()).unwrap_or(u64::MAX),
            Vec::new(),
        );
        rep.set_highlight_under(opts.highlight_under);
        run_fits.merge(agg.forecast());
        rep.forecast = Some(report::forecast::forecast_of(&rep, &run_fits));
        if let Some(m) = metrics.as_mut() {
            m.end_interval(&rep, loss);
            snapshot.set(m.render());
        }
        let total = select_cgroups(&mut rep, opts.cgroup.as_ref(), opts.top);
        let reader = match &output {
            Output::Live(guard) => {
                let (w, h) = live::terminal_size();
                let frame = Frame {
                    report: &rep,
                    total_cgroups: total,
                    hist: &hist,
                    elapsed: started.elapsed(),
                    interval: opts.interval,
                    partial,
                    filter: opts.cgroup.as_ref().map(Regex::as_str),
                };
                last_frame = live::render_frame(&frame, w, h, color);
                // A terminal that cannot be drawn on is gone as far as the view goes.
                match guard.draw(&last_frame) {
                    Ok(()) => Reader::Reading,
                    Err(_) => Reader::Gone,
                }
            }
            Output::Plain { color } => print_while_read(&format!(
                "{}\n{}\n",
                plain_heading(started.elapsed(), partial),
                render_text(&rep, *color)
            ))?,
            Output::Json => {
                let mut lines = stream.interval(rep, bounds, partial.is_some(), total);
                if last {
                    let reason = if stopped {
                        EndReason::Interrupted
                    } else {
                        EndReason::Duration
                    };
                    lines.push(stream.end(reason, interval_end.wall));
                }
                print_while_read(&json_lines(&lines)?)?
            }
        };
        // A closed pipe (`cfstrace watch | head`) ends the watch quietly.
        if reader == Reader::Gone || last {
            break;
        }
    }
    // Leave the view, then keep its last frame on the normal screen.
    if let Output::Live(guard) = output {
        drop(guard);
        print(&(last_frame.join("\n") + "\n"))?;
    }
    Ok(())
}

/// JSON Lines: each line's object and a newline.
fn json_lines(lines: &[WatchLine]) -> serde_json::Result<String> {
    let mut out = String::new();
    for l in lines {
        out += &serde_json::to_string(l)?;
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::records::{CgroupFacts, PeriodRecord};

    #[test]
    fn losses_are_per_interval() {
        let a = LossRecord {
            ringbuf_full: 5,
            missed_exit: 2,
            ..Default::default()
        };
        let b = LossRecord {
            ringbuf_full: 12,
            missed_exit: 2,
            span_missed_exit: 1,
            ..Default::default()
        };
        let d = loss_since(&b, &a);
        assert_eq!(
            (d.ringbuf_full, d.missed_exit, d.span_missed_exit),
            (7, 0, 1)
        );
        // Counters never go backwards into a huge number.
        assert_eq!(loss_since(&a, &b).ringbuf_full, 0);
        // And the interval's report says what was lost in it.
        let mut agg = Aggregator::new();
        agg.set_loss(d);
        let r = report::build_report(&crate::model::records::test_header(), &agg, 1, vec![]);
        assert_eq!(r.events.lost, 7);
    }

    #[test]
    fn intervals_end_on_their_grid_and_at_the_duration() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let end = |elapsed, duration| next_end(elapsed, s(1), duration);
        let whole = |at| WindowEnd {
            at,
            last: false,
            cut: false,
        };
        assert_eq!(end(ms(0), None), whole(s(1)));
        // A late start (a slow frame) does not push the grid.
        assert_eq!(end(ms(1_030), None), whole(s(2)));
        // Falling behind by more than an interval skips to the next whole one.
        assert_eq!(end(ms(3_500), None), whole(s(4)));
        // --duration a multiple of --interval: the last interval is whole.
        let last_whole = WindowEnd {
            at: s(4),
            last: true,
            cut: false,
        };
        assert_eq!(end(ms(3_010), Some(s(4))), last_whole);
        assert_eq!(end(ms(2_010), Some(s(4))), whole(s(3)));
        // Otherwise --duration cuts it: partial.
        let cut = WindowEnd {
            at: ms(3_500),
            last: true,
            cut: true,
        };
        assert_eq!(end(ms(3_001), Some(ms(3_500))), cut);
    }

    #[test]
    fn plain_heading_marks_a_partial_interval() {
        assert_eq!(
            plain_heading(Duration::from_millis(3_020), None),
            "--- 3s ---"
        );
        assert_eq!(
            plain_heading(
                Duration::from_millis(3_420),
                Some(Duration::from_millis(420))
            ),
            "--- 3s (partial interval: 0.4 s) ---"
        );
    }

    #[test]
    fn cgroup_filter_then_top() {
        let mut agg = Aggregator::new();
        for (id, path, dur) in [
            (1, "/kubepods/a", 5_000),
            (2, "/system.slice/b.service", 9_000),
            (3, "/kubepods/c", 7_000),
            (4, "/kubepods/d", 1_000),
        ] {
            agg.add_cgroup(CgroupRecord {
                facts: CgroupFacts {
                    id,
                    path: Some(path.into()),
                    workload: crate::model::workload::classify(path),
                    processes: vec![],
                    period_us: None,
                    quota_us: None,
                },
                note: None,
                parents: None,
            });
            agg.add_period(&PeriodRecord {
                cgroup_id: id,
                duration_ns: dur,
                ts_ns: id * 1000,
                ..Default::default()
            });
        }
        let base = report::build_report(&crate::model::records::test_header(), &agg, 1, vec![]);
        let mut r = base.clone();
        assert_eq!(select_cgroups(&mut r, None, 2), 4);
        let ids: Vec<u64> = r.cgroups.iter().map(|c| c.id).collect();
        assert_eq!(ids, [2, 3]);
        let mut r = base.clone();
        let re = Regex::new("^/kubepods/").unwrap();
        select_cgroups(&mut r, Some(&re), 2);
        let ids: Vec<u64> = r.cgroups.iter().map(|c| c.id).collect();
        assert_eq!(ids, [3, 1], "filter first, then the busiest two");
        // Node-wide figures are untouched.
        assert_eq!(r.events, base.events);
        assert_eq!(r.culprit, base.culprit);
    }
}
