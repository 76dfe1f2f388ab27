//! The hot capture lines (period, irq_span, async_unthrottle) written and read by hand,
//! byte-identical to serde's output (tested), without serde's per-field dispatch: the writer
//! and `report` have to keep up with millions of lines a second. Anything not exactly this
//! shape is left to serde.
use crate::model::cpuset::CpuSet;
use crate::model::records::{AsyncRecord, IrqSpanRecord, PeriodRecord};

/// What serde writes first for a period record; lets the hot path skip the tagged-enum
/// machinery (which buffers every field) for the one kind that matters for speed.
pub(super) const PERIOD_PREFIX: &[u8] = br#"{"kind":"period","#;

/// The period record's numeric keys in declaration order (what serde writes after the tag);
/// `spread_cpus`, a string, follows when not empty.
const PERIOD_KEYS: [&[u8]; 16] = [
    b"ts_ns",
    b"cpu",
    b"duration_ns",
    b"cgroup_id",
    b"timer",
    b"loops",
    b"unthrottled",
    b"enqueued",
    b"runnable",
    b"period_ns",
    b"quota_ns",
    b"flags",
    b"span_ts_ns",
    b"spread",
    b"spread_overflow",
    b"queued",
];
const SPREAD_CPUS_KEY: &[u8] = br#","spread_cpus":""#;

/// The irq_span line's prefix and keys, as serde writes them.
pub(super) const SPAN_PREFIX: &[u8] = br#"{"kind":"irq_span","#;
const SPAN_KEYS: [&[u8]; 6] = [
    b"ts_ns",
    b"cpu",
    b"duration_ns",
    b"timers",
    b"timers_ns",
    b"flags",
];

fn span_values(x: &IrqSpanRecord) -> [u64; 6] {
    [
        x.ts_ns,
        u64::from(x.cpu),
        x.duration_ns,
        u64::from(x.timers),
        x.timers_ns,
        u64::from(x.flags),
    ]
}

/// The async line's prefix and keys, as serde writes them (tested like the period's).
pub(super) const ASYNC_PREFIX: &[u8] = br#"{"kind":"async_unthrottle","#;
const ASYNC_KEYS: [&[u8]; 11] = [
    b"ts_ns",
    b"cpu",
    b"duration_ns",
    b"cgroup_id",
    b"csd_ts_ns",
    b"csd_ns",
    b"segment",
    b"unthrottled",
    b"enqueued",
    b"runnable",
    b"flags",
];

fn async_values(a: &AsyncRecord) -> [u64; 11] {
    [
        a.ts_ns,
        u64::from(a.cpu),
        a.duration_ns,
        a.cgroup_id,
        a.csd_ts_ns,
        a.csd_ns,
        u64::from(a.segment),
        u64::from(a.unthrottled),
        u64::from(a.enqueued),
        u64::from(a.runnable),
        u64::from(a.flags),
    ]
}

fn period_values(p: &PeriodRecord) -> [u64; 16] {
    [
        p.ts_ns,
        u64::from(p.cpu),
        p.duration_ns,
        p.cgroup_id,
        p.timer,
        u64::from(p.loops),
        u64::from(p.unthrottled),
        u64::from(p.enqueued),
        u64::from(p.runnable),
        p.period_ns,
        p.quota_ns,
        u64::from(p.flags),
        p.span_ts_ns,
        u64::from(p.spread),
        u64::from(p.spread_overflow),
        u64::from(p.queued),
    ]
}

#[inline]
pub(super) fn push_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `{"kind":"<kind>","key":…,…}` without serde's per-field dispatch: the writer has to keep
/// up with millions of callbacks a second.
fn encode_fields(buf: &mut Vec<u8>, prefix: &[u8], keys: &[&[u8]], values: &[u64]) {
    encode_numbers(buf, prefix, keys, values);
    buf.push(b'}');
}

/// The numeric fields without the closing brace.
fn encode_numbers(buf: &mut Vec<u8>, prefix: &[u8], keys: &[&[u8]], values: &[u64]) {
    buf.extend_from_slice(prefix);
    for (i, (key, &v)) in keys.iter().zip(values).enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.push(b'"');
        buf.extend_from_slice(key);
        buf.extend_from_slice(b"\":");
        push_u64(buf, v);
    }
}

pub(super) fn encode_period(buf: &mut Vec<u8>, p: &PeriodRecord) {
    encode_numbers(buf, PERIOD_PREFIX, &PERIOD_KEYS, &period_values(p));
    if !p.spread_cpus.is_empty() {
        // A CPU list is digits, '-' and ',': nothing to escape.
        buf.extend_from_slice(SPREAD_CPUS_KEY);
        buf.extend_from_slice(p.spread_cpus.to_list().as_bytes());
        buf.push(b'"');
    }
    buf.push(b'}');
}

