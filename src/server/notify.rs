//! Telling whoever started fulcrum how it is doing: the service manager (systemd's `sd_notify`
//! protocol, when `NOTIFY_SOCKET` is set: READY, RELOADING, STOPPING and watchdog keep-alives),
//! the old process of a binary upgrade (`upgrade.rs`), and the PID file.
//!
//! Every message is best effort: a manager that went away must not stop a load balancer.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Names the abstract socket of the old process, in the new process's environment.
pub(crate) const UPGRADE_NOTIFY_ENV: &str = "FULCRUM_UPGRADE_NOTIFY";

/// What the new process sends the old one once it serves.
pub(crate) const READY: &[u8] = b"READY=1";

/// Sends `states` to the service manager, if there is one.
fn manager(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot notify the service manager");
    }
}

/// Listeners serve: tells the service manager (with this PID as its main one, which after an
/// upgrade is news to it) and the old process of an upgrade, and writes the PID file.
pub(crate) fn ready(pid_file: Option<&Path>) {
    if let Some(path) = pid_file {
        write_pid_file(path);
    }
    if let Some(name) = std::env::var_os(UPGRADE_NOTIFY_ENV) {
        let sent = UnixAddr::from_abstract_name(name.as_encoded_bytes())
            .and_then(|address| UnixDatagram::unbound()?.send_to_addr(READY, &address));
        if let Err(err) = sent {
            tracing::warn!(error = %err, "cannot tell the old process that this one serves");
        }
    }
    manager(&[NotifyState::MainPid(std::process::id()), NotifyState::Ready]);
}

/// A reload starts (`RELOADING=1`, with the monotonic time systemd's `notify-reload` wants).
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => manager(&[NotifyState::Reloading, now]),
        Err(_) => manager(&[NotifyState::Reloading]),
    }
}

/// A reload ended, applied or not: fulcrum serves as before.
pub(crate) fn reloaded() {
    manager(&[NotifyState::Ready]);
}

/// Draining for shutdown (not after an upgrade's hand-over: the service goes on).
pub(crate) fn stopping() {
    manager(&[NotifyState::Stopping]);
}

/// Sends watchdog keep-alives at half the manager's `WatchdogSec` until `stop`, when it asks
/// for them. They come from the runtime's own timer, so a wedged runtime stops sending them.
pub(crate) fn watchdog(stop: CancellationToken) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (timeout / 2).max(Duration::from_millis(10));
    tracing::info!(every = ?period, "sending systemd watchdog keep-alives");
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => manager(&[NotifyState::Watchdog]),
            }
        }
    });
}

/// Writes this process's PID to `path` (replacing an old process's after an upgrade).
fn write_pid_file(path: &Path) {
    let written = std::fs::write(path, format!("{}\n", std::process::id()));
    match written {
        Ok(()) => tracing::debug!(pid_file = %path.display(), "PID file written"),
        Err(err) => {
            tracing::warn!(pid_file = %path.display(), error = %err, "cannot write the PID file");
        }
    }
}

/// Removes the PID file at exit if it still names this process (after an upgrade it names the
/// new one, which must keep it).
pub(crate) fn remove_pid_file(path: Option<&PathBuf>) {
    let Some(path) = path else {
        return;
    };
    let ours = std::fs::read_to_string(path)
        .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}
