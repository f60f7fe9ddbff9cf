//! The HTTP side: accepting requests into the buffer, and their status.
//!
//! A `POST` is answered 202 only once all of it is in the buffer, synced:
//! - its sender is checked first, from the headers where that is enough
//!   ([`flumen_clients::http::auth`]), then its rate;
//! - its body is read whole (up to `max_body_bytes`, decompressed), and
//!   every event in it decoded as the pipeline will decode it
//!   ([`super::events`]);
//! - its keys are claimed ([`super::keys`]): a retry gets the first
//!   request's id, a replay of a signed request is refused;
//! - and it is appended to the buffer as one record.
//!
//! Anything short of that answers an error and admits nothing.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use flumen_clients::http::ClientRateLimit;
use flumen_clients::http::auth::{Authenticator, Client, Refusal, Screened};
use flumen_clients::http::server::{Response, allow, json_answer, refuse, refused, retry_after};
use flumen_core::log::{AppendError, DurableLog};
use futures::FutureExt;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::json;

use super::config::HttpSourceConfig;
use super::events::EventCheck;
use super::ids::{RequestIds, Scope};
use super::keys::{self, Claim, Fingerprint, KeyKind, RequestKey, RequestKeys};

/// What the server and the source share about one stream.
pub(crate) struct Stream {
    pub(crate) config: HttpSourceConfig,
    pub(crate) log: DurableLog,
    /// The offset the source reads next: records before it are being
    /// processed (or done, once released).
    pub(crate) read: AtomicU64,
    pub(crate) keys: RequestKeys,
    /// Requests whose events could not be decoded when read back, sent to
    /// the dead letters instead (until the process restarts).
    pub(crate) dead_lettered: Mutex<HashSet<u64>>,
    /// Which checkpoint released the records below each offset, oldest
    /// first (this run's only).
    pub(crate) released_by: Mutex<Vec<(u64, u64)>>,
    check: EventCheck,
    ids: RequestIds,
    /// Each client's scope, worked out once.
    scopes: HashMap<Client, Scope>,
    auth: Option<Authenticator>,
    limiter: Option<ClientRateLimit>,
}

/// Where a stream keeps the keys of released records.
const RELEASED_KEYS: &str = "idempotency-keys.jsonl";

impl Stream {
    /// The stream of `config`, over its opened buffer, reading from `read`.
    pub(crate) fn new(
        config: HttpSourceConfig,
        schema: SchemaRef,
        log: DurableLog,
        read: u64,
    ) -> std::io::Result<Stream> {
        let ids = RequestIds::open(&config.buffer.dir)?;
        let auth = config.auth.as_ref().map(Authenticator::new);
        let mut clients = vec![Client::Anyone];
        if let Some(auth) = &config.auth {
            clients.extend((0..auth.bearer_tokens.len()).map(Client::Token));
            clients.extend((0..auth.hmac_secrets.len()).map(Client::Signer));
        }
        let scopes: HashMap<Client, Scope> = clients
            .into_iter()
            .map(|client| {
                let (kind, credential) = match &auth {
                    Some(auth) => auth.credential(client),
                    None => ("anyone", &[][..]),
                };
                (client, ids.scope(kind, credential))
            })
            .collect();
        let limiter = config.rate_limit.as_ref().map(ClientRateLimit::new);
        let webhook_memory = config
            .auth
            .as_ref()
            .map_or(Duration::ZERO, |a| a.tolerance * 2);
        let keys = RequestKeys::new(
            config.buffer.dir.join(RELEASED_KEYS),
            webhook_memory,
            scopes[&Client::Anyone],
        );
        Ok(Stream {
            check: EventCheck::new(schema, &config.required),
            config,
            log,
            read: AtomicU64::new(read),
            keys,
            dead_lettered: Mutex::default(),
            released_by: Mutex::default(),
            ids,
            scopes,
            auth,
            limiter,
        })
    }

    fn status_url(&self, id: &str) -> String {
        format!("/v1/streams/{}/events/{id}", self.config.stream)
    }
}

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
        (Some(id), &Method::GET) => status(stream, peer, &parts.headers, id),
        (None, _) => allow(
            "POST",
            refuse(StatusCode::METHOD_NOT_ALLOWED, "POST events here"),
        ),
        (Some(_), _) => allow(
            "GET",
            refuse(StatusCode::METHOD_NOT_ALLOWED, "GET a status here"),
        ),
    }
}

