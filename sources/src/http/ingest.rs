//! The HTTP side: accepting requests into the buffer, and their status.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use flumen_core::log::{AppendError, DurableLog};
use futures::FutureExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::json;
use tokio::sync::watch;

use super::auth::{Authenticator, Client};
use super::config::HttpSourceConfig;
use super::events;

/// What the server and the source share about one stream.
pub(crate) struct Stream {
    pub(crate) config: HttpSourceConfig,
    pub(crate) schema: SchemaRef,
    pub(crate) log: DurableLog,
    /// The offset the source reads next: records before it are being
    /// processed (or done, once released).
    pub(crate) read: AtomicU64,
    pub(crate) keys: IdempotencyKeys,
    /// Requests whose events could not be decoded when read back, sent to
    /// the dead letters instead (until the process restarts).
    pub(crate) dead_lettered: Mutex<std::collections::HashSet<u64>>,
    /// Which checkpoint released the records below each offset, oldest
    /// first (this run's only).
    pub(crate) released_by: Mutex<Vec<(u64, u64)>>,
    auth: Option<Authenticator>,
    limiter: Option<DefaultKeyedRateLimiter<(Client, Option<std::net::IpAddr>)>>,
}

/// Idempotency keys and the record each admitted, so that a retried
/// request gets the same id.
#[derive(Default)]
pub(crate) struct IdempotencyKeys {
    inner: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    by_key: HashMap<String, KeyState>,
    /// The keys of records not released yet, by offset: what a release
    /// hands on to the file of released keys, without a scan of them all.
    unreleased: BTreeMap<u64, String>,
}

#[derive(Clone)]
enum KeyState {
    /// A request with this key is being appended; its offset comes here.
    Appending(watch::Receiver<Option<u64>>),
    Appended(u64),
}

impl IdempotencyKeys {
    /// Remembers the key of a record in the log.
    pub(crate) fn insert_appended(&self, key: String, offset: u64) {
        let mut keys = self.inner.lock().expect("keys");
        keys.unreleased.insert(offset, key.clone());
        keys.by_key.insert(key, KeyState::Appended(offset));
    }

    /// Remembers the key of a record released before (from the file of
    /// released keys).
    pub(crate) fn insert_released(&self, key: String, offset: u64) {
        let mut keys = self.inner.lock().expect("keys");
        keys.by_key.insert(key, KeyState::Appended(offset));
    }

    /// The keys of the records before `offset` not released until now,
    /// which are being released.
    pub(crate) fn take_released(&self, offset: u64) -> Vec<(String, u64)> {
        let mut keys = self.inner.lock().expect("keys");
        let later = keys.unreleased.split_off(&offset);
        let released = std::mem::replace(&mut keys.unreleased, later);
        released
            .into_iter()
            .map(|(offset, key)| (key, offset))
            .collect()
    }
}

