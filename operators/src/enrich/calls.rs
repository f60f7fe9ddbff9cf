//! The calls: requests built from rows, sent with retries behind a
//! circuit breaker, answered from the cache when they can be.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flumen_clients::retry::{Breaker, retry_after, retryable};
use flumen_core::prelude::*;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::config::{EnrichConfig, Method, NotFound};

/// What a URL template's column values are encoded with: all but the
/// unreserved characters of RFC 3986.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A URL with `{column}` placeholders.
#[derive(Debug, Clone)]
pub(crate) struct UrlTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Column(String),
}

impl UrlTemplate {
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let mut parts = Vec::new();
        let mut rest = url;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').ok_or_else(|| {
                Error::config("url", format!("`{url}` opens a `{{` it does not close"))
            })?;
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let column = rest[open + 1..open + close].trim();
            if column.is_empty() {
                return Err(Error::config("url", format!("`{url}` has an empty `{{}}`")));
            }
            parts.push(Part::Column(column.to_string()));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        // The template with every column filled in must be a URL.
        let sample: String = parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.as_str(),
                Part::Column(_) => "x",
            })
            .collect();
        let parsed = reqwest::Url::parse(&sample)
            .map_err(|e| Error::config("url", format!("`{url}` is not a URL: {e}")))?;
        if !["http", "https"].contains(&parsed.scheme()) {
            return Err(Error::config("url", "must be an http:// or https:// URL"));
        }
        Ok(UrlTemplate { parts })
    }

    /// The columns the template names.
    pub(crate) fn columns(&self) -> Vec<&str> {
        self.parts
            .iter()
            .filter_map(|part| match part {
                Part::Column(column) => Some(column.as_str()),
                Part::Text(_) => None,
            })
            .collect()
    }

    /// The URL for `row`.
    fn fill(&self, row: &Map<String, Value>) -> std::result::Result<String, String> {
        let mut url = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => url.push_str(text),
                Part::Column(column) => {
                    let value = match row.get(column) {
                        None | Some(Value::Null) => {
                            return Err(format!("column `{column}` is null, and the URL needs it"));
                        }
                        Some(Value::String(text)) => text.clone(),
                        Some(other) => other.to_string(),
                    };
                    url.extend(utf8_percent_encode(&value, COMPONENT));
                }
            }
        }
        Ok(url)
    }
}

/// One call's request: also its key in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Request {
    pub(crate) url: String,
    /// The JSON body of one row (the array of a batched call is built
    /// from these).
    pub(crate) body: Option<String>,
}

/// Builds each row's request.
pub(crate) fn requests(
    config: &EnrichConfig,
    url: &UrlTemplate,
    rows: &[Map<String, Value>],
) -> Vec<std::result::Result<Request, String>> {
    rows.iter()
        .map(|row| {
            let url = url.fill(row)?;
            let body = config.body.as_ref().map(|fields| {
                let object: Map<String, Value> = fields
                    .iter()
                    .map(|(field, column)| {
                        (
                            field.clone(),
                            row.get(column).cloned().unwrap_or(Value::Null),
                        )
                    })
                    .collect();
                Value::Object(object).to_string()
            });
            Ok(Request { url, body })
        })
        .collect()
}

/// How one call ended for good.
pub(crate) type Answer = std::result::Result<Arc<Value>, String>;

/// Answers by request, with when each was stored.
type Cache = lru::LruCache<Request, (Instant, Arc<Value>)>;

/// Makes the calls of one `enrich` component, shared by its instances:
/// the HTTP client, the bound on calls in flight, the breaker and the
/// cache.
pub(crate) struct Caller {
    client: reqwest::Client,
    method: Method,
    config: EnrichConfig,
    breaker: Breaker,
    in_flight: Semaphore,
    cache: Option<Mutex<Cache>>,
    node: Arc<str>,
}

