//! `cfstrace record`: a session written to a capture that stays valid whatever stops it: the
//! duration, SIGINT, SIGTERM or SIGHUP, CMD exiting. The capture is flushed every second and
//! ends with loss and end lines on every one of those paths, then is fsync'd (the spool's
//! `finish`).
use std::cell::Cell;
use std::io::{self, IsTerminal as _};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use std::process::ExitCode;

use anyhow::Context as _;
use crossterm::terminal::{Clear, ClearType};

use crate::bpf::loader::TracerOptions;
use crate::capture::{CaptureError, CaptureWriter, Spool};
use crate::cli::RecordArgs;
use crate::commands::report::gate_code;
use crate::model::probe::StopReason;
use crate::model::records::{CaptureLine, EndRecord};
use crate::session::child::{self, Cmd, Said};
use crate::session::signals::Stop;
use crate::session::{PollError, RecordError, Session, TOTALS_INTERVAL, monotonic_ns};
use tokio::time::{MissedTickBehavior, interval_at, sleep_until};

pub async fn run(a: RecordArgs) -> anyhow::Result<ExitCode> {
    let mut stop = Stop::catch().context("catching the stop signals")?;
    let opts = RecordOptions {
        tracer: a.trace.options(),
        duration: a.duration,
        output: a.output.clone(),
        command: a.command,
        progress: true,
    };
    let out = record(&opts, &mut stop)
        .await
        .with_context(|| format!("recording to {}", a.output.display()))?;
    crate::info!(
        "cfstrace: wrote {} ({} period-timer callbacks, {} async unthrottles in {:.1}s, {} lost, stopped: {})",
        a.output.display(),
        out.periods,
        out.async_events,
        out.duration.as_secs_f64(),
        out.lost,
        out.reason.as_str().replace('_', " ")
    );
    // The same judgement as `report --fail-under` on this capture (3 below, 4 not judged).
    if let Some(pct) = a.gate.fail_under {
        let mut rep = crate::report::report_from_capture(&a.output)?;
        rep.set_gate(pct);
        if let Some(code) = gate_code(&rep) {
            return Ok(code);
        }
    }
    // CMD's status like a shell (128 + N for signal N), or 124 when --duration stopped it.
    Ok(ExitCode::from(out.exit_code.unwrap_or(0)))
}

pub struct RecordOptions {
    pub tracer: TracerOptions,
    /// None: until Ctrl-C or until the command exits.
    pub duration: Option<Duration>,
    pub output: PathBuf,
    /// Run this and record while it runs.
    pub command: Vec<String>,
    /// Show elapsed/events/losses on stderr when it is a terminal.
    pub progress: bool,
}

#[derive(Debug)]
pub struct RecordOutcome {
    pub periods: u64,
    /// Async-unthrottle CSD events recorded.
    pub async_events: u64,
    pub lost: u64,
    /// As in the capture's end line.
    pub reason: StopReason,
    /// What `record -- CMD` exits with: [`child::command_exit_code`]; None without CMD.
    pub exit_code: Option<u8>,
    pub duration: Duration,
}

/// Record until the duration passes, the command exits or a stop signal comes.
pub async fn record(opts: &RecordOptions, stop: &mut Stop) -> Result<RecordOutcome, RecordError> {
    record_watched(opts, stop, &mut |_| ControlFlow::Continue(())).await
}

/// Sees every line as it is written (not the header, nor the lines written after the stop);
/// `Break` ends the recording at once with the end reason `guard`. Meant for recordings
/// without CMD (one would be left to its own end).
pub type Watcher<'a> = dyn FnMut(&CaptureLine) -> ControlFlow<()> + 'a;

