//! Operation sequences on the durable store (over `SimFs`) against the
//! reference model, with reboots and an I/O-failure countdown.
//!
//! The model keeps what the store acknowledged. With `Durability::Sync`
//! every acknowledged operation is durable, so:
//! * a clean reboot (drop, reopen) and a crash reboot (power cut: every
//!   unsynced change lost) must both bring back exactly the acknowledged
//!   state (leases of the previous process over, expired records gone);
//! * when an I/O failure makes a step fail, that step's effect is unknown:
//!   the power is cut at once, and after the reopen its identity must hold
//!   the state from before the step or a state the step could have made;
//!   every other identity must be exactly as acknowledged. The model then
//!   adopts what the disk says. A step that succeeded although a fault was
//!   hit during it was acknowledged, so it must survive the power cut.

#![no_main]

#[path = "common/durable.rs"]
mod durable;
#[path = "common/model.rs"]
mod model;
#[path = "../../tests/support/rng.rs"]
mod rng;
#[path = "../../tests/support/simfs.rs"]
mod simfs;

use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use idemlog::{Clock, ManualClock, Record, Store, Timestamp};
use libfuzzer_sys::fuzz_target;
use model::{
    apply, compare_all, from_record, key, model_reboot, step_identity, Model, ModelRecord, Step,
};
use simfs::{Fault, SimFs};

#[derive(Debug, Arbitrary)]
enum Action {
    Op(Step),
    Reboot { crash: bool },
    FailIn { n: u8, enospc: bool },
}

fn open(fs: &SimFs, clock: &ManualClock) -> Store {
    let mut config = durable::config(clock);
    config.lease = Duration::from_millis(model::LEASE_MS);
    config.ttl = Duration::from_millis(model::TTL_MS);
    config.limits.max_response_len = model::MAX_RESPONSE;
    config.limits.max_checkpoint_len = model::MAX_CHECKPOINT;
    Store::open_with_fs(durable::DIR, config, Arc::new(fs.clone())).expect("a healthy disk opens")
}

/// Cuts the power (or exits cleanly) and boots a healthy disk with what
/// survived.
fn reboot(store: Store, fs: &SimFs, crash: bool) -> SimFs {
    let image = if crash {
        fs.freeze();
        let image = fs.durable_image();
        drop(store);
        image
    } else {
        drop(store);
        fs.current_image()
    };
    SimFs::from_image(&image)
}

/// Whether `got` is a state the failed `step` could have left, from `before`.
fn could_follow(
    step: &Step,
    before: Option<&ModelRecord>,
    got: Option<&ModelRecord>,
    last_token: u64,
) -> bool {
    match (step, got) {
        (Step::Reserve { body, .. }, Some(g)) => {
            g.in_flight_until.is_some()
                && g.body == body % model::BODIES
                && g.token > last_token
                && (g.attempts == 1 || before.is_some_and(|b| g.attempts == b.attempts + 1))
        }
        (Step::Complete { response, len, .. }, Some(g)) => {
            let bytes = vec![*response; usize::from(len % (model::MAX_RESPONSE as u8 + 4))];
            before.is_some_and(|b| b.token == g.token)
                && g.completed.as_ref().is_some_and(|(_, r)| *r == bytes)
        }
        (Step::Release { .. }, None) => true,
        (Step::Extend { .. }, Some(g)) => before.is_some_and(|b| {
            b.token == g.token
                && b.body == g.body
                && b.checkpoint == g.checkpoint
                && g.in_flight_until.is_some()
        }),
        (Step::Checkpoint { byte, len, .. }, Some(g)) => before.is_some_and(|b| {
            let bytes = vec![*byte; usize::from(len % (model::MAX_CHECKPOINT as u8 + 3))];
            b.token == g.token && g.checkpoint.as_deref() == Some(&bytes[..])
        }),
        _ => false,
    }
}

fuzz_target!(|actions: Vec<Action>| {
    let clock = ManualClock::new(Timestamp::from_millis(1_000));
    let mut fs = SimFs::new();
    let mut store = Some(open(&fs, &clock));
    let mut m = Model {
        lenient_expired: true,
        ..Model::default()
    };
    let mut held = Vec::new();
    for action in actions.iter().take(128) {
        let now = clock.now().as_millis();
        let s = store.take().expect("store");
        match action {
            Action::FailIn { n, enospc } => {
                fs.set_fault(Some(Fault {
                    nth: 1 + u64::from(*n % 24),
                    errno: if *enospc { 28 } else { 5 },
                    persistent: false,
                    syncs_only: false,
                }));
                store = Some(s);
            }
            Action::Reboot { crash } => {
                fs = reboot(s, &fs, *crash);
                let s = open(&fs, &clock);
                model_reboot(&mut m, now);
                compare_all(&s, &m, now, false);
                store = Some(s);
            }
            Action::Op(Step::Advance { ms }) => {
                clock.advance(Duration::from_millis(u64::from(*ms % 300)));
                store = Some(s);
            }
            Action::Op(step) => {
                let hits = fs.faults_hit();
                let before = m.clone();
                let id = step_identity(step, &held);
                let result = match step {
                    // Expired records stay in the model: lookups and
                    // decisions ignore them, and a held token may still find
                    // one (`Model::lenient_expired`).
                    Step::Maintenance => s.run_maintenance().map(|_| ()),
                    _ => apply(&s, &mut m, &mut held, step, now),
                };
                if fs.faults_hit() == hits {
                    if let Err(e) = result {
                        panic!("{step:?} failed with no fault injected: {e}");
                    }
                    store = Some(s);
                    continue;
                }
                // A fault was hit: cut the power now.
                fs = reboot(s, &fs, true);
                let s = open(&fs, &clock);
                let failed = result.is_err();
                if failed {
                    m = before;
                }
                model_reboot(&mut m, now);
                for i in 0..model::SCOPES * model::KEYS {
                    let ident = model::identity_of(i);
                    let got: Option<Record> = s.lookup(&key(ident)).expect("lookup after reboot");
                    let got_m = got.as_ref().map(from_record);
                    let want = m.records.get(&ident).filter(|r| now < r.expires_at);
                    if failed
                        && Some(ident) == id
                        && !matches!(step, Step::Maintenance | Step::Lookup { .. })
                    {
                        let last = m.last_token.get(&ident).copied().unwrap_or(0);
                        // As `same_record` compares: after two reopens the
                        // store shows a voided lease ending at the later open,
                        // the model at the earlier one; both are over.
                        let unchanged = model::same_at(got_m.as_ref(), want, now);
                        assert!(
                            unchanged || could_follow(step, want, got_m.as_ref(), last),
                            "after the failed {step:?}, {ident:?} is {got_m:?}; before it was {want:?}"
                        );
                        match got_m {
                            Some(r) => {
                                let t = r.token;
                                m.records.insert(ident, r);
                                let e = m.last_token.entry(ident).or_default();
                                *e = (*e).max(t);
                            }
                            None => {
                                m.records.remove(&ident);
                            }
                        }
                    } else {
                        model::same_record(ident, got.as_ref(), want, now);
                    }
                }
                store = Some(s);
            }
        }
    }
    let s = store.take().expect("store");
    let now = clock.now().as_millis();
    compare_all(&s, &m, now, false);
    fs = reboot(s, &fs, true);
    let s = open(&fs, &clock);
    model_reboot(&mut m, now);
    compare_all(&s, &m, now, false);
});
