//! `cfstrace doctor`: what this kernel offers, probe by probe, with the reason for each gap.
use std::process::ExitCode;

use anyhow::Result;

use crate::bpf::btf;
use crate::bpf::compat as probes;
use crate::bpf::kallsyms::Symbols;
use crate::bpf::leak_check;
use crate::bpf::loader::{Tracer, TracerOptions};
use crate::bpf::privileges;
use crate::cgroups;
use crate::cli::DoctorArgs;
use crate::model::host;

pub fn run(a: &DoctorArgs) -> Result<ExitCode> {
    doctor(&a.trace.options(), a.attach_cycles)
}

fn doctor(opts: &TracerOptions, attach_cycles: Option<u32>) -> Result<ExitCode> {
    print_host();
    // Each check prints its lines; attaching needs the ones before it.
    let mut healthy = [
        check_privileges(),
        check_cgroups(),
        check_btf(opts),
        check_symbols(),
    ]
    .iter()
    .all(|ok| *ok);
    healthy = healthy && check_attach(opts);
    if healthy && let Some(n) = attach_cycles {
        healthy = check_leaks(opts, n);
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A check's outcome line: `ok` prints `what`, an error prints `NO: error`.
fn outcome<T, E: std::fmt::Display>(label: &str, r: Result<T, E>, ok: impl FnOnce(T)) -> bool {
    match r {
        Ok(v) => {
            ok(v);
            true
        }
        Err(e) => {
            println!("{label:<11} NO: {e}");
            false
        }
    }
}

fn print_host() {
    let h = host::host_facts();
    println!("kernel      {} ({} CPUs)", h.kernel, h.ncpus);
    match h.watchdog.thresh_s {
        Some(t) => println!(
            "watchdog    thresh {t} s, {}",
            if h.watchdog.enabled {
                "enabled"
            } else {
                "disabled"
            }
        ),
        None => println!("watchdog    /proc/sys/kernel/watchdog_thresh unreadable"),
    }
}

fn check_privileges() -> bool {
    outcome("privileges", privileges::check(), |()| {
        println!("privileges  ok")
    })
}

fn check_cgroups() -> bool {
    outcome("cgroups", cgroups::find_cpu_hierarchy(), |c| {
        println!(
            "cgroups     cpu controller on cgroup v{} at {}",
            c.version, c.mount
        )
    })
}

fn check_btf(opts: &TracerOptions) -> bool {
    let layout = btf::btf_path(opts.btf.as_deref())
        .and_then(|p| btf::KernelBtf::read(&p))
        .and_then(|b| b.layout());
    outcome("btf", layout, |l| {
        println!("btf         {}", l.source.display());
        if l.missing.is_empty() {
            println!("layout      all fields found");
        } else {
            println!("layout      missing: {}", l.missing.join(", "));
        }
    })
}

fn check_symbols() -> bool {
    let fns = [
        probes::PERIOD_TIMER_FN,
        probes::DISTRIBUTE_FN,
        probes::UNTHROTTLE_FN,
        probes::ENQUEUE_ENTITY_FN,
        probes::ENQUEUE_TASK_FAIR_FN,
        probes::CSD_UNTHROTTLE_FN,
    ];
    outcome("kallsyms", Symbols::load(&fns), |s| {
        for f in fns {
            match s.symbol(f) {
                Some(sym) => println!("symbol      {f}: {sym}"),
                None => println!("symbol      {f}: not a symbol (inlined or absent)"),
            }
        }
    })
}

fn check_attach(opts: &TracerOptions) -> bool {
    let attached = Tracer::start(opts).and_then(|mut t| {
        let log = t.take_logger()?;
        Ok((t, log))
    });
    outcome("attach", attached, |(t, log)| {
        println!("frame       {}", t.frame_backend);
        for (name, st) in &t.probes {
            if st.attached {
                println!(
                    "probe       {name:<16} {} {}{}",
                    st.how.map_or("?", |h| h.as_str()),
                    st.target.as_deref().unwrap_or(""),
                    st.reason
                        .as_deref()
                        .map(|r| format!("  ({r})"))
                        .unwrap_or_default()
                );
            } else {
                println!(
                    "probe       {name:<16} unavailable: {}",
                    st.reason.as_deref().unwrap_or("?")
                );
            }
        }
        // `--log-level`: what the programs said while attached, once detached.
        drop(t);
        if let Some(mut log) = log {
            log.drain();
        }
    })
}

fn check_leaks(opts: &TracerOptions, cycles: u32) -> bool {
    let mut clean = false;
    let listed = outcome("leakcheck", leak_check::attach_cycles(opts, cycles), |r| {
        clean = !r.leaked() && r.saw_ours();
        let verdict = if r.leaked() {
            "LEAK"
        } else if !r.saw_ours() {
            "CHECK BLIND (our objects were not visible while attached)"
        } else {
            "ok"
        };
        println!(
            "leakcheck   {} attach/detach cycles: programs {} -> {} (attached {}), maps {} -> {} (attached {}), links {} -> {} (attached {}): {verdict}",
            r.cycles,
            r.before.programs,
            r.after.programs,
            r.while_attached.programs,
            r.before.maps,
            r.after.maps,
            r.while_attached.maps,
            r.before.links,
            r.after.links,
            r.while_attached.links,
        );
    });
    listed && clean
}
