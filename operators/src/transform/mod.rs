//! Stateless transforms: SQL expressions, Rust closures, unnest.

mod map;
mod sql;
mod unnest;

pub use self::map::MapBatches;
pub use self::sql::SqlTransform;
pub use self::unnest::Unnest;
