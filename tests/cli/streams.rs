//! What the tests of the message sources (Kafka, Kinesis) share: the
//! events they write, DataFusion's answer over them, and running and
//! following `flumen run`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::crash::committed;
use super::flumen;

/// Event time of the first test event: events are a millisecond apart.
pub(super) const BASE_TS: u64 = 1_700_000_000_000;

/// A topic name no other test uses.
pub(super) fn unique(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub(super) fn ids(rows: &[String]) -> Vec<u64> {
    let mut ids: Vec<u64> = rows
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["id"].as_u64().unwrap()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// DataFusion's batch answer over the same events (the JSON lines file,
/// read with arrow-json): (ids, per-second (count, sum)).
pub(super) fn batch_answer(events: &Path) -> (Vec<u64>, BTreeMap<i64, (i64, i64)>) {
    use std::sync::Arc;

    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::prelude::SessionContext;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("ts", DataType::Int64, false),
    ]));
    let reader = datafusion::arrow::json::ReaderBuilder::new(schema)
        .with_batch_size(65536)
        .build(BufReader::new(std::fs::File::open(events).unwrap()))
        .unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let ctx = SessionContext::new();
        let table =
            datafusion::datasource::MemTable::try_new(batches[0].schema(), vec![batches]).unwrap();
        ctx.register_table("events", Arc::new(table)).unwrap();
        let ids = ctx
            .sql("SELECT id FROM events WHERE id % 7 <> 0 ORDER BY id")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let ids: Vec<u64> = ids
            .iter()
            .flat_map(|b| {
                let column: &Int64Array = b.column(0).as_primitive::<Int64Type>();
                column
                    .values()
                    .iter()
                    .map(|v| *v as u64)
                    .collect::<Vec<_>>()
            })
            .collect();
        let windows = ctx
            .sql(
                "SELECT (ts / 1000 + 1) * 1000 AS window_end, count(*) AS ids, sum(id) AS id_sum \
                 FROM events WHERE id % 7 <> 0 GROUP BY 1",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut answer = BTreeMap::new();
        for batch in windows {
            let end = batch.column(0).as_primitive::<Int64Type>();
            let count = batch.column(1).as_primitive::<Int64Type>();
            let sum = batch.column(2).as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                answer.insert(end.value(row), (count.value(row), sum.value(row)));
            }
        }
        (ids, answer)
    })
}

/// The windows a run wrote, as window end (ms) -> (count, sum).
pub(super) fn windows(lines: &[String]) -> BTreeMap<i64, (i64, i64)> {
    lines
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let end = value["window_end"].as_str().unwrap();
            let end = chrono_millis(end);
            (
                end,
                (
                    value["ids"].as_i64().unwrap(),
                    value["id_sum"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

/// Milliseconds since the epoch of an RFC 3339 time as the file sink
/// writes it.
pub(super) fn chrono_millis(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(&format!("{text}Z")))
        .unwrap_or_else(|e| panic!("`{text}`: {e}"))
        .timestamp_millis()
}

/// Starts `flumen run FILE` with JSON logs on stderr. A run still going
/// after three minutes is killed, so that a stuck consumer group fails the
/// test instead of hanging it.
pub(super) fn spawn(file: &Path) -> Child {
    let child = flumen()
        .args(["run", "--progress", "off", "--log-format", "json"])
        .arg(file)
        .env(
            "RUST_LOG",
            "info,flumen_sources::kafka=debug,flumen_sources::kinesis=debug",
        )
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    kill_after(&child, Duration::from_secs(180));
    child
}

/// `flumen run FILE` to its end (or killed after five minutes), with its
/// output.
pub(super) fn run_to_end(file: &Path) -> std::process::Output {
    let child = flumen()
        .args(["run", "--progress", "off"])
        .arg(file)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    kill_after(&child, Duration::from_secs(300));
    child.wait_with_output().unwrap()
}

/// Kills `child` after `limit`, unless it has ended by then.
pub(super) fn kill_after(child: &Child, limit: Duration) {
    let pid = child.id().to_string();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        // Harmless if the run has ended.
        let _ = Command::new("kill").args(["-9", &pid]).status();
    });
}

/// Reads a run's JSON log lines as they come, handing each to `on_line`
/// until it returns true; the rest is drained in the background and
/// returned by the handle.
pub(super) fn follow(
    child: &mut Child,
    mut on_line: impl FnMut(&serde_json::Value) -> bool,
) -> std::thread::JoinHandle<Vec<serde_json::Value>> {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let stop = on_line(&value);
        seen.push(value);
        if stop {
            break;
        }
    }
    std::thread::spawn(move || {
        seen.extend(
            lines
                .map_while(Result::ok)
                .filter_map(|l| serde_json::from_str(&l).ok()),
        );
        seen
    })
}

pub(super) fn message(log: &serde_json::Value) -> &str {
    log["message"].as_str().unwrap_or_default()
}

