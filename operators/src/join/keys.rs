//! Join keys: rows of key columns encoded to comparable bytes, and hash
//! tables from keys to rows.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, UInt32Array};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};
use flumen_core::prelude::*;
use flumen_core::schema::column_index;

/// Resolves key column names of one side.
pub(crate) fn key_indices(schema: &Schema, names: &[String], key: &str) -> Result<Vec<usize>> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| column_index(schema, &format!("{key}[{i}]"), name))
        .collect()
}

/// Checks that both sides' keys can be compared: same count, same types.
pub(crate) fn check_key_types(
    left: &Schema,
    left_keys: &[usize],
    right: &Schema,
    right_keys: &[usize],
) -> Result<()> {
    if left_keys.len() != right_keys.len() {
        return Err(Error::config(
            "right_keys",
            format!(
                "has {} columns, but left_keys has {}",
                right_keys.len(),
                left_keys.len()
            ),
        ));
    }
    for (i, (l, r)) in left_keys.iter().zip(right_keys).enumerate() {
        let (l, r) = (left.field(*l), right.field(*r));
        if l.data_type() != r.data_type() {
            return Err(Error::config(
                format!("right_keys[{i}]"),
                format!(
                    "`{}` is {}, but the left key `{}` is {}; keys must have the same type",
                    r.name(),
                    r.data_type(),
                    l.name(),
                    l.data_type()
                ),
            ));
        }
    }
    Ok(())
}

/// Encodes key columns into byte rows that compare equal exactly when the
/// keys are equal.
pub(crate) struct KeyEncoder {
    converter: RowConverter,
    columns: Vec<usize>,
}

impl KeyEncoder {
    pub(crate) fn new(schema: &SchemaRef, columns: Vec<usize>) -> Result<Self> {
        let fields = columns
            .iter()
            .map(|&c| SortField::new(schema.field(c).data_type().clone()))
            .collect();
        Ok(KeyEncoder {
            converter: RowConverter::new(fields)?,
            columns,
        })
    }

    /// The key rows of `batch`, and for each row whether its key has no
    /// nulls (a null key matches nothing, as in SQL).
    pub(crate) fn encode(&self, batch: &RecordBatch) -> Result<(Rows, Vec<bool>)> {
        let keys: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|&c| batch.column(c).clone())
            .collect();
        let rows = self.converter.convert_columns(&keys)?;
        let valid = (0..batch.num_rows())
            .map(|row| keys.iter().all(|k| k.is_valid(row)))
            .collect();
        Ok((rows, valid))
    }
}

impl KeyEncoder {
    /// The key columns of keys [`KeyEncoder::encode`] made.
    pub(crate) fn decode<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        let rows = keys.into_iter().map(|key| parser.parse(key));
        Ok(self.converter.convert_rows(rows)?)
    }

    /// Encodes key columns as they are (not picked out of a batch).
    pub(crate) fn encode_columns(&self, columns: &[ArrayRef]) -> Result<Rows> {
        Ok(self.converter.convert_columns(columns)?)
    }
}

/// Rows of one batch by key.
pub(crate) struct KeyTable {
    rows: HashMap<Box<[u8]>, Vec<u32>>,
}

impl KeyTable {
    /// Indexes the rows of `batch` by key (rows with a null key are left
    /// out).
    pub(crate) fn build(encoder: &KeyEncoder, batch: &RecordBatch) -> Result<Self> {
        let (keys, valid) = encoder.encode(batch)?;
        let mut rows: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        for (row, valid) in valid.iter().enumerate() {
            if *valid {
                rows.entry(Box::from(keys.row(row).as_ref()))
                    .or_default()
                    .push(row as u32);
            }
        }
        Ok(KeyTable { rows })
    }

    /// The matching rows for each probe row: pairs of (probe row, table
    /// row), and with `keep_unmatched`, (probe row, null) for probe rows
    /// without a match.
    pub(crate) fn probe(
        &self,
        encoder: &KeyEncoder,
        probe: &RecordBatch,
        keep_unmatched: bool,
    ) -> Result<(UInt32Array, UInt32Array)> {
        let (keys, valid) = encoder.encode(probe)?;
        let mut probe_rows = Vec::new();
        let mut table_rows: Vec<Option<u32>> = Vec::new();
        for (row, valid) in valid.iter().enumerate() {
            let matches = valid
                .then(|| self.rows.get(keys.row(row).as_ref()))
                .flatten();
            match matches {
                Some(matches) => {
                    for m in matches {
                        probe_rows.push(row as u32);
                        table_rows.push(Some(*m));
                    }
                }
                None if keep_unmatched => {
                    probe_rows.push(row as u32);
                    table_rows.push(None);
                }
                None => {}
            }
        }
        Ok((UInt32Array::from(probe_rows), UInt32Array::from(table_rows)))
    }

    /// How many rows the table indexes.
    /// Approximate memory the index takes, in bytes.
    pub(crate) fn size(&self) -> usize {
        self.rows
            .iter()
            .map(|(key, rows)| key.len() + rows.capacity() * 4 + 48)
            .sum()
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.values().map(Vec::len).sum()
    }
}
