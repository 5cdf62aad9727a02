//! Results: one contender's runs, the medians over them, and the JSON report written at the
//! end with every run, not only the medians.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::Result;
use crate::contenders::Contender;
use crate::environment::{Environment, target_dir};
use crate::load::{LoadResult, PERCENTILES};
use crate::options::Options;

/// One measured run of one contender.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// What the load generator reported.
    pub load: LoadResult,
    /// Requests (or MiB for TCP, connections for idle-10k) per second.
    pub rate: f64,
    /// The proxy's CPU time per request (MiB, connection); `None` for `direct`.
    pub proxy_cpu_us_per_op: Option<f64>,
    /// The user-space part of `proxy_cpu_us_per_op`.
    pub proxy_user_us_per_op: Option<f64>,
    /// The kernel's part of `proxy_cpu_us_per_op`.
    pub proxy_system_us_per_op: Option<f64>,
    /// The proxy's CPU time as a share of one core; `None` for `direct`.
    pub proxy_core: Option<f64>,
    /// Load generator and backends together, as a share of one core.
    pub client_core: f64,
    /// The proxy's VmHWM at the end of the run.
    pub peak_rss_kib: Option<u64>,
    /// idle-10k only.
    pub idle: Option<IdleRun>,
}

/// What idle-10k measured in one run.
#[derive(Debug, Clone)]
pub struct IdleRun {
    /// VmRSS `IDLE_SETTLE` after the proxy started listening.
    pub rss_idle_kib: u64,
    /// VmRSS the scenario's quiet time after the last connection got its response.
    pub rss_loaded_kib: u64,
    /// VmRSS `IDLE_SETTLE` after every connection was reset: what the proxy keeps.
    pub rss_closed_kib: u64,
    /// Connections that got a complete keep-alive response.
    pub opened: usize,
    /// Connections that did not (connect error, timeout, bad response, out of time).
    pub failed: usize,
    /// Of the opened ones, those still open (not closed or reset by the proxy) when the loaded
    /// RSS was read.
    pub still_open: usize,
    /// fulcrum: connections parked (hyper's buffers released) when the loaded RSS was read.
    pub parked: Option<usize>,
    /// Time to open all of them.
    pub open_seconds: f64,
}

impl IdleRun {
    /// RSS the open connections added, in KiB (negative if the proxy gave memory back).
    fn added_kib(&self) -> f64 {
        self.rss_loaded_kib as f64 - self.rss_idle_kib as f64
    }
}

impl Run {
    /// The run as the report's `runs` entry.
    fn to_json(&self) -> Value {
        json!({
            "requests": self.load.requests,
            "seconds": self.load.seconds,
            "rate": self.rate,
            "latency_us": self.load.latency_us.map(|l| latency_json(l.map(Some))),
            "errors": {
                "connect": self.load.errors_connect,
                "read_write": self.load.errors_io,
                "status": self.load.errors_status,
                "timeout": self.load.errors_timeout,
            },
            "bytes": self.load.bytes,
            "tls": self.load.tls,
            "proxy_cpu_us_per_op": self.proxy_cpu_us_per_op,
            "proxy_user_us_per_op": self.proxy_user_us_per_op,
            "proxy_system_us_per_op": self.proxy_system_us_per_op,
            "proxy_core_share": self.proxy_core,
            "client_core_share": self.client_core,
            "proxy_peak_rss_kib": self.peak_rss_kib,
            "idle": self.idle.as_ref().map(|idle| json!({
                "rss_idle_kib": idle.rss_idle_kib,
                "rss_loaded_kib": idle.rss_loaded_kib,
                "rss_closed_kib": idle.rss_closed_kib,
                "added_kib": idle.added_kib(),
                "connections_opened": idle.opened,
                "connections_failed": idle.failed,
                "connections_still_open": idle.still_open,
                "connections_parked": idle.parked,
                "open_seconds": idle.open_seconds,
            })),
        })
    }
}

/// Latency percentiles as `{"p50": …, "p99": …, "p99.9": …, "p99.99": …}`, null where unknown.
fn latency_json(latency: [Option<f64>; 4]) -> Value {
    let mut object = serde_json::Map::new();
    for ((_, name), value) in PERCENTILES.iter().zip(latency) {
        object.insert((*name).to_owned(), json!(value.filter(|v| !v.is_nan())));
    }
    Value::Object(object)
}

