//! Kinesis end to end, against a real Kinesis-API server (kinesis-local,
//! started by scripts/test.sh): a round trip checked against DataFusion's
//! answer, SIGKILLs, resharding mid-run, throttling and expired iterators
//! injected by a proxy, malformed and aggregated records, and the sink.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ScalingType};

use flumen::sources::kinesis::{AwsSettings, aggregate};

use super::crash::{Random, committed};
use super::flumen;
use super::streams::{
    BASE_TS, assert_each_once, batch_answer, follow, ids, message, run_to_end, save_logs, spawn,
    unique, windows,
};

pub(super) fn endpoint() -> String {
    std::env::var("FLUMEN_TEST_KINESIS").expect(
        "this test needs a Kinesis-API server: run it through scripts/test.sh, which starts one",
    )
}

pub(super) use super::block_on;

pub(super) async fn client(endpoint: &str) -> Client {
    AwsSettings::local(endpoint).kinesis_client().await
}

pub(super) async fn create_stream(client: &Client, stream: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    wait_active(client, stream).await;
}

async fn wait_active(client: &Client, stream: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .unwrap();
        let status = summary
            .stream_description_summary()
            .unwrap()
            .stream_status();
        if status.as_str() == "ACTIVE" {
            return;
        }
        assert!(Instant::now() < deadline, "stream {stream} is {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Splits the stream's first shard in two halves of its hash range.
pub(super) async fn split_first_shard(client: &Client, stream: &str) {
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let first = &shards.shards()[0];
    let range = first.hash_key_range().unwrap();
    let start: u128 = range.starting_hash_key().parse().unwrap();
    let end: u128 = range.ending_hash_key().parse().unwrap();
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(first.shard_id())
        .new_starting_hash_key(((start + end) / 2).to_string())
        .send()
        .await
        .unwrap();
    wait_active(client, stream).await;
}

/// Rescales the stream to `shards` shards, evenly (UpdateShardCount).
async fn update_shard_count(client: &Client, stream: &str, shards: i32) {
    client
        .update_shard_count()
        .stream_name(stream)
        .target_shard_count(shards)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await
        .unwrap();
    wait_active(client, stream).await;
}

/// Ends a run with SIGTERM (it drains and exits 0) and returns its log.
fn terminate(
    mut run: std::process::Child,
    log: std::thread::JoinHandle<Vec<serde_json::Value>>,
) -> Vec<serde_json::Value> {
    std::process::Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .unwrap();
    let status = run.wait().unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "{log:?}");
    log
}

/// Puts `records` (partition key, data) in order, 500 to a request, and
/// each request's failed entries again until none fails. Returns every
/// record's (shard, sequence number).
pub(super) async fn put(
    client: &Client,
    stream: &str,
    records: &[(String, Vec<u8>)],
) -> Vec<(String, String)> {
    let mut placed = Vec::with_capacity(records.len());
    for chunk in records.chunks(500) {
        let mut results: Vec<Option<(String, String)>> = vec![None; chunk.len()];
        let mut pending: Vec<usize> = (0..chunk.len()).collect();
        while !pending.is_empty() {
            let entries = pending
                .iter()
                .map(|i| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(&chunk[*i].0)
                        .data(Blob::new(chunk[*i].1.clone()))
                        .build()
                        .unwrap()
                })
                .collect();
            let output = client
                .put_records()
                .stream_name(stream)
                .set_records(Some(entries))
                .send()
                .await
                .unwrap();
            let mut failed = Vec::new();
            for (index, result) in pending.iter().zip(output.records()) {
                match (result.shard_id(), result.sequence_number()) {
                    (Some(shard), Some(sequence)) => {
                        results[*index] = Some((shard.to_string(), sequence.to_string()));
                    }
                    _ => failed.push(*index),
                }
            }
            pending = failed;
        }
        placed.extend(results.into_iter().map(Option::unwrap));
    }
    placed
}

/// Events `{"id": i, "ts": BASE_TS + i}` for `ids`, keyed by `i % 64`.
fn events(ids: std::ops::Range<u64>) -> Vec<(String, Vec<u8>)> {
    ids.map(|i| {
        (
            (i % 64).to_string(),
            format!("{{\"id\":{i},\"ts\":{}}}", BASE_TS + i).into_bytes(),
        )
    })
    .collect()
}

