//! Decoding the kernel's ring-buffer records into capture records.
use tracer_ebpf::{
    AsyncEvent, EVENT_ASYNC_UNTHROTTLE, EVENT_IRQ_SPAN, EVENT_PERIOD, IrqSpanEvent, PeriodEvent,
    SPREAD_WORDS,
};

use crate::model::cpuset::CpuSet;
use crate::model::records::{AsyncRecord, IrqSpanRecord, PeriodRecord};
use crate::model::timers::TimerIds;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {got} bytes, expected {want} (object/binary mismatch)")]
    Size { got: usize, want: usize },
    #[error("ring buffer record of unknown kind {0} (object/binary mismatch)")]
    Kind(u32),
    #[error(
        "period record with {0} bitmap words, expected 1 or {SPREAD_WORDS} (object/binary mismatch)"
    )]
    SpreadWords(u32),
}

/// One ring-buffer record, by its leading `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Period(PeriodRecord),
    Async(AsyncRecord),
    IrqSpan(IrqSpanRecord),
}

impl Event {
    /// The cgroup the record names; 0 for none (spans name no cgroup).
    pub fn cgroup_id(&self) -> u64 {
        match self {
            Event::Period(p) => p.cgroup_id,
            Event::Async(a) => a.cgroup_id,
            Event::IrqSpan(_) => 0,
        }
    }
}

/// Read a `T` from the front of `buf`. The buffer is only byte-aligned from our point of view,
/// so read unaligned.
fn read<T: Copy>(buf: &[u8]) -> Result<T, DecodeError> {
    let want = core::mem::size_of::<T>();
    if buf.len() < want {
        return Err(DecodeError::Size {
            got: buf.len(),
            want,
        });
    }
    // SAFETY: length checked; only called with the repr(C) integer-only event types, for
    // which any bit pattern is valid.
    Ok(unsafe { core::ptr::read_unaligned(buf.as_ptr().cast()) })
}

