//! P1, cost per hit: bpf_stats run time per hit of every cfstrace program next to the peer's
//! (bpftrace, xtask/bench/peer-*.bt) on the same attach point, both attached in the same run
//! to the same storm, over several windows of that run.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::bpfstats::{self, Attach, Attachments, Sample, Style};
use super::host::{self, BpfStats};
use super::report::Table;
use super::stats::{Spread, ratio, sig3};
use super::{Line, Measured, Plan, proc};

/// Samples of one run: before the peer attached, after it did, then at the window boundaries
/// (the first one after cfstrace attached), with their times in seconds.
pub struct Windows {
    pub before_peer: Sample,
    pub after_peer: Sample,
    pub samples: Vec<(f64, Sample)>,
    pub attachments: Attachments,
}

/// One attach point's figures over the windows.
pub struct Row {
    pub attach: Attach,
    pub program: String,
    pub cfstrace: Spread,
    pub peer: Spread,
    /// cfstrace / peer, per window.
    pub ratio: Spread,
    pub hits_per_s: Spread,
}

/// Why a cfstrace program has no peer program next to it.
fn no_peer_reason(a: &Attach) -> &'static str {
    if a.target == "sched_update_nr_running_tp" {
        "no peer: a bare tracepoint (no trace event) that bpftrace 0.17 cannot attach (it has \
         no raw tracepoint probe)"
    } else {
        "no peer program on this attach point"
    }
}

/// ns/hit of the programs `ids` together between two samples; None without hits.
fn ns_per_hit(a: &Sample, b: &Sample, ids: &[u64]) -> Option<(f64, u64)> {
    let (mut hits, mut ns) = (0, 0);
    for &id in ids {
        let d = bpfstats::delta(a, b, id)?;
        hits += d.hits;
        ns += d.run_ns;
    }
    (hits > 0).then(|| (ns as f64 / hits as f64, hits))
}

pub fn compare(w: &Windows) -> Result<Vec<Row>> {
    let Some((_, first)) = w.samples.first() else {
        bail!("no samples");
    };
    let mut peer: BTreeMap<Attach, Vec<u64>> = BTreeMap::new();
    for id in bpfstats::new_ids(&w.before_peer, &w.after_peer) {
        if let Some(a) = w.attachments.peer_attach(&w.after_peer[&id]) {
            peer.entry(a).or_default().push(id);
        }
    }
    let mut rows = Vec::new();
    for id in bpfstats::new_ids(&w.after_peer, first) {
        let prog = &first[&id];
        let Some(attach) = bpfstats::cfstrace_attach(&prog.name) else {
            continue;
        };
        let peer_ids = peer.get(&attach).cloned().unwrap_or_default();
        let mut row = Row {
            attach,
            program: prog.name.clone(),
            cfstrace: Spread::default(),
            peer: Spread::default(),
            ratio: Spread::default(),
            hits_per_s: Spread::default(),
        };
        for pair in w.samples.windows(2) {
            let ((t0, a), (t1, b)) = (&pair[0], &pair[1]);
            let Some((c, hits)) = ns_per_hit(a, b, &[id]) else {
                continue;
            };
            row.cfstrace.push(c);
            row.hits_per_s.push(hits as f64 / (t1 - t0));
            if let Some((p, _)) = ns_per_hit(a, b, &peer_ids) {
                row.peer.push(p);
                row.ratio.push(c / p);
            }
        }
        rows.push(row);
    }
    rows.sort_by(|a, b| a.attach.cmp(&b.attach));
    Ok(rows)
}

/// The table and the summary lines of one run (`label`: where it ran).
pub fn measured(label: &str, rows: &[Row], windows: usize, notes: &str) -> Measured {
    let ns = |v: f64| format!("{} ns", sig3(v));
    let mut t = Table::new(&[
        "attach point",
        "cfstrace program",
        "cfstrace ns/hit",
        "peer ns/hit",
        "cfstrace/peer",
        "hits/s",
    ]);
    let mut lines = Vec::new();
    for r in rows {
        let what = format!("{label}: {}", r.attach);
        let peer = if r.peer.is_empty() {
            no_peer_reason(&r.attach).to_string()
        } else {
            r.peer.show(ns, "windows")
        };
        t.row(vec![
            format!("`{}`", r.attach),
            format!("`{}`", r.program),
            r.cfstrace.show(ns, "windows"),
            peer,
            r.ratio.show(ratio, "windows"),
            format!("{:.0}", r.hits_per_s.median()),
        ]);
        let value = if r.ratio.is_empty() {
            format!("{} (no peer)", ns(r.cfstrace.median()))
        } else {
            // The ratio is the median of the windows' own ratios (both tools in the same
            // window), not the ratio of the two medians.
            format!(
                "{} vs {} (medians): {} (median window ratio)",
                ns(r.cfstrace.median()),
                ns(r.peer.median()),
                ratio(r.ratio.median())
            )
        };
        lines.push(Line {
            what,
            value,
            goal: "<= peer".into(),
            met: (!r.ratio.is_empty()).then(|| r.ratio.median() <= 1.0),
        });
    }
    let body = format!(
        "{label}: median over {windows} windows of one run (min-max in brackets); both tools \
         attached to the same storm at once.\n\n{}\n{notes}",
        t.markdown()
    );
    Measured { lines, body }
}