/// Writes what DataFusion reads for its answer: one JSON line per event.
fn events_file(dir: &Path, records: &[(String, Vec<u8>)]) -> PathBuf {
    let path = dir.join("events.jsonl");
    let mut text = Vec::new();
    for (_, data) in records {
        text.extend_from_slice(data);
        text.push(b'\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// Events a round trip reads.
const ROUND_TRIP_EVENTS: u64 = 100_000;

/// Of those, how many are put as plain records; the rest go in records of
/// 100 aggregated in the Kinesis Producer Library's format, as busy
/// producers put them. kinesis-local's PutRecords slows down as a stream
/// grows (a call of 500 records takes 0.04 s on an empty stream and 1.2 s
/// on one of 18,000 records here), so a stream of 100,000 plain records
/// would take ten minutes to write.
const ROUND_TRIP_PLAIN: u64 = 10_000;

/// A 4-shard stream of [`ROUND_TRIP_EVENTS`] events, written once per test
/// run and read by each test in a pipeline of its own; and the events'
/// JSON lines file.
fn round_trip_stream() -> &'static (String, PathBuf) {
    static STREAM: std::sync::OnceLock<(String, PathBuf)> = std::sync::OnceLock::new();
    STREAM.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let stream = unique("round-trip");
        let events = events(0..ROUND_TRIP_EVENTS);
        let (plain, rest) = events.split_at(ROUND_TRIP_PLAIN as usize);
        let mut records = plain.to_vec();
        for users in rest.chunks(100) {
            let refs: Vec<(&str, &[u8])> = users
                .iter()
                .map(|(k, d)| (k.as_str(), d.as_slice()))
                .collect();
            records.push((users[0].0.clone(), aggregate(&refs)));
        }
        block_on(async {
            let client = client(&endpoint()).await;
            create_stream(&client, &stream, 4).await;
            put(&client, &stream, &records).await;
        });
        (stream, events_file(&dir, &events))
    })
}

/// Reads `stream` into a window and two file sinks, checkpointing every
/// 100 ms. `extra` goes into the source's settings.
fn pipeline(dir: &Path, stream: &str, endpoint: &str, extra: &str) -> PathBuf {
    let yaml = format!(
        r#"
checkpoint:
  interval: 100ms
  store: {dir}/checkpoints
dead_letter:
  type: file
  path: {dir}/out/dead_letters.jsonl
sources:
  events:
    type: kinesis
    stream: {stream}
    aws:
      endpoint: {endpoint}
      region: us-east-1
      access_key_id: test
      secret_access_key: test
    schema: {{ id: int64, ts: timestamp_ms }}
    event_time: {{ column: ts }}
    poll_interval: 50ms
    idle_poll_interval: 100ms
{extra}
transforms:
  kept:
    type: sql
    inputs: [events]
    filter: id % 7 <> 0
  per_second:
    type: window
    inputs: [kept]
    window: {{ tumble: 1s }}
    aggregates: ["count(*) AS ids", "sum(id) AS id_sum"]
sinks:
  rows:
    type: file
    inputs: [kept]
    path: {dir}/out/rows
  windows:
    type: file
    inputs: [per_second]
    path: {dir}/out/windows
"#,
        dir = dir.display()
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

const STOP_AT_LATEST: &str = "    stop_at: latest";

#[test]
fn a_hundred_thousand_events_round_trip_as_datafusion_answers() {
    let (stream, events) = round_trip_stream();
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), stream, &endpoint(), STOP_AT_LATEST);
    let output = run_to_end(&file);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    let (expected_ids, expected_windows) = batch_answer(events);
    let out = dir.path().join("out");
    let rows = ids(&committed(&out.join("rows")));
    assert_eq!(
        rows.len(),
        expected_ids.len(),
        "rows lost or repeated: {log}"
    );
    assert!(rows == expected_ids, "rows differ");
    assert_eq!(windows(&committed(&out.join("windows"))), expected_windows);
}

