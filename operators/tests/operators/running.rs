//! Running aggregates: the view their changelog builds equals DataFusion's
//! `GROUP BY` over every prefix of the input, in order and shuffled, and
//! again after a restore from a snapshot.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::record_batch::RecordBatch;
use arrow::util::display::array_value_to_string;
use flumen_core::changelog::{self, Op};
use flumen_core::prelude::*;
use flumen_operators::{AggregateConfig, Emit};
use proptest::prelude::*;

use crate::common::{query, through_storage};
use crate::windows::{Event, batch, events_schema};

const AGGREGATES: &[&str] = &[
    "count(*) AS events",
    "sum(value) AS total",
    "min(value) AS smallest",
    "max(ts) AS newest",
    "avg(value) AS mean",
    "count(value) FILTER (WHERE value > 10) AS big",
    "count(DISTINCT other) AS others",
];

fn config(group_by: &[&str], emit: Emit) -> AggregateConfig {
    AggregateConfig {
        group_by: group_by.iter().map(|s| s.to_string()).collect(),
        aggregates: AGGREGATES.iter().map(|s| s.to_string()).collect(),
        emit,
        idle_ttl: None,
        max_keys: 1_000,
    }
}

fn context() -> Context {
    Context {
        node: "views".into(),
        instance: InstanceInfo::SINGLE,
        watermark: None,
        checkpointing: true,
    }
}

/// A view kept by applying a changelog: key columns (as text) → the row
/// (as text).
#[derive(Debug, Default, Clone, PartialEq)]
struct View {
    rows: BTreeMap<String, String>,
}

impl View {
    fn apply(&mut self, batch: &RecordBatch, keys: usize) {
        let ops = changelog::ops(batch).unwrap().expect("a changelog");
        let columns: Vec<usize> = (0..batch.num_columns())
            .filter(|&c| batch.schema().field(c).name() != changelog::OP)
            .collect();
        for (row, op) in ops.iter().enumerate() {
            let text = |c: &usize| array_value_to_string(batch.column(*c), row).unwrap();
            let key: Vec<String> = columns[..keys].iter().map(text).collect();
            let key = key.join("|");
            match op {
                Op::Upsert => {
                    let line: Vec<String> = columns.iter().map(text).collect();
                    self.rows.insert(key, line.join("|"));
                }
                Op::Delete => {
                    self.rows.remove(&key);
                }
            }
        }
    }

    /// The same text of DataFusion's rows.
    fn of(batches: &[RecordBatch], keys: usize) -> View {
        let mut view = View::default();
        for batch in batches {
            for row in 0..batch.num_rows() {
                let text = |c: usize| array_value_to_string(batch.column(c), row).unwrap();
                let key: Vec<String> = (0..keys).map(text).collect();
                let line: Vec<String> = (0..batch.num_columns()).map(text).collect();
                view.rows.insert(key.join("|"), line.join("|"));
            }
        }
        view
    }
}

/// DataFusion's `GROUP BY` over `events`.
async fn oracle(events: &[Event], group_by: &[&str]) -> View {
    if events.is_empty() {
        return View::default();
    }
    let keys = group_by.join(", ");
    let select = if keys.is_empty() {
        AGGREGATES.join(", ")
    } else {
        format!("{keys}, {}", AGGREGATES.join(", "))
    };
    let group = if keys.is_empty() {
        String::new()
    } else {
        format!("GROUP BY {keys}")
    };
    let sql = format!("SELECT {select} FROM events {group}");
    View::of(
        &query(&[("events", vec![batch(events)])], &sql).await,
        group_by.len(),
    )
}

/// Events (key, other, value, time) from raw draws.
fn events(raw: &[(i64, i64, i64)]) -> Vec<Event> {
    raw.iter()
        .enumerate()
        .map(|(i, &(key, other, value))| (key, other, value, 1_000 + i as i64))
        .collect()
}

/// Feeds `chunks` one batch at a time; after each, checks the view built
/// from everything emitted so far against DataFusion over the prefix.
/// Cut before chunk `cut`: the operator is snapshotted there, and a new
/// one restored from the snapshot carries on.
async fn check(group_by: &[&str], chunks: &[Vec<Event>], cut: usize) {
    let factory = config(group_by, Emit::OnChange).build().unwrap();
    let create = || {
        factory
            .create(InstanceInfo::SINGLE, &[events_schema()])
            .unwrap()
    };
    let mut operator = create();
    let (mut ctx, mut out) = (context(), Collector::default());
    let mut view = View::default();
    let mut prefix = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        if i == cut {
            let snapshot = through_storage(operator.snapshot().unwrap());
            operator = create();
            operator.restore(snapshot).unwrap();
        }
        operator
            .process_batch(0, batch(chunk), &mut ctx, &mut out)
            .await
            .unwrap();
        for (_, emitted) in out.drain() {
            view.apply(&emitted, group_by.len());
        }
        prefix.extend_from_slice(chunk);
        assert_eq!(view, oracle(&prefix, group_by).await, "after chunk {i}");
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_view_equals_group_by_after_every_prefix_and_a_restore(
        raw in prop::collection::vec((0i64..6, 0i64..4, 0i64..25), 1..120),
        chunk in 1usize..20,
        cut in 0usize..10,
        keyed in any::<bool>(),
        shuffle in any::<bool>(),
    ) {
        let mut events = events(&raw);
        if shuffle {
            events.reverse();
            let half = events.len() / 2;
            events.rotate_left(half);
        }
        let chunks: Vec<Vec<Event>> = events.chunks(chunk).map(<[Event]>::to_vec).collect();
        let group_by: &[&str] = if keyed { &["key"] } else { &[] };
        block_on(check(group_by, &chunks, cut.min(chunks.len())));
    }
}