/// Writes the logs of several processes, named, into the file an
/// environment variable names (`KAFKA_TEST_LOGS`, say), to read after a
/// failure; `checkpoint complete` lines are left out.
pub(super) fn save_logs(variable: &str, logs: &[(&str, &[serde_json::Value])]) {
    let Ok(path) = std::env::var(variable) else {
        return;
    };
    let text: Vec<String> = logs
        .iter()
        .flat_map(|(name, log)| log.iter().map(move |l| format!("{name} {l}")))
        .filter(|l| !l.contains("checkpoint complete"))
        .collect();
    std::fs::write(path, text.join("\n")).unwrap();
}

/// Checks that `rows` (ids over several processes' committed output) hold
/// every expected id exactly once.
pub(super) fn assert_each_once(mut rows: Vec<u64>, expected: &[u64]) {
    rows.sort_unstable();
    let repeated: Vec<u64> = rows
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    assert!(
        repeated.is_empty(),
        "repeated: {:?}",
        &repeated[..repeated.len().min(20)]
    );
    let have: std::collections::HashSet<u64> = rows.iter().copied().collect();
    let missing: Vec<u64> = expected
        .iter()
        .copied()
        .filter(|id| !have.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(rows.len(), expected.len(), "rows lost or repeated");
}

/// (window end in ms, `key`) → (clicks, id sum), by DataFusion.
pub(super) fn keyed_window_answer(events: &Path, key: &str) -> BTreeMap<(i64, String), (i64, i64)> {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::prelude::SessionContext;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("user", DataType::Utf8, false),
        Field::new("page", DataType::Utf8, false),
        Field::new("ts", DataType::Int64, false),
    ]));
    let reader = datafusion::arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(65536)
        .build(std::io::BufReader::new(
            std::fs::File::open(events).unwrap(),
        ))
        .unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let ctx = SessionContext::new();
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches]).unwrap();
        ctx.register_table("clicks", Arc::new(table)).unwrap();
        let sql = format!(
            "SELECT (ts / 1000 + 1) * 1000, \"{key}\", count(*), sum(id) \
             FROM clicks GROUP BY 1, 2"
        );
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let mut answer = BTreeMap::new();
        for batch in batches {
            let int = |c: usize| {
                datafusion::arrow::compute::cast(batch.column(c), &DataType::Int64).unwrap()
            };
            let (ends, counts, sums) = (int(0), int(2), int(3));
            let users = batch.column(1).as_string::<i32>();
            for row in 0..batch.num_rows() {
                assert!(ends.is_valid(row) && counts.is_valid(row) && sums.is_valid(row));
                answer.insert(
                    (
                        ends.as_primitive::<Int64Type>().value(row),
                        users.value(row).to_string(),
                    ),
                    (
                        counts.as_primitive::<Int64Type>().value(row),
                        sums.as_primitive::<Int64Type>().value(row),
                    ),
                );
            }
        }
        answer
    })
}

/// The task a log line was written in, if any.
pub(super) fn task_of(line: &serde_json::Value) -> Option<u64> {
    line["span"]["task"].as_u64()
}

/// The tasks a process held when its log ended: started, and not
/// suspended or finished since.
pub(super) fn held_at_end(log: &[serde_json::Value]) -> BTreeSet<u64> {
    let mut held = BTreeSet::new();
    for line in log {
        let task = line["task"].as_u64();
        match (message(line), task) {
            ("task starting from its latest checkpoint", Some(task)) => {
                held.insert(task);
            }
            (
                "task suspended at a checkpoint, for its next owner" | "task finished",
                Some(task),
            ) => {
                held.remove(&task);
            }
            _ => {}
        }
    }
    held
}

/// Every (window, `key`) committed to `out` once, with DataFusion's count
/// and sum over `events`.
pub(super) fn assert_every_window_once(out: &Path, events: &Path, key: &str) {
    let mut got: BTreeMap<(i64, String), (i64, i64)> = BTreeMap::new();
    for line in committed(out) {
        let row: serde_json::Value = serde_json::from_str(&line).unwrap();
        let window = (
            chrono_millis(row["window_end"].as_str().unwrap()),
            row[key].as_str().unwrap().to_string(),
        );
        let value = (
            row["clicks"].as_i64().unwrap(),
            row["id_sum"].as_i64().unwrap(),
        );
        assert!(
            got.insert(window.clone(), value).is_none(),
            "window {window:?} was emitted twice"
        );
    }
    let expected = keyed_window_answer(events, key);
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(window, value)| got.get(*window) != Some(*value))
        .map(|(window, value)| (window, value, got.get(window)))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "windows differ from DataFusion's (window, expected, got): {wrong:?}"
    );
    let extra: Vec<_> = got
        .keys()
        .filter(|w| !expected.contains_key(*w))
        .take(5)
        .collect();
    assert!(extra.is_empty(), "windows DataFusion has not: {extra:?}");
}

