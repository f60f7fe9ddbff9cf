//! The `flumen` binary as users run it: pipeline files, errors and exit
//! codes, metrics, signals, graphs and the schema.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use flumen::config::Document;
use flumen::sources::nexmark::{EventKind, GeneratorSettings, NexmarkGenerator};
use flumen_core::testing::free_port;

#[cfg(feature = "serve")]
#[path = "cli/bulk_server.rs"]
mod bulk_server;
#[cfg(feature = "serve")]
#[path = "cli/console.rs"]
mod console;
#[path = "cli/crash.rs"]
mod crash;
#[path = "cli/deploy.rs"]
mod deploy;
#[path = "cli/docs.rs"]
mod docs;
#[cfg(feature = "http")]
#[path = "cli/enrich.rs"]
mod enrich;
#[path = "cli/first_hour.rs"]
mod first_hour;
#[cfg(feature = "http")]
#[path = "cli/http.rs"]
mod http;
#[cfg(feature = "http")]
#[path = "cli/http_clients.rs"]
mod http_clients;
#[cfg(feature = "kafka")]
#[path = "cli/kafka.rs"]
mod kafka;
#[cfg(feature = "kafka")]
#[path = "cli/kafka_tasks.rs"]
mod kafka_tasks;
#[cfg(feature = "kinesis")]
#[path = "cli/kinesis.rs"]
mod kinesis;
#[cfg(feature = "kinesis")]
#[path = "cli/kinesis_tasks.rs"]
mod kinesis_tasks;
#[path = "cli/lake.rs"]
mod lake;
#[cfg(all(
    feature = "kafka",
    feature = "kinesis",
    feature = "http",
    feature = "dynamodb",
    feature = "search",
    feature = "serve"
))]
#[path = "cli/patterns/mod.rs"]
mod patterns;
#[cfg(feature = "kv")]
#[path = "cli/rescale.rs"]
mod rescale;
#[cfg(feature = "search")]
#[path = "cli/search.rs"]
mod search;
#[cfg(feature = "serve")]
#[path = "cli/serve.rs"]
mod serve;
#[path = "cli/sql.rs"]
mod sql;
#[cfg(any(feature = "kafka", feature = "kinesis"))]
#[path = "cli/streams.rs"]
mod streams;
#[path = "cli/unwritable.rs"]
mod unwritable;
#[cfg(feature = "kv")]
#[path = "cli/views.rs"]
mod views;
#[cfg(feature = "dynamodb")]
#[path = "cli/views_dynamodb.rs"]
mod views_dynamodb;
#[cfg(feature = "redis")]
#[path = "cli/views_redis.rs"]
mod views_redis;

/// Runs `flumen run FILE` quietly to its end, optionally set to die once
/// checkpoint `crash_before_commit` is recorded and before it is committed.
fn run_pipeline(file: &Path, crash_before_commit: Option<u64>) -> std::process::ExitStatus {
    let mut command = flumen();
    command.args(["run", "--progress", "off"]).arg(file);
    if let Some(checkpoint) = crash_before_commit {
        command.env("FLUMEN_CRASH_BEFORE_COMMIT", checkpoint.to_string());
    }
    command.stderr(Stdio::null()).status().unwrap()
}

/// Runs `future` to its end on a runtime of its own.
fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn flumen() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flumen"));
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Output {
    let output = flumen().args(args).output().expect("flumen runs");
    Output {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Writes `yaml` to a file in `dir` and runs `flumen COMMAND FILE`.
fn run_file(dir: &tempfile::TempDir, command: &str, yaml: &str) -> Output {
    let path = dir.path().join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    run(&[command, path.to_str().unwrap()])
}

fn config_error(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = run_file(&dir, "validate", yaml);
    assert_eq!(
        output.code, 2,
        "config errors exit 2; stderr: {}",
        output.stderr
    );
    output.stderr
}

fn assert_contains(haystack: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            haystack.contains(needle),
            "expected {needle:?} in:\n{haystack}"
        );
    }
}

const BIDS: &str = "sources:\n  bids:\n    type: nexmark\n    events: 1000\n";

