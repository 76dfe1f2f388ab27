//! SIGINT, SIGTERM and SIGHUP: they end the session instead of killing us, so every path
//! leaves a complete capture and no cgroups behind; the signal is handed on so `-- CMD` gets the
//! same one forwarded.
use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The stop signals, caught from the moment this is made (a signal during a command's set-up
/// is seen at the first wait). Made only by the long-running commands: `report` and `doctor`
/// keep the default actions.
pub struct Stop {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Stop {
    /// Catch the stop signals (within a runtime).
    pub fn catch() -> io::Result<Stop> {
        Ok(Stop {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next stop signal's number. Cancel-safe.
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}
