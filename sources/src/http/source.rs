//! The source side: reading accepted events back out of the buffer.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::json::ReaderBuilder;
use flumen_core::component::SourceContext;
use flumen_core::dead_letter::Rejected;
use flumen_core::log::DurableLog;
use flumen_core::prelude::*;
use serde_json::json;

use super::config::HttpSourceConfig;
use super::events;
use super::ingest::{self, Stream};

/// The HTTP ingest source. Built from an [`HttpSourceConfig`].
#[derive(Debug, Clone)]
pub struct HttpSource {
    config: HttpSourceConfig,
    listen: SocketAddr,
    schema: SchemaRef,
}

impl HttpSource {
    pub(crate) fn new(config: HttpSourceConfig, listen: SocketAddr, schema: SchemaRef) -> Self {
        HttpSource {
            config,
            listen,
            schema,
        }
    }
}

impl SourceFactory for HttpSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn max_parallelism(&self) -> Option<usize> {
        // One listener and one buffer.
        Some(1)
    }

    fn create(&self, _instance: InstanceInfo) -> Result<Box<dyn Source>> {
        Ok(Box::new(HttpIngest {
            config: self.config.clone(),
            listen: self.listen,
            schema: self.schema.clone(),
            stream: None,
            server: None,
            next: None,
            checkpointing: false,
            rejected: Vec::new(),
            last_read: None,
        }))
    }
}

/// A running HTTP source: the server, and the reader of the buffer.
struct HttpIngest {
    config: HttpSourceConfig,
    listen: SocketAddr,
    schema: SchemaRef,
    stream: Option<Arc<Stream>>,
    server: Option<tokio::task::JoinHandle<()>>,
    /// The offset to read next; `None` until opened or restored.
    next: Option<u64>,
    checkpointing: bool,
    rejected: Vec<Rejected>,
    /// When the source last read events.
    last_read: Option<Instant>,
}

/// The keys of released records, kept for retries that come after their
/// records have left the buffer.
const RELEASED_KEYS: &str = "idempotency-keys.jsonl";

/// How long a released record's idempotency key is remembered.
const KEY_MEMORY: Duration = Duration::from_secs(24 * 3600);

impl HttpIngest {
    fn stream(&self) -> Result<&Arc<Stream>> {
        self.stream
            .as_ref()
            .ok_or_else(|| Error::internal("the HTTP source was not opened"))
    }

    fn keys_file(&self) -> PathBuf {
        self.config.buffer.dir.join(RELEASED_KEYS)
    }

    /// Loads the idempotency keys: those of released records from their
    /// file (forgetting old ones), those of the rest from the log.
    fn load_keys(&self, stream: &Stream) -> Result<()> {
        let now = ingest::now_millis();
        let mut kept = Vec::new();
        if let Ok(text) = std::fs::read_to_string(self.keys_file()) {
            for line in text.lines() {
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let (Some(key), Some(offset), Some(at)) = (
                    entry["key"].as_str(),
                    entry["offset"].as_u64(),
                    entry["at"].as_u64(),
                ) else {
                    continue;
                };
                if now.saturating_sub(at) < KEY_MEMORY.as_millis() as u64 {
                    stream.keys.insert_released(key.to_string(), offset);
                    kept.push(line.to_string());
                }
            }
            let rewritten = kept.join("\n") + if kept.is_empty() { "" } else { "\n" };
            std::fs::write(self.keys_file(), rewritten).map_err(|e| {
                Error::connector(
                    "http",
                    false,
                    format!("{}: {e}", self.keys_file().display()),
                )
            })?;
        }
        let mut from = stream.log.released();
        loop {
            let (records, next) = stream.log.read(from, 4096, 64 << 20)?;
            for record in &records {
                if let Some(key) = events::record_key(&record.payload) {
                    stream.keys.insert_appended(key, record.offset);
                }
            }
            if records.is_empty() || next == from {
                break;
            }
            from = next;
        }
        Ok(())
    }

