//! What travels on an edge of the dataflow graph.
//!
//! Data, watermarks, checkpoint barriers and end-of-stream share one channel
//! per edge, so they stay in order with each other: a watermark sent after a
//! batch is seen after that batch.

use arrow::record_batch::RecordBatch;

/// Event time in milliseconds since the Unix epoch.
pub type EventTime = i64;

/// One message on an edge.
#[derive(Debug, Clone)]
pub enum Message {
    /// A micro-batch of rows in the edge's schema.
    Batch(RecordBatch),
    /// Progress of event time on this edge.
    Watermark(Watermark),
    /// A numbered checkpoint barrier: everything before it belongs to
    /// checkpoint `id`, everything after to later ones.
    Barrier(Barrier),
    /// No more messages will follow on this edge.
    End,
}

/// Progress of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    /// No event with an event time at or before this will follow.
    EventTime(EventTime),
    /// The sender has had nothing to say for a while; do not wait for it
    /// when computing the minimum over inputs. Its next watermark makes it
    /// active again.
    Idle,
}

impl Watermark {
    /// The watermark that closes every window: sent when a bounded input
    /// ends.
    pub const MAX: Watermark = Watermark::EventTime(EventTime::MAX);
}

/// A checkpoint barrier, injected at the sources and aligned at every node
/// with several inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    /// Checkpoint number, increasing from 1.
    pub checkpoint: u64,
}
