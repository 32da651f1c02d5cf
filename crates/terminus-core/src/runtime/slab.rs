//! slab: a table of values named by generation-checked keys.
//!
//! Owns [`Slab`] and its [`Key`]. The worker's connection slots and both drivers'
//! op tables are slabs: a key names one insertion, not one index, so a late
//! completion, timer or cancel that still carries the key of a removed value can
//! never reach the value that reuses its index (monoio's and tokio-uring's rule).
//!
//! The rules, each written once: an entry is free or holds a value ([`Entry`]);
//! removing a value changes its entry's generation; [`Slab::get`] and
//! [`Slab::get_mut`] answer only for the generation the key was made with; an index
//! given back by [`Slab::shrink`] comes back with a generation above every one it had.
//!
//! I/O contract: none.
#![forbid(unsafe_code)]

/// Names one value inserted into a [`Slab`]: its index and the entry's generation
/// at insertion. `Copy` and 8 bytes, so it fits in a driver token or `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    idx: u32,
    gen: u32,
}

impl Key {
    pub fn new(idx: u32, gen: u32) -> Key {
        Key { idx, gen }
    }

    pub fn idx(self) -> u32 {
        self.idx
    }

    pub fn gen(self) -> u32 {
        self.gen
    }
}

/// One entry: free (its index is on the free list) or holding a value.
enum Entry<T> {
    Free { gen: u32 },
    Live { gen: u32, value: T },
}

/// Values in a `Vec`, each named by a [`Key`]; freed indices are reused, last
/// freed first (it is the one most likely still in cache).
pub struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    len: usize,
    /// The generation a new index starts at: above every generation an index
    /// [`Slab::shrink`] dropped ever had, so its old keys miss it when it returns.
    floor: u32,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
            floor: 0,
        }
    }
}

