//! `cfstrace doctor --attach-cycles N`: its output parsed ([`Doctor::parse`]) and checked against
//! a report of the same backend on the same kernel ([`Doctor::check`]).

use std::collections::BTreeMap;

use serde_json::Value;

use super::want::probe_state;
use super::{at, show, text};

/// What `cfstrace doctor --attach-cycles N` printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Doctor {
    pub frame: Option<String>,
    /// probe -> Some(how) when attached, None when unavailable.
    pub probes: BTreeMap<String, Option<String>>,
    /// The `leakcheck` line, without the keyword.
    pub leakcheck: Option<String>,
    /// An `attach      NO: ...` line.
    pub attach_no: Option<String>,
    /// The closing `verdict` line, without the keyword.
    pub verdict: Option<String>,
}

/// Doctor's lines with each wrapped line joined back to the one it continues (a continuation
/// is indented; a line of its own starts with its label).
fn logical_lines(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in text.lines() {
        match out.last_mut() {
            Some(prev) if l.starts_with(' ') && !l.trim().is_empty() => {
                prev.push(' ');
                prev.push_str(l.trim());
            }
            _ => out.push(l.to_string()),
        }
    }
    out
}

impl Doctor {
    pub fn parse(text: &str) -> Doctor {
        let mut d = Doctor::default();
        for l in logical_lines(text) {
            let l = l.trim_end();
            let mut w = l.split_whitespace();
            match w.next() {
                Some("frame") => d.frame = w.next().map(str::to_string),
                Some("probe") => {
                    if let (Some(name), Some(how)) = (w.next(), w.next()) {
                        let how = (how != "unavailable:").then(|| how.to_string());
                        d.probes.insert(name.to_string(), how);
                    }
                }
                Some("leakcheck") => {
                    d.leakcheck = Some(l.trim_start_matches("leakcheck").trim().to_string())
                }
                Some("attach") => {
                    d.attach_no = Some(l.trim_start_matches("attach").trim().to_string())
                }
                Some("verdict") => {
                    d.verdict = Some(l.trim_start_matches("verdict").trim().to_string())
                }
                _ => {}
            }
        }
        d
    }

    /// Check doctor's exit status, the leak-check verdict and its agreement with the report of a
    /// run with the same backend on the same kernel.
    pub fn check(&self, rc: i64, cycles: u32, report: Option<&Value>) -> Vec<String> {
        let mut bad = Vec::new();
        // 5 and 6 are the findings' warn and risk (`expect::findings` judges those).
        if !matches!(rc, 0 | 5 | 6) {
            bad.push(format!(
                "cfstrace doctor exited {rc}{}",
                self.attach_no
                    .as_deref()
                    .map(|a| format!(" (attach {a})"))
                    .unwrap_or_default()
            ));
        }
        match &self.verdict {
            None => bad.push("cfstrace doctor printed no verdict line".into()),
            Some(v) if rc != 1 && !v.starts_with("ready") => {
                bad.push(format!("doctor exited {rc} but its verdict is {v:?}"))
            }
            Some(_) => {}
        }
        match &self.leakcheck {
            None => bad.push("cfstrace doctor printed no leakcheck line".into()),
            Some(l) => {
                if !l.starts_with(&format!("{cycles} attach/detach cycles")) || !l.ends_with(": ok")
                {
                    bad.push(format!(
                        "leakcheck: {l} (want {cycles} cycles and \": ok\")"
                    ));
                }
            }
        }
        if let Some(r) = report {
            if self.frame.as_deref() != text(r, "/backend") {
                bad.push(format!(
                    "doctor's frame is {:?}, the report's backend {}",
                    self.frame,
                    show(at(r, "/backend"))
                ));
            }
            for (name, how) in &self.probes {
                if let Some(st) = probe_state(r, name) {
                    let report_how = st.how.filter(|_| st.attached);
                    if &report_how != how {
                        bad.push(format!(
                            "doctor says probe {name} {}, the report {}",
                            how.as_deref().unwrap_or("unavailable"),
                            report_how.as_deref().unwrap_or("unavailable")
                        ));
                    }
                }
            }
        }
        bad
    }
}
