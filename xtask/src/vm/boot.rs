//! Booting a guest: the qemu command line, its console read line by line into a log with the
//! time of each line, and the time limits a guest is held to, counted in its progress. The VM
//! tests (`super::runs`) and the bench boot their guests through [`run`].
//!
//! Why single-threaded TCG (`-accel tcg,thread=single`; KVM does not work on the nested-virt CI
//! host): with qemu 7.2's multi-threaded TCG, the guest kernel's own live text patching (int3 +
//! IPI sync: ftrace sites, jump labels, i.e. every BPF attach and detach) breaks it. Reproduced
//! without cfstrace (`--poke-stress 300`: a tracepoint and the function tracer on
//! sched_cfs_period_timer switched on and off): with multi-threaded TCG 8 of 8 boots broke
//! (6.12 and 7.2: `Oops: int3` at the patched site, e.g. `sched_cfs_period_timer+0x5`,
//! `__schedule+0x343`, within 0-250 rounds; 5.10: soft lockup + RCU stall at once; 6.1: hung with
//! RCU stalls after 200 rounds; also a jump to 0x0 from `__hrtimer_run_queues` on 6.1 during
//! kprobe attach cycles); with single-threaded TCG 8 of 8 boots ran 300 rounds clean, as fast.
//! The kernels patch text this way on every real machine with ftrace in use, so it is an
//! emulation artefact. A run that still dies of `Oops: int3` is retried once, loudly.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cmd;

/// How qemu runs the guest's CPUs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    Kvm,
    /// Single-threaded TCG (see the module documentation).
    Tcg,
    /// Multi-threaded TCG, for diagnosis only.
    Mttcg,
    /// Single-threaded TCG with the guest's clock counted in instructions (`-icount
    /// shift=1,sleep=off`: 2 ns each), so a host that stalls the emulator (other guests, tb
    /// flushes) does not lengthen what the guest measures: the same work takes the same guest
    /// time. Only with 1 vCPU: with 2, qemu 7.2 hangs bringing up the second CPU under icount.
    TcgIcount,
}

/// The machine a guest boots on.
pub struct Machine<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub cpus: u32,
    pub mem_mb: u32,
    /// Kernel parameters after `console=ttyS0 panic=-1 oops=panic quiet`.
    pub append: &'a str,
    pub engine: Engine,
}

/// How long a guest may take, and what its console shows as it runs.
pub struct Watch<'a> {
    pub log: &'a Path,
    pub limits: Limits,
    /// The line its /init prints first (when it arrives is [`Boot::t_init`]).
    pub init_marker: &'static str,
    /// Lines that are no progress (the silence limit runs on through them).
    pub idle_line: fn(&str) -> bool,
    /// Lines printed on stdout as they arrive.
    pub echo: fn(&str) -> bool,
    /// Stop the guest now (Ctrl-C).
    pub cancelled: fn() -> bool,
    /// A KVM guest that has not reached its /init by then is killed ([`Boot::kvm_hung`]).
    pub kvm_init_deadline: Option<Duration>,
}

impl Watch<'_> {
    pub fn never(_: &str) -> bool {
        false
    }

    pub fn not_cancelled() -> bool {
        false
    }
}

/// What a guest printed and how it ended.
pub struct Boot {
    pub lines: Vec<String>,
    /// When each line arrived, since qemu started.
    pub times: Vec<Duration>,
    pub accel: &'static str,
    pub timed_out: bool,
    /// Killed for printing nothing for the silence limit (of emulation).
    pub silent: bool,
    /// When killed: (progress in all, progress and wall time since the last line).
    pub killed_at: Option<(Duration, Duration, Duration)>,
    /// KVM guest killed for not reaching /init within the deadline.
    pub kvm_hung: bool,
    /// Stopped by [`Watch::cancelled`].
    pub cancelled: bool,
    pub exit: Option<ExitStatus>,
    pub stderr: String,
    pub t_init: Option<Duration>,
    pub total: Duration,
}

