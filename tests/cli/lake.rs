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
    let output = flumen()
        .arg("sql")
        .args(args)
        .env("AWS_ENDPOINT_URL", s3_endpoint())
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
    let status = flumen()
        .args(["run", "--progress", "off"])
        .arg(&file)
        .stderr(Stdio::null())
        .status()
        .unwrap();
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
