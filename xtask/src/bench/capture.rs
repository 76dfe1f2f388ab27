//! What the benchmarks read from a capture (README "capture"): the kernel's per-CPU interrupt
//! totals (`cpu_totals`), the callbacks' times and counts (`period` lines) and the end line.
//! Read with serde_json values, not the tracer's types (xtask cannot depend on the tracer).
//! Guests send a digest instead of the whole capture ([`Summary::from_digest`]).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::stats::{self, hist_quantile};

/// One CPU's last `cpu_totals` line (cumulative since attach).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuTotals {
    pub interrupts: u64,
    pub interrupts_ns: u64,
    pub interrupt_max_ns: u64,
    pub hist: Vec<(u32, u64)>,
}

/// The period lines, reduced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Callbacks {
    pub count: u64,
    pub sum_ns: u64,
    /// Nearest-rank p99 of `duration_ns`.
    pub p99_ns: u64,
    /// Sums of the per-callback counts: the counting programs' hits inside callbacks.
    pub loops: u64,
    pub unthrottled: u64,
    pub enqueued: u64,
    pub runnable: u64,
}

impl Callbacks {
    /// The figures of a digest's `CB` line, in their order.
    fn from_digest(f: &[u64]) -> Option<Callbacks> {
        if f.len() != 7 {
            return None;
        }
        let mut v = f.iter().copied();
        let mut next = || v.next().unwrap_or_default();
        Some(Callbacks {
            count: next(),
            sum_ns: next(),
            p99_ns: next(),
            loops: next(),
            unthrottled: next(),
            enqueued: next(),
            runnable: next(),
        })
    }

    pub fn mean_ns(&self) -> f64 {
        self.sum_ns as f64 / self.count as f64
    }

    pub fn from_durations(mut d: Vec<u64>, sums: [u64; 4]) -> Callbacks {
        d.sort_unstable();
        Callbacks {
            count: d.len() as u64,
            sum_ns: d.iter().sum(),
            p99_ns: stats::nearest_rank(&d, 0.99).unwrap_or(0),
            loops: sums[0],
            unthrottled: sums[1],
            enqueued: sums[2],
            runnable: sums[3],
        }
    }
}

/// The end line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct End {
    pub duration_ns: u64,
    pub periods: u64,
    pub lost: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub cpus: BTreeMap<u32, CpuTotals>,
    pub callbacks: Callbacks,
    pub end: Option<End>,
    /// Lines after the header.
    pub lines: u64,
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn cpu_totals(v: &Value) -> (u32, CpuTotals) {
    let hist = v
        .get("interrupt_hist")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p.get(0)?.as_u64()? as u32, p.get(1)?.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    (
        u(v, "cpu") as u32,
        CpuTotals {
            interrupts: u(v, "interrupts"),
            interrupts_ns: u(v, "interrupts_ns"),
            interrupt_max_ns: u(v, "interrupt_max_ns"),
            hist,
        },
    )
}

fn end(v: &Value) -> End {
    End {
        duration_ns: u(v, "duration_ns"),
        periods: u(v, "periods"),
        lost: u(v, "lost"),
        reason: v
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    }
}

