//! Nexmark's stateful queries, q4, q5, q7 and q8, through the windows,
//! top-N and joins, each beside a hand-written single-threaded version of
//! the same query over the same pre-generated events. Both answers are
//! compared row for row before any figure is printed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
use flumen::operators::join::IntervalBounds;
use flumen::operators::{JoinConfig, TopNConfig, WindowConfig, WindowKind, WindowTop};
use flumen::prelude::*;
use flumen::sources::nexmark::{
    EventKind, GeneratorSettings, NexmarkGenerator, auction_schema, bid_schema, person_schema,
};
use flumen_core::testing::{CollectSink, MemorySource};

use super::{best_rate, millions};

/// Pre-generated events of every kind, in event-time order.
pub struct Events {
    pub count: u64,
    persons: Vec<RecordBatch>,
    auctions: Vec<RecordBatch>,
    bids: Vec<RecordBatch>,
}

impl Events {
    /// The bids.
    pub fn bids(&self) -> &[RecordBatch] {
        &self.bids
    }

    pub fn generate(count: u64) -> Events {
        let mut generator = NexmarkGenerator::new(GeneratorSettings::default());
        let kinds = [EventKind::Person, EventKind::Auction, EventKind::Bid];
        let mut events = Events {
            count,
            persons: Vec::new(),
            auctions: Vec::new(),
            bids: Vec::new(),
        };
        for start in (0..count).step_by(8192) {
            let batches = generator.generate(start..(start + 8192).min(count), &kinds);
            events
                .persons
                .extend(batches.persons.filter(|b| b.num_rows() > 0));
            events
                .auctions
                .extend(batches.auctions.filter(|b| b.num_rows() > 0));
            events
                .bids
                .extend(batches.bids.filter(|b| b.num_rows() > 0));
        }
        events
    }
}

/// A query's answer as comparable rows.
pub type Rows = Vec<String>;

const SECOND: i64 = 1000;

fn ints(batch: &RecordBatch, column: &str) -> Vec<i64> {
    let column = batch.column_by_name(column).expect("column exists");
    match column.data_type() {
        arrow::datatypes::DataType::Timestamp(_, _) => column
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .to_vec(),
        _ => column.as_primitive::<Int64Type>().values().to_vec(),
    }
}

fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
    let column = batch
        .column_by_name(column)
        .expect("column exists")
        .as_string::<i32>();
    (0..column.len())
        .map(|i| column.value(i).to_string())
        .collect()
}

fn sorted(mut rows: Rows) -> Rows {
    rows.sort();
    rows
}

fn event_time() -> EventTimeConfig {
    EventTimeConfig::new("date_time")
}

fn window(kind: WindowKind, group_by: &[&str], aggregates: &[&str]) -> WindowConfig {
    WindowConfig {
        window: kind,
        time: Default::default(),
        time_column: None,
        group_by: group_by.iter().map(|s| s.to_string()).collect(),
        aggregates: aggregates.iter().map(|s| s.to_string()).collect(),
        allowed_lateness: Duration::ZERO,
        top: None,
    }
}

fn top_one(order: &str, window: Option<WindowKind>) -> TopNConfig {
    TopNConfig {
        n: 1,
        order_by: vec![order.to_string()],
        partition_by: Vec::new(),
        window,
        time_column: None,
        with_ties: true,
        key: Vec::new(),
        allowed_lateness: Duration::ZERO,
    }
}

/// Runs a graph ending in sink `out`; returns what reached it.
fn run_graph(
    runtime: &tokio::runtime::Runtime,
    graph: GraphBuilder,
    collected: &flumen_core::testing::Collected,
) -> Vec<RecordBatch> {
    super::run_graph(runtime, graph);
    collected.batches()
}

// q5: hot items.

fn q5_engine(
    runtime: &tokio::runtime::Runtime,
    events: &Events,
    size: i64,
    slide: i64,
    parallelism: usize,
) -> Rows {
    let (graph, collected) = q5_graph(events, size, slide, parallelism);
    q5_rows(run_graph(runtime, graph, &collected))
}

