//! Planning: resolving names, ordering nodes, asking each factory for its
//! output schema, and checking partitioning, event time and reachability.

use super::*;

/// For each input of a node: the declaration it reads and the named output,
/// if not the main one.
pub(super) type Upstream = Vec<(usize, Option<String>)>;

pub(super) struct Planner {
    decls: Vec<NodeDecl>,
    by_name: HashMap<String, usize>,
    key_groups: KeyGroups,
}

impl Planner {
    pub(super) fn new(decls: Vec<NodeDecl>, key_groups: KeyGroups) -> Result<Self> {
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
        Ok(Planner {
            decls,
            by_name,
            key_groups,
        })
    }

    pub(super) fn plan(self) -> Result<Plan> {
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
        Ok(Plan {
            nodes,
            dead_letter: None,
            key_groups: self.key_groups,
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
        let mut state_keys = Vec::with_capacity(upstream.len());
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
            // A repartitioned edge is keyed even into one instance: its
            // keys choose the broker partition, and so the task.
            let keyed = decl.parallelism > 1 || input.repartition.is_some();
            let required = match &decl.kind {
                NodeKind::Operator(factory) if keyed => factory.input_partitioning(i),
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
            state_keys.push(match (&decl.kind, &partitioning) {
                (NodeKind::Operator(_), Partitioning::Hash(keys)) => Some(keys.clone()),
                (NodeKind::Operator(factory), _) => factory.input_partitioning(i),
                _ => None,
            });
            if input.repartition.is_some() && !matches!(partitioning, Partitioning::Hash(_)) {
                return Err(Error::graph_at(
                    name,
                    "repartition",
                    "writes rows keyed: set `partitioning: { hash: [columns] }` to say by which columns",
                ));
            }
            input_schemas.push(schema);
            inputs.push(Edge {
                from: index_of[*from_decl],
                port,
                partitioning,
                key_columns,
                repartition: input.repartition.clone(),
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
        if state_keys.iter().any(Option::is_some) && decl.parallelism > self.key_groups.count() {
            return Err(Error::graph_at(
                name,
                "parallelism",
                format!(
                    "must be at most `checkpoint.max_parallelism` ({}): its keyed state is split into that many key groups",
                    self.key_groups.count()
                ),
            ));
        }
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
            state_keys,
        })
    }
}

/// Attributes an error raised while checking node `name` to the node,
/// keeping the setting it is about.
pub(super) fn in_node(name: &str, err: Error) -> Error {
    if let Some((path, message)) = err.setting() {
        return Error::graph_at(name, path, message);
    }
    match err {
        Error::Graph { key, message, .. } => Error::Graph {
            node: name.to_string(),
            key,
            message,
        },
        Error::DataFusion(e) => Error::graph(name, e.strip_backtrace()),
        other => Error::graph(name, other),
    }
}

pub(super) fn check_name(name: &str) -> Result<()> {
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

pub(super) fn check_max_parallelism(decl: &NodeDecl, max: Option<usize>) -> Result<()> {
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
pub(super) fn resolve_partitioning(
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

pub(super) fn key_indices(from: &str, keys: &[String], schema: &SchemaRef) -> Result<Vec<usize>> {
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

pub(super) fn check_same_schemas(decl: &NodeDecl, schemas: &[SchemaRef]) -> Result<()> {
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

pub(super) fn check_reaches_sink(nodes: &[Node]) -> Result<()> {
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
