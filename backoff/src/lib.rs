//! The one retry policy of metahook: exponential backoff with random jitter, validated once
//! where its settings are read, and honouring a delay the server asks for.
//!
//! Every loop that retries (a sink's delivery, the operator's Graph API client, the lead
//! enricher, the controller's requeue after a failed pass) takes its waits from an
//! [`ExponentialBackoff`], so "how long until the next try" is answered in one place and
//! tested once. The shape follows linkerd2-proxy's `linkerd-exp-backoff`: a `Copy` policy
//! of `min`, `max` and `jitter`, checked by a fallible constructor whose error names the bad
//! value, and a per-operation state ([`Backoff`]) that yields the waits one after another.
//!
//! Unlike linkerd's (which only adds jitter), the jitter here is symmetric around the
//! exponential base (±`jitter`), and `max` is a true ceiling: no wait, jittered or not, is
//! ever longer than `max`. Near the ceiling the band is cut at `max` rather than clamped to it,
//! so waits stay spread out there too (clamping would pile half the retries onto `max`).
//!
//! Loops that keep their own attempt counter (the controller between passes, a sink's
//! delivery loop that also counts towards dead letters) ask for [`ExponentialBackoff::delay`]
//! by attempt; loops that own the whole operation take a [`Backoff`].
//!
//! A server may say when to come back (HTTP `Retry-After`, Meta's
//! `estimated_time_to_regain_access`): [`ExponentialBackoff::delay_honouring`] and
//! [`Backoff::next_delay_honouring`] wait at least that long, and never less than the
//! computed backoff, so a server answering "retry in 0 s" cannot turn a retry loop into a
//! hot loop. A server's delay is not capped at `max` (a rate-limit window outlasts any retry
//! backoff); a caller that distrusts its server clamps it first.

use std::time::Duration;

use rand::{Rng, RngExt};

/// A jittered exponential backoff policy: the wait after the n-th consecutive failure is
/// `min × 2^(n−1)`, at most `max`, scaled by a random factor in `[1 − jitter, 1 + jitter]`
/// and then kept at or below `max`.
///
/// Built with [`ExponentialBackoff::new`] (settings read at run time) or
/// [`ExponentialBackoff::new_const`] (constants, checked by the compiler).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBackoff {
    min: Duration,
    max: Duration,
    jitter: f64,
}

/// Why a backoff's settings were refused. Each message names the bad value, so a
/// configuration error built from it tells the user what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidBackoff {
    /// The first wait is longer than the longest.
    #[error("the first wait ({min:?}) is longer than the longest wait ({max:?})")]
    MinAboveMax {
        /// The first wait asked for.
        min: Duration,
        /// The longest wait asked for.
        max: Duration,
    },
    /// The longest wait is zero: every retry would follow its failure at once.
    #[error("the longest wait is 0s: retries would not wait at all (it must be more than 0)")]
    ZeroMax,
    /// The first wait is zero: doubling zero never grows, so every retry would follow its
    /// failure at once.
    #[error("the first wait is 0s: retries would not wait at all (it must be more than 0)")]
    ZeroMin,
    /// The jitter is not a fraction between 0 and 1.
    #[error("jitter {0} is not a fraction between 0 and 1")]
    Jitter(f64),
}

impl ExponentialBackoff {
    /// A policy waiting `min` after the first failure, doubling up to `max`, each wait
    /// scaled by a random factor in `[1 − jitter, 1 + jitter]` (0: no jitter; 0.25: ±25%)
    /// and never longer than `max`.
    ///
    /// Refused: `max == 0` or `min == 0` (a retry loop that never waits), `min > max`, a
    /// jitter outside `[0, 1]` (or not a number).
    pub fn new(min: Duration, max: Duration, jitter: f64) -> Result<Self, InvalidBackoff> {
        if max.is_zero() {
            return Err(InvalidBackoff::ZeroMax);
        }
        if min.is_zero() {
            return Err(InvalidBackoff::ZeroMin);
        }
        if min > max {
            return Err(InvalidBackoff::MinAboveMax { min, max });
        }
        if !(0.0..=1.0).contains(&jitter) {
            // NaN fails `contains` too.
            return Err(InvalidBackoff::Jitter(jitter));
        }
        Ok(ExponentialBackoff { min, max, jitter })
    }

