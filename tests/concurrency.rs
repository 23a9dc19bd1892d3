//! 16 threads on a small key set: for every key at most one valid
//! reservation at a time, exactly one completion, and every replay returns
//! that completion's bytes — checked inline and against the recorded history.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;

use common::{Engine, Harness};
use idemlog::{Fingerprint, Outcome};

const THREADS: usize = 16;
const OPS_PER_THREAD: usize = 4_000;
const KEYS: usize = 24;

#[derive(Debug, Clone)]
enum Event {
    /// A reservation was held from `acquired` until `ended` (sequence numbers).
    Held {
        key: usize,
        acquired: u64,
        ended: u64,
        completed: Option<Vec<u8>>,
    },
    /// A replay returned `bytes` at `seq`.
    Replayed {
        key: usize,
        seq: u64,
        bytes: Vec<u8>,
    },
}

fn hammer(engine: Engine) {
    let h = Harness::new(engine);
    let seq = AtomicU64::new(0);
    let holders: Vec<AtomicUsize> = (0..KEYS).map(|_| AtomicUsize::new(0)).collect();
    let barrier = Barrier::new(THREADS);
    let keys: Vec<_> = (0..KEYS)
        .map(|i| h.store.key("tenant", format!("key-{i}")).unwrap())
        .collect();
    // Two bodies per key: the second one is a reused key (a conflict).
    let bodies: Vec<[Fingerprint; 2]> = (0..KEYS)
        .map(|i| {
            [
                Fingerprint::of_bytes(format!("body-{i}").as_bytes()),
                Fingerprint::of_bytes(b"other"),
            ]
        })
        .collect();

    let histories: Vec<Vec<Event>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (h, seq, holders, barrier, keys, bodies) =
                    (&h, &seq, &holders, &barrier, &keys, &bodies);
                s.spawn(move || {
                    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                    let mut next = || {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng
                    };
                    let mut events = Vec::new();
                    barrier.wait();
                    for i in 0..OPS_PER_THREAD {
                        let r = next();
                        // Skewed: half the operations go to 4 hot keys.
                        let k = if r % 2 == 0 {
                            (r >> 8) as usize % 4
                        } else {
                            (r >> 8) as usize % KEYS
                        };
                        let body = usize::from(r % 17 == 0);
                        match h.store.reserve(&keys[k], &bodies[k][body]).unwrap() {
                            Outcome::Acquired(res) => {
                                let acquired = seq.fetch_add(1, Ordering::SeqCst);
                                let before = holders[k].fetch_add(1, Ordering::SeqCst);
                                assert_eq!(before, 0, "two valid reservations for key {k}");
                                std::hint::spin_loop();
                                // Most holders complete; some fail and release so the key is reused.
                                let complete = r % 5 != 0;
                                holders[k].fetch_sub(1, Ordering::SeqCst);
                                let ended = seq.fetch_add(1, Ordering::SeqCst);
                                let completed = if complete {
                                    let bytes = format!("t{t}-op{i}").into_bytes();
                                    res.complete(bytes.clone()).unwrap();
                                    Some(bytes)
                                } else {
                                    res.release().unwrap();
                                    None
                                };
                                events.push(Event::Held {
                                    key: k,
                                    acquired,
                                    ended,
                                    completed,
                                });
                            }
                            Outcome::Replay(replay) => {
                                let seq = seq.fetch_add(1, Ordering::SeqCst);
                                events.push(Event::Replayed {
                                    key: k,
                                    seq,
                                    bytes: replay.response.to_vec(),
                                });
                            }
                            Outcome::InProgress { .. } | Outcome::Conflict { .. } => {}
                        }
                    }
                    events
                })
            })
            .collect();
        handles.into_iter().map(|j| j.join().unwrap()).collect()
    });

    // Check the history per key.
    let mut completions: HashMap<usize, (u64, Vec<u8>)> = HashMap::new();
    let mut intervals: HashMap<usize, Vec<(u64, u64)>> = HashMap::new();
    for e in histories.iter().flatten() {
        if let Event::Held {
            key,
            acquired,
            ended,
            completed,
        } = e
        {
            intervals.entry(*key).or_default().push((*acquired, *ended));
            if let Some(bytes) = completed {
                let prev = completions.insert(*key, (*ended, bytes.clone()));
                assert!(
                    prev.is_none(),
                    "key {key} completed twice: {prev:?} and {bytes:?}"
                );
            }
        }
    }
    for (key, ivs) in &mut intervals {
        ivs.sort_unstable();
        for w in ivs.windows(2) {
            assert!(
                w[0].1 < w[1].0,
                "key {key}: holders overlap {:?} and {:?}",
                w[0],
                w[1]
            );
        }
    }
    let mut replays = 0;
    for e in histories.iter().flatten() {
        if let Event::Replayed { key, seq, bytes } = e {
            let (completed_seq, stored) =
                completions.get(key).expect("replay without a completion");
            assert_eq!(bytes, stored, "key {key}: a replay returned other bytes");
            assert!(
                seq > completed_seq,
                "key {key}: replay before the completion was invoked"
            );
            replays += 1;
        }
    }
    assert_eq!(completions.len(), KEYS, "every key was completed once");
    assert!(
        replays > 1_000,
        "the workload must replay a lot, got {replays}"
    );
    // The store agrees with the history.
    for (key, (_, bytes)) in &completions {
        let rec = h.store.lookup(&keys[*key]).unwrap().unwrap();
        assert_eq!(rec.response().map(|b| b.to_vec()).as_ref(), Some(bytes));
    }
    let stats = h.store.stats();
    assert_eq!(stats.completed, KEYS as u64);
    assert_eq!(stats.in_flight, 0);
}

#[test]
fn memory_sixteen_threads_small_key_set() {
    hammer(Engine::Memory);
}

#[test]
fn durable_sixteen_threads_small_key_set() {
    hammer(Engine::Durable);
}
