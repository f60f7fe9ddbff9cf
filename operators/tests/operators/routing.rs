//! Dedupe and routing.

use std::time::Duration;

use flumen_core::prelude::*;
use flumen_core::testing::{CollectSink, Collected, MemorySource};
use flumen_operators::{DedupeConfig, RouteConfig};

use crate::common::{query, quiet, sorted_lines};
use crate::windows::{Event, batch, batches, events_schema};

async fn dedupe(events: &[Event], within: Duration, batch_size: usize) -> (Vec<String>, u64) {
    let config = DedupeConfig {
        keys: vec!["key".into(), "other".into()],
        within,
        time: Default::default(),
        time_column: None,
    };
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph
        .source(
            "events",
            MemorySource::new(events_schema(), batches(events, batch_size)),
        )
        .event_time(EventTimeConfig::new("ts"));
    graph
        .operator("dedupe", config.build().unwrap(), ["events"])
        .parallelism(2);
    graph.sink("out", sink, ["dedupe"]);
    let report = graph.build().unwrap().run_with(quiet()).await.unwrap();
    (
        sorted_lines(&collected.batches()),
        report.node("dedupe").unwrap().state_rows,
    )
}

#[tokio::test]
async fn dedupe_drops_repeats_within_the_horizon_only() {
    let events = vec![
        (1, 1, 10, 1_000),
        (1, 1, 11, 1_050), // repeat of the first, 50ms later: dropped
        (1, 2, 12, 1_060), // another key
        (1, 1, 13, 1_099), // still within 100ms of the kept row: dropped
        (1, 1, 14, 1_100), // 100ms after the kept row: kept, and kept from now on
        (1, 1, 15, 1_150), // within 100ms of the new kept row: dropped
        (2, 1, 16, 5_000),
        (2, 1, 17, 5_000), // same time, same key: dropped
    ];
    let kept = [events[0], events[2], events[4], events[6]];
    for batch_size in [1, 3, 8] {
        let (output, state) = dedupe(&events, Duration::from_millis(100), batch_size).await;
        assert_eq!(
            output,
            sorted_lines(&[batch(&kept)]),
            "batches of {batch_size}"
        );
        // Keys are forgotten as the watermark passes their horizon, not at
        // the end: the last one stays for a run carrying on from the
        // final checkpoint.
        assert_eq!(state, 1, "batches of {batch_size}");
    }
}

#[tokio::test]
async fn routes_send_rows_where_their_condition_holds() {
    let events: Vec<Event> = (0..40).map(|i| (i % 5, i % 3, i, 1_000 + i)).collect();
    let config = RouteConfig {
        routes: [("small", "value < 10"), ("even_keys", "key % 2 = 0")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let sinks: Vec<(CollectSink, Collected)> = (0..3).map(|_| CollectSink::new()).collect();
    let mut graph = GraphBuilder::new();
    graph.source(
        "events",
        MemorySource::new(events_schema(), batches(&events, 7)),
    );
    graph.operator("router", config.build().unwrap(), ["events"]);
    graph.sink("small", sinks[0].0.clone(), ["router.small"]);
    graph.sink("even", sinks[1].0.clone(), ["router.even_keys"]);
    graph.sink("rest", sinks[2].0.clone(), ["router"]);
    graph.build().unwrap().run_with(quiet()).await.unwrap();

    let tables = [("events", vec![batch(&events)])];
    for (collected, condition) in [
        (&sinks[0].1, "value < 10"),
        (&sinks[1].1, "key % 2 = 0"),
        (&sinks[2].1, "NOT (value < 10) AND NOT (key % 2 = 0)"),
    ] {
        let expected = query(&tables, &format!("SELECT * FROM events WHERE {condition}")).await;
        assert_eq!(
            sorted_lines(&collected.batches()),
            sorted_lines(&expected),
            "{condition}"
        );
    }
}

#[test]
fn route_and_dedupe_settings_are_checked() {
    let err = RouteConfig {
        routes: Default::default(),
    }
    .build()
    .unwrap_err()
    .to_string();
    assert!(err.contains("`routes`: names no outputs"), "{err}");
    let config = RouteConfig {
        routes: [("x".to_string(), "value + 1".to_string())]
            .into_iter()
            .collect(),
    };
    let mut graph = GraphBuilder::new();
    graph.source("events", MemorySource::new(events_schema(), Vec::new()));
    graph.operator("r", config.build().unwrap(), ["events"]);
    graph.sink("out", CollectSink::new().0, ["r", "r.x"]);
    let err = graph.build().unwrap_err().to_string();
    assert!(
        err.contains("routes.x: `value + 1` is Int64, expected a true/false condition"),
        "{err}"
    );

    let err = DedupeConfig {
        keys: vec![],
        within: Duration::from_secs(1),
        time: Default::default(),
        time_column: None,
    }
    .build()
    .unwrap_err()
    .to_string();
    assert!(err.contains("`keys`: lists no columns"), "{err}");
}