/// Who sent a request, as far as its headers tell: a client, or a signed
/// request to verify once its body is read.
fn screen(stream: &Stream, peer: SocketAddr, headers: &HeaderMap) -> Result<Screened, Refusal> {
    match &stream.auth {
        None => Ok(Screened::Client(Client::Anyone)),
        Some(auth) => auth.screen(headers, peer.ip()),
    }
}

/// Refuses `client` if it is over its rate.
fn over_rate(stream: &Stream, peer: SocketAddr, client: Client) -> Option<Response> {
    stream.limiter.as_ref()?.refuse_over_rate(client, peer.ip())
}

async fn accept(
    stream: &Stream,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Incoming,
) -> Response {
    let screened = match screen(stream, peer, headers) {
        Ok(screened) => screened,
        Err(refusal) => return refused(refusal),
    };
    if let Screened::Client(client) = screened
        && let Some(response) = over_rate(stream, peer, client)
    {
        return response;
    }
    let raw = match read_body(stream, body).await {
        Ok(raw) => raw,
        Err((status, message)) => return refuse(status, message),
    };
    let (client, webhook_id) = match screened {
        Screened::Client(client) => (client, None),
        Screened::Signed(signed) => {
            let auth = stream.auth.as_ref().expect("signed requests need auth");
            match auth.verify(&signed, &raw, peer.ip()) {
                Ok(client) => {
                    if let Some(response) = over_rate(stream, peer, client) {
                        return response;
                    }
                    (client, Some(signed.id))
                }
                Err(refusal) => return refused(refusal),
            }
        }
    };
    let scope = stream.scopes[&client];
    let idempotency_key = match idempotency_key(headers) {
        Ok(key) => key,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    let body = match decompress(headers, raw, stream.config.max_body_bytes as usize) {
        Ok(body) => body,
        Err((status, message)) => return refuse(status, message),
    };
    let checked = match stream.check.check(&body) {
        Ok(checked) => checked,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    let claims = Claims {
        webhook: webhook_id.map(|key| RequestKey {
            kind: KeyKind::Webhook,
            scope,
            key,
        }),
        idempotency: idempotency_key.map(|key| {
            let key = RequestKey {
                kind: KeyKind::Idempotency,
                scope,
                key,
            };
            (key, keys::fingerprint(&body))
        }),
    };
    let mut stored = Vec::new();
    stored.extend(claims.webhook.clone().map(|key| (key, None)));
    stored.extend(
        claims
            .idempotency
            .as_ref()
            .map(|(key, body)| (key.clone(), Some(*body))),
    );
    let header = keys::record_header(&stored);
    admit(
        stream,
        scope,
        claims,
        checked.count(),
        &checked.record(&header),
    )
    .await
}

/// Reads a request's body whole, up to `max_body_bytes`, within
/// `request_timeout`.
async fn read_body(stream: &Stream, body: Incoming) -> Result<Bytes, (StatusCode, String)> {
    let limit = stream.config.max_body_bytes as usize;
    // A small body has usually arrived with the headers: only a body
    // still on its way needs a timer.
    let mut collect = std::pin::pin!(Limited::new(body, limit).collect());
    let read = match collect.as_mut().now_or_never() {
        Some(read) => Ok(read),
        None => tokio::time::timeout(stream.config.request_timeout, collect).await,
    };
    match read {
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            "the body took too long to arrive".into(),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {limit} bytes"),
        )),
        Ok(Err(e)) => Err((
            StatusCode::BAD_REQUEST,
            format!("the body could not be read: {e}"),
        )),
        Ok(Ok(raw)) => Ok(raw.to_bytes()),
    }
}

