//! Reading one shard: a task per shard that calls GetRecords at the pace
//! the service allows and hands what it read to the source instance.
//!
//! What goes wrong with GetRecords, and what is done about it:
//! - **Throttling** (`ProvisionedThroughputExceededException`, and the
//!   like): back off with jitter and call again. A shard that makes no
//!   progress for `stall_timeout` fails the run, naming the shard, rather
//!   than hanging quietly.
//! - **Expired iterators**: an iterator lives five minutes, and
//!   backpressure can hold a shard for longer. One older than four
//!   minutes is replaced before it is used, and one the service calls
//!   expired is replaced at once, both from after the last record read.
//! - **The end of a closed shard**: no next iterator, and the child shards
//!   named, which the source reads once every parent is finished.

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::ShardIteratorType;
use tokio::sync::mpsc;
use tokio::time::Instant;

use flumen_clients::aws::{ErrorClass, classify, jittered};
use flumen_core::prelude::*;

use super::shards::Shard;

/// The most a shard gives per second (GetRecords), in bytes.
const SHARD_BYTES_PER_SECOND: f64 = 2.0 * 1024.0 * 1024.0;

/// An iterator older than this is replaced before use (they expire after
/// five minutes).
const ITERATOR_MAX_AGE: Duration = Duration::from_secs(240);

/// Where a shard's reading starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartAt {
    /// After this record (a position from a checkpoint or a lease).
    After(String),
    TrimHorizon,
    Latest,
    /// Epoch milliseconds.
    Timestamp(i64),
}

/// One record as GetRecords returned it.
#[derive(Debug, Clone)]
pub(crate) struct RawRecord {
    pub(crate) sequence_number: String,
    pub(crate) partition_key: String,
    /// Epoch milliseconds.
    pub(crate) arrival: Option<i64>,
    pub(crate) data: bytes::Bytes,
}

/// What a shard's task tells its source instance.
#[derive(Debug)]
pub(crate) enum ShardEvent {
    Records {
        shard: String,
        records: Vec<RawRecord>,
    },
    /// Nothing more to read for now (MillisBehindLatest is 0).
    CaughtUp {
        shard: String,
    },
    /// The shard is closed and every record of it was read.
    Ended {
        shard: String,
        children: Vec<Shard>,
    },
    Failed(Error),
}

/// How a shard is read.
#[derive(Debug, Clone)]
pub(crate) struct ReadSettings {
    pub(crate) stream: super::StreamId,
    pub(crate) limit: i32,
    /// The shortest time between two GetRecords calls on one shard.
    pub(crate) poll_interval: Duration,
    /// The time between calls while a shard has nothing new.
    pub(crate) idle_poll_interval: Duration,
    pub(crate) stall_timeout: Duration,
}

/// Reads `shard` from `start` until it ends, the receiver goes away, or
/// it fails (reported through `events`).
pub(crate) async fn read_shard(
    client: Client,
    settings: ReadSettings,
    shard: String,
    start: StartAt,
    events: mpsc::Sender<ShardEvent>,
) {
    let mut reader = ShardReader {
        client,
        settings,
        shard,
        start,
        last_read: None,
        iterator: None,
        backoff: 0,
        last_progress: Instant::now(),
    };
    if let Err(error) = reader.run(&events).await {
        let _ = events.send(ShardEvent::Failed(error)).await;
    }
}

struct ShardReader {
    client: Client,
    settings: ReadSettings,
    shard: String,
    start: StartAt,
    /// The sequence number of the last record handed on.
    last_read: Option<String>,
    /// The iterator to use next, and when it was obtained.
    iterator: Option<(String, Instant)>,
    /// Throttled or failed calls in a row.
    backoff: u32,
    last_progress: Instant,
}

