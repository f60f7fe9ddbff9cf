//! Kinesis source and sink beside the AWS SDK used by hand.
//!
//! Source: JSON records in a 4-shard stream, read to the present by
//! `kinesis` → decode → blackhole, beside a GetRecords loop per shard (all
//! shards at once, as the source reads them) that only counts the records.
//! Sink: the same records written by the `kinesis` sink (one request in
//! flight, as in the baseline) beside a PutRecords loop sending the
//! already encoded values 500 at a time.
//!
//! The server is `FLUMEN_BENCH_KINESIS` (an endpoint URL), or the
//! kinesis-local that `scripts/services.sh` installs, started here. Its
//! PutRecords slows down as a stream grows, so every sink run writes a
//! fresh stream, and the streams are kept small.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::StringArray;
use arrow::datatypes::{DataType, Field, Schema};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use flumen::prelude::*;
use flumen::sources::kinesis::{AwsSettings, KinesisSourceConfig};
use flumen_core::testing::MemorySource;

use super::RUNS;

const RECORDS: usize = 10_000;
const SHARDS: i32 = 4;

struct Server {
    endpoint: String,
    child: Option<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn server() -> Option<Server> {
    if let Ok(endpoint) = std::env::var("FLUMEN_BENCH_KINESIS") {
        return Some(Server {
            endpoint,
            child: None,
        });
    }
    let home = std::env::var("HOME").ok()?;
    let package = format!("{home}/.cache/flumen/kinesis-local/node_modules/kinesis-local");
    if !std::path::Path::new(&package).join("main.js").exists() {
        return None;
    }
    let port = flumen_core::testing::free_port();
    let tls_port = flumen_core::testing::free_port();
    let child = Command::new("node")
        .arg("main.js")
        .current_dir(&package)
        .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
        .env("KINESIS_MOCK_TLS_PORT", tls_port.to_string())
        .env("CREATE_STREAM_DURATION", "0ms")
        .env("SHARD_LIMIT", "10000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server {
        endpoint: format!("http://127.0.0.1:{port}"),
        child: Some(child),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(server)
}

async fn create_stream(client: &Client, stream: &str) {
    client
        .create_stream()
        .stream_name(stream)
        .shard_count(SHARDS)
        .send()
        .await
        .expect("create stream");
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .expect("describe stream");
        let description = summary.stream_description_summary().expect("summary");
        if description.stream_status().as_str() == "ACTIVE" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The baseline sink: PutRecords of 500, failed entries again.
async fn put(client: &Client, stream: &str, values: &[String]) {
    for chunk in values.chunks(500) {
        let mut entries: Vec<PutRecordsRequestEntry> = chunk
            .iter()
            .enumerate()
            .map(|(i, value)| {
                PutRecordsRequestEntry::builder()
                    .partition_key((i % 64).to_string())
                    .data(Blob::new(value.as_bytes()))
                    .build()
                    .expect("entry")
            })
            .collect();
        while !entries.is_empty() {
            let output = client
                .put_records()
                .stream_name(stream)
                .set_records(Some(entries.clone()))
                .send()
                .await
                .expect("put records");
            entries = entries
                .into_iter()
                .zip(output.records())
                .filter(|(_, result)| result.error_code().is_some())
                .map(|(entry, _)| entry)
                .collect();
        }
    }
}

/// The baseline source: every shard from its start to the present, one
/// task per shard, counting records.
async fn count_with_get_records(client: &Client, stream: &str) -> u64 {
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .expect("list shards");
    let mut tasks = tokio::task::JoinSet::new();
    for shard in shards.shards() {
        let client = client.clone();
        let stream = stream.to_string();
        let shard = shard.shard_id().to_string();
        tasks.spawn(async move {
            let mut iterator = client
                .get_shard_iterator()
                .stream_name(&stream)
                .shard_id(&shard)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .expect("iterator")
                .shard_iterator()
                .map(str::to_string);
            let mut count = 0u64;
            while let Some(current) = iterator.take() {
                let output = client
                    .get_records()
                    .shard_iterator(current)
                    .limit(10_000)
                    .send()
                    .await
                    .expect("get records");
                count += output.records().len() as u64;
                if output.records().is_empty() && output.millis_behind_latest() == Some(0) {
                    break;
                }
                iterator = output.next_shard_iterator().map(str::to_string);
            }
            count
        });
    }
    let mut total = 0;
    while let Some(count) = tasks.join_next().await {
        total += count.expect("shard task");
    }
    total
}

fn values() -> Vec<String> {
    (0..RECORDS)
        .map(|i| {
            format!(
                r#"{{"auction":{},"bidder":{},"price":{},"channel":"channel-{}"}}"#,
                1000 + i % 997,
                2000 + i % 1013,
                100 + (i * 7919) % 1_000_000,
                i % 10
            )
        })
        .collect()
}

fn best(mut f: impl FnMut() -> u64) -> f64 {
    (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            let n = f();
            n as f64 / started.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

pub fn run(runtime: &tokio::runtime::Runtime) {
    let Some(server) = server() else {
        println!(
            "kinesis: skipped (no server: set FLUMEN_BENCH_KINESIS or run scripts/test.sh once to install kinesis-local)\n"
        );
        return;
    };
    let aws = AwsSettings::local(&server.endpoint);
    let client = runtime.block_on(aws.kinesis_client());
    let values = values();
    let stream = format!("bench-{}", std::process::id());
    runtime.block_on(async {
        create_stream(&client, &stream).await;
        put(&client, &stream, &values).await;
    });

    let baseline = best(|| runtime.block_on(count_with_get_records(&client, &stream)));
    let engine = best(|| {
        let mut source = KinesisSourceConfig::new(&stream, aws.clone())
            .with_schema([
                ("auction", "int64"),
                ("bidder", "int64"),
                ("price", "int64"),
                ("channel", "string"),
            ])
            .stop_at_latest();
        // Unpaced, as the baseline is: this measures the source's own cost.
        source.poll_interval = Duration::from_millis(1);
        source.idle_poll_interval = Duration::from_millis(1);
        let mut graph = GraphBuilder::new();
        graph.source("bids", source.build().expect("source"));
        graph.sink(
            "out",
            BlackholeConfig::default().build().expect("sink"),
            ["bids"],
        );
        let options = RunOptions {
            handle_signals: false,
            ..RunOptions::default()
        };
        let report = runtime
            .block_on(graph.build().expect("graph").run_with(options))
            .expect("run");
        report.node("out").expect("out").rows_in
    });
    println!("kinesis source ({RECORDS} JSON records, {SHARDS} shards, kinesis-local on loopback)");
    println!(
        "  GetRecords loops, counting only: {:>8.0} rec/s\n  kinesis → decode → blackhole:     {:>8.0} rec/s   ratio {:.2}x",
        baseline,
        engine,
        engine / baseline
    );

    // The sink: the same records, from rows, each run into a fresh stream.
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
    ]));
    let batches: Vec<RecordBatch> = values
        .chunks(8192)
        .map(|chunk| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        (0..chunk.len()).map(|i| (i % 64).to_string()),
                    )),
                    Arc::new(StringArray::from_iter_values(chunk.iter())),
                ],
            )
            .expect("batch")
        })
        .collect();
    let mut streams = 0;
    let mut next_stream = || {
        streams += 1;
        let name = format!("bench-{}-out-{streams}", std::process::id());
        runtime.block_on(create_stream(&client, &name));
        name
    };
    let baseline = best(|| {
        let stream = next_stream();
        runtime.block_on(put(&client, &stream, &values));
        RECORDS as u64
    });
    let engine = best(|| {
        let stream = next_stream();
        let mut sink = flumen::sinks::KinesisSinkConfig::new(&stream, "key", aws.clone());
        sink.format = flumen::sinks::kinesis::ValueFormat::String;
        sink.value_column = Some("value".into());
        sink.concurrency = 1;
        let mut graph = GraphBuilder::new();
        graph.source("rows", MemorySource::new(schema.clone(), batches.clone()));
        graph.sink("out", sink.build().expect("sink"), ["rows"]);
        let options = RunOptions {
            handle_signals: false,
            ..RunOptions::default()
        };
        let report = runtime
            .block_on(graph.build().expect("graph").run_with(options))
            .expect("run");
        report.node("out").expect("out").rows_in
    });
    println!(
        "kinesis sink (the same records, one request in flight)\n  PutRecords loop:                  {:>8.0} rec/s\n  rows → kinesis sink:              {:>8.0} rec/s   ratio {:.2}x\n",
        baseline,
        engine,
        engine / baseline
    );
    drop(server);
}
