//! A test kit: a source from batches in memory, a sink that collects what
//! reaches it, and a helper to run one operator over batches.
//!
//! ```
//! use flumen_core::testing::run_operator;
//! # use flumen_core::prelude::*;
//! # use std::sync::Arc;
//! # use arrow::array::Int64Array;
//! # use arrow::datatypes::{DataType, Field, Schema};
//! # struct Identity;
//! # #[async_trait] impl Operator for Identity {
//! #   async fn process_batch(&mut self, _: usize, b: RecordBatch, _: &mut Context, out: &mut Collector) -> Result<()> { out.emit(b); Ok(()) }
//! # }
//! # struct IdentityFactory;
//! # impl OperatorFactory for IdentityFactory {
//! #   fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> { Ok(inputs[0].clone()) }
//! #   fn create(&self, _: InstanceInfo, _: &[SchemaRef]) -> Result<Box<dyn Operator>> { Ok(Box::new(Identity)) }
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
//! let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))])?;
//! let output = run_operator(IdentityFactory, vec![batch.clone()]).await?;
//! assert_eq!(output, vec![batch]);
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::component::{
    Context, InstanceInfo, OperatorFactory, Sink, SinkFactory, Source, SourceFactory, SourceStep,
};
use crate::error::{Error, Result};
use crate::event_time::EventTimeConfig;
use crate::graph::GraphBuilder;
use crate::message::EventTime;
use crate::runtime::RunOptions;

/// A bounded source that replays batches from memory. With parallelism
/// *p*, instance *i* replays batches *i*, *i + p*, ...
#[derive(Debug, Clone)]
pub struct MemorySource {
    schema: SchemaRef,
    batches: Arc<Vec<RecordBatch>>,
    event_time: Option<EventTimeConfig>,
}

impl MemorySource {
    /// Replays `batches`, which must all have `schema`.
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        MemorySource {
            schema,
            batches: Arc::new(batches),
            event_time: None,
        }
    }

    /// Takes event time from a column of the batches.
    pub fn with_event_time(mut self, event_time: EventTimeConfig) -> Self {
        self.event_time = Some(event_time);
        self
    }
}

impl SourceFactory for MemorySource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn create(&self, instance: InstanceInfo) -> Result<Box<dyn Source>> {
        let batches = self
            .batches
            .iter()
            .skip(instance.index)
            .step_by(instance.parallelism)
            .cloned()
            .collect();
        Ok(Box::new(MemorySourceInstance {
            batches,
            emitted: 0,
        }))
    }

    fn default_event_time(&self) -> Option<EventTimeConfig> {
        self.event_time.clone()
    }

    fn expected_events(&self) -> Option<u64> {
        Some(self.batches.iter().map(|b| b.num_rows() as u64).sum())
    }
}

struct MemorySourceInstance {
    batches: VecDeque<RecordBatch>,
    /// Batches handed out: the read position.
    emitted: u64,
}

#[async_trait]
impl Source for MemorySourceInstance {
    async fn next(&mut self) -> Result<SourceStep> {
        Ok(match self.batches.pop_front() {
            Some(batch) => {
                self.emitted += 1;
                SourceStep::Batch(batch)
            }
            None => SourceStep::Finished,
        })
    }

    fn position(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "batches": self.emitted }))
    }

    async fn restore(&mut self, position: serde_json::Value) -> Result<()> {
        let emitted = position["batches"]
            .as_u64()
            .ok_or_else(|| Error::internal(format!("not a memory source position: {position}")))?;
        for _ in 0..emitted {
            self.batches.pop_front();
        }
        self.emitted = emitted;
        Ok(())
    }
}

/// An unbounded source fed by the test through a channel; it ends when the
/// sender is dropped. Runs at parallelism 1.
#[derive(Debug)]
pub struct ChannelSource {
    schema: SchemaRef,
    receiver: Mutex<Option<mpsc::Receiver<RecordBatch>>>,
    event_time: Option<EventTimeConfig>,
}

impl ChannelSource {
    /// The source and the sender that feeds it.
    pub fn new(schema: SchemaRef) -> (Self, mpsc::Sender<RecordBatch>) {
        let (tx, rx) = mpsc::channel(16);
        let source = ChannelSource {
            schema,
            receiver: Mutex::new(Some(rx)),
            event_time: None,
        };
        (source, tx)
    }

    /// Takes event time from a column of the batches.
    pub fn with_event_time(mut self, event_time: EventTimeConfig) -> Self {
        self.event_time = Some(event_time);
        self
    }
}

impl SourceFactory for ChannelSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn create(&self, _instance: InstanceInfo) -> Result<Box<dyn Source>> {
        let receiver = self
            .receiver
            .lock()
            .expect("poisoned")
            .take()
            .ok_or_else(|| Error::internal("a ChannelSource can run only once"))?;
        Ok(Box::new(ChannelSourceInstance { receiver }))
    }

    fn default_event_time(&self) -> Option<EventTimeConfig> {
        self.event_time.clone()
    }

    fn max_parallelism(&self) -> Option<usize> {
        Some(1)
    }
}

struct ChannelSourceInstance {
    receiver: mpsc::Receiver<RecordBatch>,
}

