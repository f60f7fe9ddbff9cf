//! The dead-letter sink's task: writes what the components reject, and
//! commits it every second and, in a checkpointed run, before each
//! checkpoint is written: so that a record rejected before a checkpoint
//! is committed with it, and one rejected after is rejected again when
//! the input is replayed from it. Dead letters are at least once: a
//! record rejected after a checkpoint and committed before a crash
//! appears again after the restore.

use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, oneshot};

use super::Signals;
use super::tasks::wall_clock_millis;
use crate::component::{Context, InstanceInfo, SinkFactory};
use crate::error::{Error, Result};

const COMMIT_EVERY: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    factory: Arc<dyn SinkFactory>,
    mut rejected: mpsc::Receiver<RecordBatch>,
    status: Arc<super::RunStatus>,
    mut flushes: Option<mpsc::UnboundedReceiver<oneshot::Sender<()>>>,
    signals: Signals,
    task: Option<u32>,
    stage: usize,
) -> Result<()> {
    let in_node = |e: Error| e.in_node("dead_letter");
    // Each stage of a repartitioned pipeline has a task of each number:
    // the stage tells their dead letters apart (`t3-0`, `t3-1`).
    let instance = InstanceInfo {
        task,
        index: stage,
        parallelism: stage + 1,
    };
    let mut sink = factory
        .create(instance, crate::dead_letter::schema())
        .map_err(in_node)?;
    let mut ctx = Context {
        node: Arc::from("dead_letter"),
        instance,
        watermark: None,
        // Committed in pieces, like a sink in a checkpointed run.
        checkpointing: true,
    };
    // Keep what earlier runs committed; discard what they only staged.
    sink.recover(Some((u64::MAX, serde_json::Value::Null)), &mut ctx)
        .await
        .map_err(in_node)?;
    let mut pending = false;
    let mut last = 0;
    let mut ticks = tokio::time::interval(COMMIT_EVERY);
    loop {
        tokio::select! {
            _ = signals.abort.cancelled() => return Err(Error::ShuttingDown),
            batch = rejected.recv() => match batch {
                Some(batch) => {
                    remember(&status, &batch);
                    sink.write(batch, &mut ctx).await.map_err(in_node)?;
                    pending = true;
                }
                // Every component has finished.
                None => break,
            },
            Some(flushed) = next_flush(&mut flushes) => {
                // Everything sent so far is in the channel.
                while let Ok(batch) = rejected.try_recv() {
                    remember(&status, &batch);
                    sink.write(batch, &mut ctx).await.map_err(in_node)?;
                    pending = true;
                }
                if pending {
                    commit(sink.as_mut(), &mut ctx, &mut last).await.map_err(in_node)?;
                    pending = false;
                }
                let _ = flushed.send(());
            }
            _ = ticks.tick() => {
                if pending {
                    commit(sink.as_mut(), &mut ctx, &mut last).await.map_err(in_node)?;
                    pending = false;
                }
            }
        }
    }
    sink.finish(&mut ctx).await.map_err(in_node)?;
    commit(sink.as_mut(), &mut ctx, &mut last)
        .await
        .map_err(in_node)?;
    // The final checkpoint may still ask: everything is committed.
    while let Some(flushed) = next_flush(&mut flushes).await {
        let _ = flushed.send(());
    }
    Ok(())
}

/// Keeps the rejected records in the run's status, for the console.
fn remember(status: &super::RunStatus, batch: &RecordBatch) {
    use arrow::array::{Array, AsArray};
    let text = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
    };
    let (Some(component), Some(error), Some(record)) =
        (text("component"), text("error"), text("record"))
    else {
        return;
    };
    for row in 0..batch.num_rows() {
        let value = |column: &arrow::array::StringArray| match column.is_valid(row) {
            true => column.value(row).to_string(),
            false => String::new(),
        };
        status.dead_lettered(&value(component), &value(error), &value(record));
    }
}

/// The next request to commit, or `None` once none can come.
async fn next_flush(
    flushes: &mut Option<mpsc::UnboundedReceiver<oneshot::Sender<()>>>,
) -> Option<oneshot::Sender<()>> {
    match flushes {
        Some(flushes) => flushes.recv().await,
        None => None,
    }
}

/// Publishes what was written so far, numbered by the time, and after the
/// number before: two commits in one millisecond must not share a number
/// (a file sink names its files by it, and the second would replace the
/// first).
async fn commit(
    sink: &mut dyn crate::component::Sink,
    ctx: &mut Context,
    last: &mut u64,
) -> Result<()> {
    *last = (wall_clock_millis() as u64).max(*last + 1);
    let transaction = sink.pre_commit(*last, ctx).await?;
    sink.commit(transaction, ctx).await
}
