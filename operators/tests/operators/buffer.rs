//! The rate-limited buffer: order, batch sizes, a full buffer's policies,
//! and a restore that cuts the log back to the checkpoint. (Its pace is
//! measured in `benches/`, not here.)

use std::path::Path;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use flumen_core::prelude::*;
use flumen_core::testing::{CollectSink, MemorySource};
use flumen_operators::BufferConfig;
use flumen_operators::buffer::{DrainRate, WhenFull};

use crate::common::quiet;
use crate::windows::{Event, batches, events_schema};

fn buffer(dir: Option<&Path>, per_second: u32, batch_size: usize) -> BufferConfig {
    BufferConfig {
        dir: dir.map(Path::to_path_buf),
        max_bytes: 256 << 20,
        max_events: None,
        when_full: WhenFull::Block,
        rate: DrainRate {
            events_per_second: Some(per_second),
            batches_per_second: None,
        },
        batch_size,
        fsync: Default::default(),
        preallocate: true,
    }
}

fn events(count: i64) -> Vec<Event> {
    (0..count).map(|i| (i, 0, 0, 1_000 + i)).collect()
}

fn keys(output: &[RecordBatch]) -> Vec<i64> {
    output
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect()
}

/// Runs `events` (7 to an input batch) through the buffer; returns what
/// came out and what went to the dead letters.
async fn run(config: &BufferConfig, events: &[Event]) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    let (sink, output) = CollectSink::new();
    let (dead_sink, dead) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph.source(
        "events",
        MemorySource::new(events_schema(), batches(events, 7)),
    );
    graph.operator("buffer", config.build().unwrap(), ["events"]);
    graph.sink("out", sink, ["buffer"]);
    graph.dead_letter_sink(dead_sink);
    graph.build().unwrap().run_with(quiet()).await.unwrap();
    (output.batches(), dead.batches())
}

#[tokio::test]
async fn rows_leave_in_order_in_batches_of_at_most_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    for store in [None, Some(dir.path())] {
        let (output, _) = run(&buffer(store, 1_000_000, 16), &events(1000)).await;
        assert_eq!(keys(&output), (0..1000).collect::<Vec<_>>(), "{store:?}");
        assert!(output.iter().all(|b| b.num_rows() <= 16), "{store:?}");
    }
}

/// A buffer before an event-time window: the watermark waits for the rows
/// the buffer holds, so none of them is late when it comes out, and every
/// window counts all its rows.
#[tokio::test]
async fn the_watermark_waits_for_the_rows_a_buffer_holds() {
    use std::time::Duration;

    use arrow::array::Array;
    use flumen_operators::{WindowConfig, WindowKind};

    // 2,000 events 10 ms apart: 20 windows of 100 events, let out at
    // 20,000 a second while the source runs ahead.
    let events: Vec<Event> = (0..2_000).map(|i| (i % 7, 0, i, 1_000 + i * 10)).collect();
    let (sink, output) = CollectSink::new();
    let (late_sink, late) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph
        .source(
            "events",
            MemorySource::new(events_schema(), batches(&events, 50)),
        )
        .event_time(EventTimeConfig::new("ts"));
    graph.operator(
        "buffer",
        buffer(None, 20_000, 50).build().unwrap(),
        ["events"],
    );
    let window = WindowConfig {
        window: WindowKind::Tumble(Duration::from_secs(1)),
        time: Default::default(),
        time_column: None,
        group_by: Vec::new(),
        aggregates: vec!["count(*) AS n".into()],
        allowed_lateness: Duration::ZERO,
        top: None,
    };
    graph.operator("per_second", window.build().unwrap(), ["buffer"]);
    graph.sink("out", sink, ["per_second"]);
    graph.sink("late", late_sink, ["per_second.late"]);
    graph.build().unwrap().run_with(quiet()).await.unwrap();
    let late: usize = late.batches().iter().map(|b| b.num_rows()).sum();
    assert_eq!(late, 0, "rows the buffer held came out late");
    let counts: Vec<i64> = output
        .batches()
        .iter()
        .flat_map(|b| {
            let n = b.column_by_name("n").unwrap().as_primitive::<Int64Type>();
            assert_eq!(n.null_count(), 0);
            n.values().to_vec()
        })
        .collect();
    assert_eq!(counts, vec![100; 20]);
}

