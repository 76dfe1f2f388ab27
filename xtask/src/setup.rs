//! `cargo xtask setup`: check each requirement, install only what is missing.
//!
//! Requirements (DESIGN.md "Toolchain"): LLVM 22 dev files for bpf-linker, qemu + busybox-static +
//! cpio for the VM tests (apt); the nightly toolchain with rust-src (the eBPF crate is built with
//! -Z build-std); bpf-linker 0.13 built against LLVM 22.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::{self, output, privileged, run};

/// Debian packages the build and the tests need (python3-prometheus-client: the independent
/// parser tests/tests/prometheus.rs checks `watch --prometheus`'s /metrics with).
pub const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
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
    // prometheus (the server and promtool): tests/tests/deploy.rs checks and unit-tests
    // deploy/prometheus's rules and fires them from a real server scraping cfstrace.
    "prometheus",
    // python3-venv: the venv under target/ that PIP_TOOLS are installed into.
    "python3-venv",
];

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
pub fn ensure(quiet_if_ok: bool) -> Result<()> {
    let mut lines = Vec::new();

    // 1. apt packages (bpf-linker links against llvm-22-dev, so these come first).
    let missing = missing_apt_packages()?;
    for p in APT_PACKAGES.iter().filter(|p| !missing.contains(p)) {
        lines.push(format!("ok: {p} (apt)"));
    }
    if !missing.is_empty() {
        flush(&mut lines);
        println!("installing: {} (apt)", missing.join(" "));
        apt_install(&missing)?;
        let still = missing_apt_packages()?;
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

    // 4. PyPI tools, pinned, in their venv.
    let venv = cmd::workspace_root().join(PIP_VENV);
    let missing = missing_pip_tools(&venv);
    for (p, v) in PIP_TOOLS.iter().filter(|t| !missing.contains(t)) {
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
    let missing = missing_apt_packages()?;
    for p in APT_PACKAGES {
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

/// Packages of APT_PACKAGES that dpkg does not have installed.
fn missing_apt_packages() -> Result<Vec<&'static str>> {
    if cmd::which("dpkg-query").is_none() {
        bail!("dpkg-query not found: cargo xtask setup supports Debian/Ubuntu hosts only");
    }
    missing_of(APT_PACKAGES)
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
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(pkgs);
    run(&mut install)
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
