//! Discards everything: for benchmarks and for trying out a pipeline.

use arrow::record_batch::RecordBatch;
use flumen_core::prelude::*;
use serde::Deserialize;

/// Discards every row; the run summary and metrics still count them.
#[derive(Debug, Clone, Copy, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {}

impl SinkConfig for BlackholeConfig {
    const TYPE: &str = "blackhole";
    const DESCRIPTION: &str = "Discards rows (counting them).";
    type Sink = BlackholeSink;

    /// Returns the sink.
    fn build(&self) -> Result<BlackholeSink> {
        Ok(BlackholeSink)
    }
}

/// A sink that discards everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlackholeSink;

impl SinkFactory for BlackholeSink {
    fn create(&self, _instance: InstanceInfo, _schema: SchemaRef) -> Result<Box<dyn Sink>> {
        Ok(Box::new(BlackholeSink))
    }
}

#[async_trait]
impl Sink for BlackholeSink {
    async fn write(&mut self, _batch: RecordBatch, _ctx: &mut Context) -> Result<()> {
        Ok(())
    }
}
