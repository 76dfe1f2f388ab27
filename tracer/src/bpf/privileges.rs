//! Can this process load and attach tracing programs? Say so before the kernel says EPERM.

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "cfstrace needs root, or CAP_BPF + CAP_PERFMON (+ CAP_SYS_RESOURCE on old kernels) to load tracing programs; run it with sudo"
    )]
    NotPrivileged,
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability mask from /proc/self/status (`CapEff:` hex).
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

pub fn caps_allow_tracing(cap_eff: u64) -> bool {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

pub fn check() -> Result<(), PrivilegeError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match parse_cap_eff(&status) {
        Some(c) if caps_allow_tracing(c) => Ok(()),
        _ => Err(PrivilegeError::NotPrivileged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        let s = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(s), Some(0x1ffffffffff));
        assert!(caps_allow_tracing(0x1ffffffffff));
        assert!(!caps_allow_tracing(0));
        assert!(caps_allow_tracing((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!caps_allow_tracing(1 << CAP_BPF));
    }
}
