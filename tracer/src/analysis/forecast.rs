//! The lockup forecast's arithmetic: least-squares fits of IRQs-off time against the work
//! counted in it (cfs_rqs unthrottled, entities enqueued or tasks queued, period timers in one
//! interrupt), kept as running moments so a fit costs a few flops per event, never a list of
//! points, and two fits (two `watch` intervals, two storm steps) pool exactly.

use serde::{Deserialize, Serialize};

/// Fewest points a fit is given for: fewer and a slope is noise.
pub const MIN_POINTS: u64 = 8;

/// Running means and co-moments of `K` variables, the last one the response (Welford's update,
/// Chan's merge: stable where sums of squares of nanoseconds would cancel).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(into = "MomentsWire", try_from = "MomentsWire")]
pub struct Moments<const K: usize> {
    pub n: u64,
    pub mean: [f64; K],
    /// Sums of products of deviations from the means.
    pub comoment: [[f64; K]; K],
}

/// Moments as JSON: serde has no impls for arrays of a const-generic length.
#[derive(Serialize, Deserialize)]
struct MomentsWire {
    n: u64,
    mean: Vec<f64>,
    comoment: Vec<Vec<f64>>,
}

impl<const K: usize> From<Moments<K>> for MomentsWire {
    fn from(m: Moments<K>) -> Self {
        MomentsWire {
            n: m.n,
            mean: m.mean.to_vec(),
            comoment: m.comoment.iter().map(|r| r.to_vec()).collect(),
        }
    }
}

impl<const K: usize> TryFrom<MomentsWire> for Moments<K> {
    type Error = String;

    fn try_from(w: MomentsWire) -> Result<Self, String> {
        let bad = || format!("moments of {K} variables, not {}", w.mean.len());
        let mut m = Moments::<K> {
            n: w.n,
            mean: w.mean.as_slice().try_into().map_err(|_| bad())?,
            ..Moments::default()
        };
        if w.comoment.len() != K {
            return Err(bad());
        }
        for (row, r) in m.comoment.iter_mut().zip(&w.comoment) {
            *row = r.as_slice().try_into().map_err(|_| bad())?;
        }
        Ok(m)
    }
}

impl<const K: usize> Default for Moments<K> {
    fn default() -> Self {
        Moments {
            n: 0,
            mean: [0.0; K],
            comoment: [[0.0; K]; K],
        }
    }
}

// Index loops: the maths is over matrix entries (i, j), clearer than zipped iterators.
#[allow(clippy::needless_range_loop)]
impl<const K: usize> Moments<K> {
    pub fn add(&mut self, v: [f64; K]) {
        self.n += 1;
        let n = self.n as f64;
        let mut before = [0.0; K];
        for i in 0..K {
            before[i] = v[i] - self.mean[i];
            self.mean[i] += before[i] / n;
        }
        for i in 0..K {
            let after = v[i] - self.mean[i];
            for j in 0..K {
                self.comoment[j][i] += before[j] * after;
            }
        }
    }

    /// Both sets of points as one.
    pub fn merge(&mut self, o: &Self) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *o;
            return;
        }
        let (n1, n2) = (self.n as f64, o.n as f64);
        let n = n1 + n2;
        let mut delta = [0.0; K];
        for (i, d) in delta.iter_mut().enumerate() {
            *d = o.mean[i] - self.mean[i];
        }
        for i in 0..K {
            for j in 0..K {
                self.comoment[i][j] += o.comoment[i][j] + delta[i] * delta[j] * n1 * n2 / n;
            }
            self.mean[i] += delta[i] * n2 / n;
        }
        self.n += o.n;
    }
}

/// Why a fit could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoFit {
    #[error("{n} points, fewer than the {MIN_POINTS} a fit needs")]
    TooFew { n: u64 },
    #[error("every point had the same {what} ({value:.0}): no spread to fit a slope to")]
    NoSpread { what: &'static str, value: f64 },
    #[error("the time does not grow with the {what} (slope {slope:.1} ns): nothing to extrapolate")]
    NoGrowth { what: &'static str, slope: f64 },
}

/// `y = fixed + per_unit * x`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    pub n: u64,
    pub fixed_ns: f64,
    pub per_unit_ns: f64,
    pub r2: f64,
    /// The largest and mean `x` fitted: how far a forecast extrapolates.
    pub mean_x: f64,
}

