//! When to renew, when to ask the CA for its renewal window again, and how long to wait after
//! a failure: pure functions of the certificate's validity, the settings, what the CA said and
//! a random draw, so they are tested without a CA or a clock.

use std::time::{Duration, SystemTime};

/// First wait after a failed order; doubled after each further failure.
pub(super) const FIRST_RETRY: Duration = Duration::from_secs(10);
/// Longest wait between attempts; also the wait after a rate-limit error that names none.
pub(super) const MAX_RETRY: Duration = Duration::from_secs(60 * 60);
/// Shortest wait a CA's `Retry-After` on an error gets: a CA asking for 0 s (or a date already
/// past) is not answered in a tight loop.
pub(super) const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
/// RFC 9773 §4.3: the CA's `Retry-After` on renewal info is followed, but treated as at least a
/// minute and at most a day.
pub(super) const MIN_RENEWAL_INFO: Duration = Duration::from_secs(60);
/// See [`MIN_RENEWAL_INFO`].
pub(super) const MAX_RENEWAL_INFO: Duration = Duration::from_secs(24 * 60 * 60);

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

/// How long to wait after the `failures`-th failure in a row (1 for the first). When the CA's
/// error answer named a wait (`retry_after`), that wait, kept within [`MIN_RETRY_AFTER`] and
/// [`MAX_RETRY`]; otherwise doubling from [`FIRST_RETRY`], capped at [`MAX_RETRY`], and the cap
/// at once for a rate limit. `draw` in `[0, 1)` adds up to a tenth, so retries of many
/// certificates spread out (never earlier than the CA asked).
pub(super) fn retry_delay(
    failures: u32,
    rate_limited: bool,
    retry_after: Option<Duration>,
    draw: f64,
) -> Duration {
    let base = match retry_after {
        Some(asked) => asked.clamp(MIN_RETRY_AFTER, MAX_RETRY),
        None if rate_limited => MAX_RETRY,
        None => {
            let doublings = failures.saturating_sub(1).min(16);
            FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
        }
    };
    base + (base / 10).mul_f64(draw.clamp(0.0, 1.0))
}

/// RFC 9773 §4.2: when to renew given the CA's suggested window `[start, end)`. `current` stays
/// if it already lies in the window (a window fetched again unchanged does not move the
/// renewal); otherwise a uniform `draw` in `[0, 1)` picks a time in it. A time in the past
/// (a window that has started or ended) means renewing now. `None`: the window is empty or
/// reversed, which §4.2 says to treat as no answer.
pub(super) fn renewal_in_window(
    start: SystemTime,
    end: SystemTime,
    current: SystemTime,
    draw: f64,
) -> Option<SystemTime> {
    let width = end.duration_since(start).ok().filter(|w| !w.is_zero())?;
    if start <= current && current < end {
        return Some(current);
    }
    Some(start + width.mul_f64(draw.clamp(0.0, 1.0)))
}

/// RFC 9773 §4.3: how long until the renewal info is asked for again, given the CA's
/// `Retry-After` on it.
pub(super) fn renewal_info_interval(retry_after: Duration) -> Duration {
    retry_after.clamp(MIN_RENEWAL_INFO, MAX_RENEWAL_INFO)
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
        assert_eq!(retry_delay(1, false, None, 0.0), FIRST_RETRY);
        assert_eq!(retry_delay(2, false, None, 0.0), FIRST_RETRY * 2);
        assert_eq!(retry_delay(4, false, None, 0.0), FIRST_RETRY * 8);
        assert_eq!(retry_delay(40, false, None, 0.0), MAX_RETRY);
        assert_eq!(retry_delay(1, true, None, 0.0), MAX_RETRY);
        assert!(retry_delay(1, false, None, 0.99) < FIRST_RETRY + FIRST_RETRY / 10);
    }

    #[test]
    fn the_cas_retry_after_replaces_the_back_off_within_bounds() {
        let three = Duration::from_secs(3);
        // A rate limit that names its wait is retried then, not after the hour.
        assert_eq!(retry_delay(1, true, Some(three), 0.0), three);
        // Later failures too: the CA's word over the doubling, shorter or longer.
        assert_eq!(retry_delay(9, false, Some(three), 0.0), three);
        assert_eq!(
            retry_delay(1, false, Some(Duration::from_secs(120)), 0.0),
            Duration::from_secs(120)
        );
        // Jitter only adds.
        let jittered = retry_delay(1, true, Some(three), 0.99);
        assert!(
            jittered >= three && jittered < three + three / 10,
            "{jittered:?}"
        );
        // Clamped: never a tight loop, never longer than the cap.
        assert_eq!(
            retry_delay(1, false, Some(Duration::ZERO), 0.0),
            MIN_RETRY_AFTER
        );
        assert_eq!(retry_delay(1, true, Some(DAY), 0.0), MAX_RETRY);
    }

    #[test]
    fn a_time_already_in_the_window_stays() {
        let start = SystemTime::UNIX_EPOCH + DAY * 1000;
        let end = start + DAY;
        let inside = start + DAY / 3;
        assert_eq!(renewal_in_window(start, end, inside, 0.9), Some(inside));
        assert_eq!(renewal_in_window(start, end, start, 0.9), Some(start));
    }

    #[test]
    fn a_time_outside_the_window_is_drawn_inside_it() {
        let start = SystemTime::UNIX_EPOCH + DAY * 1000;
        let end = start + DAY;
        assert_eq!(renewal_in_window(start, end, end, 0.0), Some(start));
        assert_eq!(
            renewal_in_window(start, end, start - DAY * 30, 0.5),
            Some(start + DAY / 2)
        );
        let late = renewal_in_window(start, end, end + DAY, 0.999).expect("a time");
        assert!(late >= start && late < end);
    }

    #[test]
    fn an_empty_or_reversed_window_is_no_answer() {
        let start = SystemTime::UNIX_EPOCH + DAY * 1000;
        assert_eq!(renewal_in_window(start, start, start, 0.5), None);
        assert_eq!(renewal_in_window(start + DAY, start, start, 0.5), None);
    }

    #[test]
    fn renewal_info_is_asked_again_between_a_minute_and_a_day() {
        assert_eq!(renewal_info_interval(Duration::ZERO), MIN_RENEWAL_INFO);
        assert_eq!(
            renewal_info_interval(Duration::from_secs(6 * 60 * 60)),
            Duration::from_secs(6 * 60 * 60)
        );
        assert_eq!(renewal_info_interval(DAY * 7), MAX_RENEWAL_INFO);
    }
}
