//! Configuration of the Kinesis source.

use std::time::Duration;

use serde::Deserialize;

use flumen_clients::aws::AwsSettings;
use flumen_core::file_format::CsvOptions;
use flumen_core::prelude::*;
use flumen_core::schema::SchemaSpec;

use super::source::KinesisSource;
use crate::payload::{self, AvroOptions, Format, MessageFormat};

/// Reads a Kinesis data stream: every shard, parents before children,
/// with read positions kept in Flumen's checkpoints.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KinesisSourceConfig {
    /// The stream: its name, or its ARN.
    pub stream: String,

    /// Region, endpoint and credentials.
    #[serde(default)]
    pub aws: AwsSettings,

    /// How record data is encoded: `json` (one object per record,
    /// default), `csv` (one record, no header), `avro` (with
    /// `avro.schema_file`), `string` (a `value` column of text) or `bytes`
    /// (a `value` column of binary). Records the Kinesis Producer Library
    /// aggregated are split into their user records first.
    #[serde(default)]
    pub format: MessageFormat,

    /// Columns and types of the decoded records, e.g. `{ id: int64, ts:
    /// timestamp }`. Default: from the Avro schema, or (JSON) inferred from
    /// up to `sample_size` records read from the stream when the pipeline
    /// starts.
    #[serde(default)]
    pub schema: Option<SchemaSpec>,

    /// Records read to infer a schema that is not declared.
    #[serde(default = "default_sample_size")]
    pub sample_size: usize,

    /// CSV options (only `delimiter` applies: records have no header).
    #[serde(default)]
    pub csv: CsvOptions,

    /// Avro options.
    #[serde(default)]
    pub avro: Option<AvroOptions>,

    /// Extra columns taken from each Kinesis record rather than its data.
    /// `approximate_arrival_timestamp` can be the source's `event_time`.
    #[serde(default)]
    pub metadata: MetadataColumns,

    /// Where a shard without a recorded position starts: `trim_horizon`
    /// (the oldest record kept, default), `latest` (records put from now
    /// on), or `{ at_timestamp: 2026-01-31T12:00:00Z }`. Children of a
    /// shard being read always start at their beginning.
    #[serde(default)]
    pub start_from: StartFrom,

    /// `latest`: end once every shard has been read up to the present,
    /// following closed shards into their children (a backfill, or a
    /// test). Default: run forever.
    #[serde(default)]
    pub stop_at: Option<StopAt>,

    /// Most records per GetRecords call (at most 10000).
    #[serde(default = "default_batch_size")]
    pub batch_size: u16,

    /// The shortest time between two GetRecords calls on a shard. Kinesis
    /// allows five a second per shard, shared by every consumer of it.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,

    /// The time between GetRecords calls while a shard has nothing new.
    #[serde(default = "default_idle_poll_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_poll_interval: Duration,

    /// How often the stream's shards are listed, to find new ones.
    #[serde(default = "default_discovery_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shard_discovery_interval: Duration,

    /// A shard whose every call fails (throttled, or the service away) for
    /// this long fails the run, naming the shard.
    #[serde(default = "default_stall_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stall_timeout: Duration,

    /// Share the stream's shards with other `flumen run` processes through
    /// a lease table in DynamoDB, as the Kinesis Client Library does. Each
    /// process reads only the shards it holds a lease on; a process that
    /// stops renewing its leases for `failover_time` has its shards taken
    /// over by the others, from its last checkpoint. Needs the pipeline's
    /// `checkpoint` section. Default: this process reads every shard.
    #[serde(default)]
    pub leases: Option<LeaseSettings>,

    /// Run the pipeline as one task per shard, as Kafka Streams runs one
    /// per partition: the processes share the shards through the lease
    /// table (`leases`, needed), and each runs the whole pipeline once per
    /// shard it holds, with checkpoints under `tasks/<shard number>/` of
    /// the checkpoint store. When a shard changes hands (a process joins,
    /// leaves or dies), its new owner starts its task from the latest
    /// complete checkpoint, state and position together, so open windows
    /// finish once and exactly. Needs a `checkpoint` section with a store
    /// every process shares, and the pipeline's keys to be the records'
    /// partition keys (rows of one key in one shard). A shard closed by a
    /// reshard ends its task; see docs/kinesis.md.
    #[serde(default)]
    pub tasks: bool,
}

/// The lease table shared by the processes reading one stream.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseSettings {
    /// The DynamoDB table, created (on-demand billing) if missing.
    /// Default: the pipeline's name (its file's name without `.yaml`).
    #[serde(default)]
    pub table: Option<String>,
    /// How long a lease's heartbeat may stand still before other processes
    /// take the lease over. Heartbeats go every third of it.
    #[serde(default = "default_failover_time", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub failover_time: Duration,
    /// Region, endpoint and credentials for DynamoDB. Default: the
    /// source's `aws` settings.
    #[serde(default)]
    pub aws: Option<AwsSettings>,
}

fn default_failover_time() -> Duration {
    Duration::from_secs(10)
}

impl LeaseSettings {
    /// A table of that name, with the default failover time.
    pub fn new(table: impl Into<String>) -> Self {
        LeaseSettings {
            table: Some(table.into()),
            failover_time: default_failover_time(),
            aws: None,
        }
    }
}

