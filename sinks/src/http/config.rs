//! Configuration of the HTTP sink.

use std::time::Duration;

use flumen_core::prelude::*;
use indexmap::IndexMap;
use serde::Deserialize;

use super::sink::HttpSink;
pub use flumen_clients::retry::{CircuitBreakerConfig, RetryConfig};

/// How rows are put in a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// A JSON array of row objects (`application/json`).
    #[default]
    JsonArray,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
}

/// POSTs rows in batches to a URL, retrying what the server is not ready
/// for.
///
/// A 2xx answer delivers a batch. 429, 5xx, timeouts and connection
/// failures are retried with capped exponential backoff and jitter (or
/// after the server's `Retry-After`), holding the pipeline back meanwhile;
/// other 4xx answers send the batch's rows to the dead letters. Delivery
/// is at least once: a batch sent just before a crash is sent again.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Where to POST: `http://legacy.internal:8080/articles`.
    pub url: String,

    /// `json_array` (default) or `ndjson`.
    #[serde(default)]
    pub format: BodyFormat,

    /// Most rows per request.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,

    /// Requests in flight at once, per instance.
    #[serde(default = "one")]
    pub concurrency: usize,

    /// Extra request headers, e.g. `{ Authorization: "Bearer ${TOKEN}" }`.
    #[serde(default)]
    pub headers: IndexMap<String, String>,

    /// How long one request may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,

    /// Retries of failed requests.
    #[serde(default)]
    pub retry: RetryConfig,

    /// Stops sending for a while after several failures in a row, so that
    /// a struggling server is not hammered.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
}

fn default_batch_size() -> usize {
    500
}
fn one() -> usize {
    1
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl SinkConfig for HttpSinkConfig {
    const TYPE: &str = "http";
    const DESCRIPTION: &str =
        "POSTs batches of rows to a URL, with retries, backoff and a circuit breaker.";
    type Sink = HttpSink;

    /// Checks the settings and returns the sink.
    fn build(&self) -> Result<HttpSink> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| Error::config("url", format!("`{}`: {e}", self.url)))?;
        if !["http", "https"].contains(&url.scheme()) {
            return Err(Error::config("url", "must be an http:// or https:// URL"));
        }
        if self.batch_size == 0 {
            return Err(Error::config("batch_size", "must be at least 1"));
        }
        if self.concurrency == 0 {
            return Err(Error::config("concurrency", "must be at least 1"));
        }
        self.retry.check("retry")?;
        self.circuit_breaker.check("circuit_breaker")?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &self.headers {
            let key = format!("headers.{name}");
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| Error::config(&key, e))?;
            let value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|e| Error::config(&key, e))?;
            headers.insert(name, value);
        }
        Ok(HttpSink::new(self.clone(), url, headers))
    }
}
