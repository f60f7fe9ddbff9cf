//! The Nexmark benchmark's event generator as a source.
//!
//! Nexmark models an online auction: people register, open auctions and
//! bid. The generator follows the public specification (as in Beam's and
//! Flink's generators): persons, auctions and bids in proportions 1:3:46,
//! ids that grow with the event number, hot auctions, bidders and sellers,
//! log-uniform prices, event time advancing one second every `event_rate`
//! events, and `extra` padding to Nexmark's average event sizes. Events are
//! written straight into Arrow columns.

mod config;
mod generator;
pub mod model;
mod source;
#[cfg(test)]
mod tests;

pub use self::config::NexmarkConfig;
pub use self::generator::{
    GeneratedBatches, GeneratorSettings, NexmarkGenerator, auction_schema, bid_schema,
    person_schema, schema_of,
};
pub use self::model::EventKind;
pub use self::source::NexmarkSource;
