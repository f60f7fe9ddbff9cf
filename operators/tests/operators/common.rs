//! Helpers shared by the operator tests.

use std::io::Cursor;
use std::sync::Arc;

use arrow::compute::concat_batches;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use flumen_core::prelude::{RunOptions, Snapshot};

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

/// The snapshot as a restarted process reads it back: values through JSON
/// text, tables through Arrow IPC files, as the checkpoint store keeps
/// them.
pub fn through_storage(snapshot: Snapshot) -> Snapshot {
    let keyed = snapshot.keyed;
    let tables = snapshot
        .tables
        .into_iter()
        .map(|(name, table)| {
            let mut bytes = Vec::new();
            let mut writer = FileWriter::try_new(&mut bytes, &table.schema()).unwrap();
            writer.write(&table).unwrap();
            writer.finish().unwrap();
            drop(writer);
            let reader = FileReader::try_new(Cursor::new(bytes), None).unwrap();
            let schema = reader.schema();
            let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
            (name, concat_batches(&schema, &batches).unwrap())
        })
        .collect();
    let values = serde_json::from_str(&snapshot.values.to_string()).unwrap();
    Snapshot {
        values,
        tables,
        keyed,
    }
}
