//! CPU time and memory from `/proc`: the proxy's own ticks, the backends' and the reaped load
//! generators', resident set sizes, and the open-files limit idle-10k needs raised.

use std::process::{Command, Stdio};

/// Clock ticks per second for /proc/PID/stat times.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `(utime, stime, cutime + cstime)` of `pid` in clock ticks.
fn cpu_ticks(pid: &str) -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|field| field.parse().ok())
        .collect();
    match fields[..] {
        [utime, stime, cutime, cstime] => Some((utime, stime, cutime + cstime)),
        _ => None,
    }
}

/// `pid`'s own user+system CPU time in clock ticks (0 once it is gone).
pub fn own_ticks(pid: u32) -> u64 {
    let (user, system) = user_system_ticks(pid);
    user + system
}

/// `pid`'s own CPU time in clock ticks, `(user, system)` (zeros once it is gone).
pub fn user_system_ticks(pid: u32) -> (u64, u64) {
    cpu_ticks(&pid.to_string()).map_or((0, 0), |(user, system, _)| (user, system))
}

/// CPU time of this process's waited-for children so far (the load generators).
pub fn reaped_children_ticks() -> u64 {
    cpu_ticks("self").map_or(0, |(_, _, children)| children)
}

/// Peak resident set size (VmHWM) of `pid` in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Current resident set size (VmRSS) of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/PID/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// This process's `(soft, hard)` limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let value = |field: &str| match field {
        "unlimited" => Some(u64::MAX),
        number => number.parse().ok(),
    };
    let mut fields = line["Max open files".len()..].split_whitespace();
    Some((value(fields.next()?)?, value(fields.next()?)?))
}

/// Raises this process's soft open-files limit to its hard limit (children started later
/// inherit it) and returns the soft limit now in force. Uses `prlimit(1)` because the crate
/// forbids the `unsafe` a direct `setrlimit(2)` would need.
pub fn raise_open_files_limit() -> Option<u64> {
    let (soft, hard) = open_files_limit()?;
    if soft < hard {
        // A missing prlimit leaves the limit as it was; the caller checks the result.
        let _ = Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    open_files_limit().map(|(soft, _)| soft)
}
