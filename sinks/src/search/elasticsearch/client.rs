//! Bulk requests: bodies within bounds, the per-item answers, and what
//! is sent again.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Deserialize;

use flumen_core::prelude::*;

use super::config::ElasticsearchConfig;
use crate::http::sink::{backoff, retry_after, retryable};

/// One document's write: the lines it adds to a bulk body.
#[derive(Debug, Clone)]
pub(crate) struct Action {
    /// `{"index": ...}` and the document, or `{"delete": ...}`, each
    /// ending in a newline.
    pub(crate) lines: Vec<u8>,
    pub(crate) delete: bool,
    /// Which row it came from, so that a refusal can name it.
    pub(crate) row: usize,
}

/// An action the cluster refused for good, and its reason.
pub(crate) type Refused = (usize, String);

/// Sends bulk requests to one cluster.
#[derive(Debug, Clone)]
pub(crate) struct BulkClient {
    http: reqwest::Client,
    bulk_url: reqwest::Url,
    settings: ElasticsearchConfig,
    /// `{"_index":"INDEX","_id":` — the start of every action's metadata.
    metadata_prefix: String,
}

/// The answer to a bulk request, as far as the sink needs it.
#[derive(Deserialize)]
struct BulkResponse {
    items: Vec<HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// What became of one request.
enum Answer {
    /// The actions the cluster refused for good, and those to send again.
    Items {
        refused: Vec<Refused>,
        again: Vec<Action>,
    },
    /// Nothing was taken; send it all again after `wait` (if the cluster
    /// said how long).
    Failed {
        reason: String,
        wait: Option<Duration>,
    },
    /// The request as a whole was refused for good.
    Refused(String),
}

impl BulkClient {
    pub(super) fn new(
        http: reqwest::Client,
        bulk_url: reqwest::Url,
        settings: ElasticsearchConfig,
    ) -> Self {
        let index = serde_json::to_string(&settings.index).expect("a string is JSON");
        BulkClient {
            http,
            bulk_url,
            metadata_prefix: format!("{{\"_index\":{index},\"_id\":"),
            settings,
        }
    }

    pub(crate) fn settings(&self) -> &ElasticsearchConfig {
        &self.settings
    }

    /// The action that indexes `document` (one JSON object) as `id`.
    pub(crate) fn index(&self, id: &str, document: &[u8], row: usize) -> Action {
        let mut lines = Vec::with_capacity(document.len() + id.len() + 48);
        self.metadata(&mut lines, "index", id);
        lines.extend_from_slice(document);
        lines.push(b'\n');
        Action {
            lines,
            delete: false,
            row,
        }
    }

    /// The action that deletes the document `id`.
    pub(crate) fn delete(&self, id: &str, row: usize) -> Action {
        let mut lines = Vec::with_capacity(id.len() + 48);
        self.metadata(&mut lines, "delete", id);
        Action {
            lines,
            delete: true,
            row,
        }
    }

