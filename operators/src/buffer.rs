//! A rate-limited buffer: takes rows as fast as they come and lets them
//! out at a steady rate, for a downstream that cannot take bursts (queue-
//! based load leveling).
//!
//! Rows wait in memory or, with `dir`, in a durable log on disk
//! ([`flumen_core::log`]), bounded by `max_bytes` and `max_events`. The
//! drain is a token bucket (the `governor` crate): at most `batch_size`
//! rows per batch, at `events_per_second` or `batches_per_second`.
//!
//! With checkpoints, a snapshot records where the drain is and where the
//! log ends; a restore cuts the log back to that end (the input after it is
//! replayed) and drains again from there, so each row leaves once.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::PathBuf;

use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use flumen_core::log::{AppendError, DurableLog, FsyncPolicy, LogOptions};
use flumen_core::prelude::*;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

/// What a full buffer does with more rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Stop taking input until the drain makes room (backpressure).
    #[default]
    Block,
    /// Drop the incoming rows (counted in `flumen_buffer_dropped_events_total`).
    DropNewest,
    /// Send the incoming rows to the dead letters.
    Reject,
}

/// The drain's pace: one of the two.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRate {
    /// Rows per second.
    #[serde(default)]
    pub events_per_second: Option<u32>,
    /// Batches (of up to `batch_size` rows) per second.
    #[serde(default)]
    pub batches_per_second: Option<u32>,
}

/// Holds rows and lets them out at a steady rate.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Keep waiting rows in a durable log in this directory. Default: in
    /// memory (in checkpoints, if the run takes them).
    #[serde(default)]
    #[schemars(extend("format" = "path"))]
    pub dir: Option<PathBuf>,

    /// Most bytes of waiting rows.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,

    /// Most waiting rows. Default: no limit but `max_bytes`.
    #[serde(default)]
    pub max_events: Option<u64>,

    /// `block` (default), `drop_newest` or `reject`.
    #[serde(default)]
    pub when_full: WhenFull,

    /// How fast rows leave: `{ events_per_second: 500 }` or
    /// `{ batches_per_second: 50 }`.
    pub rate: DrainRate,

    /// Most rows per batch let out.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,

    /// With `dir`: `always` (sync each input batch before taking the next),
    /// `interval` (every 100 ms) or `never`.
    #[serde(default)]
    pub fsync: FsyncPolicy,

    /// With `dir`: write each new segment file ahead, full size and all
    /// zeros, so that the syncs of its rows write only the rows, not the
    /// file's growth. Turn off on a copy-on-write file system (btrfs,
    /// ZFS), where it gains nothing and costs a segment's worth of writes.
    #[serde(default = "default_preallocate")]
    pub preallocate: bool,
}

fn default_preallocate() -> bool {
    true
}
fn default_max_bytes() -> u64 {
    256 << 20
}
fn default_batch_size() -> usize {
    1000
}

impl TransformConfig for BufferConfig {
    const TYPE: &str = "buffer";
    const DESCRIPTION: &str =
        "Holds rows (in memory or a durable log) and lets them out at a steady rate.";
    type Operator = Buffer;

    /// Checks the settings and returns the operator.
    fn build(&self) -> Result<Buffer> {
        let per_second = match (self.rate.events_per_second, self.rate.batches_per_second) {
            (Some(events), None) => (events, true),
            (None, Some(batches)) => (batches, false),
            _ => {
                return Err(Error::config(
                    "rate",
                    "give one of `events_per_second` and `batches_per_second`",
                ));
            }
        };
        if per_second.0 == 0 {
            return Err(Error::config("rate", "must be at least 1 per second"));
        }
        if self.batch_size == 0 || self.batch_size > u32::MAX as usize {
            return Err(Error::config("batch_size", "must be between 1 and 2^32"));
        }
        if self.max_bytes == 0 {
            return Err(Error::config("max_bytes", "must be above 0"));
        }
        Ok(Buffer {
            config: self.clone(),
            per_second: per_second.0,
            per_event: per_second.1,
        })
    }
}

/// The buffer operator. Built from a [`BufferConfig`].
#[derive(Debug, Clone)]
pub struct Buffer {
    config: BufferConfig,
    per_second: u32,
    /// Whether the rate counts rows (else batches).
    per_event: bool,
}

