//! An indexed binary min-heap: one entry per volume, whose key can be changed or removed in
//! O(log n) because the heap knows where each volume sits. The arbiter keeps its R and P tags
//! here; a plain `BinaryHeap` with lazy deletion piles up stale entries whenever one phase
//! dominates (the design study's prototype leaked millions of them in a minute).

/// Min-heap of (key, slot) with `slot < capacity`, at most one entry per slot.
#[derive(Debug, Default, Clone)]
pub struct IndexedHeap {
    entries: Vec<(u64, usize)>,
    /// Position of each slot in `entries`, or `ABSENT`.
    pos: Vec<usize>,
}

const ABSENT: usize = usize::MAX;

impl IndexedHeap {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The smallest (key, slot).
    pub fn peek(&self) -> Option<(u64, usize)> {
        self.entries.first().copied()
    }

    pub fn contains(&self, slot: usize) -> bool {
        self.pos.get(slot).is_some_and(|p| *p != ABSENT)
    }

    /// Insert `slot` with `key`, or change its key if it is already in.
    pub fn set(&mut self, slot: usize, key: u64) {
        if slot >= self.pos.len() {
            self.pos.resize(slot + 1, ABSENT);
        }
        match self.pos[slot] {
            ABSENT => {
                self.entries.push((key, slot));
                let at = self.entries.len() - 1;
                self.pos[slot] = at;
                self.up(at);
            }
            at => {
                let old = self.entries[at].0;
                self.entries[at].0 = key;
                if key < old {
                    self.up(at);
                } else {
                    self.down(at);
                }
            }
        }
    }

    /// Take `slot` out (no-op when absent).
    pub fn remove(&mut self, slot: usize) {
        let Some(&at) = self.pos.get(slot) else {
            return;
        };
        if at == ABSENT {
            return;
        }
        let last = self.entries.len() - 1;
        self.swap(at, last);
        self.entries.pop();
        self.pos[slot] = ABSENT;
        if at < self.entries.len() {
            self.down(at);
            self.up(at);
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.entries.swap(a, b);
        self.pos[self.entries[a].1] = a;
        self.pos[self.entries[b].1] = b;
    }

    fn up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.entries[parent].0 <= self.entries[at].0 {
                break;
            }
            self.swap(parent, at);
            at = parent;
        }
    }

    fn down(&mut self, mut at: usize) {
        loop {
            let l = 2 * at + 1;
            let r = l + 1;
            let mut min = at;
            if l < self.entries.len() && self.entries[l].0 < self.entries[min].0 {
                min = l;
            }
            if r < self.entries.len() && self.entries[r].0 < self.entries[min].0 {
                min = r;
            }
            if min == at {
                return;
            }
            self.swap(at, min);
            at = min;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_key_order_through_updates_and_removals() {
        let mut h = IndexedHeap::default();
        let mut model = std::collections::BTreeMap::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let slot = (x % 64) as usize;
            match (x >> 8) % 3 {
                0 | 1 => {
                    let key = (x >> 16) % 1000;
                    h.set(slot, key);
                    model.insert(slot, key);
                }
                _ => {
                    h.remove(slot);
                    model.remove(&slot);
                }
            }
            assert_eq!(h.len(), model.len());
            let min = model.values().min().copied();
            assert_eq!(h.peek().map(|(k, _)| k), min);
            if let Some((k, s)) = h.peek() {
                assert_eq!(model[&s], k);
            }
        }
        for slot in 0..64 {
            assert_eq!(h.contains(slot), model.contains_key(&slot));
        }
    }
}
