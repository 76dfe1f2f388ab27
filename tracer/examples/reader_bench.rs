//! P3 of `cargo xtask bench`: the reader's throughput on one core, fed from memory.
//!
//! Raw kernel records (the `tracer_ebpf` types the programs submit: `PeriodEventNarrow`,
//! `IrqSpanEvent`) are laid out in one buffer, as the ring buffer hands them over, and run
//! through the exact path a session takes: `session::decode::decode`, the per-event bookkeeping
//! of `session::Session`'s drain (cgroups seen, periods seen), the `CaptureLine`, then
//! `analysis::Aggregator::feed` (what `watch` does with it), `CaptureWriter::write_line` into a sink (what
//! `record` does), or both. The cgroup namer's filesystem reads are left out: its naming lines
//! are built once, up front. With `--capture FILE` it also writes a capture of `--lines` period
//! lines with the `CaptureWriter` (byte-identical to what `record` writes) for timing
//! `cfstrace report FILE --json`.
//!
//! An example of the tracer crate rather than a bench binary under xtask: xtask cannot depend
//! on the tracer library (building it builds the eBPF object, which needs the toolchain xtask
//! installs), and an example links the library's public API exactly as it ships.
//!
//! `cargo run --release -p tracer --example reader_bench -- --events 2000000 --reps 5`
//! prints one JSON line of figures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::PathBuf;
use std::time::Instant;

use cfstrace::analysis::Aggregator;
use cfstrace::capture::{
    CAPTURE_SCHEMA, CaptureHeader, CaptureLine, CaptureWriter, CgroupFacts, CgroupRecord,
    CpuHierarchy, EndRecord, LossRecord, ProbeStatus, ProcessInfo,
};
use cfstrace::model::probe::{Backend, Probe, StopReason, Style};
use cfstrace::model::timers::TimerIds;
use cfstrace::model::{host, workload};
use cfstrace::session::decode::{self, Event};
use clap::Parser;
use tracer_ebpf::{
    EVENT_IRQ_SPAN, EVENT_PERIOD, HOW_CGROUP, HOW_ENQUEUE_ENTITY, HOW_FRAME_FENTRY,
    HOW_FRAME_TRACEPOINT, HOW_IN_SPAN, HOW_LOOPS, HOW_PERIOD, HOW_QUEUED, HOW_SPREAD,
    HOW_UNTHROTTLE, IrqSpanEvent, PeriodEvent, PeriodEventNarrow,
};

#[derive(Parser)]
struct Args {
    /// Raw records in the buffer.
    #[arg(long, default_value_t = 2_000_000)]
    events: usize,
    /// Passes over the buffer per stage (each with a fresh aggregator and writer).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Distinct cgroups the period records name.
    #[arg(long, default_value_t = 2_000)]
    cgroups: u64,
    /// Also write a capture here for `cfstrace report` ...
    #[arg(long)]
    capture: Option<PathBuf>,
    /// ... with this many period lines.
    #[arg(long, default_value_t = 1_200_000)]
    lines: usize,
}

/// A small LCG: the same pseudo-random records every run, no dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below.max(1)
    }
}

fn bytes_of<T>(v: &T) -> &[u8] {
    // SAFETY: the repr(C) integer-only event types, viewed as bytes, as the kernel writes them.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

const CPUS: u32 = 48;
const PERIOD_NS: u64 = 10_000_000;
const FIRST_ID: u64 = 10_000;

/// The CPUs of `n` unthrottled cfs_rqs: a run of `n` CPUs from `first`, wrapping at
/// [`CPUS`] (a storm's cgroup is throttled on a block of CPUs; a random scatter would make the
/// capture's CPU lists, and so the writer's work, longer than a node usually gives).
fn spread(n: u32, first: u32) -> u64 {
    (0..n).fold(0, |m, i| m | 1 << ((first + i) % CPUS))
}

/// The records: spans of 1 to 4 period-timer callbacks each (cgroups round-robin over 48
/// CPUs, as on a node with many quotas), each span followed by its irq_span record; a buffer
/// and each record's (offset, length).
fn raw_records(n: usize, cgroups: u64) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut rng = Lcg(42);
    let mut buf = Vec::with_capacity(n * 140);
    let mut index = Vec::with_capacity(n);
    let mut ts = 1_000_000_000u64;
    let mut i = 0u64;
    while index.len() < n {
        let cpu = (i % u64::from(CPUS)) as u32;
        let span_start = ts;
        let k = 1 + (i % 4);
        let mut timers_ns = 0;
        for _ in 0..k {
            let duration_ns = 1_000 + rng.next(40_000);
            let unthrottled = rng.next(CPUS as u64) as u32;
            let e = PeriodEventNarrow {
                head: PeriodEvent {
                    kind: EVENT_PERIOD,
                    cpu,
                    start_ns: ts,
                    duration_ns,
                    cgroup_id: FIRST_ID + i % cgroups,
                    timer: 0xffff_8880_0000_0000 + (i % cgroups) * 0x400,
                    period_ns: PERIOD_NS,
                    quota_ns: 1_000_000,
                    span_start_ns: span_start,
                    loops: 1,
                    unthrottled,
                    enqueued: unthrottled * 2,
                    runnable: 0,
                    flags: HOW_FRAME_FENTRY
                        | HOW_LOOPS
                        | HOW_UNTHROTTLE
                        | HOW_ENQUEUE_ENTITY
                        | HOW_CGROUP
                        | HOW_PERIOD
                        | HOW_IN_SPAN
                        | HOW_SPREAD
                        | HOW_QUEUED,
                    spread_overflow: 0,
                    queued: unthrottled * 3,
                    spread_words: 1,
                },
                spread_mask: [spread(unthrottled, rng.next(u64::from(CPUS)) as u32)],
            };
            index.push((buf.len(), size_of_val(&e)));
            buf.extend_from_slice(bytes_of(&e));
            ts += duration_ns + 200;
            timers_ns += duration_ns;
            i += 1;
        }
        let span = IrqSpanEvent {
            kind: EVENT_IRQ_SPAN,
            cpu,
            start_ns: span_start,
            duration_ns: ts - span_start + 2_000,
            timers_ns,
            timers: k as u32,
            flags: HOW_FRAME_TRACEPOINT,
        };
        index.push((buf.len(), size_of_val(&span)));
        buf.extend_from_slice(bytes_of(&span));
        ts += 5_000;
    }
    index.truncate(n);
    (buf, index)
}

