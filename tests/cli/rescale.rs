//! State that moves between parallelisms: a pipeline with a windowed
//! aggregate, session windows, a running and a windowed top-N, an interval
//! join, a windowed join and dedupe is stopped
//! mid-run and restored at 2, then 4, then 1 instances; and upgraded from
//! a savepoint. The output must equal an uninterrupted run's and
//! DataFusion's answer over the same events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::crash::committed;
use super::streams::chrono_millis;
use super::{flumen, run_pipeline};

const EVENTS: i64 = 1_000_000;
const BASE_TS: i64 = 1_700_000_000_000;

/// Events a millisecond apart, of 97 keys, each second one repeating the
/// one before in `dup`; and a payment for every third event, 20 ms after
/// it (both files in time order: a late row would be dropped).
fn write_inputs(dir: &Path) {
    let mut events = String::with_capacity(EVENTS as usize * 60);
    let mut payments = String::with_capacity(EVENTS as usize * 20);
    for id in 0..EVENTS {
        let ts = BASE_TS + id;
        events.push_str(&format!(
            "{{\"id\":{id},\"key\":{},\"dup\":{},\"ts\":{ts}}}\n",
            id % 97,
            id / 2
        ));
        if id % 3 == 0 {
            payments.push_str(&format!(
                "{{\"order_id\":{id},\"amount\":{},\"paid_at\":{}}}\n",
                id % 1000,
                ts + 20
            ));
        }
    }
    std::fs::write(dir.join("events.jsonl"), events).unwrap();
    std::fs::write(dir.join("payments.jsonl"), payments).unwrap();
}

