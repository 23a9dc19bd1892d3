//! Reclamation with a manual clock and tiny segments: space comes back,
//! live records survive, and every reopen agrees with a model.

#[path = "support/beside.rs"]
mod beside;
mod durable_support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use beside::passes_beside_writers;
use durable_support::*;
use idemlog::{Clock, Config, Durability, MaintenanceReport, Outcome, ReserveOptions, Store};

fn cfg(clock: &idemlog::ManualClock) -> Config {
    Config::builder()
        .clock(clock.clone())
        .durability(Durability::Sync)
        .maintenance_interval(None)
        .ttl(Duration::from_secs(10))
        .lease(Duration::from_secs(5))
        .segment_size(4096)
        .build()
}

/// Churn tests: 100 s TTL, 64 KiB segments, no fsyncs.
fn churn_cfg(clock: &idemlog::ManualClock) -> Config {
    Config::builder()
        .clock(clock.clone())
        .durability(Durability::None)
        .maintenance_interval(None)
        .ttl(Duration::from_secs(100))
        .segment_size(64 << 10)
        .build()
}

/// Runs maintenance until a pass has no more work; returns the records
/// copied forward and the segments deleted.
fn maintain_fully(store: &Store) -> (u64, u64) {
    let total = maintain_totals(store);
    (total.records_copied, total.segments_deleted)
}

/// Runs maintenance until a pass has no more work; returns the passes'
/// copies, deletions and deletions freed whole, summed.
fn maintain_totals(store: &Store) -> MaintenanceReport {
    let mut total = MaintenanceReport::default();
    loop {
        let report = store.run_maintenance().unwrap();
        total.records_copied += report.records_copied;
        total.segments_deleted += report.segments_deleted;
        total.segments_freed_whole += report.segments_freed_whole;
        if !report.more_work {
            return total;
        }
    }
}

/// What the model expects of a key.
#[derive(Debug, Clone)]
enum Want {
    Done { response: Vec<u8>, expires: u64 },
    Busy { expires: u64 },
}

fn check(store: &Store, model: &BTreeMap<String, Want>, now: u64) {
    for (k, want) in model {
        let got = store.lookup(&key(k)).unwrap();
        match want {
            Want::Done { response, expires } if now < *expires => {
                let r = got.unwrap_or_else(|| panic!("{k} lost"));
                assert_eq!(
                    r.response().map(|b| b.to_vec()),
                    Some(response.clone()),
                    "{k}"
                );
            }
            Want::Busy { expires } if now < *expires => {
                assert!(got.is_some_and(|r| r.is_in_flight()), "{k} lost");
            }
            _ => assert!(got.is_none(), "{k} expired but came back"),
        }
    }
}

