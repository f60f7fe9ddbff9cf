//! `flumen sql` over Parquet files laid out as sinks write them: Hive
//! partitions, and staged or in-progress files that must never be read.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::object_store::ObjectStoreExt;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{Output, assert_contains, flumen};

/// Rows in the committed files, and the sum of their `value`s.
const ROWS: i64 = 300;
const SUM: i64 = ROWS * (ROWS - 1) / 2;

/// Rows `ids`, with `value = id` and alternating channels.
fn batch(ids: std::ops::Range<i64>, value: Option<i64>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("value", DataType::Int64, false),
    ]));
    let channels: Vec<&str> = ids
        .clone()
        .map(|id| if id % 2 == 0 { "app" } else { "web" })
        .collect();
    let values: Vec<i64> = ids.clone().map(|id| value.unwrap_or(id)).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(ids)),
            Arc::new(StringArray::from(channels)),
            Arc::new(Int64Array::from(values)),
        ],
    )
    .unwrap()
}

fn parquet_bytes(batch: &RecordBatch) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
    bytes
}

/// The files of a table, by path below its root: committed files in two
/// day partitions, and staged, in-progress and hidden files holding rows
/// with `value` 1,000,000 that no query may count.
fn table_files() -> Vec<(&'static str, Vec<u8>)> {
    let never = |n: i64| parquet_bytes(&batch(0..n, Some(1_000_000)));
    vec![
        (
            "dt=2026-11-25/part-0.parquet",
            parquet_bytes(&batch(0..100, None)),
        ),
        (
            "dt=2026-11-26/part-0.parquet",
            parquet_bytes(&batch(100..250, None)),
        ),
        (
            "dt=2026-11-26/part-1.parquet",
            parquet_bytes(&batch(250..300, None)),
        ),
        ("_staging/x.parquet", never(7)),
        ("_staging/dt=2026-11-26/part-2.parquet", never(11)),
        ("dt=2026-11-26/_part-3.parquet", never(13)),
        ("dt=2026-11-26/.part-4.parquet", never(17)),
        (".hidden.parquet", never(19)),
    ]
}

