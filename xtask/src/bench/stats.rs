//! Small statistics the figures need: the spread of repeated runs, nearest-rank quantiles, and
//! the kernel's log-linear interrupt histogram (`cpu_totals.interrupt_hist`).

/// Values of one figure over repeated runs (or windows), reported as median and range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spread(pub Vec<f64>);

impl Spread {
    pub fn push(&mut self, v: f64) {
        if v.is_finite() {
            self.0.push(v);
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median (mean of the middle two for an even count); NaN when empty.
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// `median (min-max, n what)` with `fmt` for each value; `-` when empty.
    pub fn show(&self, fmt: impl Fn(f64) -> String, what: &str) -> String {
        match self.len() {
            0 => "-".into(),
            1 => fmt(self.median()),
            n => format!(
                "{} ({}-{}, {n} {what})",
                fmt(self.median()),
                fmt(self.min()),
                fmt(self.max())
            ),
        }
    }
}

/// Nearest-rank quantile of sorted values: the smallest value with at least `q` of them at
/// or below it. None when empty.
pub fn nearest_rank(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// The kernel's log-linear buckets, as the capture's `interrupt_hist` holds them.
pub use tracer_ebpf::{FINE_BUCKETS, fine_bucket_low};

/// The bucket holding quantile `q` of a histogram given as `[bucket, count]` pairs: its bounds
/// `[low, high)` in ns (high is `u64::MAX` for the last bucket). None when empty.
pub fn hist_quantile(hist: &[(u32, u64)], q: f64) -> Option<(u64, u64)> {
    let total: u64 = hist.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let mut sorted: Vec<(u32, u64)> = hist.to_vec();
    sorted.sort_unstable();
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (b, n) in sorted {
        seen += n;
        if seen >= rank {
            let b = b as usize;
            let high = if b + 1 >= FINE_BUCKETS {
                u64::MAX
            } else {
                fine_bucket_low(b + 1)
            };
            return Some((fine_bucket_low(b), high));
        }
    }
    None
}

/// `12.3 us` style: ns, us or ms with three significant digits.
pub fn ns(v: f64) -> String {
    or_dash(v, |v| scaled(v, ["ns", "us", "ms"]))
}

/// `v` in the largest of three units a thousand apart that it reaches, three significant
/// digits.
fn scaled(v: f64, units: [&str; 3]) -> String {
    let (x, unit) = if v >= 1e6 {
        (v / 1e6, units[2])
    } else if v >= 1e3 {
        (v / 1e3, units[1])
    } else {
        (v, units[0])
    };
    format!("{} {unit}", sig3(x))
}

/// Three significant digits, no exponent.
pub fn sig3(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `f(v)`, or `-` where `v` is not a number (no runs, a division by zero).
fn or_dash(v: f64, f: impl FnOnce(f64) -> String) -> String {
    if v.is_finite() { f(v) } else { "-".into() }
}

pub fn ratio(v: f64) -> String {
    or_dash(v, |v| format!("{v:.2}x"))
}

pub fn pct(v: f64) -> String {
    or_dash(v, |v| format!("{v:.2} %"))
}

/// `1.2 M/s`, `850 k/s`.
pub fn rate(v: f64) -> String {
    scaled(v, ["/s", "k/s", "M/s"]).replace(" /s", "/s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_median_and_range() {
        let s = Spread(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!(s.median(), 2.5);
        assert_eq!((s.min(), s.max()), (1.0, 10.0));
        assert_eq!(s.show(|v| format!("{v}"), "runs"), "2.5 (1-10, 4 runs)");
        assert_eq!(Spread(vec![4.0]).show(|v| format!("{v}"), "runs"), "4");
        assert!(Spread::default().median().is_nan());
    }

    #[test]
    fn nearest_rank_quantile() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 0.99), Some(99));
        assert_eq!(nearest_rank(&v, 1.0), Some(100));
        assert_eq!(nearest_rank(&[7], 0.99), Some(7));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }

    /// The same bounds as `tracer_ebpf::fine_bucket_low` (16 buckets a power of two, 1 us to
    /// 1 s).
    #[test]
    fn fine_buckets_match_the_kernel_side() {
        assert_eq!(FINE_BUCKETS, 322);
        assert_eq!(fine_bucket_low(0), 0);
        assert_eq!(fine_bucket_low(1), 1024);
        assert_eq!(fine_bucket_low(2), 1024 + 64);
        assert_eq!(fine_bucket_low(17), 2048);
        assert_eq!(fine_bucket_low(18), 2048 + 128);
        assert_eq!(fine_bucket_low(321), 1 << 30);
        assert_eq!(fine_bucket_low(50), 8192 + 512);
        assert_eq!(fine_bucket_low(51), 8192 + 1024);
    }

    #[test]
    fn histogram_quantile_gives_its_bucket() {
        let h = [(51, 90), (50, 5), (60, 5)];
        assert_eq!(hist_quantile(&h, 0.5), Some((9216, 9728)));
        assert_eq!(hist_quantile(&h, 0.99).unwrap().0, fine_bucket_low(60));
        assert_eq!(hist_quantile(&h, 0.01), Some((8704, 9216)));
        assert_eq!(hist_quantile(&[], 0.5), None);
    }

    #[test]
    fn units() {
        let cases = [
            (ns(950.0), "950 ns"),
            (ns(12_345.0), "12.3 us"),
            (ns(2_500_000.0), "2.50 ms"),
            (rate(5_300_000.0), "5.30 M/s"),
            (ratio(1.234), "1.23x"),
            (pct(f64::NAN), "-"),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