impl<T> Slab<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Store `value`; the key names it until it is removed.
    pub fn insert(&mut self, value: T) -> Key {
        self.insert_with(|_| value)
    }

    /// Store the value `make` builds from its own key (for values that carry it).
    pub fn insert_with(&mut self, make: impl FnOnce(Key) -> T) -> Key {
        let (idx, gen) = match self.free.pop() {
            Some(idx) => match self.entries[idx as usize] {
                Entry::Free { gen } => (idx, gen),
                Entry::Live { .. } => unreachable!("a free index holds no value"),
            },
            None => {
                self.entries.push(Entry::Free { gen: self.floor });
                ((self.entries.len() - 1) as u32, self.floor)
            }
        };
        let key = Key { idx, gen };
        self.entries[idx as usize] = Entry::Live {
            gen,
            value: make(key),
        };
        self.len += 1;
        key
    }

    pub fn get(&self, key: Key) -> Option<&T> {
        match self.entries.get(key.idx as usize) {
            Some(Entry::Live { gen, value }) if *gen == key.gen => Some(value),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        match self.entries.get_mut(key.idx as usize) {
            Some(Entry::Live { gen, value }) if *gen == key.gen => Some(value),
            _ => None,
        }
    }

    /// Take the value out; its key, and every copy of it, names nothing from now on.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        let e = self.entries.get_mut(key.idx as usize)?;
        if !matches!(e, Entry::Live { gen, .. } if *gen == key.gen) {
            return None;
        }
        let next = Entry::Free {
            gen: key.gen.wrapping_add(1),
        };
        let Entry::Live { value, .. } = std::mem::replace(e, next) else {
            unreachable!("checked above")
        };
        self.free.push(key.idx);
        self.len -= 1;
        Some(value)
    }

    /// Give back the memory of the free entries at the end of the table. Entries
    /// hold their values inline, so after a burst the table keeps the peak's size
    /// (a worker's slots: a few KiB per connection) until this runs; the idle trim
    /// calls it. Keys of dropped entries keep missing (see `floor`).
    pub fn shrink(&mut self) {
        while let Some(Entry::Free { gen }) = self.entries.last() {
            // `gen` is the next generation of that index: every key it gave is below.
            self.floor = self.floor.max(*gen);
            self.entries.pop();
        }
        let n = self.entries.len() as u32;
        self.free.retain(|&i| i < n);
        self.entries.shrink_to_fit();
        self.free.shrink_to_fit();
    }

    /// Every value held, with its key.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Key, &mut T)> {
        self.entries
            .iter_mut()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Live { gen, value } => Some((Key::new(i as u32, *gen), value)),
                Entry::Free { .. } => None,
            })
    }

    /// The keys of every value held (to visit them while mutating the owner).
    pub fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Live { gen, .. } => Some(Key::new(i as u32, *gen)),
                Entry::Free { .. } => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_its_value_until_removed() {
        let mut s = Slab::new();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!((s.get(a), s.get(b), s.len()), (Some(&"a"), Some(&"b"), 2));
        *s.get_mut(b).unwrap() = "B";
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.get(a), None);
        assert_eq!(s.get_mut(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!((s.get(b), s.len()), (Some(&"B"), 1));
    }

    #[test]
    fn a_reused_index_gets_a_new_generation_so_old_keys_miss_it() {
        let mut s = Slab::new();
        let old = s.insert(1);
        s.remove(old);
        let new = s.insert(2);
        assert_eq!(new.idx(), old.idx(), "the freed index is reused");
        assert_ne!(new, old);
        assert_eq!((s.get(old), s.get(new)), (None, Some(&2)));
        assert_eq!(s.remove(old), None, "an old key removes nothing");
        assert_eq!(s.get(new), Some(&2));
    }

    #[test]
    fn shrink_gives_back_the_free_tail_and_old_keys_keep_missing() {
        let mut s = Slab::new();
        let keys: Vec<Key> = (0..100).map(|i| s.insert(i)).collect();
        let kept = keys[3];
        for &k in keys.iter().filter(|&&k| k != kept) {
            s.remove(k);
        }
        s.shrink();
        assert_eq!(
            s.entries.len(),
            4,
            "the free entries after the last live one go"
        );
        assert!(s.entries.capacity() < 100);
        assert!(
            s.free.iter().all(|&i| i < 4),
            "the free list names kept entries only"
        );
        assert_eq!(s.get(kept), Some(&3));
        s.remove(kept);
        s.shrink();
        assert!(s.entries.is_empty() && s.free.is_empty());
        // The indices come back, with generations no old key carries.
        let again: Vec<Key> = (0..100).map(|i| s.insert(i + 1000)).collect();
        for (old, new) in keys.iter().zip(&again) {
            assert_eq!(old.idx(), new.idx());
            assert_eq!(s.get(*old), None, "{old:?} reaches {new:?}'s value");
        }
        assert_eq!(s.get(again[5]), Some(&1005));
    }

    #[test]
    fn generations_wrap_without_panicking() {
        let mut s = Slab::new();
        s.entries.push(Entry::Free { gen: u32::MAX });
        s.free.push(0);
        let k = s.insert(());
        assert_eq!(k.gen(), u32::MAX);
        s.remove(k);
        assert_eq!(s.insert(()).gen(), 0);
    }

    #[test]
    fn unknown_indices_are_misses_not_panics() {
        let mut s: Slab<u8> = Slab::new();
        let k = Key::new(7, 0);
        assert_eq!(s.get(k), None);
        assert_eq!(s.get_mut(k), None);
        assert_eq!(s.remove(k), None);
    }

    #[test]
    fn iteration_visits_live_values_with_their_keys() {
        let mut s = Slab::new();
        let keys: Vec<Key> = (0..4).map(|i| s.insert(i)).collect();
        s.remove(keys[1]);
        let k = s.insert_with(|k| k.idx() * 10);
        assert_eq!(k.idx(), 1);
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            vec![keys[0], k, keys[2], keys[3]]
        );
        let seen: Vec<(Key, u32)> = s.iter_mut().map(|(k, v)| (k, *v)).collect();
        assert_eq!(
            seen,
            vec![(keys[0], 0), (k, 10), (keys[2], 2), (keys[3], 3)]
        );
    }
}