#[test]
fn sigkilled_five_times_the_output_is_exactly_once() {
    let (stream, events) = round_trip_stream();
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), stream, &endpoint(), STOP_AT_LATEST);
    let mut random = Random::new();
    // Killed after one to three checkpoints, at a random point: up to
    // five times, for as long as there is input left (the stream reads in
    // seconds, so a late run can reach its end before its kill).
    let mut kills = 0;
    for _ in 0..5 {
        let mut child = spawn(&file);
        let wanted = 1 + random.below(3);
        let mut checkpoints = 0;
        let rest = follow(&mut child, |log| {
            if message(log) == "checkpoint complete" {
                checkpoints += 1;
            }
            checkpoints == wanted
        });
        std::thread::sleep(Duration::from_millis(random.below(100)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        rest.join().unwrap();
        if status.success() {
            break;
        }
        kills += 1;
    }
    assert!(kills >= 2, "killed mid-stream only {kills} times");
    let output = run_to_end(&file);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("restoring from checkpoint"), "{log}");
    let (expected_ids, expected_windows) = batch_answer(events);
    let out = dir.path().join("out");
    let rows = ids(&committed(&out.join("rows")));
    assert_eq!(rows.len(), expected_ids.len(), "rows lost or repeated");
    assert!(rows == expected_ids, "rows differ");
    assert_eq!(windows(&committed(&out.join("windows"))), expected_windows);
}

/// The source settings of a process sharing `stream` through lease
/// table `table` (in moto's DynamoDB), reading slowly enough (25 records
/// per call, five calls a second per shard) that shards change hands
/// mid-stream.
pub(super) fn leased(table: &str) -> String {
    let moto = std::env::var("FLUMEN_TEST_S3_ENDPOINT").expect(
        "this test needs moto for DynamoDB: run it through scripts/test.sh, which starts it",
    );
    format!(
        "    stop_at: latest\n    batch_size: 25\n    leases:\n      table: {table}\n      \
         failover_time: 3s\n      aws: {{ endpoint: \"{moto}\", region: us-east-1, \
         access_key_id: test, secret_access_key: test }}"
    )
}

/// Checks one process's log: it started reading a shard only while it
/// held the shard's lease, and handed a lease over only after it had
/// stopped reading the shard. Returns the shards it ever held.
fn check_reads_were_leased(name: &str, log: &[serde_json::Value]) -> HashSet<String> {
    let mut held = HashSet::new();
    let mut ever = HashSet::new();
    let mut reading = HashSet::new();
    for line in log {
        let shard = || line["shard"].as_str().unwrap_or_default().to_string();
        match message(line) {
            "lease taken" | "lease received" => {
                held.insert(shard());
                ever.insert(shard());
            }
            "lease handed over" => {
                assert!(
                    !reading.contains(&shard()),
                    "{name} handed over {} while reading it",
                    shard()
                );
                held.remove(&shard());
            }
            "reading shard" => {
                assert!(
                    held.contains(&shard()),
                    "{name} read {} without its lease (it held {held:?})",
                    shard()
                );
                reading.insert(shard());
            }
            "stopped reading shard, to hand it over" | "shard read to its end" => {
                reading.remove(&shard());
            }
            _ => {}
        }
    }
    ever
}

