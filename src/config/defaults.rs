//! Defaults for every optional key; the README's config reference lists the same values.

use std::time::Duration;

pub(super) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const MAX_HEADER_BYTES: usize = 32 * 1024;
pub(super) const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
pub(super) const HTTP2_MAX_CANCELLED_STREAMS: u32 = 200;
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const RETRIES: u32 = 2;
pub(super) const MAX_IDLE_PER_BACKEND: usize = 1024;
pub(super) const MAX_QUEUE: usize = 1024;
pub(super) const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub(super) const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const ADMIN_MAX_CONNECTIONS: usize = 64;
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const CHECK_PATH: &str = "/";
pub(super) const CHECK_INTERVAL: Duration = Duration::from_secs(2);
pub(super) const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const HEALTHY_THRESHOLD: u32 = 2;
pub(super) const UNHEALTHY_THRESHOLD: u32 = 3;
pub(super) const CONSECUTIVE_FAILURES: u32 = 5;
pub(super) const EJECTION_TIME: Duration = Duration::from_secs(10);
pub(super) const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
pub(super) const MAX_EJECTED_PERCENT: u8 = 50;
pub(super) const EWMA_DECAY: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_RTT: Duration = Duration::from_millis(30);
pub(super) const RETRY_BUDGET_PERCENT: u32 = 20;
pub(super) const RETRY_BUDGET_MIN_PER_SECOND: u32 = 10;
pub(super) const DNS_TIMEOUT: Duration = Duration::from_secs(2);
pub(super) const DNS_PORT: u16 = 53;
pub(super) const DISCOVER_REFRESH: Duration = Duration::from_secs(5);
