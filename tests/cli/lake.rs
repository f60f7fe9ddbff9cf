//! The Parquet sink on the S3-API test server, read back with `flumen sql`.

use std::process::Stdio;

use super::flumen;

fn s3_endpoint() -> String {
    std::env::var("FLUMEN_TEST_S3_ENDPOINT").expect(
        "this test needs an S3-API server: run it through scripts/test.sh, which starts one",
    )
}

/// Runs `flumen sql` with the test server's credentials; returns stdout.
fn sql(args: &[&str]) -> String {
    sql_at(&s3_endpoint(), args)
}

/// `flumen sql ARGS` against the S3 API at `endpoint`.
fn sql_at(endpoint: &str, args: &[&str]) -> String {
    let output = flumen()
        .arg("sql")
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "flumen")
        .env("AWS_SECRET_ACCESS_KEY", "flumen")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn a_million_events_land_in_partitioned_parquet_on_s3() {
    let endpoint = s3_endpoint();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace('.', "");
    let lake = format!("s3://flumen-test/lake-{prefix}/bids");
    let yaml = format!(
        r#"
checkpoint:
  interval: 500ms
  store: {dir}/checkpoints
sources:
  auction_bids:
    type: nexmark
    kind: bid
    events: 1086957          # about a million bids
    event_rate: 100
sinks:
  bids:
    type: parquet
    inputs: [auction_bids]
    path: {lake}
    time_partition: hour
    storage: {{ endpoint: "{endpoint}", region: us-east-1, access_key_id: flumen, secret_access_key: flumen }}
"#,
        dir = dir.path().display()
    );
    let file = dir.path().join("lake.yaml");
    std::fs::write(&file, yaml).unwrap();
    let status = super::run_pipeline(&file, None);
    assert!(status.success());

    // The input's own figures, from the generator the source runs.
    let (mut count, mut total) = (0u64, 0i64);
    let mut generator = flumen::sources::nexmark::NexmarkGenerator::new(
        flumen::sources::nexmark::GeneratorSettings {
            event_rate: 100,
            ..Default::default()
        },
    );
    for start in (0..1_086_957u64).step_by(8192) {
        let bids = generator.generate_kind(
            start..(start + 8192).min(1_086_957),
            flumen::sources::nexmark::EventKind::Bid,
        );
        count += bids.num_rows() as u64;
        let prices = bids.column_by_name("price").unwrap();
        total += arrow::compute::sum(
            prices
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap(),
        )
        .unwrap_or(0);
    }
    assert!(count > 999_990, "{count} bids");

    let table = format!("bids={lake}/");
    let figures = sql(&[
        "--table",
        &table,
        "--format",
        "csv",
        "SELECT count(*) AS bids, sum(price) AS total, count(DISTINCT hour) AS hours FROM bids",
    ]);
    let line = figures.lines().nth(1).unwrap_or_default().to_string();
    let values: Vec<&str> = line.split(',').collect();
    assert_eq!(values[0], count.to_string(), "{figures}");
    assert_eq!(values[1], total.to_string(), "{figures}");
    assert!(values[2].parse::<u32>().unwrap() >= 2, "{figures}");

    // A filter on a partition column prunes whole directories.
    let explain = sql(&[
        "--table",
        &table,
        "EXPLAIN SELECT count(*) FROM bids WHERE hour = '01'",
    ]);
    assert!(explain.contains("hour = Utf8(\"01\")"), "{explain}");
}

/// A paced pipeline into a local Parquet table, checkpointing often.
fn paced_lake(dir: &std::path::Path, interval: &str) -> std::path::PathBuf {
    let yaml = format!(
        r#"
checkpoint:
  interval: {interval}
  store: {dir}/checkpoints
sources:
  auction_bids:
    type: nexmark
    kind: bid
    events: 60000
    max_events_per_second: 20000
sinks:
  bids:
    type: parquet
    inputs: [auction_bids]
    path: {dir}/lake
    time_partition: hour
    max_rows: 5000
"#,
        dir = dir.display()
    );
    let file = dir.join("paced.yaml");
    std::fs::write(&file, yaml).unwrap();
    file
}

