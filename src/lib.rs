//! Flumen: high-throughput stream processing on Arrow record batches.
//!
//! Build a dataflow graph of sources, operators and sinks in code, and run
//! it inside your own tokio program:
//!
//! ```no_run
//! use flumen::prelude::*;
//!
//! # #[tokio::main] async fn main() -> Result<()> {
//! let mut graph = GraphBuilder::new();
//! graph.source("bids", NexmarkConfig::bids(1_000_000).build()?);
//! graph.operator(
//!     "in_euros",
//!     SqlTransform::new().select(["auction", "price * 0.908 AS price_eur"]),
//!     ["bids"],
//! );
//! graph.sink("out", StdoutConfig::default().build()?, ["in_euros"]);
//! let report = graph.build()?.run().await?;
//! println!("{} rows in {:?}", report.node("out").unwrap().rows_in, report.duration);
//! # Ok(()) }
//! ```
//!
//! The crates behind this one: [`core`] (data model, graph, runtime),
//! [`operators`], [`sources`] and [`sinks`].

pub mod config;
#[cfg(feature = "kafka")]
pub mod repartition;
#[cfg(feature = "serve")]
pub mod serve;

pub use flumen_core as core;
pub use flumen_operators as operators;
pub use flumen_sinks as sinks;
pub use flumen_sources as sources;

/// Everything needed to build and run pipelines in code.
pub mod prelude {
    #[cfg(feature = "kafka")]
    pub use crate::repartition::KafkaRepartition;
    pub use flumen_core::prelude::*;
    pub use flumen_operators::{MapBatches, SqlTransform, Union, Unnest};
    #[cfg(feature = "kafka")]
    pub use flumen_sinks::KafkaSinkConfig;
    pub use flumen_sinks::{
        BlackholeConfig, BlackholeSink, FileSinkConfig, StdoutConfig, StdoutFormat, TextFormat,
    };
    #[cfg(feature = "kafka")]
    pub use flumen_sources::KafkaSourceConfig;
    pub use flumen_sources::nexmark::EventKind;
    pub use flumen_sources::{FileSourceConfig, NexmarkConfig};
}
