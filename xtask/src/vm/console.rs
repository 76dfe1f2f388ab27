//! What a guest printed: kernel messages told from our own lines, the kernel problems that
//! fail a run, and the VM guest's console read back into its runs (between the markers its
//! /init prints, see [`super::guest`]). The bench guests share the kernel-line rules.

use std::collections::BTreeMap;

use serde_json::Value;

use super::guest::{
    M_BEGIN, M_CAPFILE_BEGIN, M_CAPFILE_END, M_CAPTURE_BEGIN, M_CAPTURE_END, M_DOCTOR_BEGIN,
    M_DOCTOR_END, M_DOCTORJSON_BEGIN, M_DOCTORJSON_END, M_DONE, M_END, M_FACT, M_INIT, M_POKES,
    M_RC, M_RECORD, M_RUN,
};

/// Kernel messages that mean the guest kernel is broken.
pub const KERNEL_PROBLEMS: &[&str] = &[
    "Oops",
    "BUG:",
    "Kernel panic",
    "RCU stall",
    // "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks", "... self-detected stall on CPU"
    "detected stall",
    "soft lockup",
    "hard LOCKUP",
    "general protection fault",
];

/// The text after a printk timestamp (`[   12.345678] `) in a line, if it has one. Only kernel
/// lines are scanned for problems, so cfstrace's own output ("hard LOCKUP" in a reason) is not.
pub fn kernel_message(line: &str) -> Option<&str> {
    let mut rest = line;
    while let Some(i) = rest.find('[') {
        let after = &rest[i + 1..];
        if let Some(j) = after.find(']') {
            let ts = after[..j].trim();
            let is_ts = ts.contains('.')
                && !ts.is_empty()
                && ts.chars().all(|c| c.is_ascii_digit() || c == '.');
            if is_ts {
                return Some(&after[j + 1..]);
            }
        }
        rest = after;
    }
    None
}

pub fn kernel_problem(line: &str) -> Option<&'static str> {
    let msg = kernel_message(line)?;
    KERNEL_PROBLEMS.iter().copied().find(|p| msg.contains(p))
}

/// The value of a `MARKER value@@` line.
fn marker<'a>(line: &'a str, m: &str) -> Option<&'a str> {
    let p = line.find(m)?;
    let rest = &line[p + m.len()..];
    Some(rest.find("@@").map_or(rest, |e| &rest[..e]).trim())
}

/// One backend's section of the console.
#[derive(Debug, Default)]
pub struct GuestRun {
    pub(super) backend: String,
    /// Line index of its RUN marker.
    pub(super) start: usize,
    /// Line index of its RC marker (the run finished).
    pub(super) end: Option<usize>,
    pub(super) doctor: DoctorBlock,
    pub(super) recording: bool,
    /// Line index of its RECORD marker (for timing).
    pub(super) record_start: Option<usize>,
    pub(super) report: Option<std::result::Result<Value, String>>,
    /// (record, report) exit statuses.
    pub(super) rc: Option<(i64, i64)>,
    /// First kernel problem during this run.
    pub(super) problem: Option<usize>,
    /// The capture digest (co-firing run).
    pub(super) capture: Lines,
    /// The whole capture (`--save-captures`).
    pub(super) capture_file: Lines,
    /// `doctor --json` (the findings run) and its exit status.
    pub(super) doctor_json: Lines,
    pub(super) doctor_json_rc: Option<i64>,
}

/// A block's lines, and whether its end marker came (a block cut short is not judged whole).
#[derive(Debug, Default)]
pub struct Lines {
    pub(super) lines: Vec<String>,
    pub(super) done: bool,
}

/// Doctor's output and what its end marker said.
#[derive(Debug, Default)]
pub struct DoctorBlock {
    pub(super) lines: Vec<String>,
    pub(super) rc: Option<i64>,
    /// Doctor's (user, sys) CPU seconds, as busybox `time` gave them.
    pub(super) cpu: Option<(String, String)>,
    /// Line index of its end marker (for timing).
    pub(super) end: Option<usize>,
}

#[derive(Debug, Default)]
pub struct Console {
    pub(super) init: bool,
    pub(super) facts: BTreeMap<String, String>,
    pub(super) runs: Vec<GuestRun>,
    /// First kernel problem before cfstrace first ran (a boot flake).
    pub(super) early_problem: Option<usize>,
    pub(super) done: bool,
    pub(super) pokes: u32,
}

/// The multi-line blocks of a run, between a begin and an end marker.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Block {
    Doctor,
    Report,
    Capture,
    CapFile,
    DoctorJson,
}