/// Longest idempotency key taken, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The request's `Idempotency-Key`, if it sent one: any UTF-8 text of 1
/// to 255 bytes, bare or as a quoted string (the IETF draft's form).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let bytes = bytes
        .strip_prefix(b"\"")
        .and_then(|b| b.strip_suffix(b"\""))
        .unwrap_or(bytes);
    if bytes.is_empty() {
        return Err("`Idempotency-Key` is empty".into());
    }
    if bytes.len() > MAX_IDEMPOTENCY_KEY {
        return Err(format!(
            "`Idempotency-Key` is {} bytes; at most {MAX_IDEMPOTENCY_KEY} are taken",
            bytes.len()
        ));
    }
    String::from_utf8(bytes.to_vec())
        .map(Some)
        .map_err(|_| "`Idempotency-Key` is not UTF-8 text".into())
}

/// The body, decompressed if it says it is gzip, up to `limit` bytes; or
/// the status and reason to refuse it with. Every gzip member is read, and
/// anything that is not a whole gzip stream refused: a body is admitted
/// whole or not at all.
pub(super) fn decompress(
    headers: &HeaderMap,
    raw: Bytes,
    limit: usize,
) -> Result<Bytes, (StatusCode, String)> {
    let Some(encoding) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(raw);
    };
    let encoding = encoding.to_str().unwrap_or_default().trim();
    let is = |name: &str| encoding.eq_ignore_ascii_case(name);
    if is("identity") {
        return Ok(raw);
    }
    if !is("gzip") && !is("x-gzip") {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("`Content-Encoding: {encoding}` is not supported; send gzip or nothing"),
        ));
    }
    let broken = |e: &dyn std::fmt::Display| {
        (
            StatusCode::BAD_REQUEST,
            format!("the gzip body is not a whole gzip stream: {e}"),
        )
    };
    if raw.is_empty() {
        return Err(broken(&"it is empty"));
    }
    let mut out = Vec::new();
    let mut decoder = flate2::read::MultiGzDecoder::new(raw.as_ref()).take(limit as u64 + 1);
    decoder.read_to_end(&mut out).map_err(|e| broken(&e))?;
    if out.len() > limit {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {limit} bytes once decompressed"),
        ));
    }
    Ok(out.into())
}

/// The keys a request claims.
struct Claims {
    /// A signed request's id: a replay is refused.
    webhook: Option<RequestKey>,
    /// Its idempotency key and body: a retry gets the first id.
    idempotency: Option<(RequestKey, Fingerprint)>,
}

/// Appends a request's record (of `events` events) and answers 202 once
/// it is durable. Its keys are claimed first: a replay is refused, a retry
/// gets the first request's id; they are settled by the append.
async fn admit(
    stream: &Stream,
    scope: Scope,
    claims: Claims,
    events: u32,
    record: &[&[u8]],
) -> Response {
    let webhook = match &claims.webhook {
        None => None,
        Some(key) => match stream.keys.claim(key, None) {
            Claim::Append(sender) => Some((key, sender)),
            Claim::Wait(mut receiver) => {
                return match receiver.wait_for(Option::is_some).await {
                    Ok(_) => replay(key),
                    Err(_) => earlier_failed("webhook-id"),
                };
            }
            Claim::Appended(_) | Claim::OtherBody => return replay(key),
        },
    };
    // Until it is appended, the webhook id is only claimed: given up, a
    // retry may claim it again.
    let give_up = |webhook: Option<(&RequestKey, _)>| {
        if let Some((key, sender)) = webhook {
            stream.keys.settle(key, sender, None);
        }
    };
    let idempotency = match &claims.idempotency {
        None => None,
        Some((key, body)) => match stream.keys.claim(key, Some(*body)) {
            Claim::Append(sender) => Some((key, sender)),
            Claim::Appended(offset) => {
                give_up(webhook);
                return answer(stream, scope, Ok(offset));
            }
            Claim::Wait(mut receiver) => {
                give_up(webhook);
                return match receiver.wait_for(Option::is_some).await {
                    Ok(offset) => answer(stream, scope, Ok(offset.expect("waited for some"))),
                    Err(_) => earlier_failed("key"),
                };
            }
            Claim::OtherBody => {
                give_up(webhook);
                return refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "`Idempotency-Key: {}` was used for a request with another body",
                        key.key
                    ),
                );
            }
        },
    };
    let result = stream.log.append_parts(events, record).await;
    let appended = result.as_ref().ok().copied();
    for (key, sender) in webhook.into_iter().chain(idempotency) {
        stream.keys.settle(key, sender, appended);
    }
    answer(stream, scope, result)
}