impl OperatorFactory for Buffer {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(inputs[0].clone())
    }

    fn max_parallelism(&self) -> Option<usize> {
        // One pace for the whole stream, and one log directory.
        Some(1)
    }

    fn create(&self, _instance: InstanceInfo, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        let rate = NonZeroU32::new(self.per_second).expect("checked in build");
        // A batch goes out whole, and is never more than a second's worth.
        // The bucket holds two batches, so that a timer waking late does
        // not slow the pace: the time lost is made up with the next batch.
        let (burst, batch_size) = match self.per_event {
            true => {
                let batch = (self.config.batch_size as u32).min(rate.get());
                (batch.saturating_mul(2), batch as usize)
            }
            false => (2, self.config.batch_size),
        };
        let burst = NonZeroU32::new(burst).expect("at least 1");
        Ok(Box::new(BufferInstance {
            config: self.config.clone(),
            batch_size,
            schema: inputs[0].clone(),
            per_event: self.per_event,
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            store: None,
            waiting: Waiting::default(),
            next_drain: None,
            snapshots: VecDeque::new(),
            arrivals: VecDeque::new(),
            pushed: 0,
            let_out: 0,
        }))
    }
}

/// Where waiting rows are kept.
enum Store {
    Memory(VecDeque<RecordBatch>),
    /// The log, and the next record to read from it.
    Disk {
        log: DurableLog,
        next: u64,
    },
}

/// What waits to be let out, against the bounds.
#[derive(Debug, Default, Clone, Copy)]
struct Waiting {
    events: u64,
    bytes: u64,
}

struct BufferInstance {
    config: BufferConfig,
    /// Rows per batch let out (and per record on disk).
    batch_size: usize,
    schema: SchemaRef,
    per_event: bool,
    limiter: DefaultDirectRateLimiter,
    /// Opened on first use (or at restore).
    store: Option<Store>,
    waiting: Waiting,
    /// When the bucket has tokens for the next batch, if one waits.
    next_drain: Option<EventTime>,
    /// The log offsets the latest snapshots drained up to, newest last.
    snapshots: VecDeque<u64>,
    /// The watermarks rows arrived under, as (rows taken in up to here,
    /// watermark), oldest first, for the rows still waiting: the output
    /// watermark is held at the oldest, so that a row let out later is
    /// not late downstream.
    arrivals: VecDeque<(u64, EventTime)>,
    /// Rows taken in, and let out, since the counts began.
    pushed: u64,
    let_out: u64,
}

impl BufferInstance {
    fn store(&mut self, checkpointing: bool) -> Result<&mut Store> {
        if self.store.is_none() {
            self.store = Some(match &self.config.dir {
                None => Store::Memory(VecDeque::new()),
                Some(dir) => {
                    // A run that takes checkpoints but restored none starts
                    // with an empty buffer: its input is read from the start
                    // again. Without checkpoints, what a previous run left
                    // is all there is of it: keep it.
                    let log = match checkpointing {
                        true => DurableLog::open_truncated(dir, self.log_options(), 0)?,
                        false => DurableLog::open(dir, self.log_options())?,
                    };
                    self.waiting = Waiting {
                        events: log.usage().events,
                        bytes: log.usage().bytes,
                    };
                    self.count_from_waiting();
                    let next = log.released();
                    Store::Disk { log, next }
                }
            });
        }
        Ok(self.store.as_mut().expect("opened above"))
    }

    fn log_options(&self) -> LogOptions {
        LogOptions {
            segment_bytes: 64 << 20,
            fsync: self.config.fsync,
            // The log holds rows let out but not yet checkpointed too: the
            // bounds on what waits are enforced here.
            max_bytes: u64::MAX,
            max_events: u64::MAX,
            preallocate: self.config.preallocate,
        }
    }

    /// Rows found waiting (restored, or left in the log by an earlier
    /// run) arrived under no watermark known here: they hold it back
    /// until they are out.
    fn count_from_waiting(&mut self) {
        self.pushed = self.waiting.events;
        self.let_out = 0;
        self.arrivals.clear();
        if self.waiting.events > 0 {
            self.arrivals
                .push_back((self.waiting.events, EventTime::MIN));
        }
    }

    fn full_for(&self, batch: &RecordBatch) -> bool {
        let events = self.waiting.events + batch.num_rows() as u64;
        let bytes = self.waiting.bytes + batch.get_array_memory_size() as u64;
        let empty = self.waiting.events == 0;
        !empty
            && (bytes > self.config.max_bytes
                || self.config.max_events.is_some_and(|max| events > max))
    }

