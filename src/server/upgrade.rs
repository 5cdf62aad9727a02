//! Zero-downtime binary upgrade. On `SIGUSR2` the running process starts the binary at its own
//! path with its own arguments and hands it every listening socket (a duplicate descriptor, so
//! nothing is re-bound and no connection is refused); while the new process loads its config,
//! runs its first health checks and starts serving, both accept on the same sockets. Once the
//! new process says it serves (a datagram on an abstract Unix socket named in its
//! environment), the old one stops accepting (connections queued on the shared sockets stay
//! there for the new one), serves its open connections as before for a moment (so one it
//! accepted just before its first request arrived gets it answered), then drains within
//! `shutdown_timeout` and exits. If the new process exits first, or does not serve in time, the
//! old one keeps serving and says why.

use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::SocketAddr as UnixAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use tokio::net::UnixDatagram;

use super::notify::{READY, UPGRADE_NOTIFY_ENV};

/// How long the new process may take to serve: its config, TLS files and first health checks.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A listening socket to hand over, and the listener it belongs to.
#[derive(Debug)]
pub(crate) struct Handoff {
    pub(crate) name: Arc<str>,
    pub(crate) fd: OwnedFd,
}

/// Why an upgrade did not happen; the old process keeps serving.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    /// This process's binary cannot be found.
    #[error("cannot find this process's binary: {0}")]
    Binary(#[source] std::io::Error),
    /// The handover could not be prepared.
    #[error("cannot prepare the handover: {0}")]
    Setup(#[source] std::io::Error),
    /// The new process could not be started.
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The new process ended before it served (its own log says why: a broken config, a port).
    #[error("the new process exited before serving ({0})")]
    Exited(ExitStatus),
    /// The new process did not say it serves in time; it was stopped.
    #[error("the new process did not serve within {0:?} and was stopped")]
    Timeout(Duration),
}

/// The binary this process runs, at its path (which an upgrade replaced: `/proc/self/exe`
/// then reads "… (deleted)").
fn binary() -> std::io::Result<PathBuf> {
    let path = std::env::current_exe()?;
    let text = path.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(original) => PathBuf::from(original),
        None => path,
    })
}

/// Starts the new process with `sockets` and waits until it serves; returns its PID.
pub(crate) async fn upgrade(sockets: Vec<Handoff>) -> Result<u32, UpgradeError> {
    let path = binary().map_err(UpgradeError::Binary)?;
    let name = format!(
        "fulcrum-upgrade-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    );
    let address = UnixAddr::from_abstract_name(name.as_bytes()).map_err(UpgradeError::Setup)?;
    let notify = std::os::unix::net::UnixDatagram::bind_addr(&address)
        .and_then(|socket| {
            socket.set_nonblocking(true)?;
            UnixDatagram::from_std(socket)
        })
        .map_err(UpgradeError::Setup)?;
    let names: Vec<&str> = sockets.iter().map(|socket| &*socket.name).collect();
    let names = names.join(":");
    let count = sockets.len();
    let mappings = sockets
        .into_iter()
        .zip(3..)
        .map(|(socket, child_fd)| FdMapping {
            parent_fd: socket.fd,
            child_fd,
        })
        .collect();
    let mut command = std::process::Command::new(&path);
    command
        .args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", count.to_string())
        .env("LISTEN_FDNAMES", names)
        .env_remove("LISTEN_PID")
        .env(UPGRADE_NOTIFY_ENV, &name);
    command
        .fd_mappings(mappings)
        .map_err(|err| UpgradeError::Setup(std::io::Error::other(err)))?;
    let mut child = tokio::process::Command::from(command)
        .spawn()
        .map_err(|source| UpgradeError::Spawn {
            path: path.clone(),
            source,
        })?;
    let pid = child.id().unwrap_or_default();
    tracing::info!(binary = %path.display(), pid, "upgrade: new process started; waiting until it serves");
    let mut message = [0u8; 64];
    let outcome = tokio::time::timeout(READY_TIMEOUT, async {
        loop {
            tokio::select! {
                received = notify.recv(&mut message) => {
                    if received.is_ok_and(|len| message[..len].starts_with(READY)) {
                        return Ok(pid);
                    }
                }
                status = child.wait() => {
                    return Err(match status {
                        Ok(status) => UpgradeError::Exited(status),
                        Err(err) => UpgradeError::Setup(err),
                    });
                }
            }
        }
    })
    .await;
    match outcome {
        Ok(outcome) => outcome,
        Err(_) => {
            let _ = child.start_kill();
            Err(UpgradeError::Timeout(READY_TIMEOUT))
        }
    }
}
