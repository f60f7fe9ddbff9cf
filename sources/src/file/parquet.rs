//! Parquet files: row groups shared out between instances.

use std::ops::Range;

use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use flumen_core::prelude::*;
use flumen_core::storage::Location;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryFutureExt};
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{
    AsyncFileReader, ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder,
};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

/// Reads a Parquet file of known size from an object store.
#[derive(Debug, Clone)]
pub(super) struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: object_store::path::Path,
    size: u64,
}

fn parquet_error(error: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(error))
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.store
            .get_range(&self.path, range)
            .map_err(parquet_error)
            .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(parquet_error)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Reads the row groups of one instance, converting batches to the
/// declared schema.
pub(super) struct ParquetSplitReader {
    stream: ParquetRecordBatchStream<ObjectReader>,
    schema: SchemaRef,
}

impl ParquetSplitReader {
    /// Opens the file and selects row groups `index`, `index + parallelism`,
    /// ...; `None` if there are none for this instance.
    pub(super) async fn open(
        location: &Location,
        size: u64,
        schema: SchemaRef,
        batch_size: usize,
        instance: InstanceInfo,
    ) -> Result<Option<Self>> {
        let reader = ObjectReader {
            store: location.store.clone(),
            path: location.path.clone(),
            size,
        };
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| {
                Error::Data(format!(
                    "{}: not a readable Parquet file: {e}",
                    location.display
                ))
            })?;
        let row_groups: Vec<usize> = (instance.index..builder.metadata().num_row_groups())
            .step_by(instance.parallelism)
            .collect();
        if row_groups.is_empty() {
            return Ok(None);
        }
        let file_schema = builder.schema().clone();
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let index = file_schema.index_of(field.name()).map_err(|_| {
                Error::Data(format!(
                    "{}: has no column `{}`",
                    location.display,
                    field.name()
                ))
            })?;
            columns.push(index);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), columns);
        let stream = builder
            .with_projection(mask)
            .with_row_groups(row_groups)
            .with_batch_size(batch_size)
            .build()
            .map_err(|e| Error::Data(format!("{}: {e}", location.display)))?;
        Ok(Some(ParquetSplitReader { stream, schema }))
    }

    pub(super) async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let Some(batch) = self.stream.next().await else {
            return Ok(None);
        };
        let batch = batch.map_err(|e| Error::Data(e.to_string()))?;
        Ok(Some(conform(batch, &self.schema)?))
    }
}

/// Orders columns as the schema declares them and casts those whose type
/// differs.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let column = batch.column_by_name(field.name()).ok_or_else(|| {
                Error::internal(format!("projected column `{}` is missing", field.name()))
            })?;
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                Ok(cast(column, field.data_type())?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
