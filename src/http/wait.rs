//! The in-process meeting point of duplicates: a request that finds its key
//! in flight may wait for the owner here instead of answering 409.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Identity digests of requests with waiters, each with the `Notify` the
/// owner wakes when it stores or releases the key.
#[derive(Default)]
pub(crate) struct Waiters {
    map: Mutex<HashMap<[u8; 32], Arc<Notify>>>,
}

impl Waiters {
    /// Registers interest in `id`. Create the `notified()` future from the
    /// registration before asking the store again, so that a finish between
    /// the two is not missed.
    pub(crate) fn register(self: &Arc<Self>, id: [u8; 32]) -> Registration {
        let notify = Arc::clone(self.map.lock().entry(id).or_default());
        Registration {
            waiters: Arc::clone(self),
            id,
            notify: Some(notify),
        }
    }

    /// Wakes every waiter of `id`: its owner stored or released it.
    pub(crate) fn finished(&self, id: &[u8; 32]) {
        if let Some(notify) = self.map.lock().remove(id) {
            notify.notify_waiters();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }
}

/// A waiter's hold on an entry; the last one out removes it.
pub(crate) struct Registration {
    waiters: Arc<Waiters>,
    id: [u8; 32],
    notify: Option<Arc<Notify>>,
}

impl Registration {
    pub(crate) fn notify(&self) -> &Notify {
        // Only `drop` takes it.
        self.notify.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.waiters.map.lock();
        // Drop our handle under the lock: every clone is made under it too,
        // so a count of 1 means only the map still holds the entry.
        drop(self.notify.take());
        if map.get(&self.id).is_some_and(|n| Arc::strong_count(n) == 1) {
            map.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finish_wakes_an_enabled_waiter_and_entries_do_not_leak() {
        let waiters = Arc::new(Waiters::default());
        let a = waiters.register([1; 32]);
        let b = waiters.register([1; 32]);
        assert_eq!(waiters.len(), 1);
        {
            let mut notified = std::pin::pin!(a.notify().notified());
            notified.as_mut().enable();
            waiters.finished(&[1; 32]);
            notified.await;
        }
        assert_eq!(waiters.len(), 0);
        drop(a);
        drop(b);
        assert_eq!(waiters.len(), 0);

        let c = waiters.register([2; 32]);
        let d = waiters.register([2; 32]);
        drop(c);
        assert_eq!(waiters.len(), 1, "d still waits");
        drop(d);
        assert_eq!(waiters.len(), 0);
    }
}