#[test]
fn two_key_columns_make_one_key() {
    let chunks = vec![
        vec![(1, 1, 5, 1), (1, 2, 6, 2), (2, 1, 7, 3)],
        vec![(1, 1, 30, 4), (2, 2, 1, 5)],
    ];
    block_on(check(&["key", "other"], &chunks, 1));
}

#[test]
fn on_checkpoint_each_changed_key_goes_out_once_per_checkpoint() {
    block_on(async {
        let factory = config(&["key"], Emit::OnCheckpoint).build().unwrap();
        let mut operator = factory
            .create(InstanceInfo::SINGLE, &[events_schema()])
            .unwrap();
        let (mut ctx, mut out) = (context(), Collector::default());
        for chunk in [vec![(1, 0, 1, 1), (2, 0, 2, 2)], vec![(1, 0, 3, 3)]] {
            operator
                .process_batch(0, batch(&chunk), &mut ctx, &mut out)
                .await
                .unwrap();
        }
        assert!(
            out.drain().next().is_none(),
            "nothing before the checkpoint"
        );
        operator.on_barrier(1, &mut ctx, &mut out).await.unwrap();
        let emitted: Vec<RecordBatch> = out.drain().map(|(_, b)| b).collect();
        let rows: usize = emitted.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 2, "keys 1 and 2, once each");
        let counts = emitted[0]
            .column_by_name("events")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(counts.values().to_vec(), vec![2, 1]);
        operator.on_barrier(2, &mut ctx, &mut out).await.unwrap();
        assert!(out.drain().next().is_none(), "nothing changed since");
        operator
            .process_batch(0, batch(&[(2, 0, 9, 4)]), &mut ctx, &mut out)
            .await
            .unwrap();
        operator.on_end(&mut ctx, &mut out).await.unwrap();
        let emitted: Vec<RecordBatch> = out.drain().map(|(_, b)| b).collect();
        assert_eq!(
            emitted.iter().map(RecordBatch::num_rows).sum::<usize>(),
            1,
            "key 2 at the end"
        );
    });
}

#[test]
fn idle_keys_are_deleted_and_start_afresh() {
    block_on(async {
        let mut settings = config(&["key"], Emit::OnChange);
        settings.idle_ttl = Some(Duration::from_secs(60));
        let factory = settings.build().unwrap();
        let mut operator = factory
            .create(InstanceInfo::SINGLE, &[events_schema()])
            .unwrap();
        let (mut ctx, mut out) = (context(), Collector::default());
        let mut view = View::default();
        operator
            .process_batch(0, batch(&[(1, 0, 4, 1), (2, 0, 5, 2)]), &mut ctx, &mut out)
            .await
            .unwrap();
        let later = operator.next_timer().expect("an idle check is due");
        // Nothing is idle yet at the first check.
        operator.on_timer(later, &mut ctx, &mut out).await.unwrap();
        for (_, b) in out.drain() {
            view.apply(&b, 1);
        }
        assert_eq!(view.rows.len(), 2);
        // A minute on, both are.
        let minute_on = later + 61_000;
        operator
            .on_timer(minute_on, &mut ctx, &mut out)
            .await
            .unwrap();
        let emitted: Vec<RecordBatch> = out.drain().map(|(_, b)| b).collect();
        for b in &emitted {
            assert_eq!(
                changelog::ops(b).unwrap().unwrap(),
                vec![Op::Delete; b.num_rows()]
            );
            view.apply(b, 1);
        }
        assert!(view.rows.is_empty(), "{view:?}");
        assert_eq!(operator.state_size().rows, 0);
        // Key 1 again: counted from nothing.
        operator
            .process_batch(0, batch(&[(1, 0, 4, 3)]), &mut ctx, &mut out)
            .await
            .unwrap();
        for (_, b) in out.drain() {
            view.apply(&b, 1);
        }
        assert_eq!(view, oracle(&[(1, 0, 4, 3)], &["key"]).await);
    });
}

