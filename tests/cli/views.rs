//! Views: a running aggregate into the key-value sink's embedded store,
//! SIGKILLed and restarted; the store ends equal to DataFusion's
//! `GROUP BY` over the same events, key for key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flumen::sinks::kv::{EmbeddedReader, KvReader};

use super::crash::{Attempt, Random, committed, run_and_kill};
use super::flumen;

pub(super) const EVENTS: u64 = 1_000_000;
pub(super) const USERS: u64 = 5_000;

/// A million payments: `{"id": i, "user": …, "amount": i % 100, "ts": …}`,
/// of 5000 users in a shuffled order.
fn write_events(path: &Path) {
    write_payments(path, EVENTS, USERS);
}

/// `events` payments of `users` users.
pub(super) fn write_payments(path: &Path, events: u64, users: u64) {
    let mut random = Random::seeded(0x2545_f491_4f6c_dd1d);
    let mut text = String::with_capacity(events as usize * 60);
    for i in 0..events {
        let user = random.below(users);
        text.push_str(&format!(
            "{{\"id\":{i},\"user\":{user},\"amount\":{},\"ts\":{}}}\n",
            i % 100,
            1_700_000_000_000u64 + i
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// A running count and sum per user, from `events.jsonl` in `dir` into
/// the embedded store `users.redb` there.
fn pipeline(dir: &Path) -> PathBuf {
    pipeline_into(dir, &format!("path: {}/users.redb", dir.display()))
}

/// The same into the store `store` (the `kv` sink's setting for it).
pub(super) fn pipeline_into(dir: &Path, store: &str) -> PathBuf {
    let yaml = format!(
        r#"
checkpoint:
  interval: 20ms
  store: {dir}/checkpoints
sources:
  payments:
    type: file
    path: {dir}/events.jsonl
    batch_size: 2000
    schema: {{ id: int64, user: int64, amount: int64, ts: timestamp_ms }}
transforms:
  per_user:
    type: aggregate
    inputs: [payments]
    group_by: [user]
    aggregates: ["count(*) AS payments", "sum(amount) AS total"]
    emit: on_checkpoint
sinks:
  users:
    type: kv
    inputs: [per_user]
    {store}
    key: "user:{{user}}"
"#,
        dir = dir.display()
    );
    let path = dir.join("views.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Runs the pipeline, SIGKILLing it at random points up to five times
/// (at least twice mid-run).
pub(super) fn kill_five_times(file: &Path) {
    let mut random = Random::new();
    let started = Instant::now();
    let mut kills = 0;
    while kills < 5 {
        match run_and_kill(file, &mut random) {
            Attempt::Killed => kills += 1,
            Attempt::Finished => break,
        }
        assert!(started.elapsed() < Duration::from_secs(300), "no progress");
    }
    assert!(kills >= 2, "killed mid-run only {kills} times");
}

/// Runs the pipeline to its end, which must succeed; returns its log.
pub(super) fn run_to_end(file: &Path) -> String {
    let output = flumen()
        .args(["run", "--progress", "off"])
        .arg(file)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");
    log
}

/// Every value in the embedded store: key → (payments, total).
fn store(path: &Path) -> BTreeMap<String, (i64, i64)> {
    view(&path.display().to_string())
}

/// Every value in `store` (as `flumen kv` names it): key → (payments,
/// total).
pub(super) fn view(store: &str) -> BTreeMap<String, (i64, i64)> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (entries, next) = runtime.block_on(async {
        let reader = KvReader::open(store).await.unwrap();
        reader.scan("", None, usize::MAX).await.unwrap()
    });
    assert!(next.is_none());
    entries
        .into_iter()
        .map(|e| {
            let figures = (
                e.value["payments"].as_i64().unwrap(),
                e.value["total"].as_i64().unwrap(),
            );
            (e.key, figures)
        })
        .collect()
}

/// Asserts that `got` holds `expected`, key for key.
pub(super) fn assert_same_view(
    expected: &BTreeMap<String, (i64, i64)>,
    got: &BTreeMap<String, (i64, i64)>,
) {
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(key, figures)| got.get(*key) != Some(figures))
        .take(5)
        .map(|(key, figures)| (key, figures, got.get(key)))
        .collect();
    assert!(
        wrong.is_empty(),
        "keys differ (key, expected, stored): {wrong:?}"
    );
    assert_eq!(got.len(), expected.len());
}

/// DataFusion's `GROUP BY user` over the events file.
pub(super) fn batch_answer(events: &Path) -> BTreeMap<String, (i64, i64)> {
    use std::sync::Arc;

    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::prelude::SessionContext;
    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Int64, false),
        Field::new("amount", DataType::Int64, false),
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
        ctx.register_table("payments", Arc::new(table)).unwrap();
        let batches = ctx
            .sql("SELECT user, count(*) AS payments, sum(amount) AS total FROM payments GROUP BY user")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut answer = BTreeMap::new();
        for batch in &batches {
            let column = |i: usize| -> &Int64Array { batch.column(i).as_primitive::<Int64Type>() };
            for row in 0..batch.num_rows() {
                answer.insert(
                    format!("user:{}", column(0).value(row)),
                    (column(1).value(row), column(2).value(row)),
                );
            }
        }
        answer
    })
}

#[test]
fn a_running_count_sigkilled_five_times_ends_as_group_by_answers() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    write_events(&events);
    let expected = batch_answer(&events);
    assert_eq!(expected.len() as u64, USERS);
    let file = pipeline(dir.path());
    kill_five_times(&file);
    let log = run_to_end(&file);
    assert!(log.contains("restoring from checkpoint"), "{log}");
    let got = store(&dir.path().join("users.redb"));
    assert_same_view(&expected, &got);

    // `flumen kv` reads the same store.
    let count = flumen()
        .args(["kv", "count"])
        .arg(dir.path().join("users.redb"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&count.stdout).trim(),
        USERS.to_string()
    );
    let get = flumen()
        .args(["kv", "get"])
        .arg(dir.path().join("users.redb"))
        .arg("user:42")
        .output()
        .unwrap();
    let line: serde_json::Value = serde_json::from_slice(&get.stdout).unwrap();
    let (payments, total) = expected["user:42"];
    assert_eq!(line["value"]["payments"], payments);
    assert_eq!(line["value"]["total"], total);
}

