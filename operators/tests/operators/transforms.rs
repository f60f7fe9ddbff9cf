//! Stateless transforms against DataFusion's answers over the same data.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, ListArray, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use flumen_core::prelude::{GraphBuilder, Input, Result, RunOptions};
use flumen_core::testing::{CollectSink, MemorySource, run_operator};
use flumen_operators::{MapBatches, SqlTransform, Union, Unnest};
use proptest::prelude::*;

use crate::common::{header, query, quiet, sorted_lines};

fn bids_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("price", DataType::Int64, true),
        Field::new("rate", DataType::Float64, true),
        Field::new("channel", DataType::Utf8, true),
    ]))
}

type Row = (i64, Option<i64>, Option<f64>, Option<String>);

fn bids(rows: &[Row]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.1))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.3.clone()))),
    ];
    RecordBatch::try_new(bids_schema(), columns).unwrap()
}

async fn datafusion_answer(sql: &str, input: Vec<RecordBatch>) -> Vec<RecordBatch> {
    query(&[("bids", input)], sql).await
}

async fn check_against_datafusion(filter: Option<&str>, select: &[&str], input: Vec<RecordBatch>) {
    let mut transform = SqlTransform::new();
    if let Some(filter) = filter {
        transform = transform.filter(filter);
    }
    transform = transform.select(select.iter().copied());
    let streamed = run_operator(transform, input.clone()).await.unwrap();

    let sql = format!(
        "SELECT {} FROM bids{}",
        select.join(", "),
        filter.map(|f| format!(" WHERE {f}")).unwrap_or_default()
    );
    let expected = datafusion_answer(&sql, input).await;
    assert_eq!(sorted_lines(&streamed), sorted_lines(&expected), "{sql}");
    if !streamed.is_empty() {
        assert_eq!(header(&streamed), header(&expected), "{sql}");
    }
}

const QUERIES: &[(Option<&str>, &[&str])] = &[
    // Nexmark q1 and q2.
    (None, &["auction", "price * 0.908 AS price_eur"]),
    (Some("auction % 123 = 0"), &["auction", "price"]),
    (Some("price > 100 AND channel LIKE 'G%'"), &["*"]),
    (
        Some("rate IS NOT NULL OR price IS NULL"),
        &[
            "auction",
            "upper(channel) AS loud",
            "CASE WHEN price > 500 THEN 'high' ELSE 'low' END AS band",
            "coalesce(rate, 0.0) * 2 AS doubled",
            "CAST(price AS DOUBLE) / 100 AS dollars",
        ],
    ),
    (
        Some("length(channel) BETWEEN 2 AND 6"),
        &["channel", "auction + 1 AS next"],
    ),
];

