//! Where checkpoints live: a directory or object-store prefix holding one
//! folder per checkpoint, its state files, and its manifest, written last.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::UInt32Array;
use arrow::compute::take_record_batch;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::Snapshot;
use crate::error::{Error, Result};
use crate::partition::{DEFAULT_MAX_PARALLELISM, KeyGroups};
use crate::storage::{StorageOptions, resolve};

const MANIFEST: &str = "_manifest.json";
const SAVEPOINTS: &str = "savepoints";
const TASKS: &str = "tasks";

/// A checkpoint as its manifest records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Checkpoint number, increasing by one per checkpoint of a pipeline.
    pub id: u64,
    /// When the checkpoint completed, in milliseconds since the epoch.
    pub created_at_ms: i64,
    /// Whether the sources had all reached their end (or been drained): the
    /// final checkpoint of a run.
    pub finished: bool,
    /// How many key groups keyed state was split into (absent in
    /// checkpoints from before key groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallelism: Option<usize>,
    /// Per node: what each instance recorded.
    pub nodes: BTreeMap<String, NodeRecord>,
}

/// What the instances of one node recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `source`, `operator` or `sink`.
    pub kind: String,
    /// Indexed by instance.
    pub instances: Vec<InstanceRecord>,
    /// Per input of an operator: the columns whose hash placed its state
    /// rows in key groups (`null` for an input that keys nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_keys: Vec<Option<Vec<String>>>,
    /// The version of the operator's state format; a restore refuses
    /// another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_version: Option<u32>,
    /// What the operator's state is made of, as it described it; a
    /// restore refuses an operator that describes its state otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

impl NodeRecord {
    /// Whether any instance recorded something to restore: a position, a
    /// transaction or state (a stateless operator records nothing).
    pub fn holds_state(&self) -> bool {
        self.instances
            .iter()
            .any(|i| !i.values.is_null() || !i.tables.is_empty())
    }
}

/// What one instance recorded: a source its read position, a sink its
/// pre-committed transaction, an operator its state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Position, transaction or the operator's small values.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub values: serde_json::Value,
    /// The operator's state tables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableRecord>,
}

/// One state table of an operator instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableRecord {
    /// The operator's name for the table.
    pub name: String,
    /// File name inside the checkpoint's folder.
    pub file: String,
    /// Rows in the table.
    pub rows: u64,
    /// Size of the file.
    pub bytes: u64,
    /// For a table whose rows belong to keys: which, and where each key
    /// group's rows are in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyed: Option<KeyedTable>,
}

/// The key groups of a keyed state table: its rows are stored sorted by
/// group, so a restore reads each group as one slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedTable {
    /// The operator input whose keys the rows hold.
    pub input: usize,
    /// The columns hashed into key groups.
    pub columns: Vec<String>,
    /// `[group, rows]` for every group with rows, in file order.
    pub groups: Vec<(usize, u64)>,
}

impl Manifest {
    /// Total bytes of state files.
    pub fn state_bytes(&self) -> u64 {
        self.nodes
            .values()
            .flat_map(|n| &n.instances)
            .flat_map(|i| &i.tables)
            .map(|t| t.bytes)
            .sum()
    }
}

/// A checkpoint read back, with every instance's state.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its manifest.
    pub manifest: Manifest,
    /// What each instance of the run restores, by (node, instance): one
    /// snapshot, or after a change of parallelism the parts of the earlier
    /// instances' state it now owns.
    pub snapshots: HashMap<(String, usize), Vec<Snapshot>>,
}

/// A directory or object-store prefix of checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
    display: String,
}

impl CheckpointStore {
    /// The store at `location` (a local directory or an object-store URL).
    pub fn open(location: &str, options: &StorageOptions) -> Result<Self> {
        let resolved = resolve(location, options, "checkpoint.store")?;
        Ok(CheckpointStore {
            store: resolved.store,
            root: resolved.path,
            display: resolved.display,
        })
    }

