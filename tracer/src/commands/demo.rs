//! `cfstrace demo`: a preset of `cfstrace storm` — the three incident-shaped cgroups of
//! [`storm::demo_spec`], traced live through the storm's own step (the same guard, on by
//! default, and the same cleanup), ending in the report. Every cgroup and worker it makes is
//! removed on success, on error and on Ctrl-C or SIGTERM (the storm's Drop runs on every path;
//! workers also die with us via PDEATHSIG).
use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::cgroups;
use crate::cgroups::storm;
use crate::cli::DemoArgs;
use crate::commands::storm::{self as storm_cmd, EXIT_GUARD, Step, StepResult};
use crate::model::host;
use crate::session::signals::Stop;

pub async fn run(opts: &DemoArgs) -> Result<ExitCode> {
    // Caught before the storm starts: a Ctrl-C during its set-up ends the tracing at once,
    // and the storm is still removed.
    let mut stop = Stop::catch().context("catching the stop signals")?;
    let step = demo(opts, &mut stop).await?;
    Ok(match step.and_then(|s| s.tripped) {
        Some(_) => ExitCode::from(EXIT_GUARD),
        None => ExitCode::SUCCESS,
    })
}

async fn demo(opts: &DemoArgs, stop: &mut Stop) -> Result<Option<StepResult>> {
    crate::bpf::privileges::check()?;
    let hierarchy = cgroups::find_cpu_hierarchy()?;
    let facts = host::host_facts();
    let spec = storm::demo_spec(facts.ncpus);
    storm_cmd::remove_stale(&hierarchy, storm::DEMO_PREFIX, "cfstrace demo");
    let guard = storm_cmd::guard_limits(&opts.guard, facts.watchdog.thresh_s);
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
    let step = Step {
        hierarchy: &hierarchy,
        exe: &exe,
        tracer: opts.trace.options(),
        duration: opts.duration,
        guard,
        label: "cfstrace demo",
    };
    let Some(result) = storm_cmd::run_step(&step, &spec, &path, stop).await? else {
        crate::info!("cfstrace demo: interrupted before tracing; storm removed");
        return Ok(None);
    };
    crate::render::print_report(&result.report, opts.json)?;
    if let Some(t) = &result.tripped {
        eprintln!(
            "cfstrace demo: GUARD STOPPED the storm: {}",
            storm_cmd::guard_sentence(t, guard)
        );
    }
    if let Some(p) = &opts.output {
        crate::info!("cfstrace demo: capture kept at {}", p.display());
    }
    Ok(Some(result))
}