/// The pipeline, its stateful transforms at `parallelism`, writing under
/// `dir/out` with checkpoints in `dir/store`.
fn pipeline(dir: &Path, out: &str, parallelism: usize) -> PathBuf {
    let yaml = format!(
        r#"
checkpoint:
  interval: 20ms
  store: {dir}/{out}-store
  max_parallelism: 16
sources:
  events:
    type: file
    path: {dir}/events.jsonl
    batch_size: 1000
    schema: {{ id: int64, key: int64, dup: int64, ts: timestamp_ms }}
    event_time: {{ column: ts }}
  payments:
    type: file
    path: {dir}/payments.jsonl
    batch_size: 1000
    schema: {{ order_id: int64, amount: int64, paid_at: timestamp_ms }}
    event_time: {{ column: paid_at }}
transforms:
  per_key:
    type: window
    inputs: [events]
    parallelism: {parallelism}
    window: {{ tumble: 1s }}
    group_by: [key]
    aggregates: ["count(*) AS ids", "sum(id) AS id_sum"]
  deduped:
    type: dedupe
    inputs: [events]
    parallelism: {parallelism}
    keys: [dup]
    within: 10s
  top3:
    type: top_n
    inputs: [events]
    parallelism: {parallelism}
    key: [id]
    partition_by: [key]
    order_by: [id]
    n: 3
  last2:
    type: top_n
    inputs: [events]
    parallelism: {parallelism}
    window: {{ tumble: 1s }}
    partition_by: [key]
    order_by: [id DESC]
    n: 2
  sessions:
    type: window
    inputs: [events]
    parallelism: {parallelism}
    window: {{ session: {{ gap: 5ms }} }}
    group_by: [dup]
    aggregates: ["count(*) AS ids", "sum(id) AS id_sum"]
  window_joined:
    type: join
    inputs: [events, payments]
    parallelism: {parallelism}
    left_keys: [id]
    right_keys: [order_id]
    window: {{ tumble: 1s }}
    right_prefix: payment_
  joined:
    type: join
    inputs: [events, payments]
    parallelism: {parallelism}
    left_keys: [id]
    right_keys: [order_id]
    interval: {{ lower: 0s, upper: 100ms }}
    right_prefix: payment_
sinks:
  windows:
    type: file
    inputs: [per_key]
    path: {dir}/{out}/windows
  unique:
    type: file
    inputs: [deduped]
    path: {dir}/{out}/unique
  paid:
    type: file
    inputs: [joined]
    path: {dir}/{out}/paid
  last_two:
    type: file
    inputs: [last2]
    path: {dir}/{out}/last_two
  pairs:
    type: file
    inputs: [sessions]
    path: {dir}/{out}/pairs
  same_second:
    type: file
    inputs: [window_joined]
    path: {dir}/{out}/same_second
  first_three:
    type: kv
    inputs: [top3]
    path: {dir}/{out}/first_three.redb
    key: "{{key}}:{{id}}"
"#,
        dir = dir.display()
    );
    let path = dir.join(format!("{out}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// What a run wrote, in comparable form.
#[derive(Debug, PartialEq, Eq)]
struct Output {
    /// (window end in ms, key) → (ids, id_sum).
    windows: BTreeMap<(i64, i64), (i64, i64)>,
    /// Ids dedupe let through, ascending.
    unique: Vec<i64>,
    /// (order id, amount), ascending.
    paid: Vec<(i64, i64)>,
    /// (key, id) of the top-N view.
    first_three: Vec<(i64, i64)>,
    /// (window end in ms, key, id) of each second's two last ids per key,
    /// ascending.
    last_two: Vec<(i64, i64, i64)>,
    /// (dup, ids, id_sum) of each session, ascending.
    pairs: Vec<(i64, i64, i64)>,
    /// Order ids paid in the second they were placed, ascending.
    same_second: Vec<i64>,
}

fn field(line: &serde_json::Value, name: &str) -> i64 {
    line[name]
        .as_i64()
        .unwrap_or_else(|| panic!("no `{name}` in {line}"))
}

fn read_output(dir: &Path) -> Output {
    let lines = |name: &str| -> Vec<serde_json::Value> {
        committed(&dir.join(name))
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let windows = lines("windows")
        .iter()
        .map(|w| {
            let end = chrono_millis(w["window_end"].as_str().unwrap());
            (
                (end, field(w, "key")),
                (field(w, "ids"), field(w, "id_sum")),
            )
        })
        .collect();
    let mut unique: Vec<i64> = lines("unique").iter().map(|u| field(u, "id")).collect();
    unique.sort_unstable();
    let mut pairs: Vec<(i64, i64, i64)> = lines("pairs")
        .iter()
        .map(|p| (field(p, "dup"), field(p, "ids"), field(p, "id_sum")))
        .collect();
    pairs.sort_unstable();
    let mut last_two: Vec<(i64, i64, i64)> = lines("last_two")
        .iter()
        .map(|t| {
            let end = chrono_millis(t["window_end"].as_str().unwrap());
            (end, field(t, "key"), field(t, "id"))
        })
        .collect();
    last_two.sort_unstable();
    let mut same_second: Vec<i64> = lines("same_second")
        .iter()
        .map(|p| field(p, "id"))
        .collect();
    same_second.sort_unstable();
    let mut paid: Vec<(i64, i64)> = lines("paid")
        .iter()
        .map(|p| (field(p, "id"), field(p, "payment_amount")))
        .collect();
    paid.sort_unstable();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (entries, _) = runtime.block_on(async {
        let path = dir.join("first_three.redb").display().to_string();
        let reader = flumen::sinks::kv::KvReader::open(&path).await.unwrap();
        reader.scan("", None, usize::MAX).await.unwrap()
    });
    let mut first_three: Vec<(i64, i64)> = entries
        .iter()
        .map(|e| (field(&e.value, "key"), field(&e.value, "id")))
        .collect();
    first_three.sort_unstable();
    Output {
        windows,
        unique,
        paid,
        first_three,
        last_two,
        pairs,
        same_second,
    }
}

/// DataFusion's answer over the same events.
fn batch_answer(dir: &Path) -> Output {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::prelude::SessionContext;
    let read = |file: &str, columns: &[&str]| {
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(*c, DataType::Int64, false))
                .collect::<Vec<_>>(),
        ));
        let reader = datafusion::arrow::json::ReaderBuilder::new(schema.clone())
            .with_batch_size(65536)
            .build(std::io::BufReader::new(
                std::fs::File::open(dir.join(file)).unwrap(),
            ))
            .unwrap();
        let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
        Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![batches]).unwrap())
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let ctx = SessionContext::new();
        ctx.register_table("events", read("events.jsonl", &["id", "key", "dup", "ts"]))
            .unwrap();
        ctx.register_table(
            "payments",
            read("payments.jsonl", &["order_id", "amount", "paid_at"]),
        )
        .unwrap();
        let rows = |sql: &'static str| {
            let ctx = ctx.clone();
            async move {
                let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
                let mut rows: Vec<Vec<i64>> = Vec::new();
                for batch in batches {
                    for row in 0..batch.num_rows() {
                        rows.push(
                            batch
                                .columns()
                                .iter()
                                .map(|c| {
                                    let c = datafusion::arrow::compute::cast(c, &DataType::Int64)
                                        .unwrap();
                                    assert!(c.is_valid(row));
                                    c.as_primitive::<Int64Type>().value(row)
                                })
                                .collect(),
                        );
                    }
                }
                rows.sort_unstable();
                rows
            }
        };
        let windows =
            rows("SELECT (ts / 1000 + 1) * 1000, key, count(*), sum(id) FROM events GROUP BY 1, 2")
                .await
                .into_iter()
                .map(|r| ((r[0], r[1]), (r[2], r[3])))
                .collect();
        let unique = rows("SELECT min(id) FROM events GROUP BY dup")
            .await
            .into_iter()
            .map(|r| r[0])
            .collect();
        let paid = rows(
            "SELECT id, amount FROM events JOIN payments ON id = order_id \
             AND paid_at BETWEEN ts AND ts + 100",
        )
        .await
        .into_iter()
        .map(|r| (r[0], r[1]))
        .collect();
        let first_three = rows(
            "SELECT key, id FROM (SELECT key, id, \
             row_number() OVER (PARTITION BY key ORDER BY id) AS rank FROM events) \
             WHERE rank <= 3",
        )
        .await
        .into_iter()
        .map(|r| (r[0], r[1]))
        .collect();
        let last_two = rows(
            "SELECT window_end, key, id FROM (SELECT (ts / 1000 + 1) * 1000 AS window_end, \
             key, id, row_number() OVER (PARTITION BY ts / 1000, key ORDER BY id DESC) AS rank \
             FROM events) WHERE rank <= 2",
        )
        .await
        .into_iter()
        .map(|r| (r[0], r[1], r[2]))
        .collect();
        let pairs = rows("SELECT dup, count(*), sum(id) FROM events GROUP BY dup")
            .await
            .into_iter()
            .map(|r| (r[0], r[1], r[2]))
            .collect();
        let same_second = rows(
            "SELECT id FROM events JOIN payments ON id = order_id AND ts / 1000 = paid_at / 1000",
        )
        .await
        .into_iter()
        .map(|r| r[0])
        .collect();
        Output {
            windows,
            unique,
            paid,
            first_three,
            last_two,
            pairs,
            same_second,
        }
    })
}

