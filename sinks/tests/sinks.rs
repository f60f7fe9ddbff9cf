//! Sinks write what reaches them, readably.

use std::sync::Arc;

use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use flumen_core::prelude::{GraphBuilder, RunOptions, SinkConfig, SinkFactory};
use flumen_core::testing::MemorySource;
use flumen_sinks::{BlackholeConfig, FileSinkConfig, TextFormat};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

fn batches() -> Vec<RecordBatch> {
    (0..4)
        .map(|b| {
            let ids: Vec<i64> = (b * 25..(b + 1) * 25).collect();
            let names: Vec<Option<String>> = ids
                .iter()
                .map(|i| (i % 3 != 0).then(|| format!("n{i}")))
                .collect();
            let at: Vec<i64> = ids.iter().map(|i| 1_767_225_600_000 + i * 1000).collect();
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringArray::from(names)),
                    Arc::new(TimestampMillisecondArray::from(at)),
                ],
            )
            .unwrap()
        })
        .collect()
}

async fn run(sink: impl SinkFactory, parallelism: usize) {
    let mut graph = GraphBuilder::new();
    graph
        .source("rows", MemorySource::new(schema(), batches()))
        .parallelism(2);
    graph.sink("out", sink, ["rows"]).parallelism(parallelism);
    let options = RunOptions {
        handle_signals: false,
        ..RunOptions::default()
    };
    let report = graph.build().unwrap().run_with(options).await.unwrap();
    assert_eq!(report.node("out").unwrap().rows_in, 100);
}

fn read_back(path: &std::path::Path, format: TextFormat) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    match format {
        TextFormat::Json => arrow::json::ReaderBuilder::new(schema())
            .build(std::io::BufReader::new(file))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap(),
        TextFormat::Csv => arrow::csv::ReaderBuilder::new(schema())
            .with_header(true)
            .build(file)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap(),
    }
}

fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    let batch = arrow::compute::concat_batches(&schema(), batches).unwrap();
    let mut rows: Vec<String> = arrow::util::pretty::pretty_format_batches(&[batch])
        .unwrap()
        .to_string()
        .lines()
        .skip(3)
        .filter(|l| !l.starts_with('+'))
        .map(String::from)
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn file_sink_round_trips_json_lines_and_csv() {
    for format in [TextFormat::Json, TextFormat::Csv] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("out.{}", format.extension()));
        run(
            FileSinkConfig {
                path: path.clone(),
                format,
            }
            .build()
            .unwrap(),
            1,
        )
        .await;
        assert_eq!(
            sorted_rows(&read_back(&path, format)),
            sorted_rows(&batches()),
            "{format:?}"
        );
    }
}

#[tokio::test]
async fn file_sink_writes_one_part_per_instance() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("parts");
    run(FileSinkConfig::new(&out).build().unwrap(), 3).await;
    let mut read = Vec::new();
    for part in 0..3 {
        read.extend(read_back(
            &out.join(format!("part-{part}.jsonl")),
            TextFormat::Json,
        ));
    }
    assert_eq!(sorted_rows(&read), sorted_rows(&batches()));
}

#[tokio::test]
async fn blackhole_counts_what_it_discards() {
    run(BlackholeConfig::default().build().unwrap(), 2).await;
}

#[test]
fn stdout_runs_as_one_instance() {
    let stdout = flumen_sinks::StdoutConfig::default().build().unwrap();
    let mut graph = GraphBuilder::new();
    graph.source("rows", MemorySource::new(schema(), Vec::new()));
    graph.sink("out", stdout, ["rows"]).parallelism(2);
    let err = graph.build().unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid pipeline: `out`: parallelism: 2 is more than this component supports (1)"
    );
}

/// Every row of every Parquet file under `location`, with the partition
/// directories each came from.
async fn parquet_rows(location: &str) -> (Vec<String>, Vec<String>) {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let resolved = flumen_core::storage::resolve(location, &Default::default(), "path").unwrap();
    let files: Vec<_> = resolved
        .store
        .list(Some(&resolved.path))
        .try_collect()
        .await
        .unwrap();
    let (mut rows, mut directories) = (Vec::new(), Vec::new());
    for file in files {
        let name = file.location.as_ref().to_string();
        assert!(!name.contains("_staging"), "a staged file remains: {name}");
        let bytes = resolved
            .store
            .get(&file.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(bytes, 1024).unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let text = arrow::util::pretty::pretty_format_batches(&[batch])
                .unwrap()
                .to_string();
            rows.extend(
                text.lines()
                    .skip(3)
                    .filter(|l| !l.starts_with('+'))
                    .map(String::from),
            );
        }
        let directory = name.rsplit_once('/').unwrap().0.to_string();
        directories.push(directory[resolved.path.as_ref().len()..].to_string());
    }
    rows.sort();
    directories.sort();
    directories.dedup();
    (rows, directories)
}

#[tokio::test]
async fn parquet_sink_writes_partitions_to_an_object_store() {
    let mut config = flumen_sinks::ParquetSinkConfig::new("memory://sinks-test/table");
    config.partition_by = vec!["name".into()];
    config.max_rows = 10;
    run(config.build().unwrap(), 1).await;
    let (rows, directories) = parquet_rows("memory://sinks-test/table").await;
    // The partition column lives in the path, not in the files.
    let expected: Vec<String> = sorted_rows(&batches())
        .iter()
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            format!("| {} | {} |", cells[1], cells[3])
        })
        .collect();
    let rows: Vec<String> = rows
        .iter()
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            format!("| {} | {} |", cells[1], cells[2])
        })
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(rows, expected);
    assert!(
        directories.contains(&"/name=n1".to_string()),
        "{directories:?}"
    );
    assert!(
        directories.contains(&"/name=__HIVE_DEFAULT_PARTITION__".to_string()),
        "{directories:?}"
    );
}