    /// Records before `offset` are done: keep their keys, free the buffer.
    fn release(&self, offset: u64) -> Result<()> {
        let stream = self.stream()?;
        let released = stream.log.released();
        if offset <= released {
            return Ok(());
        }
        let keys = stream.keys.take_released(offset);
        if !keys.is_empty() {
            let now = ingest::now_millis();
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.keys_file())?;
            let mut lines = Vec::new();
            for (key, offset) in keys {
                serde_json::to_writer(
                    &mut lines,
                    &json!({ "key": key, "offset": offset, "at": now }),
                )
                .expect("JSON");
                lines.push(b'\n');
            }
            file.write_all(&lines)?;
            file.sync_data()?;
        }
        stream.log.release(offset)
    }

    /// Decodes records' events into one batch. Ingest checked them, so
    /// they decode; if the schema changed since, the records that no
    /// longer fit go to the dead letters whole.
    fn decode(&mut self, records: &[flumen_core::log::LogRecord]) -> Result<Option<RecordBatch>> {
        let events = |record: &flumen_core::log::LogRecord| -> Option<std::ops::Range<usize>> {
            // Skip the metadata line.
            let newline = record.payload.iter().position(|b| *b == b'\n')?;
            Some(newline + 1..record.payload.len())
        };
        let mut decoder = ReaderBuilder::new(self.schema.clone())
            .with_batch_size(self.config.batch_events.max(1) * 2)
            .build_decoder()?;
        let all = records.iter().try_for_each(|record| {
            if let Some(range) = events(record) {
                decoder.decode(&record.payload[range])?;
                // Records end without a newline: separate them.
                decoder.decode(b"\n")?;
            }
            Ok::<_, arrow::error::ArrowError>(())
        });
        if let Ok(batch) = all.and_then(|_| decoder.flush()) {
            return Ok(batch);
        }
        // A record is bad: find it, record by record.
        let mut decoder = ReaderBuilder::new(self.schema.clone())
            .with_batch_size(self.config.batch_events.max(1) * 2)
            .build_decoder()?;
        for record in records {
            let Some(range) = events(record) else {
                continue;
            };
            let events = &record.payload[range];
            let mut alone = ReaderBuilder::new(self.schema.clone()).build_decoder()?;
            if let Err(e) = alone.decode(events).and_then(|_| alone.flush()) {
                if let Some(stream) = &self.stream {
                    stream
                        .dead_lettered
                        .lock()
                        .expect("dead letters")
                        .insert(record.offset);
                }
                self.rejected.push(Rejected {
                    error: e.to_string(),
                    record: String::from_utf8_lossy(events).into_owned(),
                    position: Some(format!(
                        "http {} request {}",
                        self.config.stream, record.offset
                    )),
                });
                continue;
            }
            decoder.decode(events)?;
            decoder.decode(b"\n")?;
        }
        Ok(decoder.flush()?)
    }
}

