//! Configuration of the Kinesis sink.

use serde::Deserialize;

use flumen_clients::aws::AwsSettings;
use flumen_core::prelude::*;

use super::sink::KinesisSink;
use crate::message::{AvroWriteOptions, MessageSettings, ValueFormat};

/// Puts rows into a Kinesis data stream, one record per row, at least
/// once.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KinesisSinkConfig {
    /// The stream: its name, or its ARN.
    pub stream: String,

    /// Region, endpoint and credentials.
    #[serde(default)]
    pub aws: AwsSettings,

    /// The column whose value (as text) is each record's partition key,
    /// which picks its shard. Rows with a null key go to the dead letters.
    pub partition_key: String,

    /// A column giving each record's explicit hash key (a decimal 128-bit
    /// number), which picks the shard instead of the partition key's hash.
    #[serde(default)]
    pub explicit_hash_key: Option<String>,

    /// How a row becomes a record's data: `json` (an object, default),
    /// `avro` (a datum of `avro.schema_file`), `string` or `bytes` (the
    /// single column named by `value_column`).
    #[serde(default)]
    pub format: ValueFormat,

    /// The column written as the data with `format: string` or `bytes`.
    #[serde(default)]
    pub value_column: Option<String>,

    /// Avro options.
    #[serde(default)]
    pub avro: Option<AvroWriteOptions>,

    /// Requests in flight at once, per sink instance.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_concurrency() -> usize {
    4
}

impl KinesisSinkConfig {
    /// Puts JSON rows into `stream`, keyed by `partition_key`.
    pub fn new(
        stream: impl Into<String>,
        partition_key: impl Into<String>,
        aws: AwsSettings,
    ) -> Self {
        KinesisSinkConfig {
            stream: stream.into(),
            aws,
            partition_key: partition_key.into(),
            explicit_hash_key: None,
            format: ValueFormat::Json,
            value_column: None,
            avro: None,
            concurrency: default_concurrency(),
        }
    }

    /// The partition key (text column 0) and the explicit hash key (1).
    pub(super) fn message_settings(&self) -> MessageSettings<'_> {
        let mut text_columns = vec![("partition_key".to_string(), self.partition_key.as_str())];
        if let Some(column) = &self.explicit_hash_key {
            text_columns.push(("explicit_hash_key".into(), column));
        }
        MessageSettings {
            format: self.format,
            value_column: self.value_column.as_deref(),
            avro: self.avro.as_ref(),
            text_columns,
        }
    }
}

impl SinkConfig for KinesisSinkConfig {
    const TYPE: &str = "kinesis";
    const DESCRIPTION: &str =
        "Puts rows into a Kinesis data stream with PutRecords, at least once.";
    type Sink = KinesisSink;

    fn build(&self) -> Result<KinesisSink> {
        if self.stream.trim().is_empty() {
            return Err(Error::config(
                "stream",
                "is empty; name a stream or give its ARN",
            ));
        }
        if self.concurrency == 0 {
            return Err(Error::config("concurrency", "must be at least 1"));
        }
        self.aws.check("aws")?;
        Ok(KinesisSink::new(self.clone()))
    }
}
