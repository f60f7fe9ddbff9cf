//! Flumen's operators: the steps between sources and sinks.

pub mod transform;
mod union;

pub use self::transform::{MapBatches, SqlTransform, Unnest};
pub use self::union::Union;
