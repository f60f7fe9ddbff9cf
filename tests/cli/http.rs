//! HTTP ingest through `flumen run`: what clients are told, what is
//! admitted, and that a 202 is kept through SIGKILLs.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{Value, json};

use flumen_core::testing::free_port;

use super::crash::{Random, committed};
use super::flumen;

pub(super) const TOKEN: &str = "s3cret-token";
const FLOOD_TOKEN: &str = "flood-token";
pub(super) const HMAC_SECRET: &str = "webhook-secret";

/// An HTTP source into a file sink, checkpointed every 100 ms.
pub(super) fn pipeline(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let yaml = format!(
        r#"
checkpoint:
  interval: 100ms
  store: {dir}/checkpoints
sources:
  orders:
    type: http
    listen: 127.0.0.1:{port}
    stream: orders
    schema: {{ id: int64, item: string }}
    required: [id]
    buffer: {{ dir: {dir}/buffer }}
{extra}
sinks:
  rows:
    type: file
    inputs: [orders]
    path: {dir}/rows
"#,
        dir = dir.display()
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Gives `pipeline`'s buffer segments of `bytes`.
pub(super) fn with_segment_bytes(file: &Path, bytes: u64) {
    let yaml = std::fs::read_to_string(file).unwrap().replace(
        "buffer: { dir:",
        &format!("buffer: {{ segment_bytes: {bytes}, dir:"),
    );
    std::fs::write(file, yaml).unwrap();
}

pub(super) fn spawn(file: &Path) -> Child {
    flumen()
        .args(["run", "--progress", "off"])
        .arg(file)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

pub(super) fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/v1/streams/orders/events")
}

/// Waits until the server answers. It asks with a valid token, so that
/// where tokens are needed the question is no failed attempt.
pub(super) async fn ready(client: &reqwest::Client, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let probe = || client.get(format!("{}/0", url(port))).bearer_auth(TOKEN);
    while probe().send().await.is_err() {
        assert!(Instant::now() < deadline, "the HTTP source never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The committed ids, as numbers.
pub(super) fn ids(dir: &Path) -> Vec<i64> {
    let mut ids: Vec<i64> = committed(&dir.join("rows"))
        .iter()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// Waits until `count` rows are committed.
pub(super) fn wait_for_rows(dir: &Path, count: usize, limit: Duration) -> Vec<i64> {
    let deadline = Instant::now() + limit;
    loop {
        let ids = ids(dir);
        if ids.len() >= count || Instant::now() > deadline {
            return ids;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn signed(
    request: reqwest::RequestBuilder,
    id: &str,
    timestamp: u64,
    body: &str,
    secret: &str,
) -> reqwest::RequestBuilder {
    let signature = flumen::sources::http::sign(secret.as_bytes(), id, timestamp, body.as_bytes());
    request
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_string())
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Posts one last event (`id`) and waits until its request is done. The
/// source reads the buffer in order and a checkpoint covers everything
/// before its position, so every request accepted before it is then
/// committed as well: nothing wrongly admitted can still be on its way.
pub(super) async fn settle(port: u16, token: Option<&str>, id: i64) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status_url = loop {
        let mut request = client
            .post(url(port))
            .json(&json!({ "id": id, "item": "last" }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        // A restarted run may not listen yet; a full buffer answers 503
        // until a checkpoint frees room.
        if let Ok(response) = request.send().await
            && response.status() == StatusCode::ACCEPTED
        {
            let body: Value = response.json().await.unwrap();
            break body["status_url"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the last event was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    until_done(&client, port, &status_url, token).await;
}

/// Polls a request's status (as the client that posted it, with `token`)
/// until it is `done` (it may only be `queued` or `processing` before),
/// and returns the last answer.
pub(super) async fn until_done(
    client: &reqwest::Client,
    port: u16,
    status_url: &str,
    token: Option<&str>,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut request = client.get(format!("http://127.0.0.1:{port}{status_url}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let status: Value = request.send().await.unwrap().json().await.unwrap();
        if status["status"] == "done" {
            return status;
        }
        assert!(
            ["queued", "processing"].contains(&status["status"].as_str().unwrap()),
            "{status}"
        );
        assert!(Instant::now() < deadline, "never done: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn every_refused_request_gets_its_status_and_admits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let auth = format!(
        "    auth: {{ bearer_tokens: [{TOKEN}, {FLOOD_TOKEN}], hmac_secrets: [{HMAC_SECRET}] }}
    max_body_bytes: 8192
    rate_limit: {{ per_second: 5, burst: 10 }}"
    );
    let mut child = spawn(&pipeline(dir.path(), port, &auth));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let accepted: Vec<i64> = runtime.block_on(async {
        let client = reqwest::Client::new();
        ready(&client, port).await;
        let post = || client.post(url(port));
        let status = |r: reqwest::Response| r.status();
        let mut accepted = Vec::new();

        // Not a route of this source, or the wrong method for one.
        let elsewhere = format!("http://127.0.0.1:{port}/v1/streams/other/events");
        let wrong_stream = client.post(elsewhere).body("{}").send().await.unwrap();
        assert_eq!(wrong_stream.status(), StatusCode::NOT_FOUND);
        assert!(
            wrong_stream
                .text()
                .await
                .unwrap()
                .contains("no stream `other`")
        );
        let wrong_method = client.put(url(port)).body("{}").send().await.unwrap();
        assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);

        // Refused before anything is read: no or bad credentials.
        let body = r#"{"id": 900, "item": "nope"}"#;
        assert_eq!(
            status(post().body(body).send().await.unwrap()),
            StatusCode::UNAUTHORIZED
        );
        let wrong_token = post().bearer_auth("guess").body(body).send().await.unwrap();
        assert_eq!(wrong_token.status(), StatusCode::UNAUTHORIZED);
        let bad_hmac = signed(post(), "msg_1", now(), body, "not-the-secret");
        assert_eq!(
            status(bad_hmac.send().await.unwrap()),
            StatusCode::UNAUTHORIZED
        );
        let stale = signed(post(), "msg_2", now() - 600, body, HMAC_SECRET);
        let stale = stale.send().await.unwrap();
        assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
        assert!(stale.text().await.unwrap().contains("webhook-timestamp"));

        // A signed request is accepted once; its replay is refused.
        let good = r#"{"id": 4, "item": "signed"}"#;
        let first = signed(post(), "msg_3", now(), good, HMAC_SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::ACCEPTED);
        accepted.push(4);
        let replay = signed(post(), "msg_3", now(), good, HMAC_SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
        assert!(replay.text().await.unwrap().contains("replay"));

        // Accepted, and a retry with the same key gets the same id.
        let two = r#"[{"id": 1, "item": "tea"}, {"id": 2, "item": "scone"}]"#;
        let keyed = || {
            post()
                .bearer_auth(TOKEN)
                .header("idempotency-key", "order-1")
                .body(two)
        };
        let first = keyed().send().await.unwrap();
        assert_eq!(first.status(), StatusCode::ACCEPTED);
        let location = first.headers()["location"].to_str().unwrap().to_string();
        let first: Value = first.json().await.unwrap();
        assert_eq!(first["status_url"], location.as_str());
        let retry: Value = keyed().send().await.unwrap().json().await.unwrap();
        assert_eq!(retry["id"], first["id"]);
        accepted.extend([1, 2]);

        // NDJSON, gzipped.
        let ndjson = gzip(b"{\"id\": 3, \"item\": \"cake\"}\n{\"id\": 5}\n");
        let gzipped = post()
            .bearer_auth(TOKEN)
            .header("content-encoding", "gzip")
            .body(ndjson)
            .send()
            .await
            .unwrap();
        assert_eq!(gzipped.status(), StatusCode::ACCEPTED);
        accepted.extend([3, 5]);

        // Too large, plain and once decompressed (a gzip bomb).
        let large = format!("[{}]", vec![r#"{"id": 901}"#; 1000].join(","));
        let refused = post().bearer_auth(TOKEN).body(large).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let bomb = gzip(&vec![b' '; 5 << 20]);
        assert!(bomb.len() < 8192, "{}", bomb.len());
        let refused = post()
            .bearer_auth(TOKEN)
            .header("content-encoding", "gzip")
            .body(bomb)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);

        // Malformed JSON, and a request whose second event breaks the
        // schema: nothing of either is admitted.
        let malformed = post()
            .bearer_auth(TOKEN)
            .body(r#"{"id": 902,"#)
            .send()
            .await
            .unwrap();
        assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
        let mixed = r#"[{"id": 903, "item": "ok"}, {"id": "nine", "item": "bad"}]"#;
        let refused = post().bearer_auth(TOKEN).body(mixed).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let message = refused.text().await.unwrap();
        assert!(
            message.contains("event 1") && message.contains("`id`"),
            "{message}"
        );
        let missing = post()
            .bearer_auth(TOKEN)
            .body(r#"{"item": "no id"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::BAD_REQUEST);

        // A client over its rate is told when to come back.
        let mut limited = None;
        for i in 0..40 {
            let body = format!(r#"{{"id": {}}}"#, 1000 + i);
            let response = post()
                .bearer_auth(FLOOD_TOKEN)
                .body(body)
                .send()
                .await
                .unwrap();
            match response.status() {
                StatusCode::ACCEPTED => accepted.push(1000 + i),
                StatusCode::TOO_MANY_REQUESTS => {
                    limited = Some(
                        response.headers()["retry-after"]
                            .to_str()
                            .unwrap()
                            .to_string(),
                    );
                }
                other => panic!("flood request {i}: {other}"),
            }
        }
        let retry_after: u64 = limited.expect("the flood was limited").parse().unwrap();
        assert!(retry_after >= 1);

        // The status of an accepted request ends as done.
        let status = until_done(&client, port, &location, Some(TOKEN)).await;
        let result = status["result"].as_str().unwrap();
        assert!(result.contains("checkpoint"), "{status}");
        let unknown = client
            .get(format!("{}/123456", url(port)))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        accepted
    });
    runtime.block_on(settle(port, Some(TOKEN), 9_999));
    let mut expected = accepted;
    expected.push(9_999);
    expected.sort_unstable();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ids(dir.path()), expected);
}

#[test]
fn every_event_accepted_through_five_sigkills_arrives_once() {
    const REQUESTS: u64 = 2_000;
    const PER_REQUEST: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = pipeline(dir.path(), port, "");
    // Small segments: many rolls, and torn writes at many points of
    // them.
    with_segment_bytes(&file, 32768);
    let mut random = Random::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let next_request = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    // Eight clients post batches of ids, each retried with its key until
    // it gets a 202, across the restarts.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (next_request, accepted, retried) =
                (next_request.clone(), accepted.clone(), retried.clone());
            runtime.spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                loop {
                    let request = next_request.fetch_add(1, Ordering::SeqCst);
                    if request >= REQUESTS {
                        break;
                    }
                    let events: Vec<Value> = (0..PER_REQUEST)
                        .map(|i| json!({ "id": request * PER_REQUEST + i, "item": "x" }))
                        .collect();
                    let body = serde_json::to_string(&events).unwrap();
                    let mut attempts = 0;
                    loop {
                        let response = client
                            .post(url(port))
                            .header("idempotency-key", format!("request-{request}"))
                            .body(body.clone())
                            .send()
                            .await;
                        match response.map(|r| r.status()) {
                            Ok(StatusCode::ACCEPTED) => {
                                accepted.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Ok(status) if status.is_client_error() => {
                                panic!("request {request}: {status}")
                            }
                            _ => {
                                attempts += 1;
                                if attempts > 1 {
                                    retried.fetch_add(1, Ordering::Relaxed);
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let mut child = spawn(&file);
    // Kill once every sixth of the requests is accepted, a little after.
    for kill in 1..=5 {
        let deadline = Instant::now() + Duration::from_secs(120);
        while accepted.load(Ordering::SeqCst) < kill * REQUESTS / 6 {
            // A run that exits (say, it cannot restore) would have the
            // clients retry for ever.
            if let Some(status) = child.try_wait().unwrap() {
                panic!("flumen exited ({status}) after kill {}", kill - 1);
            }
            assert!(
                Instant::now() < deadline,
                "no progress after kill {}",
                kill - 1
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(random.below(30)));
        let done = accepted.load(Ordering::SeqCst);
        eprintln!("kill {kill}: {done} of {REQUESTS} requests accepted");
        child.kill().unwrap();
        child.wait().unwrap();
        child = spawn(&file);
    }
    runtime.block_on(async {
        for client in clients {
            client.await.unwrap();
        }
    });
    // One more event, after every client's: once it is done, all are in.
    let expected = (REQUESTS * PER_REQUEST) as usize;
    runtime.block_on(settle(port, None, expected as i64));
    // Released segments are kept to be written over.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !has_a_spare(&dir.path().join("buffer")) {
        assert!(Instant::now() < deadline, "no released segment was kept");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    let rows_after = ids(dir.path());
    let unique: BTreeSet<i64> = rows_after.iter().copied().collect();
    assert_eq!(unique.len(), rows_after.len(), "some events arrived twice");
    assert_eq!(
        unique,
        (0..=expected as i64).collect::<BTreeSet<i64>>(),
        "events lost ({} retried requests)",
        retried.load(Ordering::Relaxed)
    );
}

/// Whether the buffer in `dir` holds a released segment kept to be
/// written over.
fn has_a_spare(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .any(|e| e.path().extension().is_some_and(|e| e == "spare"))
    })
}

#[test]
fn a_damaged_buffer_segment_is_quarantined_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Small segments, and no checkpoint for an hour: everything accepted
    // stays in the buffer.
    let file = pipeline(dir.path(), port, "");
    with_segment_bytes(&file, 2000);
    let yaml = std::fs::read_to_string(&file)
        .unwrap()
        .replace("interval: 100ms", "interval: 1h");
    std::fs::write(&file, &yaml).unwrap();
    let mut child = spawn(&file);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Request r holds ids 10r..10r+9.
    let ids_of: Vec<(String, Vec<i64>)> = runtime.block_on(async {
        let client = reqwest::Client::new();
        ready(&client, port).await;
        let mut accepted = Vec::new();
        for request in 0..60i64 {
            let events: Vec<Value> = (0..10)
                .map(|i| json!({ "id": request * 10 + i, "item": "x" }))
                .collect();
            let response = client.post(url(port)).json(&events).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            let body: Value = response.json().await.unwrap();
            let status_url = body["status_url"].as_str().unwrap().to_string();
            accepted.push((status_url, (request * 10..request * 10 + 10).collect()));
        }
        accepted
    });
    child.kill().unwrap();
    child.wait().unwrap();

    // Damage the second segment.
    let buffer = dir.path().join("buffer");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&buffer)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    assert!(segments.len() > 3, "{segments:?}");
    let mut bytes = std::fs::read(&segments[1]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&segments[1], bytes).unwrap();

    let inspect = super::run(&["buffer", "inspect", buffer.to_str().unwrap()]);
    assert_eq!(inspect.code, 0, "{}", inspect.stderr);
    assert!(inspect.stdout.contains("CORRUPT"), "{}", inspect.stdout);

    // Restarted with checkpoints: the damaged segment is moved aside and
    // its requests reported failed; everything else is delivered once.
    std::fs::write(&file, yaml.replace("interval: 1h", "interval: 100ms")).unwrap();
    let mut child = spawn(&file);
    let statuses: Vec<String> = runtime.block_on(async {
        settle(port, None, 9_999).await;
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        for (status_url, _) in &ids_of {
            let url = format!("http://127.0.0.1:{port}{status_url}");
            let status: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            statuses.push(status["status"].as_str().unwrap().to_string());
        }
        statuses
    });
    let _ = child.kill();
    let _ = child.wait();
    let failed = statuses.iter().filter(|s| *s == "failed").count();
    assert!(failed > 0, "no request was reported lost: {statuses:?}");
    assert!(
        statuses.iter().all(|s| s == "failed" || s == "done"),
        "{statuses:?}"
    );
    let mut expected: Vec<i64> = ids_of
        .iter()
        .zip(&statuses)
        .filter(|(_, status)| *status == "done")
        .flat_map(|((_, ids), _)| ids.clone())
        .collect();
    expected.push(9_999);
    assert_eq!(ids(dir.path()), expected);
    let inspect = super::run(&["buffer", "inspect", buffer.to_str().unwrap()]);
    assert!(
        inspect.stdout.contains("quarantined:"),
        "{}",
        inspect.stdout
    );
}

/// A downstream service that can be stopped: while down it answers 503
/// with `Retry-After`, while up it records the ids it is sent.
struct Downstream {
    up: Arc<std::sync::atomic::AtomicBool>,
    received: Arc<std::sync::Mutex<Vec<i64>>>,
    port: u16,
}

impl Downstream {
    async fn start() -> Downstream {
        use axum::http::StatusCode as Status;
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up_, received_) = (up.clone(), received.clone());
        let app = axum::Router::new().route(
            "/articles",
            axum::routing::post(move |axum::Json(rows): axum::Json<Vec<Value>>| {
                let (up, received) = (up_.clone(), received_.clone());
                async move {
                    if !up.load(Ordering::SeqCst) {
                        return (Status::SERVICE_UNAVAILABLE, [("retry-after", "1")])
                            .into_response();
                    }
                    let mut received = received.lock().unwrap();
                    received.extend(rows.iter().map(|r| r["id"].as_i64().unwrap()));
                    Status::OK.into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Downstream { up, received, port }
    }
}

use axum::response::IntoResponse;

#[test]
fn a_buffer_that_cannot_write_answers_503_and_stops_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Each request's record fills a segment, so every append starts one.
    let file = pipeline(dir.path(), port, "");
    with_segment_bytes(&file, 1000);
    let mut child = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let events = |request: i64| -> Vec<Value> {
        (0..10)
            .map(|i| json!({ "id": request * 10 + i, "item": "x".repeat(100) }))
            .collect()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    runtime.block_on(async {
        ready(&client, port).await;
        for request in 0..5 {
            let response = client
                .post(url(port))
                .json(&events(request))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
        }
    });
    assert_eq!(
        wait_for_rows(dir.path(), 50, Duration::from_secs(30)),
        (0..50).collect::<Vec<i64>>()
    );

    // The next segment cannot be created.
    std::fs::remove_dir_all(dir.path().join("buffer")).unwrap();
    let refused = runtime.block_on(async {
        let response = client
            .post(url(port))
            .json(&events(5))
            .send()
            .await
            .unwrap();
        let retry_after = response.headers().get("retry-after").cloned();
        (
            response.status(),
            retry_after,
            response.text().await.unwrap(),
        )
    });
    assert_eq!(refused.0, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.2);
    assert!(refused.1.is_some(), "a 503 says when to retry");
    assert!(
        refused.2.contains("could not store the events"),
        "{}",
        refused.2
    );

    // The pipeline stops, saying why, for a restart to reopen the buffer.
    // Its stderr ends when it exits.
    let mut output = child.stderr.take().unwrap();
    let (sender, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut output, &mut text);
        let _ = sender.send(text);
    });
    let Ok(stderr) = ended.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        panic!("the pipeline kept running");
    };
    assert!(!child.wait().unwrap().success());
    assert!(
        stderr.contains("the buffer of stream `orders` failed (buffer write:")
            && stderr.contains("restart the pipeline to reopen it"),
        "{stderr}"
    );
    assert_eq!(ids(dir.path()), (0..50).collect::<Vec<i64>>());
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn a_full_buffer_answers_503_and_delivers_everything_once_downstream_returns() {
    const RSS_BOUND: u64 = 128 << 20;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let downstream = runtime.block_on(Downstream::start());
    let yaml = format!(
        r#"
checkpoint:
  interval: 100ms
  store: {dir}/checkpoints
sources:
  articles:
    type: http
    listen: 127.0.0.1:{port}
    stream: orders
    schema: {{ id: int64, body: string }}
    buffer: {{ dir: {dir}/buffer, max_events: 5000 }}
sinks:
  legacy:
    type: http
    inputs: [articles]
    url: http://127.0.0.1:{downstream}/articles
    batch_size: 100
    concurrency: 4
    retry: {{ initial_backoff: 50ms, max_backoff: 500ms }}
    circuit_breaker: {{ failures: 3, open_for: 200ms }}
"#,
        dir = dir.path().display(),
        downstream = downstream.port,
    );
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut child = spawn(&file);
    let body = "x".repeat(1000);
    let (accepted, refused) = runtime.block_on(async {
        let client = reqwest::Client::new();
        ready(&client, port).await;
        let mut accepted = Vec::new();
        let mut refused = 0;
        // Post until the buffer is full, then keep posting: every request
        // after that is refused, and memory does not grow.
        for request in 0..400i64 {
            let events: Vec<Value> = (0..50)
                .map(|i| json!({ "id": request * 50 + i, "body": body }))
                .collect();
            let response = client.post(url(port)).json(&events).send().await.unwrap();
            match response.status() {
                StatusCode::ACCEPTED => accepted.extend(request * 50..request * 50 + 50),
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert!(response.headers().contains_key("retry-after"));
                    refused += 1;
                }
                other => panic!("request {request}: {other}"),
            }
        }
        (accepted, refused)
    });
    let memory = rss(child.id());
    assert!(refused > 0, "the buffer never filled");
    assert!(accepted.len() >= 5000, "{} accepted", accepted.len());
    assert!(
        memory < RSS_BOUND,
        "resident memory {} MB over the bound",
        memory >> 20
    );
    assert!(downstream.received.lock().unwrap().is_empty());

    // The service comes back: everything accepted arrives, once.
    downstream.up.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while downstream.received.lock().unwrap().len() < accepted.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // One more event: the sink writes in order, so once it arrives every
    // retry of an earlier batch has too.
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let last = json!([{ "id": 1_000_000, "body": "last" }]);
        while client
            .post(url(port))
            .json(&last)
            .send()
            .await
            .unwrap()
            .status()
            != StatusCode::ACCEPTED
        {
            assert!(
                Instant::now() < deadline,
                "the last event was never accepted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    while !downstream.received.lock().unwrap().contains(&1_000_000) {
        assert!(Instant::now() < deadline, "the last event never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut received = downstream.received.lock().unwrap().clone();
    received.retain(|id| *id != 1_000_000);
    received.sort_unstable();
    eprintln!(
        "accepted {}, refused {refused} requests, rss {} MB",
        accepted.len(),
        memory >> 20
    );
    assert_eq!(received, accepted);
}

#[test]
fn over_tls_requests_are_accepted_and_plain_http_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = super::self_signed_certificate(dir.path());
    let port = free_port();
    let tls = format!(
        "    tls: {{ cert: {}, key: {} }}",
        cert.display(),
        key.display()
    );
    let mut child = spawn(&pipeline(dir.path(), port, &tls));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let root = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(root)
            .build()
            .unwrap();
        let url = format!("https://127.0.0.1:{port}/v1/streams/orders/events");
        let deadline = Instant::now() + Duration::from_secs(10);
        let response = loop {
            match client.post(&url).body(r#"{"id": 7}"#).send().await {
                Ok(response) => break response,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{e:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let plain = reqwest::Client::new()
            .post(url.replace("https", "http"))
            .body(r#"{"id": 8}"#)
            .send()
            .await;
        assert!(plain.is_err() || plain.unwrap().status() != StatusCode::ACCEPTED);
    });
    let rows = wait_for_rows(dir.path(), 1, Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(rows, vec![7]);
}
