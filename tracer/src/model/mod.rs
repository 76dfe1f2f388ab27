//! Plain records every room shares: what a capture holds, the probes and attach styles by
//! name, CPU sets, the host's facts and the workloads cgroups belong to. Depends on nothing
//! else in the crate.
pub mod bounded;
pub mod cpuset;
pub mod escape;
pub mod host;
pub mod probe;
pub mod records;
pub mod timers;
pub mod workload;
