//! The three kinds of component and the factories that create them.
//!
//! A graph holds *factories*: they check their inputs and declare output
//! schemas when the graph is built, before anything runs, and create one
//! runnable instance per parallel slot when it starts. The runnable traits
//! ([`Source`], [`Operator`], [`Sink`]) each have one required method; the
//! rest is defaulted, so a simple component stays small.

use std::ops::RangeInclusive;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use crate::checkpoint::Snapshot;
use crate::dead_letter::Rejected;
use crate::error::{Error, Result};
use crate::event_time::EventTimeConfig;
use crate::message::EventTime;

/// Which of a node's parallel instances this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceInfo {
    /// Zero-based index of this instance.
    pub index: usize,
    /// How many instances the node has.
    pub parallelism: usize,
    /// In a pipeline run as tasks ([`TaskGroup`]): the task this instance
    /// works for, the source partition it reads.
    pub task: Option<u32>,
}

impl InstanceInfo {
    /// The only instance of a node with parallelism 1.
    pub const SINGLE: InstanceInfo = InstanceInfo {
        index: 0,
        parallelism: 1,
        task: None,
    };

    /// What the instance names the things it alone writes (a sink's
    /// files, a transactional id): its index, and its task before it, as
    /// every task has an instance 0: `3`, or `t5-3` in task 5.
    pub fn label(&self) -> String {
        match self.task {
            Some(task) => format!("t{task}-{}", self.index),
            None => self.index.to_string(),
        }
    }
}

/// What a source returns from [`Source::next`].
#[derive(Debug)]
pub enum SourceStep {
    /// New rows.
    Batch(RecordBatch),
    /// Nothing arrived for now; the runtime calls again.
    Idle,
    /// A bounded source has produced everything it will.
    Finished,
}

/// A running source instance: produces batches in its factory's schema.
///
/// `next` should return within about 100 ms (with [`SourceStep::Idle`] when
/// nothing arrived), because the runtime checks for shutdown between calls.
#[async_trait]
pub trait Source: Send + 'static {
    /// Produces the next batch.
    async fn next(&mut self) -> Result<SourceStep>;

    /// Records that could not be decoded since the last call (they are
    /// handled by the source's `on_error` policy). Called after every
    /// [`Source::next`].
    fn take_rejected(&mut self) -> Vec<Rejected> {
        Vec::new()
    }

    /// Events this instance knows of but has not read yet, if it can tell
    /// (a bounded source's remainder, a broker's consumer lag).
    fn lag(&self) -> Option<u64> {
        None
    }

    /// Where the instance is in its input: everything emitted so far and
    /// nothing after. Checkpoints record it; [`Source::restore`] resumes
    /// from it. A source that cannot say cannot be checkpointed.
    fn position(&self) -> Result<serde_json::Value> {
        Err(Error::Checkpoint(
            "this source cannot record a read position, so the pipeline cannot be checkpointed"
                .into(),
        ))
    }

    /// Continues after `position`, which [`Source::position`] returned
    /// (in this process or an earlier one), before the first `next`.
    async fn restore(&mut self, _position: serde_json::Value) -> Result<()> {
        Err(Error::Checkpoint(
            "this source cannot resume from a checkpoint".into(),
        ))
    }

    /// Called once before the first `next` (after any restore).
    fn open(&mut self, _ctx: &SourceContext) -> Result<()> {
        Ok(())
    }

    /// Checkpoint `checkpoint` is complete: durable, with every instance's
    /// part in it. A source that reports progress upstream (a Kafka
    /// consumer group's offsets) does it here and never earlier, since
    /// until now the checkpoint could still be lost and its records read
    /// again. `position` is what this instance recorded in it. The final
    /// checkpoint of a run that ends is reported after the source has
    /// finished.
    async fn checkpoint_complete(
        &mut self,
        _checkpoint: u64,
        _position: &serde_json::Value,
    ) -> Result<()> {
        Ok(())
    }

    /// Whether the source needs a checkpoint taken soon (a Kafka
    /// rebalance waits for one before it hands partitions over). Checked
    /// after every `next`.
    fn wants_checkpoint(&mut self) -> bool {
        false
    }

    /// The split (a Kafka partition, say) the batch `next` last returned
    /// came from, for a source whose splits advance in event time
    /// independently: the watermark is then the minimum over the splits.
    fn batch_split(&self) -> Option<u64> {
        None
    }

    /// Splits this instance started or stopped reading since the last
    /// call (partitions assigned to it, or handed to another consumer). A
    /// new split holds the watermark back until its first event; a
    /// released one no longer does.
    fn take_split_changes(&mut self) -> Vec<SplitChange> {
        Vec::new()
    }
}

