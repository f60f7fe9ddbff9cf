//! Pub/sub: the Orders service publishes the coffee shop's 100 orders to
//! a Kafka topic; the barista, loyalty and analytics subscribers, each in
//! its own consumer group and running at once, each see every order. The
//! orders are then all published again (as a publisher that lost its
//! checkpoint would): every subscriber drops the repeats, and its output
//! is unchanged.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Example, by_key, data, datafusion};
use crate::kafka::create_topic;
use crate::streams::unique;

const ORDERS: &str = "(SELECT * FROM mobile UNION ALL SELECT * FROM counter)";

fn answer(sql: &str) -> Vec<Value> {
    datafusion(
        &sql.replace("ORDERS", ORDERS),
        &[
            ("mobile", &data("orders-mobile.jsonl")),
            ("counter", &data("orders-counter.jsonl")),
        ],
    )
}

/// What the three subscribers hold: items to prepare (a count per order
/// and item), the loyalty view, and the hourly analytics.
fn subscribers(
    example: &Example,
) -> (
    BTreeMap<String, u64>,
    BTreeMap<String, Value>,
    BTreeMap<String, Value>,
) {
    let mut items = BTreeMap::new();
    for row in crate::json_lines(&example.out().join("barista")) {
        *items
            .entry(format!("{} {}", row["order_id"], row["item"]))
            .or_insert(0) += 1;
    }
    let loyalty = example.kv(example.out().join("loyalty.redb").to_str().unwrap());
    let hourly = example.sql(
        "analytics.yaml",
        "SELECT channel, window_start, orders, takings FROM per_hour",
    );
    let hourly = by_key(hourly, |row| {
        format!(
            "{} {}",
            row["channel"],
            &row["window_start"].as_str().unwrap()[..19]
        )
    });
    (items, loyalty, hourly)
}

#[test]
fn three_subscribers_each_get_every_order_once_even_when_it_is_published_twice() {
    let brokers = crate::kafka::brokers();
    let topic = unique("orders");
    create_topic(&brokers, &topic, 4);
    let mut example = Example::new("pub_sub");
    example.set("KAFKA_BROKERS", &brokers).set("TOPIC", &topic);

    let published = example.run("orders_service.yaml");
    assert!(published.contains("out: orders_topic=100;"), "{published}");
    let runs =
        ["barista.yaml", "loyalty.yaml", "analytics.yaml"].map(|file| example.start(file, &[]));
    for mut run in runs {
        run.wait_for_log("finished in");
        assert!(run.child.wait().unwrap().success(), "{}", run.log());
        assert!(run.log().contains("in: orders=100;"), "{}", run.log());
    }

    let mut items = BTreeMap::new();
    for row in answer("SELECT order_id, unnest(items) AS item FROM ORDERS") {
        *items
            .entry(format!("{} {}", row["order_id"], row["item"]))
            .or_insert(0) += 1;
    }
    let loyalty: BTreeMap<String, Value> = answer(
        "SELECT customer, count(*) AS orders, sum(total) AS spent FROM ORDERS GROUP BY customer",
    )
    .into_iter()
    .map(|row| {
        (
            format!("customer:{}", row["customer"].as_str().unwrap()),
            row,
        )
    })
    .collect();
    let hourly = by_key(
        answer(
            "SELECT channel, CAST(date_trunc('hour', CAST(ordered_at AS TIMESTAMP)) AS VARCHAR) AS window_start, \
             count(*) AS orders, sum(total) AS takings FROM ORDERS GROUP BY 1, 2",
        ),
        |row| {
            format!(
                "{} {}",
                row["channel"],
                &row["window_start"].as_str().unwrap()[..19]
            )
        },
    );
    let (got_items, got_loyalty, got_hourly) = subscribers(&example);
    assert_eq!(got_items, items, "the barista's items to prepare");
    assert_eq!(got_loyalty, loyalty, "the loyalty view");
    assert_eq!(got_hourly.len(), hourly.len());
    for (key, row) in &hourly {
        let got = &got_hourly[key];
        assert_eq!(
            json!([got["orders"], got["takings"]]),
            json!([row["orders"], row["takings"]]),
            "analytics for {key}"
        );
    }

    // Every order is published a second time, as a publisher that lost
    // its checkpoint would. (Sent one message to a record batch, as the
    // Kafka tests send what consumers resume in the middle of: tansu 0.6
    // reports a partition's end inside its last batch.) Each subscriber
    // reads them all, and drops them as repeats of orders it has seen.
    let orders: Vec<(i32, String, Vec<u8>)> = ["orders-mobile.jsonl", "orders-counter.jsonl"]
        .iter()
        .flat_map(|file| {
            std::fs::read_to_string(data(file))
                .unwrap()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .map(|line| {
            let order: Value = serde_json::from_str(&line).unwrap();
            let partition = (order["order_id"].as_i64().unwrap() % 4) as i32;
            (
                partition,
                order["customer"].as_str().unwrap().to_string(),
                line.into_bytes(),
            )
        })
        .collect();
    assert_eq!(orders.len(), 100);
    crate::kafka::produce(
        &brokers,
        &topic,
        orders.iter().map(|(p, k, v)| (*p, k.clone(), v.as_slice())),
        4,
        1,
    );
    for file in ["barista.yaml", "loyalty.yaml", "analytics.yaml"] {
        let log = example.run(file);
        assert!(
            log.contains("in: orders=100;"),
            "{file} read the repeats: {log}"
        );
    }
    let (items_after, loyalty_after, hourly_after) = subscribers(&example);
    assert_eq!(items_after, got_items, "no item twice");
    assert_eq!(loyalty_after, got_loyalty, "no order counted twice");
    assert_eq!(hourly_after, got_hourly, "no order counted twice");
}
