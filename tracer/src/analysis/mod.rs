//! Figures from capture lines: per-cgroup and per-CPU distributions, spread, precursors,
//! async work, spans, and the headroom judgement. Knows nothing of aya or rendering.
pub mod aggregate;
pub mod headroom;
