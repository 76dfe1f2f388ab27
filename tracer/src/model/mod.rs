//! Plain records every room shares: host facts and workloads.
pub mod host;
pub mod workload;
