//! Windows against DataFusion's batch SQL over the same events, in order
//! and shuffled within the lateness bound.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use flumen_core::prelude::*;
use flumen_core::testing::{CollectSink, Collected, MemorySource};
use flumen_operators::{WindowConfig, WindowKind};
use proptest::prelude::*;

use crate::common::{query, quiet, sorted_lines};

/// An event: key, a second key, value, time in milliseconds.
pub type Event = (i64, i64, i64, i64);

pub fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new("other", DataType::Int64, false),
        Field::new("value", DataType::Int64, false),
        Field::new("ts_ms", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

pub fn batch(events: &[Event]) -> RecordBatch {
    let column = |f: fn(&Event) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(events.iter().map(f)))
    };
    RecordBatch::try_new(
        events_schema(),
        vec![
            column(|e| e.0),
            column(|e| e.1),
            column(|e| e.2),
            column(|e| e.3),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                events.iter().map(|e| e.3),
            )),
        ],
    )
    .unwrap()
}

pub fn batches(events: &[Event], size: usize) -> Vec<RecordBatch> {
    events.chunks(size.max(1)).map(batch).collect()
}

/// What came out of a window operator.
pub struct Ran {
    pub output: Vec<RecordBatch>,
    pub late: Vec<RecordBatch>,
    pub report: RunReport,
}

/// Runs events (in the order given, 7 to a batch) through `operator` with
/// the watermark trailing the newest event by `disorder`.
pub async fn run_window(
    operator: impl OperatorFactory,
    events: &[Event],
    disorder: Duration,
    parallelism: usize,
) -> Result<Ran> {
    run_window_batched(operator, events, disorder, parallelism, 7).await
}

/// [`run_window`] with `batch_size` events to a batch.
pub async fn run_window_batched(
    operator: impl OperatorFactory,
    events: &[Event],
    disorder: Duration,
    parallelism: usize,
    batch_size: usize,
) -> Result<Ran> {
    let (sink, output) = CollectSink::new();
    let (late_sink, late) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph
        .source(
            "events",
            MemorySource::new(events_schema(), batches(events, batch_size)),
        )
        .event_time(EventTimeConfig::new("ts").with_max_out_of_orderness(disorder));
    graph
        .operator("window", operator, ["events"])
        .parallelism(parallelism);
    graph.sink("out", sink, ["window"]);
    graph.sink("late_out", late_sink, ["window.late"]);
    let report = graph.build()?.run_with(quiet()).await?;
    let collect = |c: &Collected| c.batches();
    Ok(Ran {
        output: collect(&output),
        late: collect(&late),
        report,
    })
}

const AGGREGATES: &[&str] = &[
    "count(*) AS events",
    "sum(value) AS total",
    "min(value) AS smallest",
    "max(value) AS largest",
    "avg(value) AS mean",
    "count(DISTINCT other) AS others",
    "approx_distinct(other) AS approx_others",
    "approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY value) AS median_value",
];

fn window(kind: WindowKind, group_by: &[&str], lateness: Duration) -> WindowConfig {
    WindowConfig {
        window: kind,
        time: Default::default(),
        time_column: None,
        group_by: group_by.iter().map(|s| s.to_string()).collect(),
        aggregates: AGGREGATES.iter().map(|s| s.to_string()).collect(),
        allowed_lateness: lateness,
        top: None,
    }
}

fn aggregates_sql() -> String {
    AGGREGATES.join(", ")
}

/// DataFusion's answer for tumbling (`slide == size`) or hopping windows:
/// every event is copied into each window that holds it.
async fn hopping_oracle(
    events: &[Event],
    size: i64,
    slide: i64,
    group_by: &str,
) -> Vec<RecordBatch> {
    let copies = size / slide;
    let offsets: Vec<String> = (0..copies).map(|k| format!("({k})")).collect();
    let keys = if group_by.is_empty() {
        String::new()
    } else {
        format!(", {group_by}")
    };
    let sql = format!(
        "SELECT to_timestamp_millis(ws) AS window_start, to_timestamp_millis(ws + {size}) AS window_end{keys}, {aggs}
         FROM (SELECT (ts_ms / {slide}) * {slide} - k * {slide} AS ws, e.* FROM events e CROSS JOIN (VALUES {offsets}) AS o(k))
         GROUP BY ws{keys}",
        aggs = aggregates_sql(),
        offsets = offsets.join(", "),
    );
    query(&[("events", vec![batch(events)])], &sql).await
}

