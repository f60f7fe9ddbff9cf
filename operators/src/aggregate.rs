//! Aggregate functions written in SQL (`count(*)`, `avg(price) AS
//! avg_price`, `approx_distinct(bidder)`), planned with DataFusion and run
//! with its vectorized group accumulators.
//!
//! Every aggregate DataFusion has is available: those with a vectorized
//! group accumulator (count, sum, min, max, avg, ...) use it directly, the
//! others (count distinct, percentiles, ...) run through DataFusion's
//! adapter.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::datatypes::{FieldRef, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Accumulator, EmitTo, Expr, GroupsAccumulator};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use flumen_core::prelude::*;
use flumen_core::sql::planning_error;

/// One planned aggregate.
#[derive(Debug, Clone)]
struct AggregateSpec {
    function: Arc<AggregateFunctionExpr>,
    /// `count(*) FILTER (WHERE price > 10)`.
    filter: Option<Arc<dyn PhysicalExpr>>,
}

/// The aggregates of a window or grouping, planned against its input.
#[derive(Debug, Clone)]
pub struct Aggregates {
    specs: Vec<AggregateSpec>,
}

/// The evaluated arguments of one aggregate for one batch.
#[derive(Debug)]
pub struct Arguments {
    values: Vec<ArrayRef>,
    filter: Option<BooleanArray>,
}

impl Aggregates {
    /// Plans SQL aggregate expressions against `input`. `key` names the
    /// setting in errors (`aggregates`).
    pub fn plan(sqls: &[String], input: &SchemaRef, key: &str) -> Result<Self> {
        if sqls.is_empty() {
            return Err(Error::config(
                key,
                "lists no aggregates; e.g. `count(*) AS events`",
            ));
        }
        let ctx = flumen_core::sql::context();
        let df_schema = DFSchema::try_from(input.as_ref().clone())?;
        let props = ExecutionProps::new();
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(Arc::new(df_schema.clone()))
                .with_config_options(ctx.copied_config().options().clone())
                .build(),
        );
        let mut specs = Vec::with_capacity(sqls.len());
        for (i, sql) in sqls.iter().enumerate() {
            let at = format!("{key}[{i}]");
            let invalid =
                |e: datafusion::error::DataFusionError| planning_error(&at, sql, None, input, e);
            let expr = ctx.parse_sql_expr(sql, &df_schema).map_err(invalid)?;
            // The outermost alias names the column (`count(*)` itself comes
            // back wrapped in an alias of its own).
            let name = match &expr {
                Expr::Alias(alias) => alias.name.clone(),
                other => other.schema_name().to_string(),
            };
            let mut inner = expr;
            while let Expr::Alias(alias) = inner {
                inner = *alias.expr;
            }
            if !matches!(inner, Expr::AggregateFunction(_)) {
                return Err(Error::config(
                    &at,
                    format!(
                        "`{sql}` is not an aggregate function; write e.g. `count(*)`, `max(price) AS top_price`"
                    ),
                ));
            }
            let inner = simplifier
                .coerce(inner.clone(), &df_schema)
                .map_err(|e| planning_error(&at, sql, Some(&inner), input, e))?;
            let lowered = LoweredAggregateBuilder::new(
                &inner,
                &df_schema,
                input.as_ref(),
                &props,
                &PhysicalPlanningContext::default(),
            )
            .with_name(name)
            .build()
            .map_err(invalid)?;
            specs.push(AggregateSpec {
                function: lowered.aggregate,
                filter: lowered.filter,
            });
        }
        let aggregates = Aggregates { specs };
        // Fail now, not on the first batch, for an aggregate that cannot
        // accumulate.
        aggregates.accumulators()?;
        Ok(aggregates)
    }

    /// The output column of each aggregate.
    pub fn fields(&self) -> Vec<FieldRef> {
        self.specs.iter().map(|s| s.function.field()).collect()
    }

    /// The first aggregate whose state is not a single int64 sum over its
    /// rows (as a plain `count` or `sum` of integers has): only such states
    /// can be subtracted again when rows leave a sliding window.
    pub fn not_running_sum(&self) -> Option<String> {
        self.specs.iter().find_map(|spec| {
            let function = &spec.function;
            let int64 = |field: &FieldRef| field.data_type() == &arrow::datatypes::DataType::Int64;
            let summable = matches!(function.fun().name(), "count" | "sum")
                && !function.is_distinct()
                && int64(&function.field())
                && function
                    .state_fields()
                    .is_ok_and(|state| state.len() == 1 && int64(&state[0]));
            (!summable).then(|| function.name().to_string())
        })
    }

    /// How many aggregates there are.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Whether there are none (never, once planned).
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// A fresh row accumulator per aggregate: one group's, whose value
    /// can be read at any time without disturbing it.
    pub fn row_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        (0..self.specs.len())
            .map(|i| self.row_accumulator(i))
            .collect()
    }

    /// A fresh row accumulator for aggregate `index`.
    pub fn row_accumulator(&self, index: usize) -> Result<Box<dyn Accumulator>> {
        Ok(self.specs[index].function.create_accumulator()?)
    }

    /// Per aggregate: whether reading a row accumulator's state leaves it
    /// as it was (as for a plain count, sum, min, max or avg), so that a
    /// snapshot need not rebuild it.
    pub fn state_is_kept(&self) -> Vec<bool> {
        self.specs
            .iter()
            .map(|spec| {
                let function = &spec.function;
                !function.is_distinct()
                    && matches!(
                        function.fun().name(),
                        "count" | "sum" | "min" | "max" | "avg" | "bool_and" | "bool_or"
                    )
            })
            .collect()
    }

    /// A fresh accumulator per aggregate.
    pub fn accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.specs
            .iter()
            .map(|spec| {
                let function = spec.function.clone();
                Ok(if function.groups_accumulator_supported() {
                    function.create_groups_accumulator()?
                } else {
                    Box::new(GroupsAccumulatorAdapter::new(move || {
                        function.create_accumulator()
                    })) as Box<dyn GroupsAccumulator>
                })
            })
            .collect()
    }

    /// Evaluates every aggregate's arguments (and filter) on `batch`.
    pub fn arguments(&self, batch: &RecordBatch) -> Result<Vec<Arguments>> {
        let rows = batch.num_rows();
        self.specs
            .iter()
            .map(|spec| {
                let values = spec
                    .function
                    .expressions()
                    .iter()
                    .map(|e| Ok(e.evaluate(batch)?.into_array(rows)?))
                    .collect::<Result<Vec<_>>>()?;
                let filter = match &spec.filter {
                    Some(filter) => Some(
                        filter
                            .evaluate(batch)?
                            .into_array(rows)?
                            .as_boolean()
                            .clone(),
                    ),
                    None => None,
                };
                Ok(Arguments { values, filter })
            })
            .collect()
    }
}