fn naming(id: u64) -> CgroupRecord {
    let n = id - FIRST_ID;
    let path = format!("/hadoop-yarn/container_e06_1512098667219_{n:06}_01_000020");
    CgroupRecord {
        facts: CgroupFacts {
            id,
            workload: workload::classify(&path),
            path: Some(path),
            processes: vec![ProcessInfo {
                pid: 1000 + n as u32,
                comm: "python".into(),
                cmdline: Some("python task.py".into()),
                cpu_ticks: 100,
            }],
            period_us: Some(PERIOD_NS / 1000),
            quota_us: Some(1000),
        },
        note: None,
        parents: Some(Vec::new()),
    }
}

/// `session::Session`'s drain without its ring buffer and namer: decode each record, note
/// the cgroup and its period, hand a naming line first for a new cgroup, then the record's
/// line, to `sink`.
struct Reader {
    named: HashSet<u64>,
    periods_seen: HashMap<u64, u64>,
    names: HashMap<u64, CgroupRecord>,
    /// Timer addresses to ids, as the session maps them.
    timer_ids: TimerIds,
}

impl Reader {
    fn new(names: &HashMap<u64, CgroupRecord>) -> Reader {
        Reader {
            named: HashSet::new(),
            periods_seen: HashMap::new(),
            names: names.clone(),
            timer_ids: TimerIds::default(),
        }
    }

    /// Whether a naming line goes before this record: its cgroup is new, or its period
    /// changed (the session re-reads the cgroup's file then).
    fn needs_naming(&mut self, rec: &Event) -> bool {
        let id = rec.cgroup_id();
        if id == 0 {
            return false;
        }
        let period = match rec {
            Event::Period(p) if p.period_ns != 0 => Some(p.period_ns),
            _ => None,
        };
        let renamed = period.is_some_and(|ns| {
            let old = self.periods_seen.insert(id, ns);
            old.is_some_and(|o| o != ns)
        });
        self.named.insert(id) || renamed
    }

    fn drain(&mut self, buf: &[u8], index: &[(usize, usize)], sink: &mut impl FnMut(&CaptureLine)) {
        for &(at, len) in index {
            let Ok(rec) = decode::decode(&buf[at..at + len], &mut self.timer_ids) else {
                panic!("a record the bench built does not decode");
            };
            if self.needs_naming(&rec) {
                let id = rec.cgroup_id();
                let c = self.names.get(&id).cloned().unwrap_or_else(|| naming(id));
                sink(&CaptureLine::Cgroup(Box::new(c)));
            }
            let line = match rec {
                Event::Period(p) => CaptureLine::Period(p),
                Event::Async(a) => CaptureLine::AsyncUnthrottle(a),
                Event::IrqSpan(x) => CaptureLine::IrqSpan(x),
            };
            sink(&line);
        }
    }
}

fn header() -> CaptureHeader {
    let probes = BTreeMap::from([
        (
            Probe::PeriodTimer,
            ProbeStatus::attached(Style::Fentry, "sched_cfs_period_timer"),
        ),
        (
            Probe::IrqSpan,
            ProbeStatus::attached(Style::Tracepoint, "local_timer_entry/exit"),
        ),
        (
            Probe::Distribute,
            ProbeStatus::attached(Style::Fentry, "distribute_cfs_runtime"),
        ),
        (
            Probe::Unthrottle,
            ProbeStatus::attached(Style::Fentry, "unthrottle_cfs_rq"),
        ),
        (
            Probe::Enqueue,
            ProbeStatus::attached(Style::Fentry, "enqueue_entity"),
        ),
    ]);
    let mut host = host::host_facts();
    host.ncpus = CPUS;
    CaptureHeader {
        schema: CAPTURE_SCHEMA.to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        host,
        backend_requested: Backend::Auto,
        backend: Style::Fentry,
        probes,
        cpu_hierarchy: Some(CpuHierarchy {
            version: 2,
            mount: "/sys/fs/cgroup".into(),
        }),
        started_unix_ns: 1_700_000_000_000_000_000,
        started_mono_ns: 1_000_000_000,
        command: None,
    }
}

