//! Stdout that never panics when its reader has gone (`cfstrace doctor | head -1`): Rust
//! ignores SIGPIPE, so a write to a closed pipe fails with EPIPE and `println!` panics on it.
//! Here a closed pipe is a quiet end: the rest of the output is dropped and the command goes
//! on to its own exit status, as `watch` does. Any other write error (a full disk) is one.
use std::fmt;
use std::io;

#[derive(Debug, thiserror::Error)]
#[error("writing to stdout: {0}")]
pub struct StdoutError(#[from] io::Error);

/// Whether stdout's reader was still there for a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    Reading,
    /// The pipe is closed: nothing more will be read.
    Gone,
}

/// Write `s` on stdout and flush it; a closed pipe is not an error.
pub fn print(s: &str) -> Result<(), StdoutError> {
    print_bytes(s.as_bytes())
}

/// The same for bytes (a man page, a completion script).
pub fn print_bytes(b: &[u8]) -> Result<(), StdoutError> {
    write_quietly(&mut io::stdout().lock(), b).map(|_| ())
}

/// [`print`] for output that goes on until nobody reads it (`watch`): says whether the
/// reader is still there.
pub fn print_while_read(s: &str) -> Result<Reader, StdoutError> {
    write_quietly(&mut io::stdout().lock(), s.as_bytes())
}

/// `b` to `w`, flushed, with EPIPE taken as the reader's choice to stop.
fn write_quietly(w: &mut impl io::Write, b: &[u8]) -> Result<Reader, StdoutError> {
    match w.write_all(b).and_then(|()| w.flush()) {
        Ok(()) => Ok(Reader::Reading),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Reader::Gone),
        Err(e) => Err(e.into()),
    }
}

/// Lines printed as a command goes (`doctor`, whose checks take a while): each flushed at
/// once; the first write error other than a closed pipe is kept for [`Lines::finish`], and
/// nothing more is written after it.
#[derive(Debug, Default)]
pub struct Lines {
    failed: Option<StdoutError>,
}

impl Lines {
    pub fn line(&mut self, args: fmt::Arguments<'_>) {
        if self.failed.is_none()
            && let Err(e) = print(&format!("{args}\n"))
        {
            self.failed = Some(e);
        }
    }

    /// The write error, if one came.
    pub fn finish(self) -> Result<(), StdoutError> {
        self.failed.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone, or whose disk is full.
    struct Closed(io::ErrorKind);

    impl io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_a_quiet_end() {
        assert_eq!(
            write_quietly(&mut Closed(io::ErrorKind::BrokenPipe), b"x").unwrap(),
            Reader::Gone
        );
        let full = write_quietly(&mut Closed(io::ErrorKind::StorageFull), b"x");
        assert!(full.is_err_and(|e| e.to_string().starts_with("writing to stdout")));
        let mut v = Vec::new();
        assert_eq!(write_quietly(&mut v, b"abc").unwrap(), Reader::Reading);
        assert_eq!(v, b"abc");
    }
}