    async fn push(&mut self, batch: RecordBatch, checkpointing: bool) -> Result<()> {
        let bytes = batch.get_array_memory_size() as u64;
        let events = batch.num_rows() as u64;
        let size = self.batch_size;
        match self.store(checkpointing)? {
            Store::Memory(queue) => queue.push_back(batch),
            Store::Disk { log, .. } => {
                // One record per batch to let out, so the drain reads
                // whole records. They are appended together, so that they
                // share one sync (the writes stay in order).
                let mut appends = Vec::new();
                for start in (0..batch.num_rows()).step_by(size) {
                    let rows = batch.slice(start, size.min(batch.num_rows() - start));
                    let mut payload = Vec::new();
                    let mut writer = StreamWriter::try_new(&mut payload, rows.schema_ref())?;
                    writer.write(&rows)?;
                    writer.finish()?;
                    drop(writer);
                    appends.push(log.append(rows.num_rows() as u32, payload));
                }
                for appended in futures::future::join_all(appends).await {
                    match appended {
                        Ok(_) => {}
                        Err(AppendError::Full) => {
                            return Err(Error::internal("the buffer's log refused an append"));
                        }
                        Err(AppendError::Failed(e)) => return Err(e),
                    }
                }
            }
        }
        self.waiting.events += events;
        self.waiting.bytes += bytes;
        Ok(())
    }

