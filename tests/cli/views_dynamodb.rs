//! Views in DynamoDB (moto's): a running count through SIGKILLs, checked
//! key for key against DataFusion's `GROUP BY`, and rows DynamoDB cannot
//! take going to the dead letters.
//!
//! moto is a Python server and slow (a few thousand items a second), so
//! the SIGKILL run's million events are of 300 users rather than 5,000: a
//! checkpoint writes at most 300 items, and a run takes several.

use std::collections::BTreeMap;
use std::process::Output;

use super::crash::{Random, committed};

/// Users of the SIGKILL run.
const USERS: u64 = 300;
use super::views::{
    EVENTS, assert_same_view, batch_answer, pipeline_into, run_to_end, write_payments,
};

fn moto() -> String {
    std::env::var("FLUMEN_TEST_S3_ENDPOINT").expect(
        "FLUMEN_TEST_S3_ENDPOINT is not set: run the tests with scripts/test.sh, which starts moto",
    )
}

/// A table name no other run of the test used on this moto.
fn fresh_table(name: &str) -> String {
    format!("{name}_{:x}", Random::new().below(u64::MAX))
}

/// The `dynamodb:` settings of a sink writing `table` on moto.
fn store(table: &str) -> String {
    format!(
        "dynamodb: {{ table: {table}, aws: {{ endpoint: \"{}\", region: us-east-1, access_key_id: flumen, secret_access_key: flumen }} }}",
        moto()
    )
}

/// `flumen kv ARGS`, reaching moto as the AWS CLI would.
fn kv(args: &[&str]) -> Output {
    super::flumen()
        .arg("kv")
        .args(args)
        .env("AWS_ENDPOINT_URL", moto())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "flumen")
        .env("AWS_SECRET_ACCESS_KEY", "flumen")
        .output()
        .unwrap()
}

/// Every item of `table`, through `flumen kv scan`.
fn items(table: &str) -> Vec<serde_json::Value> {
    let output = kv(&["scan", &format!("dynamodb://{table}"), "--limit", "1000000"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Runs the pipeline, SIGKILLing it up to five times at random moments
/// of its first 700 ms (at least twice mid-run). Not at checkpoints, as
/// the other backends' tests do: a busy moto can take longer over one
/// checkpoint than the run over every event.
fn kill_at_random_times(file: &std::path::Path) {
    let mut random = Random::new();
    let mut kills = 0;
    while kills < 5 {
        let mut run = super::flumen()
            .args(["run", "--progress", "off"])
            .arg(file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50 + random.below(650)));
        if run.try_wait().unwrap().is_some() {
            break;
        }
        run.kill().unwrap();
        run.wait().unwrap();
        kills += 1;
    }
    assert!(kills >= 2, "killed mid-run only {kills} times");
}

#[test]
fn a_running_count_into_dynamodb_sigkilled_five_times_ends_as_group_by_answers() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    write_payments(&events, EVENTS, USERS);
    let expected = batch_answer(&events);
    let table = fresh_table("views");
    let file = pipeline_into(dir.path(), &store(&table));
    // Smaller batches make the run last a second or two.
    let yaml = std::fs::read_to_string(&file)
        .unwrap()
        .replace("batch_size: 2000", "batch_size: 100");
    std::fs::write(&file, yaml).unwrap();
    kill_at_random_times(&file);
    run_to_end(&file);
    let got: BTreeMap<String, (i64, i64)> = items(&table)
        .into_iter()
        .map(|item| {
            let value = &item["value"];
            let key = item["key"].as_str().unwrap().to_string();
            (
                key,
                (
                    value["payments"].as_i64().unwrap(),
                    value["total"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert_same_view(&expected, &got);

    let count = kv(&["count", &format!("dynamodb://{table}"), "--prefix", "user:"]);
    assert_eq!(
        String::from_utf8_lossy(&count.stdout).trim(),
        USERS.to_string()
    );
}

#[test]
fn rows_dynamodb_cannot_take_reach_the_dead_letters_and_the_rest_lands() {
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(500 * 1024);
    std::fs::write(
        dir.path().join("notes.jsonl"),
        format!(
            "{{\"user\":1,\"note\":\"small\"}}\n{{\"user\":2,\"note\":\"{big}\"}}\n{{\"user\":null,\"note\":\"no key\"}}\n{{\"user\":3,\"note\":\"also small\"}}\n"
        ),
    )
    .unwrap();
    let table = fresh_table("notes");
    let yaml = format!(
        r#"
checkpoint:
  interval: 1s
dead_letter:
  type: file
  path: {dir}/dead_letters
sources:
  notes:
    type: file
    path: {dir}/notes.jsonl
    schema: {{ user: int64, note: string }}
sinks:
  latest:
    type: kv
    inputs: [notes]
    {store}
    key: "user:{{user}}"
"#,
        dir = dir.path().display(),
        store = store(&table),
    );
    let file = dir.path().join("notes.yaml");
    std::fs::write(&file, yaml).unwrap();
    run_to_end(&file);
    let dead = committed(&dir.path().join("dead_letters"));
    assert_eq!(
        dead.len(),
        2,
        "{:?}",
        dead.iter()
            .map(|d| &d[..200.min(d.len())])
            .collect::<Vec<_>>()
    );
    assert!(
        dead.iter()
            .any(|d| d.contains("DynamoDB stores items of up to"))
    );
    assert!(
        dead.iter()
            .any(|d| d.contains("a column of the key is null"))
    );
    let mut keys: Vec<String> = items(&table)
        .iter()
        .map(|item| item["key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    assert_eq!(keys, ["user:1", "user:3"]);
}