/// [`record`], with `watch` shown each line while recording: `cfstrace storm`'s guard stops
/// the storm from there, in the drain that brought the line.
pub async fn record_watched(
    opts: &RecordOptions,
    stop: &mut Stop,
    watch: &mut Watcher<'_>,
) -> Result<RecordOutcome, RecordError> {
    // `--no-cmdline`: CMD's program alone in the header, as a process's comm.
    let command = match opts.command.first() {
        Some(prog) if opts.tracer.no_cmdline => Some(vec![prog.clone()]),
        Some(_) => Some(opts.command.clone()),
        None => None,
    };
    let path = opts.output.clone();
    // Before creating anything: a command that cannot run is a clear error and no capture.
    if let Some(prog) = opts.command.first() {
        child::resolve_command(prog)?;
    }
    // Before attaching: an unwritable output fails fast, without touching the kernel.
    let file = crate::outfile::create_private(&path)?;
    let mut session = Session::start(&opts.tracer, command).inspect_err(|_| {
        let _ = std::fs::remove_file(&path);
    })?;
    let cap_err = |source| RecordError::Capture {
        path: path.clone(),
        source,
    };
    // Written on a thread of its own: a slow disk never stalls the drain.
    let spool = Spool::start(file).map_err(|e| cap_err(CaptureError::Write(e)))?;
    let mut out = CaptureWriter::new(spool, &session.header).map_err(cap_err)?;
    out.flush().map_err(cap_err)?;
    // CMD starts once the probes are attached.
    let mut cmd = match command_of(opts) {
        Some(c) => Some(Cmd::spawn(c).inspect_err(|_| {
            // No half-written capture left behind.
            let _ = std::fs::remove_file(&path);
        })?),
        None => None,
    };
    let mut tty = Progress::new(opts.progress);
    let started = Instant::now();
    let (reason, command_status) = record_loop(
        opts,
        stop,
        &mut session,
        &mut out,
        &mut cmd,
        &mut tty,
        &cap_err,
        watch,
    )
    .await?;
    tty.clear();
    // The programs disarmed and settled first, so the totals, the last drain and the losses
    // below all see the same events: the capture's period lines plus the callbacks the kernel
    // summed as unsent are exactly the callbacks its totals count.
    session.settle().await?;
    // The kernel's totals, then the ring buffer drained once more and the names still being
    // worked out waited for.
    let mut write = |l: &CaptureLine| out.write_line(l);
    session
        .totals(&mut write)
        .map_err(|e| poll_error(e, &cap_err))?;
    session
        .finish(&mut write)
        .await
        .map_err(|e| poll_error(e, &cap_err))?;
    let loss = session.losses()?;
    let elapsed = started.elapsed();
    let lost = loss.lost() + session.decode_errors;
    out.write_line(&CaptureLine::Loss(loss)).map_err(cap_err)?;
    out.write_line(&CaptureLine::End(EndRecord {
        ts_ns: monotonic_ns(),
        duration_ns: elapsed.as_nanos() as u64,
        reason,
        periods: session.periods,
        lost,
        command_status: command_status.map(|s| i32::from(child::shell_status(s))),
        async_unthrottle: session.async_events,
        irq_spans: session.irq_spans,
        kmsg_period_scaling: session.kmsg_messages,
    }))
    .map_err(cap_err)?;
    // Every chunk on disk, and a failed last write told, before the outcome is.
    out.into_inner()
        .map_err(cap_err)?
        .finish()
        .map_err(|e| cap_err(CaptureError::Write(e)))?;
    Ok(RecordOutcome {
        periods: session.periods,
        async_events: session.async_events,
        lost,
        reason,
        exit_code: child::command_exit_code(reason, command_status),
        duration: elapsed,
    })
}

fn command_of(opts: &RecordOptions) -> Option<&[String]> {
    (!opts.command.is_empty()).then_some(opts.command.as_slice())
}

/// What CMD did: exited, or outlived the grace after our signal.
enum CmdEvent {
    Exited(std::io::Result<(ExitStatus, StopReason)>),
    GraceOver,
}

/// CMD's next event, or never without CMD.
async fn cmd_event(cmd: &mut Option<Cmd>) -> CmdEvent {
    let Some(c) = cmd else {
        return std::future::pending().await;
    };
    let grace = c.grace_deadline();
    tokio::select! {
        r = c.exited() => CmdEvent::Exited(r),
        _ = sleep_until(grace.unwrap_or_else(tokio::time::Instant::now)), if grace.is_some() => {
            CmdEvent::GraceOver
        }
    }
}

