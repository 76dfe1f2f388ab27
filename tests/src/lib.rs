//! Helpers for the end-to-end tests in tests/: find the cpu cgroup hierarchy (v1 or v2) from
//! /proc/self/mountinfo, build throttled cgroups with busy processes in them, clean them up in
//! `Drop` even when an assertion fails, and run the built cfstrace binary with a time limit.
//!
//! Deliberately independent of the tracer crate: these tests check the binary from outside.
//! [`expect`] is the oracle both the host test and the VM matrix (`cargo xtask vm`) check reports
//! against.

pub mod expect;
pub mod soak;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The YARN container name from the original incident, and its application.
pub const CONTAINER: &str = "container_e06_1512098667219_988894_01_000020";
pub const APPLICATION: &str = "application_1512098667219_988894";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The workspace root (the parent of tests/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// The cfstrace binary under test: $CFSTRACE_BIN, else <workspace>/target/release/cfstrace.
/// Panics (never skips) when it is missing.
pub fn cfstrace_bin() -> PathBuf {
    let bin = match std::env::var_os("CFSTRACE_BIN").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target/release/cfstrace"),
    };
    assert!(
        bin.is_file(),
        "cfstrace binary not found at {}: run `cargo build --release -p tracer` \
         (or `cargo xtask test`), or set CFSTRACE_BIN",
        bin.display()
    );
    bin
}

/// Set (to anything) to keep every test's scratch directory, not only a failed test's.
pub const KEEP_SCRATCH_ENV: &str = "CFSTRACE_KEEP_SCRATCH";

/// A test's scratch directory under `<tmpdir>` (integration tests pass
/// `env!("CARGO_TARGET_TMPDIR")`; [`scratch!`] does). [`Scratch::new`]: a fresh `<name>-XXXXXX`
/// ([`tempfile::TempDir`]), removed when the test passes and kept, its path printed, when the
/// test panics (or with [`KEEP_SCRATCH_ENV`] set), so a failure's captures, reports and command
/// output stay for diagnosis. [`Scratch::fixed`]: `<tmpdir>/<name>`, emptied now and never
/// removed, for a storm shared by a test binary (held in a static, never dropped) whose files
/// others read (`cargo xtask test` reads the host storm's `report.json`).
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
    temp: Option<tempfile::TempDir>,
}

/// [`Scratch::new`] under the calling test crate's `CARGO_TARGET_TMPDIR`.
#[macro_export]
macro_rules! scratch {
    ($name:expr) => {
        $crate::Scratch::new(env!("CARGO_TARGET_TMPDIR"), $name)
    };
}

impl Scratch {
    pub fn new(tmpdir: &str, name: &str) -> Scratch {
        let made = fs::create_dir_all(tmpdir).and_then(|()| {
            tempfile::Builder::new()
                .prefix(&format!("{name}-"))
                .tempdir_in(tmpdir)
        });
        let temp = made.unwrap_or_else(|e| panic!("creating a scratch dir in {tmpdir}: {e}"));
        Scratch {
            path: temp.path().to_path_buf(),
            temp: Some(temp),
        }
    }

    pub fn fixed(tmpdir: &str, name: &str) -> Scratch {
        let path = PathBuf::from(tmpdir).join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Scratch { path, temp: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Some(temp) = self.temp.take() else {
            return;
        };
        if std::thread::panicking() || std::env::var_os(KEEP_SCRATCH_ENV).is_some() {
            eprintln!("scratch kept for diagnosis: {}", temp.keep().display());
        }
    }
}

/// Fail (never skip) a test that needs root: it creates cgroups and loads BPF programs.
pub fn require_root(test: &str) {
    assert!(
        is_root(),
        "{test} needs root (it creates cgroups and loads BPF programs); run it as root"
    );
}

/// Whether this kernel can do kprobes (tracefs kprobe_events or the kprobe PMU).
pub fn kprobes_available() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || Path::new("/sys/kernel/tracing/kprobe_events").exists()
        || Path::new("/sys/kernel/debug/tracing/kprobe_events").exists()
}

// -------------------------------------------------------------------------------------------
// cgroups

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The mounted hierarchy that holds the cpu controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    pub mount: PathBuf,
}

