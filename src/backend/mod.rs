//! The backend boundary: the operations of SPEC §3 as an async trait, so
//! that the HTTP layer runs unchanged on the embedded [`Store`] and on
//! network backends shared by a fleet of servers.
//!
//! Every backend makes the same decisions (the embedded engines call
//! [`crate::decision`]; network backends mirror it in one atomic server-side
//! step) and passes the same conformance suite in `tests/`.

#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sled")]
pub mod sled;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::config::Limits;
use crate::error::Result;
use crate::fingerprint::Fingerprint;
use crate::identity::IdempotencyKey;
use crate::record::Record;
use crate::store::{Lease, Outcome, ReserveOptions, Store};

/// Storage that decides idempotent requests. Operations on a held
/// reservation take its [`Lease`]; a lease whose fencing token is no longer
/// current gets [`Error::LeaseLost`](crate::Error::LeaseLost) and changes
/// nothing.
pub trait Backend: Send + Sync + 'static {
    /// Decides a request by the table of SPEC §3.
    fn reserve(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        options: ReserveOptions,
    ) -> impl Future<Output = Result<Outcome<Lease>>> + Send;

    /// Stores the response of a held lease.
    fn complete(&self, lease: &Lease, response: Bytes) -> impl Future<Output = Result<()>> + Send;

    /// Deletes the in-flight record of a held lease.
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<()>> + Send;

    /// Extends a held lease to the backend's `now + lease_for`.
    fn extend(
        &self,
        lease: &mut Lease,
        lease_for: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Stores a checkpoint under a held lease.
    fn checkpoint(
        &self,
        lease: &Lease,
        checkpoint: Bytes,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The record of `key`, unless absent or expired.
    fn lookup(&self, key: &IdempotencyKey) -> impl Future<Output = Result<Option<Record>>> + Send;

    /// The limits the backend enforces, so callers can build keys and check
    /// responses before sending them.
    fn limits(&self) -> &Limits;

    /// The lease a reservation gets when [`ReserveOptions`] names none, so
    /// a caller can extend it by as much before it runs out. Backends with
    /// a configuration return its lease; the provided value is
    /// [`Config`](crate::Config)'s default.
    fn default_lease(&self) -> Duration {
        crate::Config::default().lease
    }
}

/// The embedded store as a backend. Each call runs on the caller's task:
/// deciding never waits for I/O longer than a page-cache write, and with
/// `Durability::Sync` on the durable engine the wait for the group commit's
/// fdatasync is a future — the task is woken when its frames are synced, and
/// no thread blocks meanwhile, so async executor threads keep serving other
/// requests and concurrent tasks share one sync. On sled with
/// `Durability::Sync`, whose flush runs inside the call, the call moves to
/// tokio's blocking pool (with the `http` feature, which brings tokio).
impl Backend for Store {
    async fn reserve(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        options: ReserveOptions,
    ) -> Result<Outcome<Lease>> {
        if !self.blocks_in_update() {
            return self.reserve_async(key, fingerprint, options).await;
        }
        let (key, fingerprint) = (key.clone(), *fingerprint);
        self.off_executor(move |store| {
            Ok(store
                .reserve_with(&key, &fingerprint, options)?
                .map(|r| r.into_lease()))
        })
        .await
    }

    async fn complete(&self, lease: &Lease, response: Bytes) -> Result<()> {
        if !self.blocks_in_update() {
            return self.complete_async(lease, response).await;
        }
        let lease = lease.clone();
        self.off_executor(move |store| store.complete_lease(&lease, response))
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        if !self.blocks_in_update() {
            return self.release_async(lease).await;
        }
        let lease = lease.clone();
        self.off_executor(move |store| store.release_lease(&lease))
            .await
    }

    async fn extend(&self, lease: &mut Lease, lease_for: Duration) -> Result<()> {
        if !self.blocks_in_update() {
            return self.extend_async(lease, lease_for).await;
        }
        let mut moved = lease.clone();
        let moved = self
            .off_executor(move |store| {
                store.extend_lease(&mut moved, lease_for)?;
                Ok(moved)
            })
            .await?;
        *lease = moved;
        Ok(())
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: Bytes) -> Result<()> {
        if !self.blocks_in_update() {
            return self.checkpoint_async(lease, checkpoint).await;
        }
        let lease = lease.clone();
        self.off_executor(move |store| store.checkpoint_lease(&lease, checkpoint))
            .await
    }

    async fn lookup(&self, key: &IdempotencyKey) -> Result<Option<Record>> {
        if !self.blocks_in_update() {
            return self.lookup_async(key).await;
        }
        let key = key.clone();
        self.off_executor(move |store| Store::lookup(&store, &key))
            .await
    }

    fn limits(&self) -> &Limits {
        &self.config().limits
    }

    fn default_lease(&self) -> Duration {
        self.config().lease
    }
}

impl Store {
    /// Runs `op`, which blocks on a flush, on tokio's blocking pool when
    /// called from a tokio runtime (see the `Backend` impl above).
    async fn off_executor<T: Send + 'static>(
        &self,
        op: impl FnOnce(Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        #[cfg(feature = "http")]
        {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let store = self.clone();
                return match runtime.spawn_blocking(move || op(store)).await {
                    Ok(result) => result,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => Err(crate::Error::Backend {
                        backend: "embedded",
                        message: "the tokio runtime shut down before the store answered; \
                                  the operation may or may not have been applied, so retry it"
                            .into(),
                        source: None,
                    }),
                };
            }
        }
        op(self.clone())
    }
}
