//! `cfstrace report FILE --svg OUT.svg` on a real capture: a short throttling storm on this host
//! is recorded, the report is drawn, the SVG is rendered by an independent renderer
//! (`rsvg-convert`, apt package librsvg2-bin, installed by `cargo xtask setup`) to a PNG of the
//! expected size, and its text is checked for the expected series: the top cgroups in the
//! legend, the watchdog threshold line and the culprit's marker. The JSON report printed with
//! `--svg` is the one printed without it.
//!
//! Needs root (cgroups, BPF). Never skips. Runs a real throttling storm: wrap the run in
//! `flock /tmp/cfstrace-host.lock` where other storms may run.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cfstrace_tests::{cfstrace_bin, run_with_timeout, test_cgroups};
use serde_json::Value;

/// The picture's size (tracer/src/svg.rs WIDTH x HEIGHT).
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 960;

fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    // Signature, then the IHDR chunk: length, "IHDR", width, height (big-endian).
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&png[16..20]), be(&png[20..24])))
}

/// Text as the SVG holds it (the backend escapes XML's specials).
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[test]
fn report_svg_of_a_real_storm_renders_with_its_series() {
    let mut tree = test_cgroups("cfstrace-svg");
    let rsvg = Command::new("rsvg-convert").arg("--version").output();
    assert!(
        rsvg.as_ref().is_ok_and(|o| o.status.success()),
        "rsvg-convert missing: `cargo xtask setup` installs librsvg2-bin ({rsvg:?})"
    );
    let bin = cfstrace_bin();
    let dir = cfstrace_tests::scratch!("svg");
    // Three throttled cgroups with different periods, so their period lines differ.
    for (rel, period, quota, n) in [
        ("kubepods/pod-hot", 5_000, 1_000, 3),
        ("yarn/container-warm", 20_000, 2_000, 2),
        ("system.slice/cool.service", 100_000, 10_000, 1),
    ] {
        let cg = tree.add(rel, period, quota).expect("add cgroup");
        tree.busy(&cg, n).expect("busy loops");
    }
    let cap = dir.path().join("storm.jsonl");
    let rec = run_with_timeout(
        &bin,
        &["record", "-d", "4s", "-o", cap.to_str().unwrap()],
        dir.path(),
        Duration::from_secs(60),
    )
    .expect("record");
    assert!(rec.status.success(), "{}", rec.describe());
    drop(tree);

    let svg = dir.path().join("storm.svg");
    let with = run_with_timeout(
        &bin,
        &[
            "report",
            cap.to_str().unwrap(),
            "--json",
            "--svg",
            svg.to_str().unwrap(),
        ],
        dir.path(),
        Duration::from_secs(60),
    )
    .expect("report --svg");
    assert!(with.status.success(), "{}", with.describe());
    let without = run_with_timeout(
        &bin,
        &["report", cap.to_str().unwrap(), "--json"],
        dir.path(),
        Duration::from_secs(60),
    )
    .expect("report");
    assert_eq!(with.stdout, without.stdout, "--svg changed the JSON report");
    let rep: Value = serde_json::from_str(&with.stdout).expect("report JSON");

    // An independent renderer reads it whole and draws it at the expected size.
    let png = dir.path().join("storm.png");
    let out = Command::new("rsvg-convert")
        .args(["-o", png.to_str().unwrap(), svg.to_str().unwrap()])
        .output()
        .expect("rsvg-convert");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "rsvg-convert failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png_bytes = fs::read(&png).expect("png");
    assert_eq!(png_size(&png_bytes), Some((WIDTH, HEIGHT)));

    let text = fs::read_to_string(&svg).expect("svg");
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    assert!(
        text.len() < 1_000_000,
        "SVG is {} bytes: not downsampled?",
        text.len()
    );
    // The top cgroups (with callbacks) are in the legend, the culprit marked in it and on the
    // plot, and the watchdog's threshold drawn and labelled.
    let cgroups = rep["cgroups"].as_array().expect("cgroups");
    let top: Vec<&str> = cgroups
        .iter()
        .filter(|c| c["periods"].as_u64() > Some(0))
        .take(5)
        .filter_map(|c| c["path"].as_str())
        .collect();
    assert!(!top.is_empty(), "no cgroup with callbacks: {}", with.stdout);
    for p in &top {
        assert!(text.contains(&xml(p)), "{p} not in the SVG legend");
    }
    let ours = top.iter().filter(|p| p.contains("cfstrace-svg-")).count();
    assert!(ours >= 2, "our storm's cgroups not plotted: {top:?}");
    let culprit = rep["culprit"]["path"].as_str().expect("culprit path");
    assert!(
        text.contains(&format!("CULPRIT {}", xml(culprit))),
        "culprit {culprit} not marked in the legend"
    );
    assert!(text.contains("culprit worst callback"), "no culprit marker");
    let thresh = rep["watchdog"]["thresh_s"]
        .as_u64()
        .expect("watchdog_thresh");
    assert!(
        text.contains(&format!("watchdog_thresh {thresh}")),
        "no watchdog_thresh {thresh} label"
    );
    assert!(
        text.contains("period 5.00 ms"),
        "no period line of the 5 ms cgroup"
    );
    assert!(
        text.contains("Callback-time histogram"),
        "no histogram panel"
    );
    assert!(Path::new(&png).exists());
}