/// `y = fixed + a * x1 + b * x2`; `b` is None where x2 never varied apart from x1 (then the
/// line on x1 carries both).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plane {
    pub line: Line,
    pub per_second_ns: Option<f64>,
    /// Mean x2 per x1, to fold the second work into a cost per unit of the first.
    pub second_per_first: f64,
}

impl Plane {
    /// The cost of one more x1 with its usual share of x2.
    pub fn per_unit_ns(&self) -> f64 {
        self.line.per_unit_ns + self.per_second_ns.unwrap_or(0.0) * self.second_per_first
    }
}

/// Relative variance below this is no spread (counts are integers: a spread of one in a
/// million points is still a spread, a rounding residue is not).
const FLAT: f64 = 1e-9;

/// The least-squares line through `(x, y)` moments.
pub fn line(m: &Moments<2>, what: &'static str) -> Result<Line, NoFit> {
    if m.n < MIN_POINTS {
        return Err(NoFit::TooFew { n: m.n });
    }
    let (sxx, sxy, syy) = (m.comoment[0][0], m.comoment[0][1], m.comoment[1][1]);
    if sxx <= FLAT * (1.0 + m.mean[0] * m.mean[0]) * m.n as f64 {
        return Err(NoFit::NoSpread {
            what,
            value: m.mean[0],
        });
    }
    let slope = sxy / sxx;
    if slope <= 0.0 {
        return Err(NoFit::NoGrowth { what, slope });
    }
    let r2 = if syy > 0.0 {
        (sxy * sxy / (sxx * syy)).clamp(0.0, 1.0)
    } else {
        1.0
    };
    Ok(Line {
        n: m.n,
        fixed_ns: m.mean[1] - slope * m.mean[0],
        per_unit_ns: slope,
        r2,
        mean_x: m.mean[0],
    })
}

/// The least-squares plane through `(x1, x2, y)` moments; the line on x1 alone where x2 is
/// flat or moves in lockstep with x1 (two tasks per cfs_rq, always), or where its own slope
/// comes out negative (then it only soaks up noise).
pub fn plane(m: &Moments<3>, first: &'static str) -> Result<Plane, NoFit> {
    let second_per_first = if m.mean[0] > 0.0 {
        m.mean[1] / m.mean[0]
    } else {
        0.0
    };
    let on_first = |m: &Moments<3>| {
        let sub = Moments::<2> {
            n: m.n,
            mean: [m.mean[0], m.mean[2]],
            comoment: [
                [m.comoment[0][0], m.comoment[0][2]],
                [m.comoment[2][0], m.comoment[2][2]],
            ],
        };
        line(&sub, first).map(|line| Plane {
            line,
            per_second_ns: None,
            second_per_first,
        })
    };
    let c = &m.comoment;
    let det = c[0][0] * c[1][1] - c[0][1] * c[0][1];
    if m.n < MIN_POINTS || det <= 1e-6 * c[0][0] * c[1][1] {
        return on_first(m);
    }
    let a = (c[1][1] * c[0][2] - c[0][1] * c[1][2]) / det;
    let b = (c[0][0] * c[1][2] - c[0][1] * c[0][2]) / det;
    if a <= 0.0 || b < 0.0 {
        return on_first(m);
    }
    let explained = a * c[0][2] + b * c[1][2];
    let r2 = if c[2][2] > 0.0 {
        (explained / c[2][2]).clamp(0.0, 1.0)
    } else {
        1.0
    };
    Ok(Plane {
        line: Line {
            n: m.n,
            fixed_ns: m.mean[2] - a * m.mean[0] - b * m.mean[1],
            per_unit_ns: a,
            r2,
            mean_x: m.mean[0],
        },
        per_second_ns: Some(b),
        second_per_first,
    })
}

