//! cfstrace userspace: attach the period-timer programs, read their events, name cgroups,
//! aggregate and report. Pure logic (naming, aggregation, report) lives in modules that do not
//! touch BPF so it is unit-tested on its own.

pub mod aggregate;
pub mod btf_layout;
pub mod capture;
pub mod cgroup_fs;
pub mod cli;
pub mod demo;
pub mod doctor;
pub mod events;
pub mod gate;
pub mod host;
pub mod kallsyms;
pub mod kmsg;
pub mod leak_check;
pub mod live_view;
pub mod privileges;
pub mod probes;
pub mod prometheus;
pub mod record;
pub mod report;
pub mod repro;
pub mod storm;
pub mod svg;
pub mod watch;
pub mod workload;

/// The program's object, built by aya-build from tracer-ebpf and embedded so the one binary
/// is all a user copies to a node.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cfstrace"));