/// Undo the octal escapes mountinfo uses for spaces and the like (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        if b[i] == b'\\'
            && let Some(v) = octal
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points from mountinfo text: (mount point, fs type, super options). A v1 cgroup mount
/// with `cpu` among its super options wins; otherwise the first cgroup2 mount (its controllers
/// are checked by [`cpu_hierarchy`]).
pub fn cgroup_mounts(mountinfo: &str) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut v1_cpu = Vec::new();
    let mut v2 = Vec::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint opts [optional...] - fstype source superopts
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let mount = PathBuf::from(unescape(left[4]));
        match right[0] {
            "cgroup" if right[2].split(',').any(|o| o == "cpu") => v1_cpu.push(mount),
            "cgroup2" => v2.push(mount),
            _ => {}
        }
    }
    (v1_cpu, v2)
}

/// The cpu hierarchy of this host: a v1 mount with the cpu controller, else a cgroup2 mount whose
/// cgroup.controllers lists cpu.
pub fn cpu_hierarchy() -> Option<Hierarchy> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (v1, v2) = cgroup_mounts(&text);
    if let Some(m) = v1.into_iter().next() {
        return Some(Hierarchy {
            version: Version::V1,
            mount: m,
        });
    }
    v2.into_iter()
        .find(|m| {
            fs::read_to_string(m.join("cgroup.controllers"))
                .map(|c| c.split_whitespace().any(|x| x == "cpu"))
                .unwrap_or(false)
        })
        .map(|m| Hierarchy {
            version: Version::V2,
            mount: m,
        })
}

/// A test's cgroup tree `<mount>/<name>-<pid>` on this host's cpu hierarchy, for a test that
/// throttles real cgroups: fails (never skips) without root or a cpu hierarchy.
pub fn test_cgroups(name: &str) -> CgroupTree {
    require_root(name);
    let hierarchy = cpu_hierarchy().expect("no cgroup hierarchy with the cpu controller");
    CgroupTree::new(hierarchy, &format!("{name}-{}", std::process::id()))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

/// A tree of test cgroups with busy processes. Dropping it kills and reaps the processes and
/// removes the cgroups leaf-first, retrying while the kernel still counts the dead tasks.
pub struct CgroupTree {
    pub hierarchy: Hierarchy,
    /// The tree's top directory (absolute).
    pub top: PathBuf,
    created: Vec<PathBuf>,
    children: Vec<Child>,
}

impl CgroupTree {
    /// Create `<mount>/<name>`.
    pub fn new(hierarchy: Hierarchy, name: &str) -> Result<Self, String> {
        let top = hierarchy.mount.join(name);
        let mut t = CgroupTree {
            hierarchy,
            top: top.clone(),
            created: Vec::new(),
            children: Vec::new(),
        };
        if t.hierarchy.version == Version::V2 {
            t.enable_cpu(&t.hierarchy.mount.clone())?;
        }
        t.mkdir(&top)?;
        Ok(t)
    }

    fn mkdir(&mut self, dir: &Path) -> Result<(), String> {
        match fs::create_dir(dir) {
            Ok(()) => {
                self.created.push(dir.to_path_buf());
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(format!("mkdir {}: {e}", dir.display())),
        }
    }

    fn enable_cpu(&self, dir: &Path) -> Result<(), String> {
        let cur = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        if cur.split_whitespace().any(|c| c == "cpu") {
            return Ok(());
        }
        write(&dir.join("cgroup.subtree_control"), "+cpu")
    }

    /// Create `top/rel` (and its parents) with a CFS quota; returns its absolute path.
    pub fn add(&mut self, rel: &str, period_us: u64, quota_us: u64) -> Result<PathBuf, String> {
        self.add_path(Path::new(rel), period_us, quota_us)
    }

    /// [`CgroupTree::add`] of any path: a name that is not UTF-8 too.
    pub fn add_path(
        &mut self,
        rel: &Path,
        period_us: u64,
        quota_us: u64,
    ) -> Result<PathBuf, String> {
        let mut dir = self.top.clone();
        for part in rel.iter().filter(|p| *p != "/") {
            if self.hierarchy.version == Version::V2 {
                self.enable_cpu(&dir)?;
            }
            dir = dir.join(part);
            self.mkdir(&dir)?;
        }
        match self.hierarchy.version {
            Version::V1 => {
                write(&dir.join("cpu.cfs_period_us"), &period_us.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
            }
            Version::V2 => write(&dir.join("cpu.max"), &format!("{quota_us} {period_us}"))?,
        }
        Ok(dir)
    }

    /// Start `n` busy loops (`sh -c 'while :; do :; done'`) and move them into `cgroup`.
    pub fn busy(&mut self, cgroup: &Path, n: usize) -> Result<Vec<u32>, String> {
        let mut pids = Vec::new();
        for _ in 0..n {
            let child = spawn_busy_in(cgroup)?;
            pids.push(child.id());
            self.children.push(child);
        }
        Ok(pids)
    }

    /// The path cfstrace should print for `dir`: relative to the hierarchy's mount, with a
    /// leading '/'.
    pub fn cgroup_path(&self, dir: &Path) -> String {
        format!(
            "/{}",
            dir.strip_prefix(&self.hierarchy.mount)
                .unwrap_or(dir)
                .display()
        )
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        // Deepest first: created in parent-then-child order.
        for dir in self.created.iter().rev() {
            if let Err(e) = remove_cgroup(dir, Duration::from_secs(5)) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

// -------------------------------------------------------------------------------------------
// Running cfstrace

/// A finished command: its status and what it printed.
#[derive(Debug)]
pub struct Run {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// For assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.status,
            tail(&self.stdout, 4000),
            tail(&self.stderr, 4000)
        )
    }
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// What a run printed on stdout, as JSON (a report), or a panic that shows the run.
pub fn stdout_json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.describe()))
}

/// The value at a JSON pointer, `null` where there is none (for assertions).
pub fn at<'a>(v: &'a Value, pointer: &str) -> &'a Value {
    v.pointer(pointer).unwrap_or(&Value::Null)
}

