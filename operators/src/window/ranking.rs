//! A window's `top`: only its best `n` keys by one aggregate are emitted.
//!
//! Ranking inside the window operator means a window's other keys are never
//! materialized as rows. For hopping windows the aggregates are kept as
//! running sums over the window about to be emitted ([`Running`]): a pane
//! is added when it enters and subtracted when it leaves, so emitting a
//! window costs what its panes changed plus one pass over its keys,
//! whatever the window's size.

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::buffer::NullBuffer;
use arrow::compute::SortOptions;
use arrow::datatypes::Int64Type;
use flumen_core::prelude::*;

/// The best `n` keys of each window by the aggregate at `column`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ranking {
    pub(crate) n: usize,
    /// Which aggregate ranks (its output is int64: a count or a sum).
    pub(crate) column: usize,
    pub(crate) order: SortOptions,
    pub(crate) with_ties: bool,
}

impl Ranking {
    /// The positions of the best `n` of `values` (and those tied with the
    /// n-th, if asked), best first. `valid(i)` says whether `values[i]` is
    /// a value or a null.
    ///
    /// One pass: each value is mapped to an unsigned key that sorts best
    /// first, and a key worse than the n-th best kept so far is skipped
    /// with one comparison, so a window's keys are scanned, not sorted.
    pub(crate) fn best(&self, values: &[i64], valid: impl Fn(usize) -> bool) -> Vec<u32> {
        let key = |value: i64| self.value_key(value);
        let mut nulls: Vec<u32> = Vec::new();
        let mut kept: Vec<(u64, u32)> = Vec::new();
        let mut bar = u64::MAX;
        let mut limit = 2 * self.n + 16;
        for (i, &value) in values.iter().enumerate() {
            if !valid(i) {
                nulls.push(i as u32);
                continue;
            }
            let key = key(value);
            if key > bar {
                continue;
            }
            kept.push((key, i as u32));
            if kept.len() >= limit {
                bar = cut(&mut kept, self.n);
                // Ties with the bar all stay: let them grow the room
                // rather than cut again on every push.
                limit = limit.max(2 * kept.len());
            }
        }
        // Nulls tie with each other, and rank before every value or after.
        let mut best: Vec<u32> = if self.order.nulls_first {
            if nulls.len() < self.n {
                cut(&mut kept, self.n - nulls.len());
                nulls.extend(kept.iter().map(|(_, i)| i));
            }
            nulls
        } else {
            cut(&mut kept, self.n);
            let mut best: Vec<u32> = kept.iter().map(|(_, i)| *i).collect();
            if best.len() < self.n {
                best.extend(nulls);
            }
            best
        };
        if !self.with_ties {
            best.truncate(self.n);
        }
        best
    }

    /// A value as an unsigned key that sorts best first.
    fn value_key(&self, value: i64) -> u64 {
        let ordered = (value as u64) ^ (1 << 63);
        if self.order.descending {
            !ordered
        } else {
            ordered
        }
    }

    /// A value or null as a key that sorts best first.
    fn rank_key(&self, value: Option<i64>) -> u128 {
        match value {
            Some(value) => 1 + u128::from(self.value_key(value)),
            None if self.order.nulls_first => 0,
            None => u128::MAX,
        }
    }

    /// The rows of `values` (one array per aggregate) to keep.
    pub(crate) fn best_rows(&self, values: &[ArrayRef]) -> Result<Vec<u32>> {
        let ranked = values[self.column]
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| Error::internal("the ranked aggregate is not int64"))?;
        Ok(self.best(ranked.values(), |row| ranked.is_valid(row)))
    }
}

/// Sorts `kept` by key, drops what ranks below the `n`-th (keeping its
/// ties) and returns the `n`-th's key (the worst, if fewer are kept).
fn cut(kept: &mut Vec<(u64, u32)>, n: usize) -> u64 {
    kept.sort_unstable();
    let Some(&(bar, _)) = kept.get(n.saturating_sub(1)) else {
        return u64::MAX;
    };
    let ties_end = kept[n..]
        .iter()
        .position(|(key, _)| *key != bar)
        .map_or(kept.len(), |i| n + i);
    kept.truncate(ties_end);
    bar
}

/// Each aggregate's partial state (one int64 column, as counts and sums
/// have) summed per key over the panes of a hopping window.
///
/// The keys in the window are kept densely, in `keys`, so that ranking
/// scans the window's keys only, not every key id handed out since the
/// ids were last compacted. Most windows are not scanned at all: the keys
/// a slide changed are ranked together with the last window's best, which
/// settles the ranking unless the best lost ground (see
/// [`Running::best_of_changed`]).
#[derive(Debug, Default)]
pub(crate) struct Running {
    /// Per key id: its index in the dense columns, or [`ABSENT`].
    slots: Vec<u32>,
    /// Dense: the key id of each slot.
    keys: Vec<u32>,
    /// Dense: how many pane parts summed in hold the key. A key leaves the
    /// window when this drops to zero.
    parts: Vec<u32>,
    /// Per aggregate, dense: the sum of the parts' states.
    sums: Vec<Vec<i64>>,
    /// Per aggregate, dense: how many parts had a non-null state (a sum
    /// over nulls only is null).
    valid: Vec<Vec<u32>>,
    /// The key ids changed since the last ranking, each once.
    touched: Vec<u32>,
    /// Per key id: whether it is in `touched`.
    marked: Vec<bool>,
    /// The last ranking's best key ids, and the rank key of its n-th.
    last: Option<(Vec<u32>, u128)>,
}