#[tokio::test]
async fn sql_transforms_match_datafusion() {
    let rows: Vec<Row> = (0..2000)
        .map(|i| {
            let channel = ["Google", "Apple", "Baidu", "ch"][i % 4].to_string();
            (
                i as i64 * 41,
                (i % 7 != 0).then_some((i * 37 % 1000) as i64),
                (i % 5 != 0).then_some(i as f64 / 3.0),
                (i % 11 != 0).then_some(channel),
            )
        })
        .collect();
    let input: Vec<RecordBatch> = rows.chunks(300).map(bids).collect();
    for (filter, select) in QUERIES {
        check_against_datafusion(*filter, select, input.clone()).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn sql_transforms_match_datafusion_on_random_data(
        rows in prop::collection::vec(
            (0i64..10_000, prop::option::of(-1000i64..1000), prop::option::of(-1e3f64..1e3), prop::option::of("[A-Za-z]{0,8}")),
            1..200,
        ),
        batch in 1usize..64,
        query in 0..QUERIES.len(),
    ) {
        let input: Vec<RecordBatch> = rows.chunks(batch).map(bids).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (filter, select) = QUERIES[query];
        runtime.block_on(check_against_datafusion(filter, select, input));
    }
}

fn plan_error(transform: SqlTransform) -> String {
    let mut graph = GraphBuilder::new();
    graph.source("bids", MemorySource::new(bids_schema(), Vec::new()));
    graph.operator("q", transform, ["bids"]);
    graph.sink("out", CollectSink::new().0, ["q"]);
    graph.build().unwrap_err().to_string()
}

#[test]
fn ill_typed_expressions_fail_when_the_graph_is_built() {
    let not_boolean = plan_error(SqlTransform::new().filter("price + 1"));
    assert_eq!(
        not_boolean,
        "invalid pipeline: `q`: filter: `price + 1` is Int64, expected a true/false condition"
    );

    let unknown = plan_error(SqlTransform::new().select(["auction", "prize * 2"]));
    assert_eq!(
        unknown,
        "invalid pipeline: `q`: select[1]: column `prize` does not exist; columns: auction, price, rate, channel"
    );

    let mistyped = plan_error(SqlTransform::new().filter("channel > 5 AND upper(price) = 'X'"));
    assert!(
        mistyped.starts_with("invalid pipeline: `q`: filter:"),
        "{mistyped}"
    );

    let syntax = plan_error(SqlTransform::new().filter("price >> AND"));
    assert!(
        syntax.starts_with("invalid pipeline: `q`: filter: column `and` does not exist"),
        "{syntax}"
    );

    let twice = plan_error(SqlTransform::new().select(["auction", "price AS auction"]));
    assert!(
        twice.contains("column `auction` is produced twice"),
        "{twice}"
    );
}

#[tokio::test]
async fn a_failing_expression_stops_the_run_naming_the_operator() {
    let input = vec![bids(&[(1, Some(0), None, None)])];
    let err = run_operator(
        SqlTransform::new().select(["auction / (price - price) AS boom"]),
        input,
    )
    .await
    .unwrap_err();
    assert_eq!(err.node(), Some("operator"));
    assert!(err.to_string().contains("Divide by zero"), "{err}");
}

#[tokio::test]
async fn rows_an_expression_fails_on_go_to_the_dead_letter_sink() {
    let input = bids(&[
        (1, Some(5), None, None),
        (2, Some(0), None, None),
        (3, Some(4), None, None),
    ]);
    let (sink, output) = CollectSink::new();
    let (dead_sink, dead) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph.source("bids", MemorySource::new(input.schema(), vec![input]));
    graph.operator(
        "ratio",
        SqlTransform::new().select(["auction", "100 / price AS ratio"]),
        ["bids"],
    );
    graph.sink("out", sink, ["ratio"]);
    graph.dead_letter_sink(dead_sink);
    graph.build().unwrap().run_with(quiet()).await.unwrap();
    assert_eq!(output.rows(), 2);
    let dead = dead.batches();
    let lines = sorted_lines(&dead);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("ratio"), "{lines:?}");
    assert!(lines[0].contains("Divide by zero"), "{lines:?}");
    assert!(lines[0].contains(r#"{"auction":2,"price":0}"#), "{lines:?}");
}

#[tokio::test]
async fn unnest_matches_datafusion() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new(
            "tags",
            DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
            true,
        ),
    ]));
    let tags = ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
        Some(vec![Some(1), Some(2)]),
        None,
        Some(vec![]),
        Some(vec![Some(3), None, Some(4)]),
        Some(vec![Some(5)]),
    ]);
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![10, 20, 30, 40, 50])),
            Arc::new(tags),
        ],
    )
    .unwrap();
    let streamed = run_operator(Unnest::new("tags"), vec![batch.clone(), batch.slice(3, 2)])
        .await
        .unwrap();
    let expected = datafusion_answer(
        "SELECT id, unnest(tags) AS tags FROM bids",
        vec![batch.clone(), batch.slice(3, 2)],
    )
    .await;
    assert_eq!(sorted_lines(&streamed), sorted_lines(&expected));
    assert_eq!(
        streamed.iter().map(RecordBatch::num_rows).sum::<usize>(),
        6 + 4
    );
}

#[tokio::test]
async fn union_merges_inputs_with_one_schema() {
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph.source(
        "web",
        MemorySource::new(bids_schema(), vec![bids(&[(1, None, None, None)])]),
    );
    graph.source(
        "mobile",
        MemorySource::new(
            bids_schema(),
            vec![bids(&[(2, None, None, None), (3, None, None, None)])],
        ),
    );
    graph
        .operator("all", Union, ["web", "mobile"])
        .parallelism(2);
    graph.sink("out", sink, [Input::round_robin("all")]);
    let options = RunOptions {
        handle_signals: false,
        ..RunOptions::default()
    };
    graph.build().unwrap().run_with(options).await.unwrap();
    assert_eq!(collected.rows(), 3);

    let other = Arc::new(Schema::new(vec![Field::new(
        "auction",
        DataType::Utf8,
        false,
    )]));
    let mut graph = GraphBuilder::new();
    graph.source("web", MemorySource::new(bids_schema(), Vec::new()));
    graph.source("legacy", MemorySource::new(other, Vec::new()));
    graph.operator("all", Union, ["web", "legacy"]);
    graph.sink("out", CollectSink::new().0, ["all"]);
    let err = graph.build().unwrap_err().to_string();
    assert!(
        err.starts_with(
            "invalid pipeline: `all`: inputs: `web` and `legacy` have different schemas"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_closure_transform_runs_user_code() -> Result<()> {
    let doubled_schema = Arc::new(Schema::new(vec![Field::new(
        "doubled",
        DataType::Int64,
        false,
    )]));
    let output_schema = doubled_schema.clone();
    let double = MapBatches::new(doubled_schema, move |batch| {
        let auction = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let doubled: Int64Array = auction.iter().map(|a| a.map(|a| a * 2)).collect();
        Ok(RecordBatch::try_new(
            output_schema.clone(),
            vec![Arc::new(doubled)],
        )?)
    });
    let output = run_operator(
        double,
        vec![bids(&[(1, None, None, None), (21, None, None, None)])],
    )
    .await?;
    assert_eq!(sorted_lines(&output), ["| 2       |", "| 42      |"]);

    // Returning another schema than declared is an error, not corruption.
    let liar = MapBatches::new(
        Arc::new(Schema::new(vec![Field::new("x", DataType::Utf8, false)])),
        Ok,
    );
    let err = run_operator(liar, vec![bids(&[(1, None, None, None)])])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("the closure returned columns"),
        "{err}"
    );
    Ok(())
}
