//! The operators, each checked against DataFusion's batch answer over the
//! same rows.

mod common;
mod transforms;
mod windows;
