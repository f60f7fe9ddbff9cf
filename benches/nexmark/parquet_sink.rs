//! The Parquet sink beside parquet's own `ArrowWriter` writing the same
//! batches, with the same settings, to a local file.

use std::time::Instant;

use flumen::prelude::*;
use flumen::sinks::ParquetSinkConfig;
use flumen_core::testing::MemorySource;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::RUNS;
use super::stateful::Events;

pub fn run(runtime: &tokio::runtime::Runtime, events: &Events) {
    let batches = events.bids().to_vec();
    let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    let mb = bytes as f64 / 1e6;
    let schema = batches[0].schema();

    let baseline = best_seconds(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = std::fs::File::create(dir.path().join("bids.parquet")).expect("file");
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(128 * 1024))
            .build();
        let mut writer =
            ArrowWriter::try_new(file, schema.clone(), Some(properties)).expect("writer");
        for batch in &batches {
            writer.write(batch).expect("write");
        }
        writer.close().expect("close");
    });
    let sink = |config: ParquetSinkConfig| {
        let mut config = config;
        config.max_rows = u64::MAX;
        config.max_bytes = u64::MAX;
        let mut graph = GraphBuilder::new();
        graph.source("bids", MemorySource::new(schema.clone(), batches.clone()));
        graph.sink("lake", config.build().expect("sink"), ["bids"]);
        super::run_graph(runtime, graph);
    };
    let engine = best_seconds(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        sink(ParquetSinkConfig::new(
            dir.path().to_str().expect("utf-8 path"),
        ));
    });
    // The local S3-API server, when one runs (scripts/services.sh).
    let s3 = std::env::var("FLUMEN_TEST_S3_ENDPOINT")
        .ok()
        .map(|endpoint| {
            let mut run = 0;
            best_seconds(|| {
                run += 1;
                let mut config = ParquetSinkConfig::new(format!(
                    "s3://flumen-test/bench-{}-{run}",
                    std::process::id()
                ));
                config.storage.endpoint = Some(endpoint.clone());
                config.storage.region = Some("us-east-1".into());
                config.storage.access_key_id = Some("flumen".into());
                config.storage.secret_access_key = Some("flumen".into());
                sink(config);
            })
        });
    println!("Parquet sink, {mb:.0} MB of Arrow bids (zstd, local filesystem)");
    println!("{:<28} {:>10} {:>8}", "", "MB/s", "ratio");
    println!(
        "{:<28} {:>10.0} {:>8}",
        "ArrowWriter loop",
        mb / baseline,
        ""
    );
    println!(
        "{:<28} {:>10.0} {:>7.2}x",
        "engine parquet sink p=1",
        mb / engine,
        baseline / engine
    );
    if let Some(s3) = s3 {
        println!(
            "{:<28} {:>10.0} {:>7.2}x",
            "engine p=1, local S3 server",
            mb / s3,
            baseline / s3
        );
    }
    println!();
}

fn best_seconds(mut f: impl FnMut()) -> f64 {
    (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}
