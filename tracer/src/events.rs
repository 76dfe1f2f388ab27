//! Decoding the kernel's ring-buffer records into capture records.
use tracer_ebpf::PeriodEvent;

use crate::capture::PeriodRecord;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {got} bytes, expected {want} (object/binary mismatch)")]
    Size { got: usize, want: usize },
}

/// One ring-buffer record -> capture record. The buffer is only byte-aligned from our point of
/// view, so read unaligned.
pub fn decode(buf: &[u8]) -> Result<PeriodRecord, DecodeError> {
    let want = core::mem::size_of::<PeriodEvent>();
    if buf.len() < want {
        return Err(DecodeError::Size {
            got: buf.len(),
            want,
        });
    }
    // SAFETY: length checked; PeriodEvent is repr(C) plain integers, any bit pattern is valid.
    let e: PeriodEvent = unsafe { core::ptr::read_unaligned(buf.as_ptr().cast()) };
    Ok(PeriodRecord {
        ts_ns: e.start_ns,
        cpu: e.cpu,
        duration_ns: e.duration_ns,
        cgroup_id: e.cgroup_id,
        timer: e.timer,
        loops: e.loops,
        unthrottled: e.unthrottled,
        enqueued: e.enqueued,
        runnable: e.runnable,
        period_ns: e.period_ns,
        quota_ns: e.quota_ns,
        flags: e.flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_record() {
        let e = PeriodEvent {
            start_ns: 1,
            duration_ns: 2,
            cgroup_id: 3,
            timer: 4,
            period_ns: 5,
            quota_ns: u64::MAX,
            cpu: 7,
            loops: 8,
            unthrottled: 9,
            enqueued: 10,
            runnable: 11,
            flags: 12,
        };
        // SAFETY: viewing a repr(C) POD as bytes.
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (&e as *const PeriodEvent).cast::<u8>(),
                core::mem::size_of::<PeriodEvent>(),
            )
        };
        // Misalign on purpose.
        let mut v = vec![0u8];
        v.extend_from_slice(bytes);
        let r = decode(&v[1..]).unwrap();
        assert_eq!(
            (r.ts_ns, r.duration_ns, r.cgroup_id, r.cpu, r.unthrottled, r.enqueued),
            (1, 2, 3, 7, 9, 10)
        );
        assert_eq!(r.quota_ns, u64::MAX);
        assert_eq!(decode(&v[..10]), Err(DecodeError::Size { got: 10, want: 72 }));
    }
}