/// q5's answer as comparable rows.
pub fn q5_rows(output: Vec<RecordBatch>) -> Rows {
    sorted(
        output
            .iter()
            .flat_map(|b| {
                let (start, auction, bids) =
                    (ints(b, "window_start"), ints(b, "auction"), ints(b, "bids"));
                (0..b.num_rows()).map(move |i| format!("{} {} {}", start[i], auction[i], bids[i]))
            })
            .collect(),
    )
}

/// The q5 pipeline over `events`, and what its sink will have collected:
/// bids counted per auction and hopping window, of which the window emits
/// only its busiest auctions (its `top`).
pub fn q5_graph(
    events: &Events,
    size: i64,
    slide: i64,
    parallelism: usize,
) -> (GraphBuilder, flumen_core::testing::Collected) {
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph
        .source("bids", MemorySource::new(bid_schema(), events.bids.clone()))
        .parallelism(parallelism)
        .event_time(event_time());
    let hop = WindowKind::Hop {
        size: Duration::from_millis(size as u64),
        slide: Duration::from_millis(slide as u64),
    };
    let mut hottest = window(hop, &["auction"], &["count(*) AS bids"]);
    hottest.top = Some(WindowTop {
        n: 1,
        order_by: "bids DESC".into(),
        with_ties: true,
    });
    graph.operator("hottest", hottest.build().unwrap(), ["bids"]);
    graph.sink("out", sink, ["hottest"]);
    (graph, collected)
}

/// Counts per pane of `slide`; each window merges its panes, then keeps
/// the auctions with the most bids.
fn q5_baseline(events: &Events, size: i64, slide: i64) -> Rows {
    let mut panes: BTreeMap<i64, HashMap<i64, u64>> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut next_window: Option<i64> = None;
    let emit = |panes: &BTreeMap<i64, HashMap<i64, u64>>, start: i64, rows: &mut Rows| {
        let mut counts: HashMap<i64, u64> = HashMap::new();
        for (_, pane) in panes.range(start..start + size) {
            for (auction, count) in pane {
                *counts.entry(*auction).or_default() += count;
            }
        }
        if let Some(max) = counts.values().max() {
            for (auction, count) in &counts {
                if count == max {
                    rows.push(format!("{start} {auction} {count}"));
                }
            }
        }
    };
    for batch in &events.bids {
        let auctions = batch.column(0).as_primitive::<Int64Type>().values();
        let times = batch
            .column(5)
            .as_primitive::<TimestampMillisecondType>()
            .values();
        for (auction, time) in auctions.iter().zip(times.iter()) {
            let pane = time.div_euclid(slide) * slide;
            if next_window.is_none() {
                next_window = Some(pane - size + slide);
            }
            // Windows that ended before this pane are complete.
            while let Some(start) = next_window.filter(|start| start + size <= pane) {
                emit(&panes, start, &mut rows);
                next_window = Some(start + slide);
                panes = panes.split_off(&(start + slide));
            }
            *panes.entry(pane).or_default().entry(*auction).or_default() += 1;
        }
    }
    while let Some(start) = next_window.filter(|start| panes.range(start..).next().is_some()) {
        emit(&panes, start, &mut rows);
        next_window = Some(start + slide);
    }
    sorted(rows)
}

// q7: highest bid.

fn q7_engine(runtime: &tokio::runtime::Runtime, events: &Events, parallelism: usize) -> Rows {
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph
        .source("bids", MemorySource::new(bid_schema(), events.bids.clone()))
        .parallelism(parallelism)
        .event_time(event_time());
    let highest = top_one(
        "price DESC",
        Some(WindowKind::Tumble(Duration::from_secs(10))),
    );
    graph.operator("highest", highest.build().unwrap(), ["bids"]);
    graph.sink("out", sink, ["highest"]);
    let output = run_graph(runtime, graph, &collected);
    sorted(
        output
            .iter()
            .flat_map(|b| {
                let (start, auction, price, time) = (
                    ints(b, "window_start"),
                    ints(b, "auction"),
                    ints(b, "price"),
                    ints(b, "date_time"),
                );
                (0..b.num_rows())
                    .map(move |i| format!("{} {} {} {}", start[i], auction[i], price[i], time[i]))
            })
            .collect(),
    )
}

