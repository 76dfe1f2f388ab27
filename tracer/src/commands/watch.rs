//! `cfstrace watch`: the report's figures for each interval, until Ctrl-C (or `--duration`).
//!
//! Three outputs, one per interval: the live view (stdout a terminal), the plain table (stdout
//! not a terminal) or one JSON report a line (`--json`). `--cgroup REGEX` and `--top N` choose
//! the cgroups all three show (the report's `cgroups`, busiest first); the node-wide figures
//! (headroom, events, losses, per-CPU, culprit) always cover every cgroup. Every figure is the
//! interval's own, loss counters included. `--prometheus ADDR` serves /metrics alongside any of
//! them, cumulative over the run (see [`crate::render::prometheus`]).
use std::collections::HashMap;
use std::io::{self, IsTerminal as _, Write as _};
use std::time::Instant;

use anyhow::Context as _;
use regex::Regex;

use crate::analysis::Aggregator;
use std::process::ExitCode;

use crate::cli::WatchArgs;
use crate::model::records::{CaptureLine, CgroupRecord, LossRecord};
use crate::render::live::{self, CallbackBins, Frame, TerminalGuard};
use crate::render::prometheus::{self, Metrics};
use crate::render::text::render_text;
use crate::report::{self, Report};
use crate::session::signals::Stop;
use crate::session::{PollError, RecordError, Session};

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
        Output::Json
    } else if tty {
        Output::Live(TerminalGuard::enter().context("setting up the terminal")?)
    } else {
        Output::Plain { color }
    };
    // Names outlive intervals: a cgroup named once is named in every later interval.
    let mut names: HashMap<u64, CgroupRecord> = HashMap::new();
    let mut prev_loss = LossRecord::default();
    let mut last_frame: Vec<String> = Vec::new();
    let started = Instant::now();
    let mut stopped = false;
    loop {
        let mut agg = Aggregator::new();
        for c in names.values() {
            agg.add_cgroup(c.clone());
        }
        let mut hist: HashMap<u64, CallbackBins> = HashMap::new();
        let window = Instant::now();
        let end = opts.duration.map_or(opts.interval, |d| {
            opts.interval.min(d.saturating_sub(started.elapsed()))
        });
        let window_end = tokio::time::Instant::from_std(window + end);
        loop {
            let wake = tokio::select! {
                w = session.wait() => w?,
                _ = tokio::time::sleep_until(window_end) => break,
                _ = stop.recv() => {
                    stopped = true;
                    break;
                }
            };
            let r = session.handle(wake, &mut |l: &CaptureLine| {
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
            });
            if let Err(PollError::Totals(e)) = r {
                return Err(RecordError::Totals(e).into());
            }
        }
        let loss = session.losses().map_err(RecordError::from)?;
        agg.set_loss(loss_since(&loss, &prev_loss));
        prev_loss = loss;
        let mut rep = report::build_report(
            &session.header,
            &agg,
            window.elapsed().as_nanos() as u64,
            Vec::new(),
        );
        rep.set_highlight_under(opts.highlight_under);
        if let Some(m) = metrics.as_mut() {
            m.end_interval(&rep, loss);
            snapshot.set(m.render());
        }
        let total = select_cgroups(&mut rep, opts.cgroup.as_ref(), opts.top);
        let written = match &output {
            Output::Live(guard) => {
                let (w, h) = live::terminal_size();
                let frame = Frame {
                    report: &rep,
                    total_cgroups: total,
                    hist: &hist,
                    elapsed: started.elapsed(),
                    interval: opts.interval,
                    filter: opts.cgroup.as_ref().map(Regex::as_str),
                };
                last_frame = live::render_frame(&frame, w, h, color);
                guard.draw(&last_frame)
            }
            Output::Plain { color } => write_out(&format!(
                "--- {:.0}s ---\n{}\n",
                started.elapsed().as_secs_f64(),
                render_text(&rep, *color)
            )),
            Output::Json => write_out(&(serde_json::to_string(&rep)? + "\n")),
        };
        // A closed pipe (`cfstrace watch | head`) ends the watch quietly.
        if written.is_err() {
            return Ok(());
        }
        if stopped || opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    // Leave the view, then keep its last frame on the normal screen.
    if let Output::Live(guard) = output {
        drop(guard);
        let _ = write_out(&(last_frame.join("\n") + "\n"));
    }
    Ok(())
}

fn write_out(s: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(s.as_bytes())?;
    out.flush()
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
