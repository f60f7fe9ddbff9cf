//! The `serve:` server: HTTP reads of a running pipeline's embedded views.
//!
//! - `GET /v1/views`: the views served, by name;
//! - `GET /v1/views/{sink}/{key}`: one key's value (404 if it has none);
//! - `GET /v1/views/{sink}?prefix=&limit=&cursor=`: keys in order, a page
//!   at a time;
//! - `GET /v1/search/{sink}?q=&limit=&offset=`: a search index's best
//!   hits, with their stored fields and highlighted snippets.
//!
//! With a [`Console`], it also answers the console's status API and page
//! (see [`console`]).
//!
//! Reads run in redb read transactions beside the sink's writer, on the
//! writer's own database handle: a reader sees the store as the last
//! committed checkpoint left it, never part of one. Connections, TLS and
//! authentication are the HTTP source's ([`flumen_clients::http`]).

mod config;
pub mod console;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::http::{Method, StatusCode};
use serde_json::json;

use flumen_clients::http::ClientRateLimit;
use flumen_clients::http::auth::{Authenticator, Client, Screened};
use flumen_clients::http::server::{
    ConnectionLimits, Response, allow, json_answer, refuse, refused, retry_after, serve,
};
use flumen_core::prelude::*;
use flumen_sinks::kv::{EmbeddedReader, Entry};
use flumen_sinks::search::SearchReader;

pub use self::config::ServeConfig;
pub use self::console::Console;

/// A view the server answers reads of: a `kv` sink's embedded store.
struct View {
    path: PathBuf,
    /// Opened once the sink has opened its store.
    reader: OnceLock<EmbeddedReader>,
}

impl View {
    /// The reader, once the sink has opened its store; after the pipeline
    /// has finished, the file as it left it.
    fn reader(&self, finished: bool) -> Option<&EmbeddedReader> {
        if let Some(reader) = self.reader.get() {
            return Some(reader);
        }
        let reader = match EmbeddedReader::of_this_process(&self.path) {
            Some(reader) => reader,
            None if finished => EmbeddedReader::open(&self.path).ok()?,
            None => return None,
        };
        Some(self.reader.get_or_init(|| reader))
    }
}

/// A search index the server answers queries of: a `search` sink's.
struct SearchIndex {
    path: PathBuf,
    /// Opened once the sink has made the index.
    reader: OnceLock<SearchReader>,
}

impl SearchIndex {
    fn reader(&self) -> Option<&SearchReader> {
        if let Some(reader) = self.reader.get() {
            return Some(reader);
        }
        let reader = SearchReader::open(&self.path).ok()?;
        Some(self.reader.get_or_init(|| reader))
    }
}

/// What every request needs.
struct Served {
    views: BTreeMap<String, View>,
    indexes: BTreeMap<String, SearchIndex>,
    max_limit: usize,
    auth: Option<Authenticator>,
    limiter: Option<ClientRateLimit>,
    /// Whether the pipeline has finished: its sinks have closed their
    /// stores.
    finished: AtomicBool,
    /// The running pipeline's status and page, if served.
    console: Option<Arc<Console>>,
}

/// A running `serve:` server; dropping it stops it.
pub struct ViewServer {
    address: SocketAddr,
    served: Arc<Served>,
    task: tokio::task::JoinHandle<()>,
}

