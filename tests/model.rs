//! Random operation sequences with clock moves, checked against a reference
//! model written independently of `idemlog::decision`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Engine, Harness, START};
use idemlog::{Error, Fingerprint, IdempotencyKey, Outcome, Reservation, ReserveOptions};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        key: usize,
        body: usize,
        lease_ms: u64,
    },
    Complete {
        slot: usize,
        response: u8,
    },
    Release {
        slot: usize,
    },
    Extend {
        slot: usize,
        lease_ms: u64,
    },
    Checkpoint {
        slot: usize,
        byte: u8,
    },
    DropHolder {
        slot: usize,
    },
    Advance {
        ms: u64,
    },
    Maintain,
    Lookup {
        key: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 0..2usize, 1..200u64).prop_map(|(key, body, lease_ms)| Op::Reserve { key, body, lease_ms }),
        3 => (0..4usize, any::<u8>()).prop_map(|(slot, response)| Op::Complete { slot, response }),
        1 => (0..4usize).prop_map(|slot| Op::Release { slot }),
        1 => (0..4usize, 1..200u64).prop_map(|(slot, lease_ms)| Op::Extend { slot, lease_ms }),
        1 => (0..4usize, any::<u8>()).prop_map(|(slot, byte)| Op::Checkpoint { slot, byte }),
        1 => (0..4usize).prop_map(|slot| Op::DropHolder { slot }),
        3 => prop_oneof![1..100u64, 100..600u64].prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Maintain),
        2 => (0..4usize).prop_map(|key| Op::Lookup { key }),
    ]
}

const TTL_MS: u64 = 500;

/// The model's view of one identity.
#[derive(Debug, Clone)]
struct ModelRecord {
    body: usize,
    holder: u64,
    in_flight: bool,
    lease_until: u64,
    expires_at: u64,
    attempts: u32,
    checkpoint: Option<Vec<u8>>,
    response: Option<Vec<u8>>,
}

#[derive(Default)]
struct Model {
    now: u64,
    records: HashMap<usize, ModelRecord>,
    next_holder: u64,
}

impl Model {
    fn live(&self, key: usize) -> Option<&ModelRecord> {
        self.records.get(&key).filter(|r| self.now < r.expires_at)
    }
    fn held(&self, key: usize, holder: u64) -> bool {
        self.records
            .get(&key)
            .is_some_and(|r| r.in_flight && r.holder == holder && self.now < r.expires_at)
    }
}

/// What the model expects `reserve` to answer.
#[derive(Debug, PartialEq)]
enum Expect {
    Acquired {
        attempt: u32,
        checkpoint: Option<Vec<u8>>,
    },
    Replay(Vec<u8>),
    InProgress(u64),
    Conflict(bool),
}

