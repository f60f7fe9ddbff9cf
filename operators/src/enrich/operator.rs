//! The `enrich` operator: batches whose calls are in flight, let out in
//! order (or as they are done) once answered.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use flumen_core::prelude::*;
use serde_json::{Map, Value};
use tokio::task::JoinHandle;

use super::calls::{Answer, Caller, Request, UrlTemplate, requests};
use super::config::{ColumnSpec, EnrichConfig};

/// The `enrich` transform. Built from an [`EnrichConfig`].
#[derive(Clone)]
pub struct Enrich {
    config: Arc<EnrichConfig>,
    url: UrlTemplate,
    /// The added columns, and the JSON pointer each is read from.
    columns: Arc<[(Field, String)]>,
    /// One caller for every instance (and task) of the component in this
    /// process: one cache, one breaker, one bound on calls in flight.
    caller: Arc<OnceLock<Arc<Caller>>>,
}

impl std::fmt::Debug for Enrich {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrich")
            .field("url", &self.config.url)
            .finish()
    }
}

impl Enrich {
    pub(crate) fn new(config: EnrichConfig, url: UrlTemplate) -> Result<Self> {
        let columns = config
            .columns
            .iter()
            .map(|(name, spec)| {
                let (data_type, path) = match spec {
                    ColumnSpec::Type(data_type) => (data_type, format!("/{name}")),
                    ColumnSpec::Path { data_type, path } => (data_type, path.clone()),
                };
                let data_type = flumen_core::schema::parse_type(data_type)
                    .map_err(|e| Error::config(format!("columns.{name}"), e))?;
                Ok((Field::new(name, data_type, true), path))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Enrich {
            config: Arc::new(config),
            url,
            columns: columns.into(),
            caller: Arc::default(),
        })
    }

    fn added_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|(field, _)| field.clone())
                .collect::<Vec<_>>(),
        ))
    }
}

