//! The runtime end to end: wiring, partitioning, backpressure, watermarks,
//! errors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::{AsArray, Int64Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Int64Type, TimeUnit};
use flumen_core::prelude::*;
use flumen_core::testing::{ChannelSource, CollectSink, Collected, MemorySource};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

fn batch(keys: impl IntoIterator<Item = i64>, ts: i64) -> RecordBatch {
    let keys: Vec<i64> = keys.into_iter().collect();
    let times = TimestampMillisecondArray::from(vec![ts; keys.len()]);
    RecordBatch::try_new(
        schema(),
        vec![Arc::new(Int64Array::from(keys)), Arc::new(times)],
    )
    .unwrap()
}

fn batches(count: i64, rows: i64) -> Vec<RecordBatch> {
    (0..count)
        .map(|b| batch(b * rows..(b + 1) * rows, b * 1000))
        .collect()
}

fn keys(collected: &Collected) -> Vec<i64> {
    let mut keys: Vec<i64> = collected
        .batches()
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    keys.sort_unstable();
    keys
}

fn quiet() -> RunOptions {
    RunOptions {
        handle_signals: false,
        ..RunOptions::default()
    }
}

/// Which instances saw each key.
type SeenKeys = Arc<std::sync::Mutex<BTreeMap<i64, BTreeSet<usize>>>>;

/// Passes batches through and remembers which instance saw which key.
struct Tag {
    seen: SeenKeys,
}

struct TagInstance {
    index: usize,
    seen: SeenKeys,
}

impl OperatorFactory for Tag {
    fn input_count(&self) -> std::ops::RangeInclusive<usize> {
        1..=8
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(inputs[0].clone())
    }

    fn create(&self, instance: InstanceInfo, _inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        Ok(Box::new(TagInstance {
            index: instance.index,
            seen: self.seen.clone(),
        }))
    }
}

#[async_trait]
impl Operator for TagInstance {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        let mut seen = self.seen.lock().unwrap();
        for key in batch.column(0).as_primitive::<Int64Type>().values() {
            seen.entry(*key).or_default().insert(self.index);
        }
        out.emit(batch);
        Ok(())
    }
}

fn tag() -> (Tag, SeenKeys) {
    let seen = Arc::default();
    (
        Tag {
            seen: Arc::clone(&seen),
        },
        seen,
    )
}

#[tokio::test]
async fn rows_flow_from_source_to_sink_at_any_parallelism() {
    for parallelism in [1, 3] {
        let (sink, collected) = CollectSink::new();
        let (op, _) = tag();
        let mut graph = GraphBuilder::new();
        graph
            .source("numbers", MemorySource::new(schema(), batches(10, 100)))
            .parallelism(2);
        graph
            .operator("pass", op, ["numbers"])
            .parallelism(parallelism);
        graph.sink("out", sink, ["pass"]).parallelism(2);
        let report = graph.build().unwrap().run_with(quiet()).await.unwrap();
        assert_eq!(keys(&collected), (0..1000).collect::<Vec<_>>());
        assert_eq!(report.node("out").unwrap().rows_in, 1000);
        assert_eq!(report.node("numbers").unwrap().rows_out, 1000);
        assert_eq!(collected.finished(), 2);
    }
}

#[tokio::test]
async fn hash_edge_sends_each_key_to_one_instance() {
    // Every key appears in several batches from two source instances.
    let input: Vec<RecordBatch> = (0..20)
        .map(|b| batch((0..50).map(|k| (k * 7 + b) % 40), 0))
        .collect();
    let (op, seen) = tag();
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph
        .source("numbers", MemorySource::new(schema(), input))
        .parallelism(2);
    graph
        .operator("by_key", op, [Input::hash("numbers", ["key"])])
        .parallelism(4);
    graph.sink("out", sink, ["by_key"]);
    graph.build().unwrap().run_with(quiet()).await.unwrap();

    assert_eq!(collected.rows(), 20 * 50);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 40);
    for (key, instances) in seen.iter() {
        assert_eq!(
            instances.len(),
            1,
            "key {key} reached instances {instances:?}"
        );
    }
    let used: BTreeSet<usize> = seen.values().flatten().copied().collect();
    assert!(used.len() > 1, "hashing spread the keys: {used:?}");
}