const ABSENT: u32 = u32::MAX;

impl Running {
    /// Adds (`sign` 1) or subtracts (`sign` -1) one pane part: the key id
    /// of each of its rows, and each aggregate's state columns.
    pub(crate) fn apply(
        &mut self,
        ids: &[usize],
        states: &[Vec<ArrayRef>],
        sign: i64,
    ) -> Result<()> {
        let values = states
            .iter()
            .map(|state| {
                state
                    .first()
                    .and_then(|s| s.as_primitive_opt::<Int64Type>())
                    .ok_or_else(|| Error::internal("a running aggregate's state is not int64"))
            })
            .collect::<Result<Vec<&Int64Array>>>()?;
        self.sums.resize_with(values.len(), Vec::new);
        self.valid.resize_with(values.len(), Vec::new);
        for (row, &id) in ids.iter().enumerate() {
            self.touch(id as u32);
            let slot = match sign > 0 {
                true => self.slot_or_insert(id),
                false => self.slots[id] as usize,
            };
            for (aggregate, values) in values.iter().enumerate() {
                if values.is_valid(row) {
                    let sum = &mut self.sums[aggregate][slot];
                    *sum = sum.wrapping_add(sign.wrapping_mul(values.value(row)));
                    let valid = &mut self.valid[aggregate][slot];
                    *valid = valid.wrapping_add_signed(sign as i32);
                }
            }
            self.parts[slot] = self.parts[slot].wrapping_add_signed(sign as i32);
            if self.parts[slot] == 0 {
                self.remove(slot);
            }
        }
        Ok(())
    }

    fn slot_or_insert(&mut self, id: usize) -> usize {
        if self.slots.len() <= id {
            self.slots.resize(id + 1, ABSENT);
        }
        if self.slots[id] == ABSENT {
            self.slots[id] = self.keys.len() as u32;
            self.keys.push(id as u32);
            self.parts.push(0);
            for (sums, valid) in self.sums.iter_mut().zip(&mut self.valid) {
                sums.push(0);
                valid.push(0);
            }
        }
        self.slots[id] as usize
    }

    /// Drops the key at `slot`, moving the last one into its place.
    fn remove(&mut self, slot: usize) {
        self.slots[self.keys[slot] as usize] = ABSENT;
        self.keys.swap_remove(slot);
        self.parts.swap_remove(slot);
        for (sums, valid) in self.sums.iter_mut().zip(&mut self.valid) {
            sums.swap_remove(slot);
            valid.swap_remove(slot);
        }
        if let Some(&moved) = self.keys.get(slot) {
            self.slots[moved as usize] = slot as u32;
        }
    }

    /// Forgets everything (every key id is about to be reused).
    pub(crate) fn clear(&mut self) {
        *self = Running::default();
    }

    fn touch(&mut self, id: u32) {
        let id = id as usize;
        if self.marked.len() <= id {
            self.marked.resize(id + 1, false);
        }
        if !self.marked[id] {
            self.marked[id] = true;
            self.touched.push(id as u32);
        }
    }

    fn value(&self, column: usize, id: u32) -> Option<i64> {
        let slot = *self.slots.get(id as usize)?;
        (slot != ABSENT && self.valid[column][slot as usize] > 0)
            .then(|| self.sums[column][slot as usize])
    }

    fn present(&self, id: u32) -> bool {
        self.slots
            .get(id as usize)
            .is_some_and(|slot| *slot != ABSENT)
    }

    /// The key ids of the window's best keys, best first.
    pub(crate) fn best(&mut self, ranking: &Ranking) -> Vec<u32> {
        let column = ranking.column;
        let last = self.last.take();
        let best = if column >= self.sums.len() {
            Vec::new()
        } else if let Some(best) =
            last.and_then(|(best, bar)| self.best_of_changed(ranking, best, bar))
        {
            best
        } else {
            let valid = &self.valid[column];
            let slots = ranking.best(&self.sums[column], |slot| valid[slot] > 0);
            slots
                .into_iter()
                .map(|slot| self.keys[slot as usize])
                .collect()
        };
        for id in self.touched.drain(..) {
            self.marked[id as usize] = false;
        }
        let bar = best
            .get(ranking.n - 1)
            .map_or(u128::MAX, |&id| ranking.rank_key(self.value(column, id)));
        self.last = Some((best.clone(), bar));
        best
    }

