//! Striped counters and fencing-token sequences, so that operations on
//! different threads and identities do not fight over one cache line.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// The events [`Stats`](crate::Stats) counts.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub(crate) enum Event {
    Acquired,
    Replayed,
    Conflict,
    InProgress,
    Takeover,
    Expired,
    Completed,
    Released,
}

const EVENTS: usize = 8;

/// Stripes of event counts and of token sequences.
pub(crate) const STRIPES: usize = 32;

static NEXT_THREAD_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe, handed out round-robin on first use.
    static THREAD_STRIPE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The calling thread's stripe, below [`STRIPES`]: state that only needs
/// summing (event counts, reference counts) is kept per stripe, so that two
/// threads do not pull one cache line back and forth on every operation.
pub(crate) fn thread_stripe() -> usize {
    THREAD_STRIPE.with(|stripe| match stripe.get() {
        Some(i) => i,
        None => {
            let i = NEXT_THREAD_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            stripe.set(Some(i));
            i
        }
    })
}

/// Event counts (summed over stripes, so kept per thread) and token
/// sequences (kept per identity stripe: an identity always uses the same
/// one, which is what keeps its fencing tokens strictly increasing).
pub(crate) struct Counters {
    events: Box<[CachePadded<[AtomicU64; EVENTS]>]>,
    /// Tokens of stripe `i` are `i + k * STRIPES` for rising k.
    next_token_steps: Box<[CachePadded<AtomicU64>]>,
}

impl Counters {
    /// Counters whose tokens start above `max_token`.
    pub(crate) fn new(max_token: u64) -> Self {
        let first_step = max_token / STRIPES as u64 + 1;
        Counters {
            events: (0..STRIPES).map(|_| CachePadded::default()).collect(),
            next_token_steps: (0..STRIPES)
                .map(|_| CachePadded::new(AtomicU64::new(first_step)))
                .collect(),
        }
    }

    /// Counts `n` events on the calling thread's stripe.
    pub(crate) fn add(&self, event: Event, n: u64) {
        self.events[thread_stripe()][event as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// A fencing token greater than every token handed out before for any
    /// identity with this selector. Saturates at `u64::MAX` instead of
    /// overflowing: 2^64 tokens are never handed out, so only a data file
    /// claiming a token near the maximum gets there (found by fuzzing).
    pub(crate) fn next_token(&self, selector: u32) -> u64 {
        let i = selector as usize % STRIPES;
        let step = self.next_token_steps[i].fetch_add(1, Ordering::Relaxed);
        step.saturating_mul(STRIPES as u64).saturating_add(i as u64)
    }

    pub(crate) fn total(&self, event: Event) -> u64 {
        self.events
            .iter()
            .map(|s| s[event as usize].load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_rise_per_selector_and_start_above_the_recovered_maximum() {
        let c = Counters::new(1_000);
        let a = c.next_token(5);
        let b = c.next_token(5);
        assert!(a > 1_000 && b > a, "{a} {b}");
        assert!(c.next_token(6) > 1_000);
        assert_ne!(c.next_token(5 + STRIPES as u32), b);
    }

    #[test]
    fn a_recovered_token_near_the_maximum_does_not_overflow() {
        let c = Counters::new(u64::MAX - 3);
        assert_eq!(c.next_token(7), u64::MAX);
        assert_eq!(c.next_token(7), u64::MAX);
    }

    #[test]
    fn totals_sum_all_stripes() {
        let c = Counters::new(0);
        c.add(Event::Replayed, 2);
        // Another thread counts on another stripe.
        std::thread::scope(|s| {
            s.spawn(|| c.add(Event::Replayed, 3));
        });
        assert_eq!(c.total(Event::Replayed), 5);
        assert_eq!(c.total(Event::Conflict), 0);
    }
}
