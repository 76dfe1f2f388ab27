//! A set of CPUs: the one type for every CPU set cfstrace keeps (the CPUs a callback unthrottled
//! cfs_rqs on, the CPUs a cgroup's timer fired on, the kernel's CPU lists), written and read as
//! a kernel CPU list (`0-3,8,10-11`).
use serde::{Deserialize, Serialize};

/// CPU ids above this are not kept (bounds the memory a bad id can make us take).
pub const MAX_CPUS: u32 = 8192;

/// A bitset grown on demand; an empty set holds no heap memory.
#[derive(Clone, Debug, Default)]
pub struct CpuSet(Vec<u64>);

/// Equal when they hold the same CPUs, however many empty words either has kept.
impl PartialEq for CpuSet {
    fn eq(&self, other: &Self) -> bool {
        let n = self.0.len().max(other.0.len());
        (0..n).all(|i| self.0.get(i).copied().unwrap_or(0) == other.0.get(i).copied().unwrap_or(0))
    }
}

impl Eq for CpuSet {}

impl CpuSet {
    /// From bitmap words (word `i` bit `b` is CPU `64 i + b`), as the kernel side sends them.
    pub fn from_words(words: &[u64]) -> Self {
        let used = words.iter().rposition(|&w| w != 0).map_or(0, |i| i + 1);
        CpuSet(words[..used].to_vec())
    }

    /// False (and nothing kept) for a CPU at or above [`MAX_CPUS`].
    pub fn insert(&mut self, cpu: u32) -> bool {
        if cpu >= MAX_CPUS {
            return false;
        }
        let (w, b) = (cpu as usize / 64, cpu % 64);
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << b;
        true
    }

    pub fn union_with(&mut self, other: &CpuSet) {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.0
            .get(cpu as usize / 64)
            .is_some_and(|w| w & (1 << (cpu % 64)) != 0)
    }

    pub fn len(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// The highest CPU in the set.
    pub fn max(&self) -> Option<u32> {
        self.iter().last()
    }

    /// Ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &w)| {
            (0..64u32)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| i as u32 * 64 + b)
        })
    }

    /// Bytes on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<u64>()
    }

    /// The kernel's list form: `0-3,8,10-11` (empty for an empty set).
    pub fn to_list(&self) -> String {
        let mut out = String::new();
        let mut run: Option<(u32, u32)> = None;
        let flush = |out: &mut String, (a, b): (u32, u32)| {
            if !out.is_empty() {
                out.push(',');
            }
            if a == b {
                out.push_str(&a.to_string());
            } else {
                out.push_str(&format!("{a}-{b}"));
            }
        };
        for c in self.iter() {
            run = match run {
                Some((a, b)) if b + 1 == c => Some((a, c)),
                Some(r) => {
                    flush(&mut out, r);
                    Some((c, c))
                }
                None => Some((c, c)),
            };
        }
        if let Some(r) = run {
            flush(&mut out, r);
        }
        out
    }

    /// Parse a kernel CPU list (surrounding whitespace allowed; empty is the empty set); None
    /// on anything else, a descending range or a CPU at or above [`MAX_CPUS`].
    pub fn parse_list(s: &str) -> Option<CpuSet> {
        let mut m = CpuSet::default();
        let s = s.trim();
        if s.is_empty() {
            return Some(m);
        }
        for part in s.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            if b < a || b >= MAX_CPUS {
                return None;
            }
            for c in a..=b {
                m.insert(c);
            }
        }
        Some(m)
    }
}

impl Serialize for CpuSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_list())
    }
}

impl<'de> Deserialize<'de> for CpuSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CpuSet::parse_list(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("bad CPU list {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip() {
        for s in ["", "0", "0-3", "0-1,3,1023", "5,7-9,8191"] {
            let m = CpuSet::parse_list(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(m.to_list(), s);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<CpuSet>(&json).unwrap(), m);
        }
        assert_eq!(CpuSet::parse_list(" 0-47\n").map(|m| m.len()), Some(48));
        for bad in ["3-1", "x", "1,,2", "8192", "0-9000"] {
            assert_eq!(CpuSet::parse_list(bad), None, "{bad}");
        }
    }

    #[test]
    fn grows_only_as_needed() {
        let mut m = CpuSet::default();
        assert_eq!(m.heap_bytes(), 0);
        assert!(m.insert(130) && m.insert(2));
        assert!(!m.insert(MAX_CPUS), "beyond the bound");
        assert_eq!((m.len(), m.max()), (2, Some(130)));
        assert!(m.contains(130) && !m.contains(131));
        let words = [0b101u64, 0, 0];
        let w = CpuSet::from_words(&words);
        assert_eq!(w.to_list(), "0,2");
        assert_eq!(w.heap_bytes(), 8, "trailing empty words are not kept");
        assert!(CpuSet::from_words(&[0, 0]).is_empty());
        m.union_with(&w);
        assert_eq!(m.to_list(), "0,2,130");
        assert_eq!(w, CpuSet::parse_list("0,2").unwrap());
    }
}
