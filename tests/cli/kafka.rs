//! Kafka end to end, against a real Kafka-API broker (tansu, started by
//! scripts/test.sh): a round trip checked against DataFusion's answer,
//! SIGKILLs, two processes sharing a consumer group, a broker killed and
//! restarted, and malformed messages.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use flumen_core::testing::free_port;

use super::crash::{Random, committed};
use super::streams::{
    BASE_TS, assert_each_once, batch_answer, follow, ids, message, run_to_end, save_logs, spawn,
    unique, windows,
};

pub(super) fn brokers() -> String {
    std::env::var("FLUMEN_TEST_KAFKA_BROKERS").expect(
        "this test needs a Kafka-API broker: run it through scripts/test.sh, which starts one",
    )
}

fn tansu() -> String {
    std::env::var("FLUMEN_TEST_TANSU").unwrap_or_else(|_| "tansu".to_string())
}

pub(super) fn create_topic(brokers: &str, topic: &str, partitions: u32) {
    let output = Command::new(tansu())
        .args(["topic", "create", topic, "--broker"])
        .arg(format!("tcp://{brokers}"))
        .args(["--partitions", &partitions.to_string()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tansu topic create: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Counts failed deliveries.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first: std::sync::Mutex<Option<String>>,
}

impl rdkafka::ClientContext for Deliveries {}

impl rdkafka::producer::ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first
                .lock()
                .unwrap()
                .get_or_insert_with(|| error.to_string());
        }
    }
}

/// Sends each `(partition, key, value)` in record batches of up to
/// `batch` messages; returns once the broker has them all.
///
/// Two faults of tansu 0.6 shape this. It reports a partition's end (high
/// watermark) as one past the first offset of its last record batch, so
/// the last message of each partition is sent alone. And a fetch from an
/// offset inside a record batch returns the batches after it, skipping the
/// rest of that one; so a topic that consumers will resume reading at
/// arbitrary offsets (after a crash, or a partition handed over) is
/// written one message per batch.
pub(super) fn produce<'a>(
    brokers: &str,
    topic: &str,
    messages: impl ExactSizeIterator<Item = (i32, String, &'a [u8])>,
    partitions: usize,
    batch: usize,
) {
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", batch.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Deliveries::default())
        .unwrap();
    let bulk = messages.len().saturating_sub(partitions);
    for (index, (partition, key, value)) in messages.enumerate() {
        if index >= bulk {
            producer.flush(Duration::from_secs(300)).unwrap();
        }
        let mut record = BaseRecord::to(topic)
            .partition(partition)
            .key(&key)
            .payload(value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    let deliveries = producer.context();
    assert_eq!(
        deliveries.failed.load(Ordering::Relaxed),
        0,
        "deliveries failed, the first with {:?}",
        deliveries.first.lock().unwrap()
    );
}

/// How many messages `topic` holds (the sum of its partitions' ends).
pub(super) fn topic_size(brokers: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).unwrap();
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout).unwrap();
            high - low
        })
        .sum()
}

/// `count` events `{"id": i, "ts": BASE_TS + i}`, event `i` to partition
/// `i % partitions`, so each partition sees its events in time order;
/// also written to a JSON lines file for DataFusion.
fn produce_events(
    brokers: &str,
    topic: &str,
    partitions: usize,
    count: u64,
    batch: usize,
    file: &Path,
) {
    let lines: Vec<String> = (0..count)
        .map(|i| format!("{{\"id\":{i},\"ts\":{}}}", BASE_TS + i))
        .collect();
    std::fs::write(file, lines.join("\n") + "\n").unwrap();
    produce(
        brokers,
        topic,
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| ((i % partitions) as i32, i.to_string(), l.as_bytes())),
        partitions,
        batch,
    );
}