/// The Kafka sink against librdkafka's mock cluster, which implements
/// transactions (tansu, the broker the end-to-end tests use, does not).
#[cfg(feature = "kafka")]
mod kafka {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use flumen_core::checkpoint::{CheckpointSettings, CheckpointStore, StartFrom};
    use flumen_core::prelude::*;
    use flumen_core::storage::StorageOptions;
    use flumen_sinks::KafkaSinkConfig;
    use rdkafka::ClientConfig;
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;

    use flumen_core::testing::MemorySource;

    use super::{batches, schema};

    /// Every message in `topic`, as `isolation` (`read_committed` or
    /// `read_uncommitted`) sees it: id -> how many times.
    fn read(brokers: &str, topic: &str, isolation: &str) -> BTreeMap<i64, usize> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "reader")
            .set("isolation.level", isolation)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut assignment = rdkafka::TopicPartitionList::new();
        for partition in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(topic, partition.id(), rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut seen = BTreeMap::new();
        let mut quiet = 0;
        while quiet < 10 {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    quiet = 0;
                    let value: serde_json::Value =
                        serde_json::from_slice(message.payload().unwrap()).unwrap();
                    *seen.entry(value["id"].as_i64().unwrap()).or_insert(0) += 1;
                }
                Some(Err(error)) => panic!("{error}"),
                None => quiet += 1,
            }
        }
        seen
    }

    fn context() -> Context {
        Context {
            node: "out".into(),
            instance: InstanceInfo::SINGLE,
            watermark: None,
            checkpointing: true,
        }
    }

    /// The transactional protocol end to end: a transaction per
    /// checkpoint, committed on `commit`, the open one aborted on `abort`,
    /// a restarted instance taking the transactional ids over. (The mock
    /// cluster neither hides open transactions from `read_committed`
    /// readers nor fences old producers, so those are Kafka's to show.)
    #[tokio::test(flavor = "multi_thread")]
    async fn transactions_follow_checkpoints_across_a_restart() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("out", 2, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let factory = KafkaSinkConfig::new(&brokers, "out")
            .with_key("id")
            .exactly_once()
            .build()
            .unwrap();
        assert!(factory.exactly_once());
        let mut ctx = context();
        let mut sink = factory.create(InstanceInfo::SINGLE, schema()).unwrap();
        sink.recover(None, &mut ctx).await.unwrap();
        let input = batches();

        sink.write(input[0].clone(), &mut ctx).await.unwrap();
        let first = sink.pre_commit(1, &mut ctx).await.unwrap();
        assert_eq!(first["checkpoint"], 1);
        // Rows after the barrier go into the next transaction, on the
        // other producer, while the first waits for its commit.
        sink.write(input[1].clone(), &mut ctx).await.unwrap();
        sink.commit(first.clone(), &mut ctx).await.unwrap();
        // Committing again (as recovery may) changes nothing.
        sink.commit(first.clone(), &mut ctx).await.unwrap();
        sink.abort(&mut ctx).await.unwrap();

        // The transaction after an abort starts afresh.
        sink.write(input[2].clone(), &mut ctx).await.unwrap();
        let third = sink.pre_commit(2, &mut ctx).await.unwrap();
        sink.commit(third, &mut ctx).await.unwrap();
        drop(sink);

        // A restarted instance takes over the transactional ids.
        let mut restarted = factory.create(InstanceInfo::SINGLE, schema()).unwrap();
        restarted.recover(Some((1, first)), &mut ctx).await.unwrap();

        restarted.write(input[3].clone(), &mut ctx).await.unwrap();
        let fourth = restarted.pre_commit(3, &mut ctx).await.unwrap();
        restarted.commit(fourth, &mut ctx).await.unwrap();
        let everything =
            tokio::task::spawn_blocking(move || read(&brokers, "out", "read_uncommitted"))
                .await
                .unwrap();
        // The aborted batch (ids 25..50) was purged before it was sent.
        let expected: BTreeMap<i64, usize> = (0..25).chain(50..100).map(|id| (id, 1)).collect();
        assert_eq!(everything, expected);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_checkpointed_pipeline_writes_every_row_once() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("rows", 3, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let store_dir = tempfile::tempdir().unwrap();
        let mut graph = GraphBuilder::new();
        graph.source("input", MemorySource::new(schema(), batches()));
        graph.sink(
            "out",
            KafkaSinkConfig::new(&brokers, "rows")
                .with_key("name")
                .exactly_once()
                .build()
                .unwrap(),
            ["input"],
        );
        let store = CheckpointStore::open(
            store_dir.path().to_str().unwrap(),
            &StorageOptions::default(),
        )
        .unwrap();
        let options = RunOptions {
            handle_signals: false,
            checkpoints: Some(CheckpointSettings {
                store,
                interval: Duration::from_millis(5),
                keep: 2,
                start: StartFrom::Latest,
                allow_non_restored_state: false,
            }),
            ..RunOptions::default()
        };
        graph.build().unwrap().run_with(options).await.unwrap();
        let seen = tokio::task::spawn_blocking(move || read(&brokers, "rows", "read_committed"))
            .await
            .unwrap();
        let expected: BTreeMap<i64, usize> = (0..100).map(|id| (id, 1)).collect();
        assert_eq!(seen, expected);
    }
}