/// DataFusion's answer for session windows: a new session where an event
/// comes more than `gap` after the previous one of its key.
async fn session_oracle(events: &[Event], gap: i64) -> Vec<RecordBatch> {
    let sql = format!(
        "WITH ordered AS (
            SELECT *, ts_ms - lag(ts_ms) OVER (PARTITION BY key ORDER BY ts_ms) AS since FROM events),
         numbered AS (
            SELECT *, sum(CASE WHEN since IS NULL OR since > {gap} THEN 1 ELSE 0 END)
                OVER (PARTITION BY key ORDER BY ts_ms ROWS UNBOUNDED PRECEDING) AS session FROM ordered)
         SELECT to_timestamp_millis(min(ts_ms)) AS window_start, to_timestamp_millis(max(ts_ms) + {gap}) AS window_end, key, {aggs}
         FROM numbered GROUP BY key, session",
        aggs = aggregates_sql(),
    );
    query(&[("events", vec![batch(events)])], &sql).await
}

/// Events with times from 1s, in order, a few per millisecond range.
pub fn in_order(raw: &[(i64, i64, i64, i64)]) -> Vec<Event> {
    let mut time = 1_000;
    raw.iter()
        .map(|(key, other, value, step)| {
            time += step;
            (*key, *other, *value, time)
        })
        .collect()
}

/// The same events in an arrival order where none is more than `disorder`
/// behind the newest already arrived.
pub fn shuffled(events: &[Event], jitter: &[u64], disorder: i64) -> Vec<Event> {
    let mut keyed: Vec<(i64, usize, Event)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                e.3 + (jitter[i % jitter.len()] as i64 % disorder.max(1)),
                i,
                *e,
            )
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, _, e)| e).collect()
}

pub fn raw_events() -> impl Strategy<Value = Vec<(i64, i64, i64, i64)>> {
    prop::collection::vec((0i64..4, 0i64..5, -50i64..200, 0i64..40), 1..120)
}

fn state_of(report: &RunReport) -> u64 {
    report.node("window").unwrap().state_rows
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn tumbling_windows_match_datafusion(raw in raw_events(), jitter in prop::collection::vec(0u64..1000, 1..50), parallelism in 1usize..3) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let events = in_order(&raw);
        let expected = runtime.block_on(hopping_oracle(&events, 100, 100, "key"));
        let config = window(WindowKind::Tumble(Duration::from_millis(100)), &["key"], Duration::ZERO);
        // In order, then shuffled within the bound the watermark allows.
        for (arrival, disorder) in [(events.clone(), 0), (shuffled(&events, &jitter, 60), 60)] {
            let ran = runtime.block_on(run_window(config.build().unwrap(), &arrival, Duration::from_millis(disorder as u64), parallelism)).unwrap();
            prop_assert_eq!(sorted_lines(&ran.output), sorted_lines(&expected));
            prop_assert!(ran.late.iter().all(|b| b.num_rows() == 0));
            prop_assert_eq!(state_of(&ran.report), 0);
        }
    }

    #[test]
    fn hopping_windows_match_datafusion(
        raw in raw_events(),
        jitter in prop::collection::vec(0u64..1000, 1..50),
        slide in prop::sample::select(vec![20i64, 25, 50]),
        parallelism in 1usize..3,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let events = in_order(&raw);
        let expected = runtime.block_on(hopping_oracle(&events, 100, slide, "key"));
        let hop = WindowKind::Hop { size: Duration::from_millis(100), slide: Duration::from_millis(slide as u64) };
        // Disorder absorbed by the watermark, then by allowed lateness.
        let by_watermark = window(hop.clone(), &["key"], Duration::ZERO);
        let by_lateness = window(hop, &["key"], Duration::from_millis(45));
        let shuffled = shuffled(&events, &jitter, 45);
        for (config, disorder) in [(by_watermark, 45), (by_lateness, 0)] {
            let ran = runtime.block_on(run_window(config.build().unwrap(), &shuffled, Duration::from_millis(disorder), parallelism)).unwrap();
            prop_assert_eq!(sorted_lines(&ran.output), sorted_lines(&expected));
            prop_assert!(ran.late.iter().all(|b| b.num_rows() == 0));
            prop_assert_eq!(state_of(&ran.report), 0);
        }
    }

    #[test]
    fn session_windows_match_datafusion(raw in raw_events(), jitter in prop::collection::vec(0u64..1000, 1..50)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let events = in_order(&raw);
        let expected = runtime.block_on(session_oracle(&events, 30));
        let config = window(WindowKind::Session { gap: Duration::from_millis(30) }, &["key"], Duration::ZERO);
        for (arrival, disorder) in [(events.clone(), 0), (shuffled(&events, &jitter, 50), 50)] {
            let ran = runtime.block_on(run_window(config.build().unwrap(), &arrival, Duration::from_millis(disorder as u64), 2)).unwrap();
            prop_assert_eq!(sorted_lines(&ran.output), sorted_lines(&expected));
            prop_assert_eq!(state_of(&ran.report), 0);
        }
    }
}