const BLOCKS: [(Block, &str, &str); 5] = [
    (Block::Doctor, M_DOCTOR_BEGIN, M_DOCTOR_END),
    (Block::Report, M_BEGIN, M_END),
    (Block::Capture, M_CAPTURE_BEGIN, M_CAPTURE_END),
    (Block::CapFile, M_CAPFILE_BEGIN, M_CAPFILE_END),
    (Block::DoctorJson, M_DOCTORJSON_BEGIN, M_DOCTORJSON_END),
];

/// Read a VM guest's console into its facts and runs.
pub fn analyze(lines: &[String]) -> Console {
    let mut c = Console::default();
    let mut block: Option<Block> = None;
    let mut report_lines: Vec<&str> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        c.note_line(l);
        if let Some(b) = marker(l, M_RUN) {
            c.runs.push(GuestRun {
                backend: b.to_string(),
                start: i,
                ..GuestRun::default()
            });
            block = None;
            continue;
        }
        if kernel_problem(l).is_some() {
            // Between runs too the last one is blamed (its detach may be the cause).
            match c.runs.last_mut() {
                Some(r) => r.problem.get_or_insert(i),
                None => c.early_problem.get_or_insert(i),
            };
        }
        let Some(run) = c.runs.last_mut() else {
            continue;
        };
        if let Some(&(b, _, _)) = BLOCKS
            .iter()
            .find(|(_, begin, _)| marker(l, begin).is_some())
        {
            block = Some(b);
            report_lines.clear();
            continue;
        }
        if let Some(&(b, _, end)) = BLOCKS.iter().find(|(_, _, end)| marker(l, end).is_some()) {
            block = None;
            run.close(b, i, marker(l, end).unwrap_or(""), &report_lines);
            continue;
        }
        match block {
            Some(Block::Report) => report_lines.push(l),
            // Kernel messages are console noise inside the other blocks.
            Some(_) if kernel_message(l).is_some() => {}
            Some(Block::Doctor) => run.doctor.lines.push(l.clone()),
            Some(Block::Capture) => run.capture.lines.push(l.clone()),
            Some(Block::CapFile) => run.capture_file.lines.push(l.clone()),
            Some(Block::DoctorJson) => run.doctor_json.lines.push(l.clone()),
            None => run.note_line(i, l),
        }
    }
    if block == Some(Block::Report)
        && let Some(run) = c.runs.last_mut()
    {
        run.report = Some(Err("no end marker after the report".into()));
    }
    c
}

impl Console {
    /// The boot-wide markers: init, done, facts, poke rounds.
    fn note_line(&mut self, l: &str) {
        if l.contains(M_INIT) {
            self.init = true;
        }
        if l.contains(M_DONE) {
            self.done = true;
        }
        if let Some(f) = marker(l, M_FACT)
            && let Some((k, v)) = f.split_once('=')
        {
            self.facts.insert(k.to_string(), v.to_string());
        }
        if let Some(n) = marker(l, M_POKES) {
            self.pokes = n.parse().unwrap_or(self.pokes);
        }
    }
}

impl GuestRun {
    /// A block's end marker (`rest`: its value) at line `i`.
    fn close(&mut self, b: Block, i: usize, rest: &str, report_lines: &[&str]) {
        match b {
            Block::Doctor => {
                self.doctor.end = Some(i);
                self.doctor.cpu = word(rest, "cpu=").and_then(parse_cpu);
                self.doctor.rc = word(rest, "rc=").and_then(|v| v.parse().ok());
            }
            Block::Report => self.report = Some(parse_report(report_lines)),
            Block::Capture => self.capture.done = true,
            Block::CapFile => self.capture_file.done = true,
            Block::DoctorJson => {
                self.doctor_json.done = true;
                self.doctor_json_rc = word(rest, "rc=").and_then(|v| v.parse().ok());
            }
        }
    }

    /// A line outside any block: the RECORD and RC markers.
    fn note_line(&mut self, i: usize, l: &str) {
        if marker(l, M_RECORD).is_some() {
            self.recording = true;
            self.record_start = Some(i);
        } else if let Some(rest) = marker(l, M_RC) {
            self.rc = parse_rc(rest);
            self.end = Some(i);
        }
    }
}

/// The value of `key` among the words of a marker's value.
fn word<'a>(rest: &'a str, key: &str) -> Option<&'a str> {
    rest.split_whitespace().find_map(|w| w.strip_prefix(key))
}

