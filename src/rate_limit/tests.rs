//! The limiter on paused tokio time: bursts, refill, `Retry-After`, sweeping and reuse.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::RateLimitKey;

fn config(per_second: f64, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        interval: Duration::from_secs_f64(1.0 / per_second),
        burst: NonZeroU32::new(burst).expect("a burst"),
        key: RateLimitKey::ClientIp,
        trusted_proxies: Vec::new(),
    }
}

fn limiter(per_second: f64, burst: u32) -> Arc<RateLimiter> {
    RateLimiter::carry(&config(per_second, burst), None, &Arc::from("web"), None)
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([192, 0, 2, last])
}

#[tokio::test(start_paused = true)]
async fn a_key_gets_its_burst_then_one_request_per_interval() {
    let limiter = limiter(10.0, 3);
    for _ in 0..3 {
        assert_eq!(limiter.check_connection(ip(1)), Ok(()));
    }
    assert_eq!(
        limiter.check_connection(ip(1)),
        Err(Refused { retry_after: 1 })
    );
    // Another key has its own bucket.
    assert_eq!(limiter.check_connection(ip(2)), Ok(()));
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(limiter.check_connection(ip(1)), Ok(()));
    assert!(limiter.check_connection(ip(1)).is_err());
}

#[tokio::test(start_paused = true)]
async fn retry_after_rounds_up_the_wait_for_fractional_rates() {
    let limiter = limiter(0.25, 1);
    assert_eq!(limiter.check_connection(ip(1)), Ok(()));
    assert_eq!(
        limiter.check_connection(ip(1)),
        Err(Refused { retry_after: 4 })
    );
    tokio::time::advance(Duration::from_millis(2500)).await;
    assert_eq!(
        limiter.check_connection(ip(1)),
        Err(Refused { retry_after: 2 })
    );
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert_eq!(limiter.check_connection(ip(1)), Ok(()));
}

#[test]
fn retry_after_is_whole_seconds_at_least_one() {
    assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
    assert_eq!(retry_after_seconds(Duration::from_secs(1)), 1);
    assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
    assert_eq!(retry_after_seconds(Duration::from_secs(90)), 90);
}

#[tokio::test(start_paused = true)]
async fn a_sweep_forgets_only_keys_whose_bucket_is_full_again() {
    let limiter = limiter(1.0, 2);
    limiter.check_connection(ip(1)).expect("first");
    tokio::time::advance(Duration::from_millis(1500)).await;
    limiter.check_connection(ip(2)).expect("first");
    assert_eq!(limiter.tracked_keys(), 2);
    tokio::time::advance(Duration::from_millis(600)).await;
    // ip(1) has been full since 1 s (governor forgets a key one interval after that); ip(2)
    // has 1.6 of its 2 requests back.
    limiter.sweep_once();
    assert_eq!(limiter.tracked_keys(), 1);
    // Forgetting ip(2) early would hand it a full burst of two.
    limiter
        .check_connection(ip(2))
        .expect("one request is back");
    assert!(limiter.check_connection(ip(2)).is_err());
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_empties_an_idle_table_and_ends_with_its_limiter() {
    let limiter = limiter(100.0, 50);
    assert_eq!(limiter.sweep_period(), MIN_SWEEP);
    for last in 0..=255 {
        limiter.check_connection(ip(last)).expect("a fresh key");
    }
    assert_eq!(limiter.tracked_keys(), 256);
    tokio::time::sleep(MIN_SWEEP * 3).await;
    assert_eq!(limiter.tracked_keys(), 0);

    let task = tokio::spawn(sweep(Arc::downgrade(&limiter), MIN_SWEEP));
    drop(limiter);
    tokio::time::timeout(MIN_SWEEP * 3, task)
        .await
        .expect("the sweeper ends with its limiter")
        .expect("the sweeper did not panic");
}

#[test]
fn the_sweep_period_is_the_refill_time_within_bounds() {
    let slow = RateLimiter::new(&config(0.01, 5), &Arc::from("web"), None);
    assert_eq!(slow.sweep_period(), MAX_SWEEP);
    let middling = RateLimiter::new(&config(2.0, 10), &Arc::from("web"), None);
    assert_eq!(middling.sweep_period(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn unchanged_settings_keep_the_limiter_and_its_buckets() {
    let listener: Arc<str> = Arc::from("web");
    let first = RateLimiter::carry(&config(1.0, 1), None, &listener, None);
    first.check_connection(ip(1)).expect("first");
    let kept = RateLimiter::carry(&config(1.0, 1), Some(&first), &listener, None);
    assert!(Arc::ptr_eq(&first, &kept));
    assert!(
        kept.check_connection(ip(1)).is_err(),
        "the bucket came along"
    );
    let fresh = RateLimiter::carry(&config(1.0, 2), Some(&first), &listener, None);
    assert!(!Arc::ptr_eq(&first, &fresh));
    fresh
        .check_connection(ip(1))
        .expect("a new limiter has new buckets");
}

#[tokio::test(start_paused = true)]
async fn trusted_forwarded_addresses_are_separate_keys_and_spoofs_are_not() {
    let mut settings = config(1.0, 1);
    settings.trusted_proxies = vec!["127.0.0.0/8".parse().expect("a network")];
    let limiter = RateLimiter::carry(&settings, None, &Arc::from("web"), None);
    let forwarded = |value: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", http::HeaderValue::from_static(value));
        headers
    };
    let proxy = IpAddr::from([127, 0, 0, 1]);
    let stranger = IpAddr::from([198, 51, 100, 9]);
    limiter
        .check_request(proxy, &forwarded("203.0.113.1"))
        .expect("first client");
    limiter
        .check_request(proxy, &forwarded("203.0.113.2"))
        .expect("second client");
    assert!(
        limiter
            .check_request(proxy, &forwarded("203.0.113.1"))
            .is_err()
    );
    limiter
        .check_request(stranger, &forwarded("203.0.113.3"))
        .expect("first from the stranger");
    // An untrusted peer's header is ignored: a new spoofed address is still the same key.
    assert!(
        limiter
            .check_request(stranger, &forwarded("203.0.113.4"))
            .is_err()
    );
}
