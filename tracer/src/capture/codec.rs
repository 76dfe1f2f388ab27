//! The hot capture lines (period, irq_span, async_unthrottle) written and read by hand,
//! byte-identical to serde's output (tested), without serde's per-field dispatch: the writer
//! and `report` have to keep up with millions of lines a second. Anything not exactly this
//! shape is left to serde.
use crate::model::cpuset::CpuSet;
use crate::model::records::{
    AsyncRecord, BANDWIDTH_FROM, ENQUEUED_FROM, IrqSpanRecord, LOOPS_FROM, PeriodRecord,
    QUEUED_FROM, RUNNABLE_FROM, SPREAD_FROM, UNTHROTTLED_FROM,
};
use bytes::{BufMut as _, BytesMut};

/// What serde writes first for a period record; lets the hot path skip the tagged-enum
/// machinery (which buffers every field) for the one kind that matters for speed.
pub(super) const PERIOD_PREFIX: &[u8] = br#"{"kind":"period","#;

/// Declares a hot record's numeric fields once, in the order serde writes them: their keys,
/// their values as u64, and the record rebuilt from those values (u32 fields range-checked),
/// so the writer and the reader cannot disagree on a field.
macro_rules! hot_fields {
    ($rec:ident, $keys:ident, $values:ident, $build:ident,
     [$($field:ident: $kind:ident),+ $(,)?] $(, $extra:ident: $extra_ty:ty)*) => {
        const $keys: [&[u8]; [$(stringify!($field)),+].len()] =
            [$(stringify!($field).as_bytes()),+];

        fn $values(r: &$rec) -> [u64; $keys.len()] {
            [$(u64::from(r.$field)),+]
        }

        fn $build(v: [u64; $keys.len()] $(, $extra: $extra_ty)*) -> Option<$rec> {
            let mut it = v.into_iter();
            // Struct fields are evaluated in the order written: the keys' order.
            Some($rec { $($field: hot_fields!(@take it, $kind)),+ $(, $extra)* })
        }
    };
    (@take $it:ident, u64) => { $it.next()? };
    (@take $it:ident, u32) => { u32::try_from($it.next()?).ok()? };
}

hot_fields!(PeriodRecord, PERIOD_KEYS, period_values, period_from, [
    ts_ns: u64, cpu: u32, duration_ns: u64, cgroup_id: u64, timer_id: u32, loops: u32,
    unthrottled: u32, enqueued: u32, runnable: u32, period_ns: u64, quota_ns: u64, flags: u32,
    span_ts_ns: u64, spread: u32, spread_overflow: u32, queued: u32,
], spread_cpus: CpuSet);

/// The `HOW_*` bits each period field needs to be a figure (0: always one); without them it is
/// written `null`, as serde writes [`crate::model::records::PeriodWire`].
const PERIOD_NEEDS: [u32; PERIOD_KEYS.len()] = [
    0,
    0,
    0,
    0,
    0,
    LOOPS_FROM,
    UNTHROTTLED_FROM,
    ENQUEUED_FROM,
    RUNNABLE_FROM,
    BANDWIDTH_FROM,
    BANDWIDTH_FROM,
    0,
    0,
    SPREAD_FROM,
    SPREAD_FROM,
    QUEUED_FROM,
];
/// Where the flags sit among a record's values.
const PERIOD_FLAGS: usize = 11;
/// Where the timer sits: `timer_id`, or in captures written before it `timer`, the kernel
/// address the reader turns into an id.
const PERIOD_TIMER: usize = 4;
const LEGACY_PERIOD_KEYS: [&[u8]; PERIOD_KEYS.len()] = {
    let mut k = PERIOD_KEYS;
    k[PERIOD_TIMER] = b"timer";
    k
};

/// `spread_cpus`, a string, follows the period's numbers when not empty.
const SPREAD_CPUS_KEY: &[u8] = br#","spread_cpus":""#;

/// The irq_span line's prefix, as serde writes it.
pub(super) const SPAN_PREFIX: &[u8] = br#"{"kind":"irq_span","#;
hot_fields!(IrqSpanRecord, SPAN_KEYS, span_values, span_from, [
    ts_ns: u64, cpu: u32, duration_ns: u64, timers: u32, timers_ns: u64, flags: u32,
]);

/// The async line's prefix, as serde writes it.
pub(super) const ASYNC_PREFIX: &[u8] = br#"{"kind":"async_unthrottle","#;
hot_fields!(AsyncRecord, ASYNC_KEYS, async_values, async_from, [
    ts_ns: u64, cpu: u32, duration_ns: u64, cgroup_id: u64, csd_ts_ns: u64, csd_ns: u64,
    segment: u32, unthrottled: u32, enqueued: u32, runnable: u32, flags: u32,
]);
const ASYNC_NEEDS: [u32; ASYNC_KEYS.len()] =
    [0, 0, 0, 0, 0, 0, 0, 0, ENQUEUED_FROM, RUNNABLE_FROM, 0];
const ASYNC_FLAGS: usize = 10;
const SPAN_NEEDS: [u32; SPAN_KEYS.len()] = [0; SPAN_KEYS.len()];

