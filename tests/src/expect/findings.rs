//! `cfstrace doctor --json`: its findings against facts read without cfstrace (kallsyms, the
//! cgroup files, the watchdog sysctls, the test's own quota'd and throttled cgroups). Used by
//! the host test (`tests/tests/doctor_findings.rs`) and the VM matrix (one run per kernel).
use std::collections::BTreeMap;

use serde_json::Value;

use super::{at, int, list, text};

/// What the judge knows of the node, read without cfstrace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FindingsFacts {
    /// `grep -c ' __cfsb_csd_unthrottle$' /proc/kallsyms` > 0 (8ad075c2eb1f, v6.3).
    pub csd_unthrottle: Option<bool>,
    /// `throttle_cfs_rq_work` in kallsyms (e1fad12dcb66's task work, v6.18).
    pub throttle_work: Option<bool>,
    /// A burst file (`cpu.max.burst` / `cpu.cfs_burst_us`) next to a quota'd cgroup's.
    pub burst_file: Option<bool>,
    pub hardlockup_panic: Option<bool>,
    pub nmi_watchdog: Option<bool>,
    pub watchdog_thresh: Option<u64>,
    /// Cgroups the judge knows have a quota (its own), and their shortest period.
    pub own_quota_paths: Vec<String>,
    /// Of those, the ones it saw throttled across doctor's run (cpu.stat before and after).
    pub own_throttled_paths: Vec<String>,
    /// The shortest period of any quota'd cgroup (all of them, counted by the judge).
    pub shortest_period_us: Option<u64>,
    /// How many cgroups have a quota (all of them, counted by the judge).
    pub quota_cgroups: Option<u64>,
}

fn yes(v: Option<&String>) -> Option<bool> {
    v.and_then(|s| s.trim().parse::<i64>().ok())
        .map(|n| n > 0)
        .or_else(|| v.map(|s| s.trim() == "yes"))
}

impl FindingsFacts {
    /// From the guest's `@@CFSTRACE-FACT findings.<key>=<value>@@` lines.
    pub fn from_map(m: &BTreeMap<String, String>) -> FindingsFacts {
        let g = |k: &str| m.get(&format!("findings.{k}"));
        let paths = |k: &str| {
            g(k).map(|s| {
                s.split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
        };
        FindingsFacts {
            csd_unthrottle: yes(g("csd_unthrottle")),
            throttle_work: yes(g("throttle_work")),
            burst_file: yes(g("burst_file")),
            hardlockup_panic: yes(g("hardlockup_panic")),
            nmi_watchdog: yes(g("nmi_watchdog")),
            watchdog_thresh: g("watchdog_thresh").and_then(|s| s.trim().parse().ok()),
            own_quota_paths: paths("own_quota"),
            own_throttled_paths: paths("own_throttled"),
            shortest_period_us: g("shortest_period_us").and_then(|s| s.trim().parse().ok()),
            quota_cgroups: g("quota_cgroups").and_then(|s| s.trim().parse().ok()),
        }
    }
}

/// Exit statuses of `doctor` by worst severity (README: 0 ok/info, 5 warn, 6 risk; 1 cannot
/// trace wins).
fn status_of(worst: &str) -> Option<i64> {
    match worst {
        "ok" | "info" => Some(0),
        "warn" => Some(5),
        "risk" => Some(6),
        _ => None,
    }
}

fn finding<'a>(doc: &'a Value, id: &str) -> Option<&'a Value> {
    list(doc, "/findings")
        .iter()
        .find(|f| text(f, "/id") == Some(id))
}

fn fix_present(doc: &Value, fix: &str) -> Option<bool> {
    list(doc, "/fixes")
        .iter()
        .find(|f| text(f, "/fix") == Some(fix))
        .and_then(|f| at(f, "/present"))
        .and_then(Value::as_bool)
}

