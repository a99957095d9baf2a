//! Splitting work across the compute threads: the rayon pool the caller runs in
//! (the model's worker installs one of `threads` threads), one contiguous share
//! each, so a one-thread pool runs everything inline with no scheduling at all.

use std::marker::PhantomData;
use std::ops::Range;

/// Calls `f` on disjoint ranges covering `0..n`, one per compute thread, each at
/// least `min_share` long (smaller shares are not worth a thread) and a multiple
/// of `align`.
pub fn split(n: usize, min_share: usize, align: usize, f: impl Fn(Range<usize>) + Sync) {
    let threads = rayon::current_num_threads()
        .min(n / min_share.max(1))
        .max(1);
    if threads == 1 {
        return f(0..n);
    }
    let share = n.div_ceil(threads).next_multiple_of(align.max(1));
    rayon::scope(|s| {
        let f = &f;
        for start in (share..n).step_by(share) {
            s.spawn(move |_| f(start..(start + share).min(n)));
        }
        f(0..share.min(n));
    });
}

/// An output buffer that threads write at disjoint indices.
pub struct Out<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: writers touch disjoint indices (each row belongs to one range of `rows`),
// and the buffer outlives them (the borrow is held for 'a).
unsafe impl Send for Out<'_> {}
unsafe impl Sync for Out<'_> {}

impl<'a> Out<'a> {
    pub fn new(out: &'a mut [f32]) -> Self {
        Out {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _borrow: PhantomData,
        }
    }

    /// Writes one value. Callers write each index from one thread only.
    #[inline]
    pub fn set(&self, index: usize, value: f32) {
        assert!(index < self.len);
        // SAFETY: in bounds; no other thread writes this index (see `Sync` above).
        unsafe { *self.ptr.add(index) = value }
    }
}
