//! The `serve:` server: views read over HTTP while the pipeline writes
//! them. Every answer must be one whole checkpoint: the per-user counts add
//! up to the total counted with them, and the top thousand equal
//! DataFusion's `rank() <= 1000` over exactly the events that total
//! counts.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flumen_core::testing::free_port;

use super::views::{EVENTS, USERS, batch_answer, write_payments};

const TOKEN: &str = "reader-token";

/// Per-user counts (`users`), and the top thousand of them (`top`), each
/// with the total as user -1, all served on `port`.
fn pipeline(dir: &Path, port: u16) -> PathBuf {
    let yaml = format!(
        r#"
checkpoint:
  interval: 5ms
  store: {dir}/checkpoints
serve:
  listen: 127.0.0.1:{port}
  max_limit: 10000
  auth: {{ bearer_tokens: [{TOKEN}] }}
  linger: 5m
sources:
  payments:
    type: file
    path: {dir}/events.jsonl
    batch_size: 1000
    schema: {{ id: int64, user: int64, amount: int64, ts: timestamp_ms }}
transforms:
  per_user:
    type: aggregate
    inputs: [payments]
    group_by: [user]
    aggregates: ["count(*) AS payments"]
    emit: on_checkpoint
  everyone:
    type: sql
    inputs: [payments]
    select: ["-1 AS user", "amount"]
  total:
    type: aggregate
    inputs: [everyone]
    group_by: [user]
    aggregates: ["count(*) AS payments"]
    emit: on_checkpoint
  top_users:
    type: top_n
    inputs: [per_user]
    key: [user]
    order_by: [payments DESC, user]
    n: 1000
  all_users:
    type: union
    inputs: [per_user, total]
  top_and_total:
    type: union
    inputs: [top_users, total]
sinks:
  users:
    type: kv
    inputs: [all_users]
    path: {dir}/users.redb
    key: "user:{{user}}"
  top:
    type: kv
    inputs: [top_and_total]
    path: {dir}/top.redb
    key: "user:{{user}}"
"#,
        dir = dir.display()
    );
    let path = dir.join("served.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `flumen run FILE`, its log in `log`; killed when dropped (its server
/// lingers after the pipeline).
pub(super) struct Running(std::process::Child);

impl Running {
    pub(super) fn start(file: &Path, log: &Path) -> Running {
        let child = super::flumen()
            .args(["run", "--progress", "off"])
            .arg(file)
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Running(child)
    }

    /// Waits until the pipeline has finished and its server lingers for
    /// `linger` (as the pipeline's `serve.linger` says), from `log`.
    pub(super) fn lingering(&self, log: &Path, linger: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains(&format!(" for {linger}")) {
                return;
            }
            assert!(Instant::now() < deadline, "the run did not finish: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` with `token`: the status and the JSON body.
pub(super) fn get(port: u16, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\n{auth}connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// One answer of a view: user → payments, and the total (user -1).
fn figures(answer: &serde_json::Value) -> (BTreeMap<i64, i64>, Option<i64>) {
    let mut users = BTreeMap::new();
    let mut total = None;
    for entry in answer["entries"].as_array().unwrap() {
        let user = entry["value"]["user"].as_i64().unwrap();
        let payments = entry["value"]["payments"].as_i64().unwrap();
        match user {
            -1 => total = Some(payments),
            user => {
                users.insert(user, payments);
            }
        }
    }
    (users, total)
}

/// The users of the top thousand by payments (ties by user) among
/// `counts`.
fn top_thousand(counts: &HashMap<i64, i64>) -> BTreeMap<i64, i64> {
    let mut ranked: Vec<(i64, i64)> = counts.iter().map(|(u, p)| (*u, *p)).collect();
    ranked.sort_by_key(|(user, payments)| (std::cmp::Reverse(*payments), *user));
    ranked.truncate(1000);
    ranked.into_iter().collect()
}

#[test]
fn views_read_over_http_during_the_run_are_whole_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    write_payments(&events, EVENTS, USERS);
    let port = free_port();
    let file = pipeline(dir.path(), port);
    let log_file = dir.path().join("run.log");
    let mut run = Running::start(&file, &log_file);
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        assert!(run.0.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(10));
    }

    // Until every event is counted: read both views, in turn.
    let mut sums = std::collections::BTreeSet::new();
    let mut tops: BTreeMap<i64, BTreeMap<i64, i64>> = BTreeMap::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the views did not reach every event"
        );
        let (status, users) = get(port, "/v1/views/users?limit=10000", Some(TOKEN));
        if status == 503 {
            continue; // The sink is opening its store.
        }
        assert_eq!(status, 200, "{users}");
        let (counts, total) = figures(&users);
        let sum: i64 = counts.values().sum();
        assert_eq!(
            Some(sum).filter(|s| *s > 0),
            total,
            "a read saw part of a checkpoint"
        );
        sums.insert(sum);

        let (status, top) = get(port, "/v1/views/top?limit=10000", Some(TOKEN));
        if status == 503 {
            continue;
        }
        assert_eq!(status, 200, "{top}");
        let (top, total) = figures(&top);
        if let Some(total) = total {
            tops.insert(total, top);
        }
        if sums.last() == Some(&(EVENTS as i64)) && tops.contains_key(&(EVENTS as i64)) {
            break;
        }
    }
    assert!(sums.len() > 2, "reads saw the view grow: {sums:?}");
    assert!(
        tops.len() > 2,
        "reads saw the top change: {:?}",
        tops.keys()
    );

    // Each top read equals the ranking over exactly the events it counted.
    let text = std::fs::read_to_string(&events).unwrap();
    let mut counts: HashMap<i64, i64> = HashMap::new();
    let mut read = 0;
    let mut lines = text.lines();
    for (total, top) in &tops {
        while read < *total {
            let event: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
            *counts.entry(event["user"].as_i64().unwrap()).or_default() += 1;
            read += 1;
        }
        assert!(
            *top == top_thousand(&counts),
            "the top read with {total} events differs from the ranking over them"
        );
    }
    // The last equals DataFusion's ranking over all of them.
    let mut all: Vec<(i64, i64)> = batch_answer(&events)
        .into_iter()
        .map(|(key, (payments, _))| (key["user:".len()..].parse().unwrap(), payments))
        .collect();
    all.sort_by_key(|(user, payments)| (std::cmp::Reverse(*payments), *user));
    all.truncate(1000);
    assert!(tops[&(EVENTS as i64)] == all.into_iter().collect::<BTreeMap<_, _>>());

    // One key; the API's refusals.
    let (status, one) = get(port, "/v1/views/users/user:42", Some(TOKEN));
    assert_eq!(status, 200);
    assert_eq!(one["key"], "user:42");
    assert_eq!(get(port, "/v1/views/users/user:42", None).0, 401);
    assert_eq!(get(port, "/v1/views/users/user:999999", Some(TOKEN)).0, 404);
    let (status, missing) = get(port, "/v1/views/nope", Some(TOKEN));
    assert_eq!(status, 404);
    assert!(
        missing["error"].as_str().unwrap().contains("top, users"),
        "{missing}"
    );
    let (status, page) = get(port, "/v1/views/users?prefix=user:1&limit=3", Some(TOKEN));
    assert_eq!(status, 200);
    assert_eq!(page["entries"].as_array().unwrap().len(), 3);
    let cursor = page["cursor"].as_str().unwrap();
    let (_, next) = get(
        port,
        &format!("/v1/views/users?prefix=user:1&limit=3&cursor={cursor}"),
        Some(TOKEN),
    );
    assert!(next["entries"][0]["key"].as_str().unwrap() > cursor);

    // Serving lingers after the pipeline finished; it is still running.
    assert!(run.0.try_wait().unwrap().is_none());
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("serving views at"), "{log}");
}

/// Past its `rate_limit` a client is answered 429 with `Retry-After`; a
/// view served after the pipeline finished reads the file it left.
#[test]
fn a_reader_over_its_rate_is_answered_429() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stock.jsonl"), "{\"item\":1,\"stock\":5}\n").unwrap();
    let port = free_port();
    let yaml = format!(
        r#"
serve:
  listen: 127.0.0.1:{port}
  rate_limit: {{ per_second: 1, burst: 2 }}
  linger: 5m
sources:
  stock:
    type: file
    path: {dir}/stock.jsonl
    schema: {{ item: int64, stock: int64 }}
sinks:
  in_stock:
    type: kv
    inputs: [stock]
    path: {dir}/stock.redb
    key: "item:{{item}}"
"#,
        dir = dir.path().display()
    );
    let file = dir.path().join("limited.yaml");
    std::fs::write(&file, yaml).unwrap();
    let log_file = dir.path().join("run.log");
    let run = Running::start(&file, &log_file);
    run.lingering(&log_file, "5m");
    let statuses: Vec<u16> = (0..3)
        .map(|_| get(port, "/v1/views/in_stock/item:1", None).0)
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        socket,
        "GET /v1/views/in_stock/item:1 HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 429"), "{response}");
    assert!(
        response.to_lowercase().contains("retry-after: 1"),
        "{response}"
    );
}
