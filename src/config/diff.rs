//! A human-readable diff between two configs, as logged on reload and printed by
//! `fulcrum --check --diff`.
//!
//! One line per changed pool or listener, e.g.
//! `pool app: 127.0.0.1:3001 weight 1→3, +127.0.0.1:3004 (weight 1), -127.0.0.1:3002 (draining)`.

use std::fmt::Write as _;

use std::sync::Arc;

use super::types::{
    AdminConfig, Algorithm, Config, ListenerConfig, PoolConfig, RetryBudgetConfig, RouteConfig,
};

/// The changes from `old` to `new`, one line per pool or listener; empty when nothing changed.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    for pool in &new.pools {
        match old.pool(&pool.name) {
            None => lines.push(format!(
                "pool {}: added ({}, {})",
                pool.name,
                pool.algorithm.as_str(),
                backend_list(pool)
            )),
            Some(previous) => {
                let changes = pool_changes(previous, pool);
                if !changes.is_empty() {
                    lines.push(format!("pool {}: {}", pool.name, changes.join(", ")));
                }
            }
        }
    }
    for pool in &old.pools {
        if new.pool(&pool.name).is_none() {
            lines.push(format!("pool {}: removed", pool.name));
        }
    }
    for listener in &new.listeners {
        match old.listeners.iter().find(|l| l.name == listener.name) {
            None => lines.push(format!(
                "listener {}: added {} -> {}",
                listener.name,
                listener.listen,
                listener.serves()
            )),
            Some(previous) => {
                let changes = listener_changes(previous, listener);
                if !changes.is_empty() {
                    lines.push(format!(
                        "listener {}: {}",
                        listener.name,
                        changes.join(", ")
                    ));
                }
            }
        }
    }
    for listener in &old.listeners {
        if !new.listeners.iter().any(|l| l.name == listener.name) {
            lines.push(format!(
                "listener {}: removed {} (draining)",
                listener.name, listener.listen
            ));
        }
    }
    match (&old.admin, &new.admin) {
        (Some(a), Some(b)) if a.listen != b.listen => {
            lines.push(format!("admin: {} → {}", a.listen, b.listen));
        }
        (None, Some(b)) => lines.push(format!("admin: added {}", b.listen)),
        (Some(a), None) => lines.push(format!("admin: removed {}", a.listen)),
        _ => {}
    }
    if let (Some(a), Some(b)) = (&old.admin, &new.admin) {
        admin_access(a, b, &mut lines);
    }
    if old.runtime.shutdown_timeout != new.runtime.shutdown_timeout {
        lines.push(format!(
            "runtime: shutdown_timeout {:?} → {:?}",
            old.runtime.shutdown_timeout, new.runtime.shutdown_timeout
        ));
    }
    if old.dns != new.dns {
        let servers = |config: &Config| match config.dns.servers.as_slice() {
            [] => "resolv.conf".to_owned(),
            servers => servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        };
        lines.push(format!(
            "dns: servers {}→{}, timeout {:?}→{:?}",
            servers(old),
            servers(new),
            old.dns.timeout,
            new.dns.timeout
        ));
    }
    if old.runtime.worker_threads != new.runtime.worker_threads {
        lines.push("runtime: worker_threads changed (applies on restart)".to_owned());
    }
    lines
}

fn backend_list(pool: &PoolConfig) -> String {
    let mut out = String::new();
    for (i, backend) in pool.backends.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{} (weight {})", backend.name, backend.weight);
    }
    out
}

/// `NAME port N every D` or `SRV NAME every D`, or `none`.
fn discover_or_none(pool: &PoolConfig) -> String {
    pool.discover.as_ref().map_or_else(
        || "none".to_owned(),
        |discover| format!("{} every {:?}", discover.target, discover.refresh),
    )
}

