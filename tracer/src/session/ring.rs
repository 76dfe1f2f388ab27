//! The priority the reader runs at. (Its wait is the ring buffer's fd in the runtime's epoll,
//! edge-triggered: data already in the buffer does not make every wait return at once; the
//! drain tick and real wakeups, past the buffer's threshold, do.)
use std::io;

/// Make the reader a SCHED_FIFO task at `prio` (0: leave it alone), so that a node saturated
/// by the very storm it watches still lets it drain (as `perf record -r`). Children (CMD, the
/// storm's workers) start as normal tasks again (SCHED_RESET_ON_FORK). Returns a warning when
/// the kernel refuses (no CAP_SYS_NICE, or an RT group without RT runtime).
pub fn raise_priority(prio: u8) -> Option<String> {
    if prio == 0 {
        return None;
    }
    // SAFETY: sched_param is plain integers; all-zero is valid (musl's has more fields).
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = i32::from(prio);
    // The raw syscall, not libc's wrapper: musl's sched_setscheduler is a stub that always
    // fails with ENOSYS (POSIX wants it per process, Linux's is per thread).
    // SAFETY: plain syscall on ourselves with a valid param.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK,
            &raw const param,
        )
    };
    (r != 0).then(|| {
        let err = io::Error::last_os_error();
        // EPERM without CAP_SYS_NICE is the usual cause; with it, the cgroup's RT runtime.
        let cause = if err.raw_os_error() == Some(libc::EPERM)
            && !crate::bpf::privileges::holds(crate::bpf::privileges::Capability::SysNice)
        {
            "missing capability CAP_SYS_NICE".to_string()
        } else {
            err.to_string()
        };
        format!(
            "cannot run the reader at real-time priority {prio} ({cause}); it runs as a normal task \
             and may fall behind on a saturated node (--rt-priority 0 silences this)"
        )
    })
}
