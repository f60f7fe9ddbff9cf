//! Columns of JSON records inferred from a sample of the stream.

use std::time::Duration;

use arrow::datatypes::SchemaRef;
use aws_sdk_kinesis::types::ShardIteratorType;

use flumen_clients::aws::describe;
use flumen_core::prelude::*;

use super::aggregated::deaggregate;
use super::config::KinesisSourceConfig;
use super::{StreamId, list_shards};

/// Reads up to `sample_size` records from the start of the stream's
/// shards (nothing is recorded anywhere) and infers their columns. Runs
/// on a thread of its own, so that it works inside a runtime or not.
pub(super) fn infer_schema(config: &KinesisSourceConfig) -> Result<SchemaRef> {
    let config = config.clone();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::internal(e.to_string()))?
                    .block_on(sample(&config))
            })
            .join()
            .map_err(|_| Error::internal("the schema sampler panicked"))?
    })
}

async fn sample(config: &KinesisSourceConfig) -> Result<SchemaRef> {
    let client = config.aws.kinesis_client().await;
    let stream = StreamId::new(&config.stream);
    let shards = list_shards(&client, &stream).await?;
    let mut lines = Vec::new();
    let mut taken = 0;
    for shard in shards {
        if taken >= config.sample_size {
            break;
        }
        let iterator = client
            .get_shard_iterator()
            .set_stream_name(stream.name())
            .set_stream_arn(stream.arn())
            .shard_id(&shard.id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .map_err(|e| {
                Error::config(
                    "schema",
                    format!("could not sample the stream: {}", describe(&e)),
                )
            })?;
        let mut iterator = iterator.shard_iterator().map(str::to_string);
        // A few calls per shard: an empty answer does not prove the shard
        // empty (records can be further on), but the sample need not be
        // exhaustive.
        for _ in 0..3 {
            let Some(current) = iterator.take() else {
                break;
            };
            let output = client
                .get_records()
                .shard_iterator(current)
                .limit(config.sample_size.clamp(1, 10_000) as i32)
                .send()
                .await
                .map_err(|e| {
                    Error::config(
                        "schema",
                        format!("could not sample the stream: {}", describe(&e)),
                    )
                })?;
            for record in output.records() {
                let data = record.data().as_ref();
                match deaggregate(data) {
                    Some(users) => {
                        for user in users {
                            lines.extend_from_slice(user.data);
                            lines.push(b'\n');
                            taken += 1;
                        }
                    }
                    None => {
                        lines.extend_from_slice(data);
                        lines.push(b'\n');
                        taken += 1;
                    }
                }
            }
            if taken >= config.sample_size || output.millis_behind_latest() == Some(0) {
                break;
            }
            iterator = output.next_shard_iterator().map(str::to_string);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    crate::payload::infer_json(&lines, taken, &format!("stream {}", config.stream))
}
