//! Which shards of a stream to read, and when: parents before children.
//!
//! A reshard closes shards and opens children: a split closes one parent
//! and opens two children, a merge closes two (the parent and its
//! adjacent parent) and opens one, and UpdateShardCount does many of
//! both. Records for a partition key go to the parent until it closes and
//! to a child after, so a child is read only once every parent it has was
//! read to its end. A parent that is no longer listed has aged out of the
//! stream's retention: nothing is left to read in it.

use std::collections::{BTreeMap, BTreeSet};

/// A shard as ListShards describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shard {
    pub(crate) id: String,
    /// `ParentShardId` and `AdjacentParentShardId`, where present.
    pub(crate) parents: Vec<String>,
    /// Whether the shard is closed (it has an ending sequence number).
    pub(crate) closed: bool,
}

/// The stream's shards and how far they have been read.
#[derive(Debug, Default)]
pub(crate) struct ShardGraph {
    shards: BTreeMap<String, Shard>,
    /// Read to SHARD_END (and, when checkpointing, recorded so).
    finished: BTreeSet<String>,
}

impl ShardGraph {
    /// Notes shards read to their end in an earlier run or elsewhere.
    pub(crate) fn restore_finished(&mut self, finished: impl IntoIterator<Item = String>) {
        self.finished.extend(finished);
    }

    /// Replaces the shards with a fresh listing. Finished shards that are
    /// neither listed nor a listed shard's parent are forgotten: they have
    /// aged out, and so has every record that could wait for them.
    pub(crate) fn update(&mut self, listed: Vec<Shard>) {
        self.shards = listed.into_iter().map(|s| (s.id.clone(), s)).collect();
        let parents: BTreeSet<&String> = self.shards.values().flat_map(|s| &s.parents).collect();
        self.finished
            .retain(|id| self.shards.contains_key(id) || parents.contains(id));
    }

    /// Adds shards learnt of before the next listing (the children a
    /// closed shard names when it ends).
    pub(crate) fn add(&mut self, shard: Shard) {
        self.shards.entry(shard.id.clone()).or_insert(shard);
    }

    pub(crate) fn finish(&mut self, id: &str) {
        self.finished.insert(id.to_string());
    }

    /// The shards read to their end.
    pub(crate) fn finished(&self) -> impl Iterator<Item = &str> {
        self.finished.iter().map(String::as_str)
    }

    pub(crate) fn is_finished(&self, id: &str) -> bool {
        self.finished.contains(id)
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Shard> {
        self.shards.get(id)
    }

    /// Shards that can be read now: not finished, and every parent they
    /// have is finished or gone.
    pub(crate) fn ready(&self) -> impl Iterator<Item = &Shard> {
        self.shards.values().filter(|shard| {
            !self.finished.contains(&shard.id)
                && shard
                    .parents
                    .iter()
                    .all(|p| self.finished.contains(p) || !self.shards.contains_key(p))
        })
    }

    /// Every listed shard that is not finished.
    pub(crate) fn unfinished(&self) -> impl Iterator<Item = &Shard> {
        self.shards
            .values()
            .filter(|shard| !self.finished.contains(&shard.id))
    }

    /// Marks every closed shard finished and returns them: with
    /// `start_from: latest`, nothing will be added to them, and their
    /// children are where the new records go.
    pub(crate) fn skip_closed(&mut self) -> Vec<String> {
        let closed: Vec<String> = self
            .shards
            .values()
            .filter(|s| s.closed)
            .map(|s| s.id.clone())
            .collect();
        self.finished.extend(closed.iter().cloned());
        closed
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str], closed: bool) -> Shard {
        Shard {
            id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            closed,
        }
    }

    fn ready(graph: &ShardGraph) -> Vec<&str> {
        graph.ready().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn children_wait_for_every_parent() {
        let mut graph = ShardGraph::default();
        // 0 split into 2 and 3; then 1 and 2 merged into 4.
        graph.update(vec![
            shard("0", &[], true),
            shard("1", &[], true),
            shard("2", &["0"], true),
            shard("3", &["0"], false),
            shard("4", &["1", "2"], false),
        ]);
        assert_eq!(ready(&graph), ["0", "1"]);
        graph.finish("0");
        assert_eq!(ready(&graph), ["1", "2", "3"]);
        graph.finish("2");
        assert_eq!(ready(&graph), ["1", "3"], "4 waits for its adjacent parent");
        graph.finish("1");
        assert_eq!(ready(&graph), ["3", "4"]);
    }

    #[test]
    fn parents_aged_out_do_not_hold_children_back() {
        let mut graph = ShardGraph::default();
        graph.update(vec![shard("5", &["gone"], false)]);
        assert_eq!(ready(&graph), ["5"]);
    }

    #[test]
    fn finished_shards_are_forgotten_once_nothing_refers_to_them() {
        let mut graph = ShardGraph::default();
        graph.restore_finished(["0".to_string(), "1".to_string()]);
        graph.update(vec![shard("1", &[], true), shard("2", &["0"], false)]);
        assert!(graph.is_finished("0"), "a listed shard's parent");
        graph.update(vec![shard("2", &["0"], false)]);
        assert!(graph.is_finished("0"));
        assert!(!graph.is_finished("1"), "aged out and nobody's parent");
    }

    #[test]
    fn latest_skips_closed_shards() {
        let mut graph = ShardGraph::default();
        graph.update(vec![shard("0", &[], true), shard("1", &["0"], false)]);
        assert_eq!(graph.skip_closed(), ["0"]);
        assert_eq!(ready(&graph), ["1"]);
        assert_eq!(graph.unfinished().count(), 1);
    }
}
