//! What the operator reads, drawn from a finished report (plus, for the live view's histograms,
//! the SVG's series and /metrics, the capture lines themselves): `text` (the table),
//! `live` (the `watch` screen), `svg`, `prometheus` (/metrics), and `format`, the cells and
//! colours the terminal views share. Knows nothing of the kernel: never imports `bpf`,
//! `session` or aya, and nothing here feeds back into the report.
pub mod format;
pub mod live;
pub mod prometheus;
pub mod svg;
pub mod text;