/// How many units of work make `fixed + per_unit * count` reach `target_ns`, with `rest_ns`
/// already spent: the first whole count at or past it (at least 1).
pub fn units_to_reach(target_ns: f64, rest_ns: f64, fixed_ns: f64, per_unit_ns: f64) -> u64 {
    let need = (target_ns - rest_ns - fixed_ns) / per_unit_ns;
    if need.is_finite() && need > 1.0 {
        need.ceil().min(u64::MAX as f64) as u64
    } else {
        1
    }
}

/// The work a callback's time is fitted against, after the cfs_rqs it unthrottled.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecondWork {
    /// Entities `enqueue_entity` (or tasks `enqueue_task_fair`) put back.
    Enqueued,
    /// Tasks queued under the unthrottled cfs_rqs (`h_nr_queued`).
    Queued,
}

/// The fits one capture or interval feeds, event by event.
#[derive(Clone, Debug, Default)]
pub struct ForecastMoments {
    /// Period-timer callbacks: (unthrottled, second work, callback ns).
    pub callback: Moments<3>,
    pub callback_second: Option<SecondWork>,
    /// Callbacks the kernel could not count the work of (tracepoint-only frames).
    pub callback_uncounted: u64,
    pub callback_max_unthrottled: u32,
    /// Async unthrottle CSDs on 6.3+: (unthrottled, enqueued, segment ns).
    pub csd: Moments<3>,
    /// CSD events whose time is the whole CSD's (listed mode): not fitted.
    pub csd_shared: u64,
    pub csd_max_unthrottled: u32,
    /// Timer interrupts that ran period timers: (timers, span ns).
    pub span: Moments<2>,
    pub span_max_timers: u32,
}

impl ForecastMoments {
    /// Both runs' points as one (`watch` keeps the fits of the whole run this way).
    pub fn merge(&mut self, o: &ForecastMoments) {
        self.callback.merge(&o.callback);
        self.callback_second = self.callback_second.or(o.callback_second);
        self.callback_uncounted += o.callback_uncounted;
        self.callback_max_unthrottled = self
            .callback_max_unthrottled
            .max(o.callback_max_unthrottled);
        self.csd.merge(&o.csd);
        self.csd_shared += o.csd_shared;
        self.csd_max_unthrottled = self.csd_max_unthrottled.max(o.csd_max_unthrottled);
        self.span.merge(&o.span);
        self.span_max_timers = self.span_max_timers.max(o.span_max_timers);
    }

    /// `unthrottled`, `second` are the callback's counts where the kernel gave them.
    pub fn add_callback(
        &mut self,
        duration_ns: u64,
        unthrottled: Option<u32>,
        second: Option<(SecondWork, u32)>,
    ) {
        let Some(u) = unthrottled else {
            self.callback_uncounted += 1;
            return;
        };
        let s = match (second, self.callback_second) {
            (Some((kind, n)), None) => {
                self.callback_second = Some(kind);
                f64::from(n)
            }
            (Some((kind, n)), Some(k)) if kind == k => f64::from(n),
            _ => 0.0,
        };
        self.callback_max_unthrottled = self.callback_max_unthrottled.max(u);
        self.callback.add([f64::from(u), s, duration_ns as f64]);
    }

    pub fn add_csd(&mut self, duration_ns: u64, unthrottled: u32, enqueued: u32, shared: bool) {
        if shared {
            self.csd_shared += 1;
            return;
        }
        self.csd_max_unthrottled = self.csd_max_unthrottled.max(unthrottled);
        self.csd.add([
            f64::from(unthrottled),
            f64::from(enqueued),
            duration_ns as f64,
        ]);
    }

