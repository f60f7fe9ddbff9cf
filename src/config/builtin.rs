//! The component types compiled into Flumen.

use flumen_core::graph::NodeKind;
use flumen_core::prelude::Result;
use flumen_operators::{
    DedupeConfig, JoinConfig, RouteConfig, SqlConfig, TopNConfig, UnionConfig, UnnestConfig,
    WindowConfig,
};
use flumen_sinks::{BlackholeConfig, FileSinkConfig, ParquetSinkConfig, StdoutConfig};
use flumen_sources::{FileSourceConfig, NexmarkConfig};

use super::registry::{ComponentConfig, Registry, Section, operator, sink, source};

impl Registry {
    /// Every component type compiled in.
    pub fn builtin() -> Registry {
        use Section::{Sinks, Sources, Transforms};
        let mut registry = Registry::empty();
        registry
            .register::<NexmarkConfig>(
                Sources,
                "nexmark",
                "Nexmark auction events: persons, auctions or bids.",
            )
            .register::<FileSourceConfig>(
                Sources,
                "file",
                "Reads a JSON lines, CSV or Parquet file.",
            );
        #[cfg(feature = "kafka")]
        registry.register::<flumen_sources::KafkaSourceConfig>(
            Sources,
            "kafka",
            "Reads Kafka topics as a consumer group member; offsets committed with checkpoints.",
        );
        #[cfg(feature = "http")]
        registry.register::<flumen_sources::HttpSourceConfig>(
            Sources,
            "http",
            "Accepts events over HTTP into a durable buffer (202 once synced); read at the pipeline's pace.",
        );
        registry
            .register::<SqlConfig>(
                Transforms,
                "sql",
                "Filters rows and computes columns with SQL expressions.",
            )
            .register::<UnnestConfig>(
                Transforms,
                "unnest",
                "One row per element of a list column.",
            )
            .register::<UnionConfig>(Transforms, "union", "Merges inputs of the same schema.")
            .register::<WindowConfig>(
                Transforms,
                "window",
                "Aggregates rows per tumbling, hopping or session window and key.",
            )
            .register::<TopNConfig>(
                Transforms,
                "top_n",
                "Keeps the top n rows of each window (and key).",
            )
            .register::<JoinConfig>(
                Transforms,
                "join",
                "Joins two streams within a window or a time interval, or a stream with a table.",
            )
            .register::<DedupeConfig>(
                Transforms,
                "dedupe",
                "Drops rows whose key was seen within a horizon.",
            )
            .register::<flumen_operators::BufferConfig>(
                Transforms,
                "buffer",
                "Holds rows (in memory or a durable log) and lets them out at a steady rate.",
            )
            .register::<RouteConfig>(
                Transforms,
                "route",
                "Sends rows to named outputs by SQL conditions.",
            )
            .register::<StdoutConfig>(Sinks, "stdout", "Prints rows to standard output.")
            .register::<BlackholeConfig>(Sinks, "blackhole", "Discards rows (counting them).")
            .register::<FileSinkConfig>(
                Sinks,
                "file",
                "Writes rows to a local file as JSON lines or CSV.",
            )
            .register::<ParquetSinkConfig>(
                Sinks,
                "parquet",
                "Writes rows as Parquet files to a directory or object store, partitioned Hive-style, committed with checkpoints.",
            );
        #[cfg(feature = "kafka")]
        registry.register::<flumen_sinks::KafkaSinkConfig>(
            Sinks,
            "kafka",
            "Writes rows to a Kafka topic, at least once or exactly once with transactions.",
        );
        #[cfg(feature = "http")]
        registry.register::<flumen_sinks::HttpSinkConfig>(
            Sinks,
            "http",
            "POSTs batches of rows to a URL, with retries, backoff and a circuit breaker.",
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

impl ComponentConfig for ParquetSinkConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(sink(self.build()?))
    }
}

impl ComponentConfig for FileSinkConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(sink(self.build()?))
    }
}

impl ComponentConfig for WindowConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(operator(self.build()?))
    }
}

impl ComponentConfig for TopNConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(operator(self.build()?))
    }
}

impl ComponentConfig for JoinConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(operator(self.build()?))
    }
}

impl ComponentConfig for DedupeConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(operator(self.build()?))
    }
}

impl ComponentConfig for flumen_operators::BufferConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(operator(self.build()?))
    }
}

impl ComponentConfig for RouteConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(operator(self.build()?))
    }
}

#[cfg(feature = "http")]
impl ComponentConfig for flumen_sinks::HttpSinkConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(sink(self.build()?))
    }
}

#[cfg(feature = "http")]
impl ComponentConfig for flumen_sources::HttpSourceConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(source(self.build()?))
    }
}

#[cfg(feature = "kafka")]
impl ComponentConfig for flumen_sources::KafkaSourceConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(source(self.build()?))
    }
}

#[cfg(feature = "kafka")]
impl ComponentConfig for flumen_sinks::KafkaSinkConfig {
    fn build_node(&self) -> Result<NodeKind> {
        Ok(sink(self.build()?))
    }
}
