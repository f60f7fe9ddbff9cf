//! HTTP ingest against careless and hostile clients, through `flumen run`:
//! whatever they send, a 202 means the events arrive once, anything else
//! admits nothing, and the server keeps serving everyone else.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use flumen_core::testing::free_port;

use super::flumen;
use super::http::{
    HMAC_SECRET, TOKEN, gzip, ids, now, pipeline, ready, settle, signed, spawn, until_done, url,
};

/// Runs `flumen run FILE` with its open-file limit lowered to `files`;
/// what it logs is read on a thread and returned when it exits.
fn spawn_with_file_limit(file: &Path, files: u32) -> (Child, std::thread::JoinHandle<String>) {
    let flumen = flumen();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n {files} && exec \"$0\" run --progress off \"$1\""
        ))
        .arg(flumen.get_program())
        .arg(file)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    (child, log)
}

/// CPU time a process has used (user and system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Open file descriptors of a process.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn post(client: &reqwest::Client, port: u16) -> reqwest::RequestBuilder {
    client.post(url(port))
}

/// The status code of a request, or `None` if the connection broke.
async fn sent(request: reqwest::RequestBuilder) -> Option<StatusCode> {
    request.send().await.ok().map(|r| r.status())
}

#[test]
fn gzip_bodies_are_taken_whole_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn(&pipeline(dir.path(), port, ""));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        ready(&client, port).await;
        let gzipped = |body: Vec<u8>, encoding: &str| {
            post(&client, port)
                .header("content-encoding", encoding)
                .body(body)
        };
        // Three members, as `gzip a >> b` and log shippers write them.
        let members = [
            gzip(b"{\"id\": 1}\n{\"id\": 2}\n"),
            gzip(b"{\"id\": 3}\n"),
            gzip(b"{\"id\": 4}"),
        ]
        .concat();
        let response = gzipped(members.clone(), "gzip").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        // The encoding's name in any case, and its alias.
        let upper = gzipped(gzip(b"{\"id\": 5}"), "GZIP").send().await.unwrap();
        assert_eq!(upper.status(), StatusCode::ACCEPTED);
        let alias = gzipped(gzip(b"{\"id\": 6}"), "x-gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(alias.status(), StatusCode::ACCEPTED);
        // Anything but a whole gzip stream admits nothing.
        let mut trailing = gzip(b"{\"id\": 900}");
        trailing.extend_from_slice(b"\0\0junk");
        let mut truncated = [gzip(b"{\"id\": 901}"), gzip(b"{\"id\": 902}")].concat();
        truncated.truncate(truncated.len() - 4);
        for (what, body) in [("trailing bytes", trailing), ("a cut member", truncated)] {
            let response = gzipped(body, "gzip").send().await.unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
            let text = response.text().await.unwrap();
            assert!(text.contains("not a whole gzip stream"), "{what}: {text}");
        }
    });
    runtime.block_on(settle(port, None, 9_999));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ids(dir.path()), [1, 2, 3, 4, 5, 6, 9_999]);
}

