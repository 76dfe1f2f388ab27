//! The guest benchmarks: one image, three boots. bookworm (6.1, 2 vCPUs): dispatch costs,
//! P1 under fentry and kprobe, P2 on the co-firing storm (6.1 is before the interleaved
//! period timers of 6.4, so many period timers share one interrupt). trixie (6.12, 2 vCPUs):
//! P1 under fentry and kprobe. sid (7.x) on 8 vCPUs: P4, 2,000 throttled cgroups.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::qemu::{self, Boot, Console};
use super::{Part, Plan, Section, guest, host, p1, p2, vmfigs};
use crate::vm::kernels::{self, Kernel};

fn label(k: &Kernel, c: &Console) -> String {
    format!(
        "{} VM ({})",
        vmfigs::release(c).unwrap_or_else(|| k.release.clone()),
        k.suite
    )
}

fn p1_method(label: &str) -> String {
    format!(
        "{} In the guest ({label}): bpftrace and bpftool copied from the host with their \
         shared libraries into the bench initramfs, tracefs and BTF mounted; the co-firing \
         storm (120 cgroups at cpu.max \"1000 100000\", one busy loop each).",
        p1::METHOD
    )
}

/// Run the boots the selected figures need; every figure gets a section, measured or not.
pub fn run(bin: &Path, plan: &Plan, want: &dyn Fn(Part) -> bool, out: &mut Vec<Section>) {
    let dir = match host::scratch() {
        Ok(d) => d,
        Err(e) => return none_run(want, out, &format!("{e:#}")),
    };
    let image = dir.join("bench-initrd.cpio");
    println!("\n==> guests: writing {}", image.display());
    match guest::write_image(bin, &image) {
        Ok(n) => println!("    {} MB", n / 1_000_000),
        Err(e) => return none_run(want, out, &format!("building the guest image: {e:#}")),
    }
    if want(Part::P1) || want(Part::P2) {
        bookworm(plan, &image, &dir, want, out);
    }
    if want(Part::P1) {
        trixie(plan, &image, &dir, out);
    }
    if want(Part::P4) {
        scale(plan, &image, &dir, out);
    }
    let _ = fs::remove_file(&image);
}

/// The guests, each with the figures it gives.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Guest {
    Bookworm,
    Trixie,
    Scale,
}

/// The sections of each guest's figures, for when they cannot be measured: (guest, figure,
/// id, order, title, method).
#[allow(clippy::type_complexity)]
const GUEST_SECTIONS: [(Guest, Part, &str, u32, &str, &str); 4] = [
    (
        Guest::Bookworm,
        Part::P1,
        "P1",
        20,
        "cost per hit, 6.1 VM",
        p1::METHOD,
    ),
    (
        Guest::Trixie,
        Part::P1,
        "P1",
        25,
        "cost per hit, 6.12 VM",
        p1::METHOD,
    ),
    (
        Guest::Bookworm,
        Part::P2,
        "P2",
        30,
        "added IRQs-off time, 6.1 VM co-firing",
        p2::DIRECT_METHOD,
    ),
    (
        Guest::Scale,
        Part::P4,
        "P4",
        20,
        "scale, 2,000 cgroups, 7.x VM",
        P4_METHOD,
    ),
];

/// The wanted sections of `guests`, not measured for `why`.
fn not_run(guests: &[Guest], want: &dyn Fn(Part) -> bool, out: &mut Vec<Section>, why: &str) {
    for (g, part, id, order, title, method) in GUEST_SECTIONS {
        if guests.contains(&g) && want(part) {
            out.push(Section::missing(id, order, title, method, why));
        }
    }
}

/// Every guest's wanted sections, not measured for `why` (`--no-vm`, no image).
pub fn none_run(want: &dyn Fn(Part) -> bool, out: &mut Vec<Section>, why: &str) {
    not_run(
        &[Guest::Bookworm, Guest::Trixie, Guest::Scale],
        want,
        out,
        why,
    );
}

fn fetch(suite: &str) -> Result<Kernel> {
    println!("\n==> guests: kernel of {suite}");
    kernels::fetch(suite, false)
}

fn params(plan: &Plan, parts: &str) -> String {
    format!(
        "bench.parts={parts} bench.backends=fentry,kprobe bench.cofire=120 bench.rounds={} \
         bench.run={} bench.windows={} bench.window={} bench.ddn=300000",
        plan.vm_p2_rounds,
        plan.vm_p2_run.as_secs(),
        plan.p1_windows,
        plan.vm_window.as_secs()
    )
}

fn boot(
    k: &Kernel,
    image: &Path,
    log: &Path,
    cpus: u32,
    mem_mb: u32,
    params: String,
) -> Result<Console> {
    println!(
        "\n==> guest {} ({}), {cpus} vCPUs, console in {}",
        k.release,
        k.suite,
        log.display()
    );
    qemu::boot(&Boot {
        kernel: k,
        initrd: image,
        cpus,
        mem_mb,
        params,
        log,
        timeout: Duration::from_secs(50 * 60),
        silence: Duration::from_secs(15 * 60),
    })
}

/// The newest kernel of `suite` booted on 2 vCPUs and 2 GB with the bench `params`; its
/// console in `dir`/guest-SUITE.log.
fn small_guest(suite: &str, image: &Path, dir: &Path, params: String) -> Result<(Kernel, Console)> {
    let k = fetch(suite)?;
    let log = dir.join(format!("guest-{suite}.log"));
    let c = boot(&k, image, &log, 2, 2048, params)?;
    Ok((k, c))
}

