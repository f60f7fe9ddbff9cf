//! Values a text encoding cannot write.
//!
//! Arrow holds timestamps, dates, times and durations as plain integers, so
//! a column can hold a value no calendar can show: the timestamp
//! `9223372036854775807` in milliseconds is some 292 million years away,
//! past what `chrono` (and so Arrow's formatting) represents. Arrow's JSON
//! writer, its casts to text and its table printer then write the text
//! `ERROR: Cast error: …` in place of the value, as if it were data.
//!
//! Every sink that writes text checks its batches here first: a row with
//! such a value is rejected (it goes to the dead letters, naming the column
//! and the value) and the rest is written. A check costs one minimum and one
//! maximum per temporal column; only a batch that holds a bad value is
//! looked at row by row.

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BooleanArray, PrimitiveArray, RecordBatch,
};
use arrow::compute::{max, min};
use arrow::datatypes::*;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::dead_letter::Rejected;
use crate::error::Result;

/// A row of a batch holding a value that cannot be written as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwritable {
    /// The row.
    pub row: usize,
    /// Why, in a user's terms: ``column `at`: 9223372036854775807 is out
    /// of range for Timestamp(ms)``.
    pub reason: String,
}

/// The rows of `batch` holding a value that cannot be written as text, in
/// row order, at most one per row (the first column's).
pub fn unwritable_rows(batch: &RecordBatch) -> Vec<Unwritable> {
    let mut found: Vec<Unwritable> = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        for (row, value) in bad_values(column.as_ref()) {
            found.push(Unwritable {
                row,
                reason: format!(
                    "column `{}`: {value} is out of range for {}",
                    field.name(),
                    field.data_type()
                ),
            });
        }
    }
    found.sort_by_key(|u| u.row);
    found.dedup_by_key(|u| u.row);
    found
}

/// Splits `batch` into the rows every text encoding can write and the
/// others, rejected with the reason.
pub fn split_writable(batch: RecordBatch) -> Result<(RecordBatch, Vec<Rejected>)> {
    let unwritable = unwritable_rows(&batch);
    if unwritable.is_empty() {
        return Ok((batch, Vec::new()));
    }
    let mut keep = vec![true; batch.num_rows()];
    let mut rejected = Vec::with_capacity(unwritable.len());
    for Unwritable { row, reason } in unwritable {
        keep[row] = false;
        rejected.extend(Rejected::rows(&batch.slice(row, 1), &reason)?);
    }
    let kept = arrow::compute::filter_record_batch(&batch, &BooleanArray::from(keep))?;
    Ok((kept, rejected))
}

/// `column` with every value that cannot be written as text made null: what
/// a rejected row shows of it (beside the error naming the value).
pub(crate) fn without_unwritable(column: &ArrayRef) -> Result<ArrayRef> {
    let bad = bad_values(column.as_ref());
    if bad.is_empty() {
        return Ok(column.clone());
    }
    let mut keep = vec![true; column.len()];
    for (row, _) in bad {
        keep[row] = false;
    }
    let nulls = arrow::compute::kernels::boolean::not(&BooleanArray::from(keep))?;
    Ok(arrow::compute::nullif(column.as_ref(), &nulls)?)
}

/// The indices of `array` (as this array counts them) whose value cannot
/// be written, each with the value as a number.
fn bad_values(array: &dyn Array) -> Vec<(usize, String)> {
    macro_rules! primitive {
        ($t:ty) => {
            bad_primitives::<$t>(array)
        };
    }
    match array.data_type() {
        DataType::Date32 => primitive!(Date32Type),
        DataType::Date64 => primitive!(Date64Type),
        DataType::Time32(TimeUnit::Second) => primitive!(Time32SecondType),
        DataType::Time32(_) => primitive!(Time32MillisecondType),
        DataType::Time64(TimeUnit::Microsecond) => primitive!(Time64MicrosecondType),
        DataType::Time64(_) => primitive!(Time64NanosecondType),
        DataType::Timestamp(TimeUnit::Second, _) => primitive!(TimestampSecondType),
        DataType::Timestamp(TimeUnit::Millisecond, _) => primitive!(TimestampMillisecondType),
        DataType::Timestamp(TimeUnit::Microsecond, _) => primitive!(TimestampMicrosecondType),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => primitive!(TimestampNanosecondType),
        DataType::Duration(TimeUnit::Second) => primitive!(DurationSecondType),
        DataType::Duration(TimeUnit::Millisecond) => primitive!(DurationMillisecondType),
        DataType::Duration(TimeUnit::Microsecond) => primitive!(DurationMicrosecondType),
        DataType::Duration(TimeUnit::Nanosecond) => primitive!(DurationNanosecondType),
        DataType::Struct(_) => {
            let array = array.as_struct();
            let mut bad: Vec<(usize, String)> = array
                .columns()
                .iter()
                .flat_map(|child| bad_values(child.as_ref()))
                .filter(|(row, _)| array.is_valid(*row))
                .collect();
            bad.sort_by_key(|(row, _)| *row);
            bad
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            in_lists(list.values().as_ref(), list.value_offsets(), array)
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            in_lists(list.values().as_ref(), list.value_offsets(), array)
        }
        DataType::FixedSizeList(_, size) => {
            let list = array.as_fixed_size_list();
            let size = (*size).max(1) as usize;
            bad_values(list.values().as_ref())
                .into_iter()
                .map(|(i, value)| (i / size, value))
                .filter(|(row, _)| array.is_valid(*row))
                .collect()
        }
        DataType::Map(..) => {
            let map = array.as_map();
            in_lists(map.entries(), map.value_offsets(), array)
        }
        _ => Vec::new(),
    }
}

