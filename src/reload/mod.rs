//! Live reconfiguration triggers: the config file changing on disk, SIGHUP (wired in `main`),
//! and `POST /reload` on the admin listener. All of them send a [`ReloadRequest`] to the one
//! task that applies reloads (see `server`), so reloads never run concurrently; that task runs
//! the [`transaction`]. DNS discovery's changed sets take the same swap (`discovery`).

mod discovery;
pub mod transaction;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};

use crate::config::ConfigError;
use crate::tls::TlsError;

/// Bursts of file events closer together than this are one change.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The file (or its directory) changed on disk; ignored if the content is the same.
    FileChanged,
    /// SIGHUP or `POST /reload`: reload even if the content is the same (re-resolves names).
    Requested,
    /// A TLS certificate or key file changed: re-read them, keep the config.
    Certificates,
    /// The admin token file changed: re-read it, keep the config.
    AdminToken,
}

impl Trigger {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChanged => "file",
            Trigger::Requested => "request",
            Trigger::Certificates => "certificates",
            Trigger::AdminToken => "admin_token",
        }
    }
}

/// The result of one reload attempt.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    /// The new config is live; one line per change.
    Applied(Vec<String>),
    /// The file content did not change; nothing was done.
    Unchanged,
    /// The new config was rejected; the old one keeps serving. Shared: the outcome goes to
    /// the requester, the admin API and the log.
    Rejected(Arc<ReloadError>),
    /// This server was not started from a file, so there is nothing to reload.
    NoFile,
}

impl fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadOutcome::Applied(changes) if changes.is_empty() => {
                f.write_str("applied (no changes)")
            }
            ReloadOutcome::Applied(changes) => write!(f, "applied: {}", changes.join("; ")),
            ReloadOutcome::Unchanged => f.write_str("unchanged"),
            ReloadOutcome::Rejected(error) => write!(f, "rejected: {error}"),
            ReloadOutcome::NoFile => f.write_str("no config file to reload"),
        }
    }
}

/// Why a reload was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config file could not be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The new config is invalid (the error names file, line, column and key).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The parser task died (a bug, not a config problem).
    #[error("config parser failed: {0}")]
    Parser(#[source] tokio::task::JoinError),
    /// A new listener's address could not be bound.
    #[error("cannot bind listener {listener} on {address}: {source}")]
    Bind {
        /// The listener.
        listener: Arc<str>,
        /// Its address.
        address: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The new admin address could not be bound.
    #[error("cannot bind admin listener on {address}: {source}")]
    BindAdmin {
        /// Its address.
        address: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The admin token file could not be read; the current token stays.
    #[error("admin token: {0}; keeping the current token")]
    AdminToken(#[source] crate::config::TokenError),
    /// Some listeners' certificate files could not be loaded; those listeners keep their
    /// current certificates.
    #[error("{}", certificate_failures(.0))]
    Certificates(Vec<(Arc<str>, TlsError)>),
}

/// `listener NAME: ERROR; keeping the current certificates`, for each failure.
fn certificate_failures(failures: &[(Arc<str>, TlsError)]) -> String {
    failures
        .iter()
        .map(|(listener, err)| {
            format!("listener {listener}: {err}; keeping the current certificates")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A request to the reload task, with an optional way to hear back.
#[derive(Debug)]
pub struct ReloadRequest {
    /// Why.
    pub trigger: Trigger,
    /// Receives the outcome, if the requester waits for it.
    pub reply: Option<oneshot::Sender<ReloadOutcome>>,
}

/// Asks the running server to reload its config file. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<ReloadRequest>,
}

impl ReloadHandle {
    pub(crate) fn new(tx: mpsc::Sender<ReloadRequest>) -> Self {
        Self { tx }
    }

    /// Reloads and waits for the outcome. `None` if the server is shutting down.
    pub async fn reload(&self) -> Option<ReloadOutcome> {
        let (reply, outcome) = oneshot::channel();
        let request = ReloadRequest {
            trigger: Trigger::Requested,
            reply: Some(reply),
        };
        self.tx.send(request).await.ok()?;
        outcome.await.ok()
    }

    /// Asks for a reload without waiting (for signal handlers and file events).
    pub fn trigger(&self, trigger: Trigger) {
        // A full queue already holds a pending reload, which will read the newest file.
        let _ = self.tx.try_send(ReloadRequest {
            trigger,
            reply: None,
        });
    }
}

/// Why the file watcher could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}: {source}", path.display())]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// Watches the directories holding `files` and sends `trigger` (debounced) whenever anything
/// in them changes. Watching directories, not files, catches editors that write a new file and
/// rename it over the old one, and Kubernetes ConfigMap and Secret mounts, where the file is a
/// symlink into a directory that is swapped atomically. When a file is a symlink into another
/// directory, that directory is watched too. Keep the returned watcher alive to keep watching.
pub fn watch(
    files: &[&Path],
    handle: ReloadHandle,
    trigger: Trigger,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let parent = |path: &Path| {
        path.parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned()
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    // Canonical forms of `dirs`, so one directory reached by two paths is watched once.
    let mut seen: Vec<PathBuf> = Vec::new();
    for file in files {
        let dir = parent(file);
        let target = std::fs::canonicalize(file)
            .ok()
            .map(|target| parent(&target));
        for dir in std::iter::once(dir).chain(target) {
            let canonical = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
            if !seen.contains(&canonical) {
                seen.push(canonical);
                dirs.push(dir);
            }
        }
    }
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(event) => !event.kind.is_access(),
            Err(_) => true,
        };
        if relevant {
            // The receiver only goes away when the server stops.
            let _ = events_tx.send(());
        }
    })
    .map_err(|source| WatchError {
        path: dirs.first().cloned().unwrap_or_default(),
        source,
    })?;
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                path: dir.clone(),
                source,
            })?;
        match trigger {
            Trigger::Certificates => {
                tracing::info!(dir = %dir.display(), "watching certificate directory for changes");
            }
            Trigger::AdminToken => {
                tracing::info!(dir = %dir.display(), "watching admin token directory for changes");
            }
            _ => tracing::info!(dir = %dir.display(), "watching config directory for changes"),
        }
    }
    tokio::spawn(async move {
        while events_rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while events_rx.try_recv().is_ok() {}
            handle.trigger(trigger);
        }
    });
    Ok(watcher)
}
