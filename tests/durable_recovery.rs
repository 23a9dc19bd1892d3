//! Close and reopen, torn tails, corruption, locking and bad directories.

mod durable_support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use durable_support::*;
use idemlog::{Config, Durability, Error, Outcome, Store};

fn reserve_complete(store: &Store, k: &str, response: &[u8]) -> u64 {
    match store.reserve(&key(k), &fp(k)).unwrap() {
        Outcome::Acquired(r) => {
            let token = r.fencing_token();
            r.complete(response.to_vec()).unwrap();
            token
        }
        other => panic!("{k}: got {other:?}"),
    }
}

fn response_of(i: usize) -> Vec<u8> {
    (0..(i * 37) % 700).map(|j| (i * 31 + j) as u8).collect()
}

#[test]
fn reopen_replays_every_completed_record_with_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let mut max_token = 0;
    {
        let store = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap();
        for i in 0..300 {
            max_token = max_token.max(reserve_complete(&store, &format!("k{i}"), &response_of(i)));
        }
        // One that expires before the reopen.
        let Outcome::Acquired(r) = store
            .reserve_with(
                &key("short"),
                &fp("short"),
                idemlog::ReserveOptions::default().ttl(Duration::from_secs(10)),
            )
            .unwrap()
        else {
            panic!()
        };
        r.complete(&b"gone"[..]).unwrap();
        // One in flight, with a checkpoint.
        let Outcome::Acquired(mut r) = store.reserve(&key("busy"), &fp("busy")).unwrap() else {
            panic!()
        };
        r.checkpoint(&b"step-3"[..]).unwrap();
        max_token = max_token.max(r.fencing_token());
        let _ = r.into_lease();
        assert!(store.stats().segments > 1, "want several segments");
    }
    clock.advance(Duration::from_secs(11));
    let store = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap();
    for i in 0..300 {
        match store
            .reserve(&key(&format!("k{i}")), &fp(&format!("k{i}")))
            .unwrap()
        {
            Outcome::Replay(r) => assert_eq!(r.response[..], response_of(i)[..], "k{i}"),
            other => panic!("k{i}: got {other:?}"),
        }
    }
    assert!(store.lookup(&key("short")).unwrap().is_none());
    let Outcome::Acquired(r) = store.reserve(&key("busy"), &fp("busy")).unwrap() else {
        panic!("in-flight records of the previous process are taken over at once")
    };
    assert!(r.is_takeover());
    assert_eq!(
        r.recovered_checkpoint().map(|b| &b[..]),
        Some(&b"step-3"[..])
    );
    assert!(r.fencing_token() > max_token);
    let fresh = reserve_complete(&store, "new", b"x");
    assert!(fresh > max_token, "{fresh} > {max_token}");
    assert_eq!(store.stats().live_records, 302);
}

#[test]
fn keep_leases_on_open_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    {
        let store = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap();
        let Outcome::Acquired(r) = store.reserve(&key("busy"), &fp("busy")).unwrap() else {
            panic!()
        };
        let _ = r.into_lease();
    }
    clock.advance(Duration::from_secs(20));
    let mut cfg = config(&clock, Durability::Sync);
    cfg.keep_leases_on_open = true;
    let store = Store::open(dir.path(), cfg).unwrap();
    let o = store.reserve(&key("busy"), &fp("busy")).unwrap();
    assert!(
        matches!(o, Outcome::InProgress { retry_after, attempt: 1 } if retry_after == Duration::from_secs(40)),
        "got {o:?}"
    );
}

/// What the records F1/F2 written after `base` look like after a cut.
fn state_of(store: &Store, k: &str) -> u8 {
    match store.lookup(&key(k)).unwrap() {
        None => 0,
        Some(r) if r.is_in_flight() => 1,
        Some(r) => {
            assert_eq!(&r.response().unwrap()[..], format!("final-{k}").as_bytes());
            2
        }
    }
}