#[test]
fn segments_go_live_records_stay_and_reopens_agree() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let mut model: BTreeMap<String, Want> = BTreeMap::new();
    let mut store = Store::open(dir.path(), cfg(&clock)).unwrap();
    let mut deleted = 0;
    let mut copied = 0;
    for step in 0..60u64 {
        let now = clock.now().as_millis();
        for i in 0..6 {
            let k = format!("s{step}-{i}");
            let response = vec![(step + i) as u8; 300];
            // Every tenth key lives ten times longer: it is copied forward.
            let ttl = if i == 0 && step % 10 == 0 { 100 } else { 10 };
            let Outcome::Acquired(r) = store
                .reserve_with(
                    &key(&k),
                    &fp(&k),
                    ReserveOptions::default().ttl(Duration::from_secs(ttl)),
                )
                .unwrap()
            else {
                panic!()
            };
            r.complete(response.clone()).unwrap();
            model.insert(
                k,
                Want::Done {
                    response,
                    expires: now + ttl * 1000,
                },
            );
        }
        // A reservation left in flight (lease 5 s, forgotten 10 s later).
        let k = format!("busy{step}");
        let Outcome::Acquired(r) = store.reserve(&key(&k), &fp(&k)).unwrap() else {
            panic!()
        };
        let _ = r.into_lease();
        model.insert(
            k,
            Want::Busy {
                expires: now + 15_000,
            },
        );
        // A released one leaves a tombstone.
        let k = format!("rel{step}");
        let Outcome::Acquired(r) = store.reserve(&key(&k), &fp(&k)).unwrap() else {
            panic!()
        };
        r.release().unwrap();

        clock.advance(Duration::from_secs(1));
        let report = store.run_maintenance().unwrap();
        deleted += report.segments_deleted;
        copied += report.records_copied;
        let now = clock.now().as_millis();
        check(&store, &model, now);
        if step % 5 == 4 {
            drop(store);
            store = Store::open(dir.path(), {
                let mut c = cfg(&clock);
                c.keep_leases_on_open = true;
                c
            })
            .unwrap();
            check(&store, &model, now);
        }
        if step >= 30 {
            // With 4 KiB segments one step fills about one segment, a third
            // of it dead at once (reserve frames, the tombstone), whole
            // segments go oldest first, and which records share a segment
            // after a copy depends on the per-store hash secret: granularity
            // dominates, and 15 runs peaked at 3.55 segments beyond 1.5 x
            // live. The bound allows five; the steady-churn test below holds
            // 1.5 x itself at a realistic record/segment ratio.
            let s = store.stats();
            assert!(
                s.bytes_on_disk as f64 <= 1.5 * s.bytes_live as f64 + 5.0 * 4096.0,
                "step {step}: {} on disk for {} live",
                s.bytes_on_disk,
                s.bytes_live
            );
        }
    }
    assert!(deleted > 20, "deleted {deleted}");
    assert!(copied > 0, "copied {copied}");
    // Everything expires: all but the head segment go.
    clock.advance(Duration::from_secs(200));
    while store.run_maintenance().unwrap().more_work {}
    let s = store.stats();
    assert_eq!(s.live_records, 0);
    assert!(s.segments <= 2, "{s:?}");
    drop(store);
    let store = Store::open(dir.path(), cfg(&clock)).unwrap();
    check(&store, &model, clock.now().as_millis());
}

#[test]
fn steady_churn_stays_within_one_and_a_half_times_live_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = Store::open(dir.path(), {
        let mut c = cfg(&clock);
        c.durability = Durability::None;
        c
    })
    .unwrap();
    let mut worst: f64 = 0.0;
    for step in 0..200u64 {
        for i in 0..40 {
            let k = format!("c{step}-{i}");
            let Outcome::Acquired(r) = store.reserve(&key(&k), &fp(&k)).unwrap() else {
                panic!()
            };
            r.complete(vec![1u8; 300]).unwrap();
        }
        clock.advance(Duration::from_millis(500));
        store.run_maintenance().unwrap();
        if step >= 40 {
            let s = store.stats();
            worst = worst.max(s.bytes_on_disk as f64 / s.bytes_live as f64);
        }
    }
    assert!(worst <= 1.5, "disk / live reached {worst:.2}");
}

/// Reserve and complete `k` with a 300-byte response, under `opts`.
fn pair(store: &Store, k: &str, opts: ReserveOptions) {
    let Outcome::Acquired(r) = store.reserve_with(&key(k), &fp(k), opts).unwrap() else {
        panic!("{k} was not acquired")
    };
    r.complete(vec![7u8; 300]).unwrap();
}

/// What a churn run saw.
struct Churn {
    copied: u64,
    deleted: u64,
    /// The largest disk / live bytes after `steady_after` requests.
    worst: f64,
}

/// `total` pairs under [`churn_cfg`], 10 ms apart, request `i` reserved
/// with `options(i)`, maintenance run fully every 100 requests.
fn churn(total: u64, steady_after: u64, mut options: impl FnMut(u64) -> ReserveOptions) -> Churn {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = Store::open(dir.path(), churn_cfg(&clock)).unwrap();
    let mut seen = Churn {
        copied: 0,
        deleted: 0,
        worst: 0.0,
    };
    for i in 1..=total {
        pair(&store, &format!("c{i}"), options(i));
        clock.advance(Duration::from_millis(10));
        if i % 100 == 0 {
            let (copied, deleted) = maintain_fully(&store);
            seen.copied += copied;
            seen.deleted += deleted;
            if i > steady_after {
                let s = store.stats();
                seen.worst = seen.worst.max(s.bytes_on_disk as f64 / s.bytes_live as f64);
            }
        }
    }
    seen
}

