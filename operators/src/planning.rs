//! DataFusion's planning errors about a setting's SQL, in a pipeline
//! file's words.

use arrow::datatypes::Schema;
use datafusion::common::{DFSchema, SchemaError};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, ExprSchemable};
use flumen_core::prelude::*;

/// The error for `sql`, set at `key`, that DataFusion could not plan
/// against `input`: a column that does not exist is
/// [`Error::UnknownColumn`], an aggregate given a type it does not take
/// says so, and no "internal error, please file a bug" reaches the user.
pub(crate) fn planning_error(
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
                    .map_or_else(|| "?".into(), |t| flumen_core::schema::type_name(&t));
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
