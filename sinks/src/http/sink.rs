//! Sending batches, retrying, and the circuit breaker.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::record_batch::RecordBatch;
use flumen_core::dead_letter::Rejected;
use flumen_core::prelude::*;
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};

use super::config::{BodyFormat, HttpSinkConfig};

/// The HTTP sink. Built from an [`HttpSinkConfig`].
#[derive(Debug, Clone)]
pub struct HttpSink {
    config: HttpSinkConfig,
    url: reqwest::Url,
    headers: HeaderMap,
}

impl HttpSink {
    pub(crate) fn new(config: HttpSinkConfig, url: reqwest::Url, headers: HeaderMap) -> Self {
        HttpSink {
            config,
            url,
            headers,
        }
    }
}

impl SinkFactory for HttpSink {
    fn create(&self, _instance: InstanceInfo, _schema: SchemaRef) -> Result<Box<dyn Sink>> {
        let client = reqwest::Client::builder()
            .timeout(self.config.timeout)
            .default_headers(self.headers.clone())
            .build()
            .map_err(|e| Error::connector("http", false, e))?;
        Ok(Box::new(HttpSinkInstance {
            config: self.config.clone(),
            url: self.url.clone(),
            client,
            breaker: Arc::new(Mutex::new(Breaker::default())),
            rejected: Vec::new(),
        }))
    }
}

struct HttpSinkInstance {
    config: HttpSinkConfig,
    url: reqwest::Url,
    client: reqwest::Client,
    breaker: Arc<Mutex<Breaker>>,
    rejected: Vec<Rejected>,
}

/// What became of one request.
enum Sent {
    Delivered,
    /// The server refused the rows for good (a 4xx other than 429).
    Refused(String),
}

/// Failures in a row, and until when the circuit is open.
#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

impl HttpSinkInstance {
    /// POSTs `rows` until the server takes them or refuses them for good.
    async fn send(&self, rows: &RecordBatch) -> Result<Sent> {
        let (body, content_type) = encode(rows, self.config.format)?;
        let retry = &self.config.retry;
        let mut attempt: u32 = 0;
        loop {
            self.wait_while_open().await;
            attempt += 1;
            let response = self
                .client
                .post(self.url.clone())
                .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
                .body(body.clone())
                .send()
                .await;
            let (reason, server_wait) = match response {
                Ok(response) if response.status().is_success() => {
                    self.breaker.lock().expect("breaker").failures = 0;
                    return Ok(Sent::Delivered);
                }
                Ok(response) if retryable(response.status()) => {
                    let wait = retry_after(response.headers());
                    (format!("HTTP {}", response.status()), wait)
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    self.breaker.lock().expect("breaker").failures = 0;
                    return Ok(Sent::Refused(format!(
                        "{} answered HTTP {status}: {}",
                        self.url,
                        text.chars().take(500).collect::<String>()
                    )));
                }
                Err(e) => (e.to_string(), None),
            };
            self.failed();
            if retry.max_attempts.is_some_and(|max| attempt >= max) {
                return Err(Error::connector(
                    "http",
                    true,
                    format!("{}: gave up after {attempt} attempts: {reason}", self.url),
                ));
            }
            let wait = server_wait
                .unwrap_or_else(|| backoff(retry.initial_backoff, attempt))
                .min(retry.max_backoff);
            tracing::warn!(url = %self.url, attempt, ?wait, "{reason}; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    fn failed(&self) {
        let mut breaker = self.breaker.lock().expect("breaker");
        breaker.failures += 1;
        if breaker.failures >= self.config.circuit_breaker.failures {
            let open_for = self.config.circuit_breaker.open_for;
            tracing::warn!(url = %self.url, ?open_for, failures = breaker.failures, "circuit open");
            breaker.open_until = Some(Instant::now() + open_for);
            // One request tries again once it closes.
            breaker.failures = self.config.circuit_breaker.failures - 1;
        }
    }

    async fn wait_while_open(&self) {
        let until = self.breaker.lock().expect("breaker").open_until;
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

/// Whether a status means "try again later".
pub(crate) fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// The wait a `Retry-After` header asks for (seconds or an HTTP date).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let now = chrono::Utc::now();
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// Full jitter: a random wait up to `initial * 2^(attempt-1)`.
pub(crate) fn backoff(initial: Duration, attempt: u32) -> Duration {
    let ceiling = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // A cheap spread of the clock's low bits: enough to keep clients from
    // retrying in step.
    let fraction = f64::from(nanos.wrapping_mul(2_654_435_761) % 1_000_000) / 1_000_000.0;
    ceiling.mul_f64(fraction.max(0.1))
}

fn encode(rows: &RecordBatch, format: BodyFormat) -> Result<(Vec<u8>, &'static str)> {
    let mut body = Vec::new();
    match format {
        BodyFormat::JsonArray => {
            let mut writer = arrow::json::ArrayWriter::new(&mut body);
            writer.write(rows)?;
            writer.finish()?;
            if body.is_empty() {
                body.extend_from_slice(b"[]");
            }
            Ok((body, "application/json"))
        }
        BodyFormat::Ndjson => {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut body);
            writer.write(rows)?;
            writer.finish()?;
            Ok((body, "application/x-ndjson"))
        }
    }
}

#[async_trait]
impl Sink for HttpSinkInstance {
    async fn write(&mut self, batch: RecordBatch, _ctx: &mut Context) -> Result<()> {
        let (batch, unwritable) = flumen_core::writable::split_writable(batch)?;
        self.rejected.extend(unwritable);
        let size = self.config.batch_size;
        let chunks: Vec<RecordBatch> = (0..batch.num_rows())
            .step_by(size)
            .map(|start| batch.slice(start, size.min(batch.num_rows() - start)))
            .collect();
        let this = &*self;
        let outcomes: Vec<(RecordBatch, Result<Sent>)> = futures::stream::iter(chunks)
            .map(|rows| async move {
                let sent = this.send(&rows).await;
                (rows, sent)
            })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        for (rows, sent) in outcomes {
            match sent? {
                Sent::Delivered => {}
                Sent::Refused(reason) => self.rejected.extend(Rejected::rows(&rows, &reason)?),
            }
        }
        Ok(())
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }
}
