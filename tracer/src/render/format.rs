//! Cells and colours the terminal renderings share (the text table and the live view):
//! widths counted in characters, ANSI attributes only when asked for.
use crate::model::host::WatchdogFacts;
use crate::report::{CgroupReport, HeadroomAlert, Stats, top_comms, workload_label};

pub const BOLD: &str = "\x1b[1m";
pub const DIM: &str = "\x1b[2m";
pub const RED: &str = "\x1b[31m";
pub const YELLOW: &str = "\x1b[33m";
pub const BOLD_RED: &str = "\x1b[1;31m";
pub const REVERSE_RED: &str = "\x1b[1;41;97m";
pub const RESET: &str = "\x1b[0m";

/// Shorten to `width` chars with an ellipsis in the middle (both ends of a cgroup path
/// matter: the slice it sits in and the container id at its tip).
pub fn ellipsize_middle(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width || width < 3 {
        return s.to_string();
    }
    // The tip (container id, unit) identifies the cgroup best: give it two thirds.
    let head = (width - 1) / 3;
    let tail = width - 1 - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

/// Cut to `width` chars with an ellipsis at the end.
pub fn shorten(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut t: String = s.chars().take(width - 1).collect();
    t.push('…');
    t
}

/// Left-align to `width` chars (not bytes: paths may hold the ellipsis).
pub fn pad(s: &str, width: usize) -> String {
    let n = s.chars().count();
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(n)));
    out
}

/// `s` in the ANSI attributes `code`, only when `color`.
pub fn paint(s: &str, code: &str, color: bool) -> String {
    if color {
        format!("{code}{s}{RESET}")
    } else {
        s.to_string()
    }
}

/// Cut `s` to `width` visible characters; escape sequences pass through uncounted.
pub fn fit(s: &str, width: usize) -> String {
    let mut out = String::with_capacity(s.len());
    let mut visible = 0;
    let mut escaped = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            escaped = true;
            out.push(c);
            for d in chars.by_ref() {
                out.push(d);
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        if visible == width {
            if escaped {
                out.push_str(RESET);
            }
            break;
        }
        out.push(c);
        visible += 1;
    }
    out
}

/// `p50/max` of a per-period count, `-` when not measured.
pub fn p50_max(s: Option<&Stats>) -> String {
    s.map_or_else(|| "-".to_string(), |s| format!("{}/{}", s.p50, s.max))
}

/// The busiest distinct comms, comma-separated, or `-`.
pub fn comms(c: &CgroupReport, n: usize) -> String {
    let comms = top_comms(&c.processes, n);
    if comms.is_empty() {
        "-".to_string()
    } else {
        comms.join(",")
    }
}

/// The workload column: its label, else (`or_comms`) its busiest comms, else `-`.
pub fn workload_cell(c: &CgroupReport, or_comms: bool) -> String {
    workload_label(&c.workload).unwrap_or_else(|| {
        if or_comms {
            comms(c, 3)
        } else {
            "-".to_string()
        }
    })
}

/// `10 s`, or `unknown`.
pub fn thresh(wd: &WatchdogFacts) -> String {
    wd.thresh_s
        .map_or_else(|| "unknown".to_string(), |t| format!("{t} s"))
}

/// The line both terminal views print when the node's headroom is below the highlight.
pub fn alert_line(a: &HeadroomAlert, wd: &WatchdogFacts) -> String {
    format!(
        "!! HEADROOM ALERT: node headroom {:.4}% of watchdog_thresh ({}) is below {}% \
         (--highlight-under)",
        a.headroom_pct.unwrap_or(0.0),
        thresh(wd),
        a.under_pct
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ellipsis_keeps_both_ends() {
        let p = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abcdef.scope";
        let e = ellipsize_middle(p, 48);
        assert_eq!(e.chars().count(), 48);
        assert!(
            e.starts_with("/kubepods.slice") && e.ends_with("/cri-containerd-abcdef.scope"),
            "{e}"
        );
        assert_eq!(ellipsize_middle("/a", 48), "/a");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(pad("a…", 4), "a…  ");
    }

    #[test]
    fn fit_counts_visible_chars_only() {
        assert_eq!(fit("abcdef", 3), "abc");
        assert_eq!(fit("\x1b[1mabcdef\x1b[0m", 2), "\x1b[1mab\x1b[0m");
        assert_eq!(fit("█▁·", 2), "█▁");
        assert_eq!(fit("ab", 5), "ab");
    }
}
