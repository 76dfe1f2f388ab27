//! The conventions an SRE expects of a command-line tool, checked on the built binary: shell
//! completions, a man page, `--version` naming the commit, `-q` and `-v`. Needs no root and no
//! throttling: it only runs cfstrace on kept captures and asks it about itself.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cfstrace_tests::{cfstrace_bin, scratch, workspace_root};

/// The host fixture: every probe refused fentry (EPERM) and kprobe the same way.
fn eperm_capture() -> PathBuf {
    workspace_root().join("tests/fixtures/host-6.18-demo.jsonl")
}

fn cfstrace(args: &[&str]) -> Output {
    Command::new(cfstrace_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running cfstrace {args:?}: {e}"))
}

/// Its stdout, after checking it exited 0.
fn ok(args: &[&str]) -> (String, String) {
    let out = cfstrace(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "cfstrace {args:?}: {}\n{stderr}",
        out.status
    );
    (String::from_utf8(out.stdout).expect("UTF-8 stdout"), stderr)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn bash_completion_parses_and_registers() {
    let dir = scratch!("completions");
    let (script, _) = ok(&["completions", "bash"]);
    let file = dir.join("cfstrace.bash");
    fs::write(&file, &script).unwrap();
    let n = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(
        n.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&n.stderr)
    );
    // Sourced, it completes `cfstrace` (what `source <(cfstrace completions bash)` does).
    let registered = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p cfstrace", path(&file)))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&registered.stdout);
    assert!(
        registered.status.success() && said.contains("_cfstrace") && said.ends_with("cfstrace\n"),
        "complete -p cfstrace: {said}{}",
        String::from_utf8_lossy(&registered.stderr)
    );
    assert!(script.contains("--fail-under") && !script.contains("__spin"));
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (s, _) = ok(&["completions", shell]);
        assert!(s.contains("record") && s.contains("report"), "{shell}: {s}");
    }
    assert_eq!(cfstrace(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn man_page_has_every_command_and_renders() {
    let (roff, _) = ok(&["man"]);
    assert!(roff.contains(".TH cfstrace 1 "), "{roff}");
    // Every subcommand `--help` lists (but clap's own `help`) has its page.
    let (help, _) = ok(&["--help"]);
    let subs: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .collect();
    assert!(subs.len() >= 8 && subs.contains(&"record"), "{help}");
    for sub in subs {
        let page = format!(".TH cfstrace-{sub} 1 ");
        assert!(roff.contains(&page), "no page for {sub}");
    }
    let dir = scratch!("man");
    let (_, said) = ok(&["man", "--out", path(&dir)]);
    assert!(dir.join("cfstrace.1").is_file() && dir.join("cfstrace-record.1").is_file());
    assert!(said.contains("cfstrace: wrote "), "{said}");
    // Rendered by groff where the machine has it (man-db's `man -l` uses it too).
    // Plain ASCII without overstrikes, so the flags read as typed.
    let groff = Command::new("groff")
        .args(["-man", "-Tascii", "-P", "-cbou", "-ww"])
        .arg(dir.join("cfstrace-record.1"))
        .output();
    match groff {
        Ok(g) => {
            let page = String::from_utf8_lossy(&g.stdout);
            let warned = String::from_utf8_lossy(&g.stderr);
            assert!(g.status.success() && warned.is_empty(), "groff: {warned}");
            assert!(
                page.contains("-o, --output <FILE>") && page.contains("--fail-under <PCT>"),
                "{page}"
            );
        }
        Err(e) => eprintln!("groff not run ({e}): the roff was checked as text only"),
    }
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let (v, _) = ok(&["--version"]);
    let git = Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["rev-parse", "--short", "HEAD"])
        .output();
    let want = match git {
        Ok(g) if g.status.success() => {
            let short = String::from_utf8(g.stdout).unwrap().trim().to_string();
            format!("(git {short}, ")
        }
        _ => "(git unknown)".to_string(),
    };
    assert!(
        v.starts_with("cfstrace ") && v.contains(&want) && v.ends_with(")\n"),
        "--version said {v:?}, want it to hold {want:?} (a binary older than HEAD? rebuild)"
    );
    assert_eq!(ok(&["-V"]).0, v);
}

#[test]
fn quiet_silences_info_lines_but_not_the_report() {
    let dir = scratch!("quiet");
    let cap = eperm_capture();
    let svg = dir.join("plot.svg");
    let args = |q: bool| {
        let mut a = vec!["report", path(&cap), "--svg", path(&svg)];
        if q {
            a.insert(1, "-q");
        }
        a
    };
    let (normal, said) = ok(&args(false));
    assert!(said.contains("cfstrace: wrote plot "), "{said}");
    let (quiet, said) = ok(&args(true));
    assert_eq!(said, "", "-q printed on stderr");
    assert_eq!(quiet, normal, "-q changed the report itself");
    assert!(svg.is_file());
    // Global: before the subcommand too. Errors are never silenced.
    let (_, said) = ok(&["-q", "report", path(&cap), "--svg", path(&svg)]);
    assert_eq!(said, "");
    let missing = cfstrace(&["report", "-q", "/nonexistent/capture.jsonl"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cfstrace: error: "));
    assert_eq!(
        cfstrace(&["report", "-q", "-v", path(&cap)]).status.code(),
        Some(2)
    );
}

#[test]
fn probe_reasons_are_short_by_default_and_whole_with_v() {
    let cap = eperm_capture();
    let (short, _) = ok(&["report", path(&cap)]);
    assert_eq!(short.matches("EPERM").count(), 1, "said once:\n{short}");
    assert!(short.contains("  distribute, unthrottle unavailable: fentry [1]; kprobe [2]\n"));
    assert!(short.contains("  [1] fentry: the kernel refused the program (EPERM"));
    assert!(short.contains("(-v: every probe, its target and reasons in full)"));
    assert!(!short.contains("os error"));

    let (full, _) = ok(&["report", "-v", path(&cap)]);
    for probe in [
        "period_timer",
        "distribute",
        "unthrottle",
        "async_unthrottle",
        "enqueue",
    ] {
        let line = full
            .lines()
            .find(|l| l.starts_with(&format!("  {probe} ")))
            .unwrap_or_else(|| panic!("no {probe} line in\n{full}"));
        assert!(
            line.contains("(EPERM: BPF trampolines not permitted here) [the BPF_PROG_LOAD syscall")
                && line.contains("No such file or directory (os error 2)]"),
            "{probe} not in full: {line}"
        );
    }
    assert!(!full.contains("  [1] ") && !full.contains("-v:"));
    // The JSON is the same either way: -v is the table's.
    assert_eq!(
        ok(&["report", "--json", path(&cap)]).0,
        ok(&["report", "-v", "--json", path(&cap)]).0
    );
}

#[test]
fn generated_text_on_a_closed_pipe_is_no_panic() {
    for args in [&["man"][..], &["completions", "zsh"][..]] {
        let mut child = Command::new(cfstrace_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before anything is written: every write is EPIPE.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !said.contains("panicked"),
            "cfstrace {args:?} into a closed pipe: {}\n{said}",
            out.status
        );
    }
}
