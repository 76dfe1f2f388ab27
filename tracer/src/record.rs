//! A tracing session (programs attached, ring buffer drained, cgroups named as they appear) and
//! `cfstrace record`, which writes it to a capture that stays valid whatever stops it.
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, IsTerminal as _};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aya::maps::{MapData, RingBuf};

use crate::capture::{
    CAPTURE_SCHEMA, CaptureHeader, CaptureLine, CaptureWriter, EndRecord, LossRecord, ProbeStatus,
};
use crate::cgroup_fs::{self, CgroupNamer};
use crate::events::{self, Event};
use crate::host;
use crate::kmsg::KmsgWatch;
use crate::probes::{ProbeError, Tracer, TracerOptions};
use crate::report::PROBE_KMSG;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Cgroup(#[from] cgroup_fs::CgroupFsError),
    #[error("cannot create capture {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing capture {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("capture {path}: {source}")]
    Capture {
        path: PathBuf,
        #[source]
        source: crate::capture::CaptureError,
    },
    #[error("waiting for ring buffer events: {0}")]
    Poll(io::Error),
    #[error("cannot start `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot install the Ctrl-C handler: {0}")]
    Signal(io::Error),
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC is what bpf_ktime_get_ns() reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// SIGINT/SIGTERM set the returned flag instead of killing us, so every loop can stop cleanly
/// and leave a complete capture and no cgroups behind.
pub fn stop_flag() -> Result<Arc<AtomicBool>, RecordError> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&flag)).map_err(RecordError::Signal)?;
    }
    Ok(flag)
}

/// Attached programs plus everything needed to turn their events into capture lines.
pub struct Session {
    tracer: Tracer,
    ring: RingBuf<MapData>,
    namer: CgroupNamer,
    named: HashSet<u64>,
    /// Each cgroup's period in its last callback: a change re-names the cgroup, so the
    /// capture records what its file says right after (a write shows there).
    periods_seen: HashMap<u64, u64>,
    /// The kernel's "period too short" messages; None if /dev/kmsg cannot be read.
    kmsg: Option<KmsgWatch>,
    pub header: CaptureHeader,
    pub periods: u64,
    /// Async-unthrottle CSD events (6.3+ kernels).
    pub async_events: u64,
    /// Timer-interrupt spans that ran a period timer.
    pub irq_spans: u64,
    /// Records of the wrong size (never expected; counted, not silently dropped).
    pub decode_errors: u64,
    /// Kernel "period too short" messages seen.
    pub kmsg_messages: u64,
}

impl Session {
    pub fn start(
        opts: &TracerOptions,
        command: Option<Vec<String>>,
    ) -> Result<Session, RecordError> {
        let hierarchy = cgroup_fs::find_cpu_hierarchy()?;
        let mut tracer = Tracer::start(opts)?;
        let ring = tracer.take_events()?;
        // Opened before the header so it can say whether the kernel's own word is heard.
        let (kmsg, kmsg_status) = match KmsgWatch::open() {
            Ok(k) => (
                Some(k),
                ProbeStatus {
                    attached: true,
                    how: Some("read".into()),
                    target: Some("/dev/kmsg (\"cfs_period_timer[cpuN]: period too short\")".into()),
                    reason: None,
                },
            ),
            Err(e) => (
                None,
                ProbeStatus {
                    attached: false,
                    how: None,
                    target: Some("/dev/kmsg".into()),
                    reason: Some(format!(
                        "cannot read /dev/kmsg ({e}): kernel period rescaling is judged from the \
                         events alone"
                    )),
                },
            ),
        };
        let mut probes = tracer.probes.clone();
        probes.insert(PROBE_KMSG.into(), kmsg_status);
        let started_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let header = CaptureHeader {
            schema: CAPTURE_SCHEMA.to_string(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            host: host::host_facts(),
            backend_requested: opts.backend.as_str().to_string(),
            backend: tracer.frame_backend.to_string(),
            probes,
            cpu_hierarchy: Some(hierarchy.clone()),
            started_unix_ns,
            started_mono_ns: monotonic_ns(),
            command,
        };
        Ok(Session {
            tracer,
            ring,
            namer: CgroupNamer::new(hierarchy),
            named: HashSet::new(),
            periods_seen: HashMap::new(),
            kmsg,
            header,
            periods: 0,
            async_events: 0,
            irq_spans: 0,
            decode_errors: 0,
            kmsg_messages: 0,
        })
    }

    /// Wait up to `timeout` for events, then hand every capture line they make to `sink`:
    /// a cgroup's naming line comes before its first period or async line.
    pub fn poll<E>(
        &mut self,
        timeout: Duration,
        sink: &mut impl FnMut(&CaptureLine) -> Result<(), E>,
    ) -> Result<(), PollError<E>> {
        let mut pfd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(PollError::Poll(e));
            }
        }
        self.drain(sink)
    }

    /// Read everything the ring buffer holds now, and the kernel messages logged since the
    /// last call.
    pub fn drain<E>(
        &mut self,
        sink: &mut impl FnMut(&CaptureLine) -> Result<(), E>,
    ) -> Result<(), PollError<E>> {
        if let Some(k) = self.kmsg.as_mut() {
            for m in k.poll() {
                self.kmsg_messages += 1;
                sink(&CaptureLine::KmsgPeriodScaling(m)).map_err(PollError::Sink)?;
            }
        }
        while let Some(item) = self.ring.next() {
            let rec = match events::decode(&item) {
                Ok(r) => r,
                Err(_) => {
                    self.decode_errors += 1;
                    continue;
                }
            };
            drop(item);
            let id = rec.cgroup_id();
            let mut rename = false;
            if let Event::Period(p) = &rec
                && id != 0
                && p.period_ns != 0
            {
                let old = self.periods_seen.insert(id, p.period_ns);
                rename = old.is_some_and(|o| o != p.period_ns);
            }
            if id != 0 && (self.named.insert(id) || rename) {
                let c = self.namer.name(id);
                sink(&CaptureLine::Cgroup(c)).map_err(PollError::Sink)?;
            }
            let line = match rec {
                Event::Period(p) => {
                    self.periods += 1;
                    CaptureLine::Period(p)
                }
                Event::Async(a) => {
                    self.async_events += 1;
                    CaptureLine::AsyncUnthrottle(a)
                }
                Event::IrqSpan(x) => {
                    self.irq_spans += 1;
                    CaptureLine::IrqSpan(x)
                }
            };
            sink(&line).map_err(PollError::Sink)?;
        }
        Ok(())
    }

    pub fn losses(&self) -> Result<LossRecord, ProbeError> {
        self.tracer.losses(monotonic_ns())
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }
}

