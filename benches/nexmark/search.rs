//! The search sink beside hand-written Tantivy code doing the same work,
//! over the same tweet-like documents (an id, a user, a like count, a
//! sentence with a word of its own):
//!
//! - `search_index`: the sink, indexing into an embedded index, beside a
//!   bare `IndexWriter` loop adding the same documents with the same
//!   schema (each replacing its id's, as the sink's upserts do) and
//!   committing once at the end;
//! - `search_serve`: queries over HTTP from the `serve:` server beside a
//!   bare hyper server running the same queries with Tantivy (parse, top
//!   10 by score, stored fields, a snippet), under the same load.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, AsArray, Int64Array, StringArray};
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use flumen::prelude::*;
use flumen::serve::{ServeConfig, ViewServer};
use flumen::sinks::SearchSinkConfig;
use flumen::sinks::search::{FieldConfig, FieldType, Tokenizer};
use flumen_core::testing::MemorySource;
use http_body_util::Full;
use tantivy::collector::TopDocs;
use tantivy::indexer::IndexWriterOptions;
use tantivy::query::QueryParser;
use tantivy::schema::{
    FAST, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::{Document, Index, TantivyDocument, Term};

use super::{RUNS, env_number};

const USERS: i64 = 5_000;
const LIKES: i64 = 100_000;

pub fn run(runtime: &tokio::runtime::Runtime, wanted: &dyn Fn(&str) -> bool) {
    let documents = env_number("SEARCH_DOCUMENTS", 1_000_000) as i64;
    let batches = tweets(documents);
    if wanted("search_index") {
        index(runtime, &batches, documents);
    }
    if wanted("search_serve") {
        serve(runtime, &batches, documents);
    }
}

/// `count` documents in batches of 8192 rows.
fn tweets(count: i64) -> Vec<RecordBatch> {
    (0..count)
        .step_by(8192)
        .map(|start| {
            let ids: Vec<i64> = (start..(start + 8192).min(count)).collect();
            RecordBatch::try_from_iter([
                ("id", Arc::new(Int64Array::from(ids.clone())) as ArrayRef),
                (
                    "user",
                    Arc::new(StringArray::from_iter_values(
                        ids.iter().map(|id| format!("u{}", id % USERS)),
                    )),
                ),
                (
                    "likes",
                    Arc::new(Int64Array::from_iter_values(
                        ids.iter().map(|id| id * 7_919 % LIKES),
                    )),
                ),
                (
                    "text",
                    Arc::new(StringArray::from_iter_values(
                        ids.iter()
                            .map(|id| format!("fresh coffee at stall {} k{id}x", id % 97)),
                    )),
                ),
            ])
            .expect("batch")
        })
        .collect()
}

fn sink(path: &Path) -> SearchSinkConfig {
    let field = |kind| FieldConfig {
        kind,
        tokenizer: Tokenizer::Default,
        stored: true,
    };
    let mut config = SearchSinkConfig::new(path);
    config.id = Some("id".into());
    config.fields = Some(
        [
            ("user".to_string(), field(FieldType::Keyword)),
            ("likes".to_string(), field(FieldType::Number)),
            ("text".to_string(), field(FieldType::Text)),
        ]
        .into_iter()
        .collect(),
    );
    config
}

fn run_into(runtime: &tokio::runtime::Runtime, batches: &[RecordBatch], path: &Path) {
    let mut graph = GraphBuilder::new();
    graph.source(
        "tweets",
        MemorySource::new(batches[0].schema(), batches.to_vec()),
    );
    graph.sink(
        "tweet_search",
        sink(path).build().expect("sink"),
        ["tweets"],
    );
    super::run_graph(runtime, graph);
}

fn index(runtime: &tokio::runtime::Runtime, batches: &[RecordBatch], documents: i64) {
    let baseline = best_rate(documents, || {
        let dir = tempfile::tempdir().expect("temporary directory");
        bare_index(dir.path(), batches);
    });
    let engine = best_rate(documents, || {
        let dir = tempfile::tempdir().expect("temporary directory");
        run_into(runtime, batches, &dir.path().join("index"));
    });
    println!(
        "search sink ({documents} documents: a keyword, a number and a sentence each, upserted by id)\n  bare Tantivy IndexWriter loop:    {:>10.0} docs/s\n  tweets → search sink:             {:>10.0} docs/s   ratio {:.2}x\n",
        baseline,
        engine,
        engine / baseline
    );
}

/// The sink's schema and writer settings, written by hand.
fn bare_index(dir: &Path, batches: &[RecordBatch]) {
    let mut schema = Schema::builder();
    let user = schema.add_text_field("user", STRING | STORED);
    let likes = schema.add_i64_field("likes", INDEXED | FAST | STORED);
    let text = schema.add_text_field(
        "text",
        TextOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer("default")
                    .set_index_option(IndexRecordOption::WithFreqsAndPositions),
            )
            .set_stored(),
    );
    let id = schema.add_text_field("_id", STRING | STORED);
    let index = Index::create_in_dir(dir, schema.build()).expect("index");
    let mut writer = index
        .writer_with_options::<TantivyDocument>(
            IndexWriterOptions::builder()
                .num_worker_threads(1)
                .num_merge_threads(1)
                .memory_budget_per_thread(64 << 20)
                .build(),
        )
        .expect("writer");
    for batch in batches {
        let ids = batch.column(0).as_primitive::<Int64Type>();
        let users = batch.column(1).as_string::<i32>();
        let like_counts = batch.column(2).as_primitive::<Int64Type>();
        let texts = batch.column(3).as_string::<i32>();
        for row in 0..batch.num_rows() {
            let key = ids.value(row).to_string();
            writer.delete_term(Term::from_field_text(id, &key));
            let mut document = TantivyDocument::new();
            document.add_text(id, &key);
            document.add_text(user, users.value(row));
            document.add_i64(likes, like_counts.value(row));
            document.add_text(text, texts.value(row));
            writer.add_document(document).expect("add");
        }
    }
    writer.commit().expect("commit");
    writer.wait_merging_threads().expect("merges");
}

