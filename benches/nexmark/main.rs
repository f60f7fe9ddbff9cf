//! The Nexmark suite: each engine figure beside a hand-written,
//! single-threaded Rust loop doing the same work over the same events, so
//! that the result is a ratio that holds on a noisy machine.
//!
//! ```sh
//! cargo bench --bench nexmark                # everything
//! cargo bench --bench nexmark -- q1 q5 json  # only sections whose name matches
//! cargo bench --bench nexmark -- kafka         # Kafka source and sink (starts tansu)
//! cargo bench --bench nexmark -- kinesis       # Kinesis source and sink (starts kinesis-local)
//! cargo bench --bench nexmark -- ingest drain  # HTTP ingest, the buffer's drain rate
//! cargo bench --bench nexmark -- enrich        # the enrich transform against a bare reqwest loop
//! cargo bench --bench nexmark -- kv            # the key-value sink (kv_embedded, kv_redis) and serving (kv_serve)
//! cargo bench --bench nexmark -- search        # the search sink's indexing (search_index) and queries (search_serve)
//! NEXMARK_EVENTS=2000000 JSON_FILE_MB=256 cargo bench --bench nexmark
//! ```
//!
//! The stateless queries (q0-q2) end in the same checksum sink, which reads every value of
//! every output column; the baseline calls the same function. The engine's
//! checksum must equal the baseline's, so both did the same work.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow::array::{Array, AsArray, BooleanArray, Float64Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimestampMillisecondType};
use flumen::prelude::*;
use flumen::sources::nexmark::{EventKind, GeneratorSettings, NexmarkGenerator, bid_schema};
use flumen_core::testing::MemorySource;

mod checkpoints;
#[cfg(feature = "http")]
mod enrich;
#[cfg(feature = "http")]
mod ingest;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "kinesis")]
mod kinesis;
#[cfg(feature = "kv")]
mod kv;
mod parquet_sink;
#[cfg(feature = "serve")]
mod search;
mod stateful;

/// Events per query run (of which 46 in 50 are bids).
fn events() -> u64 {
    env_number("NEXMARK_EVENTS", 10_000_000)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const RUNS: usize = 3;

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!(
        "Nexmark on {} cores; best of {RUNS} runs\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if wanted("generator") {
        generator();
    }
    let stateless = [("q0", Query::Q0), ("q1", Query::Q1), ("q2", Query::Q2)];
    let stateful = ["q4", "q5", "q7", "q8"];
    let kv_sections = ["kv_embedded", "kv_redis", "kv_serve"];
    let needs_events = stateless.iter().any(|(name, _)| wanted(name))
        || stateful.iter().any(|name| wanted(name))
        || wanted("checkpoints")
        || wanted("parquet")
        || kv_sections.iter().any(|name| wanted(name));
    if needs_events {
        let events = stateful::Events::generate(events());
        if stateless.iter().any(|(name, _)| wanted(name)) {
            println!(
                "{:<6} {:>16} {:>16} {:>7} {:>16} {:>7}",
                "query", "baseline ev/s", "engine p=1 ev/s", "ratio", "engine p=2 ev/s", "ratio"
            );
            for (name, query) in stateless {
                if wanted(name) {
                    run_query(&runtime, name, query, events.bids());
                }
            }
            println!();
        }
        if stateful.iter().any(|name| wanted(name)) {
            stateful::run(&runtime, &events, &wanted);
        }
        if wanted("checkpoints") {
            checkpoints::run(&runtime, &events);
        }
        if wanted("parquet") {
            parquet_sink::run(&runtime, &events);
        }
        #[cfg(feature = "kv")]
        if kv_sections.iter().any(|name| wanted(name)) {
            kv::run(&runtime, &events, &wanted);
        }
    }
    if wanted("json") {
        json_file_source(&runtime);
    }
    #[cfg(feature = "http")]
    ingest::run(&runtime, &wanted);
    #[cfg(feature = "http")]
    if wanted("enrich") {
        enrich::run(&runtime);
    }
    #[cfg(feature = "kafka")]
    if wanted("kafka") {
        kafka::run(&runtime);
    }
    #[cfg(feature = "kinesis")]
    if wanted("kinesis") {
        kinesis::run(&runtime);
    }
    #[cfg(feature = "serve")]
    if ["search_index", "search_serve"]
        .iter()
        .any(|name| wanted(name))
    {
        search::run(&runtime, &wanted);
    }
}

