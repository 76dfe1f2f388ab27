//! Running commands, finding programs, and the workspace layout.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// `target/` of the workspace (honours CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The target cfstrace ships for: musl, linked statically, so the one file runs on any x86_64
/// Linux node whatever its libc (the glibc build needs the build host's glibc, 2.35 here).
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

/// The static cfstrace binary that [`build_tracer`] produces: the file to copy to a node, the
/// one the VM guests boot with, and the one the host tests run.
pub fn cfstrace_bin() -> PathBuf {
    target_dir()
        .join(STATIC_TARGET)
        .join("release")
        .join("cfstrace")
}

/// The cargo that runs us (so `cargo +toolchain xtask` keeps its toolchain).
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// `cargo build --release -p tracer --target x86_64-unknown-linux-musl`: the static cfstrace
/// binary with its eBPF object (built for bpfel-unknown-none by tracer/build.rs as before).
pub fn build_tracer() -> Result<PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "tracer",
        "--target",
        STATIC_TARGET,
    ]))?;
    let bin = cfstrace_bin();
    if !bin.is_file() {
        bail!("cargo built tracer but {} is missing", bin.display());
    }
    Ok(bin)
}

/// A command line as a person would type it.
pub fn display(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$`\\*?".contains(c)) {
            s.push_str(&format!(" '{}'", a.replace('\'', r"'\''")));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// Run a command with inherited stdio; error if it does not exit 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    println!("+ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", cmd.get_program().to_string_lossy()))?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

/// Run a command quietly and return its stdout; error (with its stderr) if it fails.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {}", cmd.get_program().to_string_lossy()))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The path of `program` on PATH, if any.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `cargo install` puts bpf-linker in $CARGO_HOME/bin; make sure the tools we start (and the eBPF
/// build, which looks bpf-linker up on PATH) find it even when a CI shell lacks that directory.
pub fn add_cargo_bin_to_path() {
    let Some(bin) = cargo_home().map(|h| h.join("bin")) else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) || !bin.is_dir() {
        return;
    }
    let mut dirs: Vec<PathBuf> = vec![bin];
    dirs.extend(std::env::split_paths(&path));
    if let Ok(joined) = std::env::join_paths(dirs) {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("PATH", joined) };
    }
}

pub fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// Prefix a privileged command with sudo when we are not root (and sudo exists).
pub fn privileged(program: &str) -> Result<Command> {
    if is_root() {
        return Ok(Command::new(program));
    }
    if which("sudo").is_none() {
        bail!("`{program}` needs root: run as root, or install sudo");
    }
    let mut cmd = Command::new("sudo");
    cmd.arg(program);
    Ok(cmd)
}
