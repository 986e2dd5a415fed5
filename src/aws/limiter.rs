//! Client-side rate limiting of AWS calls, one token bucket per account and region, so that a
//! burst of requests queues here instead of draining the account's shared RDS bucket (300
//! burst, 12/s, shared with the console, the CLI and Terraform) and surfacing throttling.
//!
//! Written here rather than taken from `governor`: its async wait runs on futures-timer's own
//! timer thread, while this one sleeps on tokio's timer (so tests can pause the clock) and is
//! a few dozen lines.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(per_second: f64, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket { per_second, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Takes a token, reserving a future one when none is left, and returns how long the
    /// caller must wait before using it. Reservations queue callers fairly.
    fn reserve(&self) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, updated) = *state;
        let tokens = (tokens + now.saturating_duration_since(updated).as_secs_f64() * self.per_second).min(self.burst);
        let tokens = tokens - 1.0;
        *state = (tokens, now);
        if tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-tokens / self.per_second) }
    }

    /// Waits for a token. Dropping the future early (the caller's deadline) gives nothing
    /// back: the reservation was made, which errs on the side of fewer AWS calls.
    pub async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_passes_at_once_then_calls_are_spaced_at_the_rate() {
        let bucket = TokenBucket::new(100.0, 3);
        assert_eq!(bucket.reserve(), Duration::ZERO);
        assert_eq!(bucket.reserve(), Duration::ZERO);
        assert_eq!(bucket.reserve(), Duration::ZERO);
        // The fourth and later calls queue behind each other at 10 ms apart.
        let fourth = bucket.reserve();
        let fifth = bucket.reserve();
        assert!(fourth > Duration::from_millis(5) && fourth <= Duration::from_millis(10), "{fourth:?}");
        assert!(fifth > fourth && fifth <= Duration::from_millis(20), "{fifth:?}");
        let start = Instant::now();
        bucket.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(15));
    }
}
