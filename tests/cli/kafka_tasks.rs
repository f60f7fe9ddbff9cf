//! Pipelines run as tasks (`tasks: true`) by several processes over an
//! 8-partition topic keyed by user.
//!
//! - A windowed count keyed by the message key. One process is SIGKILLed
//!   mid-window and a replacement joins; the tasks it held start
//!   elsewhere from their checkpoints.
//! - A windowed count keyed by the page, which is not the message key:
//!   the rows go through a repartition topic between two stages of tasks.
//!
//! Every window must be emitted once, with DataFusion's count.

use std::path::Path;

use super::kafka::{brokers, create_topic, produce, topic_size};
use super::streams::{
    BASE_TS, KillOneOfThree, assert_every_window_once, counts_per_user, follow, kill_one_of_three,
    message, save_logs, spawn, task_pipeline, unique,
};

const PARTITIONS: usize = 8;
const USERS: u64 = 40;
const EVENTS: u64 = 40_000;
const PAGES: u64 = 13;

/// Events `{"id": i, "ts": …, "page": …}` 5 ms apart, keyed by user
/// `u<i % 40>`; a user's events all go to partition `user % 8`, as a
/// keyed producer sends them. Pages (13 of them) are spread over users
/// and partitions. Also written, with the user, to a JSON lines file for
/// DataFusion.
fn produce_clicks(brokers: &str, topic: &str, file: &Path) {
    let page = |i: u64| format!("p{}", (i * 7) % PAGES);
    let events: Vec<(u64, String, String)> = (0..EVENTS)
        .map(|i| {
            let user = format!("u{}", i % USERS);
            let value = format!(
                "{{\"id\":{i},\"ts\":{},\"page\":\"{}\"}}",
                BASE_TS + i * 5,
                page(i)
            );
            (i, user, value)
        })
        .collect();
    let lines: Vec<String> = events
        .iter()
        .map(|(i, user, _)| {
            format!(
                "{{\"id\":{i},\"user\":\"{user}\",\"page\":\"{}\",\"ts\":{}}}",
                page(*i),
                BASE_TS + i * 5
            )
        })
        .collect();
    std::fs::write(file, lines.join("\n") + "\n").unwrap();
    // One message per record batch: tasks resume reading at any offset
    // (see `produce`).
    produce(
        brokers,
        topic,
        events.iter().map(|(i, user, value)| {
            (
                ((i % USERS) as usize % PARTITIONS) as i32,
                user.clone(),
                value.as_bytes(),
            )
        }),
        PARTITIONS,
        1,
    );
}

/// The pipeline every process runs: one store and one output directory
/// for all, as they would be on object storage. A buffer lets 200 windows a
/// second out per task (40 s of events), so that the run lasts long enough
/// to be interrupted mid-window; small batches keep few rows queued before
/// it, so that a checkpoint barrier is not held up behind them for long.
fn pipeline(dir: &Path, topic: &str, group: &str, brokers: &str) -> std::path::PathBuf {
    let source = format!(
        r#"    type: kafka
    brokers: {brokers}
    topics: [{topic}]
    group: {group}
    tasks: true
    schema: {{ id: int64, ts: timestamp_ms }}
    metadata: {{ key: user }}
    batch_size: 20
    stop_at: latest
    event_time: {{ column: ts }}
    properties:
      session.timeout.ms: "6000"
      heartbeat.interval.ms: "500"
      max.poll.interval.ms: "10000""#
    );
    task_pipeline(dir, "clicks", &source, &counts_per_user(dir))
}

#[test]
fn tasks_follow_their_partitions_so_a_killed_process_windows_finish_once_elsewhere() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("clicks");
    create_topic(&brokers, &topic, PARTITIONS as u32);
    let events = dir.path().join("clicks.jsonl");
    produce_clicks(&brokers, &topic, &events);
    assert_eq!(topic_size(&brokers, &topic), EVENTS as i64);
    let file = pipeline(dir.path(), &topic, &unique("counts"), &brokers);

    // A hands partitions over to B and C as they join; once A is killed,
    // a replacement D joins, and its tasks move to B, C and D.
    kill_one_of_three(
        &file,
        KillOneOfThree {
            logs_variable: "KAFKA_TEST_LOGS",
            taken_message: "tasks revoked; stopping them at a checkpoint",
            handed_message: None,
            replacement: true,
        },
    );
    assert_every_window_once(&dir.path().join("out"), &events, "user");
}

/// Counts per page, which is not the message key: the rows go keyed by
/// page through a 4-partition repartition topic, whose partitions are
/// the tasks of the second stage.
fn repartitioned_pipeline(
    dir: &Path,
    topic: &str,
    through: &str,
    group: &str,
    brokers: &str,
) -> std::path::PathBuf {
    let source = format!(
        r#"    type: kafka
    brokers: {brokers}
    topics: [{topic}]
    group: {group}
    tasks: true
    schema: {{ id: int64, ts: timestamp_ms, page: string }}
    batch_size: 20
    stop_at: latest
    event_time: {{ column: ts }}
    properties:
      session.timeout.ms: "6000"
      heartbeat.interval.ms: "500"
      max.poll.interval.ms: "10000""#
    );
    let rest = format!(
        r#"transforms:
  per_page:
    type: window
    inputs: [clicks]
    partitioning: {{ hash: [page] }}
    repartition: {{ kafka: {{ topic: {through}, partitions: 4, replication: 1 }} }}
    window: {{ tumble: 1s }}
    group_by: [page]
    aggregates: ["count(*) AS clicks", "sum(id) AS id_sum"]
  paced:
    type: buffer
    inputs: [per_page]
    rate: {{ events_per_second: 100 }}
    max_events: 50
sinks:
  counts:
    type: file
    inputs: [paced]
    path: {dir}/out
"#,
        dir = dir.display(),
    );
    task_pipeline(dir, "pages", &source, &rest)
}

