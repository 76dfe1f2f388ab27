//! Naming under churn, on this host: 2,000 throttled cgroups are created and destroyed in waves
//! while `cfstrace record` runs, all of them gone before `report`. Every churn cgroup whose period
//! timer fired must be named with its own path (names are resolved while recording), the
//! capture must have lost nothing, and the recorder's memory must stay small (its id -> path cache
//! is bounded and it never walks the hierarchy per event).
//!
//! Needs root (cgroups, BPF). Never skips. Runs a real throttling storm: wrap the run in
//! `flock /tmp/cfstrace-host.lock` where other storms may run.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cfstrace_tests::{
    at, cfstrace_bin, nr_throttled, remove_cgroup, run_with_timeout, spawn_busy_in, status_kib,
    stdout_json, test_cgroups,
};

/// Cgroups made and removed during the record.
const CHURN: usize = 2000;
/// Made, run and removed together: 100 busy loops live at a time on this 2-CPU host.
const WAVE: usize = 100;
/// How long each wave's loops run before they are killed and their cgroups removed.
const BUSY: Duration = Duration::from_millis(1000);
/// 1 ms every 100 ms: 1 % of a CPU per cgroup, so 100 busy cgroups want 1 CPU in all and
/// every one of them runs out of quota (is throttled) in every period, on 2 CPUs.
const PERIOD_US: u64 = 100_000;
const QUOTA_US: u64 = 1_000;
const RECORD_S: u64 = 45;
/// Of the 2,000, at least this many must have had callbacks (and all of those be named).
const FLOOR: usize = 1600;
/// The recorder's anonymous memory may grow this much over the churn: its id -> path cache and
/// per-cgroup state for 2,000 cgroups are a few hundred KiB; a cache that kept whole-tree walks or
/// leaked per event would show.
const RSS_GROWTH_LIMIT_KIB: u64 = 16 * 1024;
/// Its peak RSS over the whole run, generously (most of it is the kernel BTF parsed at attach:
/// ~58 MB on this host with no cgroup at all).
const HWM_LIMIT_KIB: u64 = 128 * 1024;

/// The busy loops; killed and reaped on every way out (before the cgroup tree's own guard
/// removes what is left of the directories).
#[derive(Default)]
struct Workers(Vec<Child>);

