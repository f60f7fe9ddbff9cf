//! Building a dataflow graph in code, and checking it before it runs.
//!
//! Nodes refer to their inputs by name (`"bids"`, or `"router.legacy"` for
//! a named output), so a graph can be declared in any order, as a pipeline
//! file does. [`GraphBuilder::build`] resolves the names, rejects cycles
//! and dangling inputs, computes every edge's schema and checks columns,
//! and returns a [`Pipeline`] ready to run.
//!
//! ```
//! use flumen_core::prelude::*;
//! use flumen_core::testing::{CollectSink, MemorySource};
//! # use std::sync::Arc;
//! # use arrow::array::Int64Array;
//! # use arrow::datatypes::{DataType, Field, Schema};
//!
//! # fn main() -> Result<()> {
//! let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
//! let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])?;
//! let (sink, collected) = CollectSink::new();
//!
//! let mut graph = GraphBuilder::new();
//! graph.source("numbers", MemorySource::new(schema, vec![batch]));
//! graph.sink("out", sink, ["numbers"]);
//! let pipeline = graph.build()?;
//! # let _ = (pipeline, collected);
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use crate::component::{OperatorFactory, Repartition, SinkFactory, SourceFactory};
use crate::dead_letter::OnError;
use crate::error::{Error, Result};
use crate::event_time::{EventTimeConfig, with_event_time};
use crate::partition::{KeyGroups, Partitioning};
pub use crate::runtime::Pipeline;

mod planner;

use self::planner::Planner;

/// A reference to an upstream output, with the partitioning of the edge.
#[derive(Debug, Clone)]
pub struct Input {
    /// `node`, or `node.output` for a named output.
    pub from: String,
    /// How rows are split between the consumer's instances. `None` picks
    /// forward when both sides have the same parallelism, round-robin
    /// otherwise.
    pub partitioning: Option<Partitioning>,
    /// Carries the rows between processes through a broker, keyed by the
    /// hash partitioning's columns: see [`Repartition`].
    pub repartition: Option<Arc<dyn Repartition>>,
}

impl Input {
    /// An input with the default partitioning.
    pub fn new(from: impl Into<String>) -> Self {
        Input {
            from: from.into(),
            partitioning: None,
            repartition: None,
        }
    }

    /// Sends the rows through `repartition` (an input partitioned by
    /// hash, of a pipeline run as tasks).
    pub fn through(mut self, repartition: Arc<dyn Repartition>) -> Self {
        self.repartition = Some(repartition);
        self
    }

    /// Instance *i* feeds instance *i*.
    pub fn forward(from: impl Into<String>) -> Self {
        Input::new(from).with(Partitioning::Forward)
    }

    /// Rows with equal `keys` go to the same instance.
    pub fn hash<K: Into<String>>(
        from: impl Into<String>,
        keys: impl IntoIterator<Item = K>,
    ) -> Self {
        Input::new(from).with(Partitioning::Hash(
            keys.into_iter().map(Into::into).collect(),
        ))
    }

    /// Every instance receives every batch.
    pub fn broadcast(from: impl Into<String>) -> Self {
        Input::new(from).with(Partitioning::Broadcast)
    }

    /// Batches go to the instances in turn.
    pub fn round_robin(from: impl Into<String>) -> Self {
        Input::new(from).with(Partitioning::RoundRobin)
    }

    fn with(mut self, partitioning: Partitioning) -> Self {
        self.partitioning = Some(partitioning);
        self
    }
}

impl From<&str> for Input {
    fn from(from: &str) -> Self {
        Input::new(from)
    }
}

impl From<String> for Input {
    fn from(from: String) -> Self {
        Input::new(from)
    }
}

impl From<&String> for Input {
    fn from(from: &String) -> Self {
        Input::new(from.clone())
    }
}

/// What a node is, with the factory that creates its instances.
#[derive(Clone)]
pub enum NodeKind {
    /// Produces data.
    Source(Arc<dyn SourceFactory>),
    /// Transforms data.
    Operator(Arc<dyn OperatorFactory>),
    /// Writes data out.
    Sink(Arc<dyn SinkFactory>),
}

