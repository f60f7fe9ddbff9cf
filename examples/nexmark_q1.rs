//! Nexmark query 1 built in code with the library API: every bid, with its
//! price converted from dollars to euros.
//!
//! ```sh
//! cargo run --release --example nexmark_q1 -- 1000000
//! ```

use flumen::prelude::*;

#[tokio::main]
async fn main() -> Result<()> {
    let events: u64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| Error::config("events", format!("`{arg}` is not a number of events")))?,
        None => 1_000_000,
    };

    let mut graph = GraphBuilder::new();
    graph
        .source("bids", NexmarkConfig::bids(events).build()?)
        .parallelism(2);
    graph
        .operator(
            "q1",
            SqlTransform::new().select([
                "auction",
                "bidder",
                "price * 0.908 AS price_eur",
                "date_time",
            ]),
            ["bids"],
        )
        .parallelism(2);
    // Print the first rows as a table; the rest are counted, not printed.
    let stdout = StdoutConfig {
        format: StdoutFormat::Table,
        limit: Some(5),
    };
    graph.sink("out", stdout.build()?, ["q1"]);

    let report = graph.build()?.run().await?;
    let rows = report.node("out").map_or(0, |n| n.rows_in);
    let seconds = report.duration.as_secs_f64();
    eprintln!(
        "q1: {rows} bids in {seconds:.2} s ({:.1} M bids/s)",
        rows as f64 / seconds / 1e6
    );
    Ok(())
}