    /// The best of the keys changed since the last ranking and of its best
    /// keys, if that settles the ranking: when their n-th is no worse than
    /// the last n-th (`bar`). Every other key is unchanged, and ranked
    /// below the last n-th (or tied with it, when ties are not kept), so
    /// it cannot rank among them.
    fn best_of_changed(
        &mut self,
        ranking: &Ranking,
        last: Vec<u32>,
        bar: u128,
    ) -> Option<Vec<u32>> {
        for id in last {
            self.touch(id);
        }
        let column = ranking.column;
        let candidates: Vec<u32> = self
            .touched
            .iter()
            .copied()
            .filter(|id| self.present(*id))
            .collect();
        let values: Vec<Option<i64>> = candidates
            .iter()
            .map(|id| self.value(column, *id))
            .collect();
        let plain: Vec<i64> = values.iter().map(|v| v.unwrap_or(0)).collect();
        let best: Vec<u32> = ranking
            .best(&plain, |i| values[i].is_some())
            .into_iter()
            .map(|i| candidates[i as usize])
            .collect();
        let new_bar = ranking.rank_key(self.value(column, *best.get(ranking.n - 1)?));
        (new_bar <= bar).then_some(best)
    }

    /// Each aggregate's value for these key ids.
    pub(crate) fn values(&self, ids: &[u32]) -> Vec<ArrayRef> {
        self.sums
            .iter()
            .zip(&self.valid)
            .map(|(sums, valid)| {
                let slots = ids.iter().map(|&id| self.slots[id as usize] as usize);
                let values: Vec<i64> = slots.clone().map(|slot| sums[slot]).collect();
                let nulls = NullBuffer::from_iter(slots.map(|slot| valid[slot] > 0));
                let nulls = (nulls.null_count() > 0).then_some(nulls);
                std::sync::Arc::new(Int64Array::new(values.into(), nulls)) as ArrayRef
            })
            .collect()
    }

    pub(crate) fn size(&self) -> usize {
        (self.slots.capacity() + self.keys.capacity() + self.parts.capacity()) * 4
            + self.sums.iter().map(|s| s.capacity() * 8).sum::<usize>()
            + self.valid.iter().map(|v| v.capacity() * 4).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranking(n: usize, descending: bool, with_ties: bool) -> Ranking {
        Ranking {
            n,
            column: 0,
            order: SortOptions {
                descending,
                nulls_first: descending,
            },
            with_ties,
        }
    }

    impl Ranking {
        fn of(&self, values: &[Option<i64>]) -> Vec<u32> {
            let plain: Vec<i64> = values.iter().map(|v| v.unwrap_or(0)).collect();
            self.best(&plain, |i| values[i].is_some())
        }
    }

    #[test]
    fn keeps_the_best_and_their_ties() {
        let counts = [Some(3), Some(7), Some(7), Some(1), Some(5)];
        assert_eq!(ranking(1, true, true).of(&counts), vec![1, 2]);
        assert_eq!(ranking(1, true, false).of(&counts).len(), 1);
        assert_eq!(ranking(3, true, true).of(&counts), vec![1, 2, 4]);
        assert_eq!(ranking(2, false, true).of(&counts), vec![3, 0]);
        assert_eq!(ranking(9, true, true).of(&counts).len(), 5);
    }

    #[test]
    fn nulls_rank_as_sql_sorts_them() {
        let sums = [Some(3), None, Some(9)];
        // DESC: nulls first, as the largest value.
        assert_eq!(ranking(1, true, true).of(&sums), vec![1]);
        assert_eq!(ranking(1, false, true).of(&sums), vec![0]);
    }

    #[test]
    fn many_ties_are_all_kept() {
        let ones = vec![Some(1); 10_000];
        assert_eq!(ranking(1, true, true).of(&ones).len(), 10_000);
        let mut rising: Vec<Option<i64>> = (0..10_000).map(Some).collect();
        rising.push(Some(9_999));
        assert_eq!(ranking(1, true, true).of(&rising), vec![9_999, 10_000]);
    }

    #[test]
    fn running_sums_follow_parts_in_and_out() {
        let mut running = Running::default();
        let counts =
            |v: Vec<Option<i64>>| vec![vec![std::sync::Arc::new(Int64Array::from(v)) as ArrayRef]];
        running
            .apply(&[0, 2], &counts(vec![Some(2), None]), 1)
            .unwrap();
        running.apply(&[2], &counts(vec![Some(5)]), 1).unwrap();
        let all = ranking(9, true, true);
        assert_eq!(running.best(&all), vec![2, 0]);
        running
            .apply(&[0, 2], &counts(vec![Some(2), None]), -1)
            .unwrap();
        assert_eq!(running.best(&all), vec![2]);
        let values = running.values(&[2]);
        assert_eq!(values[0].as_primitive::<Int64Type>().value(0), 5);
        running.apply(&[2], &counts(vec![Some(5)]), -1).unwrap();
        assert!(running.best(&all).is_empty());
    }
}