impl Caller {
    pub(crate) fn new(config: &EnrichConfig, node: Arc<str>) -> Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &config.headers {
            let key = format!("headers.{name}");
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| Error::config(&key, e))?;
            let value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|e| Error::config(&key, e))?;
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .default_headers(headers)
            .build()
            .map_err(|e| Error::connector("enrich", false, e))?;
        let cache = config.cache.as_ref().map(|cache| {
            let entries = NonZeroUsize::new(cache.max_entries).expect("checked in build");
            Mutex::new(lru::LruCache::new(entries))
        });
        Ok(Caller {
            client,
            method: config.method(),
            config: config.clone(),
            breaker: Breaker::new(config.circuit_breaker.clone()),
            in_flight: Semaphore::new(config.concurrency),
            cache,
            node,
        })
    }

    /// The cached answer to `request`, if it is fresh.
    fn cached(&self, request: &Request) -> Option<Arc<Value>> {
        let cache = self.cache.as_ref()?;
        let ttl = self.config.cache.as_ref().expect("cache configured").ttl;
        let mut cache = cache.lock().expect("cache");
        let (stored, answer) = cache.get(request)?;
        if stored.elapsed() < ttl {
            return Some(answer.clone());
        }
        cache.pop(request);
        None
    }

    fn remember(&self, request: &Request, answer: &Arc<Value>) {
        if let Some(cache) = &self.cache {
            cache
                .lock()
                .expect("cache")
                .put(request.clone(), (Instant::now(), answer.clone()));
        }
    }

    /// The answers to `requests`, one per request, in order: from the
    /// cache, or from calls (of one row each, or `batch_size` rows each);
    /// and how many came from the cache.
    pub(crate) async fn answer(&self, requests: &[Request]) -> (Vec<Answer>, u64) {
        let mut answers: Vec<Option<Answer>> = requests.iter().map(|_| None).collect();
        // Rows asking the same thing share one call.
        let mut asked: indexmap::IndexMap<&Request, Vec<usize>> = indexmap::IndexMap::new();
        for (index, request) in requests.iter().enumerate() {
            match self.cached(request) {
                Some(answer) => answers[index] = Some(Ok(answer)),
                None => asked.entry(request).or_default().push(index),
            }
        }
        // A hit is a row answered without a call of its own: from the
        // cache, or by an identical row's call.
        let hits = (requests.len() - asked.len()) as u64;
        let node = self.node.to_string();
        metrics::counter!("flumen_enrich_cache_hits_total", "node" => node.clone()).increment(hits);
        metrics::counter!("flumen_enrich_cache_misses_total", "node" => node)
            .increment(asked.len() as u64);
        let unique: Vec<&Request> = asked.keys().copied().collect();
        let calls = unique
            .chunks(self.config.batch_size)
            .map(|chunk| self.call(chunk));
        let results = futures::future::join_all(calls).await;
        for (chunk, result) in unique.chunks(self.config.batch_size).zip(results) {
            for (request, answer) in chunk.iter().zip(result) {
                if let Ok(answer) = &answer {
                    self.remember(request, answer);
                }
                for index in &asked[request] {
                    answers[*index] = Some(answer.clone());
                }
            }
        }
        let answers = answers
            .into_iter()
            .map(|answer| answer.expect("every request answered"))
            .collect();
        (answers, hits)
    }

    /// One call for `requests` (one, or a batch sharing the URL), retried
    /// until answered or given up: an answer per request.
    async fn call(&self, requests: &[&Request]) -> Vec<Answer> {
        let batched = self.config.batch_size > 1;
        let url = &requests[0].url;
        let body: Option<String> = match batched {
            true => Some(format!(
                "[{}]",
                requests
                    .iter()
                    .map(|r| r.body.as_deref().unwrap_or("null"))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            false => requests[0].body.clone(),
        };
        let _permit = self.in_flight.acquire().await.expect("never closed");
        let retry = &self.config.retry;
        let node = self.node.to_string();
        let mut attempt: u32 = 0;
        let failure = loop {
            self.breaker.wait_while_open().await;
            attempt += 1;
            metrics::counter!("flumen_enrich_calls_total", "node" => node.clone()).increment(1);
            let request = match self.method {
                Method::Get => self.client.get(url),
                Method::Post => self.client.post(url),
            };
            let request = match &body {
                Some(body) => request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone()),
                None => request,
            };
            let (reason, server_wait) = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    self.breaker.succeeded();
                    break match response.json::<Value>().await {
                        Ok(answer) => {
                            return split_answer(answer, requests.len(), batched, url);
                        }
                        Err(e) => format!("{url} answered with a body that is not JSON: {e}"),
                    };
                }
                Ok(response) if retryable(response.status()) => {
                    let wait = retry_after(response.headers());
                    (format!("{url} answered HTTP {}", response.status()), wait)
                }
                Ok(response)
                    if response.status() == reqwest::StatusCode::NOT_FOUND
                        && self.config.not_found == NotFound::Keep =>
                {
                    // No record for these rows: their columns are null.
                    self.breaker.succeeded();
                    return requests.iter().map(|_| Ok(Arc::new(Value::Null))).collect();
                }
                Ok(response) => {
                    // Refused for good: this request will not do better.
                    self.breaker.succeeded();
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    break format!(
                        "{url} answered HTTP {status}: {}",
                        text.chars().take(300).collect::<String>()
                    );
                }
                Err(e) if e.is_timeout() => (
                    format!("{url} did not answer within {:?}", self.config.timeout),
                    None,
                ),
                Err(e) => (format!("{url}: {e}"), None),
            };
            self.breaker.failed(url);
            if retry.max_attempts.is_some_and(|max| attempt >= max) {
                break format!("gave up after {attempt} attempts: {reason}");
            }
            metrics::counter!("flumen_enrich_retries_total", "node" => node.clone()).increment(1);
            let wait = retry.wait(attempt, server_wait);
            tracing::debug!(node = %self.node, attempt, ?wait, "{reason}; retrying");
            tokio::time::sleep(wait).await;
        };
        requests.iter().map(|_| Err(failure.clone())).collect()
    }
}

