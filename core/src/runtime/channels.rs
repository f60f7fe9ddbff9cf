//! The two ends of a node instance's edges: fair reception from every
//! upstream channel, and routing of output batches to downstream instances.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::Poll;

use arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::message::{Barrier, Message, Watermark};
use crate::partition::{HashPartitioner, KeyGroups};
use crate::watermark::WatermarkTracker;

/// One upstream channel of a node instance.
pub(crate) struct InputChannel {
    pub(crate) rx: mpsc::Receiver<Message>,
    /// Which of the node's declared inputs this channel belongs to.
    pub(crate) input: usize,
}

/// Everything a node instance receives: one bounded channel per upstream
/// instance, read fairly, with their watermarks combined.
pub(crate) struct Inputs {
    channels: Vec<InputChannel>,
    ended: Vec<bool>,
    /// Channels that delivered the barrier being aligned: they are not
    /// read until it has arrived on every channel.
    blocked: Vec<bool>,
    aligning: Option<Barrier>,
    /// When the barrier being aligned first arrived, and how long the
    /// last one waited for the rest of the channels.
    aligning_since: Option<std::time::Instant>,
    last_alignment: std::time::Duration,
    /// Things to hand over before reading again.
    pending: VecDeque<Received>,
    next: usize,
    watermarks: WatermarkTracker,
}

/// What [`Inputs::recv`] hands to the node.
pub(crate) enum Received {
    /// A batch on declared input `input`.
    Batch { input: usize, batch: RecordBatch },
    /// The combined watermark changed.
    Watermark(Watermark),
    /// A checkpoint barrier has arrived on every channel still open.
    Barrier(Barrier),
    /// Every channel has ended.
    End,
}

impl Inputs {
    pub(crate) fn new(channels: Vec<InputChannel>) -> Self {
        let n = channels.len();
        Inputs {
            channels,
            ended: vec![false; n],
            blocked: vec![false; n],
            aligning: None,
            aligning_since: None,
            last_alignment: std::time::Duration::ZERO,
            pending: VecDeque::new(),
            next: 0,
            watermarks: WatermarkTracker::new(n),
        }
    }

    /// Waits for the next thing the node must handle. Watermarks that do not
    /// move the combined watermark, and ends of single channels, are
    /// absorbed here.
    ///
    /// Barriers are aligned: once barrier *n* arrives on a channel, that
    /// channel is not read again until *n* has arrived on all the others,
    /// so that what the node has seen when it takes its snapshot is exactly
    /// what came before the barrier on every input.
    pub(crate) async fn recv(&mut self) -> Result<Received> {
        if let Some(pending) = self.pending.pop_front() {
            return Ok(pending);
        }
        loop {
            let (channel, message) = self.recv_raw().await?;
            match message {
                Message::Batch(batch) => {
                    return Ok(Received::Batch {
                        input: self.channels[channel].input,
                        batch,
                    });
                }
                Message::Watermark(watermark) => {
                    if let Some(combined) = self.watermarks.update(channel, watermark) {
                        return Ok(Received::Watermark(combined));
                    }
                }
                Message::End => {
                    self.ended[channel] = true;
                    let combined = self.watermarks.end(channel);
                    // An ended channel no longer holds an alignment back.
                    if let Some(barrier) = self.aligned() {
                        self.pending.extend(combined.map(Received::Watermark));
                        return Ok(Received::Barrier(barrier));
                    }
                    if self.watermarks.all_ended() {
                        return Ok(Received::End);
                    }
                    if let Some(combined) = combined {
                        return Ok(Received::Watermark(combined));
                    }
                }
                Message::Barrier(barrier) => {
                    match self.aligning {
                        Some(aligning) if aligning != barrier => {
                            return Err(Error::internal(format!(
                                "checkpoint barrier {} arrived while aligning {}",
                                barrier.checkpoint, aligning.checkpoint
                            )));
                        }
                        Some(_) => {}
                        None => {
                            self.aligning = Some(barrier);
                            self.aligning_since = Some(std::time::Instant::now());
                        }
                    }
                    self.blocked[channel] = true;
                    if let Some(barrier) = self.aligned() {
                        return Ok(Received::Barrier(barrier));
                    }
                }
            }
        }
    }

    /// The barrier being aligned, once every open channel has delivered
    /// it; unblocks the channels.
    fn aligned(&mut self) -> Option<Barrier> {
        let barrier = self.aligning?;
        let complete = (0..self.channels.len()).all(|i| self.blocked[i] || self.ended[i]);
        if !complete {
            return None;
        }
        self.blocked.fill(false);
        self.aligning = None;
        self.last_alignment = self
            .aligning_since
            .take()
            .map_or(std::time::Duration::ZERO, |since| since.elapsed());
        Some(barrier)
    }

    /// How long the last aligned barrier waited, from its arrival on the
    /// first channel to its arrival on the last.
    pub(crate) fn last_alignment(&self) -> std::time::Duration {
        self.last_alignment
    }

