//! `--fail-under PCT`: turn "the watchdog's headroom fell below PCT % of its threshold" into an
//! exit status, so a capture can gate a reproduction run or a kernel rollout.
/// Exit status when the headroom gate fails (1 is an error, 2 bad usage).
pub const EXIT_HEADROOM: u8 = 3;
/// Exit status when the gate cannot judge (no callback, watchdog_thresh unknown or 0): a CI
/// gate must not pass on a capture that shows nothing.
pub const EXIT_NOT_JUDGED: u8 = 4;

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Headroom at or above the gate.
    Pass { headroom_pct: f64 },
    /// Below the gate: the status says by how much.
    Fail { headroom_pct: f64 },
    /// The gate cannot be judged (threshold unknown, or no callback seen). Not a pass either:
    /// a capture that saw nothing (wrong node, probes missing) proves nothing.
    Unknown { why: String },
}

/// The node's headroom (watchdog_thresh - the worst IRQs-off span) as a percentage of
/// watchdog_thresh: the one figure both `--fail-under` and `--highlight-under` judge. Err says
/// why it cannot be judged.
pub fn headroom_pct(thresh_s: Option<u64>, headroom_ns: Option<i64>) -> Result<f64, String> {
    let Some(thresh_s) = thresh_s.filter(|t| *t > 0) else {
        return Err("watchdog_thresh unknown or 0 (watchdog off)".into());
    };
    let Some(headroom) = headroom_ns else {
        return Err("no period-timer callback was seen".into());
    };
    Ok(headroom as f64 * 100.0 / (thresh_s as f64 * 1e9))
}

/// Judge the node's headroom (worst IRQs-off span against `watchdog_thresh`).
pub fn judge(thresh_s: Option<u64>, headroom_ns: Option<i64>, fail_under_pct: f64) -> Verdict {
    match headroom_pct(thresh_s, headroom_ns) {
        Err(why) => Verdict::Unknown { why },
        Ok(pct) if pct < fail_under_pct => Verdict::Fail { headroom_pct: pct },
        Ok(pct) => Verdict::Pass { headroom_pct: pct },
    }
}

pub fn parse_pct(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{s}` is not a percentage (e.g. 10 or 10%)"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{v} is not between 0 and 100"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert!(matches!(
            judge(Some(10), Some(500_000_000), 10.0),
            Verdict::Fail { headroom_pct } if (headroom_pct - 5.0).abs() < 1e-9
        ));
        assert!(matches!(
            judge(Some(10), Some(9_000_000_000), 10.0),
            Verdict::Pass { .. }
        ));
        assert!(matches!(
            judge(Some(10), Some(-1), 0.0),
            Verdict::Fail { .. }
        ));
        assert!(matches!(
            judge(None, Some(1), 10.0),
            Verdict::Unknown { .. }
        ));
        assert!(matches!(
            judge(Some(10), None, 10.0),
            Verdict::Unknown { .. }
        ));
        assert_eq!(headroom_pct(Some(10), Some(500_000_000)), Ok(5.0));
        assert!(headroom_pct(Some(0), Some(1)).is_err());
        assert_eq!(parse_pct("10%"), Ok(10.0));
        assert!(parse_pct("120").is_err());
        assert!(parse_pct("x").is_err());
    }
}
