//! The Kinesis source: reads every shard of a stream, parents before
//! children, as the Kinesis Client Library does.
//!
//! Each shard is read by a task of its own ([`reader`]) at the pace the
//! service allows. The shards of a stream are shared out between the
//! source's instances; a child shard is given out only once every parent
//! it has is finished, and, in a checkpointed run, once that is recorded
//! in a completed checkpoint. So records of one partition key come out in
//! the order of their sequence numbers across splits and merges, and stay
//! so after a restore.
//!
//! Read positions (the sequence number of the last record emitted, per
//! shard) and the shards read to their end are recorded in checkpoints; a
//! restore resumes each shard after its recorded record.
//!
//! With `leases`, processes share the shards through a lease table in
//! DynamoDB ([`leases`]): a process reads only the shards it holds, hands
//! them over at checkpoints, and records each completed checkpoint in the
//! table before its sinks publish it.
//!
//! With `tasks` as well, the pipeline runs once per shard this process
//! leases ([`tasks`]), each run with its own state and checkpoints, which
//! follow the shard from process to process.

mod aggregated;
mod config;
mod leases;
mod reader;
mod sample;
mod shards;
mod source;
mod tasks;

pub use self::aggregated::aggregate;
pub use self::config::{KinesisSourceConfig, LeaseSettings, MetadataColumns, StartFrom, StopAt};
pub use self::source::KinesisSource;
pub use crate::payload::{AvroOptions, MessageFormat};
pub use flumen_clients::aws::AwsSettings;

use aws_sdk_kinesis::Client;

use flumen_clients::aws::{ErrorClass, classify, jittered};
use flumen_core::prelude::*;

use self::shards::Shard;

/// A stream, by name or by ARN (the API takes either, in different
/// fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamId {
    Name(String),
    Arn(String),
}

impl StreamId {
    pub(crate) fn new(stream: &str) -> Self {
        if stream.starts_with("arn:") {
            StreamId::Arn(stream.to_string())
        } else {
            StreamId::Name(stream.to_string())
        }
    }

    pub(crate) fn name(&self) -> Option<String> {
        match self {
            StreamId::Name(name) => Some(name.clone()),
            StreamId::Arn(_) => None,
        }
    }

    pub(crate) fn arn(&self) -> Option<String> {
        match self {
            StreamId::Arn(arn) => Some(arn.clone()),
            StreamId::Name(_) => None,
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamId::Name(s) | StreamId::Arn(s) => f.write_str(s),
        }
    }
}

/// Every shard of the stream the service still keeps, page by page.
/// Throttled listings (five a second per stream) are retried after a
/// pause; any other failure is returned.
pub(crate) async fn list_shards(client: &Client, stream: &StreamId) -> Result<Vec<Shard>> {
    let mut shards = Vec::new();
    let mut next_token: Option<String> = None;
    let mut attempt = 0;
    loop {
        // A page token stands for the stream too: the API refuses both.
        let request = match &next_token {
            Some(token) => client.list_shards().next_token(token),
            None => client
                .list_shards()
                .set_stream_name(stream.name())
                .set_stream_arn(stream.arn()),
        };
        let output = match request.max_results(1000).send().await {
            Ok(output) => output,
            Err(error) => match classify(&error) {
                ErrorClass::Throttled(_) | ErrorClass::Transient(_) if attempt < 8 => {
                    attempt += 1;
                    tokio::time::sleep(jittered(attempt, std::time::Duration::from_millis(200)))
                        .await;
                    continue;
                }
                ErrorClass::Throttled(text)
                | ErrorClass::Transient(text)
                | ErrorClass::Fatal(text)
                | ErrorClass::ExpiredIterator(text) => {
                    return Err(Error::connector(
                        "kinesis",
                        true,
                        format!("listing the shards of stream {stream}: {text}"),
                    ));
                }
            },
        };
        attempt = 0;
        for shard in output.shards() {
            let parents = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(str::to_string)
                .collect();
            shards.push(Shard {
                id: shard.shard_id().to_string(),
                parents,
                closed: shard
                    .sequence_number_range()
                    .and_then(|range| range.ending_sequence_number())
                    .is_some(),
            });
        }
        next_token = output.next_token().map(str::to_string);
        if next_token.is_none() {
            return Ok(shards);
        }
    }
}