impl Boot {
    fn new(engine: Engine) -> Boot {
        Boot {
            lines: Vec::new(),
            times: Vec::new(),
            accel: if engine == Engine::Kvm { "kvm" } else { "tcg" },
            timed_out: false,
            silent: false,
            killed_at: None,
            kvm_hung: false,
            cancelled: false,
            exit: None,
            stderr: String::new(),
            t_init: None,
            total: Duration::ZERO,
        }
    }

    /// Why the guest was killed, if it was.
    pub fn killed(&self) -> Option<String> {
        let (ran, quiet, quiet_wall) = self.killed_at.unwrap_or_default();
        if self.cancelled {
            Some("interrupted".into())
        } else if self.kvm_hung {
            Some("the KVM guest did not reach /init".into())
        } else if self.silent {
            Some(format!(
                "silent for {}s, {}s of emulation",
                quiet_wall.as_secs(),
                quiet.as_secs()
            ))
        } else if self.timed_out {
            Some(format!(
                "out of time after {}s, {}s of emulation",
                self.total.as_secs(),
                ran.as_secs()
            ))
        } else {
            None
        }
    }
}

/// The qemu command line of a machine.
fn command(m: &Machine) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    match m.engine {
        Engine::Kvm => {
            // CFSTRACE_VM_KVM_CPU overrides `-cpu host` (e.g. "host,-arch-capabilities").
            let cpu = std::env::var("CFSTRACE_VM_KVM_CPU").unwrap_or_else(|_| "host".into());
            c.args(["-enable-kvm", "-cpu", &cpu]);
        }
        Engine::Mttcg => {
            c.args(["-accel", "tcg,thread=multi", "-cpu", "max"]);
        }
        Engine::Tcg => {
            c.args(["-accel", "tcg,thread=single", "-cpu", "max"]);
        }
        Engine::TcgIcount => {
            c.args(["-accel", "tcg,thread=single", "-cpu", "max"])
                .args(["-icount", "shift=1,sleep=off"]);
        }
    }
    c.args(["-m", &m.mem_mb.to_string(), "-smp", &m.cpus.to_string()])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(m.vmlinuz)
        .arg("-initrd")
        .arg(m.initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 oops=panic quiet {}",
            m.append
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The lines of a console, `\r` removed, sent as they come by a thread that ends with it.
fn spawn_lines(stdout: ChildStdout) -> (Receiver<String>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .replace('\r', "");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    (rx, reader)
}

/// A qemu that is killed and reaped however its boot ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boot `m` and read its console until it powers off or a limit of `w` is reached.
pub fn run(m: &Machine, w: &Watch) -> Result<Boot> {
    let mut c = command(m);
    println!("+ {}", cmd::display(&c));
    let mut logf =
        fs::File::create(w.log).with_context(|| format!("creating {}", w.log.display()))?;
    let start = Instant::now();
    let mut qemu = Qemu(
        c.spawn()
            .context("starting qemu-system-x86_64 (package qemu-system-x86)")?,
    );
    let (rx, reader) = spawn_lines(qemu.0.stdout.take().expect("piped"));
    let mut stderr_pipe = qemu.0.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let mut b = Boot::new(m.engine);
    let clock = GuestClock {
        pid: qemu.0.id(),
        start,
    };
    watch(&clock, &rx, w, m.engine == Engine::Kvm, &mut logf, &mut b);
    let _ = qemu.0.kill();
    b.exit = Some(qemu.0.wait()?);
    b.total = start.elapsed();
    // Lines still in flight after a kill.
    let _ = reader.join();
    for line in rx.try_iter() {
        let _ = writeln!(logf, "{line}");
        b.lines.push(line);
        b.times.push(b.total);
    }
    b.stderr = err_reader.join().unwrap_or_default();
    if !b.stderr.trim().is_empty() {
        let _ = writeln!(logf, "--- qemu stderr ---\n{}", b.stderr.trim_end());
    }
    if let Some(why) = b.killed() {
        let _ = writeln!(logf, "--- killed: {why} (limits: {}) ---", w.limits);
    }
    Ok(b)
}

/// Read the console into `b` until it ends, a limit is hit, or the watch is cancelled.
fn watch(
    clock: &GuestClock,
    rx: &Receiver<String>,
    w: &Watch,
    kvm: bool,
    logf: &mut fs::File,
    b: &mut Boot,
) {
    // The last line of progress: when (wall) and at what progress.
    let mut last_line = (clock.start, Duration::ZERO);
    loop {
        let p = Progress::now(clock, last_line);
        if let Some(hit) = w.limits.hit(&p) {
            b.timed_out = true;
            b.silent = hit == Limit::Silent;
            b.killed_at = Some((p.ran, p.quiet, p.quiet_wall));
            return;
        }
        if (w.cancelled)() {
            b.cancelled = true;
            return;
        }
        let mut wait = w.limits.next_check(&p).min(Duration::from_millis(500));
        if let Some(deadline) = w.kvm_init_deadline.filter(|_| kvm && b.t_init.is_none()) {
            let left = deadline.saturating_sub(clock.start.elapsed());
            if left.is_zero() {
                b.kvm_hung = true;
                return;
            }
            wait = wait.min(left);
        }
        match rx.recv_timeout(wait) {
            Ok(line) => {
                if !(w.idle_line)(&line) {
                    last_line = (Instant::now(), clock.progress());
                }
                let _ = writeln!(logf, "{line}");
                if (w.echo)(&line) {
                    println!("  [{:>4}s] {line}", clock.start.elapsed().as_secs());
                }
                if b.t_init.is_none() && line.contains(w.init_marker) {
                    b.t_init = Some(clock.start.elapsed());
                }
                b.lines.push(line);
                b.times.push(clock.start.elapsed());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// A guest's progress, what its time limits count: qemu's CPU time (all its threads), at most
/// the wall time since qemu started. The guest keeps its vCPUs busy from boot to power-off
/// (the storm's loops), so without contention this is the wall time; on a loaded host (the
/// 2-core CI machine building beside two guests) single-threaded TCG gets a fraction of a core
/// and the guest's work (doctor's attach cycles, BTF, the verifier, text patching) takes that
/// much longer in wall time, but not in this. A guest hung with its CPUs spinning still burns
/// CPU and hits the limits; one hung idle is caught by the wall backstop ([`WALL_BACKSTOP`]).
/// Without /proc the wall time, as before.
struct GuestClock {
    pid: u32,
    start: Instant,
}

impl GuestClock {
    fn progress(&self) -> Duration {
        let wall = self.start.elapsed();
        cpu_time(self.pid).map_or(wall, |c| c.min(wall))
    }
}

/// A process's CPU time, user + system, over all its threads (`/proc/PID/stat` fields 14, 15).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_time(&stat, clock_ticks())
}

/// utime + stime of a `/proc/PID/stat` line, in `ticks` per second.
fn stat_cpu_time(stat: &str, ticks: u64) -> Option<Duration> {
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, the last ')' ends it;
    // after it, field 3 (state) is index 0, utime (14) index 11, stime (15) index 12.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(t.saturating_mul(1000) / ticks.max(1)))
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// A guest whose limit in progress is not reached after this many times that limit in wall
/// time is killed anyway (a guest hung idle burns no CPU and would never reach it).
pub const WALL_BACKSTOP: u32 = 4;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Limit {
    Timeout,
    Silent,
}

/// A guest's progress ([`GuestClock`]) in all and since its last line, and the same in wall
/// time.
struct Progress {
    ran: Duration,
    ran_wall: Duration,
    quiet: Duration,
    quiet_wall: Duration,
}

impl Progress {
    fn now(clock: &GuestClock, last_line: (Instant, Duration)) -> Progress {
        let ran = clock.progress();
        Progress {
            ran,
            ran_wall: clock.start.elapsed(),
            quiet: ran.saturating_sub(last_line.1),
            quiet_wall: last_line.0.elapsed(),
        }
    }
}

/// A guest's time limits, in progress ([`GuestClock`]), and `wall_factor` times each in wall
/// time.
#[derive(Copy, Clone, Debug)]
pub struct Limits {
    /// In all.
    pub timeout: Duration,
    /// Without a line of progress.
    pub silence: Duration,
    /// [`WALL_BACKSTOP`] for a guest that may be slowed by a busy host; 1 makes the limits
    /// wall time.
    pub wall_factor: u32,
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}s in all, {}s silent, of emulation",
            self.timeout.as_secs(),
            self.silence.as_secs()
        )
    }
}

impl Limits {
    /// The limit a guest has reached, if any.
    fn hit(&self, p: &Progress) -> Option<Limit> {
        let wall = self.wall_factor.max(1);
        if p.ran >= self.timeout || p.ran_wall >= self.timeout * wall {
            Some(Limit::Timeout)
        } else if p.quiet >= self.silence || p.quiet_wall >= self.silence * wall {
            Some(Limit::Silent)
        } else {
            None
        }
    }

    /// How long to wait for a line before looking at the limits again: progress is never
    /// faster than the wall clock, so the wall time left to the nearest limit is at most this.
    fn next_check(&self, p: &Progress) -> Duration {
        let wall = self.wall_factor.max(1);
        [
            self.timeout.saturating_sub(p.ran),
            (self.timeout * wall).saturating_sub(p.ran_wall),
            self.silence.saturating_sub(p.quiet),
            (self.silence * wall).saturating_sub(p.quiet_wall),
        ]
        .into_iter()
        .min()
        .unwrap_or_default()
        .max(Duration::from_millis(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(timeout: Duration) -> Limits {
        Limits {
            timeout,
            silence: Duration::from_secs(300),
            wall_factor: WALL_BACKSTOP,
        }
    }

    fn p(ran: u64, ran_wall: u64, quiet: u64, quiet_wall: u64) -> Progress {
        let s = Duration::from_secs;
        Progress {
            ran: s(ran),
            ran_wall: s(ran_wall),
            quiet: s(quiet),
            quiet_wall: s(quiet_wall),
        }
    }

    #[test]
    fn limits_count_the_guests_progress() {
        let s = Duration::from_secs;
        let l = limits(s(1800));
        // A guest on a loaded host: 20 min of wall time, 7 min of emulation, 4 min of wall
        // silence (doctor's attach cycles) that were 90 s of emulation: not hung, not late.
        assert_eq!(l.hit(&p(420, 1200, 90, 240)), None);
        // The same silence at full speed is still within the silence limit; past it, hung.
        assert_eq!(l.hit(&p(420, 420, 299, 299)), None);
        assert_eq!(l.hit(&p(420, 420, 300, 300)), Some(Limit::Silent));
        // Out of time in emulation, or (hung idle, no CPU) in WALL_BACKSTOP x the wall time.
        assert_eq!(l.hit(&p(1800, 1900, 1, 1)), Some(Limit::Timeout));
        assert_eq!(l.hit(&p(100, 4 * 1800, 1, 1)), Some(Limit::Timeout));
        assert_eq!(l.hit(&p(100, 1300, 10, 1200)), Some(Limit::Silent));
        // The next look comes no later than the nearest limit could be reached.
        assert_eq!(l.next_check(&p(100, 100, 10, 10)), s(290));
        assert_eq!(l.next_check(&p(1799, 1799, 0, 0)), s(1));
        assert_eq!(
            l.next_check(&p(1800, 1800, 0, 0)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn cpu_time_from_proc_stat() {
        let stat = "4242 (qemu-system-x86) (x) S 1 4242 4242 0 -1 4194560 9 0 0 0 \
                    1500 250 0 0 20 0 5 0 123 456 789";
        assert_eq!(
            stat_cpu_time(stat, 100),
            Some(Duration::from_millis(17_500))
        );
        assert_eq!(stat_cpu_time("garbage", 100), None);
        // This process: some CPU time, never more than it has lived.
        assert!(cpu_time(std::process::id()).is_some(), "/proc/self/stat");
        let clock = GuestClock {
            pid: std::process::id(),
            start: Instant::now(),
        };
        assert!(clock.progress() <= clock.start.elapsed());
    }
}
