//! The loop each node instance runs as a tokio task.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

use super::Signals;
use super::channels::{Inputs, Outputs, Received};
use super::metrics::NodeMetrics;
use crate::checkpoint::{Ack, AckKind, Commit, Snapshot};
use crate::dead_letter::{OnError, Rejected};
use arrow::record_batch::RecordBatch;

use crate::component::{
    Collector, Context, InstanceInfo, Operator, Sink, Source, SourceContext, SourceStep,
    SplitChange,
};
use crate::error::{Error, Result};
use crate::event_time::WatermarkGenerator;
use crate::message::{Barrier, EventTime, Message, Watermark};

/// What every task knows about itself.
pub(crate) struct TaskEnv {
    pub(crate) node: Arc<str>,
    pub(crate) instance: InstanceInfo,
    pub(crate) metrics: NodeMetrics,
    pub(crate) signals: Signals,
    /// Set when the run takes checkpoints.
    pub(crate) checkpoint: Option<TaskCheckpoint>,
    /// Where rejected records go.
    pub(crate) dead_letters: DeadLetters,
}

/// A task's way to the dead-letter sink, and its policy.
pub(crate) struct DeadLetters {
    pub(crate) policy: OnError,
    /// The dead-letter sink's channel, if the pipeline has one.
    pub(crate) sender: Option<mpsc::Sender<RecordBatch>>,
    pub(crate) counter: metrics::Counter,
    /// How many rejected records were logged (the first few are).
    pub(crate) logged: std::sync::atomic::AtomicU64,
}

/// How a task takes part in checkpoints.
pub(crate) struct TaskCheckpoint {
    /// The node's index in the pipeline.
    pub(crate) node: usize,
    pub(crate) acks: mpsc::UnboundedSender<Ack>,
    /// The checkpoint the run restored, or 0.
    pub(crate) restored: u64,
}

impl TaskEnv {
    fn context(&self) -> Context {
        Context {
            node: self.node.clone(),
            instance: self.instance,
            watermark: None,
            checkpointing: self.checkpoint.is_some(),
        }
    }

    /// Applies the node's `on_error` policy to records it rejected.
    async fn rejected(&self, rejected: Vec<Rejected>) -> Result<()> {
        if rejected.is_empty() {
            return Ok(());
        }
        let dead_letters = &self.dead_letters;
        if dead_letters.policy == OnError::Fail {
            return Err(Error::Data(rejected[0].to_string()));
        }
        dead_letters.counter.increment(rejected.len() as u64);
        self.metrics.record_rejected(rejected.len() as u64);
        let logged = dead_letters
            .logged
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dropped = dead_letters.policy == OnError::Drop || dead_letters.sender.is_none();
        if logged < 10 {
            let what = match (dropped, dead_letters.sender.is_some()) {
                (false, _) => "rejected records, sent to the dead letters",
                (true, false) if dead_letters.policy == OnError::DeadLetter => {
                    "dropped records that could not be handled (the pipeline has no dead-letter sink)"
                }
                (true, _) => "dropped records that could not be handled",
            };
            tracing::warn!(
                node = %self.node,
                count = rejected.len(),
                first = %rejected[0],
                "{what}"
            );
        }
        if let (OnError::DeadLetter, Some(sender)) = (dead_letters.policy, &dead_letters.sender) {
            let batch = crate::dead_letter::to_batch(&self.node, &rejected, wall_clock_millis())?;
            sender.send(batch).await.map_err(|_| Error::ShuttingDown)?;
        }
        Ok(())
    }

    /// Tells the coordinator what this instance recorded for `checkpoint`.
    fn ack(&self, checkpoint: u64, kind: AckKind) {
        if let Some(taking_part) = &self.checkpoint {
            // The coordinator only goes away when the run is over.
            let _ = taking_part.acks.send(Ack {
                checkpoint,
                node: taking_part.node,
                instance: self.instance.index,
                kind,
            });
        }
    }

    /// Waits for the next input, unless the run is being aborted.
    async fn receive(&self, inputs: &mut Inputs) -> Result<Received> {
        let received = tokio::select! {
            biased;
            _ = self.signals.abort.cancelled() => return Err(Error::ShuttingDown),
            received = inputs.recv() => received?,
        };
        self.metrics.record_queued(inputs.queued());
        Ok(received)
    }
}

