//! A transform written as a Rust closure over batches.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use flumen_core::prelude::*;

type BatchFn = dyn Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync;

/// Applies a Rust closure to every batch: the way for library users to put
/// their own code in a pipeline.
///
/// The output schema is declared up front, so the graph can be checked
/// before it runs; every batch the closure returns must have it.
///
/// ```
/// use arrow::compute::kernels::cmp::gt;
/// use arrow::array::{Int64Array, AsArray};
/// use arrow::compute::filter_record_batch;
/// use flumen_operators::MapBatches;
///
/// // Keep bids over 100 (the same as `SqlTransform::new().filter("price > 100")`).
/// let expensive = MapBatches::same_schema(|batch| {
///     let price = batch.column_by_name("price").unwrap();
///     let keep = gt(price, &Int64Array::new_scalar(100))?;
///     Ok(filter_record_batch(&batch, &keep)?)
/// });
/// # let _ = expensive;
/// ```
#[derive(Clone)]
pub struct MapBatches {
    schema: Option<SchemaRef>,
    f: Arc<BatchFn>,
}

impl std::fmt::Debug for MapBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapBatches")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl MapBatches {
    /// A closure whose output has this schema.
    pub fn new(
        schema: SchemaRef,
        f: impl Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync + 'static,
    ) -> Self {
        MapBatches {
            schema: Some(schema),
            f: Arc::new(f),
        }
    }

    /// A closure whose output has the input's schema (a filter, say).
    pub fn same_schema(
        f: impl Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync + 'static,
    ) -> Self {
        MapBatches {
            schema: None,
            f: Arc::new(f),
        }
    }
}

impl OperatorFactory for MapBatches {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(self.schema.clone().unwrap_or_else(|| inputs[0].clone()))
    }

    fn create(&self, _instance: InstanceInfo, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        Ok(Box::new(MapInstance {
            schema: self.output_schema(inputs)?,
            f: self.f.clone(),
        }))
    }
}

struct MapInstance {
    schema: SchemaRef,
    f: Arc<BatchFn>,
}

#[async_trait]
impl Operator for MapInstance {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        let output = (self.f)(batch)?;
        if output.schema().fields() != self.schema.fields() {
            return Err(Error::Data(format!(
                "the closure returned columns ({}) other than it declared ({})",
                flumen_core::graph::describe_schema(&output.schema()),
                flumen_core::graph::describe_schema(&self.schema),
            )));
        }
        out.emit(output);
        Ok(())
    }
}
