//! A tracing session (programs attached, ring buffer drained, cgroups named as they appear) and
//! `cfstrace record`, which writes it to a capture that stays valid whatever stops it.
pub mod decode;
pub mod kmsg;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, IsTerminal as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aya::maps::{MapData, RingBuf};

use crate::bpf::loader::{ProbeError, Tracer, TracerOptions};
use crate::capture::{
    CAPTURE_SCHEMA, CaptureHeader, CaptureLine, CaptureWriter, CpuTotalsRecord, EndRecord,
    LossRecord, ProbeStatus, UnsentPeriodsRecord,
};
use crate::cgroups::{self, CgroupNamer};
use crate::model::host;
use crate::report::PROBE_KMSG;
use decode::Event;
use kmsg::KmsgWatch;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupFsError),
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
    #[error("reading the kernel's totals: {0}")]
    Totals(ProbeError),
    #[error("cannot run `{cmd}`: {why}")]
    NoCommand { cmd: String, why: String },
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

/// The last of SIGINT/SIGTERM received (0: none yet), so `record -- CMD` forwards the same one.
fn last_signal() -> &'static Arc<AtomicUsize> {
    static LAST: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    LAST.get_or_init(|| Arc::new(AtomicUsize::new(0)))
}

/// SIGINT/SIGTERM set the returned flag instead of killing us, so every loop can stop cleanly
/// and leave a complete capture and no cgroups behind.
pub fn stop_flag() -> Result<Arc<AtomicBool>, RecordError> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_usize(sig, Arc::clone(last_signal()), sig as usize)
            .map_err(RecordError::Signal)?;
        signal_hook::flag::register(sig, Arc::clone(&flag)).map_err(RecordError::Signal)?;
    }
    Ok(flag)
}

/// Exit status of `record -- CMD` / `repro` when `--duration` ran out before CMD exited (and
/// CMD was stopped), as timeout(1) does.
pub const EXIT_TIMEOUT: u8 = 124;
/// How long CMD has to exit after the SIGTERM (at `--duration`) or the forwarded Ctrl-C
/// before its process group gets SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// How a shell reports a command's end: its exit code, or 128 + the signal that killed it.
pub fn shell_status(s: ExitStatus) -> u8 {
    match (s.code(), s.signal()) {
        (Some(c), _) => (c & 0xff) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

/// The status `record -- CMD` exits with: CMD's (shell style), or [`EXIT_TIMEOUT`] when
/// `--duration` stopped it.
pub fn command_exit_code(reason: &str, status: Option<ExitStatus>) -> Option<u8> {
    match (reason, status) {
        ("duration", Some(_)) => Some(EXIT_TIMEOUT),
        (_, s) => s.map(shell_status),
    }
}

/// Check that CMD can be started before anything is created: a name without a slash is looked
/// up in PATH like a shell does; the file must be executable.
pub fn resolve_command(prog: &str) -> Result<PathBuf, RecordError> {
    let err = |why: String| RecordError::NoCommand {
        cmd: prog.to_string(),
        why,
    };
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        })
    };
    if prog.is_empty() {
        return Err(err("empty command".into()));
    }
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return match std::fs::metadata(&p) {
            Err(e) => Err(err(e.to_string())),
            Ok(_) if !executable(&p) => Err(err("not an executable file".into())),
            Ok(_) => Ok(p),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| executable(p))
        .ok_or_else(|| err("command not found in PATH".into()))
}

/// Send `sig` to CMD's process group (CMD runs in its own, so its children get it too).
fn signal_group(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on the process group CMD leads (we made it with process_group(0)).
    unsafe { libc::kill(-(child.id() as i32), sig) };
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGKILL => "SIGKILL",
        _ => "signal",
    }
}

/// How often the reader drains the ring buffer on its own. The programs submit without waking
/// it (see `tracer_ebpf::RingConfig`), so this, not the event rate, sets how often it runs; a
/// buffer filling faster than this wakes it at half full.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// How often `record` writes the kernel's totals (and at the end).
pub const TOTALS_INTERVAL: Duration = Duration::from_secs(10);

/// The reader's wait: epoll, edge-triggered, over the ring buffer and /dev/kmsg. Edge-triggered
/// so that data already in the ring buffer does not make every wait return at once: the wait
/// ends at the timeout, at a real wakeup (the buffer past its threshold), or at a new kernel
/// message.
struct Waiter {
    epoll: std::os::fd::OwnedFd,
}

