//! The background thread that runs maintenance on an interval.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use super::Shared;

/// Owns the maintenance thread; dropping it closes the channel, which wakes
/// and stops the thread, and joins it.
pub(crate) struct MaintenanceThread {
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl MaintenanceThread {
    pub(crate) fn start(shared: &Arc<Shared>) -> Self {
        let Some(interval) = shared.config.maintenance_interval else {
            return MaintenanceThread {
                stop: None,
                handle: None,
            };
        };
        let (stop, stopped) = bounded::<()>(0);
        let shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("idemlog-maintenance".into())
            .spawn(move || loop {
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                match catch_unwind(AssertUnwindSafe(|| shared.run_maintenance())) {
                    Ok(Ok(_)) => {}
                    // The engine poisons itself on I/O failure; the next
                    // pass will report the same error, so keep going.
                    Ok(Err(_)) => {}
                    Err(panic) => {
                        let cause = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into());
                        shared.poison(format!("background maintenance panicked: {cause}"));
                        return;
                    }
                }
            });
        match spawned {
            Ok(handle) => MaintenanceThread {
                stop: Some(stop),
                handle: Some(handle),
            },
            // No thread could be started: maintenance stays available on
            // demand through Store::run_maintenance.
            Err(_) => MaintenanceThread {
                stop: None,
                handle: None,
            },
        }
    }
}

impl Drop for MaintenanceThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
