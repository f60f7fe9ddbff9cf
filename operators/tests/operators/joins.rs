//! Joins against DataFusion's batch SQL over the same rows.

use std::time::Duration;

use arrow::record_batch::RecordBatch;
use flumen_core::prelude::*;
use flumen_core::testing::{ChannelSource, CollectSink, MemorySource};
use flumen_operators::join::{IntervalBounds, LookupTableConfig};
use flumen_operators::{JoinConfig, JoinType, WindowKind};
use proptest::prelude::*;

use crate::common::{query, quiet, sorted_lines};
use crate::windows::{Event, batch, batches, events_schema};

fn join(kind: JoinType) -> JoinConfig {
    JoinConfig {
        join_type: kind,
        left_keys: vec!["key".into()],
        right_keys: vec!["key".into()],
        window: None,
        interval: None,
        table: None,
        left_time_column: None,
        right_time_column: None,
        allowed_lateness: Duration::ZERO,
        left_prefix: String::new(),
        right_prefix: "r_".into(),
    }
}

struct Joined {
    output: Vec<RecordBatch>,
    late: usize,
    state_rows: u64,
}

/// Runs left and right events (each in its own arrival order) through a
/// join, with the watermark `disorder` behind each side's newest event.
async fn run_join(
    config: JoinConfig,
    left: &[Event],
    right: &[Event],
    disorder: Duration,
    parallelism: usize,
) -> Joined {
    let (sink, collected) = CollectSink::new();
    let (late_sink, late) = CollectSink::new();
    let event_time = EventTimeConfig::new("ts").with_max_out_of_orderness(disorder);
    let mut graph = GraphBuilder::new();
    graph
        .source("left", MemorySource::new(events_schema(), batches(left, 5)))
        .event_time(event_time.clone());
    graph
        .source(
            "right",
            MemorySource::new(events_schema(), batches(right, 3)),
        )
        .event_time(event_time);
    graph
        .operator("join", config.build().unwrap(), ["left", "right"])
        .parallelism(parallelism);
    graph.sink("out", sink, ["join"]);
    graph.sink("late", late_sink, ["join.left_late", "join.right_late"]);
    let report = graph.build().unwrap().run_with(quiet()).await.unwrap();
    Joined {
        output: collected.batches(),
        late: late.rows(),
        state_rows: report.node("join").unwrap().state_rows,
    }
}

const RIGHT_COLUMNS: &str =
    "r.key AS r_key, r.other AS r_other, r.value AS r_value, r.ts_ms AS r_ts_ms, r.ts AS r_ts";

async fn window_oracle(
    left: &[Event],
    right: &[Event],
    size: i64,
    slide: i64,
    kind: JoinType,
) -> Vec<RecordBatch> {
    let offsets: Vec<String> = (0..size / slide).map(|k| format!("({k})")).collect();
    let windowed = |table: &str| {
        format!(
            "(SELECT ({table}.ts_ms / {slide}) * {slide} - k * {slide} AS ws, {table}.* FROM {table} CROSS JOIN (VALUES {}) AS o(k))",
            offsets.join(", ")
        )
    };
    let how = if kind == JoinType::Left {
        "LEFT JOIN"
    } else {
        "JOIN"
    };
    let sql = format!(
        "SELECT to_timestamp_millis(l.ws) AS window_start, to_timestamp_millis(l.ws + {size}) AS window_end,
                l.key, l.other, l.value, l.ts_ms, l.ts, {RIGHT_COLUMNS}
         FROM {} l {how} {} r ON l.key = r.key AND l.ws = r.ws",
        windowed("lt"),
        windowed("rt"),
    );
    query(
        &[("lt", vec![batch(left)]), ("rt", vec![batch(right)])],
        &sql,
    )
    .await
}

async fn interval_oracle(
    left: &[Event],
    right: &[Event],
    lower: i64,
    upper: i64,
    kind: JoinType,
) -> Vec<RecordBatch> {
    let how = if kind == JoinType::Left {
        "LEFT JOIN"
    } else {
        "JOIN"
    };
    let sql = format!(
        "SELECT l.key, l.other, l.value, l.ts_ms, l.ts, {RIGHT_COLUMNS}
         FROM lt l {how} rt r ON l.key = r.key AND r.ts_ms BETWEEN l.ts_ms + ({lower}) AND l.ts_ms + ({upper})"
    );
    query(
        &[("lt", vec![batch(left)]), ("rt", vec![batch(right)])],
        &sql,
    )
    .await
}