#[inline]
pub(super) fn push_u64(buf: &mut BytesMut, v: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `{"kind":"<kind>","key":…,…` (the closing brace is the caller's: a period line may add its
/// CPU list) without serde's per-field dispatch: the writer has to keep up with millions of
/// callbacks a second. A field whose `needs` bits are not in the flags (`values[flags_at]`) is
/// `null`.
fn encode_numbers(
    buf: &mut BytesMut,
    prefix: &[u8],
    keys: &[&[u8]],
    values: &[u64],
    needs: &[u32],
    flags_at: Option<usize>,
) {
    // Flags are a u32 field: the cast never truncates.
    let flags = flags_at.map_or(0, |i| values[i] as u32);
    buf.extend_from_slice(prefix);
    for (i, ((key, &v), &need)) in keys.iter().zip(values).zip(needs).enumerate() {
        if i > 0 {
            buf.put_u8(b',');
        }
        buf.put_u8(b'"');
        buf.extend_from_slice(key);
        buf.extend_from_slice(b"\":");
        if need != 0 && flags & need == 0 {
            buf.extend_from_slice(b"null");
        } else {
            push_u64(buf, v);
        }
    }
}

pub(super) fn encode_period(buf: &mut BytesMut, p: &PeriodRecord) {
    encode_numbers(
        buf,
        PERIOD_PREFIX,
        &PERIOD_KEYS,
        &period_values(p),
        &PERIOD_NEEDS,
        Some(PERIOD_FLAGS),
    );
    if !p.spread_cpus.is_empty() {
        // A CPU list is digits, '-' and ',': nothing to escape.
        buf.extend_from_slice(SPREAD_CPUS_KEY);
        buf.extend_from_slice(p.spread_cpus.to_list().as_bytes());
        buf.put_u8(b'"');
    }
    buf.put_u8(b'}');
}

pub(super) fn encode_span(buf: &mut BytesMut, x: &IrqSpanRecord) {
    encode_numbers(
        buf,
        SPAN_PREFIX,
        &SPAN_KEYS,
        &span_values(x),
        &SPAN_NEEDS,
        None,
    );
    buf.put_u8(b'}');
}

pub(super) fn encode_async(buf: &mut BytesMut, a: &AsyncRecord) {
    encode_numbers(
        buf,
        ASYNC_PREFIX,
        &ASYNC_KEYS,
        &async_values(a),
        &ASYNC_NEEDS,
        Some(ASYNC_FLAGS),
    );
    buf.put_u8(b'}');
}

/// Strict parser for exactly what `encode_fields` writes (optional trailing newline). Anything
/// else returns None and goes to serde, so this only has to be right, not complete.
fn decode_fields<const N: usize>(
    line: &[u8],
    prefix: &[u8],
    keys: &[&[u8]; N],
    needs: &[u32; N],
) -> Option<[u64; N]> {
    let (v, s) = decode_numbers(line, prefix, keys, needs)?;
    end_of_object(s)?;
    Some(v)
}

/// `}` and an optional newline, nothing else.
fn end_of_object(s: &[u8]) -> Option<()> {
    let s = s.strip_prefix(b"}")?;
    (s.is_empty() || s == b"\n" || s == b"\r\n").then_some(())
}

/// The numeric fields (`null`, read as 0, only where `needs` says a field may be absent; the
/// flags say it is); returns what follows them.
fn decode_numbers<'a, const N: usize>(
    line: &'a [u8],
    prefix: &[u8],
    keys: &[&[u8]; N],
    needs: &[u32; N],
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
        if needs[i] != 0
            && let Some(rest) = s.strip_prefix(b"null")
        {
            s = rest;
            continue;
        }
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
    period_line(line, false).map(|(p, _)| p)
}

/// A period line of a capture written before `timer_id`: the record (its `timer_id` 0) and the
/// kernel address its `timer` held, for the reader to map.
pub(super) fn decode_legacy_period(line: &[u8]) -> Option<(PeriodRecord, u64)> {
    period_line(line, true)
}

/// A period line with `timer_id`, or `legacy`: with `timer`, whose value is given back apart
/// and never taken for an id.
fn period_line(line: &[u8], legacy: bool) -> Option<(PeriodRecord, u64)> {
    let keys = if legacy {
        &LEGACY_PERIOD_KEYS
    } else {
        &PERIOD_KEYS
    };
    let (mut v, mut rest) = decode_numbers(line, PERIOD_PREFIX, keys, &PERIOD_NEEDS)?;
    let timer = v[PERIOD_TIMER];
    if legacy {
        v[PERIOD_TIMER] = 0;
    }
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
    Some((period_from(v, spread_cpus)?, timer))
}

pub(super) fn decode_span(line: &[u8]) -> Option<IrqSpanRecord> {
    span_from(decode_fields(line, SPAN_PREFIX, &SPAN_KEYS, &SPAN_NEEDS)?)
}

pub(super) fn decode_async(line: &[u8]) -> Option<AsyncRecord> {
    async_from(decode_fields(
        line,
        ASYNC_PREFIX,
        &ASYNC_KEYS,
        &ASYNC_NEEDS,
    )?)
}
