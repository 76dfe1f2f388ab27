//! Where a capture's chunks go. Any `Write` takes them in place; a [`Spool`] hands them to a
//! thread of its own, so a slow disk (a full page cache, NFS, a retrying device) stalls that
//! thread and never the drain of the ring buffer. The chunks cross as `Bytes`: the writer's
//! buffer is split off, not copied, and its memory comes back to it once written.
use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;

/// Chunks (256 KiB each) waiting for the disk before the drain waits too: bounded memory.
const QUEUED_CHUNKS: usize = 8;

/// A destination for whole chunks of capture lines.
pub trait ChunkOut {
    /// Take one chunk (whole lines).
    fn put(&mut self, chunk: Bytes) -> io::Result<()>;
    /// Make everything put so far reach the file (as far as this destination can say).
    fn flush(&mut self) -> io::Result<()>;
}

impl<W: Write> ChunkOut for W {
    fn put(&mut self, chunk: Bytes) -> io::Result<()> {
        self.write_all(&chunk)
    }

    fn flush(&mut self) -> io::Result<()> {
        Write::flush(self)
    }
}

/// A capture file written on a thread of its own.
pub struct Spool {
    chunks: Option<SyncSender<Bytes>>,
    writer: Option<JoinHandle<io::Result<()>>>,
}

impl Spool {
    /// Start the writer thread. (Started after the reader raised its priority, it runs as a
    /// normal task: `SCHED_RESET_ON_FORK`.)
    pub fn start(file: File) -> io::Result<Spool> {
        let (chunks, rx) = sync_channel(QUEUED_CHUNKS);
        let writer = std::thread::Builder::new()
            .name("cfstrace-write".into())
            .spawn(move || write_all(file, rx))?;
        Ok(Spool {
            chunks: Some(chunks),
            writer: Some(writer),
        })
    }

    /// Wait until every chunk is written and the file synced; the first error, if any.
    pub fn finish(&mut self) -> io::Result<()> {
        self.chunks = None;
        match self.writer.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(io::Error::other("the capture writer thread panicked")),
        }
    }
}

fn write_all(mut file: File, chunks: Receiver<Bytes>) -> io::Result<()> {
    for chunk in chunks {
        // A failed write ends the thread: the next put sees the channel closed and asks why.
        file.write_all(&chunk)?;
    }
    Write::flush(&mut file)?;
    sync(&file)
}

/// On disk, not only in the page cache, before the recorder says it wrote the capture: a
/// node that panics right after (what cfstrace watches for) keeps it whole. An output that
/// cannot be synced (a pipe, a character device) has nothing more to wait for.
fn sync(file: &File) -> io::Result<()> {
    match file.sync_all() {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        r => r,
    }
}

impl ChunkOut for Spool {
    fn put(&mut self, chunk: Bytes) -> io::Result<()> {
        let sent = self.chunks.as_ref().map(|c| c.send(chunk));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped at a write error: that error, once.
            _ => Err(self
                .finish()
                .err()
                .unwrap_or_else(|| io::Error::other("the capture writer has finished"))),
        }
    }

    /// Chunks are on their way as soon as they are put; the file is complete at `finish`.
    fn flush(&mut self) -> io::Result<()> {
        match &self.writer {
            Some(w) if w.is_finished() => self.finish(),
            _ => Ok(()),
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // Whatever was put is on disk before the file is read again (by `report`).
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_reach_the_file_in_order() {
        let f = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        let mut s = Spool::start(f.reopen().unwrap_or_else(|e| panic!("{e}"))).unwrap();
        for i in 0..100 {
            s.put(Bytes::from(format!("line {i}\n"))).unwrap();
        }
        s.finish().unwrap();
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        assert_eq!(text.lines().count(), 100);
        assert_eq!(text.lines().last(), Some("line 99"));
    }

    #[test]
    fn outputs_that_cannot_sync_are_fine() {
        // fsync on /dev/null is EINVAL: nothing to wait for, not an error.
        let null = File::options().write(true).open("/dev/null").unwrap();
        let mut s = Spool::start(null).unwrap();
        s.put(Bytes::from_static(b"x\n")).unwrap();
        s.finish().unwrap();
    }

    #[test]
    fn a_write_error_is_told_not_lost() {
        // /dev/full: every write fails with ENOSPC.
        let full = File::options().write(true).open("/dev/full").unwrap();
        let mut s = Spool::start(full).unwrap();
        let mut err = None;
        for _ in 0..(QUEUED_CHUNKS + 4) {
            if let Err(e) = s.put(Bytes::from_static(b"x\n")) {
                err = Some(e);
                break;
            }
        }
        let err = err.or_else(|| s.finish().err()).expect("ENOSPC told");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }
}