#[async_trait]
impl Source for ChannelSourceInstance {
    async fn next(&mut self) -> Result<SourceStep> {
        let wait = std::time::Duration::from_millis(20);
        Ok(
            match tokio::time::timeout(wait, self.receiver.recv()).await {
                Ok(Some(batch)) => SourceStep::Batch(batch),
                Ok(None) => SourceStep::Finished,
                Err(_) => SourceStep::Idle,
            },
        )
    }
}

/// What a [`CollectSink`] received, shared with the test.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    inner: Arc<Mutex<CollectedInner>>,
}

#[derive(Debug, Default)]
struct CollectedInner {
    changed: Arc<tokio::sync::Notify>,
    batches: Vec<RecordBatch>,
    watermarks: Vec<EventTime>,
    finished: usize,
}

impl Collected {
    /// The batches received, in arrival order (over all instances).
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.lock().batches.clone()
    }

    /// All rows received, as one batch (`None` if nothing arrived).
    pub fn concat(&self) -> Option<RecordBatch> {
        let batches = self.batches();
        let first = batches.first()?;
        Some(concat_batches(&first.schema(), &batches).expect("batches of one sink share a schema"))
    }

    /// How many rows arrived.
    pub fn rows(&self) -> usize {
        self.lock().batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// Event-time watermarks received, in order.
    pub fn watermarks(&self) -> Vec<EventTime> {
        self.lock().watermarks.clone()
    }

    /// How many sink instances saw end-of-stream.
    pub fn finished(&self) -> usize {
        self.lock().finished
    }

    /// Waits until `condition` holds for what was collected, re-checking
    /// whenever the sink receives something.
    pub async fn wait_until(&self, condition: impl Fn(&Collected) -> bool) {
        let changed = self.lock().changed.clone();
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if condition(self) {
                return;
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CollectedInner> {
        self.inner.lock().expect("a collecting sink panicked")
    }

    fn update(&self, change: impl FnOnce(&mut CollectedInner)) {
        let mut inner = self.lock();
        change(&mut inner);
        inner.changed.notify_waiters();
    }
}

/// A sink that keeps everything it receives in memory for a test to read.
#[derive(Debug, Clone, Default)]
pub struct CollectSink {
    collected: Collected,
}

impl CollectSink {
    /// A sink and the handle to read what it collects.
    pub fn new() -> (Self, Collected) {
        let sink = CollectSink::default();
        let collected = sink.collected.clone();
        (sink, collected)
    }
}

impl SinkFactory for CollectSink {
    fn create(&self, _instance: InstanceInfo, _schema: SchemaRef) -> Result<Box<dyn Sink>> {
        Ok(Box::new(self.clone()))
    }
}

#[async_trait]
impl Sink for CollectSink {
    async fn write(&mut self, batch: RecordBatch, _ctx: &mut Context) -> Result<()> {
        self.collected.update(|c| c.batches.push(batch));
        Ok(())
    }

    async fn on_watermark(&mut self, watermark: EventTime, _ctx: &mut Context) -> Result<()> {
        self.collected.update(|c| c.watermarks.push(watermark));
        Ok(())
    }

    async fn finish(&mut self, _ctx: &mut Context) -> Result<()> {
        self.collected.update(|c| c.finished += 1);
        Ok(())
    }
}

/// The S3-API test server started by `scripts/test.sh`, as storage options
/// for the bucket `flumen-test`. Panics with directions when none runs.
#[cfg(feature = "s3")]
pub fn test_s3() -> crate::storage::StorageOptions {
    let endpoint = std::env::var("FLUMEN_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "this test needs an S3-API server: run it through scripts/test.sh, which starts one, \
             or set FLUMEN_TEST_S3_ENDPOINT to one with a bucket `flumen-test`"
        )
    });
    crate::storage::StorageOptions {
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        access_key_id: Some("flumen".into()),
        secret_access_key: Some("flumen".into()),
        ..Default::default()
    }
}

/// Runs one operator over `batches` (at parallelism 1) and returns what it
/// emitted on its main output.
pub async fn run_operator(
    operator: impl OperatorFactory,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>> {
    let schema = batches.first().map(RecordBatch::schema).ok_or_else(|| {
        Error::internal("run_operator needs at least one batch to know the schema")
    })?;
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph.source("input", MemorySource::new(schema, batches));
    // A test wants to see a rejected row as an error.
    graph
        .operator("operator", operator, ["input"])
        .on_error(crate::dead_letter::OnError::Fail);
    graph.sink("output", sink, ["operator"]);
    graph
        .build()?
        .run_with(RunOptions {
            handle_signals: false,
            ..RunOptions::default()
        })
        .await?;
    Ok(collected.batches())
}

/// A port on 127.0.0.1 that nothing listens on (at the moment of asking).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// How many cases each fuzz test runs: `FLUMEN_FUZZ_CASES` if set, else
/// `default`. The test suite runs a fixed budget; a longer run is
///
/// ```text
/// FLUMEN_FUZZ_CASES=200000 cargo test --release --workspace --all-features fuzz_
/// ```
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("FLUMEN_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}
