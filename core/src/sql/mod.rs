//! SQL expressions over a component's input, planned with DataFusion: what
//! transforms and sinks share.
//!
//! An expression is parsed and type-checked against the input schema once
//! ([`parse`], [`condition`], [`conditions`]), planned as a physical
//! expression ([`physical`]) and evaluated per batch
//! ([`evaluate_condition`]). Errors name the setting the SQL came from, in a
//! pipeline file's words ([`planning_error`]).

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::{DFSchema, SchemaError};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

use crate::error::{Error, Result};

mod key_bucket;
pub use key_bucket::{bucket_of, key_bucket};

/// A DataFusion context with Flumen's own SQL functions
/// ([`key_bucket`]): every component plans its expressions in one.
pub fn context() -> SessionContext {
    let ctx = SessionContext::new();
    ctx.register_udf(key_bucket());
    ctx
}

/// The error for `sql`, set at `key`, that DataFusion could not plan
/// against `input`: a column that does not exist is
/// [`Error::UnknownColumn`], an aggregate given a type it does not take
/// says so, and no "internal error, please file a bug" reaches the user.
pub fn planning_error(
    key: &str,
    sql: &str,
    expr: Option<&Expr>,
    input: &Schema,
    error: DataFusionError,
) -> Error {
    if let DataFusionError::SchemaError(schema_error, _) = error.find_root()
        && let SchemaError::FieldNotFound { field, .. } = schema_error.as_ref()
    {
        return Error::unknown_column(key, &field.name, input);
    }
    let message = error.strip_backtrace();
    if message.contains("failed to match any signature")
        && let Some(Expr::AggregateFunction(function)) = expr
    {
        let schema = DFSchema::try_from(input.clone()).ok();
        let arguments: Vec<String> = function
            .params
            .args
            .iter()
            .map(|arg| {
                let declared = schema
                    .as_ref()
                    .and_then(|s| arg.get_type(s).ok())
                    .map_or_else(|| "?".into(), |t| crate::schema::type_name(&t));
                format!("`{arg}` ({declared})")
            })
            .collect();
        return Error::config(
            key,
            format!(
                "`{sql}`: `{}` does not take {}",
                function.func.name(),
                arguments.join(", ")
            ),
        );
    }
    // DataFusion calls some user mistakes internal errors.
    let message = match message.split_once("\nThis issue was likely caused by a bug") {
        Some((before, _)) => before.replacen("Internal error: ", "", 1),
        None => message,
    };
    Error::config(key, format!("`{sql}`: {message}"))
}

/// Coerces and simplifies `expr` as DataFusion's planner does (some
/// functions, such as `coalesce`, only exist in simplified form), then
/// plans it as a physical expression.
pub fn physical(
    ctx: &SessionContext,
    expr: Expr,
    schema: &DFSchema,
) -> Result<Arc<dyn PhysicalExpr>> {
    let simplifier = ExprSimplifier::new(
        SimplifyContext::builder()
            .with_schema(Arc::new(schema.clone()))
            .with_config_options(ctx.copied_config().options().clone())
            .build(),
    );
    let expr = simplifier.coerce(expr, schema)?;
    let expr = simplifier.simplify(expr)?;
    Ok(ctx.create_physical_expr(expr, schema)?)
}

/// Plans a SQL condition, which must be true/false.
pub fn condition(
    ctx: &SessionContext,
    sql: &str,
    schema: &DFSchema,
    key: &str,
) -> Result<Arc<dyn PhysicalExpr>> {
    let expr = parse(ctx, sql, schema, key)?;
    let data_type = expr.get_type(schema)?;
    if !matches!(data_type, DataType::Boolean | DataType::Null) {
        return Err(Error::config(
            key,
            format!("`{sql}` is {data_type}, expected a true/false condition"),
        ));
    }
    physical(ctx, expr, schema)
}

/// Plans SQL conditions against `input`, each reported at `key(i)` in
/// errors.
pub fn conditions<'a>(
    sqls: impl IntoIterator<Item = (String, &'a str)>,
    input: &SchemaRef,
) -> Result<Vec<Arc<dyn PhysicalExpr>>> {
    let ctx = context();
    let df_schema = DFSchema::try_from(input.as_ref().clone())?;
    sqls.into_iter()
        .map(|(key, sql)| condition(&ctx, sql, &df_schema, &key))
        .collect()
}

/// Evaluates a condition on `batch`: true rows are `true`, false and null
/// rows `false`.
pub fn evaluate_condition(
    condition: &Arc<dyn PhysicalExpr>,
    batch: &RecordBatch,
) -> Result<BooleanArray> {
    let mask = condition.evaluate(batch)?.into_array(batch.num_rows())?;
    let mask = mask.as_boolean_opt().ok_or_else(|| {
        Error::internal(format!(
            "condition evaluated to {}, not a boolean",
            mask.data_type()
        ))
    })?;
    Ok(match mask.null_count() {
        0 => mask.clone(),
        _ => arrow::compute::prep_null_mask_filter(mask),
    })
}

/// Parses the SQL expression `sql`, set at `key`, against `schema`, and
/// resolves its type, so that an unknown column or an ill-typed expression
/// fails here, as a [`planning_error`], rather than on the first batch.
pub fn parse(ctx: &SessionContext, sql: &str, schema: &DFSchema, key: &str) -> Result<Expr> {
    let invalid = |e, expr| planning_error(key, sql, expr, schema.as_arrow(), e);
    let expr = ctx
        .parse_sql_expr(sql, schema)
        .map_err(|e| invalid(e, None))?;
    // Resolve the type now, so an ill-typed expression fails here rather
    // than on the first batch.
    expr.get_type(schema).map_err(|e| invalid(e, Some(&expr)))?;
    Ok(expr)
}
