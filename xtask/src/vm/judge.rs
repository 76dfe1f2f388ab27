//! Judging what a guest printed: each backend's report and doctor against what the kernel's
//! own facts say that style can measure (`cfstrace_tests::expect`), the co-firing storm's
//! report against its capture digest, the matrix table and the co-firing table, and the
//! diagnosis boots (`--facts`, `--poke-stress`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use cfstrace_tests::APPLICATION;
use cfstrace_tests::expect::{self, Culprit, Doctor, Facts, Floors};
use serde_json::Value;

use super::boot::Boot;
use super::console::{GuestRun, analyze, excerpt, kernel_problem};
use super::guest::{self, COFIRE_PARENT, COFIRE_RUN, STORM_RUN};
use super::kernels::{self, Kernel};
use super::runs::{boot, boot_timeout, secs};
use super::{Backend, Job, VmArgs};

/// Floors for the culprit's per-period means, with cpu.max "5000 10000" and 4 busy loops on 2
/// vCPUs under single-threaded TCG, two guests at once on the 2-core host (as CI runs it).
/// Measured over full matrix runs (lowest seen per kernel family):
/// - unthrottled in the callback: 0.91-1.03 on 5.10/6.1; 0.52-0.76 on 6.12/7.2, where the other
///   CPU's cfs_rq goes to an async CSD; callback + async per period 0.97-1.38 everywhere;
/// - enqueued: 2.7-3.1 (5.10/6.1), 1.35-1.8 (6.12), 0.64-1.5 (7.2, enqueue_task_fair);
/// - runnable: 1.9-2.1 (6.1), 0.64-1.75 (6.12/7.2); not on 5.10 (no BPF raw tracepoint);
/// - max loops 1-2; async CSDs per period 0.45-0.62 (6.12/7.2).
///
/// The medians are not robust: on 6.12+ half the periods unthrottle nothing in the callback
/// (p50 0 seen for runnable with the tracepoint backend). The floors sit at about half of the
/// lowest mean seen: a broken probe counts 0, a slow host does not halve these (they count per
/// callback, and the guest's clock is the host's: see `expect::Floors`).
pub const FLOORS: Floors = Floors {
    unthrottled_mean: 0.25,
    unthrottled_total_mean: 0.5,
    enqueued_mean: 0.3,
    runnable_mean: 0.3,
    max_loops: 1.0,
    async_per_period: 0.2,
};

const CULPRIT: Culprit = Culprit {
    path_suffix: guest::CGROUP,
    kind: "yarn",
    application: APPLICATION,
};

/// One kernel x backend result.
pub struct Outcome {
    pub label: String,
    pub passed: bool,
    /// The table row, when the run produced a report.
    pub row: Option<Row>,
    /// Loud notes for the end of the run (retries after suspected emulation flakes, skips).
    pub warnings: Vec<String>,
    /// The co-firing run's figures, when it produced a report.
    pub cofire: Option<CofireRow>,
}

/// What the co-firing storm showed on one kernel: a line of the second table.
#[derive(Debug, Clone)]
pub struct CofireRow {
    pub kernel: String,
    /// Cgroups under cofire/ whose timers ran / cgroups made.
    pub ran: usize,
    pub cgroups: u32,
    /// Timer interrupts that ran period timers.
    pub spans: i64,
    /// The most period timers in one interrupt, and of how many distinct cgroups.
    pub max_timers: i64,
    pub max_cgroups: u64,
    /// The longest interrupt (its CPU, duration, its period timers and their time). Shown, not
    /// judged: which interrupt is longest is up to the emulation (`expect::check_cofire`).
    pub worst: String,
    /// Node headroom and what it is measured from.
    pub headroom: String,
}

/// The co-firing results as a markdown table.
pub fn cofire_table(rows: &[CofireRow]) -> String {
    let mut out = String::from(
        "| kernel | cgroups with callbacks | timer interrupts with period timers | most timers in one interrupt (cgroups) | longest interrupt | node headroom |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} of {} | {} | {} ({}) | {} | {} |\n",
            r.kernel, r.ran, r.cgroups, r.spans, r.max_timers, r.max_cgroups, r.worst, r.headroom
        ));
    }
    out
}