#[test]
fn no_request_answered_202_is_dead_lettered_for_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = format!(
        r#"
checkpoint:
  interval: 100ms
  store: {dir}/checkpoints
dead_letter:
  type: file
  path: {dir}/dead
sources:
  articles:
    type: http
    listen: 127.0.0.1:{port}
    stream: orders
    schema: {{ id: int64, title: string, at: timestamp, small: int32, scores: list<int64> }}
    required: [id]
    buffer: {{ dir: {dir}/buffer }}
sinks:
  rows:
    type: file
    inputs: [articles]
    path: {dir}/rows
"#,
        dir = dir.path().display()
    );
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut child = spawn(&file);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status_urls = runtime.block_on(async {
        let client = reqwest::Client::new();
        ready(&client, port).await;
        // Each class the pipeline's decoder refuses, or no sink could
        // write, alone and behind a good event.
        let bad: [(&[u8], &str); 5] = [
            (br#"{"id":3,"title":"c","at":"not a date"}"#, "at"),
            (br#"{"id":4,"small":3000000000}"#, "small"),
            (br#"{"id":5,"scores":[1,"two",3]}"#, "scores"),
            (b"{\"id\":6,\"undeclared\":\"\xff\xfe\"}", ""),
            (br#"{"id":8,"title":"g","at":9223372036854775807}"#, "at"),
        ];
        for (event, field) in bad {
            for (index, body) in [
                (0, event.to_vec()),
                (1, [b"[{\"id\": 700}, ".as_slice(), event, b"]"].concat()),
            ] {
                let response = post(&client, port).body(body.clone()).send().await.unwrap();
                let status = response.status();
                let text = response.text().await.unwrap();
                assert_eq!(
                    status,
                    StatusCode::BAD_REQUEST,
                    "{}: {text}",
                    String::from_utf8_lossy(&body)
                );
                if !field.is_empty() {
                    assert!(
                        text.contains(&format!("event {index}")) && text.contains(field),
                        "{text}"
                    );
                }
            }
        }
        // What fits is admitted, and ends done, not dead-lettered.
        let good = [
            json!({ "id": 1, "title": "a", "at": "2026-12-06T10:00:00Z", "small": 7, "scores": [1, 2] }),
            json!({ "id": 2, "at": 1_765_000_000_000_i64, "small": -2_147_483_648_i64 }),
        ];
        let mut status_urls = Vec::new();
        for event in good {
            let response = post(&client, port).json(&event).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            let body: Value = response.json().await.unwrap();
            status_urls.push(body["status_url"].as_str().unwrap().to_string());
        }
        status_urls
    });
    runtime.block_on(settle(port, None, 9_999));
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for status_url in &status_urls {
            let status = until_done(&client, port, status_url, None).await;
            assert_eq!(status["status"], "done", "{status}");
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ids(dir.path()), [1, 2, 9_999]);
    let dead = super::crash::committed(&dir.path().join("dead"));
    assert!(dead.is_empty(), "dead-lettered: {dead:?}");
    let rows = super::crash::committed(&dir.path().join("rows")).join("\n");
    assert!(!rows.contains("ERROR"), "{rows}");
}

/// Connections that send nothing, an HTTP/2 preface or half a request
/// head, and then wait.
fn idle_connections(port: u16, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|i| {
            let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
            match i % 3 {
                0 => {}
                1 => socket
                    .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                    .unwrap(),
                _ => socket
                    .write_all(b"POST /v1/streams/orders/events HTTP/1.1\r\nhost: x\r\n")
                    .unwrap(),
            }
            socket
        })
        .collect()
}

/// Waits until the server has closed every one of `sockets`.
fn until_closed(sockets: Vec<TcpStream>) {
    for mut socket in sockets {
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut buffer = [0u8; 256];
        loop {
            match socket.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                // An answer to a broken head (a 400), then the close.
                Ok(_) => continue,
            }
        }
    }
}

#[test]
fn idle_connections_are_closed_by_the_deadline_and_others_served_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = pipeline(dir.path(), port, "    request_timeout: 2s");
    let (mut child, _log) = spawn_with_file_limit(&file, 400);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(ready(&reqwest::Client::new(), port));
    let before = open_files(child.id());
    let idle = idle_connections(port, 220);
    // Served while they wait.
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let response = post(&client, port)
            .body(r#"{"id": 1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    });
    until_closed(idle);
    // Every connection's descriptor is given back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_files(child.id()) > before + 10 {
        assert!(
            Instant::now() < deadline,
            "{} files open",
            open_files(child.id())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    runtime.block_on(settle(port, None, 9_999));
    assert!(child.try_wait().unwrap().is_none(), "the pipeline stopped");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ids(dir.path()), [1, 9_999]);
}

#[test]
fn past_max_connections_a_new_one_is_turned_away_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = pipeline(
        dir.path(),
        port,
        "    request_timeout: 2s\n    max_connections: 20",
    );
    let mut child = spawn(&file);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(ready(&reqwest::Client::new(), port));
    // Five more than the server takes: those past the limit are answered
    // 503 and closed; the others wait to be closed by the deadline.
    let mut turned_away = 0;
    for mut socket in idle_connections(port, 25) {
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = socket.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        if answer.starts_with("HTTP/1.1 503") {
            assert!(answer.contains("retry-after: 1"), "{answer}");
            turned_away += 1;
        }
    }
    // (The client that checked the server was up may still hold one.)
    assert!((5..=6).contains(&turned_away), "{turned_away} turned away");
    runtime.block_on(settle(port, None, 9_999));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ids(dir.path()), [9_999]);
}

