//! The child spans a request's trace has ended, each kept in a slot of its
//! own. Ending a child claims its slot with one atomic increment, where a lock
//! takes two atomic operations, and the second waits for the child's writes
//! to land: on the request path, that wait was most of what ending a span
//! cost. A chat call ends about six children; past the slots, a lock keeps
//! the rest.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::span::Child;

/// The children of a chat call that retrieves and fails over once.
const SLOTS: usize = 8;

pub struct Children {
    /// Slots claimed; the first `claimed` of them (at most all) hold a child.
    claimed: AtomicUsize,
    slots: [UnsafeCell<MaybeUninit<Child>>; SLOTS],
    more: Mutex<Vec<Child>>,
}

// SAFETY: a slot is written once, by the one `push` that claimed its index
// (an increment gives each index once), and read only through `&mut self`,
// when no `push` can be running.
unsafe impl Sync for Children {}

impl Default for Children {
    fn default() -> Children {
        Children {
            claimed: AtomicUsize::new(0),
            slots: std::array::from_fn(|_| UnsafeCell::new(MaybeUninit::uninit())),
            more: Mutex::new(Vec::new()),
        }
    }
}

impl Children {
    /// Keeps `child`.
    pub fn push(&self, child: Child) {
        // Relaxed: what the slot holds is read only after every holder of the
        // trace has let go of it, which orders these writes before the read.
        let at = self.claimed.fetch_add(1, Ordering::Relaxed);
        match self.slots.get(at) {
            // SAFETY: index `at` is this call's alone (see `Sync` above), and
            // nothing reads the slot while `&self` is held.
            Some(slot) => unsafe {
                (*slot.get()).write(child);
            },
            None => self
                .more
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(child),
        }
    }

    /// Every child kept: those in the slots, in the order they claimed them,
    /// then those past them. Read in place, as the trace ends: copying them
    /// out would take an allocation per request.
    pub fn ended(&mut self) -> (&[Child], &[Child]) {
        let held = (*self.claimed.get_mut()).min(SLOTS);
        // SAFETY: with `&mut self` no `push` is running, and each of the first
        // `held` slots was written by the push that claimed it (nothing
        // between claiming and writing can fail). A slot has the layout of a
        // `Child` (`UnsafeCell` and `MaybeUninit` are transparent), so the
        // first `held` are that many initialised children in a row.
        let slots =
            unsafe { std::slice::from_raw_parts(self.slots.as_ptr().cast::<Child>(), held) };
        let more = self.more.get_mut().unwrap_or_else(|p| p.into_inner());
        (slots, more)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::span::What;
    use super::*;

    fn child(n: u64) -> Child {
        Child {
            id: n.to_be_bytes(),
            parent: [1; 8],
            start: n,
            end: n + 1,
            what: What::Stage("stage"),
        }
    }

    #[test]
    fn children_pushed_from_several_threads_past_the_slots_are_all_kept() {
        let children = Arc::new(Children::default());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let children = Arc::clone(&children);
                std::thread::spawn(move || (0..5).for_each(|n| children.push(child(t * 10 + n))))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let mut children = Arc::into_inner(children).unwrap();
        let (slots, more) = children.ended();
        assert_eq!((slots.len(), more.len()), (SLOTS, 20 - SLOTS));
        let mut starts: Vec<u64> = slots.iter().chain(more).map(|c| c.start).collect();
        starts.sort_unstable();
        let pushed: Vec<u64> = (0..4)
            .flat_map(|t| (0..5).map(move |n| t * 10 + n))
            .collect();
        assert_eq!(starts, pushed);
    }

    #[test]
    fn fewer_children_than_slots_come_back_in_the_order_they_ended() {
        let mut children = Children::default();
        (0..3).for_each(|n| children.push(child(n)));
        let (slots, more) = children.ended();
        let ended: Vec<u64> = slots.iter().map(|c| c.start).collect();
        assert_eq!(ended, [0, 1, 2]);
        assert!(more.is_empty());
    }
}
