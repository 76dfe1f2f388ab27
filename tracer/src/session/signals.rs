//! Ctrl-C and SIGTERM: they set a flag the loops check instead of killing us, so every path
//! leaves a complete capture and no cgroups behind; the last one is remembered so `-- CMD` gets
//! the same signal forwarded.
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, OnceLock};

/// The last of SIGINT/SIGTERM received (0: none yet), so `record -- CMD` forwards the same one.
pub fn last_signal() -> &'static Arc<AtomicUsize> {
    static LAST: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    LAST.get_or_init(|| Arc::new(AtomicUsize::new(0)))
}

/// SIGINT/SIGTERM set the returned flag instead of killing us, so every loop can stop cleanly
/// and leave a complete capture and no cgroups behind.
pub fn stop_flag() -> io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_usize(sig, Arc::clone(last_signal()), sig as usize)?;
        signal_hook::flag::register(sig, Arc::clone(&flag))?;
    }
    Ok(flag)
}