    /// [`ExponentialBackoff::new`] for constants: in a `const` item, settings that `new`
    /// would refuse fail the build instead of a run.
    ///
    /// # Panics
    ///
    /// On the settings `new` refuses (at compile time when evaluated in a `const`).
    pub const fn new_const(min: Duration, max: Duration, jitter: f64) -> Self {
        assert!(!max.is_zero(), "the longest wait must be more than 0");
        assert!(!min.is_zero(), "the first wait must be more than 0");
        assert!(
            min.as_nanos() <= max.as_nanos(),
            "the first wait must not be longer than the longest"
        );
        assert!(
            jitter >= 0.0 && jitter <= 1.0,
            "jitter must be a fraction between 0 and 1"
        );
        ExponentialBackoff { min, max, jitter }
    }

    /// The wait after the first failure (before jitter).
    pub const fn min(&self) -> Duration {
        self.min
    }

    /// The longest wait: no wait this policy computes is longer.
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// The jitter, a fraction of each wait (0.25: ±25%).
    pub const fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The wait after `attempt` consecutive failures, before jitter: `min × 2^(attempt−1)`,
    /// at most `max`. Attempt 0 is taken as 1 (a loop asking before counting its first
    /// failure gets the first wait).
    pub fn base(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1);
        1u32.checked_shl(doublings)
            .and_then(|factor| self.min.checked_mul(factor))
            .map_or(self.max, |base| base.min(self.max))
    }

    /// The wait after `attempt` consecutive failures (1 after the first), jittered with
    /// the thread's random generator.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// [`ExponentialBackoff::delay`] with the given random generator (seeded in tests).
    pub fn delay_with<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let base = self.base(attempt);
        if self.jitter == 0.0 {
            return base;
        }
        // The band [base × (1 − j), base × (1 + j)], cut at max: uniform inside it.
        let low = base.mul_f64(1.0 - self.jitter);
        let high = Duration::try_from_secs_f64(base.as_secs_f64() * (1.0 + self.jitter))
            .map_or(self.max, |high| high.min(self.max));
        let span = high.saturating_sub(low);
        let factor: f64 = rng.random();
        (low + span.mul_f64(factor)).min(self.max)
    }

    /// The wait after `attempt` consecutive failures when the server said when to come back
    /// (`Retry-After` and the like): at least `server`, and never less than
    /// [`ExponentialBackoff::delay`]. `server` is not capped at `max`.
    pub fn delay_honouring(&self, attempt: u32, server: Option<Duration>) -> Duration {
        let computed = self.delay(attempt);
        server.map_or(computed, |server| server.max(computed))
    }

    /// The state of one operation's retries, starting before its first failure.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            attempts: 0,
        }
    }
}

/// One operation's retries under an [`ExponentialBackoff`]: each call to
/// [`Backoff::next_delay`] counts a failure and returns the wait before the next try. As an
/// [`Iterator`] it never ends; the caller bounds the attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: ExponentialBackoff,
    attempts: u32,
}