#[async_trait]
impl Source for HttpIngest {
    async fn next(&mut self) -> Result<SourceStep> {
        let stream = self.stream()?.clone();
        let next = self.next.unwrap_or(0);
        // Let a fuller batch gather, unless a full one (records hold one
        // event or more) is waiting.
        let waiting = stream.log.end().saturating_sub(next);
        if let Some(last_read) = self.last_read
            && waiting > 0
            && waiting < self.config.batch_events as u64
        {
            let gathered = last_read.elapsed();
            if gathered < self.config.batch_wait {
                tokio::time::sleep(self.config.batch_wait - gathered).await;
            }
        }
        let (records, after) = stream.log.read(next, self.config.batch_events, 32 << 20)?;
        if records.is_empty() {
            // A buffer whose write or sync failed takes no more events:
            // once all it holds is handed on, the pipeline stops, so that
            // a restart reopens (and checks) it.
            if let Some(reason) = stream.log.broken() {
                return Err(Error::connector(
                    "http",
                    false,
                    format!(
                        "the buffer of stream `{}` failed ({reason}); restart the pipeline to reopen it",
                        self.config.stream
                    ),
                ));
            }
            self.next = Some(after);
            stream.read.store(after, Ordering::Release);
            stream
                .log
                .wait_beyond(after, Duration::from_millis(100))
                .await;
            return Ok(SourceStep::Idle);
        }
        // Cut at `batch_events` events (each record holds a request's).
        let mut events = 0u64;
        let mut take = 0;
        for record in &records {
            if take > 0 && events + u64::from(record.events) > self.config.batch_events as u64 {
                break;
            }
            events += u64::from(record.events);
            take += 1;
        }
        let after = records.get(take).map_or(after, |r| r.offset);
        self.last_read = Some(Instant::now());
        let batch = self.decode(&records[..take])?;
        self.next = Some(after);
        stream.read.store(after, Ordering::Release);
        if !self.checkpointing {
            // Nothing will replay them: they are done once handed on.
            self.release(after)?;
        }
        Ok(match batch {
            Some(batch) => SourceStep::Batch(batch),
            None => SourceStep::Idle,
        })
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    fn lag(&self) -> Option<u64> {
        let stream = self.stream.as_ref()?;
        Some(stream.log.end().saturating_sub(self.next.unwrap_or(0)))
    }

    fn position(&self) -> Result<serde_json::Value> {
        Ok(json!({ "offset": self.next.unwrap_or(0) }))
    }

    async fn restore(&mut self, position: serde_json::Value) -> Result<()> {
        let offset = position["offset"].as_u64().ok_or_else(|| {
            Error::internal(format!(
                "an HTTP source position without an offset: {position}"
            ))
        })?;
        self.next = Some(offset);
        Ok(())
    }

    fn open(&mut self, ctx: &SourceContext) -> Result<()> {
        self.checkpointing = ctx.checkpointing;
        let log = DurableLog::open(&self.config.buffer.dir, self.config.log_options())?;
        for damaged in log.quarantined() {
            tracing::error!(
                stream = %self.config.stream,
                segment = %damaged.path.display(),
                offsets = ?damaged.offsets,
                "a damaged buffer segment was quarantined; its requests are lost"
            );
            metrics::counter!("flumen_buffer_quarantined_segments_total", "node" => ctx.node.clone())
                .increment(1);
        }
        // Resume where the checkpoint says, else after what was released.
        let next = self.next.unwrap_or(0).max(log.released());
        self.next = Some(next);
        let stream = Arc::new(Stream::new(
            self.config.clone(),
            self.schema.clone(),
            log,
            next,
        ));
        self.load_keys(&stream)?;
        let listener = std::net::TcpListener::bind(self.listen)
            .and_then(|l| l.set_nonblocking(true).map(|_| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| {
                Error::config("listen", format!("cannot listen on {}: {e}", self.listen))
            })?;
        tracing::info!(
            address = %self.listen,
            stream = %self.config.stream,
            "accepting events at POST /v1/streams/{}/events",
            self.config.stream
        );
        let tls = self.config.tls.as_ref().map(|t| t.acceptor()).transpose()?;
        self.server = Some(tokio::spawn(ingest::serve(
            listener,
            stream.clone(),
            self.config.request_timeout,
            tls,
        )));
        self.stream = Some(stream);
        Ok(())
    }

    async fn checkpoint_complete(
        &mut self,
        checkpoint: u64,
        position: &serde_json::Value,
    ) -> Result<()> {
        if let Some(offset) = position["offset"].as_u64() {
            let stream = self.stream()?;
            let mut released_by = stream.released_by.lock().expect("released");
            if offset
                > released_by
                    .last()
                    .map_or(stream.log.released(), |(end, _)| *end)
            {
                released_by.push((offset, checkpoint));
            }
            drop(released_by);
            self.release(offset)?;
        }
        Ok(())
    }
}

impl Drop for HttpIngest {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