/// Runs `graph` to its end, leaving the process's signals alone.
fn run_graph(runtime: &tokio::runtime::Runtime, graph: GraphBuilder) {
    let options = RunOptions {
        handle_signals: false,
        ..RunOptions::default()
    };
    runtime
        .block_on(graph.build().expect("valid pipeline").run_with(options))
        .expect("run");
}

/// The best of several timings of `f`, which returns how many events it
/// handled.
fn best_rate(mut f: impl FnMut() -> u64) -> f64 {
    (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            let events = f();
            events as f64 / started.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn millions(rate: f64) -> String {
    format!("{:.2} M", rate / 1e6)
}

fn generator() {
    let events = events();
    let mut generator = NexmarkGenerator::new(GeneratorSettings::default());
    let kinds = [EventKind::Person, EventKind::Auction, EventKind::Bid];
    let rate = best_rate(|| {
        let mut start = 0;
        while start < events {
            let end = (start + 8192).min(events);
            black_box(generator.generate(start..end, &kinds));
            start = end;
        }
        events
    });
    println!(
        "generator (one core, all event kinds): {} events/s\n",
        millions(rate)
    );
}

/// Reads every value of every column: what both sides of a comparison do
/// with their output.
fn checksum(batch: &RecordBatch) -> u64 {
    let mut sum = batch.num_rows() as u64;
    for column in batch.columns() {
        let part = match column.data_type() {
            DataType::Int64 => column
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .fold(0i64, |a, v| a.wrapping_add(*v)) as u64,
            DataType::Timestamp(_, _) => column
                .as_primitive::<TimestampMillisecondType>()
                .values()
                .iter()
                .fold(0i64, |a, v| a.wrapping_add(*v))
                as u64,
            DataType::Float64 => column
                .as_primitive::<Float64Type>()
                .values()
                .iter()
                .fold(0u64, |a, v| a.wrapping_add(v.to_bits())),
            DataType::Utf8 => {
                let strings = column.as_string::<i32>();
                strings
                    .value_data()
                    .iter()
                    .fold(0u64, |a, b| a.wrapping_add(*b as u64))
            }
            other => panic!("no checksum for {other}"),
        };
        sum = sum.wrapping_add(part);
    }
    sum
}

#[derive(Clone, Copy)]
enum Query {
    /// Passthrough.
    Q0,
    /// Currency conversion: `price * 0.908`.
    Q1,
    /// Selection: `auction % 123 = 0`.
    Q2,
}

impl Query {
    fn transform(self) -> Option<SqlTransform> {
        match self {
            Query::Q0 => None,
            Query::Q1 => Some(SqlTransform::new().select([
                "auction",
                "bidder",
                "price * 0.908 AS price",
                "date_time",
            ])),
            Query::Q2 => Some(
                SqlTransform::new()
                    .filter("auction % 123 = 0")
                    .select(["auction", "price"]),
            ),
        }
    }

    /// The same query written by hand, one batch at a time.
    fn by_hand(self, batch: &RecordBatch) -> u64 {
        match self {
            Query::Q0 => checksum(batch),
            Query::Q1 => {
                let price = batch.column(2).as_primitive::<Int64Type>();
                let euros: Float64Array =
                    price.values().iter().map(|p| *p as f64 * 0.908).collect();
                let schema = Arc::new(Schema::new(vec![
                    Field::new("auction", DataType::Int64, false),
                    Field::new("bidder", DataType::Int64, false),
                    Field::new("price", DataType::Float64, false),
                    bid_schema().field(5).clone(),
                ]));
                let output = RecordBatch::try_new(
                    schema,
                    vec![
                        batch.column(0).clone(),
                        batch.column(1).clone(),
                        Arc::new(euros),
                        batch.column(5).clone(),
                    ],
                )
                .unwrap();
                checksum(&output)
            }
            Query::Q2 => {
                let auction = batch.column(0).as_primitive::<Int64Type>();
                let keep: BooleanArray = auction
                    .values()
                    .iter()
                    .map(|a| Some(a % 123 == 0))
                    .collect();
                let projected = batch.project(&[0, 2]).unwrap();
                checksum(&filter_record_batch(&projected, &keep).unwrap())
            }
        }
    }
}

/// A sink that adds up the checksums of what it receives.
#[derive(Clone)]
struct ChecksumSink(Arc<AtomicU64>);

impl SinkFactory for ChecksumSink {
    fn create(&self, _: InstanceInfo, _: SchemaRef) -> Result<Box<dyn Sink>> {
        Ok(Box::new(self.clone()))
    }
}

#[async_trait]
impl Sink for ChecksumSink {
    async fn write(&mut self, batch: RecordBatch, _: &mut Context) -> Result<()> {
        self.0.fetch_add(checksum(&batch), Ordering::Relaxed);
        Ok(())
    }
}

/// Each query run replays the pre-generated batches this many times, so
/// that the run is long enough for setup (planning, spawning tasks) not to
/// count. Replaying shares the batches; nothing is copied.
const PASSES: usize = 5;

fn run_query(runtime: &tokio::runtime::Runtime, name: &str, query: Query, bids: &[RecordBatch]) {
    let bids: Vec<RecordBatch> = (0..PASSES).flat_map(|_| bids.iter().cloned()).collect();
    let rows: u64 = bids.iter().map(|b| b.num_rows() as u64).sum();
    let mut expected = 0;
    let baseline = best_rate(|| {
        expected = bids
            .iter()
            .fold(0u64, |sum, batch| sum.wrapping_add(query.by_hand(batch)));
        rows
    });
    let engine = |parallelism: usize| {
        best_rate(|| {
            let total = Arc::new(AtomicU64::new(0));
            let mut graph = GraphBuilder::new();
            graph
                .source("bids", MemorySource::new(bid_schema(), bids.clone()))
                .parallelism(parallelism);
            let mut last = "bids";
            if let Some(transform) = query.transform() {
                graph
                    .operator("query", transform, ["bids"])
                    .parallelism(parallelism);
                last = "query";
            }
            graph
                .sink("out", ChecksumSink(total.clone()), [last])
                .parallelism(parallelism);
            let pipeline = graph.build().expect("valid pipeline");
            let options = RunOptions {
                handle_signals: false,
                ..RunOptions::default()
            };
            runtime.block_on(pipeline.run_with(options)).expect("run");
            assert_eq!(
                total.load(Ordering::Relaxed),
                expected,
                "{name}: engine and baseline disagree"
            );
            rows
        })
    };
    let (p1, p2) = (engine(1), engine(2));
    println!(
        "{name:<6} {:>16} {:>16} {:>6.2}x {:>16} {:>6.2}x",
        millions(baseline),
        millions(p1),
        p1 / baseline,
        millions(p2),
        p2 / baseline
    );
}

/// A Nexmark bid as the hand-written loop decodes it.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Bid {
    auction: i64,
    bidder: i64,
    price: i64,
    channel: String,
    url: String,
    date_time: String,
    extra: String,
}

fn json_file() -> PathBuf {
    let megabytes = env_number("JSON_FILE_MB", 1024);
    let dir = PathBuf::from(
        std::env::var("FLUMEN_BENCH_DATA").unwrap_or_else(|_| "target/bench-data".into()),
    );
    std::fs::create_dir_all(&dir).expect("bench data directory");
    let path = dir.join(format!("nexmark-bids-{megabytes}MB.jsonl"));
    if path.exists() {
        return path;
    }
    print!("writing {} ... ", path.display());
    std::io::stdout().flush().ok();
    let partial = path.with_extension("partial");
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(&partial).expect("create bench file"));
    let mut generator = NexmarkGenerator::new(GeneratorSettings::default());
    let (mut written, mut start) = (0u64, 0u64);
    while written < megabytes << 20 {
        let batch = generator.generate_kind(start..start + 8192, EventKind::Bid);
        start += 8192;
        let mut encoded = Vec::new();
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut encoded);
        writer.write(&batch).expect("encode");
        writer.finish().expect("encode");
        out.write_all(&encoded).expect("write bench file");
        written += encoded.len() as u64;
    }
    out.flush().expect("write bench file");
    std::fs::rename(&partial, &path).expect("rename bench file");
    println!("done");
    path
}

