//! Configuration of the `enrich` transform.

use std::time::Duration;

use flumen_clients::retry::{CircuitBreakerConfig, RetryConfig};
use flumen_core::prelude::*;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use super::calls::UrlTemplate;
use super::operator::Enrich;

/// Adds columns to each row from an HTTP service's JSON answer to a call
/// made for the row (or for a batch of rows), with calls in flight
/// concurrently, a cache, retries and a circuit breaker.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// The URL to call, with `{column}` standing for the row's value of
    /// that column (percent-encoded): `http://prices.internal/prices/{sku}`.
    pub url: String,

    /// `get` (the default without `body`) or `post` (the default with one).
    #[serde(default)]
    pub method: Option<Method>,

    /// A JSON request body: field → the column whose value it carries,
    /// e.g. `{ sku: sku, quantity: qty }`. With `batch_size` above 1, the
    /// body is a JSON array of these objects, one per row.
    #[serde(default)]
    pub body: Option<IndexMap<String, String>>,

    /// Extra request headers, e.g. `{ Authorization: "Bearer ${TOKEN}" }`.
    #[serde(default)]
    pub headers: IndexMap<String, String>,

    /// The columns added, in order: name → type (`float64`), or
    /// `{ type: float64, path: /price/amount }`, where `path` is a JSON
    /// pointer into the answer (default: `/<name>`). A field the answer
    /// lacks is null.
    pub columns: IndexMap<String, ColumnSpec>,

    /// What an answer of 404 Not Found means: `dead_letter` (the
    /// default: the row goes to the dead letters, as with any other
    /// refusal) or `keep` (the service has no record for the row: it goes
    /// on with its added columns null, as in a left join).
    #[serde(default)]
    pub not_found: NotFound,

    /// Rows per call. 1 (the default) calls the service once per row.
    /// Above 1, one POST carries up to that many rows' bodies as a JSON
    /// array and must be answered with an array of as many answers, in
    /// order; the URL then names no column.
    #[serde(default = "one")]
    pub batch_size: usize,

    /// Calls in flight at once, over all the component's instances in
    /// this process (they share one client, cache and circuit breaker).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,

    /// Rows waiting for their answers at once, per instance; beyond that
    /// the input waits (backpressure). A checkpoint waits for these rows'
    /// calls, so this bounds its delay too.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,

    /// Keep the rows in their input order (the default). With `false`, a
    /// batch of rows goes out as soon as its calls are answered, ahead of
    /// earlier batches still waiting.
    #[serde(default = "yes")]
    pub ordered: bool,

    /// Answer identical calls (same URL and body) from a cache:
    /// `{ ttl: 1m, max_entries: 10000 }`. Default: no cache.
    #[serde(default)]
    pub cache: Option<CacheConfig>,

    /// How long one call may take; a call that takes longer is retried.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,

    /// Retries of failed calls (timeouts, connection failures, 429 and
    /// 5xx answers). Default: 5 attempts, then the row goes to the dead
    /// letters.
    #[serde(default = "default_retry")]
    pub retry: RetryConfig,

    /// Stops calling for a while after several failures in a row, so that
    /// a struggling service is not hammered.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
}

/// The HTTP method of the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// `GET`, the row's values in the URL.
    Get,
    /// `POST`, with the JSON `body`.
    Post,
}

/// What a 404 answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotFound {
    /// The row goes to the dead letters.
    #[default]
    DeadLetter,
    /// The row goes on, its added columns null.
    Keep,
}

/// A column added from the answer.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ColumnSpec {
    /// Its type; the value is the answer's field of the column's name.
    Type(String),
    /// Its type, and where the value is in the answer.
    Path {
        /// The column's type: `float64`, `string`, `list<string>`…
        #[serde(rename = "type")]
        data_type: String,
        /// A JSON pointer into the answer: `/price/amount`, `/items/0`.
        path: String,
    },
}

/// Cached answers.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long an answer is used.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// Most answers kept; the least recently used goes first.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_concurrency() -> usize {
    16
}
fn default_max_in_flight() -> usize {
    1_000
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_retry() -> RetryConfig {
    RetryConfig {
        max_attempts: Some(5),
        ..RetryConfig::default()
    }
}
fn default_max_entries() -> usize {
    10_000
}

impl EnrichConfig {
    /// Calls `url` for each row, adding `columns`.
    pub fn new(url: impl Into<String>, columns: IndexMap<String, ColumnSpec>) -> Self {
        EnrichConfig {
            url: url.into(),
            method: None,
            body: None,
            headers: IndexMap::new(),
            columns,
            not_found: NotFound::DeadLetter,
            batch_size: one(),
            concurrency: default_concurrency(),
            max_in_flight: default_max_in_flight(),
            ordered: true,
            cache: None,
            timeout: default_timeout(),
            retry: default_retry(),
            circuit_breaker: CircuitBreakerConfig::default(),
        }
    }

    /// The method the calls use.
    pub(crate) fn method(&self) -> Method {
        self.method.unwrap_or(match self.body {
            Some(_) => Method::Post,
            None => Method::Get,
        })
    }
}

impl TransformConfig for EnrichConfig {
    const TYPE: &str = "enrich";
    const DESCRIPTION: &str =
        "Adds columns from an HTTP service's answers, calls in flight concurrently, cached.";
    type Operator = Enrich;

    /// Checks the settings and returns the transform.
    fn build(&self) -> Result<Enrich> {
        let url = UrlTemplate::parse(&self.url)?;
        if self.columns.is_empty() {
            return Err(Error::config("columns", "names no column to add"));
        }
        for (name, spec) in &self.columns {
            let (data_type, path) = match spec {
                ColumnSpec::Type(data_type) => (data_type, None),
                ColumnSpec::Path { data_type, path } => (data_type, Some(path)),
            };
            flumen_core::schema::parse_type(data_type)
                .map_err(|e| Error::config(format!("columns.{name}"), e))?;
            if let Some(path) = path
                && !(path.is_empty() || path.starts_with('/'))
            {
                return Err(Error::config(
                    format!("columns.{name}.path"),
                    format!(
                        "`{path}` is not a JSON pointer: it starts with `/`, e.g. `/price/amount`"
                    ),
                ));
            }
        }
        if self.batch_size == 0 {
            return Err(Error::config("batch_size", "must be at least 1"));
        }
        if self.batch_size > 1 {
            if self.body.is_none() {
                return Err(Error::config(
                    "batch_size",
                    "above 1 needs `body`: the rows travel as a JSON array of bodies",
                ));
            }
            if !url.columns().is_empty() {
                return Err(Error::config(
                    "url",
                    "names a column, which one call for many rows cannot fill in (`batch_size` is above 1)",
                ));
            }
            if self.method() == Method::Get {
                return Err(Error::config(
                    "method",
                    "must be `post` with `batch_size` above 1: the rows travel in the body",
                ));
            }
        }
        if self.concurrency == 0 {
            return Err(Error::config("concurrency", "must be at least 1"));
        }
        if self.max_in_flight == 0 {
            return Err(Error::config("max_in_flight", "must be at least 1"));
        }
        if let Some(cache) = &self.cache {
            if cache.ttl.is_zero() {
                return Err(Error::config("cache.ttl", "must be more than 0"));
            }
            if cache.max_entries == 0 {
                return Err(Error::config("cache.max_entries", "must be at least 1"));
            }
        }
        self.retry.check("retry")?;
        self.circuit_breaker.check("circuit_breaker")?;
        Enrich::new(self.clone(), url)
    }
}
