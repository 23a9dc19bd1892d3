//! A scripted single-threaded workload for crash tests, and the "view" of a
//! store (what `lookup` shows for each identity) to compare a recovered
//! store with.
//!
//! The script is deterministic from its seed. After each operation returns
//! the workload bumps `ack` (the number of acknowledged operations) and
//! records the store's view: `views[m]` is what the store showed after `m`
//! operations. A crash while operation `m` runs may leave `views[m]` or
//! `views[m + 1]`, nothing else: every acknowledged operation survives (S2),
//! no hole (S3), no invented or altered bytes (S4), nothing removed or
//! expired comes back (S5).

#![allow(dead_code)] // each test binary uses a part of this module

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idemlog::{
    Bytes, Clock, Config, Durability, Fingerprint, IdempotencyKey, Lease, ManualClock, Outcome,
    RecordState, Store, Timestamp,
};

use super::rng::Rng;

pub const IDENTITIES: u8 = 6;
pub const LEASE_MS: u64 = 50;
pub const TTL_MS: u64 = 400;
pub const SEGMENT: u64 = 4096;

pub fn key(i: u8) -> IdempotencyKey {
    IdempotencyKey::new(format!("tenant-{}", i % 2), format!("order-{i}")).expect("valid key")
}

pub fn fingerprint(body: u8) -> Fingerprint {
    Fingerprint::of_bytes(&[body])
}

pub fn config(clock: &ManualClock) -> Config {
    config_with_segment(clock, SEGMENT)
}

/// [`config`] with segments of `segment` bytes. Segments above one block
/// leave the prefill room to write zeros ahead of the log.
pub fn config_with_segment(clock: &ManualClock, segment: u64) -> Config {
    Config::builder()
        .clock(clock.clone())
        .lease(Duration::from_millis(LEASE_MS))
        .ttl(Duration::from_millis(TTL_MS))
        .durability(Durability::Sync)
        .segment_size(segment)
        .maintenance_interval(None)
        .build()
}

/// What `lookup` shows for one identity, minus what a reopen may change
/// (the lease of an in-flight record is voided so a retry can take over,
/// and replay counts restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    InFlight {
        token: u64,
        fingerprint: Fingerprint,
        attempts: u32,
        checkpoint: Option<Bytes>,
        expires_at: Timestamp,
    },
    Completed {
        token: u64,
        fingerprint: Fingerprint,
        attempts: u32,
        response: Bytes,
        expires_at: Timestamp,
    },
}

/// The view of a store: identity → record (absent identities left out).
pub type View = BTreeMap<u8, Seen>;

pub fn view(store: &Store) -> idemlog::Result<View> {
    let mut v = View::new();
    for i in 0..IDENTITIES {
        if let Some(r) = store.lookup(&key(i))? {
            let seen = match r.state() {
                RecordState::InFlight { .. } => Seen::InFlight {
                    token: r.fencing_token(),
                    fingerprint: r.fingerprint(),
                    attempts: r.attempts(),
                    checkpoint: r.checkpoint().cloned(),
                    expires_at: r.expires_at(),
                },
                RecordState::Completed { response, .. } => Seen::Completed {
                    token: r.fencing_token(),
                    fingerprint: r.fingerprint(),
                    attempts: r.attempts(),
                    response: response.clone(),
                    expires_at: r.expires_at(),
                },
            };
            v.insert(i, seen);
        }
    }
    Ok(v)
}

/// The largest fencing token a view shows.
pub fn max_token(v: &View) -> u64 {
    v.values()
        .map(|s| match s {
            Seen::InFlight { token, .. } | Seen::Completed { token, .. } => *token,
        })
        .max()
        .unwrap_or(0)
}

/// What the scripted run saw.
#[derive(Debug, Clone)]
pub struct Recording {
    /// `views[m]`: the view after `m` acknowledged operations.
    pub views: Vec<View>,
    /// `clocks[m]`: the clock while operation `m` ran.
    pub clocks: Vec<u64>,
    /// `tokens[m][i]`: the largest token of identity `i` acknowledged by the
    /// first `m` operations (fencing tokens rise per identity).
    pub tokens: Vec<[u64; IDENTITIES as usize]>,
    pub ops: usize,
}