/// `real,user,sys` seconds (busybox `time -f '%e %U %S'`, spaces made commas) as (user, sys),
/// as printed; None when the figures are not three numbers (a `time` that also wrote "Command
/// exited with non-zero status N" before them, in an old guest image).
fn parse_cpu(v: &str) -> Option<(String, String)> {
    let f: Vec<&str> = v.split(',').collect();
    match f[..] {
        [real, user, sys] if [real, user, sys].iter().all(|x| x.parse::<f64>().is_ok()) => {
            Some((user.to_string(), sys.to_string()))
        }
        _ => None,
    }
}

fn parse_report(lines: &[&str]) -> std::result::Result<Value, String> {
    let all = lines.join("\n");
    if all.trim().is_empty() {
        return Err("cfstrace report printed nothing".into());
    }
    match serde_json::from_str(&all) {
        Ok(v) => Ok(v),
        Err(first) => {
            // A printk may have landed in the middle of the JSON: drop kernel lines and retry.
            let cleaned: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| kernel_message(l).is_none())
                .collect();
            serde_json::from_str(&cleaned.join("\n"))
                .map_err(|_| format!("report is not JSON: {first}"))
        }
    }
}

/// `<backend> record=N report=N`
fn parse_rc(rest: &str) -> Option<(i64, i64)> {
    let num = |key| word(rest, key).and_then(|v| v.parse().ok());
    Some((num("record=")?, num("report=")?))
}

/// `n` lines of the console from 5 before `around`, or its last `n`, indented.
pub fn excerpt(lines: &[String], around: Option<usize>, n: usize) -> String {
    let (from, to) = match around {
        Some(i) => (i.saturating_sub(5), (i + n).min(lines.len())),
        None => (lines.len().saturating_sub(n), lines.len()),
    };
    lines[from..to]
        .iter()
        .map(|l| format!("    | {l}\n"))
        .collect()
}

