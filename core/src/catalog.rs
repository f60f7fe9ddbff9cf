//! Component types as pipeline files name them, declared beside their
//! configuration.
//!
//! A component declares itself on its configuration struct: the name a
//! pipeline file gives as `type:`, one line about what it does, and how to
//! build it. The struct's serde form is the component's keys in the file,
//! and its doc comments are the configuration reference.
//!
//! ```
//! use flumen_core::catalog::{ComponentType, SinkConfig};
//! use flumen_core::prelude::*;
//! # use flumen_core::component::Sink;
//! # struct Discard;
//! # #[async_trait]
//! # impl Sink for Discard {
//! #     async fn write(&mut self, _: RecordBatch, _: &mut Context) -> Result<()> { Ok(()) }
//! # }
//! # pub struct DiscardSink;
//! # impl SinkFactory for DiscardSink {
//! #     fn create(&self, _: InstanceInfo, _: SchemaRef) -> Result<Box<dyn Sink>> {
//! #         Ok(Box::new(Discard))
//! #     }
//! # }
//!
//! /// Discards rows.
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! pub struct DiscardConfig {}
//!
//! impl SinkConfig for DiscardConfig {
//!     const TYPE: &str = "discard";
//!     const DESCRIPTION: &str = "Discards rows.";
//!     type Sink = DiscardSink;
//!
//!     fn build(&self) -> Result<DiscardSink> {
//!         Ok(DiscardSink)
//!     }
//! }
//!
//! /// The crate's list, which the registry of pipeline files reads.
//! pub const COMPONENTS: &[ComponentType] = &[ComponentType::sink::<DiscardConfig>()];
//! # assert_eq!(COMPONENTS[0].name, "discard");
//! ```

use std::fmt;
use std::sync::Arc;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::component::{OperatorFactory, SinkFactory, SourceFactory};
use crate::graph::NodeKind;
use crate::{Error, Result};

/// A source's configuration, named by `type:` under `sources:`.
pub trait SourceConfig: DeserializeOwned + JsonSchema + 'static {
    /// The name a pipeline file gives as `type:`.
    const TYPE: &str;
    /// One line about what it does.
    const DESCRIPTION: &str;
    /// What the configuration builds.
    type Source: SourceFactory;

    /// Checks the settings and builds the source.
    fn build(&self) -> Result<Self::Source>;

    /// Builds the source within a pipeline: `catalog` knows the
    /// pipeline's name, for defaults named after it (a Kinesis lease
    /// table). The default is [`build`](Self::build).
    fn build_in(&self, catalog: &dyn Catalog) -> Result<Self::Source> {
        let _ = catalog;
        self.build()
    }
}

/// A transform's configuration, named by `type:` under `transforms:`.
pub trait TransformConfig: DeserializeOwned + JsonSchema + 'static {
    /// The name a pipeline file gives as `type:`.
    const TYPE: &str;
    /// One line about what it does.
    const DESCRIPTION: &str;
    /// What the configuration builds.
    type Operator: OperatorFactory;

    /// Checks the settings and builds the operator.
    fn build(&self) -> Result<Self::Operator>;

    /// Builds the operator, with the component types it may build in
    /// turn (a lookup join builds the source that reads its table). Most
    /// operators need none: the default is [`build`](Self::build).
    fn build_in(&self, catalog: &dyn Catalog) -> Result<Self::Operator> {
        let _ = catalog;
        self.build()
    }
}

/// The component types a component may build in turn, by name: a lookup
/// join builds the source that reads its table. The registry pipeline
/// files are built from is one; so is a crate's `COMPONENTS` list.
pub trait Catalog {
    /// The type `name` in `section`.
    fn component(&self, section: Section, name: &str) -> Option<&ComponentType>;

    /// The name of the pipeline being built (its file's name without
    /// `.yaml`), if it has one.
    fn pipeline(&self) -> Option<&str> {
        None
    }

    /// The name of the component being built, if the catalog knows it.
    fn component_name(&self) -> Option<&str> {
        None
    }
}

impl Catalog for &[ComponentType] {
    fn component(&self, section: Section, name: &str) -> Option<&ComponentType> {
        self.iter().find(|t| t.section == section && t.name == name)
    }
}

/// A sink's configuration, named by `type:` under `sinks:`.
pub trait SinkConfig: DeserializeOwned + JsonSchema + 'static {
    /// The name a pipeline file gives as `type:`.
    const TYPE: &str;
    /// One line about what it does.
    const DESCRIPTION: &str;
    /// What the configuration builds.
    type Sink: SinkFactory;

    /// Checks the settings and builds the sink.
    fn build(&self) -> Result<Self::Sink>;

    /// Builds the sink within a pipeline: `catalog` knows the pipeline's
    /// and the sink's names, for defaults named after them (where a
    /// key-value sink records its checkpoints in Redis). The default is
    /// [`build`](Self::build).
    fn build_in(&self, catalog: &dyn Catalog) -> Result<Self::Sink> {
        let _ = catalog;
        self.build()
    }
}

