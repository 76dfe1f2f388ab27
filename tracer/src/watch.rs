//! `cfstrace watch`: the report's figures for each interval, until Ctrl-C.
use std::collections::HashMap;
use std::io::{self, IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::aggregate::Aggregator;
use crate::capture::{CaptureLine, CgroupRecord};
use crate::probes::TracerOptions;
use crate::record::{PollError, RecordError, Session};
use crate::report;

pub struct WatchOptions {
    pub tracer: TracerOptions,
    pub interval: Duration,
    /// Stop after this long (None: until Ctrl-C).
    pub duration: Option<Duration>,
    /// One JSON report per interval instead of the table.
    pub json: bool,
    /// Highlight headroom below this % of watchdog_thresh (`--highlight-under`).
    pub highlight_under: f64,
}

pub fn watch(opts: &WatchOptions, stop: &AtomicBool) -> Result<(), RecordError> {
    let mut session = Session::start(&opts.tracer, None)?;
    // Names outlive intervals: a cgroup named once is named in every later table.
    let mut names: HashMap<u64, CgroupRecord> = HashMap::new();
    let color = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let started = Instant::now();
    let mut stdout = io::stdout().lock();
    loop {
        let mut agg = Aggregator::new();
        for c in names.values() {
            agg.add_cgroup(c.clone());
        }
        let window = Instant::now();
        while window.elapsed() < opts.interval && !stop.load(Ordering::Relaxed) {
            let r = session.poll(Duration::from_millis(100), &mut |l: &CaptureLine| {
                if let CaptureLine::Cgroup(c) = l {
                    names.insert(c.id, c.clone());
                }
                agg.feed(l);
                Ok::<(), ()>(())
            });
            if let Err(PollError::Poll(e)) = r {
                return Err(RecordError::Poll(e));
            }
        }
        agg.set_loss(session.losses()?);
        let mut rep = report::build_report(
            &session.header,
            &agg,
            window.elapsed().as_nanos() as u64,
            Vec::new(),
        );
        rep.set_highlight_under(opts.highlight_under);
        let text = if opts.json {
            serde_json::to_string(&rep).unwrap_or_default() + "\n"
        } else {
            format!(
                "--- {:.0}s ---\n{}\n",
                started.elapsed().as_secs_f64(),
                report::render_text(&rep, color)
            )
        };
        // A closed pipe (`cfstrace watch | head`) ends the watch quietly.
        if stdout
            .write_all(text.as_bytes())
            .and_then(|_| stdout.flush())
            .is_err()
        {
            return Ok(());
        }
        if stop.load(Ordering::Relaxed) || opts.duration.is_some_and(|d| started.elapsed() >= d) {
            return Ok(());
        }
    }
}
