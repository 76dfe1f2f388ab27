//! The capture file: JSON Lines. The first line is the header (`"schema":"cfstrace.capture/1"`,
//! the host facts, the probes), then one line per record (see `crate::model::records`). This
//! room writes and reads them; the records themselves are the model's.
mod codec;
#[cfg(test)]
mod fuzz;
mod reader;
mod spool;
mod writer;

use std::io;

pub use crate::model::cpuset::CpuSet;
pub use crate::model::probe::ProbeStatus;
pub use crate::model::records::*;
pub use reader::{Capture, CaptureReader, ReplayStats, read_capture, replay, replay_reader};
pub use spool::{ChunkOut, Spool};
pub use writer::CaptureWriter;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: empty file, not a cfstrace capture")]
    Empty { path: String },
    #[error("{path}: not a cfstrace capture: {found}")]
    NotCapture { path: String, found: String },
    #[error("{path}: capture header (line 1) is malformed: {source}")]
    BadHeader {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}:{line}: corrupt capture line: {source}")]
    BadLine {
        path: String,
        line: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("refusing to write a capture header with schema {found:?}, expected {CAPTURE_SCHEMA}")]
    HeaderSchema { found: String },
    #[error("writing capture: {0}")]
    Write(#[source] io::Error),
    #[error("encoding capture line: {0}")]
    Encode(#[source] serde_json::Error),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::codec::*;
    use super::*;
    use bytes::BytesMut;

    use crate::model::records::{
        BANDWIDTH_FROM, ENQUEUED_FROM, LOOPS_FROM, QUEUED_FROM, RUNNABLE_FROM, SPREAD_FROM,
        UNTHROTTLED_FROM,
    };
    use crate::model::workload::Workload;

    use std::fs::File;
    use std::io::Write;

    use crate::model::records::test_header as header;

    pub(super) fn lines() -> Vec<CaptureLine> {
        vec![
            CaptureLine::Cgroup(Box::new(CgroupRecord {
                facts: CgroupFacts {
                    id: 42,
                    path: Some("/a/b".into()),
                    workload: Workload::plain(),
                    processes: vec![ProcessInfo {
                        pid: 7,
                        comm: "python".into(),
                        cmdline: None,
                        cpu_ticks: 3,
                    }],
                    period_us: Some(100_000),
                    quota_us: None,
                },
                note: None,
                parents: Some(vec![ParentRecord {
                    path: "/a".into(),
                    id: Some(41),
                    period_us: Some(100_000),
                    quota_us: Some(20_000),
                }]),
            })),
            CaptureLine::Period(PeriodRecord {
                ts_ns: 10,
                cpu: 3,
                duration_ns: 1234,
                cgroup_id: 42,
                quota_ns: u64::MAX,
                flags: 0x1ff | tracer_ebpf::HOW_PERIOD,
                ..Default::default()
            }),
            CaptureLine::AsyncUnthrottle(AsyncRecord {
                ts_ns: 15,
                cpu: 1,
                duration_ns: 800,
                cgroup_id: 42,
                csd_ts_ns: 14,
                csd_ns: 900,
                segment: 1,
                unthrottled: 1,
                enqueued: 3,
                runnable: 2,
                flags: tracer_ebpf::ASYNC_LAST
                    | tracer_ebpf::HOW_ENQUEUE_ENTITY
                    | tracer_ebpf::HOW_RUNNABLE,
            }),
            CaptureLine::Loss(LossRecord {
                ts_ns: 11,
                ringbuf_full: 1,
                ..Default::default()
            }),
            CaptureLine::End(EndRecord {
                ts_ns: 12,
                duration_ns: 99,
                reason: crate::model::probe::StopReason::Duration,
                periods: 1,
                lost: 1,
                command_status: None,
                async_unthrottle: 1,
                irq_spans: 1,
                kmsg_period_scaling: 0,
            }),
        ]
    }

    fn encode(lines: &[CaptureLine]) -> Vec<u8> {
        let mut w = CaptureWriter::new(Vec::new(), &header()).unwrap();
        for l in lines {
            w.write_line(l).unwrap();
        }
        assert_eq!(w.lines_written(), lines.len() as u64);
        w.into_inner().unwrap()
    }

    fn read(bytes: &[u8]) -> Result<(CaptureHeader, Vec<CaptureLine>, ReplayStats), CaptureError> {
        let r = CaptureReader::new(bytes, "test.jsonl")?;
        let mut out = Vec::new();
        let (h, stats) = replay_reader(r, &mut |l| out.push(l.clone()))?;
        Ok((h, out, stats))
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&lines());
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 6);
        let (h, got, stats) = read(&bytes).unwrap();
        assert_eq!(h, header());
        assert_eq!(got, lines());
        assert_eq!(stats.lines, 5);
        assert!(stats.ended && !stats.truncated);
        assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        {
            let f = File::create(&path).unwrap();
            let mut w = CaptureWriter::new(f, &header()).unwrap();
            for l in lines() {
                w.write_line(&l).unwrap();
            }
            // Dropped without an explicit flush: Drop writes the buffer out.
        }
        let cap = read_capture(&path).unwrap();
        assert_eq!(cap.lines, lines());
        assert!(cap.warnings.is_empty());
    }

    #[test]
    fn period_fast_path_matches_the_generic_decoder() {
        let l = lines()[1].clone();
        let text = serde_json::to_vec(&l).unwrap();
        assert!(
            text.starts_with(PERIOD_PREFIX),
            "{}",
            String::from_utf8_lossy(&text)
        );
        // Other key orders (another writer) still decode.
        let reordered = br#"{"ts_ns":10,"cpu":3,"duration_ns":1234,"cgroup_id":42,"timer_id":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":18446744073709551615,"flags":1023,"kind":"period"}"#;
        let mut bytes = encode(&[]);
        bytes.extend_from_slice(reordered);
        bytes.push(b'\n');
        let (_, got, _) = read(&bytes).unwrap();
        assert_eq!(got, vec![l]);
    }

    #[test]
    fn decimal_formatting() {
        let mut probe = vec![
            0,
            1,
            9,
            10,
            11,
            99,
            100,
            101,
            999,
            1000,
            u64::MAX,
            u64::MAX - 1,
        ];
        probe.extend((0..64).map(|b| 1u64 << b));
        probe.extend((0..20).map(|e| 10u64.pow(e) - 1));
        for v in probe {
            let mut b = BytesMut::new();
            push_u64(&mut b, v);
            assert_eq!(String::from_utf8(b.to_vec()).unwrap(), v.to_string());
        }
    }

    /// `rec` hand-encoded by `encode`, checked to be what serde writes for `line`.
    fn encoded_as_serde<R>(rec: &R, encode: fn(&mut BytesMut, &R), line: CaptureLine) -> Vec<u8> {
        let mut mine = BytesMut::new();
        encode(&mut mine, rec);
        let serde = serde_json::to_vec(&line).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&mine),
            String::from_utf8_lossy(&serde)
        );
        mine.to_vec()
    }

    #[test]
    fn hand_encoded_period_lines_match_serde() {
        let recs = [
            PeriodRecord::default(),
            PeriodRecord {
                ts_ns: u64::MAX,
                cpu: u32::MAX,
                duration_ns: 9,
                cgroup_id: 10,
                timer_id: 7,
                loops: 1,
                unthrottled: 100,
                enqueued: 1_000_000,
                runnable: 7,
                period_ns: 100_000_000,
                quota_ns: u64::MAX,
                flags: 0x7ff | tracer_ebpf::HOW_SPREAD | tracer_ebpf::HOW_QUEUED,
                span_ts_ns: u64::MAX - 5,
                spread: 7,
                spread_overflow: 2,
                queued: 4_000_000,
                spread_cpus: CpuSet::parse_list("0-3,5,64,1022-1023").unwrap(),
            },
            PeriodRecord {
                spread_cpus: CpuSet::parse_list("47").unwrap(),
                ..Default::default()
            },
        ];
        for p in recs {
            let mut mine = encoded_as_serde(&p, encode_period, CaptureLine::Period(p.clone()));
            // What the flags do not vouch for is `null`, never a 0 that reads as a count.
            let text = String::from_utf8_lossy(&mine).into_owned();
            for (key, bits) in [
                ("loops", LOOPS_FROM),
                ("unthrottled", UNTHROTTLED_FROM),
                ("enqueued", ENQUEUED_FROM),
                ("runnable", RUNNABLE_FROM),
                ("period_ns", BANDWIDTH_FROM),
                ("quota_ns", BANDWIDTH_FROM),
                ("spread", SPREAD_FROM),
                ("queued", QUEUED_FROM),
            ] {
                let null = text.contains(&format!("\"{key}\":null"));
                assert_eq!(null, p.flags & bits == 0, "{key} in {text}");
            }
            assert_eq!(decode_period(&mine), Some(p.clone()));
            mine.push(b'\n');
            assert_eq!(decode_period(&mine), Some(p));
        }
        // Not exactly our shape: left to serde.
        let ok = br#"{"kind":"period","ts_ns":1,"cpu":0,"duration_ns":0,"cgroup_id":0,"timer_id":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0,"span_ts_ns":0,"spread":0,"spread_overflow":0,"queued":0}"#;
        assert!(decode_period(ok).is_some());
        let with_cpus = br#"{"kind":"period","ts_ns":1,"cpu":0,"duration_ns":0,"cgroup_id":0,"timer_id":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0,"span_ts_ns":0,"spread":2,"spread_overflow":0,"queued":0,"spread_cpus":"0-1"}"#;
        assert_eq!(
            decode_period(with_cpus).map(|p| p.spread_cpus.len()),
            Some(2)
        );
        // An empty or bad list is not ours: serde decides.
        for odd in [
            br#"{"kind":"period","ts_ns":1,"cpu":0,"duration_ns":0,"cgroup_id":0,"timer_id":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0,"span_ts_ns":0,"spread":0,"spread_overflow":0,"queued":0,"spread_cpus":""}"#.as_slice(),
            br#"{"kind":"period","ts_ns":1,"cpu":0,"duration_ns":0,"cgroup_id":0,"timer_id":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0,"span_ts_ns":0,"spread":0,"spread_overflow":0,"queued":0,"spread_cpus":"x"}"#,
        ] {
            assert_eq!(decode_period(odd), None);
        }
        for bad in [
            br#"{"kind":"period","ts_ns":01,"cpu":0,"duration_ns":0,"cgroup_id":0,"timer_id":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0}"#.as_slice(),
            br#"{"kind":"period","ts_ns":1,"cpu":4294967296,"duration_ns":0,"cgroup_id":0,"timer_id":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0}"#,
            br#"{"kind":"period","ts_ns":1,"cpu":0,"duration_ns":0,"cgroup_id":0,"timer_id":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0,"x":1}"#,
            br#"{"kind":"period","ts_ns":99999999999999999999,"cpu":0,"duration_ns":0,"cgroup_id":0,"timer_id":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0}"#,
            br#"{"kind":"period","ts_ns":1,"cpu":0}"#,
        ] {
            assert_eq!(decode_period(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hand_encoded_span_lines_match_serde() {
        for x in [
            IrqSpanRecord::default(),
            IrqSpanRecord {
                ts_ns: u64::MAX,
                cpu: 47,
                duration_ns: 420_000,
                timers: 3,
                timers_ns: 310_000,
                flags: tracer_ebpf::HOW_FRAME_FENTRY,
            },
        ] {
            let mine = encoded_as_serde(&x, encode_span, CaptureLine::IrqSpan(x));
            assert_eq!(decode_span(&mine), Some(x));
            // And through the reader.
            let mut bytes = encode(&[]);
            bytes.extend_from_slice(&mine);
            bytes.push(b'\n');
            let (_, got, stats) = read(&bytes).unwrap();
            assert_eq!(got, vec![CaptureLine::IrqSpan(x)]);
            assert!(stats.warnings.iter().all(|w| !w.contains("unknown kind")));
        }
    }

    #[test]
    fn kmsg_lines_round_trip() {
        let k = PeriodScaling {
            ts_us: 5,
            cpu: 3,
            scaled_up: true,
            period_us: 4_000,
            quota_us: 2_000,
        };
        let line = CaptureLine::KmsgPeriodScaling(k.clone());
        let text = serde_json::to_string(&line).unwrap();
        assert!(
            text.starts_with(r#"{"kind":"kmsg_period_scaling","ts_us":5,"cpu":3,"#),
            "{text}"
        );
        let mut bytes = encode(std::slice::from_ref(&line));
        bytes.extend_from_slice(b"\n");
        let (_, got, _) = read(&bytes).unwrap();
        assert_eq!(got, vec![line]);
    }

    /// A period line written before spans and spread existed still reads, through serde.
    #[test]
    fn old_period_lines_still_read() {
        let old = br#"{"kind":"period","ts_ns":1,"cpu":0,"duration_ns":5,"cgroup_id":7,"timer":0,"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0}"#;
        assert_eq!(decode_period(old), None);
        let mut bytes = encode(&[]);
        bytes.extend_from_slice(old);
        bytes.push(b'\n');
        let (_, got, _) = read(&bytes).unwrap();
        match &got[0] {
            CaptureLine::Period(p) => {
                assert_eq!(
                    (
                        p.cgroup_id,
                        p.duration_ns,
                        p.span_ts_ns,
                        p.spread,
                        p.timer_id
                    ),
                    (7, 5, 0, 0, 1)
                );
                assert!(p.spread_cpus.is_empty());
            }
            l => panic!("{l:?}"),
        }
    }

    /// Period lines written before `timer_id` carry `timer`, the kernel address: they still
    /// read, each address as the id the recorder now gives it (1, 2, ... in order of first
    /// appearance in the capture, the same address the same id), on the fast path and through
    /// serde (another key order), and the address is in nothing read back.
    #[test]
    fn old_timer_addresses_read_as_ids() {
        let (a, b) = (18446612687065327048_u64, 18446612687065329000_u64);
        let line = |ts: u64, timer: u64| {
            format!(
                r#"{{"kind":"period","ts_ns":{ts},"cpu":0,"duration_ns":5,"cgroup_id":7,"timer":{timer},"loops":null,"unthrottled":null,"enqueued":null,"runnable":null,"period_ns":null,"quota_ns":null,"flags":0,"span_ts_ns":0,"spread":null,"spread_overflow":null,"queued":null}}"#
            )
        };
        let hot = line(1, a);
        assert_eq!(decode_period(hot.as_bytes()), None);
        let (p, addr) = decode_legacy_period(hot.as_bytes()).unwrap();
        assert_eq!((p.timer_id, addr, p.ts_ns), (0, a, 1));
        let reordered = format!(
            r#"{{"ts_ns":4,"cpu":0,"duration_ns":5,"cgroup_id":7,"timer":{a},"loops":0,"unthrottled":0,"enqueued":0,"runnable":0,"period_ns":0,"quota_ns":0,"flags":0,"kind":"period"}}"#
        );
        let mut bytes = encode(&[]);
        for l in [hot, line(2, b), line(3, a), reordered] {
            bytes.extend_from_slice(l.as_bytes());
            bytes.push(b'\n');
        }
        let (_, got, stats) = read(&bytes).unwrap();
        let ids: Vec<(u64, u32)> = got
            .iter()
            .map(|l| match l {
                CaptureLine::Period(p) => (p.ts_ns, p.timer_id),
                l => panic!("{l:?}"),
            })
            .collect();
        assert_eq!(ids, [(1, 1), (2, 2), (3, 1), (4, 1)]);
        assert!(stats.warnings.iter().all(|w| !w.contains("unknown")));
        // Written again, a line carries the id alone.
        let again = String::from_utf8(encode(&got)).unwrap();
        for addr in [a, b] {
            assert!(!again.contains(&addr.to_string()), "{again}");
        }
        assert!(!again.contains(r#""timer":"#) && again.contains(r#""timer_id":2"#));
    }

    /// A cgroup line written before `parents` existed still reads (parents unknown), and a
    /// record without parents writes no key.
    #[test]
    fn cgroup_lines_without_parents_still_read() {
        let old = br#"{"kind":"cgroup","id":9,"path":"/a/b","workload":{"kind":"cgroup"},"processes":[],"period_us":100000,"quota_us":20000}"#;
        let mut bytes = encode(&[]);
        bytes.extend_from_slice(old);
        bytes.push(b'\n');
        let (_, got, _) = read(&bytes).unwrap();
        let CaptureLine::Cgroup(c) = &got[0] else {
            panic!("{:?}", got[0]);
        };
        assert_eq!(
            (c.id, c.path.as_deref(), c.parents.as_ref()),
            (9, Some("/a/b"), None)
        );
        let text = serde_json::to_string(&got[0]).unwrap();
        assert!(!text.contains("parents"), "{text}");
        // A chain round-trips, nearest first, a parent without a quota as nulls.
        let mut c = (**c).clone();
        c.parents = Some(vec![ParentRecord {
            path: "/a".into(),
            id: Some(8),
            period_us: None,
            quota_us: None,
        }]);
        let text = serde_json::to_string(&CaptureLine::Cgroup(Box::new(c.clone()))).unwrap();
        assert!(
            text.contains(r#""parents":[{"path":"/a","id":8,"period_us":null,"quota_us":null}]"#),
            "{text}"
        );
        let back: CaptureLine = serde_json::from_str(&text).unwrap();
        assert_eq!(back, CaptureLine::Cgroup(Box::new(c)));
    }

    #[test]
    fn hand_encoded_async_lines_match_serde() {
        let recs = [
            AsyncRecord::default(),
            AsyncRecord {
                ts_ns: u64::MAX,
                cpu: u32::MAX,
                duration_ns: 12_345,
                cgroup_id: 4026531835,
                csd_ts_ns: 99,
                csd_ns: 0,
                segment: 31,
                unthrottled: u32::MAX,
                enqueued: 7,
                runnable: 0,
                flags: 0xffff,
            },
        ];
        for a in recs {
            let mine = encoded_as_serde(&a, encode_async, CaptureLine::AsyncUnthrottle(a));
            assert_eq!(decode_async(&mine), Some(a));
        }
        // Another key order (another writer) goes through serde and still reads.
        let mut bytes = encode(&[]);
        bytes.extend_from_slice(
            br#"{"cpu":1,"ts_ns":15,"duration_ns":800,"cgroup_id":42,"csd_ts_ns":14,"csd_ns":900,"segment":1,"unthrottled":1,"enqueued":3,"runnable":2,"flags":8352,"kind":"async_unthrottle"}"#,
        );
        bytes.push(b'\n');
        let (_, got, _) = read(&bytes).unwrap();
        assert_eq!(got, vec![lines()[2].clone()]);
    }

    /// A capture written before async unthrottle was traced: no async lines, and loss and end
    /// lines without the fields added with it.
    #[test]
    fn captures_without_async_lines_still_read() {
        let mut bytes = encode(&lines()[..2]);
        bytes.extend_from_slice(
            br#"{"kind":"loss","ts_ns":11,"ringbuf_full":1,"unmatched_exit":0,"missed_exit":0,"cgroup_read":0}"#,
        );
        bytes.push(b'\n');
        bytes.extend_from_slice(
            br#"{"kind":"end","ts_ns":12,"duration_ns":99,"reason":"duration","periods":1,"lost":1}"#,
        );
        bytes.push(b'\n');
        let (_, got, stats) = read(&bytes).unwrap();
        assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
        assert_eq!(got.len(), 4);
        assert_eq!(got[2], lines()[3]);
        match &got[3] {
            CaptureLine::End(e) => assert_eq!((e.periods, e.async_unthrottle), (1, 0)),
            l => panic!("{l:?}"),
        }
    }

    #[test]
    fn truncated_last_line_is_a_warning() {
        let mut bytes = encode(&lines()[..4]);
        let end = serde_json::to_vec(&lines()[4]).unwrap();
        bytes.extend_from_slice(&end[..20]);
        let (_, got, stats) = read(&bytes).unwrap();
        assert_eq!(got, lines()[..4].to_vec());
        assert!(stats.truncated && !stats.ended);
        assert_eq!(
            stats.warnings,
            vec![
                "capture has no end line: the recording was cut short (killed?); recovered the \
                 header and 4 complete line(s) after it, skipped its cut last line (20 bytes): \
                 the figures cover the recording up to its last complete line"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn complete_last_line_without_newline_is_kept() {
        let mut bytes = encode(&lines());
        assert_eq!(bytes.pop(), Some(b'\n'));
        let (_, got, stats) = read(&bytes).unwrap();
        assert_eq!(got, lines());
        assert!(!stats.truncated && stats.ended);
    }

    #[test]
    fn corrupt_middle_line_is_an_error_with_its_number() {
        let good = encode(&lines());
        let text = String::from_utf8(good).unwrap();
        let mut ls: Vec<&str> = text.lines().collect();
        ls[2] = r#"{"kind":"period","ts_ns":"#; // line 3 of the file
        let bytes = (ls.join("\n") + "\n").into_bytes();
        let err = read(&bytes).unwrap_err();
        match &err {
            CaptureError::BadLine { line, path, .. } => {
                assert_eq!(*line, 3);
                assert_eq!(path, "test.jsonl");
            }
            e => panic!("unexpected {e:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("test.jsonl:3: corrupt capture line")
        );
    }

    #[test]
    fn unknown_kinds_are_skipped_with_one_warning() {
        let mut bytes = encode(&lines()[..2]);
        for _ in 0..3 {
            bytes.extend_from_slice(b"{\"kind\":\"future_thing\",\"x\":1}\n");
        }
        bytes.extend_from_slice(&serde_json::to_vec(&lines()[4]).unwrap());
        bytes.push(b'\n');
        let (_, got, stats) = read(&bytes).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(stats.lines, 3);
        assert_eq!(
            stats.warnings,
            vec![
                "skipped 3 line(s) of unknown kind \"future_thing\" (written by a newer cfstrace?)"
                    .to_string()
            ]
        );
    }

    #[test]
    fn wrong_schema_is_named() {
        let err = read(b"{\"schema\":\"cfstrace.report/1\",\"kernel\":\"x\"}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.jsonl: not a cfstrace capture: first line has schema \"cfstrace.report/1\", \
             expected cfstrace.capture/1"
        );
        let err = read(b"{\"kind\":\"period\"}\n").unwrap_err();
        assert!(err.to_string().contains("no \"schema\" field"), "{err}");
        let err = read(b"PERF_RECORD\x00\x01\n").unwrap_err();
        assert!(err.to_string().contains("not a JSON object"), "{err}");
    }

    #[test]
    fn empty_file_is_an_error() {
        let err = read(b"").unwrap_err();
        assert!(matches!(err, CaptureError::Empty { .. }));
        assert_eq!(
            err.to_string(),
            "test.jsonl: empty file, not a cfstrace capture"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.jsonl");
        File::create(&path).unwrap();
        let err = read_capture(&path).unwrap_err();
        assert!(err.to_string().contains("empty.jsonl: empty file"), "{err}");
        let err = read_capture(&dir.path().join("missing.jsonl")).unwrap_err();
        assert!(err.to_string().contains("missing.jsonl"), "{err}");
    }

    #[test]
    fn header_only_capture_warns_about_the_missing_end() {
        let bytes = encode(&[]);
        let (_, got, stats) = read(&bytes).unwrap();
        assert!(got.is_empty());
        assert_eq!(
            stats.warnings,
            vec![
                "capture has no end line: the recording was cut short (killed?); recovered the \
                 header and 0 complete line(s) after it: the figures cover the recording up to \
                 its last complete line"
                    .to_string()
            ]
        );
    }

    /// Accepts `room` bytes, then fails every write.
    struct Full {
        data: Vec<u8>,
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(self.room - self.data.len());
            if n == 0 {
                return Err(io::Error::other("disk full"));
            }
            self.data.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_is_not_retried() {
        let mut w = CaptureWriter::new(
            Full {
                data: Vec::new(),
                room: 100,
            },
            &header(),
        )
        .unwrap();
        assert!(matches!(w.flush(), Err(CaptureError::Write(_))));
        w.write_line(&lines()[1]).unwrap();
        assert!(w.flush().is_err());
        drop(w); // must not panic or write again
    }

    #[test]
    fn writer_refuses_a_wrong_schema() {
        let mut h = header();
        h.schema = "x".into();
        assert!(matches!(
            CaptureWriter::new(Vec::new(), &h),
            Err(CaptureError::HeaderSchema { .. })
        ));
    }
}
