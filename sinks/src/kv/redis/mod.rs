//! The key-value sink's Redis backend: one server, or a Redis Cluster.
//!
//! A checkpoint's writes are staged in Redis (one value per hash slot),
//! then applied at the checkpoint's commit by a Lua script
//! (`apply.lua`) that also sets the slot's checkpoint marker. Redis runs a
//! script whole, so readers see a checkpoint's writes to a slot all at
//! once, and a commit repeated after a crash finds the marker and changes
//! nothing: exactly once. Redis keeps what it acknowledged as its
//! persistence settings say (`appendonly yes` with `appendfsync` for
//! durability).

mod read;
mod slots;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Script, Value};
use serde::Deserialize;
use tokio::sync::{Mutex, OnceCell};

use flumen_core::prelude::*;

use super::KvWrite;
use super::store::{Store, with_retries};

pub(crate) use self::read::RedisReader;

/// Where and how a key-value sink keeps its view in Redis.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// The server: `redis://HOST:PORT[/DB]`, or `rediss://` for TLS; a
    /// password as `redis://:PASSWORD@HOST:PORT` (from `${VAR}`).
    #[serde(default)]
    pub url: Option<String>,

    /// A Redis Cluster instead of one server: the URLs of some of its
    /// nodes, e.g. `[redis://10.0.0.1:6379, redis://10.0.0.2:6379]`.
    #[serde(default)]
    pub cluster: Option<Vec<String>>,

    /// Write each value as a hash of its columns (`HSET`; fields hold
    /// text, a null column is left out) instead of one JSON text (`SET`).
    #[serde(default)]
    pub hash: bool,

    /// How long Redis may be unreachable (restarting, failing over)
    /// before the run fails; meanwhile writes are retried.
    #[serde(default = "default_retry_for", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_for: Duration,

    /// The key under which the sink records the checkpoint it applied
    /// last (per hash slot in a cluster). Default:
    /// `flumen:kv:PIPELINE:SINK`. Two sinks writing one Redis need two.
    #[serde(default)]
    pub checkpoint_key: Option<String>,
}

fn default_retry_for() -> Duration {
    Duration::from_secs(60)
}

/// Checked Redis settings.
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    urls: Vec<String>,
    cluster: bool,
    hash: bool,
    retry_for: Duration,
    marker: String,
}

impl RedisConfig {
    pub(crate) fn settings(&self, catalog: &dyn Catalog, template: &str) -> Result<RedisSettings> {
        let (urls, cluster, key) = match (&self.url, &self.cluster) {
            (Some(url), None) => (vec![url.clone()], false, "redis.url"),
            (None, Some(nodes)) if !nodes.is_empty() => (nodes.clone(), true, "redis.cluster"),
            (None, Some(_)) => return Err(Error::config("redis.cluster", "lists no nodes")),
            (None, None) => {
                return Err(Error::config(
                    "redis",
                    "needs `url` (one server) or `cluster` (the URLs of cluster nodes)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    "redis",
                    "has both `url` and `cluster`; give one",
                ));
            }
        };
        for url in &urls {
            url.as_str().into_connection_info().map_err(|e| {
                Error::config(
                    key,
                    format!(
                        "`{url}` is not a Redis URL ({e}); expected e.g. `redis://127.0.0.1:6379`"
                    ),
                )
            })?;
        }
        let marker = match &self.checkpoint_key {
            Some(marker) if marker.contains(['{', '}']) && cluster => {
                return Err(Error::config(
                    "redis.checkpoint_key",
                    "may not hold `{` or `}` in a cluster: the sink adds a hash tag per slot",
                ));
            }
            Some(marker) => marker.clone(),
            None => {
                // Braces would make a hash tag of a name.
                let plain = |name: &str| name.replace(['{', '}'], "_");
                format!(
                    "flumen:kv:{}:{}",
                    plain(catalog.pipeline().unwrap_or("pipeline")),
                    plain(catalog.component_name().unwrap_or(template)),
                )
            }
        };
        Ok(RedisSettings {
            urls,
            cluster,
            hash: self.hash,
            retry_for: self.retry_for,
            marker,
        })
    }
}

