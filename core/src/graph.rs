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

use crate::component::{OperatorFactory, SinkFactory, SourceFactory};
use crate::dead_letter::OnError;
use crate::error::{Error, Result};
use crate::event_time::{EventTimeConfig, with_event_time};
use crate::partition::Partitioning;
use crate::runtime::{NodeStats, Signals};

/// A reference to an upstream output, with the partitioning of the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// `node`, or `node.output` for a named output.
    pub from: String,
    /// How rows are split between the consumer's instances. `None` picks
    /// forward when both sides have the same parallelism, round-robin
    /// otherwise.
    pub partitioning: Option<Partitioning>,
}

impl Input {
    /// An input with the default partitioning.
    pub fn new(from: impl Into<String>) -> Self {
        Input {
            from: from.into(),
            partitioning: None,
        }
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

    /// Checks the graph and plans it: see [`Pipeline`].
    pub fn build(self) -> Result<Pipeline> {
        if let Some(DeadLetterSink(sink)) = &self.dead_letter {
            sink.check_input(&crate::dead_letter::schema())
                .map_err(|e| e.in_node("dead_letter"))?;
        }
        let mut pipeline = Planner::new(self.nodes)?.plan()?;
        pipeline.dead_letter = self.dead_letter;
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

/// A checked, planned graph, ready to [`run`](Pipeline::run). Nodes are in
/// topological order: every node comes after its inputs.
#[derive(Debug)]
pub struct Pipeline {
    pub(crate) nodes: Vec<Node>,
    pub(crate) stats: Arc<[Arc<NodeStats>]>,
    pub(crate) signals: Signals,
    pub(crate) dead_letter: Option<DeadLetterSink>,
}

/// The sink dead-lettered records go to.
#[derive(Clone)]
pub(crate) struct DeadLetterSink(pub(crate) Arc<dyn SinkFactory>);

impl fmt::Debug for DeadLetterSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeadLetterSink")
    }
}

impl Pipeline {
    /// The nodes, inputs before the nodes that read them.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Looks a node up by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// For each input of a node: the declaration it reads and the named output,
/// if not the main one.
type Upstream = Vec<(usize, Option<String>)>;

struct Planner {
    decls: Vec<NodeDecl>,
    by_name: HashMap<String, usize>,
}

impl Planner {
    fn new(decls: Vec<NodeDecl>) -> Result<Self> {
        let mut by_name = HashMap::new();
        for (i, decl) in decls.iter().enumerate() {
            check_name(&decl.name)?;
            if by_name.insert(decl.name.clone(), i).is_some() {
                return Err(Error::graph(&decl.name, "is defined more than once"));
            }
        }
        if decls.is_empty() {
            return Err(Error::graph("pipeline", "has no nodes"));
        }
        Ok(Planner { decls, by_name })
    }

    fn plan(self) -> Result<Pipeline> {
        let upstream = self.resolve_upstream()?;
        let order = self.topological_order(&upstream)?;

        let mut index_of = vec![usize::MAX; self.decls.len()];
        let mut nodes: Vec<Node> = Vec::with_capacity(self.decls.len());
        for &d in &order {
            index_of[d] = nodes.len();
            let node = self.plan_node(d, &upstream[d], &index_of, &nodes)?;
            nodes.push(node);
        }
        check_reaches_sink(&nodes)?;
        Ok(Pipeline {
            stats: nodes.iter().map(|_| Arc::default()).collect(),
            nodes,
            signals: Signals::default(),
            dead_letter: None,
        })
    }

    /// For each node, the declaration index and port name of each input.
    fn resolve_upstream(&self) -> Result<Vec<Upstream>> {
        let mut all = Vec::with_capacity(self.decls.len());
        for decl in &self.decls {
            let arity = match &decl.kind {
                NodeKind::Source(_) => 0..=0,
                NodeKind::Operator(f) => f.input_count(),
                NodeKind::Sink(_) => 1..=usize::MAX,
            };
            if !arity.contains(&decl.inputs.len()) {
                let expected = match (arity.start(), arity.end()) {
                    (a, b) if a == b => format!("{a}"),
                    (a, &usize::MAX) => format!("at least {a}"),
                    (a, b) => format!("{a} to {b}"),
                };
                return Err(Error::graph_at(
                    &decl.name,
                    "inputs",
                    format!("takes {expected} input(s), got {}", decl.inputs.len()),
                ));
            }
            let mut resolved = Vec::with_capacity(decl.inputs.len());
            for (i, input) in decl.inputs.iter().enumerate() {
                resolved.push(self.resolve_input(decl, i, input)?);
            }
            all.push(resolved);
        }
        Ok(all)
    }

