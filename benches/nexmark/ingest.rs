//! HTTP ingest and the buffer's drain.
//!
//! - **ingest**: 64 connections POSTing 1 KB events for a few seconds to
//!   the HTTP source (durable buffer, a sync per group of requests) and,
//!   as the baseline, to a bare hyper server that answers 202 and does
//!   nothing else: requests per second and p99 latency of each.
//! - **drain**: a buffer set to 500 events per second, fed 60 seconds'
//!   worth at once: the rate it lets them out at.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema};
use flumen::prelude::*;
use flumen::sinks::BlackholeConfig;
use flumen_core::testing::MemorySource;
use serde_json::json;

use super::env_number;

const CONNECTIONS: usize = 64;

pub fn run(runtime: &tokio::runtime::Runtime, wanted: &dyn Fn(&str) -> bool) {
    if wanted("ingest") {
        ingest(runtime);
    }
    if wanted("drain") {
        drain(runtime);
    }
}

fn ingest(runtime: &tokio::runtime::Runtime) {
    let seconds = env_number("INGEST_SECONDS", 5);
    let body = Arc::new(
        json!({ "id": 1, "payload": "x".repeat(1000) })
            .to_string()
            .into_bytes(),
    );
    println!(
        "HTTP ingest: {CONNECTIONS} connections, {} byte bodies, {seconds} s each",
        body.len()
    );
    let bare_port = runtime.block_on(bare_server());
    let bare = runtime.block_on(load(bare_port, "/", body.clone(), seconds));

    println!(
        "{:<34} {:>10} {:>10} {:>8}",
        "", "requests/s", "p99 ms", "ratio"
    );
    println!(
        "{:<34} {:>10.0} {:>10.2}",
        "bare hyper server (202, no work)",
        bare.rate(),
        bare.p99_ms()
    );
    for fsync in ["always", "interval"] {
        let engine = http_source(runtime, fsync, body.clone(), seconds);
        println!(
            "{:<34} {:>10.0} {:>10.2} {:>7.2}x  (p99 {:.2}x)",
            format!("http source, fsync {fsync}"),
            engine.rate(),
            engine.p99_ms(),
            engine.rate() / bare.rate(),
            engine.p99_ms() / bare.p99_ms()
        );
    }
    println!();
}

/// Load on an HTTP source (buffer with `fsync`) into a blackhole.
fn http_source(
    runtime: &tokio::runtime::Runtime,
    fsync: &str,
    body: Arc<Vec<u8>>,
    seconds: u64,
) -> Load {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config: flumen::sources::HttpSourceConfig = serde_json::from_value(json!({
        "listen": format!("127.0.0.1:{port}"),
        "stream": "events",
        "schema": { "id": "int64", "payload": "string" },
        "buffer": { "dir": dir.path(), "fsync": fsync },
    }))
    .expect("config");
    let mut graph = GraphBuilder::new();
    graph.source("events", config.build().expect("source"));
    graph.sink(
        "out",
        BlackholeConfig::default().build().expect("sink"),
        ["events"],
    );
    let pipeline = graph.build().expect("graph");
    let shutdown = pipeline.shutdown_handle();
    let running = runtime.spawn(pipeline.run_with(RunOptions {
        handle_signals: false,
        ..RunOptions::default()
    }));
    let load = runtime.block_on(async {
        wait_until_listening(port).await;
        load(port, "/v1/streams/events/events", body, seconds).await
    });
    shutdown.drain();
    runtime.block_on(running).expect("join").expect("run");
    load
}

/// What a load run measured.
struct Load {
    ok: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Load {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn p99_ms(&self) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let at = (sorted.len() * 99 / 100).min(sorted.len().saturating_sub(1));
        sorted.get(at).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }
}

/// `CONNECTIONS` clients POSTing `body` back to back for `seconds`.
async fn load(port: u16, path: &str, body: Arc<Vec<u8>>, seconds: u64) -> Load {
    let url = format!("http://127.0.0.1:{port}{path}");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (url, body, stop) = (url.clone(), body.clone(), stop.clone());
            tokio::spawn(async move {
                // One connection per client, kept alive.
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .expect("client");
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let response = client.post(&url).body(body.as_ref().clone()).send().await;
                    match response {
                        Ok(r) if r.status().as_u16() == 202 => latencies.push(sent.elapsed()),
                        Ok(r) => panic!("{url}: {}", r.status()),
                        Err(e) => panic!("{url}: {e}"),
                    }
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await.expect("client"));
    }
    Load {
        ok: latencies.len() as u64,
        elapsed: started.elapsed(),
        latencies,
    }
}

/// A hyper server that answers every request 202 and does nothing.
async fn bare_server() -> u16 {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: hyper::Request<hyper::body::Incoming>| async move {
                        // Read the body, as any server must.
                        let _ = http_body_util::BodyExt::collect(request.into_body()).await;
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(202)
                                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
                                .expect("response"),
                        )
                    },
                );
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    port
}

async fn wait_until_listening(port: u16) {
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn drain(runtime: &tokio::runtime::Runtime) {
    let seconds = env_number("DRAIN_SECONDS", 60);
    let rate = 500u64;
    let events = seconds * rate;
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batches: Vec<RecordBatch> = (0..events as i64)
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
    let dir = tempfile::tempdir().expect("tempdir");
    let buffer: flumen::operators::BufferConfig = serde_json::from_value(json!({
        "dir": dir.path(),
        "rate": { "events_per_second": rate },
        "batch_size": 10,
    }))
    .expect("config");
    let mut graph = GraphBuilder::new();
    graph.source("events", MemorySource::new(schema, batches));
    graph.operator("buffer", buffer.build().expect("buffer"), ["events"]);
    graph.sink(
        "out",
        BlackholeConfig::default().build().expect("sink"),
        ["buffer"],
    );
    let started = Instant::now();
    let report = runtime
        .block_on(graph.build().expect("graph").run_with(RunOptions {
            handle_signals: false,
            ..RunOptions::default()
        }))
        .expect("run");
    let elapsed = started.elapsed().as_secs_f64();
    let out = report.node("out").map_or(0, |n| n.rows_in);
    assert_eq!(out, events);
    let measured = out as f64 / elapsed;
    println!("buffer drain, {events} events in batches of 10 (durable log)");
    println!(
        "configured {rate} events/s, measured {measured:.1} events/s over {elapsed:.1} s: {:+.2}%",
        (measured / rate as f64 - 1.0) * 100.0
    );
    println!();
}