impl Backoff {
    /// Counts a failure; the wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        self.policy.delay(self.attempts)
    }

    /// Counts a failure; the wait before the next try when the server said when to come
    /// back: at least `server` and at least the computed wait (see
    /// [`ExponentialBackoff::delay_honouring`]).
    pub fn next_delay_honouring(&mut self, server: Option<Duration>) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        self.policy.delay_honouring(self.attempts, server)
    }

    /// Failures counted so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts over, as after a success.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// The policy.
    pub fn policy(&self) -> &ExponentialBackoff {
        &self.policy
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn policy(min: u64, max: u64, jitter: f64) -> ExponentialBackoff {
        ExponentialBackoff::new(MS(min), MS(max), jitter).expect("valid")
    }

    #[test]
    fn the_base_doubles_from_min_and_stops_at_max() {
        let p = policy(100, 5_000, 0.0);
        let waits: Vec<Duration> = (1..=8).map(|n| p.base(n)).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000].map(MS)
        );
        assert_eq!(p.base(0), MS(100), "attempt 0 is taken as the first");
        assert_eq!(p.base(u32::MAX), MS(5_000), "no overflow, however many");
        // Without jitter the delay is the base.
        assert_eq!(p.delay(3), MS(400));
    }

    #[test]
    fn the_first_wait_can_equal_the_longest() {
        let p = policy(10, 10, 0.25);
        for n in 1..50 {
            let wait = p.delay(n);
            assert!((MS(7)..=MS(10)).contains(&wait), "{wait:?}");
        }
    }

    #[test]
    fn jitter_stays_in_its_band_and_below_max() {
        let p = policy(100, 1_000, 0.25);
        let mut rng = StdRng::seed_from_u64(7);
        let (mut lowest, mut highest) = (Duration::MAX, Duration::ZERO);
        for _ in 0..2_000 {
            let wait = p.delay_with(2, &mut rng);
            assert!((MS(150)..=MS(250)).contains(&wait), "{wait:?}");
            lowest = lowest.min(wait);
            highest = highest.max(wait);
        }
        // Spread over the band, not stuck at one value (nanosecond clock jitter was).
        assert!(
            lowest < MS(160) && highest > MS(240),
            "{lowest:?}..{highest:?}"
        );
        // At the ceiling the band is cut at max: still spread, never above.
        let (mut lowest, mut highest) = (Duration::MAX, Duration::ZERO);
        for _ in 0..2_000 {
            let wait = p.delay_with(30, &mut rng);
            assert!((MS(750)..=MS(1_000)).contains(&wait), "{wait:?}");
            lowest = lowest.min(wait);
            highest = highest.max(wait);
        }
        assert!(
            lowest < MS(760) && highest > MS(990),
            "{lowest:?}..{highest:?}"
        );
    }

    #[test]
    fn full_jitter_can_reach_zero_but_never_max_plus() {
        let p = policy(100, 100, 1.0);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1_000 {
            assert!(p.delay_with(1, &mut rng) <= MS(100));
        }
    }

    #[test]
    fn a_state_counts_failures_and_starts_over() {
        let p = policy(10, 1_000, 0.0);
        let mut backoff = p.backoff();
        let waits: Vec<Duration> = backoff.by_ref().take(4).collect();
        assert_eq!(waits, [10, 20, 40, 80].map(MS));
        assert_eq!(backoff.attempts(), 4);
        backoff.reset();
        assert_eq!(backoff.next_delay(), MS(10));
        assert_eq!(backoff.policy(), &p);
    }

    #[test]
    fn a_server_delay_is_honoured_but_never_shortens_the_backoff() {
        let p = policy(100, 1_000, 0.0);
        // Longer than the computed wait, and longer than max: taken as is.
        assert_eq!(p.delay_honouring(1, Some(MS(60_000))), MS(60_000));
        // Shorter: the computed wait stands (no hot loop on "Retry-After: 0").
        assert_eq!(p.delay_honouring(3, Some(Duration::ZERO)), MS(400));
        assert_eq!(p.delay_honouring(3, None), MS(400));
        let mut backoff = p.backoff();
        assert_eq!(backoff.next_delay_honouring(Some(MS(5_000))), MS(5_000));
        assert_eq!(backoff.next_delay_honouring(None), MS(200));
        assert_eq!(backoff.attempts(), 2);
    }

    #[test]
    fn bad_settings_are_refused_naming_the_value() {
        let err = ExponentialBackoff::new(MS(500), MS(100), 0.1).expect_err("min > max");
        assert_eq!(
            err,
            InvalidBackoff::MinAboveMax {
                min: MS(500),
                max: MS(100)
            }
        );
        assert_eq!(
            err.to_string(),
            "the first wait (500ms) is longer than the longest wait (100ms)"
        );
        let err = ExponentialBackoff::new(Duration::ZERO, Duration::ZERO, 0.0).expect_err("0");
        assert_eq!(err, InvalidBackoff::ZeroMax);
        assert!(err.to_string().contains("0s"), "{err}");
        for jitter in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let err = ExponentialBackoff::new(MS(1), MS(2), jitter).expect_err("jitter");
            assert!(err.to_string().contains(&jitter.to_string()), "{err}");
        }
        let err = ExponentialBackoff::new(Duration::ZERO, MS(1), 0.0).expect_err("0");
        assert_eq!(err, InvalidBackoff::ZeroMin);
        // The edges are allowed.
        assert!(ExponentialBackoff::new(Duration::from_nanos(1), MS(1), 0.0).is_ok());
        assert!(ExponentialBackoff::new(MS(1), MS(1), 1.0).is_ok());
    }

    #[test]
    fn a_const_policy_is_the_checked_one() {
        const P: ExponentialBackoff =
            ExponentialBackoff::new_const(Duration::from_secs(5), Duration::from_secs(300), 0.0);
        assert_eq!(
            Ok(P),
            ExponentialBackoff::new(Duration::from_secs(5), Duration::from_secs(300), 0.0)
        );
        assert_eq!(P.delay(7), Duration::from_secs(300));
    }
}