/// The three sections of a pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    /// `sources:`
    Sources,
    /// `transforms:`
    Transforms,
    /// `sinks:`
    Sinks,
}

impl Section {
    /// All sections, in file order.
    pub const ALL: [Section; 3] = [Section::Sources, Section::Transforms, Section::Sinks];

    /// The section's key in the file.
    pub fn key(self) -> &'static str {
        match self {
            Section::Sources => "sources",
            Section::Transforms => "transforms",
            Section::Sinks => "sinks",
        }
    }

    /// `source`, `transform` or `sink`.
    pub fn singular(self) -> &'static str {
        match self {
            Section::Sources => "source",
            Section::Transforms => "transform",
            Section::Sinks => "sink",
        }
    }
}

/// Why a component's settings were rejected.
#[derive(Debug)]
pub enum BuildError {
    /// The settings do not fit the component's keys and types.
    Invalid {
        /// Path inside the component, e.g. `schema.price`.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The settings fit, but the component rejected them.
    Rejected(Error),
}

type BuildFn = fn(&Value, &dyn Catalog) -> std::result::Result<NodeKind, BuildError>;
type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// A component type a pipeline file can name: one entry of a crate's
/// `COMPONENTS` list.
#[derive(Clone, Copy)]
pub struct ComponentType {
    /// The name used as `type:`.
    pub name: &'static str,
    /// Which section it belongs in.
    pub section: Section,
    /// One line about what it does.
    pub description: &'static str,
    build: BuildFn,
    schema: SchemaFn,
}

impl ComponentType {
    /// The source configured by `C`.
    pub const fn source<C: SourceConfig>() -> ComponentType {
        ComponentType {
            name: C::TYPE,
            section: Section::Sources,
            description: C::DESCRIPTION,
            build: build_source::<C>,
            schema: C::json_schema,
        }
    }

    /// The transform configured by `C`.
    pub const fn transform<C: TransformConfig>() -> ComponentType {
        ComponentType {
            name: C::TYPE,
            section: Section::Transforms,
            description: C::DESCRIPTION,
            build: build_transform::<C>,
            schema: C::json_schema,
        }
    }

    /// The sink configured by `C`.
    pub const fn sink<C: SinkConfig>() -> ComponentType {
        ComponentType {
            name: C::TYPE,
            section: Section::Sinks,
            description: C::DESCRIPTION,
            build: build_sink::<C>,
            schema: C::json_schema,
        }
    }

    /// Builds the component from its keys in the file; `catalog` has the
    /// types it may build in turn.
    pub fn build(
        &self,
        settings: &Value,
        catalog: &dyn Catalog,
    ) -> std::result::Result<NodeKind, BuildError> {
        (self.build)(settings, catalog)
    }

    /// The JSON Schema of the component's own keys.
    pub fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        (self.schema)(generator)
    }
}

impl fmt::Debug for ComponentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.section.singular(), self.name)
    }
}

fn build_source<C: SourceConfig>(
    settings: &Value,
    catalog: &dyn Catalog,
) -> std::result::Result<NodeKind, BuildError> {
    let source = parse::<C>(settings)?
        .build_in(catalog)
        .map_err(BuildError::Rejected)?;
    Ok(NodeKind::Source(Arc::new(source)))
}

fn build_transform<C: TransformConfig>(
    settings: &Value,
    catalog: &dyn Catalog,
) -> std::result::Result<NodeKind, BuildError> {
    let operator = parse::<C>(settings)?
        .build_in(catalog)
        .map_err(BuildError::Rejected)?;
    Ok(NodeKind::Operator(Arc::new(operator)))
}

fn build_sink<C: SinkConfig>(
    settings: &Value,
    catalog: &dyn Catalog,
) -> std::result::Result<NodeKind, BuildError> {
    let sink = parse::<C>(settings)?
        .build_in(catalog)
        .map_err(BuildError::Rejected)?;
    Ok(NodeKind::Sink(Arc::new(sink)))
}

/// The settings as `C`, or the path inside them that does not fit.
fn parse<C: DeserializeOwned>(settings: &Value) -> std::result::Result<C, BuildError> {
    serde_path_to_error::deserialize(settings).map_err(|e| BuildError::Invalid {
        path: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}
