//! Reading a repartition topic back: the messages the Kafka sink wrote
//! for a pipeline's repartitioned edge (their format is in
//! [`flumen_clients::kafka::repartition`]).
//!
//! Each partition holds the rows of every writer (one per task and
//! instance of the stage before the edge), each writer's in the order it
//! wrote them. The writers are the reader's splits: its watermark is the
//! minimum over them, so a writer running ahead makes no other writer's
//! rows late, and a batch holds one writer's rows. The reader ends once
//! every writer has written its end.
//!
//! Writers number the rows they send to each partition, and a writer
//! restarted from a checkpoint numbers the rows it writes again as it did
//! the first time (the stage before a repartition is stateless, one
//! instance per task: it replays its input in order). The reader keeps
//! the next number it expects from each writer and drops rows below it,
//! so each row counts once.

use std::collections::{BTreeMap, BTreeSet};

use arrow::compute::concat_batches;
use serde_json::json;

use flumen_clients::kafka::repartition::{Framing, decode_rows};
use flumen_core::component::SplitChange;
use flumen_core::prelude::*;

use super::consumer::Chunk;
use crate::payload::shown;

/// What a reader knows of the writers.
#[derive(Debug, Default)]
pub(super) struct Producers {
    /// How many there are, once a message has said.
    count: Option<u32>,
    /// Those that have written their end.
    ended: BTreeSet<u32>,
    /// Per writer, the number of the next row expected from it.
    next: BTreeMap<u32, u64>,
    /// Whether the runtime has been told the writers that have not ended
    /// (they hold the watermark back until their first rows).
    announced: bool,
}

/// What one call of [`Producers::read`] took from a chunk.
pub(super) struct Read {
    /// The rows, all from `producer`.
    pub(super) batch: Option<RecordBatch>,
    pub(super) producer: Option<u32>,
    /// The first message not read: the chunk's rest comes next.
    pub(super) next: usize,
    /// Writers to wait for, and writers that have ended.
    pub(super) changes: Vec<SplitChange>,
    /// Messages no writer of a repartition topic wrote.
    pub(super) rejected: Vec<Rejected>,
}

impl Producers {
    /// Reads `chunk` from message `skip` up to the first message of a
    /// second writer, or a writer's end after some rows.
    pub(super) fn read(&mut self, chunk: &Chunk, skip: usize, schema: &SchemaRef) -> Result<Read> {
        let keys = chunk
            .keys
            .as_ref()
            .expect("a repartition reader reads keys");
        let (topic, partition) = &chunk.partition;
        let mut read = Read {
            batch: None,
            producer: None,
            next: skip,
            changes: Vec::new(),
            rejected: Vec::new(),
        };
        let mut batches = Vec::new();
        while read.next < chunk.offsets.len() {
            let index = read.next;
            let position = || {
                Some(format!(
                    "kafka {topic}[{partition}] offset {}",
                    chunk.offsets[index]
                ))
            };
            let Some(framing) = keys[index].as_deref().and_then(Framing::parse) else {
                read.rejected.push(Rejected {
                    error: format!(
                        "not a message of a repartition topic (key {:?}): only a pipeline's \
                         repartition writers may write to it",
                        keys[index].as_deref().unwrap_or("")
                    ),
                    record: shown(chunk.payloads.get(index)),
                    position: position(),
                });
                read.next += 1;
                continue;
            };
            let (producer, count) = framing.producer();
            match self.count {
                Some(known) if known != count => {
                    return Err(Error::connector(
                        "kafka",
                        false,
                        format!(
                            "repartition topic `{topic}` holds rows of {known} writers and now of \
                             {count}: the stage before the repartition changed its tasks or \
                             parallelism while rows were in flight; let it finish (or delete \
                             the topic and the checkpoints) before changing it"
                        ),
                    ));
                }
                Some(_) => {}
                None => self.count = Some(count),
            }
            if !self.announced {
                self.announced = true;
                read.changes.extend(
                    (0..count)
                        .filter(|p| !self.ended.contains(p))
                        .map(|p| SplitChange::Added(p.into())),
                );
            }
            match framing {
                // A writer's end comes after the rows it wrote before it.
                Framing::End { .. } if read.producer.is_some() => break,
                Framing::End { .. } => {
                    if self.ended.insert(producer) {
                        read.changes.push(SplitChange::Finished(producer.into()));
                    }
                }
                Framing::Rows { .. } if read.producer.is_some_and(|p| p != producer) => break,
                Framing::Rows { first, .. } => match decode_rows(chunk.payloads.get(index)) {
                    Ok(decoded) => {
                        let rows = match decoded.as_slice() {
                            [one] => one.clone(),
                            _ => concat_batches(schema, &decoded)?,
                        };
                        let rows = RecordBatch::try_new(schema.clone(), rows.columns().to_vec())?;
                        let expected = self.next.entry(producer).or_insert(0);
                        let count = rows.num_rows() as u64;
                        if first > *expected {
                            tracing::warn!(
                                topic = %topic,
                                partition,
                                producer,
                                expected = *expected,
                                first,
                                "rows missing from a repartition topic (a writer's messages were lost)"
                            );
                        }
                        // Rows below the expected number were read before:
                        // a restarted writer wrote them again.
                        let seen = expected.saturating_sub(first).min(count);
                        if seen > 0 {
                            tracing::info!(
                                topic = %topic,
                                partition,
                                producer,
                                rows = seen,
                                "dropped rows a restarted writer wrote again"
                            );
                        }
                        *expected = (*expected).max(first + count);
                        if seen < count {
                            read.producer = Some(producer);
                            batches.push(rows.slice(seen as usize, (count - seen) as usize));
                        }
                    }
                    Err(error) => read.rejected.push(Rejected {
                        error: format!("not Arrow IPC rows: {error}"),
                        record: shown(chunk.payloads.get(index)),
                        position: position(),
                    }),
                },
            }
            read.next += 1;
        }
        if !batches.is_empty() {
            read.batch = Some(concat_batches(schema, &batches)?);
        }
        Ok(read)
    }

