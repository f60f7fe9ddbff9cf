//! Flumen's operators: the steps between sources and sinks.

pub mod aggregate;
mod config;
pub mod transform;
mod union;
pub mod window;

pub use self::config::{SqlConfig, UnionConfig, UnnestConfig};
pub use self::transform::{MapBatches, SqlTransform, Unnest};
pub use self::union::Union;
pub use self::window::{WindowAggregate, WindowConfig, WindowKind};
