//! Writing a capture: the header line, then one JSON line per record, through a reused buffer
//! that goes out in large chunks (to any `Write`, or to a [`super::Spool`]'s thread).
use std::io;

use bytes::{BufMut as _, BytesMut};

use super::CaptureError;
use super::codec::{encode_async, encode_period, encode_span};
use super::spool::ChunkOut;
use crate::model::records::{CAPTURE_SCHEMA, CaptureHeader, CaptureLine};

/// Flush the internal buffer to the inner writer once it holds this much.
const WRITE_CHUNK: usize = 256 * 1024;

/// Writes a capture: the header line, then one JSON line per record.
///
/// Records are serialized straight into a reused byte buffer (no `String` per line) that goes
/// to `W` in large chunks, split off without a copy, so a raw `File` is fine too. Call
/// [`flush`](Self::flush) to push what is buffered to `W` (and flush `W`); dropping the writer
/// pushes it best-effort.
pub struct CaptureWriter<W: ChunkOut> {
    buf: BytesMut,
    out: Option<W>,
    lines: u64,
    /// A write failed part-way: writing again would put a duplicated fragment mid-file.
    failed: bool,
}

impl<W: ChunkOut> CaptureWriter<W> {
    pub fn new(w: W, header: &CaptureHeader) -> Result<Self, CaptureError> {
        // A header the reader would reject is a bug here, not something to find at report time.
        if header.schema != CAPTURE_SCHEMA {
            return Err(CaptureError::HeaderSchema {
                found: header.schema.clone(),
            });
        }
        let mut cw = CaptureWriter {
            buf: BytesMut::with_capacity(WRITE_CHUNK + 4096),
            out: Some(w),
            lines: 0,
            failed: false,
        };
        serde_json::to_writer((&mut cw.buf).writer(), header).map_err(CaptureError::Encode)?;
        cw.buf.put_u8(b'\n');
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
        } else if let Err(e) = serde_json::to_writer((&mut self.buf).writer(), line) {
            // Never leave half a record in the file.
            self.buf.truncate(mark);
            return Err(CaptureError::Encode(e));
        }
        self.buf.put_u8(b'\n');
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
            ChunkOut::flush(out).map_err(CaptureError::Write)?;
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
        // Split off, not copied; once the chunk is written and dropped, `reserve` takes its
        // memory back.
        let chunk = self.buf.split().freeze();
        self.buf.reserve(WRITE_CHUNK + 4096);
        if let Some(out) = self.out.as_mut()
            && let Err(e) = out.put(chunk)
        {
            self.failed = true;
            return Err(CaptureError::Write(e));
        }
        Ok(())
    }
}

impl<W: ChunkOut> Drop for CaptureWriter<W> {
    fn drop(&mut self) {
        // Best effort: whole lines only, so a capture cut here still reads back cleanly.
        if !self.failed {
            let _ = self.flush();
        }
    }
}