pub const METHOD: &str = "`kernel.bpf_stats_enabled=1`; `bpftool prog show --json` sampled at \
    the start and end of each window; per program run_time_ns / run_cnt over the window. The \
    peer (bpftrace, `xtask/bench/peer-<style>.bt`, plus `peer-<style>-csd.bt` where the kernel \
    has `__cfsb_csd_unthrottle`) does the same job on the same attach points, the natural \
    bpftrace way (per-CPU hash maps, in-kernel histograms; it writes no per-event record where \
    cfstrace writes one per callback and per span); its programs are told apart by the ids \
    that appeared when it attached and placed with `bpftool perf show` / `bpftool link show`. \
    run_time_ns counts the program body only: the trampoline / kprobe / tracepoint dispatch \
    around it is not in it (P2 measures the whole added time). bpftrace attaches tracepoints \
    as perf-event programs where cfstrace uses raw_tp / tp_btf: same tracepoint, different \
    dispatch, which run_time_ns leaves out on both sides.";

/// P1 on the host (tracepoints), under the running storm.
pub fn host(bin: &Path, plan: &Plan) -> Result<Measured> {
    let dir = host::scratch()?;
    let btf = host::peer_btf()?;
    let script = host::peer_script("tracepoint", &btf, &dir)?;
    let _tracefs = host::Tracefs::ensure()?;
    let _stats = BpfStats::enable()?;
    let before_peer = host::sample()?;
    let peer = host::start_peer(&script, btf.offsets, &dir.join("p1-peer.log"))?;
    let after_peer = host::sample()?;
    let (rec, _) = host::start_record(bin, &dir.join("p1.jsonl"), &[], &dir.join("p1-record.log"))?;
    host::settle()?;
    proc::sleep(Duration::from_secs(2))?;
    let attachments = host::attachments();
    let start = Instant::now();
    let mut samples = Vec::new();
    for i in 0..=plan.p1_windows {
        if i > 0 {
            proc::sleep(plan.p1_window)?;
        }
        samples.push((start.elapsed().as_secs_f64(), host::sample()?));
    }
    rec.stop(Duration::from_secs(10))?;
    peer.stop(Duration::from_secs(10))?;
    let w = Windows {
        before_peer,
        after_peer,
        samples,
        attachments,
    };
    let rows = compare(&w)?;
    if rows.is_empty() {
        bail!("no cfstrace program ran during the windows");
    }
    let notes = "The host kernel has no kprobes and refuses fentry (EPERM), so only the \
        tracepoint programs run here; `hrtimer_expire_entry` is cfstrace's tp_btf program \
        (`hrtimer_expire_entry_btf`), the rest raw_tp.";
    Ok(measured(
        &format!("host {}", Style::Tracepoint.name()),
        &rows,
        plan.p1_windows,
        notes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(progs: &[(u64, &str, u64, u64)]) -> Sample {
        bpfstats::parse_progs(&serde_json::to_string(&progs.iter().map(|(id, name, cnt, ns)| {
            serde_json::json!({"id": id, "name": name, "type": "tracing", "run_cnt": cnt, "run_time_ns": ns})
        }).collect::<Vec<_>>()).unwrap())
        .unwrap()
    }

    #[test]
    fn cfstrace_against_its_peer_per_window() {
        let before_peer = sample(&[(1, "other", 0, 0)]);
        let after_peer = sample(&[(1, "other", 0, 0), (10, "hrtimer_expire_", 0, 0)]);
        let s0 = sample(&[
            (1, "other", 0, 0),
            (10, "hrtimer_expire_", 100, 10_000),
            (20, "hrtimer_expire_exit", 0, 0),
            (21, "nr_running", 0, 0),
        ]);
        let s1 = sample(&[
            (1, "other", 5, 5),
            (10, "hrtimer_expire_", 200, 20_000),
            (20, "hrtimer_expire_exit", 100, 5_000),
            (21, "nr_running", 10, 300),
        ]);
        let perf = r#"[{"prog_id":10,"fd_type":"tracepoint","tracepoint":"hrtimer_expire_exit"}]"#;
        let w = Windows {
            before_peer,
            after_peer,
            samples: vec![(0.0, s0), (2.0, s1)],
            attachments: Attachments::parse(perf, "[]"),
        };
        let rows = compare(&w).unwrap();
        assert_eq!(rows.len(), 2);
        let exit = &rows[0];
        assert_eq!(exit.attach.target, "hrtimer_expire_exit");
        assert_eq!((exit.cfstrace.median(), exit.peer.median()), (50.0, 100.0));
        assert_eq!(exit.ratio.median(), 0.5);
        assert_eq!(exit.hits_per_s.median(), 50.0);
        assert!(rows[1].peer.is_empty());
        let m = measured("host", &rows, 1, "");
        assert_eq!(m.lines[0].met, Some(true));
        assert_eq!(m.lines[1].met, None);
        assert!(m.body.contains("bpftrace 0.17 cannot attach"), "{}", m.body);
    }
}
