//! `cargo xtask setup`: check each requirement, install only what is missing.
//!
//! Requirements (DESIGN.md "Toolchain"): LLVM 22 dev files for bpf-linker (apt); the nightly
//! toolchain with rust-src (the eBPF crate is built with -Z build-std); bpf-linker 0.13 built
//! against LLVM 22; the Rust standard library for x86_64-unknown-linux-musl, so `cfstrace` ships
//! as one static binary (no musl-tools: no dependency compiles C, and rustc links musl targets
//! with its own bundled musl). The tests add their tools ([`TEST_APT_PACKAGES`]); `demo`
//! installs only what the build needs ([`Needs`]). Nothing is ever removed: see `apt_install`.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::{self, output, privileged, run};

/// What a command needs installed: `demo` only builds and runs cfstrace ([`Needs::Build`]);
/// `test`, `vm`, `bench` and `setup` also run the test tools ([`Needs::Test`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Needs {
    Build,
    Test,
}

/// Debian packages building cfstrace needs: bpf-linker links against LLVM 22.
pub const BUILD_APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Debian packages only the tests need.
pub const TEST_APT_PACKAGES: &[&str] = &[
    // The VM tests: real Debian kernels under qemu, an initramfs of busybox and cpio.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    // The independent parser tests/tests/prometheus.rs checks `watch --prometheus`'s /metrics with.
    "python3-prometheus-client",
    // rsvg-convert: the independent renderer tests/tests/svg.rs draws `report --svg` with.
    "librsvg2-bin",
    // Real container runtimes for tests/tests/containers.rs (podman runs daemonless with runc;
    // docker.io brings dockerd and containerd, started by the test itself).
    "podman",
    "runc",
    "docker.io",
    // bpftool: tests/tests/doctor_findings.rs reads the BTF through it, apart from cfstrace.
    "bpftool",
    // file: tests/tests/static_binary.rs has it say the shipped binary is static.
    "file",
    // strace: tests/tests/signals.rs sees the capture fsync'd after its last write.
    "strace",
    // prometheus (the server and promtool): tests/tests/deploy.rs checks and unit-tests
    // deploy/prometheus's rules and fires them from a real server scraping cfstrace.
    "prometheus",
    // python3-venv: the venv under target/ that PIP_TOOLS are installed into.
    "python3-venv",
];

impl Needs {
    fn apt_packages(self) -> Vec<&'static str> {
        match self {
            Needs::Build => BUILD_APT_PACKAGES.to_vec(),
            Needs::Test => [BUILD_APT_PACKAGES, TEST_APT_PACKAGES].concat(),
        }
    }
}

/// PyPI tools the tests need, installed into a venv of their own under target/ (never into the
/// system Python): kubernetes-validate checks deploy/kubernetes offline against the Kubernetes
/// schemas it ships (tests/tests/deploy.rs).
pub const PIP_TOOLS: &[(&str, &str)] = &[("kubernetes-validate", "1.37.0")];

/// The venv PIP_TOOLS go into (its `bin/` holds their commands).
pub const PIP_VENV: &str = "target/pytools";

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_REQ: &str = "^0.13";
const BPF_LINKER_SERIES: &str = "0.13.";

