//! The embedded store: a redb file. Values live in one table; each
//! checkpoint's writes are first staged, durably, in another, and applied
//! at the checkpoint's commit in one write transaction that also records
//! the checkpoint, so that a commit repeated after a crash applies nothing
//! twice. Readers (`flumen kv`, the `serve:` server) see committed
//! checkpoints only: a read transaction sees the file as the last commit
//! left it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    ConcurrencyMode, Database, Durability, ReadOnlyDatabase, ReadableDatabase, ReadableTable,
    TableDefinition,
};

use flumen_core::prelude::*;

use super::store::Store;
use super::{KvWrite, wall_clock_millis};

/// Key → (version, expires at, value). A value of `None` is a tombstone:
/// a delete remembered for its version, so that an older upsert arriving
/// late does not bring the key back.
const VALUES: TableDefinition<'_, &str, (i64, i64, Option<&[u8]>)> = TableDefinition::new("values");
/// Checkpoint → its writes, encoded.
const STAGED: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("staged");
/// `applied` → the last checkpoint whose writes are in `values`.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const APPLIED: &str = "applied";

/// The version of a value written without one: any versioned write wins
/// over it.
const UNVERSIONED: i64 = i64::MIN;
/// The expiry of a value that does not expire.
const NEVER: i64 = i64::MAX;

fn store_error(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::connector(
        "kv",
        false,
        format!("key-value store {}: {error}", path.display()),
    )
}

/// A store a sink writes.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
}

/// The stores this process has open for writing, by canonical path, for
/// readers in the same process (the `serve:` server) to share: a second
/// handle on the file in one process could disturb the writer's locks.
static OPEN: std::sync::Mutex<Vec<(PathBuf, std::sync::Weak<Database>)>> =
    std::sync::Mutex::new(Vec::new());

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens the store at `path`, creating it (and its directory) if
    /// missing. Other processes may read it meanwhile.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| store_error(path, e))?;
        }
        let db = Arc::new(
            Database::builder()
                .set_concurrency_mode(ConcurrencyMode::SingleWriter)
                .create(path)
                .map_err(|e| store_error(path, e))?,
        );
        if let Ok(canonical) = path.canonicalize() {
            let mut open = OPEN.lock().expect("open stores");
            open.retain(|(_, db)| db.strong_count() > 0);
            open.push((canonical, Arc::downgrade(&db)));
        }
        let store = EmbeddedStore {
            db,
            path: path.to_path_buf(),
        };
        // Every table exists from the start, for readers.
        store.write(|txn| {
            txn.open_table(VALUES)?;
            txn.open_table(STAGED)?;
            txn.open_table(META)?;
            Ok(())
        })?;
        Ok(store)
    }

    fn write(
        &self,
        work: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<(), redb::Error>,
    ) -> Result<()> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| store_error(&self.path, e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| store_error(&self.path, e))?;
        work(&txn).map_err(|e| store_error(&self.path, e))?;
        txn.commit().map_err(|e| store_error(&self.path, e))
    }

    /// Keeps `writes` as checkpoint `checkpoint`'s, durably, without
    /// applying them.
    pub(crate) fn stage(&self, checkpoint: u64, writes: &[KvWrite]) -> Result<()> {
        let encoded = encode(writes);
        self.write(|txn| {
            txn.open_table(STAGED)?
                .insert(checkpoint, encoded.as_slice())?;
            Ok(())
        })
    }

    /// Applies checkpoint `checkpoint`'s staged writes, unless they were
    /// applied already. Returns how many were.
    pub(crate) fn apply(&self, checkpoint: u64) -> Result<usize> {
        let mut applied = 0;
        let now = wall_clock_millis();
        self.write(|txn| {
            let mut staged = txn.open_table(STAGED)?;
            let writes = match staged.remove(checkpoint)? {
                Some(encoded) => decode(encoded.value()),
                None => return Ok(()),
            };
            let mut meta = txn.open_table(META)?;
            let done = meta.get(APPLIED)?.map_or(0, |v| v.value());
            if done >= checkpoint {
                return Ok(());
            }
            let mut values = txn.open_table(VALUES)?;
            for write in &writes {
                if apply_one(&mut values, write, now)? {
                    applied += 1;
                }
            }
            meta.insert(APPLIED, checkpoint)?;
            Ok(())
        })?;
        Ok(applied)
    }

    /// Applies `writes` at once (a run without checkpoints).
    pub(crate) fn write_now(&self, writes: &[KvWrite]) -> Result<()> {
        let now = wall_clock_millis();
        self.write(|txn| {
            let mut values = txn.open_table(VALUES)?;
            for write in writes {
                apply_one(&mut values, write, now)?;
            }
            Ok(())
        })
    }

    /// After a restart from checkpoint `from` (or a fresh start): applies
    /// `from`'s writes if they are staged and not applied, and drops every
    /// other staged checkpoint (a later one never completed). A fresh
    /// start forgets which checkpoint was applied last: its checkpoints
    /// count from 1 again.
    pub(crate) fn recover(&self, from: Option<u64>) -> Result<()> {
        if let Some(checkpoint) = from {
            self.apply(checkpoint)?;
        }
        self.write(|txn| {
            let mut staged = txn.open_table(STAGED)?;
            staged.retain(|_, _| false)?;
            if from.is_none() {
                txn.open_table(META)?.remove(APPLIED)?;
            }
            Ok(())
        })
    }
}