impl Arguments {
    /// The argument values of the rows at `indices` that pass the
    /// aggregate's `FILTER`, if it has one.
    pub fn rows(&self, indices: &arrow::array::UInt32Array) -> Result<Vec<ArrayRef>> {
        let indices = match &self.filter {
            Some(filter) => {
                let kept: arrow::array::UInt32Array = indices
                    .values()
                    .iter()
                    .copied()
                    .filter(|&i| filter.is_valid(i as usize) && filter.value(i as usize))
                    .collect();
                std::borrow::Cow::Owned(kept)
            }
            None => std::borrow::Cow::Borrowed(indices),
        };
        self.values
            .iter()
            .map(|v| Ok(arrow::compute::take(v, indices.as_ref(), None)?))
            .collect()
    }

    /// The arguments of the rows at `indices` only.
    pub fn take(&self, indices: &arrow::array::UInt32Array) -> Result<Arguments> {
        let values = self
            .values
            .iter()
            .map(|v| Ok(arrow::compute::take(v, indices, None)?))
            .collect::<Result<Vec<_>>>()?;
        let filter = match &self.filter {
            Some(f) => Some(arrow::compute::take(f, indices, None)?.as_boolean().clone()),
            None => None,
        };
        Ok(Arguments { values, filter })
    }
}

/// Group ids for key values: DataFusion's specialised group tables, or a
/// single group when there are no keys.
enum Groups {
    Keyed(Box<dyn GroupValues>),
    /// No keys: every row is group 0, once a row has arrived.
    Single {
        seen: bool,
    },
}

/// Rows grouped by key, with one accumulator per aggregate.
pub struct GroupedAggregation {
    groups: Groups,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    group_ids: Vec<usize>,
}

impl std::fmt::Debug for GroupedAggregation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupedAggregation")
            .field("groups", &self.len())
            .finish()
    }
}

