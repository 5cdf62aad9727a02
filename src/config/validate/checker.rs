//! The validation context, and the value checks every section shares: durations, integers in
//! range, counts, addresses, keys that do not apply.

use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::config::error::{ConfigError, Locator, Problem};
use crate::config::types::Config;

/// Bound on the `max_connections` and `max_queue` settings.
pub(super) const MAX_CONNECTIONS: i64 = 10_000_000;

/// Bound on every duration: one year. Deadlines are a configured duration added to
/// `Instant::now()`, which panics on overflow; no such sum can overflow with this bound.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Collects every problem found while the raw file becomes a [`Config`].
pub(super) struct Checker<'a> {
    locator: Locator<'a>,
    problems: Vec<Problem>,
    /// Valid but probably unintended; they do not fail the file.
    warnings: Vec<Problem>,
}

impl<'a> Checker<'a> {
    pub(super) fn new(locator: Locator<'a>) -> Self {
        Self {
            locator,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

impl Checker<'_> {
    /// The config when no problem was found, else every problem in file order.
    pub(super) fn finish(mut self, config: Option<Config>) -> Result<Config, ConfigError> {
        match config {
            Some(mut config) if self.problems.is_empty() => {
                self.warnings
                    .sort_by_key(|problem| (problem.line, problem.column));
                config.warnings = self.warnings;
                Ok(config)
            }
            _ => {
                self.problems
                    .sort_by_key(|problem| (problem.line, problem.column));
                Err(ConfigError::Invalid(self.problems))
            }
        }
    }

    /// Records a problem at byte `offset` of the file.
    pub(super) fn report_at(
        &mut self,
        offset: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let problem = self.locator.problem(offset, key, message);
        self.problems.push(problem);
    }

    /// Records a warning at the position of `at`: the file stays valid.
    pub(super) fn warn<T>(&mut self, at: &Spanned<T>, key: &str, message: impl Into<String>) {
        let warning = self.locator.problem(at.span().start, key, message);
        self.warnings.push(warning);
    }

    /// `file:line:col` of `at`, for messages that point at a second place.
    pub(super) fn position<T>(&self, at: &Spanned<T>) -> String {
        let problem = self.locator.problem(at.span().start, "", "");
        format!("{}:{}:{}", problem.file, problem.line, problem.column)
    }

    /// Records a problem at the position of `at`.
    pub(super) fn report<T>(&mut self, at: &Spanned<T>, key: &str, message: impl Into<String>) {
        self.report_at(at.span().start, key, message);
    }

    /// Reports each key in `keys` that is set, as not applying to `what`.
    pub(super) fn reject_keys(
        &mut self,
        key: &str,
        what: &str,
        keys: &[(&str, Option<Range<usize>>)],
    ) {
        for (name, span) in keys {
            if let Some(span) = span {
                self.report_at(
                    span.start,
                    format!("{key}.{name}"),
                    format!("does not apply to {what}"),
                );
            }
        }
    }

    /// The config file's directory: relative certificate and CA paths start there.
    pub(super) fn config_dir(&self) -> PathBuf {
        Path::new(self.locator.file())
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// A positive count up to [`MAX_CONNECTIONS`], or `None` inside when absent.
    pub(super) fn optional_count(
        &mut self,
        raw: Option<&Spanned<i64>>,
        key: &str,
    ) -> Option<Option<NonZeroUsize>> {
        match raw {
            None => Some(None),
            Some(n) => self
                .int_in(n, key, 1, MAX_CONNECTIONS)
                .map(|n| usize::try_from(n).ok().and_then(NonZeroUsize::new)),
        }
    }

    /// `host:port` → one socket address. Hostnames are resolved now (first address wins).
    pub(super) fn address(
        &mut self,
        raw: &Spanned<String>,
        key: &str,
        allow_port_zero: bool,
    ) -> Option<SocketAddr> {
        let text = raw.get_ref();
        let invalid = |why: &str| format!("{text:?} is not a valid address ({why})");
        let parsed = match text.parse::<SocketAddr>() {
            Ok(addr) => Ok(addr),
            Err(_) => match text.rsplit_once(':') {
                None => Err(invalid("expected host:port")),
                Some((host, port)) => match port.parse::<u16>() {
                    Err(_) => Err(invalid("port must be a number from 1 to 65535")),
                    Ok(_) if host.is_empty() => Err(invalid("the host is empty")),
                    Ok(_) => match text.to_socket_addrs() {
                        Ok(mut addrs) => addrs
                            .next()
                            .ok_or_else(|| format!("{text:?} did not resolve to any address")),
                        Err(err) => Err(format!("{text:?} could not be resolved: {err}")),
                    },
                },
            },
        };
        match parsed {
            Ok(addr) if addr.port() == 0 && !allow_port_zero => {
                self.report(raw, key, invalid("port must be a number from 1 to 65535"));
                None
            }
            Ok(addr) => Some(addr),
            Err(message) => {
                self.report(raw, key, message);
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        raw: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(default);
        };
        match self.duration_or_zero(raw, key)? {
            duration if duration.is_zero() => {
                self.report(raw, key, "must be greater than zero");
                None
            }
            duration => Some(duration),
        }
    }

    pub(super) fn duration_or_zero(
        &mut self,
        raw: &Spanned<String>,
        key: &str,
    ) -> Option<Duration> {
        match humantime::parse_duration(raw.get_ref()) {
            Ok(duration) if duration > MAX_DURATION => {
                self.report(
                    raw,
                    key,
                    format!("{:?} is longer than the maximum of 365 days", raw.get_ref()),
                );
                None
            }
            Ok(duration) => Some(duration),
            Err(err) => {
                self.report(
                    raw,
                    key,
                    format!(
                        "{:?} is not a valid duration ({err}); write e.g. \"500ms\", \"2s\", \"1m\"",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn int_in(
        &mut self,
        raw: &Spanned<i64>,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let value = *raw.get_ref();
        if (min..=max).contains(&value) {
            Some(value)
        } else {
            self.report(
                raw,
                key,
                format!("{value} is out of range (must be from {min} to {max})"),
            );
            None
        }
    }
}
