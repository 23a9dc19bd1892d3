//! Operation sequences on the in-memory store against the reference model in
//! `common/model.rs`: reserve / complete / release / extend / checkpoint /
//! lookup / clock moves / maintenance on 8 identities and 3 bodies.

#![no_main]

#[path = "common/model.rs"]
mod model;

use std::time::Duration;

use idemlog::{Clock, Config, ManualClock, Store, Timestamp};
use libfuzzer_sys::fuzz_target;
use model::{apply, compare_all, model_maintain, Model, Step};

fuzz_target!(|steps: Vec<Step>| {
    let clock = ManualClock::new(Timestamp::from_millis(1_000));
    let config = Config::builder()
        .clock(clock.clone())
        .lease(Duration::from_millis(model::LEASE_MS))
        .ttl(Duration::from_millis(model::TTL_MS))
        .max_response_len(model::MAX_RESPONSE)
        .max_checkpoint_len(model::MAX_CHECKPOINT)
        .maintenance_interval(None)
        .build();
    let store = Store::in_memory(config);
    let mut m = Model::default();
    let mut held = Vec::new();
    for step in steps.iter().take(256) {
        let now = clock.now().as_millis();
        match step {
            model::Step::Advance { ms } => {
                clock.advance(Duration::from_millis(u64::from(*ms % 300)))
            }
            model::Step::Maintenance => {
                let report = store.run_maintenance().expect("maintenance in memory");
                assert_eq!(
                    report.expired,
                    model_maintain(&mut m, now),
                    "records expired by maintenance"
                );
            }
            _ => {
                apply(&store, &mut m, &mut held, step, now).expect("the in-memory store has no I/O")
            }
        }
    }
    compare_all(&store, &m, clock.now().as_millis(), true);
});
