//! Configuration of the key-value sink.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use flumen_core::prelude::*;

use super::sink::KvSink;
use super::template::KeyTemplate;

/// Keeps a view of its input by key: upserts, and deletes from a
/// changelog, in an embedded store (`path`), Redis (`redis`) or DynamoDB
/// (`dynamodb`); give one of the three.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KvSinkConfig {
    /// The embedded store's file, e.g. `views/tweets.redb`, created if
    /// missing. `flumen kv` reads it while the pipeline runs, and so does
    /// the `serve:` server. Exactly once with checkpoints.
    #[serde(default)]
    #[schemars(extend("format" = "path"))]
    pub path: Option<PathBuf>,

    /// Keep the view in Redis instead. Exactly once with checkpoints.
    #[cfg(feature = "redis")]
    #[serde(default)]
    pub redis: Option<super::redis::RedisConfig>,

    /// Keep the view in a DynamoDB table instead. At least once, with
    /// writes conditional on the version: a repeated write changes
    /// nothing.
    #[cfg(feature = "dynamodb")]
    #[serde(default)]
    pub dynamodb: Option<super::dynamodb::DynamoDbConfig>,

    /// Each row's key: a template over columns in braces, e.g.
    /// `tweet:{tweet_id}` (`{{` and `}}` for braces). A row with a null in
    /// a key column goes to the dead letters.
    pub key: String,

    /// The columns that make the value, a JSON object. Default: every
    /// column but the changelog's `_op`.
    #[serde(default)]
    pub value: Option<Vec<String>>,

    /// A SQL condition over the input's columns that makes a row delete
    /// its key, e.g. `stock = 0`; other rows are upserts (and a
    /// changelog's deletes stay deletes).
    #[serde(default)]
    pub delete_when: Option<String>,

    /// A column (integer, or a timestamp) whose higher value wins: a row
    /// older than what the store holds for its key changes nothing, so a
    /// replay or a late row never regresses a value. Default: the input's
    /// event-time column if it has one, else the last row to arrive wins.
    #[serde(default)]
    pub version: Option<String>,

    /// How long values live: a duration from when they are written (e.g.
    /// `24h`), or `{ column: expires_at }` (a timestamp column). Expired
    /// values are gone for readers. Default: for ever.
    #[serde(default)]
    pub ttl: Option<Ttl>,
}

/// How long a value lives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Ttl {
    /// This long after it is written.
    For(
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        Duration,
    ),
    /// Until the time in this column.
    Until {
        /// A timestamp (or epoch milliseconds) column.
        column: String,
    },
}

impl KvSinkConfig {
    /// Keeps rows by `key` (a template) in the store at `path`.
    pub fn new(path: impl Into<PathBuf>, key: impl Into<String>) -> Self {
        KvSinkConfig {
            path: Some(path.into()),
            #[cfg(feature = "redis")]
            redis: None,
            #[cfg(feature = "dynamodb")]
            dynamodb: None,
            key: key.into(),
            delete_when: None,
            value: None,
            version: None,
            ttl: None,
        }
    }
}

impl SinkConfig for KvSinkConfig {
    const TYPE: &str = "kv";
    const DESCRIPTION: &str =
        "Keeps a view by key (upserts, changelog deletes) in an embedded store, Redis or DynamoDB.";
    type Sink = KvSink;

    fn build(&self) -> Result<KvSink> {
        self.build_in(&(&[] as &[ComponentType]))
    }

    fn build_in(&self, catalog: &dyn Catalog) -> Result<KvSink> {
        let template = KeyTemplate::parse(&self.key)?;
        let mut backends = Vec::new();
        if let Some(path) = &self.path {
            if path.as_os_str().is_empty() {
                return Err(Error::config("path", "is empty; e.g. `views/tweets.redb`"));
            }
            backends.push(Backend::Embedded(path.clone()));
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            backends.push(Backend::Redis(redis.settings(catalog, &self.key)?));
        }
        #[cfg(feature = "dynamodb")]
        if let Some(dynamodb) = &self.dynamodb {
            dynamodb.check()?;
            backends.push(Backend::DynamoDb(dynamodb.clone()));
        }
        let _ = catalog;
        let backend = match backends.len() {
            1 => backends.remove(0),
            0 => {
                return Err(Error::config(
                    "",
                    "needs a store: `path` (an embedded store's file), `redis` or `dynamodb`",
                ));
            }
            _ => {
                return Err(Error::config(
                    "",
                    "has more than one store; give one of `path`, `redis` and `dynamodb`",
                ));
            }
        };
        if let Some(Ttl::For(ttl)) = &self.ttl
            && ttl.is_zero()
        {
            return Err(Error::config("ttl", "must be more than 0"));
        }
        if self.value.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::config("value", "lists no columns"));
        }
        Ok(KvSink::new(self.clone(), template, backend))
    }
}

/// The store a sink writes, as its settings say.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Embedded(PathBuf),
    #[cfg(feature = "redis")]
    Redis(super::redis::RedisSettings),
    #[cfg(feature = "dynamodb")]
    DynamoDb(super::dynamodb::DynamoDbConfig),
}