#[test]
fn three_processes_share_the_shards_through_leases_and_take_over_a_killed_one() {
    let (stream, events) = round_trip_stream();
    let dir = tempfile::tempdir().unwrap();
    let table = unique("leases");
    let files: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let dir = dir.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            pipeline(&dir, stream, &endpoint(), &leased(&table))
        })
        .collect();
    let reads = |log: &serde_json::Value| message(log) == "reading shard";

    // A takes every shard; B and C each ask for their share as they
    // start, and C is SIGKILLed once it has checkpointed what it read.
    let mut a = spawn(&files[0]);
    let a_log = follow(&mut a, reads);
    let mut b = spawn(&files[1]);
    let b_log = follow(&mut b, reads);
    let mut c = spawn(&files[2]);
    let mut read = false;
    let c_log = follow(&mut c, |log| {
        read |= reads(log);
        read && message(log) == "checkpoint complete"
    });
    c.kill().unwrap();
    assert!(
        !c.wait().unwrap().success(),
        "C finished before it was killed"
    );
    let c_log = c_log.join().unwrap();
    let c_member = c_log
        .iter()
        .find_map(|l| l["member"].as_str().map(String::from))
        .expect("C named itself");
    let c_shards = check_reads_were_leased("C", &c_log);
    assert!(!c_shards.is_empty());

    // A and B take C's shards over once its leases expire, and read
    // every shard to the end.
    let finish = |mut run: std::process::Child, log: std::thread::JoinHandle<_>, name: &str| {
        let status = run.wait().unwrap();
        let log: Vec<serde_json::Value> = log.join().unwrap();
        assert!(status.success(), "{name} failed: {log:?}");
        log
    };
    let a_log = finish(a, a_log, "A");
    let b_log = finish(b, b_log, "B");
    save_logs(
        "KINESIS_TEST_LOGS",
        &[("A", &a_log), ("B", &b_log), ("C", &c_log)],
    );
    let a_shards = check_reads_were_leased("A", &a_log);
    let b_shards = check_reads_were_leased("B", &b_log);
    assert!(!b_shards.is_empty(), "B never held a lease");
    let taken_from_c: HashSet<String> = a_log
        .iter()
        .chain(&b_log)
        .filter(|l| message(l) == "lease taken" && l["previous_owner"] == c_member.as_str())
        .map(|l| l["shard"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !taken_from_c.is_empty(),
        "nobody took C's leases (C held {c_shards:?}; A {a_shards:?}, B {b_shards:?})"
    );

    // C restarts, as a supervisor would restart it: recovery publishes
    // what its last checkpoint staged (or rolls it back, if its leases do
    // not show it recorded), and it finds nothing left to read.
    let restarted = run_to_end(&files[2]);
    let log = String::from_utf8_lossy(&restarted.stderr);
    assert!(restarted.status.success(), "{log}");
    assert!(log.contains("restoring from checkpoint"), "{log}");

    // Every event exactly once over the three processes' committed output.
    let mut rows = Vec::new();
    for name in ["a", "b", "c"] {
        rows.extend(ids(&committed(
            &dir.path().join(name).join("out").join("rows"),
        )));
    }
    let (expected_ids, _) = batch_answer(events);
    assert_each_once(rows, &expected_ids);
}

#[test]
fn processes_sharing_a_resharded_stream_read_parents_before_children() {
    let endpoint = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let stream = unique("leased-reshard");
    let table = unique("leases");
    // Records before and after a split and an UpdateShardCount, all put
    // before the processes start: parents and children wait together.
    let step = 1500;
    block_on(async {
        let client = client(&endpoint).await;
        create_stream(&client, &stream, 2).await;
        put(&client, &stream, &events(0..step)).await;
        split_first_shard(&client, &stream).await;
        put(&client, &stream, &events(step..2 * step)).await;
        update_shard_count(&client, &stream, 4).await;
        put(&client, &stream, &events(2 * step..3 * step)).await;
    });
    let extra = format!(
        "{}\n    metadata: {{ shard_id: shard }}",
        leased(&table).replace("batch_size: 25", "batch_size: 100")
    );
    let files: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|name| {
            let dir = dir.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            pipeline(&dir, &stream, &endpoint, &extra)
        })
        .collect();
    let mut a = spawn(&files[0]);
    let a_log = follow(&mut a, |log| message(log) == "reading shard");
    let mut b = spawn(&files[1]);
    let b_log = follow(&mut b, |_| false);
    let mut logs = Vec::new();
    let mut statuses = Vec::new();
    for (mut run, log) in [(a, a_log), (b, b_log)] {
        statuses.push(run.wait().unwrap());
        logs.push(log.join().unwrap());
    }
    save_logs("KINESIS_TEST_LOGS", &[("A", &logs[0]), ("B", &logs[1])]);
    for ((name, status), log) in ["A", "B"].iter().zip(&statuses).zip(&logs) {
        // Both logs: what one process did explains the other's failure.
        assert!(
            status.success(),
            "{name} failed; A: {:?}\nB: {:?}",
            logs[0],
            logs[1]
        );
        check_reads_were_leased(name, log);
    }

    // A child was first read after each of its parents was read to its
    // end, whichever process read either.
    let parents: HashMap<String, Vec<String>> = block_on(async {
        let client = client(&endpoint).await;
        let shards = client
            .list_shards()
            .stream_name(&stream)
            .send()
            .await
            .unwrap();
        shards
            .shards()
            .iter()
            .map(|s| {
                let parents = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                    .into_iter()
                    .flatten()
                    .map(String::from)
                    .collect();
                (s.shard_id().to_string(), parents)
            })
            .collect()
    });
    let first_time = |what: &str| -> HashMap<String, String> {
        let mut times = HashMap::new();
        for line in logs.iter().flatten().filter(|l| message(l) == what) {
            let shard = line["shard"].as_str().unwrap().to_string();
            let time = line["timestamp"].as_str().unwrap().to_string();
            let entry = times.entry(shard).or_insert(time.clone());
            if time < *entry {
                *entry = time;
            }
        }
        times
    };
    let started = first_time("reading shard");
    let ended = first_time("shard read to its end");
    assert!(started.len() > 4, "children read too: {started:?}");
    for (child, parents) in &parents {
        for parent in parents {
            let (Some(read), Some(parent_end)) = (started.get(child), ended.get(parent)) else {
                panic!("{child} or its parent {parent} was not read: {started:?} {ended:?}");
            };
            assert!(
                parent_end < read,
                "{child} read at {read}, before its parent {parent} ended at {parent_end}"
            );
        }
    }

    let mut rows = Vec::new();
    for name in ["a", "b"] {
        rows.extend(ids(&committed(
            &dir.path().join(name).join("out").join("rows"),
        )));
    }
    let expected: Vec<u64> = (0..3 * step).filter(|i| i % 7 != 0).collect();
    assert_each_once(rows, &expected);
}