/// A split a source started or stopped reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitChange {
    /// Now read by this instance.
    Added(u64),
    /// No longer read by this instance (another may read it now, or again
    /// soon: a rebalance).
    Released(u64),
    /// Read to its end: it brings no more events.
    Finished(u64),
}

/// What a source instance is told before it starts.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// Name of the node in the graph.
    pub node: Arc<str>,
    /// Which parallel instance this is.
    pub instance: InstanceInfo,
    /// Whether the run takes checkpoints: a source then reports progress
    /// upstream only in [`Source::checkpoint_complete`].
    pub checkpointing: bool,
}

/// Declares a source in a graph and creates its instances.
pub trait SourceFactory: Send + Sync + 'static {
    /// The schema of every batch the source produces.
    fn schema(&self) -> SchemaRef;

    /// Creates the instance `instance.index` of `instance.parallelism`.
    /// Instances must split the input between them, not each read all of it.
    fn create(&self, instance: InstanceInfo) -> Result<Box<dyn Source>>;

    /// The event-time column this source suggests when the pipeline names
    /// none (the Nexmark generator's `date_time`, say).
    fn default_event_time(&self) -> Option<EventTimeConfig> {
        None
    }

    /// Whether the source's first records can be read without a network
    /// (a local file, a generator), so that `flumen validate` checks its
    /// declared schema against a sample of the data ([`crate::sample`]).
    fn samples_locally(&self) -> bool {
        false
    }

    /// How many events a bounded source will produce in all, when known up
    /// front. Used for progress reporting only.
    fn expected_events(&self) -> Option<u64> {
        None
    }

    /// The largest parallelism the source supports.
    fn max_parallelism(&self) -> Option<usize> {
        None
    }

    /// Whether a restore at another parallelism may hand the earlier
    /// instances' positions to any of the new instances, several to one
    /// ([`Source::restore`] called once for each): true for a source whose
    /// instances share one consumer of the input (a Kafka consumer
    /// group), false for one whose instances split the input by index.
    fn positions_merge(&self) -> bool {
        false
    }

    /// Whether the run that took checkpoint `checkpoint` reported it
    /// upstream ([`Source::checkpoint_complete`]) before it stopped, given
    /// the positions its instances recorded. A checkpoint written but not
    /// reported (the process died in between) may since have been
    /// overtaken: another consumer group member can have read the same
    /// input from the previous checkpoint's offsets. The run then restores
    /// the checkpoint before it instead, whose output nobody else repeats.
    fn reported_upstream(
        &self,
        _checkpoint: u64,
        _positions: &[serde_json::Value],
    ) -> Result<bool> {
        Ok(true)
    }

    /// For a source whose partitions run as tasks (`tasks: true` on Kafka
    /// or Kinesis):
    /// joins the group that shares the partitions between processes. The
    /// pipeline then runs once per partition this process is given, each
    /// run with its own checkpoints, which follow the partition to
    /// whichever process reads it next. `None`: the pipeline runs whole.
    fn task_group(&self) -> Result<Option<Box<dyn TaskGroup>>> {
        Ok(None)
    }

    /// Whether [`SourceFactory::task_group`] would join a group: asked
    /// first, so that a pipeline that cannot run as tasks is refused
    /// before anything connects.
    fn runs_as_tasks(&self) -> bool {
        false
    }
}

