//! `[admin]`: the operator listener's address, its token file, `Host` allow-list and limits.

use std::num::NonZeroUsize;

use super::checker::Checker;
use crate::config::defaults;
use crate::config::raw::RawAdmin;
use crate::config::token::AdminToken;
use crate::config::types::AdminConfig;

/// Bound on `admin.max_connections`: the admin API is for operators, not traffic.
const MAX_ADMIN_CONNECTIONS: i64 = 10_000;

impl Checker<'_> {
    pub(super) fn admin(&mut self, raw: &RawAdmin) -> Option<AdminConfig> {
        let listen = self.address(&raw.listen, "admin.listen", true);
        let token = match &raw.token_file {
            None => Some(None),
            Some(file) => {
                let path = self.config_dir().join(file.get_ref());
                match AdminToken::read(&path) {
                    Ok(token) => Some(Some(token)),
                    Err(err) => {
                        self.report(file, "admin.token_file", err.to_string());
                        None
                    }
                }
            }
        };
        let mut allowed_hosts = Vec::new();
        for (index, host) in raw.allowed_hosts.iter().flatten().enumerate() {
            let name = host.get_ref().to_ascii_lowercase();
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if valid {
                allowed_hosts.push(name);
            } else {
                self.report(
                    host,
                    &format!("admin.allowed_hosts[{index}]"),
                    format!(
                        "{:?} is not a host name (letters, digits, '-' and '.', no port; IP literals are always accepted)",
                        host.get_ref()
                    ),
                );
            }
        }
        let header_read_timeout = self.duration(
            raw.header_read_timeout.as_ref(),
            "admin.header_read_timeout",
            defaults::ADMIN_HEADER_READ_TIMEOUT,
        );
        let max_connections = match &raw.max_connections {
            None => NonZeroUsize::new(defaults::ADMIN_MAX_CONNECTIONS),
            Some(n) => self
                .int_in(n, "admin.max_connections", 1, MAX_ADMIN_CONNECTIONS)
                .and_then(|n| usize::try_from(n).ok())
                .and_then(NonZeroUsize::new),
        };
        let invalid_hosts = raw.allowed_hosts.as_ref().map_or(0, Vec::len) != allowed_hosts.len();
        if invalid_hosts {
            return None;
        }
        Some(AdminConfig {
            listen: listen?,
            metrics: raw.metrics.unwrap_or(true),
            token: token?,
            allowed_hosts,
            header_read_timeout: header_read_timeout?,
            max_connections: max_connections?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{Config, ConfigError};

    /// Parses `admin` (the body of an `[admin]` table) with one listener and pool, the file
    /// named as if it were in `dir`.
    fn parse(dir: &std::path::Path, admin: &str) -> Result<Config, ConfigError> {
        let source = format!(
            "[admin]\n{admin}\n\n[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[pools.app]\nbackends = [\"127.0.0.1:3001\"]\n"
        );
        Config::parse(&dir.join("fulcrum.toml").display().to_string(), &source)
    }

    fn one_error(dir: &std::path::Path, admin: &str) -> String {
        match parse(dir, admin) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(err) => {
                let problems = err.problems();
                assert_eq!(problems.len(), 1, "{err}");
                problems[0].to_string()
            }
        }
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fulcrum-admin-config-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn admin_defaults_are_open_with_a_cap_and_a_head_timeout() {
        let config = parse(&temp_dir("defaults"), "listen = \"127.0.0.1:9900\"").expect("valid");
        let admin = config.admin.expect("admin");
        assert_eq!(admin.token, None);
        assert!(admin.allowed_hosts.is_empty());
        assert_eq!(admin.header_read_timeout, Duration::from_secs(10));
        assert_eq!(admin.max_connections.get(), 64);
    }

    #[test]
    fn token_file_is_read_relative_to_the_config() {
        let dir = temp_dir("token");
        std::fs::write(dir.join("admin.token"), "0123456789abcdef0123\n").expect("write");
        let config = parse(
            &dir,
            "listen = \"127.0.0.1:9900\"\ntoken_file = \"admin.token\"\nallowed_hosts = [\"Fulcrum.Internal\"]\nheader_read_timeout = \"2s\"\nmax_connections = 3",
        )
        .expect("valid");
        let admin = config.admin.expect("admin");
        let token = admin.token.expect("a token");
        assert!(token.matches(b"0123456789abcdef0123"));
        assert_eq!(admin.allowed_hosts, ["fulcrum.internal"]);
        assert_eq!(admin.header_read_timeout, Duration::from_secs(2));
        assert_eq!(admin.max_connections.get(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_or_short_token_file_is_an_error_at_its_key() {
        let dir = temp_dir("bad-token");
        let error = one_error(
            &dir,
            "listen = \"127.0.0.1:9900\"\ntoken_file = \"nope.token\"",
        );
        assert!(
            error.contains(":3:14: admin.token_file: cannot read"),
            "{error}"
        );
        std::fs::write(dir.join("short.token"), "abc\n").expect("write");
        let error = one_error(
            &dir,
            "listen = \"127.0.0.1:9900\"\ntoken_file = \"short.token\"",
        );
        assert!(error.contains(":3:14: admin.token_file: "), "{error}");
        assert!(error.contains("at least 16 characters"), "{error}");
        assert!(!error.contains("abc"), "the token is never shown: {error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn allowed_hosts_are_names_without_ports() {
        let error = one_error(
            &temp_dir("hosts"),
            "listen = \"127.0.0.1:9900\"\nallowed_hosts = [\"ok.example\", \"bad.example:9900\"]",
        );
        assert!(error.contains(":3:32: admin.allowed_hosts[1]: "), "{error}");
    }

    #[test]
    fn admin_max_connections_and_header_read_timeout_are_bounded() {
        let dir = temp_dir("limits");
        let error = one_error(&dir, "listen = \"127.0.0.1:9900\"\nmax_connections = 0");
        assert!(
            error.contains(":3:19: admin.max_connections: 0 is out of range"),
            "{error}"
        );
        let error = one_error(
            &dir,
            "listen = \"127.0.0.1:9900\"\nheader_read_timeout = \"0s\"",
        );
        assert!(
            error.contains(":3:23: admin.header_read_timeout: must be greater than zero"),
            "{error}"
        );
    }
}
