//! What checkpoints cost: q5 with checkpoints at several intervals against
//! none (same events, same answer), and the time and size of one
//! checkpoint of a window holding a million keys.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, TimeUnit};
use flumen::operators::{WindowConfig, WindowKind};
use flumen::prelude::*;
use flumen_core::checkpoint::{
    CheckpointSettings, CheckpointStore, InstanceRecord, Manifest, NodeRecord, StartFrom,
};
use flumen_core::storage::StorageOptions;

use super::stateful::{Events, q5_graph, q5_rows};
use super::{RUNS, millions};

const SECOND: i64 = 1000;

pub fn run(runtime: &tokio::runtime::Runtime, events: &Events) {
    println!("checkpoint cost: q5 (10s/2s windows) at parallelism 1");
    println!(
        "{:<22} {:>16} {:>8} {:>12}",
        "checkpoints", "engine p=1 ev/s", "ratio", "taken"
    );
    let none = q5_with_checkpoints(runtime, events, None);
    println!(
        "{:<22} {:>16} {:>8} {:>12}",
        "none",
        millions(none.0),
        "1.00x",
        "-"
    );
    for interval in [
        Duration::from_secs(1),
        Duration::from_millis(100),
        Duration::from_millis(20),
    ] {
        let (rate, taken) = q5_with_checkpoints(runtime, events, Some(interval));
        println!(
            "{:<22} {:>16} {:>7.2}x {:>12}",
            format!("every {}", humantime_like(interval)),
            millions(rate),
            rate / none.0,
            taken
        );
    }
    println!();
    million_keys(runtime);
    println!();
}

fn humantime_like(interval: Duration) -> String {
    if interval.as_millis().is_multiple_of(1000) {
        format!("{} s", interval.as_secs())
    } else {
        format!("{} ms", interval.as_millis())
    }
}

/// The best rate of several q5 runs, and how many checkpoints the last one
/// took (its final one included).
fn q5_with_checkpoints(
    runtime: &tokio::runtime::Runtime,
    events: &Events,
    interval: Option<Duration>,
) -> (f64, usize) {
    let expected = {
        let (graph, collected) = q5_graph(events, 10 * SECOND, 2 * SECOND, 1);
        run_pipeline(runtime, graph, None);
        q5_rows(collected.batches())
    };
    let mut best = 0.0f64;
    let mut taken = 0;
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = CheckpointStore::open(
            dir.path().to_str().expect("utf-8 path"),
            &Default::default(),
        )
        .expect("local store");
        let settings = interval.map(|interval| CheckpointSettings {
            store: store.clone(),
            interval,
            keep: usize::MAX,
            start: StartFrom::Fresh,
            allow_non_restored_state: false,
        });
        let (graph, collected) = q5_graph(events, 10 * SECOND, 2 * SECOND, 1);
        let started = Instant::now();
        run_pipeline(runtime, graph, settings);
        best = best.max(events.count as f64 / started.elapsed().as_secs_f64());
        assert_eq!(
            q5_rows(collected.batches()),
            expected,
            "checkpoints changed q5's answer"
        );
        if interval.is_some() {
            taken = runtime.block_on(store.list()).expect("listing").len();
        }
    }
    (best, taken)
}

fn run_pipeline(
    runtime: &tokio::runtime::Runtime,
    graph: GraphBuilder,
    checkpoints: Option<CheckpointSettings>,
) {
    let options = RunOptions {
        handle_signals: false,
        checkpoints,
        ..RunOptions::default()
    };
    runtime
        .block_on(graph.build().expect("valid pipeline").run_with(options))
        .expect("run");
}