    fn metadata(&self, out: &mut Vec<u8>, action: &str, id: &str) {
        out.extend_from_slice(b"{\"");
        out.extend_from_slice(action.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(self.metadata_prefix.as_bytes());
        serde_json::to_writer(&mut *out, id).expect("a string is JSON");
        out.extend_from_slice(b"}}\n");
    }

    /// Sends `actions` (of distinct documents) in requests within the
    /// bounds, `concurrency` at a time, until each one is taken or refused
    /// for good; returns the refused ones.
    pub(crate) async fn send(&self, actions: Vec<Action>) -> Result<Vec<Refused>> {
        let requests = self.split(actions);
        let sent: Vec<Result<Vec<Refused>>> = futures::stream::iter(requests)
            .map(|actions| self.send_request(actions))
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        let mut refused = Vec::new();
        for outcome in sent {
            refused.extend(outcome?);
        }
        Ok(refused)
    }

    /// `actions` in requests of at most `max_documents` and `max_bytes`.
    fn split(&self, actions: Vec<Action>) -> Vec<Vec<Action>> {
        let mut requests = Vec::new();
        let mut request: Vec<Action> = Vec::new();
        let mut bytes = 0;
        for action in actions {
            if !request.is_empty()
                && (request.len() >= self.settings.max_documents
                    || bytes + action.lines.len() > self.settings.max_bytes)
            {
                requests.push(std::mem::take(&mut request));
                bytes = 0;
            }
            bytes += action.lines.len();
            request.push(action);
        }
        if !request.is_empty() {
            requests.push(request);
        }
        requests
    }

    /// Sends one request's actions until each is taken or refused; the
    /// items answered 429 or 5xx (and the whole request, when it fails as
    /// a whole) go again after a backoff.
    async fn send_request(&self, mut actions: Vec<Action>) -> Result<Vec<Refused>> {
        let retry = &self.settings.retry;
        let mut refused = Vec::new();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let (reason, wait) = match self.post(&actions).await? {
                Answer::Items {
                    refused: now_refused,
                    again,
                } => {
                    refused.extend(now_refused);
                    if again.is_empty() {
                        return Ok(refused);
                    }
                    let reason = format!(
                        "the cluster asked for {} of {} documents again",
                        again.len(),
                        actions.len()
                    );
                    actions = again;
                    (reason, None)
                }
                Answer::Failed { reason, wait } => (reason, wait),
                Answer::Refused(reason) => {
                    refused.extend(actions.iter().map(|a| (a.row, reason.clone())));
                    return Ok(refused);
                }
            };
            if retry.max_attempts.is_some_and(|max| attempt >= max) {
                return Err(Error::connector(
                    "elasticsearch",
                    true,
                    format!(
                        "{}: gave up after {attempt} attempts: {reason}",
                        self.bulk_url
                    ),
                ));
            }
            let wait = wait
                .unwrap_or_else(|| backoff(retry.initial_backoff, attempt))
                .min(retry.max_backoff);
            tracing::warn!(url = %self.bulk_url, attempt, ?wait, "{reason}; sending again");
            tokio::time::sleep(wait).await;
        }
    }

    /// One bulk request, and what the cluster made of each action.
    async fn post(&self, actions: &[Action]) -> Result<Answer> {
        let body: Vec<u8> = actions
            .iter()
            .flat_map(|a| a.lines.iter().copied())
            .collect();
        let response = self
            .http
            .post(self.bulk_url.clone())
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            )
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                return Ok(Answer::Failed {
                    reason: error_chain(&error),
                    wait: None,
                });
            }
        };
        let status = response.status();
        if retryable(status) {
            return Ok(Answer::Failed {
                reason: format!("the cluster answered HTTP {status}"),
                wait: retry_after(response.headers()),
            });
        }
        let text = match response.text().await {
            Ok(text) => text,
            Err(error) => {
                return Ok(Answer::Failed {
                    reason: error_chain(&error),
                    wait: None,
                });
            }
        };
        let excerpt = || text.chars().take(500).collect::<String>();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // Not the rows' fault: fail (and restart) rather than send
            // every row to the dead letters.
            return Err(Error::connector(
                "elasticsearch",
                true,
                format!(
                    "{} answered HTTP {status} (check `username` and `password`, or `api_key`): {}",
                    self.bulk_url,
                    excerpt()
                ),
            ));
        }
        if !status.is_success() {
            return Ok(Answer::Refused(format!(
                "the cluster refused the request: HTTP {status}: {}",
                excerpt()
            )));
        }
        let answer: BulkResponse = serde_json::from_str(&text).map_err(|e| {
            Error::connector(
                "elasticsearch",
                true,
                format!("{}: not a bulk answer ({e}): {}", self.bulk_url, excerpt()),
            )
        })?;
        if answer.items.len() != actions.len() {
            return Err(Error::connector(
                "elasticsearch",
                true,
                format!(
                    "{}: answered {} items to {} actions",
                    self.bulk_url,
                    answer.items.len(),
                    actions.len()
                ),
            ));
        }
        let mut refused = Vec::new();
        let mut again = Vec::new();
        for (action, item) in actions.iter().zip(answer.items) {
            let Some(item) = item.into_values().next() else {
                return Err(Error::connector(
                    "elasticsearch",
                    true,
                    format!("{}: an empty item in a bulk answer", self.bulk_url),
                ));
            };
            let status = StatusCode::from_u16(item.status).unwrap_or(StatusCode::BAD_GATEWAY);
            // A delete of a document that is not there has its effect.
            if status.is_success() || (action.delete && status == StatusCode::NOT_FOUND) {
                continue;
            }
            if retryable(status) {
                again.push(action.clone());
            } else {
                refused.push((action.row, item_error(status, item.error)));
            }
        }
        Ok(Answer::Items { refused, again })
    }
}

