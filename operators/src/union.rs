//! Union: merge several streams of one schema into one.

use std::ops::RangeInclusive;

use async_trait::async_trait;
use flumen_core::prelude::*;

/// Merges its inputs, which must share a schema, into one stream (fan-in).
/// Rows from different inputs interleave in arrival order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Union;

impl OperatorFactory for Union {
    fn input_count(&self) -> RangeInclusive<usize> {
        1..=usize::MAX
    }

    fn same_input_schemas(&self) -> bool {
        true
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(inputs[0].clone())
    }

    fn create(&self, _instance: InstanceInfo, _inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Union))
    }
}

#[async_trait]
impl Operator for Union {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        out.emit(batch);
        Ok(())
    }
}
