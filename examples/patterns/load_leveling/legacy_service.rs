//! The "legacy" service of the load-leveling example: a slow system that
//! takes articles over HTTP and cannot take bursts. Each request takes
//! 20 ms, and with more than four requests in flight it answers 503 with
//! `Retry-After`, as a fragile backend does.
//!
//! ```sh
//! cargo run --release --example legacy_service -- articles 100000 examples/patterns/load_leveling/articles.jsonl
//! cargo run --release --example legacy_service -- serve 127.0.0.1:8088
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{Value, json};

/// What the service has seen.
#[derive(Default)]
struct Counters {
    articles: AtomicU64,
    requests: AtomicU64,
    overloaded: AtomicU64,
    in_flight: AtomicU64,
    /// The ids taken, to tell a repeat from a new article.
    ids: Mutex<HashSet<i64>>,
}

const MAX_IN_FLIGHT: u64 = 4;

async fn migrate(
    State(counters): State<Arc<Counters>>,
    body: axum::Json<Vec<Value>>,
) -> impl IntoResponse {
    let in_flight = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let answer = if in_flight > MAX_IN_FLIGHT {
        counters.overloaded.fetch_add(1, Ordering::Relaxed);
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            "overloaded",
        )
            .into_response()
    } else {
        tokio::time::sleep(Duration::from_millis(20)).await;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        counters
            .articles
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        let mut ids = counters.ids.lock().unwrap();
        ids.extend(body.iter().filter_map(|article| article["id"].as_i64()));
        StatusCode::OK.into_response()
    };
    counters.in_flight.fetch_sub(1, Ordering::SeqCst);
    answer
}

async fn stats(State(counters): State<Arc<Counters>>) -> axum::Json<Value> {
    axum::Json(json!({
        "articles": counters.articles.load(Ordering::Relaxed),
        "distinct": counters.ids.lock().unwrap().len(),
        "requests": counters.requests.load(Ordering::Relaxed),
        "overloaded": counters.overloaded.load(Ordering::Relaxed),
    }))
}

async fn serve(address: &str) {
    let counters = Arc::new(Counters::default());
    let app = Router::new()
        .route("/articles", post(migrate))
        .route("/stats", get(stats))
        .with_state(counters.clone());
    let listener = tokio::net::TcpListener::bind(address).await.expect("bind");
    println!("legacy service on http://{address}/articles");
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let articles = counters.articles.load(Ordering::Relaxed);
            if articles != last {
                println!(
                    "{:>5.0}s  {articles} articles migrated, {:.0}/s over the last 5 s, {} requests refused",
                    started.elapsed().as_secs_f64(),
                    (articles - last) as f64 / 5.0,
                    counters.overloaded.load(Ordering::Relaxed)
                );
                last = articles;
            }
        }
    });
    axum::serve(listener, app).await.expect("serve");
}

/// Writes `count` articles as JSON lines.
fn articles(count: u64, path: &str) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let authors = ["ana", "bo", "chen", "dara"];
    for id in 0..count {
        writeln!(
            out,
            "{}",
            json!({
                "id": id,
                "title": format!("Article {id}"),
                "author": authors[(id % 4) as usize],
                "body": "lorem ipsum ".repeat(8 + (id % 16) as usize),
            })
        )
        .expect("write");
    }
    println!("wrote {count} articles to {path}");
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", address] => serve(address).await,
        ["serve"] => serve("127.0.0.1:8088").await,
        ["articles", count, path] => articles(count.parse().expect("a count"), path),
        _ => eprintln!("usage: legacy_service serve [ADDRESS] | articles COUNT FILE"),
    }
}