#[test]
fn uniform_ttl_churn_copies_nothing_forward_and_disk_stays_bounded() {
    // 10 ms per request and a 100 s TTL keep 10,000 pairs live, about 90
    // segments of 64 KiB: the oldest segment's records are always the next
    // to expire, so waiting for them beats copying them.
    let Churn {
        copied,
        deleted,
        worst,
    } = churn(30_000, 20_000, |_| ReserveOptions::default());
    assert!(deleted > 100, "deleted {deleted}");
    assert_eq!(copied, 0, "records copied forward under a uniform TTL");
    // Live bytes count the completions only; the reserve frames they
    // superseded add a third (144 B per 444 B), and whole segments go.
    assert!(worst <= 1.4, "disk / live reached {worst:.2}");
}

#[test]
fn long_lived_stragglers_are_copied_forward_and_their_segment_goes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let long = Duration::from_secs(100 * 100);
    let store = Store::open(dir.path(), churn_cfg(&clock)).unwrap();
    // Two stragglers by their reservation's TTL, one by its completion's,
    // among records that expire 100 s on.
    pair(&store, "long-a", ReserveOptions::default().ttl(long));
    pair(&store, "long-b", ReserveOptions::default().ttl(long));
    let Outcome::Acquired(r) = store.reserve(&key("long-c"), &fp("long-c")).unwrap() else {
        panic!()
    };
    r.complete_with_ttl(vec![7u8; 300], long).unwrap();
    for i in 0..300 {
        pair(&store, &format!("short{i}"), ReserveOptions::default());
    }
    let old_segments = segment_files(dir.path());
    assert!(old_segments.len() >= 3, "{old_segments:?}");
    // Records written later, that outlive the first batch by 50 s.
    clock.advance(Duration::from_secs(50));
    for i in 0..300 {
        pair(&store, &format!("later{i}"), ReserveOptions::default());
    }
    assert_eq!(store.run_maintenance().unwrap().records_copied, 0);
    // The first batch expires: only the stragglers keep its segments. The
    // later records expire within the horizon (100 s / 8), so the pass
    // stops at the first segment that holds any.
    clock.advance(Duration::from_secs(90));
    let (copied, _) = maintain_fully(&store);
    assert_eq!(copied, 3, "the stragglers are copied forward, nothing else");
    let now = segment_files(dir.path());
    for old in &old_segments[..old_segments.len() - 1] {
        assert!(!now.contains(old), "{} is still there", old.display());
    }
    drop(store);
    let store = Store::open(dir.path(), churn_cfg(&clock)).unwrap();
    for k in ["long-a", "long-b", "long-c"] {
        match store.reserve(&key(k), &fp(k)).unwrap() {
            Outcome::Replay(r) => assert_eq!(&r.response[..], &[7u8; 300][..], "{k}"),
            other => panic!("{k}: {other:?}"),
        }
    }
    assert!(store.lookup(&key("short0")).unwrap().is_none());
    assert!(store.lookup(&key("later0")).unwrap().is_some());
}

#[test]
fn evenly_spread_ttls_keep_disk_within_twice_live_bytes() {
    // Per-request TTLs spread evenly over 50–150 s (the store's TTL is
    // 100 s, so the horizon is 12.5 s): the policy's worst case. The oldest
    // segment always holds some records that expire within the horizon, so
    // the pass waits for them, and the segment stays until its longest-lived
    // record expires: disk keeps max / mean TTL = 1.5 times the live time,
    // times 588 / 444 for the reserve frames the live bytes leave out
    // (1.99). Measured: 1.94, nothing copied forward.
    // A fixed, cheap sequence (64-bit LCG), so every run sees the same TTLs.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let total = 40_000;
    // Measured after two of the longest TTLs, in steady state.
    let Churn {
        copied,
        deleted,
        worst,
    } = churn(total, 30_000, |_| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ReserveOptions::default().ttl(Duration::from_millis(50_000 + (state >> 33) % 100_001))
    });
    assert!(deleted > 100, "deleted {deleted}");
    assert!(worst <= 2.0, "disk / live reached {worst:.2}");
    assert!(
        copied * 10 <= total,
        "{copied} records copied forward for {total} written"
    );
}

