//! Opaque per-run ids for period timers. The kernel names a callback's timer by its address
//! (`&cfs_bandwidth.period_timer`), and a kernel address in a file or on a screen defeats
//! KASLR (what `kernel.kptr_restrict` hides). So the address stops at the decoder: every
//! output carries `timer_id`, 1, 2, 3, ... in the order the run first saw each timer; 0 is no
//! timer known. Captures written before carry `timer` (the address); the reader maps those
//! the same way.
use super::bounded::IdMap;

/// `timer_id` of a record whose timer is not known (never given to an address).
pub const NO_TIMER: u32 = 0;

/// One run's address -> id map: the same address gets the same id, a new one the next id.
/// One entry per distinct timer (a cgroup with a quota has one), the
/// [`MAX_TRACKED`](super::bounded::MAX_TRACKED) most recent: under churn a timer forgotten and
/// seen again gets a new id, as a new cgroup would.
#[derive(Debug, Default)]
pub struct TimerIds {
    ids: IdMap<u32>,
    last: u32,
}

impl TimerIds {
    pub fn id(&mut self, address: u64) -> u32 {
        if let Some(&id) = self.ids.get(&address) {
            return id;
        }
        self.last = self.last.saturating_add(1);
        self.ids.insert(address, self.last);
        self.last
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

    #[test]
    fn churn_stays_bounded_and_never_reuses_an_id() {
        let mut t = TimerIds::default();
        let n = super::super::bounded::MAX_TRACKED as u64 * 2;
        for a in 0..n {
            assert_eq!(u64::from(t.id(0xffff_8880_0000_0000 + a * 64)), a + 1);
        }
        assert_eq!(t.len(), super::super::bounded::MAX_TRACKED);
        // The first address was forgotten: a fresh id, not an old one.
        assert_eq!(u64::from(t.id(0xffff_8880_0000_0000)), n + 1);
    }
}
