//! Key lookups over HTTP: the `serve:` server beside a bare hyper server
//! answering the same lookups from the same store with redb, each asked by
//! the same load: 32 clients on keep-alive connections, random keys, for
//! a few seconds. Prints lookups per second and the 99th percentile of
//! their latency.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flumen::serve::{ServeConfig, ViewServer};
use flumen::sinks::KvSinkConfig;
use http_body_util::Full;
use redb::{ConcurrencyMode, Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable};

use super::{RecordBatch, VALUES, rows_as_json, run_into};

const CLIENTS: usize = 32;
const LOAD_FOR: Duration = Duration::from_secs(4);

pub fn run(runtime: &tokio::runtime::Runtime, batches: &[RecordBatch]) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("bids.redb");
    run_into(
        runtime,
        batches,
        KvSinkConfig::new(&path, "auction:{auction}"),
    );
    let mut keys: Vec<String> = batches
        .iter()
        .flat_map(|b| rows_as_json(b).1)
        .map(|auction| format!("auction:{auction}"))
        .collect();
    keys.sort();
    keys.dedup();
    let paths = |prefix: &str| Arc::new(keys.iter().map(|k| format!("{prefix}{k}")).collect());

    let bare = runtime.block_on(bare_server(&path));
    let (bare_rate, bare_p99) = load(runtime, bare, &paths("/"));

    let server = runtime
        .block_on(ViewServer::start(
            &ServeConfig::new("127.0.0.1:0"),
            BTreeMap::from([("bids".to_string(), path.clone())]),
            BTreeMap::new(),
            None,
        ))
        .expect("server");
    server.pipeline_finished();
    let (rate, p99) = load(runtime, server.address(), &paths("/v1/views/bids/"));
    println!(
        "serving ({} keys; {CLIENTS} clients, random keys, keep-alive)\n  bare hyper + redb server:         {:>10.0} lookups/s   p99 {:>6} µs\n  serve: GET /v1/views/bids/KEY:    {:>10.0} lookups/s   p99 {:>6} µs   ratio {:.2}x\n",
        keys.len(),
        bare_rate,
        bare_p99.as_micros(),
        rate,
        p99.as_micros(),
        rate / bare_rate
    );
}

/// A hyper server answering `GET /KEY` with `{"key", "value"}` from the
/// store at `path`, read-only.
async fn bare_server(path: &Path) -> SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;

    let db = Arc::new(
        Database::builder()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .open_read_only(path)
            .expect("store"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let db = db.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let body = lookup(&db, &request.uri().path()[1..]);
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(body)) }
                });
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    address
}

fn lookup(db: &ReadOnlyDatabase, key: &str) -> Full<Bytes> {
    let txn = db.begin_read().expect("read");
    let table = txn.open_table(VALUES).expect("table");
    let body = match table.get(key).expect("get") {
        Some(stored) => {
            let (_, _, value) = stored.value();
            let value = std::str::from_utf8(value.unwrap_or(b"null")).expect("UTF-8");
            format!("{{\"key\":\"{key}\",\"value\":{value}}}")
        }
        None => "{\"error\":\"no key\"}".to_string(),
    };
    Full::new(Bytes::from(body))
}

/// Requests per second, and their 99th percentile latency, of `CLIENTS`
/// clients asking `address` for random ones of `paths`.
pub(crate) fn load(
    runtime: &tokio::runtime::Runtime,
    address: SocketAddr,
    paths: &Arc<Vec<String>>,
) -> (f64, Duration) {
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let started = Instant::now();
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (client, paths) = (client.clone(), paths.clone());
                let base = format!("http://{address}");
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut random = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
                    while started.elapsed() < LOAD_FOR {
                        random ^= random << 13;
                        random ^= random >> 7;
                        random ^= random << 17;
                        let path = &paths[(random % paths.len() as u64) as usize];
                        let asked = Instant::now();
                        let response = client
                            .get(format!("{base}{path}"))
                            .send()
                            .await
                            .expect("lookup");
                        assert!(response.status().is_success(), "{}", response.status());
                        response.bytes().await.expect("body");
                        latencies.push(asked.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("client"));
        }
        let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
        latencies.sort();
        let p99 = latencies[latencies.len() * 99 / 100];
        (rate, p99)
    })
}
