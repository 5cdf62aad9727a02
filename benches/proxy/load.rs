//! Load generation and latency measurement: starting wrk, h2load or a built-in generator
//! against a target, and reading what each reports (requests, errors, latency percentiles,
//! bytes) into one `LoadResult`.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::Result;
use crate::children::ChildGuard;
use crate::environment::Environment;
use crate::scenarios::{H2_STREAMS, Scenario, Traffic};

/// Totals of one load run, in the format the wrk script prints.
#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    /// Requests completed (idle-10k: connections opened).
    pub requests: u64,
    /// The measured time as the generator saw it.
    pub seconds: f64,
    /// Connections that could not be opened.
    pub errors_connect: u64,
    /// Reads or writes that failed.
    pub errors_io: u64,
    /// Responses with an error status.
    pub errors_status: u64,
    /// Requests that got no answer in time.
    pub errors_timeout: u64,
    /// Latency percentiles in microseconds, at `PERCENTILES` (NaN where the generator gave
    /// none).
    pub latency_us: Option<[f64; 4]>,
    /// TCP runs: bytes sent.
    pub bytes: u64,
    /// TLS version and cipher suite, where the generator says (h2load does, wrk does not).
    pub tls: Option<String>,
}

impl LoadResult {
    /// Every kind of error together, as the tables show them.
    pub fn errors(&self) -> u64 {
        self.errors_connect + self.errors_io + self.errors_status + self.errors_timeout
    }
}

/// The latency percentiles every HTTP run reports, and their names in the tables and report.
pub const PERCENTILES: [(f64, &str); 4] = [
    (50.0, "p50"),
    (99.0, "p99"),
    (99.9, "p99.9"),
    (99.99, "p99.99"),
];

/// The line both wrk (through `report.lua`) and the built-in generator print.
pub const REPORT_TAG: &str = "FULCRUM_BENCH";

/// wrk's `done` hook: one machine-readable line incl. p99.9 and p99.99, which `--latency` does
/// not show (wrk's histogram has 1 µs buckets).
const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  io.write(string.format("FULCRUM_BENCH %d %d %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, summary.errors.connect,
    summary.errors.read + summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency:percentile(99.99), 0))
end
"#;

/// Where `WRK_SCRIPT` is written in the bench's temporary directory.
const WRK_SCRIPT_FILE: &str = "report.lua";

/// Writes `WRK_SCRIPT` for wrk's `-s`, once per bench run.
pub fn write_wrk_script(temp: &Path) -> Result<()> {
    std::fs::write(temp.join(WRK_SCRIPT_FILE), WRK_SCRIPT)?;
    Ok(())
}

/// The `REPORT_TAG` line of wrk's script or a built-in generator.
fn parse_report(output: &str) -> Option<LoadResult> {
    let line = output.lines().find(|line| line.starts_with(REPORT_TAG))?;
    let numbers: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let &[
        requests,
        micros,
        connect,
        io,
        status,
        timeout,
        p50,
        p99,
        p999,
        p9999,
        bytes,
    ] = &numbers[..]
    else {
        return None;
    };
    Some(LoadResult {
        requests: requests as u64,
        seconds: micros / 1e6,
        errors_connect: connect as u64,
        errors_io: io as u64,
        errors_status: status as u64,
        errors_timeout: timeout as u64,
        latency_us: (requests > 0.0).then_some([p50, p99, p999, p9999]),
        bytes: bytes as u64,
        tls: None,
    })
}

/// wrk's `--latency` table, used when the script line carries no latencies: (p50, p99) in µs.
fn parse_wrk_distribution(output: &str) -> Option<(f64, f64)> {
    let mut p50 = None;
    let mut p99 = None;
    for line in output.lines() {
        let mut fields = line.split_whitespace();
        let (Some(percent), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        let micros = parse_wrk_duration(value);
        match percent {
            "50%" => p50 = micros,
            "99%" => p99 = micros,
            _ => {}
        }
    }
    Some((p50?, p99?))
}

/// A duration as wrk and h2load print it (`870us`, `1.25ms`, `2.01s`, `1m`), in µs.
fn parse_wrk_duration(text: &str) -> Option<f64> {
    for (suffix, scale) in [("us", 1.0), ("ms", 1e3), ("m", 60e6), ("s", 1e6)] {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * scale);
        }
    }
    None
}