/// Make sure everything is installed; print one line per item. With `quiet_if_ok`, print nothing
/// when nothing had to be installed (demo/test/vm call this first).
pub fn ensure(needs: Needs, quiet_if_ok: bool) -> Result<()> {
    let mut lines = Vec::new();

    // 1. apt packages (bpf-linker links against llvm-22-dev, so these come first).
    let pkgs = needs.apt_packages();
    let missing = missing_apt_packages(&pkgs)?;
    for p in pkgs.iter().filter(|p| !missing.contains(p)) {
        lines.push(format!("ok: {p} (apt)"));
    }
    if !missing.is_empty() {
        flush(&mut lines);
        println!("installing: {} (apt)", missing.join(" "));
        apt_install(&missing)?;
        let still = missing_apt_packages(&missing)?;
        if !still.is_empty() {
            bail!("apt-get install left {} missing", still.join(" "));
        }
    }

    // 2. nightly toolchain + rust-src.
    match nightly_state()? {
        Nightly::Ready(v) => lines.push(format!("ok: rust-src for {v}")),
        Nightly::NoRustSrc => {
            flush(&mut lines);
            println!("installing: rust-src (rustup, nightly)");
            add_rust_src()?;
        }
        Nightly::Missing => {
            flush(&mut lines);
            println!("installing: nightly toolchain + rust-src (rustup)");
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]))?;
            add_rust_src()?;
        }
    }

    // 3. bpf-linker 0.13.x (built against LLVM 22).
    match bpf_linker_version() {
        Some(v) if v.starts_with(BPF_LINKER_SERIES) => lines.push(format!("ok: bpf-linker {v}")),
        found => {
            flush(&mut lines);
            match found {
                Some(v) => {
                    println!("installing: bpf-linker {BPF_LINKER_REQ} (cargo install; found {v})")
                }
                None => println!("installing: bpf-linker {BPF_LINKER_REQ} (cargo install)"),
            }
            install_bpf_linker()?;
            match bpf_linker_version() {
                Some(v) if v.starts_with(BPF_LINKER_SERIES) => println!("ok: bpf-linker {v}"),
                other => bail!("bpf-linker still not 0.13.x after install (found {other:?})"),
            }
        }
    }

    // 4. The static target's standard library, for the toolchain that builds userspace.
    if static_target_installed()? {
        lines.push(format!("ok: rust target {}", cmd::STATIC_TARGET));
    } else {
        flush(&mut lines);
        println!("installing: rust target {} (rustup)", cmd::STATIC_TARGET);
        run(Command::new("rustup")
            .current_dir(cmd::workspace_root())
            .args(["target", "add", cmd::STATIC_TARGET]))?;
        if !static_target_installed()? {
            bail!("rustup target add {} left it missing", cmd::STATIC_TARGET);
        }
    }

    // 5. The tests' PyPI tools, pinned, in their venv (not for the demo).
    let venv = cmd::workspace_root().join(PIP_VENV);
    let missing = if needs == Needs::Test {
        missing_pip_tools(&venv)
    } else {
        Vec::new()
    };
    for (p, v) in PIP_TOOLS
        .iter()
        .filter(|t| needs == Needs::Test && !missing.contains(t))
    {
        lines.push(format!("ok: {p} {v} (pip, {PIP_VENV})"));
    }
    if !missing.is_empty() {
        flush(&mut lines);
        let names: Vec<String> = missing.iter().map(|(p, v)| format!("{p}=={v}")).collect();
        println!("installing: {} (pip, venv {PIP_VENV})", names.join(" "));
        install_pip_tools(&venv, &names)?;
        let still = missing_pip_tools(&venv);
        if !still.is_empty() {
            bail!("pip install left {still:?} missing in {}", venv.display());
        }
    }

    if !quiet_if_ok {
        flush(&mut lines);
    }
    Ok(())
}

/// Whether the rustc that builds the workspace (the same rustup toolchain: run from the
/// workspace root) has the static target's standard library.
fn static_target_installed() -> Result<bool> {
    let libdir = output(
        Command::new("rustc")
            .current_dir(cmd::workspace_root())
            .args(["--print", "target-libdir", "--target", cmd::STATIC_TARGET]),
    )?;
    let libdir = std::path::Path::new(libdir.trim());
    // rustc prints the path whether or not the target is installed: look for its libstd.
    Ok(std::fs::read_dir(libdir).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
    }))
}

/// Those of PIP_TOOLS not installed at their pinned version in `venv`.
fn missing_pip_tools(venv: &std::path::Path) -> Vec<(&'static str, &'static str)> {
    let pip = venv.join("bin/pip");
    PIP_TOOLS
        .iter()
        .filter(|(p, v)| {
            let out = Command::new(&pip).args(["show", p]).output();
            !matches!(out, Ok(o) if o.status.success()
                && String::from_utf8_lossy(&o.stdout).lines().any(|l| l == format!("Version: {v}")))
        })
        .copied()
        .collect()
}

