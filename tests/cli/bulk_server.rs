//! A test server for the `_bulk` API of Elasticsearch and OpenSearch, as
//! documented: NDJSON actions (`index` with a document line, `delete`)
//! in, one item per action out, in order, each with its `status` and, when
//! refused, an `error` with a `type` and a `reason`.
//!
//! No Elasticsearch or OpenSearch server can be installed where these
//! tests run, so this stands in for one. It keeps the documents it
//! accepted, answers each item as the test's `Fates` say, and counts what
//! it saw: how often each answer was given, and how often an action came
//! again for a document it had already accepted.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// What happens to a whole request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestFate {
    /// Its items are answered one by one.
    Answer,
    /// Answered with this status, nothing applied.
    Status(u16),
    /// The connection is closed without an answer, nothing applied.
    Drop,
    /// No answer until the client gives up, nothing applied.
    Stall,
}

/// The status an item gets, by its id and attempt.
type ItemFate = Box<dyn Fn(&str, u32) -> u16 + Send + Sync>;

/// The test's choices: the fate of the `n`th request (from 1), and the
/// status of an item, by its id and how many times the server has seen
/// an action for that id (from 1).
pub(super) struct Fates {
    pub request: Box<dyn Fn(u64) -> RequestFate + Send + Sync>,
    pub item: ItemFate,
    /// The `Authorization` header a request must carry, if any.
    pub authorization: Option<String>,
}

/// What the server saw and keeps.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// The index: documents by id.
    pub documents: BTreeMap<String, serde_json::Value>,
    pub requests: u64,
    /// Items answered, by status.
    pub answered: BTreeMap<u16, u64>,
    /// Requests that failed as a whole, by fate.
    pub failed_requests: BTreeMap<String, u64>,
    /// Actions received for an id after one for it was accepted with the
    /// same content: what a client must not send again.
    pub sent_again_after_accepted: u64,
    /// Actions seen per id.
    attempts: HashMap<String, u32>,
}

pub(super) struct BulkServer {
    pub url: String,
    pub seen: Arc<Mutex<Seen>>,
    _runtime: tokio::runtime::Runtime,
}

impl BulkServer {
    /// Starts on a free loopback port, over TLS with `tls`'s
    /// certificate and key if given.
    pub(super) fn start(fates: Fates, tls: Option<(&std::path::Path, &std::path::Path)>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let acceptor = tls.map(|(cert, key)| {
            flumen_clients::http::TlsConfig {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            }
            .acceptor()
            .unwrap()
        });
        let seen = Arc::new(Mutex::new(Seen::default()));
        let fates = Arc::new(fates);
        let shared = seen.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, fates, acceptor) = (shared.clone(), fates.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        answer(request, seen.clone(), fates.clone())
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match acceptor {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                    };
                });
            }
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        BulkServer {
            url: format!("{scheme}://127.0.0.1:{}", address.port()),
            seen,
            _runtime: runtime,
        }
    }
}

type Answered = Result<Response<Full<Bytes>>, std::io::Error>;

fn json(status: StatusCode, body: serde_json::Value) -> Answered {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap())
}

async fn answer(request: Request<Incoming>, seen: Arc<Mutex<Seen>>, fates: Arc<Fates>) -> Answered {
    if request.method() != hyper::Method::POST || request.uri().path() != "/_bulk" {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "only POST /_bulk"}),
        );
    }
    if let Some(wanted) = &fates.authorization {
        let given = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given != Some(wanted.as_str()) {
            return json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": {"type": "security_exception", "reason": "missing authentication credentials"}, "status": 401}),
            );
        }
    }
    let content_type = request.headers().get("content-type").cloned();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    if content_type.as_ref().and_then(|v| v.to_str().ok()) != Some("application/x-ndjson") {
        return json(
            StatusCode::NOT_ACCEPTABLE,
            serde_json::json!({"error": "Content-Type must be application/x-ndjson"}),
        );
    }
    let number = {
        let mut seen = seen.lock().unwrap();
        seen.requests += 1;
        seen.requests
    };
    let fate = (fates.request)(number);
    let failed = |seen: &Arc<Mutex<Seen>>, what: &str| {
        *seen
            .lock()
            .unwrap()
            .failed_requests
            .entry(what.to_string())
            .or_default() += 1;
    };
    match fate {
        RequestFate::Answer => {}
        RequestFate::Status(status) => {
            failed(&seen, &status.to_string());
            let status = StatusCode::from_u16(status).unwrap();
            return json(
                status,
                serde_json::json!({"error": {"type": "es_rejected_execution_exception", "reason": "rejected"}, "status": status.as_u16()}),
            );
        }
        RequestFate::Drop => {
            failed(&seen, "dropped");
            return Err(std::io::Error::other("connection dropped by the test"));
        }
        RequestFate::Stall => {
            failed(&seen, "stalled");
            tokio::time::sleep(Duration::from_secs(30)).await;
            return Err(std::io::Error::other("stalled by the test"));
        }
    }
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut lines = text.lines();
    let mut items = Vec::new();
    let mut seen = seen.lock().unwrap();
    while let Some(line) = lines.next() {
        let action: serde_json::Value = serde_json::from_str(line).unwrap();
        let (kind, metadata) = action.as_object().unwrap().iter().next().unwrap();
        let id = metadata["_id"].as_str().unwrap().to_string();
        let document = match kind.as_str() {
            "index" => {
                Some(serde_json::from_str::<serde_json::Value>(lines.next().unwrap()).unwrap())
            }
            "delete" => None,
            other => panic!("unexpected action {other}"),
        };
        let attempt = {
            let attempts = seen.attempts.entry(id.clone()).or_default();
            *attempts += 1;
            *attempts
        };
        let existing = seen.documents.get(&id).cloned();
        if existing.is_some() && existing == document {
            seen.sent_again_after_accepted += 1;
        }
        let mut status = (fates.item)(&id, attempt);
        let mut item = serde_json::json!({"_index": metadata["_index"], "_id": id});
        match status {
            200 | 201 => match document {
                Some(document) => {
                    status = if seen.documents.insert(id, document).is_some() {
                        200
                    } else {
                        201
                    };
                    item["result"] = (if status == 201 { "created" } else { "updated" }).into();
                }
                None => {
                    status = if seen.documents.remove(&id).is_some() {
                        200
                    } else {
                        404
                    };
                    item["result"] = (if status == 200 {
                        "deleted"
                    } else {
                        "not_found"
                    })
                    .into();
                }
            },
            409 => {
                item["error"] = serde_json::json!({"type": "version_conflict_engine_exception", "reason": format!("[{id}]: version conflict, document already exists")});
            }
            400 => {
                item["error"] = serde_json::json!({"type": "mapper_parsing_exception", "reason": "failed to parse field [likes] of type [long]"});
            }
            429 => {
                item["error"] = serde_json::json!({"type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"});
            }
            _ => {
                item["error"] = serde_json::json!({"type": "unavailable_shards_exception", "reason": "primary shard is not active"});
            }
        }
        *seen.answered.entry(status).or_default() += 1;
        item["status"] = status.into();
        items.push(serde_json::json!({ kind.clone(): item }));
    }
    let errors = items.iter().any(|item| {
        let status = item.as_object().unwrap().values().next().unwrap()["status"]
            .as_u64()
            .unwrap();
        status >= 300 && status != 404
    });
    json(
        StatusCode::OK,
        serde_json::json!({"took": 1, "errors": errors, "items": items}),
    )
}
