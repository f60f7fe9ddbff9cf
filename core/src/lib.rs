//! Flumen's core: the data model, the dataflow graph and the runtime.
//!
//! Data moves as Arrow [`RecordBatch`](arrow::record_batch::RecordBatch)es
//! over the edges of a graph of sources, operators and sinks. Each edge also
//! carries watermarks and end-of-stream in order with the data (see
//! [`message`]). A [`GraphBuilder`](graph::GraphBuilder) declares the graph,
//! checks it and plans it into a [`Pipeline`](graph::Pipeline), which
//! [`run`](graph::Pipeline::run)s one tokio task per node instance.

pub mod catalog;
pub mod changelog;
pub mod checkpoint;
pub mod component;
pub mod console;
pub mod dead_letter;
pub mod error;
pub mod event_time;
pub mod file_format;
pub mod graph;
pub mod log;
pub mod message;
pub mod partition;
pub mod runtime;
pub mod sample;
pub mod schema;
#[cfg(feature = "sql")]
pub mod sql;
pub mod storage;
pub mod testing;
pub mod watermark;
pub mod writable;

pub use self::error::{Error, Result};

/// The names most code that builds or extends pipelines needs.
pub mod prelude {
    pub use std::sync::Arc;

    pub use arrow::datatypes::{Schema, SchemaRef};
    pub use arrow::record_batch::RecordBatch;
    pub use async_trait::async_trait;

    pub use crate::catalog::{Catalog, ComponentType, SinkConfig, SourceConfig, TransformConfig};
    pub use crate::checkpoint::Snapshot;
    pub use crate::component::{
        Collector, Context, InstanceInfo, Operator, OperatorFactory, Repartition, Sink,
        SinkFactory, Source, SourceContext, SourceFactory, SourceStep, SplitChange, StateRescale,
        StateSize, TaskChange, TaskGroup,
    };
    pub use crate::dead_letter::{OnError, Rejected};
    pub use crate::error::{Error, Result};
    pub use crate::event_time::EventTimeConfig;
    pub use crate::graph::{GraphBuilder, Input, Pipeline};
    pub use crate::message::{EventTime, Watermark};
    pub use crate::partition::Partitioning;
    pub use crate::runtime::{RunOptions, RunReport, ShutdownHandle};
}