    fn resolve_input(
        &self,
        decl: &NodeDecl,
        index: usize,
        input: &Input,
    ) -> Result<(usize, Option<String>)> {
        let (node, port) = match input.from.split_once('.') {
            Some((node, port)) => (node, Some(port.to_string())),
            None => (input.from.as_str(), None),
        };
        let Some(&upstream) = self.by_name.get(node) else {
            let defined: BTreeSet<&str> = self
                .decls
                .iter()
                .filter(|d| !matches!(d.kind, NodeKind::Sink(_)))
                .map(|d| d.name.as_str())
                .collect();
            return Err(Error::graph_at(
                &decl.name,
                format!("inputs[{index}]"),
                format!(
                    "input `{}` is not defined; defined: {}",
                    input.from,
                    defined.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        if matches!(self.decls[upstream].kind, NodeKind::Sink(_)) {
            return Err(Error::graph_at(
                &decl.name,
                format!("inputs[{index}]"),
                format!("input `{node}` is a sink; sinks have no outputs"),
            ));
        }
        Ok((upstream, port))
    }

    fn topological_order(&self, upstream: &[Upstream]) -> Result<Vec<usize>> {
        let n = self.decls.len();
        let mut pending_inputs: Vec<usize> = vec![0; n];
        let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (node, inputs) in upstream.iter().enumerate() {
            for &(from, _) in inputs {
                pending_inputs[node] += 1;
                downstream[from].push(node);
            }
        }
        let mut ready: Vec<usize> = (0..n).filter(|&i| pending_inputs[i] == 0).rev().collect();
        let mut order = Vec::with_capacity(n);
        while let Some(node) = ready.pop() {
            order.push(node);
            for &next in downstream[node].iter().rev() {
                pending_inputs[next] -= 1;
                if pending_inputs[next] == 0 {
                    ready.push(next);
                }
            }
        }
        if order.len() < n {
            let cycle = self.find_cycle(upstream, &pending_inputs);
            let names: Vec<&str> = cycle.iter().map(|&i| self.decls[i].name.as_str()).collect();
            return Err(Error::graph(
                names[0],
                format!("is part of a cycle: {}", names.join(" -> ")),
            ));
        }
        Ok(order)
    }

    /// Walks inputs backwards from a node left over by the topological sort
    /// until one repeats: that stretch is a cycle.
    fn find_cycle(&self, upstream: &[Upstream], pending: &[usize]) -> Vec<usize> {
        let start = pending
            .iter()
            .position(|&p| p > 0)
            .expect("a node was left over");
        let mut path = vec![start];
        let mut node = start;
        loop {
            node = upstream[node]
                .iter()
                .map(|&(from, _)| from)
                .find(|&from| pending[from] > 0)
                .expect("a left-over node has a left-over input");
            if let Some(pos) = path.iter().position(|&p| p == node) {
                let mut cycle: Vec<usize> = path[pos..].to_vec();
                cycle.reverse();
                cycle.push(cycle[0]);
                return cycle;
            }
            path.push(node);
        }
    }

    fn plan_node(
        &self,
        d: usize,
        upstream: &[(usize, Option<String>)],
        index_of: &[usize],
        planned: &[Node],
    ) -> Result<Node> {
        let decl = &self.decls[d];
        let name = decl.name.as_str();
        let in_node = |e: Error| in_node(name, e);
        if decl.parallelism == 0 {
            return Err(Error::graph_at(name, "parallelism", "must be at least 1"));
        }

        let mut inputs = Vec::with_capacity(upstream.len());
        let mut input_schemas = Vec::with_capacity(upstream.len());
        for (i, ((from_decl, port_name), input)) in upstream.iter().zip(&decl.inputs).enumerate() {
            let from = &planned[index_of[*from_decl]];
            let port = match port_name {
                None => 0,
                Some(port_name) => from
                    .outputs
                    .iter()
                    .position(|p| p.name.as_deref() == Some(port_name.as_str()))
                    .ok_or_else(|| {
                        let named: Vec<&str> = from
                            .outputs
                            .iter()
                            .filter_map(|p| p.name.as_deref())
                            .collect();
                        let known = if named.is_empty() {
                            format!("`{}` has no named outputs", from.name)
                        } else {
                            format!("outputs of `{}`: {}", from.name, named.join(", "))
                        };
                        Error::graph_at(
                            name,
                            format!("inputs[{i}]"),
                            format!("input `{}` is not defined; {known}", input.from),
                        )
                    })?,
            };
            let schema = from.outputs[port].schema.clone();
            let required = match &decl.kind {
                NodeKind::Operator(factory) if decl.parallelism > 1 => {
                    factory.input_partitioning(i)
                }
                _ => None,
            };
            let partitioning = resolve_partitioning(
                input,
                from.parallelism,
                decl.parallelism,
                required.as_deref(),
            )
            .map_err(in_node)?;
            let key_columns = match &partitioning {
                Partitioning::Hash(keys) => {
                    key_indices(&input.from, keys, &schema).map_err(in_node)?
                }
                _ => Vec::new(),
            };
            input_schemas.push(schema);
            inputs.push(Edge {
                from: index_of[*from_decl],
                port,
                partitioning,
                key_columns,
            });
        }

        let mut event_time = None;
        let outputs = match &decl.kind {
            NodeKind::Source(factory) => {
                check_max_parallelism(decl, factory.max_parallelism())?;
                let mut schema = factory.schema();
                if let Some(config) = decl
                    .event_time
                    .clone()
                    .or_else(|| factory.default_event_time())
                {
                    let column = config.column_index(&schema).map_err(in_node)?;
                    schema = with_event_time(&schema, &config.column);
                    event_time = Some((config, column));
                }
                vec![OutputPort { name: None, schema }]
            }
            NodeKind::Operator(factory) => {
                check_max_parallelism(decl, factory.max_parallelism()).map_err(|_| {
                    Error::graph_at(
                        &decl.name,
                        "parallelism",
                        "must be 1: with no key columns (`group_by`, `partition_by`) to split its rows by, every row must meet in one instance",
                    )
                })?;
                if factory.same_input_schemas() {
                    check_same_schemas(decl, &input_schemas)?;
                }
                let main = factory.output_schema(&input_schemas).map_err(in_node)?;
                let mut outputs = vec![OutputPort {
                    name: None,
                    schema: main,
                }];
                for (port, schema) in factory.named_outputs(&input_schemas).map_err(in_node)? {
                    outputs.push(OutputPort {
                        name: Some(port),
                        schema,
                    });
                }
                outputs
            }
            NodeKind::Sink(factory) => {
                check_max_parallelism(decl, factory.max_parallelism())?;
                check_same_schemas(decl, &input_schemas)?;
                factory.check_input(&input_schemas[0]).map_err(in_node)?;
                Vec::new()
            }
        };
        if decl.event_time.is_some() && !matches!(decl.kind, NodeKind::Source(_)) {
            return Err(Error::graph_at(
                name,
                "event_time",
                "can only be set on a source",
            ));
        }

        Ok(Node {
            name: decl.name.clone(),
            component_type: decl.component_type.clone(),
            kind: decl.kind.clone(),
            parallelism: decl.parallelism,
            inputs,
            outputs,
            event_time,
            on_error: decl.on_error,
        })
    }
}

/// Attributes an error raised while checking node `name` to the node,
/// keeping the setting it is about.
fn in_node(name: &str, err: Error) -> Error {
    match err {
        Error::Graph { key, message, .. } => Error::Graph {
            node: name.to_string(),
            key,
            message,
        },
        Error::Config { path, message } => Error::graph_at(name, path, message),
        Error::DataFusion(e) => Error::graph(name, e.strip_backtrace()),
        other => Error::graph(name, other),
    }
}

fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(Error::graph(
            name,
            "names may use only letters, digits, `_` and `-` (a `.` names an output: `router.legacy`)",
        ));
    }
    Ok(())
}

fn check_max_parallelism(decl: &NodeDecl, max: Option<usize>) -> Result<()> {
    match max {
        Some(max) if decl.parallelism > max => Err(Error::graph_at(
            &decl.name,
            "parallelism",
            format!(
                "{} is more than this component supports ({max})",
                decl.parallelism
            ),
        )),
        _ => Ok(()),
    }
}

/// The partitioning of an edge: as given, else the one the reader needs
/// (`required` keys), else forward or round-robin.
fn resolve_partitioning(
    input: &Input,
    from_parallelism: usize,
    parallelism: usize,
    required: Option<&[String]>,
) -> Result<Partitioning> {
    if let Some(required) = required {
        // Hashing on some of the required keys keeps each full key in one
        // instance too; anything else would split a key.
        return match &input.partitioning {
            None => Ok(Partitioning::Hash(required.to_vec())),
            Some(Partitioning::Hash(keys))
                if !keys.is_empty() && keys.iter().all(|k| required.contains(k)) =>
            {
                Ok(Partitioning::Hash(keys.clone()))
            }
            Some(other) => Err(Error::config(
                "partitioning",
                format!(
                    "`{other}` would split the rows of one key between instances; \
                     this component needs `{{ hash: [{}] }}` (or a subset of those columns)",
                    required.join(", ")
                ),
            )),
        };
    }
    match &input.partitioning {
        None if from_parallelism == parallelism => Ok(Partitioning::Forward),
        None => Ok(Partitioning::RoundRobin),
        Some(Partitioning::Forward) if from_parallelism != parallelism => Err(Error::config(
            "partitioning",
            format!(
                "a forward edge needs the same parallelism on both sides, \
                 but `{}` has {from_parallelism} and its reader {parallelism}; \
                 use round_robin or hash partitioning",
                input.from
            ),
        )),
        Some(Partitioning::Hash(keys)) if keys.is_empty() => Err(Error::config(
            "partitioning",
            "hash partitioning needs at least one key column",
        )),
        Some(p) => Ok(p.clone()),
    }
}

fn key_indices(from: &str, keys: &[String], schema: &SchemaRef) -> Result<Vec<usize>> {
    keys.iter()
        .map(|key| {
            schema.index_of(key).map_err(|_| {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                Error::config(
                    "partitioning",
                    format!(
                        "hash key `{key}` is not a column of `{from}`; columns: {}",
                        names.join(", ")
                    ),
                )
            })
        })
        .collect()
}

fn check_same_schemas(decl: &NodeDecl, schemas: &[SchemaRef]) -> Result<()> {
    let first = &schemas[0];
    for (input, schema) in decl.inputs.iter().zip(schemas).skip(1) {
        if !first
            .fields()
            .iter()
            .map(|f| (f.name(), f.data_type()))
            .eq(schema.fields().iter().map(|f| (f.name(), f.data_type())))
        {
            return Err(Error::graph_at(
                &decl.name,
                "inputs",
                format!(
                    "`{}` and `{}` have different schemas, so they cannot be merged:\n  {}: {}\n  {}: {}",
                    decl.inputs[0].from,
                    input.from,
                    decl.inputs[0].from,
                    describe_schema(first),
                    input.from,
                    describe_schema(schema),
                ),
            ));
        }
    }
    Ok(())
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

fn check_reaches_sink(nodes: &[Node]) -> Result<()> {
    // Nodes are in topological order, so walking backwards sees every
    // reader before the nodes it reads.
    let mut reaches = vec![false; nodes.len()];
    for i in (0..nodes.len()).rev() {
        if matches!(nodes[i].kind, NodeKind::Sink(_)) {
            reaches[i] = true;
        }
        if reaches[i] {
            for edge in &nodes[i].inputs {
                reaches[edge.from] = true;
            }
        }
    }
    match reaches.iter().position(|r| !r) {
        Some(i) => Err(Error::graph(
            &nodes[i].name,
            "has no path to a sink, so its output would be thrown away",
        )),
        None => Ok(()),
    }
}
