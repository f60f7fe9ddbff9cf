//! Helpers shared by the operator tests.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use flumen_core::prelude::RunOptions;

/// Rows of a result as sorted lines, so that results compare regardless of
/// the order instances and partitions finished in.
pub fn sorted_lines(batches: &[RecordBatch]) -> Vec<String> {
    let non_empty: Vec<RecordBatch> = batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .cloned()
        .collect();
    if non_empty.is_empty() {
        return Vec::new();
    }
    let text = pretty_format_batches(&non_empty).unwrap().to_string();
    let mut lines: Vec<String> = text
        .lines()
        .skip(3)
        .filter(|l| !l.starts_with('+'))
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// Column names and types of a result.
pub fn header(batches: &[RecordBatch]) -> Vec<String> {
    batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect()
}

/// DataFusion's answer to `sql` over the named tables.
pub async fn query(tables: &[(&str, Vec<RecordBatch>)], sql: &str) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    for (name, batches) in tables {
        let schema = batches[0].schema();
        let table = MemTable::try_new(schema, vec![batches.clone()]).unwrap();
        ctx.register_table(*name, Arc::new(table)).unwrap();
    }
    let frame = ctx.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    frame
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Run options for tests: no signal handling.
pub fn quiet() -> RunOptions {
    RunOptions {
        handle_signals: false,
        ..RunOptions::default()
    }
}
