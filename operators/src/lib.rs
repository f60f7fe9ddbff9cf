//! Flumen's operators: the steps between sources and sinks: SQL and
//! closure transforms, windows, top-N, joins, dedupe, routing and the
//! rate-limited buffer; and (`enrich` feature) asynchronous enrichment
//! from an HTTP service.

pub mod aggregate;
pub mod buffer;
mod config;
pub mod dedupe;
#[cfg(feature = "enrich")]
pub mod enrich;
pub mod join;
pub mod route;
pub mod running;
pub mod top_n;
pub mod transform;
mod union;
pub mod window;

pub use self::buffer::{Buffer, BufferConfig};
pub use self::config::{SqlConfig, UnionConfig, UnnestConfig};
pub use self::dedupe::{Dedupe, DedupeConfig};
#[cfg(feature = "enrich")]
pub use self::enrich::{Enrich, EnrichConfig};
pub use self::join::{Join, JoinConfig, JoinType};
pub use self::route::{Route, RouteConfig};
pub use self::running::{AggregateConfig, Emit, RunningAggregate};
pub use self::top_n::{TopN, TopNConfig};
pub use self::transform::{MapBatches, SqlTransform, Unnest};
pub use self::union::Union;
pub use self::window::{WindowAggregate, WindowConfig, WindowKind, WindowTop};

use flumen_core::catalog::ComponentType;

/// The transforms pipeline files can name, one line each.
pub const COMPONENTS: &[ComponentType] = &[
    ComponentType::transform::<SqlConfig>(),
    ComponentType::transform::<UnnestConfig>(),
    ComponentType::transform::<UnionConfig>(),
    ComponentType::transform::<WindowConfig>(),
    ComponentType::transform::<AggregateConfig>(),
    ComponentType::transform::<TopNConfig>(),
    ComponentType::transform::<JoinConfig>(),
    ComponentType::transform::<DedupeConfig>(),
    ComponentType::transform::<BufferConfig>(),
    ComponentType::transform::<RouteConfig>(),
    #[cfg(feature = "enrich")]
    ComponentType::transform::<EnrichConfig>(),
];