impl GroupedAggregation {
    /// An empty aggregation over keys of `key_schema` (which may have no
    /// columns: one group).
    pub fn new(aggregates: &Aggregates, key_schema: &SchemaRef) -> Result<Self> {
        let groups = if key_schema.fields().is_empty() {
            Groups::Single { seen: false }
        } else {
            Groups::Keyed(new_group_values(key_schema.clone(), &GroupOrdering::None)?)
        };
        Ok(GroupedAggregation {
            groups,
            accumulators: aggregates.accumulators()?,
            group_ids: Vec::new(),
        })
    }

    /// How many groups there are.
    pub fn len(&self) -> usize {
        match &self.groups {
            Groups::Keyed(groups) => groups.len(),
            Groups::Single { seen } => usize::from(*seen),
        }
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate memory held, in bytes.
    pub fn size(&self) -> usize {
        let groups = match &self.groups {
            Groups::Keyed(groups) => groups.size(),
            Groups::Single { .. } => 0,
        };
        groups + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
    }

    /// The group id of each row of `keys` (`rows` rows), adding new groups.
    pub fn intern(&mut self, keys: &[ArrayRef], rows: usize) -> Result<&[usize]> {
        match &mut self.groups {
            Groups::Keyed(groups) => groups.intern(keys, &mut self.group_ids)?,
            Groups::Single { seen } => {
                self.group_ids.clear();
                self.group_ids.resize(rows, 0);
                *seen |= rows > 0;
            }
        }
        Ok(&self.group_ids)
    }

    /// Accumulates rows: their key columns and evaluated arguments.
    pub fn update(
        &mut self,
        keys: &[ArrayRef],
        rows: usize,
        arguments: &[Arguments],
    ) -> Result<()> {
        self.intern(keys, rows)?;
        let total = self.len();
        for (accumulator, args) in self.accumulators.iter_mut().zip(arguments) {
            accumulator.update_batch(&args.values, &self.group_ids, args.filter.as_ref(), total)?;
        }
        Ok(())
    }

    /// Merges partial states (from [`GroupedAggregation::into_state`]) of
    /// the groups with these keys.
    pub fn merge(
        &mut self,
        keys: &[ArrayRef],
        rows: usize,
        states: &[Vec<ArrayRef>],
    ) -> Result<()> {
        self.intern(keys, rows)?;
        let total = self.len();
        for (accumulator, state) in self.accumulators.iter_mut().zip(states) {
            accumulator.merge_batch(state, &self.group_ids, total)?;
        }
        Ok(())
    }

    /// The key columns of every group, in group-id order.
    fn emit_keys(&mut self) -> Result<Vec<ArrayRef>> {
        match &mut self.groups {
            Groups::Keyed(groups) => Ok(groups.emit(EmitTo::All)?),
            Groups::Single { .. } => Ok(Vec::new()),
        }
    }

    /// Final values: the key columns and one column per aggregate.
    pub fn finish(mut self) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        let keys = self.emit_keys()?;
        let values = self
            .accumulators
            .iter_mut()
            .map(|a| Ok(a.evaluate(EmitTo::All)?))
            .collect::<Result<Vec<_>>>()?;
        Ok((keys, values))
    }

    /// Partial states to merge elsewhere: the key columns and, per
    /// aggregate, its state columns.
    pub fn into_state(mut self) -> Result<(Vec<ArrayRef>, Vec<Vec<ArrayRef>>)> {
        let keys = self.emit_keys()?;
        let states = self
            .accumulators
            .iter_mut()
            .map(|a| Ok(a.state(EmitTo::All)?))
            .collect::<Result<Vec<_>>>()?;
        Ok((keys, states))
    }
}

/// The key columns at `indices` of a batch.
pub fn key_columns(batch: &RecordBatch, indices: &[usize]) -> Vec<ArrayRef> {
    indices.iter().map(|&i| batch.column(i).clone()).collect()
}

/// The schema of the key columns.
pub fn key_schema(input: &Schema, indices: &[usize]) -> SchemaRef {
    Arc::new(Schema::new(
        indices
            .iter()
            .map(|&i| input.field(i).clone())
            .collect::<Vec<_>>(),
    ))
}

/// Rows, a partial state of one group table, for memory accounting.
pub fn state_rows(state: &[Vec<ArrayRef>]) -> usize {
    state.first().and_then(|s| s.first()).map_or(0, |a| a.len())
}
