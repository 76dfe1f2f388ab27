//! `doctor`'s judgement of the node: which known CFS-bandwidth fixes the kernel has
//! ([`fixes`]), the node's exposure now ([`exposure`], gathered by [`gather`]), and the
//! findings with their severities ([`findings`]). Pure logic apart from `gather`; the command
//! (`commands/doctor.rs`) reads kallsyms and BTF and prints.
pub mod exposure;
pub mod findings;
pub mod fixes;
pub mod gather;

pub use exposure::{Exposure, Walked, exposure};
pub use findings::{EXIT_RISK, EXIT_WARN, Finding, Severity, judge, worst};
pub use fixes::{Fix, FixState, KernelMarks, decide};
