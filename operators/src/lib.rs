//! Flumen's operators: the steps between sources and sinks.

mod config;
pub mod transform;
mod union;

pub use self::config::{SqlConfig, UnionConfig, UnnestConfig};
pub use self::transform::{MapBatches, SqlTransform, Unnest};
pub use self::union::Union;
