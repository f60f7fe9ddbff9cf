//! Filter and projection written as SQL expressions, planned once with
//! DataFusion and evaluated per batch as physical expressions.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use async_trait::async_trait;
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use flumen_core::event_time::{event_time_column, with_event_time};
use flumen_core::prelude::*;
use flumen_core::sql::{condition, parse, physical};

/// Keeps the rows matching a SQL predicate and/or computes new columns from
/// SQL expressions.
///
/// `select` items are SQL expressions with an optional alias; `*` stands for
/// every input column. The filter runs first, so `select` sees only the
/// rows that pass.
///
/// ```
/// use flumen_operators::SqlTransform;
///
/// // Nexmark q1: prices in euros.
/// let q1 = SqlTransform::new()
///     .select(["auction", "bidder", "price * 0.908 AS price_eur", "date_time"]);
/// // Nexmark q2: bids on a few auctions.
/// let q2 = SqlTransform::new()
///     .filter("auction % 123 = 0")
///     .select(["auction", "price"]);
/// # let _ = (q1, q2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct SqlTransform {
    filter: Option<String>,
    select: Option<Vec<String>>,
}

impl SqlTransform {
    /// A transform that passes everything through until given a filter or
    /// a projection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps only the rows for which `predicate` is true (not false or
    /// null).
    pub fn filter(mut self, predicate: impl Into<String>) -> Self {
        self.filter = Some(predicate.into());
        self
    }

    /// Replaces the columns with these expressions.
    pub fn select<S: Into<String>>(mut self, expressions: impl IntoIterator<Item = S>) -> Self {
        self.select = Some(expressions.into_iter().map(Into::into).collect());
        self
    }

    /// Plans the expressions against the input schema: names are resolved,
    /// types checked and coerced, once.
    fn plan(&self, input: &SchemaRef) -> Result<Plan> {
        let ctx = flumen_core::sql::context();
        let df_schema = DFSchema::try_from(input.as_ref().clone())?;

        let filter = match &self.filter {
            Some(sql) => Some(condition(&ctx, sql, &df_schema, "filter")?),
            None => None,
        };

        let Some(select) = &self.select else {
            return Ok(Plan {
                filter,
                columns: None,
                projection: None,
                schema: input.clone(),
            });
        };
        // Parse every item against the whole input first, so that errors
        // name the item as written.
        let mut items = Vec::with_capacity(select.len());
        for (i, sql) in select.iter().enumerate() {
            items.push(match sql.trim() {
                "*" => None,
                _ => Some(parse(&ctx, sql, &df_schema, &format!("select[{i}]"))?),
            });
        }
        // With a filter, only the columns the projection reads need
        // filtering: narrowing the batch first saves copying the others.
        let used: BTreeSet<usize> = match items.iter().any(Option::is_none) {
            true => (0..input.fields().len()).collect(),
            false => items
                .iter()
                .flatten()
                .flat_map(|expr| expr.column_refs())
                .filter_map(|column| input.index_of(&column.name).ok())
                .collect(),
        };
        let columns = (filter.is_some() && used.len() < input.fields().len())
            .then(|| used.into_iter().collect::<Vec<_>>());
        let projected_input = match &columns {
            Some(columns) => Arc::new(input.project(columns)?),
            None => input.clone(),
        };
        let projected_df = DFSchema::try_from(projected_input.as_ref().clone())?;

        let mut fields = Vec::new();
        let mut exprs = Vec::new();
        for item in items {
            let Some(expr) = item else {
                for (index, field) in projected_input.fields().iter().enumerate() {
                    fields.push(field.as_ref().clone());
                    exprs.push(Arc::new(Column::new(field.name(), index)) as Arc<dyn PhysicalExpr>);
                }
                continue;
            };
            let name = output_name(&expr);
            let physical = physical(&ctx, expr, &projected_df)?;
            let data_type = physical.data_type(&projected_input)?;
            let nullable = physical.nullable(&projected_input)?;
            fields.push(Field::new(name, data_type, nullable));
            exprs.push(physical);
        }
        let mut schema = Arc::new(Schema::new(fields));
        // The event-time column stays the event-time column if it is kept
        // as it was.
        if let Some(time) = event_time_column(input)
            && let Some(field) = schema.fields().find(time).map(|(_, f)| f.clone())
            && field.data_type() == input.field_with_name(time)?.data_type()
            && kept_as_is(select, time)
        {
            schema = with_event_time(&schema, time);
        }
        if let Some(duplicate) = first_duplicate(&schema) {
            return Err(Error::config(
                "select",
                format!(
                    "column `{duplicate}` is produced twice; give one of them another name with AS"
                ),
            ));
        }
        Ok(Plan {
            filter,
            columns,
            projection: Some(exprs),
            schema,
        })
    }
}

