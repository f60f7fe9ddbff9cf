//! The serverless patterns, as their examples under `examples/patterns/`
//! run them: the example's own pipeline files, started as its README
//! says, against the real test servers, with outputs checked against
//! DataFusion's answer over the same input files.
//!
//! Every run writes under a temporary `OUT` directory (the examples'
//! `${OUT:-...}`), never into the checkout.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use serde_json::Value;

use super::{block_on, flumen};

mod aggregator;
mod decoupled_messaging;
mod fan_out_fan_in;
mod load_leveling;
mod pub_sub;
mod read_heavy_reporting;
mod strangler;
mod streams_and_pipelines;

/// One pattern's example: its folder, and the environment its pipelines
/// run with.
struct Example {
    folder: PathBuf,
    out: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Example {
    fn new(pattern: &str) -> Example {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/patterns")
            .join(pattern);
        assert!(folder.join("README.md").exists(), "{pattern} has a README");
        let out = tempfile::tempdir().unwrap();
        let env = vec![("OUT".to_string(), out.path().display().to_string())];
        Example { folder, out, env }
    }

    /// Sets a variable for every pipeline run from now on.
    fn set(&mut self, name: &str, value: impl ToString) -> &mut Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    fn out(&self) -> &Path {
        self.out.path()
    }

    fn file(&self, name: &str) -> PathBuf {
        let file = self.folder.join(name);
        assert!(file.exists(), "{} exists", file.display());
        file
    }

    /// `flumen ARGS` with this example's environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = flumen();
        command.args(args).envs(self.env.iter().cloned());
        command
    }

