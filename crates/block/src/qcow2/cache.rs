//! A small write-back cache of one-cluster metadata tables (L2 tables,
//! refcount blocks), keyed by host offset, with LRU-ish eviction. Tables keep
//! their on-disk (big-endian) bytes; callers decode entries on access. The
//! cache never does I/O itself: the owner writes dirty victims in the order
//! the format needs (refcount blocks before L2 tables).

use std::collections::HashMap;

pub struct Slot {
    pub offset: u64,
    pub data: Vec<u8>,
    dirty: bool,
    referenced: bool,
}

impl Slot {
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }
}

pub struct TableCache {
    slots: Vec<Slot>,
    map: HashMap<u64, usize>,
    capacity: usize,
    hand: usize,
    ndirty: usize,
    table_size: usize,
}

impl TableCache {
    pub fn new(capacity: usize, table_size: usize) -> Self {
        TableCache {
            slots: Vec::new(),
            map: HashMap::new(),
            capacity: capacity.max(4),
            hand: 0,
            ndirty: 0,
            table_size,
        }
    }

    /// Slot index of a cached table, marking it used.
    #[inline]
    pub fn lookup(&mut self, offset: u64) -> Option<usize> {
        let i = *self.map.get(&offset)?;
        self.slots[i].referenced = true;
        Some(i)
    }

    pub fn get(&self, i: usize) -> &Slot {
        &self.slots[i]
    }

    pub fn get_mut(&mut self, i: usize) -> &mut Slot {
        &mut self.slots[i]
    }

    /// Picks the slot a new table will occupy: a fresh one while under
    /// capacity, else one not used recently (CLOCK). Returns the victim's
    /// index and whether it is dirty (the owner must write it, then
    /// `mark_clean`, before `install`).
    pub fn victim(&mut self) -> (usize, bool) {
        if self.slots.len() < self.capacity {
            self.slots.push(Slot {
                offset: u64::MAX,
                data: vec![0; self.table_size],
                dirty: false,
                referenced: false,
            });
            return (self.slots.len() - 1, false);
        }
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let s = &mut self.slots[i];
            if s.offset == u64::MAX || !s.referenced {
                return (i, s.dirty);
            }
            s.referenced = false;
        }
    }

    pub fn mark_dirty(&mut self, i: usize) {
        if !self.slots[i].dirty {
            self.slots[i].dirty = true;
            self.ndirty += 1;
        }
    }

    pub fn mark_clean(&mut self, i: usize) {
        if self.slots[i].dirty {
            self.slots[i].dirty = false;
            self.ndirty -= 1;
        }
    }

    /// Maps slot `i` (already filled by the owner) to `offset`.
    pub fn install(&mut self, i: usize, offset: u64) {
        let old = self.slots[i].offset;
        if old != u64::MAX {
            self.map.remove(&old);
        }
        self.mark_clean(i);
        self.slots[i].offset = offset;
        self.slots[i].referenced = true;
        self.map.insert(offset, i);
    }

    /// Forgets a table (freed cluster); its dirty contents are dropped.
    pub fn invalidate(&mut self, offset: u64) {
        if let Some(i) = self.map.remove(&offset) {
            self.mark_clean(i);
            self.slots[i].offset = u64::MAX;
            self.slots[i].referenced = false;
        }
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.slots.clear();
        self.ndirty = 0;
        self.hand = 0;
    }

    /// Indices of dirty slots, in host-offset order (sequential writes).
    pub fn dirty_slots(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].dirty)
            .collect();
        v.sort_by_key(|&i| self.slots[i].offset);
        v
    }

    pub fn any_dirty(&self) -> bool {
        self.ndirty > 0
    }
}
