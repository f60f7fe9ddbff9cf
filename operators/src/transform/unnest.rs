//! Unnest: one output row per element of a list column.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, GenericListArray, OffsetSizeTrait, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use async_trait::async_trait;
use flumen_core::prelude::*;
use flumen_core::schema::column_index;

/// Turns each row into one row per element of a list column (a flat-map):
/// the list column becomes its element, the other columns repeat. Rows
/// whose list is empty or null produce nothing, as SQL's `UNNEST` does.
///
/// Vectorized: one pass over the list offsets builds the row indices, then
/// Arrow's `take` repeats the other columns.
#[derive(Debug, Clone)]
pub struct Unnest {
    column: String,
}

impl Unnest {
    /// Unnests the list column `column`.
    pub fn new(column: impl Into<String>) -> Self {
        Unnest {
            column: column.into(),
        }
    }

    fn plan(&self, input: &SchemaRef) -> Result<(usize, SchemaRef)> {
        let index = column_index(input, "column", &self.column)?;
        let field = input.field(index);
        let item = match field.data_type() {
            DataType::List(item) | DataType::LargeList(item) => item,
            other => {
                return Err(Error::config(
                    "column",
                    format!(
                        "column `{}` is {other}, expected a list to unnest",
                        self.column
                    ),
                ));
            }
        };
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields[index] = Field::new(field.name(), item.data_type().clone(), item.is_nullable());
        // Every other column, the event time among them, is kept as it was.
        let schema = Schema::new(fields).with_metadata(input.metadata().clone());
        Ok((index, Arc::new(schema)))
    }
}

impl OperatorFactory for Unnest {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(self.plan(&inputs[0])?.1)
    }

    fn create(&self, _instance: InstanceInfo, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        let (column, schema) = self.plan(&inputs[0])?;
        Ok(Box::new(UnnestInstance { column, schema }))
    }
}

struct UnnestInstance {
    column: usize,
    schema: SchemaRef,
}

#[async_trait]
impl Operator for UnnestInstance {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        let list = batch.column(self.column);
        let (rows, values) = match list.data_type() {
            DataType::List(_) => unnest_list(list.as_list::<i32>())?,
            _ => unnest_list(list.as_list::<i64>())?,
        };
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (i, column) in batch.columns().iter().enumerate() {
            columns.push(if i == self.column {
                values.clone()
            } else {
                take(column, &rows, None)?
            });
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        out.emit(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?);
        Ok(())
    }
}

/// For each element, the row it came from; and the elements themselves.
fn unnest_list<O: OffsetSizeTrait>(list: &GenericListArray<O>) -> Result<(UInt32Array, ArrayRef)> {
    let offsets = list.value_offsets();
    let first = offsets[0].as_usize();
    let total = offsets[list.len()].as_usize() - first;
    let mut rows = Vec::with_capacity(total);
    let mut elements = (list.null_count() > 0).then(|| Vec::with_capacity(total));
    for (row, window) in offsets.windows(2).enumerate() {
        // A null list may still span elements; they are not part of it.
        if list.is_null(row) {
            continue;
        }
        let (start, end) = (window[0].as_usize(), window[1].as_usize());
        rows.extend(std::iter::repeat_n(row as u32, end - start));
        if let Some(elements) = &mut elements {
            elements.extend((start as u32)..(end as u32));
        }
    }
    let values = match elements {
        // Without nulls the elements are one contiguous slice.
        None => list.values().slice(first, total),
        Some(elements) => take(list.values(), &UInt32Array::from(elements), None)?,
    };
    Ok((UInt32Array::from(rows), values))
}
