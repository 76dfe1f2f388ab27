//! /proc/kallsyms lookups: is a function a real symbol (kprobe-able) or was it inlined away,
//! and the address of `sched_cfs_period_timer` for the tracepoint filter.
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", restricted_message(path, *.syslog_held, .kptr_restrict.as_deref()))]
    Restricted {
        path: String,
        /// CAP_SYSLOG held: then only kptr_restrict=2 hides the addresses.
        syslog_held: bool,
        kptr_restrict: Option<String>,
    },
}

/// The kernel shows kallsyms addresses to CAP_SYSLOG unless kptr_restrict=2 (and to everyone at
/// kptr_restrict=0 with perf_event_paranoid<=1): name what is missing.
fn restricted_message(path: &str, syslog_held: bool, kptr_restrict: Option<&str>) -> String {
    let restrict = kptr_restrict.unwrap_or("unknown");
    if syslog_held {
        format!(
            "{path} shows only zero addresses even with CAP_SYSLOG (kernel.kptr_restrict={restrict}): \
             set kernel.kptr_restrict=1 so the tracepoint filter can find sched_cfs_period_timer"
        )
    } else {
        format!(
            "missing capability CAP_SYSLOG: {path} shows only zero addresses (kernel.kptr_restrict={restrict}); \
             run as root or grant CAP_SYSLOG so the tracepoint filter can find sched_cfs_period_timer"
        )
    }
}

/// The symbols cfstrace cares about, looked up in one pass over kallsyms.
#[derive(Debug, Default, Clone)]
pub struct Symbols {
    /// name -> (address, exact symbol name found: may carry a `.isra.0`-style suffix).
    found: HashMap<String, (u64, String)>,
}

impl Symbols {
    pub fn load(wanted: &[&str]) -> Result<Self, KallsymsError> {
        let path = "/proc/kallsyms";
        let read_err = |source| KallsymsError::Read {
            path: path.into(),
            source,
        };
        let file = std::fs::File::open(Path::new(path)).map_err(read_err)?;
        // Streamed line by line: the file is several MB and only a handful of lines matter.
        let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
        let mut s = Self::default();
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut reader, &mut line).map_err(read_err)? > 0 {
            s.add_line(&line, wanted);
            line.clear();
        }
        if !s.found.is_empty() && s.found.values().all(|(a, _)| *a == 0) {
            return Err(KallsymsError::Restricted {
                path: path.into(),
                syslog_held: super::privileges::holds(super::privileges::Capability::Syslog),
                kptr_restrict: std::fs::read_to_string("/proc/sys/kernel/kptr_restrict")
                    .ok()
                    .map(|v| v.trim().to_string()),
            });
        }
        Ok(s)
    }

    /// Pure parser. An exact name wins over a compiler-suffixed clone (`name.isra.0`,
    /// `name.constprop.0`): kprobes attach to the real symbol name, which is the suffixed one.
    pub fn parse(text: &str, wanted: &[&str]) -> Self {
        let mut s = Self::default();
        for line in text.lines() {
            s.add_line(line, wanted);
        }
        s
    }

    fn add_line(&mut self, line: &str, wanted: &[&str]) {
        let mut it = line.split_ascii_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
            return;
        };
        // Only text symbols; modules (4th column) cannot hold these scheduler functions.
        if !matches!(kind, "t" | "T") || it.next().is_some() {
            return;
        }
        // `.cold` parts are split-off slow paths, not function entries.
        if name.ends_with(".cold") {
            return;
        }
        let base = name.split('.').next().unwrap_or(name);
        if !wanted.contains(&base) {
            return;
        }
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            return;
        };
        let exact = base == name;
        match self.found.get(base) {
            Some((_, prev)) if prev == base => {} // exact already found
            Some(_) if !exact => {}
            _ => {
                self.found
                    .insert(base.to_string(), (addr, name.to_string()));
            }
        }
    }

    /// Address of the function, if it exists as a symbol.
    pub fn addr(&self, name: &str) -> Option<u64> {
        self.found.get(name).map(|(a, _)| *a)
    }

    /// The symbol to attach a kprobe to (may be a suffixed clone).
    pub fn symbol(&self, name: &str) -> Option<&str> {
        self.found.get(name).map(|(_, s)| s.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_names_cap_syslog_or_kptr_restrict() {
        let m = restricted_message("/proc/kallsyms", false, Some("1"));
        assert!(m.starts_with("missing capability CAP_SYSLOG: "), "{m}");
        assert!(m.contains("kernel.kptr_restrict=1"), "{m}");
        let m = restricted_message("/proc/kallsyms", true, Some("2"));
        assert!(!m.contains("missing capability"), "{m}");
        assert!(m.contains("kernel.kptr_restrict=2"), "{m}");
    }

    const SAMPLE: &str = "\
ffffffff813b4150 t enqueue_task_fair
ffffffff813b81b0 T unthrottle_cfs_rq
ffffffff813b86e0 t distribute_cfs_runtime.isra.0
ffffffff813b8bb0 t sched_cfs_period_timer
ffffffff813b8bc0 t sched_cfs_period_timer.cold
ffffffff813b9000 d enqueue_entity
ffffffffc0001000 t enqueue_entity\t[some_module]
";

    #[test]
    fn finds_exact_and_suffixed_symbols() {
        let s = Symbols::parse(
            SAMPLE,
            &[
                "sched_cfs_period_timer",
                "distribute_cfs_runtime",
                "unthrottle_cfs_rq",
                "enqueue_entity",
                "enqueue_task_fair",
            ],
        );
        assert_eq!(s.addr("sched_cfs_period_timer"), Some(0xffffffff813b8bb0));
        assert_eq!(
            s.symbol("sched_cfs_period_timer"),
            Some("sched_cfs_period_timer")
        );
        assert_eq!(
            s.symbol("distribute_cfs_runtime"),
            Some("distribute_cfs_runtime.isra.0")
        );
        assert!(s.addr("unthrottle_cfs_rq").is_some());
        // data symbol and module symbol do not count: enqueue_entity is inlined here.
        assert_eq!(s.addr("enqueue_entity"), None);
    }

    #[test]
    fn host_has_the_period_timer() {
        let s = Symbols::load(&["sched_cfs_period_timer"]).expect("kallsyms");
        assert!(
            s.addr("sched_cfs_period_timer").is_some_and(|a| a != 0),
            "sched_cfs_period_timer missing from /proc/kallsyms"
        );
    }
}
