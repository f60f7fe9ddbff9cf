//! Changelogs: batches whose rows are updates to a keyed view rather than
//! events. A changelog has a column [`OP`] saying what each row does to
//! the row of its key: [`Op::Upsert`] sets it (inserted, or replaced with
//! the row's values), [`Op::Delete`] removes it. Operators that keep a
//! view current (a running aggregate, a running top-N) emit changelogs;
//! sinks that keep a view (the key-value sink) apply them, and any other
//! sink writes the column like any other.

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field};
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// The name of the column that says what a changelog row does.
pub const OP: &str = "_op";

/// What a changelog row does to the row of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Sets the key's row to this one.
    Upsert,
    /// Removes the key's row.
    Delete,
}

impl Op {
    /// How the op is written in the [`OP`] column.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
        }
    }
}

/// The [`OP`] column's field.
pub fn op_field() -> Field {
    Field::new(OP, DataType::Utf8, false)
}

/// An [`OP`] column of `rows` rows, all `op`.
pub fn op_column(op: Op, rows: usize) -> ArrayRef {
    std::sync::Arc::new(StringArray::from(vec![op.as_str(); rows]))
}

/// The op of every row of `batch`, or `None` if it is not a changelog
/// (every row is then an upsert, as an event is).
pub fn ops(batch: &RecordBatch) -> Result<Option<Vec<Op>>> {
    let Some(column) = batch.column_by_name(OP) else {
        return Ok(None);
    };
    let Some(text) = column.as_any().downcast_ref::<StringArray>() else {
        return Err(Error::Data(format!(
            "column `{OP}` is {}, not the text of a changelog (`upsert` or `delete`)",
            column.data_type()
        )));
    };
    (0..text.len())
        .map(|i| match text.is_valid(i).then(|| text.value(i)) {
            Some("upsert") => Ok(Op::Upsert),
            Some("delete") => Ok(Op::Delete),
            other => Err(Error::Data(format!(
                "column `{OP}` holds {other:?}; a changelog row is `upsert` or `delete`"
            ))),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Schema;
    use std::sync::Arc;

    #[test]
    fn ops_are_read_back_as_written_and_other_text_is_an_error() {
        let schema = Arc::new(Schema::new(vec![op_field()]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec!["upsert", "delete"]))],
        )
        .unwrap();
        assert_eq!(ops(&batch).unwrap(), Some(vec![Op::Upsert, Op::Delete]));
        let wrong = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["insert"]))])
            .unwrap();
        assert!(ops(&wrong).is_err());
        let events = RecordBatch::new_empty(Arc::new(Schema::empty()));
        assert_eq!(ops(&events).unwrap(), None);
    }
}
