//! Reading a capture: the header checked first, then the records streamed one by one. A
//! capture cut short (a killed recorder: no end line, perhaps a truncated last line) is read
//! up to its last complete line, with one warning saying so; a corrupt line in the middle is
//! an error with its number, a line of an unknown kind (a newer cfstrace) skipped and counted.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;

use super::CaptureError;
use super::codec::{
    ASYNC_PREFIX, PERIOD_PREFIX, SPAN_PREFIX, decode_async, decode_legacy_period, decode_period,
    decode_span,
};
use crate::model::records::{CAPTURE_SCHEMA, CaptureHeader, CaptureLine, PeriodRecord};
use crate::model::timers::TimerIds;

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
    /// Period lines of a capture written before `timer_id` carry `timer`, the kernel address:
    /// mapped to ids as the recorder now maps them, and never handed on.
    legacy_timers: TimerIds,
}

#[derive(Deserialize)]
struct SchemaProbe {
    schema: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct KindProbe {
    kind: Option<serde_json::Value>,
}

/// The `timer` (kernel address) of a period line written before `timer_id`.
#[derive(Deserialize)]
struct LegacyTimer {
    timer: Option<u64>,
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
            legacy_timers: TimerIds::default(),
        })
    }

    pub fn header(&self) -> &CaptureHeader {
        &self.header
    }

    /// Stats and warnings so far (complete once the iterator returned None).
    pub fn finish(self) -> (CaptureHeader, ReplayStats) {
        let mut warnings = Vec::new();
        // A cut capture is one warning saying what was recovered from it.
        match (self.ended, self.truncated) {
            (false, cut) => warnings.push(cut_warning(self.lines, cut)),
            (true, Some(n)) => warnings.push(format!("last line truncated ({n} bytes) — skipped")),
            (true, None) => {}
        }
        for (kind, n) in &self.unknown_kinds {
            warnings.push(format!(
                "skipped {n} line(s) of unknown kind {kind} (written by a newer cfstrace?)"
            ));
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
            if let Some((mut p, timer)) = decode_legacy_period(&self.buf) {
                p.timer_id = self.legacy_timers.id(timer);
                return Ok(Some(CaptureLine::Period(p)));
            }
            // Another key order or extra fields: serde, which ignores unknown fields
            // (including "kind") in the plain struct.
            if let Ok(p) = serde_json::from_slice::<PeriodRecord>(&self.buf) {
                return Ok(Some(CaptureLine::Period(self.legacy_timer(p))));
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
            Ok(CaptureLine::Period(p)) => Ok(Some(CaptureLine::Period(self.legacy_timer(p)))),
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

    /// A period line serde read: its `timer` address, if it is an old line with one, as an id
    /// (the slow path only: another writer's key order).
    fn legacy_timer(&mut self, mut p: PeriodRecord) -> PeriodRecord {
        if let Ok(LegacyTimer { timer: Some(t) }) = serde_json::from_slice(&self.buf) {
            p.timer_id = self.legacy_timers.id(t);
        }
        p
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

/// A capture without its end line (the recorder was killed, or the node went down): what was
/// kept of it. `lines` complete lines after the header; `cut`, the bytes of a last line
/// written only in part.
fn cut_warning(lines: u64, cut: Option<usize>) -> String {
    let skipped = cut.map_or_else(String::new, |n| {
        format!(", skipped its cut last line ({n} bytes)")
    });
    format!(
        "capture has no end line: the recording was cut short (killed?); recovered the header \
         and {lines} complete line(s) after it{skipped}: the figures cover the recording up to \
         its last complete line"
    )
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
