//! Raw file → validated [`Config`]. Each rule reports every violation it finds, with position.
//!
//! This file checks the whole file (runtime, listeners against pools); `admin`, `listener`,
//! `pool`, `discover` and `health` check their sections, with the shared value checks of `checker`.

mod acme;
mod admin;
mod balancing;
mod checker;
mod discover;
mod ewma_budget;
mod health;
mod listener;
mod pool;
mod rate_limit;
mod route;
mod route_action;
mod shadow;

use std::collections::HashSet;

use toml::de::DeTable;

use checker::Checker;

use crate::config::defaults;
use crate::config::error::{ConfigError, Locator};
use crate::config::raw::{RawConfig, RawRuntime};
use crate::config::types::{Config, Protocol, RuntimeConfig};

const MAX_WORKER_THREADS: i64 = 1024;

pub(super) fn parse(file: &str, source: &str) -> Result<Config, ConfigError> {
    let locator = Locator::new(file, source);
    let root = DeTable::parse(source)
        .map_err(|err| ConfigError::Invalid(vec![locator.toml_problem(&err, None)]))?;
    let raw: RawConfig = toml::from_str(source).map_err(|err| {
        ConfigError::Invalid(vec![locator.toml_problem(&err, Some(root.get_ref()))])
    })?;
    let mut checker = Checker::new(locator);
    let config = checker.config(raw);
    checker.finish(config)
}

impl Checker<'_> {
    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let runtime = self.runtime(raw.runtime.as_ref());
        let dns = self.dns(raw.dns.as_ref());
        let admin = raw.admin.as_ref().map(|admin| self.admin(admin));

        let protocols = self.pool_protocols(&raw);
        let mut pools = Vec::with_capacity(raw.pools.len());
        for (name, pool) in &raw.pools {
            let protocol = protocols
                .iter()
                .find(|(pool_name, _)| pool_name == name.get_ref())
                .map_or(Protocol::Http, |(_, protocol)| *protocol);
            if let Some(pool) = self.pool(name, pool, protocol) {
                pools.push(pool);
            }
        }
        let pool_count = raw.pools.len();

        if raw.listeners.is_empty() {
            self.report_at(
                0,
                "listeners",
                "at least one [[listeners]] entry is required",
            );
        }
        let mut listeners = Vec::with_capacity(raw.listeners.len());
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        if let Some(Some(admin)) = &admin {
            addresses.insert(admin.listen);
        }
        for (index, listener) in raw.listeners.iter().enumerate() {
            let key = format!("listeners[{index}]");
            let listener = listener.get_ref();
            if !names.insert(listener.name.get_ref().clone()) {
                self.report(
                    &listener.name,
                    &format!("{key}.name"),
                    format!("duplicate listener name {:?}", listener.name.get_ref()),
                );
            }
            let Some(config) = self.listener(&key, listener, &raw) else {
                continue;
            };
            if config.listen.port() != 0 && !addresses.insert(config.listen) {
                self.report(
                    &listener.listen,
                    &format!("{key}.listen"),
                    format!(
                        "address {} is already used by another listener or the admin listener",
                        config.listen
                    ),
                );
            }
            listeners.push(config);
        }

        if listeners.len() == raw.listeners.len() {
            self.http01_listeners(&raw, &listeners);
        }
        let admin = match admin {
            None => None,
            Some(admin) => Some(admin?),
        };
        (pools.len() == pool_count && listeners.len() == raw.listeners.len()).then_some(Config {
            admin,
            runtime: runtime?,
            access_log: raw.log.as_ref().and_then(|log| log.access).unwrap_or(false),
            listeners,
            pools,
            dns: dns?,
            warnings: Vec::new(),
        })
    }

    /// The protocol of each pool, from the listeners that use it; a pool used by listeners of
    /// both protocols is an error (its keys mean different things for each).
    fn pool_protocols(&mut self, raw: &RawConfig) -> Vec<(String, Protocol)> {
        let mut protocols: Vec<(String, Protocol)> = Vec::new();
        for (index, listener) in raw.listeners.iter().enumerate() {
            let listener = listener.get_ref();
            let protocol = listener::protocol(listener);
            let routed = listener.routes.iter().enumerate().flat_map(|(route, raw)| {
                let raw = raw.get_ref();
                let split = raw
                    .split
                    .iter()
                    .flat_map(|split| split.get_ref().iter().enumerate());
                let mirror = raw.mirror.iter().map(move |mirror| {
                    let key = format!("listeners[{index}].routes[{route}].mirror.pool");
                    (&mirror.get_ref().pool, key)
                });
                raw.pool
                    .iter()
                    .map(move |pool| (pool, format!("listeners[{index}].routes[{route}].pool")))
                    .chain(mirror)
                    .chain(split.map(move |(entry, split)| {
                        let key = format!("listeners[{index}].routes[{route}].split[{entry}].pool");
                        (&split.get_ref().pool, key)
                    }))
            });
            let fallback = listener
                .pool
                .iter()
                .map(|pool| (pool, format!("listeners[{index}].pool")));
            for (pool_at, key) in fallback.chain(routed) {
                let pool = pool_at.get_ref();
                match protocols.iter().find(|(name, _)| name == pool) {
                    Some((_, existing)) if *existing != protocol => self.report(
                        pool_at,
                        &key,
                        format!(
                            "pool {pool:?} already serves {} listeners; a {} listener needs a pool of its own",
                            existing.as_str(),
                            protocol.as_str()
                        ),
                    ),
                    Some(_) => {}
                    None => protocols.push((pool.clone(), protocol)),
                }
            }
        }
        protocols
    }

    fn runtime(&mut self, raw: Option<&RawRuntime>) -> Option<RuntimeConfig> {
        let Some(raw) = raw else {
            return Some(RuntimeConfig {
                worker_threads: None,
                shutdown_timeout: defaults::SHUTDOWN_TIMEOUT,
                pid_file: None,
            });
        };
        let worker_threads = match &raw.worker_threads {
            None => Some(None),
            Some(threads) => self
                .int_in(threads, "runtime.worker_threads", 1, MAX_WORKER_THREADS)
                .map(|n| usize::try_from(n).ok()),
        };
        let shutdown_timeout = self.duration(
            raw.shutdown_timeout.as_ref(),
            "runtime.shutdown_timeout",
            defaults::SHUTDOWN_TIMEOUT,
        );
        let pid_file = match &raw.pid_file {
            None => Some(None),
            Some(file) => {
                let path = self.config_dir().join(file.get_ref());
                match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                    Some(dir) if !dir.is_dir() => {
                        let problem = format!("directory {} does not exist", dir.display());
                        self.report(file, "runtime.pid_file", problem);
                        None
                    }
                    _ => Some(Some(path)),
                }
            }
        };
        Some(RuntimeConfig {
            worker_threads: worker_threads?,
            shutdown_timeout: shutdown_timeout?,
            pid_file: pid_file?,
        })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod balancing_tests;

#[cfg(test)]
mod route_tests;

#[cfg(test)]
mod ewma_budget_tests;

#[cfg(test)]
mod discover_tests;
