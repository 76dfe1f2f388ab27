//! `cfstrace demo`: a built-in throttling storm on this machine, traced live, ending in a
//! report. Every cgroup and worker it makes is removed on success, on error and on Ctrl-C
//! (the storm's Drop runs on every path; workers also die with us via PDEATHSIG).
use std::time::Duration;

use anyhow::{Context as _, Result};

use std::process::ExitCode;

use crate::cgroups;
use crate::cgroups::storm::{self, Storm};
use crate::cli::DemoArgs;
use crate::commands::record::{self, RecordOptions};
use crate::model::host;
use crate::report;
use crate::session::signals::Stop;

pub async fn run(opts: &DemoArgs) -> Result<ExitCode> {
    // Caught before the storm starts: a Ctrl-C during its set-up ends the tracing at once,
    // and the storm is still removed.
    let mut stop = Stop::catch().context("catching the stop signals")?;
    demo(opts, &mut stop).await?;
    Ok(ExitCode::SUCCESS)
}

async fn demo(opts: &DemoArgs, stop: &mut Stop) -> Result<report::Report> {
    crate::bpf::privileges::check()?;
    let hierarchy = cgroups::find_cpu_hierarchy()?;
    let facts = host::host_facts();
    let spec = storm::demo_spec(facts.ncpus);
    let (stale, stale_errors) = storm::remove_stale(&hierarchy, storm::DEMO_PREFIX);
    for p in stale {
        crate::info!(
            "cfstrace demo: removed a storm left by a killed demo: {}",
            p.display()
        );
    }
    for e in stale_errors {
        eprintln!("cfstrace demo: warning: could not remove a stale storm: {e}");
    }
    let exe =
        std::env::current_exe().context("locating the cfstrace binary for the storm's workers")?;
    // Without --output the capture is a temporary file, removed when the demo ends.
    let (path, _tmp) = match &opts.output {
        Some(p) => (p.clone(), None),
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("cfstrace-demo-")
                .suffix(".jsonl")
                .tempfile()
                .context("creating the demo's temporary capture")?
                .into_temp_path();
            (tmp.to_path_buf(), Some(tmp))
        }
    };
    crate::info!(
        "cfstrace demo: starting a throttling storm under {}/{} (cgroup v{}):",
        hierarchy.mount,
        spec.tag,
        hierarchy.version
    );
    for c in &spec.cgroups {
        crate::info!(
            "  {:<70} period {:>6} us  quota {:>6} us  {} x {}",
            c.rel_path,
            c.period_us,
            c.quota_us,
            c.workers,
            c.comm
        );
    }
    let storm = Storm::start(&hierarchy, &spec, &exe).context("starting the demo storm")?;
    // Let the storm reach its steady state (every cgroup throttled) before tracing.
    std::thread::sleep(Duration::from_millis(500));
    crate::info!(
        "cfstrace demo: tracing for {:.0}s (Ctrl-C stops early and still cleans up)",
        opts.duration.as_secs_f64()
    );
    let rec = record::record(
        &RecordOptions {
            tracer: opts.trace.options(),
            duration: Some(opts.duration),
            output: path.clone(),
            command: Vec::new(),
            progress: true,
        },
        stop,
    )
    .await;
    // Stop the storm before reporting, whatever the recording did.
    let stopped = storm.stop();
    let rec = rec.context("tracing the demo storm")?;
    stopped.context("removing the demo storm's cgroups")?;
    crate::info!(
        "cfstrace demo: {} period-timer callbacks and {} async unthrottles traced, {} lost; storm removed",
        rec.periods,
        rec.async_events,
        rec.lost
    );
    let rep = report::report_from_capture(&path)?;
    crate::render::print_report(&rep, opts.json)?;
    if let Some(p) = &opts.output {
        crate::info!("cfstrace demo: capture kept at {}", p.display());
    }
    Ok(rep)
}
