//! Configuration of the Nexmark source.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flumen_core::prelude::*;
use serde::Deserialize;

use super::generator::GeneratorSettings;
use super::model::EventKind;
use super::source::NexmarkSource;

/// Generates Nexmark auction events: persons, auctions or bids.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NexmarkConfig {
    /// Which events this source emits: `bid`, `auction` or `person`. Two
    /// sources with the same seed and settings see the same auction world,
    /// so one can emit persons and another auctions for a join.
    #[serde(default = "default_kind")]
    pub kind: EventKind,

    /// How many events of all kinds to generate (46 in 50 are bids, 3
    /// auctions, 1 a person). Unset: generate forever.
    #[serde(default)]
    pub events: Option<u64>,

    /// Events per second of event time: event time advances one second
    /// every `event_rate` events.
    #[serde(default = "default_event_rate")]
    pub event_rate: u64,

    /// Wall-clock limit in events per second over all instances. Unset: as
    /// fast as the pipeline takes them.
    #[serde(default)]
    pub max_events_per_second: Option<u64>,

    /// Seed of the random choices: the same seed gives the same events.
    #[serde(default)]
    pub seed: u64,

    /// Event time of the first event, e.g. `2026-01-01T00:00:00Z`.
    #[serde(default = "default_start_time", with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub start_time: SystemTime,

    /// Events generated per batch (the batch holds those of `kind`).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,

    /// One in this many bids goes to a random auction; the rest to the hot
    /// auctions.
    #[serde(default = "default_hot_auction_ratio")]
    pub hot_auction_ratio: u64,

    /// One in this many bids comes from a random bidder; the rest from the
    /// hot bidders.
    #[serde(default = "default_hot_ratio")]
    pub hot_bidder_ratio: u64,

    /// One in this many auctions has a random seller; the rest the hot
    /// sellers.
    #[serde(default = "default_hot_ratio")]
    pub hot_seller_ratio: u64,

    /// How many people are active (bidding, selling) at a time.
    #[serde(default = "default_active_people")]
    pub active_people: u64,

    /// How many auctions are open at a time.
    #[serde(default = "default_in_flight_auctions")]
    pub in_flight_auctions: u64,
}

fn default_kind() -> EventKind {
    EventKind::Bid
}
fn default_event_rate() -> u64 {
    10_000
}
fn default_start_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(GeneratorSettings::default().base_time as u64)
}
fn default_batch_size() -> usize {
    8192
}
fn default_hot_auction_ratio() -> u64 {
    2
}
fn default_hot_ratio() -> u64 {
    4
}
fn default_active_people() -> u64 {
    1000
}
fn default_in_flight_auctions() -> u64 {
    100
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        NexmarkConfig {
            kind: default_kind(),
            events: None,
            event_rate: default_event_rate(),
            max_events_per_second: None,
            seed: 0,
            start_time: default_start_time(),
            batch_size: default_batch_size(),
            hot_auction_ratio: default_hot_auction_ratio(),
            hot_bidder_ratio: default_hot_ratio(),
            hot_seller_ratio: default_hot_ratio(),
            active_people: default_active_people(),
            in_flight_auctions: default_in_flight_auctions(),
        }
    }
}

impl NexmarkConfig {
    /// Bids, `events` events in all.
    pub fn bids(events: u64) -> Self {
        NexmarkConfig {
            events: Some(events),
            ..Self::default()
        }
    }

    /// The same settings, emitting `kind`.
    pub fn with_kind(mut self, kind: EventKind) -> Self {
        self.kind = kind;
        self
    }
}

impl SourceConfig for NexmarkConfig {
    const TYPE: &str = "nexmark";
    const DESCRIPTION: &str = "Nexmark auction events: persons, auctions or bids.";
    type Source = NexmarkSource;

    /// Checks the settings and returns the source.
    fn build(&self) -> Result<NexmarkSource> {
        let positive = |key: &str, value: u64| {
            if value == 0 {
                Err(Error::config(key, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("event_rate", self.event_rate)?;
        positive("batch_size", self.batch_size as u64)?;
        positive("hot_auction_ratio", self.hot_auction_ratio)?;
        positive("hot_bidder_ratio", self.hot_bidder_ratio)?;
        positive("hot_seller_ratio", self.hot_seller_ratio)?;
        positive("active_people", self.active_people)?;
        if let Some(rate) = self.max_events_per_second {
            positive("max_events_per_second", rate)?;
        }
        let base_time = self
            .start_time
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::config("start_time", "must not be before 1970"))?
            .as_millis() as i64;
        Ok(NexmarkSource::new(
            self.clone(),
            GeneratorSettings {
                seed: self.seed,
                base_time,
                event_rate: self.event_rate,
                hot_auction_ratio: self.hot_auction_ratio,
                hot_bidder_ratio: self.hot_bidder_ratio,
                hot_seller_ratio: self.hot_seller_ratio,
                active_people: self.active_people,
                in_flight_auctions: self.in_flight_auctions,
            },
        ))
    }
}
