//! `cfstrace doctor --json` judges this node: the test makes a few quota'd cgroups of its own
//! (three throttled by busy loops, one nested under another quota, one idle), runs the real
//! binary, and checks its fixes, exposure, findings and exit status against facts it reads
//! itself: kallsyms, the burst file, BTF (through bpftool where installed), the watchdog
//! sysctls, every cgroup's quota walked by the test, and its own cgroups' cpu.stat across the
//! run. The cgroups and loops go on every path (the tree's Drop).
//!
//! Needs root (cgroups, BPF) and the built binary; it fails, never skips, without them.
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cfstrace_tests::expect::{FindingsFacts, check_findings};
use cfstrace_tests::{
    Scratch, Version, cfstrace_bin, nr_throttled, run_with_timeout, test_cgroups,
};
use serde_json::Value;

/// Every cgroup of the hierarchy with a quota: (count, shortest period), walked by the test.
fn quotas(dir: &Path, v: Version, out: &mut (u64, Option<u64>)) {
    let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
    let q = match v {
        Version::V1 => read("cpu.cfs_quota_us")
            .and_then(|q| q.trim().parse::<i64>().ok())
            .filter(|q| *q >= 0)
            .and(read("cpu.cfs_period_us"))
            .and_then(|p| p.trim().parse::<u64>().ok()),
        Version::V2 => read("cpu.max").and_then(|m| {
            let mut w = m.split_whitespace();
            (w.next()? != "max").then_some(())?;
            w.next()?.parse().ok()
        }),
    };
    if let Some(p) = q {
        out.0 += 1;
        out.1 = Some(out.1.map_or(p, |m: u64| m.min(p)));
    }
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            quotas(&e.path(), v, out);
        }
    }
}

fn kallsyms_has(text: &str, sym: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().nth(2) == Some(sym))
}

/// Does the kernel's BTF have `struct s` with member `f`? None without bpftool or BTF.
fn btf_member(s: &str, f: &str) -> Option<bool> {
    let out = Command::new("bpftool")
        .args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "c",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find(&format!("\nstruct {s} {{\n"))?;
    let body = &text[start..];
    let body = &body[..body.find("\n};").unwrap_or(body.len())];
    Some(body.lines().any(|l| {
        [format!(" {f};"), format!("*{f};"), format!(" {f}:")]
            .iter()
            .any(|end| l.contains(end.as_str()))
    }))
}

fn fix<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["fixes"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["fix"] == name))
        .unwrap_or(&Value::Null)
}