/// The embedded store as a sink's backend: redb's work runs on the
/// blocking pool.
#[derive(Debug, Clone)]
pub(crate) struct Embedded(pub(crate) Arc<EmbeddedStore>);

impl Embedded {
    async fn on_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&EmbeddedStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| Error::internal(format!("the key-value store's writer failed: {e}")))?
    }
}

#[async_trait]
impl Store for Embedded {
    async fn stage(&self, checkpoint: u64, writes: Vec<KvWrite>) -> Result<serde_json::Value> {
        self.on_store(move |store| store.stage(checkpoint, &writes))
            .await?;
        Ok(serde_json::Value::Null)
    }

    async fn apply(&self, checkpoint: u64, _staged: &serde_json::Value) -> Result<()> {
        self.on_store(move |store| store.apply(checkpoint).map(|_| ()))
            .await
    }

    async fn write_now(&self, writes: Vec<KvWrite>) -> Result<()> {
        self.on_store(move |store| store.write_now(&writes)).await
    }

    async fn recover(&self, from: Option<(u64, serde_json::Value)>) -> Result<()> {
        let from = from.map(|(checkpoint, _)| checkpoint);
        self.on_store(move |store| store.recover(from)).await
    }
}

/// Applies one write to `values`, last writer by version winning; false
/// if an equal or newer version was there.
fn apply_one(
    values: &mut redb::Table<'_, &str, (i64, i64, Option<&[u8]>)>,
    write: &KvWrite,
    now: i64,
) -> std::result::Result<bool, redb::Error> {
    let version = write.version.unwrap_or(UNVERSIONED);
    if let Some(version) = write.version
        && let Some(stored) = values.get(write.key.as_str())?
    {
        let (stored_version, expires, _) = stored.value();
        // An expired value no longer counts.
        if stored_version > version && expires > now {
            return Ok(false);
        }
    }
    match (&write.value, write.version) {
        (Some(value), _) => {
            let expires = write.expires_at.unwrap_or(NEVER);
            values.insert(
                write.key.as_str(),
                (version, expires, Some(value.as_slice())),
            )?;
        }
        // A versioned delete stays as a tombstone.
        (None, Some(_)) => {
            values.insert(write.key.as_str(), (version, NEVER, None))?;
        }
        (None, None) => {
            values.remove(write.key.as_str())?;
        }
    }
    Ok(true)
}

/// One key's value as a reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value: a JSON object of the value columns.
    pub value: serde_json::Value,
    /// The version it was written with, if any.
    pub version: Option<i64>,
    /// When it expires (ms since the epoch), if it does.
    pub expires_at: Option<i64>,
}