    /// The location as given, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    fn folder(&self, id: u64) -> Path {
        self.root.clone().join(format!("chk-{id:010}"))
    }

    fn unreachable(&self, error: impl std::fmt::Display) -> Error {
        Error::connector(
            "checkpoint",
            true,
            format!("checkpoint store `{}`: {error}", self.display),
        )
    }

    /// Writes the state files of checkpoint `manifest.id`, then its
    /// manifest. The manifest's table records are filled in here.
    pub async fn write(
        &self,
        manifest: &mut Manifest,
        snapshots: &[(String, usize, Snapshot)],
    ) -> Result<()> {
        let folder = self.folder(manifest.id);
        let groups = KeyGroups::new(manifest.max_parallelism.unwrap_or(DEFAULT_MAX_PARALLELISM));
        for (node, instance, snapshot) in snapshots {
            let state_keys = manifest.nodes.get(node).map(|n| &n.state_keys);
            let mut records = Vec::new();
            for (name, table) in &snapshot.tables {
                let file = PathPart::from(format!("{node}.{instance}.{name}.arrow"))
                    .as_ref()
                    .to_string();
                let keys = snapshot
                    .keyed_by(name)
                    .and_then(|input| Some((input, state_keys?.get(input)?.as_ref()?)));
                let (table, keyed) = match keys {
                    Some((input, columns)) => {
                        let (sorted, runs) =
                            by_key_group(table, columns, groups).map_err(|e| e.in_node(node))?;
                        let keyed = KeyedTable {
                            input,
                            columns: columns.to_vec(),
                            groups: runs,
                        };
                        (sorted, Some(keyed))
                    }
                    None => (table.clone(), None),
                };
                let bytes = encode(&table)?;
                let size = bytes.len() as u64;
                self.store
                    .put(&folder.clone().join(file.as_str()), PutPayload::from(bytes))
                    .await
                    .map_err(|e| self.unreachable(e))?;
                records.push(TableRecord {
                    name: name.clone(),
                    file,
                    rows: table.num_rows() as u64,
                    bytes: size,
                    keyed,
                });
            }
            if let Some(record) = manifest
                .nodes
                .get_mut(node)
                .and_then(|n| n.instances.get_mut(*instance))
            {
                record.tables = records;
            }
        }
        let json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| Error::internal(format!("manifest does not serialize: {e}")))?;
        // Written last, in one put (atomic on every object_store backend):
        // until it exists, the checkpoint does not.
        self.store
            .put(&folder.clone().join(MANIFEST), PutPayload::from(json))
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(())
    }

    /// Ids of every checkpoint folder, complete or not, ascending.
    async fn folders(&self) -> Result<Vec<u64>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.root))
            .await
            .or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(object_store::ListResult {
                    common_prefixes: Vec::new(),
                    objects: Vec::new(),
                }),
                e => Err(e),
            })
            .map_err(|e| self.unreachable(e))?;
        let mut ids: Vec<u64> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.strip_prefix("chk-")?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The manifest of checkpoint `id`, if it is complete.
    pub async fn manifest(&self, id: u64) -> Result<Option<Manifest>> {
        let path = self.folder(id).join(MANIFEST);
        let bytes = match self.store.get(&path).await {
            Ok(got) => got.bytes().await.map_err(|e| self.unreachable(e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.unreachable(e)),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            Error::internal(format!(
                "checkpoint {id} in `{}` has a corrupt manifest: {e}",
                self.display
            ))
        })?;
        Ok(Some(manifest))
    }

    /// Every complete checkpoint, oldest first. Unreadable manifests are
    /// reported in the log and left out.
    pub async fn list(&self) -> Result<Vec<Manifest>> {
        let mut manifests = Vec::new();
        for id in self.folders().await? {
            match self.manifest(id).await {
                Ok(Some(manifest)) => manifests.push(manifest),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "skipping checkpoint {id}"),
            }
        }
        Ok(manifests)
    }

    /// Reads checkpoint `id` with all its state.
    pub async fn load(&self, id: u64) -> Result<Loaded> {
        let manifest = self
            .manifest(id)
            .await?
            .ok_or_else(|| Error::NoSuchCheckpoint {
                id,
                store: self.display.clone(),
            })?;
        let folder = self.folder(id);
        let mut snapshots = HashMap::new();
        for (node, record) in &manifest.nodes {
            for (instance, recorded) in record.instances.iter().enumerate() {
                let mut snapshot = Snapshot::new(recorded.values.clone());
                for table in &recorded.tables {
                    let bytes = self
                        .store
                        .get(&folder.clone().join(table.file.as_str()))
                        .await
                        .map_err(|e| self.unreachable(e))?
                        .bytes()
                        .await
                        .map_err(|e| self.unreachable(e))?;
                    let batch = decode(&bytes).map_err(|e| {
                        Error::internal(format!(
                            "checkpoint {id}: state file `{}` is corrupt: {e}",
                            table.file
                        ))
                    })?;
                    if batch.num_rows() as u64 != table.rows {
                        return Err(Error::internal(format!(
                            "checkpoint {id}: state file `{}` has {} rows, the manifest says {}",
                            table.file,
                            batch.num_rows(),
                            table.rows
                        )));
                    }
                    if let Some(keyed) = &table.keyed {
                        snapshot.keyed.push((table.name.clone(), keyed.input));
                    }
                    snapshot.tables.push((table.name.clone(), batch));
                }
                snapshots.insert((node.clone(), instance), vec![snapshot]);
            }
        }
        Ok(Loaded {
            manifest,
            snapshots,
        })
    }

    /// The newest checkpoint that reads back whole. A damaged one is
    /// reported in the log and the one before it is tried.
    pub async fn latest(&self) -> Result<Option<Loaded>> {
        self.latest_accepted(|_| Ok(true)).await
    }

    /// The newest checkpoint that reads back whole and that `accept` takes;
    /// older ones are tried in turn.
    pub async fn latest_accepted(
        &self,
        mut accept: impl FnMut(&Loaded) -> Result<bool>,
    ) -> Result<Option<Loaded>> {
        for id in self.folders().await?.into_iter().rev() {
            match self.load(id).await {
                Ok(loaded) if accept(&loaded)? => return Ok(Some(loaded)),
                Ok(_) => {}
                // No manifest: the checkpoint never completed.
                Err(Error::NoSuchCheckpoint { .. }) => {}
                Err(error) => {
                    tracing::warn!(%error, "checkpoint {id} is unusable; trying the one before it")
                }
            }
        }
        Ok(None)
    }

    /// The highest checkpoint id used so far, complete or not.
    pub async fn last_id(&self) -> Result<u64> {
        Ok(self.folders().await?.last().copied().unwrap_or(0))
    }

    /// Deletes every checkpoint but the newest `keep` complete ones (and
    /// incomplete ones older than those).
    pub async fn retain(&self, keep: usize) -> Result<()> {
        let complete: Vec<u64> = self.list().await?.iter().map(|m| m.id).collect();
        let Some(&oldest_kept) = complete
            .len()
            .checked_sub(keep.max(1))
            .map_or(complete.first(), |i| complete.get(i))
        else {
            return Ok(());
        };
        for id in self.folders().await? {
            if id < oldest_kept {
                self.delete(id).await?;
            }
        }
        Ok(())
    }

    /// Where savepoint `name` lives: a checkpoint folder under
    /// `savepoints/<name>/` of this store, outside the checkpoints that
    /// retention deletes.
    pub fn savepoint(&self, name: &str) -> Result<CheckpointStore> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !name.starts_with('.');
        if !valid {
            return Err(Error::Checkpoint(format!(
                "`{name}` is not a savepoint name: use letters, digits, `-`, `_` and `.`"
            )));
        }
        Ok(CheckpointStore {
            store: self.store.clone(),
            root: self.root.clone().join(SAVEPOINTS).join(name),
            display: format!("{}/{SAVEPOINTS}/{name}", self.display.trim_end_matches('/')),
        })
    }

    /// Where task `task` of a pipeline run as tasks keeps its
    /// checkpoints: `tasks/<task>/` of this store, which every process
    /// sharing the tasks uses, so that a task's next owner finds them.
    pub fn task(&self, task: u32) -> CheckpointStore {
        CheckpointStore {
            store: self.store.clone(),
            root: self.root.clone().join(TASKS).join(task.to_string()),
            display: format!("{}/{TASKS}/{task}", self.display.trim_end_matches('/')),
        }
    }

    /// The store in folder `folder` of this one: where the tasks of a
    /// pipeline's second stage, after a repartition, keep their
    /// checkpoints (`repartition-<topic>/tasks/<task>/`).
    pub fn child(&self, folder: &str) -> CheckpointStore {
        CheckpointStore {
            store: self.store.clone(),
            root: self.root.clone().join(folder),
            display: format!("{}/{folder}", self.display.trim_end_matches('/')),
        }
    }

    /// The tasks with checkpoints in this store, ascending.
    pub async fn tasks(&self) -> Result<Vec<u32>> {
        let folder = self.root.clone().join(TASKS);
        let listing = match self.store.list_with_delimiter(Some(&folder)).await {
            Ok(listing) => listing,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(self.unreachable(e)),
        };
        let mut tasks: Vec<u32> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.parse().ok())
            .collect();
        tasks.sort_unstable();
        Ok(tasks)
    }

    /// The newest complete checkpoint's manifest, without its state.
    pub async fn latest_manifest(&self) -> Result<Option<Manifest>> {
        for id in self.folders().await?.into_iter().rev() {
            if let Some(manifest) = self.manifest(id).await? {
                return Ok(Some(manifest));
            }
        }
        Ok(None)
    }

    /// Every savepoint's name and manifest, by name.
    pub async fn savepoints(&self) -> Result<Vec<(String, Manifest)>> {
        let folder = self.root.clone().join(SAVEPOINTS);
        let listing = match self.store.list_with_delimiter(Some(&folder)).await {
            Ok(listing) => listing,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(self.unreachable(e)),
        };
        let mut savepoints = Vec::new();
        for prefix in listing.common_prefixes {
            let Some(name) = prefix.filename() else {
                continue;
            };
            if let Some(manifest) = self.savepoint(name)?.list().await?.pop() {
                savepoints.push((name.to_string(), manifest));
            }
        }
        savepoints.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(savepoints)
    }

    /// Keeps complete checkpoint `id` as savepoint `name`: its files are
    /// copied, manifest last, so a savepoint exists whole or not at all.
    /// It stays until [`CheckpointStore::delete_savepoint`].
    pub async fn save(&self, id: u64, name: &str) -> Result<CheckpointStore> {
        let target = self.savepoint(name)?;
        if !target.folders().await?.is_empty() {
            return Err(Error::Checkpoint(format!(
                "savepoint `{name}` already exists in `{}`; delete it first or choose another name",
                self.display
            )));
        }
        if self.manifest(id).await?.is_none() {
            return Err(Error::NoSuchCheckpoint {
                id,
                store: self.display.clone(),
            });
        }
        let (from, to) = (self.folder(id), target.folder(id));
        let files: Vec<_> = self
            .store
            .list(Some(&from))
            .try_collect()
            .await
            .map_err(|e| self.unreachable(e))?;
        for file in files
            .iter()
            .filter(|f| f.location.filename() != Some(MANIFEST))
        {
            let name = file.location.filename().unwrap_or_default();
            self.store
                .copy(&file.location, &to.clone().join(name))
                .await
                .map_err(|e| self.unreachable(e))?;
        }
        self.store
            .copy(&from.clone().join(MANIFEST), &to.join(MANIFEST))
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(target)
    }

    /// Deletes savepoint `name`; false if there was none.
    pub async fn delete_savepoint(&self, name: &str) -> Result<bool> {
        let target = self.savepoint(name)?;
        let ids = target.folders().await?;
        for id in &ids {
            target.delete(*id).await?;
        }
        Ok(!ids.is_empty())
    }

    /// Deletes checkpoint `id` (manifest first, so that it is never seen
    /// half deleted).
    pub async fn delete(&self, id: u64) -> Result<()> {
        let folder = self.folder(id);
        match self.store.delete(&folder.clone().join(MANIFEST)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.unreachable(e)),
        }
        let files: Vec<_> = self
            .store
            .list(Some(&folder))
            .try_collect()
            .await
            .map_err(|e| self.unreachable(e))?;
        for file in files {
            match self.store.delete(&file.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.unreachable(e)),
            }
        }
        Ok(())
    }
}

