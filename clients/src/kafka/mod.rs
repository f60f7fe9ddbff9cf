//! What the Kafka source and sink share: connection and security
//! settings, librdkafka's errors and logs, and the messages of
//! repartition topics.

pub mod repartition;

use std::time::{Duration, Instant};

use indexmap::IndexMap;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use serde::Deserialize;

use flumen_core::prelude::*;

/// How to reach and authenticate to a Kafka cluster. Secrets are best
/// given as `${VAR}`, read from the environment when the pipeline loads.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub protocol: Option<SecurityProtocol>,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or
    /// `OAUTHBEARER`.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    #[serde(default)]
    pub username: Option<String>,
    /// SASL password, e.g. `${KAFKA_PASSWORD}`.
    #[serde(default)]
    pub password: Option<String>,
    /// PEM file of the certificate authorities to trust (TLS).
    #[serde(default)]
    #[schemars(extend("format" = "path"))]
    pub ca_location: Option<String>,
    /// PEM file of the client certificate (mutual TLS).
    #[serde(default)]
    #[schemars(extend("format" = "path"))]
    pub certificate_location: Option<String>,
    /// PEM file of the client's private key (mutual TLS).
    #[serde(default)]
    #[schemars(extend("format" = "path"))]
    pub key_location: Option<String>,
    /// Password of the private key, e.g. `${KAFKA_KEY_PASSWORD}`.
    #[serde(default)]
    pub key_password: Option<String>,
}

/// The transport and authentication of a Kafka connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL authentication without TLS.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

/// The librdkafka settings for `brokers`, `security` and the user's extra
/// `properties` (which win, so any librdkafka setting can be reached).
pub fn client_config(
    brokers: &str,
    security: &KafkaSecurity,
    properties: &IndexMap<String, String>,
) -> Result<ClientConfig> {
    if brokers.trim().is_empty() {
        return Err(Error::config(
            "brokers",
            "is empty; expected `host:port` (comma-separated for several)",
        ));
    }
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    // librdkafka's own debug output (`properties: { debug: cgrp }`) shows
    // with RUST_LOG=flumen::kafka=debug.
    let level = if tracing::enabled!(target: "flumen::kafka", tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Warning
    };
    config.set_log_level(level);
    if let Some(protocol) = security.protocol {
        let name = match protocol {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        };
        config.set("security.protocol", name);
    }
    let settings = [
        ("sasl.mechanism", &security.sasl_mechanism),
        ("sasl.username", &security.username),
        ("sasl.password", &security.password),
        ("ssl.ca.location", &security.ca_location),
        ("ssl.certificate.location", &security.certificate_location),
        ("ssl.key.location", &security.key_location),
        ("ssl.key.password", &security.key_password),
    ];
    for (key, value) in settings {
        if let Some(value) = value {
            config.set(key, value);
        }
    }
    for (key, value) in properties {
        config.set(key, value);
    }
    // librdkafka checks every name and value here, without connecting:
    // a bad property fails when the pipeline is built, naming it.
    config.create_native_config().map_err(kafka_error)?;
    Ok(config)
}

/// How long a Kafka source or sink waits for its brokers to answer at
/// start, by default.
pub fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Waiting at start for one of a cluster's brokers to answer, logging each
/// failed attempt (`waiting for brokers 127.0.0.1:9092 (…)`), for at most
/// a setting's time; then the error names the brokers and the setting.
pub struct BrokerWait {
    client: BaseConsumer,
    brokers: String,
    within: Duration,
    setting: String,
    started: Instant,
    /// When a failed attempt was last logged: every few seconds is enough.
    warned: Option<Instant>,
}

impl BrokerWait {
    /// Starts waiting for `brokers`, reached with `config`, for at most
    /// `within`, which `setting` (a key path) sets.
    pub fn new(
        config: &ClientConfig,
        brokers: &str,
        within: Duration,
        setting: impl Into<String>,
    ) -> Result<BrokerWait> {
        Ok(BrokerWait {
            client: config.create().map_err(kafka_error)?,
            brokers: brokers.to_string(),
            within,
            setting: setting.into(),
            started: Instant::now(),
            warned: None,
        })
    }

    /// Asks the brokers once, waiting at most `attempt`: whether one
    /// answered, or the error once the time allowed has passed. Blocks:
    /// call it off the async workers, and again while it returns false.
    pub fn attempt(&mut self, attempt: Duration) -> Result<bool> {
        let left = self.within.saturating_sub(self.started.elapsed());
        let error = match self.client.fetch_metadata(None, attempt.min(left)) {
            Ok(_) => return Ok(true),
            Err(error) => error,
        };
        if self.started.elapsed() >= self.within {
            return Err(Error::connector(
                "kafka",
                false,
                format!(
                    "cannot reach the brokers {} within {}s (set by `{}`): {error}",
                    self.brokers,
                    self.within.as_secs_f64(),
                    self.setting
                ),
            ));
        }
        if self
            .warned
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(5))
        {
            tracing::warn!("waiting for brokers {} ({error})", self.brokers);
            self.warned = Some(Instant::now());
        }
        Ok(false)
    }

    /// Waits until a broker answers, or fails. Blocks.
    pub fn wait(mut self) -> Result<()> {
        while !self.attempt(Duration::from_secs(2))? {
            // A refused connection fails at once: do not spin.
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }
}

/// A librdkafka error as a Flumen error: retryable unless librdkafka says
/// it is fatal or the request was invalid.
pub fn kafka_error(error: KafkaError) -> Error {
    if let KafkaError::ClientConfig(_, description, key, value) = &error {
        return Error::config(
            "properties",
            format!("librdkafka refused `{key}: {value}`: {description}"),
        );
    }
    let retryable = match &error {
        KafkaError::ClientCreation(_) | KafkaError::Subscription(_) => false,
        other => other.rdkafka_error_code().is_none_or(|code| {
            !matches!(
                code,
                rdkafka::types::RDKafkaErrorCode::Fatal
                    | rdkafka::types::RDKafkaErrorCode::InvalidArgument
                    | rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed
                    | rdkafka::types::RDKafkaErrorCode::GroupAuthorizationFailed
                    | rdkafka::types::RDKafkaErrorCode::SaslAuthenticationFailed
            )
        }),
    };
    Error::connector("kafka", retryable, error)
}

/// One librdkafka log line, into `tracing`.
pub fn log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "flumen::kafka", facility, "{message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "flumen::kafka", facility, "{message}"),
        _ => tracing::debug!(target: "flumen::kafka", facility, "{message}"),
    }
}