#[test]
fn doctor_findings_match_the_node() {
    let mut tree = test_cgroups("cfstrace-doctor-findings");
    let v = tree.hierarchy.version;
    let a = tree.add("a", 10_000, 2_000).unwrap();
    let b = tree.add("b", 10_000, 2_000).unwrap();
    let nest = tree.add("nest", 20_000, 10_000).unwrap();
    let leaf = tree.add("nest/leaf", 10_000, 2_000).unwrap();
    let _idle = tree.add("idle", 50_000, 10_000).unwrap();
    tree.busy(&a, 2).unwrap();
    tree.busy(&b, 1).unwrap();
    tree.busy(&leaf, 1).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let busy = [&a, &b, &leaf];

    // Facts, read by the test.
    let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap();
    let sysctl = |k: &str| {
        fs::read_to_string(format!("/proc/sys/kernel/{k}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let burst = match v {
        Version::V1 => tree.hierarchy.mount.join("cpu.cfs_burst_us").exists(),
        Version::V2 => a.join("cpu.max.burst").exists(),
    };
    let mut q = (0, None);
    quotas(&tree.hierarchy.mount, v, &mut q);
    let before: Vec<u64> = busy.iter().map(|c| nr_throttled(c).unwrap()).collect();

    let dir = Scratch::new(env!("CARGO_TARGET_TMPDIR"), "cfstrace-doctor-findings");
    let run = run_with_timeout(
        &cfstrace_bin(),
        &["doctor", "--json", "--sample", "2s"],
        dir.path(),
        Duration::from_secs(120),
    )
    .unwrap();
    let after: Vec<u64> = busy.iter().map(|c| nr_throttled(c).unwrap()).collect();
    let mut q2 = (0, None);
    quotas(&tree.hierarchy.mount, v, &mut q2);

    let doc: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}):\n{}", run.describe()));
    let rc = run.status.code().unwrap_or(-1) as i64;
    let own = |cs: &[&std::path::PathBuf]| {
        cs.iter()
            .map(|c| tree.cgroup_path(c))
            .collect::<Vec<_>>()
            .join(",")
    };
    let throttled: Vec<&std::path::PathBuf> = busy
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| a > b)
        .map(|(c, _)| *c)
        .collect();
    assert_eq!(
        throttled.len(),
        3,
        "the busy cgroups were not all throttled: {before:?} -> {after:?}"
    );
    let mut m: BTreeMap<String, String> = [
        (
            "csd_unthrottle",
            kallsyms_has(&kallsyms, "__cfsb_csd_unthrottle").to_string(),
        ),
        (
            "throttle_work",
            kallsyms_has(&kallsyms, "throttle_cfs_rq_work").to_string(),
        ),
        ("burst_file", burst.to_string()),
        ("hardlockup_panic", sysctl("hardlockup_panic")),
        ("nmi_watchdog", sysctl("nmi_watchdog")),
        ("watchdog_thresh", sysctl("watchdog_thresh")),
        ("own_quota", own(&[&a, &b, &nest, &leaf])),
        ("own_throttled", own(&throttled)),
    ]
    .into_iter()
    .map(|(k, v)| {
        (
            format!("findings.{k}"),
            v.replace("true", "yes").replace("false", "no"),
        )
    })
    .collect();
    // Only when nothing else on the host changed its quotas during the run.
    if q == q2 {
        m.insert("findings.quota_cgroups".into(), q.0.to_string());
        if let Some(p) = q.1 {
            m.insert("findings.shortest_period_us".into(), p.to_string());
        }
    }
    let facts = FindingsFacts::from_map(&m);
    let bad = check_findings(&doc, rc, &facts);
    assert!(
        bad.is_empty(),
        "doctor --json:\n  - {}\nfacts: {facts:?}\n{}",
        bad.join("\n  - "),
        run.describe()
    );

    // What only this host's test can say: BTF-decided fixes agree with bpftool's reading of
    // the same BTF, nested quotas are seen, and our cgroups are listed with their periods.
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    for (name, s, f) in [
        ("async_unthrottle", "cfs_rq", "throttled_csd_list"),
        ("task_throttle", "task_struct", "throttle_node"),
    ] {
        let basis = fix(&doc, name)["basis"].as_str().unwrap_or("");
        assert_eq!(
            basis.starts_with("btf:"),
            btf,
            "{name}: basis {basis:?}, BTF present {btf}"
        );
        match btf_member(s, f) {
            Some(has) => assert_eq!(
                fix(&doc, name)["present"],
                Value::Bool(has),
                "{name}: bpftool says {s}.{f} {has}"
            ),
            None => eprintln!("note: bpftool not installed: {name} checked against kallsyms only"),
        }
    }
    assert!(
        doc["exposure"]["max_quota_depth"].as_u64() >= Some(2),
        "{}",
        doc["exposure"]
    );
    let listed = doc["exposure"]["throttled"].as_array().unwrap();
    for c in &throttled {
        let p = tree.cgroup_path(c);
        let e = listed.iter().find(|x| x["path"] == p.as_str());
        assert!(
            e.is_some_and(|e| e["period_us"] == 10_000 && e["quota_us"] == 2_000),
            "{p} not listed with 2 ms / 10 ms: {listed:?}"
        );
    }
    // The text output agrees on the exit status and ends with the judgement.
    let text = run_with_timeout(
        &cfstrace_bin(),
        &["doctor", "--sample", "200ms"],
        dir.path(),
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(
        text.stdout.contains("\nfinding     ["),
        "{}",
        text.describe()
    );
    assert!(
        text.stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("judgement   ")),
        "{}",
        text.describe()
    );
}