#[test]
fn unknown_component_type_suggests_the_closest() {
    let stderr = config_error(
        "sources:\n  bids:\n    type: nexmrk\nsinks:\n  out:\n    type: blackhole\n    inputs: [bids]\n",
    );
    assert_contains(
        &stderr,
        &[
            "error: unknown source type `nexmrk`; source types: file, http, kafka, kinesis, nexmark, stdin",
            "pipeline.yaml:3:11 (at `sources.bids.type`)",
            " 3 |     type: nexmrk",
            "|           ^^^^^^",
            "help: did you mean `nexmark`?",
        ],
    );
    let misplaced = config_error(&format!(
        "sources:\n  bids:\n    type: blackhole\n{}",
        "sinks:\n  out:\n    type: blackhole\n    inputs: [bids]\n"
    ));
    assert_contains(
        &misplaced,
        &["`blackhole` is a sink type; put it under `sinks:`"],
    );
}

#[test]
fn a_yaml_syntax_error_is_reported_once_at_its_line() {
    let stderr = config_error("sources:\n  bids:\n    type: nexmark\n  events: [1, 2\nsinks:\n");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
    assert_contains(
        &stderr,
        &[
            "error: this `[` is not closed: expected `]` before the end of the line",
            "pipeline.yaml:4:11",
            " 4 |   events: [1, 2",
        ],
    );
}

#[test]
fn a_misspelled_column_names_the_columns_there_are() {
    let stderr = config_error(&format!(
        "{BIDS}transforms:\n  w:\n    type: window\n    inputs: [bids]\n    window: {{ tumble: 1s }}\n    group_by: [auctoin]\n    aggregates: [\"count(*) AS n\"]\nsinks:\n  out:\n    type: blackhole\n    inputs: [w]\n"
    ));
    assert_contains(
        &stderr,
        &[
            "column `auctoin` does not exist; columns: auction, bidder, price",
            "(at `transforms.w.group_by[0]`)",
        ],
    );
}

#[test]
fn undefined_input_lists_what_is_defined() {
    let stderr = config_error(&format!(
        "{BIDS}  persons:\n    type: nexmark\n    kind: person\n    events: 1000\ntransforms:\n  enrich:\n    type: union\n    inputs: [persons, bidz]\nsinks:\n  out:\n    type: blackhole\n    inputs: [enrich]\n"
    ));
    assert_contains(
        &stderr,
        &[
            "input `bidz` is not defined; defined: bids, enrich, persons",
            "(at `transforms.enrich.inputs[1]`)",
            ":12:23",
            " 12 |     inputs: [persons, bidz]",
            "help: did you mean `bids`?",
        ],
    );
}

#[test]
fn unknown_key_and_wrong_type_name_the_key_and_what_was_expected() {
    let unknown = config_error(
        "sources:\n  bids:\n    type: nexmark\n    evnts: 10\nsinks:\n  out:\n    type: blackhole\n    inputs: [bids]\n",
    );
    assert_contains(
        &unknown,
        &[
            "unknown field `evnts`",
            "(at `sources.bids.evnts`)",
            ":4:5",
            "did you mean `events`?",
        ],
    );

    let common = config_error(&format!(
        "{BIDS}sinks:\n  out:\n    type: blackhole\n    input: [bids]\n"
    ));
    assert_contains(
        &common,
        &[
            "missing `inputs`",
            "did you mean `inputs` rather than `input`?",
        ],
    );

    let wrong_type = config_error(
        "sources:\n  bids:\n    type: nexmark\n    events: lots\nsinks:\n  out:\n    type: blackhole\n    inputs: [bids]\n",
    );
    assert_contains(
        &wrong_type,
        &[
            "invalid type: string \"lots\", expected u64",
            "(at `sources.bids.events`)",
            ":4:13",
        ],
    );

    let variant = config_error(&format!(
        "{BIDS}sinks:\n  out:\n    type: stdout\n    format: jsn\n    inputs: [bids]\n"
    ));
    assert_contains(&variant, &["unknown variant `jsn`", "did you mean `json`?"]);

    let section = config_error(&format!(
        "{BIDS}sink:\n  out:\n    type: blackhole\n    inputs: [bids]\n"
    ));
    assert_contains(
        &section,
        &["unknown section `sink`", "did you mean `sinks`?"],
    );
}