/// A 4-partition topic of events for the tests that resume reading at
/// arbitrary offsets (after SIGKILLs, or a partition handed over), written
/// once per test run one message per record batch (see [`produce`]) and
/// read by each such test in its own consumer group; and the events' JSON
/// lines file. Single-message batches make tansu slow to write, so this
/// topic holds 200,000 events rather than a million.
fn resumable_events() -> &'static (String, PathBuf) {
    static EVENTS: std::sync::OnceLock<(String, PathBuf)> = std::sync::OnceLock::new();
    EVENTS.get_or_init(|| {
        let brokers = brokers();
        let dir = tempfile::tempdir().unwrap().keep();
        let topic = unique("resumable");
        create_topic(&brokers, &topic, 4);
        let file = dir.join("events.jsonl");
        produce_events(&brokers, &topic, 4, 200_000, 1, &file);
        assert_eq!(topic_size(&brokers, &topic), 200_000);
        (topic, file)
    })
}

/// A pipeline reading `topic` to its end, checkpointing every 100 ms:
/// every row with `id % 7 <> 0` to `out/rows`, per-second counts and sums
/// to `out/windows`.
fn pipeline(dir: &Path, name: &str, topic: &str, group: &str, brokers: &str) -> PathBuf {
    pipeline_tuned(dir, name, topic, group, brokers, "100ms", 6000)
}