/// The alias if there is one, the column name for a bare column, the SQL
/// text otherwise (as DataFusion names it).
fn output_name(expr: &Expr) -> String {
    match expr {
        Expr::Alias(alias) => alias.name.clone(),
        Expr::Column(column) => column.name.clone(),
        other => other.schema_name().to_string(),
    }
}

/// Whether `column` is selected unchanged (by name, or by `*`).
fn kept_as_is(select: &[String], column: &str) -> bool {
    select.iter().any(|item| {
        let item = item.trim();
        item == "*" || item == column || item.trim_matches('"') == column
    })
}

fn first_duplicate(schema: &Schema) -> Option<&str> {
    let fields = schema.fields();
    fields.iter().enumerate().find_map(|(i, f)| {
        fields[..i]
            .iter()
            .any(|g| g.name() == f.name())
            .then_some(f.name().as_str())
    })
}

struct Plan {
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// The input columns the projection reads, when filtering only those
    /// is cheaper than filtering all.
    columns: Option<Vec<usize>>,
    projection: Option<Vec<Arc<dyn PhysicalExpr>>>,
    schema: SchemaRef,
}

impl OperatorFactory for SqlTransform {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(self.plan(&inputs[0])?.schema)
    }

    fn create(&self, _instance: InstanceInfo, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        Ok(Box::new(self.plan(&inputs[0])?))
    }
}

impl Plan {
    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let batch = match &self.filter {
            Some(predicate) => {
                let mask = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                let mask = mask.as_boolean_opt().ok_or_else(|| {
                    Error::internal(format!(
                        "filter evaluated to {}, not a boolean",
                        mask.data_type()
                    ))
                })?;
                let batch = match &self.columns {
                    Some(columns) => batch.project(columns)?,
                    None => batch,
                };
                if mask.null_count() == 0 && mask.true_count() == batch.num_rows() {
                    batch
                } else {
                    filter_record_batch(&batch, mask)?
                }
            }
            None => batch,
        };
        let Some(projection) = &self.projection else {
            return Ok(batch);
        };
        let rows = batch.num_rows();
        let columns = projection
            .iter()
            .map(|expr| Ok(expr.evaluate(&batch)?.into_array(rows)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?)
    }
}

#[async_trait]
impl Operator for Plan {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        match self.apply(batch.clone()) {
            Ok(result) => out.emit(result),
            // Expressions fail on values (a cast that does not parse, a
            // division by zero): find the rows they fail on and reject only
            // those.
            Err(Error::DataFusion(_) | Error::Arrow(_)) => {
                let mut good = Vec::new();
                for row in 0..batch.num_rows() {
                    let one = batch.slice(row, 1);
                    match self.apply(one.clone()) {
                        Ok(result) => good.push(result),
                        Err(error) => out.reject(&one, &error)?,
                    }
                }
                if let Some(first) = good.first() {
                    out.emit(arrow::compute::concat_batches(first.schema_ref(), &good)?);
                }
            }
            Err(other) => return Err(other),
        }
        Ok(())
    }
}
