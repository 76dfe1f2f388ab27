use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("tracer has no parent directory"))?;
    git_version(workspace);
    let root = workspace.join("tracer-ebpf");
    let root = root.to_str().context("non-UTF-8 path to tracer-ebpf")?;
    aya_build::build_ebpf(
        [Package {
            name: "tracer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context(
        "building the eBPF object (needs `cargo xtask setup`: nightly rust-src and bpf-linker)",
    )
}

/// `--version` names the commit it was built from: CFSTRACE_GIT is `<short hash>, <commit
/// date>`, or `unknown` outside a git checkout of this workspace (a source tarball, git
/// missing). Never fails the build.
fn git_version(workspace: &Path) {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(args)
            .output()
            .ok()?;
        let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    };
    // Only our own checkout: a tarball unpacked inside some other repository is `unknown`.
    let ours = git(&["rev-parse", "--show-toplevel"])
        .is_some_and(|t| Path::new(&t).canonicalize().ok() == workspace.canonicalize().ok());
    let described = ours
        .then(|| git(&["log", "-1", "--format=%h, %cd", "--date=short", "HEAD"]))
        .flatten();
    println!(
        "cargo:rustc-env=CFSTRACE_GIT={}",
        described.as_deref().unwrap_or("unknown")
    );
    if !ours {
        return;
    }
    // Rerun when HEAD moves: HEAD itself (a branch switch or detached checkout) and the ref it
    // names (a commit on the branch), loose or packed, and HEAD's reflog (a commit on a packed
    // branch writes a loose ref not watched yet). In a worktree HEAD lives in the worktree's
    // git dir and refs in the common one. Only existing files are named: cargo reruns a build
    // script on every build for a missing one (and this one builds the eBPF).
    let (Some(git_dir), Some(common)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) else {
        return;
    };
    let git_dir = Path::new(&git_dir);
    let mut watch = vec![git_dir.join("HEAD"), git_dir.join("logs/HEAD")];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(Path::new(&common).join(r));
    }
    watch.push(Path::new(&common).join("packed-refs"));
    for p in watch.iter().filter(|p| p.is_file()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
