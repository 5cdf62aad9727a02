//! Binding every socket, serving, applying reloads, and draining on shutdown.
//!
//! [`Server::bind`] binds all listeners up front (so a bad address fails start-up before
//! anything serves, and tests can read the ports chosen for `:0`); [`Server::run`] serves until
//! the given shutdown future completes, applying reloads one at a time in between, then stops
//! accepting and waits for open connections up to `runtime.shutdown_timeout`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminState;
use crate::config::{Config, ListenerConfig};
use crate::health::{self, checker::Supervisor};
use crate::reload::{self, ReloadHandle, ReloadRequest, Trigger};
use crate::snapshot::{SharedState, Snapshot};
use inherit::Inherited;
use runtime::Runtime;

pub mod accept;
mod inherit;
mod notify;
pub mod runtime;
mod upgrade;

/// How often idle upstream connections are checked against their pool's `idle_timeout`.
const IDLE_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener's TLS certificates could not be loaded.
    #[error("listener {name}: {source}")]
    Tls {
        /// Listener name.
        name: Arc<str>,
        /// What was wrong.
        #[source]
        source: crate::tls::TlsError,
    },
    /// A listener's address could not be bound.
    #[error("cannot bind listener {name} on {address}: {source}")]
    Bind {
        /// Listener name (`admin` for the admin listener).
        name: Arc<str>,
        /// The configured address.
        address: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet running, load balancer.
#[derive(Debug)]
pub struct Server {
    config: Arc<Config>,
    state: SharedState,
    listeners: Vec<(ListenerConfig, TcpListener)>,
    admin: Option<TcpListener>,
    exporter: Option<&'static PrometheusHandle>,
    file: Option<(PathBuf, String)>,
    reload_tx: mpsc::Sender<ReloadRequest>,
    reload_rx: mpsc::Receiver<ReloadRequest>,
    upgrade_tx: mpsc::Sender<()>,
    upgrade_rx: mpsc::Receiver<()>,
    /// ACME certificates, challenges and the certificate book, shared with every listener.
    acme: Arc<crate::acme::Shared>,
}

/// Asks a running server to upgrade: start the binary at its path and hand over (`SIGUSR2`).
#[derive(Debug, Clone)]
pub struct UpgradeHandle(mpsc::Sender<()>);

impl UpgradeHandle {
    /// Requests an upgrade; one already under way makes this one a no-op.
    pub fn request(&self) {
        let _ = self.0.try_send(());
    }
}

impl Server {
    /// Builds the runtime state for `config` and binds every listener.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        // The recorder must exist before any handle is registered (backends register theirs
        // when the snapshot is built), so metrics are decided here, once.
        let exporter = config
            .admin
            .as_ref()
            .filter(|admin| admin.metrics)
            .and_then(|_| crate::metrics::install());
        crate::metrics::record_config_loaded();
        let config = Arc::new(config);
        let acme = Arc::new(crate::acme::Shared::default());
        for listener in &config.listeners {
            if let Some(tls) = &listener.tls {
                let certificates = crate::tls::Certificates {
                    issued: &acme.issued,
                    book: None,
                };
                crate::tls::server_config(tls, certificates).map_err(|source| {
                    ServerError::Tls {
                        name: Arc::clone(&listener.name),
                        source,
                    }
                })?;
            }
        }
        // Sockets handed over by systemd or by the old process of an upgrade come first.
        let mut inherited = Inherited::from_env();
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener_config in &config.listeners {
            let socket = bind(
                &mut inherited,
                &listener_config.name,
                listener_config.listen,
            )
            .await?;
            listeners.push((listener_config.clone(), socket));
        }
        let admin = match &config.admin {
            None => None,
            Some(admin) => Some(bind(&mut inherited, runtime::ADMIN, admin.listen).await?),
        };
        inherited.close_rest();
        let state = Arc::new(ArcSwap::from_pointee(Snapshot::build(
            Arc::clone(&config),
            None,
        )));
        let (reload_tx, reload_rx) = mpsc::channel(4);
        let (upgrade_tx, upgrade_rx) = mpsc::channel(1);
        Ok(Server {
            config,
            state,
            listeners,
            admin,
            exporter,
            file: None,
            reload_tx,
            reload_rx,
            upgrade_tx,
            upgrade_rx,
            acme,
        })
    }

    /// Reloads from `path` on request, and whenever the file changes once running. `source` is
    /// the text the current config was parsed from, so an unchanged file is recognised.
    pub fn with_config_file(mut self, path: impl Into<PathBuf>, source: String) -> Self {
        self.file = Some((path.into(), source));
        self
    }

    /// A handle that asks the running server to reload its config file.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle::new(self.reload_tx.clone())
    }

    /// A handle that asks the running server to upgrade to the binary at its path.
    pub fn upgrade_handle(&self) -> UpgradeHandle {
        UpgradeHandle(self.upgrade_tx.clone())
    }

    /// The address a listener actually bound (useful when configured with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(config, _)| &*config.name == listener)
            .and_then(|(_, socket)| socket.local_addr().ok())
    }

    /// The address the admin listener bound, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|socket| socket.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then drains open connections (bounded by
    /// `runtime.shutdown_timeout`).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            config,
            state,
            listeners,
            admin,
            exporter,
            file,
            reload_tx,
            mut reload_rx,
            upgrade_tx,
            mut upgrade_rx,
            acme,
        } = self;
        drop(upgrade_tx);
        let stop = CancellationToken::new();
        let (file, source) = file.unzip();
        let discovery = crate::discovery::Discovery::new(stop.child_token());
        let admin_state = Arc::new(AdminState::new(
            ReloadHandle::new(reload_tx.clone()),
            Arc::clone(&state),
            file.clone(),
            source.clone(),
            exporter,
            Arc::clone(&acme),
            Arc::clone(discovery.registry()),
        ));
        // Bursts leave idle connections behind; close the ones no request came back for.
        let sweep = Arc::clone(&state);
        every(IDLE_SWEEP_INTERVAL, &stop, move |now| {
            sweep.load().reap_idle(now)
        });
        let acme_stop = stop.child_token();
        let mut runtime = Runtime {
            config,
            state,
            file,
            last_source: source,
            listeners: Vec::new(),
            admin: None,
            checkers: Supervisor::new(stop.child_token()),
            stop,
            connections: TaskTracker::new(),
            deadline: CancellationToken::new(),
            admin_state,
            cert_watcher: None,
            token_watcher: None,
            reload_handle: ReloadHandle::new(reload_tx.clone()),
            acme: crate::acme::Manager::new(Arc::clone(&acme), acme_stop),
            acme_shared: acme,
            discovery,
        };
        // Discover pools get their first answers before the first health checks.
        runtime.start_discovery().await;
        runtime.checkers.sync(&runtime.state.load());
        log_startup(&runtime.state.load(), &listeners, admin.as_ref());
        if let (Some(socket), Some(config)) = (admin, runtime.config.admin.clone()) {
            runtime.start_admin(&config, socket);
        }
        // The first round of checks before the listeners accept: a client that connects at once
        // waits in the backlog for a moment instead of getting 503 for want of a check.
        let unchecked = health::checker::first_round(&runtime.state.load(), true).await;
        if unchecked > 0 {
            tracing::warn!(
                unchecked,
                "first health checks not all done within the check timeout; accepting with what is known"
            );
        } else {
            tracing::info!("first health checks done");
        }
        // Cached (or stand-in) ACME certificates are in place before the first handshake;
        // orders run in the background.
        let config = Arc::clone(&runtime.config);
        runtime.acme.sync(&config);
        for (config, socket) in listeners {
            runtime.start_listener(config, socket);
        }
        runtime.admin_state.set_ready();
        runtime.publish_listeners();
        let pid_file = runtime.config.runtime.pid_file.clone();
        notify::ready(pid_file.as_deref());
        notify::watchdog(runtime.stop.child_token());
        let handle = runtime.reload_handle.clone();
        runtime.watch_certificates(&handle);
        let file = runtime.file.clone();
        let _watcher = file.as_ref().and_then(|path| {
            reload::watch(&[path.as_path()], handle.clone(), Trigger::FileChanged)
                .map_err(|err| tracing::warn!(error = %err, "config file changes will not be picked up; use SIGHUP or POST /reload"))
                .ok()
        });
        if let Some(path) = &file {
            // Catch a write that landed between loading the file and starting the watch. Done
            // before any other reload is handled, so from the line below on, a change is either
            // this check's or a later trigger's, never a race between them.
            runtime.reload(Trigger::FileChanged).await;
            tracing::info!(file = %path.display(), "config file checked since start; watching for changes");
        }
        drop(reload_tx);

        tokio::pin!(shutdown);
        let mut upgrading = None;
        let mut handover = false;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = runtime.discovery.changed() => runtime.apply_discovery().await,
                Some(request) = reload_rx.recv() => {
                    notify::reloading();
                    let outcome = runtime.reload(request.trigger).await;
                    notify::reloaded();
                    if let Some(reply) = request.reply {
                        // The requester may have given up waiting; the reload happened anyway.
                        let _ = reply.send(outcome);
                    }
                }
                Some(()) = upgrade_rx.recv(), if upgrading.is_none() => {
                    match runtime.handoffs() {
                        Ok(sockets) => upgrading = Some(Box::pin(upgrade::upgrade(sockets))),
                        Err(err) => tracing::error!(error = %err, "upgrade failed; still serving"),
                    }
                }
                outcome = async { upgrading.as_mut().expect("guarded").await }, if upgrading.is_some() => {
                    upgrading = None;
                    match outcome {
                        Ok(pid) => {
                            tracing::info!(new_pid = pid, "upgrade: the new process serves; handing over");
                            handover = true;
                            break;
                        }
                        Err(err) => tracing::error!(error = %err, "upgrade failed; still serving"),
                    }
                }
            }
        }
        if !handover {
            // After a hand-over the service goes on in the new process, which is the service
            // manager's main one now: STOPPING=1 from this one would stop the service.
            notify::stopping();
        }
        runtime.shutdown(handover).await;
        notify::remove_pid_file(pid_file.as_ref());
    }
}

