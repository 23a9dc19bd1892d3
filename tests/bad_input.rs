//! Bad input from callers: every malformed or oversized key, scope,
//! response and checkpoint gets its own typed error, and nothing stored
//! changes (a lookup before and after is identical).

use std::time::Duration;

use idemlog::{
    Config, Error, Fingerprint, IdempotencyKey, ManualClock, Outcome, Record, Store, Timestamp,
};

fn config(clock: &ManualClock) -> Config {
    Config::builder()
        .clock(clock.clone())
        .max_key_len(16)
        .max_scope_len(8)
        .max_response_len(32)
        .max_checkpoint_len(8)
        .maintenance_interval(None)
        .build()
}

/// A store holding one completed and one in-flight record, and their
/// lookups.
struct Fixture {
    store: Store,
    done: IdempotencyKey,
    held: idemlog::Reservation,
    before: Vec<Option<Record>>,
}

fn fixture(store: Store) -> Fixture {
    let done = store.key("t", "done").expect("valid");
    let running = store.key("t", "running").expect("valid");
    let fp = Fingerprint::of_bytes(b"body");
    let Outcome::Acquired(r) = store.reserve(&done, &fp).expect("reserve") else {
        panic!("fresh key is acquired")
    };
    r.complete(&b"stored response"[..]).expect("complete");
    let Outcome::Acquired(mut held) = store.reserve(&running, &fp).expect("reserve") else {
        panic!("fresh key is acquired")
    };
    held.checkpoint(&b"phase-1"[..]).expect("checkpoint");
    let before = snapshot(&store, &done, &running);
    Fixture {
        store,
        done,
        held,
        before,
    }
}

fn snapshot(store: &Store, done: &IdempotencyKey, running: &IdempotencyKey) -> Vec<Option<Record>> {
    vec![
        store.lookup(done).expect("lookup"),
        store.lookup(running).expect("lookup"),
    ]
}

impl Fixture {
    fn assert_unchanged(&self, what: &str) {
        let running = self.held.key().clone();
        let after = snapshot(&self.store, &self.done, &running);
        assert_eq!(self.before, after, "{what} changed stored data");
    }
}

#[test]
fn malformed_keys_and_scopes_are_typed_errors() {
    let clock = ManualClock::new(Timestamp::from_millis(1_000));
    let f = fixture(Store::in_memory(config(&clock)));
    let s = &f.store;

    let e = s.key("t", "").unwrap_err();
    assert!(matches!(e, Error::EmptyKey { limit: 16 }), "got {e:?}");
    let e = s.key("t", "k".repeat(17)).unwrap_err();
    assert!(
        matches!(e, Error::KeyTooLong { len: 17, limit: 16 }),
        "got {e:?}"
    );
    for (key, byte, position) in [
        ("ab\ncd", b'\n', 2),
        ("tab\there", b'\t', 3),
        ("del\x7f", 0x7f, 3),
        ("\x00", 0, 0),
    ] {
        let e = s.key("t", key).unwrap_err();
        assert!(
            matches!(e, Error::InvalidKeyByte { byte: b, position: p } if b == byte && p == position),
            "{key:?}: got {e:?}"
        );
    }
    // Non-ASCII UTF-8: the first byte of "é" is reported.
    let e = s.key("t", "café").unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidKeyByte {
                byte: 0xc3,
                position: 3
            }
        ),
        "got {e:?}"
    );
    let e = s.key("s".repeat(9), "k").unwrap_err();
    assert!(
        matches!(e, Error::ScopeTooLong { len: 9, limit: 8 }),
        "got {e:?}"
    );
    // Limits are inclusive.
    assert!(s.key("s".repeat(8), "k".repeat(16)).is_ok());
    for e in [
        s.key("t", "").unwrap_err(),
        s.key("s".repeat(9), "k").unwrap_err(),
    ] {
        assert!(e.is_invalid_input(), "{e:?}");
        assert!(!e.to_string().is_empty());
    }

    // A key valid under the default limits but over this store's limits is
    // refused by reserve and lookup too.
    let long = IdempotencyKey::new("t", "k".repeat(40)).expect("valid by default");
    let e = s.reserve(&long, &Fingerprint::of_bytes(b"x")).unwrap_err();
    assert!(
        matches!(e, Error::KeyTooLong { len: 40, limit: 16 }),
        "got {e:?}"
    );
    let e = s.lookup(&long).unwrap_err();
    assert!(
        matches!(e, Error::KeyTooLong { len: 40, limit: 16 }),
        "got {e:?}"
    );
    let wide = IdempotencyKey::new("s".repeat(100), "k").expect("valid by default");
    let e = s.reserve(&wide, &Fingerprint::of_bytes(b"x")).unwrap_err();
    assert!(
        matches!(e, Error::ScopeTooLong { len: 100, limit: 8 }),
        "got {e:?}"
    );
    f.assert_unchanged("refused keys");
    assert_eq!(s.stats().live_records, 2);
}