/// The topic of clicks, the repartition topic's name, and the pipeline
/// counting clicks per page through it.
fn clicks_by_page(dir: &Path, brokers: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let topic = unique("clicks");
    create_topic(brokers, &topic, PARTITIONS as u32);
    let events = dir.join("clicks.jsonl");
    produce_clicks(brokers, &topic, &events);
    let through = unique("clicks-by-page");
    let file = repartitioned_pipeline(dir, &topic, &through, &unique("pages"), brokers);
    (events, file)
}

/// Whether a log line is about a task of the second stage.
fn in_second_stage(line: &serde_json::Value) -> bool {
    line["spans"][0]["stage"].as_u64() == Some(2)
}

#[test]
fn grouped_by_a_field_that_is_not_the_key_the_rows_meet_through_a_repartition_topic() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let (events, file) = clicks_by_page(dir.path(), &brokers);

    // A starts alone; B joins once A runs tasks, and takes some of both
    // stages' tasks over.
    let mut a = spawn(&file);
    let mut b = None;
    let a_log = follow(&mut a, |line| {
        if message(line) == "tasks assigned" {
            b = Some(spawn(&file));
        }
        b.is_some()
    });
    let mut b = b.expect("A was assigned tasks");
    let b_log = follow(&mut b, |_| false);
    let (a_status, b_status) = (a.wait().unwrap(), b.wait().unwrap());
    let logs = [("A", a_log.join().unwrap()), ("B", b_log.join().unwrap())];
    let named: Vec<(&str, &[serde_json::Value])> =
        logs.iter().map(|(n, l)| (*n, l.as_slice())).collect();
    save_logs("KAFKA_TEST_LOGS", &named);
    assert!(a_status.success() && b_status.success(), "a process failed");

    for (name, log) in &logs {
        let ran = log.iter().any(|line| {
            message(line) == "task starting from its latest checkpoint" && in_second_stage(line)
        });
        assert!(ran, "{name} ran no task of the second stage");
    }
    assert_every_window_once(&dir.path().join("out"), &events, "page");
}

#[test]
fn a_repartitioned_pipeline_killed_mid_write_counts_each_row_once_after_restart() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let (events, file) = clicks_by_page(dir.path(), &brokers);

    // A is SIGKILLed while the first stage is still writing to the
    // repartition topic, after some of its checkpoints.
    let mut a = spawn(&file);
    let mut first_stage_checkpoints = 0;
    let a_log = follow(&mut a, |line| {
        if message(line) == "checkpoint complete" && !in_second_stage(line) {
            first_stage_checkpoints += 1;
        }
        first_stage_checkpoints >= 24
    });
    a.kill().unwrap();
    assert!(
        !a.wait().unwrap().success(),
        "A finished before it was killed"
    );
    let a_log = a_log.join().unwrap();
    let first_stage_finished = a_log
        .iter()
        .any(|line| message(line) == "task finished" && !in_second_stage(line));
    assert!(
        !first_stage_finished,
        "a first-stage task finished before A was killed"
    );

    // Its restart resumes every task from its checkpoint: the first stage
    // writes again what A wrote after them, and the readers drop it.
    let mut b = spawn(&file);
    let b_log = follow(&mut b, |_| false);
    let b_status = b.wait().unwrap();
    let b_log = b_log.join().unwrap();
    save_logs("KAFKA_TEST_LOGS", &[("A", &a_log), ("B", &b_log)]);
    assert!(b_status.success(), "the restart failed");
    // Whether A's last writes reached the topic before it died depends on
    // the moment; when they did, the restart wrote them again and its
    // readers dropped them (`dropped rows a restarted writer wrote
    // again`; the reader's unit tests cover the dropping). Either way
    // each row counts once.
    assert_every_window_once(&dir.path().join("out"), &events, "page");
}

#[test]
fn a_repartition_the_pipeline_cannot_keep_exact_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = repartitioned_pipeline(dir.path(), "clicks", "by-page", "pages", "127.0.0.1:1");
    let yaml = std::fs::read_to_string(&file).unwrap();
    let refused = |yaml: String, expected: &str| {
        std::fs::write(&file, yaml).unwrap();
        let output = crate::flumen().arg("validate").arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "accepted: {stderr}");
        assert!(stderr.contains(expected), "{expected:?} not in: {stderr}");
    };
    // A window before the repartition: its output could come out in
    // another order after a restart.
    refused(
        yaml.replace(
            "  per_page:\n    type: window\n    inputs: [clicks]",
            "  early:\n    type: window\n    inputs: [clicks]\n    window: { tumble: 1s }\n    \
             group_by: [page]\n    aggregates: [\"count(*) AS n\", \"sum(id) AS id\"]\n  \
             per_page:\n    type: window\n    inputs: [early]",
        ),
        "`early` keeps state, and comes before the repartition",
    );
    // Without tasks, there is no group to share the topic's partitions.
    refused(
        yaml.replace("    tasks: true\n", ""),
        "needs the pipeline run as tasks",
    );
}