#[tokio::test]
async fn windows_without_keys_aggregate_everything() {
    let events = in_order(&[(1, 1, 5, 10), (2, 2, 7, 30), (3, 1, 9, 80), (1, 3, 1, 50)]);
    let expected = hopping_oracle(&events, 100, 50, "").await;
    let hop = WindowKind::Hop {
        size: Duration::from_millis(100),
        slide: Duration::from_millis(50),
    };
    let ran = run_window(
        window(hop, &[], Duration::ZERO).build().unwrap(),
        &events,
        Duration::ZERO,
        1,
    )
    .await
    .unwrap();
    assert_eq!(sorted_lines(&ran.output), sorted_lines(&expected));
}

#[tokio::test]
async fn rows_later_than_the_lateness_go_to_the_late_output_only() {
    // Two windows of 100ms; the last event belongs to the first window
    // but arrives after the watermark has closed it (lateness 20ms).
    let on_time = vec![
        (1, 0, 10, 1_010),
        (1, 0, 20, 1_050),
        (2, 0, 30, 1_120),
        (1, 0, 40, 1_190),
        (2, 0, 50, 1_300),
    ];
    let too_late = (1, 0, 99, 1_060);
    let mut arrival = on_time.clone();
    arrival.push(too_late);
    let config = window(
        WindowKind::Tumble(Duration::from_millis(100)),
        &["key"],
        Duration::from_millis(20),
    );
    // One event per batch, so the watermark moves between them.
    let ran = run_window_batched(config.build().unwrap(), &arrival, Duration::ZERO, 1, 1)
        .await
        .unwrap();

    let expected = hopping_oracle(&on_time, 100, 100, "key").await;
    assert_eq!(sorted_lines(&ran.output), sorted_lines(&expected));
    assert_eq!(sorted_lines(&ran.late), sorted_lines(&[batch(&[too_late])]));
    assert_eq!(state_of(&ran.report), 0);
}

