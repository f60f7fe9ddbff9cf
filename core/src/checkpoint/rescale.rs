//! Restoring an operator's state at another parallelism: whole key groups
//! move from the instances that wrote them to the instances that now own
//! them.

use arrow::array::UInt32Array;
use arrow::compute::take_record_batch;
use arrow::record_batch::RecordBatch;

use super::Snapshot;
use super::store::{KeyedTable, NodeRecord, groups_of_rows};
use crate::error::Result;
use crate::partition::KeyGroups;

/// Splits the snapshots of a node's earlier instances (`earlier[i]` from
/// instance *i*, as `record` describes them) between `parallelism` new
/// instances: the result's entry *j* holds, for each earlier instance, the
/// part instance *j* restores.
///
/// A keyed table's rows go to the owner of their key group under
/// `state_keys` (the new plan's key columns per input). When those are the
/// columns the checkpoint grouped by, with as many groups, each new
/// instance takes one contiguous slice of the stored rows; otherwise every
/// row's group is computed again. A table that belongs to no key goes whole
/// to one new instance (*i* modulo the parallelism) and empty to the
/// others. Every part carries its earlier instance's values (the
/// watermark, say).
pub(crate) fn redistribute(
    record: &NodeRecord,
    recorded_groups: Option<usize>,
    earlier: Vec<Snapshot>,
    parallelism: usize,
    state_keys: &[Option<Vec<String>>],
    groups: KeyGroups,
) -> Result<Vec<Vec<Snapshot>>> {
    let mut parts: Vec<Vec<Snapshot>> = (0..parallelism).map(|_| Vec::new()).collect();
    for (i, snapshot) in earlier.into_iter().enumerate() {
        let mut split: Vec<Snapshot> = (0..parallelism)
            .map(|_| Snapshot::new(snapshot.values.clone()))
            .collect();
        for (name, table) in &snapshot.tables {
            let Some(input) = snapshot.keyed_by(name) else {
                for (j, part) in split.iter_mut().enumerate() {
                    let rows = if j == i % parallelism {
                        table.clone()
                    } else {
                        table.slice(0, 0)
                    };
                    part.tables.push((name.clone(), rows));
                }
                continue;
            };
            let stored = record
                .instances
                .get(i)
                .and_then(|r| r.tables.iter().find(|t| &t.name == name))
                .and_then(|t| t.keyed.as_ref());
            let keys = state_keys.get(input).and_then(Option::as_ref);
            let pieces = match (keys, stored) {
                _ if parallelism == 1 => vec![table.clone()],
                (Some(keys), Some(stored))
                    if &stored.columns == keys && recorded_groups == Some(groups.count()) =>
                {
                    slices(table, stored, parallelism, groups)
                }
                (Some(keys), _) => by_owner(table, keys, parallelism, groups)?,
                // The new plan keys nothing by this input: one instance
                // takes it all (the planner allows only one then).
                (None, _) => {
                    let mut pieces = vec![table.slice(0, 0); parallelism];
                    pieces[0] = table.clone();
                    pieces
                }
            };
            for (part, rows) in split.iter_mut().zip(pieces) {
                part.keyed.push((name.clone(), input));
                part.tables.push((name.clone(), rows));
            }
        }
        for (j, part) in split.into_iter().enumerate() {
            parts[j].push(part);
        }
    }
    Ok(parts)
}

/// Each new instance's rows of a table stored by key group: groups are in
/// ascending order and owners ascend with them, so each instance's rows
/// are one slice.
fn slices(
    table: &RecordBatch,
    stored: &KeyedTable,
    parallelism: usize,
    groups: KeyGroups,
) -> Vec<RecordBatch> {
    let mut bounds = vec![(0usize, 0usize); parallelism];
    let mut offset = 0;
    for &(group, rows) in &stored.groups {
        let owner = groups.owner(group, parallelism);
        if bounds[owner].1 == 0 {
            bounds[owner].0 = offset;
        }
        bounds[owner].1 += rows as usize;
        offset += rows as usize;
    }
    bounds
        .into_iter()
        .map(|(start, len)| table.slice(start, len))
        .collect()
}

