//! Kernel-side diagnostics (`--log-level`): the programs' aya-log-ebpf messages on rare paths
//! (a failed kernel read, a CSD list longer than the walk bound, a frame reopened because its
//! exit was missed), read from aya-log's `AYA_LOGS` ring buffer and printed on stderr.
//!
//! The level is a constant of the object's frozen `.rodata` ([`aya_log::LEVEL`]), written by
//! the loader: at the default (`off`) the verifier drops every log call, so the programs cost
//! and wake nothing more than without aya-log.
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::Ebpf;
use aya_log::EbpfLogger;

/// aya-log-ebpf's ring buffer (128 KiB in the object).
pub const MAP: &str = "AYA_LOGS";

/// `--log-level`: the most verbose kernel-side messages printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum LogLevel {
    /// None: the verifier removes every log call.
    #[default]
    Off,
    Error,
    /// Failed kernel reads, reopened frames, exits without a frame, a full sums map.
    Warn,
    /// Also: CSD lists longer than the walk bound.
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The value of aya-log-ebpf's `AYA_LOG_LEVEL`: a message is kept when its
    /// `aya_log::Level` is at most this (0 keeps none).
    pub fn kernel_value(self) -> u8 {
        match self {
            LogLevel::Off => 0,
            LogLevel::Error => aya_log::Level::Error as u8,
            LogLevel::Warn => aya_log::Level::Warn as u8,
            LogLevel::Info => aya_log::Level::Info as u8,
            LogLevel::Debug => aya_log::Level::Debug as u8,
            LogLevel::Trace => aya_log::Level::Trace as u8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("kernel log ring buffer {MAP}: {0}")]
    Init(#[from] aya_log::Error),
}

/// Prints each kernel message as one stderr line: `cfstrace: kernel WARN probes::csd: ...`.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        // The kernel side already filtered on the level.
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        // The eBPF crate's binary is `cfstrace`; its module path says which probe family.
        let target = r.target().strip_prefix("cfstrace::").unwrap_or(r.target());
        // One write per line, so a line is never split by the progress line's writes.
        let line = format!("cfstrace: kernel {} {target}: {}\n", r.level(), r.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// The kernel's messages, taken from a loaded object. Readable (its fd) when messages wait;
/// [`KernelLog::drain`] prints them; the session waits on it in its `AsyncFd`.
pub struct KernelLog {
    logger: EbpfLogger<Stderr>,
}

impl KernelLog {
    /// Take the log ring buffer from `ebpf` when `level` prints anything.
    pub fn start(ebpf: &mut Ebpf, level: LogLevel) -> Result<Option<KernelLog>, LogError> {
        if level == LogLevel::Off {
            return Ok(None);
        }
        let logger = EbpfLogger::init_with_logger(ebpf, Stderr)?;
        Ok(Some(KernelLog { logger }))
    }

    /// Print every message waiting in the ring buffer.
    pub fn drain(&mut self) {
        self.logger.flush();
    }
}

impl AsFd for KernelLog {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.logger.as_fd()
    }
}

// For the session's `AsyncFd`.
impl AsRawFd for KernelLog {
    fn as_raw_fd(&self) -> RawFd {
        self.logger.as_fd().as_raw_fd()
    }
}

// What the programs wrote up to their detaching (the session drops its tracer first).
impl Drop for KernelLog {
    fn drop(&mut self) {
        self.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_match_aya_log() {
        assert_eq!(LogLevel::default(), LogLevel::Off);
        assert_eq!(LogLevel::Off.kernel_value(), 0);
        // aya-log-ebpf keeps a message when its level is at most the global.
        assert_eq!(LogLevel::Error.kernel_value(), 1);
        assert_eq!(LogLevel::Debug.kernel_value(), 4);
        assert!(LogLevel::Warn.kernel_value() < LogLevel::Info.kernel_value());
        assert_eq!(LogLevel::Trace.kernel_value(), 5);
    }

    /// The embedded object carries aya-log's ring buffer and level global (the loader
    /// overrides the level with must_exist).
    #[test]
    fn the_object_has_the_log_map() {
        let obj = aya_obj::Object::parse(crate::EBPF_OBJECT).expect("embedded object");
        assert!(obj.maps.contains_key(MAP), "{:?}", obj.maps.keys());
    }
}
