//! Floors: the comparison's workloads with the store taken out, so a run
//! shows what any store could reach on the machine it ran on.

pub mod group_commit;
pub mod log;
pub mod memory;

use memory::{Identity, Ticket};

/// What a floor row's requests call: the store's two steps, with nothing
/// of a store's own around them.
pub trait Floor: Send + Sync {
    /// Inserts an in-flight entry for `identity` unless one is there.
    fn reserve(
        &self,
        identity: &Identity,
        fingerprint: &[u8; 32],
        token: u64,
        expires_at_ms: u64,
    ) -> Result<Ticket, String>;

    /// Completes the entry under the ticket's token with `response`, as the
    /// application hands it over.
    fn complete(
        &self,
        identity: &Identity,
        ticket: &Ticket,
        response: Vec<u8>,
        expires_at_ms: u64,
    ) -> Result<(), String>;

    /// Entries held.
    fn len(&self) -> usize;
}