fn bookworm(
    plan: &Plan,
    image: &Path,
    dir: &Path,
    want: &dyn Fn(Part) -> bool,
    out: &mut Vec<Section>,
) {
    let mut parts = Vec::new();
    if want(Part::P2) {
        parts.push("dispatch");
    }
    if want(Part::P1) {
        parts.push("p1");
    }
    if want(Part::P2) {
        parts.push("p2");
    }
    let res = small_guest("bookworm", image, dir, params(plan, &parts.join(",")));
    let (k, c) = match res {
        Ok(kc) => kc,
        Err(e) => return not_run(&[Guest::Bookworm], want, out, &format!("{e:#}")),
    };
    let l = label(&k, &c);
    if want(Part::P1) {
        p1_sections(&c, &l, plan, 20, out);
    }
    if want(Part::P2) {
        let title = format!("added IRQs-off time, {l}, co-firing storm, directly");
        out.push(Section::measure(
            "P2",
            30,
            &title,
            p2::DIRECT_METHOD,
            || vmfigs::p2_direct(&c, &l, plan.vm_p2_rounds),
        ));
        let title = format!("added IRQs-off time, {l}, co-firing storm, by accounting");
        let method = format!(
            "{} Dispatch per hit measured in the same guest (see the table).",
            p2::ACCOUNTING_METHOD
        );
        out.push(Section::measure("P2", 31, &title, &method, || {
            let (d, mut m) = vmfigs::dispatch(&c, &l)?;
            let acct = vmfigs::p2_accounting(&c, &l, &d)?;
            m.lines.splice(0..0, acct.lines);
            m.body = format!("{}\n\n{}", acct.body, m.body);
            Ok(m)
        }));
    }
}

fn p1_sections(c: &Console, l: &str, plan: &Plan, order: u32, out: &mut Vec<Section>) {
    for (i, b) in ["fentry", "kprobe"].into_iter().enumerate() {
        let title = format!("cost per hit, {l}, --backend {b}");
        out.push(Section::measure(
            "P1",
            order + i as u32,
            &title,
            &p1_method(l),
            || vmfigs::p1(c, l, b, plan.p1_windows),
        ));
    }
}

fn trixie(plan: &Plan, image: &Path, dir: &Path, out: &mut Vec<Section>) {
    let res = small_guest("trixie", image, dir, params(plan, "p1"));
    match res {
        Ok((k, c)) => p1_sections(&c, &label(&k, &c), plan, 25, out),
        Err(e) => not_run(&[Guest::Trixie], &|_| true, out, &format!("{e:#}")),
    }
}

/// The kernel of the scale guest: sid's (7.x; see [`P4_METHOD`] for why not bookworm's).
const P4_SUITE: &str = "sid";

pub const P4_METHOD: &str = "In a sid (7.x) guest with 8 vCPUs (qemu -smp 8, 3 GB): 2,000 \
    cgroups under a cpu.weight 1 parent (so the guest's shell and cfstrace stay ahead of the \
    loops), one busy loop each, each loop stopped (SIGSTOP) until the storm is released. \
    `cfstrace record` (all probes, default real-time reader priority) attaches before that: \
    under single-threaded TCG, attaching with 2,000 runnable loops blocked in the kernel for \
    over 6 minutes (hung-task warnings), an emulation figure that says nothing about a node. \
    Then the storm is released, recorded for 10 s, the recorder stopped with SIGINT (as \
    `--duration 10s` would), the loops stopped again, and `cfstrace report --json` of the \
    capture timed. The guest reads the recorder's `VmHWM` every 0.2 s until it exits; events \
    and losses come from the capture's end line. At cpu.max \"1000 1000000\", then \
    \"1000 100000\", then the issue's \"1000 10000\" (ten times the callbacks each step), \
    until the emulated guest stops making progress (4 minutes without a line from its /init): \
    the steps after that one are not run. Not bookworm (6.1): there the recorder went into \
    uninterruptible sleep (D) as soon as the storm was released at the first step, and stayed \
    there for over 3 minutes with its CPU time frozen and the guest otherwise idle, so no step \
    finished (creating the cgroups also took 4.7 minutes there, against 1 on sid). The cause \
    is not known; the heartbeat lines in the guest's console (`bench-hb:`) show the \
    recorder's state every 15 s.";

fn scale(plan: &Plan, image: &Path, dir: &Path, out: &mut Vec<Section>) {
    let params = format!(
        "bench.parts=p4 bench.scale={} bench.p4dur={}",
        plan.p4_cgroups,
        plan.p4_duration.as_secs()
    );
    let res = fetch(P4_SUITE).and_then(|k| {
        println!(
            "\n==> guest {} ({}), 8 vCPUs, console in {}",
            k.release,
            k.suite,
            dir.join("guest-scale.log").display()
        );
        // Every step prints within a minute or two; a guest silent for 4 has stalled.
        let c = qemu::boot(&Boot {
            kernel: &k,
            initrd: image,
            cpus: 8,
            mem_mb: 3072,
            params,
            log: &dir.join("guest-scale.log"),
            timeout: Duration::from_secs(50 * 60),
            silence: Duration::from_secs(4 * 60),
        })?;
        Ok((k, c))
    });
    let variants = [
        ("p4.p1000", "1000 1000000", 20),
        ("p4.p100", "1000 100000", 21),
        ("p4.p10", "1000 10000", 22),
    ];
    match res {
        Ok((k, c)) => {
            let l = format!("{}, 8 vCPUs", label(&k, &c));
            for (name, max, order) in variants {
                let title = format!(
                    "scale, {} cgroups at cpu.max \"{max}\", {l}",
                    plan.p4_cgroups
                );
                out.push(Section::measure("P4", order, &title, P4_METHOD, || {
                    vmfigs::p4(&c, &format!("{l}, \"{max}\""), name)
                }));
            }
        }
        Err(e) => not_run(&[Guest::Scale], &|_| true, out, &format!("{e:#}")),
    }
}