    /// Messages waiting in this instance's channels.
    pub(crate) fn queued(&self) -> usize {
        self.channels.iter().map(|c| c.rx.len()).sum()
    }

    /// Receives from the channels in turn, starting after the one that
    /// delivered last, so that no upstream instance starves the others.
    async fn recv_raw(&mut self) -> Result<(usize, Message)> {
        poll_fn(|cx| {
            let n = self.channels.len();
            for step in 0..n {
                let i = (self.next + step) % n;
                if self.ended[i] || self.blocked[i] {
                    continue;
                }
                match self.channels[i].rx.poll_recv(cx) {
                    Poll::Ready(Some(message)) => {
                        self.next = (i + 1) % n;
                        return Poll::Ready(Ok((i, message)));
                    }
                    // The sender went away without saying End: it failed.
                    Poll::Ready(None) => return Poll::Ready(Err(Error::ShuttingDown)),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// How one edge spreads batches over the consuming instances.
enum Route {
    /// One sender: the instance with the same index.
    Forward,
    RoundRobin {
        next: usize,
    },
    Broadcast,
    Hash(HashPartitioner),
}

/// The producing end of one edge, for one producer instance.
pub(crate) struct EdgeSender {
    senders: Vec<mpsc::Sender<Message>>,
    route: Route,
}

impl EdgeSender {
    pub(crate) fn forward(sender: mpsc::Sender<Message>) -> Self {
        EdgeSender {
            senders: vec![sender],
            route: Route::Forward,
        }
    }

    pub(crate) fn round_robin(senders: Vec<mpsc::Sender<Message>>, start: usize) -> Self {
        let next = start % senders.len();
        EdgeSender {
            senders,
            route: Route::RoundRobin { next },
        }
    }

    pub(crate) fn broadcast(senders: Vec<mpsc::Sender<Message>>) -> Self {
        EdgeSender {
            senders,
            route: Route::Broadcast,
        }
    }

    pub(crate) fn hash(
        senders: Vec<mpsc::Sender<Message>>,
        keys: Vec<usize>,
        groups: KeyGroups,
    ) -> Self {
        let partitioner = HashPartitioner::new(keys, senders.len(), groups);
        EdgeSender {
            senders,
            route: Route::Hash(partitioner),
        }
    }

    async fn send_batch(&mut self, batch: RecordBatch) -> Result<()> {
        match &mut self.route {
            Route::Forward => send(&self.senders[0], Message::Batch(batch)).await,
            Route::RoundRobin { next } => {
                let target = *next;
                *next = (target + 1) % self.senders.len();
                send(&self.senders[target], Message::Batch(batch)).await
            }
            Route::Broadcast => {
                for sender in &self.senders {
                    send(sender, Message::Batch(batch.clone())).await?;
                }
                Ok(())
            }
            Route::Hash(partitioner) => {
                let parts = partitioner.split(&batch)?;
                for (sender, part) in self.senders.iter().zip(parts) {
                    if let Some(part) = part {
                        send(sender, Message::Batch(part)).await?;
                    }
                }
                Ok(())
            }
        }
    }

    async fn send_to_all(&self, message: &Message) -> Result<()> {
        for sender in &self.senders {
            send(sender, message.clone()).await?;
        }
        Ok(())
    }
}

async fn send(sender: &mpsc::Sender<Message>, message: Message) -> Result<()> {
    // A closed channel means the consumer stopped because something failed;
    // that failure is reported by the consumer itself.
    sender.send(message).await.map_err(|_| Error::ShuttingDown)
}

/// Everything a node instance sends: per output port, the edges reading it.
#[derive(Default)]
pub(crate) struct Outputs {
    ports: Vec<Vec<EdgeSender>>,
}

impl Outputs {
    pub(crate) fn new(ports: usize) -> Self {
        Outputs {
            ports: (0..ports).map(|_| Vec::new()).collect(),
        }
    }

    pub(crate) fn add_edge(&mut self, port: usize, edge: EdgeSender) {
        self.ports[port].push(edge);
    }

    /// Sends a batch on `port` to every edge reading it (fan-out). Awaits
    /// room in each channel: this is where backpressure reaches the sender.
    pub(crate) async fn send_batch(&mut self, port: usize, batch: RecordBatch) -> Result<()> {
        let Some(edges) = self.ports.get_mut(port) else {
            return Err(Error::internal(format!(
                "emitted to undeclared output port {port}"
            )));
        };
        match edges.as_mut_slice() {
            [] => Ok(()),
            [only] => only.send_batch(batch).await,
            many => {
                for edge in many {
                    edge.send_batch(batch.clone()).await?;
                }
                Ok(())
            }
        }
    }

    /// Sends a watermark, barrier or end-of-stream to every downstream
    /// instance on every port.
    pub(crate) async fn send_to_all(&self, message: Message) -> Result<()> {
        for edge in self.ports.iter().flatten() {
            edge.send_to_all(&message).await?;
        }
        Ok(())
    }
}