#[test]
fn torn_tail_at_every_byte_keeps_exactly_the_complete_records() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    {
        let store = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap();
        for i in 0..20 {
            reserve_complete(&store, &format!("base{i}"), &response_of(i));
        }
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let base_frames = frames(&std::fs::read(&seg).unwrap());
    let base_end = base_frames.last().map(|f| f.offset + f.len).unwrap();
    {
        let store = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap();
        for k in ["f1", "f2"] {
            reserve_complete(&store, k, format!("final-{k}").as_bytes());
        }
    }
    assert_eq!(segment_files(dir.path()).len(), 1);
    let full = std::fs::read(&seg).unwrap();
    let all = frames(&full);
    let tail: Vec<Frame> = all
        .iter()
        .copied()
        .filter(|f| f.offset >= base_end)
        .collect();
    let end = tail.last().map(|f| f.offset + f.len).unwrap();
    // Expected state of f1 and f2 for each complete prefix of the tail.
    let puts: Vec<Frame> = tail.iter().copied().filter(|f| f.kind == 1).collect();
    assert_eq!(puts.len(), 4, "{tail:?}");
    let expected = |cut: usize| -> (u8, u8) {
        let done = puts.iter().filter(|f| f.offset + f.len <= cut).count();
        match done {
            0 => (0, 0),
            1 => (1, 0),
            2 => (2, 0),
            3 => (2, 1),
            _ => (2, 2),
        }
    };
    let check = |cut: usize| {
        let store = Store::open(dir.path(), config(&clock, Durability::None)).unwrap();
        for i in 0..20 {
            let r = store.lookup(&key(&format!("base{i}"))).unwrap().unwrap();
            assert_eq!(r.response().unwrap()[..], response_of(i)[..]);
        }
        let got = (state_of(&store, "f1"), state_of(&store, "f2"));
        assert_eq!(got, expected(cut), "cut at {cut}");
    };
    // A torn tail: what a crash leaves past the cut in the preallocated
    // file reads as zeros (the file keeps its length; a shorter file is
    // refused, see `a_truncated_segment_is_refused_unless_repairing`).
    for cut in base_end..=end {
        let mut torn = full.clone();
        torn[cut..end].fill(0);
        std::fs::write(&seg, &torn).unwrap();
        check(cut);
    }
    std::fs::write(&seg, &full).unwrap();
    // Garbage or zeros after the last record, inside or past the
    // preallocated space: the same records.
    for (at, junk) in [
        (end, vec![0xA5u8; 100]),
        (full.len(), vec![0x17u8; 33]),
        (full.len(), vec![0u8; 4096]),
        (end, vec![0u8, 0, 0, 0, 0, 0, 0, 1]),
    ] {
        let mut bytes = full.clone();
        if at + junk.len() > bytes.len() {
            bytes.resize(at + junk.len(), 0);
        }
        bytes[at..at + junk.len()].copy_from_slice(&junk);
        std::fs::write(&seg, &bytes).unwrap();
        check(end);
        // The cut is made durable: a second open sees a clean log.
        check(end);
    }
}

#[test]
fn a_flipped_bit_in_synced_data_is_corruption_and_repair_quarantines() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    {
        let store = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap();
        for i in 0..200 {
            reserve_complete(&store, &format!("k{i}"), &response_of(i));
        }
    }
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 2);
    // In the middle of the first segment, and in the middle of the last one.
    for victim in [segs[0].clone(), segs[segs.len() - 1].clone()] {
        let good = std::fs::read(&victim).unwrap();
        let fs = frames(&good);
        let target = fs[fs.len() / 2];
        let mut bad = good.clone();
        bad[target.offset + 20] ^= 0x10;
        std::fs::write(&victim, &bad).unwrap();
        let err = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap_err();
        match &err {
            Error::Corrupt { file, offset, .. } => {
                assert_eq!(file, &victim);
                assert_eq!(*offset, target.offset as u64);
            }
            other => panic!("got {other:?}"),
        }
        assert!(err.to_string().contains("repair"), "{err}");
        std::fs::write(&victim, &good).unwrap();
    }
    // Repair: the damaged segment goes to quarantine/, the rest opens.
    let victim = segs[0].clone();
    let mut bad = std::fs::read(&victim).unwrap();
    let target = frames(&bad)[3];
    bad[target.offset + 9] ^= 1;
    std::fs::write(&victim, &bad).unwrap();
    let mut cfg = config(&clock, Durability::Sync);
    cfg.repair = true;
    let store = Store::open(dir.path(), cfg).unwrap();
    let q = dir
        .path()
        .join("quarantine")
        .join(victim.file_name().unwrap());
    assert!(q.exists(), "quarantined file {q:?}");
    assert!(!victim.exists());
    // Records in later segments survive.
    assert!(store.lookup(&key("k199")).unwrap().is_some());
}

