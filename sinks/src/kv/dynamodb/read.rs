//! Reading a DynamoDB view, for `flumen kv`: live items only (not
//! tombstones, not expired ones DynamoDB has yet to remove).

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, Select};

use flumen_clients::aws::describe;
use flumen_core::prelude::*;

use super::DynamoDbConfig;
use super::item::{DELETED, EXPIRES, VERSION, value_of};
use crate::kv::{Entry, wall_clock_millis};

/// A DynamoDB view opened for reading.
pub(crate) struct DynamoDbReader {
    client: Client,
    table: String,
    key_attribute: String,
}

/// What makes an item live: not a tombstone, not expired.
const LIVE: &str = "attribute_not_exists(#d) AND (attribute_not_exists(#e) OR #e > :now)";

impl DynamoDbReader {
    pub(crate) async fn open(config: &DynamoDbConfig) -> Result<Self> {
        let client = config.aws.dynamodb_client().await;
        Ok(DynamoDbReader {
            client,
            table: config.table.clone(),
            key_attribute: config.key_attribute.clone(),
        })
    }

    fn failed(&self, doing: &str, text: String) -> Error {
        Error::connector(
            "dynamodb",
            true,
            format!("{doing} DynamoDB table `{}`: {text}", self.table),
        )
    }

    fn entry(&self, item: &HashMap<String, AttributeValue>) -> Option<Entry> {
        let number = |name: &str| match item.get(name) {
            Some(AttributeValue::N(n)) => n.parse::<i64>().ok(),
            _ => None,
        };
        let expires_at = number(EXPIRES).map(|seconds| seconds * 1000);
        if item.contains_key(DELETED) || expires_at.is_some_and(|at| at <= wall_clock_millis()) {
            return None;
        }
        let key = match item.get(&self.key_attribute) {
            Some(AttributeValue::S(key)) => key.clone(),
            _ => return None,
        };
        Some(Entry {
            key,
            value: value_of(item, &self.key_attribute),
            version: number(VERSION),
            expires_at,
        })
    }

    /// The value of `key`, read consistently.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(&self.key_attribute, AttributeValue::S(key.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.failed("reading", describe(&e)))?;
        Ok(output.item.as_ref().and_then(|item| self.entry(item)))
    }

    /// Up to `limit` live items whose key starts with `prefix`, in the
    /// table's order, after the key `after` (a previous page's cursor);
    /// also the cursor of the next page, if there may be one.
    pub(crate) async fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<String>)> {
        let mut entries = Vec::new();
        let mut start = after.map(|key| {
            HashMap::from([(self.key_attribute.clone(), AttributeValue::S(key.into()))])
        });
        while entries.len() < limit {
            let output = self
                .filtered_scan(prefix)
                .set_exclusive_start_key(start)
                .limit((limit - entries.len()).min(1000) as i32)
                .send()
                .await
                .map_err(|e| self.failed("scanning", describe(&e)))?;
            entries.extend(output.items().iter().filter_map(|item| self.entry(item)));
            start = output.last_evaluated_key;
            if start.is_none() {
                return Ok((entries, None));
            }
        }
        let next = entries.last().map(|e| e.key.clone());
        Ok((entries, next))
    }

    /// How many live items have a key that starts with `prefix`.
    pub(crate) async fn count(&self, prefix: &str) -> Result<u64> {
        let mut count = 0;
        let mut start = None;
        loop {
            let output = self
                .filtered_scan(prefix)
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.failed("counting", describe(&e)))?;
            count += output.count.max(0) as u64;
            start = output.last_evaluated_key;
            if start.is_none() {
                return Ok(count);
            }
        }
    }

    /// A consistent scan of live items with keys starting with `prefix`.
    fn filtered_scan(
        &self,
        prefix: &str,
    ) -> aws_sdk_dynamodb::operation::scan::builders::ScanFluentBuilder {
        let mut scan = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .expression_attribute_names("#d", DELETED)
            .expression_attribute_names("#e", EXPIRES)
            .expression_attribute_values(
                ":now",
                AttributeValue::N((wall_clock_millis() / 1000).to_string()),
            );
        if prefix.is_empty() {
            scan = scan.filter_expression(LIVE);
        } else {
            scan = scan
                .filter_expression(format!("{LIVE} AND begins_with(#k, :prefix)"))
                .expression_attribute_names("#k", &self.key_attribute)
                .expression_attribute_values(":prefix", AttributeValue::S(prefix.into()));
        }
        scan
    }
}
