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
}

/// The embedded store answers from its own thread: in memory and with
/// buffered durability the call does not block; with `Durability::Sync` it
/// waits for a group commit (one fdatasync), as a blocking file write would.
impl Backend for Store {
    async fn reserve(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        options: ReserveOptions,
    ) -> Result<Outcome<Lease>> {
        Ok(self
            .reserve_with(key, fingerprint, options)?
            .map(|r| r.into_lease()))
    }

    async fn complete(&self, lease: &Lease, response: Bytes) -> Result<()> {
        self.complete_lease(lease, response)
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.release_lease(lease)
    }

    async fn extend(&self, lease: &mut Lease, lease_for: Duration) -> Result<()> {
        self.extend_lease(lease, lease_for)
    }

    async fn checkpoint(&self, lease: &Lease, checkpoint: Bytes) -> Result<()> {
        self.checkpoint_lease(lease, checkpoint)
    }

    async fn lookup(&self, key: &IdempotencyKey) -> Result<Option<Record>> {
        Store::lookup(self, key)
    }

    fn limits(&self) -> &Limits {
        &self.config().limits
    }
}
