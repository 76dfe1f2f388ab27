//! `cfstrace repro -- CMD`: record while a reproduction runs, then print the report, and exit
//! with CMD's status (or 3 when the `--fail-under` gate fails).
use std::path::PathBuf;
use std::time::SystemTime;

/// `cfstrace-repro-20260102T030405Z.jsonl`: the default capture name (in the current directory,
/// kept after the report so it can be read again or sent on).
pub fn default_capture_name(now: SystemTime) -> PathBuf {
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    PathBuf::from(format!("cfstrace-repro-{stamp}.jsonl"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn capture_name_is_a_sortable_utc_stamp() {
        let t = UNIX_EPOCH + Duration::from_secs(1_767_323_045);
        assert_eq!(
            default_capture_name(t),
            PathBuf::from("cfstrace-repro-20260102T030405Z.jsonl")
        );
    }
}
