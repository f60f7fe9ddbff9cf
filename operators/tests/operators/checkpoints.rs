//! Checkpoints: an operator restored from a snapshot carries on exactly as
//! the instance the snapshot was taken from, wherever the stream is cut.
//!
//! Each test feeds one stream three ways: whole to one instance; and cut
//! in two, the first part to an instance that is then snapshotted, the
//! rest to a new instance restored from the snapshot (and to the first
//! instance too, which the snapshot must not have changed). After the cut
//! all three must, step by step, emit the same rows on every output (late
//! ones included) and forward the same watermark, and end with the same
//! state: none, but for a dedupe, which keeps the keys it saw within its
//! horizon of the last watermark for a run that carries on.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use flumen_core::prelude::*;
use flumen_operators::join::IntervalBounds;
use flumen_operators::window::TimeDomain;
use flumen_operators::{
    DedupeConfig, JoinConfig, JoinType, TopNConfig, WindowConfig, WindowKind, WindowTop,
};
use proptest::prelude::*;

use crate::common::{sorted_lines, through_storage};
use crate::windows::{Event, batch, events_schema};

/// How far the watermark trails the newest event.
const DISORDER: i64 = 20;
/// The allowed lateness of every operator here: an event more than
/// `DISORDER + LATENESS` behind the newest is late.
const LATENESS: Duration = Duration::from_millis(20);

/// One step of a stream.
#[derive(Debug, Clone)]
enum Step {
    /// Rows on an input.
    Rows(usize, Vec<Event>),
    Watermark(EventTime),
}

/// Events as (input, key, other, value, time step, arrival delay).
type Raw = (usize, i64, i64, i64, i64, i64);

fn raw_events() -> impl Strategy<Value = Vec<Raw>> {
    prop::collection::vec(
        (0usize..2, 0i64..3, 0i64..3, 0i64..20, 0i64..25, 0i64..150),
        1..80,
    )
}

/// A stream over `inputs` inputs: events arrive in order of their time
/// plus their delay, `chunk` at a time (one batch per input), and the
/// watermark follows each chunk, `DISORDER` behind the newest event. The
/// delays go past the longest window plus the lateness, so that some
/// events are late for every operator.
fn stream(raw: &[Raw], inputs: usize, chunk: usize) -> Vec<Step> {
    let mut time = 1_000;
    let mut arrivals: Vec<(i64, usize, Event)> = raw
        .iter()
        .map(|&(input, key, other, value, step, delay)| {
            time += step;
            (time + delay, input % inputs, (key, other, value, time))
        })
        .collect();
    arrivals.sort_by_key(|a| a.0);
    let (mut steps, mut newest, mut watermark) = (Vec::new(), EventTime::MIN, EventTime::MIN);
    for chunk in arrivals.chunks(chunk) {
        for input in 0..inputs {
            let rows: Vec<Event> = chunk.iter().filter(|a| a.1 == input).map(|a| a.2).collect();
            if !rows.is_empty() {
                steps.push(Step::Rows(input, rows));
            }
        }
        newest = chunk.iter().map(|a| a.2.3).fold(newest, i64::max);
        if newest - DISORDER > watermark {
            watermark = newest - DISORDER;
            steps.push(Step::Watermark(watermark));
        }
    }
    steps
}

fn context() -> Context {
    Context {
        node: "op".into(),
        instance: InstanceInfo::SINGLE,
        watermark: None,
        checkpointing: true,
    }
}

/// What an operator did at one step: the rows it emitted, as sorted lines
/// by output port, and the watermark it forwarded.
#[derive(Debug, PartialEq)]
struct Did {
    rows: BTreeMap<usize, Vec<String>>,
    watermark: EventTime,
}

/// Feeds `steps` to `operator` (the watermark being `watermark` before
/// them), then ends its input if `end`; returns what it did at each step.
async fn feed(
    operator: &mut dyn Operator,
    steps: &[Step],
    mut watermark: EventTime,
    end: bool,
) -> Vec<Did> {
    let (mut ctx, mut out) = (context(), Collector::default());
    let mut did = Vec::new();
    for step in steps.iter().map(Some).chain(end.then_some(None)) {
        match step {
            Some(Step::Rows(input, rows)) => operator
                .process_batch(*input, batch(rows), &mut ctx, &mut out)
                .await
                .unwrap(),
            Some(Step::Watermark(time)) => {
                (watermark, ctx.watermark) = (*time, Some(*time));
                operator
                    .on_watermark(*time, &mut ctx, &mut out)
                    .await
                    .unwrap();
            }
            None => operator.on_end(&mut ctx, &mut out).await.unwrap(),
        }
        let mut by_port: BTreeMap<usize, Vec<RecordBatch>> = BTreeMap::new();
        for (port, batch) in out.drain() {
            by_port.entry(port).or_default().push(batch);
        }
        did.push(Did {
            rows: by_port
                .iter()
                .map(|(port, batches)| (*port, sorted_lines(batches)))
                .collect(),
            watermark: operator.output_watermark(watermark),
        });
    }
    did
}

