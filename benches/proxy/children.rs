//! Child processes: every one registered while it lives, killed and reaped when its guard
//! drops, and killed by PID on Ctrl-C/SIGTERM (when no destructor runs), so an interrupted
//! bench leaves no proxy or backend behind.

use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::Result;

/// PIDs of every live child, for the signal handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Starts `command` (stdin closed) and registers its PID; `name` is for the error.
    pub fn spawn(name: &str, command: &mut Command) -> Result<ChildGuard> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .map_err(|err| format!("cannot start {name} ({command:?}): {err}"))?;
        if let Ok(mut pids) = CHILDREN.lock() {
            pids.push(child.id());
        }
        Ok(ChildGuard { child })
    }

    /// The child's PID, for `/proc` readings.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL now; the process is reaped on drop (so its CPU time does not land in
    /// this process's children's totals mid-measurement).
    pub fn kill_now(&mut self) {
        // Already exited is fine: there is nothing left to kill.
        let _ = self.child.kill();
    }

    /// Asks the process to exit (SIGTERM) and waits up to `grace` for it to; one still
    /// running is killed when dropped. A profile-instrumented fulcrum writes its profile as
    /// it exits, which a SIGKILL would lose.
    pub fn terminate(&mut self, grace: Duration) {
        // Already exited is fine: the wait below returns at once.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while !self.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its stdout, when piped: taken once, by whoever reads what it announces or reports.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Errors mean it already exited; either way it is gone after `wait`.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(mut pids) = CHILDREN.lock() {
            pids.retain(|&pid| pid != self.child.id());
        }
    }
}

/// SIGKILLs every registered child (signal path: the guards' destructors will not run).
pub fn kill_all_children() {
    let pids: Vec<String> = match CHILDREN.lock() {
        Ok(pids) => pids.iter().map(u32::to_string).collect(),
        Err(_) => return,
    };
    if !pids.is_empty() {
        // Best effort on the way out; a failure leaves nothing better to do.
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
    }
}

/// On SIGINT or SIGTERM: kill the children, remove the temp dir, exit 130.
pub fn install_signal_handler(temp: PathBuf) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("\ninterrupted: stopping every child process");
            kill_all_children();
            // The directory may already be gone.
            let _ = std::fs::remove_dir_all(&temp);
            std::process::exit(130);
        });
    });
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        // Leftovers in /tmp are harmless if removal fails.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