impl Entry {
    /// The entry as readers show it: `{"key", "value"}`, with `version`
    /// and `expires_at` where it has them.
    pub fn to_json(&self) -> serde_json::Value {
        let mut object = serde_json::json!({ "key": self.key, "value": self.value });
        if let Some(version) = self.version {
            object["version"] = version.into();
        }
        if let Some(expires_at) = self.expires_at {
            object["expires_at"] = expires_at.into();
        }
        object
    }
}

/// A store opened for reading, beside the process that writes it, or in
/// it.
pub struct EmbeddedReader {
    db: ReaderDb,
    path: PathBuf,
}

enum ReaderDb {
    /// A read-only handle, following another process's commits.
    ReadOnly(ReadOnlyDatabase),
    /// The writer's own handle, in this process.
    Shared(Arc<Database>),
}

impl EmbeddedReader {
    /// Opens the store at `path` for reading; a writer may have it open.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::connector(
                "kv",
                false,
                format!(
                    "no key-value store at {}: the file does not exist (a store is a `kv` sink's `path`)",
                    path.display()
                ),
            ));
        }
        let db = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .open_read_only(path)
            .map_err(|e| store_error(path, e))?;
        Ok(EmbeddedReader {
            db: ReaderDb::ReadOnly(db),
            path: path.to_path_buf(),
        })
    }

    /// Reads the store a sink of this process has open at `path`, if one
    /// has.
    pub fn of_this_process(path: &Path) -> Option<Self> {
        let canonical = path.canonicalize().ok()?;
        let open = OPEN.lock().expect("open stores");
        let db = open
            .iter()
            .rev()
            .find(|(p, _)| *p == canonical)
            .and_then(|(_, db)| db.upgrade())?;
        Some(EmbeddedReader {
            db: ReaderDb::Shared(db),
            path: path.to_path_buf(),
        })
    }

    /// Runs `work` on the values as the last commit left them; gives
    /// `empty` while the writer has not made the table yet (it is creating
    /// the store).
    fn read<T>(
        &self,
        empty: T,
        work: impl FnOnce(
            &redb::ReadOnlyTable<&str, (i64, i64, Option<&[u8]>)>,
        ) -> std::result::Result<T, redb::Error>,
    ) -> Result<T> {
        let txn = match &self.db {
            ReaderDb::ReadOnly(db) => db.begin_read(),
            ReaderDb::Shared(db) => db.begin_read(),
        }
        .map_err(|e| store_error(&self.path, e))?;
        let table = match txn.open_table(VALUES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(empty),
            Err(e) => return Err(store_error(&self.path, e)),
        };
        work(&table).map_err(|e| store_error(&self.path, e))
    }

    /// The value of `key`, unless absent, deleted or expired.
    pub fn get(&self, key: &str) -> Result<Option<Entry>> {
        let now = wall_clock_millis();
        let found = self.read(None, |table| {
            Ok(table.get(key)?.and_then(|stored| {
                let (version, expires, value) = stored.value();
                live(key, version, expires, value, now)
            }))
        })?;
        found.transpose()
    }

    /// The entry of `key` as the JSON text [`Entry::to_json`] makes, built
    /// around the stored value without parsing it (the `serve:` server's
    /// lookups); `None` unless live.
    pub fn get_json(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let now = wall_clock_millis();
        self.read(None, |table| {
            let Some(stored) = table.get(key)? else {
                return Ok(None);
            };
            let (version, expires, value) = stored.value();
            let Some(value) = value.filter(|_| expires > now) else {
                return Ok(None);
            };
            let mut json = Vec::with_capacity(value.len() + key.len() + 64);
            json.extend_from_slice(b"{\"key\":");
            json.extend_from_slice(serde_json::Value::from(key).to_string().as_bytes());
            json.extend_from_slice(b",\"value\":");
            json.extend_from_slice(value);
            if version != UNVERSIONED {
                json.extend_from_slice(format!(",\"version\":{version}").as_bytes());
            }
            if expires != NEVER {
                json.extend_from_slice(format!(",\"expires_at\":{expires}").as_bytes());
            }
            json.push(b'}');
            Ok(Some(json))
        })
    }

    /// Up to `limit` live keys that start with `prefix`, in key order,
    /// after `after` (a cursor: the last key of the previous page). Also
    /// returns the cursor of the next page, if there may be one.
    pub fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<String>)> {
        let now = wall_clock_millis();
        let start = match after {
            Some(after) if after >= prefix => after.to_string(),
            _ => prefix.to_string(),
        };
        let found = self.read(Vec::new(), |table| {
            let mut found = Vec::new();
            for item in table.range(start.as_str()..)? {
                let (key, stored) = item?;
                let key = key.value();
                if !key.starts_with(prefix) {
                    break;
                }
                if after == Some(key) {
                    continue;
                }
                let (version, expires, value) = stored.value();
                if let Some(entry) = live(key, version, expires, value, now) {
                    found.push(entry);
                    if found.len() == limit {
                        break;
                    }
                }
            }
            Ok(found)
        })?;
        let entries = found.into_iter().collect::<Result<Vec<_>>>()?;
        let next = (entries.len() == limit && limit > 0)
            .then(|| entries.last().map(|e| e.key.clone()))
            .flatten();
        Ok((entries, next))
    }

    /// How many live keys start with `prefix`.
    pub fn count(&self, prefix: &str) -> Result<u64> {
        let now = wall_clock_millis();
        self.read(0, |table| {
            let mut count = 0;
            for item in table.range(prefix..)? {
                let (key, stored) = item?;
                if !key.value().starts_with(prefix) {
                    break;
                }
                let (_, expires, value) = stored.value();
                if value.is_some() && expires > now {
                    count += 1;
                }
            }
            Ok(count)
        })
    }
}