impl Stream {
    pub(crate) fn new(
        config: HttpSourceConfig,
        schema: SchemaRef,
        log: DurableLog,
        read: u64,
    ) -> Stream {
        let auth = config.auth.as_ref().map(Authenticator::new);
        let limiter = config.rate_limit.as_ref().map(|limit| {
            let rate = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
            let burst = limit.burst.and_then(NonZeroU32::new).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Stream {
            config,
            schema,
            log,
            read: AtomicU64::new(read),
            keys: IdempotencyKeys::default(),
            dead_lettered: Mutex::default(),
            released_by: Mutex::default(),
            auth,
            limiter,
        }
    }

    fn status_url(&self, id: u64) -> String {
        format!("/v1/streams/{}/events/{id}", self.config.stream)
    }
}

/// An answer to a request.
pub(crate) type Response = hyper::Response<Full<Bytes>>;

/// Answers one request from `peer`: `POST /v1/streams/{stream}/events`
/// or `GET /v1/streams/{stream}/events/{id}`.
pub(crate) async fn handle(
    stream: &Stream,
    peer: SocketAddr,
    request: hyper::Request<Incoming>,
) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let Some(rest) = path.strip_prefix("/v1/streams/") else {
        return refuse(StatusCode::NOT_FOUND, format!("no route `{path}`"));
    };
    let mut segments = rest.split('/');
    let (name, events, id) = (segments.next(), segments.next(), segments.next());
    if events != Some("events") || segments.next().is_some() {
        return refuse(StatusCode::NOT_FOUND, format!("no route `{path}`"));
    }
    let name = name.unwrap_or_default();
    if name != stream.config.stream {
        return refuse(StatusCode::NOT_FOUND, format!("no stream `{name}`"));
    }
    match (id, &parts.method) {
        (None, &Method::POST) => accept(stream, peer, &parts.headers, body).await,
        (Some(id), &Method::GET) => status(stream, id),
        (None, _) => refuse(StatusCode::METHOD_NOT_ALLOWED, "POST events here"),
        (Some(_), _) => refuse(StatusCode::METHOD_NOT_ALLOWED, "GET a status here"),
    }
}

/// A JSON answer.
fn json_answer(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error answer: a status and `{ "error": ... }`.
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({ "error": message.into() });
    json_answer(status, serde_json::to_vec(&body).expect("JSON"))
}

fn retry_after(mut response: Response, seconds: u64) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

async fn accept(
    stream: &Stream,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Incoming,
) -> Response {
    let limit = stream.config.max_body_bytes as usize;
    // A small body has usually arrived with the headers: only a body
    // still on its way needs a timer.
    let mut collect = std::pin::pin!(Limited::new(body, limit).collect());
    let read = match collect.as_mut().now_or_never() {
        Some(read) => Ok(read),
        None => tokio::time::timeout(stream.config.request_timeout, collect).await,
    };
    let raw = match read {
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                "the body took too long to arrive",
            );
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {limit} bytes"),
            );
        }
        Ok(Err(e)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {e}"),
            );
        }
        Ok(Ok(raw)) => raw.to_bytes(),
    };
    let client = match &stream.auth {
        None => Client::Anyone,
        Some(auth) => match auth.check(headers, &raw) {
            Ok(client) => client,
            Err(message) => return refuse(StatusCode::UNAUTHORIZED, message),
        },
    };
    if let Some(limiter) = &stream.limiter {
        // Authenticated clients are limited per credential, others per
        // address.
        let key = match client {
            Client::Anyone => (client, Some(peer.ip())),
            known => (known, None),
        };
        if let Err(not_until) = limiter.check_key(&key) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            return retry_after(
                refuse(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded"),
                wait.as_secs_f64().ceil() as u64,
            );
        }
    }
    let body = match decompress(headers, raw, limit) {
        Ok(body) => body,
        Err((status, message)) => return refuse(status, message),
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let checked = match events::check(&body, &stream.schema, &stream.config.required) {
        Ok(checked) => checked,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    let header = events::record_header(key.as_deref());
    admit(stream, key, checked.count(), &checked.record(&header)).await
}

/// The body, gunzipped if it says it is gzip, up to `limit` bytes; or the
/// status and reason to refuse it with.
fn decompress(
    headers: &HeaderMap,
    raw: Bytes,
    limit: usize,
) -> Result<Bytes, (StatusCode, String)> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    match encoding {
        "identity" => Ok(raw),
        "gzip" => {
            let mut out = Vec::new();
            let mut decoder = flate2::read::GzDecoder::new(raw.as_ref()).take(limit as u64 + 1);
            decoder.read_to_end(&mut out).map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("the gzip body is broken: {e}"),
                )
            })?;
            if out.len() > limit {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {limit} bytes once decompressed"),
                ));
            }
            Ok(out.into())
        }
        other => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("`Content-Encoding: {other}` is not supported; send gzip or nothing"),
        )),
    }
}

/// What a request with an idempotency key is to do.
enum Claim {
    /// An earlier request with the key was admitted as this record.
    Appended(u64),
    /// An earlier request with the key is being appended: wait for it.
    Wait(watch::Receiver<Option<u64>>),
    /// This request is the first: append, then say so here.
    Append(watch::Sender<Option<u64>>),
}

impl IdempotencyKeys {
    fn claim(&self, key: &str) -> Claim {
        let mut keys = self.inner.lock().expect("keys");
        match keys.by_key.get(key) {
            Some(KeyState::Appended(offset)) => Claim::Appended(*offset),
            Some(KeyState::Appending(receiver)) => Claim::Wait(receiver.clone()),
            None => {
                let (sender, receiver) = watch::channel(None);
                keys.by_key
                    .insert(key.to_string(), KeyState::Appending(receiver));
                Claim::Append(sender)
            }
        }
    }

