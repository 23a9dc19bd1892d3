//! # idemlog
//!
//! An embeddable store that makes retried writes safe. A client that retries
//! a write (after a timeout, a 429, a crash) sends the same idempotency key
//! and body again; idemlog decides atomically whether this logical write is
//! new ([`Outcome::Acquired`]), done ([`Outcome::Replay`] of the stored
//! response), still running ([`Outcome::InProgress`]) or a reuse of the key
//! for another request ([`Outcome::Conflict`]).
//!
//! ```
//! use idemlog::{Config, Fingerprint, Outcome, Store};
//!
//! # fn charge_card(_: &[u8]) -> Result<Vec<u8>, std::io::Error> { Ok(b"{\"id\":\"ch_1\"}".to_vec()) }
//! fn handle(store: &Store, tenant: &str, key: &str, body: &[u8]) -> idemlog::Result<Vec<u8>> {
//!     let key = store.key(tenant, key)?;
//!     let fingerprint = Fingerprint::of_json(body)?;
//!     match store.reserve(&key, &fingerprint)? {
//!         Outcome::Acquired(reservation) => match charge_card(body) {
//!             Ok(response) => {
//!                 reservation.complete(response.clone())?;
//!                 Ok(response)
//!             }
//!             // Not cached: dropping the reservation releases the key, so
//!             // the client's retry runs the write again.
//!             Err(e) => Ok(format!("502 {e}").into_bytes()),
//!         },
//!         Outcome::Replay(replay) => Ok(replay.response.to_vec()),
//!         Outcome::InProgress { retry_after, .. } => {
//!             Ok(format!("409 retry after {}s", retry_after.as_secs()).into_bytes())
//!         }
//!         Outcome::Conflict { .. } => Ok(b"422 key reused with another body".to_vec()),
//!     }
//! }
//!
//! let store = Store::in_memory(Config::default());
//! let body = br#"{"amount": 1200, "currency": "eur"}"#;
//! let first = handle(&store, "tenant-1", "k-1", body)?;
//! // A retry with the same key and the same JSON value, spelled differently:
//! let retry = handle(&store, "tenant-1", "k-1", br#"{"currency":"eur","amount":1200.0}"#)?;
//! assert_eq!(first, retry);
//! assert_eq!(store.stats().replayed, 1);
//! // Same key, another body: rejected, never shadowing the first request.
//! let reuse = handle(&store, "tenant-1", "k-1", br#"{"amount": 9999, "currency": "eur"}"#)?;
//! assert_eq!(reuse, b"422 key reused with another body");
//! # Ok::<(), idemlog::Error>(())
//! ```
//!
//! ## Map of the crate
//! * [`identity`](IdempotencyKey) — `(scope, key)` and its validation;
//! * [`fingerprint`](Fingerprinter) — blake3 digests of raw or canonical-JSON bodies;
//! * [`decision`] — the decision table as pure functions shared by all engines;
//! * [`Store`] — the API over an engine: in memory, or the durable log
//!   ([`Store::open`]), whose file I/O goes through [`fs::FileSystem`];
//! * [`backend`] — the async boundary the HTTP layer and network backends share.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
mod clock;
mod config;
pub mod decision;
mod error;
mod fingerprint;
mod identity;
mod log;
mod record;
mod response;
mod store;

pub use backend::Backend;
pub use bytes::Bytes;
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use config::{Config, ConfigBuilder, Durability, Limits};
pub use error::{CanonicalJsonError, Error, Result};
pub use fingerprint::{
    canonicalize, canonicalize_into, Fingerprint, FingerprintAlgorithm, Fingerprinter,
};
pub use identity::{IdempotencyKey, RoutePlacement};
pub use log::fs;
pub use record::{Record, RecordState};
pub use response::{DecodeResponseError, StoredResponse};
pub use store::{
    Lease, MaintenanceReport, Outcome, Replay, Reservation, ReserveOptions, Stats, Store,
};