/// One pass: the highest price of the current window, and its bids.
fn q7_baseline(events: &Events) -> Rows {
    let size = 10 * SECOND;
    let mut rows = Vec::new();
    let mut window: Option<i64> = None;
    let mut best: (i64, Vec<(i64, i64)>) = (i64::MIN, Vec::new());
    for batch in &events.bids {
        let auctions = batch.column(0).as_primitive::<Int64Type>().values();
        let prices = batch.column(2).as_primitive::<Int64Type>().values();
        let times = batch
            .column(5)
            .as_primitive::<TimestampMillisecondType>()
            .values();
        for i in 0..batch.num_rows() {
            let start = times[i].div_euclid(size) * size;
            if window != Some(start) {
                if let Some(previous) = window {
                    for (auction, time) in &best.1 {
                        rows.push(format!("{previous} {auction} {} {time}", best.0));
                    }
                }
                window = Some(start);
                best = (i64::MIN, Vec::new());
            }
            if prices[i] > best.0 {
                best = (prices[i], vec![(auctions[i], times[i])]);
            } else if prices[i] == best.0 {
                best.1.push((auctions[i], times[i]));
            }
        }
    }
    if let Some(previous) = window {
        for (auction, time) in &best.1 {
            rows.push(format!("{previous} {auction} {} {time}", best.0));
        }
    }
    sorted(rows)
}

// q8: new sellers.

fn q8_engine(runtime: &tokio::runtime::Runtime, events: &Events, parallelism: usize) -> Rows {
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph
        .source(
            "persons",
            MemorySource::new(person_schema(), events.persons.clone()),
        )
        .parallelism(parallelism)
        .event_time(event_time());
    graph
        .source(
            "auctions",
            MemorySource::new(auction_schema(), events.auctions.clone()),
        )
        .parallelism(parallelism)
        .event_time(event_time());
    let tumble = || WindowKind::Tumble(Duration::from_secs(10));
    let sellers = window(tumble(), &["seller"], &["count(*) AS auctions"]);
    graph
        .operator("sellers", sellers.build().unwrap(), ["auctions"])
        .parallelism(parallelism);
    let join = JoinConfig {
        join_type: Default::default(),
        left_keys: vec!["id".into()],
        right_keys: vec!["seller".into()],
        window: Some(tumble()),
        interval: None,
        table: None,
        left_time_column: None,
        right_time_column: Some("window_start".into()),
        allowed_lateness: Duration::ZERO,
        left_prefix: String::new(),
        right_prefix: "seller_".into(),
    };
    graph
        .operator("new_sellers", join.build().unwrap(), ["persons", "sellers"])
        .parallelism(parallelism);
    graph.sink("out", sink, ["new_sellers"]);
    let output = run_graph(runtime, graph, &collected);
    sorted(
        output
            .iter()
            .flat_map(|b| {
                let (start, id, auctions) = (
                    ints(b, "window_start"),
                    ints(b, "id"),
                    ints(b, "seller_auctions"),
                );
                let names = strings(b, "name");
                (0..b.num_rows())
                    .map(move |i| format!("{} {} {} {}", start[i], id[i], names[i], auctions[i]))
            })
            .collect(),
    )
}

/// Per window: who registered, and who opened how many auctions.
fn q8_baseline(events: &Events) -> Rows {
    let size = 10 * SECOND;
    let mut people: HashMap<(i64, i64), String> = HashMap::new();
    for batch in &events.persons {
        let ids = batch.column(0).as_primitive::<Int64Type>().values();
        let names = batch.column(1).as_string::<i32>();
        let times = batch
            .column(6)
            .as_primitive::<TimestampMillisecondType>()
            .values();
        for i in 0..batch.num_rows() {
            people.insert(
                (times[i].div_euclid(size) * size, ids[i]),
                names.value(i).to_string(),
            );
        }
    }
    let mut sellers: HashMap<(i64, i64), u64> = HashMap::new();
    for batch in &events.auctions {
        let seller = batch.column(7).as_primitive::<Int64Type>().values();
        let times = batch
            .column(5)
            .as_primitive::<TimestampMillisecondType>()
            .values();
        for i in 0..batch.num_rows() {
            *sellers
                .entry((times[i].div_euclid(size) * size, seller[i]))
                .or_default() += 1;
        }
    }
    sorted(
        sellers
            .iter()
            .filter_map(|((start, seller), count)| {
                people
                    .get(&(*start, *seller))
                    .map(|name| format!("{start} {seller} {name} {count}"))
            })
            .collect(),
    )
}