impl ViewServer {
    /// Starts serving `views` (sink name → embedded store path) and
    /// `indexes` (sink name → search index path) as `config` says, and the
    /// `console` if given. Views answer 503 until their sinks have opened
    /// them.
    pub async fn start(
        config: &ServeConfig,
        views: BTreeMap<String, PathBuf>,
        indexes: BTreeMap<String, PathBuf>,
        console: Option<Arc<Console>>,
    ) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| Error::config("serve.listen", format!("{}: {e}", config.listen)))?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::config("serve.listen", e.to_string()))?;
        let tls = config
            .tls
            .as_ref()
            .map(|tls| tls.acceptor())
            .transpose()
            .map_err(|e| match e.setting() {
                Some((key, message)) => Error::config(format!("serve.{key}"), message),
                None => e,
            })?;
        let limiter = config.rate_limit.as_ref().map(ClientRateLimit::new);
        let served = Arc::new(Served {
            views: views
                .into_iter()
                .map(|(name, path)| {
                    let view = View {
                        path,
                        reader: OnceLock::new(),
                    };
                    (name, view)
                })
                .collect(),
            indexes: indexes
                .into_iter()
                .map(|(name, path)| {
                    let index = SearchIndex {
                        path,
                        reader: OnceLock::new(),
                    };
                    (name, index)
                })
                .collect(),
            max_limit: config.max_limit.max(1),
            auth: config.auth.as_ref().map(Authenticator::new),
            limiter,
            finished: AtomicBool::new(false),
            console,
        });
        let limits = ConnectionLimits {
            deadline: config.request_timeout,
            max_connections: config.max_connections,
        };
        let task = tokio::spawn(serve(listener, limits, tls, {
            let served = served.clone();
            move |peer, request| {
                let served = served.clone();
                async move { handle(served, peer, request).await }
            }
        }));
        Ok(ViewServer {
            address,
            served,
            task,
        })
    }

    /// Says the pipeline has finished, so that views no reader has opened
    /// yet are read from their files.
    pub fn pipeline_finished(&self) {
        self.served.finished.store(true, Ordering::Release);
    }

    /// The address it listens on (with the port, if `listen` asked for
    /// port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for ViewServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers one read.
async fn handle(
    served: Arc<Served>,
    peer: SocketAddr,
    request: hyper::Request<Incoming>,
) -> Response {
    let (parts, _body) = request.into_parts();
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return allow(
            "GET, HEAD",
            refuse(StatusCode::METHOD_NOT_ALLOWED, "views are read with GET"),
        );
    }
    let client = match &served.auth {
        None => Client::Anyone,
        Some(auth) => match auth.screen(&parts.headers, peer.ip()) {
            Ok(Screened::Client(client)) => client,
            // A signed read signs its empty body.
            Ok(Screened::Signed(signed)) => match auth.verify(&signed, b"", peer.ip()) {
                Ok(client) => client,
                Err(refusal) => return refused(refusal),
            },
            Err(refusal) => return refused(refusal),
        },
    };
    if let Some(over) = served
        .limiter
        .as_ref()
        .and_then(|limiter| limiter.refuse_over_rate(client, peer.ip()))
    {
        return over;
    }
    let path = parts.uri.path();
    if let Some(console) = &served.console {
        if path == "/" {
            return typed(console::PAGE, "text/html; charset=utf-8");
        }
        if path == "/v1/graph.svg" {
            return match console.graph_svg() {
                Some(svg) => typed(svg, "image/svg+xml"),
                None => refuse(StatusCode::NOT_FOUND, "no picture of this pipeline"),
            };
        }
        if let Some(body) = console.answer(path) {
            return answer(body);
        }
    }
    if let Some(name) = path.strip_prefix("/v1/search/") {
        // A query reads the index's files: off the threads that serve
        // connections.
        let (name, query) = (
            decoded(name).into_owned(),
            parts.uri.query().unwrap_or("").to_string(),
        );
        return tokio::task::spawn_blocking(move || search(&served, &name, &query))
            .await
            .unwrap_or_else(|e| {
                refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the query failed: {e}"),
                )
            });
    }
    let Some(rest) = path
        .strip_prefix("/v1/views")
        .filter(|r| r.is_empty() || r.starts_with('/'))
    else {
        return refuse(StatusCode::NOT_FOUND, format!("no route `{path}`"));
    };
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        let names: Vec<&String> = served.views.keys().collect();
        return answer(json!({ "views": names }));
    }
    let (name, key) = match rest.split_once('/') {
        Some((name, key)) => (name, Some(key)),
        None => (rest, None),
    };
    let name = decoded(name);
    let Some(view) = served.views.get(name.as_ref()) else {
        let names: Vec<&str> = served.views.keys().map(String::as_str).collect();
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no view `{name}`; served: {}", names.join(", ")),
        );
    };
    let Some(reader) = view.reader(served.finished.load(Ordering::Acquire)) else {
        return retry_after(
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("view `{name}` is not open yet: its sink is starting"),
            ),
            Duration::from_secs(1),
        );
    };
    let result = match key {
        Some(key) => get(reader, &decoded(key)),
        None => scan(reader, parts.uri.query().unwrap_or(""), served.max_limit),
    };
    result.unwrap_or_else(|e| {
        tracing::warn!(view = %name, error = %e, "a read of a view failed");
        refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    })
}