/// Check a `cfstrace.doctor/1` document and doctor's exit status against the facts.
pub fn check_findings(doc: &Value, rc: i64, f: &FindingsFacts) -> Vec<String> {
    let mut bad = Vec::new();
    let mut need = |ok: bool, what: String| {
        if !ok {
            bad.push(what)
        }
    };
    need(
        text(doc, "/schema") == Some("cfstrace.doctor/1"),
        format!("schema {:?}", text(doc, "/schema")),
    );
    // Severities: the worst is the worst of the findings, and the exit status says it.
    let order = ["ok", "info", "warn", "risk"];
    let sevs: Vec<&str> = list(doc, "/findings")
        .iter()
        .filter_map(|x| text(x, "/severity"))
        .collect();
    need(!sevs.is_empty(), "no findings".into());
    for x in list(doc, "/findings") {
        for k in ["/id", "/severity", "/title", "/evidence", "/basis"] {
            need(text(x, k).is_some(), format!("a finding without {k}: {x}"));
        }
    }
    let worst = sevs
        .iter()
        .max_by_key(|s| order.iter().position(|o| o == *s))
        .copied()
        .unwrap_or("ok");
    need(
        text(doc, "/verdict/worst") == Some(worst),
        format!(
            "verdict.worst {:?}, the findings' worst {worst}",
            text(doc, "/verdict/worst")
        ),
    );
    let ready = at(doc, "/verdict/ready").and_then(Value::as_bool);
    let want_rc = if ready == Some(true) {
        status_of(worst)
    } else {
        Some(1)
    };
    need(
        Some(rc) == want_rc && int(doc, "/verdict/exit_status") == want_rc,
        format!(
            "exit status {rc} (document {:?}), want {want_rc:?} for worst {worst}, ready {ready:?}",
            int(doc, "/verdict/exit_status")
        ),
    );
    // The fixes the kernel shows.
    if let Some(csd) = f.csd_unthrottle {
        need(
            fix_present(doc, "async_unthrottle") == Some(csd),
            format!(
                "async_unthrottle present {:?}, kallsyms says __cfsb_csd_unthrottle {csd}",
                fix_present(doc, "async_unthrottle")
            ),
        );
    }
    if let Some(tw) = f.throttle_work {
        need(
            fix_present(doc, "task_throttle") == Some(tw),
            format!(
                "task_throttle present {:?}, kallsyms says throttle_cfs_rq_work {tw}",
                fix_present(doc, "task_throttle")
            ),
        );
    }
    if let Some(b) = f.burst_file {
        need(
            fix_present(doc, "burst") == Some(b),
            format!(
                "burst present {:?}, the cgroup files say {b}",
                fix_present(doc, "burst")
            ),
        );
    }
    // Every kernel these run on has the two lockup fixes (3.17, 5.1): never risk for them.
    for fix in ["distribute_loop", "period_overrun"] {
        need(
            fix_present(doc, fix) == Some(true),
            format!("{fix} present {:?} on this kernel", fix_present(doc, fix)),
        );
    }
    // The exposure: the judge's own cgroups are among the quota'd and throttled ones.
    let quota = int(doc, "/exposure/quota_cgroups").unwrap_or(-1);
    let throttled = int(doc, "/exposure/throttled_cgroups").unwrap_or(-1);
    need(
        quota >= f.own_quota_paths.len() as i64,
        format!(
            "exposure.quota_cgroups {quota}, at least {} are the judge's",
            f.own_quota_paths.len()
        ),
    );
    if let Some(n) = f.quota_cgroups {
        need(
            quota == n as i64,
            format!("exposure.quota_cgroups {quota}, the cgroup files {n}"),
        );
    }
    need(
        throttled >= f.own_throttled_paths.len() as i64,
        format!(
            "exposure.throttled_cgroups {throttled}, at least {} of the judge's were throttled",
            f.own_throttled_paths.len()
        ),
    );
    if let Some(p) = f.shortest_period_us {
        need(
            int(doc, "/exposure/shortest_period_us") == Some(p as i64),
            format!(
                "exposure.shortest_period_us {:?}, the cgroup files {p}",
                int(doc, "/exposure/shortest_period_us")
            ),
        );
    }
    // The shortest period's severity (README, doctor): risk under 5 ms without the overrun
    // fix, warn under 5 ms with it, info under the default 100 ms, else ok.
    if let Some(p) = f.shortest_period_us {
        let fixed = fix_present(doc, "period_overrun") == Some(true);
        let want = match p {
            p if p < 5_000 && !fixed => "risk",
            p if p < 5_000 => "warn",
            p if p < 100_000 => "info",
            _ => "ok",
        };
        let got = finding(doc, "exposure.period").and_then(|x| text(x, "/severity"));
        need(
            got == Some(want),
            format!("exposure.period {got:?}, want {want} (shortest period {p} us)"),
        );
    }
    let listed: Vec<&str> = list(doc, "/exposure/throttled")
        .iter()
        .filter_map(|c| text(c, "/path"))
        .collect();
    let capped = listed.len() >= 10;
    for p in &f.own_throttled_paths {
        need(
            capped || listed.iter().any(|l| l.ends_with(p.as_str())),
            format!("throttled cgroup {p} not listed in exposure.throttled {listed:?}"),
        );
    }
    let load = finding(doc, "exposure.timer_load").and_then(|x| text(x, "/severity"));
    need(
        (throttled > 0) == (load.is_some_and(|s| s != "ok")),
        format!("exposure.timer_load {load:?} with {throttled} throttled cgroups"),
    );
    // The watchdog as the sysctls say.
    if let Some(p) = f.hardlockup_panic {
        let want = match (p, throttled > 0) {
            (true, true) => "warn",
            (true, false) => "info",
            _ => "ok",
        };
        let got = finding(doc, "watchdog.panic").and_then(|x| text(x, "/severity"));
        need(
            got == Some(want),
            format!("watchdog.panic {got:?}, want {want} (hardlockup_panic {p})"),
        );
    }
    if let Some(t) = f.watchdog_thresh {
        need(
            int(doc, "/host/watchdog/thresh_s") == Some(t as i64),
            format!(
                "host.watchdog.thresh_s {:?}, the sysctl {t}",
                int(doc, "/host/watchdog/thresh_s")
            ),
        );
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(worst: &str, rc: i64) -> Value {
        json!({
            "schema": "cfstrace.doctor/1",
            "host": {"watchdog": {"thresh_s": 10}},
            "fixes": [
                {"fix": "distribute_loop", "present": true},
                {"fix": "period_overrun", "present": true},
                {"fix": "async_unthrottle", "present": false},
                {"fix": "task_throttle", "present": false},
                {"fix": "burst", "present": true},
            ],
            "exposure": {"quota_cgroups": 1, "throttled_cgroups": 1, "shortest_period_us": 10000,
                         "throttled": [{"path": "/storm/c"}]},
            "findings": [
                {"id": "exposure.timer_load", "severity": "info", "title": "t", "evidence": "e", "basis": "b"},
                {"id": "watchdog.panic", "severity": worst, "title": "t", "evidence": "e", "basis": "b"},
                {"id": "exposure.period", "severity": "info", "title": "t", "evidence": "e", "basis": "b"},
            ],
            "verdict": {"ready": true, "worst": worst, "exit_status": rc},
        })
    }

    fn facts() -> FindingsFacts {
        FindingsFacts::from_map(
            &[
                ("findings.csd_unthrottle", "0"),
                ("findings.throttle_work", "0"),
                ("findings.burst_file", "yes"),
                ("findings.hardlockup_panic", "1"),
                ("findings.watchdog_thresh", "10"),
                ("findings.own_quota", "/storm/c"),
                ("findings.own_throttled", "/storm/c"),
                ("findings.shortest_period_us", "10000"),
                ("findings.quota_cgroups", "1"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        )
    }

    #[test]
    fn a_true_document_passes() {
        assert_eq!(
            check_findings(&doc("warn", 5), 5, &facts()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_lie_is_caught() {
        // Exit status not the worst severity's.
        assert!(!check_findings(&doc("warn", 5), 0, &facts()).is_empty());
        // hardlockup_panic=1 with throttling must warn.
        assert!(!check_findings(&doc("info", 0), 0, &facts()).is_empty());
        // The kernel has the CSD symbol but the document says no async unthrottle.
        let mut f = facts();
        f.csd_unthrottle = Some(true);
        assert!(
            check_findings(&doc("warn", 5), 5, &f)
                .iter()
                .any(|b| b.contains("async"))
        );
        // A throttled cgroup of the judge's missing.
        let mut f = facts();
        f.own_throttled_paths.push("/other".into());
        assert!(
            check_findings(&doc("warn", 5), 5, &f)
                .iter()
                .any(|b| b.contains("/other"))
        );
        // A period the files do not have.
        let mut f = facts();
        f.shortest_period_us = Some(5000);
        assert!(!check_findings(&doc("warn", 5), 5, &f).is_empty());
        // A 4 ms period (with the overrun fix) must warn, not inform.
        let mut f = facts();
        f.shortest_period_us = Some(4000);
        let mut d = doc("warn", 5);
        d["exposure"]["shortest_period_us"] = json!(4000);
        assert!(
            check_findings(&d, 5, &f)
                .iter()
                .any(|b| b.contains("exposure.period"))
        );
        d["findings"][2]["severity"] = json!("warn");
        assert_eq!(check_findings(&d, 5, &f), Vec::<String>::new());
        let mut d = doc("warn", 5);
        d["schema"] = json!("x");
        assert!(!check_findings(&d, 5, &facts()).is_empty());
    }
}