    pub fn add_span(&mut self, duration_ns: u64, timers: u32) {
        self.span_max_timers = self.span_max_timers.max(timers);
        self.span.add([f64::from(timers), duration_ns as f64]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn moments_read_back_as_written_and_refuse_the_wrong_shape() {
        let mut m = Moments::<2>::default();
        m.add([1.0, 2.0]);
        m.add([3.0, 7.0]);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Moments<2>>(&json).unwrap(), m);
        assert!(serde_json::from_str::<Moments<3>>(&json).is_err());
    }

    #[test]
    fn a_line_is_recovered_exactly() {
        let mut m = Moments::<2>::default();
        for x in 1..=20u32 {
            m.add([f64::from(x), 5_000.0 + 300.0 * f64::from(x)]);
        }
        let l = line(&m, "timers").unwrap();
        assert!(
            close(l.fixed_ns, 5_000.0) && close(l.per_unit_ns, 300.0),
            "{l:?}"
        );
        assert!(close(l.r2, 1.0));
        assert_eq!(l.n, 20);
    }

    #[test]
    fn merged_moments_equal_moments_of_all_points() {
        let pts: Vec<[f64; 3]> = (0..50u32)
            .map(|i| {
                let x = f64::from(i % 7 + 1);
                let z = f64::from(i % 3);
                [x, z, 1e6 + 250.0 * x + 40.0 * z + f64::from(i * 37 % 11)]
            })
            .collect();
        let mut all = Moments::<3>::default();
        let (mut a, mut b) = (Moments::<3>::default(), Moments::<3>::default());
        for (i, p) in pts.iter().enumerate() {
            all.add(*p);
            if i < 17 { a.add(*p) } else { b.add(*p) }
        }
        a.merge(&b);
        assert_eq!(a.n, all.n);
        for i in 0..3 {
            assert!(close(a.mean[i], all.mean[i]));
            for j in 0..3 {
                assert!(close(a.comoment[i][j], all.comoment[i][j]), "{i}{j}");
            }
        }
    }

    #[test]
    fn a_plane_separates_unthrottles_from_enqueues() {
        let mut m = Moments::<3>::default();
        for u in 1..=6u32 {
            for e in 0..=4u32 {
                let y = 2_000.0 + 900.0 * f64::from(u) + 150.0 * f64::from(e);
                m.add([f64::from(u), f64::from(e), y]);
            }
        }
        let p = plane(&m, "unthrottles").unwrap();
        assert!(close(p.line.fixed_ns, 2_000.0), "{p:?}");
        assert!(close(p.line.per_unit_ns, 900.0));
        assert!(close(p.per_second_ns.unwrap(), 150.0));
        // 2 enqueues a callback for 3.5 unthrottles: one more unthrottle costs 900 + 150 * 2/3.5.
        assert!(close(p.per_unit_ns(), 900.0 + 150.0 * 2.0 / 3.5));
    }

    #[test]
    fn enqueues_in_lockstep_fold_into_the_unthrottle_cost() {
        let mut m = Moments::<3>::default();
        for u in 1..=10u32 {
            m.add([
                f64::from(u),
                2.0 * f64::from(u),
                1_000.0 + 500.0 * f64::from(u),
            ]);
        }
        let p = plane(&m, "unthrottles").unwrap();
        assert_eq!(p.per_second_ns, None);
        assert!(close(p.line.per_unit_ns, 500.0) && close(p.per_unit_ns(), 500.0));
    }

    #[test]
    fn no_fit_says_why() {
        let mut m = Moments::<2>::default();
        for _ in 0..3 {
            m.add([1.0, 10.0]);
        }
        assert_eq!(line(&m, "timers"), Err(NoFit::TooFew { n: 3 }));
        for _ in 0..10 {
            m.add([1.0, 12.0]);
        }
        assert!(matches!(line(&m, "timers"), Err(NoFit::NoSpread { value, .. }) if value == 1.0));
        let mut d = Moments::<2>::default();
        for x in 0..10u32 {
            d.add([f64::from(x), 100.0 - f64::from(x)]);
        }
        assert!(matches!(line(&d, "timers"), Err(NoFit::NoGrowth { .. })));
        assert!(
            NoFit::TooFew { n: 3 }
                .to_string()
                .contains("fewer than the 8")
        );
    }

    #[test]
    fn units_to_reach_rounds_up_and_never_says_zero() {
        // 10 ms period, 1 ms already spent, 2 us fixed, 3 us a unit: 2999.33 -> 3000.
        assert_eq!(units_to_reach(10e6, 1e6, 2e3, 3e3), 3000);
        assert_eq!(units_to_reach(1e3, 5e3, 0.0, 10.0), 1);
    }
}