/// Make the venv with Debian's python3 (apt python3-venv) and pip-install `reqs` into it.
fn install_pip_tools(venv: &std::path::Path, reqs: &[String]) -> Result<()> {
    if !venv.join("bin/pip").exists() {
        run(Command::new("/usr/bin/python3")
            .arg("-m")
            .arg("venv")
            .arg(venv))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(reqs))
}

/// `cargo xtask setup --check`: report, install nothing, fail if something is missing.
pub fn check() -> Result<()> {
    let mut bad = Vec::new();
    let pkgs = Needs::Test.apt_packages();
    let missing = missing_apt_packages(&pkgs)?;
    for p in &pkgs {
        if missing.contains(p) {
            println!("missing: {p} (apt)");
            bad.push(p.to_string());
        } else {
            println!("ok: {p} (apt)");
        }
    }
    match nightly_state()? {
        Nightly::Ready(v) => println!("ok: rust-src for {v}"),
        Nightly::NoRustSrc => {
            println!("missing: rust-src for nightly");
            bad.push("rust-src".into());
        }
        Nightly::Missing => {
            println!("missing: nightly toolchain");
            bad.push("nightly".into());
        }
    }
    match bpf_linker_version() {
        Some(v) if v.starts_with(BPF_LINKER_SERIES) => println!("ok: bpf-linker {v}"),
        Some(v) => {
            println!("missing: bpf-linker {BPF_LINKER_REQ} (found {v})");
            bad.push("bpf-linker".into());
        }
        None => {
            println!("missing: bpf-linker {BPF_LINKER_REQ}");
            bad.push("bpf-linker".into());
        }
    }
    if static_target_installed()? {
        println!("ok: rust target {}", cmd::STATIC_TARGET);
    } else {
        println!("missing: rust target {} (rustup)", cmd::STATIC_TARGET);
        bad.push(cmd::STATIC_TARGET.into());
    }
    let missing = missing_pip_tools(&cmd::workspace_root().join(PIP_VENV));
    for (p, v) in PIP_TOOLS {
        if missing.contains(&(*p, *v)) {
            println!("missing: {p} {v} (pip, {PIP_VENV})");
            bad.push(p.to_string());
        } else {
            println!("ok: {p} {v} (pip, {PIP_VENV})");
        }
    }
    if !bad.is_empty() {
        bail!("missing: {} (run `cargo xtask setup`)", bad.join(" "));
    }
    Ok(())
}

fn flush(lines: &mut Vec<String>) {
    for l in lines.drain(..) {
        println!("{l}");
    }
}

/// Those of `pkgs` that dpkg does not have installed.
fn missing_apt_packages<'a>(pkgs: &[&'a str]) -> Result<Vec<&'a str>> {
    if cmd::which("dpkg-query").is_none() {
        bail!("dpkg-query not found: cargo xtask setup supports Debian/Ubuntu hosts only");
    }
    missing_of(pkgs)
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    let mut update = privileged("apt-get")?;
    update.args(["update", "-q"]);
    run(&mut update)?;
    // `sudo VAR=value cmd` and plain `env VAR=value cmd` both set the variable.
    let mut install = if cmd::is_root() {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    } else {
        let mut c = privileged("env")?;
        c.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        c
    };
    // Never remove what the machine has: first ask apt what it would do, and stop naming what
    // it would remove; `--no-remove` makes apt itself refuse as well.
    let mut sim = Command::new("apt-get");
    sim.args(["install", "-s", "-q", "--no-install-recommends"])
        .args(pkgs);
    let plan = output(&mut sim)?;
    let removed = removals(&plan);
    if !removed.is_empty() {
        bail!(
            "installing {} would make apt remove {}, which this machine has; cargo xtask never \
             removes a package: install them yourself if that is what you want",
            pkgs.join(" "),
            removed.join(" ")
        );
    }
    install
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "--no-remove",
        ])
        .args(pkgs);
    run(&mut install)
}