/// One ring-buffer record -> capture record. The period timer's kernel address becomes its
/// run's id here (`timers`): no address goes further.
pub fn decode(buf: &[u8], timers: &mut TimerIds) -> Result<Event, DecodeError> {
    let kind: u32 = read(buf)?;
    match kind {
        EVENT_PERIOD => {
            let e: PeriodEvent = read(buf)?;
            let words = e.spread_words as usize;
            if words != 1 && words != SPREAD_WORDS {
                return Err(DecodeError::SpreadWords(e.spread_words));
            }
            let head = core::mem::size_of::<PeriodEvent>();
            let want = head + words * 8;
            if buf.len() < want {
                return Err(DecodeError::Size {
                    got: buf.len(),
                    want,
                });
            }
            let mut mask = [0u64; SPREAD_WORDS];
            for (i, w) in mask.iter_mut().take(words).enumerate() {
                let at = head + i * 8;
                *w = read(&buf[at..])?;
            }
            let spread_cpus = CpuSet::from_words(&mask[..words]);
            Ok(Event::Period(PeriodRecord {
                ts_ns: e.start_ns,
                cpu: e.cpu,
                duration_ns: e.duration_ns,
                cgroup_id: e.cgroup_id,
                timer_id: timers.id(e.timer),
                loops: e.loops,
                unthrottled: e.unthrottled,
                enqueued: e.enqueued,
                runnable: e.runnable,
                period_ns: e.period_ns,
                quota_ns: e.quota_ns,
                flags: e.flags,
                span_ts_ns: e.span_start_ns,
                spread: spread_cpus.len(),
                spread_overflow: e.spread_overflow,
                queued: e.queued,
                spread_cpus,
            }))
        }
        EVENT_IRQ_SPAN => {
            let e: IrqSpanEvent = read(buf)?;
            Ok(Event::IrqSpan(IrqSpanRecord {
                ts_ns: e.start_ns,
                cpu: e.cpu,
                duration_ns: e.duration_ns,
                timers: e.timers,
                timers_ns: e.timers_ns,
                flags: e.flags,
            }))
        }
        EVENT_ASYNC_UNTHROTTLE => {
            let e: AsyncEvent = read(buf)?;
            Ok(Event::Async(AsyncRecord {
                ts_ns: e.start_ns,
                cpu: e.cpu,
                duration_ns: e.duration_ns,
                cgroup_id: e.cgroup_id,
                csd_ts_ns: e.csd_start_ns,
                csd_ns: e.csd_ns,
                segment: e.segment,
                unthrottled: e.unthrottled,
                enqueued: e.enqueued,
                runnable: e.runnable,
                flags: e.flags,
            }))
        }
        k => Err(DecodeError::Kind(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(e: &T) -> Vec<u8> {
        // SAFETY: viewing a repr(C) POD as bytes.
        let b = unsafe {
            core::slice::from_raw_parts((e as *const T).cast::<u8>(), core::mem::size_of::<T>())
        };
        // Misalign on purpose.
        let mut v = vec![0u8];
        v.extend_from_slice(b);
        v
    }

    /// Decoded as the first record of a run.
    fn dec(buf: &[u8]) -> Result<Event, DecodeError> {
        decode(buf, &mut TimerIds::default())
    }

    fn period_head() -> PeriodEvent {
        PeriodEvent {
            kind: EVENT_PERIOD,
            cpu: 7,
            start_ns: 1,
            duration_ns: 2,
            cgroup_id: 3,
            timer: 4,
            period_ns: 5,
            quota_ns: u64::MAX,
            span_start_ns: 13,
            loops: 8,
            unthrottled: 9,
            enqueued: 10,
            runnable: 11,
            flags: 12,
            spread_overflow: 1,
            queued: 14,
            spread_words: 1,
        }
    }

    #[test]
    fn decodes_a_narrow_period_record() {
        let e = tracer_ebpf::PeriodEventNarrow {
            head: period_head(),
            spread_mask: [0b1011],
        };
        let v = bytes_of(&e);
        let Event::Period(r) = dec(&v[1..]).unwrap() else {
            panic!("not a period");
        };
        assert_eq!(
            (
                r.ts_ns,
                r.duration_ns,
                r.cgroup_id,
                r.cpu,
                r.unthrottled,
                r.enqueued
            ),
            (1, 2, 3, 7, 9, 10)
        );
        assert_eq!((r.loops, r.runnable, r.flags), (8, 11, 12));
        assert_eq!(r.quota_ns, u64::MAX);
        assert_eq!((r.span_ts_ns, r.spread, r.spread_overflow), (13, 3, 1));
        assert_eq!(r.queued, 14);
        assert_eq!(r.spread_cpus.to_list(), "0-1,3");
        // The head alone is not a whole record.
        let head = core::mem::size_of::<PeriodEvent>();
        assert_eq!(
            dec(&v[1..1 + head]),
            Err(DecodeError::Size {
                got: head,
                want: head + 8
            })
        );
        assert_eq!(
            dec(&v[1..11]),
            Err(DecodeError::Size {
                got: 10,
                want: head
            })
        );
        assert_eq!(dec(&v[1..3]), Err(DecodeError::Size { got: 2, want: 4 }));
    }

    /// The timer's address stays in the decoder: each record carries its run's id, the same
    /// for the same timer, in order of first appearance.
    #[test]
    fn timer_addresses_become_stable_ids() {
        let (a, b) = (0xffff_8881_043a_2b48_u64, 0xffff_8881_0500_0148_u64);
        let mut timers = TimerIds::default();
        let ids: Vec<u32> = [a, b, a, a, b]
            .into_iter()
            .map(|timer| {
                let e = tracer_ebpf::PeriodEventNarrow {
                    head: PeriodEvent {
                        timer,
                        ..period_head()
                    },
                    spread_mask: [0],
                };
                match decode(&bytes_of(&e)[1..], &mut timers).unwrap() {
                    Event::Period(r) => {
                        let text = serde_json::to_string(&r).unwrap();
                        for addr in [a, b] {
                            assert!(!text.contains(&addr.to_string()), "{text}");
                        }
                        assert!(!text.contains("\"timer\""), "{text}");
                        r.timer_id
                    }
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(ids, [1, 2, 1, 1, 2]);
    }

    #[test]
    fn decodes_a_wide_period_record() {
        let mut mask = [0u64; SPREAD_WORDS];
        mask[0] = 0b1011;
        mask[15] = 1 << 63;
        let e = tracer_ebpf::PeriodEventWide {
            head: PeriodEvent {
                spread_words: SPREAD_WORDS as u32,
                ..period_head()
            },
            spread_mask: mask,
        };
        let v = bytes_of(&e);
        let Event::Period(r) = dec(&v[1..]).unwrap() else {
            panic!("not a period");
        };
        assert_eq!(r.spread_cpus.to_list(), "0-1,3,1023");
        assert_eq!(r.spread, 4);
        // A bitmap length the programs never write is a mismatch, not a guess.
        let mut bad = v[1..].to_vec();
        let at = core::mem::offset_of!(PeriodEvent, spread_words);
        bad[at..at + 4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(dec(&bad), Err(DecodeError::SpreadWords(3)));
    }

    #[test]
    fn decodes_an_async_record() {
        let e = AsyncEvent {
            kind: EVENT_ASYNC_UNTHROTTLE,
            cpu: 1,
            start_ns: 100,
            duration_ns: 20,
            cgroup_id: 42,
            csd_start_ns: 90,
            csd_ns: 35,
            unthrottled: 1,
            enqueued: 4,
            runnable: 3,
            flags: tracer_ebpf::ASYNC_LAST,
            segment: 2,
            _pad: 0,
        };
        let v = bytes_of(&e);
        let Event::Async(r) = dec(&v[1..]).unwrap() else {
            panic!("not async");
        };
        assert_eq!(
            r,
            AsyncRecord {
                ts_ns: 100,
                cpu: 1,
                duration_ns: 20,
                cgroup_id: 42,
                csd_ts_ns: 90,
                csd_ns: 35,
                segment: 2,
                unthrottled: 1,
                enqueued: 4,
                runnable: 3,
                flags: tracer_ebpf::ASYNC_LAST,
            }
        );
        assert_eq!(Event::Async(r).cgroup_id(), 42);
        // Cut short: a size error against its own kind's size.
        assert_eq!(dec(&v[1..40]), Err(DecodeError::Size { got: 39, want: 72 }));
        let mut bad = v[1..].to_vec();
        bad[..4].copy_from_slice(&9u32.to_ne_bytes());
        assert_eq!(dec(&bad), Err(DecodeError::Kind(9)));
    }

    #[test]
    fn decodes_an_irq_span_record() {
        // Every field a different value, so a swapped pair shows.
        let flags = tracer_ebpf::HOW_FRAME_TRACEPOINT;
        let (cpu, start_ns, duration_ns, timers_ns, timers) = (5, 1_000, 900, 700, 2);
        let e = IrqSpanEvent {
            kind: EVENT_IRQ_SPAN,
            cpu,
            start_ns,
            duration_ns,
            timers_ns,
            timers,
            flags,
        };
        let v = bytes_of(&e);
        let ev = dec(&v[1..]).unwrap();
        assert_eq!(ev.cgroup_id(), 0);
        let Event::IrqSpan(r) = ev else {
            panic!("not a span");
        };
        let ts_ns = start_ns;
        let want = IrqSpanRecord {
            ts_ns,
            cpu,
            duration_ns,
            timers,
            timers_ns,
            flags,
        };
        assert_eq!(r, want);
        assert_eq!(dec(&v[1..20]), Err(DecodeError::Size { got: 19, want: 40 }));
    }

    mod fuzz {
        //! Ring-buffer bytes under proptest: whatever the kernel side (or a mismatched object)
        //! hands over is a record or an error naming the size or the kind, never a panic.
        use super::*;
        use proptest::prelude::*;

        const HEAD: usize = core::mem::size_of::<PeriodEvent>();

        fn config() -> ProptestConfig {
            ProptestConfig {
                cases: 512,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        fn with_u32(mut b: Vec<u8>, at: usize, v: u32) -> Vec<u8> {
            if b.len() >= at + 4 {
                b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
            }
            b
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn any_bytes_decode_or_say_why(b in prop::collection::vec(any::<u8>(), 0..300)) {
                match decode(&b, &mut TimerIds::default()) {
                    Ok(ev) => {
                        let kind = u32::from_ne_bytes(b[..4].try_into().unwrap());
                        let want = match ev {
                            Event::Period(_) => EVENT_PERIOD,
                            Event::Async(_) => EVENT_ASYNC_UNTHROTTLE,
                            Event::IrqSpan(_) => EVENT_IRQ_SPAN,
                        };
                        prop_assert_eq!(kind, want);
                    }
                    Err(DecodeError::Size { got, want }) => {
                        prop_assert_eq!(got, b.len());
                        prop_assert!(want > got);
                    }
                    Err(e) => prop_assert!(!e.to_string().is_empty()),
                }
            }

            /// Each known kind over random contents: decoded exactly when long enough (and,
            /// for a period, with a bitmap length the programs write), its fields read from
            /// their offsets.
            #[test]
            fn known_kinds_over_random_bytes(
                b in prop::collection::vec(any::<u8>(), 0..(HEAD + 8 * SPREAD_WORDS + 16)),
                which in 0..3usize,
                words in prop_oneof![Just(1u32), Just(SPREAD_WORDS as u32), any::<u32>()],
            ) {
                let kind = [EVENT_PERIOD, EVENT_IRQ_SPAN, EVENT_ASYNC_UNTHROTTLE][which];
                let b = with_u32(b, 0, kind);
                let b = if kind == EVENT_PERIOD {
                    with_u32(b, core::mem::offset_of!(PeriodEvent, spread_words), words)
                } else {
                    b
                };
                let got = decode(&b, &mut TimerIds::default());
                let need = match kind {
                    EVENT_PERIOD => HEAD + 8 * words as usize,
                    EVENT_IRQ_SPAN => core::mem::size_of::<IrqSpanEvent>(),
                    _ => core::mem::size_of::<AsyncEvent>(),
                };
                let words_ok = kind != EVENT_PERIOD
                    || words == 1
                    || words as usize == SPREAD_WORDS;
                if b.len() < 4 {
                    prop_assert!(matches!(got, Err(DecodeError::Size { .. })), "{:?}", got);
                } else if kind == EVENT_PERIOD && b.len() >= HEAD && !words_ok {
                    prop_assert_eq!(got, Err(DecodeError::SpreadWords(words)));
                } else if b.len() < need || (kind == EVENT_PERIOD && b.len() < HEAD) {
                    prop_assert!(matches!(got, Err(DecodeError::Size { .. })), "{:?}", got);
                } else {
                    let ev = got.expect("a whole record of a known kind");
                    let at = |off: usize| u64::from_ne_bytes(b[off..off + 8].try_into().unwrap());
                    match ev {
                        Event::Period(r) => {
                            prop_assert_eq!(r.ts_ns, at(core::mem::offset_of!(PeriodEvent, start_ns)));
                            prop_assert_eq!(r.cgroup_id, at(core::mem::offset_of!(PeriodEvent, cgroup_id)));
                            prop_assert_eq!(r.spread, r.spread_cpus.len());
                        }
                        Event::IrqSpan(r) => {
                            prop_assert_eq!(r.duration_ns, at(core::mem::offset_of!(IrqSpanEvent, duration_ns)));
                        }
                        Event::Async(r) => {
                            prop_assert_eq!(r.csd_ns, at(core::mem::offset_of!(AsyncEvent, csd_ns)));
                        }
                    }
                }
            }
        }
    }
}
