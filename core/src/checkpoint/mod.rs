//! Checkpoints: consistent snapshots of a running pipeline, from which it
//! resumes after a crash without losing or repeating data.
//!
//! A coordinator injects numbered barriers at every source on an interval
//! (aligned checkpoints, as Chandy and Lamport described and Flink does).
//! Each source records its read position as it emits the barrier; each
//! operator snapshots its state once the barrier has arrived on all of its
//! inputs; each sink *pre-commits* (makes what it wrote durable but not yet
//! visible). When every instance has answered, the state goes to the
//! [`CheckpointStore`] and the checkpoint's manifest is written last, in one
//! atomic put: a checkpoint without a manifest does not exist. Only then are
//! the sinks told to *commit*. After a crash the pipeline restores the
//! latest complete checkpoint, rewinds the sources to its positions and
//! commits its transactions again (commits are idempotent), so the output
//! holds every input row exactly once.
//!
//! The end of a bounded input is a checkpoint too: when every sink has
//! received end-of-stream, the coordinator writes a final manifest and the
//! sinks commit what remains.

mod coordinator;
mod rescale;
mod store;

use std::time::Duration;

use arrow::record_batch::RecordBatch;
use schemars::JsonSchema;
use serde::Deserialize;

pub(crate) use self::coordinator::{
    Ack, AckKind, Commit, Coordinator, CoordinatorHandles, NodeInfo,
};
pub(crate) use self::rescale::redistribute;
pub use self::store::{
    CheckpointStore, InstanceRecord, KeyedTable, Loaded, Manifest, NodeRecord, TableRecord,
};
use crate::storage::StorageOptions;

/// The state an operator instance hands to a checkpoint, and receives back
/// on restore.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Small values (counters, the watermark, a window's next start),
    /// kept in the manifest as JSON.
    pub values: serde_json::Value,
    /// State rows, by name; each table is stored as an Arrow IPC file.
    pub tables: Vec<(String, RecordBatch)>,
    /// The tables whose rows belong to keys, each with the input whose
    /// keys they hold: such a row carries that input's key columns, under
    /// their names. Checkpoints store these tables by key group, and a
    /// restore at another parallelism hands each new instance the groups
    /// it owns. Other tables go whole to one instance.
    pub keyed: Vec<(String, usize)>,
}

impl Snapshot {
    /// A snapshot of these values and no tables yet.
    pub fn new(values: serde_json::Value) -> Self {
        Snapshot {
            values,
            ..Snapshot::default()
        }
    }

    /// Adds a table that belongs to no key.
    pub fn with_table(mut self, name: impl Into<String>, table: RecordBatch) -> Self {
        self.tables.push((name.into(), table));
        self
    }

    /// Adds a table whose rows hold the key columns of input `input`.
    pub fn with_keyed_table(
        mut self,
        name: impl Into<String>,
        table: RecordBatch,
        input: usize,
    ) -> Self {
        let name = name.into();
        self.keyed.push((name.clone(), input));
        self.tables.push((name, table));
        self
    }

    /// The input whose keys table `name` holds, if it is keyed.
    pub fn keyed_by(&self, name: &str) -> Option<usize> {
        self.keyed.iter().find(|(n, _)| n == name).map(|(_, i)| *i)
    }

    /// The table called `name`, if the snapshot has it.
    pub fn table(&self, name: &str) -> Option<&RecordBatch> {
        self.tables.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Whether the snapshot holds nothing.
    pub fn is_empty(&self) -> bool {
        self.values.is_null() && self.tables.iter().all(|(_, t)| t.num_rows() == 0)
    }
}

/// Periodic checkpoints of a pipeline (the `checkpoint` section of a
/// pipeline file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// How often to take a checkpoint (e.g. `10s`, `500ms`).
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,

    /// Where checkpoints are kept: a local directory or an object-store URL
    /// (`s3://bucket/prefix`). Default: `.flumen/<pipeline>/checkpoints`
    /// beside the pipeline file.
    #[serde(default)]
    #[schemars(extend("format" = "path"))]
    pub store: Option<String>,

    /// How many complete checkpoints to keep; older ones are deleted.
    #[serde(default = "default_keep")]
    pub keep: usize,

    /// How to reach an object store given as `store`.
    #[serde(default)]
    pub storage: StorageOptions,

    /// How many key groups keyed state is split into: the most instances
    /// any keyed component (a window, join, dedupe or top-N with keys) can
    /// run as. A checkpoint restores at any parallelism up to it, each
    /// instance taking whole key groups. Keep it for the life of the
    /// pipeline's state: a restore under another number places every key
    /// again, which costs a hash of every state row.
    #[serde(default = "default_max_parallelism")]
    pub max_parallelism: usize,
}

impl CheckpointConfig {
    /// Opens the store this section names (a pipeline file's loader fills
    /// in the default `store`).
    pub fn open_store(&self) -> crate::error::Result<CheckpointStore> {
        let location = self.store.as_deref().ok_or_else(|| {
            crate::error::Error::config("checkpoint.store", "names no checkpoint store")
        })?;
        CheckpointStore::open(location, &self.storage)
    }
}

fn default_max_parallelism() -> usize {
    crate::partition::DEFAULT_MAX_PARALLELISM
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_keep() -> usize {
    3
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval: default_interval(),
            store: None,
            keep: default_keep(),
            storage: StorageOptions::default(),
            max_parallelism: default_max_parallelism(),
        }
    }
}

/// Which checkpoint a run starts from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The latest complete checkpoint, if there is one.
    #[default]
    Latest,
    /// This checkpoint; the run fails if it is missing or unusable.
    Checkpoint(u64),
    /// This savepoint of the store (see [`CheckpointStore::save`]); the
    /// run fails if it is missing or unusable.
    Savepoint(String),
    /// No checkpoint: start from the beginning of every source (and discard
    /// what sinks staged but never committed).
    Fresh,
}

/// Checkpointing for one run: where, how often, and where to start.
#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    /// The store checkpoints go to.
    pub store: CheckpointStore,
    /// Time between checkpoints.
    pub interval: Duration,
    /// Complete checkpoints kept.
    pub keep: usize,
    /// Where the run starts.
    pub start: StartFrom,
    /// Whether a restored checkpoint may hold state this pipeline cannot
    /// take (a removed component's, or one whose kind or parallelism
    /// changed): those components start without it. Otherwise such a
    /// checkpoint stops the run before anything runs.
    pub allow_non_restored_state: bool,
}