    /// Whether every writer has ended.
    pub(super) fn all_ended(&self) -> bool {
        self.count
            .is_some_and(|count| self.ended.len() as u32 == count)
    }

    /// As a checkpoint records it.
    pub(super) fn to_json(&self) -> serde_json::Value {
        let next: BTreeMap<String, u64> =
            self.next.iter().map(|(p, n)| (p.to_string(), *n)).collect();
        json!({ "count": self.count, "ended": self.ended, "next_rows": next })
    }

    /// As [`Producers::to_json`] wrote it.
    pub(super) fn from_json(recorded: &serde_json::Value) -> Result<Producers> {
        let invalid = || Error::internal(format!("not a repartition reader's writers: {recorded}"));
        let count = match recorded.get("count") {
            Some(serde_json::Value::Null) | None => None,
            Some(count) => Some(count.as_u64().ok_or_else(invalid)? as u32),
        };
        let ended = recorded
            .get("ended")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(invalid)?
            .iter()
            .map(|p| p.as_u64().map(|p| p as u32).ok_or_else(invalid))
            .collect::<Result<_>>()?;
        let next = match recorded.get("next_rows") {
            None => BTreeMap::new(),
            Some(next) => next
                .as_object()
                .ok_or_else(invalid)?
                .iter()
                .map(|(p, n)| {
                    Ok((
                        p.parse().map_err(|_| invalid())?,
                        n.as_u64().ok_or_else(invalid)?,
                    ))
                })
                .collect::<Result<_>>()?,
        };
        Ok(Producers {
            count,
            ended,
            next,
            announced: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use flumen_clients::kafka::repartition::encode_rows;

    use super::*;
    use crate::payload::Payloads;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]))
    }

    /// A message of `ids` from writer `producer` (of 2), its first row
    /// numbered `first`.
    fn rows(producer: u32, first: u64, ids: &[i64]) -> (String, Vec<u8>) {
        let batch =
            RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(ids.to_vec()))]).unwrap();
        let key = Framing::Rows {
            producer,
            producers: 2,
            first,
        }
        .key();
        (key, encode_rows(&batch).unwrap())
    }

    fn end(producer: u32) -> (String, Vec<u8>) {
        let key = Framing::End {
            producer,
            producers: 2,
        }
        .key();
        (key, Vec::new())
    }

    fn chunk(messages: &[(String, Vec<u8>)]) -> Chunk {
        let mut payloads = Payloads::default();
        for (_, value) in messages {
            payloads.push(value);
        }
        Chunk {
            partition: (Arc::from("by-page"), 0),
            payloads,
            offsets: (0..messages.len() as i64).collect(),
            timestamps: vec![None; messages.len()],
            keys: Some(messages.iter().map(|(k, _)| Some(k.clone())).collect()),
        }
    }

    fn ids(batch: &Option<RecordBatch>) -> Vec<i64> {
        batch.as_ref().map_or(Vec::new(), |b| {
            b.column(0).as_primitive::<Int64Type>().values().to_vec()
        })
    }

    /// Reads the whole chunk, a writer's run at a time.
    fn read_all(producers: &mut Producers, chunk: &Chunk) -> Vec<(Option<u32>, Vec<i64>)> {
        let mut runs = Vec::new();
        let mut next = 0;
        while next < chunk.offsets.len() {
            let read = producers.read(chunk, next, &schema()).unwrap();
            runs.push((read.producer, ids(&read.batch)));
            next = read.next;
        }
        runs
    }

    #[test]
    fn rows_a_restarted_writer_writes_again_are_dropped() {
        let mut producers = Producers::default();
        // Writer 0 wrote rows 0..3 and 3..5, died, and its restart (from
        // a checkpoint after row 2) writes rows 2..6 again and on.
        let chunk = chunk(&[
            rows(0, 0, &[10, 11, 12]),
            rows(0, 3, &[13, 14]),
            rows(1, 0, &[20]),
            rows(0, 2, &[12, 13, 14, 15]),
            rows(0, 6, &[16]),
        ]);
        let runs = read_all(&mut producers, &chunk);
        assert_eq!(
            runs,
            vec![
                (Some(0), vec![10, 11, 12, 13, 14]),
                (Some(1), vec![20]),
                (Some(0), vec![15, 16]),
            ]
        );
        // A copy wholly read before is dropped without a batch.
        let again = self::chunk(&[rows(0, 0, &[10, 11, 12])]);
        assert_eq!(read_all(&mut producers, &again), vec![(None, vec![])]);
    }

    #[test]
    fn the_reader_ends_once_every_writer_has_and_remembers_across_a_restore() {
        let mut producers = Producers::default();
        let first = chunk(&[rows(0, 0, &[1, 2]), end(0), rows(1, 0, &[3])]);
        let read = producers.read(&first, 0, &schema()).unwrap();
        // Both writers hold the watermark back from the first message on.
        assert_eq!(
            read.changes,
            vec![SplitChange::Added(0), SplitChange::Added(1)]
        );
        // A writer's end waits until after the rows before it.
        assert_eq!((ids(&read.batch), read.next), (vec![1, 2], 1));
        let read = producers.read(&first, 1, &schema()).unwrap();
        assert_eq!(read.changes, vec![SplitChange::Finished(0)]);
        assert_eq!(ids(&read.batch), vec![3]);
        assert!(!producers.all_ended());

        // A checkpoint here, restored: writer 0 has ended, and writer 1's
        // rows up to 1 were read.
        let mut restored = Producers::from_json(&producers.to_json()).unwrap();
        let rest = chunk(&[rows(1, 0, &[3]), rows(1, 1, &[4]), end(1)]);
        let runs = read_all(&mut restored, &rest);
        assert_eq!(runs, vec![(Some(1), vec![4]), (None, vec![])]);
        assert!(restored.all_ended());
    }

    #[test]
    fn a_message_no_writer_wrote_is_rejected() {
        let mut producers = Producers::default();
        let foreign = chunk(&[("user-7".to_string(), b"{}".to_vec()), rows(0, 0, &[1])]);
        let read = producers.read(&foreign, 0, &schema()).unwrap();
        assert_eq!(read.rejected.len(), 1);
        assert!(
            read.rejected[0]
                .error
                .contains("not a message of a repartition topic")
        );
        assert_eq!(ids(&read.batch), vec![1]);
    }
}