/// Maintenance sweeps a shard's table in steps and lets requests in between
/// them. With two writers adding records all along (so the table grows and
/// is rebuilt in the middle of sweeps) and every pass freeing segments, no
/// live record may go missing, then or after a reopen.
#[test]
fn passes_beside_writers_lose_no_live_record() {
    const PER_WRITER: u64 = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let config = || {
        Config::builder()
            .clock(clock.clone())
            .durability(Durability::None)
            .maintenance_interval(None)
            // Records live 5 s (so the reclaim horizon is 625 ms), and no
            // lease runs out between a writer's reserve and complete.
            .ttl(Duration::from_secs(5))
            .lease(Duration::from_secs(3600))
            // One shard, so it holds many sweep steps' worth of entries.
            .shards(1)
            .segment_size(256 << 10)
            .build()
    };
    let store = Store::open(dir.path(), config()).unwrap();
    let (mut deleted, mut most_live) = (0u64, 0u64);
    // (key, clock before its reserve and after its completion, TTL in ms,
    // response byte)
    let (written, passes) = passes_beside_writers(
        &clock,
        2,
        PER_WRITER,
        |w, i| {
            let k = format!("w{w}-{i}");
            // One in 500 outlives its neighbours: its segment is freed once
            // the few such records in it are copied forward, and an
            // undercount would free it under them.
            let ttl = if i % 500 == 0 { 60_000 } else { 5_000 };
            let before = clock.now().as_millis();
            let opts = ReserveOptions::default().ttl(Duration::from_millis(ttl));
            let Outcome::Acquired(r) = store.reserve_with(&key(&k), &fp(&k), opts).unwrap() else {
                panic!("{k} was not acquired")
            };
            r.complete(vec![i as u8; 100]).unwrap();
            let after = clock.now().as_millis();
            (k, before, after, ttl, i as u8)
        },
        || {
            deleted += store.run_maintenance().unwrap().segments_deleted;
            most_live = most_live.max(store.stats().live_records);
        },
    );
    assert!(passes >= PER_WRITER / 1_000, "{passes} passes");
    assert!(deleted > 0, "no segment was freed in {passes} passes");
    assert!(
        most_live > 4 * 4096,
        "the shard held {most_live} entries at most: about one sweep step's worth"
    );
    let check = |store: &Store| {
        let now = clock.now().as_millis();
        let mut live = 0;
        for (k, before, after, ttl, byte) in &written {
            let got = store.lookup(&key(k)).unwrap();
            if now < before + ttl {
                let r = got.unwrap_or_else(|| panic!("{k} lost"));
                assert_eq!(
                    r.response().map(|b| b.to_vec()),
                    Some(vec![*byte; 100]),
                    "{k}"
                );
                live += 1;
            } else if now >= after + ttl {
                assert!(got.is_none(), "{k} expired but came back");
            }
        }
        live
    };
    assert!(check(&store) > 0, "nothing was left live to check");
    store.flush().unwrap();
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    check(&store);
}

/// The segments deleted and how many of them were freed whole, by
/// maintenance run until a pass has no more work.
fn maintain_deleting(store: &Store) -> (u64, u64) {
    let total = maintain_totals(store);
    (total.segments_deleted, total.segments_freed_whole)
}

/// Writes `n` completed pairs with 48 KiB responses, keys `{prefix}{i}`.
fn big_pairs(store: &Store, prefix: &str, n: usize) {
    for i in 0..n {
        let k = format!("{prefix}{i}");
        match store.reserve(&key(&k), &fp("body")).unwrap() {
            Outcome::Acquired(r) => r.complete(vec![i as u8; 48 << 10]).unwrap(),
            other => panic!("{k}: {other:?}"),
        }
    }
}

/// Checks that every removed file was cut to nothing after its removal
/// was made durable, at most `step` bytes per cut, and returns how many
/// files were removed.
fn check_cuts(events: &[FileEvent], segment_size: u64, step: u64) -> usize {
    let mut removed = 0;
    for (at, event) in events.iter().enumerate() {
        let &FileEvent::Removed { file } = event else {
            continue;
        };
        removed += 1;
        let cut = |e: &FileEvent| match *e {
            FileEvent::Truncated { file: f, len } if f == file => Some(len),
            _ => None,
        };
        assert_eq!(
            events[..at].iter().filter_map(cut).count(),
            0,
            "a segment was cut while it still had its name"
        );
        let synced = events[at..]
            .iter()
            .position(|e| *e == FileEvent::DirSynced)
            .expect("the removal was never synced");
        let first_cut = events[at..].iter().position(|e| cut(e).is_some());
        assert!(
            first_cut.is_some_and(|c| c > synced),
            "a segment was not cut, or cut before its removal was durable: {:?}",
            &events[at..]
        );
        let mut left = segment_size;
        for len in events[at..].iter().filter_map(cut) {
            assert!(len < left && left - len <= step, "cut from {left} to {len}");
            left = len;
        }
        assert_eq!(left, 0, "a removed segment kept {left} bytes");
    }
    removed
}