#[test]
fn oversized_responses_and_checkpoints_are_refused_and_change_nothing() {
    let clock = ManualClock::new(Timestamp::from_millis(1_000));
    let mut f = fixture(Store::in_memory(config(&clock)));

    let e = f.held.checkpoint(vec![7u8; 9]).unwrap_err();
    assert!(
        matches!(e, Error::CheckpointTooLarge { len: 9, limit: 8 }),
        "got {e:?}"
    );
    f.assert_unchanged("an oversized checkpoint");
    assert_eq!(
        f.held.recovered_checkpoint().map(|c| &c[..]),
        Some(&b"phase-1"[..]),
        "the reservation's own view keeps the last accepted checkpoint"
    );

    let lease = f.held.lease().clone();
    let e = f
        .store
        .complete_lease(&lease, vec![1u8; 33].into())
        .unwrap_err();
    assert!(
        matches!(e, Error::ResponseTooLarge { len: 33, limit: 32 }),
        "got {e:?}"
    );
    f.assert_unchanged("an oversized response");

    // The reservation is still held and works with a response in bounds.
    let e = f.store.complete_lease(&lease, vec![1u8; 32].into());
    assert!(e.is_ok(), "got {e:?}");
    let after = f
        .store
        .lookup(f.held.key())
        .expect("lookup")
        .expect("present");
    assert_eq!(after.response().map(|b| b.len()), Some(32));
}

#[test]
fn an_oversized_response_through_reservation_complete_releases_on_drop() {
    let clock = ManualClock::new(Timestamp::from_millis(1_000));
    let store = Store::in_memory(config(&clock));
    let key = store.key("t", "k").expect("valid");
    let fp = Fingerprint::of_bytes(b"x");
    let Outcome::Acquired(r) = store.reserve(&key, &fp).expect("reserve") else {
        panic!("fresh")
    };
    let e = r.complete(vec![0u8; 1000]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ResponseTooLarge {
                len: 1000,
                limit: 32
            }
        ),
        "got {e:?}"
    );
    // Not cached: the retry runs the write again.
    let again = store.reserve(&key, &fp).expect("reserve");
    assert!(matches!(again, Outcome::Acquired(_)), "got {again:?}");
}

#[test]
fn malformed_json_bodies_are_typed_errors() {
    for body in [
        &b"{"[..],
        b"[1,]",
        b"\"\xff\"",
        b"nan",
        b"{\"a\":1,\"a\":2}",
        b"",
    ] {
        let e = Fingerprint::of_json(body).unwrap_err();
        assert!(matches!(e, Error::CanonicalJson(_)), "{body:?}: got {e:?}");
        assert!(e.is_invalid_input());
    }
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let e = Fingerprint::of_json(deep.as_bytes()).unwrap_err();
    assert!(matches!(e, Error::CanonicalJson(_)), "got {e:?}");
}

#[test]
fn stale_and_foreign_leases_change_nothing() {
    let clock = ManualClock::new(Timestamp::from_millis(1_000));
    let f = fixture(Store::in_memory(config(&clock)));
    let mut forged = f.held.lease().clone();
    forged.token += 1;
    let e = f
        .store
        .complete_lease(&forged, b"x"[..].into())
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LeaseLost {
                current: Some(_),
                ..
            }
        ),
        "got {e:?}"
    );
    let e = f.store.release_lease(&forged).unwrap_err();
    assert!(matches!(e, Error::LeaseLost { .. }), "got {e:?}");
    let e = f
        .store
        .extend_lease(&mut forged, Duration::from_secs(1))
        .unwrap_err();
    assert!(matches!(e, Error::LeaseLost { .. }), "got {e:?}");
    let e = f
        .store
        .checkpoint_lease(&forged, b"c"[..].into())
        .unwrap_err();
    assert!(matches!(e, Error::LeaseLost { .. }), "got {e:?}");
    f.assert_unchanged("a forged token");
}

// ---- Bad data directories (durable store) ----

fn durable_config() -> Config {
    Config::builder()
        .clock(ManualClock::new(Timestamp::from_millis(1_000)))
        .segment_size(64 << 10)
        .maintenance_interval(None)
        .build()
}

/// Every file of `dir` and its bytes.
fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| {
            let e = e.expect("entry");
            let bytes = if e.path().is_file() {
                std::fs::read(e.path()).expect("read")
            } else {
                Vec::new()
            };
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    out.sort();
    out
}

/// A directory holding one completed record, closed.
fn durable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), durable_config()).expect("open");
    let key = store.key("t", "k").expect("valid");
    let Outcome::Acquired(r) = store
        .reserve(&key, &Fingerprint::of_bytes(b"x"))
        .expect("reserve")
    else {
        panic!("fresh")
    };
    r.complete(&b"kept"[..]).expect("complete");
    drop(store);
    dir
}