/// h2load's summary plus the latencies from its `--log-file`, which has one line per request:
/// start time (µs since the epoch), status (-1 when the stream failed), µs until the end of the
/// response. h2load itself prints only min/max/mean/sd.
fn parse_h2load(output: &str, log: &Path) -> Result<LoadResult> {
    let line_after = |prefix: &str| {
        output
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let protocol = line_after("Application protocol:").unwrap_or("none");
    if !protocol.starts_with("h2") {
        return Err(format!("h2load did not get HTTP/2 (protocol: {protocol}): {output:?}").into());
    }
    let seconds = line_after("finished in")
        .and_then(|rest| rest.split(',').next())
        .and_then(parse_wrk_duration)
        .ok_or_else(|| format!("h2load printed no duration: {output:?}"))?
        / 1e6;
    // "requests: 9 total, 9 started, 9 done, 8 succeeded, 1 failed, 1 errored, 0 timeout"
    let requests = line_after("requests:")
        .ok_or_else(|| format!("h2load printed no request counts: {output:?}"))?;
    let count = |label: &str| -> Result<u64> {
        requests
            .split(',')
            .find_map(|field| field.trim().strip_suffix(label)?.trim().parse().ok())
            .ok_or_else(|| format!("h2load's request line has no {label:?}: {requests:?}").into())
    };
    let (done, failed, errored, timeout) = (
        count("done")?,
        count("failed")?,
        count("errored")?,
        count("timeout")?,
    );
    let log = std::fs::read_to_string(log)
        .map_err(|err| format!("cannot read h2load's log {}: {err}", log.display()))?;
    let mut latencies: Vec<u32> = log
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let status: i32 = fields.nth(1)?.parse().ok()?;
            (status > 0).then(|| fields.next()?.parse().ok())?
        })
        .collect();
    latencies.sort_unstable();
    Ok(LoadResult {
        requests: done,
        seconds,
        errors_connect: 0,
        // Timed-out streams count as errored, and errored ones as failed.
        errors_io: errored.saturating_sub(timeout),
        errors_status: failed.saturating_sub(errored),
        errors_timeout: timeout,
        latency_us: (!latencies.is_empty()).then(|| latency_percentiles(&latencies)),
        bytes: 0,
        tls: line_after("TLS Protocol:")
            .zip(line_after("Cipher:"))
            .map(|(version, cipher)| format!("{version} {cipher}")),
    })
}

/// The `p`th percentile of sorted samples, nearest rank (0 for none).
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `PERCENTILES` of sorted latency samples.
pub fn latency_percentiles(sorted: &[u32]) -> [f64; 4] {
    PERCENTILES.map(|(p, _)| percentile(sorted, p))
}

/// A running load generator.
pub struct Load {
    guard: ChildGuard,
    /// h2load: its per-request log (latencies), read once it has finished.
    h2load_log: Option<PathBuf>,
}

/// Starts the load generator against `addr` for `seconds`.
pub fn start_load(
    env: &Environment,
    scenario: &Scenario,
    addr: SocketAddr,
    seconds: u64,
) -> Result<Load> {
    let scheme = if scenario.tls { "https" } else { "http" };
    let mut h2load_log = None;
    let mut command = match (&env.wrk, scenario.traffic) {
        (_, Traffic::Idle(_)) => return Err("idle scenarios have no load generator".into()),
        (_, Traffic::Http2) => {
            let h2load = env.h2load.as_deref().ok_or("h2load not installed")?;
            let log = env.temp.join("h2load.log");
            // A leftover from an earlier run must not be read as this one's.
            let _ = std::fs::remove_file(&log);
            let mut command = env.command(0, h2load);
            command
                .arg("-t1")
                .arg(format!("-c{}", scenario.connections))
                .arg(format!("-m{H2_STREAMS}"))
                .arg(format!("-D{seconds}"))
                // Like wrk's --timeout 2s: a connection silent for 2 s is given up.
                .arg("-N2")
                .arg(format!("--log-file={}", log.display()))
                .arg(format!("{scheme}://{addr}/"));
            h2load_log = Some(log);
            command
        }
        (_, Traffic::Tcp) => {
            let mut command = env.command(0, &env.me);
            command
                .arg("--tcp-load")
                .arg(addr.to_string())
                .arg(scenario.connections.to_string())
                .arg(seconds.to_string());
            command
        }
        (Some(wrk), _) => {
            let mut command = env.command(0, wrk);
            command
                .arg("-t1")
                .arg(format!("-c{}", scenario.connections))
                .arg(format!("-d{seconds}s"))
                .args(["--timeout", "2s", "--latency", "-s"])
                .arg(env.temp.join(WRK_SCRIPT_FILE));
            if scenario.close {
                command.args(["-H", "Connection: close"]);
            }
            command.arg(format!("{scheme}://{addr}/"));
            command
        }
        (None, _) => {
            let mut command = env.command(0, &env.me);
            command
                .arg("--http-load")
                .arg(addr.to_string())
                .arg(scenario.connections.to_string())
                .arg(seconds.to_string())
                .arg(if scenario.close { "1" } else { "0" });
            command
        }
    };
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    let guard = ChildGuard::spawn("load generator", &mut command)?;
    Ok(Load { guard, h2load_log })
}

/// Waits for the load generator and parses its report.
pub fn finish_load(load: Load, seconds: u64) -> Result<LoadResult> {
    let Load {
        guard: mut load,
        h2load_log,
    } = load;
    let mut output = String::new();
    if let Some(mut stdout) = load.take_stdout() {
        // Reads until the generator exits (it closes stdout); bounded by its own duration.
        stdout.read_to_string(&mut output)?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds + 10);
    while !load.exited() {
        if Instant::now() > deadline {
            return Err("load generator did not finish in time".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(log) = h2load_log {
        return parse_h2load(&output, &log);
    }
    let mut result = parse_report(&output)
        .ok_or_else(|| format!("load generator printed no report: {output:?}"))?;
    if result.latency_us.is_none() {
        if let Some((p50, p99)) = parse_wrk_distribution(&output) {
            result.latency_us = Some([p50, p99, f64::NAN, f64::NAN]);
        }
    }
    Ok(result)
}
