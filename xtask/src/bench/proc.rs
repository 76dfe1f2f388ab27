//! Processes the bench starts (cfstrace, bpftrace, busy loops, qemu): each is stopped and
//! reaped by its guard, on success, on error and on Ctrl-C; and the Ctrl-C flag itself.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM set a flag the bench checks between steps (and in every wait), so it
/// unwinds through the guards and cleans up instead of dying with cgroups left behind.
pub fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Error out if Ctrl-C was pressed.
pub fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleep, waking for Ctrl-C.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// A child the bench owns: `stop` ends it with `signal` (then SIGKILL after a grace period);
/// dropping it kills it outright.
pub struct Guarded {
    child: Option<Child>,
    pub name: String,
    signal: i32,
}

impl Guarded {
    /// Spawn `c`. The child gets `death_signal` if the bench itself dies (PR_SET_PDEATHSIG),
    /// so not even a SIGKILL of the bench leaves busy loops or tracers behind; `stop_signal`
    /// is what `stop` sends first.
    pub fn spawn(c: &mut Command, name: &str, stop_signal: i32, death_signal: i32) -> Result<Self> {
        println!("+ {}", cmd::display(c));
        Self::spawn_quiet(c, name, stop_signal, death_signal)
    }

    /// [`Guarded::spawn`] without printing the command line (the storm's many busy loops).
    pub fn spawn_quiet(
        c: &mut Command,
        name: &str,
        stop_signal: i32,
        death_signal: i32,
    ) -> Result<Self> {
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    death_signal as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = c
            .spawn()
            .with_context(|| format!("cannot start {}", c.get_program().to_string_lossy()))?;
        Ok(Guarded {
            child: Some(child),
            name: name.to_string(),
            signal: stop_signal,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its stdout, when spawned with `Stdio::piped()` (once).
    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    /// Exited already? (Reaps it if so.)
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("{} was already reaped", self.name),
        }
    }

    /// Wait up to `limit` for it to exit by itself; None if it is still running.
    pub fn wait_for(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            check()?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send the stop signal, wait up to `grace`, then SIGKILL; the exit status.
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.try_wait()? {
            self.child = None;
            return Ok(s);
        }
        // SAFETY: plain syscall on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, self.signal) };
        let end = Instant::now() + grace;
        let mut c = self.child.take().expect("child present");
        loop {
            if let Some(s) = c.try_wait()? {
                return Ok(s);
            }
            if Instant::now() >= end {
                let _ = c.kill();
                return Ok(c.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Wait until `path` holds a whole first line; the time it took from `since`.
pub fn wait_first_line(path: &Path, since: Instant, limit: Duration) -> Result<Duration> {
    loop {
        if fs::read(path).is_ok_and(|b| b.contains(&b'\n')) {
            return Ok(since.elapsed());
        }
        if since.elapsed() >= limit {
            bail!(
                "{} got no first line in {}s",
                path.display(),
                limit.as_secs()
            );
        }
        check()?;
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `VmHWM` (peak resident set) of a process, in bytes, while it lives.
pub fn vm_hwm(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_from_status() {
        let s = "Name:\tcfstrace\nVmPeak:\t  100 kB\nVmHWM:\t   41234 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_vm_hwm(s), Some(41234 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }

    #[test]
    fn a_guarded_child_is_stopped_and_reaped() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let g = Guarded::spawn(&mut c, "sleep", libc::SIGTERM, libc::SIGKILL).unwrap();
        let pid = g.pid();
        let s = g.stop(Duration::from_secs(5)).unwrap();
        assert!(!s.success());
        assert!(!Path::new(&format!("/proc/{pid}")).exists() || vm_hwm(pid).is_none());
    }
}
