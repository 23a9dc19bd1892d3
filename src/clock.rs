//! Time, as idemlog sees it: millisecond timestamps from an injectable clock.
//!
//! Every decision (lease running or over, record expired or not) is made
//! against a [`Timestamp`] read from the store's [`Clock`]. Production uses
//! [`SystemClock`]; tests use [`ManualClock`] and move time forward instead of
//! sleeping.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Milliseconds since the UNIX epoch.
///
/// Millisecond resolution matches what leases and TTLs need and what the
/// on-disk format and the Redis backend store.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The epoch itself.
    pub const ZERO: Timestamp = Timestamp(0);
    /// The latest representable instant; used for "never".
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// A timestamp `millis` milliseconds after the UNIX epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the UNIX epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at [`Timestamp::MAX`] instead of overflowing.
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_millis(d)))
    }

    /// How long after `earlier` this instant is; zero if it is not after it.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}ms)", self.0)
    }
}

/// A duration in whole milliseconds, rounding sub-millisecond parts up so a
/// 0.5 ms lease is not silently a zero lease.
pub(crate) fn duration_millis(d: Duration) -> u64 {
    let whole = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        whole.saturating_add(1)
    } else {
        whole
    }
}

/// A source of the current time.
///
/// Implementations must be cheap (called on every operation) and should not
/// go backwards; idemlog tolerates a clock that steps back by treating leases
/// and TTLs as still running.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The operating system's wall clock.
///
/// On Linux it reads the coarse wall clock (`CLOCK_REALTIME_COARSE`): the
/// kernel's time as of its last tick, 1 to 4 ms old depending on the
/// kernel's tick rate. Leases and TTLs are seconds to hours, so a tick's
/// lag changes no decision a caller can tell from a request arriving a
/// tick later; in exchange a reading costs a few nanoseconds instead of the
/// ~50 ns of the precise clock's timestamp-counter read, and every
/// operation reads the clock (twice per reserve + complete). Elsewhere it
/// reads [`SystemTime`](std::time::SystemTime).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        wall_clock()
    }
}

#[cfg(target_os = "linux")]
fn wall_clock() -> Timestamp {
    use rustix::time::{clock_gettime, ClockId};
    let t = clock_gettime(ClockId::RealtimeCoarse);
    // Before the epoch reads as the epoch, as `SystemTime` below does.
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let millis = u64::try_from(t.tv_nsec / 1_000_000).unwrap_or(0);
    Timestamp(secs.saturating_mul(1_000).saturating_add(millis))
}

#[cfg(not(target_os = "linux"))]
fn wall_clock() -> Timestamp {
    use std::time::{SystemTime, UNIX_EPOCH};
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Timestamp(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// A clock that only moves when told to: the way tests exercise leases and
/// expiry without sleeping.
///
/// Clones share the same time, so a test keeps one handle and gives another
/// to the store's [`Config`](crate::Config).
///
/// ```
/// use idemlog::{ManualClock, Clock, Timestamp};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(Timestamp::from_millis(1_000));
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now(), Timestamp::from_millis(3_000));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start.0)))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = duration_millis(d);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(ms))
            });
    }

    /// Sets the clock to `t` (which may be earlier, to test a clock step back).
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::Release);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn sub_millisecond_durations_round_up() {
        assert_eq!(duration_millis(Duration::from_micros(500)), 1);
        assert_eq!(duration_millis(Duration::from_millis(7)), 7);
        assert_eq!(duration_millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn timestamp_arithmetic_saturates() {
        assert_eq!(
            Timestamp::MAX.saturating_add(Duration::from_secs(1)),
            Timestamp::MAX
        );
        let a = Timestamp::from_millis(10);
        let b = Timestamp::from_millis(25);
        assert_eq!(b.saturating_duration_since(a), Duration::from_millis(15));
        assert_eq!(a.saturating_duration_since(b), Duration::ZERO);
    }

    /// The system clock is the wall clock, behind it by at most one kernel
    /// tick (10 ms at the lowest tick rate Linux has), and never steps back
    /// between readings.
    #[test]
    fn system_clock_reads_the_wall_clock_within_a_tick() {
        let millis = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let mut last = Timestamp::ZERO;
        for _ in 0..1_000 {
            let before = millis(SystemTime::now());
            let now = SystemClock.now();
            let after = millis(SystemTime::now());
            assert!(
                now.as_millis() + 10 >= before && now.as_millis() <= after,
                "{before} <= {now:?} (+10 ms) <= {after}"
            );
            assert!(now >= last, "{now:?} after {last:?}");
            last = now;
        }
    }

    #[test]
    fn manual_clock_clones_share_time() {
        let c = ManualClock::new(Timestamp::from_millis(5));
        let d = c.clone();
        c.advance(Duration::from_millis(10));
        assert_eq!(d.now(), Timestamp::from_millis(15));
        d.set(Timestamp::from_millis(1));
        assert_eq!(c.now(), Timestamp::from_millis(1));
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now() > Timestamp::from_millis(1_577_836_800_000));
    }
}
