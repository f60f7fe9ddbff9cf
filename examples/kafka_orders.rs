//! Reading Kafka from the library: the coffee shop's orders from the topic
//! `orders` (see examples/kafka_publish_orders.yaml), the large ones
//! printed as a table, as a member of the consumer group `big-orders`.
//!
//! ```sh
//! cargo run --release --example kafka_orders -- 127.0.0.1:9092
//! ```

use flumen::prelude::*;

#[tokio::main]
async fn main() -> Result<()> {
    let brokers = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9092".to_string());

    let orders = KafkaSourceConfig::new(&brokers, &["orders"], "big-orders")
        .with_schema([
            ("order_id", "int64"),
            ("customer", "string"),
            ("channel", "string"),
            ("total", "float64"),
        ])
        // End at the topic's current end rather than waiting for more.
        .stop_at_latest();

    let mut graph = GraphBuilder::new();
    graph.source("orders", orders.build()?);
    graph.operator(
        "big",
        SqlTransform::new()
            .filter("total >= 6")
            .select(["order_id", "customer", "channel", "total"]),
        ["orders"],
    );
    let table = StdoutConfig {
        format: StdoutFormat::Table,
        limit: Some(8),
    };
    graph.sink("out", table.build()?, ["big"]);

    let report = graph.build()?.run().await?;
    let read = report.node("orders").map_or(0, |n| n.rows_out);
    let big = report.node("out").map_or(0, |n| n.rows_in);
    eprintln!("{read} orders read, {big} of them large");
    Ok(())
}
