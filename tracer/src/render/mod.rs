//! What the operator reads: the live view, Prometheus metrics and SVG plots. Knows nothing of
//! the kernel.
pub mod live;
pub mod prometheus;
pub mod svg;