/// Asserts that a run's output is DataFusion's answer, naming the part
/// that differs.
fn assert_same(got: &Output, expected: &Output) {
    let counts = |o: &Output| {
        (
            o.windows.len(),
            o.unique.len(),
            o.paid.len(),
            o.first_three.len(),
        )
    };
    assert_eq!(
        counts(got),
        counts(expected),
        "(windows, unique, paid, first_three) counts"
    );
    assert!(got.unique == expected.unique, "dedupe differs");
    assert!(got.paid == expected.paid, "the join differs");
    assert_eq!(got.first_three, expected.first_three);
    assert!(
        got.last_two == expected.last_two,
        "the windowed top-N differs"
    );
    assert!(got.windows == expected.windows, "windows differ");
}

/// Runs `file` until checkpoint `crash_at` is written, then dies as a
/// crash would (before that checkpoint's commit).
fn run_until_crash(file: &Path, crash_at: u64) {
    assert!(
        !run_pipeline(file, Some(crash_at)).success(),
        "the run ended before checkpoint {crash_at}"
    );
}

/// Runs `file` to its end; returns the log.
fn run_to_end(file: &Path, args: &[&str]) -> String {
    let output = flumen()
        .args(["run", "--progress", "off"])
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");
    log
}

#[test]
fn state_restored_at_two_then_four_then_one_instances_gives_the_uninterrupted_answer() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let expected = batch_answer(dir.path());
    assert_eq!(expected.unique.len() as i64, EVENTS / 2);
    assert_eq!(expected.paid.len() as i64, (EVENTS + 2) / 3);

    run_to_end(&pipeline(dir.path(), "reference", 2), &[]);
    let reference = read_output(&dir.path().join("reference"));
    assert!(
        reference == expected,
        "the uninterrupted run differs from DataFusion's answer"
    );

    run_until_crash(&pipeline(dir.path(), "rescaled", 2), 3);
    run_until_crash(&pipeline(dir.path(), "rescaled", 4), 7);
    let log = run_to_end(&pipeline(dir.path(), "rescaled", 1), &[]);
    assert!(
        log.contains("state of 4 instances handed by key group to 1"),
        "{log}"
    );
    assert_same(&read_output(&dir.path().join("rescaled")), &expected);
}