/// Maps the bad values of a list's child array to the lists holding them.
fn in_lists<O: arrow::array::OffsetSizeTrait>(
    values: &dyn Array,
    offsets: &[O],
    lists: &dyn Array,
) -> Vec<(usize, String)> {
    bad_values(values)
        .into_iter()
        .filter_map(|(i, value)| {
            // The list whose range holds child `i`: the last one starting
            // at or before it.
            let row = offsets
                .partition_point(|o| o.as_usize() <= i)
                .checked_sub(1)?;
            (row < lists.len() && lists.is_valid(row)).then_some((row, value))
        })
        .collect()
}

fn bad_primitives<T>(array: &dyn Array) -> Vec<(usize, String)>
where
    T: ArrowPrimitiveType,
    T::Native: std::fmt::Display,
{
    let array = array.as_primitive::<T>();
    let (Some(lowest), Some(highest)) = (min(array), max(array)) else {
        return Vec::new(); // empty or all null
    };
    // What can be written is one range of values: if both ends of the
    // column's are in it, so is everything between.
    let ends = PrimitiveArray::<T>::from_iter_values([lowest, highest])
        .with_data_type(array.data_type().clone());
    if writable(&ends).all(|ok| ok) {
        return Vec::new();
    }
    writable(array)
        .enumerate()
        .filter(|(i, ok)| !ok && array.is_valid(*i))
        .map(|(i, _)| (i, array.value(i).to_string()))
        .collect()
}

/// Whether each value of `array` can be formatted, as Arrow's writers
/// would format it.
fn writable(array: &dyn Array) -> impl Iterator<Item = bool> + '_ {
    let formatter = ArrayFormatter::try_new(array, &FormatOptions::new());
    let mut text = String::new();
    (0..array.len()).map(move |i| match &formatter {
        Ok(formatter) => {
            text.clear();
            array.is_null(i) || formatter.value(i).write(&mut text).is_ok()
        }
        Err(_) => false,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, ListArray, StructArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn timestamps_past_the_calendar_are_found_with_their_column_and_value() {
        let at: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![
            Some(0),
            Some(i64::MAX),
            None,
            Some(1_700_000_000_000),
            Some(i64::MIN),
        ]));
        let id: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5]));
        let rows = unwritable_rows(&batch(vec![("id", id), ("at", at)]));
        assert_eq!(
            rows,
            [
                Unwritable {
                    row: 1,
                    reason: "column `at`: 9223372036854775807 is out of range for Timestamp(ms)"
                        .into()
                },
                Unwritable {
                    row: 4,
                    reason: "column `at`: -9223372036854775808 is out of range for Timestamp(ms)"
                        .into()
                },
            ]
        );
    }

    #[test]
    fn split_keeps_the_writable_rows_and_rejects_the_rest() {
        let at: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![
            0,
            i64::MAX,
            86_400_000,
        ]));
        let id: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let (kept, rejected) = split_writable(batch(vec![("id", id), ("at", at)])).unwrap();
        assert_eq!(kept.num_rows(), 2);
        assert_eq!(rejected.len(), 1);
        // The rejected row shows the bad value as null, never an error text.
        assert_eq!(rejected[0].record, r#"{"id":2}"#);
        assert!(rejected[0].error.contains("9223372036854775807"));
    }

    #[test]
    fn values_inside_lists_and_structs_are_found_by_row() {
        let item = Arc::new(Field::new(
            "item",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ));
        let values = TimestampMillisecondArray::from(vec![0, 1, i64::MAX, 2]);
        let lists = ListArray::new(
            item,
            arrow::buffer::OffsetBuffer::new(vec![0, 2, 2, 4].into()),
            Arc::new(values),
            None,
        );
        assert_eq!(bad_values(&lists), [(2, i64::MAX.to_string())]);
        let inner: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![i64::MAX, 0]));
        let structs = StructArray::from(vec![(
            Arc::new(Field::new("at", inner.data_type().clone(), true)),
            inner,
        )]);
        assert_eq!(bad_values(&structs), [(0, i64::MAX.to_string())]);
    }

    #[test]
    fn an_ordinary_batch_is_left_alone() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        )]));
        let at: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![0, 1_700_000_000_000]));
        let batch = RecordBatch::try_new(schema, vec![at]).unwrap();
        assert!(unwritable_rows(&batch).is_empty());
    }
}
