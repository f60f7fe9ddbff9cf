//! What a new user meets first: rejected records kept by default, runs
//! that say what they did, errors in a pipeline file's words, and the
//! commands around `run`.

use std::path::Path;
use std::process::Stdio;

use super::*;

/// Tweets whose `likes` are numbers.
const TWEETS: &str =
    "{\"id\": 1, \"likes\": 7}\n{\"id\": 2, \"likes\": 14}\n{\"id\": 3, \"likes\": 21}\n";

fn tweets_pipeline(schema: &str, sink: &str) -> String {
    format!(
        "sources:\n  tweets:\n    type: file\n    path: tweets.jsonl\n    schema: {schema}\nsinks:\n  out:\n{sink}    inputs: [tweets]\n"
    )
}

const FILE_SINK: &str = "    type: file\n    path: out.jsonl\n";

/// A directory with `tweets.jsonl` and `likes.yaml`, a pipeline that
/// declares `likes` a string where the data has numbers.
fn likes_as_text() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tweets.jsonl"), TWEETS).unwrap();
    let pipeline = tweets_pipeline("{ id: int64, likes: string }", FILE_SINK);
    std::fs::write(dir.path().join("likes.yaml"), pipeline).unwrap();
    dir
}

/// Runs `flumen ARGS` in `dir`.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    let output = flumen().current_dir(dir).args(args).output().unwrap();
    Output {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn a_type_mismatch_keeps_every_record_in_the_default_dead_letters_and_fails_the_run() {
    let dir = likes_as_text();
    let file = dir.path().join("likes.yaml");

    let output = run_in(dir.path(), &["run", "--progress", "off", "likes.yaml"]);
    assert_eq!(output.code, 1, "{}", output.stderr);
    assert_contains(
        &output.stderr,
        &[
            "WARN rejected records, sent to the dead letters node=tweets count=3 first=column `likes`: declared string, found number 7 (at tweets.jsonl, line 1, byte 0): {\"id\": 1, \"likes\": 7}",
            "WARN records were rejected rejected=3 dead_letters=.flumen/likes/dead_letters",
            "; in: tweets=0; out: out=0; rejected: 3 (tweets=3) → .flumen/likes/dead_letters\n",
            "error: every record was rejected: 3 went to .flumen/likes/dead_letters\n",
        ],
    );
    let dead = json_lines(&dir.path().join(".flumen/likes/dead_letters"));
    let kept: Vec<(&str, &str, &str)> = dead
        .iter()
        .map(|d| {
            (
                d["error"].as_str().unwrap(),
                d["record"].as_str().unwrap(),
                d["position"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        [
            (
                "column `likes`: declared string, found number 7",
                "{\"id\": 1, \"likes\": 7}",
                "tweets.jsonl, line 1, byte 0"
            ),
            (
                "column `likes`: declared string, found number 14",
                "{\"id\": 2, \"likes\": 14}",
                "tweets.jsonl, line 2, byte 22"
            ),
            (
                "column `likes`: declared string, found number 21",
                "{\"id\": 3, \"likes\": 21}",
                "tweets.jsonl, line 3, byte 45"
            ),
        ]
    );

    // With the schema fixed, the run succeeds and says nothing was rejected.
    std::fs::write(
        &file,
        tweets_pipeline("{ id: int64, likes: int64 }", FILE_SINK),
    )
    .unwrap();
    let output = run_in(dir.path(), &["run", "--progress", "off", "likes.yaml"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_contains(
        &output.stderr,
        &["; in: tweets=3; out: out=3; rejected: 0\n"],
    );
}

#[test]
fn validate_reads_a_sample_of_each_input() {
    let dir = likes_as_text();
    let output = run_in(dir.path(), &["validate", "likes.yaml"]);
    assert_eq!(output.code, 2, "{}", output.stderr);
    assert_eq!(
        output.stderr,
        "error: every record read would be rejected: 3 of the first 3 records of `tweets` do not fit its schema; the first: column `likes`: declared string, found number 7 (at tweets.jsonl, line 1, byte 0): {\"id\": 1, \"likes\": 7}\n  --> likes.yaml:5:33 (at `sources.tweets.schema.likes`)\n   |\n 5 |     schema: { id: int64, likes: string }\n   |                                 ^^^^^^\n"
    );

    std::fs::remove_file(dir.path().join("tweets.jsonl")).unwrap();
    let output = run_in(dir.path(), &["validate", "likes.yaml"]);
    assert_eq!(output.code, 2, "{}", output.stderr);
    assert_eq!(
        output.stderr,
        "error: file: `tweets.jsonl` does not exist\n  --> likes.yaml:4:11 (at `sources.tweets.path`)\n   |\n 4 |     path: tweets.jsonl\n   |           ^^^^^^^^^^^^\n"
    );
}

#[test]
fn a_finished_pipeline_run_again_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "checkpoint:\n  interval: 10s\n{BIDS}sinks:\n  out:\n    type: file\n    inputs: [bids]\n    path: out\n"
    );
    std::fs::write(dir.path().join("bids.yaml"), yaml).unwrap();
    let first = run_in(dir.path(), &["run", "--progress", "off", "bids.yaml"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_contains(
        &first.stderr,
        &["; in: bids=920; out: out=920; rejected: 0\n"],
    );
    let again = run_in(dir.path(), &["run", "--progress", "off", "bids.yaml"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_contains(
        &again.stderr,
        &[
            "this pipeline finished at checkpoint 1; run with --fresh to start over\n",
            "; in: bids=0; out: out=0; rejected: 0\n",
        ],
    );
    let fresh = run_in(
        dir.path(),
        &["run", "--progress", "off", "--fresh", "bids.yaml"],
    );
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    assert!(
        !fresh.stderr.contains("this pipeline finished"),
        "{}",
        fresh.stderr
    );
    assert_contains(
        &fresh.stderr,
        &["; in: bids=920; out: out=920; rejected: 0\n"],
    );

    let missing = run_in(dir.path(), &["run", "--from-checkpoint", "99", "bids.yaml"]);
    assert_eq!(missing.code, 2, "a usage error: {}", missing.stderr);
    assert_contains(
        &missing.stderr,
        &["error: checkpoint 99 does not exist in `.flumen/bids/checkpoints`\n"],
    );
}

#[test]
fn a_pipeline_reads_and_writes_the_same_files_from_any_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(pipelines.join("data")).unwrap();
    std::fs::write(pipelines.join("data/tweets.jsonl"), TWEETS).unwrap();
    let yaml = "checkpoint:\n  interval: 10s\nsources:\n  tweets:\n    type: file\n    path: data/tweets.jsonl\n    schema: { id: int64, likes: int64 }\nsinks:\n  out:\n    type: file\n    inputs: [tweets]\n    path: out\n";
    std::fs::write(pipelines.join("tweets.yaml"), yaml).unwrap();

    let beside = run_in(&pipelines, &["run", "--progress", "off", "tweets.yaml"]);
    assert_eq!(beside.code, 0, "{}", beside.stderr);
    assert_contains(
        &beside.stderr,
        &["; in: tweets=3; out: out=3; rejected: 0\n"],
    );
    // From the directory above: the same checkpoint store, finished.
    let above = run_in(
        dir.path(),
        &["run", "--progress", "off", "pipelines/tweets.yaml"],
    );
    assert_eq!(above.code, 0, "{}", above.stderr);
    assert_contains(
        &above.stderr,
        &["this pipeline finished at checkpoint 1; run with --fresh to start over"],
    );
    // From anywhere else, started over: the same input, the same output.
    let elsewhere = tempfile::tempdir().unwrap();
    let absolute = pipelines.join("tweets.yaml");
    let from_elsewhere = run_in(
        elsewhere.path(),
        &[
            "run",
            "--progress",
            "off",
            "--fresh",
            absolute.to_str().unwrap(),
        ],
    );
    assert_eq!(from_elsewhere.code, 0, "{}", from_elsewhere.stderr);
    assert_contains(
        &from_elsewhere.stderr,
        &["; in: tweets=3; out: out=3; rejected: 0\n"],
    );
    let ids: Vec<i64> = json_lines(&pipelines.join("out"))
        .iter()
        .map(|row| row["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3], "started over, so written once");
    assert!(pipelines.join(".flumen/tweets/checkpoints").is_dir());
    assert!(!dir.path().join("out").exists());
    assert!(!dir.path().join(".flumen").exists());
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

#[test]
fn errors_say_what_is_wrong_in_a_pipeline_files_words() {
    let cases: &[(&str, &str)] = &[
        (
            "sources:\n  tweets:\n    type: file\n    path: tweets.jsonl\n    schema: { id: int64, posted_at: datetime }\nsinks:\n  out:\n    type: stdout\n    inputs: [tweets]\n",
            "error: unknown type `datetime`; did you mean `timestamp`? The types are: bool, int8, int16, int32, int64, uint8, uint16, uint32, uint64, float32, float64, string, binary, date, timestamp (milliseconds), timestamp_s, timestamp_us, timestamp_ns, list<TYPE>, or an Arrow type such as Decimal128(10, 2)\n  --> pipeline.yaml:5:37 (at `sources.tweets.schema.posted_at`)\n   |\n 5 |     schema: { id: int64, posted_at: datetime }\n   |                                     ^^^^^^^^\n",
        ),
        (
            "sources:\n  tweets:\n    type: file\n    path: tweets.jsonl\n    schema: { id: int64 }\ntransforms:\n  t:\n    type: sql\n    inputs: [tweets]\n    select: [id, likes]\nsinks:\n  out:\n    type: stdout\n    inputs: [t]\n",
            "error: column `likes` does not exist; columns: id\n  --> pipeline.yaml:10:18 (at `transforms.t.select[1]`)\n    |\n 10 |     select: [id, likes]\n    |                  ^^^^^\n  = help: source `tweets` reads only the columns its `schema` declares (id); add `likes` to `sources.tweets.schema` to read it\n",
        ),
        (
            "sources:\n  tweets:\n    type: file\n    path: tweets.jsonl\n    schema: { id: int64, posted_at: string }\n    event_time: { column: posted_at }\nsinks:\n  out:\n    type: stdout\n    inputs: [tweets]\n",
            "error: column `posted_at` is string, expected a timestamp or integer milliseconds; declare it `posted_at: timestamp` in its source's `schema` to read text such as `2026-01-31T12:00:00Z` as a time\n  --> pipeline.yaml:6:27 (at `sources.tweets.event_time.column`)\n   |\n 6 |     event_time: { column: posted_at }\n   |                           ^^^^^^^^^\n",
        ),
        (
            "sources:\n  tweets:\n    type: file\n    path: tweets.jsonl\n    schema: { id: int64, text: string }\n    event_time: { column: id }\ntransforms:\n  w:\n    type: window\n    inputs: [tweets]\n    window: { tumble: 1m }\n    aggregates: [\"sum(text) AS s\"]\nsinks:\n  out:\n    type: stdout\n    inputs: [w]\n",
            "error: `sum(text) AS s`: `sum` does not take `text` (string)\n  --> pipeline.yaml:12:18 (at `transforms.w.aggregates[0]`)\n    |\n 12 |     aggregates: [\"sum(text) AS s\"]\n    |                  ^^^^^^^^^^^^^^^^\n",
        ),
        (
            "sources:\n  tweets:\n    type: file\n    path: tweets.jsonl\n    schema: { id: int64 }\ntransforms:\n  t:\n    type: sql\n    inputs: [tweets]\nsinks:\n  out:\n    type: stdout\n    inputs: [t]\n",
            "error: `t` sets neither `filter` nor `select`; set one or both\n  --> pipeline.yaml:8:5 (at `transforms.t`)\n   |\n 8 |     type: sql\n   |     ^^^^\n",
        ),
        (
            "sources:\n  tweets:\n    type: file\n    path: tweets.jsonl\n    schema: { id: int64, likes: string\nsinks:\n  out:\n    type: stdout\n    inputs: [tweets]\n",
            "error: this `{` is not closed: expected `}` before the end of the line\n  --> pipeline.yaml:5:13\n   |\n 5 |     schema: { id: int64, likes: string\n   |             ^^^^\n",
        ),
        (
            "sources:\n  tweets:\n    type: file\n   path: tweets.jsonl\nsinks:\n  out:\n    type: stdout\n    inputs: [tweets]\n",
            "error: this line is not indented like the keys around it: keys of one mapping start in the same column\n  --> pipeline.yaml:4:4\n   |\n 4 |    path: tweets.jsonl\n   |    ^^^^\n",
        ),
        (
            "sources:\n  tweets:\n    type: file\n    path: tweets.jsonl\n      batch_size: 3\nsinks:\n  out:\n    type: stdout\n    inputs: [tweets]\n",
            "error: a `key:` where a value was expected: this line is indented too far (or a value holding `: ` needs quotes)\n  --> pipeline.yaml:5:17\n   |\n 5 |       batch_size: 3\n   |                 ^\n",
        ),
    ];
    for (yaml, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pipeline.yaml"), yaml).unwrap();
        let output = run_in(dir.path(), &["validate", "pipeline.yaml"]);
        assert_eq!(output.code, 2, "for:\n{yaml}");
        assert_eq!(&output.stderr, expected, "for:\n{yaml}");
    }
}

#[test]
fn an_unreachable_broker_is_named_while_waiting_and_in_the_error() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "sources:\n  orders:\n    type: kafka\n    brokers: 127.0.0.1:{port}\n    topics: [orders]\n    group: g\n    schema: {{ id: int64 }}\n    connect_timeout: 3s\nsinks:\n  out:\n    type: stdout\n    inputs: [orders]\n"
    );
    let output = run_file(&dir, "run", &yaml);
    assert_eq!(output.code, 1, "{}", output.stderr);
    assert_contains(
        &output.stderr,
        &[
            &format!("WARN waiting for brokers 127.0.0.1:{port} (Meta data fetch error: "),
            &format!(
                "error: `orders` failed: kafka: cannot reach the brokers 127.0.0.1:{port} within 3s (set by `sources.orders.connect_timeout`): "
            ),
        ],
    );
}

#[test]
fn the_summary_and_errors_follow_the_log_format() {
    let dir = likes_as_text();
    let output = run_in(
        dir.path(),
        &[
            "--log-format",
            "json",
            "run",
            "--progress",
            "off",
            "likes.yaml",
        ],
    );
    assert_eq!(output.code, 1);
    let events: Vec<serde_json::Value> = output
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let summary = events
        .iter()
        .find(|e| e["outcome"] == "finished")
        .expect("a summary event");
    assert_eq!(summary["level"], "INFO");
    assert_eq!(summary["in"], serde_json::json!({ "tweets": 0 }));
    assert_eq!(summary["out"], serde_json::json!({ "out": 0 }));
    assert_eq!(summary["rejected"], 3);
    assert_eq!(summary["rejected_by"], serde_json::json!({ "tweets": 3 }));
    assert_eq!(summary["dead_letters"], ".flumen/likes/dead_letters");
    let error = events.last().unwrap();
    assert_eq!(error["level"], "ERROR");
    assert_eq!(
        error["message"],
        "every record was rejected: 3 went to .flumen/likes/dead_letters"
    );
    assert_eq!(error["exit_code"], 1);
}

#[test]
fn stdin_is_a_source() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "sources:\n  lines:\n    type: stdin\n    schema: { id: int64, text: string }\nsinks:\n  out:\n    type: stdout\n    inputs: [lines]\n    format: json\n";
    let path = dir.path().join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = flumen()
        .args(["run", "--progress", "off"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"id\": 1, \"text\": \"a\"}\nnot json\n{\"id\": 2, \"text\": \"b\"}\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "{\"id\":1,\"text\":\"a\"}\n{\"id\":2,\"text\":\"b\"}\n"
    );
    assert_contains(
        &stderr,
        &["; in: lines=2; out: out=2; rejected: 1 (lines=1) → "],
    );
    let dead = json_lines(&dir.path().join(".flumen/pipeline/dead_letters"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["record"], "not json");
    assert_eq!(dead[0]["position"], "stdin, line 2, byte 23");
}

#[test]
fn validate_and_graph_show_the_columns_of_each_component() {
    let output = run(&["validate", "--schemas", "examples/quickstart.yaml"]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(
        output.stdout,
        "bids (source nexmark)\n  auction: int64\n  bidder: int64\n  price: int64\n  channel: string\n  url: string\n  date_time: timestamp\n  extra: string\nexpensive_in_euros (transform sql)\n  auction: int64\n  bidder: int64\n  price_eur: float64\n  date_time: timestamp\nto_file (sink file)\n  auction: int64\n  bidder: int64\n  price_eur: float64\n  date_time: timestamp\nto_terminal (sink stdout)\n  auction: int64\n  bidder: int64\n  price_eur: float64\n  date_time: timestamp\n"
    );
    let graph = run(&["graph", "--schemas", "examples/quickstart.yaml"]);
    assert_eq!(graph.code, 0, "{}", graph.stderr);
    assert_contains(
        &graph.stdout,
        &[
            "expensive_in_euros -->|\"round_robin<br/>auction: int64<br/>bidder: int64<br/>price_eur: float64<br/>date_time: timestamp\"| to_file",
        ],
    );
    let dot = run(&["graph", "--format", "dot", "examples/quickstart.yaml"]);
    assert_contains(
        &dot.stdout,
        &[
            "\"bids\" [label=\"bids\\nnexmark ×2\", shape=box, style=rounded];",
            "\"expensive_in_euros\" [label=\"expensive_in_euros\\nsql ×2\", shape=box];",
            "\"to_file\" [label=\"to_file\\nfile\", shape=cylinder];",
        ],
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_flumen()"),
        ("zsh", "#compdef flumen"),
        ("fish", "complete -c flumen"),
    ] {
        let output = run(&["completions", shell]);
        assert_eq!(output.code, 0, "{}", output.stderr);
        assert_contains(&output.stdout, &[marker, "validate"]);
    }
}
