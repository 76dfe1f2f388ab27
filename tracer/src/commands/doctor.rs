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
    let mut healthy = true;
    match privileges::check() {
        Ok(()) => println!("privileges  ok"),
        Err(e) => {
            println!("privileges  NO: {e}");
            healthy = false;
        }
    }
    match cgroups::find_cpu_hierarchy() {
        Ok(c) => println!(
            "cgroups     cpu controller on cgroup v{} at {}",
            c.version, c.mount
        ),
        Err(e) => {
            println!("cgroups     NO: {e}");
            healthy = false;
        }
    }
    match btf::btf_path(opts.btf.as_deref())
        .and_then(|p| btf::KernelBtf::read(&p))
        .and_then(|b| b.layout())
    {
        Ok(l) => {
            println!("btf         {}", l.source.display());
            if l.missing.is_empty() {
                println!("layout      all fields found");
            } else {
                println!("layout      missing: {}", l.missing.join(", "));
            }
        }
        Err(e) => {
            println!("btf         NO: {e}");
            healthy = false;
        }
    }
    let fns = [
        probes::PERIOD_TIMER_FN,
        probes::DISTRIBUTE_FN,
        probes::UNTHROTTLE_FN,
        probes::ENQUEUE_ENTITY_FN,
        probes::ENQUEUE_TASK_FAIR_FN,
        probes::CSD_UNTHROTTLE_FN,
    ];
    match Symbols::load(&fns) {
        Ok(s) => {
            for f in fns {
                match s.symbol(f) {
                    Some(sym) => println!("symbol      {f}: {sym}"),
                    None => println!("symbol      {f}: not a symbol (inlined or absent)"),
                }
            }
        }
        Err(e) => {
            println!("kallsyms    NO: {e}");
            healthy = false;
        }
    }
    if healthy {
        match Tracer::start(opts) {
            Ok(t) => {
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
            }
            Err(e) => {
                println!("attach      NO: {e}");
                healthy = false;
            }
        }
    }
    if healthy && let Some(n) = attach_cycles {
        match leak_check::attach_cycles(opts, n) {
            Ok(r) => {
                let verdict = if r.leaked() {
                    healthy = false;
                    "LEAK"
                } else if !r.saw_ours() {
                    healthy = false;
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
            }
            Err(e) => {
                println!("leakcheck   NO: {e}");
                healthy = false;
            }
        }
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