/// How [`kill_one_of_three`] runs: what the logs are saved as, the
/// message a process logs when a task is taken from it, and whether a
/// replacement joins after the kill.
pub(super) struct KillOneOfThree {
    pub(super) logs_variable: &'static str,
    pub(super) taken_message: &'static str,
    /// A line A logs once it has handed a task over, if it logs one: A is
    /// killed only after it.
    pub(super) handed_message: Option<&'static str>,
    pub(super) replacement: bool,
}

/// Runs a pipeline as tasks in three processes sharing `file`'s store and
/// output: A starts every task, hands some to B and C as they join, and is
/// SIGKILLed mid-window, once it has checkpointed the tasks it kept twenty
/// times (two seconds or so: each is thousands of events from its end).
/// B and C (and a replacement D, if asked) run to the end. Checks that
/// every task A held when killed was restored elsewhere with its state,
/// and returns every process's log, A's first.
pub(super) fn kill_one_of_three(file: &Path, how: KillOneOfThree) -> Vec<Vec<serde_json::Value>> {
    let mut a = spawn(file);
    let mut others = Vec::new();
    let mut taken = false;
    let mut handed = how.handed_message.is_none();
    let mut checkpoints_since = 0;
    let a_log = follow(&mut a, |line| {
        match message(line) {
            "tasks assigned" if others.is_empty() => {
                others.push(spawn(file));
                others.push(spawn(file));
            }
            m if m == how.taken_message => taken = true,
            m if Some(m) == how.handed_message => handed = true,
            "checkpoint complete"
                if taken && line["state_bytes"].as_u64().is_some_and(|b| b > 0) =>
            {
                checkpoints_since += 1
            }
            _ => {}
        }
        handed && checkpoints_since >= 20
    });
    a.kill().unwrap();
    let status = a.wait().unwrap();
    let a_log = a_log.join().unwrap();
    save_logs(how.logs_variable, &[("A", &a_log)]);
    assert!(!status.success(), "A finished before it was killed");
    let killed_with = held_at_end(&a_log);
    assert!(!killed_with.is_empty(), "A held no task when killed");

    if how.replacement {
        // As a supervisor would start one.
        others.push(spawn(file));
    }
    let followers: Vec<_> = others
        .iter_mut()
        .map(|child| follow(child, |_| false))
        .collect();
    let mut logs = vec![a_log];
    for ((name, child), log) in ["B", "C", "D"].iter().zip(&mut others).zip(followers) {
        let log = log.join().unwrap();
        let status = child.wait().unwrap();
        logs.push(log);
        assert!(status.success(), "{name} failed");
    }
    let named: Vec<(&str, &[serde_json::Value])> = ["A", "B", "C", "D"]
        .into_iter()
        .zip(&logs)
        .map(|(n, l)| (n, l.as_slice()))
        .collect();
    save_logs(how.logs_variable, &named);

    // The killed process's tasks were restored by the others, with their
    // open windows.
    for task in &killed_with {
        let restored = logs[1..].iter().flatten().any(|line| {
            message(line) == "restoring from checkpoint"
                && task_of(line) == Some(*task)
                && line["state_bytes"].as_u64().is_some_and(|b| b > 0)
        });
        assert!(
            restored,
            "task {task}, A's when it was killed, was not restored with its state elsewhere"
        );
    }
    logs
}

/// The rest of a task test's pipeline after its source `clicks`: each
/// user's clicks counted per second, let out at 200 windows a second per
/// task (so that a run lasts long enough to be interrupted mid-window),
/// into files under `dir/out`.
pub(super) fn counts_per_user(dir: &Path) -> String {
    format!(
        r#"transforms:
  per_user:
    type: window
    inputs: [clicks]
    window: {{ tumble: 1s }}
    group_by: [user]
    aggregates: ["count(*) AS clicks", "sum(id) AS id_sum"]
  paced:
    type: buffer
    inputs: [per_user]
    rate: {{ events_per_second: 200 }}
    max_events: 50
sinks:
  counts:
    type: file
    inputs: [paced]
    path: {dir}/out
"#,
        dir = dir.display()
    )
}

/// Writes `dir/<name>.yaml`: a pipeline whose processes share `dir`'s
/// checkpoint store (checkpointing every 100 ms) and dead letters, with the
/// source `clicks` (its settings, indented by four spaces) and `rest`
/// (its transforms and sinks).
pub(super) fn task_pipeline(dir: &Path, name: &str, source: &str, rest: &str) -> PathBuf {
    let yaml = format!(
        r#"
checkpoint:
  interval: 100ms
  store: {dir}/store
dead_letter:
  type: file
  path: {dir}/dead_letters
sources:
  clicks:
{source}
{rest}"#,
        dir = dir.display()
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}