#[test]
fn out_of_file_descriptors_the_server_waits_without_spinning_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Out of descriptors, a sink that opens files would fail: this one
    // opens none.
    let file = pipeline(dir.path(), port, "    request_timeout: 2s");
    let yaml = std::fs::read_to_string(&file).unwrap();
    let sink = format!(
        "    type: file\n    inputs: [orders]\n    path: {}/rows",
        dir.path().display()
    );
    assert!(yaml.contains(&sink));
    std::fs::write(
        &file,
        yaml.replace(&sink, "    type: blackhole\n    inputs: [orders]"),
    )
    .unwrap();
    let (mut child, log) = spawn_with_file_limit(&file, 96);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(ready(&reqwest::Client::new(), port));
    // More connections than the process has descriptors for: the rest wait
    // in the listen queue, and accepting fails until the deadline frees
    // some. Checkpoints fail meanwhile, and are tried again.
    let (cpu, wall) = (cpu_ticks(child.id()), Instant::now());
    let idle = idle_connections(port, 150);
    until_closed(idle);
    let used = (cpu_ticks(child.id()) - cpu) as f64 / 100.0;
    let elapsed = wall.elapsed().as_secs_f64();
    assert!(
        used < elapsed / 2.0,
        "the server used {used:.2}s of CPU in {elapsed:.2}s: it spun"
    );
    // Committed by a checkpoint: the pipeline went on.
    runtime.block_on(settle(port, None, 9_999));
    assert!(child.try_wait().unwrap().is_none(), "the pipeline stopped");
    let _ = child.kill();
    let _ = child.wait();
    let log = log.join().unwrap();
    assert!(
        log.contains("could not accept a connection; waiting before trying again"),
        "{log}"
    );
}

/// A pipeline taking bearer tokens `TOKEN` and `OTHER_TOKEN` and requests
/// signed with `HMAC_SECRET`, with more `auth` settings and more source
/// settings.
fn authenticated(dir: &Path, port: u16, more_auth: &str, extra: &str) -> std::path::PathBuf {
    let auth = format!(
        "    auth: {{ bearer_tokens: [{TOKEN}, {OTHER_TOKEN}], hmac_secrets: [{HMAC_SECRET}]{more_auth} }}\n{extra}"
    );
    pipeline(dir, port, &auth)
}

/// Sends requests `make` makes until one is not answered 429, waiting as
/// each 429 says.
async fn past_the_rate_limit(make: impl Fn() -> reqwest::RequestBuilder) -> reqwest::Response {
    loop {
        let response = make().send().await.unwrap();
        if response.status() != StatusCode::TOO_MANY_REQUESTS {
            return response;
        }
        let wait: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

const OTHER_TOKEN: &str = "other-token";

#[test]
fn a_request_listing_thousands_of_signatures_costs_no_more_than_a_normal_one() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = authenticated(dir.path(), port, "", "    max_body_bytes: 2097152");
    let mut child = spawn(&file);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (amplified, normal) = runtime.block_on(async {
        ready(&reqwest::Client::new(), port).await;
        let body = json!({ "id": 1, "item": "x".repeat(1 << 20) }).to_string();
        let entries = ["v1,"; 8000].join(" ");
        let pid = child.id();
        let start = cpu_ticks(pid);
        for i in 0..5 {
            // A client of its own each: the server may close the
            // connection without reading the body it refused.
            let client = reqwest::Client::new();
            let status = sent(
                post(&client, port)
                    .header("webhook-id", format!("amplify-{i}"))
                    .header("webhook-timestamp", now().to_string())
                    .header("webhook-signature", &entries)
                    .body(body.clone()),
            )
            .await;
            assert_ne!(status, Some(StatusCode::ACCEPTED));
        }
        let amplified = cpu_ticks(pid) - start;
        let start = cpu_ticks(pid);
        let client = reqwest::Client::new();
        for i in 0..5 {
            let request = signed(
                post(&client, port),
                &format!("normal-{i}"),
                now(),
                &body,
                HMAC_SECRET,
            );
            assert_eq!(sent(request).await, Some(StatusCode::ACCEPTED));
        }
        (amplified, cpu_ticks(pid) - start)
    });
    runtime.block_on(settle(port, Some(TOKEN), 9_999));
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("CPU ticks: 5 amplified requests {amplified}, 5 normal ones {normal}");
    assert!(
        amplified <= normal + 20,
        "5 requests with 8000 signatures took {amplified} ticks of CPU, 5 normal ones {normal}"
    );
}

#[test]
fn an_address_that_keeps_failing_is_held_back_and_valid_tokens_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = authenticated(
        dir.path(),
        port,
        ", failed_attempts: { per_second: 1, burst: 3 }",
        "",
    );
    let mut child = spawn(&file);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        ready(&client, port).await;
        let body = r#"{"id": 1}"#;
        for _ in 0..3 {
            let wrong = post(&client, port).bearer_auth("guess").body(body);
            assert_eq!(sent(wrong).await, Some(StatusCode::UNAUTHORIZED));
        }
        let held = post(&client, port).body(body).send().await.unwrap();
        assert_eq!(held.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(held.headers().contains_key("retry-after"));
        // A valid token is never held back; the scheme's case is free.
        let valid = post(&client, port)
            .header("authorization", format!("bearer {TOKEN}"))
            .body(body);
        assert_eq!(sent(valid).await, Some(StatusCode::ACCEPTED));
    });
    runtime.block_on(settle(port, Some(TOKEN), 9_999));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ids(dir.path()), [1, 9_999]);
}