const WAKE_RING: u64 = 1;
const WAKE_KMSG: u64 = 2;

impl Waiter {
    fn new(ring: i32, kmsg: Option<i32>) -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let epoll = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        let w = Waiter { epoll };
        w.add(ring, WAKE_RING)?;
        if let Some(k) = kmsg {
            w.add(k, WAKE_KMSG)?;
        }
        Ok(w)
    }

    fn add(&self, fd: i32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: valid epoll fd and event.
        let r = unsafe {
            libc::epoll_ctl(
                std::os::fd::AsRawFd::as_raw_fd(&self.epoll),
                libc::EPOLL_CTL_ADD,
                fd,
                &mut ev,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait up to `timeout`; true when /dev/kmsg has news.
    fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 2];
        // SAFETY: valid epoll fd and buffer.
        let n = unsafe {
            libc::epoll_wait(
                std::os::fd::AsRawFd::as_raw_fd(&self.epoll),
                evs.as_mut_ptr(),
                evs.len() as i32,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // A signal (Ctrl-C) ends the wait early; the caller checks its flag.
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(evs[..n as usize].iter().any(|e| e.u64 == WAKE_KMSG))
    }
}

/// Make the reader a SCHED_FIFO task at `prio` (0: leave it alone), so that a node saturated
/// by the very storm it watches still lets it drain (as `perf record -r`). Children (CMD, the
/// storm's workers) start as normal tasks again (SCHED_RESET_ON_FORK). Returns a warning when
/// the kernel refuses (no CAP_SYS_NICE, or an RT group without RT runtime).
pub fn raise_priority(prio: u8) -> Option<String> {
    if prio == 0 {
        return None;
    }
    let param = libc::sched_param {
        sched_priority: i32::from(prio),
    };
    // SAFETY: plain syscall on ourselves with a valid param.
    let r = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    (r != 0).then(|| {
        format!(
            "cannot run the reader at real-time priority {prio} ({}); it runs as a normal task \
             and may fall behind on a saturated node (--rt-priority 0 silences this)",
            io::Error::last_os_error()
        )
    })
}

/// Attached programs plus everything needed to turn their events into capture lines.
pub struct Session {
    tracer: Tracer,
    ring: RingBuf<MapData>,
    waiter: Waiter,
    /// Each cgroup's callback count in the last totals written, and each CPU's interrupt count.
    totals_written: HashMap<u64, u64>,
    cpu_totals_written: Vec<u64>,
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
        let hierarchy = cgroups::find_cpu_hierarchy()?;
        let mut tracer = Tracer::start(opts)?;
        let ring = tracer.take_events()?;
        if let Some(w) = raise_priority(opts.rt_priority) {
            eprintln!("cfstrace: warning: {w}");
        }
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
        let waiter = Waiter::new(
            ring.as_raw_fd(),
            kmsg.as_ref().map(|k: &KmsgWatch| k.as_raw_fd()),
        )
        .map_err(RecordError::Poll)?;
        Ok(Session {
            tracer,
            ring,
            waiter,
            totals_written: HashMap::new(),
            cpu_totals_written: Vec::new(),
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

    /// Wait up to `timeout` (at most [`DRAIN_INTERVAL`] is the caller's rule), then hand
    /// every capture line the ring buffer and /dev/kmsg hold to `sink`: a cgroup's naming line
    /// comes before its first period or async line.
    pub fn poll<E>(
        &mut self,
        timeout: Duration,
        sink: &mut impl FnMut(&CaptureLine) -> Result<(), E>,
    ) -> Result<(), PollError<E>> {
        let kmsg = self.waiter.wait(timeout).map_err(PollError::Poll)?;
        if kmsg {
            self.read_kmsg(sink)?;
        }
        self.drain_ring(sink)
    }

    fn read_kmsg<E>(
        &mut self,
        sink: &mut impl FnMut(&CaptureLine) -> Result<(), E>,
    ) -> Result<(), PollError<E>> {
        if let Some(k) = self.kmsg.as_mut() {
            for m in k.poll() {
                self.kmsg_messages += 1;
                sink(&CaptureLine::KmsgPeriodScaling(m)).map_err(PollError::Sink)?;
            }
        }
        Ok(())
    }

    /// The kernel's totals that changed since the last call, as capture lines.
    pub fn totals<E>(
        &mut self,
        sink: &mut impl FnMut(&CaptureLine) -> Result<(), E>,
    ) -> Result<(), PollError<E>> {
        let ts_ns = monotonic_ns();
        let mut cgroups = self.tracer.unsent_periods().map_err(PollError::Totals)?;
        cgroups.sort_unstable_by_key(|(id, _)| *id);
        for (id, t) in cgroups {
            if self.totals_written.get(&id) == Some(&t.periods) {
                continue;
            }
            self.totals_written.insert(id, t.periods);
            sink(&CaptureLine::UnsentPeriods(UnsentPeriodsRecord {
                ts_ns,
                id,
                periods: t.periods,
                callback_ns_sum: t.callback_ns_sum,
                callback_ns_max: t.callback_ns_max,
                unthrottled_sum: t.unthrottled_sum,
                enqueued_sum: t.enqueued_sum,
                over_period: t.over_period,
                multi_pass: t.multi_pass,
                max_loops: t.max_loops,
                max_unthrottled: t.max_unthrottled,
                callback_log2: nonzero_buckets(&t.callback_hist),
            }))
            .map_err(PollError::Sink)?;
        }
        let cpus = self.tracer.span_totals().map_err(PollError::Totals)?;
        self.cpu_totals_written.resize(cpus.len(), 0);
        for (cpu, t) in cpus.iter().enumerate() {
            if t.all == 0 || self.cpu_totals_written[cpu] == t.all {
                continue;
            }
            self.cpu_totals_written[cpu] = t.all;
            sink(&CaptureLine::CpuTotals(CpuTotalsRecord {
                ts_ns,
                cpu: cpu as u32,
                interrupts: t.all,
                interrupts_ns: t.all_ns,
                interrupt_max_ns: t.all_max_ns,
                spans: t.spans,
                spans_ns: t.spans_ns,
                timers: t.timers,
                worst_ns: t.worst_ns,
                worst_ts_ns: t.worst_start_ns,
                worst_timers: t.worst_timers,
                worst_timers_ns: t.worst_timers_ns,
                max_timers: t.max_timers,
                interrupt_hist: nonzero_buckets(&t.all_hist),
            }))
            .map_err(PollError::Sink)?;
        }
        Ok(())
    }

    /// Read everything the ring buffer holds now, and the kernel messages logged since the
    /// last call.
    pub fn drain<E>(
        &mut self,
        sink: &mut impl FnMut(&CaptureLine) -> Result<(), E>,
    ) -> Result<(), PollError<E>> {
        self.read_kmsg(sink)?;
        self.drain_ring(sink)
    }

    fn drain_ring<E>(
        &mut self,
        sink: &mut impl FnMut(&CaptureLine) -> Result<(), E>,
    ) -> Result<(), PollError<E>> {
        while let Some(item) = self.ring.next() {
            let rec = match decode::decode(&item) {
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

/// `[bucket, count]` of the non-empty buckets of an in-kernel histogram.
fn nonzero_buckets(h: &[u32]) -> Vec<(u32, u32)> {
    h.iter()
        .enumerate()
        .filter(|(_, n)| **n != 0)
        .map(|(b, n)| (b as u32, *n))
        .collect()
}

#[derive(Debug)]
pub enum PollError<E> {
    Poll(io::Error),
    Totals(ProbeError),
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
    /// `duration`, `interrupted` or `command_exited` (as in the capture's end line).
    pub reason: &'static str,
    pub command_status: Option<ExitStatus>,
    /// What `record -- CMD` exits with: [`command_exit_code`]; None without CMD.
    pub exit_code: Option<u8>,
    pub duration: Duration,
}

/// Record until the duration passes, the command exits or `stop` is set. The capture is
/// flushed every second and finished with loss and end lines on every one of those paths.
pub fn record(opts: &RecordOptions, stop: &AtomicBool) -> Result<RecordOutcome, RecordError> {
    let command = (!opts.command.is_empty()).then(|| opts.command.clone());
    let path = opts.output.clone();
    // Before creating anything: a command that cannot run is a clear error and no capture.
    if let Some(prog) = opts.command.first() {
        resolve_command(prog)?;
    }
    // Before attaching: an unwritable output fails fast, without touching the kernel.
    let file = File::create(&path).map_err(|source| RecordError::Create {
        path: path.clone(),
        source,
    })?;
    let mut session = match Session::start(&opts.tracer, command) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    let cap_err = |source| RecordError::Capture {
        path: path.clone(),
        source,
    };
    let mut out = CaptureWriter::new(file, &session.header).map_err(cap_err)?;
    out.flush().map_err(cap_err)?;

    // CMD starts once the probes are attached, in its own process group so that stopping it
    // (at --duration, or a forwarded Ctrl-C) reaches its children too. A terminal is not
    // handed to it: stdin is /dev/null then (a background process group reading the terminal
    // would stop), else inherited.
    let mut child: Option<Child> = match opts.command.split_first() {
        Some((prog, args)) => {
            let mut cmd = Command::new(prog);
            cmd.args(args).process_group(0);
            if io::stdin().is_terminal() {
                cmd.stdin(Stdio::null());
            }
            match cmd.spawn() {
                Ok(c) => Some(c),
                Err(source) => {
                    // No half-written capture left behind.
                    drop(out);
                    let _ = std::fs::remove_file(&path);
                    return Err(RecordError::Spawn {
                        cmd: opts.command.join(" "),
                        source,
                    });
                }
            }
        }
        None => None,
    };

    let started = Instant::now();
    let mut last_flush = Instant::now();
    let mut last_totals = Instant::now();
    let mut last_progress: Option<Instant> = None;
    let mut lost_now = 0;
    let show_progress = opts.progress && io::stderr().is_terminal();
    let mut command_status = None;
    // Why we are stopping CMD (set when we signal it), when, and whether SIGKILL went out.
    let mut stopping: Option<(&'static str, Instant)> = None;
    let mut killed = false;
    let clear = |show: bool| {
        if show {
            eprint!("\r\x1b[2K");
        }
    };
    let reason = loop {
        let r = session.poll(DRAIN_INTERVAL, &mut |l: &CaptureLine| out.write_line(l));
        r.map_err(|e| poll_error(e, &cap_err))?;
        if last_totals.elapsed() >= TOTALS_INTERVAL {
            last_totals = Instant::now();
            session
                .totals(&mut |l: &CaptureLine| out.write_line(l))
                .map_err(|e| poll_error(e, &cap_err))?;
        }
        if last_flush.elapsed() >= Duration::from_secs(1) {
            let loss = session.losses()?;
            lost_now = loss.lost();
            out.write_line(&CaptureLine::Loss(loss)).map_err(cap_err)?;
            out.flush().map_err(cap_err)?;
            last_flush = Instant::now();
        }
        if show_progress && last_progress.is_none_or(|t| t.elapsed() >= Duration::from_millis(250))
        {
            last_progress = Some(Instant::now());
            eprint!(
                "\r\x1b[2Kcfstrace: recording {:.1}s{}  {} callbacks  {} async  {} lost{}",
                started.elapsed().as_secs_f64(),
                opts.duration
                    .map(|d| format!(" of {}", humantime::format_duration(d)))
                    .unwrap_or_default(),
                session.periods,
                session.async_events,
                lost_now,
                match (&child, stopping) {
                    (Some(c), None) => format!("  CMD pid {} running", c.id()),
                    (Some(c), Some(_)) => format!("  stopping CMD pid {}", c.id()),
                    (None, _) => String::new(),
                }
            );
        }
        if let Some(c) = child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            command_status = Some(status);
            break stopping.map_or("command_exited", |s| s.0);
        }
        if stop.swap(false, Ordering::Relaxed) {
            match (child.as_ref(), stopping) {
                (None, _) => break "interrupted",
                (Some(c), None) => {
                    let sig = match last_signal().load(Ordering::Relaxed) {
                        0 => libc::SIGINT,
                        s => s as i32,
                    };
                    signal_group(c, sig);
                    stopping = Some(("interrupted", Instant::now()));
                    clear(show_progress);
                    eprintln!(
                        "cfstrace: forwarded {} to CMD (pid {}, its process group); waiting up to \
                         {} s for it to exit (again to kill it)",
                        signal_name(sig),
                        c.id(),
                        KILL_GRACE.as_secs()
                    );
                }
                (Some(c), Some(_)) => {
                    signal_group(c, libc::SIGKILL);
                    killed = true;
                    clear(show_progress);
                    eprintln!("cfstrace: sent SIGKILL to CMD (pid {})", c.id());
                }
            }
        }
        if stopping.is_none() && opts.duration.is_some_and(|d| started.elapsed() >= d) {
            match child.as_ref() {
                None => break "duration",
                Some(c) => {
                    signal_group(c, libc::SIGTERM);
                    stopping = Some(("duration", Instant::now()));
                    clear(show_progress);
                    eprintln!(
                        "cfstrace: --duration {} reached while CMD (pid {}) runs: sent SIGTERM to \
                         its process group (SIGKILL in {} s); exit status will be {EXIT_TIMEOUT}",
                        humantime::format_duration(opts.duration.unwrap_or_default()),
                        c.id(),
                        KILL_GRACE.as_secs()
                    );
                }
            }
        }
        if let (Some(c), Some((_, at))) = (child.as_ref(), stopping)
            && !killed
            && at.elapsed() >= KILL_GRACE
        {
            signal_group(c, libc::SIGKILL);
            killed = true;
            clear(show_progress);
            eprintln!(
                "cfstrace: CMD (pid {}) still running {} s after the signal: sent SIGKILL",
                c.id(),
                KILL_GRACE.as_secs()
            );
        }
    };
    clear(show_progress);
    // Events still in flight: the ring buffer is drained once more after the loop.
    session
        .drain(&mut |l: &CaptureLine| out.write_line(l))
        .map_err(|e| poll_error(e, &cap_err))?;
    session
        .totals(&mut |l: &CaptureLine| out.write_line(l))
        .map_err(|e| poll_error(e, &cap_err))?;
    let loss = session.losses()?;
    out.write_line(&CaptureLine::Loss(loss)).map_err(cap_err)?;
    let elapsed = started.elapsed();
    out.write_line(&CaptureLine::End(EndRecord {
        ts_ns: monotonic_ns(),
        duration_ns: elapsed.as_nanos() as u64,
        reason: reason.to_string(),
        periods: session.periods,
        lost: loss.lost() + session.decode_errors,
        command_status: command_status.map(|s| i32::from(shell_status(s))),
        async_unthrottle: session.async_events,
        irq_spans: session.irq_spans,
        kmsg_period_scaling: session.kmsg_messages,
    }))
    .map_err(cap_err)?;
    out.flush().map_err(cap_err)?;
    Ok(RecordOutcome {
        periods: session.periods,
        async_events: session.async_events,
        lost: loss.lost() + session.decode_errors,
        reason,
        command_status,
        exit_code: command_exit_code(reason, command_status),
        duration: elapsed,
    })
}

fn poll_error(
    e: PollError<crate::capture::CaptureError>,
    cap_err: &impl Fn(crate::capture::CaptureError) -> RecordError,
) -> RecordError {
    match e {
        PollError::Poll(e) => RecordError::Poll(e),
        PollError::Totals(e) => RecordError::Totals(e),
        PollError::Sink(e) => cap_err(e),
    }
}

/// Make sure what was written is on disk (a capture taken before a crash must survive it).
pub fn sync_file(path: &std::path::Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn killed_by(sig: i32) -> ExitStatus {
        ExitStatus::from_raw(sig)
    }

    #[test]
    fn exit_status_like_a_shell() {
        assert_eq!(shell_status(exited(0)), 0);
        assert_eq!(shell_status(exited(7)), 7);
        assert_eq!(shell_status(exited(255)), 255);
        assert_eq!(shell_status(killed_by(libc::SIGTERM)), 143);
        assert_eq!(shell_status(killed_by(libc::SIGINT)), 130);
        assert_eq!(shell_status(killed_by(libc::SIGKILL)), 137);
    }

    #[test]
    fn exit_code_of_record() {
        assert_eq!(
            command_exit_code("command_exited", Some(exited(7))),
            Some(7)
        );
        assert_eq!(
            command_exit_code("interrupted", Some(killed_by(libc::SIGINT))),
            Some(130)
        );
        // --duration stopped CMD: timeout(1)'s status, whatever CMD died of.
        assert_eq!(
            command_exit_code("duration", Some(killed_by(libc::SIGTERM))),
            Some(EXIT_TIMEOUT)
        );
        assert_eq!(command_exit_code("duration", None), None);
        assert_eq!(command_exit_code("interrupted", None), None);
    }

    #[test]
    fn commands_are_checked_before_anything_starts() {
        assert!(resolve_command("sh").is_ok());
        assert!(resolve_command("/bin/sh").is_ok());
        let e = resolve_command("no-such-command-cfstrace").unwrap_err();
        assert!(e.to_string().contains("not found in PATH"), "{e}");
        assert!(resolve_command("./no/such/file").is_err());
        let plain = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        let plain = plain.path().to_str().unwrap_or_default().to_string();
        assert!(resolve_command(&plain).is_err(), "not executable (0600)");
        assert!(resolve_command("/tmp").is_err(), "a directory");
        assert!(resolve_command("").is_err());
    }
}
