//! Configuration of the Kafka sink.

use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;

use flumen_clients::kafka::KafkaSecurity;
use flumen_core::prelude::*;

use super::sink::KafkaSink;
use crate::message::{AvroWriteOptions, MessageSettings, ValueFormat};

/// Writes rows to a Kafka topic, one message per row.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
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

    /// The topic written to.
    pub topic: String,

    /// Column whose value (as text) is each message's key; messages with
    /// the same key go to the same partition. Default: no key.
    #[serde(default)]
    pub key: Option<String>,

    /// How a row becomes a message value: `json` (an object, default),
    /// `avro` (a datum of `avro.schema_file`), `string` or `bytes` (the
    /// single column named by `value_column`).
    #[serde(default)]
    pub format: ValueFormat,

    /// The column written as the value with `format: string` or `bytes`.
    #[serde(default)]
    pub value_column: Option<String>,

    /// Avro options.
    #[serde(default)]
    pub avro: Option<AvroWriteOptions>,

    /// Message headers: header name to the column giving its value.
    #[serde(default)]
    pub headers: IndexMap<String, String>,

    /// `exactly_once`: each checkpoint's messages are written in a Kafka
    /// transaction committed with the checkpoint (readers must use
    /// `isolation.level: read_committed`). `at_least_once` (default): an
    /// idempotent producer, flushed at every checkpoint; a crash can
    /// write rows since the last checkpoint again.
    #[serde(default)]
    pub delivery: Delivery,

    /// Prefix of the transactional ids (`<prefix>-<instance>-<slot>`),
    /// unique per pipeline. Default: `flumen-<topic>`.
    #[serde(default)]
    pub transactional_id: Option<String>,

    /// `none`, `gzip`, `snappy`, `lz4` (default) or `zstd`.
    #[serde(default)]
    pub compression: Compression,

    /// How long the producer waits to fill a batch before sending.
    #[serde(default = "default_linger", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub linger: Duration,

    /// TLS and SASL settings.
    #[serde(default)]
    pub security: KafkaSecurity,

    /// Any other librdkafka producer property, passed through
    /// (`batch.size: "1000000"`). These win over Flumen's own.
    #[serde(default)]
    pub properties: IndexMap<String, String>,
}

fn default_linger() -> Duration {
    Duration::from_millis(5)
}

/// The delivery guarantee of the Kafka sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Idempotent producer, flushed at checkpoints.
    #[default]
    AtLeastOnce,
    /// Kafka transactions committed with checkpoints.
    ExactlyOnce,
}

/// Compression of produced batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// None.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    #[default]
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    pub(super) fn codec(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl KafkaSinkConfig {
    /// Writes JSON rows to `topic` at `brokers`, at least once.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        KafkaSinkConfig {
            brokers: brokers.into(),
            connect_timeout: flumen_clients::kafka::default_connect_timeout(),
            topic: topic.into(),
            key: None,
            format: ValueFormat::Json,
            value_column: None,
            avro: None,
            headers: IndexMap::new(),
            delivery: Delivery::AtLeastOnce,
            transactional_id: None,
            compression: Compression::default(),
            linger: default_linger(),
            security: KafkaSecurity::default(),
            properties: IndexMap::new(),
        }
    }

    /// Keys messages by `column`.
    pub fn with_key(mut self, column: impl Into<String>) -> Self {
        self.key = Some(column.into());
        self
    }

    /// Writes in Kafka transactions committed with checkpoints.
    pub fn exactly_once(mut self) -> Self {
        self.delivery = Delivery::ExactlyOnce;
        self
    }

    /// Sets a librdkafka property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    pub(super) fn client_config(&self) -> Result<rdkafka::ClientConfig> {
        let mut client =
            flumen_clients::kafka::client_config(&self.brokers, &self.security, &IndexMap::new())?;
        client
            .set("enable.idempotence", "true")
            .set("compression.codec", self.compression.codec())
            .set("linger.ms", self.linger.as_millis().to_string());
        for (key, value) in &self.properties {
            client.set(key, value);
        }
        client
            .create_native_config()
            .map_err(flumen_clients::kafka::kafka_error)?;
        Ok(client)
    }
}

impl SinkConfig for KafkaSinkConfig {
    const TYPE: &str = "kafka";
    const DESCRIPTION: &str =
        "Writes rows to a Kafka topic, at least once or exactly once with transactions.";
    type Sink = KafkaSink;

    /// Checks the settings and returns the sink.
    fn build(&self) -> Result<KafkaSink> {
        if self.topic.trim().is_empty() {
            return Err(Error::config("topic", "is empty; name the topic to write"));
        }
        // Fail on a bad property now rather than at the first write.
        self.client_config()?;
        KafkaSink::new(self.clone())
    }
}

impl KafkaSinkConfig {
    /// The key (text column 0) and the headers (1 on), as messages carry
    /// them.
    pub(super) fn message_settings(&self) -> MessageSettings<'_> {
        let mut text_columns: Vec<(String, &str)> = Vec::new();
        if let Some(key) = &self.key {
            text_columns.push(("key".into(), key));
        }
        for (header, column) in &self.headers {
            text_columns.push((format!("headers.{header}"), column));
        }
        MessageSettings {
            format: self.format,
            value_column: self.value_column.as_deref(),
            avro: self.avro.as_ref(),
            text_columns,
        }
    }
}
