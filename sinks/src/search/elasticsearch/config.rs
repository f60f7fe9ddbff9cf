//! Configuration of the Elasticsearch/OpenSearch backend.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde::Deserialize;

use flumen_core::prelude::*;

use super::client::BulkClient;
use crate::http::RetryConfig;

/// An Elasticsearch or OpenSearch index that rows are indexed into
/// through the `_bulk` API, each row as the document of its `id`.
///
/// Writes are collected and sent at every checkpoint barrier, or sooner
/// when `max_documents` or `max_bytes` are reached. Only the items the
/// cluster answers 429 or 5xx are sent again, after a backoff that holds
/// the pipeline back; items answered 4xx go to the dead letters with the
/// cluster's reason. A request that fails as a whole (a timeout, a lost
/// connection, 429 or 5xx) is sent again.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    /// The cluster's address, e.g. `https://es.internal:9200`.
    pub url: String,

    /// The index, e.g. `tweets`. Its mapping is the cluster's: create the
    /// index with one, or let the cluster map fields as they come.
    pub index: String,

    /// A user for basic authentication (with `password`).
    #[serde(default)]
    pub username: Option<String>,

    /// The user's password, e.g. `${ES_PASSWORD}`.
    #[serde(default)]
    pub password: Option<String>,

    /// An API key, as the cluster encodes it (sent as `Authorization:
    /// ApiKey KEY`), e.g. `${ES_API_KEY}`.
    #[serde(default)]
    pub api_key: Option<String>,

    /// A PEM file of the certificate authority that signed the cluster's
    /// certificate, for an `https://` cluster with a private CA.
    #[serde(default)]
    #[schemars(extend("format" = "path"))]
    pub ca_file: Option<PathBuf>,

    /// Most documents in one request.
    #[serde(default = "default_max_documents")]
    pub max_documents: usize,

    /// Most bytes in one request's body (a document larger than this goes
    /// alone).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,

    /// Requests in flight at once. They hold different documents, so a
    /// document's writes are never reordered.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,

    /// How long one request may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,

    /// Backoff between attempts, and how many attempts a request gets
    /// before the pipeline fails (default: until the cluster takes it).
    #[serde(default)]
    pub retry: RetryConfig,
}

fn default_max_documents() -> usize {
    1000
}
fn default_max_bytes() -> usize {
    5 << 20
}
fn default_concurrency() -> usize {
    2
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl ElasticsearchConfig {
    /// Indexes into `index` at the cluster `url`, with the defaults.
    pub fn new(url: impl Into<String>, index: impl Into<String>) -> Self {
        ElasticsearchConfig {
            url: url.into(),
            index: index.into(),
            username: None,
            password: None,
            api_key: None,
            ca_file: None,
            max_documents: default_max_documents(),
            max_bytes: default_max_bytes(),
            concurrency: default_concurrency(),
            timeout: default_timeout(),
            retry: RetryConfig::default(),
        }
    }

    /// Checks the settings and builds the client that sends requests.
    pub(crate) fn client(&self) -> Result<BulkClient> {
        let at = |key: &str| format!("elasticsearch.{key}");
        let mut url = reqwest::Url::parse(&self.url)
            .map_err(|e| Error::config(at("url"), format!("`{}`: {e}", self.url)))?;
        if !["http", "https"].contains(&url.scheme()) {
            return Err(Error::config(
                at("url"),
                "must be an http:// or https:// URL, e.g. `https://es.internal:9200`",
            ));
        }
        if self.index.is_empty()
            || self.index.starts_with(['_', '-', '+'])
            || self
                .index
                .contains(['/', '\\', '*', '?', '"', '<', '>', '|', ' ', ',', '#'])
        {
            return Err(Error::config(
                at("index"),
                format!(
                    "`{}` is not an index name: lowercase letters, digits, `-`, `_` and `.`, not starting with `_`, `-` or `+`",
                    self.index
                ),
            ));
        }
        if self.index != self.index.to_lowercase() {
            return Err(Error::config(
                at("index"),
                format!("`{}` has capitals; index names are lowercase", self.index),
            ));
        }
        for (key, value) in [
            ("max_documents", self.max_documents),
            ("max_bytes", self.max_bytes),
            ("concurrency", self.concurrency),
        ] {
            if value == 0 {
                return Err(Error::config(at(key), "must be at least 1"));
            }
        }
        if self.retry.initial_backoff > self.retry.max_backoff {
            return Err(Error::config(
                at("retry.initial_backoff"),
                "is longer than `retry.max_backoff`",
            ));
        }
        let mut headers = HeaderMap::new();
        let credential = match (&self.username, &self.password, &self.api_key) {
            (None, None, None) => None,
            (Some(user), Some(password), None) => {
                use base64::Engine;
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some((at("password"), format!("Basic {pair}")))
            }
            (None, None, Some(key)) => Some((at("api_key"), format!("ApiKey {key}"))),
            (Some(_), None, None) => {
                return Err(Error::config(at("password"), "is needed with `username`"));
            }
            (None, Some(_), None) => {
                return Err(Error::config(at("username"), "is needed with `password`"));
            }
            (_, _, Some(_)) => {
                return Err(Error::config(
                    at("api_key"),
                    "goes alone: give `api_key`, or `username` and `password`",
                ));
            }
        };
        if let Some((key, value)) = credential {
            let mut value = HeaderValue::from_str(&value).map_err(|e| Error::config(key, e))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .default_headers(headers);
        if let Some(file) = &self.ca_file {
            let pem = std::fs::read(file)
                .map_err(|e| Error::config(at("ca_file"), format!("{}: {e}", file.display())))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::config(
                    at("ca_file"),
                    format!("{}: not PEM certificates: {e}", file.display()),
                )
            })?;
            if certificates.is_empty() {
                return Err(Error::config(
                    at("ca_file"),
                    format!("{} holds no certificate", file.display()),
                ));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder
            .build()
            .map_err(|e| Error::connector("elasticsearch", false, e))?;
        url.path_segments_mut()
            .map_err(|()| Error::config(at("url"), "cannot be a base URL"))?
            .pop_if_empty()
            .push("_bulk");
        Ok(BulkClient::new(http, url, self.clone()))
    }
}
