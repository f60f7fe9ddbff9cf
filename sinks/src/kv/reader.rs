//! Reading a view wherever a key-value sink keeps it, for `flumen kv`.

use std::path::Path;

use flumen_core::prelude::*;

use super::{EmbeddedReader, Entry};

/// A view opened for reading: an embedded store, Redis or DynamoDB.
pub struct KvReader(Reader);

enum Reader {
    Embedded(EmbeddedReader),
    #[cfg(feature = "redis")]
    Redis(super::redis::RedisReader),
    #[cfg(feature = "dynamodb")]
    DynamoDb(super::dynamodb::DynamoDbReader),
}

impl KvReader {
    /// Opens `store`, which names a view as its sink does:
    ///
    /// - a path: an embedded store's file;
    /// - `redis://HOST:PORT[/DB]` (or `rediss://`): a Redis server; several,
    ///   separated by commas, are nodes of a cluster;
    /// - `dynamodb://TABLE`: a DynamoDB table, reached as the AWS CLI would
    ///   (`AWS_REGION`, credentials), at `AWS_ENDPOINT_URL` if set; the
    ///   partition key is `key` unless `?key_attribute=NAME` says otherwise.
    pub async fn open(store: &str) -> Result<Self> {
        #[cfg(feature = "redis")]
        if store.starts_with("redis://") || store.starts_with("rediss://") {
            let urls: Vec<String> = store.split(',').map(|u| u.trim().to_string()).collect();
            return Ok(KvReader(Reader::Redis(
                super::redis::RedisReader::open(&urls).await?,
            )));
        }
        #[cfg(feature = "dynamodb")]
        if let Some(table) = store.strip_prefix("dynamodb://") {
            let (table, query) = table.split_once('?').unwrap_or((table, ""));
            let mut config = super::DynamoDbConfig::new(
                table,
                flumen_clients::aws::AwsSettings {
                    endpoint: std::env::var("AWS_ENDPOINT_URL").ok(),
                    ..Default::default()
                },
            );
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("key_attribute", name)) => config.key_attribute = name.into(),
                    _ => {
                        return Err(Error::config(
                            "store",
                            format!(
                                "`{pair}`: the one setting of a DynamoDB store is `key_attribute=NAME`"
                            ),
                        ));
                    }
                }
            }
            config.check()?;
            return Ok(KvReader(Reader::DynamoDb(
                super::dynamodb::DynamoDbReader::open(&config).await?,
            )));
        }
        Ok(KvReader(Reader::Embedded(EmbeddedReader::open(
            Path::new(store),
        )?)))
    }

    /// The value of `key`, unless absent, deleted or expired.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>> {
        match &self.0 {
            Reader::Embedded(reader) => reader.get(key),
            #[cfg(feature = "redis")]
            Reader::Redis(reader) => reader.get(key).await,
            #[cfg(feature = "dynamodb")]
            Reader::DynamoDb(reader) => reader.get(key).await,
        }
    }

    /// Up to `limit` keys that start with `prefix`, from `cursor` (the
    /// cursor a previous page returned); also the next page's cursor, if
    /// there may be one. The embedded store returns keys in order; Redis
    /// and DynamoDB in the order they keep them.
    pub async fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<String>)> {
        match &self.0 {
            Reader::Embedded(reader) => reader.scan(prefix, cursor, limit),
            #[cfg(feature = "redis")]
            Reader::Redis(reader) => reader.scan(prefix, cursor, limit).await,
            #[cfg(feature = "dynamodb")]
            Reader::DynamoDb(reader) => reader.scan(prefix, cursor, limit).await,
        }
    }

    /// How many keys start with `prefix`.
    pub async fn count(&self, prefix: &str) -> Result<u64> {
        match &self.0 {
            Reader::Embedded(reader) => reader.count(prefix),
            #[cfg(feature = "redis")]
            Reader::Redis(reader) => reader.count(prefix).await,
            #[cfg(feature = "dynamodb")]
            Reader::DynamoDb(reader) => reader.count(prefix).await,
        }
    }
}
