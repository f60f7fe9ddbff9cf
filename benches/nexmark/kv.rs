//! The key-value sink beside hand-written loops doing the same upserts:
//! each batch's rows as JSON objects (arrow's JSON writer), keyed
//! `auction:{auction}`.
//!
//! - `kv`: the embedded store beside a bare redb loop, one durable write
//!   transaction per batch. (Without checkpoints the sink writes each
//!   batch at once; with them it stages a checkpoint's last write per key
//!   and applies it at the commit, which only does less.)
//! - `kv_redis`: Redis (a server the bench starts) beside a redis-rs loop
//!   sending each batch as one pipeline of `SET`s.
//! - `kv_serve`: key lookups over HTTP from the `serve:` server beside a
//!   bare hyper server reading the same store with redb.

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "serve")]
pub(crate) mod serve;

use std::time::Instant;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use flumen::prelude::*;
use flumen::sinks::KvSinkConfig;
use flumen_core::testing::MemorySource;
use redb::{ConcurrencyMode, Database, Durability, TableDefinition};

use super::stateful::Events;
use super::{RUNS, env_number};

const VALUES: TableDefinition<'_, &str, (i64, i64, Option<&[u8]>)> = TableDefinition::new("values");

pub fn run(runtime: &tokio::runtime::Runtime, events: &Events, wanted: &dyn Fn(&str) -> bool) {
    let rows = env_number("KV_ROWS", 1_000_000) as usize;
    let mut batches = Vec::new();
    let mut taken = 0;
    for batch in events.bids() {
        if taken >= rows {
            break;
        }
        let batch = batch.slice(0, batch.num_rows().min(rows - taken));
        taken += batch.num_rows();
        batches.push(batch);
    }
    if wanted("kv_embedded") {
        embedded(runtime, &batches, taken);
    }
    #[cfg(feature = "redis")]
    if wanted("kv_redis") {
        redis::run(runtime, &batches, taken);
    }
    #[cfg(feature = "serve")]
    if wanted("kv_serve") {
        serve::run(runtime, &batches);
    }
}

fn embedded(runtime: &tokio::runtime::Runtime, batches: &[RecordBatch], taken: usize) {
    let baseline = best_rate(taken, || {
        let dir = tempfile::tempdir().expect("temporary directory");
        // As the sink opens its store: other processes may read it.
        let db = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .create(dir.path().join("bids.redb"))
            .expect("database");
        for batch in batches {
            let (json, auctions) = rows_as_json(batch);
            let mut txn = db.begin_write().expect("transaction");
            txn.set_durability(Durability::Immediate)
                .expect("durability");
            {
                let mut table = txn.open_table(VALUES).expect("table");
                for (row, value) in json
                    .split(|b| *b == b'\n')
                    .take(batch.num_rows())
                    .enumerate()
                {
                    let key = format!("auction:{}", auctions[row]);
                    table
                        .insert(key.as_str(), (i64::MIN, i64::MAX, Some(value)))
                        .expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
    });
    let engine = best_rate(taken, || {
        let dir = tempfile::tempdir().expect("temporary directory");
        let sink = KvSinkConfig::new(dir.path().join("bids.redb"), "auction:{auction}");
        run_into(runtime, batches, sink);
    });
    println!(
        "kv sink ({taken} bids upserted by auction into an embedded store, one durable write per batch)\n  bare redb loop:                   {:>10.0} rows/s\n  bids → kv sink:                   {:>10.0} rows/s   ratio {:.2}x\n",
        baseline,
        engine,
        engine / baseline
    );
}

/// Runs a pipeline of `batches` into the sink of `sink`.
fn run_into(runtime: &tokio::runtime::Runtime, batches: &[RecordBatch], sink: KvSinkConfig) {
    let mut graph = GraphBuilder::new();
    graph.source(
        "bids",
        MemorySource::new(batches[0].schema(), batches.to_vec()),
    );
    graph.sink("views", sink.build().expect("sink"), ["bids"]);
    super::run_graph(runtime, graph);
}

/// Each row of `batch` as a JSON object, and its auction.
fn rows_as_json(batch: &RecordBatch) -> (Vec<u8>, Vec<i64>) {
    let mut json = Vec::new();
    let mut writer = arrow::json::LineDelimitedWriter::new(&mut json);
    writer.write(batch).expect("json");
    writer.finish().expect("json");
    let auctions = batch
        .column_by_name("auction")
        .expect("auction")
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    (json, auctions)
}

fn best_rate(rows: usize, mut f: impl FnMut()) -> f64 {
    (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            f();
            rows as f64 / started.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}
