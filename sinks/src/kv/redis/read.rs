//! Reading a Redis view, for `flumen kv`: what the sink wrote, minus its
//! own keys (versions, checkpoint markers, staged writes).

use std::time::Duration;

use redis::AsyncCommands;

use flumen_core::prelude::*;

use super::{Connection, VERSION_SUFFIX, redis_error, version_key};
use crate::kv::Entry;
use crate::kv::wall_clock_millis;

/// The prefix of the keys the sink keeps for itself by default.
const OWN_KEYS: &str = "flumen:kv:";

/// A Redis view opened for reading.
pub(crate) struct RedisReader {
    connection: Connection,
    cluster: bool,
}

impl RedisReader {
    /// Opens `urls`: one server, or (more than one) nodes of a cluster.
    pub(crate) async fn open(urls: &[String]) -> Result<Self> {
        let cluster = urls.len() > 1;
        Ok(RedisReader {
            connection: Connection::open(urls, cluster, Duration::from_secs(30)).await?,
            cluster,
        })
    }

    /// The value of `key`: a JSON text, or a hash (whose fields hold
    /// text); `None` if there is none.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let mut connection = self.connection.clone();
        let read = |e| redis_error("reading Redis", e);
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut connection)
            .await
            .map_err(read)?;
        let value = match kind.as_str() {
            "string" => {
                let text: Option<String> = connection.get(key).await.map_err(read)?;
                match text {
                    Some(text) => {
                        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
                    }
                    None => return Ok(None),
                }
            }
            "hash" => {
                let fields: Vec<(String, String)> = connection.hgetall(key).await.map_err(read)?;
                serde_json::Value::Object(
                    fields
                        .into_iter()
                        .map(|(name, text)| (name, serde_json::Value::String(text)))
                        .collect(),
                )
            }
            _ => return Ok(None),
        };
        let version: Option<i64> = connection.get(version_key(key)).await.map_err(read)?;
        // PTTL: milliseconds left, or negative when the key does not expire.
        let left: i64 = connection.pttl(key).await.map_err(read)?;
        Ok(Some(Entry {
            key: key.to_string(),
            value,
            version,
            expires_at: (left >= 0).then(|| wall_clock_millis() + left),
        }))
    }

    /// Up to `limit` keys that start with `prefix`, in the order Redis's
    /// `SCAN` meets them, from `cursor` (of a previous page); also the
    /// cursor of the next page, if there is one.
    pub(crate) async fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<String>)> {
        self.refuse_cluster()?;
        // A cursor is Redis's, and how many keys of its page were read.
        let (mut at, mut skip) = match cursor {
            Some(cursor) => parse_cursor(cursor)?,
            None => (0, 0),
        };
        let mut entries = Vec::new();
        loop {
            let (next, keys) = self.scan_page(prefix, at).await?;
            for (read, key) in keys.iter().skip(skip).enumerate() {
                if entries.len() == limit {
                    return Ok((entries, Some(format!("{at}:{}", skip + read))));
                }
                if let Some(entry) = self.get(key).await? {
                    entries.push(entry);
                }
            }
            skip = 0;
            at = next;
            if at == 0 {
                return Ok((entries, None));
            }
        }
    }

    /// How many keys start with `prefix`.
    pub(crate) async fn count(&self, prefix: &str) -> Result<u64> {
        self.refuse_cluster()?;
        let mut at = 0;
        let mut count = 0;
        loop {
            let (next, keys) = self.scan_page(prefix, at).await?;
            count += keys.len() as u64;
            at = next;
            if at == 0 {
                return Ok(count);
            }
        }
    }

    /// One `SCAN` step: the next cursor, and the view's keys it found.
    async fn scan_page(&self, prefix: &str, at: u64) -> Result<(u64, Vec<String>)> {
        let mut connection = self.connection.clone();
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(at)
            .arg("MATCH")
            .arg(format!("{}*", glob_escape(prefix)))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .map_err(|e| redis_error("scanning Redis", e))?;
        let keys = keys
            .into_iter()
            .filter(|k| !k.starts_with(OWN_KEYS) && !k.ends_with(VERSION_SUFFIX))
            .collect();
        Ok((next, keys))
    }

    fn refuse_cluster(&self) -> Result<()> {
        if self.cluster {
            return Err(Error::connector(
                "redis",
                false,
                "scan and count read one server; give one cluster node's URL at a time",
            ));
        }
        Ok(())
    }
}

fn parse_cursor(cursor: &str) -> Result<(u64, usize)> {
    cursor
        .split_once(':')
        .and_then(|(at, skip)| Some((at.parse().ok()?, skip.parse().ok()?)))
        .ok_or_else(|| {
            Error::connector(
                "redis",
                false,
                format!("`{cursor}` is not a cursor of a Redis scan"),
            )
        })
}

/// `text` matched literally by a `SCAN MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
