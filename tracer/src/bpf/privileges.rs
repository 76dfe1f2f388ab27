//! Can this process load and attach tracing programs? Say so, naming the missing capability,
//! before the kernel says EPERM.
use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "missing capability {missing}: {why}; run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYSLOG \
         (CAP_SYS_ADMIN before 5.8)",
        missing = .missing.name(),
        why = .missing.needed_for()
    )]
    Missing { missing: Capability },
}

/// The capabilities cfstrace asks for by name (numbers from linux/capability.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    SysAdmin = 21,
    SysNice = 23,
    Syslog = 34,
    Perfmon = 38,
    Bpf = 39,
}

impl Capability {
    pub fn name(self) -> &'static str {
        match self {
            Capability::SysAdmin => "CAP_SYS_ADMIN",
            Capability::SysNice => "CAP_SYS_NICE",
            Capability::Syslog => "CAP_SYSLOG",
            Capability::Perfmon => "CAP_PERFMON",
            Capability::Bpf => "CAP_BPF",
        }
    }

    fn needed_for(self) -> &'static str {
        match self {
            Capability::Bpf => "needed to create BPF maps and load the tracing programs",
            Capability::Perfmon => "needed to attach the tracing programs and read kernel memory",
            Capability::Syslog => {
                "needed to read symbol addresses in /proc/kallsyms under kernel.kptr_restrict"
            }
            Capability::SysAdmin => "needed for BPF tracing before kernel 5.8",
            Capability::SysNice => "needed to run the reader at real-time priority",
        }
    }

    fn held_in(self, cap_eff: u64) -> bool {
        cap_eff & (1u64 << self as u32) != 0
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Effective capability mask from /proc/self/status (`CapEff:` hex).
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The first capability tracing lacks, CAP_BPF before CAP_PERFMON (the order the kernel
/// asks for them); None when CAP_SYS_ADMIN or both are held.
pub fn missing_for_tracing(cap_eff: u64) -> Option<Capability> {
    if Capability::SysAdmin.held_in(cap_eff) {
        return None;
    }
    [Capability::Bpf, Capability::Perfmon]
        .into_iter()
        .find(|c| !c.held_in(cap_eff))
}

/// This process's effective capabilities; all of them for uid 0 when /proc is unreadable.
pub fn effective() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    parse_cap_eff(&status).unwrap_or(if root { u64::MAX } else { 0 })
}

/// Does this process hold `cap` (effective)?
pub fn holds(cap: Capability) -> bool {
    cap.held_in(effective())
}

pub fn check() -> Result<(), PrivilegeError> {
    match missing_for_tracing(effective()) {
        None => Ok(()),
        Some(missing) => Err(PrivilegeError::Missing { missing }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn bit(c: Capability) -> u64 {
        1 << c as u32
    }

    #[test]
    fn capabilities() {
        let s = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(s), Some(0x1ffffffffff));
        assert_eq!(missing_for_tracing(0x1ffffffffff), None);
        assert_eq!(missing_for_tracing(0), Some(Capability::Bpf));
        assert_eq!(
            missing_for_tracing(bit(Capability::Bpf) | bit(Capability::Perfmon)),
            None
        );
        assert_eq!(
            missing_for_tracing(bit(Capability::Bpf)),
            Some(Capability::Perfmon)
        );
        assert_eq!(
            missing_for_tracing(bit(Capability::Perfmon)),
            Some(Capability::Bpf)
        );
        assert_eq!(missing_for_tracing(bit(Capability::SysAdmin)), None);
    }

    #[test]
    fn the_error_is_one_line_naming_the_capability() {
        let e = PrivilegeError::Missing {
            missing: Capability::Perfmon,
        }
        .to_string();
        assert!(e.starts_with("missing capability CAP_PERFMON: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
