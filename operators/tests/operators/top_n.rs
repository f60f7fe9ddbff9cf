//! Top-N per window and key against DataFusion's `RANK()`.

use std::time::Duration;

use flumen_core::prelude::*;
use flumen_core::testing::{CollectSink, MemorySource};
use flumen_operators::{TopNConfig, WindowConfig, WindowKind, WindowTop};
use proptest::prelude::*;

use crate::common::{query, quiet, sorted_lines};
use crate::windows::{
    Event, batch, batches, events_schema, in_order, raw_events, run_window, shuffled,
};

fn top(
    n: usize,
    order_by: &[&str],
    partition_by: &[&str],
    window: Option<WindowKind>,
) -> TopNConfig {
    TopNConfig {
        n,
        order_by: order_by.iter().map(|s| s.to_string()).collect(),
        partition_by: partition_by.iter().map(|s| s.to_string()).collect(),
        window,
        time_column: None,
        with_ties: true,
        key: Vec::new(),
        allowed_lateness: Duration::ZERO,
    }
}

/// DataFusion: rows ranked within windows of `size`/`slide` (and keys).
async fn ranked_oracle(
    events: &[Event],
    size: i64,
    slide: i64,
    n: usize,
    partition: &str,
    order: &str,
) -> Vec<arrow::record_batch::RecordBatch> {
    let offsets: Vec<String> = (0..size / slide).map(|k| format!("({k})")).collect();
    let partition = if partition.is_empty() {
        String::new()
    } else {
        format!(", {partition}")
    };
    let sql = format!(
        "SELECT to_timestamp_millis(ws) AS window_start, to_timestamp_millis(ws + {size}) AS window_end, key, other, value, ts_ms, ts
         FROM (SELECT *, rank() OVER (PARTITION BY ws{partition} ORDER BY {order}) AS r
               FROM (SELECT (ts_ms / {slide}) * {slide} - k * {slide} AS ws, e.* FROM events e CROSS JOIN (VALUES {offsets}) AS o(k)))
         WHERE r <= {n}",
        offsets = offsets.join(", "),
    );
    query(&[("events", vec![batch(events)])], &sql).await
}

