use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use flumen_core::prelude::*;
use flumen_core::testing::CollectSink;

use super::model::*;
use super::*;

fn generate(seed: u64, events: std::ops::Range<u64>) -> GeneratedBatches {
    let settings = GeneratorSettings {
        seed,
        ..GeneratorSettings::default()
    };
    NexmarkGenerator::new(settings).generate(
        events,
        &[EventKind::Person, EventKind::Auction, EventKind::Bid],
    )
}

fn int64s(batch: &RecordBatch, column: &str) -> Vec<i64> {
    batch
        .column_by_name(column)
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

fn times(batch: &RecordBatch, column: &str) -> Vec<i64> {
    batch
        .column_by_name(column)
        .unwrap()
        .as_primitive::<TimestampMillisecondType>()
        .values()
        .to_vec()
}

#[test]
fn same_seed_same_events_other_seed_other_events() {
    let a = generate(42, 0..5_000);
    let b = generate(42, 0..5_000);
    let c = generate(43, 0..5_000);
    assert_eq!(a.bids, b.bids);
    assert_eq!(a.persons, b.persons);
    assert_eq!(a.auctions, b.auctions);
    assert_ne!(a.bids, c.bids);
    // Generating a sub-range gives exactly those events.
    let tail = generate(42, 2_500..5_000).bids.unwrap();
    let whole = a.bids.unwrap();
    assert_eq!(
        whole.slice(whole.num_rows() - tail.num_rows(), tail.num_rows()),
        tail
    );
}

#[test]
fn kinds_come_in_proportions_1_3_46() {
    let all = generate(0, 0..100_000);
    assert_eq!(all.persons.unwrap().num_rows(), 2_000);
    assert_eq!(all.auctions.unwrap().num_rows(), 6_000);
    assert_eq!(all.bids.unwrap().num_rows(), 92_000);
}

#[test]
fn ids_and_times_follow_the_specification() {
    let settings = GeneratorSettings::default();
    let events = 0..200_000u64;
    let all = generate(0, events.clone());
    let (persons, auctions, bids) = (
        all.persons.unwrap(),
        all.auctions.unwrap(),
        all.bids.unwrap(),
    );
    let event_numbers = |kind: EventKind| events.clone().filter(move |e| EventKind::of(*e) == kind);

    // Person and auction ids count up from 1000 without gaps.
    assert!(
        int64s(&persons, "id")
            .iter()
            .copied()
            .eq(1000..1000 + persons.num_rows() as i64)
    );
    assert!(
        int64s(&auctions, "id")
            .iter()
            .copied()
            .eq(1000..1000 + auctions.num_rows() as i64)
    );

    // Event time advances one second every `event_rate` events.
    for (kind, batch) in [
        (EventKind::Person, &persons),
        (EventKind::Auction, &auctions),
        (EventKind::Bid, &bids),
    ] {
        let expected = event_numbers(kind)
            .map(|e| settings.base_time + (e * 1000 / settings.event_rate) as i64);
        assert!(
            times(batch, "date_time").into_iter().eq(expected),
            "{kind:?} times"
        );
    }

    // Bids go to auctions and come from people that exist (or are about
    // to, within the lead), and to recent ones.
    let auction_ids = int64s(&bids, "auction");
    let bidders = int64s(&bids, "bidder");
    let mut hot = 0;
    for (i, event) in event_numbers(EventKind::Bid).enumerate() {
        let newest_auction = last_base0_auction_id(event) as i64 + FIRST_AUCTION_ID;
        let auction = auction_ids[i];
        assert!(
            auction <= newest_auction + AUCTION_ID_LEAD as i64,
            "event {event}: auction {auction}"
        );
        assert!(
            auction >= newest_auction - settings.in_flight_auctions as i64,
            "event {event}: auction {auction}"
        );
        hot += usize::from((auction - FIRST_AUCTION_ID) % HOT_AUCTION_RATIO as i64 == 0);
        let newest_person = last_base0_person_id(event) as i64 + FIRST_PERSON_ID;
        assert!(bidders[i] <= newest_person + PERSON_ID_LEAD as i64 + 1);
        assert!(bidders[i] >= newest_person - settings.active_people as i64);
    }
    // Half the bids go to hot auctions (and a few random ones happen to).
    let share = hot as f64 / bids.num_rows() as f64;
    assert!((0.5..0.55).contains(&share), "hot auction share {share}");

    // Prices are between $1 and $1M; auctions expire after they open.
    assert!(
        int64s(&bids, "price")
            .iter()
            .all(|p| (100..=100_000_000).contains(p))
    );
    let opened = times(&auctions, "date_time");
    let expires = times(&auctions, "expires");
    assert!(opened.iter().zip(&expires).all(|(o, e)| e > o));
    let reserve = int64s(&auctions, "reserve");
    assert!(
        int64s(&auctions, "initial_bid")
            .iter()
            .zip(&reserve)
            .all(|(b, r)| r > b)
    );

    // `extra` pads events towards Nexmark's average sizes.
    let average_len = |batch: &RecordBatch| {
        let extra = batch.column_by_name("extra").unwrap().as_string::<i32>();
        extra.value_data().len() as f64 / extra.len() as f64
    };
    assert!(
        (60.0..76.0).contains(&average_len(&bids)),
        "bid extra {}",
        average_len(&bids)
    );
    assert!(average_len(&persons) > 100.0 && average_len(&auctions) > 300.0);
}

async fn run_source(config: NexmarkConfig, parallelism: usize) -> RecordBatch {
    let (sink, collected) = CollectSink::new();
    let mut graph = GraphBuilder::new();
    graph
        .source("nexmark", config.build().unwrap())
        .parallelism(parallelism);
    graph.sink("out", sink, ["nexmark"]);
    let options = RunOptions {
        handle_signals: false,
        ..RunOptions::default()
    };
    graph.build().unwrap().run_with(options).await.unwrap();
    let batch = collected.concat().unwrap();
    // Order the rows by event time and auction, as instances interleave.
    let sorted = arrow::compute::lexsort_to_indices(
        &[
            arrow::compute::SortColumn {
                values: batch.column_by_name("date_time").unwrap().clone(),
                options: None,
            },
            arrow::compute::SortColumn {
                values: batch.column_by_name("extra").unwrap().clone(),
                options: None,
            },
        ],
        None,
    )
    .unwrap();
    arrow::compute::take_record_batch(&batch, &sorted).unwrap()
}

#[tokio::test]
async fn parallel_instances_together_generate_the_serial_events() {
    let config = NexmarkConfig {
        batch_size: 1000,
        ..NexmarkConfig::bids(20_000)
    };
    let serial = run_source(config.clone(), 1).await;
    let parallel = run_source(config, 3).await;
    assert_eq!(serial.num_rows(), EventKind::Bid.count_in(20_000) as usize);
    assert_eq!(serial, parallel);
}

#[test]
fn bad_settings_name_the_key() {
    let err = NexmarkConfig {
        event_rate: 0,
        ..NexmarkConfig::default()
    }
    .build()
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration at `event_rate`: must be at least 1"
    );
}
