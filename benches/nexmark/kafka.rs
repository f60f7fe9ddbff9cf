//! Kafka source and sink beside rdkafka used by hand.
//!
//! Source: a million JSON messages in a 4-partition topic, read to the end
//! by `kafka` → decode → blackhole, beside a `BaseConsumer` loop that only
//! counts the messages (the client's raw limit). Sink: the same messages
//! written by the `kafka` sink (at least once) beside a `BaseProducer` loop
//! sending the already encoded values.
//!
//! The broker is `FLUMEN_BENCH_KAFKA_BROKERS`, or a tansu started here on
//! loopback (in-memory storage) if tansu is installed.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use flumen::prelude::*;
use flumen_core::testing::MemorySource;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::RUNS;

const MESSAGES: usize = 1_000_000;
const PARTITIONS: i32 = 4;

struct Broker {
    address: String,
    child: Option<Child>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn broker() -> Option<Broker> {
    if let Ok(address) = std::env::var("FLUMEN_BENCH_KAFKA_BROKERS") {
        return Some(Broker {
            address,
            child: None,
        });
    }
    let tansu = std::env::var("HOME")
        .map(|h| format!("{h}/.cargo/bin/tansu"))
        .ok()?;
    let port = flumen_core::testing::free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let broker = Broker {
        address: format!("127.0.0.1:{port}"),
        child: Some(child),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(broker)
}

fn create_topic(brokers: &str, topic: &str) {
    let tansu = std::env::var("HOME")
        .map(|h| format!("{h}/.cargo/bin/tansu"))
        .unwrap();
    let status = Command::new(tansu)
        .args([
            "topic",
            "create",
            topic,
            "--broker",
            &format!("tcp://{brokers}"),
        ])
        .args(["--partitions", &PARTITIONS.to_string()])
        .status()
        .expect("tansu topic create");
    assert!(status.success());
}

fn producer(brokers: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.codec", "lz4")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

/// Sends `values` round-robin over the partitions; returns once all are
/// acknowledged.
fn produce(brokers: &str, topic: &str, values: &[String]) {
    let producer = producer(brokers);
    for (i, value) in values.iter().enumerate() {
        let mut record = BaseRecord::<(), str>::to(topic)
            .partition(i as i32 % PARTITIONS)
            .payload(value.as_str());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300)).expect("flush");
}

fn values() -> Vec<String> {
    (0..MESSAGES)
        .map(|i| {
            format!(
                r#"{{"auction":{},"bidder":{},"price":{},"channel":"channel-{}"}}"#,
                1000 + i % 997,
                2000 + i % 1013,
                100 + (i * 7919) % 1_000_000,
                i % 10
            )
        })
        .collect()
}

/// The baseline: poll every partition from the start and count.
fn count_with_base_consumer(brokers: &str, topic: &str) -> u64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-baseline")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut count = 0u64;
    while count < MESSAGES as u64 {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => count += 1,
            Some(Err(error)) => panic!("{error}"),
            None => panic!("no message for 10 s after {count}"),
        }
    }
    count
}

fn best(mut f: impl FnMut() -> u64) -> f64 {
    (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            let n = f();
            n as f64 / started.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

pub fn run(runtime: &tokio::runtime::Runtime) {
    let Some(broker) = broker() else {
        println!("kafka: skipped (no broker: set FLUMEN_BENCH_KAFKA_BROKERS or install tansu)\n");
        return;
    };
    let brokers = broker.address.clone();
    let values = values();
    let bytes: usize = values.iter().map(String::len).sum();
    let topic = format!("bench-{}", std::process::id());
    create_topic(&brokers, &topic);
    produce(&brokers, &topic, &values);

    let baseline = best(|| count_with_base_consumer(&brokers, &topic));
    let mut run = 0;
    let engine = best(|| {
        run += 1;
        let source = KafkaSourceConfig::new(&brokers, &[topic.as_str()], format!("bench-{run}"))
            .with_schema([
                ("auction", "int64"),
                ("bidder", "int64"),
                ("price", "int64"),
                ("channel", "string"),
            ])
            .stop_at_latest();
        let mut graph = GraphBuilder::new();
        graph.source("bids", source.build().expect("source"));
        graph.sink(
            "out",
            BlackholeConfig::default().build().expect("sink"),
            ["bids"],
        );
        let options = RunOptions {
            handle_signals: false,
            ..RunOptions::default()
        };
        let report = runtime
            .block_on(graph.build().expect("graph").run_with(options))
            .expect("run");
        report.node("out").expect("out").rows_in
    });
    println!(
        "kafka source ({MESSAGES} JSON messages, {:.0} MB, {PARTITIONS} partitions, tansu on loopback)",
        bytes as f64 / 1e6
    );
    println!(
        "  BaseConsumer, counting only: {:>8.0} msg/s\n  kafka → decode → blackhole:  {:>8.0} msg/s   ratio {:.2}x",
        baseline,
        engine,
        engine / baseline
    );

    // The sink: the same messages, from rows.
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("value", DataType::Utf8, false),
    ]));
    let batches: Vec<RecordBatch> = values
        .chunks(8192)
        .enumerate()
        .map(|(c, chunk)| {
            let ids: Vec<i64> = (0..chunk.len()).map(|i| (c * 8192 + i) as i64).collect();
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringArray::from_iter_values(chunk.iter())),
                ],
            )
            .expect("batch")
        })
        .collect();
    let mut topics = 0;
    let mut next_topic = || {
        topics += 1;
        let name = format!("bench-{}-out-{topics}", std::process::id());
        create_topic(&brokers, &name);
        name
    };
    let baseline = best(|| {
        let topic = next_topic();
        produce(&brokers, &topic, &values);
        MESSAGES as u64
    });
    let engine = best(|| {
        let topic = next_topic();
        let mut sink = flumen::sinks::KafkaSinkConfig::new(&brokers, &topic);
        sink.format = flumen::sinks::kafka::ValueFormat::String;
        sink.value_column = Some("value".into());
        sink = sink
            .with_property("batch.num.messages", "10000")
            .with_property("queue.buffering.max.messages", "1000000");
        let mut graph = GraphBuilder::new();
        graph.source("rows", MemorySource::new(schema.clone(), batches.clone()));
        graph.sink("out", sink.build().expect("sink"), ["rows"]);
        let options = RunOptions {
            handle_signals: false,
            ..RunOptions::default()
        };
        let report = runtime
            .block_on(graph.build().expect("graph").run_with(options))
            .expect("run");
        report.node("out").expect("out").rows_in
    });
    println!(
        "kafka sink (the same messages, at least once, lz4)\n  BaseProducer loop:           {:>8.0} msg/s\n  rows → kafka sink:           {:>8.0} msg/s   ratio {:.2}x\n",
        baseline,
        engine,
        engine / baseline
    );
    drop(broker);
}