/// Each new instance's rows, by computing every row's key group.
fn by_owner(
    table: &RecordBatch,
    keys: &[String],
    parallelism: usize,
    groups: KeyGroups,
) -> Result<Vec<RecordBatch>> {
    let of_rows = groups_of_rows(table, keys, groups)?;
    let mut rows: Vec<Vec<u32>> = vec![Vec::new(); parallelism];
    for (row, group) in of_rows.into_iter().enumerate() {
        rows[groups.owner(group, parallelism)].push(row as u32);
    }
    rows.into_iter()
        .map(|rows| Ok(take_record_batch(table, &UInt32Array::from(rows))?))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array};

    use super::*;
    use crate::checkpoint::store::{InstanceRecord, TableRecord, by_key_group};

    fn table(keys: impl IntoIterator<Item = i64>) -> RecordBatch {
        let keys: Int64Array = keys.into_iter().collect();
        let values = Int64Array::from_iter_values((0..keys.len() as i64).map(|v| v * 10));
        RecordBatch::try_from_iter([
            ("key", Arc::new(keys) as Arc<dyn Array>),
            ("value", Arc::new(values)),
        ])
        .unwrap()
    }

    /// Two instances' state, written by key group as a checkpoint does,
    /// with the node record a checkpoint keeps of them.
    fn checkpoint(groups: KeyGroups) -> (NodeRecord, Vec<Snapshot>) {
        let keys = vec!["key".to_string()];
        let mut instances = Vec::new();
        let mut snapshots = Vec::new();
        for owned in [0..500, 500..1000] {
            let (sorted, runs) = by_key_group(&table(owned), &keys, groups).unwrap();
            instances.push(InstanceRecord {
                values: serde_json::json!({ "watermark": 7 }),
                tables: vec![TableRecord {
                    name: "rows".into(),
                    file: String::new(),
                    rows: sorted.num_rows() as u64,
                    bytes: 0,
                    keyed: Some(KeyedTable {
                        input: 0,
                        columns: keys.clone(),
                        groups: runs,
                    }),
                }],
            });
            snapshots.push(
                Snapshot::new(serde_json::json!({ "watermark": 7 }))
                    .with_keyed_table("rows", sorted, 0)
                    .with_table("pending", table([1, 2, 3])),
            );
        }
        let record = NodeRecord {
            kind: "operator".into(),
            instances,
            state_keys: vec![Some(keys)],
            state_version: None,
            state: None,
        };
        (record, snapshots)
    }

    /// Every keyed row lands once, at the instance owning its group, both
    /// by slices and by hashing again; unkeyed tables land once.
    #[test]
    fn every_row_goes_to_the_owner_of_its_group() {
        let groups = KeyGroups::new(16);
        let keys = [Some(vec!["key".to_string()])];
        for parallelism in [1, 3, 4, 16] {
            for recorded in [Some(16), Some(32)] {
                let (record, snapshots) = checkpoint(groups);
                let parts =
                    redistribute(&record, recorded, snapshots, parallelism, &keys, groups).unwrap();
                assert_eq!(parts.len(), parallelism);
                let mut seen = Vec::new();
                let mut pending = 0;
                for (j, parts) in parts.iter().enumerate() {
                    assert_eq!(parts.len(), 2, "one part per earlier instance");
                    for part in parts {
                        assert_eq!(part.values["watermark"], 7);
                        pending += part.table("pending").unwrap().num_rows();
                        let rows = part.table("rows").unwrap();
                        let owners = groups_of_rows(rows, &["key".to_string()], groups).unwrap();
                        assert!(owners.iter().all(|g| groups.owner(*g, parallelism) == j));
                        let key = rows
                            .column(0)
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .unwrap();
                        seen.extend(key.values().iter().copied());
                    }
                }
                seen.sort_unstable();
                assert_eq!(seen, (0..1000).collect::<Vec<_>>());
                assert_eq!(pending, 6, "each earlier instance's unkeyed table once");
            }
        }
    }
}