/// A connection to one server (reconnecting by itself) or to a cluster
/// (following its slots).
#[derive(Clone)]
pub(crate) enum Connection {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    pub(crate) async fn open(urls: &[String], cluster: bool, timeout: Duration) -> Result<Self> {
        let unreachable = |e: RedisError| {
            Error::connector(
                "redis",
                is_transient(&e),
                format!("cannot connect to Redis at {}: {e}", urls.join(", ")),
            )
        };
        if cluster {
            let client = redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
                .connection_timeout(Duration::from_secs(5))
                .response_timeout(timeout)
                .build()
                .map_err(unreachable)?;
            Ok(Connection::Cluster(
                client.get_async_connection().await.map_err(unreachable)?,
            ))
        } else {
            let client = redis::Client::open(urls[0].as_str()).map_err(unreachable)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(timeout));
            Ok(Connection::Server(
                ConnectionManager::new_lazy_with_config(client, config).map_err(unreachable)?,
            ))
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Server(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Server(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Errors that may pass: a connection lost or refused, a server loading
/// its data after a restart (also when it aborts a transaction for it), a
/// cluster moving slots.
pub(crate) fn is_transient(error: &RedisError) -> bool {
    use redis::ServerErrorKind::*;
    let aborted_while_loading = matches!(error.kind(), redis::ErrorKind::Server(ExecAbort))
        && error.to_string().contains("BusyLoading");
    aborted_while_loading
        || error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_cluster_error()
        || matches!(
            error.kind(),
            redis::ErrorKind::Server(BusyLoading | TryAgain | ClusterDown | MasterDown)
        )
}

fn not_json(error: serde_json::Error) -> Error {
    Error::internal(format!(
        "a key-value sink's value is not a JSON object: {error}"
    ))
}

fn redis_error(what: &str, error: RedisError) -> Error {
    Error::connector("redis", is_transient(&error), format!("{what}: {error}"))
}

/// How long staged writes of a checkpoint that never completed stay.
const STAGED_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most texts one `RPUSH` of staged writes carries.
const STAGED_CHUNK: usize = 50_000;

/// The key-value sink's Redis backend.
pub(crate) struct RedisStore {
    settings: RedisSettings,
    connection: OnceCell<Connection>,
    script: Script,
    /// This run's name in checkpoint markers: a fresh start begins a new
    /// run, whose checkpoints count from 1 again.
    run: Mutex<String>,
}

impl RedisStore {
    pub(crate) fn new(settings: RedisSettings) -> Self {
        RedisStore {
            settings,
            connection: OnceCell::new(),
            script: Script::new(include_str!("apply.lua")),
            run: Mutex::new(new_run()),
        }
    }

    async fn connection(&self) -> Result<Connection> {
        self.connection
            .get_or_try_init(|| {
                Connection::open(
                    &self.settings.urls,
                    self.settings.cluster,
                    self.settings.retry_for,
                )
            })
            .await
            .cloned()
    }

    /// The marker of `slot`'s checkpoints (of all keys, on one server).
    fn marker(&self, slot: Option<u16>) -> String {
        match slot {
            Some(slot) => format!("{}:{{{}}}", self.settings.marker, slots::tag_of(slot)),
            None => self.settings.marker.clone(),
        }
    }

    /// `writes` by the slot they go to (one group on one server), each
    /// encoded as `apply.lua` reads them.
    fn groups(&self, writes: Vec<KvWrite>) -> Result<BTreeMap<Option<u16>, Vec<Vec<u8>>>> {
        let mut groups: BTreeMap<Option<u16>, Vec<Vec<u8>>> = BTreeMap::new();
        for write in writes {
            let slot = self.settings.cluster.then(|| slots::slot(&write.key));
            self.encode(write, groups.entry(slot).or_default())?;
        }
        Ok(groups)
    }

    /// Appends `write` to `encoded` as five texts, an empty one for none:
    /// key, value, version, expiry, version key.
    fn encode(&self, write: KvWrite, encoded: &mut Vec<Vec<u8>>) -> Result<()> {
        let version_key = match write.version {
            Some(_) => version_key(&write.key).into_bytes(),
            None => Vec::new(),
        };
        let value = match write.value {
            None => Vec::new(),
            Some(json) if self.settings.hash => {
                serde_json::to_vec(&hash_fields(&json)?).map_err(not_json)?
            }
            Some(json) => json,
        };
        let text = |n: Option<i64>| n.map_or(Vec::new(), |n| n.to_string().into_bytes());
        encoded.extend([
            write.key.into_bytes(),
            value,
            text(write.version),
            text(write.expires_at),
            version_key,
        ]);
        Ok(())
    }

    /// Sends unversioned `writes` as one pipeline of `SET`s, `HSET`s and
    /// `DEL`s (a run without checkpoints: at least once).
    async fn pipeline_now(&self, writes: Vec<KvWrite>) -> Result<()> {
        let mut pipeline = redis::pipe();
        for write in writes {
            let key = write.key;
            match write.value {
                None => {
                    pipeline.del(&key).ignore();
                }
                Some(json) if self.settings.hash => {
                    let fields = hash_fields(&json)?;
                    pipeline.del(&key).ignore();
                    if !fields.is_empty() {
                        pipeline.cmd("HSET").arg(&key).arg(fields).ignore();
                        if let Some(at) = write.expires_at {
                            pipeline.cmd("PEXPIREAT").arg(&key).arg(at).ignore();
                        }
                    }
                }
                Some(json) => {
                    let set = pipeline.cmd("SET").arg(&key).arg(json);
                    if let Some(at) = write.expires_at {
                        set.arg("PXAT").arg(at);
                    }
                    set.ignore();
                }
            }
        }
        let connection = self.connection().await?;
        with_retries(
            "writing to Redis",
            self.settings.retry_for,
            is_transient,
            || {
                let mut connection = connection.clone();
                let pipeline = &pipeline;
                async move { pipeline.query_async::<()>(&mut connection).await }
            },
        )
        .await
        .map_err(|e| redis_error("writing to Redis", e))
    }

    /// Runs `apply.lua` for one slot: checkpoint `checkpoint`'s staged
    /// writes, or with checkpoint 0 the encoded `writes`; retries while
    /// Redis is away.
    async fn run_script(
        &self,
        slot: Option<u16>,
        run: &str,
        checkpoint: u64,
        writes: &[Vec<u8>],
    ) -> Result<i64> {
        let connection = self.connection().await?;
        let marker = self.marker(slot);
        let staged_key = self.staged_key(slot, checkpoint);
        let hash = if self.settings.hash { "1" } else { "0" };
        with_retries(
            "applying writes to Redis",
            self.settings.retry_for,
            is_transient,
            || {
                let mut invocation = self.script.key(&marker);
                invocation
                    .key(&staged_key)
                    .arg(run)
                    .arg(checkpoint)
                    .arg(hash);
                for arg in writes {
                    invocation.arg(arg);
                }
                let mut connection = connection.clone();
                async move { invocation.invoke_async::<i64>(&mut connection).await }
            },
        )
        .await
        .map_err(|e| redis_error("applying writes to Redis", e))
    }

    fn staged_key(&self, slot: Option<u16>, checkpoint: u64) -> String {
        format!("{}:staged:{checkpoint}", self.marker(slot))
    }
}

/// A value (a JSON object) as a hash's fields and values, in turn: text
/// as it is, other values as JSON, nulls left out.
fn hash_fields(json: &[u8]) -> Result<Vec<String>> {
    use serde_json::Value as Json;
    let object: serde_json::Map<String, Json> = serde_json::from_slice(json).map_err(not_json)?;
    let mut fields = Vec::with_capacity(object.len() * 2);
    for (name, value) in object {
        let text = match value {
            Json::Null => continue,
            Json::String(text) => text,
            other => other.to_string(),
        };
        fields.push(name);
        fields.push(text);
    }
    Ok(fields)
}

/// Where the version of `key` is kept: beside it, in its hash slot.
pub(crate) fn version_key(key: &str) -> String {
    if slots::hash_tag(key).is_some() || key.contains('}') {
        format!("{key}:_version")
    } else {
        format!("{{{key}}}:_version")
    }
}

/// The suffix of version keys, which readers skip.
pub(crate) const VERSION_SUFFIX: &str = ":_version";

fn new_run() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// The part of a checkpoint that finds its staged writes again.
#[derive(Debug, serde::Serialize, Deserialize)]
struct Staged {
    run: String,
    /// The groups staged: hash slots in a cluster, `null` for all keys of
    /// one server; none if the checkpoint wrote nothing.
    groups: Vec<Option<u16>>,
}

#[async_trait]
impl Store for RedisStore {
    fn refusal(&self, write: &KvWrite) -> Option<String> {
        (self.settings.cluster
            && write.version.is_some()
            && slots::slot(&version_key(&write.key)) != slots::slot(&write.key))
        .then(|| {
            format!(
                "key `{}` has a `}}` but no hash tag, so its version cannot be kept in its hash slot",
                write.key
            )
        })
    }

    async fn stage(&self, checkpoint: u64, writes: Vec<KvWrite>) -> Result<serde_json::Value> {
        let groups = self.groups(writes)?;
        let staged = Staged {
            run: self.run.lock().await.clone(),
            groups: groups.keys().copied().collect(),
        };
        let connection = &self.connection().await?;
        futures::stream::iter(groups)
            .map(|(slot, encoded)| async move {
                // All of a group, or none of it: a partly staged checkpoint
                // staged again starts afresh.
                let key = self.staged_key(slot, checkpoint);
                let mut staging = redis::pipe();
                staging.atomic().del(&key).ignore();
                for chunk in encoded.chunks(STAGED_CHUNK) {
                    staging.rpush(&key, chunk).ignore();
                }
                staging.expire(&key, STAGED_FOR.as_secs() as i64).ignore();
                with_retries(
                    "staging writes in Redis",
                    self.settings.retry_for,
                    is_transient,
                    || {
                        let mut connection = connection.clone();
                        let staging = &staging;
                        async move { staging.query_async::<()>(&mut connection).await }
                    },
                )
                .await
                .map_err(|e| redis_error("staging writes in Redis", e))
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(serde_json::json!(staged))
    }

    async fn apply(&self, checkpoint: u64, staged: &serde_json::Value) -> Result<()> {
        let staged: Staged = serde_json::from_value(staged.clone()).map_err(|e| {
            Error::Checkpoint(format!("not a Redis key-value sink's checkpoint: {e}"))
        })?;
        let run = staged.run.as_str();
        futures::stream::iter(staged.groups.iter().copied())
            .map(|slot| self.run_script(slot, run, checkpoint, &[]))
            .buffer_unordered(16)
            .try_collect::<Vec<i64>>()
            .await?;
        Ok(())
    }

    async fn write_now(&self, writes: Vec<KvWrite>) -> Result<()> {
        // Without versions to compare there is nothing for a script to
        // do that a pipeline of plain commands does not.
        if writes.iter().all(|w| w.version.is_none()) {
            return self.pipeline_now(writes).await;
        }
        let groups = self.groups(writes)?;
        let run = self.run.lock().await.clone();
        let run = run.as_str();
        futures::stream::iter(groups)
            .map(|(slot, encoded)| async move { self.run_script(slot, run, 0, &encoded).await })
            .buffer_unordered(16)
            .try_collect::<Vec<i64>>()
            .await?;
        Ok(())
    }

    async fn recover(&self, from: Option<(u64, serde_json::Value)>) -> Result<()> {
        match from {
            Some((checkpoint, staged)) => {
                if let Some(run) = staged["run"].as_str() {
                    *self.run.lock().await = run.to_string();
                }
                self.apply(checkpoint, &staged).await
            }
            None => {
                *self.run.lock().await = new_run();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, value: &str, version: Option<i64>) -> KvWrite {
        KvWrite {
            key: key.into(),
            value: Some(value.as_bytes().to_vec()),
            version,
            expires_at: None,
        }
    }

    /// Needs the test services' Redis (`scripts/test.sh` starts it).
    fn store(database: u8) -> RedisStore {
        let url = std::env::var("FLUMEN_TEST_REDIS")
            .expect("FLUMEN_TEST_REDIS is not set: run the tests with scripts/test.sh");
        RedisStore::new(RedisSettings {
            urls: vec![format!("{url}/{database}")],
            cluster: false,
            hash: false,
            retry_for: Duration::from_secs(5),
            marker: "flumen:kv:test:script".into(),
        })
    }

    #[tokio::test]
    async fn a_checkpoint_applied_again_changes_nothing() {
        let store = store(9);
        let mut connection = store.connection().await.unwrap();
        redis::cmd("FLUSHDB")
            .query_async::<()>(&mut connection)
            .await
            .unwrap();
        store.recover(None).await.unwrap();
        let run = store.run.lock().await.clone();
        let apply = |checkpoint: u64| {
            let (store, run) = (&store, run.clone());
            async move { store.run_script(None, &run, checkpoint, &[]).await }
        };
        store
            .stage(5, vec![write("k", "{\"n\":5}", Some(5))])
            .await
            .unwrap();
        assert_eq!(apply(5).await.unwrap(), 1);
        assert_eq!(apply(5).await.unwrap(), 0, "a replay applies nothing");
        store
            .stage(6, vec![write("k", "{\"n\":6}", Some(6))])
            .await
            .unwrap();
        assert_eq!(apply(6).await.unwrap(), 1);
        let value: String = redis::cmd("GET")
            .arg("k")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(value, "{\"n\":6}");
        // A checkpoint that wrote nothing commits too.
        let staged = store.stage(7, Vec::new()).await.unwrap();
        store.apply(7, &staged).await.unwrap();

        // An older version changes nothing; a fresh start's checkpoints
        // count again.
        store
            .write_now(vec![write("k", "{\"n\":4}", Some(4))])
            .await
            .unwrap();
        store.recover(None).await.unwrap();
        let run = store.run.lock().await.clone();
        store
            .stage(1, vec![write("j", "{\"n\":1}", None)])
            .await
            .unwrap();
        let applied = store.run_script(None, &run, 1, &[]).await.unwrap();
        assert_eq!(applied, 1, "a new run's checkpoint 1 is applied");
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg("k")
            .arg("j")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(
            values,
            [Some("{\"n\":6}".to_string()), Some("{\"n\":1}".to_string())]
        );
    }
}
