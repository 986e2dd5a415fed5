//! A token bucket, the model of RDS's request throttling ("Request throttling for the Amazon
//! RDS API": per account and region, 300 requests burst, 12 per second). The emulator refuses
//! a call when its bucket is empty; the gateway paces its own calls with one so that a burst
//! queues at the gateway instead of draining the account's shared bucket.
//!
//! Written here rather than taken from `governor`: the gateway needs reservations that queue
//! callers fairly and a clock its tests can pause (tokio's), and governor's async wait runs on
//! futures-timer's own thread. The arithmetic is a few lines; both users share it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens (at least one) refilled at `per_second`.
    pub fn new(per_second: f64, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket { per_second, burst, state: Mutex::new((burst, now)) }
    }

    fn refill(&self, state: &mut (f64, Instant), now: Instant) -> f64 {
        let (tokens, updated) = *state;
        let tokens = (tokens + now.saturating_duration_since(updated).as_secs_f64() * self.per_second).min(self.burst);
        *state = (tokens, now.max(updated));
        tokens
    }

    /// Takes a token if one is there (the emulator's throttling): false means throttled.
    pub fn try_take(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let tokens = self.refill(&mut state, now);
        if tokens < 1.0 {
            return false;
        }
        state.0 = tokens - 1.0;
        true
    }

    /// Takes a token if one is there; otherwise says how long until one will be.
    pub fn take_or_wait(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let tokens = self.refill(&mut state, now);
        if tokens < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second));
        }
        state.0 = tokens - 1.0;
        Ok(())
    }

    /// Takes a token, reserving a future one when none is left, and returns how long the
    /// caller must wait before using it (the gateway's pacing). Reservations queue callers in
    /// order; a caller that gives up early does not give its reservation back, which errs on
    /// the side of fewer AWS calls.
    pub fn reserve(&self, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let tokens = self.refill(&mut state, now) - 1.0;
        state.0 = tokens;
        if tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-tokens / self.per_second) }
    }

    /// Spends `n` tokens whether or not they are there: the balance may go below zero, and
    /// [`TokenBucket::behind`] says for how long (the gateway's pacing of an abusive
    /// connection, which has already done what it is charged for).
    pub fn spend(&self, n: f64, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let tokens = self.refill(&mut state, now);
        state.0 = tokens - n;
    }

    /// How long until the balance is back to at least zero; zero when it is.
    pub fn behind(&self, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let tokens = self.refill(&mut state, now);
        if tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-tokens / self.per_second) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_bucket_says_when_the_next_token_comes() {
        let start = Instant::now();
        let bucket = TokenBucket::new(4.0, 2, start);
        assert_eq!(bucket.take_or_wait(start), Ok(()));
        assert_eq!(bucket.take_or_wait(start), Ok(()));
        assert_eq!(bucket.take_or_wait(start), Err(Duration::from_millis(250)));
        assert_eq!(bucket.take_or_wait(start + Duration::from_millis(250)), Ok(()));
    }

    #[test]
    fn spending_past_the_balance_puts_the_bucket_behind() {
        let start = Instant::now();
        let bucket = TokenBucket::new(100.0, 10, start);
        bucket.spend(10.0, start);
        assert_eq!(bucket.behind(start), Duration::ZERO);
        bucket.spend(50.0, start);
        let about = |d: Duration, secs: f64| (d.as_secs_f64() - secs).abs() < 1e-9;
        assert!(about(bucket.behind(start), 0.5));
        assert!(about(bucket.behind(start + Duration::from_millis(200)), 0.3));
        assert_eq!(bucket.behind(start + Duration::from_millis(500)), Duration::ZERO);
    }

    #[test]
    fn a_burst_passes_at_once_then_calls_are_spaced_at_the_rate() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(100.0, 3, t0);
        for _ in 0..3 {
            assert_eq!(bucket.reserve(t0), Duration::ZERO);
        }
        // The fourth and later calls queue behind each other, 10 ms apart.
        let fourth = bucket.reserve(t0);
        let fifth = bucket.reserve(t0);
        assert!(fourth > Duration::from_millis(5) && fourth <= Duration::from_millis(10), "{fourth:?}");
        assert!(fifth > fourth && fifth <= Duration::from_millis(20), "{fifth:?}");
    }

    #[test]
    fn an_empty_bucket_refuses_until_it_refills() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(2.0, 3, t0);
        assert!((0..3).all(|_| bucket.try_take(t0)));
        assert!(!bucket.try_take(t0));
        assert!(bucket.try_take(t0 + Duration::from_millis(500)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(500)));
        // An earlier instant than the last seen one (another thread's clock read) refills nothing.
        assert!(!bucket.try_take(t0));
    }
}
