//! Pipeline files: YAML naming sources, transforms and sinks, checked and
//! built into a runnable [`Pipeline`](flumen_core::graph::Pipeline).
//!
//! Errors point at the file, line, column and key path, and suggest the
//! closest valid name. See `docs/pipeline-files.md` for the format and
//! `docs/reference.md` for every component's keys.

mod error;
#[cfg(test)]
mod fuzz;
mod pipeline;
mod registry;
mod schema;
mod unknown;
mod yaml;

pub use self::error::{ConfigError, did_you_mean};
#[cfg(feature = "serve")]
pub use self::pipeline::Served;
pub use self::pipeline::{
    CommonKeys, Component, DeadLetterOutput, LoadedPipeline, PartitioningConfig, common_keys,
};
pub use self::registry::{BuildError, Catalog, ComponentType, Registry, Section};
pub use self::schema::{pipeline_schema, reference_markdown};
pub use self::yaml::{Document, Position, interpolate};