impl Summary {
    /// A whole capture file's text. The header must be there; other unreadable lines are
    /// errors too (the bench writes and reads its own captures).
    pub fn parse(text: &str) -> Result<Summary> {
        let mut lines = text.lines();
        let header = lines.next().context("empty capture")?;
        if !header.contains("cfstrace.capture/1") {
            bail!(
                "not a cfstrace capture: {}",
                &header[..header.len().min(80)]
            );
        }
        let mut s = Summary::default();
        let mut durations = Vec::new();
        let mut sums = [0u64; 4];
        for (i, line) in lines.enumerate() {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("capture line {}: not JSON", i + 2))?;
            s.lines += 1;
            match v.get("kind").and_then(Value::as_str) {
                Some("period") => {
                    durations.push(u(&v, "duration_ns"));
                    for (sum, k) in
                        sums.iter_mut()
                            .zip(["loops", "unthrottled", "enqueued", "runnable"])
                    {
                        *sum += u(&v, k);
                    }
                }
                Some("cpu_totals") => {
                    let (cpu, t) = cpu_totals(&v);
                    s.cpus.insert(cpu, t);
                }
                Some("end") => s.end = Some(end(&v)),
                _ => {}
            }
        }
        s.callbacks = Callbacks::from_durations(durations, sums);
        Ok(s)
    }

    /// A guest's digest of a capture: its `cpu_totals` and end lines verbatim, plus
    /// `CB <count> <sum_ns> <p99_ns> <loops> <unthrottled> <enqueued> <runnable>` and
    /// `LINES <n>` (see the guest's `digest` function).
    pub fn from_digest(lines: &[&str]) -> Result<Summary> {
        let mut s = Summary::default();
        for line in lines {
            if let Some(rest) = line.strip_prefix("CB ") {
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .map(|x| x.parse::<f64>().map(|v| v as u64))
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("bad digest line {line:?}"))?;
                s.callbacks = Callbacks::from_digest(&f)
                    .with_context(|| format!("bad digest line {line:?}"))?;
            } else if let Some(n) = line.strip_prefix("LINES ") {
                s.lines = n.trim().parse().unwrap_or(0);
            } else if line.starts_with('{') {
                let v: Value = serde_json::from_str(line)
                    .with_context(|| format!("bad digest JSON {line:?}"))?;
                match v.get("kind").and_then(Value::as_str) {
                    Some("cpu_totals") => {
                        let (cpu, t) = cpu_totals(&v);
                        s.cpus.insert(cpu, t);
                    }
                    Some("end") => s.end = Some(end(&v)),
                    _ => {}
                }
            }
        }
        Ok(s)
    }

    pub fn interrupts(&self) -> u64 {
        self.cpus.values().map(|c| c.interrupts).sum()
    }

    /// Mean timer-interrupt time over every CPU: exact (the kernel's own sums).
    pub fn interrupt_mean_ns(&self) -> f64 {
        let ns: u64 = self.cpus.values().map(|c| c.interrupts_ns).sum();
        ns as f64 / self.interrupts() as f64
    }

    /// The bucket of the interrupt-time quantile `q` over every CPU.
    pub fn interrupt_quantile(&self, q: f64) -> Option<(u64, u64)> {
        let mut merged: BTreeMap<u32, u64> = BTreeMap::new();
        for c in self.cpus.values() {
            for &(b, n) in &c.hist {
                *merged.entry(b).or_default() += n;
            }
        }
        let h: Vec<(u32, u64)> = merged.into_iter().collect();
        hist_quantile(&h, q)
    }

    /// The p99 bucket's midpoint: the figure compared between runs (the bucket is 1/16 of a
    /// power of two wide, about 6 %).
    pub fn interrupt_p99_ns(&self) -> f64 {
        self.interrupt_quantile(0.99)
            .map_or(f64::NAN, |(lo, hi)| (lo as f64 + hi as f64) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURE: &str = r#"{"schema":"cfstrace.capture/1","host":{}}
{"kind":"period","ts_ns":1,"cpu":0,"duration_ns":3000,"cgroup_id":5,"loops":1,"unthrottled":2,"enqueued":3,"runnable":4}
{"kind":"period","ts_ns":2,"cpu":1,"duration_ns":1000,"cgroup_id":5,"loops":1,"unthrottled":0,"enqueued":0,"runnable":1}
{"kind":"cpu_totals","ts_ns":9,"cpu":0,"interrupts":10,"interrupts_ns":100000,"interrupt_max_ns":20000,"interrupt_hist":[[50,1]]}
{"kind":"cpu_totals","ts_ns":19,"cpu":0,"interrupts":20,"interrupts_ns":200000,"interrupt_max_ns":20000,"interrupt_hist":[[1,19],[60,1]]}
{"kind":"cpu_totals","ts_ns":19,"cpu":1,"interrupts":20,"interrupts_ns":400000,"interrupt_max_ns":20000,"interrupt_hist":[[2,20]]}
{"kind":"end","ts_ns":20,"duration_ns":8000000000,"reason":"duration","periods":2,"lost":0}
"#;

    #[test]
    fn reads_the_last_totals_and_the_callbacks() {
        let s = Summary::parse(CAPTURE).unwrap();
        assert_eq!(s.lines, 6);
        assert_eq!(s.interrupts(), 40);
        assert_eq!(s.interrupt_mean_ns(), 15_000.0);
        // 19 + 20 + 1 interrupts: p99 is the 40th, in bucket 60.
        assert_eq!(
            s.interrupt_quantile(0.99).unwrap().0,
            stats::fine_bucket_low(60)
        );
        assert_eq!(
            s.interrupt_quantile(0.5).unwrap().0,
            stats::fine_bucket_low(2)
        );
        let c = &s.callbacks;
        assert_eq!((c.count, c.sum_ns, c.p99_ns), (2, 4000, 3000));
        assert_eq!(
            (c.loops, c.unthrottled, c.enqueued, c.runnable),
            (2, 2, 3, 5)
        );
        assert_eq!(s.end.as_ref().unwrap().periods, 2);
    }

    #[test]
    fn a_digest_reads_as_the_capture_does() {
        let whole = Summary::parse(CAPTURE).unwrap();
        let mut digest: Vec<&str> = CAPTURE
            .lines()
            .filter(|l| l.contains("cpu_totals") || l.contains("\"end\""))
            .collect();
        digest.push("CB 2 4000 3000 2 2 3 5");
        digest.push("LINES 6");
        assert_eq!(Summary::from_digest(&digest).unwrap(), whole);
        assert!(Summary::from_digest(&["CB 1 2"]).is_err());
    }

    #[test]
    fn not_a_capture() {
        assert!(Summary::parse("{\"x\":1}\n").is_err());
        assert!(Summary::parse("").is_err());
    }
}