/// The processes sharing a source's partitions, as this process sees them:
/// the partitions are its tasks, each a run of the whole pipeline over one
/// partition (as in Kafka Streams).
#[async_trait]
pub trait TaskGroup: Send {
    /// Every task (partition) there is, as far as this process knows:
    /// fixed for a Kafka topic; for a Kinesis stream, its shards, which a
    /// reshard adds to. Empty until the group has found them.
    fn tasks(&self) -> Vec<u32>;

    /// The next change of this process's tasks. `None`: the group has
    /// closed.
    async fn next(&mut self) -> Result<Option<TaskChange>>;

    /// Task `task` ran here to the end of its input, its source having
    /// recorded `positions` (one per instance) in its final checkpoint. A
    /// group whose partitions can end (a Kinesis shard closed by a
    /// reshard) records it, so that the partitions after it can be read.
    async fn finished(&mut self, _task: u32, _positions: &[serde_json::Value]) -> Result<()> {
        Ok(())
    }

    /// Leaves the group, handing every task over.
    async fn leave(&mut self) -> Result<()>;
}

/// A change of the tasks this process runs.
#[derive(Debug)]
pub enum TaskChange {
    /// Start these tasks, each from its latest complete checkpoint.
    Assigned(Vec<u32>),
    /// Stop these tasks with a checkpoint (suspend them) and answer on
    /// `done`: the group hands them over once it has been told.
    Revoked {
        /// The tasks to suspend.
        tasks: Vec<u32>,
        /// Told once they are all suspended.
        done: std::sync::mpsc::Sender<()>,
    },
    /// These tasks were taken away without asking (this process lost its
    /// place in the group): stop them at once, without a checkpoint, as
    /// another process may already run them.
    Lost(Vec<u32>),
}

/// Carries the rows of one edge between processes through a broker, as
/// Kafka Streams' repartition topics do, for a pipeline run as tasks that
/// groups by a key other than its source's partitioning.
///
/// The pipeline is cut at the edge into two stages, each run as tasks.
/// The first stage's tasks (one per source partition) write the edge's
/// rows with [`Repartition::writer`], each row to the partition its keys
/// hash to, so that each row is read once however often a restarted task
/// writes it (the first stage is stateless, and replays in order). The
/// second stage's
/// tasks (one per partition of the carrier) read them back with
/// [`Repartition::reader`], whose group hands those partitions out, so
/// every key's rows and state meet in one task.
#[async_trait]
pub trait Repartition: std::fmt::Debug + Send + Sync + 'static {
    /// What carries the rows, for logs: `kafka topic clicks-by-page`.
    fn describe(&self) -> String;

    /// A name for the folder of the checkpoint store the reading stage's
    /// tasks keep their checkpoints in: `repartition-clicks-by-page`.
    fn folder(&self) -> String;

    /// Makes the carrier ready (creates the topic), before either stage
    /// starts; a carrier that exists but does not fit is an error.
    async fn prepare(&self) -> Result<()>;

    /// The sink writing the edge's rows (in `schema`), each to the
    /// partition its `keys` (column indices) hash to. `producers` is how
    /// many writer instances there are over all tasks: the reader waits
    /// for every one to end before it ends.
    fn writer(
        &self,
        schema: &SchemaRef,
        keys: &[usize],
        producers: u32,
    ) -> Result<Arc<dyn SinkFactory>>;

    /// The source reading the rows back, run as tasks: one per partition
    /// of the carrier.
    fn reader(&self, schema: &SchemaRef) -> Result<Arc<dyn SourceFactory>>;
}

/// What an operator instance knows about where it runs.
#[derive(Debug, Clone)]
pub struct Context {
    /// Name of the node in the graph.
    pub node: Arc<str>,
    /// Which parallel instance this is.
    pub instance: InstanceInfo,
    /// The current watermark (minimum over inputs), if any has arrived.
    pub watermark: Option<EventTime>,
    /// Whether the run takes checkpoints: sinks then commit once per
    /// checkpoint rather than once at the end.
    pub checkpointing: bool,
}