#[derive(Debug)]
pub enum PollError<E> {
    Poll(io::Error),
    Sink(E),
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
    pub reason: &'static str,
    pub command_status: Option<ExitStatus>,
    pub duration: Duration,
}

/// Record until the duration passes, the command exits or `stop` is set. The capture is
/// flushed every second and finished with loss and end lines on every one of those paths.
pub fn record(opts: &RecordOptions, stop: &AtomicBool) -> Result<RecordOutcome, RecordError> {
    let command = (!opts.command.is_empty()).then(|| opts.command.clone());
    let path = opts.output.clone();
    // Before attaching: an unwritable output fails fast, without touching the kernel.
    let file = File::create(&path).map_err(|source| RecordError::Create {
        path: path.clone(),
        source,
    })?;
    let mut session = Session::start(&opts.tracer, command)?;
    let cap_err = |source| RecordError::Capture {
        path: path.clone(),
        source,
    };
    let mut out = CaptureWriter::new(file, &session.header).map_err(cap_err)?;
    out.flush().map_err(cap_err)?;

    let mut child: Option<Child> =
        match opts.command.split_first() {
            Some((prog, args)) => {
                Some(Command::new(prog).args(args).spawn().map_err(|source| {
                    RecordError::Spawn {
                        cmd: opts.command.join(" "),
                        source,
                    }
                })?)
            }
            None => None,
        };

    let started = Instant::now();
    let mut last_flush = Instant::now();
    let show_progress = opts.progress && io::stderr().is_terminal();
    let mut command_status = None;
    let reason = loop {
        let r = session.poll(Duration::from_millis(100), &mut |l: &CaptureLine| {
            out.write_line(l)
        });
        match r {
            Ok(()) => {}
            Err(PollError::Poll(e)) => return Err(RecordError::Poll(e)),
            Err(PollError::Sink(e)) => return Err(cap_err(e)),
        }
        if last_flush.elapsed() >= Duration::from_secs(1) {
            let loss = session.losses()?;
            out.write_line(&CaptureLine::Loss(loss)).map_err(cap_err)?;
            out.flush().map_err(cap_err)?;
            last_flush = Instant::now();
            if show_progress {
                eprint!(
                    "\rcfstrace: {:>6.1}s  {} periods  {} async  {} lost ",
                    started.elapsed().as_secs_f64(),
                    session.periods,
                    session.async_events,
                    loss.lost()
                );
            }
        }
        if stop.load(Ordering::Relaxed) {
            break "interrupted";
        }
        if let Some(c) = child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            command_status = Some(status);
            break "command_exited";
        }
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break "duration";
        }
    };
    if show_progress {
        eprintln!();
    }
    // Events still in flight: the ring buffer is drained once more after the loop.
    session
        .drain(&mut |l: &CaptureLine| out.write_line(l))
        .map_err(|e| match e {
            PollError::Poll(e) => RecordError::Poll(e),
            PollError::Sink(e) => cap_err(e),
        })?;
    let loss = session.losses()?;
    out.write_line(&CaptureLine::Loss(loss)).map_err(cap_err)?;
    let elapsed = started.elapsed();
    out.write_line(&CaptureLine::End(EndRecord {
        ts_ns: monotonic_ns(),
        duration_ns: elapsed.as_nanos() as u64,
        reason: reason.to_string(),
        periods: session.periods,
        lost: loss.lost() + session.decode_errors,
        command_status: command_status.and_then(|s| s.code()),
        async_unthrottle: session.async_events,
        irq_spans: session.irq_spans,
        kmsg_period_scaling: session.kmsg_messages,
    }))
    .map_err(cap_err)?;
    out.flush().map_err(cap_err)?;
    // A recording whose command is still running when we stop (duration, Ctrl-C): leave the
    // command alone; it belongs to the user.
    if command_status.is_none()
        && reason == "duration"
        && let Some(c) = child.as_mut()
    {
        command_status = c.try_wait().ok().flatten();
    }
    Ok(RecordOutcome {
        periods: session.periods,
        async_events: session.async_events,
        lost: loss.lost() + session.decode_errors,
        reason,
        command_status,
        duration: elapsed,
    })
}

/// Make sure what was written is on disk (a capture taken before a crash must survive it).
pub fn sync_file(path: &std::path::Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}