impl NodeKind {
    /// `source`, `operator` or `sink`.
    pub fn label(&self) -> &'static str {
        match self {
            NodeKind::Source(_) => "source",
            NodeKind::Operator(_) => "operator",
            NodeKind::Sink(_) => "sink",
        }
    }
}

impl fmt::Debug for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[derive(Debug)]
struct NodeDecl {
    name: String,
    kind: NodeKind,
    component_type: Option<String>,
    inputs: Vec<Input>,
    parallelism: usize,
    event_time: Option<EventTimeConfig>,
    on_error: OnError,
}

/// Declares the nodes of a graph. See the [module documentation](self).
#[derive(Debug, Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeDecl>,
    dead_letter: Option<DeadLetterSink>,
    key_groups: KeyGroups,
}

/// Settings of a node just added to a [`GraphBuilder`].
#[derive(Debug)]
pub struct NodeBuilder<'a>(&'a mut NodeDecl);

impl NodeBuilder<'_> {
    /// Runs the node as this many parallel instances (default 1).
    pub fn parallelism(self, parallelism: usize) -> Self {
        self.0.parallelism = parallelism;
        self
    }

    /// What the node does with a record it cannot handle (default: send
    /// it to the dead-letter sink).
    pub fn on_error(self, on_error: OnError) -> Self {
        self.0.on_error = on_error;
        self
    }

    /// Sets where a source's event time comes from (sources only).
    pub fn event_time(self, event_time: EventTimeConfig) -> Self {
        self.0.event_time = Some(event_time);
        self
    }

    /// Names the component type, as a pipeline file does (`nexmark`,
    /// `filter`), for graph rendering and errors.
    pub fn component_type(self, component_type: impl Into<String>) -> Self {
        self.0.component_type = Some(component_type.into());
        self
    }
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a source.
    pub fn source(
        &mut self,
        name: impl Into<String>,
        factory: impl SourceFactory,
    ) -> NodeBuilder<'_> {
        self.add(name.into(), NodeKind::Source(Arc::new(factory)), Vec::new())
    }

    /// Adds an operator reading `inputs`.
    pub fn operator<I: Into<Input>>(
        &mut self,
        name: impl Into<String>,
        factory: impl OperatorFactory,
        inputs: impl IntoIterator<Item = I>,
    ) -> NodeBuilder<'_> {
        let inputs = inputs.into_iter().map(Into::into).collect();
        self.add(name.into(), NodeKind::Operator(Arc::new(factory)), inputs)
    }

    /// Adds a sink reading `inputs` (several inputs are unioned; their
    /// schemas must match).
    pub fn sink<I: Into<Input>>(
        &mut self,
        name: impl Into<String>,
        factory: impl SinkFactory,
        inputs: impl IntoIterator<Item = I>,
    ) -> NodeBuilder<'_> {
        let inputs = inputs.into_iter().map(Into::into).collect();
        self.add(name.into(), NodeKind::Sink(Arc::new(factory)), inputs)
    }

    /// Adds a node of any kind.
    pub fn node(
        &mut self,
        name: impl Into<String>,
        kind: NodeKind,
        inputs: Vec<Input>,
    ) -> NodeBuilder<'_> {
        self.add(name.into(), kind, inputs)
    }

    fn add(&mut self, name: String, kind: NodeKind, inputs: Vec<Input>) -> NodeBuilder<'_> {
        self.nodes.push(NodeDecl {
            name,
            kind,
            component_type: None,
            inputs,
            parallelism: 1,
            event_time: None,
            on_error: OnError::default(),
        });
        NodeBuilder(self.nodes.last_mut().expect("just pushed"))
    }

    /// Where records that components reject go (see [`dead_letter`]): a
    /// sink of [`dead_letter::schema`]. Without one, dead-lettered records
    /// are logged and counted.
    ///
    /// [`dead_letter`]: crate::dead_letter
    pub fn dead_letter_sink(&mut self, factory: impl SinkFactory) -> &mut Self {
        self.dead_letter_sink_shared(Arc::new(factory))
    }

    /// [`GraphBuilder::dead_letter_sink`] with a shared factory.
    pub fn dead_letter_sink_shared(&mut self, factory: Arc<dyn SinkFactory>) -> &mut Self {
        self.dead_letter = Some(DeadLetterSink(factory));
        self
    }

    /// The number of key groups keyed state is split into, and so the
    /// most instances a keyed operator can run as (default
    /// [`DEFAULT_MAX_PARALLELISM`](crate::partition::DEFAULT_MAX_PARALLELISM)).
    /// Keep it for the life of a pipeline's state: a checkpoint restored
    /// under another number has every state row placed again by its hash.
    pub fn max_parallelism(&mut self, groups: usize) -> &mut Self {
        self.key_groups = KeyGroups::new(groups);
        self
    }

    /// Checks the graph and plans it: see [`Pipeline`].
    pub fn build(self) -> Result<Pipeline> {
        if let Some(DeadLetterSink(sink)) = &self.dead_letter {
            sink.check_input(&crate::dead_letter::schema())
                .map_err(|e| e.in_node("dead_letter"))?;
        }
        let mut plan = Planner::new(self.nodes, self.key_groups)?.plan()?;
        plan.dead_letter = self.dead_letter;
        let pipeline = Pipeline::new(plan);
        pipeline.check_stages()?;
        Ok(pipeline)
    }
}