/// Collects what an operator emits while it handles one message; the
/// runtime sends it downstream afterwards.
#[derive(Debug, Default)]
pub struct Collector {
    batches: Vec<(usize, RecordBatch)>,
    rejected: Vec<Rejected>,
}

impl Collector {
    /// Emits a batch on the main output. Empty batches are skipped.
    pub fn emit(&mut self, batch: RecordBatch) {
        self.emit_to(0, batch);
    }

    /// Emits a batch on output `port`: 0 is the main output, 1.. are the
    /// named outputs in the order [`OperatorFactory::named_outputs`] lists
    /// them.
    pub fn emit_to(&mut self, port: usize, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.batches.push((port, batch));
        }
    }

    /// Takes everything emitted so far, with its port.
    pub fn drain(&mut self) -> std::vec::Drain<'_, (usize, RecordBatch)> {
        self.batches.drain(..)
    }

    /// Rejects `rows`, which the operator could not handle, with `error`:
    /// they go where the operator's `on_error` policy says.
    pub fn reject(&mut self, rows: &RecordBatch, error: &dyn std::fmt::Display) -> Result<()> {
        self.rejected.extend(Rejected::rows(rows, error)?);
        Ok(())
    }

    /// Takes the records rejected so far.
    pub fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }
}

/// A running operator instance: a step between inputs and outputs.
///
/// # Example
///
/// An operator that keeps every other batch:
///
/// ```
/// use flumen_core::prelude::*;
///
/// struct EveryOther { keep: bool }
///
/// #[async_trait]
/// impl Operator for EveryOther {
///     async fn process_batch(&mut self, _input: usize, batch: RecordBatch,
///                            _ctx: &mut Context, out: &mut Collector) -> Result<()> {
///         if self.keep { out.emit(batch) }
///         self.keep = !self.keep;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Operator: Send + 'static {
    /// Handles a batch that arrived on input `input` (the index in the
    /// node's input list).
    async fn process_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()>;

    /// A checkpoint's barrier has arrived on every input. What the
    /// operator emits here goes downstream ahead of the barrier, so it
    /// belongs to the checkpoint; [`Operator::snapshot`] follows. (A view
    /// that sends its changes once per checkpoint sends them here.)
    async fn on_barrier(
        &mut self,
        _checkpoint: u64,
        _ctx: &mut Context,
        _out: &mut Collector,
    ) -> Result<()> {
        Ok(())
    }

    /// Called when the watermark (minimum over all inputs) advances. The
    /// runtime forwards the watermark downstream after this returns.
    async fn on_watermark(
        &mut self,
        _watermark: EventTime,
        _ctx: &mut Context,
        _out: &mut Collector,
    ) -> Result<()> {
        Ok(())
    }

    /// Called once when every input has ended, before end-of-stream is sent
    /// downstream.
    async fn on_end(&mut self, _ctx: &mut Context, _out: &mut Collector) -> Result<()> {
        Ok(())
    }

    /// The watermark to forward downstream once `input` has been handled.
    /// An operator that emits results for a time only after the watermark
    /// has passed it by some lateness holds its output watermark back by as
    /// much, so that its output is never late downstream.
    fn output_watermark(&self, input: EventTime) -> EventTime {
        input
    }

    /// While the operator holds rows it has not let out yet (a buffer
    /// draining at its own pace): the watermark the oldest of them arrived
    /// under. The output watermark stays at or below it, so that those
    /// rows are not late downstream when they do go out; the runtime
    /// forwards the watermark on as the hold rises (after
    /// [`Operator::on_timer`] too).
    fn watermark_hold(&self) -> Option<EventTime> {
        None
    }

    /// When the operator next wants [`Operator::on_timer`] called, in wall
    /// clock milliseconds since the epoch (processing-time windows).
    fn next_timer(&self) -> Option<EventTime> {
        None
    }

    /// Called once the wall clock has reached [`Operator::next_timer`], with
    /// the current wall-clock time.
    async fn on_timer(
        &mut self,
        _now: EventTime,
        _ctx: &mut Context,
        _out: &mut Collector,
    ) -> Result<()> {
        Ok(())
    }

    /// After [`Operator::on_end`]: whether the operator still has rows to
    /// let out on its timers (a rate-limited buffer draining). The runtime
    /// keeps calling [`Operator::on_timer`] until this is false.
    fn finishing(&self) -> bool {
        false
    }

    /// How much state the operator holds now (buffered rows, keys, window
    /// partials). Reported as metrics; zero once the operator has emitted
    /// everything it can.
    fn state_size(&self) -> StateSize {
        StateSize::default()
    }

    /// The operator's state, for a checkpoint: everything needed to carry
    /// on as if nothing happened. A stateless operator has nothing to give.
    fn snapshot(&mut self) -> Result<Snapshot> {
        Ok(Snapshot::default())
    }

    /// A checkpoint is complete: durable, with every instance's part in
    /// it. An operator that keeps data outside its snapshots (a buffer on
    /// disk) may now forget what that checkpoint no longer needs. Called
    /// between messages, at most once per checkpoint, possibly after later
    /// snapshots were taken.
    fn checkpoint_complete(&mut self, _checkpoint: u64) -> Result<()> {
        Ok(())
    }

    /// Takes back a state [`Operator::snapshot`] gave, before any input.
    fn restore(&mut self, snapshot: Snapshot) -> Result<()> {
        if snapshot.is_empty() {
            Ok(())
        } else {
            Err(Error::internal(
                "the checkpoint holds state for an operator that keeps none",
            ))
        }
    }
}