#[tokio::test]
async fn a_full_buffer_rejects_or_drops_what_does_not_fit_and_blocks_otherwise() {
    let mut config = buffer(None, 2_000, 10);
    config.max_events = Some(50);
    for when_full in [WhenFull::Reject, WhenFull::DropNewest, WhenFull::Block] {
        config.when_full = when_full;
        let (output, dead) = run(&config, &events(700)).await;
        let out = keys(&output);
        let rejected: usize = dead.iter().map(RecordBatch::num_rows).sum();
        // What comes out is in order, each row once.
        assert!(out.windows(2).all(|w| w[0] < w[1]), "{when_full:?}");
        match when_full {
            WhenFull::Reject => {
                assert!(rejected > 0);
                assert_eq!(out.len() + rejected, 700);
            }
            WhenFull::DropNewest => {
                assert!(out.len() < 700);
                assert_eq!(rejected, 0);
            }
            WhenFull::Block => assert_eq!(out, (0..700).collect::<Vec<_>>()),
        }
    }
}

fn context() -> Context {
    Context {
        node: "buffer".into(),
        instance: InstanceInfo::SINGLE,
        watermark: None,
        checkpointing: true,
    }
}

fn rows(first: i64, count: i64) -> RecordBatch {
    crate::windows::batch(
        &(first..first + count)
            .map(|i| (i, 0, 0, i))
            .collect::<Vec<_>>(),
    )
}

#[tokio::test]
async fn a_restore_drains_from_the_snapshot_and_forgets_input_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = [events_schema()];
    // One batch a second: the first two go at once (the bucket holds
    // two), the rest wait.
    let mut slow = buffer(Some(dir.path()), 1, 10);
    slow.rate = DrainRate {
        events_per_second: None,
        batches_per_second: Some(1),
    };
    let factory = slow.build().unwrap();
    let mut first = factory.create(InstanceInfo::SINGLE, &schemas).unwrap();
    let (mut ctx, mut out) = (context(), Collector::default());
    for batch in [rows(0, 10), rows(10, 10), rows(20, 10)] {
        first
            .process_batch(0, batch, &mut ctx, &mut out)
            .await
            .unwrap();
    }
    let let_out: Vec<RecordBatch> = out.drain().map(|(_, b)| b).collect();
    assert_eq!(keys(&let_out), (0..20).collect::<Vec<_>>());
    let snapshot = first.snapshot().unwrap();
    // Input after the checkpoint, which a restart reads again.
    first
        .process_batch(0, rows(30, 10), &mut ctx, &mut out)
        .await
        .unwrap();
    drop(first);

    let fast = buffer(Some(dir.path()), 1_000_000, 10).build().unwrap();
    let mut restored = fast.create(InstanceInfo::SINGLE, &schemas).unwrap();
    restored.restore(snapshot).unwrap();
    assert_eq!(restored.state_size().rows, 10);
    restored.on_end(&mut ctx, &mut out).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while restored.finishing() {
        assert!(std::time::Instant::now() < deadline, "never drained");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        restored.on_timer(0, &mut ctx, &mut out).await.unwrap();
    }
    let let_out: Vec<RecordBatch> = out.drain().map(|(_, b)| b).collect();
    assert_eq!(keys(&let_out), (20..30).collect::<Vec<_>>());
    assert_eq!(restored.state_size().rows, 0);
}

#[test]
fn buffer_settings_are_checked() {
    let mut config = buffer(None, 10, 10);
    config.rate.batches_per_second = Some(1);
    let err = config.build().unwrap_err().to_string();
    assert!(err.contains("rate") && err.contains("one of"), "{err}");
    let mut config = buffer(None, 10, 0);
    let err = config.build().unwrap_err().to_string();
    assert!(err.contains("batch_size"), "{err}");
    config.batch_size = 1;
    config.rate.events_per_second = Some(0);
    assert!(config.build().unwrap_err().to_string().contains("rate"));
}