/// Drain, write, flush, and watch for the end: the duration, a stop signal, CMD exiting, or
/// the watcher breaking.
#[allow(clippy::too_many_arguments)]
async fn record_loop(
    opts: &RecordOptions,
    stop: &mut Stop,
    session: &mut Session,
    out: &mut CaptureWriter<Spool>,
    cmd: &mut Option<Cmd>,
    tty: &mut Progress,
    cap_err: &impl Fn(CaptureError) -> RecordError,
    watch: &mut Watcher<'_>,
) -> Result<(StopReason, Option<ExitStatus>), RecordError> {
    // Set by the watcher; the line that broke is still written.
    let broke = Cell::new(false);
    let started = Instant::now();
    let start = tokio::time::Instant::now();
    let mut totals = interval_at(start + TOTALS_INTERVAL, TOTALS_INTERVAL);
    let mut flush = interval_at(start + FLUSH_INTERVAL, FLUSH_INTERVAL);
    let mut progress = interval_at(start, PROGRESS_INTERVAL);
    for t in [&mut totals, &mut flush, &mut progress] {
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    }
    // Past the deadline the branch is off: CMD, if any, has been told.
    let deadline = opts.duration.map(|d| start + d);
    let mut time_told = false;
    let mut lost_now = 0;
    loop {
        tokio::select! {
            wake = session.wait() => {
                session
                    .handle(wake?, &mut |l: &CaptureLine| watched(watch, &broke, out, l))
                    .map_err(|e| poll_error(e, cap_err))?;
            }
            _ = totals.tick() => {
                session
                    .totals(&mut |l: &CaptureLine| watched(watch, &broke, out, l))
                    .map_err(|e| poll_error(e, cap_err))?;
            }
            _ = flush.tick() => {
                let loss = session.losses()?;
                lost_now = loss.lost();
                watched(watch, &broke, out, &CaptureLine::Loss(loss)).map_err(cap_err)?;
                out.flush().map_err(cap_err)?;
            }
            _ = progress.tick(), if tty.show => {
                tty.show(started, opts.duration, session, lost_now, cmd.as_ref());
            }
            sig = stop.recv() => match cmd.as_mut() {
                None => return Ok((StopReason::Interrupted, None)),
                Some(c) => tty.say(&c.interrupt(sig)),
            },
            _ = sleep_until(deadline.unwrap_or(start)), if deadline.is_some() && !time_told => {
                let Some(c) = cmd.as_mut() else {
                    return Ok((StopReason::Duration, None));
                };
                time_told = true;
                if !c.stopping() {
                    tty.say(&c.time_up(opts.duration.unwrap_or_default()));
                }
            }
            ev = cmd_event(cmd) => match ev {
                CmdEvent::Exited(r) => {
                    let (status, reason) = r.map_err(RecordError::Wait)?;
                    return Ok((reason, Some(status)));
                }
                CmdEvent::GraceOver => {
                    if let Some(c) = cmd.as_mut()
                        && let Said::Line(l) = c.tick()
                    {
                        tty.warn(&l);
                    }
                }
            },
        }
        if broke.get() {
            return Ok((StopReason::Guard, None));
        }
    }
}

/// Show a line to the watcher (until it breaks), then write it.
fn watched(
    watch: &mut Watcher<'_>,
    broke: &Cell<bool>,
    out: &mut CaptureWriter<Spool>,
    l: &CaptureLine,
) -> Result<(), CaptureError> {
    if !broke.get() && watch(l).is_break() {
        broke.set(true);
    }
    out.write_line(l)
}

/// How often the capture is flushed, with the loss counters as they stand.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often the progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Elapsed time, callbacks and losses on stderr, refreshed in place, when it is a terminal
/// (not with `-q`).
struct Progress {
    show: bool,
}

impl Progress {
    fn new(wanted: bool) -> Self {
        Progress {
            show: wanted && crate::verbosity::get().info() && io::stderr().is_terminal(),
        }
    }

    fn clear(&self) {
        if self.show {
            eprint!("\r{}", Clear(ClearType::CurrentLine));
        }
    }

    /// A message on a line of its own: what happens to CMD and why (`-q` silences it; the
    /// exit status says it too).
    fn say(&self, line: &str) {
        self.clear();
        crate::info!("cfstrace: {line}");
    }

    /// A line `-q` keeps: CMD ignored our signal and had to be killed.
    fn warn(&self, line: &str) {
        self.clear();
        eprintln!("cfstrace: {}", crate::model::escape::terminal_lines(line));
    }

    fn show(
        &mut self,
        started: Instant,
        duration: Option<Duration>,
        session: &Session,
        lost: u64,
        cmd: Option<&Cmd>,
    ) {
        if !self.show {
            return;
        }
        self.clear();
        eprint!(
            "cfstrace: recording {:.1}s{}  {} callbacks  {} async  {} lost{}",
            started.elapsed().as_secs_f64(),
            duration
                .map(|d| format!(" of {}", humantime::format_duration(d)))
                .unwrap_or_default(),
            session.periods,
            session.async_events,
            lost,
            match cmd {
                Some(c) if c.stopping() => format!("  stopping CMD pid {}", c.pid()),
                Some(c) => format!("  CMD pid {} running", c.pid()),
                None => String::new(),
            }
        );
    }
}

fn poll_error(
    e: PollError<crate::capture::CaptureError>,
    cap_err: &impl Fn(crate::capture::CaptureError) -> RecordError,
) -> RecordError {
    match e {
        PollError::Totals(e) => RecordError::Totals(e),
        PollError::Sink(e) => cap_err(e),
    }
}