/// How an operator's checkpointed state follows a change of parallelism:
/// see [`OperatorFactory::state_rescale`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateRescale {
    /// Its state is tied to the instance that wrote it: a checkpoint
    /// restores only at the same parallelism.
    PerInstance,
    /// Its keyed state is split by key group and merged again on restore.
    ByKeyGroup,
}

/// The state an operator instance retains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSize {
    /// Rows (or keys, or groups) retained.
    pub rows: u64,
    /// Approximate memory they take, in bytes.
    pub bytes: u64,
}

/// Declares an operator in a graph: checks its inputs, declares its output
/// schemas, and creates its instances.
pub trait OperatorFactory: Send + Sync + 'static {
    /// How many inputs the operator takes.
    fn input_count(&self) -> RangeInclusive<usize> {
        1..=1
    }

    /// Whether every input must have the same schema (a union). The graph
    /// checks it and names the inputs that differ.
    fn same_input_schemas(&self) -> bool {
        false
    }

    /// Checks the input schemas and returns the schema of the main output.
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef>;

    /// The partitioning input `input` needs when the operator runs as
    /// several instances: typically hashing on the keys it groups or joins
    /// by, so that all rows of a key meet in one instance. The graph uses it
    /// when the pipeline gives none, and rejects one that would split a key.
    fn input_partitioning(&self, _input: usize) -> Option<Vec<String>> {
        None
    }

    /// The largest parallelism the operator supports: 1 for one that must
    /// see every row in one place (a ranking or aggregate over whole
    /// windows, with no key to split them by).
    fn max_parallelism(&self) -> Option<usize> {
        None
    }

    /// The version of the state format [`Operator::snapshot`] writes. Raise
    /// it when the format changes in a way [`Operator::restore`] cannot
    /// read: a checkpoint of another version is then refused, naming the
    /// component, instead of misread.
    fn state_version(&self) -> u32 {
        1
    }

    /// What the operator's state is made of, in words a message can show:
    /// its keys, its aggregates, the columns of the rows it keeps. A
    /// checkpoint records it, and a restore into an operator that
    /// describes its state differently (a window whose `aggregates`
    /// changed) is refused, naming both. `None`: nothing to compare.
    fn state_description(&self, _inputs: &[SchemaRef]) -> Option<String> {
        None
    }

    /// How the operator's state follows a change of parallelism.
    ///
    /// [`StateRescale::ByKeyGroup`]: its snapshots mark the tables whose
    /// rows belong to keys ([`Snapshot::with_keyed_table`]); each new
    /// instance then gets the rows of the key groups it owns from every
    /// earlier instance, and the other tables of some of them, through one
    /// [`Operator::restore`] call per earlier instance. Such a restore must
    /// add to what the instance already holds.
    fn state_rescale(&self) -> StateRescale {
        StateRescale::PerInstance
    }

    /// Extra named outputs (usable as `node.name` in inputs), with their
    /// schemas. The main output is port 0; these are ports 1.. in order.
    fn named_outputs(&self, _inputs: &[SchemaRef]) -> Result<Vec<(String, SchemaRef)>> {
        Ok(Vec::new())
    }

    /// Creates instance `instance.index` of `instance.parallelism`.
    fn create(&self, instance: InstanceInfo, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>>;
}