#[test]
fn rows_with_a_null_key_reach_the_dead_letters_and_the_rest_lands() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("events.jsonl"),
        "{\"user\":1,\"amount\":5}\n{\"user\":null,\"amount\":6}\n{\"user\":1,\"amount\":7}\n",
    )
    .unwrap();
    let yaml = format!(
        r#"
checkpoint:
  interval: 1s
dead_letter:
  type: file
  path: {dir}/dead_letters
sources:
  payments:
    type: file
    path: {dir}/events.jsonl
    schema: {{ user: int64, amount: int64 }}
sinks:
  latest:
    type: kv
    inputs: [payments]
    path: {dir}/latest.redb
    key: "user:{{user}}"
"#,
        dir = dir.path().display()
    );
    let file = dir.path().join("latest.yaml");
    std::fs::write(&file, yaml).unwrap();
    run_to_end(&file);
    let dead = committed(&dir.path().join("dead_letters"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains("a column of the key is null"), "{dead:?}");
    let got = EmbeddedReader::open(&dir.path().join("latest.redb"))
        .unwrap()
        .get("user:1")
        .unwrap()
        .unwrap();
    assert_eq!(got.value["amount"], 7, "the last row of the key");
}

/// A view of counts per key over events in batches of `BATCH`, read while
/// the pipeline writes it: every read must see whole checkpoints, so the
/// counts always add up to a whole number of batches.
#[test]
fn readers_beside_the_writer_see_whole_checkpoints_only() {
    const BATCH: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    write_events(&events);
    // Events of many users to a batch: a half-applied checkpoint would
    // show as a sum that is not a whole number of batches.
    let yaml = std::fs::read_to_string(pipeline(dir.path()))
        .unwrap()
        .replace("batch_size: 2000", &format!("batch_size: {BATCH}"))
        .replace("interval: 20ms", "interval: 5ms");
    let file = dir.path().join("read_while_written.yaml");
    std::fs::write(&file, yaml).unwrap();
    let store = dir.path().join("users.redb");
    let mut run = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut reads = 0;
    let mut sums = std::collections::BTreeSet::new();
    loop {
        let finished = run.try_wait().unwrap().is_some();
        if let Ok(reader) = EmbeddedReader::open(&store) {
            let (entries, _) = reader.scan("user:", None, usize::MAX).unwrap();
            let sum: u64 = entries
                .iter()
                .map(|e| e.value["payments"].as_u64().unwrap())
                .sum();
            assert_eq!(
                sum % BATCH,
                0,
                "a read saw part of a checkpoint: {sum} payments"
            );
            sums.insert(sum);
            reads += 1;
        }
        if finished {
            break;
        }
    }
    assert!(run.wait().unwrap().success());
    assert_eq!(
        sums.last().copied(),
        Some(EVENTS),
        "the last read sees every event"
    );
    assert!(
        sums.len() > 2,
        "reads saw the view grow ({reads} reads, sums {sums:?})"
    );
}