fn replay(key: &RequestKey) -> Response {
    refuse(
        StatusCode::UNAUTHORIZED,
        format!("request `{}` was already received (a replay)", key.key),
    )
}

fn earlier_failed(what: &str) -> Response {
    retry_after(
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("an earlier request with this {what} failed; retry"),
        ),
        Duration::from_secs(1),
    )
}

fn answer(stream: &Stream, scope: Scope, appended: Result<u64, AppendError>) -> Response {
    match appended {
        Ok(offset) => {
            #[derive(serde::Serialize)]
            struct Accepted<'a> {
                id: &'a str,
                status_url: &'a str,
            }
            let id = stream.ids.id(offset, scope);
            let status_url = stream.status_url(&id);
            let body = serde_json::to_vec(&Accepted {
                id: &id,
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
            Duration::from_secs(1),
        ),
        Err(AppendError::Failed(e)) => retry_after(
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("could not store the events: {e}"),
            ),
            Duration::from_secs(5),
        ),
    }
}

/// A request's status, for the client that posted it (with the same
/// credentials) and nobody else.
fn status(stream: &Stream, peer: SocketAddr, headers: &HeaderMap, id: &str) -> Response {
    let client = match screen(stream, peer, headers) {
        Ok(Screened::Client(client)) => client,
        Ok(Screened::Signed(signed)) => {
            let auth = stream.auth.as_ref().expect("signed requests need auth");
            match auth.verify(&signed, b"", peer.ip()) {
                Ok(client) => client,
                Err(refusal) => return refused(refusal),
            }
        }
        Err(refusal) => return refused(refusal),
    };
    let name = &stream.config.stream;
    let Some(offset) = stream
        .ids
        .offset(id, stream.scopes[&client])
        .filter(|o| *o < stream.log.end())
    else {
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

/// Milliseconds since the Unix epoch.
pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn encoded(encoding: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_str(encoding).unwrap(),
        );
        headers
    }

    #[test]
    fn every_gzip_member_is_read_and_anything_else_refused() {
        let mut two = gzip(b"{\"id\":1}\n");
        two.extend(gzip(b"{\"id\":2}\n"));
        let body = decompress(&encoded("gzip"), two.clone().into(), 1 << 20).unwrap();
        assert_eq!(&body[..], b"{\"id\":1}\n{\"id\":2}\n");
        // Names are matched without regard to case; x-gzip is gzip.
        for name in ["GZIP", " Gzip ", "x-gzip"] {
            assert!(
                decompress(&encoded(name), two.clone().into(), 1 << 20).is_ok(),
                "{name}"
            );
        }
        let mut trailing = two.clone();
        trailing.extend_from_slice(b"garbage");
        let truncated = &two[..two.len() - 3];
        for broken in [trailing.as_slice(), truncated, b"", b"not gzip"] {
            let refused = decompress(&encoded("gzip"), Bytes::copy_from_slice(broken), 1 << 20);
            assert_eq!(refused.unwrap_err().0, StatusCode::BAD_REQUEST);
        }
        let bomb = gzip(&vec![b' '; 1 << 20]);
        let refused = decompress(&encoded("gzip"), bomb.into(), 1000).unwrap_err();
        assert_eq!(refused.0, StatusCode::PAYLOAD_TOO_LARGE);
        let other = decompress(&encoded("br"), Bytes::new(), 1000).unwrap_err();
        assert_eq!(other.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn idempotency_keys_are_utf8_of_1_to_255_bytes() {
        let key = |value: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.insert("idempotency-key", HeaderValue::from_bytes(value).unwrap());
            idempotency_key(&headers)
        };
        assert_eq!(key("ключ-1".as_bytes()), Ok(Some("ключ-1".into())));
        assert_eq!(key(b"\"quoted\""), Ok(Some("quoted".into())));
        assert!(key(b"").is_err());
        assert!(key(b"\"\"").is_err());
        assert!(key(&[b'k'; 256]).is_err());
        assert_eq!(key(&[b'k'; 255]).unwrap().unwrap().len(), 255);
        assert!(key(b"\xff\xfe").is_err());
        assert_eq!(idempotency_key(&HeaderMap::new()), Ok(None));
    }
}