/// What a run attached and measured: one line of the matrix table.
#[derive(Debug, Clone)]
pub struct Row {
    pub kernel: String,
    pub backend: String,
    /// probe -> `fentry`, `kprobe`, `tracepoint`, `raw_tp`, or `-` (with the target when it is not
    /// the usual one, e.g. `fentry enqueue_task_fair`).
    pub probes: Vec<(String, String)>,
    /// Figures available in the report.
    pub figures: Vec<String>,
}

impl Row {
    /// A row from a report (`kernel` is the label of the first column).
    pub fn from_report(kernel: &str, backend: &str, r: &Value) -> Row {
        let probes = expect::PROBES
            .iter()
            .map(|p| {
                let cell = match expect::probe_state(r, p) {
                    None => "n/a".to_string(),
                    Some(st) if !st.attached => "-".to_string(),
                    Some(st) => {
                        let how = st.how.unwrap_or_else(|| "?".into());
                        match st.target.as_deref() {
                            Some(t) if *p == "enqueue" && t != expect::ENQUEUE_ENTITY_FN => {
                                format!("{how} ({t})")
                            }
                            _ => how,
                        }
                    }
                };
                (p.to_string(), cell)
            })
            .collect();
        let figures = expect::FIGURES
            .iter()
            .filter(|(f, _)| {
                r.pointer(&format!("/figures/{f}/available"))
                    .and_then(Value::as_bool)
                    == Some(true)
            })
            .map(|(f, _)| f.to_string())
            .collect();
        Row {
            kernel: kernel.to_string(),
            backend: backend.to_string(),
            probes,
            figures,
        }
    }
}

/// The matrix as a markdown table (README material).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from("| kernel | backend |");
    for p in expect::PROBES {
        out.push_str(&format!(" {p} |"));
    }
    out.push_str(" figures available |\n|---|---|");
    for _ in expect::PROBES {
        out.push_str("---|");
    }
    out.push_str("---|\n");
    for r in rows {
        out.push_str(&format!("| {} | {} |", r.kernel, r.backend));
        for (_, cell) in &r.probes {
            out.push_str(&format!(" {cell} |"));
        }
        out.push_str(&format!(" {} |\n", r.figures.join(", ")));
    }
    out
}

/// A run that failed before it could be judged (its `FAIL:` line printed by the caller).
pub fn fail(label: String) -> Outcome {
    Outcome {
        label,
        passed: false,
        row: None,
        warnings: Vec::new(),
        cofire: None,
    }
}

impl Outcome {
    /// A judged run, its `ok:` or `FAIL:` line printed.
    fn judged(label: String, res: Result<String>) -> Outcome {
        match res {
            Ok(detail) => {
                println!("ok: {label}: {detail}");
                Outcome {
                    passed: true,
                    ..fail(label)
                }
            }
            Err(e) => {
                println!("FAIL: {label}: {e:#}");
                fail(label)
            }
        }
    }
}

/// The findings run (`cfstrace doctor --json`, once a boot): its document and exit status
/// against the facts the guest read itself (`expect::check_findings`); the document is kept
/// as `doctor-findings.json` in `dir`.
pub fn findings(
    label: String,
    run: &GuestRun,
    facts: &std::collections::BTreeMap<String, String>,
    dir: &Path,
) -> Outcome {
    let res = (|| -> Result<String> {
        if let Some(i) = run.problem {
            bail!("kernel problem at console line {i} during doctor --json");
        }
        if !run.doctor_json.done {
            bail!("no end marker after doctor --json");
        }
        let text = run.doctor_json.lines.join("\n");
        let _ = fs::write(dir.join("doctor-findings.json"), &text);
        let doc: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("doctor --json is not JSON ({e}):\n{}", indent(&text)))?;
        let rc = run.doctor_json_rc.unwrap_or(-1);
        let ff = expect::FindingsFacts::from_map(facts);
        let bad = expect::check_findings(&doc, rc, &ff);
        if !bad.is_empty() {
            bail!("{}\n  facts: {ff:?}", bullets(&bad));
        }
        Ok(format!(
            "exit {rc}, {}; {} quota'd, {} throttled, shortest period {} us",
            doc.pointer("/verdict/judgement")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            doc.pointer("/exposure/quota_cgroups")
                .unwrap_or(&Value::Null),
            doc.pointer("/exposure/throttled_cgroups")
                .unwrap_or(&Value::Null),
            doc.pointer("/exposure/shortest_period_us")
                .unwrap_or(&Value::Null),
        ))
    })();
    Outcome::judged(label, res)
}