/// `table`'s rows sorted by the key group of `columns` (stable, so rows of
/// one group keep their order), with the `[group, rows]` runs.
pub(super) fn by_key_group(
    table: &RecordBatch,
    columns: &[String],
    groups: KeyGroups,
) -> Result<(RecordBatch, Vec<(usize, u64)>)> {
    let of_rows = groups_of_rows(table, columns, groups)?;
    let mut order: Vec<u32> = (0..table.num_rows() as u32).collect();
    order.sort_by_key(|&row| of_rows[row as usize]);
    let mut runs: Vec<(usize, u64)> = Vec::new();
    for &row in &order {
        match runs.last_mut() {
            Some((group, rows)) if *group == of_rows[row as usize] => *rows += 1,
            _ => runs.push((of_rows[row as usize], 1)),
        }
    }
    let sorted = match order.windows(2).all(|w| w[0] < w[1]) {
        true => table.clone(),
        false => take_record_batch(table, &UInt32Array::from(order))?,
    };
    Ok((sorted, runs))
}

/// The key group of each row of a state table, by its `columns`.
pub(super) fn groups_of_rows(
    table: &RecordBatch,
    columns: &[String],
    groups: KeyGroups,
) -> Result<Vec<usize>> {
    let indices = columns
        .iter()
        .map(|c| {
            table.schema().index_of(c).map_err(|_| {
                Error::internal(format!(
                    "a keyed state table has no key column `{c}`, so its rows cannot be placed in key groups"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    groups.of_rows(table, &indices)
}

fn encode(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut writer = FileWriter::try_new(&mut bytes, batch.schema_ref())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(bytes)
}

fn decode(bytes: &[u8]) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let reader = FileReader::try_new(Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    arrow::compute::concat_batches(&schema, &batches)
}