fn pool_changes(old: &PoolConfig, new: &PoolConfig) -> Vec<String> {
    let mut changes = Vec::new();
    for backend in &new.backends {
        match old.backends.iter().find(|b| b.address == backend.address) {
            None => changes.push(format!("+{} (weight {})", backend.name, backend.weight)),
            Some(previous) => {
                if previous.weight != backend.weight {
                    changes.push(format!(
                        "{} weight {}→{}",
                        backend.name, previous.weight, backend.weight
                    ));
                }
                if previous.max_connections != backend.max_connections {
                    changes.push(format!(
                        "{} max_connections {}→{}",
                        backend.name,
                        count_or_none(previous.max_connections),
                        count_or_none(backend.max_connections)
                    ));
                }
            }
        }
    }
    for backend in &old.backends {
        if !new.backends.iter().any(|b| b.address == backend.address) {
            changes.push(format!("-{} (draining)", backend.name));
        }
    }
    if old.algorithm != new.algorithm {
        changes.push(format!(
            "algorithm {}→{}",
            old.algorithm.as_str(),
            new.algorithm.as_str()
        ));
    }
    let mut setting = |name: &str, changed: bool, old: String, new: String| {
        if changed {
            changes.push(format!("{name} {old}→{new}"));
        }
    };
    setting(
        "connect_timeout",
        old.connect_timeout != new.connect_timeout,
        format!("{:?}", old.connect_timeout),
        format!("{:?}", new.connect_timeout),
    );
    setting(
        "request_timeout",
        old.request_timeout != new.request_timeout,
        format!("{:?}", old.request_timeout),
        format!("{:?}", new.request_timeout),
    );
    setting(
        "try_timeout",
        old.try_timeout != new.try_timeout,
        format!("{:?}", old.try_timeout),
        format!("{:?}", new.try_timeout),
    );
    setting(
        "retries",
        old.retries != new.retries,
        old.retries.to_string(),
        new.retries.to_string(),
    );
    setting(
        "slow_start",
        old.slow_start != new.slow_start,
        format!("{:?}", old.slow_start),
        format!("{:?}", new.slow_start),
    );
    setting(
        "fail_open",
        old.fail_open != new.fail_open,
        old.fail_open.to_string(),
        new.fail_open.to_string(),
    );
    setting(
        "max_connections",
        old.queue.max_connections != new.queue.max_connections,
        count_or_none(old.queue.max_connections),
        count_or_none(new.queue.max_connections),
    );
    setting(
        "max_queue",
        old.queue.max_queue != new.queue.max_queue,
        old.queue.max_queue.to_string(),
        new.queue.max_queue.to_string(),
    );
    setting(
        "queue_timeout",
        old.queue.timeout != new.queue.timeout,
        format!("{:?}", old.queue.timeout),
        format!("{:?}", new.queue.timeout),
    );
    setting(
        "discover",
        old.discover != new.discover,
        discover_or_none(old),
        discover_or_none(new),
    );
    if old.health_check != new.health_check {
        changes.push("health_check changed".to_owned());
    }
    if old.passive != new.passive {
        changes.push("passive changed".to_owned());
    }
    if old.ewma != new.ewma && new.algorithm == Algorithm::PeakEwma {
        changes.push(format!(
            "ewma_decay {:?}→{:?}, default_rtt {:?}→{:?} (estimates kept)",
            old.ewma.decay, new.ewma.decay, old.ewma.default_rtt, new.ewma.default_rtt
        ));
    }
    if old.retry_budget != new.retry_budget {
        let budget = |budget: Option<RetryBudgetConfig>| {
            budget.map_or_else(
                || "none".to_owned(),
                |b| format!("{}% + {}/s", b.percent, b.min_per_second),
            )
        };
        changes.push(format!(
            "retry_budget {}→{} (window restarted)",
            budget(old.retry_budget),
            budget(new.retry_budget)
        ));
    }
    if (&old.hash_key, old.hash_balance_factor) != (&new.hash_key, new.hash_balance_factor) {
        changes.push("hash_key/hash_balance_factor changed".to_owned());
    }
    if old.sticky != new.sticky {
        changes.push("sticky changed".to_owned());
    }
    if (old.max_idle_per_backend, old.idle_timeout) != (new.max_idle_per_backend, new.idle_timeout)
    {
        changes.push("upstream keep-alive settings changed (apply to new backends)".to_owned());
    }
    changes
}

/// A cap as written in the config, `none` when there is none.
fn count_or_none(count: Option<std::num::NonZeroUsize>) -> String {
    count.map_or_else(|| "none".to_owned(), |count| count.to_string())
}

fn listener_changes(old: &ListenerConfig, new: &ListenerConfig) -> Vec<String> {
    let mut changes = Vec::new();
    if old.listen != new.listen {
        changes.push(format!("{} → {} (re-bound)", old.listen, new.listen));
    }
    if old.protocol != new.protocol {
        changes.push(format!("protocol {:?} → {:?}", old.protocol, new.protocol));
    }
    if old.pool != new.pool {
        let name = |pool: &Option<Arc<str>>| pool.as_deref().unwrap_or("none").to_owned();
        changes.push(format!("pool {} → {}", name(&old.pool), name(&new.pool)));
    }
    changes.extend(route_changes(&old.routes, &new.routes));
    if old.limits != new.limits {
        changes.push("client limits changed".to_owned());
    }
    if old.rate_limit != new.rate_limit {
        changes.push("rate_limit changed (its buckets start afresh)".to_owned());
    }
    if old.max_connections != new.max_connections {
        changes.push(format!(
            "max_connections {}→{}",
            count_or_none(old.max_connections),
            count_or_none(new.max_connections)
        ));
    }
    changes
}

