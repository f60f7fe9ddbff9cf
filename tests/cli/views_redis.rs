//! Views in Redis: a running count through SIGKILLs, through a Redis
//! restart, and in a Redis Cluster, checked key for key against
//! DataFusion's `GROUP BY` over the same events.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flumen_core::testing::free_port;

use super::views::{
    EVENTS, USERS, assert_same_view, batch_answer, kill_five_times, pipeline_into, run_to_end,
    view, write_payments,
};

fn redis_url() -> String {
    std::env::var("FLUMEN_TEST_REDIS").expect(
        "FLUMEN_TEST_REDIS is not set: run the tests with scripts/test.sh, which starts Redis",
    )
}

/// `redis-cli`, beside the `redis-server` the test services run.
fn redis_cli() -> Command {
    let server = std::env::var("FLUMEN_TEST_REDIS_SERVER")
        .expect("FLUMEN_TEST_REDIS_SERVER is not set: run the tests with scripts/test.sh");
    Command::new(Path::new(&server).with_file_name("redis-cli"))
}

/// Empties the database of `url`.
fn flush(url: &str) {
    let status = redis_cli().args(["-u", url, "FLUSHDB"]).status().unwrap();
    assert!(status.success(), "redis-cli FLUSHDB failed");
}

#[test]
fn a_running_count_into_redis_sigkilled_five_times_ends_as_group_by_answers() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    write_payments(&events, EVENTS, USERS);
    let expected = batch_answer(&events);
    // A database of its own on the shared server.
    let store = format!("{}/1", redis_url());
    flush(&store);
    let file = pipeline_into(dir.path(), &format!("redis: {{ url: \"{store}\" }}"));
    kill_five_times(&file);
    let log = run_to_end(&file);
    assert!(log.contains("restoring from checkpoint"), "{log}");
    assert_same_view(&expected, &view(&store));

    // `flumen kv` reads it too.
    let output = super::flumen()
        .args(["kv", "get", &store, "user:42"])
        .output()
        .unwrap();
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(line["value"]["payments"], expected["user:42"].0);
}

/// A Redis server of the test's own, which it may kill: append-only file
/// synced at every write, so that a crash loses nothing acknowledged.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    server: Child,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let server = OwnRedis::spawn(port, dir.path());
        OwnRedis { port, dir, server }
    }

    fn spawn(port: u16, dir: &Path) -> Child {
        let binary = std::env::var("FLUMEN_TEST_REDIS_SERVER")
            .expect("FLUMEN_TEST_REDIS_SERVER is not set: run the tests with scripts/test.sh");
        let server = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while redis_cli()
            .args(["-p", &port.to_string(), "PING"])
            .output()
            .map_or(true, |o| {
                !String::from_utf8_lossy(&o.stdout).contains("PONG")
            })
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server and starts it again on the same files.
    fn crash_and_restart(&mut self) {
        self.server.kill().unwrap();
        self.server.wait().unwrap();
        self.server = OwnRedis::spawn(self.port, self.dir.path());
    }

    /// The last checkpoint the sink applied, from its marker.
    fn applied(&self) -> u64 {
        let output = redis_cli()
            .args(["-p", &self.port.to_string(), "GET", "flumen:kv:views:users"])
            .output()
            .unwrap();
        let marker = String::from_utf8_lossy(&output.stdout);
        marker
            .trim()
            .rsplit(':')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn a_redis_crashed_and_restarted_mid_run_leaves_the_view_exact() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    write_payments(&events, EVENTS, USERS);
    let expected = batch_answer(&events);
    let mut redis = OwnRedis::start();
    let file = pipeline_into(
        dir.path(),
        &format!("redis: {{ url: \"{}\" }}", redis.url()),
    );
    let log_file = dir.path().join("run.log");
    let mut run = super::flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .unwrap();
    // Once a few more checkpoints have reached Redis, crash it; twice.
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..2 {
        let seen = redis.applied();
        while redis.applied() < seen + 3 {
            assert!(Instant::now() < deadline, "no checkpoint reached Redis");
            assert!(run.try_wait().unwrap().is_none(), "the run ended early");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis.crash_and_restart();
    }
    let status = run.wait().unwrap();
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(status.success(), "{log}");
    assert_same_view(&expected, &view(&redis.url()));
}

#[test]
fn a_running_count_into_a_redis_cluster_sigkilled_five_times_ends_as_group_by_answers() {
    let nodes: Vec<String> = std::env::var("FLUMEN_TEST_REDIS_CLUSTER")
        .expect("FLUMEN_TEST_REDIS_CLUSTER is not set: run the tests with scripts/test.sh")
        .split(',')
        .map(str::to_string)
        .collect();
    for node in &nodes {
        flush(node);
    }
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    write_payments(&events, EVENTS, USERS);
    let expected = batch_answer(&events);
    let list = nodes
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let file = pipeline_into(dir.path(), &format!("redis: {{ cluster: [{list}] }}"));
    kill_five_times(&file);
    run_to_end(&file);
    // Each node holds the keys of its slots.
    let mut got = BTreeMap::new();
    for node in &nodes {
        got.extend(view(node));
    }
    assert_same_view(&expected, &got);
}