    /// `flumen run FILE` to its end; returns its standard error.
    fn run(&self, file: &str) -> String {
        let output = self
            .command(&[
                "run",
                "--progress",
                "off",
                self.file(file).to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{file} failed:\n{stderr}");
        stderr
    }

    /// `flumen run FILE` in the background, its log in a file.
    fn start(&self, file: &str, extra: &[(&str, String)]) -> Background {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let start = STARTS.fetch_add(1, Ordering::Relaxed);
        let log = self.out().join(format!("{file}.{start}.log"));
        let child = self
            .command(&[
                "run",
                "--progress",
                "off",
                self.file(file).to_str().unwrap(),
            ])
            .envs(extra.iter().map(|(k, v)| (*k, v.clone())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Background { child, log }
    }

    /// `flumen ARGS` (a reader: `kv`, `search`, `sql`); returns stdout.
    fn read(&self, args: &[&str]) -> String {
        let output = self.command(args).output().unwrap();
        assert!(
            output.status.success(),
            "flumen {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `flumen sql --pipeline FILE QUERY`'s rows, over the tables the
    /// pipeline's sinks wrote.
    fn sql(&self, file: &str, query: &str) -> Vec<Value> {
        let pipeline = self.file(file);
        let pipeline = pipeline.to_str().unwrap();
        self.read(&["sql", "--pipeline", pipeline, "--format", "json", query])
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// A key-value store's entries, by key (`flumen kv scan`).
    fn kv(&self, store: &str) -> std::collections::BTreeMap<String, Value> {
        self.read(&["kv", "scan", store, "--limit", "1000000"])
            .lines()
            .map(|line| {
                let entry: Value = serde_json::from_str(line).unwrap();
                (
                    entry["key"].as_str().unwrap().to_string(),
                    entry["value"].clone(),
                )
            })
            .collect()
    }
}

/// A pipeline running in the background; killed if the test ends first.
struct Background {
    child: Child,
    log: PathBuf,
}

impl Background {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line containing `needle`.
    fn wait_for_log(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log().contains(needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("exited ({status}) before {needle:?}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Interrupts the pipeline (it drains and checkpoints) and waits for
    /// it; returns its log.
    fn interrupt(mut self) -> String {
        let status = Command::new("kill")
            .args(["-s", "INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let status = self.child.wait().unwrap();
        let log = self.log();
        assert!(status.success(), "{status}:\n{log}");
        log
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something listens on `address`.
fn wait_listening(address: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(address).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {address}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `done` holds, checking every 50 ms for a minute.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "waited a minute for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `request`; returns the status and the body, as JSON if it is.
fn send(request: reqwest::RequestBuilder) -> (reqwest::StatusCode, Value) {
    block_on(async {
        let answer = request.send().await.unwrap();
        let status = answer.status();
        let body = answer.text().await.unwrap();
        let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (status, body)
    })
}

/// `GET url`, which must answer 200 with JSON.
fn get_json(url: &str) -> Value {
    let (status, body) = send(reqwest::Client::new().get(url));
    assert_eq!(status, 200, "GET {url}: {body}");
    body
}

/// The example data file `name` (under `examples/data/`).
fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/data")
        .join(name)
}

/// A JSON lines or CSV file's rows, with the schema Arrow infers.
fn read_table(path: &Path) -> (SchemaRef, Vec<RecordBatch>) {
    use std::io::{BufReader, Seek};
    let mut file = BufReader::new(std::fs::File::open(path).unwrap());
    if path.extension().is_some_and(|e| e == "csv") {
        let format = arrow::csv::reader::Format::default().with_header(true);
        let (schema, _) = format.infer_schema(&mut file, None).unwrap();
        file.rewind().unwrap();
        let schema = Arc::new(schema);
        let reader = arrow::csv::ReaderBuilder::new(schema.clone())
            .with_header(true)
            .build(file)
            .unwrap();
        (schema, reader.map(Result::unwrap).collect())
    } else {
        let (schema, _) =
            arrow::json::reader::infer_json_schema_from_seekable(&mut file, None).unwrap();
        let schema = Arc::new(schema);
        let reader = arrow::json::ReaderBuilder::new(schema.clone())
            .build(file)
            .unwrap();
        (schema, reader.map(Result::unwrap).collect())
    }
}

/// DataFusion's answer to `sql` over `tables` (name, JSON lines or CSV
/// file), one JSON object per row, in the query's order.
fn datafusion(sql: &str, tables: &[(&str, &Path)]) -> Vec<Value> {
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;
    block_on(async {
        let ctx = SessionContext::new();
        for (name, path) in tables {
            let (schema, batches) = read_table(path);
            let table = MemTable::try_new(schema, vec![batches]).unwrap();
            ctx.register_table(*name, Arc::new(table)).unwrap();
        }
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let mut writer = arrow::json::ArrayWriter::new(Vec::new());
        for batch in &batches {
            writer.write(batch).unwrap();
        }
        writer.finish().unwrap();
        let json = writer.into_inner();
        match json.is_empty() {
            true => Vec::new(),
            false => serde_json::from_slice(&json).unwrap(),
        }
    })
}

/// Rows keyed by `key(row)`, for comparing outputs whatever their order.
fn by_key(
    rows: Vec<Value>,
    key: impl Fn(&Value) -> String,
) -> std::collections::BTreeMap<String, Value> {
    rows.into_iter().map(|row| (key(&row), row)).collect()
}

#[test]
fn every_pictured_pipeline_is_drawn_as_flumen_graph_draws_it_now() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/patterns");
    let mut pictures = 0;
    for folder in std::fs::read_dir(&root).unwrap() {
        let folder = folder.unwrap().path();
        if !folder.is_dir() {
            continue;
        }
        let readme = std::fs::read_to_string(folder.join("README.md")).unwrap();
        let mut drawn = 0;
        for file in std::fs::read_dir(&folder).unwrap() {
            let svg = file.unwrap().path();
            if svg.extension().is_none_or(|e| e != "svg") {
                continue;
            }
            let yaml = svg.with_extension("yaml");
            let output = flumen()
                .args(["graph", "--format", "svg", yaml.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let committed = std::fs::read(&svg).unwrap();
            assert!(
                committed == output.stdout,
                "{} is stale: `flumen graph --format svg {} > {}`",
                svg.display(),
                yaml.display(),
                svg.display()
            );
            drawn += 1;
        }
        assert!(
            drawn > 0 && readme.contains(".svg)"),
            "{} shows its pipeline",
            folder.display()
        );
        pictures += drawn;
    }
    assert!(pictures >= 8);
}