/// A running sink instance: writes batches out of the pipeline.
#[async_trait]
pub trait Sink: Send + 'static {
    /// Writes one batch.
    async fn write(&mut self, batch: RecordBatch, ctx: &mut Context) -> Result<()>;

    /// Rows of the last batch that the destination refused for good while
    /// the rest was written (a 4xx answer to one request of several). They
    /// go where the sink's `on_error` policy says. Called after every
    /// successful [`Sink::write`].
    fn take_rejected(&mut self) -> Vec<Rejected> {
        Vec::new()
    }

    /// Called when the watermark advances.
    async fn on_watermark(&mut self, _watermark: EventTime, _ctx: &mut Context) -> Result<()> {
        Ok(())
    }

    /// Called once at end of stream: flush and close. The runtime then
    /// pre-commits and commits what remains.
    async fn finish(&mut self, _ctx: &mut Context) -> Result<()> {
        Ok(())
    }

    /// First phase of a commit, at a checkpoint (or at the end): make
    /// everything written so far durable but not yet visible, and return
    /// what [`Sink::commit`] needs to publish it. A sink that cannot hold
    /// data back just flushes here (at-least-once delivery).
    async fn pre_commit(
        &mut self,
        _checkpoint: u64,
        _ctx: &mut Context,
    ) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    /// Second phase, once the checkpoint is complete: make the transaction
    /// visible. It may be called again for the same transaction after a
    /// crash, so it must be idempotent.
    async fn commit(&mut self, _transaction: serde_json::Value, _ctx: &mut Context) -> Result<()> {
        Ok(())
    }

    /// The run is stopping without finishing (a failure elsewhere, or an
    /// abort): discard what was written since the last pre-commit. What
    /// was pre-committed stays, for recovery to commit or discard.
    async fn abort(&mut self, _ctx: &mut Context) -> Result<()> {
        Ok(())
    }

    /// Called before anything is written. `from` is the checkpoint the run
    /// restores and what this instance pre-committed in it (commit it
    /// again), or `None` on a fresh start. Anything staged and not in it
    /// belongs to a checkpoint that never completed: discard it.
    async fn recover(
        &mut self,
        _from: Option<(u64, serde_json::Value)>,
        _ctx: &mut Context,
    ) -> Result<()> {
        Ok(())
    }
}

/// Declares a sink in a graph and creates its instances.
pub trait SinkFactory: Send + Sync + 'static {
    /// Checks that the sink can write batches of this schema.
    fn check_input(&self, _schema: &SchemaRef) -> Result<()> {
        Ok(())
    }

    /// Creates instance `instance.index` of `instance.parallelism`.
    fn create(&self, instance: InstanceInfo, schema: SchemaRef) -> Result<Box<dyn Sink>>;

    /// The largest parallelism the sink supports (1 for stdout, say).
    fn max_parallelism(&self) -> Option<usize> {
        None
    }

    /// Whether output becomes visible only on commit, so that with
    /// checkpoints every row is delivered exactly once. Otherwise a crash
    /// can deliver some rows again (at-least-once).
    fn exactly_once(&self) -> bool {
        false
    }
}