#[test]
fn cycles_and_dead_ends_are_rejected() {
    let cycle = config_error(&format!(
        "{BIDS}transforms:\n  a:\n    type: union\n    inputs: [bids, c]\n  b:\n    type: union\n    inputs: [a]\n  c:\n    type: union\n    inputs: [b]\nsinks:\n  out:\n    type: blackhole\n    inputs: [c]\n"
    ));
    assert_contains(&cycle, &["is part of a cycle: "]);
    assert!(
        ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"]
            .iter()
            .any(|c| cycle.contains(c)),
        "{cycle}"
    );

    let dead_end = config_error(&format!(
        "{BIDS}transforms:\n  unused:\n    type: sql\n    inputs: [bids]\n    filter: price > 0\nsinks:\n  out:\n    type: blackhole\n    inputs: [bids]\n"
    ));
    assert_contains(
        &dead_end,
        &["`unused` has no path to a sink", "(at `transforms.unused`)"],
    );
}

#[test]
fn environment_variables_fill_in_and_must_be_defined() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "sources:\n  bids:\n    type: nexmark\n    events: ${FLUMEN_TEST_EVENTS}\nsinks:\n  out:\n    type: blackhole\n    inputs: [bids]\n";
    let path = dir.path().join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    let output = flumen()
        .args(["validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_contains(
        &String::from_utf8_lossy(&output.stderr),
        &[
            "environment variable `FLUMEN_TEST_EVENTS` is not set",
            "pipeline.yaml:4:13",
        ],
    );
    let output = flumen()
        .args(["run", path.to_str().unwrap(), "--progress", "off"])
        .env("FLUMEN_TEST_EVENTS", "5000")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_contains(
        &String::from_utf8_lossy(&output.stderr),
        &["in: bids=4600;"],
    );
}

#[test]
fn sql_that_does_not_type_check_points_at_the_expression() {
    let stderr = config_error(&format!(
        "{BIDS}transforms:\n  q:\n    type: sql\n    inputs: [bids]\n    filter: price + 1\nsinks:\n  out:\n    type: blackhole\n    inputs: [q]\n"
    ));
    assert_contains(
        &stderr,
        &[
            "`price + 1` is Int64, expected a true/false condition",
            "(at `transforms.q.filter`)",
            ":9:13",
        ],
    );

    let unknown_column = config_error(&format!(
        "{BIDS}transforms:\n  q:\n    type: sql\n    inputs: [bids]\n    select: [auction, prize]\nsinks:\n  out:\n    type: blackhole\n    inputs: [q]\n"
    ));
    assert_contains(&unknown_column, &["prize", "(at `transforms.q.select[1]`)"]);
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    let stderr = config_error("sources:\n  bids:\n    type: nexmark\n   events: [1000\n");
    assert_contains(&stderr, &["pipeline.yaml:"]);
}

#[test]
fn usage_errors_exit_2_and_runtime_failures_exit_1() {
    assert_eq!(run(&["run"]).code, 2, "missing argument");
    assert_eq!(run(&["frobnicate"]).code, 2, "unknown command");
    let missing = run(&["validate", "no/such/pipeline.yaml"]);
    assert_eq!(missing.code, 2);
    assert_contains(
        &missing.stderr,
        &["cannot read pipeline file `no/such/pipeline.yaml`"],
    );

    let dir = tempfile::tempdir().unwrap();
    let failing = run_file(
        &dir,
        "run",
        &format!(
            "{BIDS}transforms:\n  boom:\n    type: sql\n    inputs: [bids]\n    select: [\"auction / (price - price) AS boom\"]\n    on_error: fail\nsinks:\n  out:\n    type: blackhole\n    inputs: [boom]\n"
        ),
    );
    assert_eq!(failing.code, 1, "{}", failing.stderr);
    assert_contains(
        &failing.stderr,
        &["error: `boom` failed:", "Divide by zero"],
    );
}

/// The bids of the first `events` Nexmark events, as DataFusion sees them.
async fn bids_table(events: u64) -> SessionContext {
    let mut generator = NexmarkGenerator::new(GeneratorSettings::default());
    let batch = generator.generate_kind(0..events, EventKind::Bid);
    let ctx = SessionContext::new();
    let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
    ctx.register_table("bids", std::sync::Arc::new(table))
        .unwrap();
    ctx
}