impl ShardReader {
    async fn run(&mut self, events: &mpsc::Sender<ShardEvent>) -> Result<()> {
        let mut next_call = Instant::now();
        loop {
            tokio::time::sleep_until(next_call).await;
            let iterator = match self.iterator.take() {
                Some((iterator, obtained)) if obtained.elapsed() < ITERATOR_MAX_AGE => iterator,
                _ => match self.new_iterator().await {
                    Ok(iterator) => iterator,
                    Err(class) => {
                        next_call = self.retry_after(class)?;
                        continue;
                    }
                },
            };
            let called = Instant::now();
            let answer = self
                .client
                .get_records()
                .shard_iterator(&iterator)
                .limit(self.settings.limit)
                .set_stream_arn(self.settings.stream.arn())
                .send()
                .await;
            let output = match answer {
                Ok(output) => output,
                Err(error) => {
                    let class = classify(&error);
                    if !matches!(class, ErrorClass::ExpiredIterator(_)) {
                        self.iterator = Some((iterator, called));
                    }
                    next_call = self.retry_after(class)?;
                    continue;
                }
            };
            self.backoff = 0;
            self.last_progress = Instant::now();
            let bytes: usize = output
                .records()
                .iter()
                .map(|r| r.data().as_ref().len())
                .sum();
            let records: Vec<RawRecord> = output
                .records()
                .iter()
                .map(|r| RawRecord {
                    sequence_number: r.sequence_number().to_string(),
                    partition_key: r.partition_key().unwrap_or_default().to_string(),
                    arrival: r
                        .approximate_arrival_timestamp()
                        .and_then(|t| t.to_millis().ok()),
                    data: bytes::Bytes::copy_from_slice(r.data().as_ref()),
                })
                .collect();
            let millis_behind = output.millis_behind_latest();
            let empty = records.is_empty();
            if let Some(last) = records.last() {
                self.last_read = Some(last.sequence_number.clone());
                let event = ShardEvent::Records {
                    shard: self.shard.clone(),
                    records,
                };
                if events.send(event).await.is_err() {
                    return Ok(());
                }
            }
            let Some(next) = output.next_shard_iterator() else {
                let children = output
                    .child_shards()
                    .iter()
                    .map(|child| Shard {
                        id: child.shard_id().to_string(),
                        parents: child.parent_shards().to_vec(),
                        closed: false,
                    })
                    .collect();
                let _ = events
                    .send(ShardEvent::Ended {
                        shard: self.shard.clone(),
                        children,
                    })
                    .await;
                return Ok(());
            };
            self.iterator = Some((next.to_string(), Instant::now()));
            if empty && millis_behind == Some(0) {
                let caught_up = ShardEvent::CaughtUp {
                    shard: self.shard.clone(),
                };
                if events.send(caught_up).await.is_err() {
                    return Ok(());
                }
            }
            // Five calls a second and 2 MiB a second per shard: a call
            // that read a lot waits for the bytes to be paid for.
            let pause = if empty {
                self.settings.idle_poll_interval
            } else {
                self.settings.poll_interval.max(Duration::from_secs_f64(
                    bytes as f64 / SHARD_BYTES_PER_SECOND,
                ))
            };
            next_call = called + pause;
        }
    }

    /// An iterator from after the last record read, or from the start.
    async fn new_iterator(&mut self) -> std::result::Result<String, ErrorClass> {
        let start = match &self.last_read {
            Some(sequence) => StartAt::After(sequence.clone()),
            None => self.start.clone(),
        };
        let request = self
            .client
            .get_shard_iterator()
            .set_stream_name(self.settings.stream.name())
            .set_stream_arn(self.settings.stream.arn())
            .shard_id(&self.shard);
        let request = match start {
            StartAt::After(sequence) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(sequence),
            StartAt::TrimHorizon => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            StartAt::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            StartAt::Timestamp(millis) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_sdk_kinesis::primitives::DateTime::from_millis(millis)),
        };
        match request.send().await {
            Ok(output) => match output.shard_iterator() {
                Some(iterator) => Ok(iterator.to_string()),
                None => Err(ErrorClass::Fatal(format!(
                    "shard {}: GetShardIterator returned no iterator",
                    self.shard
                ))),
            },
            Err(error) => Err(classify(&error)),
        }
    }

    /// When to call again after a failed call, or the error that ends the
    /// run: one that retrying cannot fix, or no progress for too long.
    fn retry_after(&mut self, class: ErrorClass) -> Result<Instant> {
        let what = match class {
            ErrorClass::ExpiredIterator(_) => {
                tracing::debug!(shard = %self.shard, "iterator expired; asking for a new one");
                return Ok(Instant::now());
            }
            ErrorClass::Fatal(message) => {
                return Err(Error::connector(
                    "kinesis",
                    false,
                    format!("shard {}: {message}", self.shard),
                ));
            }
            ErrorClass::Throttled(message) | ErrorClass::Transient(message) => message,
        };
        let stalled = self.last_progress.elapsed();
        if stalled >= self.settings.stall_timeout {
            return Err(Error::connector(
                "kinesis",
                true,
                format!(
                    "shard {}: no records read for {} (stall_timeout): {what}",
                    self.shard,
                    humantime::format_duration(Duration::from_secs(stalled.as_secs()))
                ),
            ));
        }
        self.backoff = self.backoff.saturating_add(1);
        let wait = jittered(self.backoff, self.settings.poll_interval);
        if self.backoff == 1 || self.backoff.is_power_of_two() {
            tracing::warn!(shard = %self.shard, attempts = self.backoff, wait = ?wait, "{what}; backing off");
        }
        Ok(Instant::now() + wait)
    }
}
