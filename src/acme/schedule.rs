//! When to renew, and how long to wait after a failure: pure functions of the certificate's
//! validity, the settings and a random draw, so they are tested without a CA or a clock.

use std::time::{Duration, SystemTime};

/// First wait after a failed order; doubled after each further failure.
pub(super) const FIRST_RETRY: Duration = Duration::from_secs(10);
/// Longest wait between attempts; also the wait after a rate-limit error.
pub(super) const MAX_RETRY: Duration = Duration::from_secs(60 * 60);

/// When to renew a certificate valid from `not_before` to `not_after`: `renew_before` (default:
/// a third of its lifetime) before expiry, but never earlier than a tenth into its lifetime (a
/// `renew_before` longer than the lifetime would otherwise re-order right after each
/// issuance). `draw` in `[0, 1)` moves it up to a twentieth of the window (at most an hour)
/// earlier, so certificates issued together do not all renew in the same second.
pub(super) fn renewal_time(
    not_before: SystemTime,
    not_after: SystemTime,
    renew_before: Option<Duration>,
    draw: f64,
) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let before = renew_before
        .unwrap_or(lifetime / 3)
        .min(lifetime.mul_f64(0.9));
    let spread = (before / 20).min(Duration::from_secs(60 * 60));
    not_after - before - spread.mul_f64(draw.clamp(0.0, 1.0))
}

/// How long to wait after the `failures`-th failure in a row (1 for the first): doubling from
/// [`FIRST_RETRY`], capped at [`MAX_RETRY`], and the cap at once for a rate limit. `draw` in
/// `[0, 1)` adds up to a tenth, so retries of many certificates spread out.
pub(super) fn retry_delay(failures: u32, rate_limited: bool, draw: f64) -> Duration {
    let base = if rate_limited {
        MAX_RETRY
    } else {
        let doublings = failures.saturating_sub(1).min(16);
        FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
    };
    base + (base / 10).mul_f64(draw.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    #[test]
    fn renewal_defaults_to_a_third_of_the_lifetime_before_expiry() {
        let start = SystemTime::UNIX_EPOCH + DAY * 1000;
        let end = start + DAY * 90;
        assert_eq!(renewal_time(start, end, None, 0.0), end - DAY * 30);
        assert_eq!(renewal_time(start, end, Some(DAY * 7), 0.0), end - DAY * 7);
        // The draw moves it earlier by at most an hour.
        let jittered = renewal_time(start, end, None, 0.999);
        assert!(jittered < end - DAY * 30 && jittered >= end - DAY * 30 - DAY / 24);
    }

    #[test]
    fn renew_before_longer_than_the_lifetime_still_leaves_a_tenth() {
        let start = SystemTime::UNIX_EPOCH + DAY;
        let end = start + Duration::from_secs(100);
        assert_eq!(
            renewal_time(start, end, Some(DAY), 0.0),
            start + Duration::from_secs(10)
        );
    }

    #[test]
    fn retries_double_up_to_the_cap_and_rate_limits_wait_longest() {
        assert_eq!(retry_delay(1, false, 0.0), FIRST_RETRY);
        assert_eq!(retry_delay(2, false, 0.0), FIRST_RETRY * 2);
        assert_eq!(retry_delay(4, false, 0.0), FIRST_RETRY * 8);
        assert_eq!(retry_delay(40, false, 0.0), MAX_RETRY);
        assert_eq!(retry_delay(1, true, 0.0), MAX_RETRY);
        assert!(retry_delay(1, false, 0.99) < FIRST_RETRY + FIRST_RETRY / 10);
    }
}
