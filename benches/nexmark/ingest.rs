//! HTTP ingest and the buffer's drain.
//!
//! - **ingest**: `wrk` with 64 connections POSTing 1 KB events for a few
//!   seconds to the HTTP source (durable buffer, a sync per group of
//!   requests) and, as the baseline, to a bare hyper server that answers
//!   202 and does nothing else: requests per second and p99 latency of
//!   each.
//! - **drain**: a buffer set to 500 events per second, fed 60 seconds'
//!   worth at once: the rate it lets them out at.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema};
use flumen::prelude::*;
use flumen::sinks::BlackholeConfig;
use flumen_core::testing::MemorySource;
use serde_json::json;

use super::{RUNS, env_number};

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
        "HTTP ingest: {CONNECTIONS} connections, {} byte bodies, {seconds} s each, best of {RUNS} (interleaved)",
        body.len()
    );
    let disk = sync_latency();
    println!(
        "this disk: 20 KB write and fdatasync (what `fsync: always` waits for, once per group of requests) \
         over 2 s: mean {:.0} us, p99 {:.0} us, max {:.1} ms, {} over 50 ms",
        disk.mean.as_secs_f64() * 1e6,
        disk.p99.as_secs_f64() * 1e6,
        disk.max.as_secs_f64() * 1e3,
        disk.stalls
    );
    let bare_port = runtime.block_on(bare_server());
    let policies = ["always", "interval"];
    // Interleaved, so that a slow spell of the machine hits all alike.
    let mut bare: Option<Load> = None;
    let mut engines: Vec<Option<Load>> = policies.iter().map(|_| None).collect();
    for _ in 0..RUNS {
        keep_best(&mut bare, load(bare_port, "/", body.clone(), seconds));
        for (best, fsync) in engines.iter_mut().zip(policies) {
            keep_best(best, http_source(runtime, fsync, body.clone(), seconds));
        }
    }
    let bare = bare.expect("runs");
    println!(
        "{:<34} {:>10} {:>10} {:>12} {:>8}",
        "", "requests/s", "p99 ms", "CPU us/req", "ratio"
    );
    println!(
        "{:<34} {:>10.0} {:>10.2} {:>12.1}",
        "bare hyper server (202, no work)",
        bare.rate(),
        bare.p99_ms(),
        bare.cpu_us()
    );
    for (engine, fsync) in engines.into_iter().zip(policies) {
        let engine = engine.expect("runs");
        println!(
            "{:<34} {:>10.0} {:>10.2} {:>12.1} {:>7.2}x  (p99 {:.2}x)",
            format!("http source, fsync {fsync}"),
            engine.rate(),
            engine.p99_ms(),
            engine.cpu_us(),
            engine.rate() / bare.rate(),
            engine.p99_ms() / bare.p99_ms()
        );
    }
    println!();
}

/// How long appending 20 KB to a file and syncing it takes on the disk
/// the buffer is on: the floor of a group commit's wait, and the stalls
/// that every request waiting on a sync sees.
struct SyncLatency {
    mean: Duration,
    p99: Duration,
    max: Duration,
    /// Syncs over 50 ms.
    stalls: usize,
}

fn sync_latency() -> SyncLatency {
    use std::io::Write;
    let mut file = tempfile::tempfile().expect("temporary file");
    let block = vec![7u8; 20 << 10];
    let mut syncs = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let sync = Instant::now();
        file.write_all(&block).expect("write");
        file.sync_data().expect("sync");
        syncs.push(sync.elapsed());
    }
    drop(file);
    settle_disk();
    syncs.sort();
    SyncLatency {
        mean: syncs.iter().sum::<Duration>() / syncs.len() as u32,
        p99: syncs[syncs.len() * 99 / 100],
        max: syncs[syncs.len() - 1],
        stalls: syncs
            .iter()
            .filter(|s| **s > Duration::from_millis(50))
            .count(),
    }
}

