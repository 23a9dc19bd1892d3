//! Shared by the durable-store targets: a segment header, the store
//! settings, and a check that a recovered store answers sanely.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use idemlog::{
    Config, Durability, Fingerprint, IdempotencyKey, ManualClock, Outcome, RecordState, Store,
    Timestamp,
};

pub const DIR: &str = "/data";

/// A valid header for segment `id` (magic, version 1, id, checksum), as
/// `docs/FORMAT.md` lays it out.
pub fn segment_header(id: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(32);
    h.extend_from_slice(b"IDEMLOG\0");
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&id.to_le_bytes());
    h.extend_from_slice(&[0u8; 12]);
    let c = checksum(&h);
    h.extend_from_slice(&c.to_le_bytes());
    h
}

/// The format's checksum: CRC-32C rotated right by 15, plus a constant.
pub fn checksum(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (0u32.wrapping_sub(crc & 1)));
        }
    }
    (!crc).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Wraps `payload` in a frame: length, length checksum, payload, checksum.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(payload.len() + 12);
    f.extend_from_slice(&len.to_le_bytes());
    f.extend_from_slice(&checksum(&len.to_le_bytes()).to_le_bytes());
    f.extend_from_slice(payload);
    f.extend_from_slice(&checksum(payload).to_le_bytes());
    f
}

pub fn config(clock: &ManualClock) -> Config {
    Config::builder()
        .clock(clock.clone())
        .durability(Durability::Sync)
        .segment_size(4096)
        .lease(Duration::from_millis(30))
        .ttl(Duration::from_millis(100))
        .maintenance_interval(None)
        .build()
}

/// Opens `fs` at `DIR`; if it opens, every answer must be well-formed and
/// the store must accept a write and keep it across a reopen.
pub fn open_and_probe(fs: Arc<dyn idemlog::fs::FileSystem>) {
    let clock = ManualClock::new(Timestamp::from_millis(1_000));
    let store = match Store::open_with_fs(DIR, config(&clock), Arc::clone(&fs)) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    for i in 0..4 {
        let key = IdempotencyKey::new("s", format!("k{i}")).expect("valid");
        if let Some(r) = store.lookup(&key).expect("lookup on an opened store") {
            assert_eq!(r.key(), &key, "lookup returned another identity's record");
            if let RecordState::Completed { response, .. } = r.state() {
                assert!(response.len() <= store.config().limits.max_response_len);
            }
        }
    }
    let probe = IdempotencyKey::new("probe", "p").expect("valid");
    match store.reserve(&probe, &Fingerprint::of_bytes(b"x")) {
        Ok(Outcome::Acquired(r)) => r.complete(&b"probe"[..]).expect("complete"),
        Ok(Outcome::Replay(p)) => assert_eq!(&p.response[..], b"probe"),
        Ok(other) => panic!("fresh probe answered {other:?}"),
        // A damaged image the store could not write behind (e.g. no room
        // in the head segment) must say so, not pretend.
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    }
    drop(store);
    let store = Store::open_with_fs(DIR, config(&clock), fs).expect("reopen after a clean close");
    let r = store
        .lookup(&probe)
        .expect("lookup")
        .expect("the probe survives a clean close");
    assert_eq!(r.response().map(|b| &b[..]), Some(&b"probe"[..]));
}