/// An oops at an int3 the kernel's own text patcher planted and then no longer recognised: the
/// signature of the multi-threaded TCG artefact (see [`super::boot`]). Such a run is retried
/// once, loudly; a second one fails.
pub fn emulation_suspect(lines: &[String], at: usize) -> Option<String> {
    let l = &lines[at];
    if !l.contains("Oops: int3") {
        return None;
    }
    let rip = lines[at..lines.len().min(at + 20)]
        .iter()
        .find_map(|l| {
            l.split_once("RIP: 0010:")
                .map(|(_, r)| r.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    Some(format!("Oops: int3 at {rip}"))
}

/// The lines between `<begin><name>@@` and `<end><name> <rest>@@` (kernel messages that land
/// between them left out), joined, and `<rest>`.
pub fn named_block(
    lines: &[String],
    begin: &str,
    end: &str,
    name: &str,
) -> Option<(String, String)> {
    let open = format!("{begin}{name}@@");
    let start = lines.iter().position(|l| l.trim() == open)?;
    let close = format!("{end}{name} ");
    let (stop, rest) = lines[start..]
        .iter()
        .enumerate()
        .find_map(|(i, l)| marker(l, &close).map(|r| (start + i, r.to_string())))?;
    let body: Vec<&str> = lines[start + 1..stop]
        .iter()
        .map(String::as_str)
        .filter(|l| kernel_message(l).is_none())
        .collect();
    Some((body.join("\n"), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::Job;
    use cfstrace_tests::expect;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn kernel_lines_only() {
        assert_eq!(
            kernel_problem("[    3.123456] BUG: unable to handle page fault"),
            Some("BUG:")
        );
        assert_eq!(
            kernel_problem("[   12.000001] watchdog: BUG: soft lockup - CPU#0 stuck"),
            Some("BUG:")
        );
        assert_eq!(
            kernel_problem("reason: eats 3% of the hard LOCKUP headroom"),
            None
        );
        assert_eq!(kernel_problem("[x] Oops"), None);
    }

    const TWO_RUNS: &str = "[    0.000000] Linux version 6.1\n@@CFSTRACE-INIT@@ 6.1\n\
        @@CFSTRACE-FACT ncpus=2@@\n@@CFSTRACE-FACT symbol.enqueue_entity=yes@@\n\
        @@CFSTRACE-RUN auto@@\n@@CFSTRACE-DOCTOR-BEGIN auto@@\nframe       fentry\n\
        [    5.000000] random: crng init done\n\
        leakcheck   20 attach/detach cycles: x: ok\n@@CFSTRACE-DOCTOR-END auto rc=0@@\n\
        @@CFSTRACE-RECORD auto@@\n@@CFSTRACE-REPORT-BEGIN auto@@\n{\"schema\":\n\
        [    9.100000] random: crng init done\n\"cfstrace.report/1\"}\n\n\
        @@CFSTRACE-REPORT-END auto@@\n@@CFSTRACE-RC auto record=0 report=0@@\n\
        @@CFSTRACE-RUN kprobe@@\n@@CFSTRACE-DOCTOR-BEGIN kprobe@@\n\
        [   20.000000] Oops: int3: 0000 [#1] SMP NOPTI\n\
        [   20.000001] RIP: 0010:sched_cfs_period_timer+0x5/0x200\n";

    #[test]
    fn console_with_runs() {
        let l = lines(TWO_RUNS);
        let con = analyze(&l);
        assert!(con.init && !con.done);
        assert_eq!(con.facts["ncpus"], "2");
        assert_eq!(con.runs.len(), 2);
        let a = &con.runs[0];
        assert_eq!(a.backend, "auto");
        assert_eq!(a.doctor.rc, Some(0));
        assert_eq!(a.doctor.lines.len(), 2, "{:?}", a.doctor.lines);
        assert_eq!(a.rc, Some((0, 0)));
        assert!(a.problem.is_none() && a.recording);
        let r = a.report.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(r["schema"], "cfstrace.report/1");
        let k = &con.runs[1];
        assert_eq!(k.backend, "kprobe");
        assert!(k.rc.is_none());
        let p = k.problem.expect("the oops belongs to the kprobe run");
        assert_eq!(
            emulation_suspect(&l, p).as_deref(),
            Some("Oops: int3 at sched_cfs_period_timer+0x5/0x200")
        );
        assert!(con.early_problem.is_none());
    }

    #[test]
    fn cofire_run_and_its_digest() {
        let l = lines(
            "@@CFSTRACE-INIT@@ 6.1\n@@CFSTRACE-RUN cofire@@\n@@CFSTRACE-RECORD cofire@@\n\
             @@CFSTRACE-REPORT-BEGIN cofire@@\n{\"schema\":\"cfstrace.report/1\"}\n\
             @@CFSTRACE-REPORT-END cofire@@\n@@CFSTRACE-CAPTURE-BEGIN cofire@@\n\
             {\"kind\":\"irq_span\",\"ts_ns\":100,\"cpu\":0,\"duration_ns\":9,\"timers\":2,\"timers_ns\":5}\n\
             [   12.000000] hrtimer: interrupt took 3000000 ns\n\
             P 0 100 2 5 2\nG 7 1\nG 8 1\n@@CFSTRACE-CAPTURE-END cofire@@\n\
             @@CFSTRACE-RC cofire record=0 report=0@@\n@@CFSTRACE-DONE@@\n",
        );
        let con = analyze(&l);
        assert_eq!(con.runs.len(), 1);
        let r = &con.runs[0];
        assert_eq!(Job::from_name(&r.backend), Some(Job::Cofire));
        assert!(r.capture.done && r.report.as_ref().is_some_and(|r| r.is_ok()));
        assert_eq!(r.rc, Some((0, 0)));
        let d = expect::CaptureDigest::parse(&r.capture.lines);
        assert!(d.garbled.is_empty(), "{:?}", d.garbled);
        assert_eq!((d.spans.len(), d.periods(), d.periods_in_span()), (1, 2, 2));
    }

    #[test]
    fn early_problem_is_a_boot_flake() {
        let early = analyze(&lines(
            "[    1.000000] Oops: 0000 [#1] SMP\n@@CFSTRACE-INIT@@ x\n",
        ));
        assert_eq!(early.early_problem, Some(0));
        assert!(early.runs.is_empty());
    }

    #[test]
    fn doctor_cpu_figures() {
        let l = lines(
            "@@CFSTRACE-RUN auto@@\n@@CFSTRACE-DOCTOR-BEGIN auto@@\n\
             @@CFSTRACE-DOCTOR-END auto rc=0 cpu=62.10,1.50,0.75@@\n\
             @@CFSTRACE-RUN kprobe@@\n@@CFSTRACE-DOCTOR-BEGIN kprobe@@\n\
             @@CFSTRACE-DOCTOR-END kprobe rc=1 cpu=Command,exited,with,non-zero,status,1@@\n",
        );
        let con = analyze(&l);
        assert_eq!(
            con.runs[0].doctor.cpu,
            Some(("1.50".to_string(), "0.75".to_string()))
        );
        assert_eq!(con.runs[1].doctor.rc, Some(1));
        assert_eq!(con.runs[1].doctor.cpu, None);
    }
}
