//! Single flight: concurrent identical misses are coalesced. The first request
//! leads (it calls upstream); the others wait for its answer, and a leader that
//! ends without one hands the lead on, so a failure does not send every follower
//! upstream at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::CacheKey;
use crate::wire::ChatCompletion;

/// What a leader's followers wait on: `Some` once its answer is there.
type Sender = watch::Sender<Option<Arc<ChatCompletion>>>;

/// The misses being answered now, by key, each with its leader's flight number.
#[derive(Default)]
pub struct Inflight {
    leaders: Mutex<HashMap<CacheKey, (u64, Sender)>>,
    next: AtomicU64,
}

/// How a request joins the misses of its key.
pub(super) enum Joined {
    /// It leads: its answer is awaited by whoever follows.
    Lead(Flight),
    /// Another leads: its answer (or its end without one) arrives here.
    Follow(watch::Receiver<Option<Arc<ChatCompletion>>>),
}

impl Inflight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, (u64, Sender)>> {
        self.leaders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Leads the miss of `key`, or follows the request leading it.
    pub(super) fn join(self: &Arc<Self>, key: &CacheKey) -> Joined {
        let mut leaders = self.lock();
        match leaders.get(key) {
            Some((_, leader)) => Joined::Follow(leader.subscribe()),
            None => {
                let id = self.next.fetch_add(1, Ordering::Relaxed);
                leaders.insert(key.clone(), (id, watch::channel(None).0));
                Joined::Lead(Flight {
                    key: key.clone(),
                    id,
                    inflight: Arc::clone(self),
                })
            }
        }
    }

    /// Hands `answer` to the requests waiting on `key`.
    pub(super) fn publish(&self, key: &CacheKey, answer: Arc<ChatCompletion>) {
        if let Some((_, leader)) = self.lock().remove(key) {
            leader.send_replace(Some(answer));
        }
    }

    /// A leader's request ended: without an answer its followers go on alone. Only
    /// its own entry goes (a later leader of the same key may hold it by now).
    fn release(&self, key: &CacheKey, flight: u64) {
        let mut leaders = self.lock();
        if leaders.get(key).is_some_and(|(id, _)| *id == flight) {
            leaders.remove(key);
        }
    }
}

/// A miss being answered. Dropped without its answer published (an error, a cut
/// stream, an answer not worth keeping), it lets the waiting requests go on alone.
/// It lives in the request's context, so it ends when the request does — after the
/// pipeline has published the answer, if there was one.
pub struct Flight {
    key: CacheKey,
    id: u64,
    inflight: Arc<Inflight>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.inflight.release(&self.key, self.id);
    }
}
