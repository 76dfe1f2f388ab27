//! The capture codec and reader under arbitrary and mutated input (proptest, a bounded run in
//! the unit tests): a capture is a file anyone can hand to `report`, so nothing in it may
//! panic the reader, and what it refuses names the line. Generated records round-trip
//! through the hand codec and read back through the reader.
use bytes::BytesMut;
use proptest::prelude::*;

use super::codec::*;
use super::*;
use crate::model::records::test_header as header;

/// Cases a property runs: the whole file well under a second or two in release.
const CASES: u32 = 512;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        // A failure's minimal input is printed by proptest; no regression files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn cpu_set() -> impl Strategy<Value = CpuSet> {
    prop_oneof![
        Just(CpuSet::default()),
        prop::collection::vec(any::<u64>(), 1..=16).prop_map(|w| CpuSet::from_words(&w)),
    ]
}

/// Any period record (fields by name, the rest default: the generator follows the model).
fn period() -> impl Strategy<Value = PeriodRecord> {
    (
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>()),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<u64>()),
        (any::<u32>(), any::<u32>(), any::<u32>(), cpu_set()),
    )
        .prop_map(|(a, b, c, d)| PeriodRecord {
            ts_ns: a.0,
            cpu: a.1,
            duration_ns: a.2,
            cgroup_id: a.3,
            loops: b.0,
            unthrottled: b.1,
            enqueued: b.2,
            runnable: b.3,
            period_ns: c.0,
            quota_ns: c.1,
            flags: c.2,
            span_ts_ns: c.3,
            spread: d.0,
            spread_overflow: d.1,
            queued: d.2,
            spread_cpus: d.3,
            ..Default::default()
        })
}

fn span() -> impl Strategy<Value = IrqSpanRecord> {
    any::<(u64, u32, u64, u32, u64, u32)>().prop_map(|v| IrqSpanRecord {
        ts_ns: v.0,
        cpu: v.1,
        duration_ns: v.2,
        timers: v.3,
        timers_ns: v.4,
        flags: v.5,
    })
}

fn async_record() -> impl Strategy<Value = AsyncRecord> {
    (
        any::<(u64, u32, u64, u64, u64, u64)>(),
        any::<(u32, u32, u32, u32, u32)>(),
    )
        .prop_map(|(a, b)| AsyncRecord {
            ts_ns: a.0,
            cpu: a.1,
            duration_ns: a.2,
            cgroup_id: a.3,
            csd_ts_ns: a.4,
            csd_ns: a.5,
            segment: b.0,
            unthrottled: b.1,
            enqueued: b.2,
            runnable: b.3,
            flags: b.4,
        })
}

fn hot_line() -> impl Strategy<Value = CaptureLine> {
    prop_oneof![
        period().prop_map(CaptureLine::Period),
        span().prop_map(CaptureLine::IrqSpan),
        async_record().prop_map(CaptureLine::AsyncUnthrottle),
    ]
}

/// `line` as the hand codec writes it (no newline).
fn hand(line: &CaptureLine) -> Vec<u8> {
    let mut b = BytesMut::new();
    match line {
        CaptureLine::Period(p) => encode_period(&mut b, p),
        CaptureLine::IrqSpan(x) => encode_span(&mut b, x),
        CaptureLine::AsyncUnthrottle(a) => encode_async(&mut b, a),
        other => unreachable!("not a hot line: {other:?}"),
    }
    b.to_vec()
}

/// `line` decoded by the hand codec.
fn unhand(line: &[u8]) -> Option<CaptureLine> {
    decode_period(line)
        .map(CaptureLine::Period)
        .or_else(|| decode_span(line).map(CaptureLine::IrqSpan))
        .or_else(|| decode_async(line).map(CaptureLine::AsyncUnthrottle))
}

/// A whole capture: the header, then `body`.
fn capture(body: &[u8]) -> Vec<u8> {
    let w = CaptureWriter::new(Vec::new(), &header()).unwrap();
    let mut bytes = w.into_inner().unwrap();
    bytes.extend_from_slice(body);
    bytes
}

/// Everything a reader makes of `bytes`: it must end (an error ends it) without a panic, and
/// an error must say where: the file, and for a bad line its number, within the file.
fn read_all(bytes: &[u8]) -> Result<Vec<CaptureLine>, CaptureError> {
    let lines_in_file = bytes.split(|b| *b == b'\n').count() as u64;
    let mut r = CaptureReader::new(bytes, "fuzz.jsonl")?;
    let mut out = Vec::new();
    for l in r.by_ref() {
        match l {
            Ok(l) => out.push(l),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("fuzz.jsonl"), "no file named: {msg}");
                if let CaptureError::BadLine { line, .. } = &e {
                    assert!(
                        *line >= 2 && *line <= lines_in_file,
                        "line {line} of {lines_in_file}: {msg}"
                    );
                    assert!(msg.starts_with(&format!("fuzz.jsonl:{line}: ")), "{msg}");
                }
                return Err(e);
            }
        }
    }
    let (_, stats) = r.finish();
    assert!(stats.lines <= lines_in_file);
    Ok(out)
}

