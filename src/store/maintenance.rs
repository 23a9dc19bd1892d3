//! The background thread that runs maintenance on an interval.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use super::Shared;

/// Owns the maintenance thread; dropping it closes the channel, which wakes
/// and stops the thread, and joins it.
pub(crate) struct MaintenanceThread {
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
    /// Told to hurry a pass under way when the thread is stopped.
    shared: Arc<Shared>,
}

impl MaintenanceThread {
    pub(crate) fn start(shared: &Arc<Shared>) -> Self {
        let Some(interval) = shared.config.maintenance_interval else {
            return MaintenanceThread {
                stop: None,
                handle: None,
                shared: Arc::clone(shared),
            };
        };
        let (stop, stopped) = bounded::<()>(0);
        let owner = Arc::clone(shared);
        let shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("idemlog-maintenance".into())
            .spawn(move || {
                let mut pause = interval;
                loop {
                    match stopped.recv_timeout(pause) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let started = Instant::now();
                    let passed = catch_unwind(AssertUnwindSafe(|| shared.run_maintenance()));
                    pause = pause_after(interval, worked(started.elapsed(), &passed));
                    if !keep_going(&shared, passed) {
                        return;
                    }
                }
            });
        match spawned {
            Ok(handle) => MaintenanceThread {
                stop: Some(stop),
                handle: Some(handle),
                shared: owner,
            },
            // No thread could be started: maintenance stays available on
            // demand through Store::run_maintenance.
            Err(_) => MaintenanceThread {
                stop: None,
                handle: None,
                shared: owner,
            },
        }
    }
}

/// After a pass, the thread waits at least this many times as long as the
/// pass took: passes then take at most 1/16 of the thread's time.
const PAUSE_PER_PASS_TIME: u32 = 15;

/// How long to wait after a pass that worked for `took`: the configured
/// interval, or longer after a long pass, so that maintenance of a large
/// index takes at most 1/16 of a core. (A pass scans every shard with
/// anything due, in a store whose records keep coming due the whole index:
/// at 10 M durable records 47–71 ms on the development VM, 0.4 s before
/// the pass's live-byte count was made dense, when every 1 s it would have
/// kept 40 % of a core busy.) Expiry stays exact at read time; only the
/// space comes back later.
fn pause_after(interval: Duration, took: Duration) -> Duration {
    interval.max(took.saturating_mul(PAUSE_PER_PASS_TIME))
}

/// Whether the thread goes on after a pass that ended with `passed`.
/// How long a pass that took `took` worked: its length less the time it
/// rested to leave the disk to requests, which costs no processor.
fn worked(
    took: Duration,
    passed: &std::thread::Result<crate::Result<super::MaintenanceReport>>,
) -> Duration {
    match passed {
        Ok(Ok(report)) => took.saturating_sub(report.rested),
        _ => took,
    }
}

fn keep_going(
    shared: &Shared,
    passed: std::thread::Result<crate::Result<super::MaintenanceReport>>,
) -> bool {
    match passed {
        Ok(Ok(_)) => true,
        // The engine poisons itself on I/O failure; the next pass will
        // report the same error, so keep going.
        Ok(Err(_)) => true,
        Err(panic) => {
            let cause = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            shared.poison(format!("background maintenance panicked: {cause}"));
            false
        }
    }
}

impl Drop for MaintenanceThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            // A pass under way would otherwise keep the closing store
            // waiting for its paced work.
            self.shared.engine.hurry();
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::{Change, Engine, EngineStats, Identity, Wait};
    use crate::store::memory::MemoryEngine;
    use crate::store::{MaintenanceReport, Store};
    use crate::{Config, Record, Timestamp};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// An in-memory engine that notes being told to hurry.
    struct Hurried {
        inner: MemoryEngine,
        told: Arc<AtomicBool>,
    }

    impl Engine for Hurried {
        fn update(
            &self,
            id: Identity<'_>,
            decide: &mut dyn FnMut(Option<&Record>) -> Change,
        ) -> crate::Result<Wait> {
            self.inner.update(id, decide)
        }
        fn get(&self, id: Identity<'_>) -> crate::Result<(Option<Record>, Wait)> {
            self.inner.get(id)
        }
        fn maintain(&self, now: Timestamp) -> crate::Result<MaintenanceReport> {
            self.inner.maintain(now)
        }
        fn stats(&self) -> EngineStats {
            self.inner.stats()
        }
        fn hurry(&self) {
            self.told.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_last_store_handle_hurries_the_maintenance_thread_before_waiting_for_it() {
        let told = Arc::new(AtomicBool::new(false));
        let engine = Hurried {
            inner: MemoryEngine::new(1),
            told: Arc::clone(&told),
        };
        let config = Config::builder()
            .maintenance_interval(Some(Duration::from_secs(3600)))
            .build();
        let store = Store::with_engine(Box::new(engine), "hurried", config);
        let other = store.clone();
        drop(store);
        assert!(!told.load(Ordering::SeqCst), "a handle is left");
        drop(other);
        assert!(told.load(Ordering::SeqCst));
    }

    #[test]
    fn a_pass_is_paced_by_its_work_not_its_rests() {
        let ms = Duration::from_millis;
        let report = super::super::MaintenanceReport {
            rested: ms(300),
            ..Default::default()
        };
        assert_eq!(worked(ms(400), &Ok(Ok(report.clone()))), ms(100));
        // A clock that stepped back mid-pass cannot make work negative.
        assert_eq!(worked(ms(200), &Ok(Ok(report))), Duration::ZERO);
        let failed = Err(crate::Error::Poisoned {
            cause: "test".into(),
        });
        assert_eq!(worked(ms(400), &Ok(failed)), ms(400));
        // Paced by work: a pass that worked 100 ms of 400 waits 1.5 s, not 6.
        let second = Duration::from_secs(1);
        assert_eq!(pause_after(second, ms(100)), ms(1500));
    }

    #[test]
    fn a_short_pass_waits_the_interval() {
        let second = Duration::from_secs(1);
        assert_eq!(pause_after(second, Duration::from_millis(7)), second);
        assert_eq!(pause_after(second, Duration::ZERO), second);
    }

    #[test]
    fn a_long_pass_waits_long_enough_to_take_a_sixteenth_of_a_core() {
        let second = Duration::from_secs(1);
        let took = Duration::from_millis(400);
        let pause = pause_after(second, took);
        assert_eq!(pause, Duration::from_secs(6));
        // Pass time over pass plus pause.
        assert!(took.as_secs_f64() / (took + pause).as_secs_f64() <= 1.0 / 16.0);
        assert_eq!(pause_after(second, Duration::MAX), Duration::MAX);
    }
}
