//! Configuration of the HTTP ingest source.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use flumen_core::log::{FsyncPolicy, LogOptions};
use flumen_core::prelude::*;
use flumen_core::schema::SchemaSpec;
use serde::Deserialize;

use super::source::HttpSource;

// Who may post, at what rate, and over TLS: what every HTTP server of
// Flumen's shares.
pub use flumen_clients::http::{AuthConfig, RateLimitConfig, TlsConfig};

/// Accepts events over HTTP into a durable buffer on disk, and reads them
/// from there at the pipeline's pace.
///
/// `POST /v1/streams/{stream}/events` takes one JSON object, an array of
/// them, or NDJSON (optionally gzip-compressed) and answers `202 Accepted`
/// once the request's events are synced to the buffer. `GET` on the
/// `status_url` of the answer tells where they are.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Address and port to listen on: `127.0.0.1:8080`, `0.0.0.0:8080`.
    pub listen: String,

    /// The stream's name in the URL: `/v1/streams/{stream}/events`.
    pub stream: String,

    /// Columns and types of an event, e.g. `{ id: string, amount: int64,
    /// at: timestamp }`. An event's other fields are ignored.
    pub schema: SchemaSpec,

    /// Columns every event must have, not null. A request with an event
    /// that lacks one is refused whole (400).
    #[serde(default)]
    pub required: Vec<String>,

    /// Where accepted events wait for the pipeline.
    pub buffer: IngestBufferConfig,

    /// Who may post. Default: anyone who can reach `listen`.
    #[serde(default)]
    pub auth: Option<AuthConfig>,

    /// Largest request body in bytes, after gzip decompression (413 over
    /// it).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,

    /// Requests per second each client (bearer token, else IP address) may
    /// make; 429 with `Retry-After` past it. Default: no limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,

    /// How long a client has to send a request: from when it connects
    /// (or its last answer) to the end of the request's headers, the TLS
    /// handshake included, and again for its body (408). A connection
    /// that sends nothing for this long is closed: idle or slow clients
    /// cannot hold connections open.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,

    /// Most connections open at once. Past it, a new connection is answered
    /// 503 with `Retry-After` (or, over TLS, closed) straight away. Keep it
    /// well below the process's open-file limit (`ulimit -n`), which
    /// connections count against along with the buffer and checkpoints.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,

    /// Most events the source reads from the buffer into one batch.
    #[serde(default = "default_batch_events")]
    pub batch_events: usize,

    /// How long the source lets accepted events gather into a batch before
    /// reading them, unless `batch_events` requests are waiting already
    /// (a full batch, however many events each holds): fewer,
    /// larger batches cost the pipeline less per event, and each event
    /// waits at most this much longer. The first event after a quiet spell
    /// is read at once. `0s` reads whatever is there each time.
    #[serde(default = "default_batch_wait", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub batch_wait: Duration,

    /// Serve HTTPS with this certificate and key (PEM files). Default:
    /// plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// The durable buffer behind HTTP ingest.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestBufferConfig {
    /// Directory of the buffer's segment files (created if missing).
    #[schemars(extend("format" = "path"))]
    pub dir: PathBuf,

    /// Most bytes of events accepted but not yet read and checkpointed;
    /// ingest answers 503 with `Retry-After` past it.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,

    /// Most events accepted but not yet read and checkpointed. Default: no
    /// limit but `max_bytes`.
    #[serde(default)]
    pub max_events: Option<u64>,

    /// `always` (default): a request is answered 202 only after its events
    /// are synced to disk, with one sync shared by every request waiting
    /// (group commit). `interval`: synced every 100 ms, so a 202 survives
    /// a crash of the process but not of the machine. `never`: left to the
    /// operating system.
    #[serde(default)]
    pub fsync: FsyncPolicy,

    /// Size at which a segment file is closed and a new one started. A
    /// segment file is written ahead at this size (see `preallocate`), and
    /// up to two released segments are kept and written over, so the
    /// directory holds up to two segments more than the records need.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,

    /// Write each new segment file ahead, full size and all zeros, so
    /// that the syncs of its records write only the records, not the
    /// file's growth. Turn off on a copy-on-write file system (btrfs,
    /// ZFS), where it gains nothing and costs a segment's worth of writes.
    #[serde(default = "default_preallocate")]
    pub preallocate: bool,
}

fn default_max_body_bytes() -> u64 {
    1 << 20
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_batch_events() -> usize {
    8192
}
fn default_batch_wait() -> Duration {
    Duration::from_millis(5)
}
fn default_max_bytes() -> u64 {
    1 << 30
}
fn default_preallocate() -> bool {
    true
}
fn default_segment_bytes() -> u64 {
    64 << 20
}
fn default_max_connections() -> usize {
    512
}

impl HttpSourceConfig {
    pub(crate) fn log_options(&self) -> LogOptions {
        LogOptions {
            segment_bytes: self.buffer.segment_bytes,
            fsync: self.buffer.fsync,
            max_bytes: self.buffer.max_bytes,
            max_events: self.buffer.max_events.unwrap_or(u64::MAX),
            preallocate: self.buffer.preallocate,
        }
    }
}

impl SourceConfig for HttpSourceConfig {
    const TYPE: &str = "http";
    const DESCRIPTION: &str = "Accepts events over HTTP into a durable buffer (202 once synced); read at the pipeline's pace.";
    type Source = HttpSource;

    /// Checks the settings and returns the source.
    fn build(&self) -> Result<HttpSource> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            Error::config(
                "listen",
                format!(
                    "`{}` is not an address and port, e.g. `127.0.0.1:8080`",
                    self.listen
                ),
            )
        })?;
        if self.stream.is_empty()
            || !self
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Error::config(
                "stream",
                "must be letters, digits, `-`, `_` or `.` (it is part of the URL)",
            ));
        }
        let schema: SchemaRef = self.schema.to_schema("schema")?;
        for (i, name) in self.required.iter().enumerate() {
            if schema.column_with_name(name).is_none() {
                return Err(Error::config(
                    format!("required[{i}]"),
                    format!("`{name}` is not a column of `schema`"),
                ));
            }
        }
        if let Some(auth) = &self.auth {
            if auth.bearer_tokens.is_empty() && auth.hmac_secrets.is_empty() {
                return Err(Error::config(
                    "auth",
                    "lists neither `bearer_tokens` nor `hmac_secrets`; remove it to accept anyone",
                ));
            }
            for (i, secret) in auth.hmac_secrets.iter().enumerate() {
                flumen_clients::http::auth::secret_bytes(secret)
                    .map_err(|message| Error::config(format!("auth.hmac_secrets[{i}]"), message))?;
            }
        }
        if let Some(limit) = &self.rate_limit
            && limit.per_second == 0
        {
            return Err(Error::config("rate_limit.per_second", "must be at least 1"));
        }
        if let Some(auth) = &self.auth
            && auth.failed_attempts.per_second == 0
        {
            return Err(Error::config(
                "auth.failed_attempts.per_second",
                "must be at least 1",
            ));
        }
        if self.max_connections == 0 {
            return Err(Error::config("max_connections", "must be at least 1"));
        }
        if self.batch_events == 0 {
            return Err(Error::config("batch_events", "must be at least 1"));
        }
        if self.buffer.max_bytes == 0 {
            return Err(Error::config("buffer.max_bytes", "must be above 0"));
        }
        if let Some(tls) = &self.tls {
            tls.acceptor()?;
        }
        Ok(HttpSource::new(self.clone(), listen, schema))
    }
}
