//! The capture file: JSON Lines. First line is the header (`"schema":"cfstrace.capture/1"` and
//! the host facts), then one line per period-timer callback, per async-unthrottle CSD segment
//! (6.3+), per timer interrupt that ran a period timer (`irq_span`), per kernel "period too
//! short" message (`kmsg_period_scaling`), per cgroup naming, loss counters, and an end line.
//! A truncated last line is reported and skipped, never fatal.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use serde::Deserialize;

pub use crate::model::cpuset::CpuSet;
pub use crate::model::probe::ProbeStatus;
pub use crate::model::records::*;

// ---------------------------------------------------------------------------------------------
// Writing and reading captures.

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: empty file, not a cfstrace capture")]
    Empty { path: String },
    #[error("{path}: not a cfstrace capture: {found}")]
    NotCapture { path: String, found: String },
    #[error("{path}: capture header (line 1) is malformed: {source}")]
    BadHeader {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}:{line}: corrupt capture line: {source}")]
    BadLine {
        path: String,
        line: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("refusing to write a capture header with schema {found:?}, expected {CAPTURE_SCHEMA}")]
    HeaderSchema { found: String },
    #[error("writing capture: {0}")]
    Write(#[source] io::Error),
    #[error("encoding capture line: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Flush the internal buffer to the inner writer once it holds this much.
const WRITE_CHUNK: usize = 256 * 1024;

/// Writes a capture: the header line, then one JSON line per record.
///
/// Records are serialized straight into a reused byte buffer (no `String` per line) that goes
/// to `W` in large chunks, so a raw `File` is fine too. Call [`flush`](Self::flush) to push
/// what is buffered to `W` (and flush `W`); dropping the writer pushes it best-effort.
pub struct CaptureWriter<W: Write> {
    buf: Vec<u8>,
    out: Option<W>,
    lines: u64,
    /// A write failed part-way: writing again would put a duplicated fragment mid-file.
    failed: bool,
}

impl<W: Write> CaptureWriter<W> {
    pub fn new(w: W, header: &CaptureHeader) -> Result<Self, CaptureError> {
        // A header the reader would reject is a bug here, not something to find at report time.
        if header.schema != CAPTURE_SCHEMA {
            return Err(CaptureError::HeaderSchema {
                found: header.schema.clone(),
            });
        }
        let mut cw = CaptureWriter {
            buf: Vec::with_capacity(WRITE_CHUNK + 4096),
            out: Some(w),
            lines: 0,
            failed: false,
        };
        serde_json::to_writer(&mut cw.buf, header).map_err(CaptureError::Encode)?;
        cw.buf.push(b'\n');
        Ok(cw)
    }

    /// Append one record (buffered).
    pub fn write_line(&mut self, line: &CaptureLine) -> Result<(), CaptureError> {
        let mark = self.buf.len();
        if let CaptureLine::Period(p) = line {
            // The hot lines: formatted by hand, byte-identical to serde's output (tested).
            encode_period(&mut self.buf, p);
        } else if let CaptureLine::AsyncUnthrottle(a) = line {
            encode_async(&mut self.buf, a);
        } else if let CaptureLine::IrqSpan(x) = line {
            encode_span(&mut self.buf, x);
        } else if let Err(e) = serde_json::to_writer(&mut self.buf, line) {
            // Never leave half a record in the file.
            self.buf.truncate(mark);
            return Err(CaptureError::Encode(e));
        }
        self.buf.push(b'\n');
        self.lines += 1;
        if self.buf.len() >= WRITE_CHUNK {
            self.push_buf()?;
        }
        Ok(())
    }

    /// Push everything buffered to the inner writer and flush it.
    pub fn flush(&mut self) -> Result<(), CaptureError> {
        self.push_buf()?;
        if let Some(out) = self.out.as_mut() {
            out.flush().map_err(CaptureError::Write)?;
        }
        Ok(())
    }

    /// Records written after the header.
    pub fn lines_written(&self) -> u64 {
        self.lines
    }

    /// Flush and hand back the inner writer.
    pub fn into_inner(mut self) -> Result<W, CaptureError> {
        self.flush()?;
        // `out` is only None after this; Drop then has nothing to do.
        self.out
            .take()
            .ok_or_else(|| CaptureError::Write(io::Error::other("capture writer already finished")))
    }

    fn push_buf(&mut self) -> Result<(), CaptureError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.failed {
            return Err(CaptureError::Write(io::Error::other(
                "an earlier write to the capture failed",
            )));
        }
        if let Some(out) = self.out.as_mut()
            && let Err(e) = out.write_all(&self.buf)
        {
            self.failed = true;
            self.buf.clear();
            return Err(CaptureError::Write(e));
        }
        self.buf.clear();
        Ok(())
    }
}