/// Waits until the file system has done the work a deleted file leaves
/// (on a disk mounted with `discard`, freeing hundreds of megabytes stalls
/// every sync for a while), so that it does not land on the next run.
fn settle_disk() {
    let _ = std::process::Command::new("sync").status();
}

/// Keeps the run with the most requests per second.
fn keep_best(best: &mut Option<Load>, run: Load) {
    if best.as_ref().is_none_or(|b| run.rate() > b.rate()) {
        *best = Some(run);
    }
}

/// Load on an HTTP source (buffer with `fsync`) into a blackhole.
fn http_source(
    runtime: &tokio::runtime::Runtime,
    fsync: &str,
    body: Arc<Vec<u8>>,
    seconds: u64,
) -> Load {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = flumen_core::testing::free_port();
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
    runtime.block_on(wait_until_listening(port));
    let load = load(port, "/v1/streams/events/events", body, seconds);
    shutdown.drain();
    runtime.block_on(running).expect("join").expect("run");
    drop(dir);
    settle_disk();
    load
}

/// What a load run measured.
struct Load {
    requests_per_second: f64,
    p99: Duration,
    /// CPU time this process (the server) spent per request.
    cpu_per_request: Duration,
}

impl Load {
    fn rate(&self) -> f64 {
        self.requests_per_second
    }

    fn p99_ms(&self) -> f64 {
        self.p99.as_secs_f64() * 1000.0
    }

    fn cpu_us(&self) -> f64 {
        self.cpu_per_request.as_secs_f64() * 1e6
    }
}

/// `wrk` from its own process (so the load costs the server as little CPU
/// as a real client's would): `CONNECTIONS` keep-alive connections POSTing
/// `body` back to back for `seconds`. Every answer must be a 2xx.
fn load(port: u16, path: &str, body: Arc<Vec<u8>>, seconds: u64) -> Load {
    let script = tempfile::NamedTempFile::new().expect("script file");
    let body = String::from_utf8(body.to_vec()).expect("UTF-8 body");
    std::fs::write(
        script.path(),
        format!(
            "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
            lua_string(&body)
        ),
    )
    .expect("script");
    let cpu_before = process_cpu();
    let output = std::process::Command::new("wrk")
        .args(["-t", "2", "-c", &CONNECTIONS.to_string(), "-d"])
        .arg(format!("{seconds}s"))
        .args(["--latency", "-s"])
        .arg(script.path())
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("wrk is needed for this benchmark (`apt-get install wrk`)");
    let cpu = process_cpu() - cpu_before;
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {report}");
    assert!(
        !report.contains("Non-2xx") && !report.contains("Socket errors"),
        "some requests were refused or failed:\n{report}"
    );
    // "  512340 requests in 5.00s, 60.12MB read"
    let requests: f64 = report
        .lines()
        .find(|line| line.contains(" requests in "))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .expect("wrk's request count");
    Load {
        requests_per_second: wrk_field(&report, "Requests/sec:").parse().expect("rate"),
        p99: parse_duration(wrk_field(&report, "99%")),
        cpu_per_request: cpu.div_f64(requests.max(1.0)),
    }
}

/// CPU time (user and system) this process has used so far.
fn process_cpu() -> Duration {
    // utime and stime, the 14th and 15th fields of /proc/self/stat, in
    // clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The value after `label` on wrk's report line starting with it.
fn wrk_field<'a>(report: &'a str, label: &str) -> &'a str {
    report
        .lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `{label}` in wrk's report:\n{report}"))
}

/// wrk's durations: `812.00us`, `1.53ms`, `2.10s`.
fn parse_duration(text: &str) -> Duration {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text.trim_end_matches('s'), 1.0)
    };
    Duration::from_secs_f64(number.parse::<f64>().expect("duration") * scale)
}

/// `text` (ASCII JSON) as a Lua string literal: Rust's quoting of such
/// text is valid Lua.
fn lua_string(text: &str) -> String {
    format!("{text:?}")
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