    /// The next batch to let out (at most `batch_size` rows), without
    /// taking it.
    fn peek(&mut self) -> Result<Option<RecordBatch>> {
        let size = self.batch_size;
        let Some(store) = &mut self.store else {
            return Ok(None);
        };
        match store {
            Store::Memory(queue) => Ok(queue.front().map(|b| b.slice(0, b.num_rows().min(size)))),
            Store::Disk { log, next } => {
                let (records, _) = log.read(*next, 1, u64::MAX)?;
                let Some(record) = records.into_iter().next() else {
                    return Ok(None);
                };
                let mut reader = StreamReader::try_new(&record.payload[..], None)?;
                let batch = reader
                    .next()
                    .transpose()?
                    .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone()));
                Ok(Some(batch))
            }
        }
    }

    /// Takes what [`BufferInstance::peek`] gave.
    fn take(&mut self, taken: &RecordBatch) {
        if let Some(Store::Memory(queue)) = &mut self.store {
            let front = queue.pop_front().expect("peeked");
            if front.num_rows() > taken.num_rows() {
                queue
                    .push_front(front.slice(taken.num_rows(), front.num_rows() - taken.num_rows()));
            }
        } else if let Some(Store::Disk { next, .. }) = &mut self.store {
            *next += 1;
        }
        self.let_out += taken.num_rows() as u64;
        while self
            .arrivals
            .front()
            .is_some_and(|(until, _)| *until <= self.let_out)
        {
            self.arrivals.pop_front();
        }
        self.waiting.events = self.waiting.events.saturating_sub(taken.num_rows() as u64);
        self.waiting.bytes = self
            .waiting
            .bytes
            .saturating_sub(taken.get_array_memory_size() as u64);
        if self.waiting.events == 0 {
            self.waiting.bytes = 0;
        }
    }

    /// Lets out what the bucket allows now; notes when the next batch may
    /// go.
    fn drain(&mut self, out: &mut Collector) -> Result<()> {
        self.next_drain = None;
        while let Some(batch) = self.peek()? {
            let tokens = match self.per_event {
                true => batch.num_rows().clamp(1, self.batch_size) as u32,
                false => 1,
            };
            let tokens = NonZeroU32::new(tokens).expect("at least 1");
            match self.limiter.check_n(tokens) {
                // A batch never holds more than the bucket (see `create`).
                Ok(Ok(())) | Err(_) => {
                    self.take(&batch);
                    out.emit(batch);
                }
                Ok(Err(not_until)) => {
                    // Rounded up to the clock's millisecond, not beyond:
                    // an extra millisecond per batch would slow the pace.
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    let wait = wait.as_micros().div_ceil(1000) as i64;
                    self.next_drain = Some(crate::window::wall_clock_millis() + wait);
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for BufferInstance {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        while self.full_for(&batch) {
            match self.config.when_full {
                WhenFull::DropNewest => {
                    metrics::counter!("flumen_buffer_dropped_events_total", "node" => ctx.node.to_string())
                        .increment(batch.num_rows() as u64);
                    return Ok(());
                }
                WhenFull::Reject => {
                    out.reject(&batch, &"the buffer is full")?;
                    return Ok(());
                }
                WhenFull::Block => {
                    // Let rows out at the drain's pace until this batch
                    // fits; the runtime takes no more input meanwhile.
                    self.drain(out)?;
                    if let Some(at) = self.next_drain {
                        let wait = at.saturating_sub(crate::window::wall_clock_millis()).max(1);
                        tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
                    }
                }
            }
        }
        let rows = batch.num_rows() as u64;
        self.push(batch, ctx.checkpointing).await?;
        self.pushed += rows;
        let watermark = ctx.watermark.unwrap_or(EventTime::MIN);
        match self.arrivals.back_mut() {
            // Under the same watermark as the rows before: one mark.
            Some((until, last)) if *last == watermark => *until = self.pushed,
            _ => self.arrivals.push_back((self.pushed, watermark)),
        }
        self.drain(out)
    }

    fn watermark_hold(&self) -> Option<EventTime> {
        match self.waiting.events {
            0 => None,
            _ => Some(self.arrivals.front().map_or(EventTime::MIN, |(_, w)| *w)),
        }
    }

    fn next_timer(&self) -> Option<EventTime> {
        match self.waiting.events {
            0 => None,
            _ => Some(
                self.next_drain
                    .unwrap_or_else(crate::window::wall_clock_millis),
            ),
        }
    }

    async fn on_timer(
        &mut self,
        _now: EventTime,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        self.drain(out)
    }

    async fn on_end(&mut self, _ctx: &mut Context, out: &mut Collector) -> Result<()> {
        // A bounded input ended: the rest leaves at the drain's pace, on
        // the timer (see `finishing`).
        self.drain(out)
    }

    fn finishing(&self) -> bool {
        self.waiting.events > 0
    }

    fn state_size(&self) -> StateSize {
        StateSize {
            rows: self.waiting.events,
            bytes: self.waiting.bytes,
        }
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        match &self.store {
            None => Ok(Snapshot::default()),
            Some(Store::Memory(queue)) => {
                let batches: Vec<RecordBatch> = queue.iter().cloned().collect();
                let tables = match batches.is_empty() {
                    true => Vec::new(),
                    false => vec![(
                        "waiting".to_string(),
                        concat_batches(&self.schema, &batches)?,
                    )],
                };
                Ok(Snapshot {
                    values: json!({}),
                    tables,
                    keyed: Vec::new(),
                })
            }
            Some(Store::Disk { log, next }) => {
                self.snapshots.push_back(*next);
                while self.snapshots.len() > 2 {
                    self.snapshots.pop_front();
                }
                Ok(Snapshot::new(json!({ "next": next, "end": log.end() })))
            }
        }
    }

    fn checkpoint_complete(&mut self, _checkpoint: u64) -> Result<()> {
        // The completed checkpoint is the latest snapshot or, if another
        // was taken since, the one before: drop what both drained.
        if let (Some(Store::Disk { log, .. }), Some(done)) = (&self.store, self.snapshots.front()) {
            log.release(*done)?;
        }
        Ok(())
    }

    fn restore(&mut self, snapshot: Snapshot) -> Result<()> {
        match &self.config.dir {
            None => {
                let mut queue = VecDeque::new();
                if let Some(waiting) = snapshot.table("waiting") {
                    self.waiting = Waiting {
                        events: waiting.num_rows() as u64,
                        bytes: waiting.get_array_memory_size() as u64,
                    };
                    queue.push_back(waiting.clone());
                }
                self.store = Some(Store::Memory(queue));
                self.count_from_waiting();
            }
            Some(dir) => {
                let number =
                    |key: &str| snapshot.values.get(key).and_then(serde_json::Value::as_u64);
                let (next, end) = (number("next").unwrap_or(0), number("end").unwrap_or(0));
                let log = DurableLog::open_truncated(dir, self.log_options(), end)?;
                log.release(next)?;
                self.waiting = Waiting {
                    events: log.usage().events,
                    bytes: log.usage().bytes,
                };
                self.count_from_waiting();
                self.store = Some(Store::Disk { log, next });
            }
        }
        Ok(())
    }
}
