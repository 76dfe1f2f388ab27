//! One file per subcommand: each drives the rooms below it.
pub mod demo;
pub mod doctor;
pub mod record;
pub mod report;
pub mod repro;
pub mod watch;
