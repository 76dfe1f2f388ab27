//! Opaque per-run ids for period timers. The kernel names a callback's timer by its address
//! (`&cfs_bandwidth.period_timer`), and a kernel address in a file or on a screen defeats
//! KASLR (what `kernel.kptr_restrict` hides). So the address stops at the decoder: every
//! output carries `timer_id`, 1, 2, 3, ... in the order the run first saw each timer; 0 is no
//! timer known. Captures written before carry `timer` (the address); the reader maps those
//! the same way.
use rustc_hash::FxHashMap;

/// `timer_id` of a record whose timer is not known (never given to an address).
pub const NO_TIMER: u32 = 0;

/// One run's address -> id map: the same address always gets the same id, a new one the
/// next id. Grows by one entry per distinct timer (a cgroup with a quota has one).
#[derive(Debug, Default)]
pub struct TimerIds {
    ids: FxHashMap<u64, u32>,
}

impl TimerIds {
    pub fn id(&mut self, address: u64) -> u32 {
        let next = u32::try_from(self.ids.len() + 1).unwrap_or(u32::MAX);
        *self.ids.entry(address).or_insert(next)
    }

    /// Timers seen so far.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_first_appearance_and_stay_stable() {
        let mut t = TimerIds::default();
        let (a, b, c) = (
            0xffff_8881_0a2b_3c40,
            0xffff_8881_0400_0148,
            0xffff_9000_0000_0008,
        );
        assert_eq!(
            [t.id(a), t.id(b), t.id(a), t.id(c), t.id(b)],
            [1, 2, 1, 3, 2]
        );
        assert_eq!(t.len(), 3);
        // Stable for the whole run, however often asked.
        for _ in 0..1000 {
            assert_eq!(t.id(b), 2);
        }
        assert_eq!(t.len(), 3);
        // Never the "no timer" id, and never the address.
        assert!(![t.id(0), t.id(u64::MAX)].contains(&NO_TIMER));
        // A second run starts again at 1.
        assert_eq!(TimerIds::default().id(c), 1);
    }
}
