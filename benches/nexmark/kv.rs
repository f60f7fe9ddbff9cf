//! The key-value sink's embedded store beside a bare redb loop doing the
//! same upserts: each batch's rows as JSON objects (arrow's JSON writer),
//! keyed `auction:{auction}`, written in one durable write transaction per
//! batch. (Without checkpoints the sink writes each batch at once; with
//! them it stages a checkpoint's last write per key and applies it at the
//! commit, which only does less.)

use std::time::Instant;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use flumen::prelude::*;
use flumen::sinks::KvSinkConfig;
use flumen_core::testing::MemorySource;
use redb::{ConcurrencyMode, Database, Durability, TableDefinition};

use super::stateful::Events;
use super::{RUNS, env_number};

const VALUES: TableDefinition<'_, &str, (i64, i64, Option<&[u8]>)> = TableDefinition::new("values");

pub fn run(runtime: &tokio::runtime::Runtime, events: &Events) {
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
    let schema = batches[0].schema();

    let baseline = best_rate(taken, || {
        let dir = tempfile::tempdir().expect("temporary directory");
        // As the sink opens its store: other processes may read it.
        let db = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .create(dir.path().join("bids.redb"))
            .expect("database");
        for batch in &batches {
            let mut json = Vec::new();
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut json);
            writer.write(batch).expect("json");
            writer.finish().expect("json");
            let auctions = batch
                .column_by_name("auction")
                .expect("auction")
                .as_primitive::<Int64Type>();
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
                    let key = format!("auction:{}", auctions.value(row));
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
        let mut graph = GraphBuilder::new();
        graph.source("bids", MemorySource::new(schema.clone(), batches.clone()));
        let sink = KvSinkConfig::new(dir.path().join("bids.redb"), "auction:{auction}");
        graph.sink("views", sink.build().expect("sink"), ["bids"]);
        let options = RunOptions {
            handle_signals: false,
            ..RunOptions::default()
        };
        runtime
            .block_on(graph.build().expect("valid pipeline").run_with(options))
            .expect("run");
    });
    println!(
        "kv sink ({taken} bids upserted by auction into an embedded store, one durable write per batch)\n  bare redb loop:                   {:>10.0} rows/s\n  bids → kv sink:                   {:>10.0} rows/s   ratio {:.2}x\n",
        baseline,
        engine,
        engine / baseline
    );
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