/// A tumbling window holding a million keys in one open pane: how long a
/// snapshot, writing it to a local store, and reading it back and restoring
/// take, and how large it is.
fn million_keys(runtime: &tokio::runtime::Runtime) {
    const KEYS: i64 = 1_000_000;
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new("value", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let config = WindowConfig {
        window: WindowKind::Tumble(Duration::from_secs(3600)),
        time: Default::default(),
        time_column: Some("ts".into()),
        group_by: vec!["key".into()],
        aggregates: vec!["count(*) AS n".into(), "sum(value) AS total".into()],
        allowed_lateness: Duration::ZERO,
        top: None,
    };
    let factory = config.build().expect("window");
    let new_instance = || {
        factory
            .create(InstanceInfo::SINGLE, std::slice::from_ref(&schema))
            .expect("instance")
    };
    let mut window = new_instance();
    let mut ctx = Context {
        node: Arc::from("window"),
        instance: InstanceInfo::SINGLE,
        watermark: None,
        checkpointing: true,
    };
    let mut out = Collector::default();
    runtime.block_on(async {
        for start in (0..KEYS).step_by(8192) {
            let keys: Vec<i64> = (start..(start + 8192).min(KEYS)).collect();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(keys.clone())),
                    Arc::new(Int64Array::from(keys.clone())),
                    Arc::new(TimestampMillisecondArray::from(vec![1_000; keys.len()])),
                ],
            )
            .expect("batch");
            window
                .process_batch(0, batch, &mut ctx, &mut out)
                .await
                .expect("window accepts");
        }
    });
    let rows = window.state_size().rows;

    let started = Instant::now();
    let snapshot = window.snapshot().expect("snapshot");
    let snapshot_time = started.elapsed();

    // Written and read back as a run stores it (by key group), and as a
    // task moving to another process hands it over: the old owner writes
    // its last checkpoint, the new one reads it and restores.
    let hand_over = |store: &CheckpointStore| {
        let mut manifest = Manifest {
            id: 1,
            created_at_ms: 0,
            finished: false,
            max_parallelism: Some(128),
            nodes: BTreeMap::from([(
                "window".to_string(),
                NodeRecord {
                    kind: "operator".into(),
                    instances: vec![InstanceRecord::default()],
                    state_keys: vec![Some(vec!["key".into()])],
                    state_version: Some(1),
                    state: None,
                },
            )]),
        };
        let started = Instant::now();
        runtime
            .block_on(store.write(&mut manifest, &[("window".into(), 0, snapshot.clone())]))
            .expect("write");
        let write_time = started.elapsed();
        let started = Instant::now();
        let mut loaded = runtime.block_on(store.load(1)).expect("load");
        let mut restored = new_instance();
        for snapshot in loaded
            .snapshots
            .remove(&("window".to_string(), 0))
            .expect("state")
        {
            restored.restore(snapshot).expect("restore");
        }
        let restore_time = started.elapsed();
        assert_eq!(restored.state_size().rows, rows);
        (write_time, restore_time, manifest.state_bytes())
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let local = CheckpointStore::open(
        dir.path().to_str().expect("utf-8 path"),
        &Default::default(),
    )
    .expect("local store");
    let (write_time, restore_time, bytes) = hand_over(&local);

    println!("checkpoint of a tumbling window holding {rows} keys (count and sum per key)");
    println!(
        "  snapshot (state out of the accumulators)  {:>8.1} ms",
        ms(snapshot_time)
    );
    println!(
        "  write to a local store (Arrow IPC)        {:>8.1} ms",
        ms(write_time)
    );
    println!(
        "  read back and restore into a new instance {:>8.1} ms",
        ms(restore_time)
    );
    println!(
        "  size                                      {:>8.1} MB ({} bytes per key)",
        bytes as f64 / 1e6,
        bytes / rows.max(1)
    );
    // The local S3-API server, when one runs (scripts/services.sh): a
    // task's state moving between processes through object storage.
    if let Ok(endpoint) = std::env::var("FLUMEN_TEST_S3_ENDPOINT") {
        let options = StorageOptions {
            endpoint: Some(endpoint),
            region: Some("us-east-1".into()),
            access_key_id: Some("flumen".into()),
            secret_access_key: Some("flumen".into()),
            ..StorageOptions::default()
        };
        let location = format!("s3://flumen-test/bench-tasks-{}", std::process::id());
        let s3 = CheckpointStore::open(&location, &options).expect("S3 store");
        let (write_time, restore_time, _) = hand_over(&s3);
        println!(
            "a task holding those keys moving to another process, through the local S3 server"
        );
        println!(
            "  old owner: snapshot and write             {:>8.1} ms",
            ms(snapshot_time + write_time)
        );
        println!(
            "  new owner: read and restore               {:>8.1} ms",
            ms(restore_time)
        );
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
