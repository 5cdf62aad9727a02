//! Defaults for every optional key; the README's config reference lists the same values.

use std::time::Duration;

pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const RETRIES: u32 = 2;
pub const MAX_IDLE_PER_BACKEND: usize = 1024;
pub const MAX_QUEUE: usize = 1024;
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const CHECK_PATH: &str = "/";
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
pub const HEALTHY_THRESHOLD: u32 = 2;
pub const UNHEALTHY_THRESHOLD: u32 = 3;
pub const CONSECUTIVE_FAILURES: u32 = 5;
pub const EJECTION_TIME: Duration = Duration::from_secs(10);
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
pub const MAX_EJECTED_PERCENT: u8 = 50;