fn events_from(raw: &[(i64, i64, i64, i64)]) -> Vec<Event> {
    let mut time = 1_000;
    raw.iter()
        .map(|(key, other, value, step)| {
            time += step;
            (*key, *other, *value, time)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn top_rows_per_window_and_key_match_datafusion(
        raw in prop::collection::vec((0i64..3, 0i64..4, 0i64..20, 0i64..30), 1..150),
        n in 1usize..4,
        hop in any::<bool>(),
        partitioned in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let events = events_from(&raw);
        let (size, slide) = if hop { (100, 50) } else { (100, 100) };
        let window = if hop {
            WindowKind::Hop { size: Duration::from_millis(100), slide: Duration::from_millis(50) }
        } else {
            WindowKind::Tumble(Duration::from_millis(100))
        };
        let (partition, parallelism) = if partitioned { ("key", 2) } else { ("", 1) };
        let partition_by: Vec<&str> = if partitioned { vec!["key"] } else { vec![] };
        // Values tie often (0..20): ties must all be kept.
        let config = top(n, &["value DESC", "other"], &partition_by, Some(window));
        let ran = runtime.block_on(run_window(config.build().unwrap(), &events, Duration::ZERO, parallelism)).unwrap();
        let expected = runtime.block_on(ranked_oracle(&events, size, slide, n, partition, "value DESC, other"));
        prop_assert_eq!(sorted_lines(&ran.output), sorted_lines(&expected));
        prop_assert_eq!(ran.report.node("window").unwrap().state_rows, 0);
    }
}

/// The aggregates a window's `top` ranks by: a sum over no rows (`big` in
/// a window without values over 100) is null.
const RANKED_AGGREGATES: &[&str] = &[
    "count(*) AS events",
    "sum(value) AS total",
    "sum(value) FILTER (WHERE value > 100) AS big",
];

/// DataFusion: the aggregates per window and key, ranked per window.
async fn window_top_oracle(
    events: &[Event],
    size: i64,
    slide: i64,
    n: usize,
    order: &str,
) -> Vec<arrow::record_batch::RecordBatch> {
    let offsets: Vec<String> = (0..size / slide).map(|k| format!("({k})")).collect();
    let sql = format!(
        "SELECT window_start, window_end, key, events, total, big FROM (
            SELECT *, rank() OVER (PARTITION BY window_start ORDER BY {order}) AS r FROM (
                SELECT to_timestamp_millis(ws) AS window_start, to_timestamp_millis(ws + {size}) AS window_end, key, {aggregates}
                FROM (SELECT (ts_ms / {slide}) * {slide} - k * {slide} AS ws, e.* FROM events e CROSS JOIN (VALUES {offsets}) AS o(k))
                GROUP BY ws, key))
         WHERE r <= {n}",
        aggregates = RANKED_AGGREGATES.join(", "),
        offsets = offsets.join(", "),
    );
    query(&[("events", vec![batch(events)])], &sql).await
}

fn window_with_top(kind: WindowKind, lateness: Duration, n: usize, order: &str) -> WindowConfig {
    WindowConfig {
        window: kind,
        time: Default::default(),
        time_column: None,
        group_by: vec!["key".into()],
        aggregates: RANKED_AGGREGATES.iter().map(|s| s.to_string()).collect(),
        allowed_lateness: lateness,
        top: Some(WindowTop {
            n,
            order_by: order.to_string(),
            with_ties: true,
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn a_windows_top_matches_datafusion(
        raw in raw_events(),
        jitter in prop::collection::vec(0u64..1000, 1..50),
        slide in prop::sample::select(vec![20i64, 25, 50, 100]),
        n in 1usize..4,
        order in prop::sample::select(vec!["events DESC", "total ASC", "big DESC", "big ASC"]),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let events = in_order(&raw);
        let expected = runtime.block_on(window_top_oracle(&events, 100, slide, n, order));
        let kind = if slide == 100 {
            WindowKind::Tumble(Duration::from_millis(100))
        } else {
            WindowKind::Hop { size: Duration::from_millis(100), slide: Duration::from_millis(slide as u64) }
        };
        // In order; shuffled within the watermark's bound; and shuffled
        // within the allowed lateness, so rows reach panes already summed
        // into the running window.
        let arrivals = [
            (window_with_top(kind.clone(), Duration::ZERO, n, order), events.clone(), 0),
            (window_with_top(kind.clone(), Duration::ZERO, n, order), shuffled(&events, &jitter, 45), 45),
            (window_with_top(kind, Duration::from_millis(45), n, order), shuffled(&events, &jitter, 45), 0),
        ];
        for (config, arrival, disorder) in arrivals {
            let ran = runtime.block_on(run_window(config.build().unwrap(), &arrival, Duration::from_millis(disorder), 1)).unwrap();
            prop_assert_eq!(sorted_lines(&ran.output), sorted_lines(&expected));
            prop_assert!(ran.late.iter().all(|b| b.num_rows() == 0));
            prop_assert_eq!(ran.report.node("window").unwrap().state_rows, 0);
        }
    }
}

#[test]
fn a_windows_top_is_checked() {
    let hop = WindowKind::Hop {
        size: Duration::from_millis(100),
        slide: Duration::from_millis(50),
    };
    let mut config = window_with_top(hop.clone(), Duration::ZERO, 0, "events DESC");
    let err = config.build().unwrap_err().to_string();
    assert!(err.contains("top.n"), "{err}");

    let schema = events_schema();
    let schema_error = |config: &WindowConfig| {
        config
            .build()
            .unwrap()
            .output_schema(std::slice::from_ref(&schema))
            .unwrap_err()
            .to_string()
    };
    config = window_with_top(hop.clone(), Duration::ZERO, 1, "value DESC");
    config.time_column = Some("ts".into());
    let err = schema_error(&config);
    assert!(
        err.contains("top.order_by") && err.contains("events, total, big"),
        "{err}"
    );

    config.aggregates.push("avg(value) AS mean".into());
    config.top.as_mut().unwrap().order_by = "mean DESC".into();
    let err = schema_error(&config);
    assert!(
        err.contains("top.order_by") && err.contains("Float64"),
        "{err}"
    );

    config.top.as_mut().unwrap().order_by = "events DESC".into();
    let err = schema_error(&config);
    assert!(err.contains("`mean` is not"), "{err}");
    // Tumbling windows are not merged from panes: any aggregate can ride along.
    config.window = WindowKind::Tumble(Duration::from_millis(100));
    assert!(
        config
            .build()
            .unwrap()
            .output_schema(std::slice::from_ref(&schema))
            .is_ok()
    );

    config.window = WindowKind::Session {
        gap: Duration::from_millis(10),
    };
    let err = config.build().unwrap_err().to_string();
    assert!(err.contains("session"), "{err}");
}

#[tokio::test]
async fn ranks_the_windows_a_window_transform_wrote() {
    // Nexmark q5's shape: counts per key and window, then the busiest key
    // of each window (all of them on a tie).
    let events = events_from(&[
        (1, 0, 0, 5),
        (1, 0, 0, 5),
        (2, 0, 0, 5),
        (2, 0, 0, 90),
        (3, 0, 0, 10),
        (3, 0, 0, 5),
        (3, 0, 0, 5),
        (1, 0, 0, 80),
    ]);
    let counts = WindowConfig {
        window: WindowKind::Tumble(Duration::from_millis(100)),
        time: Default::default(),
        time_column: None,
        group_by: vec!["key".into()],
        aggregates: vec!["count(*) AS events".into()],
        allowed_lateness: Duration::ZERO,
        top: None,
    };
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph
        .source(
            "events",
            MemorySource::new(events_schema(), batches(&events, 3)),
        )
        .event_time(EventTimeConfig::new("ts"));
    graph.operator("counts", counts.build().unwrap(), ["events"]);
    graph.operator(
        "busiest",
        top(1, &["events DESC"], &[], None).build().unwrap(),
        ["counts"],
    );
    graph.sink("out", sink, ["busiest"]);
    let report = graph.build().unwrap().run_with(quiet()).await.unwrap();

    let expected = query(
        &[("events", vec![batch(&events)])],
        "SELECT window_start, window_end, key, events FROM (
            SELECT *, rank() OVER (PARTITION BY window_start ORDER BY events DESC) AS r FROM (
                SELECT to_timestamp_millis((ts_ms / 100) * 100) AS window_start,
                       to_timestamp_millis((ts_ms / 100) * 100 + 100) AS window_end, key, count(*) AS events
                FROM events GROUP BY (ts_ms / 100) * 100, key))
         WHERE r <= 1",
    )
    .await;
    assert_eq!(sorted_lines(&collected.batches()), sorted_lines(&expected));
    assert_eq!(report.node("busiest").unwrap().state_rows, 0);
    assert_eq!(report.node("counts").unwrap().state_rows, 0);
}

#[test]
fn top_n_settings_are_checked() {
    let err = top(0, &["value"], &[], None)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("`n`: must be at least 1"), "{err}");
    let plan_error = |config: TopNConfig| {
        let mut graph = GraphBuilder::new();
        graph
            .source("events", MemorySource::new(events_schema(), Vec::new()))
            .event_time(EventTimeConfig::new("ts"));
        graph.operator("t", config.build().unwrap(), ["events"]);
        graph.sink("out", CollectSink::new().0, ["t"]);
        graph.build().unwrap_err().to_string()
    };
    assert!(
        plan_error(top(1, &["value"], &[], None))
            .contains("no `window_start` and `window_end` columns")
    );
    let tumble = || Some(WindowKind::Tumble(Duration::from_secs(1)));
    assert!(
        plan_error(top(1, &["valu DESC"], &[], tumble()))
            .contains("order_by[0]: column `valu` does not exist")
    );
    assert!(
        plan_error(top(1, &["value upward"], &[], tumble()))
            .contains("expected `column [ASC|DESC] [NULLS FIRST|LAST]`")
    );
}