/// Rows of a one-instance file sink's committed output in the order they
/// were written: parts in checkpoint order (`part-0-<checkpoint>`, zero
/// padded), lines in order.
fn rows_in_order(dir: &Path) -> Vec<serde_json::Value> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| !path.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    parts.sort();
    parts
        .iter()
        .flat_map(|part| {
            std::fs::read_to_string(part)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn resharding_mid_run_loses_nothing_and_keeps_each_keys_order() {
    let endpoint = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let stream = unique("reshard");
    let file = pipeline(
        dir.path(),
        &stream,
        &endpoint,
        "    metadata: { partition_key: key, sequence_number: sequence, shard_id: shard }\n    shard_discovery_interval: 200ms",
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(async {
        let client = client(&endpoint).await;
        create_stream(&client, &stream, 4).await;
        client
    });
    let mut run = spawn(&file);
    let log = follow(&mut run, |log| message(log) == "reading shard");
    let step = 3000;
    let mut next = 0;
    let mut put_next = |client: &Client| {
        let records = events(next..next + step);
        next += step;
        runtime.block_on(put(client, &stream, &records));
    };
    put_next(&client);
    runtime.block_on(async {
        split_first_shard(&client, &stream).await;
    });
    put_next(&client);
    runtime.block_on(async {
        let shards = client
            .list_shards()
            .stream_name(&stream)
            .send()
            .await
            .unwrap();
        let by_id: HashMap<&str, _> = shards.shards().iter().map(|s| (s.shard_id(), s)).collect();
        // Shards 2 and 3 of the four the stream started with are adjacent.
        let two = by_id
            .keys()
            .find(|id| id.ends_with("000000000002"))
            .unwrap();
        let three = by_id
            .keys()
            .find(|id| id.ends_with("000000000003"))
            .unwrap();
        client
            .merge_shards()
            .stream_name(&stream)
            .shard_to_merge(*two)
            .adjacent_shard_to_merge(*three)
            .send()
            .await
            .unwrap();
        wait_active(&client, &stream).await;
    });
    put_next(&client);
    runtime.block_on(update_shard_count(&client, &stream, 6));
    put_next(&client);
    let total = next;
    let out = dir.path().join("out/rows");
    let expected = (0..total).filter(|i| i % 7 != 0).count();
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed(&out).len() < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    terminate(run, log);

    let rows = rows_in_order(&out);
    let mut seen = HashSet::new();
    let mut last_per_key: HashMap<String, u64> = HashMap::new();
    for row in &rows {
        let id = row["id"].as_u64().unwrap();
        assert!(seen.insert(id), "{id} repeated");
        let key = row["key"].as_str().unwrap().to_string();
        // Ids of a key were put in increasing order.
        if let Some(before) = last_per_key.insert(key.clone(), id) {
            assert!(before < id, "key {key}: {id} came after {before}");
        }
    }
    let missing: Vec<u64> = (0..total)
        .filter(|i| i % 7 != 0 && !seen.contains(i))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "lost, e.g. {missing:?}");
    let shards: HashSet<&str> = rows.iter().map(|r| r["shard"].as_str().unwrap()).collect();
    assert!(shards.len() > 4, "read from children too: {shards:?}");
}

#[test]
fn malformed_records_reach_the_dead_letters_and_aggregated_ones_are_split() {
    let endpoint = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let stream = unique("malformed");
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for batch in 0..20u64 {
        // An aggregated record of 100 user records, then 10 plain ones.
        let users: Vec<(String, Vec<u8>)> = (0..100)
            .map(|i| {
                let id = batch * 1000 + i;
                (
                    format!("k{id}"),
                    format!("{{\"id\":{id},\"ts\":{}}}", BASE_TS + id).into_bytes(),
                )
            })
            .collect();
        let refs: Vec<(&str, &[u8])> = users
            .iter()
            .map(|(k, d)| (k.as_str(), d.as_slice()))
            .collect();
        records.push((format!("agg{batch}"), aggregate(&refs)));
        for i in 100..110 {
            let id = batch * 1000 + i;
            records.push((
                format!("k{id}"),
                format!("{{\"id\":{id},\"ts\":{}}}", BASE_TS + id).into_bytes(),
            ));
        }
    }
    records.push(("bad".into(), b"{\"id\": 5, \"ts\":".to_vec()));
    records.push(("bad".into(), b"not json at all".to_vec()));
    let placed = block_on(async {
        let client = client(&endpoint).await;
        create_stream(&client, &stream, 2).await;
        put(&client, &stream, &records).await
    });
    let file = pipeline(dir.path(), &stream, &endpoint, STOP_AT_LATEST);
    let output = run_to_end(&file);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");

    let rows = ids(&committed(&dir.path().join("out/rows")));
    let expected: Vec<u64> = (0..20u64)
        .flat_map(|batch| (0..110).map(move |i| batch * 1000 + i))
        .filter(|id| id % 7 != 0)
        .collect();
    assert_eq!(rows, expected);
    let dead: Vec<serde_json::Value> = committed(&dir.path().join("out/dead_letters.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let positions: HashSet<String> = dead
        .iter()
        .map(|record| record["position"].as_str().unwrap().to_string())
        .collect();
    let expected: HashSet<String> = placed[placed.len() - 2..]
        .iter()
        .map(|(shard, sequence)| format!("kinesis {stream} {shard} {sequence}"))
        .collect();
    assert_eq!(positions, expected);
}

/// A proxy in front of the Kinesis server that answers a share of
/// GetRecords calls itself: `ProvisionedThroughputExceededException` to
/// every third, `ExpiredIteratorException` to every tenth.
struct FaultyProxy {
    address: String,
    faults: std::sync::Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl FaultyProxy {
    fn start(upstream: String) -> FaultyProxy {
        use axum::body::{Body, Bytes};
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let faults = std::sync::Arc::new(AtomicU64::new(0));
        let calls = std::sync::Arc::new(AtomicU64::new(0));
        let http = reqwest::Client::new();
        let counted = faults.clone();
        let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let http = http.clone();
            let upstream = upstream.clone();
            let calls = calls.clone();
            let faults = counted.clone();
            async move {
                let target = headers
                    .get("x-amz-target")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if target.ends_with(".GetRecords") {
                    let call = calls.fetch_add(1, Ordering::Relaxed);
                    let fault = if call % 10 == 9 {
                        Some("ExpiredIteratorException")
                    } else if call % 3 == 2 {
                        Some("ProvisionedThroughputExceededException")
                    } else {
                        None
                    };
                    if let Some(kind) = fault {
                        faults.fetch_add(1, Ordering::Relaxed);
                        let body = format!("{{\"__type\":\"{kind}\",\"message\":\"injected\"}}");
                        return axum::http::Response::builder()
                            .status(StatusCode::BAD_REQUEST)
                            .header("content-type", "application/x-amz-json-1.1")
                            .body(Body::from(body))
                            .unwrap();
                    }
                }
                let mut request = http.request(method, format!("{upstream}{uri}")).body(body);
                for (name, value) in &headers {
                    if name != "host" && name != "content-length" {
                        request = request.header(name, value);
                    }
                }
                let answer = request.send().await.unwrap();
                let mut response = axum::http::Response::builder().status(answer.status());
                for (name, value) in answer.headers() {
                    if name != "content-length" && name != "transfer-encoding" {
                        response = response.header(name, value);
                    }
                }
                response
                    .body(Body::from(answer.bytes().await.unwrap()))
                    .unwrap()
            }
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(handler);
        runtime.spawn(async move { axum::serve(listener, app).await });
        FaultyProxy {
            address,
            faults,
            _runtime: runtime,
        }
    }
}

#[test]
fn throttling_and_expired_iterators_leave_the_output_unchanged() {
    let endpoint = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let stream = unique("faults");
    let records = events(0..20_000);
    block_on(async {
        let client = client(&endpoint).await;
        create_stream(&client, &stream, 4).await;
        put(&client, &stream, &records).await;
    });
    let events = events_file(dir.path(), &records);
    let proxy = FaultyProxy::start(endpoint);
    let file = pipeline(
        dir.path(),
        &stream,
        &proxy.address,
        "    stop_at: latest\n    batch_size: 500",
    );
    let output = run_to_end(&file);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(
        proxy.faults.load(Ordering::Relaxed) > 10,
        "faults were injected"
    );
    assert!(
        log.contains("ProvisionedThroughputExceededException"),
        "{log}"
    );
    let (expected_ids, expected_windows) = batch_answer(&events);
    let out = dir.path().join("out");
    assert!(
        ids(&committed(&out.join("rows"))) == expected_ids,
        "rows differ"
    );
    assert_eq!(windows(&committed(&out.join("windows"))), expected_windows);
}

#[test]
fn the_sink_puts_every_row_once_and_oversized_rows_go_to_the_dead_letters() {
    let endpoint = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let stream = unique("sink");
    block_on(async {
        let client = client(&endpoint).await;
        create_stream(&client, &stream, 2).await;
    });
    let mut lines = String::new();
    for id in 0..5000u64 {
        lines.push_str(&format!(
            "{{\"id\":{id},\"key\":\"k{}\",\"text\":\"t\"}}\n",
            id % 10
        ));
    }
    let big = "x".repeat(1_100_000);
    lines.push_str(&format!(
        "{{\"id\":5000,\"key\":\"k0\",\"text\":\"{big}\"}}\n"
    ));
    std::fs::write(dir.path().join("rows.jsonl"), lines).unwrap();
    let yaml = format!(
        r#"
dead_letter:
  type: file
  path: {dir}/dead_letters.jsonl
sources:
  rows:
    type: file
    path: {dir}/rows.jsonl
    schema: {{ id: int64, key: string, text: string }}
sinks:
  out:
    type: kinesis
    inputs: [rows]
    stream: {stream}
    partition_key: key
    aws: {{ endpoint: "{endpoint}", region: us-east-1, access_key_id: test, secret_access_key: test }}
"#,
        dir = dir.path().display()
    );
    let file = dir.path().join("sink.yaml");
    std::fs::write(&file, yaml).unwrap();
    let output = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");

    let read: BTreeMap<u64, String> = block_on(async {
        let client = client(&endpoint).await;
        let mut read = BTreeMap::new();
        let shards = client
            .list_shards()
            .stream_name(&stream)
            .send()
            .await
            .unwrap();
        for shard in shards.shards() {
            let mut iterator = client
                .get_shard_iterator()
                .stream_name(&stream)
                .shard_id(shard.shard_id())
                .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
                .send()
                .await
                .unwrap()
                .shard_iterator()
                .map(str::to_string);
            while let Some(current) = iterator.take() {
                let output = client
                    .get_records()
                    .shard_iterator(current)
                    .send()
                    .await
                    .unwrap();
                for record in output.records() {
                    let row: serde_json::Value =
                        serde_json::from_slice(record.data().as_ref()).unwrap();
                    let id = row["id"].as_u64().unwrap();
                    let key = record.partition_key().unwrap_or_default().to_string();
                    assert_eq!(row["key"].as_str(), Some(key.as_str()));
                    assert!(read.insert(id, key).is_none(), "{id} twice");
                }
                if output.millis_behind_latest() == Some(0) && output.records().is_empty() {
                    break;
                }
                iterator = output.next_shard_iterator().map(str::to_string);
            }
        }
        read
    });
    assert_eq!(read.len(), 5000);
    assert_eq!(
        read.keys().copied().collect::<Vec<_>>(),
        (0..5000).collect::<Vec<_>>()
    );
    let dead = committed(&dir.path().join("dead_letters.jsonl")).join("\n");
    assert_eq!(dead.lines().count(), 1);
    assert!(dead.contains("Kinesis takes at most 1048576"), "{dead}");
}

#[test]
fn start_from_latest_reads_only_what_is_put_after_the_start_and_skips_closed_shards() {
    let endpoint = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let stream = unique("latest");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(async {
        let client = client(&endpoint).await;
        create_stream(&client, &stream, 2).await;
        put(&client, &stream, &events(0..1000)).await;
        // Close shard 0 by splitting it; its children get records too.
        split_first_shard(&client, &stream).await;
        put(&client, &stream, &events(1000..2000)).await;
        client
    });
    let file = pipeline(dir.path(), &stream, &endpoint, "    start_from: latest");
    let mut run = spawn(&file);
    // The closed shard is passed over: three open shards are read.
    let mut reading = 0;
    let log = follow(&mut run, |log| {
        if message(log) == "reading shard" {
            reading += 1;
        }
        reading == 3
    });
    // Its iterators are taken just after it logs: put a few records at a
    // time until some come out, then the rest, all of which must.
    let out = dir.path().join("out/rows");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = 2000;
    while committed(&out).is_empty() {
        assert!(Instant::now() < deadline, "nothing read");
        runtime.block_on(put(&client, &stream, &events(next..next + 10)));
        next += 10;
    }
    let first_sure = next;
    runtime.block_on(put(&client, &stream, &events(next..3000)));
    let wanted = (first_sure..3000).filter(|i| i % 7 != 0).count();
    let read_since = |rows: &[u64]| rows.iter().filter(|id| **id >= first_sure).count();
    while read_since(&ids(&committed(&out))) < wanted {
        assert!(Instant::now() < deadline, "not everything put was read");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = terminate(run, log);
    let froms: Vec<&str> = log
        .iter()
        .filter(|line| message(line) == "reading shard")
        .map(|line| line["from"].as_str().unwrap())
        .collect();
    assert_eq!(froms, ["Latest", "Latest", "Latest"], "{log:?}");
    let rows = ids(&committed(&out));
    assert!(
        rows.iter().all(|id| *id >= 2000),
        "read what was put before the start"
    );
    assert_eq!(read_since(&rows), wanted, "rows lost or repeated");
}

#[test]
fn start_from_at_timestamp_reads_what_arrived_from_then_on() {
    let endpoint = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let stream = unique("at-timestamp");
    let since = block_on(async {
        let client = client(&endpoint).await;
        create_stream(&client, &stream, 2).await;
        put(&client, &stream, &events(0..1000)).await;
        // Arrival times are the server's clock, in milliseconds: the
        // cut-off is a millisecond past the last acknowledgement, and
        // the next records are put once the clock has passed it.
        let since = std::time::SystemTime::now() + Duration::from_millis(1);
        while std::time::SystemTime::now() <= since + Duration::from_millis(1) {
            tokio::task::yield_now().await;
        }
        put(&client, &stream, &events(1000..2000)).await;
        since
    });
    let since = humantime::format_rfc3339_millis(since);
    let file = pipeline(
        dir.path(),
        &stream,
        &endpoint,
        &format!("    stop_at: latest\n    start_from: {{ at_timestamp: \"{since}\" }}"),
    );
    let output = run_to_end(&file);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    let expected: Vec<u64> = (1000..2000).filter(|i| i % 7 != 0).collect();
    assert_eq!(ids(&committed(&dir.path().join("out/rows"))), expected);
}
