//! The component types compiled into Flumen.

use flumen_core::graph::NodeKind;
use flumen_core::prelude::Result;
use flumen_operators::{SqlConfig, UnionConfig, UnnestConfig};
use flumen_sinks::{BlackholeConfig, FileSinkConfig, StdoutConfig};
use flumen_sources::{FileSourceConfig, NexmarkConfig};

use super::registry::{ComponentConfig, Registry, Section, operator, sink, source};

impl Registry {
    /// Every component type compiled in.
    pub fn builtin() -> Registry {
        let mut registry = Registry::empty();
        registry
            .register::<NexmarkConfig>(
                Section::Sources,
                "nexmark",
                "Nexmark auction events: persons, auctions or bids.",
            )
            .register::<FileSourceConfig>(
                Section::Sources,
                "file",
                "Reads a JSON lines, CSV or Parquet file.",
            )
            .register::<SqlConfig>(
                Section::Transforms,
                "sql",
                "Filters rows and computes columns with SQL expressions.",
            )
            .register::<UnnestConfig>(
                Section::Transforms,
                "unnest",
                "One row per element of a list column.",
            )
            .register::<UnionConfig>(
                Section::Transforms,
                "union",
                "Merges inputs of the same schema.",
            )
            .register::<StdoutConfig>(Section::Sinks, "stdout", "Prints rows to standard output.")
            .register::<BlackholeConfig>(
                Section::Sinks,
                "blackhole",
                "Discards rows (counting them).",
            )
            .register::<FileSinkConfig>(
                Section::Sinks,
                "file",
                "Writes rows to a local file as JSON lines or CSV.",
            );
        registry
    }
}

impl ComponentConfig for NexmarkConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(source(self.build()?))
    }
}

impl ComponentConfig for FileSourceConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(source(self.build()?))
    }
}

impl ComponentConfig for SqlConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(operator(self.build()?))
    }
}

impl ComponentConfig for UnnestConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(operator(self.build()?))
    }
}

impl ComponentConfig for UnionConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(operator(self.build()?))
    }
}

impl ComponentConfig for StdoutConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(sink(self.build()?))
    }
}

impl ComponentConfig for BlackholeConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(sink(self.build()?))
    }
}

impl ComponentConfig for FileSinkConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(sink(self.build()?))
    }
}