#[tokio::test(flavor = "multi_thread")]
async fn run_writes_what_datafusion_computes_over_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let yaml = format!(
        "sources:\n  bids:\n    type: nexmark\n    events: 50000\n    batch_size: 1000\n    parallelism: 2\ntransforms:\n  q:\n    type: sql\n    inputs: [bids]\n    parallelism: 3\n    partitioning: {{ hash: [auction] }}\n    filter: auction % 7 = 0 AND price > 50000\n    select: [auction, bidder, price * 0.908 AS price_eur]\nsinks:\n  out:\n    type: file\n    inputs: [q]\n    path: {}\n",
        out.display()
    );
    let output = run_file(&dir, "run", &yaml);
    assert_eq!(output.code, 0, "{}", output.stderr);

    let mut written: Vec<(i64, i64, String)> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                row["auction"].as_i64().unwrap(),
                row["bidder"].as_i64().unwrap(),
                row["price_eur"].to_string(),
            )
        })
        .collect();
    written.sort();

    let ctx = bids_table(50_000).await;
    let expected = ctx
        .sql("SELECT auction, bidder, price * 0.908 AS price_eur FROM bids WHERE auction % 7 = 0 AND price > 50000")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut expected: Vec<(i64, i64, String)> = expected
        .iter()
        .flat_map(|batch| {
            let auction = batch.column(0).as_primitive::<Int64Type>().clone();
            let bidder = batch.column(1).as_primitive::<Int64Type>().clone();
            let price = batch.column(2).as_primitive::<Float64Type>().clone();
            (0..batch.num_rows()).map(move |i| {
                (
                    auction.value(i),
                    bidder.value(i),
                    serde_json::Value::from(price.value(i)).to_string(),
                )
            })
        })
        .collect();
    expected.sort();
    assert!(!expected.is_empty());
    assert_eq!(written, expected);
    assert_contains(&output.stderr, &[&format!("out: out={}", expected.len())]);
}

/// A long-running pipeline, with its output lines read on threads (so the
/// child never blocks on a full pipe) and handed over as they come.
struct Running {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    stderr_seen: String,
}

