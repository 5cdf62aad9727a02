//! Configuration: the TOML file, parsed in two layers.
//!
//! `raw` describes the file (serde, unknown keys rejected); `validate` turns it into the types
//! of `types`, re-exported here, whose invariants hold by construction: every pool has at least
//! one backend (or `discover`), weights are at least 1, every listener names a pool that exists, addresses are
//! resolved. Errors name the file, line, column and key (see [`ConfigError`]).

mod defaults;
mod diff;
mod error;
mod raw;
mod token;
mod types;
mod validate;

use std::path::Path;

pub use diff::diff;
pub use error::{ConfigError, Problem};
pub use token::TokenError;
pub use types::{
    AdminConfig, AdminToken, Algorithm, BackendConfig, CheckKind, ClientLimits, Config,
    DiscoverConfig, DiscoverTarget, DnsConfig, EwmaConfig, HashKey, HeaderMatch, HealthCheckConfig,
    HostMatch, Http2Limits, ListenerConfig, MirrorConfig, PassiveConfig, PathMatch, PoolConfig,
    Protocol, ProxyProtocol, QueueConfig, RateLimitConfig, RateLimitKey, RetryBudgetConfig,
    RouteAction, RouteConfig, RuntimeConfig, StatusSet, StickyConfig,
};

pub(crate) use crate::tls::UpstreamTlsConfig;

impl Config {
    /// Reads, parses and validates the file at `path`.
    ///
    /// Hostnames are resolved here, so this may block briefly; call it off the hot path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&path.display().to_string(), &source)
    }

    /// Parses and validates `source`; `file` is the name used in error messages.
    pub fn parse(file: &str, source: &str) -> Result<Config, ConfigError> {
        validate::parse(file, source)
    }
}