/// Routes added, removed and changed, by name.
fn route_changes(old: &[RouteConfig], new: &[RouteConfig]) -> Vec<String> {
    let mut changes = Vec::new();
    for route in new {
        match old.iter().find(|previous| previous.name == route.name) {
            None => changes.push(format!("route {} added", route.name)),
            Some(previous) if previous != route => {
                changes.push(format!("route {} changed", route.name));
            }
            Some(_) => {}
        }
    }
    for route in old {
        if !new.iter().any(|next| next.name == route.name) {
            changes.push(format!("route {} removed", route.name));
        }
    }
    let order = |routes: &[RouteConfig]| {
        routes
            .iter()
            .map(|r| Arc::clone(&r.name))
            .collect::<Vec<_>>()
    };
    if changes.is_empty() && order(old) != order(new) {
        changes.push("routes reordered".to_owned());
    }
    changes
}

/// Changes to who may use the admin API (the token itself is never shown).
fn admin_access(old: &AdminConfig, new: &AdminConfig, lines: &mut Vec<String>) {
    match (&old.token, &new.token) {
        (None, Some(_)) => lines.push("admin: token required".to_owned()),
        (Some(_), None) => lines.push("admin: token no longer required".to_owned()),
        (Some(a), Some(b)) if a.file() != b.file() => lines.push(format!(
            "admin: token_file {} → {}",
            a.file().display(),
            b.file().display()
        )),
        (Some(a), Some(b)) if a != b => lines.push("admin: token changed".to_owned()),
        _ => {}
    }
    if old.allowed_hosts != new.allowed_hosts {
        lines.push(format!(
            "admin: allowed_hosts [{}] → [{}]",
            old.allowed_hosts.join(", "),
            new.allowed_hosts.join(", ")
        ));
    }
    if old.header_read_timeout != new.header_read_timeout {
        lines.push(format!(
            "admin: header_read_timeout {:?} → {:?}",
            old.header_read_timeout, new.header_read_timeout
        ));
    }
    if old.max_connections != new.max_connections {
        lines.push(format!(
            "admin: max_connections {} → {}",
            old.max_connections, new.max_connections
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(source: &str) -> Config {
        Config::parse("t.toml", source).expect("valid")
    }

    #[test]
    fn representative_edit() {
        let old = parse(
            r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:8080"
pool = "app"

[pools.app]
backends = ["127.0.0.1:3001", "127.0.0.1:3002"]
"#,
        );
        let new = parse(
            r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:8080"
pool = "app"

[[listeners]]
name = "api"
listen = "0.0.0.0:8081"
pool = "app"

[pools.app]
algorithm = "least_connections"
backends = [{ address = "127.0.0.1:3001", weight = 3 }, "127.0.0.1:3004"]
"#,
        );
        assert_eq!(
            diff(&old, &new),
            [
                "pool app: 127.0.0.1:3001 weight 1→3, +127.0.0.1:3004 (weight 1), \
                 -127.0.0.1:3002 (draining), algorithm round_robin→least_connections",
                "listener api: added 0.0.0.0:8081 -> app",
            ]
        );
        assert!(diff(&new, &new).is_empty());
        assert_eq!(
            diff(&new, &old),
            [
                "pool app: 127.0.0.1:3001 weight 3→1, +127.0.0.1:3002 (weight 1), \
                 -127.0.0.1:3004 (draining), algorithm least_connections→round_robin",
                "listener api: removed 0.0.0.0:8081 (draining)",
            ]
        );
    }

    #[test]
    fn peak_ewma_settings_and_the_retry_budget_are_listed() {
        let with = |keys: &str| {
            parse(&format!(
                "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\npool = \"app\"\n\n\
                 [pools.app]\nalgorithm = \"peak_ewma\"\nbackends = [\"127.0.0.1:3001\"]\n{keys}\n"
            ))
        };
        let old = with("");
        let new = with("ewma_decay = \"5s\"\nretry_budget = { percent = 25, min_per_second = 2 }");
        assert_eq!(
            diff(&old, &new),
            [
                "pool app: ewma_decay 10s→5s, default_rtt 30ms→30ms (estimates kept), \
              retry_budget none→25% + 2/s (window restarted)"
            ]
        );
    }

    #[test]
    fn discover_and_dns_changes_are_listed() {
        let head = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\npool = \"app\"\n\n";
        let old = parse(&format!(
            "{head}[pools.app]\ndiscover = {{ name = \"a.test\", port = 80 }}\n"
        ));
        let new = parse(&format!(
            "[dns]\nservers = [\"127.0.0.1:5353\"]\n\n{head}[pools.app]\ndiscover = {{ srv = \"_h._tcp.a.test\", refresh = \"1s\" }}\n"
        ));
        assert_eq!(
            diff(&old, &new),
            [
                "pool app: discover a.test port 80 every 5s→SRV _h._tcp.a.test every 1s",
                "dns: servers resolv.conf→127.0.0.1:5353, timeout 2s→2s",
            ]
        );
    }
}
