//! One file per subcommand: each drives the rooms below it.
pub mod completions;
pub mod demo;
pub mod diff;
pub mod doctor;
pub mod man;
pub mod record;
pub mod report;
pub mod repro;
pub mod storm;
pub mod watch;