/// Names of the extra columns taken from each record. Each is added only
/// when named.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetadataColumns {
    /// The shard the record was read from.
    #[serde(default)]
    pub shard_id: Option<String>,
    /// The record's sequence number (text: they exceed 64 bits).
    #[serde(default)]
    pub sequence_number: Option<String>,
    /// The record's partition key.
    #[serde(default)]
    pub partition_key: Option<String>,
    /// When Kinesis received the record (milliseconds, UTC).
    #[serde(default)]
    pub approximate_arrival_timestamp: Option<String>,
}

/// Where a shard without a recorded position starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StartFrom {
    /// The oldest record the stream keeps.
    #[default]
    TrimHorizon,
    /// Records put from now on.
    Latest,
    /// Records that arrived at or after this time (RFC 3339).
    AtTimestamp(String),
}

/// Where a bounded run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopAt {
    /// Every shard read up to the present.
    Latest,
}

fn default_sample_size() -> usize {
    1000
}
fn default_batch_size() -> u16 {
    10_000
}
fn default_poll_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_idle_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_discovery_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_stall_timeout() -> Duration {
    Duration::from_secs(300)
}

impl KinesisSourceConfig {
    /// Reads `stream` (JSON records) with `aws`.
    pub fn new(stream: impl Into<String>, aws: AwsSettings) -> Self {
        KinesisSourceConfig {
            stream: stream.into(),
            aws,
            format: MessageFormat::Json,
            schema: None,
            sample_size: default_sample_size(),
            csv: CsvOptions::default(),
            avro: None,
            metadata: MetadataColumns::default(),
            start_from: StartFrom::TrimHorizon,
            stop_at: None,
            batch_size: default_batch_size(),
            poll_interval: default_poll_interval(),
            idle_poll_interval: default_idle_poll_interval(),
            shard_discovery_interval: default_discovery_interval(),
            stall_timeout: default_stall_timeout(),
            leases: None,
            tasks: false,
        }
    }

    /// Declares the columns of the decoded records.
    pub fn with_schema(mut self, schema: impl Into<SchemaSpec>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Ends once every shard is read up to the present.
    pub fn stop_at_latest(mut self) -> Self {
        self.stop_at = Some(StopAt::Latest);
        self
    }

    /// `start_from: { at_timestamp }` in epoch milliseconds.
    pub(crate) fn start_millis(&self) -> Result<Option<i64>> {
        let StartFrom::AtTimestamp(text) = &self.start_from else {
            return Ok(None);
        };
        let time = humantime::parse_rfc3339_weak(text).map_err(|e| {
            Error::config(
                "start_from.at_timestamp",
                format!("`{text}` is not a time ({e}); expected e.g. `2026-01-31T12:00:00Z`"),
            )
        })?;
        let millis = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| Error::config("start_from.at_timestamp", "is before 1970"))?
            .as_millis();
        Ok(Some(millis as i64))
    }
}

impl SourceConfig for KinesisSourceConfig {
    const TYPE: &str = "kinesis";
    const DESCRIPTION: &str =
        "Reads a Kinesis data stream, parents before children; positions kept in checkpoints.";
    type Source = KinesisSource;

    fn build(&self) -> Result<KinesisSource> {
        self.build_named(None)
    }

    fn build_in(&self, catalog: &dyn Catalog) -> Result<KinesisSource> {
        self.build_named(catalog.pipeline())
    }
}

impl KinesisSourceConfig {
    /// Checks the settings, resolves the schema (reading a sample of the
    /// stream if it must be inferred) and returns the source. `pipeline`
    /// names the lease table when the settings do not.
    fn build_named(&self, pipeline: Option<&str>) -> Result<KinesisSource> {
        if self.stream.trim().is_empty() {
            return Err(Error::config(
                "stream",
                "is empty; name a stream or give its ARN",
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(Error::config("batch_size", "must be from 1 to 10000"));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::config(
                "poll_interval",
                "must be more than 0 (Kinesis allows five calls a second per shard)",
            ));
        }
        self.aws.check("aws")?;
        self.start_millis()?;
        let mut config = self.clone();
        if let Some(leases) = &mut config.leases {
            if let Some(aws) = &leases.aws {
                aws.check("leases.aws")?;
            }
            if leases.failover_time < Duration::from_millis(300) {
                return Err(Error::config(
                    "leases.failover_time",
                    "must be at least 300ms (heartbeats go every third of it)",
                ));
            }
            let table = leases
                .table
                .clone()
                .or_else(|| pipeline.map(str::to_string));
            match table {
                Some(table) if valid_table_name(&table) => leases.table = Some(table),
                Some(table) => {
                    return Err(Error::config(
                        "leases.table",
                        format!(
                            "`{table}` is not a DynamoDB table name: 3 to 255 letters, \
                             digits, `_`, `-` and `.`"
                        ),
                    ));
                }
                None => {
                    return Err(Error::config(
                        "leases.table",
                        "is needed: name the lease table (a pipeline file names it after itself)",
                    ));
                }
            }
        }
        if self.tasks && self.leases.is_none() {
            return Err(Error::config(
                "tasks",
                "needs `leases`: the processes running the tasks share the shards through the lease table",
            ));
        }
        let format = Format::from_settings(self.format, &self.csv, self.avro.as_ref())?;
        let values = match payload::fixed_schema(self.schema.as_ref(), &format)? {
            Some(values) => values,
            None => super::sample::infer_schema(self)?,
        };
        KinesisSource::new(config, format, values)
    }
}

/// Whether DynamoDB accepts `name` as a table name.
fn valid_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
