//! Least privilege on a real node: `record` run as `nobody` (not root, no DAC override) holding
//! only CAP_BPF, CAP_PERFMON, CAP_SYSLOG and CAP_SYS_NICE (`setpriv`, ambient capabilities)
//! records the throttled cgroup and its report names it; without each capability in turn it
//! stops with one line naming that capability (CAP_SYS_NICE only degrades: a warning naming it).
//!
//! The binary and the output directory live in a fresh directory under /tmp that `nobody` can
//! reach: the workspace may sit under a root-only home.
//!
//! Needs root (setpriv, cgroups). Never skips.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cfstrace_tests::{
    Run, at, cfstrace_bin, require_root, run_with_timeout, stdout_json, test_cgroups,
};

/// What the README says cfstrace needs when it is not root.
const NEEDED: [&str; 4] = ["bpf", "perfmon", "syslog", "sys_nice"];

/// A directory `nobody` can use: the binary (0755) in it, `out/` owned by nobody, the runs'
/// stdout/stderr files in `logs/` (root's).
struct Place {
    dir: tempfile::TempDir,
}

impl Place {
    fn new() -> Place {
        let dir = tempfile::Builder::new()
            .prefix("cfstrace-privilege-")
            .tempdir_in("/tmp")
            .expect("a directory under /tmp");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::copy(cfstrace_bin(), dir.path().join("cfstrace")).expect("copying the binary");
        fs::set_permissions(
            dir.path().join("cfstrace"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        // nobody:nogroup, as setpriv below.
        std::os::unix::fs::chown(&out, Some(65534), Some(65534)).expect("chown out/ to nobody");
        fs::create_dir(dir.path().join("logs")).unwrap();
        Place { dir }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    /// `cfstrace ARGS` as nobody holding exactly `caps` (setpriv names: bpf, perfmon, ...).
    fn run_as_nobody(&self, caps: &[&str], args: &[&str]) -> Run {
        let list: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
        let list = list.join(",");
        let bin = self.dir.path().join("cfstrace");
        let mut argv = vec![
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--no-new-privs",
        ];
        let inh = format!(
            "--inh-caps=-all{}{list}",
            if caps.is_empty() { "" } else { "," }
        );
        let amb = format!(
            "--ambient-caps=-all{}{list}",
            if caps.is_empty() { "" } else { "," }
        );
        argv.extend([inh.as_str(), amb.as_str(), "--", bin.to_str().unwrap()]);
        argv.extend(args);
        run_with_timeout(
            Path::new("setpriv"),
            &argv,
            &self.dir.path().join("logs"),
            Duration::from_secs(90),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

fn stderr_lines(r: &Run) -> Vec<&str> {
    r.stderr.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn record_as_nobody_with_only_the_documented_capabilities() {
    require_root("privilege");
    let place = Place::new();
    let mut cg = test_cgroups("privilege");
    let svc = cg.add("svc", 10_000, 2_000).expect("a quota'd cgroup");
    let busy = cg.busy(&svc, 1).expect("a busy loop");

    let cap = place.out("nobody.jsonl");
    let r = place.run_as_nobody(
        &NEEDED,
        &["record", "--duration", "3s", "-o", cap.to_str().unwrap()],
    );
    assert_eq!(r.status.code(), Some(0), "{}", r.describe());
    assert!(
        !r.stderr.contains("missing capability") && !r.stderr.contains("warning"),
        "a warning with every documented capability held: {}",
        r.describe()
    );
    let meta = fs::metadata(&cap).expect("the capture");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        65534,
        "the capture is not nobody's: cfstrace did not run as nobody"
    );

    // The report (read by root: reading needs nothing) names the throttled cgroup and its
    // process, which nobody could read (cgroup.procs and /proc/PID/comm are world-readable).
    let logs = place.dir.path().join("logs");
    let rep = run_with_timeout(
        &cfstrace_bin(),
        &["report", "--json", cap.to_str().unwrap()],
        &logs,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rep.status.code(), Some(0), "{}", rep.describe());
    let rep = stdout_json(&rep);
    let path = cg.cgroup_path(&svc);
    assert_eq!(at(&rep, "/culprit/path"), path.as_str(), "report: {rep}");
    let pids: Vec<u64> = at(&rep, "/culprit/processes")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    assert!(
        busy.iter().any(|b| pids.contains(&u64::from(*b))),
        "the culprit's processes {pids:?} miss the busy loop {busy:?}: {rep}"
    );
    // And the capture holds its callbacks.
    let text = fs::read_to_string(&cap).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let id = lines
        .iter()
        .find(|l| l["kind"] == "cgroup" && l["path"] == path.as_str())
        .and_then(|l| l["id"].as_u64())
        .unwrap_or_else(|| panic!("no cgroup line for {path}"));
    let periods = lines
        .iter()
        .filter(|l| l["kind"] == "period" && l["cgroup_id"].as_u64() == Some(id))
        .count();
    assert!(periods > 0, "no period of {path} recorded as nobody");
    assert_eq!(lines.last().unwrap()["kind"], "end");
}

#[test]
fn each_missing_capability_is_one_line_naming_it() {
    require_root("privilege");
    let place = Place::new();
    for missing in ["bpf", "perfmon", "syslog"] {
        let caps: Vec<&str> = NEEDED.into_iter().filter(|c| *c != missing).collect();
        let cap = place.out(&format!("without-{missing}.jsonl"));
        let r = place.run_as_nobody(
            &caps,
            &["record", "--duration", "1s", "-o", cap.to_str().unwrap()],
        );
        let want = format!("missing capability CAP_{}", missing.to_uppercase());
        let lines = stderr_lines(&r);
        assert_eq!(
            r.status.code(),
            Some(1),
            "without {missing}: {}",
            r.describe()
        );
        assert_eq!(
            lines.len(),
            1,
            "without {missing}, want one line: {}",
            r.describe()
        );
        assert!(
            lines[0].contains(&want),
            "without {missing}, want {want:?}: {}",
            r.describe()
        );
        assert!(
            !cap.exists(),
            "without {missing}: a failed start left a capture behind"
        );
    }

    // CAP_SYS_NICE only degrades: the capture is made, and one warning names the capability.
    let caps: Vec<&str> = NEEDED.into_iter().filter(|c| *c != "sys_nice").collect();
    let cap = place.out("without-sys_nice.jsonl");
    let r = place.run_as_nobody(
        &caps,
        &["record", "--duration", "1s", "-o", cap.to_str().unwrap()],
    );
    assert_eq!(
        r.status.code(),
        Some(0),
        "without sys_nice: {}",
        r.describe()
    );
    let warnings: Vec<&str> = stderr_lines(&r)
        .into_iter()
        .filter(|l| l.contains("warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "without sys_nice: {}", r.describe());
    assert!(
        warnings[0].contains("missing capability CAP_SYS_NICE"),
        "without sys_nice: {}",
        r.describe()
    );
    assert!(cap.exists(), "without sys_nice: no capture");
}
