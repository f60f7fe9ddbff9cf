//! The Kinesis sink: one record per row, put with PutRecords, at least
//! once.
//!
//! PutRecords is not atomic: each entry of a request succeeds or fails on
//! its own. Entries that fail (throttled, or an internal failure) are put
//! again, alone, after a pause; nothing else is. A checkpoint waits until
//! every row written before it is acknowledged. A crash after a record is
//! acknowledged and before the checkpoint completes puts it again when the
//! run restarts, so consumers can see a record twice; and since a retried
//! entry is put after entries that followed it in its request, records of
//! one partition key can arrive out of order when a request is partly
//! throttled.

mod config;
mod sink;

pub use self::config::KinesisSinkConfig;
pub use self::sink::KinesisSink;
pub use crate::message::{AvroWriteOptions, ValueFormat};
pub use flumen_clients::aws::AwsSettings;
