//! The component types a pipeline file can use, by name.
//!
//! Each component declares itself beside its configuration struct (see
//! [`flumen_core::catalog`]), and each crate lists its own in
//! `COMPONENTS`; the registry is those lists put together.

pub use flumen_core::catalog::{BuildError, Catalog, ComponentType, Section};

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

    /// Every component type compiled in: each crate's `COMPONENTS`.
    pub fn builtin() -> Registry {
        let mut registry = Registry::empty();
        for types in [
            flumen_sources::COMPONENTS,
            flumen_operators::COMPONENTS,
            flumen_sinks::COMPONENTS,
        ] {
            for &component in types {
                registry.register(component);
            }
        }
        registry
    }

    /// Adds a component type, in place of any of the same section and
    /// name: `registry.register(ComponentType::transform::<MyConfig>())`.
    pub fn register(&mut self, component: ComponentType) -> &mut Self {
        self.types
            .retain(|t| !(t.section == component.section && t.name == component.name));
        self.types.push(component);
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

impl Catalog for Registry {
    fn component(&self, section: Section, name: &str) -> Option<&ComponentType> {
        self.get(section, name)
    }
}

/// The registry as a component of one pipeline sees it: it also knows
/// the pipeline's name and the component's.
pub struct InPipeline<'a> {
    pub registry: &'a Registry,
    pub name: &'a str,
    pub component: &'a str,
}

impl Catalog for InPipeline<'_> {
    fn component(&self, section: Section, name: &str) -> Option<&ComponentType> {
        self.registry.get(section, name)
    }

    fn pipeline(&self) -> Option<&str> {
        Some(self.name)
    }

    fn component_name(&self) -> Option<&str> {
        Some(self.component)
    }
}
