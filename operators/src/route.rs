//! Content-based routing: rows go to named outputs by SQL conditions, and
//! those that meet none to the main output.

use std::sync::Arc;

use arrow::compute::{and, filter_record_batch, not};
use arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;
use flumen_core::prelude::*;
use flumen_core::sql::{conditions, evaluate_condition};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

/// Sends rows to named outputs by SQL conditions, as a strangler façade
/// sends requests to the new or the legacy service.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Output names and the condition a row must meet to go there, e.g.
    /// `{ legacy: "path LIKE '/v1/%'", orders: "path LIKE '/orders/%'" }`.
    /// Read an output as `<name>.<output>`. A row goes to every output whose
    /// condition holds; rows that meet none go to the main output
    /// (`<name>`).
    pub routes: IndexMap<String, String>,
}

impl TransformConfig for RouteConfig {
    const TYPE: &str = "route";
    const DESCRIPTION: &str = "Sends rows to named outputs by SQL conditions.";
    type Operator = Route;

    /// Checks the settings and returns the operator.
    fn build(&self) -> Result<Route> {
        if self.routes.is_empty() {
            return Err(Error::config("routes", "names no outputs"));
        }
        for name in self.routes.keys() {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(Error::config(
                    format!("routes.{name}"),
                    "output names may use only letters, digits, `_` and `-`",
                ));
            }
        }
        Ok(Route {
            config: self.clone(),
        })
    }
}

/// The router. Built from a [`RouteConfig`].
#[derive(Debug, Clone)]
pub struct Route {
    config: RouteConfig,
}

impl Route {
    fn plan(&self, input: &SchemaRef) -> Result<Vec<Arc<dyn PhysicalExpr>>> {
        conditions(
            self.config
                .routes
                .iter()
                .map(|(name, sql)| (format!("routes.{name}"), sql.as_str())),
            input,
        )
    }
}

impl OperatorFactory for Route {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        self.plan(&inputs[0])?;
        Ok(inputs[0].clone())
    }

    fn named_outputs(&self, inputs: &[SchemaRef]) -> Result<Vec<(String, SchemaRef)>> {
        Ok(self
            .config
            .routes
            .keys()
            .map(|name| (name.clone(), inputs[0].clone()))
            .collect())
    }

    fn create(&self, _instance: InstanceInfo, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        Ok(Box::new(RouteInstance {
            conditions: self.plan(&inputs[0])?,
        }))
    }
}

struct RouteInstance {
    conditions: Vec<Arc<dyn PhysicalExpr>>,
}

#[async_trait]
impl Operator for RouteInstance {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        let mut unmatched: Option<arrow::array::BooleanArray> = None;
        for (port, condition) in self.conditions.iter().enumerate() {
            let mask = evaluate_condition(condition, &batch)?;
            if mask.true_count() > 0 {
                out.emit_to(port + 1, filter_record_batch(&batch, &mask)?);
            }
            let missed = not(&mask)?;
            unmatched = Some(match unmatched {
                None => missed,
                Some(unmatched) => and(&unmatched, &missed)?,
            });
        }
        let unmatched = unmatched.expect("at least one route");
        if unmatched.true_count() == batch.num_rows() {
            out.emit(batch);
        } else {
            out.emit(filter_record_batch(&batch, &unmatched)?);
        }
        Ok(())
    }
}