/// Runs `tick` every `period` (a late tick delays the next rather than bunching up) until
/// `stop` is cancelled.
fn every(
    period: std::time::Duration,
    stop: &CancellationToken,
    mut tick: impl FnMut(tokio::time::Instant) + Send + 'static,
) {
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                now = ticker.tick() => tick(now),
            }
        }
    });
}

/// The listener `name`'s socket: inherited, or bound at `address`.
async fn bind(
    inherited: &mut Inherited,
    name: &str,
    address: SocketAddr,
) -> Result<TcpListener, ServerError> {
    let socket = match inherited.take(name, address) {
        Ok(Some(socket)) => Ok(socket),
        Ok(None) => accept::bind(address).await,
        Err(err) => Err(err),
    };
    socket.map_err(|source| ServerError::Bind {
        name: Arc::from(name),
        address,
        source,
    })
}

fn log_startup(
    snapshot: &Snapshot,
    listeners: &[(ListenerConfig, TcpListener)],
    admin: Option<&TcpListener>,
) {
    let listeners: Vec<String> = listeners
        .iter()
        .map(|(config, socket)| {
            let address = socket
                .local_addr()
                .map_or_else(|_| config.listen.to_string(), |a| a.to_string());
            format!(
                "{} {}://{} -> {}",
                config.name,
                config.protocol.as_str(),
                address,
                config.serves()
            )
        })
        .collect();
    let pools: Vec<String> = snapshot
        .pools()
        .iter()
        .map(|pool| {
            format!(
                "{} ({}, {} backends)",
                pool.name,
                pool.algorithm.as_str(),
                pool.endpoints.len()
            )
        })
        .collect();
    let admin = admin
        .and_then(|socket| socket.local_addr().ok())
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(
        listeners = %listeners.join(", "),
        pools = %pools.join(", "),
        admin = %admin,
        "fulcrum started"
    );
}