/// How a source task follows checkpoints: barriers to emit, and
/// checkpoints completed (with whether it was the run's final one).
pub(crate) struct SourceCheckpoints {
    pub(crate) trigger: watch::Receiver<u64>,
    pub(crate) completed: watch::Receiver<(u64, bool)>,
}

pub(crate) async fn run_source(
    env: TaskEnv,
    mut source: Box<dyn Source>,
    mut outputs: Outputs,
    mut watermarks: Option<WatermarkGenerator>,
    restore: Vec<serde_json::Value>,
    mut checkpoints: Option<SourceCheckpoints>,
) -> Result<()> {
    // One position, or after a change of parallelism those of the earlier
    // instances this one takes.
    for position in restore {
        source.restore(position).await?;
    }
    if env.checkpoint.is_some() {
        // Fail now, not at the first checkpoint, if the source cannot say.
        source.position()?;
    }
    // What this instance recorded in each checkpoint not yet complete.
    let mut recorded: std::collections::VecDeque<(u64, serde_json::Value)> = Default::default();
    source.open(&SourceContext {
        node: env.node.clone(),
        instance: env.instance,
        checkpointing: env.checkpoint.is_some(),
    })?;
    loop {
        if env.signals.abort.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        if env.signals.drain.is_cancelled() {
            break;
        }
        if let Some(checkpoints) = &mut checkpoints {
            if checkpoints.completed.has_changed().unwrap_or(false) {
                let (checkpoint, _) = *checkpoints.completed.borrow_and_update();
                if let Some(position) = take_recorded(&mut recorded, checkpoint) {
                    source.checkpoint_complete(checkpoint, &position).await?;
                }
                env.ack(checkpoint, AckKind::Reported);
            }
            if checkpoints.trigger.has_changed().unwrap_or(false) {
                // Everything emitted so far is before the barrier.
                let checkpoint = *checkpoints.trigger.borrow_and_update();
                let position = source.position()?;
                recorded.push_back((checkpoint, position.clone()));
                env.ack(checkpoint, AckKind::Position(position));
                outputs
                    .send_to_all(Message::Barrier(Barrier { checkpoint }))
                    .await?;
            }
        }
        let started = Instant::now();
        let step = source.next().await?;
        env.rejected(source.take_rejected()).await?;
        if source.wants_checkpoint() {
            env.signals.checkpoint_now.notify_one();
        }
        let now = Instant::now();
        for change in source.take_split_changes() {
            let Some(generator) = watermarks.as_mut() else {
                continue;
            };
            match change {
                SplitChange::Added(split) => generator.add(split, now),
                SplitChange::Released(split) => {
                    if let Some(watermark) = generator.release(split, now) {
                        outputs.send_to_all(Message::Watermark(watermark)).await?;
                    }
                }
                SplitChange::Finished(split) => {
                    if let Some(watermark) = generator.finish(split, now) {
                        outputs.send_to_all(Message::Watermark(watermark)).await?;
                    }
                }
            }
        }
        match step {
            SourceStep::Batch(batch) => {
                env.metrics.record_batch_time(started.elapsed());
                env.metrics.record_out(&batch);
                if let Some(lag) = source.lag() {
                    env.metrics.record_source_lag(lag);
                }
                let watermark = match &mut watermarks {
                    Some(generator) => {
                        generator.observe_split(&batch, source.batch_split(), now)?
                    }
                    None => None,
                };
                outputs.send_batch(0, batch).await?;
                if let Some(watermark) = watermark {
                    env.metrics.record_watermark(watermark);
                    outputs.send_to_all(Message::Watermark(watermark)).await?;
                }
            }
            SourceStep::Idle => {
                if let Some(idle) = watermarks.as_mut().and_then(|g| g.on_idle(now)) {
                    outputs.send_to_all(Message::Watermark(idle)).await?;
                }
            }
            SourceStep::Finished => break,
        }
    }
    // The input is over (or drained): all of event time has passed for it.
    outputs
        .send_to_all(Message::Watermark(Watermark::MAX))
        .await?;
    let ended = match env.checkpoint {
        Some(_) => source.position()?,
        None => serde_json::Value::Null,
    };
    if env.checkpoint.is_some() {
        env.ack(0, AckKind::Ended(ended.clone()));
    }
    outputs.send_to_all(Message::End).await?;
    env.metrics.record_finished();
    if let Some(checkpoints) = &mut checkpoints {
        // Checkpoints still complete (the final one last): the source
        // reports them as it would have while running.
        loop {
            tokio::select! {
                _ = env.signals.abort.cancelled() => return Err(Error::ShuttingDown),
                changed = checkpoints.completed.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let (checkpoint, last) = *checkpoints.completed.borrow_and_update();
                    // A checkpoint whose barrier came after the end holds
                    // the final position.
                    let position = take_recorded(&mut recorded, checkpoint).unwrap_or_else(|| ended.clone());
                    source.checkpoint_complete(checkpoint, &position).await?;
                    env.ack(checkpoint, AckKind::Reported);
                    if last {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The position recorded for `checkpoint`, forgetting it and every
/// earlier one.
fn take_recorded(
    recorded: &mut std::collections::VecDeque<(u64, serde_json::Value)>,
    checkpoint: u64,
) -> Option<serde_json::Value> {
    let mut found = None;
    while recorded.front().is_some_and(|(id, _)| *id <= checkpoint) {
        let (id, position) = recorded.pop_front().expect("checked above");
        if id == checkpoint {
            found = Some(position);
        }
    }
    found
}

pub(crate) async fn run_operator(
    env: TaskEnv,
    mut operator: Box<dyn Operator>,
    mut inputs: Inputs,
    mut outputs: Outputs,
    restore: Vec<Snapshot>,
    mut completed: Option<watch::Receiver<(u64, bool)>>,
) -> Result<()> {
    // One snapshot, or after a change of parallelism one part per earlier
    // instance.
    // An instance that ended holding nothing left no snapshot to take back.
    for snapshot in restore.into_iter().filter(|s| !s.is_empty()) {
        operator.restore(snapshot)?;
    }
    let mut ctx = env.context();
    let mut out = Collector::default();
    // The last watermark sent on: what an operator's hold lets through
    // later is sent only when it rises past it.
    let mut forwarded: Option<EventTime> = None;
    loop {
        if let Some(completed) = &mut completed
            && completed.has_changed().unwrap_or(false)
        {
            let (checkpoint, _) = *completed.borrow_and_update();
            operator.checkpoint_complete(checkpoint)?;
        }
        let received = match operator.next_timer() {
            None => env.receive(&mut inputs).await?,
            Some(at) => {
                let wait =
                    Duration::from_millis(at.saturating_sub(wall_clock_millis()).max(0) as u64);
                tokio::select! {
                    received = env.receive(&mut inputs) => received?,
                    _ = tokio::time::sleep(wait) => {
                        operator.on_timer(wall_clock_millis(), &mut ctx, &mut out).await?;
                        flush(&env, &mut out, &mut outputs).await?;
                        if let Some(released) = released_watermark(operator.as_ref(), &ctx, &mut forwarded) {
                            outputs.send_to_all(released).await?;
                        }
                        env.metrics.record_state(operator.state_size());
                        continue;
                    }
                }
            }
        };
        match received {
            Received::Batch { input, batch } => {
                env.metrics.record_in(&batch);
                let started = Instant::now();
                operator
                    .process_batch(input, batch, &mut ctx, &mut out)
                    .await?;
                env.metrics.record_batch_time(started.elapsed());
                flush(&env, &mut out, &mut outputs).await?;
            }
            Received::Watermark(watermark) => {
                env.metrics.record_watermark(watermark);
                let forwarded = match watermark {
                    Watermark::EventTime(time) => {
                        ctx.watermark = Some(time);
                        operator.on_watermark(time, &mut ctx, &mut out).await?;
                        flush(&env, &mut out, &mut outputs).await?;
                        let time = held_output(operator.as_ref(), time);
                        let time = forwarded.map_or(time, |f| time.max(f));
                        forwarded = Some(time);
                        Watermark::EventTime(time)
                    }
                    Watermark::Idle => Watermark::Idle,
                };
                outputs.send_to_all(Message::Watermark(forwarded)).await?;
            }
            Received::Barrier(barrier) => {
                env.metrics.record_alignment(inputs.last_alignment());
                operator
                    .on_barrier(barrier.checkpoint, &mut ctx, &mut out)
                    .await?;
                flush(&env, &mut out, &mut outputs).await?;
                env.ack(barrier.checkpoint, AckKind::State(operator.snapshot()?));
                outputs.send_to_all(Message::Barrier(barrier)).await?;
            }
            Received::End => {
                operator.on_end(&mut ctx, &mut out).await?;
                flush(&env, &mut out, &mut outputs).await?;
                // Some operators let out what they hold at their own pace.
                while operator.finishing() {
                    let Some(at) = operator.next_timer() else {
                        break;
                    };
                    let wait = at.saturating_sub(wall_clock_millis()).max(0) as u64;
                    tokio::select! {
                        _ = env.signals.abort.cancelled() => return Err(Error::ShuttingDown),
                        _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    }
                    operator
                        .on_timer(wall_clock_millis(), &mut ctx, &mut out)
                        .await?;
                    flush(&env, &mut out, &mut outputs).await?;
                    if let Some(released) =
                        released_watermark(operator.as_ref(), &ctx, &mut forwarded)
                    {
                        outputs.send_to_all(released).await?;
                    }
                    env.metrics.record_state(operator.state_size());
                }
                env.metrics.record_state(operator.state_size());
                // What an operator still holds at the end (a running
                // aggregate's keys) stays in the final checkpoint.
                let ended = match operator.state_size().rows {
                    0 => AckKind::Ended(serde_json::Value::Null),
                    _ => AckKind::EndedWithState(operator.snapshot()?),
                };
                env.ack(0, ended);
                outputs.send_to_all(Message::End).await?;
                env.metrics.record_finished();
                return Ok(());
            }
        }
        env.metrics.record_state(operator.state_size());
    }
}

/// The watermark to send on after input watermark `input`: the
/// operator's output watermark (the end of all time stays the end of all
/// time), held at the watermark of rows it still holds.
fn held_output(operator: &dyn Operator, input: EventTime) -> EventTime {
    let output = match input {
        EventTime::MAX => EventTime::MAX,
        input => operator.output_watermark(input),
    };
    operator
        .watermark_hold()
        .map_or(output, |hold| output.min(hold))
}

/// The watermark an operator's hold no longer keeps back (rows it held
/// have gone out), if it rose past the last one sent on.
fn released_watermark(
    operator: &dyn Operator,
    ctx: &Context,
    forwarded: &mut Option<EventTime>,
) -> Option<Message> {
    let time = held_output(operator, ctx.watermark?);
    if !forwarded.is_some_and(|f| time > f) {
        return None;
    }
    *forwarded = Some(time);
    Some(Message::Watermark(Watermark::EventTime(time)))
}

/// Wall-clock time in milliseconds since the epoch.
pub fn wall_clock_millis() -> EventTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as EventTime)
}

async fn flush(env: &TaskEnv, out: &mut Collector, outputs: &mut Outputs) -> Result<()> {
    env.rejected(out.take_rejected()).await?;
    for (port, batch) in out.drain() {
        match port {
            0 => env.metrics.record_out(&batch),
            named => env.metrics.record_side_output(named, &batch),
        }
        outputs.send_batch(port, batch).await?;
    }
    Ok(())
}

pub(crate) async fn run_sink(
    env: TaskEnv,
    mut sink: Box<dyn Sink>,
    mut inputs: Inputs,
    restore: Option<serde_json::Value>,
    commits: Option<mpsc::UnboundedReceiver<Commit>>,
) -> Result<()> {
    let mut ctx = env.context();
    let result = sink_loop(&env, sink.as_mut(), &mut inputs, restore, commits, &mut ctx).await;
    if result.is_err() {
        // Whatever caused it is the error to report, not a failed cleanup.
        if let Err(error) = sink.abort(&mut ctx).await {
            tracing::warn!(node = %env.node, %error, "could not discard uncommitted output");
        }
    }
    result
}

async fn sink_loop(
    env: &TaskEnv,
    sink: &mut dyn Sink,
    inputs: &mut Inputs,
    restore: Option<serde_json::Value>,
    mut commits: Option<mpsc::UnboundedReceiver<Commit>>,
    ctx: &mut Context,
) -> Result<()> {
    // The end's transaction is numbered after the last checkpoint seen.
    let mut last_checkpoint = env.checkpoint.as_ref().map_or(0, |c| c.restored);
    let from = restore.map(|transaction| (last_checkpoint, transaction));
    sink.recover(from, ctx).await?;
    loop {
        let received = match &mut commits {
            Some(commits) => tokio::select! {
                biased;
                commit = commits.recv() => {
                    let commit = commit.ok_or(Error::ShuttingDown)?;
                    sink.commit(commit.transaction, ctx).await?;
                    if commit.last {
                        // The run is suspended at this checkpoint: what
                        // comes after it is the next run's to write.
                        return Ok(());
                    }
                    continue;
                }
                received = env.receive(inputs) => received?,
            },
            None => env.receive(inputs).await?,
        };
        match received {
            Received::Batch { batch, .. } => {
                env.metrics.record_in(&batch);
                let started = Instant::now();
                let written = (batch.num_rows(), batch.get_array_memory_size());
                write_with_retries(env, sink, batch, ctx).await?;
                env.metrics.record_batch_time(started.elapsed());
                // What a sink writes is its output.
                env.metrics.record_written(written.0, written.1);
            }
            Received::Watermark(watermark) => {
                env.metrics.record_watermark(watermark);
                if let Watermark::EventTime(time) = watermark {
                    ctx.watermark = Some(time);
                    sink.on_watermark(time, ctx).await?;
                }
            }
            Received::Barrier(barrier) => {
                env.metrics.record_alignment(inputs.last_alignment());
                last_checkpoint = barrier.checkpoint;
                let transaction = sink.pre_commit(barrier.checkpoint, ctx).await?;
                // A sink that sends at the barrier learns of refusals then.
                env.rejected(sink.take_rejected()).await?;
                env.ack(barrier.checkpoint, AckKind::Transaction(transaction));
            }
            Received::End => {
                sink.finish(ctx).await?;
                let transaction = sink.pre_commit(last_checkpoint + 1, ctx).await?;
                env.rejected(sink.take_rejected()).await?;
                match &mut commits {
                    // Without checkpoints, the end is the only commit.
                    None => sink.commit(transaction, ctx).await?,
                    // With them, the end is the final checkpoint: commit
                    // once the coordinator has recorded it.
                    Some(commits) => {
                        env.ack(0, AckKind::Ended(transaction));
                        loop {
                            let commit = tokio::select! {
                                _ = env.signals.abort.cancelled() => return Err(Error::ShuttingDown),
                                commit = commits.recv() => commit.ok_or(Error::ShuttingDown)?,
                            };
                            sink.commit(commit.transaction, ctx).await?;
                            if commit.last {
                                break;
                            }
                        }
                    }
                }
                env.metrics.record_finished();
                return Ok(());
            }
        }
    }
}

/// Writes a batch, retrying errors the sink calls retryable with capped
/// exponential backoff and jitter; a batch the sink rejects for good goes
/// to the dead-letter output (by the sink's `on_error` policy).
async fn write_with_retries(
    env: &TaskEnv,
    sink: &mut dyn Sink,
    batch: RecordBatch,
    ctx: &mut Context,
) -> Result<()> {
    const ATTEMPTS: u32 = 8;
    let mut delay = Duration::from_millis(100);
    for attempt in 1.. {
        let error = match sink.write(batch.clone(), ctx).await {
            Ok(()) => return env.rejected(sink.take_rejected()).await,
            Err(error) => error,
        };
        match &error {
            Error::Connector {
                retryable: true, ..
            } if attempt < ATTEMPTS => {
                // Full jitter: a random wait up to the capped delay, so that
                // many writers do not retry in step.
                let jitter =
                    (wall_clock_millis() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) % 1000;
                let wait = delay.mul_f64(0.5 + jitter as f64 / 2000.0);
                tracing::warn!(node = %env.node, attempt, %error, "write failed; retrying in {wait:?}");
                tokio::select! {
                    _ = env.signals.abort.cancelled() => return Err(Error::ShuttingDown),
                    _ = tokio::time::sleep(wait) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Error::Connector {
                retryable: false, ..
            }
            | Error::Data(_) => {
                return env.rejected(Rejected::rows(&batch, &error)?).await;
            }
            _ => return Err(error),
        }
    }
    unreachable!("the loop returns")
}