#[test]
fn past_max_keys_rows_of_new_keys_are_refused_and_said_so() {
    block_on(async {
        let mut settings = config(&["key"], Emit::OnChange);
        settings.max_keys = 2;
        let factory = settings.build().unwrap();
        let mut operator = factory
            .create(InstanceInfo::SINGLE, &[events_schema()])
            .unwrap();
        let (mut ctx, mut out) = (context(), Collector::default());
        let rows = [
            (1, 0, 1, 1),
            (2, 0, 1, 2),
            (3, 0, 1, 3),
            (1, 0, 1, 4),
            (3, 0, 2, 5),
        ];
        operator
            .process_batch(0, batch(&rows), &mut ctx, &mut out)
            .await
            .unwrap();
        let rejected = out.take_rejected();
        assert_eq!(rejected.len(), 2, "both rows of key 3");
        assert!(
            rejected[0].error.to_string().contains("max_keys"),
            "{}",
            rejected[0].error
        );
        let mut view = View::default();
        for (_, b) in out.drain() {
            view.apply(&b, 1);
        }
        let kept = [(1, 0, 1, 1), (2, 0, 1, 2), (1, 0, 1, 4)];
        assert_eq!(view, oracle(&kept, &["key"]).await);
    });
}

#[test]
fn bad_settings_name_the_key() {
    let mut settings = config(&["key"], Emit::OnChange);
    settings.aggregates.clear();
    let error = settings.build().unwrap_err().to_string();
    assert!(error.contains("aggregates"), "{error}");
    let settings = config(&["nope"], Emit::OnChange).build().unwrap();
    let error = settings
        .output_schema(&[events_schema()])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("group_by") && error.contains("nope"),
        "{error}"
    );
}

/// Rows of a changelog: (event, upsert or delete).
type Change = (Event, bool);

fn changelog_batch(changes: &[Change]) -> RecordBatch {
    let events: Vec<Event> = changes.iter().map(|(e, _)| *e).collect();
    let rows = batch(&events);
    let ops: Vec<&str> = changes
        .iter()
        .map(|(_, upsert)| if *upsert { "upsert" } else { "delete" })
        .collect();
    let mut fields: Vec<arrow::datatypes::Field> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(changelog::op_field());
    let mut columns = rows.columns().to_vec();
    columns.push(std::sync::Arc::new(arrow::array::StringArray::from(ops)));
    RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
    )
    .unwrap()
}

/// DataFusion's `rank() <= n` over the table the changelog leaves.
async fn ranked(current: &BTreeMap<i64, Event>, n: usize, partitioned: bool) -> View {
    if current.is_empty() {
        return View::default();
    }
    let events: Vec<Event> = current.values().copied().collect();
    let partition = if partitioned {
        "PARTITION BY other"
    } else {
        ""
    };
    let sql = format!(
        "SELECT key, other, value, ts_ms, ts FROM (SELECT *, rank() OVER ({partition} ORDER BY value DESC) AS r FROM events) WHERE r <= {n}"
    );
    View::of(&query(&[("events", vec![batch(&events)])], &sql).await, 1)
}

async fn check_top(changes: &[Change], chunk: usize, n: usize, partitioned: bool, cut: usize) {
    let config = flumen_operators::TopNConfig {
        n,
        order_by: vec!["value DESC".into()],
        partition_by: if partitioned {
            vec!["other".into()]
        } else {
            vec![]
        },
        window: None,
        time_column: None,
        with_ties: true,
        key: vec!["key".into()],
        allowed_lateness: Duration::ZERO,
    };
    let factory = config.build().unwrap();
    let schema = changelog_batch(&changes[..1]).schema();
    let create = || {
        factory
            .create(InstanceInfo::SINGLE, std::slice::from_ref(&schema))
            .unwrap()
    };
    let mut operator = create();
    let (mut ctx, mut out) = (context(), Collector::default());
    let mut view = View::default();
    let mut current: BTreeMap<i64, Event> = BTreeMap::new();
    for (i, chunk) in changes.chunks(chunk).enumerate() {
        if i == cut {
            let snapshot = through_storage(operator.snapshot().unwrap());
            operator = create();
            operator.restore(snapshot).unwrap();
        }
        operator
            .process_batch(0, changelog_batch(chunk), &mut ctx, &mut out)
            .await
            .unwrap();
        for (_, emitted) in out.drain() {
            view.apply(&emitted, 1);
        }
        for (event, upsert) in chunk {
            if *upsert {
                current.insert(event.0, *event);
            } else {
                current.remove(&event.0);
            }
        }
        assert_eq!(
            view,
            ranked(&current, n, partitioned).await,
            "after chunk {i}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn a_running_top_n_equals_rank_over_the_rows_so_far(
        raw in prop::collection::vec((0i64..12, 0i64..3, 0i64..30, prop::bool::weighted(0.85)), 1..100),
        chunk in 1usize..15,
        n in 1usize..5,
        partitioned in any::<bool>(),
        cut in 0usize..8,
    ) {
        let changes: Vec<Change> = raw
            .iter()
            .enumerate()
            .map(|(i, &(key, other, value, upsert))| ((key, other, value, 1_000 + i as i64), upsert))
            .collect();
        block_on(check_top(&changes, chunk, n, partitioned, cut));
    }
}
