//! The key-value sink's DynamoDB backend.
//!
//! DynamoDB has no transaction wide enough for a checkpoint, so this
//! backend writes as a checkpoint is taken (at least once), and makes a
//! repeated write harmless instead: a write with a version is a
//! conditional `PutItem` (`attribute_not_exists(_version) OR _version <=
//! :v`), so a replay or a late row never regresses a value, and the
//! effect is exactly once. Writes without a version go in
//! `BatchWriteItem` requests of up to 25 items, and what DynamoDB leaves
//! unprocessed is sent again after a backoff.

mod item;
mod read;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use tokio::sync::OnceCell;

use flumen_clients::aws::dynamodb::ensure_table;
use flumen_clients::aws::{AwsSettings, ErrorClass, classify, describe};
use flumen_core::prelude::*;

use self::item::{DELETED, EXPIRES, MAX_ITEM_BYTES, VERSION, attribute, is_own};
use super::store::{Store, with_retries};
use super::{KvWrite, wall_clock_millis};

pub(crate) use self::read::DynamoDbReader;

/// Where a key-value sink keeps its view in DynamoDB.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DynamoDbConfig {
    /// The table, created (on-demand capacity) if missing, with
    /// `key_attribute` as its partition key.
    pub table: String,

    /// The partition key's attribute (a string), which holds the key.
    #[serde(default = "default_key_attribute")]
    pub key_attribute: String,

    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,

    /// How long DynamoDB may throttle or fail requests before the run
    /// fails; meanwhile they are retried with backoff.
    #[serde(default = "default_retry_for", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_for: Duration,

    /// Where and as whom to reach DynamoDB.
    #[serde(default)]
    pub aws: AwsSettings,
}

fn default_key_attribute() -> String {
    "key".into()
}

fn default_concurrency() -> usize {
    16
}

fn default_retry_for() -> Duration {
    Duration::from_secs(120)
}

impl DynamoDbConfig {
    /// A view in `table`, reached with `aws`.
    pub fn new(table: impl Into<String>, aws: AwsSettings) -> Self {
        DynamoDbConfig {
            table: table.into(),
            key_attribute: default_key_attribute(),
            concurrency: default_concurrency(),
            retry_for: default_retry_for(),
            aws,
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.table.len() < 3
            || self.table.len() > 255
            || !self
                .table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(Error::config(
                "dynamodb.table",
                format!(
                    "`{}` is not a DynamoDB table name: 3 to 255 letters, digits, `_`, `-` and `.`",
                    self.table
                ),
            ));
        }
        if self.key_attribute.is_empty() || is_own(&self.key_attribute, "") {
            return Err(Error::config(
                "dynamodb.key_attribute",
                format!(
                    "must be a name other than {VERSION}, {EXPIRES} and {DELETED}, which the sink keeps"
                ),
            ));
        }
        if self.concurrency == 0 {
            return Err(Error::config("dynamodb.concurrency", "must be at least 1"));
        }
        self.aws.check("dynamodb.aws")
    }

    /// A client, once the table exists.
    pub(crate) async fn client(&self) -> Result<Client> {
        let client = self.aws.dynamodb_client().await;
        match ensure_table(&client, &self.table, &self.key_attribute).await {
            Ok(true) => {
                tracing::info!(table = %self.table, "created the view's DynamoDB table");
                Ok(client)
            }
            Ok(false) => Ok(client),
            Err(text) => Err(Error::connector(
                "dynamodb",
                true,
                format!("DynamoDB table `{}`: {text}", self.table),
            )),
        }
    }
}

/// The key-value sink's DynamoDB backend.
pub(crate) struct DynamoDbStore {
    config: DynamoDbConfig,
    client: OnceCell<Client>,
}

/// DynamoDB's limits on one `BatchWriteItem` request.
const BATCH_ITEMS: usize = 25;
const BATCH_BYTES: usize = 16 * 1024 * 1024;

