//! The in-memory store's maintenance passes beside concurrent writers.

#[path = "support/beside.rs"]
mod beside;

use std::time::Duration;

use beside::passes_beside_writers;
use idemlog::{
    Clock, Config, Fingerprint, IdempotencyKey, ManualClock, Outcome, ReserveOptions, Store,
    Timestamp,
};

const T0: u64 = 1_000_000;

/// One record a writer made: its key, the clock before its reserve and
/// after its last write, how long it lives after that write, and its
/// response byte (`None` for a reservation left in flight).
struct Written {
    key: String,
    before: u64,
    after: u64,
    lives_ms: u64,
    byte: Option<u8>,
}

/// Maintenance sweeps each shard in steps and lets requests in between.
/// Two writers add records all along (so the table grows, at times in the
/// middle of a sweep: removing live records after a rehash mid-sweep made
/// this test fail; the unit test `a_rehash_between_steps_leaves_the_shard_due`
/// covers that case deterministically), some left in flight, while passes
/// run back to back and expire what comes due. No live record may go
/// missing, and the counts must be exact after a last pass
/// ([`check_after_last_pass`]).
#[test]
fn passes_beside_writers_lose_no_live_record() {
    const PER_WRITER: u64 = 30_000;
    let (clock, store) = one_shard_store();
    let (mut expired, mut most_live) = (0u64, 0u64);
    let (written, passes) = passes_beside_writers(
        &clock,
        2,
        PER_WRITER,
        |w, i| {
            let k = format!("w{w}-{i}");
            // Lives 4–10 s; one in seven is left in flight with a 1 s lease
            // and 1 s TTL after it.
            let in_flight = i % 7 == 0;
            let lives_ms = 4_000 + (i * 7_919) % 6_000;
            let options = if in_flight {
                ReserveOptions::default()
                    .lease(Duration::from_secs(1))
                    .ttl(Duration::from_secs(1))
            } else {
                ReserveOptions::default()
                    .lease(Duration::from_secs(3_600))
                    .ttl(Duration::from_millis(lives_ms))
            };
            let before = clock.now().as_millis();
            let Outcome::Acquired(r) = store
                .reserve_with(&key(&store, &k), &fp(&k), options)
                .unwrap()
            else {
                panic!("{k} was not acquired")
            };
            let byte = if in_flight {
                let _ = r.into_lease();
                None
            } else {
                r.complete(vec![i as u8; 100]).unwrap();
                Some(i as u8)
            };
            Written {
                key: k,
                before,
                after: clock.now().as_millis(),
                lives_ms: if in_flight { 2_000 } else { lives_ms },
                byte,
            }
        },
        || {
            expired += store.run_maintenance().unwrap().expired;
            most_live = most_live.max(store.stats().live_records);
        },
    );
    assert!(passes >= PER_WRITER / 1_000, "{passes} passes");
    assert!(expired > 0, "nothing expired in {passes} passes");
    assert!(
        most_live > 4 * 4096,
        "the shard held {most_live} records at most: about one sweep step's worth"
    );

    check_after_last_pass(&store, &clock, &written, expired);
}

/// A burst that expires at once, but for one record in 25, while the
/// writers go on with steady traffic: the passes after it move the
/// survivors together, free the emptied memory and shrink the table, in
/// steps between which the writers add records (growing the table again)
/// and read. Nothing live may go missing or change, and the passes must
/// have moved records and released memory, or this test checks nothing.
#[test]
fn memory_given_back_under_writers_keeps_every_live_record() {
    const PER_WRITER: u64 = 30_000;
    const BURST: u64 = PER_WRITER / 2;
    // Both writers' bursts take 7.5 s of the clock (0.25 ms a record),
    // and expire together just after.
    const BURST_ENDS_MS: u64 = T0 + 8_000;
    let (clock, store) = one_shard_store();
    let (mut expired, mut moved, mut released) = (0, 0, 0);
    let (written, _) = passes_beside_writers(
        &clock,
        2,
        PER_WRITER,
        |w, i| {
            let k = format!("w{w}-{i}");
            let before = clock.now().as_millis();
            let lives_ms = if i >= BURST {
                3_000 + (i * 7_919) % 2_000
            } else if i % 25 == 0 {
                3_600_000
            } else {
                BURST_ENDS_MS.saturating_sub(before).max(1)
            };
            let options = ReserveOptions::default()
                .lease(Duration::from_secs(3_600))
                .ttl(Duration::from_millis(lives_ms));
            let Outcome::Acquired(r) = store
                .reserve_with(&key(&store, &k), &fp(&k), options)
                .unwrap()
            else {
                panic!("{k} was not acquired")
            };
            r.complete(vec![i as u8; 100]).unwrap();
            Written {
                key: k,
                before,
                after: clock.now().as_millis(),
                lives_ms,
                byte: Some(i as u8),
            }
        },
        || {
            let report = store.run_maintenance().unwrap();
            expired += report.expired;
            moved += report.records_moved;
            released += report.memory_released;
        },
    );
    assert!(
        clock.now().as_millis() > BURST_ENDS_MS,
        "the burst never expired"
    );
    assert!(moved > 0, "no pass moved a record");
    assert!(released > 0, "no pass released memory");

    check_after_last_pass(&store, &clock, &written, expired);
}

/// With the writers gone, one more pass removes everything due. Then every
/// record still live must read back as written, nothing expired may, and
/// the store's counts of records and of reservations in flight must be
/// exactly what lookups find: an expired record left behind would show
/// there, since lookups hide it. `expired` counts what the passes so far
/// removed.
fn check_after_last_pass(store: &Store, clock: &ManualClock, written: &[Written], expired: u64) {
    let expired = expired + store.run_maintenance().unwrap().expired;
    let now = clock.now().as_millis();
    let (mut live, mut in_flight) = (0, 0);
    for w in written {
        let got = store.lookup(&key(store, &w.key)).unwrap();
        if now < w.before + w.lives_ms {
            let r = got.as_ref().unwrap_or_else(|| panic!("{} lost", w.key));
            assert_eq!(
                r.response().map(|b| b.to_vec()),
                w.byte.map(|b| vec![b; 100]),
                "{}",
                w.key
            );
        } else if now >= w.after + w.lives_ms {
            assert!(got.is_none(), "{} expired but looked up", w.key);
        }
        // After the last pass whatever is there is live (records whose
        // write straddled `now - lives_ms` may be either).
        if let Some(r) = got {
            live += 1;
            in_flight += u64::from(r.response().is_none());
        }
    }
    assert!(live > 0, "nothing was left live to check");
    let stats = store.stats();
    assert_eq!(stats.live_records, live, "{stats:?}");
    assert_eq!(stats.in_flight, in_flight, "{stats:?}");
    assert_eq!(expired + live, written.len() as u64);
}

/// An in-memory store on a manual clock at `T0`, with no maintenance
/// thread, and one shard, so that it holds many sweep steps' worth of
/// entries.
fn one_shard_store() -> (ManualClock, Store) {
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    let store = Store::in_memory(
        Config::builder()
            .clock(clock.clone())
            .maintenance_interval(None)
            .shards(1)
            .build(),
    );
    (clock, store)
}

fn key(store: &Store, k: &str) -> IdempotencyKey {
    store.key("sweep", k).unwrap()
}

fn fp(k: &str) -> Fingerprint {
    Fingerprint::of_bytes(k.as_bytes())
}