// q4: average closing price per category.

fn q4_engine(runtime: &tokio::runtime::Runtime, events: &Events, parallelism: usize) -> Rows {
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph
        .source(
            "auctions",
            MemorySource::new(auction_schema(), events.auctions.clone()),
        )
        .parallelism(parallelism)
        .event_time(event_time());
    graph
        .source("bids", MemorySource::new(bid_schema(), events.bids.clone()))
        .parallelism(parallelism)
        .event_time(event_time());
    let join = JoinConfig {
        join_type: Default::default(),
        left_keys: vec!["id".into()],
        right_keys: vec!["auction".into()],
        window: None,
        interval: Some(IntervalBounds {
            lower: 0,
            upper: SECOND,
        }),
        table: None,
        left_time_column: None,
        right_time_column: None,
        allowed_lateness: Duration::ZERO,
        left_prefix: String::new(),
        right_prefix: "bid_".into(),
    };
    graph
        .operator("auction_bids", join.build().unwrap(), ["auctions", "bids"])
        .parallelism(parallelism);
    let open = SqlTransform::new()
        .filter("bid_date_time <= expires")
        .select(["id", "category", "expires", "bid_price"]);
    graph
        .operator("while_open", open, ["auction_bids"])
        .parallelism(parallelism);
    let mut finals = window(
        WindowKind::Tumble(Duration::from_secs(10)),
        &["id", "category"],
        &["max(bid_price) AS final"],
    );
    finals.time_column = Some("expires".into());
    graph
        .operator("final_prices", finals.build().unwrap(), ["while_open"])
        .parallelism(parallelism);
    let mut averages = window(
        WindowKind::Tumble(Duration::from_secs(10)),
        &["category"],
        &["avg(final) AS average_price", "count(*) AS auctions"],
    );
    averages.time_column = Some("window_start".into());
    graph.operator("per_category", averages.build().unwrap(), ["final_prices"]);
    graph.sink("out", sink, ["per_category"]);
    let output = run_graph(runtime, graph, &collected);
    sorted(
        output
            .iter()
            .flat_map(|b| {
                let (start, category, auctions) = (
                    ints(b, "window_start"),
                    ints(b, "category"),
                    ints(b, "auctions"),
                );
                let average = b
                    .column_by_name("average_price")
                    .unwrap()
                    .as_primitive::<Float64Type>()
                    .clone();
                (0..b.num_rows()).map(move |i| {
                    format!(
                        "{} {} {:.3} {}",
                        start[i],
                        category[i],
                        average.value(i),
                        auctions[i]
                    )
                })
            })
            .collect(),
    )
}

