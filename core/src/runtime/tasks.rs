//! The loop each node instance runs as a tokio task.

use std::sync::Arc;
use std::time::Instant;

use super::Signals;
use super::channels::{Inputs, Outputs, Received};
use super::stats::NodeStats;
use crate::component::{Collector, Context, InstanceInfo, Operator, Sink, Source, SourceStep};
use crate::error::{Error, Result};
use crate::event_time::WatermarkGenerator;
use crate::message::{Message, Watermark};

/// What every task knows about itself.
pub(crate) struct TaskEnv {
    pub(crate) node: Arc<str>,
    pub(crate) instance: InstanceInfo,
    pub(crate) stats: Arc<NodeStats>,
    pub(crate) signals: Signals,
}

impl TaskEnv {
    fn context(&self) -> Context {
        Context {
            node: self.node.clone(),
            instance: self.instance,
            watermark: None,
        }
    }
}

pub(crate) async fn run_source(
    env: TaskEnv,
    mut source: Box<dyn Source>,
    mut outputs: Outputs,
    mut watermarks: Option<WatermarkGenerator>,
) -> Result<()> {
    loop {
        if env.signals.abort.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        if env.signals.drain.is_cancelled() {
            break;
        }
        match source.next().await? {
            SourceStep::Batch(batch) => {
                env.stats.record_out(&batch);
                let watermark = match &mut watermarks {
                    Some(generator) => generator.observe(&batch)?,
                    None => None,
                };
                outputs.send_batch(0, batch).await?;
                if let Some(watermark) = watermark {
                    outputs.send_to_all(Message::Watermark(watermark)).await?;
                }
            }
            SourceStep::Idle => {
                if let Some(idle) = watermarks.as_mut().and_then(|g| g.on_idle(Instant::now())) {
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
    outputs.send_to_all(Message::End).await?;
    env.stats.record_finished();
    Ok(())
}

pub(crate) async fn run_operator(
    env: TaskEnv,
    mut operator: Box<dyn Operator>,
    mut inputs: Inputs,
    mut outputs: Outputs,
) -> Result<()> {
    let mut ctx = env.context();
    let mut out = Collector::default();
    loop {
        let received = tokio::select! {
            biased;
            _ = env.signals.abort.cancelled() => return Err(Error::ShuttingDown),
            received = inputs.recv() => received?,
        };
        match received {
            Received::Batch { input, batch } => {
                env.stats.record_in(&batch);
                operator
                    .process_batch(input, batch, &mut ctx, &mut out)
                    .await?;
                flush(&env, &mut out, &mut outputs).await?;
            }
            Received::Watermark(watermark) => {
                if let Watermark::EventTime(time) = watermark {
                    ctx.watermark = Some(time);
                    operator.on_watermark(time, &mut ctx, &mut out).await?;
                    flush(&env, &mut out, &mut outputs).await?;
                }
                outputs.send_to_all(Message::Watermark(watermark)).await?;
            }
            Received::End => {
                operator.on_end(&mut ctx, &mut out).await?;
                flush(&env, &mut out, &mut outputs).await?;
                outputs.send_to_all(Message::End).await?;
                env.stats.record_finished();
                return Ok(());
            }
        }
    }
}

async fn flush(env: &TaskEnv, out: &mut Collector, outputs: &mut Outputs) -> Result<()> {
    for (port, batch) in out.drain() {
        env.stats.record_out(&batch);
        outputs.send_batch(port, batch).await?;
    }
    Ok(())
}

pub(crate) async fn run_sink(
    env: TaskEnv,
    mut sink: Box<dyn Sink>,
    mut inputs: Inputs,
) -> Result<()> {
    let mut ctx = env.context();
    loop {
        let received = tokio::select! {
            biased;
            _ = env.signals.abort.cancelled() => return Err(Error::ShuttingDown),
            received = inputs.recv() => received?,
        };
        match received {
            Received::Batch { batch, .. } => {
                env.stats.record_in(&batch);
                sink.write(batch, &mut ctx).await?;
            }
            Received::Watermark(Watermark::EventTime(time)) => {
                ctx.watermark = Some(time);
                sink.on_watermark(time, &mut ctx).await?;
            }
            Received::Watermark(Watermark::Idle) => {}
            Received::End => {
                sink.finish(&mut ctx).await?;
                env.stats.record_finished();
                return Ok(());
            }
        }
    }
}
