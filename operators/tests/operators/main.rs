//! The operators, each checked against DataFusion's batch answer over the
//! same rows.

mod buffer;
mod checkpoints;
mod common;
#[cfg(feature = "enrich")]
mod enrich;
mod joins;
mod routing;
mod running;
mod top_n;
mod transforms;
mod windows;
