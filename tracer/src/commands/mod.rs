//! One file per subcommand: each drives the rooms below it.
pub mod completions;
pub mod demo;
pub mod doctor;
pub mod man;
pub mod record;
pub mod report;
pub mod repro;
pub mod watch;

use std::io::{self, Write as _};

/// Generated text (completions, manual) on stdout. A reader that closes the pipe early
/// (`| head`) is not an error: the rest is simply not wanted.
fn print_bytes(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}