/// The entry a stored value stands for, unless it is a tombstone or has
/// expired.
fn live(
    key: &str,
    version: i64,
    expires: i64,
    value: Option<&[u8]>,
    now: i64,
) -> Option<Result<Entry>> {
    let value = value?;
    if expires <= now {
        return None;
    }
    Some(
        serde_json::from_slice(value)
            .map_err(|e| Error::Data(format!("the value of `{key}` is not JSON: {e}")))
            .map(|value| Entry {
                key: key.to_string(),
                value,
                version: (version != UNVERSIONED).then_some(version),
                expires_at: (expires != NEVER).then_some(expires),
            }),
    )
}

/// Writes as staged: per write, the key, flags, version, expiry and
/// value, lengths as little-endian u32.
fn encode(writes: &[KvWrite]) -> Vec<u8> {
    let mut out = Vec::new();
    for write in writes {
        out.extend_from_slice(&(write.key.len() as u32).to_le_bytes());
        out.extend_from_slice(write.key.as_bytes());
        let flags = u8::from(write.value.is_some())
            | (u8::from(write.version.is_some()) << 1)
            | (u8::from(write.expires_at.is_some()) << 2);
        out.push(flags);
        out.extend_from_slice(&write.version.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&write.expires_at.unwrap_or(0).to_le_bytes());
        let value = write.value.as_deref().unwrap_or_default();
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

fn decode(mut bytes: &[u8]) -> Vec<KvWrite> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> &'a [u8] {
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        head
    }
    let u32_at =
        |bytes: &mut &[u8]| u32::from_le_bytes(take(bytes, 4).try_into().expect("4 bytes"));
    let i64_at =
        |bytes: &mut &[u8]| i64::from_le_bytes(take(bytes, 8).try_into().expect("8 bytes"));
    let mut writes = Vec::new();
    while !bytes.is_empty() {
        let key_len = u32_at(&mut bytes) as usize;
        let key = String::from_utf8_lossy(take(&mut bytes, key_len)).into_owned();
        let flags = take(&mut bytes, 1)[0];
        let version = i64_at(&mut bytes);
        let expires = i64_at(&mut bytes);
        let value_len = u32_at(&mut bytes) as usize;
        let value = take(&mut bytes, value_len).to_vec();
        writes.push(KvWrite {
            key,
            value: (flags & 1 != 0).then_some(value),
            version: (flags & 2 != 0).then_some(version),
            expires_at: (flags & 4 != 0).then_some(expires),
        });
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(key: &str, value: &str, version: Option<i64>) -> KvWrite {
        KvWrite {
            key: key.into(),
            value: Some(value.as_bytes().to_vec()),
            version,
            expires_at: None,
        }
    }

    #[test]
    fn staged_writes_round_trip() {
        let writes = vec![
            upsert("a", "{\"n\":1}", Some(5)),
            KvWrite {
                key: "b".into(),
                value: None,
                version: None,
                expires_at: Some(9),
            },
        ];
        assert_eq!(decode(&encode(&writes)), writes);
    }

    #[test]
    fn a_checkpoint_applies_once_and_readers_see_only_applied_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        store.stage(1, &[upsert("t:1", "{\"n\":1}", None)]).unwrap();
        let reader = EmbeddedReader::open(&path).unwrap();
        assert_eq!(reader.get("t:1").unwrap(), None, "staged is not visible");
        assert_eq!(store.apply(1).unwrap(), 1);
        assert_eq!(reader.get("t:1").unwrap().unwrap().value["n"], 1);
        // A repeated commit (after a crash) applies nothing.
        store
            .stage(1, &[upsert("t:1", "{\"n\":99}", None)])
            .unwrap();
        assert_eq!(store.apply(1).unwrap(), 0);
        assert_eq!(reader.get("t:1").unwrap().unwrap().value["n"], 1);
    }

    #[test]
    fn last_writer_by_version_wins_and_deletes_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        store
            .write_now(&[upsert("k", "{\"v\":2}", Some(2))])
            .unwrap();
        store
            .write_now(&[upsert("k", "{\"v\":1}", Some(1))])
            .unwrap();
        let reader = EmbeddedReader::open(&path).unwrap();
        assert_eq!(
            reader.get("k").unwrap().unwrap().value["v"],
            2,
            "older loses"
        );
        // The server's raw answer is the entry's JSON.
        let raw = reader.get_json("k").unwrap().unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&raw).unwrap(),
            reader.get("k").unwrap().unwrap().to_json()
        );
        assert_eq!(reader.get_json("absent").unwrap(), None);
        let delete = KvWrite {
            key: "k".into(),
            value: None,
            version: Some(3),
            expires_at: None,
        };
        store.write_now(&[delete]).unwrap();
        store
            .write_now(&[upsert("k", "{\"v\":2}", Some(2))])
            .unwrap();
        assert_eq!(
            reader.get("k").unwrap(),
            None,
            "a late upsert does not resurrect"
        );
        assert_eq!(reader.get_json("k").unwrap(), None, "nor for the server");
        assert_eq!(reader.count("").unwrap(), 0);
    }

    #[test]
    fn scans_page_through_a_prefix_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        let writes: Vec<KvWrite> = (0..5)
            .map(|i| upsert(&format!("t:{i}"), "{}", None))
            .chain([upsert("u:0", "{}", None)])
            .collect();
        store.write_now(&writes).unwrap();
        let reader = EmbeddedReader::open(&path).unwrap();
        let (page, next) = reader.scan("t:", None, 2).unwrap();
        assert_eq!(
            page.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["t:0", "t:1"]
        );
        let (page, next) = reader.scan("t:", next.as_deref(), 2).unwrap();
        assert_eq!(
            page.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["t:2", "t:3"]
        );
        let (page, _) = reader.scan("t:", next.as_deref(), 2).unwrap();
        assert_eq!(
            page.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["t:4"]
        );
        assert_eq!(reader.count("t:").unwrap(), 5);
    }

    #[test]
    fn expired_values_are_gone_for_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        let mut write = upsert("k", "{}", None);
        write.expires_at = Some(wall_clock_millis() - 1);
        store.write_now(&[write]).unwrap();
        let reader = EmbeddedReader::open(&path).unwrap();
        assert_eq!(reader.get("k").unwrap(), None);
    }
}