/// The thousand users with the most payments, kept current in the store
/// through SIGKILLs: a running count, a running top 1000 over it (whose
/// changelog deletes users that fall out), and the `kv` sink.
#[test]
fn the_top_thousand_through_sigkills_equals_rank_over_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    write_events(&events);
    let yaml = std::fs::read_to_string(pipeline(dir.path()))
        .unwrap()
        .replace(
            "sinks:\n  users:\n    type: kv\n    inputs: [per_user]",
            "  top_users:\n    type: top_n\n    inputs: [per_user]\n    key: [user]\n    order_by: [payments DESC, user]\n    n: 1000\nsinks:\n  users:\n    type: kv\n    inputs: [top_users]",
        );
    assert!(yaml.contains("top_n"), "{yaml}");
    let file = dir.path().join("top_users.yaml");
    std::fs::write(&file, yaml).unwrap();
    kill_five_times(&file);
    run_to_end(&file);

    let mut ranked: Vec<(String, (i64, i64))> = batch_answer(&events).into_iter().collect();
    let user = |key: &str| key["user:".len()..].parse::<i64>().unwrap();
    ranked.sort_by_key(|(key, (payments, _))| (std::cmp::Reverse(*payments), user(key)));
    ranked.truncate(1000);
    let expected: BTreeMap<String, i64> = ranked
        .into_iter()
        .map(|(key, (payments, _))| (key, payments))
        .collect();
    let got: BTreeMap<String, i64> = store(&dir.path().join("users.redb"))
        .into_iter()
        .map(|(key, (payments, _))| (key, payments))
        .collect();
    assert_eq!(
        got.len(),
        1000,
        "users that fell out of the top were deleted"
    );
    assert!(
        got == expected,
        "the top thousand differs from DataFusion's ranking"
    );
}

/// `delete_when` turns rows into deletes of their keys.
#[test]
fn rows_matching_delete_when_delete_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stock.jsonl"),
        "{\"item\":1,\"stock\":5}\n{\"item\":2,\"stock\":3}\n{\"item\":1,\"stock\":0}\n{\"item\":3,\"stock\":0}\n",
    )
    .unwrap();
    let yaml = format!(
        r#"
sources:
  stock:
    type: file
    path: {dir}/stock.jsonl
    schema: {{ item: int64, stock: int64 }}
sinks:
  in_stock:
    type: kv
    inputs: [stock]
    path: {dir}/in_stock.redb
    key: "item:{{item}}"
    delete_when: stock = 0
"#,
        dir = dir.path().display()
    );
    let file = dir.path().join("in_stock.yaml");
    std::fs::write(&file, yaml).unwrap();
    run_to_end(&file);
    let reader = EmbeddedReader::open(&dir.path().join("in_stock.redb")).unwrap();
    let (entries, _) = reader.scan("", None, 10).unwrap();
    let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["item:2"]);

    // A condition that is not one is refused before anything runs.
    let bad = std::fs::read_to_string(&file)
        .unwrap()
        .replace("delete_when: stock = 0", "delete_when: stock + 1");
    std::fs::write(&file, bad).unwrap();
    let output = flumen().arg("validate").arg(&file).output().unwrap();
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        error.contains("delete_when") && error.contains("true/false"),
        "{error}"
    );
}