/// One output of a node.
#[derive(Debug, Clone)]
pub struct OutputPort {
    /// `None` for the main output, the name for a named output.
    pub name: Option<String>,
    /// Schema of every batch on this output.
    pub schema: SchemaRef,
}

/// A resolved edge into a node.
#[derive(Debug, Clone)]
pub struct Edge {
    /// Index of the upstream node in [`Pipeline::nodes`].
    pub from: usize,
    /// Which output of the upstream node: 0 is the main one.
    pub port: usize,
    /// How rows are split, never left to default here.
    pub partitioning: Partitioning,
    /// Column indices of hash keys (empty unless hash-partitioned).
    pub key_columns: Vec<usize>,
    /// The broker the rows go through between processes, if any.
    pub repartition: Option<Arc<dyn Repartition>>,
}

/// A checked node of a [`Pipeline`].
#[derive(Debug, Clone)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// The component type given at build time (`nexmark`, `filter`), if any.
    pub component_type: Option<String>,
    /// What the node is.
    pub kind: NodeKind,
    /// How many instances run.
    pub parallelism: usize,
    /// Edges in, in declaration order.
    pub inputs: Vec<Edge>,
    /// Outputs: the main one first, then named ones. Empty for sinks.
    pub outputs: Vec<OutputPort>,
    /// For sources: event-time settings and the column's index.
    pub event_time: Option<(EventTimeConfig, usize)>,
    /// What the node does with a record it cannot handle.
    pub on_error: OnError,
    /// For operators, per input: the columns whose hash places a row of
    /// the state it builds (the edge's hash keys, or the keys the operator
    /// groups by when it runs alone). `None` where the input keys nothing.
    pub state_keys: Vec<Option<Vec<String>>>,
}

impl Node {
    /// The schema of the node's input (for sinks and single-input
    /// operators) or main output.
    pub fn input_schemas<'a>(&self, nodes: &'a [Node]) -> Vec<&'a SchemaRef> {
        self.inputs
            .iter()
            .map(|e| &nodes[e.from].outputs[e.port].schema)
            .collect()
    }
}

/// A checked, planned graph: what a [`Pipeline`] runs. Nodes are in
/// topological order: every node comes after its inputs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(crate) nodes: Vec<Node>,
    pub(crate) dead_letter: Option<DeadLetterSink>,
    pub(crate) key_groups: KeyGroups,
}

/// The sink dead-lettered records go to.
#[derive(Clone)]
pub(crate) struct DeadLetterSink(pub(crate) Arc<dyn SinkFactory>);

impl fmt::Debug for DeadLetterSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeadLetterSink")
    }
}

impl Plan {
    /// The nodes, inputs before the nodes that read them.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Looks a node up by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The key groups of the pipeline's keyed state.
    pub fn key_groups(&self) -> KeyGroups {
        self.key_groups
    }
}

/// `name: Type, ...`, for error messages.
pub fn describe_schema(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}