/// The watermark once `steps` have passed.
fn watermark_after(steps: &[Step]) -> EventTime {
    steps
        .iter()
        .rev()
        .find_map(|step| match step {
            Step::Watermark(time) => Some(*time),
            Step::Rows(..) => None,
        })
        .unwrap_or(EventTime::MIN)
}

/// Runs `steps` whole and cut before step `cut` (see the module docs), and
/// checks that after the cut, step by step, the restored and the
/// snapshotted instance do what the uninterrupted one did.
async fn check_cut(factory: &dyn OperatorFactory, inputs: usize, steps: &[Step], cut: usize) {
    check_cut_ending(factory, inputs, steps, cut, true).await
}

/// [`check_cut`], for an operator that may end holding state
/// (`empty_at_end` false).
async fn check_cut_ending(
    factory: &dyn OperatorFactory,
    inputs: usize,
    steps: &[Step],
    cut: usize,
    empty_at_end: bool,
) {
    let schemas = vec![events_schema(); inputs];
    let create = || factory.create(InstanceInfo::SINGLE, &schemas).unwrap();
    let (before, after) = steps.split_at(cut);
    let watermark = watermark_after(before);

    let mut whole = create();
    let expected = feed(whole.as_mut(), steps, EventTime::MIN, true).await;

    let mut first = create();
    feed(first.as_mut(), before, EventTime::MIN, false).await;
    let snapshot = through_storage(first.snapshot().unwrap());

    let mut restored = create();
    restored.restore(snapshot).unwrap();
    let did = feed(restored.as_mut(), after, watermark, true).await;
    assert_eq!(did, expected[cut..], "restored, cut at {cut}");
    assert_eq!(restored.state_size(), whole.state_size());
    if empty_at_end {
        assert_eq!(restored.state_size().rows, 0);
    }

    // Taking the snapshot changed nothing in the first instance.
    let did = feed(first.as_mut(), after, watermark, true).await;
    assert_eq!(did, expected[cut..], "snapshotted, cut at {cut}");
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// Aggregates with DataFusion group accumulators of their own.
const NATIVE: &[&str] = &[
    "count(*) AS events",
    "sum(value) AS total",
    "min(value) AS smallest",
    "avg(value) AS mean",
];

/// Aggregates that run through DataFusion's adapter, with partial states
/// of other shapes: lists of distinct values, sketches, digests.
const ADAPTED: &[&str] = &[
    "count(DISTINCT other) AS others",
    "approx_distinct(other) AS approx_others",
    "approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY value) AS median_value",
];

fn window(kind: WindowKind, group_by: &[&str], aggregates: &[&[&str]]) -> WindowConfig {
    WindowConfig {
        window: kind,
        time: TimeDomain::Event,
        time_column: Some("ts".into()),
        group_by: group_by.iter().map(|s| s.to_string()).collect(),
        aggregates: aggregates.concat().into_iter().map(String::from).collect(),
        allowed_lateness: LATENESS,
        top: None,
    }
}

fn top_n(kind: WindowKind, partition_by: &[&str]) -> TopNConfig {
    TopNConfig {
        n: 2,
        // Values tie often: tied rows are all kept.
        order_by: vec!["value DESC".into()],
        partition_by: partition_by.iter().map(|s| s.to_string()).collect(),
        window: Some(kind),
        time_column: Some("ts".into()),
        with_ties: true,
        key: Vec::new(),
        allowed_lateness: LATENESS,
    }
}

fn join(kind: JoinType) -> JoinConfig {
    JoinConfig {
        join_type: kind,
        left_keys: vec!["key".into()],
        right_keys: vec!["key".into()],
        window: None,
        interval: None,
        table: None,
        left_time_column: Some("ts".into()),
        right_time_column: Some("ts".into()),
        allowed_lateness: LATENESS,
        left_prefix: String::new(),
        right_prefix: "r_".into(),
    }
}

fn hop_or_tumble(hop: bool) -> WindowKind {
    match hop {
        true => WindowKind::Hop {
            size: ms(100),
            slide: ms(25),
        },
        false => WindowKind::Tumble(ms(100)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn tumbling_and_hopping_windows_resume_from_a_snapshot(
        raw in raw_events(), chunk in 1usize..8, cut in 0usize..200, hop in any::<bool>(),
    ) {
        let steps = stream(&raw, 1, chunk);
        let factory = window(hop_or_tumble(hop), &["key"], &[NATIVE]).build().unwrap();
        block_on(check_cut(&factory, 1, &steps, cut % (steps.len() + 1)));
    }

    #[test]
    fn a_windows_top_resumes_from_a_snapshot(
        raw in raw_events(), chunk in 1usize..8, cut in 0usize..200, hop in any::<bool>(),
    ) {
        let steps = stream(&raw, 1, chunk);
        let mut config = window(hop_or_tumble(hop), &["key"], &[&["count(*) AS events", "sum(value) AS total"]]);
        config.top = Some(WindowTop { n: 2, order_by: "total DESC".into(), with_ties: true });
        block_on(check_cut(&config.build().unwrap(), 1, &steps, cut % (steps.len() + 1)));
    }

    #[test]
    fn session_windows_resume_from_a_snapshot(
        raw in raw_events(), chunk in 1usize..8, cut in 0usize..200, keyed in any::<bool>(),
    ) {
        let steps = stream(&raw, 1, chunk);
        let keys: &[&str] = if keyed { &["key"] } else { &[] };
        let config = window(WindowKind::Session { gap: ms(15) }, keys, &[NATIVE, ADAPTED]);
        let factory = config.build().unwrap();
        block_on(check_cut(&factory, 1, &steps, cut % (steps.len() + 1)));
    }

    #[test]
    fn top_n_resumes_from_a_snapshot(
        raw in raw_events(),
        chunk in 1usize..8,
        cut in 0usize..200,
        hop in any::<bool>(),
        partitioned in any::<bool>(),
    ) {
        let steps = stream(&raw, 1, chunk);
        let partition: &[&str] = if partitioned { &["key"] } else { &[] };
        let factory = top_n(hop_or_tumble(hop), partition).build().unwrap();
        block_on(check_cut(&factory, 1, &steps, cut % (steps.len() + 1)));
    }

    #[test]
    fn dedupe_resumes_from_a_snapshot(raw in raw_events(), chunk in 1usize..8, cut in 0usize..200) {
        let steps = stream(&raw, 1, chunk);
        let factory = DedupeConfig {
            keys: vec!["key".into(), "other".into()],
            within: ms(30),
            time: TimeDomain::Event,
            time_column: Some("ts".into()),
        }
        .build()
        .unwrap();
        block_on(check_cut_ending(&factory, 1, &steps, cut % (steps.len() + 1), false));
    }

    #[test]
    fn windowed_joins_resume_from_a_snapshot(
        raw in raw_events(),
        chunk in 1usize..8,
        cut in 0usize..200,
        hop in any::<bool>(),
        left_join in any::<bool>(),
    ) {
        let steps = stream(&raw, 2, chunk);
        let mut config = join(if left_join { JoinType::Left } else { JoinType::Inner });
        config.window = Some(hop_or_tumble(hop));
        block_on(check_cut(&config.build().unwrap(), 2, &steps, cut % (steps.len() + 1)));
    }

    #[test]
    fn interval_joins_resume_from_a_snapshot(
        raw in raw_events(),
        chunk in 1usize..8,
        cut in 0usize..200,
        bounds in prop::sample::select(vec![(0i64, 30i64), (-20, 20), (-40, -10)]),
        left_join in any::<bool>(),
    ) {
        let steps = stream(&raw, 2, chunk);
        let mut config = join(if left_join { JoinType::Left } else { JoinType::Inner });
        config.interval = Some(IntervalBounds { lower: bounds.0, upper: bounds.1 });
        block_on(check_cut(&config.build().unwrap(), 2, &steps, cut % (steps.len() + 1)));
    }
}

/// The generated streams do what the tests above need: state at most cut
/// points, and rows on every output, late ones included.
#[tokio::test]
async fn the_streams_reach_every_output() {
    let raw: Vec<Raw> = (0..60)
        .map(|i| {
            (
                i % 2,
                (i % 3) as i64,
                (i % 2) as i64,
                (i * 7 % 20) as i64,
                9,
                (i * 37 % 150) as i64,
            )
        })
        .collect();
    let steps = stream(&raw, 2, 3);
    let mut config = join(JoinType::Left);
    config.window = Some(hop_or_tumble(false));
    let factory = config.build().unwrap();
    let mut operator = factory
        .create(InstanceInfo::SINGLE, &[events_schema(), events_schema()])
        .unwrap();
    let (mut ports, mut held) = (std::collections::BTreeSet::new(), 0);
    for step in &steps {
        for did in feed(operator.as_mut(), std::slice::from_ref(step), 0, false).await {
            ports.extend(did.rows.into_keys());
        }
        held += usize::from(operator.state_size().rows > 0);
    }
    assert_eq!(ports.into_iter().collect::<Vec<_>>(), [0, 1, 2]);
    assert!(
        held > steps.len() / 2,
        "state after {held} of {} steps",
        steps.len()
    );
    for cut in 0..=steps.len() {
        check_cut(&factory, 2, &steps, cut).await;
    }
}

/// A row that would have joined a session already emitted is late, even
/// when the watermark alone would let it in: the session's end must
/// survive a restore.
#[tokio::test]
async fn a_row_for_an_emitted_session_stays_late_after_a_restore() {
    let factory = window(WindowKind::Session { gap: ms(15) }, &["key"], &[NATIVE])
        .build()
        .unwrap();
    let steps = [
        Step::Rows(0, vec![(1, 0, 5, 1_000)]),
        // Closes [1000, 1015): 1015 plus the lateness (20) is before 1040.
        Step::Watermark(1_040),
        // 1010 + 15 + 20 is after the watermark, but 1010 is in the
        // emitted session.
        Step::Rows(0, vec![(1, 0, 7, 1_010)]),
        Step::Watermark(1_100),
    ];
    let mut operator = factory
        .create(InstanceInfo::SINGLE, &[events_schema()])
        .unwrap();
    let did = feed(operator.as_mut(), &steps, EventTime::MIN, true).await;
    assert_eq!(did[2].rows.keys().collect::<Vec<_>>(), [&1], "{did:?}");
    for cut in 0..=steps.len() {
        check_cut(&factory, 1, &steps, cut).await;
    }
}

/// Processing-time sessions place rows by their arrival time, which a
/// snapshot must carry: it cannot be read from the rows again.
#[tokio::test]
async fn processing_time_sessions_keep_their_rows_arrival_times() {
    // A gap long enough that feeding both parts never spans it.
    let mut config = window(WindowKind::Session { gap: ms(1000) }, &["key"], &[NATIVE]);
    config.time = TimeDomain::Processing;
    let factory = config.build().unwrap();
    let create = || {
        factory
            .create(InstanceInfo::SINGLE, &[events_schema()])
            .unwrap()
    };
    let (first, rest) = (
        vec![(1, 0, 5, 10), (2, 0, 7, 20)],
        vec![(1, 0, 1, 30), (3, 0, 2, 40)],
    );

    let (mut original, mut restored) = (create(), create());
    let did = feed(original.as_mut(), &[Step::Rows(0, first)], 0, false).await;
    restored
        .restore(through_storage(original.snapshot().unwrap()))
        .unwrap();
    assert_eq!(restored.next_timer(), original.next_timer());
    let did_then = feed(restored.as_mut(), &[Step::Rows(0, rest)], 0, false).await;
    // Past the sessions' end, as when their timer fires: their rows are
    // no longer "now".
    let due = restored.next_timer().expect("open sessions set a timer");
    while flumen_core::runtime::wall_clock_millis() < due {
        tokio::time::sleep(ms(10)).await;
    }
    let mut out = Collector::default();
    restored
        .on_timer(EventTime::MAX, &mut context(), &mut out)
        .await
        .unwrap();
    let output: Vec<RecordBatch> = out.drain().map(|(_, b)| b).collect();
    let mut totals: Vec<(i64, i64, i64)> = output
        .iter()
        .flat_map(|b| {
            let column = |name: &str| {
                b.column_by_name(name)
                    .unwrap()
                    .as_primitive::<Int64Type>()
                    .clone()
            };
            let (key, events, total) = (column("key"), column("events"), column("total"));
            (0..b.num_rows()).map(move |i| (key.value(i), events.value(i), total.value(i)))
        })
        .collect();
    totals.sort();
    assert_eq!(totals, [(1, 2, 6), (2, 1, 7), (3, 1, 2)]);
    assert!(did.iter().chain(&did_then).all(|d| d.rows.is_empty()));
    assert_eq!(restored.state_size().rows, 0);
}

/// Every aggregate a window offers, those DataFusion runs through its
/// row-accumulator adapter (distinct counts, sketches) among them.
#[tokio::test]
async fn tumbling_and_hopping_windows_resume_with_any_aggregate() {
    let raw: Vec<Raw> = (0..40)
        .map(|i| {
            (
                0,
                (i % 3) as i64,
                (i % 2) as i64,
                (i * 7 % 20) as i64,
                9,
                (i * 37 % 150) as i64,
            )
        })
        .collect();
    let steps = stream(&raw, 1, 3);
    for hop in [false, true] {
        let factory = window(hop_or_tumble(hop), &["key"], &[NATIVE, ADAPTED])
            .build()
            .unwrap();
        for cut in 0..=steps.len() {
            check_cut(&factory, 1, &steps, cut).await;
        }
    }
}