/// (window start in ms, `total`) of each output row, in order.
fn totals(batches: &[RecordBatch]) -> Vec<(i64, i64)> {
    let mut rows: Vec<(i64, i64)> = batches
        .iter()
        .flat_map(|b| {
            let start = arrow::compute::cast(b.column(0), &DataType::Int64).unwrap();
            let start = start.as_any().downcast_ref::<Int64Array>().unwrap().clone();
            let total = b.column_by_name("total").unwrap();
            let total = total.as_any().downcast_ref::<Int64Array>().unwrap().clone();
            (0..b.num_rows()).map(move |i| (start.value(i), total.value(i)))
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn a_row_late_for_some_hopping_windows_counts_in_those_still_open() {
    // Windows of 100ms every 50ms. When 1070 arrives the watermark is at
    // 1110: [1000, 1100) has closed but [1050, 1150) is open. When 1120
    // arrives the watermark is at 1300 and both its windows have closed.
    let arrival = vec![
        (1, 0, 10, 1_000),
        (1, 0, 20, 1_060),
        (1, 0, 30, 1_110),
        (1, 0, 99, 1_070),
        (1, 0, 40, 1_300),
        (1, 0, 500, 1_120),
    ];
    let mut config = window(
        WindowKind::Hop {
            size: Duration::from_millis(100),
            slide: Duration::from_millis(50),
        },
        &["key"],
        Duration::ZERO,
    );
    config.aggregates = vec!["sum(value) AS total".into()];
    let ran = run_window_batched(config.build().unwrap(), &arrival, Duration::ZERO, 1, 1)
        .await
        .unwrap();
    assert_eq!(
        totals(&ran.output),
        vec![
            (950, 10),
            (1_000, 30),
            (1_050, 20 + 30 + 99),
            (1_100, 30),
            (1_250, 40),
            (1_300, 40)
        ]
    );
    assert_eq!(
        sorted_lines(&ran.late),
        sorted_lines(&[batch(&arrival[5..])])
    );
    assert_eq!(state_of(&ran.report), 0);
}

#[tokio::test]
async fn a_window_without_keys_runs_as_one_instance() {
    let config = window(
        WindowKind::Tumble(Duration::from_millis(100)),
        &[],
        Duration::ZERO,
    );
    let err = run_window(
        config.build().unwrap(),
        &in_order(&[(1, 1, 1, 1)]),
        Duration::ZERO,
        2,
    )
    .await
    .err()
    .expect("a keyless window at parallelism 2 is refused");
    let message = err.to_string();
    assert!(message.contains("`window`: parallelism"), "{message}");
    assert!(message.contains("group_by"), "{message}");
}

#[tokio::test]
async fn a_late_event_bridging_two_sessions_merges_them() {
    // Sessions [1000, 1010) and [1018, 1028) with a 10ms gap; the event at
    // 1009 arrives last but within the lateness, and joins them.
    let arrival = vec![(7, 0, 1, 1_000), (7, 0, 2, 1_018), (7, 0, 3, 1_009)];
    let config = window(
        WindowKind::Session {
            gap: Duration::from_millis(10),
        },
        &["key"],
        Duration::from_millis(50),
    );
    // One event per batch: the watermark is at 1018 when 1009 arrives.
    let ran = run_window_batched(config.build().unwrap(), &arrival, Duration::ZERO, 1, 1)
        .await
        .unwrap();
    let expected = session_oracle(&arrival, 10).await;
    assert_eq!(sorted_lines(&ran.output), sorted_lines(&expected));
    let lines = sorted_lines(&ran.output);
    assert_eq!(lines.len(), 1, "one merged session: {lines:?}");
    assert!(lines[0].contains("1970-01-01T00:00:01 "), "{lines:?}");
    assert!(lines[0].contains("1970-01-01T00:00:01.028"), "{lines:?}");
}

#[test]
fn window_settings_are_checked_with_their_key() {
    let hop = WindowKind::Hop {
        size: Duration::from_secs(1),
        slide: Duration::from_secs(2),
    };
    let err = window(hop, &[], Duration::ZERO)
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid configuration at `window.hop.slide`"),
        "{err}"
    );

    let schema = events_schema();
    let plan_error = |config: WindowConfig| {
        let mut graph = GraphBuilder::new();
        graph
            .source("events", MemorySource::new(schema.clone(), Vec::new()))
            .event_time(EventTimeConfig::new("ts"));
        graph.operator("w", config.build().unwrap(), ["events"]);
        graph.sink("out", CollectSink::new().0, ["w"]);
        graph.build().unwrap_err().to_string()
    };
    let tumble = || WindowKind::Tumble(Duration::from_secs(1));
    let mut bad_key = window(tumble(), &["kee"], Duration::ZERO);
    assert!(plan_error(bad_key.clone()).contains("group_by[0]: column `kee` does not exist"));
    bad_key.group_by.clear();
    bad_key.aggregates = vec!["value + 1".into()];
    assert!(
        plan_error(bad_key.clone())
            .contains("aggregates[0]: `value + 1` is not an aggregate function")
    );
    bad_key.aggregates = vec!["sum(nope)".into()];
    assert!(plan_error(bad_key.clone()).contains("aggregates[0]: column `nope` does not exist"));
    bad_key.aggregates = vec!["count(*)".into()];
    bad_key.time_column = Some("when".into());
    assert!(plan_error(bad_key).contains("time_column: column `when` does not exist"));
}