impl Workers {
    fn stop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
        self.0.clear();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The recorder, killed if the test fails before it ends by itself.
struct Recorder(Child);

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One churn cgroup.
struct Churned {
    dir: PathBuf,
    /// The path cfstrace must print.
    path: String,
    /// nr_throttled just before it was removed.
    throttled: u64,
}

/// The capture file has its header line: the probes are attached and the clock runs.
fn wait_for_header(capture: &Path, rec: &mut Recorder, stderr: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if fs::read_to_string(capture).is_ok_and(|s| s.contains('\n')) {
            return;
        }
        if let Ok(Some(st)) = rec.0.try_wait() {
            panic!(
                "record exited {st} before writing its header:\n{}",
                fs::read_to_string(stderr).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "record wrote no header in 60 s:\n{}",
            fs::read_to_string(stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn churned_cgroups_keep_their_names() {
    // Declared in this order so the workers die before the tree removes the directories.
    let mut tree = test_cgroups("cfstrace-churn");
    let top_name = tree.top.file_name().unwrap().to_string_lossy().into_owned();
    let bin = cfstrace_bin();
    let dir = cfstrace_tests::scratch!("cfstrace-churn");
    let capture = dir.join("cap.jsonl");
    let mut workers = Workers::default();

    let rec_out = dir.join("record.stdout");
    let rec_err = dir.join("record.stderr");
    let mut recorder = Recorder(
        Command::new(&bin)
            .args(["record", "--duration", &format!("{RECORD_S}s"), "-o"])
            .arg(&capture)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&rec_out).unwrap())
            .stderr(fs::File::create(&rec_err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display())),
    );
    let rec_pid = recorder.0.id();
    wait_for_header(&capture, &mut recorder, &rec_err);
    let recording = Instant::now();
    // Resident anonymous memory once attached and settled (the BTF parsed at attach is freed by
    // then), and its largest value from there on.
    std::thread::sleep(Duration::from_millis(1000));
    let anon_base = status_kib(rec_pid, "RssAnon").expect("recorder's RssAnon");
    let mut anon_max = anon_base;
    let sample = |anon_max: &mut u64| {
        *anon_max = (*anon_max).max(status_kib(rec_pid, "RssAnon").unwrap_or(0));
    };

    // id -> the churn cgroup it was.
    let mut churned: BTreeMap<u64, Churned> = BTreeMap::new();
    for wave in 0..CHURN / WAVE {
        let mut ids = Vec::new();
        for i in 0..WAVE {
            let n = wave * WAVE + i;
            let dir = tree
                .add(&format!("churn-{n:03}"), PERIOD_US, QUOTA_US)
                .unwrap();
            let id = fs::metadata(&dir).unwrap().ino();
            let path = tree.cgroup_path(&dir);
            workers.0.push(spawn_busy_in(&dir).unwrap());
            churned.insert(
                id,
                Churned {
                    dir,
                    path,
                    throttled: 0,
                },
            );
            ids.push(id);
        }
        std::thread::sleep(BUSY);
        sample(&mut anon_max);
        for id in &ids {
            let c = churned.get_mut(id).unwrap();
            c.throttled = nr_throttled(&c.dir).unwrap_or(0);
        }
        workers.stop();
        for id in &ids {
            remove_cgroup(&churned[id].dir, Duration::from_secs(10)).unwrap();
        }
    }
    let churn_took = recording.elapsed();
    assert!(
        churned.values().all(|c| !c.dir.exists()),
        "a churn cgroup is still there"
    );
    if let Ok(Some(st)) = recorder.0.try_wait() {
        panic!(
            "the record ended ({st}) before the churn did ({churn_took:.1?}): cgroups were made \
             and removed outside it (if it exited 0, lengthen RECORD_S); stderr:\n{}",
            fs::read_to_string(&rec_err).unwrap_or_default()
        );
    }

    // Until it exits: its memory (a zombie has none left to read).
    let mut hwm_kib = 0;
    let status = loop {
        sample(&mut anon_max);
        hwm_kib = status_kib(rec_pid, "VmHWM").unwrap_or(hwm_kib);
        if let Some(st) = recorder.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            recording.elapsed() < Duration::from_secs(RECORD_S + 60),
            "record did not end"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let rec_stderr = fs::read_to_string(&rec_err).unwrap_or_default();
    assert!(status.success(), "record exited {status}:\n{rec_stderr}");

    let report = run_with_timeout(
        &bin,
        &["report", capture.to_str().unwrap(), "--json"],
        &dir,
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(report.status.success(), "{}", report.describe());
    let _ = fs::write(dir.join("report.json"), &report.stdout);
    let r = stdout_json(&report);

    // Every cgroup of ours in the report: named, and named right.
    let cgroups = at(&r, "/cgroups").as_array().cloned().unwrap_or_default();
    let mut with_callbacks = BTreeSet::new();
    let mut wrong = Vec::new();
    for c in &cgroups {
        let id = at(c, "/id").as_u64().unwrap_or(0);
        let path = at(c, "/path").as_str();
        let Some(want) = churned.get(&id) else {
            // Not one of ours by id: it must not claim one of our names either.
            if let Some(p) = path.filter(|p| p.contains(&top_name)) {
                wrong.push(format!("id {id} is named {p} but is none of ours"));
            }
            continue;
        };
        if at(c, "/periods").as_u64().unwrap_or(0) > 0 {
            with_callbacks.insert(id);
        }
        if path != Some(want.path.as_str()) {
            wrong.push(format!(
                "id {id}: path {:?}, want {:?} (workload {})",
                path,
                want.path,
                at(c, "/workload")
            ));
        }
    }
    let throttled = churned.values().filter(|c| c.throttled > 0).count();
    let lost = at(&r, "/events/lost").as_u64();
    let periods = at(&r, "/events/periods").as_u64().unwrap_or(0);
    eprintln!(
        "churn: {CHURN} cgroups in {} waves of {WAVE} over {churn_took:.1?}; throttled (cpu.stat): \
         {throttled}; with callbacks in the report: {}; misnamed: {}; periods: {periods}; lost: \
         {lost:?}; recorder RssAnon {anon_base} KiB settled -> {anon_max} KiB max (+{} KiB), \
         VmHWM {hwm_kib} KiB",
        CHURN / WAVE,
        with_callbacks.len(),
        wrong.len(),
        anon_max - anon_base,
    );
    eprintln!("capture and report kept in {}", dir.display());

    assert!(
        wrong.is_empty(),
        "{} churn cgroups misnamed:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        with_callbacks.len() >= FLOOR,
        "only {} of {CHURN} churn cgroups have callbacks in the report (want >= {FLOOR}); \
         {throttled} were throttled per cpu.stat; record stderr:\n{rec_stderr}",
        with_callbacks.len()
    );
    assert_eq!(
        lost,
        Some(0),
        "the capture lost events: {}",
        at(&r, "/events")
    );
    assert!(
        anon_max - anon_base < RSS_GROWTH_LIMIT_KIB,
        "recorder's RssAnon grew {} KiB over the churn ({anon_base} -> {anon_max} KiB; limit \
         {RSS_GROWTH_LIMIT_KIB} KiB)",
        anon_max - anon_base
    );
    assert!(
        hwm_kib > 0 && hwm_kib < HWM_LIMIT_KIB,
        "recorder peak RSS (VmHWM) {hwm_kib} KiB (limit {HWM_LIMIT_KIB} KiB)"
    );
}