/// The kernel a boot ran, where its outputs are kept, and the options it ran with.
pub struct Target<'a> {
    pub(super) kernel: &'a Kernel,
    pub(super) dir: &'a Path,
    pub(super) args: &'a VmArgs,
}

/// Judge one run of a boot (`ctx`: its timing and console, for the messages).
pub fn judge(
    t: &Target,
    job: Job,
    run: &GuestRun,
    boot: &Boot,
    facts: &Facts,
    ctx: &str,
) -> Outcome {
    let j = Judged {
        kernel: t.kernel,
        facts,
        run,
        boot,
        ctx,
        dir: t.dir,
        args: t.args,
    };
    match job {
        Job::Backend(b) => j.backend(b),
        Job::Cofire => j.cofire(),
        Job::Storm => j.storm(),
    }
}

/// One run of a boot, being judged.
struct Judged<'a> {
    kernel: &'a Kernel,
    facts: &'a Facts,
    run: &'a GuestRun,
    boot: &'a Boot,
    ctx: &'a str,
    dir: &'a Path,
    args: &'a VmArgs,
}

impl Judged<'_> {
    /// The run's report JSON, or why there is none (with the console's tail).
    fn parsed_report(&self, rc: (i64, i64)) -> Result<&Value> {
        match &self.run.report {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => bail!(
                "{e}; record={} report={} ({}):\n{}",
                rc.0,
                rc.1,
                self.ctx,
                excerpt(&self.boot.lines, None, 40)
            ),
            None => bail!("no report markers ({})", self.ctx),
        }
    }

    /// The run's exit statuses, or the error of a run that a kernel problem broke (`during`
    /// says in what) or that stopped before the end.
    fn finished(&self, during: &str) -> Result<(i64, i64)> {
        let b = self.boot;
        if let Some(i) = self.run.problem {
            bail!(
                "kernel problem \"{}\" {during} ({}):\n{}",
                kernel_problem(&b.lines[i]).unwrap_or("?"),
                self.ctx,
                excerpt(&b.lines, Some(i), 40)
            );
        }
        let Some(rc) = self.run.rc else {
            let why = if b.silent {
                " (hung: no output for 300s of emulation)"
            } else if b.timed_out {
                " (timeout)"
            } else {
                ""
            };
            bail!(
                "the guest stopped during {}{why} ({}):\n{}",
                self.stage(),
                self.ctx,
                excerpt(&b.lines, None, 40)
            );
        };
        Ok(rc)
    }

    /// What was running when the guest stopped.
    fn stage(&self) -> &'static str {
        let run = self.run;
        if run.backend == COFIRE_RUN {
            "the co-firing storm"
        } else if run.backend == STORM_RUN {
            "the storm ramps"
        } else if run.doctor.rc.is_none() {
            "cfstrace doctor"
        } else if !run.recording {
            "between doctor and record"
        } else if run.report.is_none() {
            "cfstrace record"
        } else {
            "cfstrace report"
        }
    }

    /// Keep the run's report (`report-NAME.json`); it, when the guest printed one.
    fn keep_report(&self, name: &str) -> Option<Value> {
        let r = self.run.report.as_ref()?.as_ref().ok()?.clone();
        let _ = fs::write(
            self.report_path(name),
            serde_json::to_string_pretty(&r).unwrap_or_default(),
        );
        Some(r)
    }

    fn report_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("report-{name}.json"))
    }

    /// A backend's run: doctor, record and report, checked against what the kernel's facts
    /// say that style can measure there.
    fn backend(&self, backend: Backend) -> Outcome {
        let k = self.kernel;
        let label = format!("{} {} backend={}", k.suite, k.release, backend.name());
        let doctor_text = self.run.doctor.lines.join("\n");
        let _ = fs::write(
            self.dir.join(format!("doctor-{}.txt", backend.name())),
            &doctor_text,
        );
        let report = self.keep_report(backend.name());
        let row = report
            .as_ref()
            .map(|r| Row::from_report(&kernel_label(k), backend.name(), r));
        let res = self.check_backend(backend, &doctor_text);
        Outcome {
            row,
            ..Outcome::judged(label, res)
        }
    }

    fn check_backend(&self, backend: Backend, doctor_text: &str) -> Result<String> {
        let rc = self.finished("after cfstrace started")?;
        // A style the kernel does not offer: the frame cannot attach; that must be a clean
        // refusal, not a crash, and the facts must agree.
        // No report to read attempts from: judged from the kernel's facts alone.
        let frame = expect::want(self.facts, backend.name(), "period_timer", &[]);
        if frame.style.is_none() {
            if rc.0 == 0 {
                bail!(
                    "record succeeded although this kernel does not offer {} ({})",
                    backend.name(),
                    frame.why_not.join("; ")
                );
            }
            return Ok(format!(
                "not offered here: {} (record exited {} as it should)",
                frame.why_not.join("; "),
                rc.0
            ));
        }
        let report = self.parsed_report(rc)?;
        let mut bad: Vec<String> = exit_problem(rc).into_iter().collect();
        let verdict = expect::check_report(self.facts, backend.name(), report, &CULPRIT, &FLOORS);
        bad.extend(verdict.failures);
        let doctor = Doctor::parse(doctor_text);
        let doctor_rc = self.run.doctor.rc.unwrap_or(-1);
        bad.extend(
            doctor
                .check(doctor_rc, self.args.cycles, Some(report))
                .into_iter()
                .map(|d| format!("doctor: {d}")),
        );
        if !bad.is_empty() {
            bail!(
                "{} check(s) failed ({}; report: {}):\n{}{}",
                bad.len(),
                self.ctx,
                self.report_path(backend.name()).display(),
                bullets(&bad),
                if doctor_rc != 0 {
                    format!("  doctor said:\n{}", indent(doctor_text))
                } else {
                    String::new()
                }
            );
        }
        let notes = if verdict.notes.is_empty() {
            String::new()
        } else {
            format!("\n    note: {}", verdict.notes.join("\n    note: "))
        };
        Ok(format!(
            "{} [{}]{notes}",
            summary(report, &doctor),
            self.ctx
        ))
    }

    /// The storm ramps (`expect::check_storm`): the forecast checked step by step, the guard
    /// stopping a ramp, nothing left behind.
    fn storm(&self) -> Outcome {
        let k = self.kernel;
        let label = format!("{} {} storm", k.suite, k.release);
        let res = (|| {
            self.finished("during the storm ramps")?;
            let r = self
                .keep_report(STORM_RUN)
                .ok_or_else(|| anyhow::anyhow!("no storm summary ({})", self.ctx))?;
            match expect::check_storm(&r) {
                Ok(summary) => Ok(format!("{summary} [{}]", self.ctx)),
                Err(fails) => bail!(
                    "{} check(s) failed ({}; summary: {}):\n    - {}",
                    fails.len(),
                    self.ctx,
                    self.report_path(STORM_RUN).display(),
                    fails.join("\n    - ")
                ),
            }
        })();
        Outcome::judged(label, res)
    }

    /// The co-firing run: many cgroups' period timers sharing timer interrupts
    /// (`expect::check_cofire`).
    fn cofire(&self) -> Outcome {
        let k = self.kernel;
        let label = format!("{} {} cofire", k.suite, k.release);
        self.keep_report(COFIRE_RUN);
        let digest_path = self.dir.join(format!("capture-{COFIRE_RUN}.txt"));
        let _ = fs::write(&digest_path, self.run.capture.lines.join("\n"));
        let mut row = None;
        let res = self.check_cofire(&digest_path, &mut row);
        Outcome {
            cofire: row,
            ..Outcome::judged(label, res)
        }
    }

    fn check_cofire(&self, digest_path: &Path, row: &mut Option<CofireRow>) -> Result<String> {
        let rc = self.finished("during the co-firing storm")?;
        let report = self.parsed_report(rc)?;
        let mut bad: Vec<String> = exit_problem(rc).into_iter().collect();
        if !self.run.capture.done {
            bad.push("no end marker after the capture digest".into());
        }
        let digest = expect::CaptureDigest::parse(&self.run.capture.lines);
        let cgroups = self.args.cofire as usize;
        let verdict = expect::check_cofire(self.facts, report, &digest, COFIRE_PARENT, cgroups);
        let r = row.insert(cofire_row(self.kernel, report, &digest, self.args));
        bad.extend(verdict.failures);
        if !bad.is_empty() {
            bail!(
                "{} check(s) failed ({}; report: {}, capture digest: {}):\n{}",
                bad.len(),
                self.ctx,
                self.report_path(COFIRE_RUN).display(),
                digest_path.display(),
                bullets(&bad),
            );
        }
        Ok(format!(
            "{} of {} cgroups' timers ran, {} timer interrupts with period timers, up to {} \
             timers ({} cgroups) in one; longest {}; headroom {} [{}]\n    note: {}",
            r.ran,
            r.cgroups,
            r.spans,
            r.max_timers,
            r.max_cgroups,
            r.worst,
            r.headroom,
            self.ctx,
            verdict.notes.join("\n    note: ")
        ))
    }
}