    fn settle(&self, key: String, sender: watch::Sender<Option<u64>>, appended: Option<u64>) {
        let mut keys = self.inner.lock().expect("keys");
        match appended {
            Some(offset) => {
                keys.unreleased.insert(offset, key.clone());
                keys.by_key.insert(key, KeyState::Appended(offset));
                let _ = sender.send(Some(offset));
            }
            // Failed: a retry may try again (waiters see the sender go).
            None => {
                keys.by_key.remove(&key);
            }
        }
    }
}

/// Appends a request's record (of `events` events) and answers 202 once
/// it is durable. The first request with an idempotency key appends;
/// retries get its id.
async fn admit(stream: &Stream, key: Option<String>, events: u32, record: &[&[u8]]) -> Response {
    let Some(key) = key else {
        return answer(stream, stream.log.append_parts(events, record).await);
    };
    match stream.keys.claim(&key) {
        Claim::Appended(offset) => answer(stream, Ok(offset)),
        Claim::Wait(mut receiver) => match receiver.wait_for(Option::is_some).await {
            Ok(offset) => {
                let offset = offset.expect("waited for some");
                answer(stream, Ok(offset))
            }
            Err(_) => retry_after(
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "an earlier request with this key failed; retry",
                ),
                1,
            ),
        },
        Claim::Append(sender) => {
            let result = stream.log.append_parts(events, record).await;
            stream
                .keys
                .settle(key, sender, result.as_ref().ok().copied());
            answer(stream, result)
        }
    }
}

fn answer(stream: &Stream, appended: Result<u64, AppendError>) -> Response {
    match appended {
        Ok(id) => {
            #[derive(serde::Serialize)]
            struct Accepted<'a> {
                id: &'a str,
                status_url: &'a str,
            }
            let status_url = stream.status_url(id);
            let body = serde_json::to_vec(&Accepted {
                id: &id.to_string(),
                status_url: &status_url,
            })
            .expect("JSON");
            let mut response = json_answer(StatusCode::ACCEPTED, body);
            if let Ok(location) = HeaderValue::from_str(&status_url) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Err(AppendError::Full) => retry_after(
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the buffer is full; nothing of this request was accepted",
            ),
            1,
        ),
        Err(AppendError::Failed(e)) => retry_after(
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("could not store the events: {e}"),
            ),
            5,
        ),
    }
}

fn status(stream: &Stream, id: &str) -> Response {
    let name = &stream.config.stream;
    let Some(offset) = id.parse::<u64>().ok().filter(|o| *o < stream.log.end()) else {
        return refuse(StatusCode::NOT_FOUND, format!("no request `{id}`"));
    };
    let lost = stream
        .log
        .quarantined()
        .iter()
        .any(|q| q.offsets.contains(&offset));
    let dead_lettered = stream
        .dead_lettered
        .lock()
        .expect("dead letters")
        .contains(&offset);
    let status = if lost {
        "failed"
    } else if dead_lettered {
        "dead_lettered"
    } else if offset < stream.log.released() {
        "done"
    } else if offset < stream.read.load(Ordering::Acquire) {
        "processing"
    } else {
        "queued"
    };
    let mut body = json!({ "id": id, "stream": name, "status": status });
    if lost {
        body["error"] = json!("its buffer segment was damaged and quarantined");
    }
    // Where the events went, as far as the source can tell.
    if dead_lettered {
        body["result"] = json!("sent to the pipeline's dead_letter sink");
    } else if status == "done" {
        let released_by = stream.released_by.lock().expect("released");
        body["result"] = match released_by.iter().find(|(end, _)| offset < *end) {
            Some((_, checkpoint)) => json!(format!(
                "committed by the pipeline's sinks with checkpoint {checkpoint}"
            )),
            None => json!("handed to the pipeline"),
        };
    }
    json_answer(StatusCode::OK, serde_json::to_vec(&body).expect("JSON"))
}

/// Serves the stream's requests on `listener` until dropped, over TLS if
/// given one. Headers (and the TLS handshake) must arrive within
/// `timeout`, so slow clients cannot hold connections.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    stream: Arc<Stream>,
    timeout: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout);
    let builder = Arc::new(builder);
    loop {
        let Ok((socket, peer)) = listener.accept().await else {
            continue;
        };
        let stream = stream.clone();
        let service = hyper::service::service_fn(move |request| {
            let stream = stream.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(&stream, peer, request).await) }
        });
        let (builder, tls) = (builder.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                }
                Some(tls) => {
                    let Ok(Ok(stream)) = tokio::time::timeout(timeout, tls.accept(socket)).await
                    else {
                        return;
                    };
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
