//! Bugs the reliability harness found in recovery, each pinned by a test
//! that failed before its fix (see docs/RELIABILITY.md).

use std::time::Duration;

use idemlog::{Config, Durability, Fingerprint, ManualClock, Outcome, Store, Timestamp};

/// Recovery reused its read window from one segment to the next without
/// forgetting what it held, so the second segment was read as the bytes of
/// the first: every directory with two or more segments failed to open
/// ("frame length checksum mismatch ... synced") or could be misread.
#[test]
fn a_directory_with_several_segments_reopens_with_every_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = ManualClock::new(Timestamp::from_millis(1_000));
    let config = || {
        Config::builder()
            .clock(clock.clone())
            .durability(Durability::Sync)
            .segment_size(4096)
            .ttl(Duration::from_secs(3600))
            .maintenance_interval(None)
            .build()
    };
    let store = Store::open(dir.path(), config()).expect("open");
    let fp = Fingerprint::of_bytes(b"body");
    for i in 0..60 {
        let key = store.key("t", format!("k{i}")).expect("key");
        let Outcome::Acquired(r) = store.reserve(&key, &fp).expect("reserve") else {
            panic!("fresh key")
        };
        r.complete(vec![b'a' + (i % 26) as u8; 200])
            .expect("complete");
    }
    assert!(store.stats().segments >= 3, "{:?}", store.stats());
    drop(store);
    let store = Store::open(dir.path(), config()).expect("reopen a multi-segment directory");
    for i in 0..60 {
        let key = store.key("t", format!("k{i}")).expect("key");
        let record = store.lookup(&key).expect("lookup").expect("present");
        assert_eq!(
            record.response().map(|b| b.to_vec()),
            Some(vec![b'a' + (i % 26) as u8; 200]),
            "k{i}"
        );
    }
}
