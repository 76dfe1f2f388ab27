//! The command `record -- CMD` and `repro` run: resolved before anything starts, run in its own
//! process group, stopped (SIGTERM, then SIGKILL after a grace) at `--duration` or on Ctrl-C,
//! and its end told as a shell would.
use std::io::{self, IsTerminal as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::RecordError;
use crate::model::probe::StopReason;

/// Exit status of `record -- CMD` / `repro` when `--duration` ran out before CMD exited (and
/// CMD was stopped), as timeout(1) does.
pub const EXIT_TIMEOUT: u8 = 124;
/// How long CMD has to exit after the SIGTERM (at `--duration`) or the forwarded Ctrl-C
/// before its process group gets SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// How a shell reports a command's end: its exit code, or 128 + the signal that killed it.
pub fn shell_status(s: ExitStatus) -> u8 {
    match (s.code(), s.signal()) {
        (Some(c), _) => (c & 0xff) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

/// The status `record -- CMD` exits with: CMD's (shell style), or [`EXIT_TIMEOUT`] when
/// `--duration` stopped it.
pub fn command_exit_code(reason: StopReason, status: Option<ExitStatus>) -> Option<u8> {
    match (reason, status) {
        (StopReason::Duration, Some(_)) => Some(EXIT_TIMEOUT),
        (_, s) => s.map(shell_status),
    }
}

/// Check that CMD can be started before anything is created: a name without a slash is looked
/// up in PATH like a shell does; the file must be executable.
pub fn resolve_command(prog: &str) -> Result<PathBuf, RecordError> {
    let err = |why: &str| RecordError::NoCommand {
        cmd: prog.to_string(),
        why: why.to_string(),
    };
    if prog.is_empty() {
        return Err(err("empty command"));
    }
    which::which(prog).map_err(|e| match e {
        which::Error::CannotFindBinaryPath if prog.contains('/') => err("no such executable file"),
        which::Error::CannotFindBinaryPath => err("command not found in PATH"),
        other => err(&other.to_string()),
    })
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGKILL => "SIGKILL",
        _ => "signal",
    }
}

/// CMD running under the recorder, and where stopping it stands.
pub struct Cmd {
    child: Child,
    /// Kept: tokio forgets the pid once the child is reaped.
    pid: u32,
    /// Why we are stopping it (set when we signal it) and when.
    stopping: Option<(StopReason, Instant)>,
    killed: bool,
}

/// What the recorder should say after a step of [`Cmd`]'s stopping.
pub enum Said {
    Nothing,
    Line(String),
}

impl Cmd {
    /// Start CMD in its own process group, so that stopping it reaches its children too. A
    /// terminal is not handed to it: stdin is /dev/null then (a background process group
    /// reading the terminal would stop), else inherited.
    pub fn spawn(command: &[String]) -> Result<Cmd, RecordError> {
        let (prog, args) = command
            .split_first()
            .ok_or_else(|| RecordError::NoCommand {
                cmd: String::new(),
                why: "empty command".into(),
            })?;
        let mut cmd = Command::new(prog);
        cmd.args(args).process_group(0);
        if io::stdin().is_terminal() {
            cmd.stdin(Stdio::null());
        }
        let child = cmd.spawn().map_err(|source| RecordError::Spawn {
            cmd: command.join(" "),
            source,
        })?;
        Ok(Cmd {
            pid: child.id().unwrap_or(0),
            child,
            stopping: None,
            killed: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// CMD's status once it exits, and why the recording stops: its own exit, or the reason
    /// we were stopping it for. Cancel-safe.
    pub async fn exited(&mut self) -> io::Result<(ExitStatus, StopReason)> {
        let status = self.child.wait().await?;
        Ok((
            status,
            self.stopping.map_or(StopReason::CommandExited, |s| s.0),
        ))
    }

    /// When the grace after our signal ends (None before a signal, or after the SIGKILL).
    pub fn grace_deadline(&self) -> Option<Instant> {
        match self.stopping {
            Some((_, at)) if !self.killed => Some(at + KILL_GRACE),
            _ => None,
        }
    }

    /// Ctrl-C: forward `sig` the first time, SIGKILL the second.
    pub fn interrupt(&mut self, sig: i32) -> String {
        if self.stopping.is_some() {
            self.signal(libc::SIGKILL);
            self.killed = true;
            return format!("sent SIGKILL to CMD (pid {})", self.pid());
        }
        self.signal(sig);
        self.stopping = Some((StopReason::Interrupted, Instant::now()));
        format!(
            "forwarded {} to CMD (pid {}, its process group); waiting up to {} s for it to exit \
             (again to kill it)",
            signal_name(sig),
            self.pid(),
            KILL_GRACE.as_secs()
        )
    }

    /// `--duration` ran out while CMD runs: SIGTERM, SIGKILL after the grace.
    pub fn time_up(&mut self, duration: Duration) -> String {
        self.signal(libc::SIGTERM);
        self.stopping = Some((StopReason::Duration, Instant::now()));
        format!(
            "--duration {} reached while CMD (pid {}) runs: sent SIGTERM to its process group \
             (SIGKILL in {} s); exit status will be {EXIT_TIMEOUT}",
            humantime::format_duration(duration),
            self.pid(),
            KILL_GRACE.as_secs()
        )
    }

    /// SIGKILL once the grace after our signal is over.
    pub fn tick(&mut self) -> Said {
        match self.stopping {
            Some((_, at)) if !self.killed && at.elapsed() >= KILL_GRACE => {
                self.signal(libc::SIGKILL);
                self.killed = true;
                Said::Line(format!(
                    "CMD (pid {}) still running {} s after the signal: sent SIGKILL",
                    self.pid(),
                    KILL_GRACE.as_secs()
                ))
            }
            _ => Said::Nothing,
        }
    }

    /// Send `sig` to CMD's process group.
    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on the process group CMD leads (made with process_group(0)).
        if self.pid != 0 {
            unsafe { libc::kill(-(self.pid as i32), sig) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn killed_by(sig: i32) -> ExitStatus {
        ExitStatus::from_raw(sig)
    }

    #[test]
    fn exit_status_like_a_shell() {
        assert_eq!(shell_status(exited(0)), 0);
        assert_eq!(shell_status(exited(7)), 7);
        assert_eq!(shell_status(exited(255)), 255);
        assert_eq!(shell_status(killed_by(libc::SIGTERM)), 143);
        assert_eq!(shell_status(killed_by(libc::SIGINT)), 130);
        assert_eq!(shell_status(killed_by(libc::SIGKILL)), 137);
    }

    #[test]
    fn exit_code_of_record() {
        assert_eq!(
            command_exit_code(StopReason::CommandExited, Some(exited(7))),
            Some(7)
        );
        assert_eq!(
            command_exit_code(StopReason::Interrupted, Some(killed_by(libc::SIGINT))),
            Some(130)
        );
        // --duration stopped CMD: timeout(1)'s status, whatever CMD died of.
        assert_eq!(
            command_exit_code(StopReason::Duration, Some(killed_by(libc::SIGTERM))),
            Some(EXIT_TIMEOUT)
        );
        assert_eq!(command_exit_code(StopReason::Duration, None), None);
        assert_eq!(command_exit_code(StopReason::Interrupted, None), None);
    }

    #[test]
    fn commands_are_checked_before_anything_starts() {
        assert!(resolve_command("sh").is_ok());
        assert!(resolve_command("/bin/sh").is_ok());
        let e = resolve_command("no-such-command-cfstrace").unwrap_err();
        assert!(e.to_string().contains("not found in PATH"), "{e}");
        assert!(resolve_command("./no/such/file").is_err());
        let plain = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        let plain = plain.path().to_str().unwrap_or_default().to_string();
        assert!(resolve_command(&plain).is_err(), "not executable (0600)");
        assert!(resolve_command("/tmp").is_err(), "a directory");
        assert!(resolve_command("").is_err());
    }
}
