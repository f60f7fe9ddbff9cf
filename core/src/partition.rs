//! How a batch is split between the instances of the next node.

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::record_batch::RecordBatch;
use datafusion_common::hash_utils::{RandomState, create_hashes};

use crate::error::Result;

/// How rows travel over an edge to the parallel instances of the consuming
/// node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitioning {
    /// Instance *i* sends to instance *i*; both sides have the same
    /// parallelism. The cheapest edge: no copy, no hashing.
    Forward,
    /// Rows with equal values in these columns go to the same instance.
    Hash(Vec<String>),
    /// Every instance receives every batch.
    Broadcast,
    /// Whole batches go to the instances in turn.
    RoundRobin,
}

impl std::fmt::Display for Partitioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Partitioning::Forward => f.write_str("forward"),
            Partitioning::Hash(keys) => write!(f, "hash({})", keys.join(", ")),
            Partitioning::Broadcast => f.write_str("broadcast"),
            Partitioning::RoundRobin => f.write_str("round_robin"),
        }
    }
}

/// How many key groups a pipeline has unless it says otherwise.
pub const DEFAULT_MAX_PARALLELISM: usize = 128;

/// Keys hash into a fixed number of key groups, and each instance of a
/// keyed operator owns a contiguous range of them (as in Flink).
///
/// The number of groups is the pipeline's `max_parallelism`, fixed for the
/// life of its state: keyed state is checkpointed per group, so a restore
/// at another parallelism hands whole groups to the new instances instead
/// of hashing every key again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyGroups {
    count: usize,
}

impl Default for KeyGroups {
    fn default() -> Self {
        KeyGroups::new(DEFAULT_MAX_PARALLELISM)
    }
}

impl KeyGroups {
    /// `count` key groups (at least one).
    pub fn new(count: usize) -> Self {
        KeyGroups {
            count: count.max(1),
        }
    }

    /// How many groups there are: the most instances a keyed operator can
    /// run as.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The group of a key with this hash.
    pub fn of_hash(&self, hash: u64) -> usize {
        (hash % self.count as u64) as usize
    }

    /// The instance, of `parallelism`, that owns `group`.
    pub fn owner(&self, group: usize, parallelism: usize) -> usize {
        group * parallelism / self.count
    }

    /// The groups instance `instance` of `parallelism` owns.
    pub fn owned_by(&self, instance: usize, parallelism: usize) -> std::ops::Range<usize> {
        let start = |i: usize| (i * self.count).div_ceil(parallelism);
        start(instance)..start(instance + 1)
    }

    /// The group of each row of `batch`, keyed by the columns at `keys`.
    pub fn of_rows(&self, batch: &RecordBatch, keys: &[usize]) -> Result<Vec<usize>> {
        let mut hashes = vec![0; batch.num_rows()];
        let keys: Vec<&ArrayRef> = keys.iter().map(|&k| batch.column(k)).collect();
        create_hashes(keys, &HASH_STATE, &mut hashes)?;
        Ok(hashes.into_iter().map(|h| self.of_hash(h)).collect())
    }
}

/// Splits batches by the hash of key columns.
///
/// The hash is DataFusion's vectorized column hash with a fixed seed, so
/// every producer (and every process) sends a key to the same instance:
/// the one owning the key's [group](KeyGroups). Rows are moved with
/// Arrow's `take`, one call per column per destination.
#[derive(Debug)]
pub struct HashPartitioner {
    keys: Vec<usize>,
    partitions: usize,
    groups: KeyGroups,
    hashes: Vec<u64>,
}

const HASH_STATE: RandomState = RandomState::with_seed(0);

impl HashPartitioner {
    /// Splits on the columns at `keys` into `partitions` parts, each owning
    /// a range of `groups`.
    pub fn new(keys: Vec<usize>, partitions: usize, groups: KeyGroups) -> Self {
        assert!(partitions > 0, "a hash edge needs at least one partition");
        HashPartitioner {
            keys,
            partitions,
            groups,
            hashes: Vec::new(),
        }
    }