fn lines_of(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Running {
    fn start(dir: &tempfile::TempDir, yaml: &str, args: &[&str]) -> Running {
        let path = dir.path().join("pipeline.yaml");
        std::fs::write(&path, yaml).unwrap();
        Running::start_file(&path, args)
    }

    fn start_file(path: &Path, args: &[&str]) -> Running {
        let mut child = flumen()
            .args(["run", path.to_str().unwrap()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Running {
            stdout: lines_of(child.stdout.take().unwrap()),
            stderr: lines_of(child.stderr.take().unwrap()),
            child,
            stderr_seen: String::new(),
        }
    }

    /// Blocks until `count` rows were printed; returns them.
    fn read_rows(&mut self, count: usize) -> Vec<String> {
        (0..count)
            .map(|_| self.stdout.recv().expect("stdout ended early"))
            .collect()
    }

    /// Blocks until a line of standard error contains `needle`.
    fn wait_for_log(&mut self, needle: &str) -> String {
        loop {
            let Ok(line) = self.stderr.recv() else {
                panic!("stderr ended before {needle:?}:\n{}", self.stderr_seen);
            };
            self.stderr_seen.push_str(&line);
            self.stderr_seen.push('\n');
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit; returns the rows not read yet, the exit code and all
    /// of standard error.
    fn finish(mut self) -> (Vec<String>, i32, String) {
        let code = self
            .child
            .wait()
            .unwrap()
            .code()
            .expect("exited, not killed");
        let rest: Vec<String> = self.stdout.iter().collect();
        for line in self.stderr.iter() {
            self.stderr_seen.push_str(&line);
            self.stderr_seen.push('\n');
        }
        (rest, code, self.stderr_seen)
    }
}

/// The count in `out: NAME=COUNT` of the summary line.
fn summary_count(stderr: &str, sink: &str) -> usize {
    let line = stderr
        .lines()
        .find(|l| l.contains("; out: "))
        .expect("a summary line");
    let field = line
        .split(&format!("{sink}="))
        .nth(1)
        .expect("the sink in the summary");
    field
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

const SLOW_BIDS: &str = "sources:\n  bids:\n    type: nexmark\n    max_events_per_second: 20000\n";

#[test]
fn sigterm_drains_and_exits_0_with_every_counted_row_written() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("{SLOW_BIDS}sinks:\n  out:\n    type: stdout\n    inputs: [bids]\n");
    let mut running = Running::start(&dir, &yaml, &["--progress", "off"]);
    let mut rows = running.read_rows(1000);
    running.signal("TERM");
    let (rest, code, stderr) = running.finish();
    assert_eq!(code, 0, "{stderr}");
    rows.extend(rest);
    assert_contains(&stderr, &["drained after interrupt"]);
    assert_eq!(summary_count(&stderr, "out"), rows.len());
    assert!(rows.iter().all(|r| r.starts_with("{\"auction\":")));
}

fn scrape(address: &str) -> HashMap<String, f64> {
    scrape_text(address)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The `/metrics` page, as Prometheus reads it.
fn scrape_text(address: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split("\r\n\r\n").nth(1).unwrap().to_string()
}

#[test]
fn metrics_are_served_while_running_and_match_the_rows_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let yaml = "sources:\n  bids:\n    type: nexmark\n    events: 30000\n    max_events_per_second: 15000\ntransforms:\n  q:\n    type: sql\n    inputs: [bids]\n    filter: price > 10000\nsinks:\n  out:\n    type: stdout\n    inputs: [q]\n";
    let mut running = Running::start(
        &dir,
        yaml,
        &[
            "--metrics-addr",
            &address,
            "--metrics-linger",
            "5m",
            "--progress",
            "off",
        ],
    );
    running.wait_for_log("serving metrics");
    running.read_rows(100);

    let events = |metrics: &HashMap<String, f64>, component: &str, direction: &str| {
        let key = format!(
            "flumen_component_events_total{{component=\"{component}\",direction=\"{direction}\"}}"
        );
        metrics
            .get(&key)
            .copied()
            .unwrap_or_else(|| panic!("no {key} in {metrics:?}"))
    };
    let during = scrape(&address);
    let page = scrape_text(&address);
    assert_contains(
        &page,
        &[
            "# HELP flumen_component_events_total Events (rows) a component received",
            "# HELP flumen_batch_processing_seconds Time a component took to handle one batch.",
            "# HELP flumen_source_lag_events Events a source instance knows of",
        ],
    );
    assert!(events(&during, "bids", "out") >= 100.0);
    assert!(events(&during, "bids", "out") < 27_600.0, "scraped mid-run");
    assert!(
        during
            .keys()
            .any(|k| k.starts_with("flumen_batch_processing_seconds_bucket{component=\"q\""))
    );
    assert!(during.contains_key("flumen_channel_queued_batches{component=\"out\",instance=\"0\"}"));
    assert!(during.contains_key("flumen_watermark_delay_seconds{component=\"q\",instance=\"0\"}"));
    assert!(during.contains_key("flumen_source_lag_events{component=\"bids\",instance=\"0\"}"));

    running.wait_for_log("; out: ");
    let after = scrape(&address);
    running.signal("TERM");
    let (_, code, stderr) = running.finish();
    assert_eq!(code, 0, "{stderr}");
    let written = summary_count(&stderr, "out") as f64;
    assert_eq!(
        events(&after, "bids", "out"),
        27_600.0,
        "46 bids in every 50 events"
    );
    assert_eq!(events(&after, "q", "in"), 27_600.0);
    assert_eq!(events(&after, "q", "out"), written);
    assert_eq!(events(&after, "out", "in"), written);
    assert_eq!(events(&after, "out", "out"), written);
    assert_eq!(after["flumen_component_errors_total{component=\"q\"}"], 0.0);
    assert_eq!(
        after["flumen_component_dead_lettered_total{component=\"q\"}"],
        0.0
    );
}

#[test]
fn the_grafana_dashboard_charts_only_metrics_flumen_serves() {
    use flumen_core::runtime::metrics::*;
    let served = [
        EVENTS_TOTAL,
        BYTES_TOTAL,
        ERRORS_TOTAL,
        DEAD_LETTERED_TOTAL,
        BATCH_SECONDS,
        QUEUED_BATCHES,
        CHANNEL_CAPACITY,
        WATERMARK_DELAY_SECONDS,
        SOURCE_LAG_EVENTS,
        SIDE_OUTPUT_EVENTS_TOTAL,
        STATE_ROWS,
        STATE_BYTES,
    ];
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut charted = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("flumen_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let name = name.strip_suffix("_bucket").unwrap_or(&name).to_string();
                assert!(
                    served.contains(&name.as_str()),
                    "{name} is not a Flumen metric"
                );
                charted.insert(name);
            }
        }
    }
    assert_eq!(charted.len(), served.len(), "every metric has a chart");
}

const THREE_BRANCHES: &str = "sources:\n  bids:\n    type: nexmark\n    events: 1000\n    parallelism: 2\ntransforms:\n  cheap:\n    type: sql\n    inputs: [bids]\n    filter: price < 1000\n  by_auction:\n    type: sql\n    inputs: [bids]\n    parallelism: 3\n    partitioning: { hash: [auction] }\n    select: [auction, price]\nsinks:\n  cheap_out:\n    type: blackhole\n    inputs: [cheap]\n  auction_out:\n    type: file\n    inputs: [by_auction]\n    path: target/unused.jsonl\n  raw_out:\n    type: blackhole\n    inputs: [bids]\n    partitioning: broadcast\n";

#[test]
fn graph_shows_every_component_and_edge() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.yaml");
    std::fs::write(&path, THREE_BRANCHES).unwrap();
    let path = path.to_str().unwrap();

    let mermaid = run(&["graph", path]);
    assert_eq!(mermaid.code, 0, "{}", mermaid.stderr);
    assert_contains(
        &mermaid.stdout,
        &[
            "flowchart LR",
            "bids([\"bids<br/><small>nexmark ×2</small>\"])",
            "by_auction[\"by_auction<br/><small>sql ×3</small>\"]",
            "cheap_out[(\"cheap_out<br/><small>blackhole</small>\")]",
            "bids -->|\"round_robin\"| cheap",
            "bids -->|\"hash(auction)\"| by_auction",
            "by_auction -->|\"round_robin\"| auction_out",
            "bids -->|\"broadcast\"| raw_out",
            "cheap -->|\"forward\"| cheap_out",
        ],
    );

    let dot = run(&["graph", path, "--format", "dot"]);
    assert_contains(
        &dot.stdout,
        &[
            "digraph pipeline",
            "\"bids\" -> \"by_auction\" [label=\"hash(auction)\"]",
            "\"cheap\" -> \"cheap_out\"",
        ],
    );
    assert_eq!(dot.stdout.matches(" -> ").count(), 5);

    let svg_path = dir.path().join("graph.svg");
    let svg = run(&[
        "graph",
        path,
        "--format",
        "svg",
        "-o",
        svg_path.to_str().unwrap(),
    ]);
    assert_eq!(svg.code, 0, "{}", svg.stderr);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.starts_with("<?xml") && svg.contains("<svg"),
        "{}",
        &svg[..100.min(svg.len())]
    );
    for name in [
        "bids",
        "cheap",
        "by_auction",
        "cheap_out",
        "auction_out",
        "raw_out",
        "hash(auction)",
    ] {
        assert!(svg.contains(name), "{name} in the SVG");
    }
}

/// Every pipeline file under `examples/`.
fn example_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy();
            if path.is_dir() && !name.starts_with('.') && name != "out" {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
        &mut files,
    );
    files.sort();
    files
}