/// The answer of each request of a call: the answer itself, or (batched)
/// the array's element at its place.
fn split_answer(answer: Value, count: usize, batched: bool, url: &str) -> Vec<Answer> {
    if !batched {
        return vec![Ok(Arc::new(answer))];
    }
    match answer {
        Value::Array(items) if items.len() == count => {
            items.into_iter().map(|item| Ok(Arc::new(item))).collect()
        }
        other => {
            let got = match &other {
                Value::Array(items) => format!("an array of {}", items.len()),
                _ => "no array".to_string(),
            };
            let failure = format!(
                "{url} answered a call for {count} rows with {got}: one answer per row, in order, was expected"
            );
            (0..count).map(|_| Err(failure.clone())).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_template_fills_in_percent_encoded_columns() {
        let template =
            UrlTemplate::parse("http://prices.local:8080/prices/{sku}?at={day}").unwrap();
        assert_eq!(template.columns(), ["sku", "day"]);
        let row: Map<String, Value> =
            serde_json::from_str(r#"{"sku":"a b/c","day":20261207}"#).unwrap();
        assert_eq!(
            template.fill(&row).unwrap(),
            "http://prices.local:8080/prices/a%20b%2Fc?at=20261207"
        );
        let null: Map<String, Value> = serde_json::from_str(r#"{"day":1}"#).unwrap();
        assert_eq!(
            template.fill(&null).unwrap_err(),
            "column `sku` is null, and the URL needs it"
        );
    }

    #[test]
    fn a_bad_url_template_is_refused_with_why() {
        let unclosed = UrlTemplate::parse("http://x/{sku").unwrap_err().to_string();
        assert!(
            unclosed.contains("opens a `{` it does not close"),
            "{unclosed}"
        );
        let scheme = UrlTemplate::parse("ftp://x/{sku}").unwrap_err().to_string();
        assert!(scheme.contains("http:// or https://"), "{scheme}");
    }

    #[test]
    fn a_batched_answer_must_have_one_element_per_row() {
        let answers = split_answer(serde_json::json!([{"a": 1}, {"a": 2}]), 2, true, "u");
        assert_eq!(answers[1].as_ref().unwrap()["a"], 2);
        let short = split_answer(serde_json::json!([{"a": 1}]), 2, true, "u");
        let error = short[0].as_ref().unwrap_err();
        assert!(error.contains("with an array of 1"), "{error}");
    }
}
