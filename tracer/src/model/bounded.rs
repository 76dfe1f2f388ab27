//! Per-cgroup state kept for a whole run, bounded: hours of churn (containers created and
//! removed every second) cannot grow memory. Past the cap the least recently touched entry goes;
//! what forgetting one costs is said where each map is declared (at worst a repeated naming or
//! totals line, never a lost event).
use std::borrow::Borrow;
use std::hash::Hash;
use std::num::NonZeroUsize;

/// Cgroups tracked at once by each per-id map: 8x the 2,000 throttled cgroups the memory
/// target names (the largest entry, a naming line with its processes, is about 1 KB).
pub const MAX_TRACKED: usize = 16_384;

/// A map holding at most `cap` entries, least recently used evicted first.
#[derive(Debug)]
pub struct Bounded<K: Hash + Eq, V> {
    map: lru::LruCache<K, V>,
    evicted: u64,
}

/// Keyed by cgroup id, the common case.
pub type IdMap<V> = Bounded<u64, V>;

impl<K: Hash + Eq, V> Default for Bounded<K, V> {
    fn default() -> Self {
        Self::with_cap(MAX_TRACKED)
    }
}

impl<K: Hash + Eq, V> Bounded<K, V> {
    pub fn with_cap(cap: usize) -> Self {
        Bounded {
            map: lru::LruCache::new(NonZeroUsize::new(cap.max(1)).expect("at least 1")),
            evicted: 0,
        }
    }

    /// Insert or replace; returns the value `key` had.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.map.pop(&key);
        if self.map.push(key, value).is_some() {
            self.evicted += 1;
        }
        old
    }

    /// Was `key` absent (now inserted with `V::default()`)?
    pub fn insert_new(&mut self, key: K) -> bool
    where
        V: Default,
    {
        if self.map.get(&key).is_some() {
            return false;
        }
        self.insert(key, V::default());
        true
    }

    /// Looks `key` up and marks it recently used.
    pub fn get<Q>(&mut self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key)
    }

    /// Looks `key` up without touching its recency.
    pub fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.peek(key)
    }

    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.contains(key)
    }

    /// The entry for `key`, made with `make` when absent.
    pub fn get_or_insert_mut(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V
    where
        K: Clone,
    {
        if !self.map.contains(&key) {
            self.insert(key.clone(), make());
        }
        self.map.get_mut(&key).expect("just inserted")
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.pop(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries forgotten to stay under the cap.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Most recently used first.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_never_grows_past_the_cap_and_keeps_the_recent() {
        let mut m: IdMap<u64> = IdMap::with_cap(1000);
        // Ten times the cap of ids, each seen once, as cgroups created and removed for hours.
        for id in 0..10_000u64 {
            m.insert(id, id * 2);
            assert!(m.len() <= 1000);
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m.evicted(), 9000);
        assert_eq!(m.peek(&9999), Some(&19998));
        assert_eq!(m.peek(&0), None);
        // A long-lived id touched now and then survives the churn.
        m.insert(1, 1);
        for id in 20_000..40_000u64 {
            m.insert(id, 0);
            if id % 500 == 0 {
                m.get(&1);
            }
        }
        assert_eq!(m.peek(&1), Some(&1));
        assert_eq!(m.len(), 1000);
    }

    #[test]
    fn replace_and_insert_new() {
        let mut m: IdMap<u32> = IdMap::with_cap(2);
        assert_eq!(m.insert(7, 1), None);
        assert_eq!(m.insert(7, 2), Some(1));
        assert_eq!(m.evicted(), 0);
        let mut s: IdMap<()> = IdMap::with_cap(2);
        assert!(s.insert_new(1));
        assert!(!s.insert_new(1));
        *m.get_or_insert_mut(8, || 5) += 1;
        assert_eq!(m.peek(&8), Some(&6));
        assert_eq!(m.len(), 2);
    }
}