pub(super) fn encode_span(buf: &mut Vec<u8>, x: &IrqSpanRecord) {
    encode_fields(buf, SPAN_PREFIX, &SPAN_KEYS, &span_values(x));
}

pub(super) fn encode_async(buf: &mut Vec<u8>, a: &AsyncRecord) {
    encode_fields(buf, ASYNC_PREFIX, &ASYNC_KEYS, &async_values(a));
}

/// Strict parser for exactly what `encode_fields` writes (optional trailing newline). Anything
/// else returns None and goes to serde, so this only has to be right, not complete.
fn decode_fields<const N: usize>(
    line: &[u8],
    prefix: &[u8],
    keys: &[&[u8]; N],
) -> Option<[u64; N]> {
    let (v, s) = decode_numbers(line, prefix, keys)?;
    end_of_object(s)?;
    Some(v)
}

/// `}` and an optional newline, nothing else.
fn end_of_object(s: &[u8]) -> Option<()> {
    let s = s.strip_prefix(b"}")?;
    (s.is_empty() || s == b"\n" || s == b"\r\n").then_some(())
}

/// The numeric fields; returns what follows them.
fn decode_numbers<'a, const N: usize>(
    line: &'a [u8],
    prefix: &[u8],
    keys: &[&[u8]; N],
) -> Option<([u64; N], &'a [u8])> {
    let mut s = line.strip_prefix(prefix)?;
    let mut v = [0u64; N];
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            s = s.strip_prefix(b",")?;
        }
        s = s
            .strip_prefix(b"\"")?
            .strip_prefix(*key)?
            .strip_prefix(b"\":")?;
        let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
        // JSON has no leading zeros; 20 digits is u64's most.
        if digits == 0 || digits > 20 || (digits > 1 && s[0] == b'0') {
            return None;
        }
        let mut n: u64 = 0;
        for &d in &s[..digits] {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        v[i] = n;
        s = &s[digits..];
    }
    Some((v, s))
}

pub(super) fn decode_period(line: &[u8]) -> Option<PeriodRecord> {
    let (v, mut rest) = decode_numbers(line, PERIOD_PREFIX, &PERIOD_KEYS)?;
    let mut spread_cpus = CpuSet::default();
    if let Some(tail) = rest.strip_prefix(SPREAD_CPUS_KEY) {
        let n = tail.iter().position(|&b| b == b'"')?;
        let list = std::str::from_utf8(&tail[..n]).ok()?;
        // An empty list is never written: another writer, left to serde.
        if list.is_empty() {
            return None;
        }
        spread_cpus = CpuSet::parse_list(list)?;
        rest = &tail[n + 1..];
    }
    end_of_object(rest)?;
    let u32_at = |i: usize| u32::try_from(v[i]).ok();
    Some(PeriodRecord {
        ts_ns: v[0],
        cpu: u32_at(1)?,
        duration_ns: v[2],
        cgroup_id: v[3],
        timer: v[4],
        loops: u32_at(5)?,
        unthrottled: u32_at(6)?,
        enqueued: u32_at(7)?,
        runnable: u32_at(8)?,
        period_ns: v[9],
        quota_ns: v[10],
        flags: u32_at(11)?,
        span_ts_ns: v[12],
        spread: u32_at(13)?,
        spread_overflow: u32_at(14)?,
        queued: u32_at(15)?,
        spread_cpus,
    })
}

pub(super) fn decode_span(line: &[u8]) -> Option<IrqSpanRecord> {
    let v = decode_fields(line, SPAN_PREFIX, &SPAN_KEYS)?;
    let u32_at = |i: usize| u32::try_from(v[i]).ok();
    Some(IrqSpanRecord {
        ts_ns: v[0],
        cpu: u32_at(1)?,
        duration_ns: v[2],
        timers: u32_at(3)?,
        timers_ns: v[4],
        flags: u32_at(5)?,
    })
}

pub(super) fn decode_async(line: &[u8]) -> Option<AsyncRecord> {
    let v = decode_fields(line, ASYNC_PREFIX, &ASYNC_KEYS)?;
    let u32_at = |i: usize| u32::try_from(v[i]).ok();
    Some(AsyncRecord {
        ts_ns: v[0],
        cpu: u32_at(1)?,
        duration_ns: v[2],
        cgroup_id: v[3],
        csd_ts_ns: v[4],
        csd_ns: v[5],
        segment: u32_at(6)?,
        unthrottled: u32_at(7)?,
        enqueued: u32_at(8)?,
        runnable: u32_at(9)?,
        flags: u32_at(10)?,
    })
}