impl DynamoDbStore {
    pub(crate) fn new(config: DynamoDbConfig) -> Self {
        DynamoDbStore {
            config,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<Client> {
        self.client
            .get_or_try_init(|| self.config.client())
            .await
            .cloned()
    }

    /// The item `write` puts: its key, its value's attributes, and the
    /// sink's own (version, expiry, tombstone).
    fn item(&self, write: &KvWrite) -> Result<HashMap<String, AttributeValue>> {
        let mut item = HashMap::new();
        match &write.value {
            Some(value) => {
                let object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(value).map_err(|e| {
                        Error::internal(format!(
                            "a key-value sink's value is not a JSON object: {e}"
                        ))
                    })?;
                for (name, value) in object {
                    item.insert(name, attribute(value));
                }
                if let Some(expires_at) = write.expires_at {
                    // DynamoDB's time to live counts seconds.
                    let seconds = expires_at.div_euclid(1000);
                    item.insert(EXPIRES.into(), AttributeValue::N(seconds.to_string()));
                }
            }
            None => {
                item.insert(DELETED.into(), AttributeValue::Bool(true));
            }
        }
        if let Some(version) = write.version {
            item.insert(VERSION.into(), AttributeValue::N(version.to_string()));
        }
        item.insert(
            self.config.key_attribute.clone(),
            AttributeValue::S(write.key.clone()),
        );
        Ok(item)
    }

    fn failed(&self, doing: &str, text: String) -> Error {
        Error::connector(
            "dynamodb",
            false,
            format!("{doing} in DynamoDB table `{}`: {text}", self.config.table),
        )
    }

    /// Puts `write`'s item unless the table holds a newer version that
    /// has not expired.
    async fn put_if_newer(&self, client: &Client, write: KvWrite) -> Result<()> {
        let item = self.item(&write)?;
        let version = write.version.unwrap_or(i64::MIN).to_string();
        let now = (wall_clock_millis() / 1000).to_string();
        with_retries(
            "a conditional write to DynamoDB",
            self.config.retry_for,
            |e| matches!(classify(e), ErrorClass::Throttled(_) | ErrorClass::Transient(_)),
            || {
                let request = client
                    .put_item()
                    .table_name(&self.config.table)
                    .set_item(Some(item.clone()))
                    .condition_expression(
                        "attribute_not_exists(#v) OR #v <= :v OR (attribute_exists(#e) AND #e < :now)",
                    )
                    .expression_attribute_names("#v", VERSION)
                    .expression_attribute_names("#e", EXPIRES)
                    .expression_attribute_values(":v", AttributeValue::N(version.clone()))
                    .expression_attribute_values(":now", AttributeValue::N(now.clone()));
                async move {
                    match request.send().await {
                        // The table holds a newer version: nothing to do.
                        Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(()),
                        other => other.map(|_| ()),
                    }
                }
            },
        )
        .await
        .map_err(|e| self.failed("writing", describe(&e)))
    }

    /// Writes `requests` (at most 25) with `BatchWriteItem`, sending what
    /// DynamoDB leaves unprocessed again after a backoff.
    async fn write_batch(&self, client: &Client, mut requests: Vec<WriteRequest>) -> Result<()> {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        while !requests.is_empty() {
            let output = with_retries(
                "a batch write to DynamoDB",
                self.config.retry_for,
                |e| {
                    matches!(
                        classify(e),
                        ErrorClass::Throttled(_) | ErrorClass::Transient(_)
                    )
                },
                || {
                    client
                        .batch_write_item()
                        .request_items(&self.config.table, requests.clone())
                        .send()
                },
            )
            .await
            .map_err(|e| self.failed("writing", describe(&e)))?;
            requests = output
                .unprocessed_items
                .and_then(|mut left| left.remove(&self.config.table))
                .unwrap_or_default();
            if !requests.is_empty() {
                if started.elapsed() > self.config.retry_for {
                    return Err(self.failed(
                        "writing",
                        format!(
                            "{} items stayed unprocessed for {:?}",
                            requests.len(),
                            self.config.retry_for
                        ),
                    ));
                }
                attempt += 1;
                tokio::time::sleep(flumen_clients::aws::jittered(
                    attempt,
                    Duration::from_millis(50),
                ))
                .await;
            }
        }
        Ok(())
    }

    async fn write_all(&self, writes: Vec<KvWrite>) -> Result<()> {
        let client = self.client().await?;
        let (versioned, plain): (Vec<KvWrite>, Vec<KvWrite>) =
            writes.into_iter().partition(|w| w.version.is_some());
        let concurrency = self.config.concurrency;
        let puts = futures::stream::iter(versioned)
            .map(|write| self.put_if_newer(&client, write))
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>();
        let batches = futures::stream::iter(self.batches(plain)?)
            .map(|requests| self.write_batch(&client, requests))
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>();
        futures::try_join!(puts, batches)?;
        Ok(())
    }

    /// Unversioned writes as `BatchWriteItem` requests, within DynamoDB's
    /// bounds on items and bytes.
    fn batches(&self, writes: Vec<KvWrite>) -> Result<Vec<Vec<WriteRequest>>> {
        let built = |e: aws_sdk_dynamodb::error::BuildError| Error::internal(e.to_string());
        // A request may not name a key twice: the last write of a key wins.
        let mut last: HashMap<String, KvWrite> = HashMap::with_capacity(writes.len());
        for write in writes {
            last.insert(write.key.clone(), write);
        }
        let mut batches = Vec::new();
        let mut batch = Vec::new();
        let mut bytes = 0;
        for write in last.into_values() {
            let size = self.item_bytes(&write);
            if batch.len() == BATCH_ITEMS || bytes + size > BATCH_BYTES {
                batches.push(std::mem::take(&mut batch));
                bytes = 0;
            }
            bytes += size;
            let request = match write.value {
                Some(_) => WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(self.item(&write)?))
                            .build()
                            .map_err(built)?,
                    )
                    .build(),
                None => WriteRequest::builder()
                    .delete_request(
                        DeleteRequest::builder()
                            .key(
                                self.config.key_attribute.clone(),
                                AttributeValue::S(write.key),
                            )
                            .build()
                            .map_err(built)?,
                    )
                    .build(),
            };
            batch.push(request);
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        Ok(batches)
    }

    /// About how big `write`'s item is, as DynamoDB counts: names and
    /// values in UTF-8, an upper bound for numbers.
    fn item_bytes(&self, write: &KvWrite) -> usize {
        let own = self.config.key_attribute.len() + write.key.len() + 64;
        own + write.value.as_ref().map_or(0, Vec::len)
    }
}

#[async_trait]
impl Store for DynamoDbStore {
    fn refusal(&self, write: &KvWrite) -> Option<String> {
        let bytes = self.item_bytes(write);
        if bytes > MAX_ITEM_BYTES {
            return Some(format!(
                "its item is about {bytes} bytes; DynamoDB stores items of up to {MAX_ITEM_BYTES}"
            ));
        }
        let value = write.value.as_ref()?;
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(value).ok()?;
        object
            .keys()
            .find(|name| is_own(name, &self.config.key_attribute))
            .map(|name| {
                format!(
                    "value column `{name}` has the name of an attribute the sink keeps (the key's `{}`, {VERSION}, {EXPIRES}, {DELETED}); leave it out of `value`",
                    self.config.key_attribute
                )
            })
    }

    async fn stage(&self, _checkpoint: u64, writes: Vec<KvWrite>) -> Result<serde_json::Value> {
        self.write_all(writes).await?;
        Ok(serde_json::Value::Null)
    }

    /// Written at stage already.
    async fn apply(&self, _checkpoint: u64, _staged: &serde_json::Value) -> Result<()> {
        Ok(())
    }

    async fn write_now(&self, writes: Vec<KvWrite>) -> Result<()> {
        self.write_all(writes).await
    }

    /// Nothing to recover; but the table is made ready before the first
    /// rows arrive, and an unreachable DynamoDB fails the run at once.
    async fn recover(&self, _from: Option<(u64, serde_json::Value)>) -> Result<()> {
        self.client().await.map(|_| ())
    }
}