/// Events per second of each pass of `stage` over the buffer.
fn time(reps: usize, n: usize, mut stage: impl FnMut()) -> Vec<f64> {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            stage();
            n as f64 / t.elapsed().as_secs_f64()
        })
        .collect()
}

/// A capture for `cfstrace report`: the header, a naming line before each cgroup's first
/// callback, `lines` period lines with their irq_span lines, loss and end lines.
fn write_capture(path: &PathBuf, lines: usize, cgroups: u64) -> io::Result<serde_json::Value> {
    let (buf, index) = raw_records(lines + lines / 2, cgroups);
    let names: HashMap<u64, CgroupRecord> = HashMap::new();
    let file = BufWriter::new(File::create(path)?);
    let mut out = CaptureWriter::new(file, &header()).map_err(io::Error::other)?;
    let (mut periods, mut last_ts) = (0u64, 0u64);
    let mut spans = 0u64;
    let mut reader = Reader::new(&names);
    let mut err = None;
    let mut cut = index.len();
    // Stop right after the span holding the `lines`-th period line.
    let mut seen = 0;
    for (i, &(at, _)) in index.iter().enumerate() {
        let kind = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        if kind == EVENT_PERIOD {
            seen += 1;
        } else if seen >= lines {
            cut = i + 1;
            break;
        }
    }
    reader.drain(&buf, &index[..cut], &mut |l| {
        match l {
            CaptureLine::Period(p) => {
                periods += 1;
                last_ts = p.ts_ns;
            }
            CaptureLine::IrqSpan(_) => spans += 1,
            _ => {}
        }
        if let Err(e) = out.write_line(l)
            && err.is_none()
        {
            err = Some(e);
        }
    });
    if let Some(e) = err {
        return Err(io::Error::other(e));
    }
    let end_ts = last_ts + 1_000_000;
    let dur = end_ts - header().started_mono_ns;
    let w =
        |out: &mut CaptureWriter<_>, l: CaptureLine| out.write_line(&l).map_err(io::Error::other);
    w(
        &mut out,
        CaptureLine::Loss(LossRecord {
            ts_ns: end_ts,
            ..LossRecord::default()
        }),
    )?;
    w(
        &mut out,
        CaptureLine::End(EndRecord {
            ts_ns: end_ts,
            duration_ns: dur,
            reason: StopReason::Duration,
            periods,
            lost: 0,
            command_status: None,
            async_unthrottle: 0,
            irq_spans: spans,
            kmsg_period_scaling: 0,
        }),
    )?;
    let written = out.lines_written();
    out.into_inner().map_err(io::Error::other)?;
    Ok(serde_json::json!({
        "path": path,
        "lines": written + 1,
        "period_lines": periods,
        "irq_span_lines": spans,
        "bytes": std::fs::metadata(path)?.len(),
    }))
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let (buf, index) = raw_records(args.events, args.cgroups);
    let n = index.len();
    let names: HashMap<u64, CgroupRecord> = (0..args.cgroups)
        .map(|i| (FIRST_ID + i, naming(FIRST_ID + i)))
        .collect();
    let hdr = header();

    let decode_aggregate = time(args.reps, n, || {
        let mut agg = Aggregator::new();
        Reader::new(&names).drain(&buf, &index, &mut |l| agg.feed(l));
        std::hint::black_box(agg.periods());
    });
    let decode_write = time(args.reps, n, || {
        let mut out = CaptureWriter::new(io::sink(), &hdr).expect("header");
        Reader::new(&names).drain(&buf, &index, &mut |l| out.write_line(l).expect("sink"));
        std::hint::black_box(out.lines_written());
    });
    let decode_aggregate_write = time(args.reps, n, || {
        let mut agg = Aggregator::new();
        let mut out = CaptureWriter::new(io::sink(), &hdr).expect("header");
        Reader::new(&names).drain(&buf, &index, &mut |l| {
            agg.feed(l);
            out.write_line(l).expect("sink");
        });
        std::hint::black_box((agg.periods(), out.lines_written()));
    });
    let capture = match &args.capture {
        Some(p) => write_capture(p, args.lines, args.cgroups)?,
        None => serde_json::Value::Null,
    };
    let periods = index
        .iter()
        .filter(|(at, _)| {
            u32::from_ne_bytes(buf[*at..*at + 4].try_into().expect("4")) == EVENT_PERIOD
        })
        .count();
    let out = serde_json::json!({
        "events": n,
        "period_records": periods,
        "buffer_bytes": buf.len(),
        "cgroups": args.cgroups,
        "decode_aggregate_eps": decode_aggregate,
        "decode_write_eps": decode_write,
        "decode_aggregate_write_eps": decode_aggregate_write,
        "capture": capture,
    });
    println!("{out}");
    Ok(())
}