impl<W: Write> Drop for CaptureWriter<W> {
    fn drop(&mut self) {
        // Best effort: whole lines only, so a capture cut here still reads back cleanly.
        if !self.failed {
            let _ = self.flush();
        }
    }
}

/// What a replay saw besides the records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Records delivered (header and skipped lines not counted).
    pub lines: u64,
    pub warnings: Vec<String>,
    /// The last line was cut short and skipped.
    pub truncated: bool,
    /// An end line was seen.
    pub ended: bool,
}

/// A whole capture in memory (small captures, tests). Prefer [`replay`] for big ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    pub header: CaptureHeader,
    pub lines: Vec<CaptureLine>,
    pub warnings: Vec<String>,
}

/// Streams a capture's records. The header is read and checked by [`CaptureReader::new`];
/// iterate for the records; after the iterator ends, [`CaptureReader::finish`] gives the stats.
pub struct CaptureReader<R: BufRead> {
    src: R,
    name: String,
    header: CaptureHeader,
    buf: Vec<u8>,
    /// 1-based number of the line in `buf` (the header is line 1).
    line_no: u64,
    lines: u64,
    /// Length of the skipped partial last line, if there was one.
    truncated: Option<usize>,
    ended: bool,
    done: bool,
    unknown_kinds: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct SchemaProbe {
    schema: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct KindProbe {
    kind: Option<serde_json::Value>,
}

const KNOWN_KINDS: [&str; 9] = [
    "unsent_periods",
    "cpu_totals",
    "period",
    "async_unthrottle",
    "irq_span",
    "kmsg_period_scaling",
    "cgroup",
    "loss",
    "end",
];
/// What serde writes first for a period record; lets the hot path skip the tagged-enum
/// machinery (which buffers every field) for the one kind that matters for speed.
const PERIOD_PREFIX: &[u8] = br#"{"kind":"period","#;

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
const SPAN_PREFIX: &[u8] = br#"{"kind":"irq_span","#;
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
const ASYNC_PREFIX: &[u8] = br#"{"kind":"async_unthrottle","#;
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

const fn digit_pairs() -> [u8; 200] {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
}

/// "00".."99": two digits per division.
static DIGIT_PAIRS: [u8; 200] = digit_pairs();

#[inline]
fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    while v >= 100 {
        let r = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        tmp[i..i + 2].copy_from_slice(&DIGIT_PAIRS[r..r + 2]);
    }
    if v >= 10 {
        let r = v as usize * 2;
        i -= 2;
        tmp[i..i + 2].copy_from_slice(&DIGIT_PAIRS[r..r + 2]);
    } else {
        i -= 1;
        tmp[i] = b'0' + v as u8;
    }
    buf.extend_from_slice(&tmp[i..]);
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

fn encode_period(buf: &mut Vec<u8>, p: &PeriodRecord) {
    encode_numbers(buf, PERIOD_PREFIX, &PERIOD_KEYS, &period_values(p));
    if !p.spread_cpus.is_empty() {
        // A CPU list is digits, '-' and ',': nothing to escape.
        buf.extend_from_slice(SPREAD_CPUS_KEY);
        buf.extend_from_slice(p.spread_cpus.to_list().as_bytes());
        buf.push(b'"');
    }
    buf.push(b'}');
}

fn encode_span(buf: &mut Vec<u8>, x: &IrqSpanRecord) {
    encode_fields(buf, SPAN_PREFIX, &SPAN_KEYS, &span_values(x));
}

fn encode_async(buf: &mut Vec<u8>, a: &AsyncRecord) {
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

fn decode_period(line: &[u8]) -> Option<PeriodRecord> {
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

fn decode_span(line: &[u8]) -> Option<IrqSpanRecord> {
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

fn decode_async(line: &[u8]) -> Option<AsyncRecord> {
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

fn read_line_into<R: BufRead>(src: &mut R, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.clear();
    loop {
        match src.read_until(b'\n', buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

impl<R: BufRead> CaptureReader<R> {
    /// Read and check the header. `name` (usually the path) is used in every message.
    pub fn new(mut src: R, name: &str) -> Result<Self, CaptureError> {
        let io_err = |source| CaptureError::Io {
            path: name.to_string(),
            source,
        };
        let mut buf = Vec::with_capacity(4096);
        let n = read_line_into(&mut src, &mut buf).map_err(io_err)?;
        if n == 0 || buf.iter().all(u8::is_ascii_whitespace) {
            return Err(CaptureError::Empty {
                path: name.to_string(),
            });
        }
        let not_capture = |found: String| CaptureError::NotCapture {
            path: name.to_string(),
            found,
        };
        let probe: SchemaProbe = match serde_json::from_slice(&buf) {
            Ok(p) => p,
            Err(e) if buf.last() != Some(&b'\n') && e.is_eof() => {
                return Err(not_capture(format!(
                    "the file ends inside its first line ({n} bytes): truncated header"
                )));
            }
            Err(_) => {
                return Err(not_capture(format!(
                    "first line is not a JSON object (starts with {:?})",
                    preview(&buf)
                )));
            }
        };
        match probe.schema {
            Some(serde_json::Value::String(s)) if s == CAPTURE_SCHEMA => {}
            Some(serde_json::Value::String(s)) => {
                return Err(not_capture(format!(
                    "first line has schema {s:?}, expected {CAPTURE_SCHEMA}"
                )));
            }
            Some(v) => {
                return Err(not_capture(format!(
                    "first line has schema {v}, expected {CAPTURE_SCHEMA}"
                )));
            }
            None => {
                return Err(not_capture(format!(
                    "first line has no \"schema\" field, expected {CAPTURE_SCHEMA}"
                )));
            }
        }
        let header: CaptureHeader =
            serde_json::from_slice(&buf).map_err(|source| CaptureError::BadHeader {
                path: name.to_string(),
                source,
            })?;
        Ok(CaptureReader {
            src,
            name: name.to_string(),
            header,
            buf,
            line_no: 1,
            lines: 0,
            truncated: None,
            ended: false,
            done: false,
            unknown_kinds: BTreeMap::new(),
        })
    }

    pub fn header(&self) -> &CaptureHeader {
        &self.header
    }

    /// Stats and warnings so far (complete once the iterator returned None).
    pub fn finish(self) -> (CaptureHeader, ReplayStats) {
        let mut warnings = Vec::new();
        if let Some(n) = self.truncated {
            warnings.push(format!("last line truncated ({n} bytes) — skipped"));
        }
        for (kind, n) in &self.unknown_kinds {
            warnings.push(format!(
                "skipped {n} line(s) of unknown kind {kind} (written by a newer cfstrace?)"
            ));
        }
        if !self.ended {
            warnings.push("capture has no end line (recording was killed?)".to_string());
        }
        let stats = ReplayStats {
            lines: self.lines,
            warnings,
            truncated: self.truncated.is_some(),
            ended: self.ended,
        };
        (self.header, stats)
    }

    fn next_record(&mut self) -> Result<Option<CaptureLine>, CaptureError> {
        loop {
            let n = read_line_into(&mut self.src, &mut self.buf).map_err(|source| {
                CaptureError::Io {
                    path: self.name.clone(),
                    source,
                }
            })?;
            if n == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            let complete = self.buf.last() == Some(&b'\n');
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match self.parse() {
                Ok(Some(line)) => {
                    if matches!(line, CaptureLine::End(_)) {
                        self.ended = true;
                    }
                    self.lines += 1;
                    return Ok(Some(line));
                }
                Ok(None) => continue, // unknown kind, counted
                Err(_) if !complete => {
                    // A writer killed mid-line leaves a tail without '\n': expected, not fatal.
                    // It is necessarily the last line (read_until stops only at EOF).
                    self.truncated = Some(self.buf.len());
                    return Ok(None);
                }
                Err(source) => {
                    return Err(CaptureError::BadLine {
                        path: self.name.clone(),
                        line: self.line_no,
                        source,
                    });
                }
            }
        }
    }

    /// Ok(None): a well-formed line of a kind this version does not know.
    fn parse(&mut self) -> Result<Option<CaptureLine>, serde_json::Error> {
        if self.buf.starts_with(PERIOD_PREFIX) {
            if let Some(p) = decode_period(&self.buf) {
                return Ok(Some(CaptureLine::Period(p)));
            }
            // Another key order or extra fields: serde, which ignores unknown fields
            // (including "kind") in the plain struct.
            if let Ok(p) = serde_json::from_slice::<PeriodRecord>(&self.buf) {
                return Ok(Some(CaptureLine::Period(p)));
            }
        }
        if self.buf.starts_with(ASYNC_PREFIX)
            && let Some(a) = decode_async(&self.buf)
        {
            return Ok(Some(CaptureLine::AsyncUnthrottle(a)));
        }
        if self.buf.starts_with(SPAN_PREFIX)
            && let Some(x) = decode_span(&self.buf)
        {
            return Ok(Some(CaptureLine::IrqSpan(x)));
        }
        match serde_json::from_slice::<CaptureLine>(&self.buf) {
            Ok(l) => Ok(Some(l)),
            Err(e) => match serde_json::from_slice::<KindProbe>(&self.buf) {
                Ok(KindProbe {
                    kind: Some(serde_json::Value::String(k)),
                }) if !KNOWN_KINDS.contains(&k.as_str()) => {
                    *self.unknown_kinds.entry(format!("{k:?}")).or_insert(0) += 1;
                    Ok(None)
                }
                _ => Err(e),
            },
        }
    }
}

impl<R: BufRead> Iterator for CaptureReader<R> {
    type Item = Result<CaptureLine, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_record() {
            Ok(Some(l)) => Some(Ok(l)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

fn preview(buf: &[u8]) -> String {
    let s = String::from_utf8_lossy(&buf[..buf.len().min(40)]);
    s.trim_end().to_string()
}

fn open(path: &Path) -> Result<CaptureReader<BufReader<File>>, CaptureError> {
    let name = path.display().to_string();
    let f = File::open(path).map_err(|source| CaptureError::Io {
        path: name.clone(),
        source,
    })?;
    CaptureReader::new(BufReader::with_capacity(1 << 20, f), &name)
}

/// Stream a capture through `f` without holding it in memory.
pub fn replay(
    path: &Path,
    f: &mut impl FnMut(&CaptureLine),
) -> Result<(CaptureHeader, ReplayStats), CaptureError> {
    replay_reader(open(path)?, f)
}

/// [`replay`] over an already opened reader.
pub fn replay_reader<R: BufRead>(
    mut reader: CaptureReader<R>,
    f: &mut impl FnMut(&CaptureLine),
) -> Result<(CaptureHeader, ReplayStats), CaptureError> {
    for line in reader.by_ref() {
        f(&line?);
    }
    Ok(reader.finish())
}

/// Read a whole capture into memory.
pub fn read_capture(path: &Path) -> Result<Capture, CaptureError> {
    let mut lines = Vec::new();
    let (header, stats) = replay(path, &mut |l| lines.push(l.clone()))?;
    Ok(Capture {
        header,
        lines,
        warnings: stats.warnings,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::host::{HostFacts, WatchdogFacts};
    use crate::model::workload::{Workload, WorkloadKind};
    use std::collections::BTreeMap;

    pub(crate) fn header() -> CaptureHeader {
        let mut probes = BTreeMap::new();
        probes.insert(
            crate::model::probe::Probe::PeriodTimer,
            ProbeStatus::attached(
                crate::model::probe::Style::Tracepoint,
                "hrtimer_expire_entry/exit",
            ),
        );
        CaptureHeader {
            schema: CAPTURE_SCHEMA.to_string(),
            tool_version: "0.1.0".into(),
            host: HostFacts {
                hostname: "node1".into(),
                kernel: "6.18.44".into(),
                ncpus: 48,
                watchdog: WatchdogFacts {
                    thresh_s: Some(10),
                    enabled: true,
                    nmi_watchdog: Some(true),
                    hardlockup_panic: None,
                },
            },
            backend_requested: crate::model::probe::Backend::Auto,
            backend: crate::model::probe::Style::Tracepoint,
            probes,
            cpu_hierarchy: Some(CpuHierarchy {
                version: 2,
                mount: "/sys/fs/cgroup".into(),
            }),
            started_unix_ns: 1,
            started_mono_ns: 2,
            command: None,
        }
    }

    fn lines() -> Vec<CaptureLine> {
        vec![
            CaptureLine::Cgroup(CgroupRecord {
                id: 42,
                path: Some("/a/b".into()),
                workload: Workload {
                    kind: WorkloadKind::Cgroup,
                    application: None,
                    container: None,
                    pod_uid: None,
                    qos: None,
                    unit: None,
                },
                processes: vec![ProcessInfo {
                    pid: 7,
                    comm: "python".into(),
                    cmdline: None,
                    cpu_ticks: 3,
                }],
                period_us: Some(100_000),
                quota_us: None,
                note: None,
                parents: Some(vec![ParentRecord {
                    path: "/a".into(),
                    id: Some(41),
                    period_us: Some(100_000),
                    quota_us: Some(20_000),
                }]),
            }),
            CaptureLine::Period(PeriodRecord {
                ts_ns: 10,
                cpu: 3,
                duration_ns: 1234,
                cgroup_id: 42,
                quota_ns: u64::MAX,
                flags: 0x1ff,
                ..Default::default()
            }),
            CaptureLine::AsyncUnthrottle(AsyncRecord {
                ts_ns: 15,
                cpu: 1,
                duration_ns: 800,
                cgroup_id: 42,
                csd_ts_ns: 14,
                csd_ns: 900,
                segment: 1,
                unthrottled: 1,
                enqueued: 3,
                runnable: 2,
                flags: tracer_ebpf::ASYNC_LAST,
            }),
            CaptureLine::Loss(LossRecord {
                ts_ns: 11,
                ringbuf_full: 1,
                ..Default::default()
            }),
            CaptureLine::End(EndRecord {
                ts_ns: 12,
                duration_ns: 99,
                reason: crate::model::probe::StopReason::Duration,
                periods: 1,
                lost: 1,
                command_status: None,
                async_unthrottle: 1,
                irq_spans: 1,
                kmsg_period_scaling: 0,
            }),
        ]
    }

    fn encode(lines: &[CaptureLine]) -> Vec<u8> {
        let mut w = CaptureWriter::new(Vec::new(), &header()).unwrap();
        for l in lines {
            w.write_line(l).unwrap();
        }
        assert_eq!(w.lines_written(), lines.len() as u64);
        w.into_inner().unwrap()
    }

    fn read(bytes: &[u8]) -> Result<(CaptureHeader, Vec<CaptureLine>, ReplayStats), CaptureError> {
        let r = CaptureReader::new(bytes, "test.jsonl")?;
        let mut out = Vec::new();
        let (h, stats) = replay_reader(r, &mut |l| out.push(l.clone()))?;
        Ok((h, out, stats))
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&lines());
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 6);
        let (h, got, stats) = read(&bytes).unwrap();
        assert_eq!(h, header());
        assert_eq!(got, lines());
        assert_eq!(stats.lines, 5);
        assert!(stats.ended && !stats.truncated);
        assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        {
            let f = File::create(&path).unwrap();
            let mut w = CaptureWriter::new(f, &header()).unwrap();
            for l in lines() {
                w.write_line(&l).unwrap();
            }
            // Dropped without an explicit flush: Drop writes the buffer out.
        }
        let cap = read_capture(&path).unwrap();
        assert_eq!(cap.lines, lines());
        assert!(cap.warnings.is_empty());
    }

    #[test]
    fn period_fast_path_matches_the_generic_decoder() {
        let l = lines()[1].clone();
        let text = serde_json::to_vec(&l).unwrap();
        assert!(
            text.starts_with(PERIOD_PREFIX),
            "{}",
            String::from_utf8_lossy(&text)
        );
        // Other key orders (another writer) still decode.
        let reordered = br#"{"ts_ns":10,"cpu":3,"duration_ns":1234,"cgroup_id":42,"timer":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":18446744073709551615,"flags":511,"kind":"period"}"#;
        let mut bytes = encode(&[]);
        bytes.extend_from_slice(reordered);
        bytes.push(b'\n');
        let (_, got, _) = read(&bytes).unwrap();
        assert_eq!(got, vec![l]);
    }

    #[test]
    fn decimal_formatting() {
        let mut probe = vec![
            0,
            1,
            9,
            10,
            11,
            99,
            100,
            101,
            999,
            1000,
            u64::MAX,
            u64::MAX - 1,
        ];
        probe.extend((0..64).map(|b| 1u64 << b));
        probe.extend((0..20).map(|e| 10u64.pow(e) - 1));
        for v in probe {
            let mut b = Vec::new();
            push_u64(&mut b, v);
            assert_eq!(String::from_utf8(b).unwrap(), v.to_string());
        }
    }

    #[test]
    fn hand_encoded_period_lines_match_serde() {
        let recs = [
            PeriodRecord::default(),
            PeriodRecord {
                ts_ns: u64::MAX,
                cpu: u32::MAX,
                duration_ns: 9,
                cgroup_id: 10,
                timer: 0xffff_8881_0a2b_3c40,
                loops: 1,
                unthrottled: 100,
                enqueued: 1_000_000,
                runnable: 7,
                period_ns: 100_000_000,
                quota_ns: u64::MAX,
                flags: 0x7ff,
                span_ts_ns: u64::MAX - 5,
                spread: 7,
                spread_overflow: 2,
                queued: 4_000_000,
                spread_cpus: CpuSet::parse_list("0-3,5,64,1022-1023").unwrap(),
            },
            PeriodRecord {
                spread_cpus: CpuSet::parse_list("47").unwrap(),
                ..Default::default()
            },
        ];
        for p in recs {
            let mut mine = Vec::new();
            encode_period(&mut mine, &p);
            let serde = serde_json::to_vec(&CaptureLine::Period(p.clone())).unwrap();
            assert_eq!(
                String::from_utf8(mine.clone()).unwrap(),
                String::from_utf8(serde).unwrap()
            );
            assert_eq!(decode_period(&mine), Some(p.clone()));
            mine.push(b'\n');
            assert_eq!(decode_period(&mine), Some(p));
        }
        // Not exactly our shape: left to serde.
        let ok = br#"{"kind":"period","ts_ns":1,"cpu":0,"duration_ns":0,"cgroup_id":0,"timer":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0,"span_ts_ns":0,"spread":0,"spread_overflow":0,"queued":0}"#;
        assert!(decode_period(ok).is_some());
        let with_cpus = br#"{"kind":"period","ts_ns":1,"cpu":0,"duration_ns":0,"cgroup_id":0,"timer":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0,"span_ts_ns":0,"spread":2,"spread_overflow":0,"queued":0,"spread_cpus":"0-1"}"#;
        assert_eq!(
            decode_period(with_cpus).map(|p| p.spread_cpus.len()),
            Some(2)
        );
        // An empty or bad list is not ours: serde decides.
        for odd in [
            br#"{"kind":"period","ts_ns":1,"cpu":0,"duration_ns":0,"cgroup_id":0,"timer":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0,"span_ts_ns":0,"spread":0,"spread_overflow":0,"queued":0,"spread_cpus":""}"#.as_slice(),
            br#"{"kind":"period","ts_ns":1,"cpu":0,"duration_ns":0,"cgroup_id":0,"timer":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0,"span_ts_ns":0,"spread":0,"spread_overflow":0,"queued":0,"spread_cpus":"x"}"#,
        ] {
            assert_eq!(decode_period(odd), None);
        }
        for bad in [
            br#"{"kind":"period","ts_ns":01,"cpu":0,"duration_ns":0,"cgroup_id":0,"timer":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0}"#.as_slice(),
            br#"{"kind":"period","ts_ns":1,"cpu":4294967296,"duration_ns":0,"cgroup_id":0,"timer":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0}"#,
            br#"{"kind":"period","ts_ns":1,"cpu":0,"duration_ns":0,"cgroup_id":0,"timer":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0,"x":1}"#,
            br#"{"kind":"period","ts_ns":99999999999999999999,"cpu":0,"duration_ns":0,"cgroup_id":0,"timer":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0}"#,
            br#"{"kind":"period","ts_ns":1,"cpu":0}"#,
        ] {
            assert_eq!(decode_period(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hand_encoded_span_lines_match_serde() {
        for x in [
            IrqSpanRecord::default(),
            IrqSpanRecord {
                ts_ns: u64::MAX,
                cpu: 47,
                duration_ns: 420_000,
                timers: 3,
                timers_ns: 310_000,
                flags: tracer_ebpf::HOW_FRAME_FENTRY,
            },
        ] {
            let mut mine = Vec::new();
            encode_span(&mut mine, &x);
            let serde = serde_json::to_vec(&CaptureLine::IrqSpan(x)).unwrap();
            assert_eq!(
                String::from_utf8(mine.clone()).unwrap(),
                String::from_utf8(serde).unwrap()
            );
            assert_eq!(decode_span(&mine), Some(x));
            // And through the reader.
            let mut bytes = encode(&[]);
            bytes.extend_from_slice(&mine);
            bytes.push(b'\n');
            let (_, got, stats) = read(&bytes).unwrap();
            assert_eq!(got, vec![CaptureLine::IrqSpan(x)]);
            assert!(stats.warnings.iter().all(|w| !w.contains("unknown kind")));
        }
    }

    #[test]
    fn kmsg_lines_round_trip() {
        let k = PeriodScaling {
            ts_us: 5,
            cpu: 3,
            scaled_up: true,
            period_us: 4_000,
            quota_us: 2_000,
        };
        let line = CaptureLine::KmsgPeriodScaling(k.clone());
        let text = serde_json::to_string(&line).unwrap();
        assert!(
            text.starts_with(r#"{"kind":"kmsg_period_scaling","ts_us":5,"cpu":3,"#),
            "{text}"
        );
        let mut bytes = encode(std::slice::from_ref(&line));
        bytes.extend_from_slice(b"\n");
        let (_, got, _) = read(&bytes).unwrap();
        assert_eq!(got, vec![line]);
    }

    /// A period line written before spans and spread existed still reads, through serde.
    #[test]
    fn old_period_lines_still_read() {
        let old = br#"{"kind":"period","ts_ns":1,"cpu":0,"duration_ns":5,"cgroup_id":7,"timer":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0}"#;
        assert_eq!(decode_period(old), None);
        let mut bytes = encode(&[]);
        bytes.extend_from_slice(old);
        bytes.push(b'\n');
        let (_, got, _) = read(&bytes).unwrap();
        match &got[0] {
            CaptureLine::Period(p) => {
                assert_eq!(
                    (p.cgroup_id, p.duration_ns, p.span_ts_ns, p.spread),
                    (7, 5, 0, 0)
                );
                assert!(p.spread_cpus.is_empty());
            }
            l => panic!("{l:?}"),
        }
    }

    /// A cgroup line written before `parents` existed still reads (parents unknown), and a
    /// record without parents writes no key.
    #[test]
    fn cgroup_lines_without_parents_still_read() {
        let old = br#"{"kind":"cgroup","id":9,"path":"/a/b","workload":{"kind":"cgroup"},"processes":[],"period_us":100000,"quota_us":20000}"#;
        let mut bytes = encode(&[]);
        bytes.extend_from_slice(old);
        bytes.push(b'\n');
        let (_, got, _) = read(&bytes).unwrap();
        let CaptureLine::Cgroup(c) = &got[0] else {
            panic!("{:?}", got[0]);
        };
        assert_eq!(
            (c.id, c.path.as_deref(), c.parents.as_ref()),
            (9, Some("/a/b"), None)
        );
        let text = serde_json::to_string(&got[0]).unwrap();
        assert!(!text.contains("parents"), "{text}");
        // A chain round-trips, nearest first, a parent without a quota as nulls.
        let mut c = c.clone();
        c.parents = Some(vec![ParentRecord {
            path: "/a".into(),
            id: Some(8),
            period_us: None,
            quota_us: None,
        }]);
        let text = serde_json::to_string(&CaptureLine::Cgroup(c.clone())).unwrap();
        assert!(
            text.contains(r#""parents":[{"path":"/a","id":8,"period_us":null,"quota_us":null}]"#),
            "{text}"
        );
        let back: CaptureLine = serde_json::from_str(&text).unwrap();
        assert_eq!(back, CaptureLine::Cgroup(c));
    }

    #[test]
    fn hand_encoded_async_lines_match_serde() {
        let recs = [
            AsyncRecord::default(),
            AsyncRecord {
                ts_ns: u64::MAX,
                cpu: u32::MAX,
                duration_ns: 12_345,
                cgroup_id: 4026531835,
                csd_ts_ns: 99,
                csd_ns: 0,
                segment: 31,
                unthrottled: u32::MAX,
                enqueued: 7,
                runnable: 0,
                flags: 0xffff,
            },
        ];
        for a in recs {
            let mut mine = Vec::new();
            encode_async(&mut mine, &a);
            let serde = serde_json::to_vec(&CaptureLine::AsyncUnthrottle(a)).unwrap();
            assert_eq!(
                String::from_utf8(mine.clone()).unwrap(),
                String::from_utf8(serde).unwrap()
            );
            assert_eq!(decode_async(&mine), Some(a));
        }
        // Another key order (another writer) goes through serde and still reads.
        let mut bytes = encode(&[]);
        bytes.extend_from_slice(
            br#"{"cpu":1,"ts_ns":15,"duration_ns":800,"cgroup_id":42,"csd_ts_ns":14,"csd_ns":900,"segment":1,"unthrottled":1,"enqueued":3,"runnable":2,"flags":8192,"kind":"async_unthrottle"}"#,
        );
        bytes.push(b'\n');
        let (_, got, _) = read(&bytes).unwrap();
        assert_eq!(got, vec![lines()[2].clone()]);
    }

    /// A capture written before async unthrottle was traced: no async lines, and loss and end
    /// lines without the fields added with it.
    #[test]
    fn captures_without_async_lines_still_read() {
        let mut bytes = encode(&lines()[..2]);
        bytes.extend_from_slice(
            br#"{"kind":"loss","ts_ns":11,"ringbuf_full":1,"unmatched_exit":0,"missed_exit":0,"cgroup_read":0}"#,
        );
        bytes.push(b'\n');
        bytes.extend_from_slice(
            br#"{"kind":"end","ts_ns":12,"duration_ns":99,"reason":"duration","periods":1,"lost":1}"#,
        );
        bytes.push(b'\n');
        let (_, got, stats) = read(&bytes).unwrap();
        assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
        assert_eq!(got.len(), 4);
        assert_eq!(got[2], lines()[3]);
        match &got[3] {
            CaptureLine::End(e) => assert_eq!((e.periods, e.async_unthrottle), (1, 0)),
            l => panic!("{l:?}"),
        }
    }

    #[test]
    fn truncated_last_line_is_a_warning() {
        let mut bytes = encode(&lines()[..4]);
        let end = serde_json::to_vec(&lines()[4]).unwrap();
        bytes.extend_from_slice(&end[..20]);
        let (_, got, stats) = read(&bytes).unwrap();
        assert_eq!(got, lines()[..4].to_vec());
        assert!(stats.truncated && !stats.ended);
        assert_eq!(
            stats.warnings,
            vec![
                "last line truncated (20 bytes) — skipped".to_string(),
                "capture has no end line (recording was killed?)".to_string(),
            ]
        );
    }

    #[test]
    fn complete_last_line_without_newline_is_kept() {
        let mut bytes = encode(&lines());
        assert_eq!(bytes.pop(), Some(b'\n'));
        let (_, got, stats) = read(&bytes).unwrap();
        assert_eq!(got, lines());
        assert!(!stats.truncated && stats.ended);
    }

    #[test]
    fn corrupt_middle_line_is_an_error_with_its_number() {
        let good = encode(&lines());
        let text = String::from_utf8(good).unwrap();
        let mut ls: Vec<&str> = text.lines().collect();
        ls[2] = r#"{"kind":"period","ts_ns":"#; // line 3 of the file
        let bytes = (ls.join("\n") + "\n").into_bytes();
        let err = read(&bytes).unwrap_err();
        match &err {
            CaptureError::BadLine { line, path, .. } => {
                assert_eq!(*line, 3);
                assert_eq!(path, "test.jsonl");
            }
            e => panic!("unexpected {e:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("test.jsonl:3: corrupt capture line")
        );
    }

    #[test]
    fn unknown_kinds_are_skipped_with_one_warning() {
        let mut bytes = encode(&lines()[..2]);
        for _ in 0..3 {
            bytes.extend_from_slice(b"{\"kind\":\"future_thing\",\"x\":1}\n");
        }
        bytes.extend_from_slice(&serde_json::to_vec(&lines()[4]).unwrap());
        bytes.push(b'\n');
        let (_, got, stats) = read(&bytes).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(stats.lines, 3);
        assert_eq!(
            stats.warnings,
            vec![
                "skipped 3 line(s) of unknown kind \"future_thing\" (written by a newer cfstrace?)"
                    .to_string()
            ]
        );
    }

    #[test]
    fn wrong_schema_is_named() {
        let err = read(b"{\"schema\":\"cfstrace.report/1\",\"kernel\":\"x\"}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.jsonl: not a cfstrace capture: first line has schema \"cfstrace.report/1\", \
             expected cfstrace.capture/1"
        );
        let err = read(b"{\"kind\":\"period\"}\n").unwrap_err();
        assert!(err.to_string().contains("no \"schema\" field"), "{err}");
        let err = read(b"PERF_RECORD\x00\x01\n").unwrap_err();
        assert!(err.to_string().contains("not a JSON object"), "{err}");
    }

    #[test]
    fn empty_file_is_an_error() {
        let err = read(b"").unwrap_err();
        assert!(matches!(err, CaptureError::Empty { .. }));
        assert_eq!(
            err.to_string(),
            "test.jsonl: empty file, not a cfstrace capture"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.jsonl");
        File::create(&path).unwrap();
        let err = read_capture(&path).unwrap_err();
        assert!(err.to_string().contains("empty.jsonl: empty file"), "{err}");
        let err = read_capture(&dir.path().join("missing.jsonl")).unwrap_err();
        assert!(err.to_string().contains("missing.jsonl"), "{err}");
    }

    #[test]
    fn header_only_capture_warns_about_the_missing_end() {
        let bytes = encode(&[]);
        let (_, got, stats) = read(&bytes).unwrap();
        assert!(got.is_empty());
        assert_eq!(
            stats.warnings,
            vec!["capture has no end line (recording was killed?)".to_string()]
        );
    }

    /// Accepts `room` bytes, then fails every write.
    struct Full {
        data: Vec<u8>,
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(self.room - self.data.len());
            if n == 0 {
                return Err(io::Error::other("disk full"));
            }
            self.data.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_is_not_retried() {
        let mut w = CaptureWriter::new(
            Full {
                data: Vec::new(),
                room: 100,
            },
            &header(),
        )
        .unwrap();
        assert!(matches!(w.flush(), Err(CaptureError::Write(_))));
        w.write_line(&lines()[1]).unwrap();
        assert!(w.flush().is_err());
        drop(w); // must not panic or write again
    }

    #[test]
    fn writer_refuses_a_wrong_schema() {
        let mut h = header();
        h.schema = "x".into();
        assert!(matches!(
            CaptureWriter::new(Vec::new(), &h),
            Err(CaptureError::HeaderSchema { .. })
        ));
    }
}