/// `SELECT count(*)` over the local table, if it has files yet.
fn local_count(dir: &std::path::Path) -> Option<u64> {
    let table = format!("bids={}/lake", dir.display());
    let output = flumen()
        .args([
            "sql",
            "--table",
            &table,
            "--format",
            "csv",
            "SELECT count(*) FROM bids",
        ])
        .output()
        .unwrap();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Before the first commit there is nothing to read yet.
        assert!(
            stderr.contains("no Parquet files")
                || stderr.contains("does not exist")
                || stderr.contains("not found"),
            "{stderr}"
        );
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn queries_during_a_run_see_only_committed_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = paced_lake(dir.path(), "300ms");
    let mut run = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    while run.try_wait().unwrap().is_none() {
        if let Some(count) = local_count(dir.path()) {
            seen.push(count);
        }
    }
    assert!(run.wait().unwrap().success());
    let total = local_count(dir.path()).unwrap();
    assert_eq!(total, 55_200);
    // Whole checkpoints appear at once; rows never go away.
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(seen.iter().all(|c| *c <= total), "{seen:?}");
    assert!(
        seen.iter().any(|c| *c > 0 && *c < total),
        "no query ran mid-way: {seen:?}"
    );
}

#[test]
fn a_crash_between_pre_commit_and_commit_publishes_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = paced_lake(dir.path(), "300ms");
    let status = super::run_pipeline(&file, Some(3));
    assert!(!status.success());
    let staged = dir.path().join("lake/_staging");
    assert!(
        std::fs::read_dir(&staged).map(|d| d.count()).unwrap_or(0) > 0,
        "nothing staged"
    );
    let status = super::run_pipeline(&file, None);
    assert!(status.success());
    assert_eq!(local_count(dir.path()), Some(55_200));
    assert!(
        !staged.exists() || std::fs::read_dir(&staged).unwrap().count() == 0,
        "staged files remain"
    );
}

/// An S3-API server (moto) of a test's own, which it may pause without
/// holding up the tests that share the suite's; with bucket `flumen-test`.
struct OwnMoto {
    endpoint: String,
    server: std::process::Child,
}

impl OwnMoto {
    fn start() -> OwnMoto {
        let binary = std::env::var("FLUMEN_TEST_MOTO_SERVER")
            .expect("FLUMEN_TEST_MOTO_SERVER is not set: run the tests with scripts/test.sh");
        let port = flumen_core::testing::free_port();
        let server = std::process::Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = OwnMoto {
            endpoint: format!("http://127.0.0.1:{port}"),
            server,
        };
        // Up once it makes the bucket.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let made = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut socket| {
                use std::io::{Read, Write};
                socket.write_all(
                    b"PUT /flumen-test HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )?;
                let mut answer = String::new();
                socket.read_to_string(&mut answer)?;
                Ok(answer.starts_with("HTTP/1.1 200"))
            });
            if made.unwrap_or(false) {
                return moto;
            }
            assert!(std::time::Instant::now() < deadline, "moto did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for OwnMoto {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn a_paused_s3_server_is_waited_out_and_nothing_is_lost() {
    let moto = OwnMoto::start();
    let endpoint = moto.endpoint.clone();
    let pid = moto.server.id().to_string();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace('.', "");
    let lake = format!("s3://flumen-test/paused-{prefix}/bids");
    let yaml = format!(
        r#"
checkpoint:
  interval: 500ms
  store: {dir}/checkpoints
sources:
  auction_bids:
    type: nexmark
    kind: bid
    events: 60000
    max_events_per_second: 10000
sinks:
  bids:
    type: parquet
    inputs: [auction_bids]
    path: {lake}
    max_rows: 5000
    storage: {{ endpoint: "{endpoint}", region: us-east-1, access_key_id: flumen, secret_access_key: flumen, request_timeout: 2s }}
"#,
        dir = dir.path().display()
    );
    let file = dir.path().join("paused.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut run = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log, read on a thread so that the child never blocks on it.
    let (lines, log_lines) = std::sync::mpsc::channel();
    let stderr = std::io::BufReader::new(run.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // Mid-run: once a first checkpoint has gone to the store.
    let mut log = String::new();
    for line in log_lines.iter() {
        log.push_str(&line);
        log.push('\n');
        if line.contains("checkpoint complete") {
            break;
        }
    }
    // Paused, not killed: moto keeps its objects only in memory.
    signal("-STOP");
    std::thread::sleep(std::time::Duration::from_secs(30));
    signal("-CONT");
    let status = run.wait().unwrap();
    reader.join().unwrap();
    log.extend(log_lines.try_iter().map(|line| line + "\n"));
    assert!(
        status.success(),
        "the run gave up instead of retrying: {log}"
    );
    let table = format!("bids={lake}/");
    let counted = sql_at(
        &endpoint,
        &[
            "--table",
            &table,
            "--format",
            "csv",
            "SELECT count(*) FROM bids",
        ],
    );
    assert_eq!(counted.lines().nth(1), Some("55200"), "{counted}");
}