#[test]
fn the_json_schema_validates_every_example_as_written_and_rejects_mistakes() {
    let schema = run(&["config", "schema"]);
    assert_eq!(schema.code, 0);
    let schema: serde_json::Value = serde_json::from_str(&schema.stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let examples = example_files();
    assert!(examples.len() >= 20, "{examples:?}");
    for file in examples {
        // As an editor sees it: `${VAR:-default}` not yet substituted.
        let text = std::fs::read_to_string(&file).unwrap();
        let document = Document::parse(&text).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&document.value)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
        let validate = run(&["validate", file.to_str().unwrap()]);
        if file.ends_with("load_leveling/migration.yaml") {
            // Its input is made by the legacy service example first.
            assert_eq!(validate.code, 2, "{}", validate.stderr);
            let missing = file.with_file_name("articles.jsonl");
            assert_contains(
                &validate.stderr,
                &[&format!(
                    "error: file: `{}` does not exist",
                    missing.display()
                )],
            );
            continue;
        }
        assert_eq!(validate.code, 0, "{}: {}", file.display(), validate.stderr);
    }
    let typo = Document::parse(&format!("{BIDS}    evnts: 3\n")).unwrap();
    assert!(!validator.is_valid(&typo.value));
    let not_a_number =
        Document::parse("sources:\n  bids:\n    type: nexmark\n    events: lots\n").unwrap();
    assert!(!validator.is_valid(&not_a_number.value));
    let from_environment =
        Document::parse("sources:\n  bids:\n    type: nexmark\n    events: ${EVENTS:-10}\nsinks:\n  out:\n    type: blackhole\n    inputs: [bids]\n").unwrap();
    assert!(validator.is_valid(&from_environment.value));
}