#[test]
fn a_second_open_of_a_locked_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap();
    let err = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap_err();
    assert!(
        matches!(&err, Error::Locked { dir: d } if d == dir.path()),
        "got {err:?}"
    );
    drop(store);
    assert!(Store::open(dir.path(), config(&clock, Durability::Sync)).is_ok());
}

#[test]
fn unknown_format_version_foreign_files_and_bad_directories() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap();
        reserve_complete(&store, "a", b"x");
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let good = std::fs::read(&seg).unwrap();
    let mut newer = good.clone();
    newer[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&seg, &newer).unwrap();
    let err = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedFormatVersion { file, found: 2, supported: 1 } if file == &seg),
        "got {err:?}"
    );
    std::fs::write(&seg, &good).unwrap();
    let foreign = dir.path().join("00000009.seg");
    std::fs::write(&foreign, b"PK\x03\x04 not ours").unwrap();
    let err = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap_err();
    assert!(
        matches!(&err, Error::NotIdemlogFile { file } if file == &foreign),
        "got {err:?}"
    );
    std::fs::remove_file(&foreign).unwrap();
    // Unrelated files are left alone.
    std::fs::write(dir.path().join("README"), b"hello").unwrap();
    assert!(Store::open(dir.path(), config(&clock, Durability::Sync)).is_ok());

    let file = dir.path().join("README");
    let err = Store::open(&file, config(&clock, Durability::Sync)).unwrap_err();
    assert!(
        matches!(&err, Error::BadDirectory { path, .. } if path == &file),
        "got {err:?}"
    );
    let nested = dir.path().join("a/b/c");
    assert!(Store::open(&nested, config(&clock, Durability::Sync)).is_ok());
}

