//! How the reader waits for the ring buffer without being woken by every event, and the
//! priority it runs at.
use std::io;
use std::time::Duration;

/// The reader's wait: epoll, edge-triggered, over the ring buffer and /dev/kmsg. Edge-triggered
/// so that data already in the ring buffer does not make every wait return at once: the wait
/// ends at the timeout, at a real wakeup (the buffer past its threshold), or at a new kernel
/// message.
pub struct Waiter {
    epoll: std::os::fd::OwnedFd,
}

const WAKE_RING: u64 = 1;
const WAKE_KMSG: u64 = 2;

impl Waiter {
    pub fn new(ring: i32, kmsg: Option<i32>) -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let epoll = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        let w = Waiter { epoll };
        w.add(ring, WAKE_RING)?;
        if let Some(k) = kmsg {
            w.add(k, WAKE_KMSG)?;
        }
        Ok(w)
    }

    fn add(&self, fd: i32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: valid epoll fd and event.
        let r = unsafe {
            libc::epoll_ctl(
                std::os::fd::AsRawFd::as_raw_fd(&self.epoll),
                libc::EPOLL_CTL_ADD,
                fd,
                &mut ev,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait up to `timeout`; true when /dev/kmsg has news.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 2];
        // SAFETY: valid epoll fd and buffer.
        let n = unsafe {
            libc::epoll_wait(
                std::os::fd::AsRawFd::as_raw_fd(&self.epoll),
                evs.as_mut_ptr(),
                evs.len() as i32,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // A signal (Ctrl-C) ends the wait early; the caller checks its flag.
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(evs[..n as usize].iter().any(|e| e.u64 == WAKE_KMSG))
    }
}

/// Make the reader a SCHED_FIFO task at `prio` (0: leave it alone), so that a node saturated
/// by the very storm it watches still lets it drain (as `perf record -r`). Children (CMD, the
/// storm's workers) start as normal tasks again (SCHED_RESET_ON_FORK). Returns a warning when
/// the kernel refuses (no CAP_SYS_NICE, or an RT group without RT runtime).
pub fn raise_priority(prio: u8) -> Option<String> {
    if prio == 0 {
        return None;
    }
    let param = libc::sched_param {
        sched_priority: i32::from(prio),
    };
    // SAFETY: plain syscall on ourselves with a valid param.
    let r = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    (r != 0).then(|| {
        format!(
            "cannot run the reader at real-time priority {prio} ({}); it runs as a normal task \
             and may fall behind on a saturated node (--rt-priority 0 silences this)",
            io::Error::last_os_error()
        )
    })
}
