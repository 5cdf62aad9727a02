//! `[pools.NAME.health_check]` and `[pools.NAME.passive]`: active checks and passive
//! ejection, with the status sets both use.

use toml::Spanned;

use super::checker::Checker;
use crate::config::defaults;
use crate::config::raw::{RawCheckKind, RawHealthCheck, RawPassive};
use crate::config::types::{CheckKind, HealthCheckConfig, PassiveConfig, Protocol, StatusSet};

impl Checker<'_> {
    pub(super) fn health_check(
        &mut self,
        key: &str,
        raw: &RawHealthCheck,
        protocol: Protocol,
    ) -> Option<HealthCheckConfig> {
        let interval = self.duration(
            raw.interval.as_ref(),
            &format!("{key}.interval"),
            defaults::CHECK_INTERVAL,
        );
        let timeout = self.duration(
            raw.timeout.as_ref(),
            &format!("{key}.timeout"),
            defaults::CHECK_TIMEOUT,
        );
        let jitter = match &raw.jitter {
            None => interval.map(|interval| interval / 10),
            Some(jitter) => self.duration_or_zero(jitter, &format!("{key}.jitter")),
        };
        if let (Some(interval), Some(timeout), Some(at)) = (interval, timeout, &raw.timeout) {
            if timeout > interval {
                self.report(
                    at,
                    &format!("{key}.timeout"),
                    format!("{timeout:?} is longer than the interval ({interval:?})"),
                );
            }
        }
        let threshold =
            |checker: &mut Self, raw: &Option<Spanned<i64>>, name: &str, default| match raw {
                None => Some(default),
                Some(n) => checker
                    .int_in(n, &format!("{key}.{name}"), 1, 100)
                    .and_then(|n| u32::try_from(n).ok()),
            };
        let healthy_threshold = threshold(
            self,
            &raw.healthy_threshold,
            "healthy_threshold",
            defaults::HEALTHY_THRESHOLD,
        );
        let unhealthy_threshold = threshold(
            self,
            &raw.unhealthy_threshold,
            "unhealthy_threshold",
            defaults::UNHEALTHY_THRESHOLD,
        );
        let kind = match (raw.kind.as_ref().map(|k| *k.get_ref()), protocol) {
            (None, Protocol::Tcp) => Some(CheckKind::Tcp),
            (None | Some(RawCheckKind::Http), _) => self.http_check(key, raw),
            (Some(RawCheckKind::Tcp), _) => {
                for (name, field) in [
                    ("path", raw.path.as_ref()),
                    ("method", raw.method.as_ref()),
                    ("host", raw.host.as_ref()),
                ] {
                    if let Some(field) = field {
                        self.report(
                            field,
                            &format!("{key}.{name}"),
                            "only applies to kind = \"http\" checks",
                        );
                    }
                }
                if let Some(field) = &raw.expect_status {
                    self.report(
                        field,
                        &format!("{key}.expect_status"),
                        "only applies to kind = \"http\" checks",
                    );
                }
                Some(CheckKind::Tcp)
            }
        };
        Some(HealthCheckConfig {
            kind: kind?,
            interval: interval?,
            timeout: timeout?,
            jitter: jitter?,
            healthy_threshold: healthy_threshold?,
            unhealthy_threshold: unhealthy_threshold?,
        })
    }

    fn http_check(&mut self, key: &str, raw: &RawHealthCheck) -> Option<CheckKind> {
        let method = match &raw.method {
            None => Some(http::Method::GET),
            Some(method) => match http::Method::from_bytes(method.get_ref().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    self.report(
                        method,
                        &format!("{key}.method"),
                        format!("{:?} is not an HTTP method", method.get_ref()),
                    );
                    None
                }
            },
        };
        let path = match &raw.path {
            None => Some(http::uri::PathAndQuery::from_static(defaults::CHECK_PATH)),
            Some(path) => match path.get_ref().parse::<http::uri::PathAndQuery>() {
                Ok(p) if p.as_str().starts_with('/') => Some(p),
                _ => {
                    self.report(
                        path,
                        &format!("{key}.path"),
                        format!("{:?} is not a path starting with /", path.get_ref()),
                    );
                    None
                }
            },
        };
        let host = match &raw.host {
            None => Some(None),
            Some(host) => match http::HeaderValue::from_str(host.get_ref()) {
                Ok(value) if !host.get_ref().is_empty() => Some(Some(value)),
                _ => {
                    self.report(
                        host,
                        &format!("{key}.host"),
                        "not a valid Host header value",
                    );
                    None
                }
            },
        };
        let expect = match &raw.expect_status {
            None => Some(StatusSet(vec![200..=399])),
            Some(raw) => self.status_set(raw, &format!("{key}.expect_status")),
        };
        Some(CheckKind::Http {
            method: method?,
            path: path?,
            host: host?,
            expect: expect?,
        })
    }

    pub(super) fn passive(&mut self, key: &str, raw: Option<&RawPassive>) -> Option<PassiveConfig> {
        let consecutive_failures = match raw.and_then(|r| r.consecutive_failures.as_ref()) {
            None => Some(defaults::CONSECUTIVE_FAILURES),
            Some(n) => self
                .int_in(n, &format!("{key}.consecutive_failures"), 0, 1000)
                .and_then(|n| u32::try_from(n).ok()),
        };
        let ejection_time = self.duration(
            raw.and_then(|r| r.ejection_time.as_ref()),
            &format!("{key}.ejection_time"),
            defaults::EJECTION_TIME,
        );
        let max_ejection_time = self.duration(
            raw.and_then(|r| r.max_ejection_time.as_ref()),
            &format!("{key}.max_ejection_time"),
            defaults::MAX_EJECTION_TIME,
        );
        if let (Some(base), Some(max), Some(at)) = (
            ejection_time,
            max_ejection_time,
            raw.and_then(|r| r.max_ejection_time.as_ref()),
        ) {
            if max < base {
                self.report(
                    at,
                    &format!("{key}.max_ejection_time"),
                    format!("{max:?} is shorter than ejection_time ({base:?})"),
                );
            }
        }
        let max_ejected_percent = match raw.and_then(|r| r.max_ejected_percent.as_ref()) {
            None => Some(defaults::MAX_EJECTED_PERCENT),
            Some(n) => self
                .int_in(n, &format!("{key}.max_ejected_percent"), 0, 100)
                .and_then(|n| u8::try_from(n).ok()),
        };
        let failure_statuses = match raw.and_then(|r| r.failure_statuses.as_ref()) {
            None => Some(StatusSet(vec![502..=504])),
            Some(raw) => self.status_set(raw, &format!("{key}.failure_statuses")),
        };
        Some(PassiveConfig {
            consecutive_failures: consecutive_failures?,
            ejection_time: ejection_time?,
            max_ejection_time: max_ejection_time?,
            max_ejected_percent: max_ejected_percent?,
            failure_statuses: failure_statuses?,
        })
    }

    /// `200`, `"200-399"`, `"200,204,300-302"` or a list of those.
    fn status_set(&mut self, raw: &Spanned<toml::Value>, key: &str) -> Option<StatusSet> {
        let mut ranges = Vec::new();
        let mut parts = Vec::new();
        match raw.get_ref() {
            toml::Value::Array(items) => parts.extend(items.iter()),
            other => parts.push(other),
        }
        for part in parts {
            let text = match part {
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::String(s) => s.clone(),
                _ => String::new(),
            };
            for item in text.split(',').map(str::trim) {
                let (low, high) = item.split_once('-').unwrap_or((item, item));
                match (low.trim().parse::<u16>(), high.trim().parse::<u16>()) {
                    (Ok(low), Ok(high))
                        if (100..=599).contains(&low) && (low..=599).contains(&high) =>
                    {
                        ranges.push(low..=high);
                    }
                    _ => {
                        self.report(
                            raw,
                            key,
                            format!("{item:?} is not a status code or range (e.g. 200, \"200-399\", [200, 204])"),
                        );
                        return None;
                    }
                }
            }
        }
        if ranges.is_empty() {
            self.report(raw, key, "at least one status code is required");
            return None;
        }
        Some(StatusSet(ranges))
    }
}