#[tokio::test]
async fn broadcast_edge_gives_every_instance_every_row() {
    let (op, seen) = tag();
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph.source("numbers", MemorySource::new(schema(), batches(4, 10)));
    graph
        .operator("everywhere", op, [Input::broadcast("numbers")])
        .parallelism(3);
    graph.sink("out", sink, ["everywhere"]);
    graph.build().unwrap().run_with(quiet()).await.unwrap();
    assert_eq!(collected.rows(), 3 * 40);
    assert!(
        seen.lock()
            .unwrap()
            .values()
            .all(|instances| instances.len() == 3)
    );
}

#[tokio::test]
async fn fan_out_delivers_every_row_to_each_reader() {
    let mut graph = GraphBuilder::new();
    graph.source("orders", MemorySource::new(schema(), batches(5, 20)));
    let mut readers = Vec::new();
    for name in ["billing", "shipping", "analytics"] {
        let (sink, collected) = CollectSink::new();
        graph.sink(name, sink, ["orders"]);
        readers.push(collected);
    }
    graph.build().unwrap().run_with(quiet()).await.unwrap();
    for collected in readers {
        assert_eq!(keys(&collected), (0..100).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_node_with_two_inputs_receives_both() {
    let (sink, collected) = CollectSink::new();
    let (op, _) = tag();
    let mut graph = GraphBuilder::new();
    graph.source("web", MemorySource::new(schema(), vec![batch(0..10, 0)]));
    graph.source(
        "mobile",
        MemorySource::new(schema(), vec![batch(10..25, 0)]),
    );
    graph.operator("all", op, ["web", "mobile"]);
    graph.sink("out", sink, ["all"]);
    graph.build().unwrap().run_with(quiet()).await.unwrap();
    assert_eq!(keys(&collected), (0..25).collect::<Vec<_>>());
}

/// A bounded source that counts the batches it has handed out.
struct CountingSource {
    batches: usize,
    emitted: Arc<AtomicUsize>,
}

struct CountingSourceInstance {
    left: usize,
    emitted: Arc<AtomicUsize>,
}

impl SourceFactory for CountingSource {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn create(&self, _instance: InstanceInfo) -> Result<Box<dyn Source>> {
        Ok(Box::new(CountingSourceInstance {
            left: self.batches,
            emitted: self.emitted.clone(),
        }))
    }
}

#[async_trait]
impl Source for CountingSourceInstance {
    async fn next(&mut self) -> Result<SourceStep> {
        if self.left == 0 {
            return Ok(SourceStep::Finished);
        }
        self.left -= 1;
        self.emitted.fetch_add(1, Ordering::SeqCst);
        Ok(SourceStep::Batch(batch([1], 0)))
    }
}

/// A sink that takes a while over each batch and records, at each write,
/// how many batches the source had handed out beyond those written.
struct SlowSink {
    emitted: Arc<AtomicUsize>,
    written: Arc<AtomicUsize>,
    peak_in_flight: Arc<AtomicUsize>,
}

impl SinkFactory for SlowSink {
    fn create(&self, _: InstanceInfo, _: SchemaRef) -> Result<Box<dyn Sink>> {
        Ok(Box::new(SlowSink {
            emitted: self.emitted.clone(),
            written: self.written.clone(),
            peak_in_flight: self.peak_in_flight.clone(),
        }))
    }
}

#[async_trait]
impl Sink for SlowSink {
    async fn write(&mut self, _batch: RecordBatch, _ctx: &mut Context) -> Result<()> {
        // Give the source every chance to run ahead.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        let emitted = self.emitted.load(Ordering::SeqCst);
        let written = self.written.fetch_add(1, Ordering::SeqCst);
        self.peak_in_flight
            .fetch_max(emitted - written, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sink_holds_back_the_source() {
    const CAPACITY: usize = 4;
    const BATCHES: usize = 500;
    let emitted = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(AtomicUsize::new(0));
    let peak_in_flight = Arc::new(AtomicUsize::new(0));
    let mut graph = GraphBuilder::new();
    graph.source(
        "fast",
        CountingSource {
            batches: BATCHES,
            emitted: emitted.clone(),
        },
    );
    graph.sink(
        "slow",
        SlowSink {
            emitted,
            written: written.clone(),
            peak_in_flight: peak_in_flight.clone(),
        },
        ["fast"],
    );
    let options = RunOptions {
        channel_capacity: CAPACITY,
        handle_signals: false,
        ..RunOptions::default()
    };
    graph.build().unwrap().run_with(options).await.unwrap();

    assert_eq!(written.load(Ordering::SeqCst), BATCHES);
    // At most: a full channel, the batch the source is blocked sending, and
    // the one the sink holds.
    let peak = peak_in_flight.load(Ordering::SeqCst);
    assert!(peak <= CAPACITY + 2, "{peak} batches were in flight");
    assert!(
        peak >= CAPACITY,
        "the source ran ahead until the channel was full ({peak})"
    );
}

#[tokio::test]
async fn watermark_is_the_minimum_over_inputs_and_skips_idle_ones() {
    let (left, left_tx) = ChannelSource::new(schema());
    let (right, right_tx) = ChannelSource::new(schema());
    let (op, _) = tag();
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph
        .source("left", left)
        .event_time(EventTimeConfig::new("ts").with_idle_timeout(Duration::from_millis(100)));
    graph
        .source("right", right)
        .event_time(EventTimeConfig::new("ts"));
    graph.operator("both", op, ["left", "right"]);
    graph.sink("out", sink, ["both"]);
    let pipeline = graph.build().unwrap();
    let shutdown = pipeline.shutdown_handle();
    let run = tokio::spawn(pipeline.run_with(quiet()));
    let reached = |t: i64| move |c: &Collected| c.watermarks().last() == Some(&t);

    left_tx.send(batch([1], 1_000)).await.unwrap();
    right_tx.send(batch([2], 5_000)).await.unwrap();
    collected.wait_until(reached(1_000)).await;
    left_tx.send(batch([3], 7_000)).await.unwrap();
    collected.wait_until(reached(5_000)).await;
    right_tx.send(batch([4], 9_000)).await.unwrap();
    collected.wait_until(reached(7_000)).await;

    // `left` falls silent: once idle it no longer holds `right` back.
    right_tx.send(batch([5], 20_000)).await.unwrap();
    collected.wait_until(reached(20_000)).await;
    assert!(collected.watermarks().windows(2).all(|w| w[0] <= w[1]));

    shutdown.drain();
    run.await.unwrap().unwrap();
    assert_eq!(collected.watermarks().last(), Some(&EventTime::MAX));
    assert_eq!(keys(&collected), vec![1, 2, 3, 4, 5]);
}

/// Fails on the batch that holds key 13.
struct FailOn13;

#[async_trait]
impl Operator for FailOn13 {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        let keys = batch.column(0).as_primitive::<Int64Type>();
        if keys.values().contains(&13) {
            return Err(Error::Data("key 13 is unlucky".into()));
        }
        out.emit(batch);
        Ok(())
    }
}

/// Panics on the first batch.
struct Panics;

#[async_trait]
impl Operator for Panics {
    async fn process_batch(
        &mut self,
        _: usize,
        _: RecordBatch,
        _: &mut Context,
        _: &mut Collector,
    ) -> Result<()> {
        panic!("index out of bounds in user code");
    }
}

struct Factory<F>(F);

impl<F, O> OperatorFactory for Factory<F>
where
    F: Fn() -> O + Send + Sync + 'static,
    O: Operator,
{
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(inputs[0].clone())
    }

    fn create(&self, _: InstanceInfo, _: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        Ok(Box::new((self.0)()))
    }
}

#[tokio::test]
async fn an_operator_error_stops_the_run_and_names_the_operator() {
    let (sink, _) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    // Enough batches that the source is blocked on a full channel when the
    // operator fails: the run must still end.
    graph.source("numbers", MemorySource::new(schema(), batches(1000, 10)));
    graph
        .operator("picky", Factory(|| FailOn13), ["numbers"])
        .parallelism(2);
    graph.sink("out", sink, ["picky"]);
    let err = graph.build().unwrap().run_with(quiet()).await.unwrap_err();
    assert_eq!(err.node(), Some("picky"));
    assert_eq!(
        err.to_string(),
        "`picky` failed: bad record: key 13 is unlucky"
    );
}

#[tokio::test]
async fn a_panicking_operator_is_reported_not_propagated() {
    let (sink, _) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph.source("numbers", MemorySource::new(schema(), batches(100, 10)));
    graph.operator("buggy", Factory(|| Panics), ["numbers"]);
    graph.sink("out", sink, ["buggy"]);
    let err = graph.build().unwrap().run_with(quiet()).await.unwrap_err();
    assert_eq!(err.node(), Some("buggy"));
    assert!(
        err.to_string().contains("index out of bounds in user code"),
        "{err}"
    );
}

#[tokio::test]
async fn drain_stops_an_unbounded_source_and_writes_what_was_read() {
    let (source, tx) = ChannelSource::new(schema());
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph.source("events", source);
    graph.sink("out", sink, ["events"]);
    let pipeline = graph.build().unwrap();
    let shutdown = pipeline.shutdown_handle();
    let run = tokio::spawn(pipeline.run_with(quiet()));
    tx.send(batch(0..5, 0)).await.unwrap();
    collected.wait_until(|c| c.rows() == 5).await;
    shutdown.drain();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.node("out").unwrap().rows_in, 5);
    assert_eq!(collected.finished(), 1);
}

fn graph_error(build: impl FnOnce(&mut GraphBuilder)) -> String {
    let mut graph = GraphBuilder::new();
    build(&mut graph);
    graph.build().unwrap_err().to_string()
}

fn numbers() -> MemorySource {
    MemorySource::new(schema(), Vec::new())
}

#[test]
fn graph_errors_name_the_node_and_the_problem() {
    let dangling = graph_error(|g| {
        g.source("bids", numbers());
        g.source("persons", numbers());
        g.sink("out", CollectSink::new().0, ["bidz", "persons"]);
    });
    assert_eq!(
        dangling,
        "invalid pipeline: `out`: inputs[0]: input `bidz` is not defined; defined: bids, persons"
    );

    let cycle = graph_error(|g| {
        g.source("src", numbers());
        g.operator("a", Factory(|| FailOn13), ["c"]);
        g.operator("b", Factory(|| FailOn13), ["a"]);
        g.operator("c", Factory(|| FailOn13), ["b"]);
        g.sink("out", CollectSink::new().0, ["c", "src"]);
    });
    assert!(cycle.contains("is part of a cycle: "), "{cycle}");
    assert!(
        cycle.contains("a -> b -> c -> a")
            || cycle.contains("b -> c -> a -> b")
            || cycle.contains("c -> a -> b -> c"),
        "{cycle}"
    );

    let unknown_key = graph_error(|g| {
        g.source("bids", numbers());
        g.operator(
            "count",
            Factory(|| FailOn13),
            [Input::hash("bids", ["auction"])],
        );
        g.sink("out", CollectSink::new().0, ["count"]);
    });
    assert_eq!(
        unknown_key,
        "invalid pipeline: `count`: partitioning: hash key `auction` is not a column of `bids`; columns: key, ts"
    );

    let other_schema = Arc::new(Schema::new(vec![Field::new("key", DataType::Utf8, false)]));
    let mismatch = graph_error(|g| {
        g.source("a", numbers());
        g.source("b", MemorySource::new(other_schema, Vec::new()));
        g.sink("out", CollectSink::new().0, ["a", "b"]);
    });
    assert!(
        mismatch.starts_with("invalid pipeline: `out`: inputs: `a` and `b` have different schemas"),
        "{mismatch}"
    );
    assert!(mismatch.contains("b: key: Utf8"), "{mismatch}");

    let mistyped_time = graph_error(|g| {
        g.source("a", numbers())
            .event_time(EventTimeConfig::new("key_text"));
        g.sink("out", CollectSink::new().0, ["a"]);
    });
    assert!(
        mistyped_time.contains("column `key_text` does not exist; columns: key, ts"),
        "{mistyped_time}"
    );

    let no_sink = graph_error(|g| {
        g.source("a", numbers());
        g.source("unused", numbers());
        g.sink("out", CollectSink::new().0, ["a"]);
    });
    assert_eq!(
        no_sink,
        "invalid pipeline: `unused`: has no path to a sink, so its output would be thrown away"
    );

    let forward = graph_error(|g| {
        g.source("a", numbers()).parallelism(2);
        g.sink("out", CollectSink::new().0, [Input::forward("a")])
            .parallelism(3);
    });
    assert!(
        forward.contains("a forward edge needs the same parallelism"),
        "{forward}"
    );

    let duplicate = graph_error(|g| {
        g.source("a", numbers());
        g.source("a", numbers());
    });
    assert_eq!(
        duplicate,
        "invalid pipeline: `a`: is defined more than once"
    );

    let reads_sink = graph_error(|g| {
        g.source("a", numbers());
        g.sink("out", CollectSink::new().0, ["a"]);
        g.sink("again", CollectSink::new().0, ["out"]);
    });
    assert!(
        reads_sink.contains("input `out` is a sink; sinks have no outputs"),
        "{reads_sink}"
    );

    let port = graph_error(|g| {
        g.source("a", numbers());
        g.sink("out", CollectSink::new().0, ["a.late"]);
    });
    assert!(
        port.contains("input `a.late` is not defined; `a` has no named outputs"),
        "{port}"
    );
}

#[test]
fn nodes_come_in_topological_order() {
    let mut graph = GraphBuilder::new();
    graph.sink("out", CollectSink::new().0, ["b"]);
    graph.operator("b", Factory(|| FailOn13), ["a"]);
    graph.source("a", numbers());
    let pipeline = graph.build().unwrap();
    let names: Vec<&str> = pipeline.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "out"]);
}

/// A sink that fails its first writes: `retryable` ones the runtime should
/// retry, the others it should dead-letter.
struct Flaky {
    failures: Arc<AtomicUsize>,
    retryable: bool,
    written: Arc<AtomicUsize>,
}

impl SinkFactory for Flaky {
    fn create(&self, _instance: InstanceInfo, _schema: SchemaRef) -> Result<Box<dyn Sink>> {
        Ok(Box::new(FlakyInstance {
            failures: self.failures.clone(),
            retryable: self.retryable,
            written: self.written.clone(),
        }))
    }
}

struct FlakyInstance {
    failures: Arc<AtomicUsize>,
    retryable: bool,
    written: Arc<AtomicUsize>,
}

#[async_trait]
impl Sink for FlakyInstance {
    async fn write(&mut self, batch: RecordBatch, _ctx: &mut Context) -> Result<()> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(Error::connector(
                "flaky",
                self.retryable,
                "the server is away",
            ));
        }
        self.written.fetch_add(batch.num_rows(), Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn retryable_sink_errors_are_retried_and_others_dead_lettered() {
    // Two retryable failures: retried (with backoff), nothing lost.
    let written = Arc::new(AtomicUsize::new(0));
    let mut graph = GraphBuilder::new();
    graph.source("numbers", MemorySource::new(schema(), batches(3, 10)));
    graph.sink(
        "flaky",
        Flaky {
            failures: Arc::new(AtomicUsize::new(2)),
            retryable: true,
            written: written.clone(),
        },
        ["numbers"],
    );
    graph.build().unwrap().run_with(quiet()).await.unwrap();
    assert_eq!(written.load(Ordering::SeqCst), 30);

    // One failure for good: that batch goes to the dead-letter sink.
    let written = Arc::new(AtomicUsize::new(0));
    let (dead_sink, dead) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph.source("numbers", MemorySource::new(schema(), batches(3, 10)));
    graph.sink(
        "flaky",
        Flaky {
            failures: Arc::new(AtomicUsize::new(1)),
            retryable: false,
            written: written.clone(),
        },
        ["numbers"],
    );
    graph.dead_letter_sink(dead_sink);
    graph.build().unwrap().run_with(quiet()).await.unwrap();
    assert_eq!(written.load(Ordering::SeqCst), 20);
    assert_eq!(dead.rows(), 10);
    let batch = &dead.batches()[0];
    let error = batch
        .column_by_name("error")
        .unwrap()
        .as_string::<i32>()
        .value(0);
    assert!(error.contains("the server is away"), "{error}");
    let component = batch
        .column_by_name("component")
        .unwrap()
        .as_string::<i32>()
        .value(0);
    assert_eq!(component, "flaky");
}