#[test]
fn a_signed_retry_after_a_refusal_is_admitted_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = authenticated(
        dir.path(),
        port,
        "",
        "    rate_limit: { per_second: 1, burst: 1 }",
    );
    let mut child = spawn(&file);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        ready(&client, port).await;
        let first = r#"{"id": 1}"#;
        let again = r#"{"id": 2}"#;
        let request =
            |id: &str, body: &str| signed(post(&client, port), id, now(), body, HMAC_SECRET);
        assert_eq!(
            sent(request("msg_1", first)).await,
            Some(StatusCode::ACCEPTED)
        );
        // Over the rate: refused, and the id is not used up.
        let limited = request("msg_2", again).send().await.unwrap();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        // An encoding the server does not take: refused, id not used up.
        let unsupported =
            past_the_rate_limit(|| request("msg_2", again).header("content-encoding", "br")).await;
        assert_eq!(unsupported.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        // The sender's retry, signed anew as Standard Webhooks senders
        // do, gets in once; its replay does not.
        let retry = past_the_rate_limit(|| request("msg_2", again)).await;
        assert_eq!(retry.status(), StatusCode::ACCEPTED);
        let replay = past_the_rate_limit(|| request("msg_2", again)).await;
        assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
        assert!(replay.text().await.unwrap().contains("replay"));
        // An empty id is no id.
        let empty = request("", r#"{"id": 3}"#);
        assert_eq!(sent(empty).await, Some(StatusCode::UNAUTHORIZED));
    });
    runtime.block_on(settle(port, Some(TOKEN), 9_999));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ids(dir.path()), [1, 2, 9_999]);
}

