//! Pipelines run as tasks (`tasks: true`) over a Kinesis stream, one per
//! shard, by processes sharing the shards through a lease table (in
//! moto's DynamoDB):
//!
//! - a windowed count keyed by the partition key, over 4 shards and three
//!   processes, one SIGKILLed mid-window: its tasks start elsewhere from
//!   their checkpoints, and every window is emitted once, with
//!   DataFusion's count;
//! - a resharded stream: the parent shard's task ends, and its children's
//!   tasks read on, every record once.

use std::path::{Path, PathBuf};

use super::kinesis::{block_on, client, create_stream, endpoint, put, split_first_shard};
use super::streams::{
    BASE_TS, KillOneOfThree, assert_every_window_once, counts_per_user, follow, kill_one_of_three,
    message, save_logs, spawn, task_pipeline, unique,
};

const SHARDS: i32 = 4;
const USERS: u64 = 40;
const EVENTS: u64 = 8_000;

/// Events `{"id": i, "ts": …}` 5 ms apart, with user `u<i % 40>` as
/// partition key; and the same with the user (and a page, which the
/// answer's reader expects) as JSON lines for DataFusion.
fn clicks(ids: std::ops::Range<u64>, file: &Path) -> Vec<(String, Vec<u8>)> {
    let records: Vec<(String, Vec<u8>)> = ids
        .clone()
        .map(|i| {
            let data = format!("{{\"id\":{i},\"ts\":{}}}", BASE_TS + i * 5);
            (format!("u{}", i % USERS), data.into_bytes())
        })
        .collect();
    let lines: Vec<String> = ids
        .map(|i| {
            format!(
                "{{\"id\":{i},\"user\":\"u{}\",\"page\":\"p\",\"ts\":{}}}",
                i % USERS,
                BASE_TS + i * 5
            )
        })
        .collect();
    std::fs::write(file, lines.join("\n") + "\n").unwrap();
    records
}

/// The pipeline every process runs: one store and one output directory
/// for all, as they would be on object storage. Reads are slow (20
/// records a call, ten calls a second per shard) and a buffer lets 200
/// windows a second out per task, so that the run lasts long enough for
/// shards to change hands mid-window.
fn pipeline(dir: &Path, stream: &str, table: &str) -> PathBuf {
    let moto = std::env::var("FLUMEN_TEST_S3_ENDPOINT").expect(
        "this test needs moto for DynamoDB: run it through scripts/test.sh, which starts it",
    );
    let source = format!(
        r#"    type: kinesis
    stream: {stream}
    aws: {{ endpoint: "{kinesis}", region: us-east-1, access_key_id: test, secret_access_key: test }}
    schema: {{ id: int64, ts: timestamp_ms }}
    metadata: {{ partition_key: user }}
    event_time: {{ column: ts }}
    batch_size: 20
    poll_interval: 100ms
    idle_poll_interval: 100ms
    stop_at: latest
    tasks: true
    leases:
      table: {table}
      failover_time: 3s
      aws: {{ endpoint: "{moto}", region: us-east-1, access_key_id: test, secret_access_key: test }}"#,
        kinesis = endpoint(),
    );
    task_pipeline(dir, "clicks", &source, &counts_per_user(dir))
}

#[test]
fn tasks_follow_their_shards_so_a_killed_process_windows_finish_once_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let stream = unique("clicks");
    let events = dir.path().join("clicks.jsonl");
    let records = clicks(0..EVENTS, &events);
    block_on(async {
        let client = client(&endpoint()).await;
        create_stream(&client, &stream, SHARDS).await;
        put(&client, &stream, &records).await;
    });
    let file = pipeline(dir.path(), &stream, &unique("leases"));

    // A hands shards over to B and C as they ask for them; once A is
    // killed, B and C take its leases when they expire.
    let logs = kill_one_of_three(
        &file,
        KillOneOfThree {
            logs_variable: "KINESIS_TEST_LOGS",
            taken_message: "task asked for by another process; stopping it at a checkpoint",
            handed_message: Some("lease handed over"),
            replacement: false,
        },
    );
    assert!(
        logs[0]
            .iter()
            .any(|line| message(line) == "lease handed over"),
        "A handed no lease over to the processes that asked"
    );

    assert_every_window_once(&dir.path().join("out"), &events, "user");
}

#[test]
fn a_resharded_stream_ends_the_parents_task_and_its_childrens_tasks_read_on() {
    let dir = tempfile::tempdir().unwrap();
    let stream = unique("resharded");
    let events = dir.path().join("clicks.jsonl");
    let records = clicks(0..4_000, &events);
    // Half the records go to the two shards, half (after shard 0 is split
    // in two) to shard 1 and shard 0's children.
    block_on(async {
        let client = client(&endpoint()).await;
        create_stream(&client, &stream, 2).await;
        put(&client, &stream, &records[..2_000]).await;
        split_first_shard(&client, &stream).await;
        put(&client, &stream, &records[2_000..]).await;
    });
    let file = pipeline(dir.path(), &stream, &unique("leases"));
    let mut run = spawn(&file);
    let log = follow(&mut run, |_| false);
    let status = run.wait().unwrap();
    let log = log.join().unwrap();
    save_logs("KINESIS_TEST_LOGS", &[("resharded", &log)]);
    assert!(status.success(), "the run failed");

    // Task 0 (the parent) finished, and recorded its shard's end, before
    // its children (tasks 2 and 3) started.
    let position = |wanted: &str, task: u64| {
        log.iter()
            .position(|line| message(line) == wanted && line["task"].as_u64() == Some(task))
            .unwrap_or_else(|| panic!("no `{wanted}` for task {task}"))
    };
    let parent_ended = position("shard read to its end: its children can be read", 0);
    for child in [2, 3] {
        assert!(
            position("task starting from its latest checkpoint", child) > parent_ended,
            "task {child} started before its parent's shard was recorded read"
        );
    }

    // Every window once, with DataFusion's count.
    // The split falls between two windows (record 2,000 is at 10 s), so
    // no window was open across it.
    assert_every_window_once(&dir.path().join("out"), &events, "user");
}
