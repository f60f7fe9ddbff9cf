//! The source side: reading accepted events back out of the buffer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use flumen_clients::http::server::{self, ConnectionLimits};
use flumen_core::component::SourceContext;
use flumen_core::dead_letter::Rejected;
use flumen_core::log::{DurableLog, LogRecord};
use flumen_core::prelude::*;
use serde_json::json;

use super::config::HttpSourceConfig;
use super::events::{EventDecoder, record_events};
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
            decoder: EventDecoder::new(self.schema.clone(), self.config.batch_events * 2),
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
    decoder: EventDecoder,
}

impl HttpIngest {
    fn stream(&self) -> Result<&Arc<Stream>> {
        self.stream
            .as_ref()
            .ok_or_else(|| Error::internal("the HTTP source was not opened"))
    }

    /// Loads the request keys: those of released records from their file,
    /// those of the rest from the records' headers.
    fn load_keys(&self, stream: &Stream) -> Result<()> {
        let unreadable = |e: std::io::Error| {
            Error::connector(
                "http",
                false,
                format!("the keys in {}: {e}", self.config.buffer.dir.display()),
            )
        };
        stream
            .keys
            .load_released(ingest::now_millis())
            .map_err(unreadable)?;
        let mut from = stream.log.released();
        loop {
            let (records, next) = stream.log.read(from, 4096, 64 << 20)?;
            stream
                .keys
                .restore_unreleased(records.iter().map(|r| (r.offset, &r.payload[..])));
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
        if offset <= stream.log.released() {
            return Ok(());
        }
        stream.keys.release(offset, ingest::now_millis())?;
        stream.log.release(offset)
    }

    /// Decodes records' events into one batch. Ingest decoded them
    /// before it admitted them, so they decode; if the schema changed
    /// since, the records that no longer fit go to the dead letters whole.
    fn decode(&mut self, records: &[LogRecord]) -> Result<Option<RecordBatch>> {
        // Records end without a newline: separate them.
        let parts = records
            .iter()
            .flat_map(|record| [record_events(&record.payload), b"\n"]);
        let decoded = match self.decoder.decode(parts) {
            Ok(batch) => batch,
            Err(_) => {
                let mut kept = Vec::new();
                for record in records {
                    let events = record_events(&record.payload);
                    match self.decoder.decode([events]) {
                        Ok(batch) => kept.push(batch),
                        Err(e) => self.dead_letter(record.offset, events, &e),
                    }
                }
                arrow::compute::concat_batches(&self.schema, &kept)?
            }
        };
        Ok(Some(decoded).filter(|batch| batch.num_rows() > 0))
    }

    fn dead_letter(&mut self, offset: u64, events: &[u8], error: &dyn std::fmt::Display) {
        if let Some(stream) = &self.stream {
            stream
                .dead_lettered
                .lock()
                .expect("dead letters")
                .insert(offset);
        }
        self.rejected.push(Rejected {
            error: error.to_string(),
            record: String::from_utf8_lossy(events).into_owned(),
            position: Some(format!(
                "http stream {}, buffer record {offset}",
                self.config.stream
            )),
        });
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
        let stream =
            Stream::new(self.config.clone(), self.schema.clone(), log, next).map_err(|e| {
                Error::connector(
                    "http",
                    false,
                    format!(
                        "the request id key in {}: {e}",
                        self.config.buffer.dir.display()
                    ),
                )
            })?;
        let stream = Arc::new(stream);
        self.load_keys(&stream)?;
        let listener = std::net::TcpListener::bind(self.listen)
            .and_then(|l| l.set_nonblocking(true).map(|_| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| {
                // Another process holds the port, or it needs privileges:
                // the outside world, not the settings, may be what changes.
                Error::connector(
                    "http",
                    false,
                    format!("cannot listen on {}: {e}", self.listen),
                )
            })?;
        tracing::info!(
            address = %self.listen,
            stream = %self.config.stream,
            "accepting events at POST /v1/streams/{}/events",
            self.config.stream
        );
        let tls = self.config.tls.as_ref().map(|t| t.acceptor()).transpose()?;
        let limits = ConnectionLimits {
            deadline: self.config.request_timeout,
            max_connections: self.config.max_connections,
        };
        let handler = {
            let stream = stream.clone();
            move |peer, request| {
                let stream = stream.clone();
                async move { ingest::handle(&stream, peer, request).await }
            }
        };
        self.server = Some(tokio::spawn(server::serve(listener, limits, tls, handler)));
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
