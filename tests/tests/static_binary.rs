//! The shipped binary (README "Set-up": `target/x86_64-unknown-linux-musl/release/cfstrace`,
//! the one file to copy to a node) is static: `file` and `ldd` say so, and it runs in a root
//! that holds nothing but itself, so no shared library of this host can be what makes it work.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use cfstrace_tests::{require_root, scratch, workspace_root};

const TARGET: &str = "x86_64-unknown-linux-musl";

/// The file `cargo xtask test` builds and the README ships (the static target's release
/// binary), whatever CFSTRACE_BIN names: this test is about what a node gets.
fn shipped() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .map(|d| {
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"));
    let bin = target.join(TARGET).join("release/cfstrace");
    assert!(
        bin.is_file(),
        "the shipped binary {} is missing: run `cargo build --release -p tracer --target {TARGET}` \
         (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// stdout and stderr of a tool this test needs; it fails (never skips) when the tool is missing.
fn tool(program: &str, args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (cargo xtask setup installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn file_says_static() {
    let bin = shipped();
    let (ok, text) = tool("file", &["-L".as_ref(), bin.as_os_str()]);
    assert!(ok, "file {}: {text}", bin.display());
    assert!(
        text.contains("ELF 64-bit") && text.contains("x86-64"),
        "{text}"
    );
    // Rust's musl target links static-pie; a plain static link says "statically linked".
    assert!(
        text.contains("static-pie linked") || text.contains("statically linked"),
        "file does not call {} static: {text}",
        bin.display()
    );
    assert!(!text.contains("dynamically linked"), "{text}");
    assert!(!text.contains("interpreter"), "{text}");
}

#[test]
fn ldd_finds_no_library() {
    let bin = shipped();
    let (ok, text) = tool("ldd", &[bin.as_os_str()]);
    // glibc's ldd: "statically linked" (exit 0) for static-pie, "not a dynamic executable"
    // (exit 1) for a non-PIE static executable. Anything naming a library is a failure.
    let static_said = (ok && text.trim() == "statically linked")
        || (!ok && text.contains("not a dynamic executable"));
    assert!(static_said, "ldd {}: {text}", bin.display());
    assert!(!text.contains("=>") && !text.contains(".so"), "{text}");
}

/// `--version` from a root holding only the binary: no loader, no libc, no /proc, nothing of
/// this host to fall back on.
#[test]
fn runs_alone_in_an_empty_root() {
    require_root("static_binary::runs_alone_in_an_empty_root (chroot)");
    let bin = shipped();
    let dir = scratch!("static-root");
    fs::copy(&bin, dir.join("cfstrace")).expect("copying the binary into the empty root");
    let entries: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["cfstrace"], "the root holds only the binary");
    let (ok, text) = tool(
        "chroot",
        &[dir.as_os_str(), "/cfstrace".as_ref(), "--version".as_ref()],
    );
    assert!(ok, "chroot {} /cfstrace --version: {text}", dir.display());
    let want = format!("cfstrace {} (git ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&want), "want {want:?}..., got {text:?}");
}
