//! Streams and pipelines: the website puts 300 clicks into a Kinesis
//! stream (kinesis-local); the clickstream pipeline distributes them to a
//! page-views view in DynamoDB (moto) and in an embedded store, a search
//! index, and Parquet on S3 (moto), which `flumen sql` then queries. Each
//! store is checked against DataFusion over the clicks file.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Example, data, datafusion};
use crate::kinesis::{block_on, client, create_stream};
use crate::streams::unique;

fn answer(sql: &str) -> Vec<Value> {
    datafusion(sql, &[("clicks", &data("clicks.jsonl"))])
}

#[test]
fn clicks_from_kinesis_reach_both_views_the_index_and_the_lake_as_datafusion_answers() {
    let kinesis = crate::kinesis::endpoint();
    let moto = std::env::var("FLUMEN_TEST_S3_ENDPOINT")
        .expect("this test needs moto: run it through scripts/test.sh, which starts it");
    let stream = unique("clicks");
    block_on(async { create_stream(&client(&kinesis).await, &stream, 2).await });
    let table = unique("page_views").replace('-', "_");
    let lake = format!("s3://flumen-test/{}/clicks", unique("patterns"));

    let mut example = Example::new("streams_and_pipelines");
    example
        .set("STREAM", &stream)
        .set("KINESIS_ENDPOINT", &kinesis)
        .set("DYNAMODB_ENDPOINT", &moto)
        .set("AWS_ENDPOINT_URL", &moto)
        .set("AWS_ACCESS_KEY_ID", "flumen")
        .set("AWS_SECRET_ACCESS_KEY", "flumen")
        .set("AWS_REGION", "us-east-1")
        .set("AWS_ALLOW_HTTP", "true")
        .set("TABLE", &table)
        .set("LAKE", &lake)
        .set("PORT", flumen_core::testing::free_port());

    let put = example.run("website.yaml");
    assert!(put.contains("out: clicks_stream=300;"), "{put}");
    let log = example.run("clickstream.yaml");
    assert!(log.contains("in: clicks=300;"), "{log}");

    // The page views: the same in DynamoDB and in the embedded store.
    let views: BTreeMap<String, Value> = answer(
        "SELECT lower(page) AS page, count(*) AS views, count(DISTINCT user) AS visitors FROM clicks GROUP BY 1",
    )
    .into_iter()
    .map(|row| (format!("page:{}", row["page"].as_str().unwrap()), row))
    .collect();
    assert_eq!(views.len(), 7);
    let embedded = example.kv(example.out().join("page_views.redb").to_str().unwrap());
    let dynamodb = example.kv(&format!("dynamodb://{table}"));
    for (store, got) in [("embedded", &embedded), ("dynamodb", &dynamodb)] {
        assert_eq!(got.len(), views.len(), "{store}: {got:?}");
        for (key, row) in &views {
            let value = &got[key];
            assert_eq!(
                json!([value["page"], value["views"], value["visitors"]]),
                json!([row["page"], row["views"], row["visitors"]]),
                "{store}, {key}"
            );
        }
    }

    // The search index: words in the page, and the section keyword.
    let index = example.out().join("click_search");
    for (query, condition) in [
        ("flat white", "page LIKE '%flat-white%'"),
        ("section:menu", "page LIKE '/menu%'"),
        ("section:home", "page = '/'"),
    ] {
        let found: Vec<i64> = {
            let mut ids: Vec<i64> = example
                .read(&["search", index.to_str().unwrap(), query, "--limit", "1000"])
                .lines()
                .map(|line| {
                    let hit: Value = serde_json::from_str(line).unwrap();
                    hit["document"]["_id"].as_str().unwrap().parse().unwrap()
                })
                .collect();
            ids.sort();
            ids
        };
        let expected: Vec<i64> = answer(&format!(
            "SELECT click_id FROM clicks WHERE {condition} ORDER BY click_id"
        ))
        .iter()
        .map(|row| row["click_id"].as_i64().unwrap())
        .collect();
        assert!(!expected.is_empty());
        assert_eq!(found, expected, "search {query:?}");
    }

    // The lake, through `flumen sql` over the pipeline's Parquet sink.
    let history = example.sql(
        "clickstream.yaml",
        "SELECT section, count(*) AS clicks, count(DISTINCT user) AS users FROM history GROUP BY section ORDER BY section",
    );
    let expected = answer(
        "SELECT coalesce(nullif(split_part(lower(page), '/', 2), ''), 'home') AS section, \
         count(*) AS clicks, count(DISTINCT user) AS users FROM clicks GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(history, expected, "the lake's history");
}