impl OperatorFactory for Enrich {
    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let input = &inputs[0];
        let mut needed: Vec<(&str, String)> = self
            .url
            .columns()
            .into_iter()
            .map(|c| (c, "url".to_string()))
            .collect();
        if let Some(body) = &self.config.body {
            needed.extend(
                body.iter()
                    .map(|(field, column)| (column.as_str(), format!("body.{field}"))),
            );
        }
        for (column, key) in needed {
            flumen_core::schema::column_index(input, &key, column)?;
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (field, _) in self.columns.iter() {
            if input.field_with_name(field.name()).is_ok() {
                return Err(Error::config(
                    format!("columns.{}", field.name()),
                    "is already a column of the input; name the added column otherwise",
                ));
            }
            fields.push(field.clone());
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    fn create(&self, instance: InstanceInfo, inputs: &[SchemaRef]) -> Result<Box<dyn Operator>> {
        Ok(Box::new(EnrichInstance {
            factory: self.clone(),
            output: self.output_schema(inputs)?,
            in_flight: VecDeque::new(),
            rows_in_flight: 0,
            answered: Arc::default(),
            instance,
            hits: 0,
            lookups: 0,
        }))
    }
}

/// A batch whose calls are being made.
struct InFlight {
    work: JoinHandle<Result<Enriched>>,
    rows: usize,
    /// The watermark it arrived under: the output's is held there until
    /// it is out.
    arrived_under: EventTime,
}

/// A batch with its answers in: its rows with the added columns, and
/// those whose calls failed for good, with why.
struct Enriched {
    rows: Option<RecordBatch>,
    failed: Vec<(RecordBatch, String)>,
    /// How many rows were looked up, and how many found in the cache.
    lookups: u64,
    hits: u64,
}

struct EnrichInstance {
    factory: Enrich,
    output: SchemaRef,
    in_flight: VecDeque<InFlight>,
    rows_in_flight: usize,
    /// Told each time a batch's calls are all answered.
    answered: Arc<tokio::sync::Notify>,
    instance: InstanceInfo,
    hits: u64,
    lookups: u64,
}

impl EnrichInstance {
    fn caller(&self, ctx: &Context) -> Result<Arc<Caller>> {
        if let Some(caller) = self.factory.caller.get() {
            return Ok(caller.clone());
        }
        let caller = Arc::new(Caller::new(&self.factory.config, ctx.node.clone())?);
        Ok(self.factory.caller.get_or_init(|| caller).clone())
    }

    /// Lets out the batches that are done: from the front only when
    /// ordered, else any. With `all`, waits for every one (unordered: in
    /// the order they are answered).
    async fn let_out(&mut self, out: &mut Collector, all: bool) -> Result<()> {
        let ordered = self.factory.config.ordered;
        if all && !ordered {
            while !self.in_flight.is_empty() {
                self.let_out_done(out, false).await?;
                if !self.in_flight.is_empty() {
                    self.answered.notified().await;
                }
            }
            return Ok(());
        }
        self.let_out_done(out, all).await
    }

    /// Lets out the batches that are done (with `all`, every one, in
    /// order): from the front only when ordered, else any.
    async fn let_out_done(&mut self, out: &mut Collector, all: bool) -> Result<()> {
        let ordered = self.factory.config.ordered;
        let mut index = 0;
        while index < self.in_flight.len() {
            if !(all || self.in_flight[index].work.is_finished()) {
                if ordered {
                    break;
                }
                index += 1;
                continue;
            }
            let batch = self.in_flight.remove(index).expect("in range");
            self.emit(batch, out).await?;
        }
        Ok(())
    }

    /// Waits for `batch`'s answers and lets its rows out.
    async fn emit(&mut self, batch: InFlight, out: &mut Collector) -> Result<()> {
        self.rows_in_flight -= batch.rows;
        let enriched = batch
            .work
            .await
            .map_err(|e| Error::internal(format!("an enrich call panicked: {e}")))??;
        self.lookups += enriched.lookups;
        self.hits += enriched.hits;
        if let Some(rows) = enriched.rows {
            out.emit(rows);
        }
        for (row, why) in enriched.failed {
            out.reject(&row, &why)?;
        }
        Ok(())
    }

    /// Waits until fewer than `max_in_flight` rows wait for answers.
    async fn make_room(&mut self, out: &mut Collector) -> Result<()> {
        while self.rows_in_flight >= self.factory.config.max_in_flight {
            // The oldest batch is the one to wait for: ordered, nothing can
            // go out before it; unordered, it has waited longest.
            let Some(oldest) = self.in_flight.pop_front() else {
                break;
            };
            self.emit(oldest, out).await?;
            self.let_out(out, false).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for EnrichInstance {
    async fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let caller = self.caller(ctx)?;
        let factory = self.factory.clone();
        let output = self.output.clone();
        let rows = batch.num_rows();
        let answered = self.answered.clone();
        let work = tokio::spawn(async move {
            let enriched = enrich(&factory, &caller, &output, batch).await;
            answered.notify_one();
            enriched
        });
        self.in_flight.push_back(InFlight {
            work,
            rows,
            arrived_under: ctx.watermark.unwrap_or(EventTime::MIN),
        });
        self.rows_in_flight += rows;
        self.let_out(out, false).await?;
        self.make_room(out).await
    }

    /// Every call in flight is answered before the barrier passes: its
    /// rows go out ahead of it, so the checkpoint holds no call half made.
    async fn on_barrier(
        &mut self,
        _checkpoint: u64,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        self.let_out(out, true).await
    }

    fn watermark_hold(&self) -> Option<EventTime> {
        self.in_flight.iter().map(|b| b.arrived_under).min()
    }

    fn next_timer(&self) -> Option<EventTime> {
        // Look again shortly for batches whose answers are in.
        (!self.in_flight.is_empty()).then(|| flumen_core::runtime::wall_clock_millis() + 2)
    }

    async fn on_timer(
        &mut self,
        _now: EventTime,
        _ctx: &mut Context,
        out: &mut Collector,
    ) -> Result<()> {
        self.let_out(out, false).await
    }

    async fn on_end(&mut self, ctx: &mut Context, out: &mut Collector) -> Result<()> {
        self.let_out(out, true).await?;
        if self.lookups > 0 {
            tracing::info!(
                node = %ctx.node,
                instance = self.instance.index,
                lookups = self.lookups,
                hits = self.hits,
                "enrich: {:.1}% of lookups answered without a call (cache, or an identical row's call)",
                100.0 * self.hits as f64 / self.lookups as f64
            );
        }
        Ok(())
    }
}

/// Makes the calls of `batch`'s rows and adds the answers' columns.
async fn enrich(
    factory: &Enrich,
    caller: &Caller,
    output: &SchemaRef,
    batch: RecordBatch,
) -> Result<Enriched> {
    let rows = rows_as_objects(&batch)?;
    let requests = requests(&factory.config, &factory.url, &rows);
    let callable: Vec<Request> = requests.iter().filter_map(|r| r.clone().ok()).collect();
    let lookups = callable.len() as u64;
    let (answers, hits) = caller.answer(&callable).await;
    let mut answers = answers.into_iter();
    let mut kept = Vec::new();
    let mut values = Vec::new();
    let mut failed = Vec::new();
    for (index, request) in requests.into_iter().enumerate() {
        let answer: Answer = match request {
            Ok(_) => answers.next().expect("one answer per request"),
            Err(why) => Err(why),
        };
        match answer.and_then(|answer| pick(&factory.columns, &answer)) {
            Ok(object) => {
                kept.push(index as u32);
                values.push(object);
            }
            Err(why) => failed.push((batch.slice(index, 1), why)),
        }
    }
    let added = decode(&factory.added_schema(), &values);
    let (kept, added) = match added {
        Ok(added) => (kept, added),
        // A value the column's type cannot take: find the rows, one by one.
        Err(_) => {
            let mut good_rows = Vec::new();
            let mut good_values = Vec::new();
            for (index, object) in kept.into_iter().zip(values) {
                match decode(&factory.added_schema(), std::slice::from_ref(&object)) {
                    Ok(_) => {
                        good_rows.push(index);
                        good_values.push(object);
                    }
                    Err(e) => failed.push((
                        batch.slice(index as usize, 1),
                        format!("the answer does not fit the added columns: {e}"),
                    )),
                }
            }
            let added = decode(&factory.added_schema(), &good_values)?;
            (good_rows, added)
        }
    };
    let rows = match kept.len() {
        0 => None,
        n if n == batch.num_rows() => Some(join_columns(output, &batch, &added)?),
        _ => {
            let indices = arrow::array::UInt32Array::from(kept);
            let taken = arrow::compute::take_record_batch(&batch, &indices)?;
            Some(join_columns(output, &taken, &added)?)
        }
    };
    Ok(Enriched {
        rows,
        failed,
        lookups,
        hits,
    })
}

/// The rows of `batch` as JSON objects (nulls left out).
fn rows_as_objects(batch: &RecordBatch) -> Result<Vec<Map<String, Value>>> {
    let mut buffer = Vec::new();
    let mut writer = arrow::json::ArrayWriter::new(&mut buffer);
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    if buffer.is_empty() {
        return Ok(vec![Map::new(); batch.num_rows()]);
    }
    serde_json::from_slice(&buffer)
        .map_err(|e| Error::internal(format!("rows as JSON did not parse: {e}")))
}

/// The added columns' values in `answer`, as an object.
fn pick(columns: &[(Field, String)], answer: &Value) -> std::result::Result<Value, String> {
    let object: Map<String, Value> = columns
        .iter()
        .map(|(field, path)| {
            let value = answer.pointer(path).cloned().unwrap_or(Value::Null);
            (field.name().clone(), value)
        })
        .collect();
    Ok(Value::Object(object))
}

/// Decodes objects into the added columns.
fn decode(schema: &SchemaRef, values: &[Value]) -> Result<RecordBatch> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(values.len().max(1))
        .build_decoder()?;
    decoder.serialize(values)?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

/// The input's columns followed by the added ones.
fn join_columns(
    output: &SchemaRef,
    input: &RecordBatch,
    added: &RecordBatch,
) -> Result<RecordBatch> {
    let mut columns = input.columns().to_vec();
    columns.extend(added.columns().iter().cloned());
    Ok(RecordBatch::try_new(output.clone(), columns)?)
}