#[test]
fn sync_buffered_and_none_durabilities() {
    let clock = clock();
    // Sync: every acknowledged operation was synced.
    let dir = tempfile::tempdir().unwrap();
    let fs = std::sync::Arc::new(CountingFs::default());
    {
        // Counts the log's syncs, with nothing else in the file.
        let mut cfg = config(&clock, Durability::Sync);
        cfg.prefill_segments = false;
        let store = Store::open_with_fs(dir.path(), cfg, std::sync::Arc::new(SharedFs(fs.clone())))
            .unwrap();
        let before = fs.data_syncs.load(std::sync::atomic::Ordering::SeqCst);
        reserve_complete(&store, "a", b"x");
        let after = fs.data_syncs.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(after - before, 2, "one sync each for reserve and complete");
        let s = store.stats();
        assert_eq!((s.syncs, s.records_synced), (2, 2));
        assert!(s.last_sync_latency.is_some());
    }
    // Buffered: written at once, synced later (here: at drop).
    let dir = tempfile::tempdir().unwrap();
    let fs = std::sync::Arc::new(CountingFs::default());
    {
        let cfg = config(
            &clock,
            Durability::Buffered {
                max_delay: Duration::from_secs(3600),
            },
        );
        let store = Store::open_with_fs(dir.path(), cfg, std::sync::Arc::new(SharedFs(fs.clone())))
            .unwrap();
        let before = fs.data_syncs.load(std::sync::atomic::Ordering::SeqCst);
        reserve_complete(&store, "a", b"buffered-response");
        assert_eq!(
            fs.data_syncs.load(std::sync::atomic::Ordering::SeqCst),
            before
        );
        let on_disk = std::fs::read(segment_files(dir.path()).pop().unwrap()).unwrap();
        assert!(
            on_disk.windows(17).any(|w| w == b"buffered-response"),
            "the record reached the OS before the call returned"
        );
    }
    assert!(
        fs.data_syncs.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "drop syncs"
    );
    // None: never synced, even at drop; still readable after a clean close.
    let dir = tempfile::tempdir().unwrap();
    let fs = std::sync::Arc::new(CountingFs::default());
    {
        let store = Store::open_with_fs(
            dir.path(),
            config(&clock, Durability::None),
            std::sync::Arc::new(SharedFs(fs.clone())),
        )
        .unwrap();
        reserve_complete(&store, "a", b"none");
    }
    assert_eq!(fs.data_syncs.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(fs.dir_syncs.load(std::sync::atomic::Ordering::SeqCst), 0);
    let store = Store::open(dir.path(), config(&clock, Durability::None)).unwrap();
    assert!(matches!(
        store.reserve(&key("a"), &fp("a")).unwrap(),
        Outcome::Replay(_)
    ));
}

#[test]
fn a_failed_sync_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let fs = std::sync::Arc::new(CountingFs::default());
    let store = Store::open_with_fs(
        dir.path(),
        config(&clock, Durability::Sync),
        std::sync::Arc::new(SharedFs(fs.clone())),
    )
    .unwrap();
    reserve_complete(&store, "before", b"ok");
    let Outcome::Acquired(r) = store.reserve(&key("k"), &fp("k")).unwrap() else {
        panic!()
    };
    fs.fail_syncs
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = r.complete(&b"never acknowledged"[..]).unwrap_err();
    assert!(
        matches!(&err, Error::Poisoned { cause } if cause.contains("injected")),
        "got {err:?}"
    );
    fs.fail_syncs
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let err = store.reserve(&key("other"), &fp("other")).unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "got {err:?}");
    let err = store.lookup(&key("before")).unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "got {err:?}");
    drop(store);
    // Reopening recovers every acknowledged operation.
    let store = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap();
    assert!(matches!(
        store.reserve(&key("before"), &fp("before")).unwrap(),
        Outcome::Replay(_)
    ));
}

#[test]
fn many_records_many_segments_model_check_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for round in 0..4 {
        let store = Store::open(
            dir.path(),
            config(
                &clock,
                Durability::Buffered {
                    max_delay: Duration::from_millis(1),
                },
            ),
        )
        .unwrap();
        for (k, v) in &model {
            let Outcome::Replay(r) = store.reserve(&key(k), &fp(k)).unwrap() else {
                panic!("{k} lost in round {round}")
            };
            assert_eq!(&r.response[..], &v[..]);
        }
        for i in 0..150 {
            let k = format!("r{round}-{i}");
            let v = response_of(i + round);
            reserve_complete(&store, &k, &v);
            model.insert(k, v);
        }
        let _ = Config::default();
    }
}

