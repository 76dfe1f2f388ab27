//! The only room that touches aya: loading the embedded object with the kernel's offsets, the
//! attach ladder, the BTF and kallsyms facts it decides from, privileges, the leak check and the
//! programs' own log messages.
pub mod attach;
pub mod btf;
pub mod compat;
pub mod kallsyms;
pub mod leak_check;
pub mod loader;
pub mod logs;
pub mod privileges;