/// [`pipeline`], checkpointing every `interval`, with the group session
/// lasting `session_ms` without a heartbeat.
fn pipeline_tuned(
    dir: &Path,
    name: &str,
    topic: &str,
    group: &str,
    brokers: &str,
    interval: &str,
    session_ms: u32,
) -> PathBuf {
    let yaml = format!(
        r#"
checkpoint:
  interval: {interval}
  store: {dir}/{name}-checkpoints
dead_letter:
  type: file
  path: {dir}/{name}/dead_letters.jsonl
sources:
  events:
    type: kafka
    brokers: {brokers}
    topics: [{topic}]
    group: {group}
    schema: {{ id: int64, ts: timestamp_ms }}
    batch_size: 2000
    stop_at: latest
    event_time: {{ column: ts }}
    properties:
      session.timeout.ms: "{session_ms}"
      heartbeat.interval.ms: "500"
      max.poll.interval.ms: "{poll_ms}"
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
    path: {dir}/{name}/rows
  windows:
    type: file
    inputs: [per_second]
    path: {dir}/{name}/windows
"#,
        dir = dir.display(),
        // librdkafka requires it no shorter than the session.
        poll_ms = session_ms.max(10_000),
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn a_million_events_round_trip_as_datafusion_answers() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("round-trip");
    create_topic(&brokers, &topic, 4);
    let events = &dir.path().join("events.jsonl");
    produce_events(&brokers, &topic, 4, 1_000_000, 10_000, events);
    assert_eq!(topic_size(&brokers, &topic), 1_000_000);
    let file = pipeline(dir.path(), "out", &topic, &unique("group"), &brokers);
    let output = run_to_end(&file);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (expected_ids, expected_windows) = batch_answer(events);
    let out = dir.path().join("out");
    let rows = ids(&committed(&out.join("rows")));
    assert!(
        rows == expected_ids,
        "{} rows, expected {}; log:\n{}",
        rows.len(),
        expected_ids.len(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(windows(&committed(&out.join("windows"))), expected_windows);
}

#[test]
fn sigkilled_five_times_the_output_is_exactly_once() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let (topic, events) = resumable_events();
    let file = pipeline_tuned(
        dir.path(),
        "out",
        topic,
        &unique("group"),
        &brokers,
        "50ms",
        6000,
    );
    let mut random = Random::new();
    for kill in 0..5 {
        let mut child = spawn(&file);
        let wanted = 1 + random.below(3);
        let mut checkpoints = 0;
        // Killed once it has read, checkpointed and committed offsets a
        // few times: mid-stream, at a random point.
        let rest = follow(&mut child, |log| {
            if message(log) == "offsets committed" {
                checkpoints += 1;
            }
            checkpoints == wanted
        });
        std::thread::sleep(Duration::from_millis(random.below(50)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        rest.join().unwrap();
        assert!(
            !status.success(),
            "run {kill} finished before it was killed"
        );
    }
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

/// What one process's log says about partitions: every commit must be for
/// partitions it owned at the time. Returns the partitions it was ever
/// assigned.
fn check_commits_were_owned(name: &str, log: &[serde_json::Value]) -> HashSet<String> {
    let list = |log: &serde_json::Value, key: &str| -> Vec<String> {
        log[key]
            .as_str()
            .unwrap_or_default()
            .split(", ")
            .filter(|p| !p.is_empty())
            .map(|p| p.split('@').next().unwrap().to_string())
            .collect()
    };
    let mut owned = HashSet::new();
    let mut ever = HashSet::new();
    for line in log {
        match message(line) {
            "partitions assigned" => {
                owned.extend(list(line, "partitions"));
                ever.extend(list(line, "partitions"));
            }
            "partitions released" => {
                for partition in list(line, "partitions") {
                    owned.remove(&partition);
                }
            }
            "offsets committed" => {
                for partition in list(line, "partitions") {
                    assert!(
                        owned.contains(&partition),
                        "{name} committed an offset for {partition}, which it did not own (it owned {owned:?})"
                    );
                }
            }
            _ => {}
        }
    }
    ever
}

#[test]
fn two_processes_share_a_group_and_the_survivors_take_over_a_killed_one() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let (topic, events) = resumable_events();
    let group = unique("group");
    let files: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|name| pipeline(dir.path(), name, topic, &group, &brokers))
        .collect();

    // A takes all four partitions, gives two up when B joins, and is
    // SIGKILLed as soon as it has checkpointed (and committed offsets)
    // with its two: mid-stream.
    let mut a = spawn(&files[0]);
    let mut b = None;
    let mut assignments = 0;
    let mut after_rebalance = 0;
    let a_log = follow(&mut a, |log| {
        match message(log) {
            "partitions assigned" => {
                assignments += 1;
                if assignments == 1 {
                    b = Some(spawn(&files[1]));
                }
            }
            "offsets committed" if assignments >= 2 => after_rebalance += 1,
            _ => {}
        }
        after_rebalance == 1
    });
    a.kill().unwrap();
    assert!(
        !a.wait().unwrap().success(),
        "A finished before it was killed"
    );
    let a_log = a_log.join().unwrap();

    // Once A's session has expired the group rebalances (B hands its
    // partitions back), and then a third member joins. (With Kafka that
    // rebalance alone moves A's partitions to B; tansu 0.6 hands each
    // member its old assignment again until a new member joins.)
    let mut b = b.expect("B started");
    let b_log = follow(&mut b, |log| message(log) == "partitions released");
    let mut c = spawn(&files[2]);
    let c_log = follow(&mut c, |_| false);
    let (b_log, c_log) = (b_log.join().unwrap(), c_log.join().unwrap());
    assert!(b.wait().unwrap().success(), "B failed: {b_log:?}");
    assert!(c.wait().unwrap().success(), "C failed: {c_log:?}");

    save_logs(
        "KAFKA_TEST_LOGS",
        &[("A", &a_log), ("B", &b_log), ("C", &c_log)],
    );
    let a_partitions = check_commits_were_owned("A", &a_log);
    let b_partitions = check_commits_were_owned("B", &b_log);
    let c_partitions = check_commits_were_owned("C", &c_log);
    assert_eq!(a_partitions.len(), 4, "A started with every partition");
    let a_last: HashSet<String> = last_assignment(&a_log);
    let survivors: HashSet<String> = b_partitions.union(&c_partitions).cloned().collect();
    assert!(
        a_last.iter().all(|p| survivors.contains(p)),
        "A's partitions {a_last:?} were taken over (B and C had {survivors:?})"
    );

    // A restarts, as a supervisor would restart it: recovery publishes
    // what its last checkpoint staged (the group's offsets already count
    // it as done), and it finds nothing left to read.
    let restarted = run_to_end(&files[0]);
    let log = String::from_utf8_lossy(&restarted.stderr);
    if let Ok(path) = std::env::var("KAFKA_TEST_LOGS") {
        std::fs::write(format!("{path}.restart"), log.as_bytes()).unwrap();
    }
    assert!(restarted.status.success(), "{log}");
    assert!(log.contains("restoring from checkpoint"), "{log}");

    // Every event exactly once over the three processes' committed output.
    let mut rows = Vec::new();
    for name in ["a", "b", "c"] {
        rows.extend(ids(&committed(&dir.path().join(name).join("rows"))));
    }
    let (expected_ids, _) = batch_answer(events);
    assert_each_once(rows, &expected_ids);
}

/// The partitions of a process's last assignment.
fn last_assignment(log: &[serde_json::Value]) -> HashSet<String> {
    log.iter()
        .rev()
        .find(|line| message(line) == "partitions assigned")
        .map(|line| {
            line["partitions"]
                .as_str()
                .unwrap()
                .split(", ")
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// A tansu broker of the test's own, storing to SQLite so that what it
/// acknowledged survives `kill -9`.
struct Broker {
    child: Child,
    port: u16,
    db: PathBuf,
}

impl Broker {
    fn start(db: &Path, port: u16) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        // tansu reads the SQLite path relative to its working directory.
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .arg("--storage-engine")
            .arg(format!(
                "sqlite://{}",
                db.file_name().unwrap().to_string_lossy()
            ))
            .current_dir(db.parent().unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            child,
            port,
            db: db.to_path_buf(),
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn kill_and_restart(&mut self, down: Duration) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::thread::sleep(down);
        *self = Broker::start(&self.db, self.port);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_pipeline_rides_out_a_broker_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("tansu.db"), free_port());
    let brokers = broker.address();
    let topic = unique("broker-kill");
    create_topic(&brokers, &topic, 2);
    let events = dir.path().join("events.jsonl");
    produce_events(&brokers, &topic, 2, 100_000, 1000, &events);

    // tansu keeps a group's members across its restart and, unlike Kafka,
    // does not expire them when their session runs out: a member whose
    // session ended while the broker was down stays behind as a ghost
    // holding partitions that nobody reads. A session
    // that outlasts the outage keeps the pipeline the group's only member.
    let file = pipeline_tuned(
        dir.path(),
        "out",
        &topic,
        &unique("group"),
        &brokers,
        "100ms",
        60_000,
    );
    let mut run = spawn(&file);
    let log = follow(&mut run, |log| message(log) == "checkpoint complete");
    broker.kill_and_restart(Duration::from_secs(2));
    let status = run.wait().unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "the run failed: {log:?}");

    let (expected_ids, expected_windows) = batch_answer(&events);
    let out = dir.path().join("out");
    let rows = ids(&committed(&out.join("rows")));
    assert_eq!(rows.len(), expected_ids.len(), "rows lost or repeated");
    assert!(rows == expected_ids, "rows differ");
    let rebalances: Vec<_> = log
        .iter()
        .filter(|line| message(line).starts_with("partitions"))
        .collect();
    assert_eq!(
        windows(&committed(&out.join("windows"))),
        expected_windows,
        "{rebalances:?}"
    );
}

#[test]
fn malformed_messages_reach_the_dead_letters_with_their_offsets() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("malformed");
    create_topic(&brokers, &topic, 1);
    let mut messages: Vec<String> = (0..10_000u64)
        .map(|i| format!("{{\"id\":{i},\"ts\":{}}}", BASE_TS + i))
        .collect();
    messages[100] = "{\"id\": 100, \"ts\":".to_string();
    messages[5000] = "{\"id\": \"five thousand\", \"ts\": 1}".to_string();
    messages[9000] = "not json at all".to_string();
    produce(
        &brokers,
        &topic,
        messages.iter().map(|m| (0, String::new(), m.as_bytes())),
        1,
        1000,
    );
    let file = pipeline(dir.path(), "out", &topic, &unique("group"), &brokers);
    let output = run_to_end(&file);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let rows = ids(&committed(&dir.path().join("out/rows")));
    let expected: Vec<u64> = (0..10_000)
        .filter(|i| ![100, 5000, 9000].contains(i) && i % 7 != 0)
        .collect();
    assert!(rows == expected, "every good message arrives once");

    let mut dead: Vec<serde_json::Value> = committed(&dir.path().join("out/dead_letters.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let offset = |d: &serde_json::Value| -> u64 {
        d["position"]
            .as_str()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    dead.sort_by_key(offset);
    let positions: Vec<&str> = dead
        .iter()
        .map(|d| d["position"].as_str().unwrap())
        .collect();
    assert_eq!(
        positions,
        [100, 5000, 9000].map(|o| format!("kafka {topic}[0] offset {o}")),
        "{dead:?}"
    );
    assert_eq!(dead[2]["record"], "not json at all");
    assert!(dead.iter().all(|d| d["component"] == "events"));
}