/// The cluster's reason for refusing an item: `HTTP 400:
/// mapper_parsing_exception: failed to parse field [likes]`.
fn item_error(status: StatusCode, error: Option<serde_json::Value>) -> String {
    let reason = match &error {
        Some(serde_json::Value::Object(error)) => {
            let text = |key: &str| error.get(key).and_then(|v| v.as_str()).unwrap_or("");
            match (text("type"), text("reason")) {
                ("", "") => serde_json::Value::Object(error.clone()).to_string(),
                (kind, "") => kind.to_string(),
                ("", reason) => reason.to_string(),
                (kind, reason) => format!("{kind}: {reason}"),
            }
        }
        Some(other) => other.to_string(),
        None => "no reason given".into(),
    };
    format!(
        "the cluster refused the document: HTTP {}: {reason}",
        status.as_u16()
    )
}

/// An error with its causes, which for reqwest say what actually failed
/// (`connection refused`, `operation timed out`).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(max_documents: usize, max_bytes: usize) -> BulkClient {
        let mut config = ElasticsearchConfig::new("http://127.0.0.1:9200", "tweets");
        config.max_documents = max_documents;
        config.max_bytes = max_bytes;
        config.client().unwrap()
    }

    #[test]
    fn actions_are_the_bulk_apis_lines() {
        let client = client(10, 1000);
        let index = client.index("7\"x", br#"{"likes":3}"#, 0);
        assert_eq!(
            String::from_utf8(index.lines).unwrap(),
            "{\"index\":{\"_index\":\"tweets\",\"_id\":\"7\\\"x\"}}\n{\"likes\":3}\n"
        );
        let delete = client.delete("8", 1);
        assert_eq!(
            String::from_utf8(delete.lines).unwrap(),
            "{\"delete\":{\"_index\":\"tweets\",\"_id\":\"8\"}}\n"
        );
        assert_eq!(client.bulk_url.as_str(), "http://127.0.0.1:9200/_bulk");
    }

    #[test]
    fn requests_stay_within_their_documents_and_bytes() {
        let client = client(3, 10_000);
        let actions: Vec<Action> = (0..10)
            .map(|i| client.index(&i.to_string(), &[b'1'; 40], i))
            .collect();
        let size = actions[0].lines.len();
        let requests = client.split(actions);
        let sizes: Vec<usize> = requests.iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        let client = self::client(100, size * 2 + 1);
        let requests = client.split(
            (0..5)
                .map(|i| client.index(&i.to_string(), &[b'1'; 40], i))
                .collect(),
        );
        assert!(requests.iter().all(|r| r.len() == 2 || r.len() == 1));
        // A document larger than a request goes alone.
        let client = self::client(100, 10);
        let requests = client.split(
            (0..3)
                .map(|i| client.index(&i.to_string(), &[b'1'; 40], i))
                .collect(),
        );
        assert_eq!(requests.len(), 3);
    }

    #[test]
    fn settings_that_cannot_work_are_refused_by_name() {
        let mut config = ElasticsearchConfig::new("ftp://es", "tweets");
        assert!(
            config
                .client()
                .unwrap_err()
                .to_string()
                .contains("elasticsearch.url")
        );
        config.url = "http://es:9200".into();
        config.index = "Tweets".into();
        assert!(
            config
                .client()
                .unwrap_err()
                .to_string()
                .contains("lowercase")
        );
        config.index = "tweets".into();
        config.username = Some("elastic".into());
        assert!(
            config
                .client()
                .unwrap_err()
                .to_string()
                .contains("`elasticsearch.password`: is needed with `username`")
        );
        config.password = Some("secret".into());
        config.api_key = Some("key".into());
        assert!(
            config
                .client()
                .unwrap_err()
                .to_string()
                .contains("goes alone")
        );
    }
}
