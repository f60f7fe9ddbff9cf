//! The key-value sink: keeps a view of its input by key, in an embedded
//! store ([`embedded`], a redb file), Redis or DynamoDB, which `flumen kv`
//! ([`KvReader`]) reads beside the running pipeline.
//!
//! Rows become writes (`sink`): the key from a template over columns,
//! the value a JSON object of the value columns. A changelog's deletes
//! (see [`flumen_core::changelog`]) and rows matching `delete_when` remove
//! keys. With a version column the last writer by version wins, so a
//! replay or a late row never regresses a value. Each store is a backend
//! of one trait (`store`): with checkpoints, a checkpoint's writes are
//! staged at its barrier and applied at its commit, exactly once where the
//! store can apply them atomically (the embedded store, Redis).

mod config;
#[cfg(feature = "dynamodb")]
mod dynamodb;
pub mod embedded;
mod reader;
#[cfg(feature = "redis")]
mod redis;
mod sink;
mod store;
mod template;

pub use self::config::{KvSinkConfig, Ttl};
#[cfg(feature = "dynamodb")]
pub use self::dynamodb::DynamoDbConfig;
pub use self::embedded::{EmbeddedReader, EmbeddedStore, Entry};
pub use self::reader::KvReader;
#[cfg(feature = "redis")]
pub use self::redis::RedisConfig;
pub use self::sink::KvSink;

/// One change to a key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KvWrite {
    pub(crate) key: String,
    /// The value (a JSON object), or `None` for a delete.
    pub(crate) value: Option<Vec<u8>>,
    /// The last writer by version wins; without one, the last to arrive.
    pub(crate) version: Option<i64>,
    /// When the value expires (ms since the epoch), if it does.
    pub(crate) expires_at: Option<i64>,
}

/// Now, in ms since the epoch: when values expire is wall-clock time.
pub(crate) fn wall_clock_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