fn json_file_source(runtime: &tokio::runtime::Runtime) {
    let path = json_file();
    let megabytes = std::fs::metadata(&path).expect("bench file").len() as f64 / (1 << 20) as f64;
    let baseline_rows = std::cell::Cell::new(0);
    let baseline = best_rate(|| {
        let reader =
            BufReader::with_capacity(4 << 20, std::fs::File::open(&path).expect("bench file"));
        let mut rows = 0u64;
        let mut newest = 0i64;
        for line in reader.lines() {
            let bid: Bid = serde_json::from_str(&line.expect("read line")).expect("valid bid");
            let at = chrono::NaiveDateTime::parse_from_str(&bid.date_time, "%Y-%m-%dT%H:%M:%S%.f")
                .expect("timestamp");
            newest = newest.max(at.and_utc().timestamp_millis());
            black_box(&bid);
            rows += 1;
        }
        black_box(newest);
        baseline_rows.set(rows);
        rows
    });
    let schema = [
        ("auction", "int64"),
        ("bidder", "int64"),
        ("price", "int64"),
        ("channel", "string"),
        ("url", "string"),
        ("date_time", "timestamp"),
        ("extra", "string"),
    ];
    let engine = |parallelism: usize| {
        best_rate(|| {
            let source = FileSourceConfig::new(path.to_str().expect("utf-8 path"))
                .with_schema(schema)
                .build()
                .expect("file source");
            let mut graph = GraphBuilder::new();
            graph.source("bids", source).parallelism(parallelism);
            graph
                .sink("out", BlackholeSink, ["bids"])
                .parallelism(parallelism);
            let options = RunOptions {
                handle_signals: false,
                ..RunOptions::default()
            };
            let report = runtime
                .block_on(graph.build().expect("valid pipeline").run_with(options))
                .expect("run");
            let rows = report.node("out").expect("sink").rows_in;
            assert_eq!(
                rows,
                baseline_rows.get(),
                "engine and baseline read different row counts"
            );
            rows
        })
    };
    let (p1, p2) = (engine(1), engine(2));
    let mb = |rate: f64| rate / baseline_rows.get() as f64 * megabytes;
    println!(
        "JSON lines file source, {megabytes:.0} MB of bids\n{:<22} {:>12} {:>10} {:>7}\n{:<22} {:>12} {:>7.0} MB/s\n{:<22} {:>12} {:>7.0} MB/s {:>6.2}x\n{:<22} {:>12} {:>7.0} MB/s {:>6.2}x",
        "",
        "rows/s",
        "",
        "ratio",
        "serde_json loop",
        millions(baseline),
        mb(baseline),
        "engine p=1",
        millions(p1),
        mb(p1),
        p1 / baseline,
        "engine p=2",
        millions(p2),
        mb(p2),
        p2 / baseline,
    );
}