/// The packages an `apt-get -s install` plan removes (its `Remv NAME [VERSION]` lines).
fn removals(plan: &str) -> Vec<String> {
    plan.lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

enum Nightly {
    Ready(String),
    NoRustSrc,
    Missing,
}

/// `rustup component add rust-src --toolchain nightly`: the eBPF build needs the nightly's
/// standard library sources.
fn add_rust_src() -> Result<()> {
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn nightly_state() -> Result<Nightly> {
    if cmd::which("rustup").is_none() {
        bail!("rustup not found: the eBPF build needs rustup's nightly toolchain with rust-src");
    }
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    let Some(nightly) = toolchains
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .find(|t| *t == "nightly" || t.starts_with("nightly-"))
    else {
        return Ok(Nightly::Missing);
    };
    let comps = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if comps
        .lines()
        .any(|l| l.trim() == "rust-src" || l.trim().starts_with("rust-src-"))
    {
        Ok(Nightly::Ready(nightly.to_string()))
    } else {
        Ok(Nightly::NoRustSrc)
    }
}

/// "0.13.0" from `bpf-linker --version` ("bpf-linker 0.13.0"), or None if it does not run.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_string)
}

fn install_bpf_linker() -> Result<()> {
    let attempt = |locked: bool| {
        let mut c = cmd::cargo();
        c.env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_REQ,
                "--force",
            ]);
        if locked {
            c.arg("--locked");
        }
        c.args(["--no-default-features", "--features", "llvm-22"]);
        run(&mut c)
    };
    attempt(true).or_else(|e| {
        println!("bpf-linker: --locked install failed ({e:#}); retrying without --locked");
        attempt(false)
    })
}

/// Debian packages only `cargo xtask bench` needs (its peer and its per-program figures):
/// installed by the bench itself, never by `setup`, `demo` or `test`.
pub const BENCH_APT_PACKAGES: &[&str] = &["bpftrace", "bpftool"];

/// Install those of `pkgs` that dpkg does not have, saying what it installs; print nothing
/// when all are there.
pub fn ensure_apt_packages(pkgs: &[&str]) -> Result<()> {
    if cmd::which("dpkg-query").is_none() {
        bail!(
            "dpkg-query not found: installing {} needs a Debian/Ubuntu host",
            pkgs.join(" ")
        );
    }
    let missing = missing_of(pkgs)?;
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing: {} (apt)", missing.join(" "));
    apt_install(&missing)?;
    let still = missing_of(&missing)?;
    if !still.is_empty() {
        bail!("apt-get install left {} missing", still.join(" "));
    }
    Ok(())
}

/// Those of `pkgs` that dpkg does not have installed.
fn missing_of<'a>(pkgs: &[&'a str]) -> Result<Vec<&'a str>> {
    let mut missing = Vec::new();
    for &p in pkgs {
        // Exit status is non-zero for unknown packages: that is "missing" too.
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${db:Status-Abbrev}", p])
            .output()
            .context("running dpkg-query")?;
        if !(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("ii")) {
            missing.push(p);
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_that_removes_names_what() {
        // What apt printed on this machine when a test package made it drop qemu-utils.
        let plan = "NOTE: This is only a simulation!\n\
                    Reading package lists...\n\
                    The following packages will be REMOVED:\n  qemu-utils\n\
                    Remv qemu-utils [1:7.2+dfsg-7+deb12u18]\n\
                    Inst librsvg2-bin (2.54.7+dfsg-1~deb12u1 Debian:12.13/oldstable [amd64])\n\
                    Conf librsvg2-bin (2.54.7+dfsg-1~deb12u1 Debian:12.13/oldstable [amd64])\n";
        assert_eq!(removals(plan), vec!["qemu-utils".to_string()]);
        assert!(removals("Inst cpio (2.13)\nConf cpio (2.13)\n").is_empty());
    }

    #[test]
    fn the_demo_needs_only_the_build() {
        let build = Needs::Build.apt_packages();
        let test = Needs::Test.apt_packages();
        assert!(build.iter().all(|p| test.contains(p)));
        for p in [
            "qemu-system-x86",
            "busybox-static",
            "python3-prometheus-client",
            "librsvg2-bin",
        ] {
            assert!(!build.contains(&p) && test.contains(&p), "{p}");
        }
    }
}