/// A byte-level change to a valid capture.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
    Truncate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Delete),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Flip(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] ^= b | 1;
        }
        Mutation::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
        Mutation::Delete(i) => {
            bytes.remove(i.index(bytes.len()));
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
    }
}

/// Bytes a capture line is made of, so mutations land on digits, quotes and keys.
fn json_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(b"{}[]\":,0123456789-enulltrfaskind_cpu\\\n ".to_vec()),
            any::<u8>(),
        ],
        0..200,
    )
}

proptest! {
    #![proptest_config(config())]

    /// The hand codec writes what serde writes, and reads back what it wrote: the record
    /// itself when its flags vouch for every field, the same line always.
    #[test]
    fn hot_lines_round_trip(line in hot_line()) {
        let bytes = hand(&line);
        prop_assert_eq!(&bytes, &serde_json::to_vec(&line).unwrap());
        let back = unhand(&bytes).expect("the codec reads its own line");
        prop_assert_eq!(hand(&back), bytes.clone());
        let mut with_nl = bytes.clone();
        with_nl.push(b'\n');
        prop_assert_eq!(unhand(&with_nl), Some(back.clone()));
        // And through the reader, as `report` reads a file.
        let got = read_all(&capture(&with_nl)).unwrap();
        prop_assert_eq!(got, vec![back]);
    }

    /// A record whose flags vouch for every field comes back equal.
    #[test]
    fn full_period_records_come_back_equal(p in period()) {
        let p = PeriodRecord { flags: p.flags | u32::MAX, ..p };
        let line = CaptureLine::Period(p.clone());
        prop_assert_eq!(unhand(&hand(&line)), Some(line));
    }

    /// Arbitrary bytes: the hand decoders say None or a record, never panic.
    #[test]
    fn codec_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = unhand(&bytes);
        for prefix in [PERIOD_PREFIX, SPAN_PREFIX, ASYNC_PREFIX] {
            let mut b = prefix.to_vec();
            b.extend_from_slice(&bytes);
            let _ = unhand(&b);
        }
    }

    /// A valid hot line mutated: the codec either reads a record that re-encodes to a valid
    /// line (the mutation kept the shape) or leaves it to serde; never a panic.
    #[test]
    fn codec_takes_mutated_lines(line in hot_line(), ms in prop::collection::vec(mutation(), 1..4)) {
        let mut bytes = hand(&line);
        for m in &ms {
            mutate(&mut bytes, m);
        }
        if let Some(l) = unhand(&bytes) {
            prop_assert!(unhand(&hand(&l)).is_some());
        }
    }

    /// A CPU list of any digits, dashes and commas: a set or None, bounded by MAX_CPUS.
    #[test]
    fn spread_cpu_lists_take_anything(list in "[0-9,\\- ]{0,40}", p in period()) {
        if let Some(s) = CpuSet::parse_list(&list) {
            prop_assert!(s.max().is_none_or(|m| m < crate::model::cpuset::MAX_CPUS));
        }
        let mut b = hand(&CaptureLine::Period(PeriodRecord { spread_cpus: CpuSet::default(), ..p }));
        b.pop();
        b.extend_from_slice(format!(",\"spread_cpus\":\"{list}\"}}").as_bytes());
        let _ = unhand(&b);
        let _ = read_all(&capture(&b));
    }

    /// A whole file of arbitrary bytes, or arbitrary lines after a valid header: an error
    /// naming the file (and the line), or records; never a panic.
    #[test]
    fn reader_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400), body in json_bytes()) {
        let _ = read_all(&bytes);
        let _ = read_all(&capture(&body));
    }

    /// A valid capture (a cgroup line, hot lines, an end) mutated anywhere, its header
    /// included.
    #[test]
    fn reader_takes_mutated_captures(
        hot in prop::collection::vec(hot_line(), 0..6),
        ms in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut w = CaptureWriter::new(Vec::new(), &header()).unwrap();
        for l in super::tests::lines().iter().take(1).chain(&hot).chain(super::tests::lines().last()) {
            w.write_line(l).unwrap();
        }
        let mut bytes = w.into_inner().unwrap();
        let clean = read_all(&bytes).unwrap();
        prop_assert_eq!(clean.len(), hot.len() + 2);
        for m in &ms {
            mutate(&mut bytes, m);
        }
        let _ = read_all(&bytes);
    }
}