/// A storm run once per test binary and shared by its tests (two storms would fight for the
/// CPUs): the first call runs `run`, later calls get its result. A failed storm fails every test
/// that needs it, naming `what`; a missing binary is reported plainly by every test.
pub fn shared<T: Send + Sync>(
    cell: &'static OnceLock<Result<T, String>>,
    what: &str,
    run: fn() -> Result<T, String>,
) -> &'static T {
    let _ = cfstrace_bin();
    match cell.get_or_init(run) {
        Ok(t) => t,
        Err(e) => panic!("{what} failed: {e}"),
    }
}

/// Run `bin args...` with a wall-clock limit; output goes through files in `dir` so a chatty
/// child can never block on a full pipe. Kills the child at the limit.
pub fn run_with_timeout(
    bin: &Path,
    args: &[&str],
    dir: &Path,
    limit: Duration,
) -> Result<Run, String> {
    let command = format!("{} {}", bin.display(), args.join(" "));
    let n = fs::read_dir(dir).map(|r| r.count()).unwrap_or(0);
    let out_path = dir.join(format!("cmd{n}.stdout"));
    let err_path = dir.join(format!("cmd{n}.stderr"));
    let out = fs::File::create(&out_path).map_err(|e| format!("{}: {e}", out_path.display()))?;
    let err = fs::File::create(&err_path).map_err(|e| format!("{}: {e}", err_path.display()))?;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {command}: {e}"))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{command}` did not finish in {}s (killed); stderr:\n{}",
                    limit.as_secs(),
                    fs::read_to_string(&err_path).unwrap_or_default()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for {command}: {e}")),
        }
    };
    Ok(Run {
        command,
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_is_removed_after_a_pass_and_kept_after_a_panic() {
        let tmp =
            std::env::temp_dir().join(format!("cfstrace-scratch-test-{}", std::process::id()));
        let tmp = tmp.to_str().unwrap().to_string();
        let passed = Scratch::new(&tmp, "passed");
        let passed_path = passed.to_path_buf();
        assert!(
            passed_path.is_dir()
                && passed
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("passed-")
        );
        drop(passed);
        assert!(!passed_path.exists(), "a passing test's scratch is removed");

        let failed_path = std::panic::catch_unwind(|| {
            let failed = Scratch::new(&tmp, "failed");
            std::panic::panic_any(failed.to_path_buf());
        })
        .unwrap_err()
        .downcast::<PathBuf>()
        .unwrap();
        assert!(failed_path.is_dir(), "a failed test's scratch is kept");
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn mountinfo_v1_cpu_and_v2() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                    33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n\
                    34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let (v1, v2) = cgroup_mounts(text);
        assert_eq!(v1, [PathBuf::from("/sys/fs/cgroup/cpu")]);
        assert_eq!(v2, [PathBuf::from("/sys/fs/cgroup/unified")]);
    }

    #[test]
    fn mountinfo_combined_and_optional_fields() {
        let text = "25 20 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
                    26 20 0:23 / /sys/fs/cgroup/my\\040dir rw shared:1 master:2 - cgroup2 cgroup2 rw,nsdelegate\n";
        let (v1, v2) = cgroup_mounts(text);
        assert_eq!(v1, [PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")]);
        assert_eq!(v2, [PathBuf::from("/sys/fs/cgroup/my dir")]);
    }
}

// -------------------------------------------------------------------------------------------
// Churn: cgroups made and removed while a record runs (tests/tests/churn.rs)

/// Start one busy loop (`sh -c 'while :; do :; done'`) and move it into `cgroup`. The caller owns
/// the child (kill and reap it); on a failed move the child is killed here.
pub fn spawn_busy_in(cgroup: &Path) -> Result<Child, String> {
    let mut child = Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning sh: {e}"))?;
    if let Err(e) = write(&cgroup.join("cgroup.procs"), &child.id().to_string()) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(child)
}

/// Remove an empty cgroup directory, retrying (up to `limit`) while the kernel still counts
/// tasks that were just reaped. A directory already gone is fine.
pub fn remove_cgroup(dir: &Path, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("rmdir {}: {e}", dir.display()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// `nr_throttled` from a cgroup's cpu.stat (the same key on v1 and v2).
pub fn nr_throttled(cgroup: &Path) -> Option<u64> {
    fs::read_to_string(cgroup.join("cpu.stat"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled ")?.trim().parse().ok())
}

/// A `kB` figure of a live process's /proc/PID/status (`VmHWM`, `VmRSS`, `RssAnon`...); None
/// once it has exited (a zombie has no memory left to report).
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    parse_status_kib(
        &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        key,
    )
}

/// The `key:` line of /proc/PID/status text, in KiB.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod churn_helper_tests {
    use super::*;

    #[test]
    fn status_lines() {
        let status = "Name:\tcfstrace\nVmPeak:\t  123456 kB\nVmHWM:\t   20480 kB\nVmRSS:\t 1000 kB\n\
                      RssAnon:\t 800 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "RssAnon"), Some(800));
        assert_eq!(parse_status_kib(status, "Rss"), None);
        assert_eq!(
            parse_status_kib("Name:\tzombie\nState:\tZ (zombie)\n", "VmHWM"),
            None
        );
        assert!(status_kib(std::process::id(), "VmHWM").is_some_and(|k| k > 0));
    }
}

// -------------------------------------------------------------------------------------------
// Pseudo-terminals (tests/tests/hostile_names.rs)

/// Run `bin args` with stdin, stdout and stderr on a new pseudo-terminal of `cols` x `rows`
/// (TERM=xterm-256color, colours on); every byte the terminal received, and the status. The
/// child is killed at `limit`.
pub fn run_in_pty_bytes(
    bin: &Path,
    args: &[&str],
    size: (u16, u16),
    limit: Duration,
) -> Result<(ExitStatus, Vec<u8>), String> {
    use std::io::Read as _;
    let ws = nix::pty::Winsize {
        ws_row: size.1,
        ws_col: size.0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&ws, None).map_err(|e| format!("openpty: {e}"))?;
    let (master, slave) = (pty.master, pty.slave);
    let dup = |fd: &std::os::fd::OwnedFd| fd.try_clone().map_err(|e| format!("dup: {e}"));
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .stdin(Stdio::from(dup(&slave)?))
        .stdout(Stdio::from(dup(&slave)?))
        .stderr(Stdio::from(slave));
    let command = format!("{} {}", bin.display(), args.join(" "));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {command}: {e}"))?;
    // The child holds the only copies of the slave now: when it exits, reads end (EIO).
    drop(cmd);
    let reader = std::thread::spawn(move || {
        let mut f = fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`{command}` did not finish in {limit:?} (killed)"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for {command}: {e}")),
        }
    };
    let out = reader
        .join()
        .map_err(|_| "the pty reader panicked".to_string())?;
    Ok((status, out))
}