#[test]
fn the_configuration_reference_is_up_to_date() {
    let reference = run(&["config", "reference"]);
    assert_eq!(reference.code, 0);
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reference.md"))
            .unwrap();
    assert!(
        committed == reference.stdout,
        "docs/reference.md is stale: regenerate it with `cargo run -- config reference > docs/reference.md`"
    );
    assert_contains(
        &reference.stdout,
        &[
            "### `nexmark` source",
            "| `events` |",
            "### `sql` transform",
        ],
    );
}

/// A pipeline reading `in.jsonl` (two bad lines among six), casting a
/// column that does not always parse, with the given `on_error` settings.
fn dead_letter_pipeline(dir: &tempfile::TempDir, on_error: &str) -> String {
    let lines = [
        r#"{"id":1,"code":"10"}"#,
        r#"{"id":2,"code":"20"}"#,
        r#"{"id":3,"code":"#,
        r#"{"id":"four","code":"40"}"#,
        r#"{"id":5,"code":"x5"}"#,
        r#"{"id":6,"code":"60"}"#,
    ];
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    format!(
        r#"
dead_letter:
  type: file
  path: {dir}/dead
sources:
  orders:
    type: file
    path: {dir}/in.jsonl
    format: json
    schema: {{ id: int64, code: string }}
    {on_error}
transforms:
  parsed:
    type: sql
    inputs: [orders]
    select: [id, "CAST(code AS INT) AS code"]
    {on_error}
sinks:
  out:
    type: file
    inputs: [parsed]
    path: {dir}/out.jsonl
"#,
        dir = dir.path().display()
    )
}

/// A self-signed certificate for `127.0.0.1`, and its key, made by openssl
/// in `dir`: `(cert.pem, key.pem)`.
fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        // A server certificate, not a CA (which TLS clients refuse as one).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success(), "openssl could not make a certificate");
    (cert, key)
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    let paths: Vec<PathBuf> = if !path.exists() {
        Vec::new()
    } else if path.is_dir() {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    for path in paths {
        for line in std::fs::read_to_string(path).unwrap().lines() {
            lines.push(serde_json::from_str(line).unwrap());
        }
    }
    lines
}

#[test]
fn bad_records_go_to_the_dead_letter_sink_and_the_rest_flows_on() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_file(&dir, "run", &dead_letter_pipeline(&dir, ""));
    assert_eq!(output.code, 0, "{}", output.stderr);
    let out: Vec<i64> = json_lines(&dir.path().join("out.jsonl"))
        .iter()
        .map(|row| row["id"].as_i64().unwrap())
        .collect();
    assert_eq!(out, vec![1, 2, 6]);

    let mut dead = json_lines(&dir.path().join("dead"));
    dead.sort_by_key(|d| d["record"].as_str().unwrap().to_string());
    let summary: Vec<(&str, &str, Option<&str>)> = dead
        .iter()
        .map(|d| {
            (
                d["component"].as_str().unwrap(),
                d["record"].as_str().unwrap(),
                d["position"].as_str(),
            )
        })
        .collect();
    let file = dir.path().join("in.jsonl").display().to_string();
    assert_eq!(
        summary,
        vec![
            (
                "orders",
                r#"{"id":"four","code":"40"}"#,
                Some(format!("{file}, line 4, byte 58").as_str())
            ),
            (
                "orders",
                r#"{"id":3,"code":"#,
                Some(format!("{file}, line 3, byte 42").as_str())
            ),
            ("parsed", r#"{"id":5,"code":"x5"}"#, None),
        ]
    );
    assert!(dead[0]["error"].as_str().unwrap().contains("four"));
    assert!(dead[2]["error"].as_str().unwrap().contains("x5"));
}

#[test]
fn on_error_fail_stops_and_on_error_drop_counts() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_file(&dir, "run", &dead_letter_pipeline(&dir, "on_error: fail"));
    assert_eq!(output.code, 1, "{}", output.stderr);
    assert_contains(
        &output.stderr,
        &[
            "`orders` failed",
            "bad record",
            "Truncated record",
            "byte 42",
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let output = run_file(&dir, "run", &dead_letter_pipeline(&dir, "on_error: drop"));
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_contains(
        &output.stderr,
        &["dropped records that could not be handled"],
    );
    assert_eq!(json_lines(&dir.path().join("out.jsonl")).len(), 3);
    assert!(json_lines(&dir.path().join("dead")).is_empty());
}