/// The diff boot (`guest::init_diff`): each phase's report, and each comparison checked
/// against the two reports it compares. `fix` (two thirds of the quotas lifted) must show the
/// node's worst span falling and say better; `period` (the same share, a five times longer
/// period) is told as measured: with the same work in each interrupt its direction is the
/// kernel's (see the README's `diff` section), and every cgroup must pair by path.
pub fn judge_diff(kernel: &Kernel, boot: Result<Boot>) -> Outcome {
    let label = format!(
        "{} diff (a storm: its fix, its period; 1 vCPU, icount)",
        kernel_label(kernel)
    );
    let res = (|| -> Result<String> {
        let b = boot?;
        if let Some(why) = b.killed() {
            bail!("guest killed: {why}\n{}", excerpt(&b.lines, None, 30));
        }
        if let Some(i) = b.lines.iter().position(|l| kernel_problem(l).is_some()) {
            bail!("kernel problem:\n{}", excerpt(&b.lines, Some(i), 30));
        }
        let block = |begin: &str, end: &str, name: &str, want_rc: &str| -> Result<Value> {
            let Some((json, rc)) = super::console::named_block(&b.lines, begin, end, name) else {
                bail!(
                    "no {name} block on the console:\n{}",
                    excerpt(&b.lines, None, 30)
                );
            };
            if rc != want_rc {
                bail!("{name}: exit statuses {rc} (want {want_rc})");
            }
            serde_json::from_str(&json)
                .map_err(|e| anyhow::anyhow!("{name} is not JSON ({e}):\n{}", indent(&json)))
        };
        let report = |phase: &str| {
            block(
                guest::M_DIFF_REPORT_BEGIN,
                guest::M_DIFF_REPORT_END,
                phase,
                "record=0 report=0",
            )
        };
        let diff = |cmp: &str| block(guest::M_DIFF_BEGIN, guest::M_DIFF_END, cmp, "diff=0");
        let (short, lifted, long) = (report("short")?, report("lifted")?, report("long")?);
        let (fix, period) = (diff("fix")?, diff("period")?);
        let mut bad = Vec::new();
        let mut add = |what: &str, v: expect::Verdict| {
            bad.extend(v.failures.into_iter().map(|f| format!("{what}: {f}")));
        };
        add(
            "fix",
            expect::check_diff_against_reports(&fix, &short, &lifted),
        );
        add("fix", expect::check_worst_span_fell(&fix));
        add(
            "period",
            expect::check_diff_against_reports(&period, &short, &long),
        );
        let by_path = period["cgroups"].as_array().map_or(0, |a| {
            a.iter().filter(|c| c["matched_by"] == "path").count()
        });
        if by_path != guest::DIFF_CGROUPS as usize {
            bad.push(format!(
                "period: {by_path} cgroups paired by path, want all {}",
                guest::DIFF_CGROUPS
            ));
        }
        if !bad.is_empty() {
            bail!("{}", bullets(&bad));
        }
        let why = |d: &Value| {
            d["node"]["verdict"]["why"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        };
        Ok(format!("fix: {}; period: {}", why(&fix), why(&period)))
    })();
    Outcome::judged(label, res)
}

fn exit_problem(rc: (i64, i64)) -> Option<String> {
    (rc != (0, 0)).then(|| {
        format!(
            "exit statuses record={} report={}, want 0 and 0",
            rc.0, rc.1
        )
    })
}

fn bullets(bad: &[String]) -> String {
    bad.iter().map(|b| format!("    - {b}\n")).collect()
}

fn cofire_row(kernel: &Kernel, r: &Value, d: &expect::CaptureDigest, args: &VmArgs) -> CofireRow {
    let int = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_i64);
    let prefix = format!("/{COFIRE_PARENT}/");
    let ran = r
        .pointer("/cgroups")
        .and_then(Value::as_array)
        .map_or(0, |a| {
            a.iter()
                .filter(|g| {
                    g.get("path")
                        .and_then(Value::as_str)
                        .is_some_and(|p| p.starts_with(&prefix))
                        && int(g, "/periods").is_some_and(|p| p > 0)
                })
                .count()
        });
    let no_cpus = Vec::new();
    let cpus = r
        .pointer("/cpus")
        .and_then(Value::as_array)
        .unwrap_or(&no_cpus);
    let worst = cpus
        .iter()
        .filter_map(|c| c.pointer("/worst_irq_span").filter(|w| !w.is_null()))
        .max_by_key(|w| int(w, "/duration_ns").unwrap_or(0));
    let ms = |ns: i64| format!("{:.2} ms", ns as f64 / 1e6);
    let worst = worst.map_or("-".to_string(), |w| {
        format!(
            "{} on cpu{}: {} timers took {}",
            ms(int(w, "/duration_ns").unwrap_or(0)),
            int(w, "/cpu").unwrap_or(-1),
            int(w, "/timers").unwrap_or(0),
            ms(int(w, "/timers_ns").unwrap_or(0))
        )
    });
    let headroom = match (
        int(r, "/headroom_ns"),
        r.pointer("/headroom_basis").and_then(Value::as_str),
    ) {
        (Some(h), Some(b)) => format!("{:.4} s ({b})", h as f64 / 1e9),
        _ => "-".into(),
    };
    CofireRow {
        kernel: kernel_label(kernel),
        ran,
        cgroups: args.cofire,
        spans: int(r, "/events/irq_spans").unwrap_or(0),
        max_timers: cpus
            .iter()
            .filter_map(|c| int(c, "/period_timers_per_span/max"))
            .max()
            .unwrap_or(0),
        max_cgroups: d
            .by_span
            .iter()
            .filter(|(k, _)| k.1 != 0)
            .map(|(_, e)| e.2)
            .max()
            .unwrap_or(0),
        worst,
        headroom,
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    | {l}\n")).collect()
}

fn kernel_label(k: &Kernel) -> String {
    let short = k.release.trim_end_matches("-cloud-amd64");
    format!("{short} ({})", k.suite)
}

fn summary(r: &Value, doctor: &Doctor) -> String {
    let c = r.pointer("/culprit").filter(|c| !c.is_null());
    let get = |p: &str| {
        c.and_then(|c| c.pointer(p))
            .filter(|v| !v.is_null())
            .map(|v| match v.as_f64() {
                Some(f) if f.fract() != 0.0 => format!("{f:.2}"),
                _ => v.to_string(),
            })
            .unwrap_or("-".into())
    };
    let mut s = format!(
        "frame {}, {} periods, callback p50 {} max {} ns, unthrottled p50 {} (mean {}), \
         enqueued p50 {} (mean {}), runnable p50 {} (mean {}), max loops {}",
        r.pointer("/backend").and_then(Value::as_str).unwrap_or("?"),
        r.pointer("/events/periods").unwrap_or(&Value::Null),
        get("/callback_ns/p50"),
        get("/callback_ns/max"),
        get("/unthrottled_per_period/p50"),
        get("/unthrottled_per_period/mean"),
        get("/enqueued_per_period/p50"),
        get("/enqueued_per_period/mean"),
        get("/runnable_per_period/p50"),
        get("/runnable_per_period/mean"),
        get("/max_loops"),
    );
    if c.and_then(|c| c.pointer("/async_unthrottle"))
        .is_some_and(|a| !a.is_null())
    {
        s.push_str(&format!(
            ", async {} CSDs / {} unthrottled",
            get("/async_unthrottle/csds"),
            get("/async_unthrottle/unthrottled")
        ));
    }
    if let Some(l) = &doctor.leakcheck {
        s.push_str(&format!("; leakcheck {l}"));
    }
    s
}

pub fn facts_only(kernel: &Kernel, initrd: &Path, args: &VmArgs) -> Outcome {
    let label = format!("{} {} facts", kernel.suite, kernel.release);
    let log = kernels::suite_dir(&kernel.suite).join("console-facts.log");
    let res = (|| -> Result<String> {
        let mut attempt = 1;
        loop {
            let b = boot(
                kernel,
                initrd,
                "cfstrace.mode=facts",
                &log,
                boot_timeout(args, 0, false, false),
                args,
            )?;
            let con = analyze(&b.lines);
            if (!con.done || con.early_problem.is_some()) && attempt == 1 {
                println!(
                    "\n!!!! RETRY: {} facts: guest did not finish:\n{}",
                    kernel.suite,
                    excerpt(&b.lines, con.early_problem, 20)
                );
                attempt += 1;
                continue;
            }
            if !con.done {
                bail!(
                    "guest did not finish (console: {}):\n{}",
                    log.display(),
                    excerpt(&b.lines, None, 30)
                );
            }
            let cfg = |n: &str| {
                kernel
                    .config_value(n)
                    .map(|v| if v.is_empty() { "n".to_string() } else { v })
            };
            let config: Vec<String> = [
                "CONFIG_KPROBES",
                "CONFIG_FUNCTION_TRACER",
                "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
                "CONFIG_DEBUG_INFO_BTF",
                "CONFIG_CFS_BANDWIDTH",
                "CONFIG_HARDLOCKUP_DETECTOR",
            ]
            .iter()
            .filter_map(|n| cfg(n).map(|v| format!("{}={v}", n.trim_start_matches("CONFIG_"))))
            .collect();
            let facts: Vec<String> = con.facts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Ok(format!(
                "[{}, init {}, total {}]\n    guest: {}\n    config: {}",
                b.accel,
                b.t_init.map_or("-".into(), secs),
                secs(b.total),
                facts.join(" "),
                if config.is_empty() {
                    "(no config file in the package)".into()
                } else {
                    config.join(" ")
                }
            ));
        }
    })();
    Outcome::judged(label, res)
}

pub fn poke_stress(kernel: &Kernel, initrd: &Path, args: &VmArgs, n: u32) -> Outcome {
    let label = format!("{} {} poke-stress {n}", kernel.suite, kernel.release);
    let log = kernels::suite_dir(&kernel.suite).join("console-pokestress.log");
    let res = (|| -> Result<String> {
        let extra = format!(
            "cfstrace.mode=pokestress cfstrace.pokes={n} cfstrace.cpumax={} cfstrace.busy={}",
            args.cpu_max, args.busy
        );
        let timeout = args
            .timeout
            .map_or(Duration::from_secs(120 + u64::from(n)), Duration::from_secs);
        let b = boot(kernel, initrd, &extra, &log, timeout, args)?;
        let con = analyze(&b.lines);
        let problem = con
            .runs
            .first()
            .and_then(|r| r.problem)
            .or(con.early_problem);
        if let Some(i) = problem {
            bail!(
                "kernel problem \"{}\" after {} rounds ({}, total {}; console: {}):\n{}",
                kernel_problem(&b.lines[i]).unwrap_or("?"),
                con.pokes,
                b.accel,
                secs(b.total),
                log.display(),
                excerpt(&b.lines, Some(i), 30)
            );
        }
        if !con.done {
            bail!(
                "guest did not finish after {} rounds (console: {}):\n{}",
                con.pokes,
                log.display(),
                excerpt(&b.lines, None, 30)
            );
        }
        Ok(format!(
            "{n} rounds without a kernel problem [{}, total {}]",
            b.accel,
            secs(b.total)
        ))
    })();
    Outcome::judged(label, res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_run() {
        let r = serde_json::json!({
            "probes": {
                "period_timer": {"attached": true, "how": "tracepoint", "target": "hrtimer_expire_entry/exit"},
                "irq_span": {"attached": true, "how": "tracepoint", "target": "local_timer_entry/exit"},
                "enqueue": {"attached": true, "how": "kprobe", "target": "enqueue_task_fair"},
                "distribute": {"attached": false, "reason": "no"}
            },
            "figures": {"callback_ns": {"available": true}, "irq_span": {"available": true}, "loops": {"available": false}}
        });
        let row = Row::from_report("7.2 (sid)", "auto", &r);
        let t = table(&[row]);
        let last = t.lines().last().unwrap();
        assert_eq!(
            last,
            "| 7.2 (sid) | auto | tracepoint | tracepoint | - | n/a | kprobe (enqueue_task_fair) | n/a | n/a | callback_ns, irq_span |"
        );
    }
}
