//! Writers beside back-to-back maintenance passes, for the tests that check
//! a pass made in steps never loses what requests write between its steps.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use idemlog::{Clock, ManualClock, Timestamp};

/// Runs `writers` threads, each calling `write(writer, i)` for `i` in
/// `0..per_writer`, while this thread runs `pass` back to back until they
/// are done. The clock moves 0.25 ms per record written, from where it
/// stands. Each writer waits for the next pass after every 1,000 records,
/// so passes and writes interleave however the cores are shared; if a pass
/// panics, they stop waiting, so the test fails instead of hanging.
/// Returns what the writers returned, in order, and the passes run.
pub fn passes_beside_writers<T: Send>(
    clock: &ManualClock,
    writers: u64,
    per_writer: u64,
    write: impl Fn(u64, u64) -> T + Sync,
    mut pass: impl FnMut(),
) -> (Vec<T>, u64) {
    let start = clock.now().as_millis();
    let records_written = AtomicU64::new(0);
    let writers_done = AtomicU64::new(0);
    let passes_done = AtomicU64::new(0);
    let passing = AtomicBool::new(true);
    let mut written = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (records_written, writers_done) = (&records_written, &writers_done);
                let (passes_done, passing, write) = (&passes_done, &passing, &write);
                s.spawn(move || {
                    // Counted done even if a request panics, so that the
                    // pass loop below ends and the panic shows.
                    let _done = OnDrop(|| {
                        writers_done.fetch_add(1, Ordering::SeqCst);
                    });
                    let mut mine = Vec::new();
                    for i in 0..per_writer {
                        mine.push(write(w, i));
                        records_written.fetch_add(1, Ordering::SeqCst);
                        if i % 1_000 == 999 {
                            let seen = passes_done.load(Ordering::SeqCst);
                            while passes_done.load(Ordering::SeqCst) == seen
                                && passing.load(Ordering::SeqCst)
                            {
                                std::thread::yield_now();
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        // Cleared however the loop ends, a panicking pass included.
        let _passing = OnDrop(|| passing.store(false, Ordering::SeqCst));
        while writers_done.load(Ordering::SeqCst) < writers {
            let due = start + records_written.load(Ordering::SeqCst) / 4;
            if clock.now().as_millis() < due {
                clock.set(Timestamp::from_millis(due));
            }
            pass();
            passes_done.fetch_add(1, Ordering::SeqCst);
        }
        for h in handles {
            written.extend(h.join().unwrap());
        }
    });
    (written, passes_done.load(Ordering::SeqCst))
}

/// Runs its closure when dropped, panicking or not.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
