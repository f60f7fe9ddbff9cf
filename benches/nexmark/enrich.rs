//! The `enrich` transform against a customer service on loopback (axum,
//! answering at once), beside a bare reqwest loop making the same calls
//! with as many in flight: rows per second, and the ratio.
//!
//! - **no cache**: every row a call (100,000 customers, each once);
//! - **cache**: 1,000 customers over the rows, answers cached.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema};
use axum::extract::Path;
use flumen::prelude::*;
use flumen::sinks::BlackholeConfig;
use flumen_core::testing::MemorySource;
use futures::StreamExt;
use serde_json::json;

use super::{RUNS, env_number};

/// Calls in flight at once, in both.
const CONCURRENCY: usize = 32;

pub fn run(runtime: &tokio::runtime::Runtime) {
    let rows = env_number("ENRICH_ROWS", 50_000);
    let address = runtime.block_on(customer_service());
    println!(
        "enrich: {rows} rows, one GET each against a local service answering at once, {CONCURRENCY} in flight, best of {RUNS}"
    );
    println!("{:<44} {:>12} {:>8}", "", "rows/s", "ratio");
    let mut bare = 0f64;
    for _ in 0..RUNS {
        bare = bare.max(runtime.block_on(bare_loop(&address, rows)));
    }
    println!(
        "{:<44} {:>12.0}",
        "bare reqwest loop (buffer_unordered)", bare
    );
    for (label, customers, cache) in [
        ("enrich, no cache", rows, false),
        ("enrich, cache (1,000 customers)", 1_000, true),
    ] {
        let mut best = 0f64;
        for _ in 0..RUNS {
            best = best.max(engine(runtime, &address, rows, customers, cache));
        }
        println!("{label:<44} {best:>12.0} {:>7.2}x", best / bare);
    }
    println!();
}

/// The service: `GET /customers/{id}` → `{"name": …, "tier": …}`.
async fn customer_service() -> String {
    async fn customer(Path(id): Path<u64>) -> axum::Json<serde_json::Value> {
        axum::Json(
            json!({ "name": format!("customer-{id}"), "tier": if id % 3 == 0 { "gold" } else { "silver" } }),
        )
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let app = axum::Router::new().route("/customers/{id}", axum::routing::get(customer));
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// The same calls by hand: one reqwest client, `CONCURRENCY` in flight,
/// each answer parsed. Rows per second.
async fn bare_loop(address: &str, rows: u64) -> f64 {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let answered: usize = futures::stream::iter(0..rows)
        .map(|id| {
            let client = client.clone();
            async move {
                let answer: serde_json::Value = client
                    .get(format!("http://{address}/customers/{id}"))
                    .send()
                    .await
                    .expect("call")
                    .json()
                    .await
                    .expect("JSON");
                answer["name"].as_str().map_or(0, str::len)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .map(|len| usize::from(len > 0))
        .fold(0, |sum, n| async move { sum + n })
        .await;
    assert_eq!(answered as u64, rows);
    rows as f64 / started.elapsed().as_secs_f64()
}

/// `rows` rows (customer `i % customers`) through `enrich` into a
/// blackhole. Rows per second.
fn engine(
    runtime: &tokio::runtime::Runtime,
    address: &str,
    rows: u64,
    customers: u64,
    cache: bool,
) -> f64 {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "customer",
        DataType::Int64,
        false,
    )]));
    let batches: Vec<RecordBatch> = (0..rows as i64)
        .map(|i| i % customers as i64)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|ids| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(ids.to_vec()))],
            )
            .expect("batch")
        })
        .collect();
    let mut settings = json!({
        "url": format!("http://{address}/customers/{{customer}}"),
        "columns": { "name": "string", "tier": "string" },
        "concurrency": CONCURRENCY,
    });
    if cache {
        settings["cache"] = json!({ "ttl": "1h", "max_entries": 10_000 });
    }
    let enrich: flumen::operators::EnrichConfig = serde_json::from_value(settings).expect("config");
    let mut graph = GraphBuilder::new();
    graph.source("customers", MemorySource::new(schema, batches));
    graph.operator("enrich", enrich.build().expect("enrich"), ["customers"]);
    graph.sink(
        "out",
        BlackholeConfig::default().build().expect("sink"),
        ["enrich"],
    );
    let started = Instant::now();
    let report = runtime
        .block_on(graph.build().expect("graph").run_with(RunOptions {
            handle_signals: false,
            ..RunOptions::default()
        }))
        .expect("run");
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(report.node("out").map_or(0, |n| n.rows_in), rows);
    rows as f64 / elapsed
}
