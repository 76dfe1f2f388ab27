//! The kernel's own word on a period timer in trouble: since v5.1 (2e8e19226398) a callback
//! that keeps overrunning logs `cfs_period_timer[cpuN]: period too short, scaling up (new
//! cfs_period_us = P, cfs_quota_us = Q)` and doubles period and quota behind the user's back,
//! or says it `cannot scale up without losing precision`. Either is a lockup precursor.
//! We read /dev/kmsg from its end, so only messages logged while we trace count.
use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;

use crate::model::records::PeriodScaling;

/// Parse one /dev/kmsg record (`prio,seq,ts_us,flags;text`); None if it is not ours.
///
/// Only the kernel's own records count: `prio` is `facility * 8 + level` and the kernel
/// facility is 0, which a process writing to /dev/kmsg cannot use (the kernel turns it into
/// LOG_USER), so no user can forge a lockup precursor into a report.
pub fn parse_record(rec: &str) -> Option<PeriodScaling> {
    let (prefix, text) = rec.split_once(';')?;
    let mut fields = prefix.split(',');
    let prio: u32 = fields.next()?.parse().ok()?;
    if prio >> 3 != 0 {
        return None;
    }
    let ts_us = fields.nth(1)?.parse().ok()?;
    let text = text.lines().next()?;
    let rest = text.split("cfs_period_timer[cpu").nth(1)?;
    let (cpu, rest) = rest.split_once(']')?;
    let cpu = cpu.parse().ok()?;
    if !rest.contains("period too short") {
        return None;
    }
    let scaled_up = rest.contains("scaling up");
    // Older kernels print `new cfs_period_us 123`, newer `new cfs_period_us = 123`.
    let number_after = |key: &str| -> Option<u64> {
        let tail = rest.split(key).nth(1)?;
        let digits: String = tail
            .trim_start_matches([' ', '='])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    Some(PeriodScaling {
        ts_us,
        cpu,
        scaled_up,
        period_us: number_after("cfs_period_us")?,
        quota_us: number_after("cfs_quota_us")?,
    })
}

/// Non-blocking reader of /dev/kmsg positioned at its end.
pub struct KmsgWatch {
    file: File,
    buf: Vec<u8>,
}

impl std::os::fd::AsRawFd for KmsgWatch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl KmsgWatch {
    pub fn open() -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")?;
        // SAFETY: valid fd; SEEK_END on /dev/kmsg means "only records from now on".
        if unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            file,
            buf: vec![0; 8192],
        })
    }

    /// Every "period too short" message logged since the last call.
    pub fn poll(&mut self) -> Vec<PeriodScaling> {
        let mut out = Vec::new();
        loop {
            // Each read returns exactly one record.
            match self.file.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(p) = parse_record(&String::from_utf8_lossy(&self.buf[..n])) {
                        out.push(p);
                    }
                }
                // EPIPE: records were overwritten before we read them; carry on from the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // EAGAIN: nothing more now
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_message_forms() {
        let new = "4,1234,98765432,-;cfs_period_timer[cpu3]: period too short, scaling up (new cfs_period_us = 4000, cfs_quota_us = 2000)\n";
        assert_eq!(
            parse_record(new),
            Some(PeriodScaling {
                ts_us: 98765432,
                cpu: 3,
                scaled_up: true,
                period_us: 4000,
                quota_us: 2000
            })
        );
        let old = "4,1,5,-;cfs_period_timer[cpu0]: period too short, scaling up (new cfs_period_us 1150, cfs_quota_us = 575)";
        assert_eq!(
            parse_record(old).map(|p| (p.period_us, p.quota_us)),
            Some((1150, 575))
        );
        let capped = "4,2,6,-;cfs_period_timer[cpu47]: period too short, but cannot scale up without losing precision (cfs_period_us = 1000000, cfs_quota_us = 500000)";
        let p = parse_record(capped).unwrap();
        assert!(!p.scaled_up);
        assert_eq!((p.cpu, p.period_us), (47, 1_000_000));
        assert_eq!(parse_record("6,3,7,-;eth0: link up"), None);
        assert_eq!(parse_record("garbage"), None);
    }

    #[test]
    fn ignores_records_written_by_processes() {
        // `echo ... > /dev/kmsg` is logged with facility LOG_USER (prio 8 + level = 12 here).
        let forged = "12,9,10,-;cfs_period_timer[cpu0]: period too short, scaling up (new cfs_period_us = 4000, cfs_quota_us = 2000)";
        assert_eq!(parse_record(forged), None);
    }

    #[test]
    fn opens_at_the_end_of_the_log() {
        // Root can read /dev/kmsg on every kernel we support; nothing old is replayed.
        let mut w = KmsgWatch::open().expect("/dev/kmsg");
        assert!(w.poll().iter().all(|p| p.ts_us > 0));
    }
}
