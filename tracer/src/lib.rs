//! cfstrace userspace. Data flows one way: kernel event -> session -> analysis -> report ->
//! (diff ->) render; `commands` drive them. A room never imports one later in that flow, only `bpf`
//! touches aya, and `render` knows nothing of the kernel. Pure logic (naming, aggregation,
//! report) is unit-tested apart from BPF.

pub mod analysis;
pub mod bpf;
pub mod capture;
pub mod cgroups;
pub mod cli;
pub mod commands;
pub mod diff;
pub mod doctor;
pub mod model;
pub mod outfile;
pub mod render;
pub mod report;
pub mod session;
pub mod verbosity;

/// The program's object, built by aya-build from tracer-ebpf and embedded so the one binary
/// is all a user copies to a node.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cfstrace"));
