//! The Kinesis sink and its instances.

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use tokio::task::JoinSet;

use flumen_clients::aws::{ErrorClass, classify, jittered};
use flumen_core::prelude::*;

use super::config::KinesisSinkConfig;
use crate::message::RowEncoder;

/// The most records in one PutRecords request.
const MAX_RECORDS: usize = 500;
/// The most bytes (data and partition keys) in one request.
const MAX_REQUEST_BYTES: usize = 5 << 20;
/// The most bytes (data and partition key) in one record.
const MAX_RECORD_BYTES: usize = 1 << 20;
/// The longest partition key, in characters.
const MAX_KEY_CHARS: usize = 256;

/// A sink putting one record per row. Built from a [`KinesisSinkConfig`].
#[derive(Debug, Clone)]
pub struct KinesisSink {
    config: Arc<KinesisSinkConfig>,
}

impl KinesisSink {
    pub(super) fn new(config: KinesisSinkConfig) -> Self {
        KinesisSink {
            config: Arc::new(config),
        }
    }
}

impl SinkFactory for KinesisSink {
    fn check_input(&self, schema: &SchemaRef) -> Result<()> {
        RowEncoder::new(&self.config.message_settings(), schema).map(|_| ())
    }

    fn create(&self, _instance: InstanceInfo, schema: SchemaRef) -> Result<Box<dyn Sink>> {
        Ok(Box::new(KinesisSinkInstance {
            encoder: RowEncoder::new(&self.config.message_settings(), &schema)?,
            config: self.config.clone(),
            client: None,
            pending: Request::default(),
            in_flight: JoinSet::new(),
            rejected: Vec::new(),
        }))
    }
}

/// Entries for one PutRecords request.
#[derive(Debug, Default)]
struct Request {
    entries: Vec<PutRecordsRequestEntry>,
    bytes: usize,
}

struct KinesisSinkInstance {
    config: Arc<KinesisSinkConfig>,
    encoder: RowEncoder,
    client: Option<Client>,
    pending: Request,
    in_flight: JoinSet<Result<()>>,
    rejected: Vec<Rejected>,
}

impl KinesisSinkInstance {
    async fn client(&mut self) -> Client {
        if self.client.is_none() {
            self.client = Some(self.config.aws.kinesis_client().await);
        }
        self.client.clone().expect("set above")
    }

    /// Sends the pending entries, once fewer than `concurrency` requests
    /// are in flight (so a slow stream holds the pipeline back).
    async fn send_pending(&mut self) -> Result<()> {
        if self.pending.entries.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= self.config.concurrency {
            self.join_one().await?;
        }
        let entries = std::mem::take(&mut self.pending).entries;
        let client = self.client().await;
        let stream = self.config.stream.clone();
        self.in_flight.spawn(put_all(client, stream, entries));
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        match self.in_flight.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(error)) => Err(Error::internal(format!(
                "a PutRecords task failed: {error}"
            ))),
            None => Ok(()),
        }
    }

    /// Sends what is pending and waits until every entry is acknowledged.
    async fn flush(&mut self) -> Result<()> {
        self.send_pending().await?;
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for KinesisSinkInstance {
    async fn write(&mut self, batch: RecordBatch, _ctx: &mut Context) -> Result<()> {
        let (messages, mut rejected) = self.encoder.encode(batch)?;
        let keyed_by_hash = self.config.explicit_hash_key.is_some();
        let mut refused = Vec::new();
        for row in 0..messages.len() {
            let data = messages.value(row);
            let Some(key) = messages.text(0, row) else {
                refused.push((row, "the partition key is null".to_string()));
                continue;
            };
            let size = data.len() + key.len();
            if key.is_empty() || key.chars().count() > MAX_KEY_CHARS {
                refused.push((
                    row,
                    format!(
                        "a partition key has 1 to {MAX_KEY_CHARS} characters; this one has {}",
                        key.chars().count()
                    ),
                ));
                continue;
            }
            if size > MAX_RECORD_BYTES {
                refused.push((
                    row,
                    format!("the record is {size} bytes with its partition key; Kinesis takes at most {MAX_RECORD_BYTES}"),
                ));
                continue;
            }
            let mut entry = PutRecordsRequestEntry::builder()
                .data(Blob::new(data))
                .partition_key(key);
            if keyed_by_hash && let Some(hash) = messages.text(1, row) {
                entry = entry.explicit_hash_key(hash);
            }
            let entry = entry
                .build()
                .map_err(|e| Error::internal(format!("a PutRecords entry: {e}")))?;
            if self.pending.entries.len() == MAX_RECORDS
                || self.pending.bytes + size > MAX_REQUEST_BYTES
            {
                self.send_pending().await?;
            }
            self.pending.entries.push(entry);
            self.pending.bytes += size;
        }
        for (row, reason) in refused {
            rejected.push(Rejected {
                error: reason,
                record: String::from_utf8_lossy(messages.value(row)).into_owned(),
                position: None,
            });
        }
        self.rejected = rejected;
        // Sent now, not held for the next batch: a quiet stream's rows
        // must not wait for a checkpoint to go out.
        self.send_pending().await
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    async fn finish(&mut self, _ctx: &mut Context) -> Result<()> {
        self.flush().await
    }

    async fn pre_commit(
        &mut self,
        _checkpoint: u64,
        _ctx: &mut Context,
    ) -> Result<serde_json::Value> {
        self.flush().await?;
        Ok(serde_json::Value::Null)
    }
}

/// Puts `entries`, putting again (alone, after a pause) the ones that
/// fail, until every one is acknowledged or an error that retrying cannot
/// fix occurs.
async fn put_all(
    client: Client,
    stream: String,
    mut entries: Vec<PutRecordsRequestEntry>,
) -> Result<()> {
    let by_arn = stream.starts_with("arn:");
    let mut attempt = 0u32;
    while !entries.is_empty() {
        let request = client.put_records().set_records(Some(entries.clone()));
        let request = if by_arn {
            request.stream_arn(&stream)
        } else {
            request.stream_name(&stream)
        };
        match request.send().await {
            Ok(output) => {
                if output.failed_record_count().unwrap_or(0) == 0 {
                    return Ok(());
                }
                let mut failed = Vec::new();
                let mut reason = String::new();
                for (entry, result) in entries.into_iter().zip(output.records()) {
                    if let Some(code) = result.error_code() {
                        if reason.is_empty() {
                            reason =
                                format!("{code}: {}", result.error_message().unwrap_or_default());
                        }
                        failed.push(entry);
                    }
                }
                attempt += 1;
                if attempt == 1 || attempt.is_power_of_two() {
                    tracing::warn!(%stream, failed = failed.len(), attempts = attempt, "{reason}; putting the failed records again");
                }
                entries = failed;
            }
            Err(error) => match classify(&error) {
                ErrorClass::Throttled(text) | ErrorClass::Transient(text) => {
                    attempt += 1;
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::warn!(%stream, attempts = attempt, "{text}; putting the records again");
                    }
                }
                ErrorClass::Fatal(text) | ErrorClass::ExpiredIterator(text) => {
                    return Err(Error::connector(
                        "kinesis",
                        false,
                        format!("putting records into stream {stream}: {text}"),
                    ));
                }
            },
        }
        tokio::time::sleep(jittered(attempt, Duration::from_millis(100))).await;
    }
    Ok(())
}
