//! The `enrich` transform against a service on loopback: rows in order or
//! as they are answered, calls for many rows at once, and rows the
//! service has no record of.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arrow::array::{Array, AsArray, Int64Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flumen_core::prelude::*;
use flumen_core::testing::{ChannelSource, CollectSink, run_operator};
use flumen_operators::EnrichConfig;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// When the first batch's calls are answered: once `open`, which the
/// service sets itself after ten other calls if `after_others`, else the
/// test does.
#[derive(Default)]
struct Gate {
    after_others: bool,
    others: AtomicUsize,
    open: AtomicBool,
    opened: Notify,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.opened.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if self.open.load(Ordering::SeqCst) {
                return;
            }
            opened.await;
        }
    }
}

/// `GET /double/{id}` → `{"twice": 2 * id}`; ids below 10 (the first
/// batch) are answered once the gate opens; `POST /double` with
/// `[{"id": …}, …]` → the answers, in order; `GET /missing/{id}` → 404.
async fn service(gate: Arc<Gate>) -> String {
    async fn double(State(gate): State<Arc<Gate>>, Path(id): Path<i64>) -> axum::Json<Value> {
        if id < 10 {
            gate.wait().await;
        } else if gate.others.fetch_add(1, Ordering::SeqCst) + 1 == 10 && gate.after_others {
            gate.open();
        }
        axum::Json(json!({ "twice": id * 2 }))
    }
    async fn doubles(axum::Json(rows): axum::Json<Vec<Value>>) -> axum::Json<Value> {
        let answers: Vec<Value> = rows
            .iter()
            .map(|row| json!({ "twice": row["id"].as_i64().unwrap() * 2 }))
            .collect();
        axum::Json(Value::Array(answers))
    }
    async fn missing() -> Response {
        StatusCode::NOT_FOUND.into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let app = axum::Router::new()
        .route("/double/{id}", axum::routing::get(double))
        .route("/double", axum::routing::post(doubles))
        .route("/missing/{id}", axum::routing::get(missing))
        .with_state(gate);
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// A service whose gate opens by itself.
async fn open_service() -> String {
    let gate = Gate {
        after_others: true,
        ..Gate::default()
    };
    service(Arc::new(gate)).await
}

/// Two batches: ids 0..10 (answered once the gate opens), then 10..20.
fn batches() -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    [0..10i64, 10..20]
        .into_iter()
        .map(|ids| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from_iter_values(ids))],
            )
            .unwrap()
        })
        .collect()
}

fn config(settings: Value) -> EnrichConfig {
    serde_json::from_value(settings).unwrap()
}

/// (id, twice) of every row out, in the order they came out.
fn rows(out: &[RecordBatch]) -> Vec<(i64, Option<i64>)> {
    out.iter()
        .flat_map(|batch| {
            let ids = batch.column(0).as_primitive::<Int64Type>().clone();
            let twice = batch.column(1).as_primitive::<Int64Type>().clone();
            (0..batch.num_rows())
                .map(move |i| (ids.value(i), twice.is_valid(i).then(|| twice.value(i))))
        })
        .collect()
}

#[tokio::test]
async fn ordered_rows_wait_for_earlier_ones_and_unordered_ones_do_not() {
    let settings = |address: String, ordered: bool| {
        config(json!({
            "url": format!("http://{address}/double/{{id}}"),
            "columns": { "twice": "int64" },
            "ordered": ordered,
            "concurrency": 32,
        }))
    };
    let expected: Vec<(i64, Option<i64>)> = (0..20).map(|id| (id, Some(id * 2))).collect();

    // Ordered: the first batch, answered after the second, still goes
    // out first.
    let enrich = settings(open_service().await, true).build().unwrap();
    let ordered = rows(&run_operator(enrich, batches()).await.unwrap());
    assert_eq!(ordered, expected);

    // Unordered: the second batch goes out while the first still waits
    // for its answers, which come only once it has. (The input stays
    // open meanwhile: at its end every batch is waited for.)
    let gate = Arc::new(Gate::default());
    let enrich = settings(service(gate.clone()).await, false)
        .build()
        .unwrap();
    let (sink, collected) = CollectSink::new();
    let (source, input) = ChannelSource::new(batches()[0].schema());
    for batch in batches() {
        input.send(batch).await.unwrap();
    }
    let mut graph = GraphBuilder::new();
    graph.source("input", source);
    graph.operator("enrich", enrich, ["input"]);
    graph.sink("output", sink, ["enrich"]);
    let run = tokio::spawn(graph.build().unwrap().run_with(RunOptions {
        handle_signals: false,
        ..RunOptions::default()
    }));
    collected.wait_until(|c| c.rows() >= 10).await;
    assert_eq!(rows(&collected.batches()), expected[10..]);
    gate.open();
    collected.wait_until(|c| c.rows() >= 20).await;
    drop(input);
    run.await.unwrap().unwrap();
    let unordered = rows(&collected.batches());
    assert_eq!(unordered[10..], expected[..10]);
}

#[tokio::test]
async fn a_call_for_many_rows_carries_their_bodies_and_answers_each() {
    let address = open_service().await;
    let enrich = config(json!({
        "url": format!("http://{address}/double"),
        "body": { "id": "id" },
        "batch_size": 7,
        "columns": { "twice": "int64" },
    }));
    let out = rows(
        &run_operator(enrich.build().unwrap(), batches())
            .await
            .unwrap(),
    );
    let expected: Vec<(i64, Option<i64>)> = (0..20).map(|id| (id, Some(id * 2))).collect();
    assert_eq!(out, expected);
}

#[tokio::test]
async fn a_row_the_service_has_no_record_of_keeps_null_columns_when_asked() {
    let address = open_service().await;
    let enrich = config(json!({
        "url": format!("http://{address}/missing/{{id}}"),
        "columns": { "twice": "int64" },
        "not_found": "keep",
    }));
    let out = rows(
        &run_operator(enrich.build().unwrap(), batches())
            .await
            .unwrap(),
    );
    assert_eq!(out, (0..20).map(|id| (id, None)).collect::<Vec<_>>());

    // By default, such a row is refused (here: the run fails with it).
    let enrich = config(json!({
        "url": format!("http://{address}/missing/{{id}}"),
        "columns": { "twice": "int64" },
    }));
    let error = run_operator(enrich.build().unwrap(), batches())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("answered HTTP 404 Not Found"), "{error}");
}

#[test]
fn settings_that_cannot_work_are_refused_with_their_key() {
    let refused = |settings: Value| config(settings).build().unwrap_err().to_string();
    let error = refused(json!({ "url": "http://x/{id", "columns": { "a": "int64" } }));
    assert!(
        error.contains("`url`") && error.contains("does not close"),
        "{error}"
    );
    let error = refused(json!({ "url": "http://x/{id}", "columns": { "a": "decimal9" } }));
    assert!(error.contains("columns.a"), "{error}");
    let error = refused(json!({
        "url": "http://x/{id}", "columns": { "a": "int64" }, "body": { "id": "id" }, "batch_size": 10,
    }));
    assert!(error.contains("names a column"), "{error}");
    let error = refused(
        json!({ "url": "http://x/{id}", "columns": { "a": { "type": "int64", "path": "a.b" } } }),
    );
    assert!(error.contains("not a JSON pointer"), "{error}");
}