/// Runs `ops` scripted operations on `store`; bumps `ack` after each.
pub fn run(
    store: &Store,
    clock: &ManualClock,
    ack: &Arc<AtomicU64>,
    ops: usize,
    seed: u64,
) -> Recording {
    let mut rng = Rng::new(seed);
    let mut held: BTreeMap<u8, Lease> = BTreeMap::new();
    let mut rec = Recording {
        views: vec![View::new()],
        clocks: vec![],
        tokens: vec![[0; IDENTITIES as usize]],
        ops,
    };
    let mut max_token = [0u64; IDENTITIES as usize];
    let mut n = 0u64;
    for _ in 0..ops {
        rec.clocks.push(clock.now().as_millis());
        let i = rng.below(u64::from(IDENTITIES)) as u8;
        let k = key(i);
        match rng.below(100) {
            0..=29 => {
                let body = if rng.chance(1, 6) { 1 } else { 0 };
                let out = store.reserve(&k, &fingerprint(body)).expect("reserve");
                if let Outcome::Acquired(r) = out {
                    let lease = r.into_lease();
                    max_token[i as usize] = max_token[i as usize].max(lease.token);
                    held.insert(i, lease);
                }
            }
            30..=54 => {
                if let Some(lease) = held.remove(&i) {
                    n += 1;
                    // Responses of 20..=400 bytes fill segments quickly.
                    let mut response = format!("response {n} for {i}: ").into_bytes();
                    response.resize(20 + rng.below(380) as usize, b'a' + (n % 26) as u8);
                    let _ = store.complete_lease(&lease, response.into());
                }
            }
            55..=61 => {
                if let Some(lease) = held.remove(&i) {
                    let _ = store.release_lease(&lease);
                }
            }
            62..=69 => {
                if let Some(lease) = held.get(&i) {
                    n += 1;
                    let _ = store.checkpoint_lease(lease, format!("phase {n}").into_bytes().into());
                }
            }
            70..=74 => {
                if let Some(lease) = held.get_mut(&i) {
                    let _ = store.extend_lease(lease, Duration::from_millis(LEASE_MS));
                }
            }
            75..=89 => clock.advance(Duration::from_millis(rng.below(80))),
            _ => {
                store.run_maintenance().expect("maintenance");
            }
        }
        ack.fetch_add(1, Ordering::SeqCst);
        rec.views.push(view(store).expect("view"));
        rec.tokens.push(max_token);
    }
    rec.clocks.push(clock.now().as_millis());
    rec
}

/// Opens `dir` on `fs` at clock `now` and returns the store and its view.
pub fn reopen(
    dir: &Path,
    fs: Arc<dyn idemlog::fs::FileSystem>,
    now: u64,
) -> idemlog::Result<(Store, ManualClock, View)> {
    let clock = ManualClock::new(Timestamp::from_millis(now));
    let store = Store::open_with_fs(dir, config(&clock), fs)?;
    let v = view(&store)?;
    Ok((store, clock, v))
}

/// Whether a recovered view is one the crash may leave: the view after the
/// acknowledged operations, or after the one that was running too. Records
/// that expired by `now` are absent from both sides.
pub fn allowed(rec: &Recording, acked: usize, got: &View, now: u64) -> bool {
    let candidates = [acked, acked + 1];
    candidates
        .iter()
        .filter(|&&m| m < rec.views.len())
        .any(|&m| live_at(&rec.views[m], now) == *got)
}

/// `v` without the records expired at `now`.
pub fn live_at(v: &View, now: u64) -> View {
    {
        v.iter()
            .filter(|(_, s)| match s {
                Seen::Completed { expires_at, .. } | Seen::InFlight { expires_at, .. } => {
                    expires_at.as_millis() > now
                }
            })
            .map(|(k, s)| (*k, s.clone()))
            .collect()
    }
}