fn get(reader: &EmbeddedReader, key: &str) -> Result<Response> {
    Ok(match reader.get_json(key)? {
        Some(json) => json_answer(StatusCode::OK, json),
        None => refuse(StatusCode::NOT_FOUND, format!("no key `{key}`")),
    })
}

fn scan(reader: &EmbeddedReader, query: &str, max_limit: usize) -> Result<Response> {
    let mut prefix = String::new();
    let mut cursor = None;
    let mut limit = 100.min(max_limit);
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "prefix" => prefix = value.into_owned(),
            "cursor" => cursor = Some(value.into_owned()),
            "limit" => match value.parse::<usize>() {
                Ok(n) => limit = n.min(max_limit),
                Err(_) => {
                    return Ok(refuse(
                        StatusCode::BAD_REQUEST,
                        format!("`limit={value}` is not a number"),
                    ));
                }
            },
            other => {
                return Ok(refuse(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter `{other}`; expected prefix, limit, cursor"),
                ));
            }
        }
    }
    let (entries, next) = reader.scan(&prefix, cursor.as_deref(), limit)?;
    let entries: Vec<serde_json::Value> = entries.iter().map(Entry::to_json).collect();
    Ok(answer(json!({ "entries": entries, "cursor": next })))
}

/// Answers `GET /v1/search/{name}?q=&limit=&offset=`.
fn search(served: &Served, name: &str, query: &str) -> Response {
    let Some(index) = served.indexes.get(name) else {
        let names: Vec<&str> = served.indexes.keys().map(String::as_str).collect();
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no search index `{name}`; served: {}", names.join(", ")),
        );
    };
    let mut q = None;
    let mut limit = 10.min(served.max_limit);
    let mut offset = 0;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let number = |value: &str| value.parse::<usize>().ok();
        match key.as_ref() {
            "q" => q = Some(value.into_owned()),
            "limit" | "offset" => match number(&value) {
                Some(n) if key == "limit" => limit = n.min(served.max_limit),
                Some(n) => offset = n,
                None => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        format!("`{key}={value}` is not a number"),
                    );
                }
            },
            other => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter `{other}`; expected q, limit, offset"),
                );
            }
        }
    }
    let Some(q) = q else {
        return refuse(StatusCode::BAD_REQUEST, "`q` is missing: the query");
    };
    let Some(reader) = index.reader() else {
        return retry_after(
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("search index `{name}` is not made yet: its sink is starting"),
            ),
            Duration::from_secs(1),
        );
    };
    match reader.search(&q, limit, offset) {
        Ok((total, hits)) => {
            let hits: Vec<serde_json::Value> = hits
                .iter()
                .map(|hit| {
                    json!({
                        "score": (f64::from(hit.score) * 1e4).round() / 1e4,
                        "document": hit.document,
                        "snippets": hit.snippets,
                    })
                })
                .collect();
            answer(json!({ "total": total.count, "total_exact": total.exact, "hits": hits }))
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// `body` as `content_type`.
fn typed(body: &str, content_type: &'static str) -> Response {
    let mut response = json_answer(StatusCode::OK, body.as_bytes().to_vec());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

fn answer(body: serde_json::Value) -> Response {
    json_answer(StatusCode::OK, serde_json::to_vec(&body).expect("JSON"))
}

/// A path segment with its `%XX` escapes decoded.
fn decoded(segment: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy()
}
