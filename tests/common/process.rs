//! The real `fulcrum` binary as a child process: started on a config file (or by a command the
//! test builds), its log collected, its listeners' and admin's addresses read from its startup
//! line, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::TempDir;

/// A running `fulcrum` process.
pub struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    startup: String,
    _dir: Option<TempDir>,
}

impl Process {
    /// Writes `config` to a fresh directory and starts `binary` (pass
    /// `env!("CARGO_BIN_EXE_fulcrum")`) on it; waits (bounded) for its startup line.
    pub async fn start(binary: &str, config: &str) -> Process {
        let dir = TempDir::new("process");
        let path = dir.path().join("fulcrum.toml");
        std::fs::write(&path, config).expect("write config");
        let mut command = Command::new(binary);
        command.arg("--config").arg(&path);
        let mut process = Process::spawn(command);
        process._dir = Some(dir);
        process.startup = process
            .wait_log("fulcrum started", Duration::from_secs(10))
            .await;
        process
    }

    /// Starts `command` (the binary with its arguments, or a program that execs it) and
    /// collects its log: its stdout, shared by any process it starts (the new process of an
    /// upgrade). Waits for nothing.
    pub fn spawn(mut command: Command) -> Process {
        let mut child = command
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fulcrum");
        let stdout = child.stdout.take().expect("stdout piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // Shown by the test harness only when the test fails.
                    eprintln!("[fulcrum] {line}");
                    super::lock(&log).push(line);
                }
            });
        }
        Process {
            child,
            log,
            startup: String::new(),
            _dir: None,
        }
    }

    /// Waits (blocking, at most 20 s) for the startup line, which [`Process::listener`] and
    /// [`Process::admin`] read.
    pub fn wait_started_blocking(&mut self) {
        self.startup = self.wait_log_blocking("fulcrum started", Duration::from_secs(20));
    }

    /// The process (to wait on it; it is killed on drop).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its PID.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The address of the listener called `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        address_after(&self.startup, &format!("{name} http://"))
            .unwrap_or_else(|| panic!("listener {name} in {:?}", self.startup))
    }

    /// The admin listener's address.
    pub fn admin(&self) -> SocketAddr {
        address_after(&self.startup, "admin=")
            .unwrap_or_else(|| panic!("admin address in {:?}", self.startup))
    }

    /// The log lines so far.
    pub fn lines(&self) -> Vec<String> {
        super::lock(&self.log).clone()
    }

    /// Waits (at most `limit`) for a log line containing `needle`; returns it.
    pub async fn wait_log(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.logged(needle, deadline, limit) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// [`Process::wait_log`] for tests without a runtime.
    pub fn wait_log_blocking(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.logged(needle, deadline, limit) {
                return line;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The first log line containing `needle`, if any; fails the test past `deadline`.
    fn logged(&self, needle: &str, deadline: Instant, limit: Duration) -> Option<String> {
        let found = self.lines().into_iter().find(|line| line.contains(needle));
        assert!(
            found.is_some() || Instant::now() < deadline,
            "no log line containing {needle:?} within {limit:?}:\n{}",
            self.lines().join("\n")
        );
        found
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Killed, not drained: the tests using this check traffic, not shutdown. The result
        // is ignored because the child may already have exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The socket address right after `marker` in `line`.
fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    line.split(marker)
        .nth(1)?
        .split(|c: char| c.is_whitespace() || c == ',' || c == '"')
        .next()?
        .parse()
        .ok()
}

/// The sum of the Prometheus series `name` whose labels include every one of `labels`, in the
/// exposition `text`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