#[test]
fn an_upgrade_from_a_savepoint_keeps_the_state_and_a_changed_aggregate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let expected = batch_answer(dir.path());
    let file = pipeline(dir.path(), "upgraded", 2);
    run_until_crash(&file, 4);

    // Kept as a savepoint, the checkpoint outlives retention.
    let saved = flumen()
        .args(["savepoint"])
        .arg(&file)
        .arg("before-upgrade")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&saved.stdout);
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    assert!(
        said.contains("kept as savepoint `before-upgrade`"),
        "{said}"
    );
    let listed = flumen()
        .args(["savepoint", "--list"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("before-upgrade  (checkpoint"));

    // A changed aggregate list cannot take the window's state: refused
    // before anything runs, naming the component.
    let original = std::fs::read_to_string(&file).unwrap();
    let changed = original.replace(
        r#"aggregates: ["count(*) AS ids", "sum(id) AS id_sum"]"#,
        r#"aggregates: ["count(*) AS ids", "max(id) AS id_max"]"#,
    );
    std::fs::write(&file, &changed).unwrap();
    let refused = flumen()
        .args([
            "run",
            "--progress",
            "off",
            "--from-savepoint",
            "before-upgrade",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{error}");
    assert!(
        error.contains("does not fit this pipeline") && error.contains("`per_key`"),
        "{error}"
    );

    // Another parallelism and a new sink: everything restores.
    let upgraded = original.replace("parallelism: 2", "parallelism: 3").replace(
        "sinks:\n",
        &format!(
            "sinks:\n  audit:\n    type: file\n    inputs: [deduped]\n    path: {}/upgraded/audit\n",
            dir.path().display()
        ),
    );
    std::fs::write(&file, upgraded).unwrap();
    let log = run_to_end(&file, &["--from-savepoint", "before-upgrade"]);
    assert!(
        log.contains("state of 2 instances handed by key group to 3"),
        "{log}"
    );
    let output = read_output(&dir.path().join("upgraded"));
    assert_same(&output, &expected);
    let audit = committed(&dir.path().join("upgraded/audit"));
    assert!(!audit.is_empty() && audit.len() < expected.unique.len());
}
