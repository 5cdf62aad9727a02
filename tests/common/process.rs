//! The real `fulcrum` binary as a child process: started on a config file, its log collected,
//! its listeners' and admin's addresses read from its startup line, killed on drop.

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
    _dir: TempDir,
}

impl Process {
    /// Writes `config` to a fresh directory and starts `binary` (pass
    /// `env!("CARGO_BIN_EXE_fulcrum")`) on it; waits (bounded) for its startup line.
    pub async fn start(binary: &str, config: &str) -> Process {
        let dir = TempDir::new("process");
        let path = dir.path().join("fulcrum.toml");
        std::fs::write(&path, config).expect("write config");
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(&path)
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
        let mut process = Process {
            child,
            log,
            startup: String::new(),
            _dir: dir,
        };
        process.startup = process
            .wait_log("fulcrum started", Duration::from_secs(10))
            .await;
        process
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
            if let Some(line) = self.lines().into_iter().find(|line| line.contains(needle)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line containing {needle:?} within {limit:?}:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
