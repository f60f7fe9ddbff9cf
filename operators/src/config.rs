//! Configuration of the operators, as pipeline files write them.

use flumen_core::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::{SqlTransform, Union, Unnest};

/// Filters rows and computes columns with SQL expressions, planned once and
/// evaluated per batch.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// Keep only the rows for which this SQL condition is true, e.g.
    /// `price > 100 AND channel = 'Google'`.
    #[serde(default)]
    pub filter: Option<String>,

    /// The output columns, as SQL expressions with optional aliases, e.g.
    /// `price * 0.908 AS price_eur`; `*` stands for every input column.
    /// Computed on the rows that pass `filter`. Default: all columns.
    #[serde(default)]
    pub select: Option<Vec<String>>,
}

impl TransformConfig for SqlConfig {
    const TYPE: &str = "sql";
    const DESCRIPTION: &str = "Filters rows and computes columns with SQL expressions.";
    type Operator = SqlTransform;

    /// Checks the settings and returns the transform.
    fn build(&self) -> Result<SqlTransform> {
        let mut transform = SqlTransform::new();
        match (&self.filter, &self.select) {
            (None, None) => {
                return Err(Error::config(
                    "",
                    "sets neither `filter` nor `select`; set one or both",
                ));
            }
            (_, Some(select)) if select.is_empty() => {
                return Err(Error::config("select", "lists no columns"));
            }
            _ => {}
        }
        if let Some(filter) = &self.filter {
            transform = transform.filter(filter);
        }
        if let Some(select) = &self.select {
            transform = transform.select(select);
        }
        Ok(transform)
    }
}

/// Turns each row into one row per element of a list column.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnnestConfig {
    /// The list column to unnest; it becomes a column of its elements.
    pub column: String,
}

impl TransformConfig for UnnestConfig {
    const TYPE: &str = "unnest";
    const DESCRIPTION: &str = "One row per element of a list column.";
    type Operator = Unnest;

    /// Returns the transform.
    fn build(&self) -> Result<Unnest> {
        Ok(Unnest::new(&self.column))
    }
}

/// Merges several inputs with the same columns into one stream.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnionConfig {}

impl TransformConfig for UnionConfig {
    const TYPE: &str = "union";
    const DESCRIPTION: &str = "Merges inputs of the same schema.";
    type Operator = Union;

    /// Returns the transform.
    fn build(&self) -> Result<Union> {
        Ok(Union)
    }
}