/// Writes [`table_files`] under `root`.
fn write_table(root: &Path) {
    for (path, bytes) in table_files() {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn sql(args: &[&str]) -> Output {
    let output = flumen()
        .arg("sql")
        .args(args)
        .output()
        .expect("flumen runs");
    Output {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A temporary directory holding the table `t` at `t/`.
struct Table {
    dir: tempfile::TempDir,
    arg: String,
}

fn table() -> Table {
    let dir = tempfile::tempdir().unwrap();
    write_table(&dir.path().join("t"));
    let arg = format!("t={}", dir.path().join("t").display());
    Table { dir, arg }
}

fn query_csv(table: &Table, query: &str) -> String {
    let output = sql(&["--table", &table.arg, "--format", "csv", query]);
    assert_eq!(output.code, 0, "{query}: {}", output.stderr);
    output.stdout
}

#[test]
fn counts_and_sums_read_only_committed_files() {
    let t = table();
    assert_eq!(
        query_csv(&t, "SELECT count(*) AS n, sum(value) AS total FROM t"),
        format!("n,total\n{ROWS},{SUM}\n")
    );
    assert_eq!(
        query_csv(
            &t,
            "SELECT dt, count(*) AS n, max(value) AS top FROM t GROUP BY dt ORDER BY dt"
        ),
        "dt,n,top\n2026-11-25,100,99\n2026-11-26,200,299\n"
    );
    // A single file is a table too, whatever its name, and a trailing
    // slash changes nothing.
    let single = t.dir.path().join("odd name #1.parq");
    std::fs::copy(t.dir.path().join("t/dt=2026-11-25/part-0.parquet"), &single).unwrap();
    let file = format!("one={}", single.display());
    let slash = format!("t={}/", t.dir.path().join("t").display());
    let output = sql(&[
        "--table",
        &file,
        "--table",
        &slash,
        "--format",
        "csv",
        "SELECT (SELECT count(*) FROM one) AS one, (SELECT count(*) FROM t) AS t",
    ]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(output.stdout, format!("one,t\n100,{ROWS}\n"));
}

#[test]
fn a_partition_filter_prunes_directories() {
    let t = table();
    assert_eq!(
        query_csv(
            &t,
            "SELECT count(*) AS n, min(id) AS first FROM t WHERE dt = '2026-11-26'"
        ),
        "n,first\n200,100\n"
    );
    let explain = query_csv(
        &t,
        "EXPLAIN SELECT count(*) FROM t WHERE dt = '2026-11-26' AND value > 10",
    );
    // The partition filter is applied exactly while listing files, so the
    // scan holds only the files of the matching directory.
    assert_contains(
        &explain,
        &[
            // (quotes are doubled in CSV)
            "full_filters=[t.dt = Utf8(\"\"2026-11-26\"\")]",
            "dt=2026-11-26/part-0.parquet",
            "dt=2026-11-26/part-1.parquet",
        ],
    );
    assert!(!explain.contains("dt=2026-11-25"), "{explain}");
    assert!(!explain.contains("_part-3"), "{explain}");
}

#[test]
fn statements_that_write_are_refused_by_class() {
    let t = table();
    let copied = t.dir.path().join("copy.parquet");
    for (statement, class) in [
        (
            "CREATE TABLE x AS SELECT * FROM t".to_string(),
            "CREATE TABLE",
        ),
        (
            format!(
                "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '{}'",
                t.dir.path().display()
            ),
            "CREATE EXTERNAL TABLE",
        ),
        ("INSERT INTO t SELECT * FROM t".to_string(), "INSERT"),
        (format!("COPY t TO '{}'", copied.display()), "COPY"),
        (
            format!("COPY (SELECT 1 AS a) TO '{}'", copied.display()),
            "COPY",
        ),
        ("SET datafusion.execution.batch_size = 1".to_string(), "SET"),
        ("DROP TABLE t".to_string(), "DROP TABLE"),
        ("SELECT * INTO x FROM t".to_string(), "SELECT INTO"),
        (
            "EXPLAIN ANALYZE INSERT INTO t SELECT * FROM t".to_string(),
            "INSERT",
        ),
        // A permitted statement first does not open the door to the next.
        ("SELECT 1; DELETE FROM t".to_string(), "DELETE"),
    ] {
        let output = sql(&["--table", &t.arg, &statement]);
        assert_eq!(output.code, 1, "{statement}: {}", output.stderr);
        assert_contains(
            &output.stderr,
            &[&format!(
                "error: flumen sql is read-only: {class} is not allowed"
            )],
        );
    }
    assert!(!copied.exists(), "COPY wrote a file");
    // The table is as it was.
    assert_eq!(
        query_csv(&t, "SELECT count(*) AS n FROM t"),
        format!("n\n{ROWS}\n")
    );
}

#[test]
fn reading_statements_and_explain_are_allowed() {
    let t = table();
    let shown = query_csv(&t, "SHOW TABLES");
    assert_contains(&shown, &["public,t,BASE TABLE"]);
    let described = query_csv(&t, "DESCRIBE t");
    assert_contains(&described, &["id,Int64", "channel,Utf8", "dt,Utf8"]);
    let analyzed = query_csv(&t, "EXPLAIN ANALYZE SELECT count(*) FROM t");
    assert_contains(&analyzed, &["output_rows"]);
}

#[test]
fn results_as_table_csv_json_and_parquet() {
    let t = table();
    let query = "SELECT id, channel, dt FROM t WHERE id < 2 OR id = 299 ORDER BY id";

    let output = sql(&["--table", &t.arg, query]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(
        output.stdout,
        "+-----+---------+------------+\n\
         | id  | channel | dt         |\n\
         +-----+---------+------------+\n\
         | 0   | app     | 2026-11-25 |\n\
         | 1   | web     | 2026-11-25 |\n\
         | 299 | web     | 2026-11-26 |\n\
         +-----+---------+------------+\n"
    );

    assert_eq!(
        query_csv(&t, query),
        "id,channel,dt\n0,app,2026-11-25\n1,web,2026-11-25\n299,web,2026-11-26\n"
    );
    // No rows: still a header.
    assert_eq!(query_csv(&t, "SELECT id FROM t WHERE id < 0"), "id\n");

    let output = sql(&["--table", &t.arg, "--format", "json", query]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    let rows: Vec<serde_json::Value> = output
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"id": 0, "channel": "app", "dt": "2026-11-25"}),
            serde_json::json!({"id": 1, "channel": "web", "dt": "2026-11-25"}),
            serde_json::json!({"id": 299, "channel": "web", "dt": "2026-11-26"}),
        ]
    );

    let csv_file = t.dir.path().join("out.csv");
    let output = sql(&[
        "--table",
        &t.arg,
        "--format",
        "csv",
        "--output",
        csv_file.to_str().unwrap(),
        query,
    ]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(output.stdout, "");
    assert_eq!(
        std::fs::read_to_string(&csv_file).unwrap(),
        "id,channel,dt\n0,app,2026-11-25\n1,web,2026-11-25\n299,web,2026-11-26\n"
    );

    let parquet_file = t.dir.path().join("out.parquet");
    let output = sql(&[
        "--table",
        &t.arg,
        "--format",
        "parquet",
        "-o",
        parquet_file.to_str().unwrap(),
        "SELECT dt, sum(value) AS total FROM t GROUP BY dt ORDER BY dt",
    ]);
    assert_eq!(output.code, 0, "{}", output.stderr);
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&parquet_file).unwrap())
            .unwrap()
            .build()
            .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let days: Vec<&str> = batch
        .column(0)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    let totals = batch
        .column(1)
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    assert_eq!(days, ["2026-11-25", "2026-11-26"]);
    assert_eq!(totals, [99 * 100 / 2, SUM - 99 * 100 / 2]);

    let no_file = sql(&["--table", &t.arg, "--format", "parquet", query]);
    assert_eq!(no_file.code, 2, "{}", no_file.stderr);
    assert_contains(&no_file.stderr, &["`--format parquet` writes a file"]);

    // A query that fails leaves the file that was there as it was.
    let failed_file = t.dir.path().join("failed.csv");
    std::fs::write(&failed_file, "before\n").unwrap();
    let failed = sql(&[
        "--table",
        &t.arg,
        "--format",
        "csv",
        "--output",
        failed_file.to_str().unwrap(),
        "SELECT CAST(channel AS INT) FROM t",
    ]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert_eq!(std::fs::read_to_string(&failed_file).unwrap(), "before\n");
    let left: Vec<_> = std::fs::read_dir(t.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".inprogress"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn usage_errors_exit_2_and_query_errors_exit_1() {
    let t = table();
    for (args, message) in [
        (vec!["--table", "t", "SELECT 1"], "expected NAME=LOCATION"),
        (
            vec!["--table", &t.arg, "--table", &t.arg, "SELECT 1"],
            "two tables are called `t`",
        ),
        (
            vec!["--table", "t=ftp://host/x", "SELECT 1"],
            "unsupported storage scheme `ftp://`",
        ),
        (
            vec!["--table", "t=/no/such/directory", "SELECT 1"],
            "table `t` at `/no/such/directory`: holds no Parquet files",
        ),
        (vec!["--memory-limit", "lots", "SELECT 1"], "is not a size"),
        (
            vec!["--pipeline", "no/such/pipeline.yaml", "SELECT 1"],
            "cannot read pipeline file",
        ),
        (vec!["--output", "x.csv"], "`--output` needs a QUERY"),
    ] {
        let output = sql(&args);
        assert_eq!(output.code, 2, "{args:?}: {}", output.stderr);
        assert_contains(&output.stderr, &[message]);
    }
    for (query, message) in [
        ("SELEC 1", "Expected"),
        ("SELECT nope FROM t", "nope"),
        ("SELECT * FROM missing", "missing"),
    ] {
        let output = sql(&["--table", &t.arg, query]);
        assert_eq!(output.code, 1, "{query}: {}", output.stderr);
        assert_contains(&output.stderr, &["error: ", message]);
    }
}

#[test]
fn the_prompt_reads_statements_until_end_of_input_and_goes_on_after_errors() {
    let t = table();
    let home = tempfile::tempdir().unwrap();
    let mut child = flumen()
        .args(["sql", "--table", &t.arg, "--format", "csv"])
        .env("HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"SELECT count(*) AS n\n  FROM t;\nSELECT nope FROM t;\nINSERT INTO t SELECT * FROM t;\n\
              SELECT 1 AS a; SELECT 2 AS b;\nSELECT 3 AS c",
        )
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stdout, format!("n\n{ROWS}\na\n1\nb\n2\nc\n3\n"), "{stderr}");
    assert_contains(
        &stderr,
        &[
            "nope",
            "flumen sql is read-only: INSERT is not allowed",
            "2 statements failed",
        ],
    );
    // Piped input that had failures exits 1; without failures, 0.
    assert_eq!(output.status.code(), Some(1));
    let mut child = flumen()
        .args(["sql", "--table", &t.arg])
        .env("HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT 1;\n")
        .unwrap();
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(0));
}

#[test]
fn a_small_memory_limit_spills_or_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sorted.csv");
    let limited = |limit: &str, query: &str| {
        let output = flumen()
            .args(["sql", "--format", "csv", "--memory-limit", limit, query])
            .args(if query.starts_with("EXPLAIN") {
                vec![]
            } else {
                vec!["--output".as_ref(), out.as_os_str()]
            })
            // Memory is shared fairly between partitions: fix their number.
            .env("DATAFUSION_EXECUTION_TARGET_PARTITIONS", "2")
            .output()
            .unwrap();
        Output {
            code: output.status.code().expect("exited, not killed"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    };
    // A sort of 3 million rows (24 MB of values) spills to disk and
    // finishes.
    let sort = "SELECT value FROM range(3000000) ORDER BY value DESC";
    let sorted = limited("24MB", sort);
    assert_eq!(sorted.code, 0, "{}", sorted.stderr);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("value\n2999999\n2999998\n"));
    assert_eq!(text.lines().count(), 3_000_001);
    let analyzed = limited("24MB", &format!("EXPLAIN ANALYZE {sort}"));
    assert_eq!(analyzed.code, 0, "{}", analyzed.stderr);
    let spills: u64 = analyzed
        .stdout
        .split("spill_count=")
        .skip(1)
        .map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!(spills > 0, "the sort did not spill:\n{}", analyzed.stdout);

    // A hash join's build side cannot spill: it fails with a message that
    // names the limit, and exits 1.
    let failed = limited(
        "64KB",
        "SELECT count(*) FROM range(1000000) a JOIN range(1000000) b ON a.value = b.value",
    );
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert_contains(
        &failed.stderr,
        &[
            "the query needs more memory than `--memory-limit 64KB` allows",
            "Resources exhausted",
            "help: raise `--memory-limit`",
        ],
    );
}

const PIPELINE: &str = "sources:
  bids:
    type: nexmark
    events: 1000
sinks:
  archive:
    type: parquet
    inputs: [bids]
    path: ${DIR}/archive
    time_partition: day
  empty:
    type: parquet
    inputs: [bids]
    path: ${DIR}/empty
  screen:
    type: stdout
    inputs: [bids]
";

#[test]
fn a_pipeline_file_gives_its_parquet_sinks_as_tables() {
    let dir = tempfile::tempdir().unwrap();
    write_table(&dir.path().join("archive"));
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, PIPELINE).unwrap();
    let output = flumen()
        .args(["sql", "--format", "csv", "--pipeline"])
        .arg(&file)
        .arg("SELECT dt, count(*) AS n, sum(value) AS total FROM archive GROUP BY dt ORDER BY dt")
        .env("DIR", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "dt,n,total\n2026-11-25,100,4950\n2026-11-26,200,{}\n",
            SUM - 4950
        )
    );
    // A sink that wrote nothing yet is no table, and says so.
    assert_contains(&stderr, &["table `empty`", "holds no Parquet files"]);
}

/// `flumen run` writes bids through the Parquet sink; `flumen sql` over
/// the same pipeline file reads back what DataFusion computes over the same
/// events.
#[tokio::test(flavor = "multi_thread")]
async fn what_a_pipeline_wrote_reads_back_by_sink_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bids.yaml");
    std::fs::write(
        &file,
        format!(
            "sources:\n  bids:\n    type: nexmark\n    kind: bid\n    events: 20000\nsinks:\n  \
             archive:\n    type: parquet\n    inputs: [bids]\n    path: {}/archive\n    \
             time_partition: hour\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let ran = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&ran.stderr);
    assert!(ran.status.success(), "{log}");
    let written = super::summary_count(&log, "archive");

    let query = "SELECT count(*) AS n, sum(price) AS total, count(DISTINCT auction) AS auctions";
    let output = flumen()
        .args(["sql", "--format", "csv", "--pipeline"])
        .arg(&file)
        .arg(format!(
            "{query} FROM archive WHERE dt = '2026-01-01' AND hour = '00'"
        ))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let ctx = super::bids_table(20000).await;
    let expected = ctx
        .sql(&format!("{query} FROM bids"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let row = &expected[0];
    let value = |i: usize| row.column(i).as_primitive::<Int64Type>().value(0);
    assert_eq!(value(0) as usize, written);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("n,total,auctions\n{},{},{}\n", value(0), value(1), value(2))
    );
}

#[test]
fn a_table_in_an_s3_bucket() {
    let endpoint = std::env::var("FLUMEN_TEST_S3_ENDPOINT").expect(
        "this test needs an S3-API server: run it through scripts/test.sh, which starts one",
    );
    let prefix = format!(
        "sql-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let options = flumen_core::testing::test_s3();
    let location =
        flumen_core::storage::resolve(&format!("s3://flumen-test/{prefix}/"), &options, "path")
            .unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        for (path, bytes) in table_files() {
            let path =
                datafusion::object_store::path::Path::from(format!("{}/{path}", location.path));
            location.store.put(&path, bytes.into()).await.unwrap();
        }
    });
    let output = flumen()
        .args(["sql", "--format", "csv", "--table"])
        .arg(format!("t=s3://flumen-test/{prefix}/"))
        .arg("SELECT dt, count(*) AS n, sum(value) AS total FROM t GROUP BY dt ORDER BY dt")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_ACCESS_KEY_ID", "flumen")
        .env("AWS_SECRET_ACCESS_KEY", "flumen")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "dt,n,total\n2026-11-25,100,4950\n2026-11-26,200,{}\n",
            SUM - 4950
        )
    );

    let explain = flumen()
        .args(["sql", "--format", "csv", "--table"])
        .arg(format!("t=s3://flumen-test/{prefix}"))
        .arg("EXPLAIN SELECT sum(value) FROM t WHERE dt = '2026-11-25' AND value > 10")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_ACCESS_KEY_ID", "flumen")
        .env("AWS_SECRET_ACCESS_KEY", "flumen")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let explained = String::from_utf8_lossy(&explain.stdout);
    assert_eq!(
        explain.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&explain.stderr)
    );
    assert!(
        explained.contains("dt=2026-11-25/part-0.parquet"),
        "{explained}"
    );
    assert!(!explained.contains("dt=2026-11-26"), "{explained}");

    // A pipeline's sink brings its own storage settings: no environment.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(
        &file,
        format!(
            "sources:\n  bids:\n    type: nexmark\n    events: 10\nsinks:\n  remote:\n    \
             type: parquet\n    inputs: [bids]\n    path: s3://flumen-test/{prefix}\n    \
             storage: {{ endpoint: \"{endpoint}\", region: us-east-1, access_key_id: flumen, \
             secret_access_key: flumen }}\n"
        ),
    )
    .unwrap();
    let mut command = flumen();
    for variable in [
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        command.env_remove(variable);
    }
    let output = command
        .args(["sql", "--format", "csv", "--pipeline"])
        .arg(&file)
        .arg("SELECT count(*) AS n, sum(value) AS total FROM remote")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("n,total\n{ROWS},{SUM}\n")
    );
}