/// A contender's runs in one scenario, or why it did not run.
#[derive(Debug)]
pub struct ContenderReport {
    /// Who ran.
    pub contender: Contender,
    /// The runs that completed.
    pub runs: Vec<Run>,
    /// The errors of those that did not.
    pub failures: Vec<String>,
    /// Why the contender did not run at all.
    pub skipped: Option<String>,
}

/// One scenario's results, contenders in table order.
#[derive(Debug)]
pub struct ScenarioReport {
    /// The scenario's name.
    pub name: &'static str,
    /// The scenario's one-line description.
    pub about: &'static str,
    /// What `rate` counts: `req/s`, `MiB/s` or `conn/s`.
    pub unit: &'static str,
    /// Why the whole scenario did not run.
    pub skipped: Option<String>,
    /// Every chosen contender, run or not.
    pub contenders: Vec<ContenderReport>,
}

/// The median (mean of the middle two for an even count); `None` for no values.
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Medians over the runs of one contender: `Run`'s figures (`rss`: peak RSS in KiB, `cpu`: µs
/// per request), and errors of every kind together.
#[derive(Debug, Default)]
pub struct Summary {
    pub rate: Option<f64>,
    /// At `PERCENTILES`.
    pub latency: [Option<f64>; 4],
    pub errors: Option<f64>,
    pub cpu: Option<f64>,
    pub cpu_user: Option<f64>,
    pub cpu_system: Option<f64>,
    pub proxy_core: Option<f64>,
    pub client_core: Option<f64>,
    pub rss: Option<f64>,
    pub idle: Option<IdleSummary>,
}

/// Idle-scenario medians of `IdleRun`'s figures, `added_kib` included.
#[derive(Debug)]
pub struct IdleSummary {
    pub rss_idle_kib: f64,
    pub rss_loaded_kib: f64,
    pub rss_closed_kib: f64,
    pub added_kib: f64,
    pub opened: f64,
    pub failed: f64,
    pub still_open: f64,
    pub parked: Option<f64>,
    pub open_seconds: f64,
}

impl IdleSummary {
    /// The memory one opened connection added, in KiB.
    pub fn per_conn_kib(&self) -> f64 {
        self.added_kib / self.opened.max(1.0)
    }
}

impl ContenderReport {
    /// Medians over the runs.
    pub fn summary(&self) -> Summary {
        let of = |f: &dyn Fn(&Run) -> Option<f64>| median(self.runs.iter().filter_map(f).collect());
        Summary {
            rate: of(&|run| Some(run.rate)),
            latency: [0, 1, 2, 3].map(|i| of(&|run| run.load.latency_us.map(|l| l[i]))),
            errors: of(&|run| Some(run.load.errors() as f64)),
            cpu: of(&|run| run.proxy_cpu_us_per_op),
            cpu_user: of(&|run| run.proxy_user_us_per_op),
            cpu_system: of(&|run| run.proxy_system_us_per_op),
            proxy_core: of(&|run| run.proxy_core),
            client_core: of(&|run| Some(run.client_core)),
            rss: of(&|run| run.peak_rss_kib.map(|kib| kib as f64)),
            idle: self.idle_summary(),
        }
    }

    /// idle-10k medians; `None` without idle runs.
    fn idle_summary(&self) -> Option<IdleSummary> {
        let idle: Vec<&IdleRun> = self
            .runs
            .iter()
            .filter_map(|run| run.idle.as_ref())
            .collect();
        let of = |f: &dyn Fn(&IdleRun) -> f64| median(idle.iter().map(|run| f(run)).collect());
        Some(IdleSummary {
            rss_idle_kib: of(&|run| run.rss_idle_kib as f64)?,
            rss_loaded_kib: of(&|run| run.rss_loaded_kib as f64)?,
            rss_closed_kib: of(&|run| run.rss_closed_kib as f64)?,
            added_kib: of(&IdleRun::added_kib)?,
            opened: of(&|run| run.opened as f64)?,
            failed: of(&|run| run.failed as f64)?,
            still_open: of(&|run| run.still_open as f64)?,
            parked: median(
                idle.iter()
                    .filter_map(|run| run.parked)
                    .map(|n| n as f64)
                    .collect(),
            ),
            open_seconds: of(&|run| run.open_seconds)?,
        })
    }