/// Segments are created at full length and synced before they get their
/// name, so a shorter file was cut by something other than a crash, maybe
/// through synced records: refused as `Corrupt` naming the file; with
/// `repair` the records before the cut are kept.
#[test]
fn a_truncated_segment_is_refused_unless_repairing() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap();
        for i in 0..20 {
            reserve_complete(&store, &format!("k{i}"), &response_of(i));
        }
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let full = std::fs::read(&seg).unwrap();
    let all = frames(&full);
    // Cut in the middle of the last record frame.
    let last = all.iter().rev().find(|f| f.kind == 1).copied().unwrap();
    let cut = (last.offset + last.len / 2) as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let err = Store::open(dir.path(), config(&clock, Durability::Sync)).unwrap_err();
    match &err {
        Error::Corrupt { file, offset, .. } => {
            assert_eq!(file, &seg);
            assert_eq!(*offset, cut);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(err.to_string().contains("repair"), "{err}");

    let mut cfg = config(&clock, Durability::Sync);
    cfg.repair = true;
    let store = Store::open(dir.path(), cfg).unwrap();
    // The cut went through k19's completion; its reservation came before.
    for i in 0..20 {
        let record = store.lookup(&key(&format!("k{i}"))).unwrap().unwrap();
        assert_eq!(record.is_in_flight(), i == 19, "k{i}: {record:?}");
    }
}

/// `Buffered` promises the write reaches the OS at once and the sync comes
/// within `max_delay`; a caller must not wait for that sync. With the
/// writer thread's sync held inside `fdatasync`, reserves and completions
/// still finish.
#[test]
fn buffered_writes_do_not_wait_for_the_timed_sync() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let fs = std::sync::Arc::new(CountingFs::default());
    let cfg = config(
        &clock,
        Durability::Buffered {
            max_delay: Duration::from_millis(1),
        },
    );
    let store =
        Store::open_with_fs(dir.path(), cfg, std::sync::Arc::new(SharedFs(fs.clone()))).unwrap();
    fs.gate.close();
    reserve_complete(&store, "before", b"x");
    // The writer thread's timed sync is now held in fdatasync.
    let started = std::time::Instant::now();
    while fs.gate.held.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the timed sync never started"
        );
        std::thread::yield_now();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..10 {
                reserve_complete(&store, &format!("during-{i}"), b"y");
            }
            tx.send(()).unwrap();
        })
    };
    let finished = rx.recv_timeout(Duration::from_secs(5));
    fs.gate.open();
    writer.join().unwrap();
    assert!(
        finished.is_ok(),
        "Buffered writes waited for the timed fdatasync"
    );
    assert!(!fs.gate.timed_out.load(std::sync::atomic::Ordering::SeqCst));
    drop(store);
}

/// Writes a reservation, then `pairs` other requests, then completes it:
/// the two versions of its identity lie far apart in the log.
fn far_apart_versions(dir: &std::path::Path, pairs: usize) -> Config {
    let config = Config::builder()
        .clock(clock())
        .durability(Durability::None)
        .maintenance_interval(None)
        .ttl(Duration::from_secs(3600))
        .build();
    let store = Store::open(dir, config.clone()).unwrap();
    let Outcome::Acquired(far) = store.reserve(&key("far"), &fp("far")).unwrap() else {
        panic!("a fresh key was not acquired")
    };
    for i in 0..pairs {
        reserve_complete(&store, &format!("k{i}"), b"done");
    }
    far.complete(b"far response".to_vec()).unwrap();
    store.flush().unwrap();
    config
}

#[test]
fn a_version_far_back_in_the_log_is_superseded_on_reopen() {
    // Recovery compares identities from the frames it recently scanned and
    // reads older versions back from the file; 20 k pairs put the
    // reservation beyond what any indexer keeps.
    let dir = tempfile::tempdir().unwrap();
    let pairs = 20_000;
    let config = far_apart_versions(dir.path(), pairs);
    let store = Store::open(dir.path(), config).unwrap();
    // A reservation left in the index beside its completion would count.
    assert_eq!(store.stats().live_records, pairs as u64 + 1);
    assert_eq!(store.stats().in_flight, 0);
    match store.reserve(&key("far"), &fp("far")).unwrap() {
        Outcome::Replay(r) => assert_eq!(&r.response[..], b"far response"),
        other => panic!("got {other:?}"),
    }
}

#[test]
fn an_error_reading_an_old_version_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = far_apart_versions(dir.path(), 20_000);
    let fs = Arc::new(CountingFs::default());
    fs.fail_frame_reads.store(true, Ordering::SeqCst);
    let opened = Store::open_with_fs(
        dir.path(),
        config.clone(),
        Arc::new(SharedFs(Arc::clone(&fs))),
    );
    match opened {
        Err(Error::Io { context, .. }) => assert!(context.contains("cannot read"), "{context}"),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("the open succeeded without reading the old version"),
    }
    assert!(fs.failed_frame_reads.load(Ordering::SeqCst) >= 1);
    // Nothing was lost: the next open reads it.
    let store = Store::open(dir.path(), config).unwrap();
    assert_eq!(store.stats().live_records, 20_001);
}