fn run(engine: Engine, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let h = Harness::with(engine, |c| c.ttl(Duration::from_millis(TTL_MS)));
    let keys: Vec<IdempotencyKey> = (0..4)
        .map(|i| IdempotencyKey::new(["a", "b"][i % 2], format!("k{}", i / 2)).unwrap())
        .collect();
    let bodies = [Fingerprint::of_bytes(b"x"), Fingerprint::of_bytes(b"y")];
    let mut m = Model::default();
    // Reservation slots: (key, model holder id, reservation).
    let mut slots: Vec<Option<(usize, u64, Reservation)>> = (0..4).map(|_| None).collect();

    for op in ops {
        match op {
            Op::Reserve {
                key,
                body,
                lease_ms,
            } => {
                let expect = match m.live(key) {
                    None => Expect::Acquired {
                        attempt: 1,
                        checkpoint: None,
                    },
                    Some(r) if r.body != body => Expect::Conflict(r.in_flight),
                    Some(r) if !r.in_flight => Expect::Replay(r.response.clone().unwrap()),
                    Some(r) if m.now < r.lease_until => Expect::InProgress(r.lease_until - m.now),
                    Some(r) => Expect::Acquired {
                        attempt: r.attempts + 1,
                        checkpoint: r.checkpoint.clone(),
                    },
                };
                let opts = ReserveOptions::default().lease(Duration::from_millis(lease_ms));
                let out = h
                    .store
                    .reserve_with(&keys[key], &bodies[body], opts)
                    .unwrap();
                let got = match &out {
                    Outcome::Acquired(r) => Expect::Acquired {
                        attempt: r.attempt(),
                        checkpoint: r.recovered_checkpoint().map(|b| b.to_vec()),
                    },
                    Outcome::Replay(r) => Expect::Replay(r.response.to_vec()),
                    Outcome::InProgress { retry_after, .. } => {
                        Expect::InProgress(retry_after.as_millis() as u64)
                    }
                    Outcome::Conflict { in_flight } => Expect::Conflict(*in_flight),
                };
                prop_assert_eq!(&got, &expect);
                if let (
                    Outcome::Acquired(res),
                    Expect::Acquired {
                        attempt,
                        checkpoint,
                    },
                ) = (out, expect)
                {
                    m.next_holder += 1;
                    let lease_until = m.now + lease_ms;
                    m.records.insert(
                        key,
                        ModelRecord {
                            body,
                            holder: m.next_holder,
                            in_flight: true,
                            lease_until,
                            expires_at: lease_until + TTL_MS,
                            attempts: attempt,
                            checkpoint,
                            response: None,
                        },
                    );
                    // Put it in a free slot, or drop (= release) it at once.
                    match slots.iter().position(Option::is_none) {
                        Some(i) => slots[i] = Some((key, m.next_holder, res)),
                        None => {
                            drop(res);
                            m.records.remove(&key);
                        }
                    }
                }
            }
            Op::Complete { slot, response } => {
                if let Some((key, holder, res)) = slots[slot].take() {
                    let valid = m.held(key, holder);
                    let result = res.complete(vec![response; 3]);
                    prop_assert_eq!(result.is_ok(), valid, "complete: {:?}", result);
                    if valid {
                        let r = m.records.get_mut(&key).unwrap();
                        r.in_flight = false;
                        r.response = Some(vec![response; 3]);
                        r.expires_at = m.now + TTL_MS;
                        r.checkpoint = None;
                    } else {
                        prop_assert!(
                            matches!(result, Err(Error::LeaseLost { .. })),
                            "got {:?}",
                            result
                        );
                    }
                }
            }
            Op::Release { slot } | Op::DropHolder { slot } => {
                if let Some((key, holder, res)) = slots[slot].take() {
                    let valid = m.held(key, holder);
                    if let Op::Release { .. } = op {
                        prop_assert_eq!(res.release().is_ok(), valid);
                    } else {
                        drop(res);
                    }
                    if valid {
                        m.records.remove(&key);
                    }
                }
            }
            Op::Extend { slot, lease_ms } => {
                if let Some((key, holder, res)) = slots[slot].as_mut() {
                    let valid = m.held(*key, *holder);
                    prop_assert_eq!(res.extend(Duration::from_millis(lease_ms)).is_ok(), valid);
                    if valid {
                        let r = m.records.get_mut(key).unwrap();
                        r.lease_until = m.now + lease_ms;
                        r.expires_at = r.lease_until + TTL_MS;
                    }
                }
            }
            Op::Checkpoint { slot, byte } => {
                if let Some((key, holder, res)) = slots[slot].as_mut() {
                    let valid = m.held(*key, *holder);
                    prop_assert_eq!(res.checkpoint(vec![byte]).is_ok(), valid);
                    if valid {
                        m.records.get_mut(key).unwrap().checkpoint = Some(vec![byte]);
                    }
                }
            }
            Op::Advance { ms } => {
                h.advance(Duration::from_millis(ms));
                m.now += ms;
            }
            Op::Maintain => {
                let report = h.store.run_maintenance().unwrap();
                let now = m.now;
                let before = m.records.len();
                // Decisions are exact to the millisecond on every engine; the
                // durable index keeps expiry in whole seconds (rounded up), so
                // its maintenance gives the space back at the next second.
                let granularity = match engine {
                    Engine::Memory => 1,
                    _ => 1_000,
                };
                m.records
                    .retain(|_, r| now < r.expires_at.div_ceil(granularity) * granularity);
                prop_assert_eq!(report.expired, (before - m.records.len()) as u64);
            }
            Op::Lookup { key } => {
                let got = h.store.lookup(&keys[key]).unwrap();
                match (m.live(key), got) {
                    (None, None) => {}
                    (Some(r), Some(g)) => {
                        prop_assert_eq!(g.is_in_flight(), r.in_flight);
                        prop_assert_eq!(g.attempts(), r.attempts);
                        prop_assert_eq!(
                            g.expires_at().as_millis() - START.as_millis(),
                            r.expires_at
                        );
                        prop_assert_eq!(g.response().map(|b| b.to_vec()), r.response.clone());
                        prop_assert_eq!(g.checkpoint().map(|b| b.to_vec()), r.checkpoint.clone());
                        prop_assert_eq!(g.fingerprint(), bodies[r.body]);
                    }
                    (want, got) => prop_assert!(false, "lookup: model {:?}, store {:?}", want, got),
                }
            }
        }
        let stats = h.store.stats();
        let in_flight = m.records.values().filter(|r| r.in_flight).count() as u64;
        prop_assert_eq!(stats.in_flight, in_flight);
        prop_assert_eq!(stats.live_records, m.records.len() as u64);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn memory_matches_the_model(ops in prop::collection::vec(op(), 1..120)) {
        run(Engine::Memory, ops)?;
    }

    #[test]
    fn durable_matches_the_model(ops in prop::collection::vec(op(), 1..120)) {
        run(Engine::DurableUnsynced, ops)?;
    }
}
