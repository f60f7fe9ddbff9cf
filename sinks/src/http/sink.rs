//! Sending batches, retrying, and the circuit breaker.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use flumen_core::dead_letter::Rejected;
use flumen_core::prelude::*;
use futures::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use super::config::{BodyFormat, HttpSinkConfig};
pub(crate) use flumen_clients::retry::{Breaker, backoff, retry_after, retryable};

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
            breaker: Arc::new(Breaker::new(self.config.circuit_breaker.clone())),
            rejected: Vec::new(),
        }))
    }
}

struct HttpSinkInstance {
    config: HttpSinkConfig,
    url: reqwest::Url,
    client: reqwest::Client,
    breaker: Arc<Breaker>,
    rejected: Vec<Rejected>,
}

/// What became of one request.
enum Sent {
    Delivered,
    /// The server refused the rows for good (a 4xx other than 429).
    Refused(String),
}

impl HttpSinkInstance {
    /// POSTs `rows` until the server takes them or refuses them for good.
    async fn send(&self, rows: &RecordBatch) -> Result<Sent> {
        let (body, content_type) = encode(rows, self.config.format)?;
        let retry = &self.config.retry;
        let mut attempt: u32 = 0;
        loop {
            self.breaker.wait_while_open().await;
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
                    self.breaker.succeeded();
                    return Ok(Sent::Delivered);
                }
                Ok(response) if retryable(response.status()) => {
                    let wait = retry_after(response.headers());
                    (format!("HTTP {}", response.status()), wait)
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    self.breaker.succeeded();
                    return Ok(Sent::Refused(format!(
                        "{} answered HTTP {status}: {}",
                        self.url,
                        text.chars().take(500).collect::<String>()
                    )));
                }
                Err(e) => (e.to_string(), None),
            };
            self.breaker.failed(&self.url);
            if retry.max_attempts.is_some_and(|max| attempt >= max) {
                return Err(Error::connector(
                    "http",
                    true,
                    format!("{}: gave up after {attempt} attempts: {reason}", self.url),
                ));
            }
            let wait = retry.wait(attempt, server_wait);
            tracing::warn!(url = %self.url, attempt, ?wait, "{reason}; retrying");
            tokio::time::sleep(wait).await;
        }
    }
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