fn assert_record_kept(dir: &std::path::Path) {
    let store = Store::open(dir, durable_config()).expect("reopen");
    let key = store.key("t", "k").expect("valid");
    let r = store.lookup(&key).expect("lookup").expect("kept");
    assert_eq!(r.response().map(|b| &b[..]), Some(&b"kept"[..]));
}

#[test]
fn a_data_directory_that_is_a_file_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("not-a-dir");
    std::fs::write(&path, b"user data").expect("write");
    let e = Store::open(&path, durable_config()).unwrap_err();
    assert!(matches!(e, Error::BadDirectory { .. }), "got {e:?}");
    assert!(e.to_string().contains("not a directory"), "{e}");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"user data",
        "the file was changed"
    );
}

#[test]
fn an_unreadable_data_directory_is_a_typed_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = durable_dir();
    let before = files(dir.path());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o000)).expect("chmod");
    // root reads through permissions: detect and say so instead of passing
    // for the wrong reason.
    if std::fs::read_dir(dir.path()).is_ok() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        println!("SKIPPED unreadable directory: running as root, permissions are not enforced");
        return;
    }
    let e = Store::open(dir.path(), durable_config()).unwrap_err();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert!(
        matches!(e, Error::BadDirectory { .. } | Error::Io { .. }),
        "got {e:?}"
    );
    assert_eq!(before, files(dir.path()));
    assert_record_kept(dir.path());
}

#[test]
fn a_segment_from_a_newer_format_version_is_a_typed_error_and_left_alone() {
    let dir = durable_dir();
    let seg = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let original = bytes.clone();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&seg, &bytes).expect("write");
    let before = files(dir.path());
    let e = Store::open(dir.path(), durable_config()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnsupportedFormatVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "got {e:?}"
    );
    assert!(e.to_string().contains("upgrade idemlog"), "{e}");
    assert_eq!(before, files(dir.path()), "the directory was changed");
    // Put back, the data is all there.
    std::fs::write(&seg, &original).expect("write");
    assert_record_kept(dir.path());
}

#[test]
fn a_foreign_file_named_like_a_segment_is_a_typed_error() {
    let dir = durable_dir();
    let foreign = dir.path().join("00000009.seg");
    std::fs::write(&foreign, b"PNG\x0d\x0a not a log").expect("write");
    let before = files(dir.path());
    let e = Store::open(dir.path(), durable_config()).unwrap_err();
    assert!(matches!(e, Error::NotIdemlogFile { .. }), "got {e:?}");
    assert_eq!(before, files(dir.path()));
    std::fs::remove_file(&foreign).expect("remove");
    assert_record_kept(dir.path());
}

#[test]
fn a_directory_open_twice_is_locked() {
    let dir = durable_dir();
    let first = Store::open(dir.path(), durable_config()).expect("open");
    let e = Store::open(dir.path(), durable_config()).unwrap_err();
    assert!(matches!(e, Error::Locked { .. }), "got {e:?}");
    drop(first);
    assert_record_kept(dir.path());
}

#[test]
fn bad_input_to_a_durable_store_changes_nothing_on_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(
        dir.path(),
        Config::builder()
            .clock(ManualClock::new(Timestamp::from_millis(1_000)))
            .maintenance_interval(None)
            .segment_size(64 << 10)
            .max_key_len(16)
            .max_response_len(16)
            .max_checkpoint_len(8)
            .build(),
    )
    .expect("open");
    let f = fixture(store);
    f.store.flush().expect("flush");
    let before = files(dir.path());
    let mut held = f.held;
    let e = held.checkpoint(vec![0u8; 9]).unwrap_err();
    assert!(
        matches!(e, Error::CheckpointTooLarge { len: 9, limit: 8 }),
        "got {e:?}"
    );
    let e = f
        .store
        .complete_lease(held.lease(), vec![0u8; 17].into())
        .unwrap_err();
    assert!(
        matches!(e, Error::ResponseTooLarge { len: 17, limit: 16 }),
        "got {e:?}"
    );
    let long = IdempotencyKey::new("t", "k".repeat(40)).expect("valid by default");
    let e = f
        .store
        .reserve(&long, &Fingerprint::of_bytes(b"x"))
        .unwrap_err();
    assert!(
        matches!(e, Error::KeyTooLong { len: 40, limit: 16 }),
        "got {e:?}"
    );
    let e = f.store.lookup(&long).unwrap_err();
    assert!(
        matches!(e, Error::KeyTooLong { len: 40, limit: 16 }),
        "got {e:?}"
    );
    let running = held.key().clone();
    assert_eq!(f.before, snapshot(&f.store, &f.done, &running));
    f.store.flush().expect("flush");
    assert_eq!(before, files(dir.path()), "refused calls wrote to the log");
    let _ = held.into_lease();
}
