//! Duplicate detection: the trade ids of one instrument already counted, as disjoint ranges.
//!
//! Exchanges number trades sequentially per instrument (Binance, Coinbase), so the ids seen form a
//! few ranges however many trades there are; a reconnect or a replay re-sends ids inside them.
//! Each range remembers its latest event time: ranges whose trades are all older than the earliest
//! event time the series can still count are forgotten (such a trade is late beyond the revision
//! window whether or not it was seen). So memory is bounded by time, the trades of the revision
//! window, and the answer is always exact: ranges are never merged over a gap. `max_ranges` is a
//! safety bound against hostile ids; at it, a trade that would need a new range is refused
//! ([`Seen::Full`]) and the caller dead-letters it: it is never counted as a duplicate.

use std::collections::BTreeMap;

use wick_core::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    last: u64,
    max_event_time: Timestamp,
}

/// What [`SeenIds::insert`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
    /// New, but recording it would exceed the bound: not recorded.
    Full,
}

/// The ids seen of one instrument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenIds {
    /// first id -> range.
    ranges: BTreeMap<u64, Range>,
    max_ranges: usize,
}

impl SeenIds {
    pub fn new(max_ranges: usize) -> SeenIds {
        SeenIds { ranges: BTreeMap::new(), max_ranges: max_ranges.max(2) }
    }

    /// Records `id`: whether it is new (now recorded), a duplicate, or new but beyond the bound.
    #[inline]
    pub fn insert(&mut self, id: u64, event_time: Timestamp) -> Seen {
        // The common case: the next id of the newest range.
        if let Some(mut newest) = self.ranges.last_entry() {
            let r = newest.get_mut();
            if r.last.checked_add(1) == Some(id) {
                r.last = id;
                r.max_event_time = r.max_event_time.max(event_time);
                return Seen::New;
            }
        }
        let below = self.ranges.range(..=id).next_back().map(|(first, r)| (*first, *r));
        if let Some((_, r)) = below {
            if r.last >= id {
                return Seen::Duplicate;
            }
        }
        let above = id.checked_add(1).and_then(|next| self.ranges.get(&next).copied().map(|r| (next, r)));
        match (below.filter(|(_, r)| r.last + 1 == id), above) {
            (Some((first, r)), Some((next, a))) => {
                self.ranges.remove(&next);
                self.ranges.insert(first, Range { last: a.last, max_event_time: r.max_event_time.max(a.max_event_time).max(event_time) });
            }
            (Some((first, r)), None) => {
                self.ranges.insert(first, Range { last: id, max_event_time: r.max_event_time.max(event_time) });
            }
            (None, Some((next, a))) => {
                self.ranges.remove(&next);
                self.ranges.insert(id, Range { last: a.last, max_event_time: a.max_event_time.max(event_time) });
            }
            (None, None) => {
                if self.ranges.len() >= self.max_ranges {
                    return Seen::Full;
                }
                self.ranges.insert(id, Range { last: id, max_event_time: event_time });
            }
        }
        Seen::New
    }

    /// Forgets ranges whose trades are all older than `before`.
    pub fn forget_before(&mut self, before: Timestamp) {
        // Keep the newest range whatever its age: it makes the sequential fast path work.
        let newest = self.ranges.last_key_value().map(|(k, _)| *k);
        self.ranges.retain(|first, r| r.max_event_time >= before || Some(*first) == newest);
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// `(first, last, latest event time)` of every range, for checkpoints.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64, Timestamp)> + '_ {
        self.ranges.iter().map(|(first, r)| (*first, r.last, r.max_event_time))
    }

    /// Rebuilds from [`SeenIds::ranges`].
    pub fn from_ranges(max_ranges: usize, ranges: impl IntoIterator<Item = (u64, u64, Timestamp)>) -> SeenIds {
        let mut seen = SeenIds::new(max_ranges);
        for (first, last, max_event_time) in ranges {
            if first <= last {
                seen.ranges.insert(first, Range { last, max_event_time });
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_micros(s * 1_000_000).unwrap()
    }

    #[test]
    fn sequential_ids_stay_one_range_and_repeats_are_refused() {
        let mut s = SeenIds::new(16);
        for id in 100..1100 {
            assert_eq!(s.insert(id, t(1)), Seen::New);
        }
        assert_eq!(s.len(), 1);
        for id in [100, 555, 1099] {
            assert_eq!(s.insert(id, t(1)), Seen::Duplicate);
        }
        assert_eq!(s.insert(1100, t(2)), Seen::New);
    }

    #[test]
    fn out_of_order_ids_fill_gaps_and_merge() {
        let mut s = SeenIds::new(16);
        for id in [5, 7, 9, 6, 8] {
            assert_eq!(s.insert(id, t(1)), Seen::New);
        }
        assert_eq!(s.ranges().map(|(a, b, _)| (a, b)).collect::<Vec<_>>(), vec![(5, 9)]);
        assert_eq!([s.insert(4, t(1)), s.insert(10, t(1)), s.insert(7, t(1))], [Seen::New, Seen::New, Seen::Duplicate]);
        assert_eq!([s.insert(u64::MAX, t(1)), s.insert(u64::MAX, t(1))], [Seen::New, Seen::Duplicate]);
    }

    #[test]
    fn gaps_are_never_merged_and_the_bound_refuses_instead() {
        let mut s = SeenIds::new(100_000);
        // 10,000 ids with gaps: every one its own range, every gap still free.
        for id in (0..10_000u64).map(|i| i * 10) {
            assert_eq!(s.insert(id, t(id as i64)), Seen::New);
        }
        assert_eq!(s.len(), 10_000);
        assert_eq!(s.insert(15, t(1)), Seen::New, "an id in a gap is a new trade");
        assert_eq!(s.insert(15, t(1)), Seen::Duplicate);
        assert_eq!(s.insert(99_990, t(1)), Seen::Duplicate);
        // At the bound a new range is refused, never guessed.
        let mut small = SeenIds::new(4);
        for id in [0, 10, 20, 30] {
            assert_eq!(small.insert(id, t(1)), Seen::New);
        }
        assert_eq!(small.insert(50, t(1)), Seen::Full);
        assert_eq!(small.insert(50, t(1)), Seen::Full, "a refused id was not recorded");
        assert_eq!(small.insert(31, t(1)), Seen::New, "extending a range needs no new one");
        assert_eq!(small.insert(20, t(1)), Seen::Duplicate);
    }

    #[test]
    fn old_ranges_are_forgotten() {
        let mut s = SeenIds::new(1000);
        for id in (0..100).map(|i| i * 10) {
            assert_eq!(s.insert(id, t(id as i64)), Seen::New);
        }
        s.forget_before(t(975));
        assert_eq!(s.ranges().map(|(a, _, _)| a).collect::<Vec<_>>(), vec![980, 990], "ranges older than the bound are forgotten");
        let copy = SeenIds::from_ranges(1000, s.ranges());
        assert_eq!(copy, s);
    }
}