#[test]
fn a_replay_after_a_restart_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = authenticated(dir.path(), port, "", "");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    // The exact bytes a client sent, to be sent again.
    let (sent_at, first, second) = (now(), r#"{"id": 1}"#, r#"{"id": 2}"#);
    let replay = |id: &'static str, body: &'static str| {
        let client = client.clone();
        async move {
            let response = signed(post(&client, port), id, sent_at, body, HMAC_SECRET)
                .send()
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    // First run: admitted, and released by a checkpoint.
    let mut child = spawn(&file);
    runtime.block_on(async {
        ready(&client, port).await;
        assert_eq!(replay("msg_1", first).await.0, StatusCode::ACCEPTED);
    });
    // Once a later request is done, the first is released too.
    runtime.block_on(settle(port, Some(TOKEN), 100));
    child.kill().unwrap();
    child.wait().unwrap();
    // Second run, without checkpoints: admitted and still in the buffer
    // when the process dies.
    let yaml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, yaml.replace("interval: 100ms", "interval: 1h")).unwrap();
    let mut child = spawn(&file);
    runtime.block_on(async {
        ready(&client, port).await;
        assert_eq!(replay("msg_2", second).await.0, StatusCode::ACCEPTED);
        let (status, text) = replay("msg_1", first).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // Third run: both replays are refused, from the buffer and from the
    // file of released keys.
    std::fs::write(&file, yaml).unwrap();
    let mut child = spawn(&file);
    runtime.block_on(async {
        ready(&client, port).await;
        for (id, body) in [("msg_1", first), ("msg_2", second)] {
            let (status, text) = replay(id, body).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{id}: {text}");
            assert!(text.contains("replay"), "{text}");
        }
    });
    runtime.block_on(settle(port, Some(TOKEN), 9_999));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ids(dir.path()), [1, 2, 100, 9_999]);
}

#[test]
fn idempotency_keys_belong_to_their_credential_and_their_body() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = authenticated(dir.path(), port, "", "");
    let mut child = spawn(&file);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        ready(&client, port).await;
        let keyed = |token: &str, key: &[u8], body: &'static str| {
            post(&client, port)
                .bearer_auth(token)
                .header(
                    "idempotency-key",
                    reqwest::header::HeaderValue::from_bytes(key).unwrap(),
                )
                .body(body)
        };
        let answer = |request: reqwest::RequestBuilder| async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        };
        // A key that is not ASCII is a key like any other.
        let key = "ключ-1".as_bytes();
        let (status, first) = answer(keyed(TOKEN, key, r#"{"id": 1}"#)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let (status, retry) = answer(keyed(TOKEN, key, r#"{"id": 1}"#)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(retry["id"], first["id"]);
        // The same key with another body is not a retry.
        let (status, other) = answer(keyed(TOKEN, key, r#"{"id": 100}"#)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{other}");
        // Another credential's key of the same name is its own.
        let (status, theirs) = answer(keyed(OTHER_TOKEN, key, r#"{"id": 2}"#)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_ne!(theirs["id"], first["id"]);
        // Empty and over-long keys are refused.
        for bad in [&b""[..], &[b'k'; 256][..]] {
            let (status, body) = answer(keyed(TOKEN, bad, r#"{"id": 101}"#)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        }
        // Ids are opaque, and a status is its poster's to read.
        let id = first["id"].as_str().unwrap();
        assert_eq!(id.len(), 32);
        assert!(id.parse::<u64>().is_err());
        let status_url = format!(
            "http://127.0.0.1:{port}{}",
            first["status_url"].as_str().unwrap()
        );
        let mine = client
            .get(&status_url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(mine.status(), StatusCode::OK);
        let theirs = client
            .get(&status_url)
            .bearer_auth(OTHER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
        let nobody = client.get(&status_url).send().await.unwrap();
        assert_eq!(nobody.status(), StatusCode::UNAUTHORIZED);
        // A 405 says what is allowed.
        let put = client
            .put(url(port))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(put.headers()["allow"], "POST");
        let delete = client
            .delete(&status_url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(delete.headers()["allow"], "GET");
    });
    runtime.block_on(settle(port, Some(TOKEN), 9_999));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ids(dir.path()), [1, 2, 9_999]);
}

/// Every kind of client, through five SIGKILLs: each event answered 202
/// arrives exactly once.
#[test]
fn mixed_clients_through_five_sigkills_deliver_every_event_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    const REQUESTS: u64 = 900;
    const PER_REQUEST: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = authenticated(dir.path(), port, "", "");
    super::http::with_segment_bytes(&file, 32768);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let next_request = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (next_request, accepted) = (next_request.clone(), accepted.clone());
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
                    let lines: Vec<String> = (0..PER_REQUEST)
                        .map(|i| {
                            json!({ "id": request * PER_REQUEST + i, "item": "x" }).to_string()
                        })
                        .collect();
                    loop {
                        // Bearer and JSON, bearer and gzip in several
                        // members, or signed.
                        let base = post(&client, port);
                        let attempt = match request % 3 {
                            0 => base
                                .bearer_auth(TOKEN)
                                .header("idempotency-key", format!("request-{request}"))
                                .body(format!("[{}]", lines.join(","))),
                            1 => {
                                let (a, b) = lines.split_at(lines.len() / 2);
                                let body =
                                    [gzip(a.join("\n").as_bytes()), gzip(b.join("\n").as_bytes())]
                                        .concat();
                                base.bearer_auth(TOKEN)
                                    .header("idempotency-key", format!("request-{request}"))
                                    .header("content-encoding", "gzip")
                                    .body(body)
                            }
                            _ => signed(
                                base,
                                &format!("request-{request}"),
                                now(),
                                &lines.join("\n"),
                                HMAC_SECRET,
                            ),
                        };
                        match attempt.send().await {
                            Ok(response) if response.status() == StatusCode::ACCEPTED => break,
                            // A signed request admitted before a kill,
                            // whose 202 was lost: its retry is a replay.
                            Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                                let text = response.text().await.unwrap();
                                assert!(text.contains("replay"), "request {request}: {text}");
                                break;
                            }
                            Ok(response) if response.status().is_client_error() => {
                                panic!("request {request}: {}", response.status())
                            }
                            _ => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let mut child = spawn(&file);
    let mut random = super::crash::Random::new();
    for kill in 1..=5 {
        while accepted.load(Ordering::SeqCst) < kill * REQUESTS / 6 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(random.below(30)));
        child.kill().unwrap();
        child.wait().unwrap();
        child = spawn(&file);
    }
    runtime.block_on(async {
        for client in clients {
            client.await.unwrap();
        }
    });
    let expected = (REQUESTS * PER_REQUEST) as i64;
    runtime.block_on(settle(port, Some(TOKEN), expected));
    let _ = child.kill();
    let _ = child.wait();
    let rows = ids(dir.path());
    let unique: BTreeSet<i64> = rows.iter().copied().collect();
    assert_eq!(unique.len(), rows.len(), "some events arrived twice");
    assert_eq!(
        unique,
        (0..=expected).collect::<BTreeSet<i64>>(),
        "events lost"
    );
}
