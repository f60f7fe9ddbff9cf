//! The serving loop: accepting connections up to a limit, over TLS if
//! configured, closing those that are idle or slow, and handing each
//! request to the server's handler; and the answers every server gives
//! alike (JSON errors, `Retry-After`, `Allow`, refused credentials).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::http::{HeaderValue, StatusCode, header};
use serde_json::json;
use tokio::sync::Semaphore;

use super::auth::Refusal;

/// An answer to a request.
pub type Response = hyper::Response<Full<Bytes>>;

/// A JSON answer.
pub fn json_answer(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error answer: a status and `{ "error": ... }`.
pub fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({ "error": message.into() });
    json_answer(status, serde_json::to_vec(&body).expect("JSON"))
}

/// `response` with `Retry-After: wait`, in whole seconds, at least 1.
pub fn retry_after(mut response: Response, wait: Duration) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// `response` with `Allow: methods`, for a 405.
pub fn allow(methods: &'static str, mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(methods));
    response
}

/// The answer to refused credentials.
pub fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Unauthorized(message) => refuse(StatusCode::UNAUTHORIZED, message),
        Refusal::TooManyFailures(wait) => retry_after(
            refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed attempts from this address; try again later",
            ),
            wait,
        ),
    }
}

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From accepting a connection, or answering its last request, to the
    /// end of the next request's headers (a TLS handshake included): a
    /// connection that takes longer is closed.
    pub deadline: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// Serves requests on `listener` until dropped, over TLS if given one:
/// `handler` answers each request, given its sender's address.
pub async fn serve<H, F>(
    listener: tokio::net::TcpListener,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: H,
) where
    H: Fn(SocketAddr, hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;

    let builder = Arc::new(Builder::new(TokioExecutor::new()));
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = AcceptBackoff::default();
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(error) => {
                backoff.failed(&error).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            turn_away(socket, tls.is_some());
            continue;
        };
        let clock = Arc::new(ConnectionClock::new());
        let service = {
            let (handler, clock) = (handler.clone(), clock.clone());
            hyper::service::service_fn(move |request| {
                let busy = clock.request();
                let answer = handler(peer, request);
                async move {
                    let response = answer.await;
                    drop(busy);
                    Ok::<_, std::convert::Infallible>(response)
                }
            })
        };
        let (builder, tls) = (builder.clone(), tls.clone());
        tokio::spawn(async move {
            let connection = async {
                match tls {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(socket), service)
                            .await;
                    }
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(socket).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                }
            };
            // Dropping the connection closes it.
            tokio::select! {
                () = connection => {}
                () = clock.idle_for(limits.deadline) => {}
            }
            drop(permit);
        });
    }
}

/// Answers a connection past `max_connections` with a 503 (a TLS one,
/// which cannot be answered before its handshake, is only closed).
fn turn_away(socket: tokio::net::TcpStream, tls: bool) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
        content-type: application/json\r\ncontent-length: 43\r\nconnection: close\r\n\r\n\
        {\"error\":\"too many connections; try again\"}";
    if !tls {
        // Into the socket's send buffer, never waiting on the client.
        let _ = socket.try_write(BUSY);
    }
}

/// Whether a connection has requests in progress, and since when it has
/// been idle. A request costs two atomic counts and a clock read: the
/// connection's timer is looked at only when it fires.
struct ConnectionClock {
    opened: Instant,
    /// Requests in progress.
    busy: AtomicUsize,
    /// When the last request was answered (or the connection opened), in
    /// nanoseconds since `opened`.
    idle_since: AtomicU64,
}

/// A request in progress on a connection; dropped once answered.
struct Busy(Arc<ConnectionClock>);

impl ConnectionClock {
    fn new() -> ConnectionClock {
        ConnectionClock {
            opened: Instant::now(),
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
        }
    }

    fn request(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Returns once the connection has been idle, with no request in
    /// progress, for `deadline`.
    async fn idle_for(&self, deadline: Duration) {
        loop {
            if self.busy.load(Ordering::Acquire) > 0 {
                // A request's body has its own timeout; look again later.
                tokio::time::sleep(deadline).await;
                continue;
            }
            // Read after `busy`, so it is the last answer's time.
            let idle_since = Duration::from_nanos(self.idle_since.load(Ordering::Acquire));
            let until = self.opened + idle_since + deadline;
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // The time first: once `busy` is 0, `idle_since` is this answer's.
        let now = self.0.opened.elapsed().as_nanos() as u64;
        self.0.idle_since.fetch_max(now, Ordering::AcqRel);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits between failed accepts: out of file descriptors, accepting again
/// at once fails again at once, and would spin.
#[derive(Default)]
struct AcceptBackoff {
    wait: Option<Duration>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MOST: Duration = Duration::from_secs(1);

    fn succeeded(&mut self) {
        self.wait = None;
    }

    async fn failed(&mut self, error: &std::io::Error) {
        use std::io::ErrorKind::*;
        // A connection that broke before it was accepted is its own
        // business.
        if matches!(
            error.kind(),
            ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
        ) {
            return;
        }
        let wait = match self.wait {
            None => {
                tracing::warn!(%error, "could not accept a connection; waiting before trying again");
                Self::FIRST
            }
            Some(wait) => (wait * 2).min(Self::MOST),
        };
        self.wait = Some(wait);
        tokio::time::sleep(wait).await;
    }
}