/// Auctions by id; one pass over the bids keeps each auction's highest bid
/// while it was open; then the average per category and 10 s of closings.
fn q4_baseline(events: &Events) -> Rows {
    let size = 10 * SECOND;
    let mut auctions: HashMap<i64, (i64, i64, i64, Option<i64>)> = HashMap::new();
    for batch in &events.auctions {
        let ids = batch.column(0).as_primitive::<Int64Type>().values();
        let opened = batch
            .column(5)
            .as_primitive::<TimestampMillisecondType>()
            .values();
        let expires = batch
            .column(6)
            .as_primitive::<TimestampMillisecondType>()
            .values();
        let categories = batch.column(8).as_primitive::<Int64Type>().values();
        for i in 0..batch.num_rows() {
            auctions.insert(ids[i], (categories[i], opened[i], expires[i], None));
        }
    }
    for batch in &events.bids {
        let ids = batch.column(0).as_primitive::<Int64Type>().values();
        let prices = batch.column(2).as_primitive::<Int64Type>().values();
        let times = batch
            .column(5)
            .as_primitive::<TimestampMillisecondType>()
            .values();
        for i in 0..batch.num_rows() {
            if let Some((_, opened, expires, best)) = auctions.get_mut(&ids[i])
                && *opened <= times[i]
                && times[i] <= *expires
                && times[i] <= *opened + SECOND
            {
                *best = Some(best.map_or(prices[i], |b| b.max(prices[i])));
            }
        }
    }
    let mut groups: HashMap<(i64, i64), (f64, u64)> = HashMap::new();
    for (category, _, expires, best) in auctions.values() {
        if let Some(best) = best {
            let group = groups
                .entry((expires.div_euclid(size) * size, *category))
                .or_default();
            group.0 += *best as f64;
            group.1 += 1;
        }
    }
    sorted(
        groups
            .iter()
            .map(|((start, category), (sum, count))| {
                format!("{start} {category} {:.3} {count}", sum / *count as f64)
            })
            .collect(),
    )
}

/// Runs every stateful query wanted, printing engine and baseline rates.
pub fn run(runtime: &tokio::runtime::Runtime, events: &Events, wanted: &dyn Fn(&str) -> bool) {
    println!(
        "{:<13} {:>14} {:>16} {:>7} {:>16} {:>7}",
        "query", "baseline ev/s", "engine p=1 ev/s", "ratio", "engine p=2 ev/s", "ratio"
    );
    type Engine<'a> = Box<dyn Fn(usize) -> Rows + 'a>;
    type Baseline<'a> = Box<dyn Fn() -> Rows + 'a>;
    let queries: Vec<(&str, Engine<'_>, Baseline<'_>)> = vec![
        (
            "q4",
            Box::new(|p| q4_engine(runtime, events, p)),
            Box::new(|| q4_baseline(events)),
        ),
        (
            "q5 10s/2s",
            Box::new(|p| q5_engine(runtime, events, 10 * SECOND, 2 * SECOND, p)),
            Box::new(|| q5_baseline(events, 10 * SECOND, 2 * SECOND)),
        ),
        (
            "q5 60s/1s",
            Box::new(|p| q5_engine(runtime, events, 60 * SECOND, SECOND, p)),
            Box::new(|| q5_baseline(events, 60 * SECOND, SECOND)),
        ),
        (
            "q7",
            Box::new(|p| q7_engine(runtime, events, p)),
            Box::new(|| q7_baseline(events)),
        ),
        (
            "q8",
            Box::new(|p| q8_engine(runtime, events, p)),
            Box::new(|| q8_baseline(events)),
        ),
    ];
    let mut q5_rates = Vec::new();
    for (name, engine, baseline) in queries {
        if !wanted(name.split(' ').next().unwrap_or(name)) {
            continue;
        }
        let expected = baseline();
        assert!(!expected.is_empty(), "{name}: the baseline found nothing");
        let baseline_rate = best_rate(|| {
            std::hint::black_box(baseline());
            events.count
        });
        let engine_rate = |parallelism: usize| {
            best_rate(|| {
                let answer = engine(parallelism);
                assert_eq!(
                    answer, expected,
                    "{name} at parallelism {parallelism}: engine and baseline disagree"
                );
                events.count
            })
        };
        let (p1, p2) = (engine_rate(1), engine_rate(2));
        if name.starts_with("q5") {
            q5_rates.push(p1);
        }
        println!(
            "{name:<13} {:>14} {:>16} {:>6.2}x {:>16} {:>6.2}x",
            millions(baseline_rate),
            millions(p1),
            p1 / baseline_rate,
            millions(p2),
            p2 / baseline_rate
        );
    }
    if let [small, large] = q5_rates[..] {
        println!(
            "q5 engine at p=1, 60s/1s windows against 10s/2s: {:.2}x the throughput",
            large / small
        );
    }
    println!();
}
