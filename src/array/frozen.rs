//! An immutable hash map for the routing snapshot, which is rebuilt on every binding change and
//! read on every command to a VVol.
//!
//! Open addressing with linear probing, each slot holding its key and value together, at most
//! half full: a lookup that hits usually costs one cache miss. A SwissTable (hashbrown) costs
//! two in a row, its control bytes and then the slot; with I/O spread over 1,000 VVols both
//! missed on nearly every command.

use rustc_hash::FxHasher;
use std::hash::{Hash, Hasher};

pub struct FrozenMap<K, V> {
    slots: Box<[Option<(K, V)>]>,
}

impl<K, V> Default for FrozenMap<K, V> {
    fn default() -> Self {
        FrozenMap {
            slots: Box::default(),
        }
    }
}

impl<K: Hash + Eq, V> FrozenMap<K, V> {
    /// The map of `entries`; of two with the same key, the later is kept.
    pub fn new(entries: Vec<(K, V)>) -> Self {
        let capacity = (entries.len() * 2).next_power_of_two().max(2);
        let mut slots: Box<[Option<(K, V)>]> = (0..capacity).map(|_| None).collect();
        for (key, value) in entries {
            let mut i = slot_of(&key, capacity);
            loop {
                match &mut slots[i] {
                    Some((k, v)) if *k == key => {
                        *v = value;
                        break;
                    }
                    Some(_) => i = (i + 1) & (capacity - 1),
                    empty @ None => {
                        *empty = Some((key, value));
                        break;
                    }
                }
            }
        }
        FrozenMap { slots }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = slot_of(key, self.slots.len());
        // Never full (at most half), so an empty slot ends every probe.
        loop {
            match &self.slots[i] {
                Some((k, v)) if k == key => return Some(v),
                Some(_) => i = (i + 1) & (self.slots.len() - 1),
                None => return None,
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots.iter().flatten().map(|(k, v)| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

fn slot_of<K: Hash>(key: &K, capacity: usize) -> usize {
    let mut h = FxHasher::default();
    key.hash(&mut h);
    // FxHash's high bits are its best mixed.
    (h.finish() >> (64 - capacity.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_key_and_nothing_else() {
        let entries: Vec<((u16, u64), u64)> = (0..1000u64)
            .map(|i| ((254 + (i % 2) as u16, 0xE2_0000_0000 + i), i * 3))
            .collect();
        let map = FrozenMap::new(entries.clone());
        assert_eq!(map.iter().count(), 1000);
        for (k, v) in &entries {
            assert_eq!(map.get(k), Some(v));
        }
        assert_eq!(map.get(&(254, 0xE2_0000_0001)), None, "the other PE's id");
        assert_eq!(map.get(&(7, 1)), None);
        let mut seen: Vec<u64> = map.values().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..1000u64).map(|i| i * 3).collect::<Vec<_>>());
    }

    #[test]
    fn empty_and_duplicates() {
        let empty: FrozenMap<u32, u32> = FrozenMap::default();
        assert_eq!(empty.iter().count(), 0);
        assert_eq!(empty.get(&1), None);
        assert_eq!(FrozenMap::<u32, u32>::new(Vec::new()).get(&0), None);
        let map = FrozenMap::new(vec![(1u32, "a"), (2, "b"), (1, "c")]);
        assert_eq!(map.get(&1), Some(&"c"));
        assert_eq!(map.iter().count(), 2);
    }

    #[test]
    fn colliding_keys_probe_past_each_other() {
        // With 2 slots per key, some of 64 keys share a home slot; all must still be found.
        let map = FrozenMap::new((0..64u32).map(|k| (k, k)).collect());
        for k in 0..64u32 {
            assert_eq!(map.get(&k), Some(&k));
        }
        assert_eq!(map.get(&64), None);
    }
}