fn timeline(raw: &[(i64, i64, i64, i64)]) -> Vec<Event> {
    let mut time = 1_000;
    raw.iter()
        .map(|(key, other, value, step)| {
            time += step;
            (*key, *other, *value, time)
        })
        .collect()
}

/// Arrival order with each event at most `disorder` behind the newest.
fn jumbled(events: &[Event], jitter: &[u64], disorder: i64) -> Vec<Event> {
    let mut keyed: Vec<(i64, usize, Event)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                e.3 + jitter[i % jitter.len()] as i64 % disorder.max(1),
                i,
                *e,
            )
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, _, e)| e).collect()
}

fn side() -> impl Strategy<Value = Vec<(i64, i64, i64, i64)>> {
    prop::collection::vec((0i64..4, 0i64..3, 0i64..100, 0i64..25), 0..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn windowed_joins_match_datafusion(
        left in side(),
        right in side(),
        jitter in prop::collection::vec(0u64..100, 1..20),
        left_join in any::<bool>(),
        hop in any::<bool>(),
        parallelism in 1usize..3,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (left, right) = (timeline(&left), timeline(&right));
        let kind = if left_join { JoinType::Left } else { JoinType::Inner };
        let (size, slide) = if hop { (100, 50) } else { (100, 100) };
        let mut config = join(kind);
        config.window = Some(if hop {
            WindowKind::Hop { size: Duration::from_millis(100), slide: Duration::from_millis(50) }
        } else {
            WindowKind::Tumble(Duration::from_millis(100))
        });
        let expected = runtime.block_on(window_oracle(&left, &right, size, slide, kind));
        let (left, right) = (jumbled(&left, &jitter, 40), jumbled(&right, &jitter, 40));
        let joined = runtime.block_on(run_join(config, &left, &right, Duration::from_millis(40), parallelism));
        prop_assert_eq!(sorted_lines(&joined.output), sorted_lines(&expected));
        prop_assert_eq!(joined.late, 0);
        prop_assert_eq!(joined.state_rows, 0);
    }

    #[test]
    fn interval_joins_match_datafusion(
        left in side(),
        right in side(),
        jitter in prop::collection::vec(0u64..100, 1..20),
        left_join in any::<bool>(),
        bounds in prop::sample::select(vec![(0i64, 50i64), (-30, 30), (-60, -10)]),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (left, right) = (timeline(&left), timeline(&right));
        let kind = if left_join { JoinType::Left } else { JoinType::Inner };
        let mut config = join(kind);
        config.interval = Some(IntervalBounds { lower: bounds.0, upper: bounds.1 });
        // Disorder absorbed by the allowed lateness this time.
        config.allowed_lateness = Duration::from_millis(40);
        let expected = runtime.block_on(interval_oracle(&left, &right, bounds.0, bounds.1, kind));
        let (left, right) = (jumbled(&left, &jitter, 40), jumbled(&right, &jitter, 40));
        let joined = runtime.block_on(run_join(config, &left, &right, Duration::ZERO, 2));
        prop_assert_eq!(sorted_lines(&joined.output), sorted_lines(&expected));
        prop_assert_eq!(joined.late, 0);
        prop_assert_eq!(joined.state_rows, 0);
    }
}

fn table_file(dir: &tempfile::TempDir, rows: &str) -> String {
    let path = dir.path().join("labels.csv");
    std::fs::write(&path, format!("other,label\n{rows}")).unwrap();
    path.to_str().unwrap().to_string()
}

fn lookup(path: &str, kind: JoinType, refresh: Option<Duration>) -> JoinConfig {
    let mut config = join(kind);
    config.left_keys = vec!["other".into()];
    config.right_keys = vec!["other".into()];
    config.right_prefix = "t_".into();
    config.table = Some(LookupTableConfig {
        path: path.to_string(),
        format: None,
        schema: Some([("other", "int64"), ("label", "string")].into()),
        csv: Default::default(),
        storage: Default::default(),
        refresh_interval: refresh,
    });
    config
}

#[tokio::test]
async fn lookup_joins_match_datafusion() {
    let dir = tempfile::tempdir().unwrap();
    let path = table_file(&dir, "0,zero\n1,one\n1,uno\n");
    let events = timeline(&[(1, 0, 5, 1), (2, 1, 6, 1), (3, 2, 7, 1), (1, 1, 8, 1)]);
    let table =
        arrow::csv::ReaderBuilder::new(std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("other", arrow::datatypes::DataType::Int64, true),
            arrow::datatypes::Field::new("label", arrow::datatypes::DataType::Utf8, true),
        ])))
        .with_header(true)
        .build(std::fs::File::open(&path).unwrap())
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    for (kind, how) in [(JoinType::Inner, "JOIN"), (JoinType::Left, "LEFT JOIN")] {
        let (sink, collected) = CollectSink::new();
        let mut graph = GraphBuilder::new();
        graph.source(
            "events",
            MemorySource::new(events_schema(), batches(&events, 2)),
        );
        graph
            .operator(
                "enrich",
                lookup(&path, kind, None)
                    .build_in(&flumen_sources::COMPONENTS)
                    .unwrap(),
                ["events"],
            )
            .parallelism(2);
        graph.sink("out", sink, ["enrich"]);
        let report = graph.build().unwrap().run_with(quiet()).await.unwrap();
        let expected = query(
            &[("events", vec![batch(&events)]), ("labels", table.clone())],
            &format!("SELECT e.*, t.other AS t_other, t.label AS t_label FROM events e {how} labels t ON e.other = t.other"),
        )
        .await;
        assert_eq!(
            sorted_lines(&collected.batches()),
            sorted_lines(&expected),
            "{how}"
        );
        assert_eq!(report.node("enrich").unwrap().state_rows, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lookup_table_is_read_again_on_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = table_file(&dir, "7,before\n");
    let (source, events) = ChannelSource::new(events_schema());
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph.source("events", source);
    graph.operator(
        "enrich",
        lookup(&path, JoinType::Inner, Some(Duration::from_millis(1)))
            .build_in(&flumen_sources::COMPONENTS)
            .unwrap(),
        ["events"],
    );
    graph.sink("out", sink, ["enrich"]);
    let pipeline = graph.build().unwrap();
    let run = tokio::spawn(pipeline.run_with(quiet()));

    events.send(batch(&[(1, 7, 1, 1_000)])).await.unwrap();
    collected.wait_until(|c| c.rows() == 1).await;
    assert!(sorted_lines(&collected.batches())[0].contains("before"));
    table_file(&dir, "7,after\n");
    // Each event's row shows the table as it was when it came through; the
    // new label must show up within a bounded number of them.
    let mut refreshed = false;
    for sent in 2..=20_000 {
        events.send(batch(&[(1, 7, 1, 1_000)])).await.unwrap();
        collected.wait_until(|c| c.rows() == sent).await;
        if sorted_lines(&collected.batches())
            .iter()
            .any(|l| l.contains("after"))
        {
            refreshed = true;
            break;
        }
    }
    assert!(refreshed, "the table was not read again");
    drop(events);
    run.await.unwrap().unwrap();
}

#[test]
fn join_settings_are_checked_with_their_key() {
    let err = join(JoinType::Inner).build().unwrap_err().to_string();
    assert!(err.contains("set exactly one of `window`"), "{err}");
    let mut bad = join(JoinType::Inner);
    bad.interval = Some(IntervalBounds {
        lower: 10,
        upper: 0,
    });
    assert!(
        bad.build()
            .unwrap_err()
            .to_string()
            .contains("`interval.lower`: is after `upper`")
    );

    let plan_error = |config: JoinConfig| {
        let mut graph = GraphBuilder::new();
        let time = EventTimeConfig::new("ts");
        graph
            .source("l", MemorySource::new(events_schema(), Vec::new()))
            .event_time(time.clone());
        graph
            .source("r", MemorySource::new(events_schema(), Vec::new()))
            .event_time(time);
        graph.operator("j", config.build().unwrap(), ["l", "r"]);
        graph.sink("out", CollectSink::new().0, ["j"]);
        graph.build().unwrap_err().to_string()
    };
    let mut clash = join(JoinType::Inner);
    clash.window = Some(WindowKind::Tumble(Duration::from_secs(1)));
    clash.right_prefix = String::new();
    assert!(plan_error(clash.clone()).contains("column `key` would appear twice in the output"));
    clash.right_prefix = "r_".into();
    clash.right_keys = vec!["ts".into()];
    assert!(
        plan_error(clash)
            .contains("right_keys[0]: `ts` is Timestamp(ms), but the left key `key` is Int64")
    );
}
