//! Configuration of the Kafka source.

use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

use flumen_core::prelude::*;
use flumen_core::schema::SchemaSpec;

use super::source::KafkaSource;
use crate::file::CsvOptions;
use crate::payload::{self, AvroOptions, Format, MessageFormat};
use flumen_clients::kafka::KafkaSecurity;

/// Reads topics as a member of a Kafka consumer group. Instances (in this
/// process and in other `flumen run` processes with the same `group`)
/// share the topics' partitions; offsets are committed to the group only
/// when a checkpoint completes.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers: `host:port`, comma-separated for several.
    pub brokers: String,

    /// How long to wait at start for a broker to answer (each failed
    /// attempt is logged: `waiting for brokers …`) before failing.
    #[serde(
        default = "flumen_clients::kafka::default_connect_timeout",
        with = "humantime_serde"
    )]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,

    /// Topics to read. A name starting with `^` is a regular expression
    /// matched against every topic (`^orders-.*`).
    pub topics: Vec<String>,

    /// The consumer group. Processes with the same group share the
    /// partitions and take over each other's when one leaves or dies.
    pub group: String,

    /// How message values are encoded: `json` (one object per message,
    /// default), `csv` (one record per message, no header), `avro` (with
    /// `avro.schema_file`), `string` (a `value` column of text) or `bytes`
    /// (a `value` column of binary).
    #[serde(default)]
    pub format: MessageFormat,

    /// Columns and types of the decoded values, e.g. `{ id: int64, ts:
    /// timestamp }`. Default: from the Avro schema, or (JSON, CSV)
    /// inferred from up to `sample_size` messages read from the topics
    /// when the pipeline starts.
    #[serde(default)]
    pub schema: Option<SchemaSpec>,

    /// Messages read to infer a schema that is not declared.
    #[serde(default = "default_sample_size")]
    pub sample_size: usize,

    /// CSV options (only `delimiter` applies: messages have no header).
    #[serde(default)]
    pub csv: CsvOptions,

    /// Avro options.
    #[serde(default)]
    pub avro: Option<AvroOptions>,

    /// Extra columns taken from each Kafka record rather than its value.
    /// Use `timestamp` with the source's `event_time` to take event time
    /// from the Kafka timestamp.
    #[serde(default)]
    pub metadata: MetadataColumns,

    /// Run the pipeline as one task per partition of the topic, as Kafka
    /// Streams does: the group hands partitions to processes, and each
    /// process runs the whole pipeline once per partition it holds, with
    /// checkpoints under `tasks/<partition>/` of the checkpoint store.
    /// When a partition moves (a process joins, leaves or dies), its new
    /// owner starts its task from the latest complete checkpoint, state
    /// and offset together, so open windows finish once and exactly.
    /// Needs one topic, a `checkpoint` section with a store every process
    /// shares, and the pipeline's keys to be the topic's message keys
    /// (rows of one key in one partition). See docs/scaling.md.
    #[serde(default)]
    pub tasks: bool,
    /// Where a partition the group has no committed offset for starts:
    /// `earliest` (default) or `latest`.
    #[serde(default)]
    pub start_from: StartFrom,

    /// `latest`: end once every partition of the topics has been read up
    /// to where it ended when the run started, by this process or another
    /// member of the group (a backfill, or a test). Default: run forever.
    #[serde(default)]
    pub stop_at: Option<StopAt>,

    /// Most messages per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,

    /// How long to wait for a batch to fill before emitting what arrived.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_wait: Duration,

    /// TLS and SASL settings.
    #[serde(default)]
    pub security: KafkaSecurity,

    /// Any other librdkafka consumer property, passed through
    /// (`session.timeout.ms: "10000"`). These win over Flumen's own.
    #[serde(default)]
    pub properties: IndexMap<String, String>,
}

/// Names of the extra columns taken from each Kafka record. Each is added
/// only when named.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetadataColumns {
    /// The record's key, as text.
    #[serde(default)]
    pub key: Option<String>,
    /// The topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// The partition (int32).
    #[serde(default)]
    pub partition: Option<String>,
    /// The offset (int64).
    #[serde(default)]
    pub offset: Option<String>,
    /// The record's timestamp (milliseconds, UTC).
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// Where a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest message kept.
    #[default]
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

/// Where a bounded run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopAt {
    /// The end of each partition when the run started.
    Latest,
}

fn default_sample_size() -> usize {
    1000
}
fn default_batch_size() -> usize {
    8192
}
fn default_max_wait() -> Duration {
    Duration::from_millis(50)
}

impl KafkaSourceConfig {
    /// Reads `topics` from `brokers` as a member of `group`, JSON values.
    pub fn new(brokers: impl Into<String>, topics: &[&str], group: impl Into<String>) -> Self {
        KafkaSourceConfig {
            brokers: brokers.into(),
            connect_timeout: flumen_clients::kafka::default_connect_timeout(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            group: group.into(),
            format: MessageFormat::Json,
            schema: None,
            sample_size: default_sample_size(),
            csv: CsvOptions::default(),
            avro: None,
            metadata: MetadataColumns::default(),
            tasks: false,
            start_from: StartFrom::Earliest,
            stop_at: None,
            batch_size: default_batch_size(),
            max_wait: default_max_wait(),
            security: KafkaSecurity::default(),
            properties: IndexMap::new(),
        }
    }

    /// Declares the columns of the decoded values.
    pub fn with_schema(mut self, schema: impl Into<SchemaSpec>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Ends once the partitions are read up to where they ended at start.
    pub fn stop_at_latest(mut self) -> Self {
        self.stop_at = Some(StopAt::Latest);
        self
    }

    /// Sets a librdkafka property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }
}

impl SourceConfig for KafkaSourceConfig {
    const TYPE: &str = "kafka";
    const DESCRIPTION: &str =
        "Reads Kafka topics as a consumer group member; offsets committed with checkpoints.";
    type Source = KafkaSource;

    /// Checks the settings, resolves the schema (reading a sample of the
    /// topics if it must be inferred) and returns the source.
    fn build(&self) -> Result<KafkaSource> {
        if self.topics.is_empty() {
            return Err(Error::config("topics", "is empty; name at least one topic"));
        }
        if self.group.trim().is_empty() {
            return Err(Error::config("group", "is empty; name a consumer group"));
        }
        if self.batch_size == 0 {
            return Err(Error::config("batch_size", "must be at least 1"));
        }
        if self.tasks && (self.topics.len() != 1 || self.topics[0].starts_with('^')) {
            return Err(Error::config(
                "tasks",
                "needs exactly one topic, named (not a pattern): its partitions are the tasks",
            ));
        }
        if self.stop_at.is_some() && self.topics.iter().any(|t| t.starts_with('^')) {
            return Err(Error::config(
                "stop_at",
                "needs topic names, not patterns, to know where the topics end",
            ));
        }
        flumen_clients::kafka::client_config(&self.brokers, &self.security, &self.properties)?;
        let format = Format::from_settings(self.format, &self.csv, self.avro.as_ref())?;
        let values = match payload::fixed_schema(self.schema.as_ref(), &format)? {
            Some(values) => values,
            None => super::sample::infer_schema(self)?,
        };
        KafkaSource::new(self.clone(), format, values)
    }
}
