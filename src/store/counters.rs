//! Striped counters and fencing-token sequences, so that operations on
//! different identities do not fight over one cache line.

use std::sync::atomic::{AtomicU64, Ordering};

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

#[derive(Default)]
struct Stripe {
    events: [AtomicU64; EVENTS],
    /// Tokens of this stripe are `stripe_index + k * STRIPES` for rising k.
    next_token_step: AtomicU64,
}

const STRIPES: usize = 32;

/// Per-stripe counters; an identity always uses the same stripe, which is
/// what keeps its fencing tokens strictly increasing.
pub(crate) struct Counters {
    stripes: Box<[CachePadded<Stripe>]>,
}

impl Counters {
    /// Counters whose tokens start above `max_token`.
    pub(crate) fn new(max_token: u64) -> Self {
        let first_step = max_token / STRIPES as u64 + 1;
        Counters {
            stripes: (0..STRIPES)
                .map(|_| {
                    let s = Stripe::default();
                    s.next_token_step.store(first_step, Ordering::Relaxed);
                    CachePadded::new(s)
                })
                .collect(),
        }
    }

    fn stripe(&self, selector: u32) -> (usize, &Stripe) {
        let i = selector as usize % STRIPES;
        (i, &self.stripes[i])
    }

    pub(crate) fn add(&self, selector: u32, event: Event, n: u64) {
        self.stripe(selector).1.events[event as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// A fencing token greater than every token handed out before for any
    /// identity with this selector. Saturates at `u64::MAX` instead of
    /// overflowing: 2^64 tokens are never handed out, so only a data file
    /// claiming a token near the maximum gets there (found by fuzzing).
    pub(crate) fn next_token(&self, selector: u32) -> u64 {
        let (i, s) = self.stripe(selector);
        let step = s.next_token_step.fetch_add(1, Ordering::Relaxed);
        step.saturating_mul(STRIPES as u64).saturating_add(i as u64)
    }

    pub(crate) fn total(&self, event: Event) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.events[event as usize].load(Ordering::Relaxed))
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
        c.add(1, Event::Replayed, 2);
        c.add(2, Event::Replayed, 3);
        assert_eq!(c.total(Event::Replayed), 5);
        assert_eq!(c.total(Event::Conflict), 0);
    }
}
