//! A running trace: programs attached (through `bpf`), the ring buffer drained on a timer and
//! decoded, cgroups named as they appear, kernel messages, losses and the kernel's own sums,
//! handed as capture lines to a sink (`record`'s file, `watch`'s view); signals and the
//! `-- CMD` child. Reads `bpf`, `cgroups`, `capture` and `model`; never analysis, report or
//! render.
pub mod child;
pub mod decode;
pub mod kmsg;
pub mod naming;
pub mod ring;
pub mod signals;

use std::io::{self};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::time::{Interval, MissedTickBehavior};

use crate::bpf::loader::{ProbeError, Tracer, TracerOptions};
use crate::bpf::logs::KernelLog;
use crate::capture::{
    CAPTURE_SCHEMA, CaptureHeader, CaptureLine, CpuTotalsRecord, LossRecord, ProbeStatus,
    UnsentPeriodsRecord,
};
use crate::cgroups::{self, CgroupNamer};
use crate::model::bounded::IdMap;
use crate::model::host;
use crate::model::probe::{Probe, Style};
use crate::model::timers::TimerIds;
use decode::Event;
use kmsg::KmsgWatch;
use naming::Naming;
use ring::raise_priority;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupFsError),
    #[error(transparent)]
    Create(#[from] crate::outfile::OutFileError),
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
    #[error("waiting for /dev/kmsg: {0}")]
    Kmsg(io::Error),
    #[error("waiting for CMD: {0}")]
    Wait(io::Error),
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

/// How often the reader drains the ring buffer on its own. The programs submit without waking
/// it (see `tracer_ebpf::RingConfig`), so this, not the event rate, sets how often it runs; a
/// buffer filling faster than this wakes it at half full.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// How long [`Session::settle`] waits for open frames to close: a callback or a timer
/// interrupt takes microseconds; a frame left open by a missed exit never closes.
pub const SETTLE_LIMIT: Duration = Duration::from_millis(200);
/// How often `record` writes the kernel's totals (and at the end).
pub const TOTALS_INTERVAL: Duration = Duration::from_secs(10);

/// Attached programs plus everything needed to turn their events into capture lines.
pub struct Session {
    tracer: Tracer,
    /// Readable only at a real wakeup (the buffer past its threshold); `drain_tick` does the
    /// rest.
    ring: AsyncFd<RingBuf<MapData>>,
    drain_tick: Interval,
    /// Each cgroup's callback count in the last totals written (a forgotten id only writes its
    /// totals again), and each CPU's interrupt count.
    totals_written: IdMap<u64>,
    cpu_totals_written: Vec<u64>,
    naming: Naming,
    /// Each cgroup's period in its last callback: a change re-names the cgroup, so the
    /// capture records what its file says right after (a write shows there). A forgotten id
    /// misses one re-name at most.
    periods_seen: IdMap<u64>,
    /// The run's period-timer ids: the decoder turns each timer's kernel address into one.
    timer_ids: TimerIds,
    /// The kernel's "period too short" messages; None if /dev/kmsg cannot be read.
    kmsg: Option<AsyncFd<KmsgWatch>>,
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
    /// The programs' `--log-level` messages, printed on stderr as they come (None at `off`).
    /// Last, so it drops after `tracer`: its final drain sees the detached programs' last
    /// words.
    kernel_log: Option<AsyncFd<KernelLog>>,
}

impl Session {
    pub fn start(
        opts: &TracerOptions,
        command: Option<Vec<String>>,
    ) -> Result<Session, RecordError> {
        let hierarchy = cgroups::find_cpu_hierarchy()?;
        let mut tracer = Tracer::start(opts)?;
        let ring = tracer.take_events()?;
        let kernel_log = match tracer.take_logger()? {
            Some(l) => Some(readable(l).map_err(RecordError::Poll)?),
            None => None,
        };
        if let Some(w) = raise_priority(opts.rt_priority) {
            eprintln!("cfstrace: warning: {w}");
        }
        // Opened before the header so it can say whether the kernel's own word is heard.
        let (kmsg, kmsg_status) = match KmsgWatch::open().and_then(readable) {
            Ok(k) => (
                Some(k),
                ProbeStatus::attached(
                    Style::Read,
                    "/dev/kmsg (\"cfs_period_timer[cpuN]: period too short\")",
                ),
            ),
            Err(e) => (
                None,
                ProbeStatus {
                    target: Some("/dev/kmsg".into()),
                    ..ProbeStatus::not_attached(format!(
                        "cannot read /dev/kmsg ({e}): kernel period rescaling is judged from the \
                         events alone"
                    ))
                },
            ),
        };
        let mut probes = tracer.probes.clone();
        probes.insert(Probe::Kmsg, kmsg_status);
        let started_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let header = CaptureHeader {
            schema: CAPTURE_SCHEMA.to_string(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            host: host::host_facts(),
            backend_requested: opts.backend,
            backend: tracer.frame_backend,
            probes,
            cpu_hierarchy: Some(hierarchy.clone()),
            started_unix_ns,
            started_mono_ns: monotonic_ns(),
            command,
        };
        let ring = readable(ring).map_err(RecordError::Poll)?;
        let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
        // A late tick (a slow sink) is one drain, not a burst of them.
        drain_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Session {
            tracer,
            ring,
            drain_tick,
            totals_written: IdMap::default(),
            cpu_totals_written: Vec::new(),
            naming: Naming::start(CgroupNamer::new(hierarchy).without_cmdlines(opts.no_cmdline)),
            periods_seen: IdMap::default(),
            timer_ids: TimerIds::default(),
            kmsg,
            header,
            periods: 0,
            async_events: 0,
            irq_spans: 0,
            decode_errors: 0,
            kmsg_messages: 0,
            kernel_log,
        })
    }

    /// Wait for the next thing to do: the drain tick, a ring-buffer wakeup, a kernel message
    /// or a cgroup's name. Cancel-safe: it only waits, [`Session::handle`] does the work, so
    /// it can race other branches of a `select!`.
    pub async fn wait(&mut self) -> Result<Wake, RecordError> {
        let kmsg = readiness(self.kmsg.as_ref());
        let kernel_log = readiness(self.kernel_log.as_ref());
        tokio::select! {
            _ = self.drain_tick.tick() => Ok(Wake::Drain),
            g = self.ring.readable_mut() => {
                g.map_err(RecordError::Poll)?.clear_ready();
                Ok(Wake::Drain)
            }
            r = kmsg => {
                r.map_err(RecordError::Kmsg)?;
                Ok(Wake::Kmsg)
            }
            r = kernel_log => {
                r.map_err(RecordError::Poll)?;
                Ok(Wake::KernelLog)
            }
            Some(answer) = self.naming.next() => Ok(Wake::Named(Box::new(answer))),
        }
    }

    /// Do what [`Session::wait`] woke up for, handing the capture lines to `sink`: a cgroup's
    /// naming line comes before its first period or async line.
    pub fn handle<E>(&mut self, wake: Wake, sink: &mut impl Sink<E>) -> Result<(), PollError<E>> {
        match wake {
            Wake::Drain => self.drain_ring(sink),
            Wake::Kmsg => self.read_kmsg(sink),
            Wake::KernelLog => {
                if let Some(k) = self.kernel_log.as_mut() {
                    k.get_mut().drain();
                }
                Ok(())
            }
            Wake::Named(answer) => self.naming.named(*answer, sink).map_err(PollError::Sink),
        }
    }

    fn read_kmsg<E>(&mut self, sink: &mut impl Sink<E>) -> Result<(), PollError<E>> {
        if let Some(k) = self.kmsg.as_mut() {
            for m in k.get_mut().poll() {
                self.kmsg_messages += 1;
                sink(&CaptureLine::KmsgPeriodScaling(m)).map_err(PollError::Sink)?;
            }
        }
        Ok(())
    }

    /// The kernel's totals that changed since the last call, as capture lines.
    pub fn totals<E>(&mut self, sink: &mut impl Sink<E>) -> Result<(), PollError<E>> {
        let ts_ns = monotonic_ns();
        let mut cgroups = self.tracer.unsent_periods().map_err(PollError::Totals)?;
        cgroups.sort_unstable_by_key(|(id, _)| *id);
        for (id, t) in cgroups {
            if self.totals_written.get(&id) == Some(&t.sums.periods) {
                continue;
            }
            self.totals_written.insert(id, t.sums.periods);
            sink(&CaptureLine::UnsentPeriods(UnsentPeriodsRecord {
                ts_ns,
                id,
                sums: t.sums,
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

    /// At the end: everything the ring buffer still holds, the kernel messages logged since
    /// the last read, and the names still being worked out (see [`naming`]).
    pub async fn finish<E>(&mut self, sink: &mut impl Sink<E>) -> Result<(), PollError<E>> {
        self.read_kmsg(sink)?;
        self.drain_ring(sink)?;
        self.naming.finish(sink).await.map_err(PollError::Sink)
    }

    fn drain_ring<E>(&mut self, sink: &mut impl Sink<E>) -> Result<(), PollError<E>> {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            let rec = match decode::decode(&item, &mut self.timer_ids) {
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
            self.naming
                .line(id, rename, line, sink)
                .map_err(PollError::Sink)?;
        }
        // Cgroups named before their processes arrived are read again now and then.
        self.naming.reread_round(std::time::Instant::now());
        Ok(())
    }

    /// At the end, before the last totals, drain and losses: disarm the programs and wait
    /// (at most [`SETTLE_LIMIT`]) until every frame opened before that has closed. From then
    /// on the kernel's counters stand still, so the callbacks it counted are exactly those in
    /// the ring buffer plus those it summed as lost, and its loss counters are final.
    pub async fn settle(&mut self) -> Result<(), ProbeError> {
        self.tracer.disarm()?;
        let until = tokio::time::Instant::now() + SETTLE_LIMIT;
        loop {
            // A program that saw "armed" just before the write opens its frame within
            // microseconds (it runs with interrupts off): look after that.
            tokio::time::sleep(Duration::from_millis(1)).await;
            if self.tracer.settled()? || tokio::time::Instant::now() >= until {
                return Ok(());
            }
        }
    }

    pub fn losses(&self) -> Result<LossRecord, ProbeError> {
        self.tracer.losses(monotonic_ns())
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }
}

/// `inner`'s fd in the runtime's epoll, for readability.
fn readable<T: std::os::fd::AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: every user (the ring buffer's map, /dev/kmsg's file, aya-log's ring) owns its
    // fd, keeps it open and unchanged for as long as it lives, and lives as long as the
    // AsyncFd.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// `[bucket, count]` of the non-empty buckets of an in-kernel histogram.
fn nonzero_buckets(h: &[u32]) -> Vec<(u32, u32)> {
    h.iter()
        .enumerate()
        .filter(|(_, n)| **n != 0)
        .map(|(b, n)| (b as u32, *n))
        .collect()
}

/// The next readiness of an optional source (its readiness cleared: the caller reads it all);
/// never, without one.
async fn readiness<T: std::os::fd::AsRawFd>(fd: Option<&AsyncFd<T>>) -> io::Result<()> {
    match fd {
        Some(f) => f.readable().await.map(|mut g| g.clear_ready()),
        None => std::future::pending().await,
    }
}

/// What a session woke up for.
#[derive(Debug)]
pub enum Wake {
    /// The drain tick or a ring-buffer wakeup.
    Drain,
    /// /dev/kmsg has news.
    Kmsg,
    /// The programs logged (`--log-level`).
    KernelLog,
    /// A cgroup's name, or a re-read of one, is ready.
    Named(Box<naming::Answer>),
}

/// Where a session hands its capture lines (the writer, the live view); its error stops the
/// session.
pub trait Sink<E>: FnMut(&CaptureLine) -> Result<(), E> {}
impl<E, F: FnMut(&CaptureLine) -> Result<(), E>> Sink<E> for F {}

#[derive(Debug)]
pub enum PollError<E> {
    Totals(ProbeError),
    Sink(E),
}
