//! Flumen's sources: the Nexmark event generator and files.

pub mod file;
pub mod nexmark;

pub use self::file::{FileSource, FileSourceConfig};
pub use self::nexmark::{NexmarkConfig, NexmarkSource};
