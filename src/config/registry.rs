//! The component types a pipeline file can use, by name.

use std::sync::Arc;

use flumen_core::graph::NodeKind;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A component configuration a pipeline file can name by `type`.
///
/// Its serde form is the component's keys in the file (besides the keys
/// every component has: `type`, `inputs`, `parallelism`, ...), and its doc
/// comments are the configuration reference.
pub trait ComponentConfig: DeserializeOwned + JsonSchema + 'static {
    /// Checks the settings and returns the node to put in the graph.
    fn build_node(&self) -> flumen_core::Result<NodeKind>;
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
    Rejected(flumen_core::Error),
}

type BuildFn = fn(&Value) -> Result<NodeKind, BuildError>;
type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// A registered component type.
#[derive(Clone)]
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

impl std::fmt::Debug for ComponentType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.section.singular(), self.name)
    }
}

impl ComponentType {
    /// Builds the component from its keys in the file.
    pub fn build(&self, settings: &Value) -> Result<NodeKind, BuildError> {
        (self.build)(settings)
    }

    /// The JSON Schema of the component's own keys.
    pub fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        (self.schema)(generator)
    }
}

fn build_with<C: ComponentConfig>(settings: &Value) -> Result<NodeKind, BuildError> {
    let config: C =
        serde_path_to_error::deserialize(settings).map_err(|e| BuildError::Invalid {
            path: e.path().to_string(),
            message: e.into_inner().to_string(),
        })?;
    config.build_node().map_err(BuildError::Rejected)
}

/// The component types available to pipeline files, compiled in.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: Vec<ComponentType>,
}

impl Registry {
    /// A registry with no types.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Registers type `name` in `section`, configured by `C`.
    pub fn register<C: ComponentConfig>(
        &mut self,
        section: Section,
        name: &'static str,
        description: &'static str,
    ) -> &mut Self {
        self.types
            .retain(|t| !(t.section == section && t.name == name));
        self.types.push(ComponentType {
            name,
            section,
            description,
            build: build_with::<C>,
            schema: C::json_schema,
        });
        self
    }

    /// The type `name` in `section`.
    pub fn get(&self, section: Section, name: &str) -> Option<&ComponentType> {
        self.types
            .iter()
            .find(|t| t.section == section && t.name == name)
    }

    /// The types of a section, by name.
    pub fn types(&self, section: Section) -> Vec<&ComponentType> {
        let mut types: Vec<&ComponentType> =
            self.types.iter().filter(|t| t.section == section).collect();
        types.sort_by_key(|t| t.name);
        types
    }
}

/// Wraps a source factory as a graph node.
pub fn source(factory: impl flumen_core::component::SourceFactory) -> NodeKind {
    NodeKind::Source(Arc::new(factory))
}

/// Wraps an operator factory as a graph node.
pub fn operator(factory: impl flumen_core::component::OperatorFactory) -> NodeKind {
    NodeKind::Operator(Arc::new(factory))
}

/// Wraps a sink factory as a graph node.
pub fn sink(factory: impl flumen_core::component::SinkFactory) -> NodeKind {
    NodeKind::Sink(Arc::new(factory))
}
