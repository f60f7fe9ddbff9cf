//! The `enrich` transform against a service on loopback: rows in order or
//! as they are answered, calls for many rows at once, and rows the
//! service has no record of.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, Int64Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flumen_core::prelude::*;
use flumen_core::testing::run_operator;
use flumen_operators::EnrichConfig;
use serde_json::{Value, json};

/// `GET /double/{id}` → `{"twice": 2 * id}`, after 300 ms for ids below
/// 10; `POST /double` with `[{"id": …}, …]` → the answers, in order;
/// `GET /missing/{id}` → 404.
async fn service() -> String {
    async fn double(Path(id): Path<i64>) -> axum::Json<Value> {
        if id < 10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
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
        .route("/missing/{id}", axum::routing::get(missing));
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// Two batches: ids 0..10 (slow to answer), then 10..20.
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
    let address = service().await;
    let settings = |ordered: bool| {
        config(json!({
            "url": format!("http://{address}/double/{{id}}"),
            "columns": { "twice": "int64" },
            "ordered": ordered,
        }))
    };
    let expected: Vec<(i64, Option<i64>)> = (0..20).map(|id| (id, Some(id * 2))).collect();

    let ordered = rows(
        &run_operator(settings(true).build().unwrap(), batches())
            .await
            .unwrap(),
    );
    assert_eq!(ordered, expected);

    // The second batch is answered at once, the first after 300 ms.
    let unordered = rows(
        &run_operator(settings(false).build().unwrap(), batches())
            .await
            .unwrap(),
    );
    assert_eq!(unordered[..10], expected[10..]);
    assert_eq!(unordered[10..], expected[..10]);
}

#[tokio::test]
async fn a_call_for_many_rows_carries_their_bodies_and_answers_each() {
    let address = service().await;
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
    let address = service().await;
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