    /// The contender as the report's entry: medians and every run.
    fn to_json(&self) -> Value {
        let summary = self.summary();
        json!({
            "contender": self.contender.name(),
            "skipped": self.skipped,
            "failures": self.failures,
            "median": {
                "rate": summary.rate,
                "latency_us": latency_json(summary.latency),
                "errors": summary.errors,
                "proxy_cpu_us_per_op": summary.cpu,
                "proxy_user_us_per_op": summary.cpu_user,
                "proxy_system_us_per_op": summary.cpu_system,
                "proxy_core_share": summary.proxy_core,
                "client_core_share": summary.client_core,
                "proxy_peak_rss_kib": summary.rss,
                "idle": summary.idle.as_ref().map(|idle| json!({
                    "rss_idle_kib": idle.rss_idle_kib,
                    "rss_loaded_kib": idle.rss_loaded_kib,
                    "rss_closed_kib": idle.rss_closed_kib,
                    "added_kib": idle.added_kib,
                    "connections_opened": idle.opened,
                    "connections_failed": idle.failed,
                    "connections_still_open": idle.still_open,
                    "connections_parked": idle.parked,
                    "open_seconds": idle.open_seconds,
                })),
            },
            "runs": self.runs.iter().map(Run::to_json).collect::<Vec<_>>(),
        })
    }
}

impl ScenarioReport {
    /// The scenario as the report's `scenarios` entry.
    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "about": self.about,
            "rate_unit": self.unit,
            "skipped": self.skipped,
            "contenders": self.contenders.iter().map(ContenderReport::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Writes the JSON report (machine, commit, command, options, binaries, every scenario) to
/// `--json` or `target/bench/proxy-<UTC time>.json`, and the HTML report drawn from it next to
/// it (same name, `.html`); returns both paths.
pub fn write_reports(
    env: &Environment,
    options: &Options,
    args: &[String],
    started: u64,
    reports: &[ScenarioReport],
) -> Result<(PathBuf, PathBuf)> {
    let given: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|arg| *arg != "--bench")
        .collect();
    let command = match given.is_empty() {
        true => "cargo bench --bench proxy".to_owned(),
        false => format!("cargo bench --bench proxy -- {}", given.join(" ")),
    };
    let json = json!({
        "started_unix": started,
        "started_utc": readable_time(&timestamp(started)),
        "commit": commit(),
        "command": command,
        "machine": {
            "cores": env.cores,
            "cpu": first_line_after("/proc/cpuinfo", "model name"),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|text| text.trim().to_owned()),
            "pinned": env.pin,
            "load_generator": if env.wrk.is_some() { "wrk" } else { "built-in" },
            "clock_ticks_per_second": env.ticks,
        },
        "options": {
            "rounds": options.rounds,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "quick": options.quick,
        },
        "binaries": {
            "fulcrum": env.fulcrum.display().to_string(),
            "nginx": env.nginx.as_ref().map(|p| p.display().to_string()),
            "haproxy": env.haproxy.as_ref().map(|p| p.display().to_string()),
            "wrk": env.wrk.as_ref().map(|p| p.display().to_string()),
            "h2load": env.h2load.as_ref().map(|p| p.display().to_string()),
        },
        "scenarios": reports.iter().map(ScenarioReport::to_json).collect::<Vec<_>>(),
    });
    let path = options.json.clone().unwrap_or_else(|| {
        target_dir()
            .join("bench")
            .join(format!("proxy-{}.json", timestamp(started)))
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    let html = path.with_extension("html");
    std::fs::write(&html, crate::html::render(&json))?;
    Ok((path, html))
}

/// The measured source: `git describe --always --dirty` in the package's directory, if git
/// knows it.
fn commit() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// The value of the first `key : value` line of `path` (as in `/proc/cpuinfo`).
fn first_line_after(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|line| line.starts_with(key))
        .and_then(|line| line.split_once(':'))
        .map(|(_, value)| value.trim().to_owned())
}

/// `YYYY-MM-DD HH:MM:SS` from `timestamp`'s `YYYYMMDD-HHMMSS`.
fn readable_time(stamp: &str) -> String {
    let part = |range: std::ops::Range<usize>| stamp.get(range).unwrap_or("?");
    format!(
        "{}-{}-{} {}:{}:{}",
        part(0..4),
        part(4..6),
        part(6..8),
        part(9..11),
        part(11..13),
        part(13..15)
    )
}

/// `YYYYMMDD-HHMMSS` (UTC) for a Unix time.
fn timestamp(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let seconds = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}