/// Closing a deleted 64 MiB segment freed all its blocks at once, and the
/// log's fdatasync waited behind that for up to tens of ms; a pass cuts
/// each deleted segment down 256 KiB at a time instead, once its removal
/// is durable, and a failed cut costs nothing.
#[test]
fn deleted_segments_are_cut_in_steps_once_their_removal_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let fs = Arc::new(CountingFs::default());
    // Not a whole number of steps, so the last cut is a short one.
    let segment_size = (3 << 20) + 12_345;
    let config = Config::builder()
        .clock(clock.clone())
        .durability(Durability::Sync)
        .maintenance_interval(None)
        .ttl(Duration::from_secs(10))
        .segment_size(segment_size)
        .build();
    let open = || {
        let fs = Arc::new(SharedFs(Arc::clone(&fs)));
        Store::open_with_fs(dir.path(), config.clone(), fs).unwrap()
    };
    let store = open();
    big_pairs(&store, "old", 200);
    clock.advance(Duration::from_secs(20));
    big_pairs(&store, "new", 10);
    let (deleted, whole) = maintain_deleting(&store);
    assert!(deleted >= 2, "{deleted} segments deleted");
    assert_eq!(whole, 0, "segments freed whole though every cut succeeded");
    let events = std::mem::take(&mut *fs.file_events.lock().unwrap());
    assert_eq!(
        check_cuts(&events, segment_size, 256 << 10),
        deleted as usize
    );

    // A cut that fails leaves the rest to the file's close: the segment is
    // still deleted, the pass succeeds and says so.
    fs.fail_truncates.store(true, Ordering::SeqCst);
    big_pairs(&store, "later", 200);
    clock.advance(Duration::from_secs(20));
    let files_before = segment_files(dir.path()).len();
    let (deleted, whole) = maintain_deleting(&store);
    assert!(deleted >= 2, "{deleted} segments deleted with cuts failing");
    assert_eq!(whole, deleted);
    assert_eq!(
        fs.failed_truncates.load(Ordering::SeqCst),
        deleted,
        "one failed cut per deleted segment, then no more tries"
    );
    assert_eq!(
        segment_files(dir.path()).len(),
        files_before - deleted as usize
    );
    big_pairs(&store, "kept", 3);
    drop(store);

    // Reopened: what expired stays gone, and what was written after the
    // passes is there.
    let store = open();
    assert!(store.lookup(&key("old0")).unwrap().is_none());
    for i in 0..200 {
        let r = store.lookup(&key(&format!("later{i}"))).unwrap();
        assert!(r.is_none(), "later{i} expired but came back");
    }
    for i in 0..3 {
        let r = store.lookup(&key(&format!("kept{i}"))).unwrap();
        let response = r.and_then(|r| r.response().map(|b| b.to_vec()));
        assert_eq!(response, Some(vec![i as u8; 48 << 10]), "kept{i}");
    }
}

/// With `None` a removal is never synced: a power cut could bring back the
/// name of a file cut short, which recovery would refuse as damaged. So
/// such a store closes deleted segments whole.
#[test]
fn a_store_that_never_syncs_does_not_cut_deleted_segments() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let fs = Arc::new(CountingFs::default());
    let config = Config::builder()
        .clock(clock.clone())
        .durability(Durability::None)
        .maintenance_interval(None)
        .ttl(Duration::from_secs(10))
        .segment_size(1 << 20)
        .build();
    let store =
        Store::open_with_fs(dir.path(), config, Arc::new(SharedFs(Arc::clone(&fs)))).unwrap();
    big_pairs(&store, "old", 100);
    clock.advance(Duration::from_secs(20));
    let (deleted, whole) = maintain_deleting(&store);
    assert!(deleted >= 2, "{deleted} segments deleted");
    assert_eq!(whole, deleted);
    let events = fs.file_events.lock().unwrap().clone();
    let removed = events
        .iter()
        .filter(|e| matches!(e, FileEvent::Removed { .. }))
        .count();
    assert_eq!(removed, deleted as usize);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, FileEvent::Truncated { .. }) || *e == FileEvent::DirSynced),
        "{events:?}"
    );
}