    /// How many parts batches are split into.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// Splits `batch`; part *i* holds the rows for instance *i*, `None` where
    /// there are none. Row order within a part is kept.
    pub fn split(&mut self, batch: &RecordBatch) -> Result<Vec<Option<RecordBatch>>> {
        if self.partitions == 1 {
            return Ok(vec![Some(batch.clone())]);
        }
        let rows = batch.num_rows();
        let keys: Vec<&ArrayRef> = self.keys.iter().map(|&k| batch.column(k)).collect();
        self.hashes.clear();
        self.hashes.resize(rows, 0);
        create_hashes(keys, &HASH_STATE, &mut self.hashes)?;

        let per_part = rows / self.partitions + 1;
        let mut indices: Vec<Vec<u32>> = (0..self.partitions)
            .map(|_| Vec::with_capacity(per_part))
            .collect();
        for (row, hash) in self.hashes.iter().enumerate() {
            let group = self.groups.of_hash(*hash);
            indices[self.groups.owner(group, self.partitions)].push(row as u32);
        }
        indices
            .into_iter()
            .map(|rows_of_part| match rows_of_part.len() {
                0 => Ok(None),
                n if n == rows => Ok(Some(batch.clone())),
                _ => Ok(Some(take_record_batch(
                    batch,
                    &UInt32Array::from(rows_of_part),
                )?)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use proptest::prelude::*;

    use super::*;

    fn batch(keys: &[i64], names: &[Option<String>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("row", DataType::Int64, false),
            Field::new("key", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let row = Int64Array::from_iter_values(0..keys.len() as i64);
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(row),
                Arc::new(Int64Array::from(keys.to_vec())),
                Arc::new(StringArray::from(names.to_vec())),
            ],
        )
        .unwrap()
    }

    proptest! {
        /// Every row arrives exactly once, and all rows with one key at one
        /// instance, whatever the batch and the parallelism.
        #[test]
        fn every_row_once_and_keys_stay_together(
            rows in prop::collection::vec((0i64..20, prop::option::of("[a-c]{0,2}")), 0..300),
            partitions in 1usize..=8,
            key_columns in prop::sample::select(vec![vec![1usize], vec![2], vec![1, 2]]),
        ) {
            let keys: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let names: Vec<Option<String>> = rows.iter().map(|r| r.1.clone()).collect();
            let input = batch(&keys, &names);
            let mut partitioner = HashPartitioner::new(key_columns.clone(), partitions, KeyGroups::default());
            let parts = partitioner.split(&input).unwrap();
            prop_assert_eq!(parts.len(), partitions);

            let mut seen_rows = HashSet::new();
            let mut home_of_key: HashMap<(i64, Option<String>), usize> = HashMap::new();
            for (instance, part) in parts.iter().enumerate() {
                let Some(part) = part else { continue };
                let row = part.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                for i in 0..part.num_rows() {
                    let r = row.value(i) as usize;
                    prop_assert!(seen_rows.insert(r), "row {} delivered twice", r);
                    let key = (
                        if key_columns.contains(&1) { keys[r] } else { 0 },
                        if key_columns.contains(&2) { names[r].clone() } else { None },
                    );
                    let home = *home_of_key.entry(key.clone()).or_insert(instance);
                    prop_assert_eq!(home, instance, "key {:?} split across instances", key);
                }
            }
            prop_assert_eq!(seen_rows.len(), keys.len());
        }
    }

    #[test]
    fn same_key_same_instance_across_batches() {
        let names = vec![None; 3];
        let mut a = HashPartitioner::new(vec![1], 4, KeyGroups::default());
        let mut b = HashPartitioner::new(vec![1], 4, KeyGroups::default());
        let first = a.split(&batch(&[7, 7, 7], &names)).unwrap();
        let second = b.split(&batch(&[7, 7, 7], &names)).unwrap();
        let home = |parts: &[Option<RecordBatch>]| parts.iter().position(Option::is_some);
        assert_eq!(home(&first), home(&second));
        assert_eq!(first.iter().flatten().count(), 1);
    }

    proptest! {
        /// Every group has exactly one owner, the ranges cover every group
        /// in order, and the partitioner sends a row to its group's owner.
        #[test]
        fn each_group_has_one_owner(count in 1usize..300, parallelism in 1usize..40) {
            prop_assume!(parallelism <= count);
            let groups = KeyGroups::new(count);
            let mut next = 0;
            for instance in 0..parallelism {
                let owned = groups.owned_by(instance, parallelism);
                prop_assert_eq!(owned.start, next);
                prop_assert!(!owned.is_empty(), "instance {} owns nothing", instance);
                for group in owned.clone() {
                    prop_assert_eq!(groups.owner(group, parallelism), instance);
                }
                next = owned.end;
            }
            prop_assert_eq!(next, count);
        }
    }

    #[test]
    fn rows_go_to_the_owner_of_their_group() {
        let keys: Vec<i64> = (0..1000).collect();
        let input = batch(&keys, &vec![None; keys.len()]);
        let groups = KeyGroups::new(16);
        let of_rows = groups.of_rows(&input, &[1]).unwrap();
        let parts = HashPartitioner::new(vec![1], 3, groups)
            .split(&input)
            .unwrap();
        for (instance, part) in parts.iter().enumerate() {
            let row = part.as_ref().unwrap().column(0);
            let row = row.as_any().downcast_ref::<Int64Array>().unwrap();
            for r in row.values() {
                assert_eq!(groups.owner(of_rows[*r as usize], 3), instance);
            }
        }
    }
}