fn best_rate(documents: i64, mut f: impl FnMut()) -> f64 {
    (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            f();
            documents as f64 / started.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// Queries of four kinds, percent-encoded: a user (about 200 hits), a
/// narrow range of likes, a document's own word (one hit), and two common
/// words (every document; the best 10 by score).
fn queries(documents: i64) -> Vec<String> {
    let mut random = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |below: i64| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        (random % below as u64) as i64
    };
    (0..1000)
        .map(|i| match i % 4 {
            0 => format!("user%3Au{}", next(USERS)),
            1 => {
                let low = next(LIKES);
                format!("likes%3A%5B{low}%20TO%20{}%5D", low + 3)
            }
            2 => format!("k{}x", next(documents)),
            _ => "coffee%20AND%20stall".to_string(),
        })
        .collect()
}

fn serve(runtime: &tokio::runtime::Runtime, batches: &[RecordBatch], documents: i64) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("index");
    run_into(runtime, batches, &path);
    let queries = queries(documents);
    let paths = |prefix: &str| Arc::new(queries.iter().map(|q| format!("{prefix}{q}")).collect());

    let bare = runtime.block_on(bare_server(&path));
    let (bare_rate, bare_p99) = super::kv::serve::load(runtime, bare, &paths("/?q="));

    let server = runtime
        .block_on(ViewServer::start(
            &ServeConfig::new("127.0.0.1:0"),
            BTreeMap::new(),
            BTreeMap::from([("tweets".to_string(), path.clone())]),
            None,
        ))
        .expect("server");
    server.pipeline_finished();
    let (rate, p99) =
        super::kv::serve::load(runtime, server.address(), &paths("/v1/search/tweets?q="));
    println!(
        "search queries ({documents} documents; 32 clients, random queries, top 10 with snippets, keep-alive)\n  bare hyper + Tantivy server:      {:>10.0} queries/s   p99 {:>6} µs\n  serve: GET /v1/search/tweets:     {:>10.0} queries/s   p99 {:>6} µs   ratio {:.2}x\n",
        bare_rate,
        bare_p99.as_micros(),
        rate,
        p99.as_micros(),
        rate / bare_rate
    );
}

/// A hyper server answering `GET /?q=QUERY` with the best 10 hits: their
/// scores, stored fields and a snippet of `text`.
async fn bare_server(path: &Path) -> SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;

    let index = Index::open_in_dir(path).expect("index");
    let reader = Arc::new(index.reader().expect("reader"));
    let schema = index.schema();
    let defaults = ["user", "text"]
        .iter()
        .map(|name| schema.get_field(name).expect("field"))
        .collect();
    let parser = Arc::new(QueryParser::for_index(&index, defaults));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let (reader, parser) = (reader.clone(), parser.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let query = request.uri().query().unwrap_or("").trim_start_matches("q=");
                    let query = percent_encoding::percent_decode_str(query)
                        .decode_utf8_lossy()
                        .into_owned();
                    let (reader, parser) = (reader.clone(), parser.clone());
                    async move {
                        let body =
                            tokio::task::spawn_blocking(move || search(&reader, &parser, &query))
                                .await
                                .expect("search");
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                    }
                });
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    address
}

fn search(reader: &tantivy::IndexReader, parser: &QueryParser, query: &str) -> Full<Bytes> {
    let query = parser.parse_query(query).expect("query");
    let searcher = reader.searcher();
    let schema = searcher.schema();
    let text = schema.get_field("text").expect("text");
    let top = searcher
        .search(&query, &TopDocs::with_limit(10).order_by_score())
        .expect("search");
    let snippets = SnippetGenerator::create(&searcher, &*query, text).expect("snippets");
    let hits: Vec<serde_json::Value> = top
        .into_iter()
        .map(|(score, address)| {
            let document: TantivyDocument = searcher.doc(address).expect("document");
            let snippet = snippets.snippet_from_doc(&document);
            serde_json::json!({
                "score": score,
                "document": serde_json::from_str::<serde_json::Value>(&document.to_json(schema)).expect("json"),
                "snippets": { "text": snippet.to_html() },
            })
        })
        .collect();
    Full::new(Bytes::from(serde_json::json!({ "hits": hits }).to_string()))
}
