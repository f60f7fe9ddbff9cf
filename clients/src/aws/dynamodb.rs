//! DynamoDB tables the AWS components keep for themselves (a Kinesis lease
//! table, a key-value view): created on first use.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};

use super::{ErrorClass, classify, describe, jittered};

/// Creates table `name` (on-demand billing, partition key `key`, a
/// string) unless it exists, and waits until it can be used, for up to
/// 30 s. Returns whether it created it, or why it could not.
pub async fn ensure_table(client: &Client, name: &str, key: &str) -> Result<bool, String> {
    let mut created = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 1u32.. {
        if Instant::now() > deadline {
            break;
        }
        match client.describe_table().table_name(name).send().await {
            Ok(output) => {
                let status = output.table().and_then(|t| t.table_status());
                if status == Some(&TableStatus::Active) {
                    return Ok(created);
                }
            }
            Err(error) if error.code() == Some("ResourceNotFoundException") && !created => {
                create_table(client, name, key).await?;
                created = true;
                continue;
            }
            Err(error) => match classify(&error) {
                ErrorClass::Throttled(text) | ErrorClass::Transient(text) => {
                    tracing::warn!(table = %name, error = %text, "could not reach the table; trying again");
                }
                _ => return Err(format!("describing the table: {}", describe(&error))),
            },
        }
        tokio::time::sleep(jittered(attempt.min(4), Duration::from_millis(250))).await;
    }
    Err("it could not be reached, or did not become active, within 30s".into())
}

async fn create_table(client: &Client, name: &str, key: &str) -> Result<(), String> {
    let built = |e: aws_sdk_dynamodb::error::BuildError| e.to_string();
    let result = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(built)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(key)
                .key_type(KeyType::Hash)
                .build()
                .map_err(built)?,
        )
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        // Another process created it first.
        Err(error) if error.code() == Some("ResourceInUseException") => Ok(()),
        Err(error) => Err(format!("creating the table: {}", describe(&error))),
    }
}
