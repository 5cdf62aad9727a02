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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::admin::{self, AdminState, ListenerView};
use crate::config::{self, Config, ListenerConfig, Protocol};
use crate::health::checker::Supervisor;
use crate::limit::ConnectionLimit;
use crate::listener;
use crate::metrics::ListenerMetrics;
use crate::proxy::l4;
use crate::proxy::l7::HttpListener;
use crate::reload::{self, ReloadHandle, ReloadOutcome, ReloadRequest, Trigger};
use crate::snapshot::{SharedState, Snapshot};

/// How long to wait for cut-off tunnels and TCP streams to close after the drain deadline.
const CUT_OFF_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// How often metric histograms are drained when nobody scrapes.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

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
pub struct Server {
    config: Arc<Config>,
    state: SharedState,
    listeners: Vec<(ListenerConfig, TcpListener)>,
    admin: Option<TcpListener>,
    exporter: Option<&'static PrometheusHandle>,
    file: Option<(PathBuf, String)>,
    reload_tx: mpsc::Sender<ReloadRequest>,
    reload_rx: mpsc::Receiver<ReloadRequest>,
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
        for listener in &config.listeners {
            if let Some(tls) = &listener.tls {
                crate::tls::server_config(tls).map_err(|source| ServerError::Tls {
                    name: Arc::clone(&listener.name),
                    source,
                })?;
            }
        }
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener_config in &config.listeners {
            let socket = bind(&listener_config.name, listener_config.listen).await?;
            listeners.push((listener_config.clone(), socket));
        }
        let admin = match &config.admin {
            None => None,
            Some(admin) => Some(bind("admin", admin.listen).await?),
        };
        let state = Arc::new(ArcSwap::from_pointee(Snapshot::build(
            Arc::clone(&config),
            None,
        )));
        let (reload_tx, reload_rx) = mpsc::channel(4);
        Ok(Server {
            config,
            state,
            listeners,
            admin,
            exporter,
            file: None,
            reload_tx,
            reload_rx,
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
        } = self;
        let stop = CancellationToken::new();
        let (file, source) = file.unzip();
        let admin_state = Arc::new(AdminState::new(
            ReloadHandle::new(reload_tx.clone()),
            Arc::clone(&state),
            file.clone(),
            source.clone(),
            exporter,
        ));
        if let Some(exporter) = exporter {
            // Histograms accumulate samples until drained; drain them even if nobody scrapes.
            every(UPKEEP_INTERVAL, &stop, move |_| exporter.run_upkeep());
        }
        // Bursts leave idle connections behind; close the ones no request came back for.
        let sweep = Arc::clone(&state);
        every(IDLE_SWEEP_INTERVAL, &stop, move |now| {
            sweep.load().reap_idle(now)
        });
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
            reload_handle: ReloadHandle::new(reload_tx.clone()),
        };
        runtime.checkers.sync(&runtime.state.load());
        log_startup(&runtime.state.load(), &listeners, admin.as_ref());
        for (config, socket) in listeners {
            runtime.start_listener(config, socket);
        }
        if let Some(socket) = admin {
            runtime.start_admin(socket);
        }
        runtime.publish_listeners();
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
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(request) = reload_rx.recv() => {
                    let outcome = runtime.reload(request.trigger).await;
                    if let Some(reply) = request.reply {
                        // The requester may have given up waiting; the reload happened anyway.
                        let _ = reply.send(outcome);
                    }
                }
            }
        }
        runtime.shutdown().await;
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

async fn bind(name: &str, address: SocketAddr) -> Result<TcpListener, ServerError> {
    listener::bind(address)
        .await
        .map_err(|source| ServerError::Bind {
            name: Arc::from(name),
            address,
            source,
        })
}

/// The serving side of a running server: what is live now and how to change it.
struct Runtime {
    config: Arc<Config>,
    state: SharedState,
    file: Option<PathBuf>,
    /// Content of the file as last read, so a touch without change does nothing.
    last_source: Option<String>,
    listeners: Vec<RunningListener>,
    admin: Option<RunningAdmin>,
    checkers: Supervisor,
    stop: CancellationToken,
    connections: TaskTracker,
    /// Cancelled when the drain deadline passes: ends tunnels and TCP streams still open.
    deadline: CancellationToken,
    admin_state: Arc<AdminState>,
    /// Watches TLS certificate files; replaced when a reload changes them.
    cert_watcher: Option<notify::RecommendedWatcher>,
    /// For watchers started by reloads.
    reload_handle: ReloadHandle,
}

struct RunningListener {
    config: ListenerConfig,
    /// The address actually bound.
    local: SocketAddr,
    /// Stops the accept loop and drains this listener's connections.
    stop: CancellationToken,
    /// The accept loop; hands the socket back when stopped.
    accept: JoinHandle<TcpListener>,
    handler: Handler,
    /// The cap on open client connections; a reload may change it.
    limit: Arc<ConnectionLimit>,
}

/// What serves a listener's connections.
enum Handler {
    Http(Arc<HttpListener>),
    Tcp(Arc<l4::TcpListener>),
}

impl Handler {
    fn metrics(&self) -> &Arc<ListenerMetrics> {
        match self {
            Handler::Http(http) => &http.metrics,
            Handler::Tcp(tcp) => &tcp.metrics,
        }
    }
}

/// Whether a running listener can keep serving `new` as it is: same name, socket and protocol.
fn same_role(running: &ListenerConfig, new: &ListenerConfig) -> bool {
    running.name == new.name
        && running.listen == new.listen
        && running.protocol == new.protocol
        && running.accept_proxy_protocol == new.accept_proxy_protocol
}

struct RunningAdmin {
    listen: SocketAddr,
    stop: CancellationToken,
    accept: JoinHandle<TcpListener>,
}

impl Runtime {
    fn start_listener(&mut self, config: ListenerConfig, socket: TcpListener) {
        let local = socket.local_addr().unwrap_or(config.listen);
        let stop = self.stop.child_token();
        let name = Arc::clone(&config.name);
        let handler = match config.protocol {
            Protocol::Http => match HttpListener::new(
                Arc::clone(&name),
                Arc::clone(&self.state),
                config.limits.clone(),
                config.tls.as_ref(),
                self.deadline.clone(),
            ) {
                Ok(http) => Handler::Http(Arc::new(http)),
                Err(err) => {
                    tracing::error!(listener = %name, error = %err, "cannot start listener: TLS setup failed");
                    return;
                }
            },
            Protocol::Tcp => Handler::Tcp(Arc::new(l4::TcpListener::new(
                Arc::clone(&name),
                Arc::clone(&self.state),
                config.accept_proxy_protocol,
                self.deadline.clone(),
            ))),
        };
        let limit = ConnectionLimit::new(
            config.max_connections,
            handler.metrics().saturations.clone(),
        );
        let accept = match &handler {
            Handler::Http(http) => self.spawn_accept(
                (name, socket),
                (&stop, &limit),
                Arc::clone(http),
                HttpListener::serve,
            ),
            Handler::Tcp(tcp) => self.spawn_accept(
                (name, socket),
                (&stop, &limit),
                Arc::clone(tcp),
                l4::TcpListener::serve,
            ),
        };
        self.listeners.push(RunningListener {
            config,
            local,
            stop,
            accept,
            handler,
            limit,
        });
    }

    /// Runs the accept loop of `socket`, handing each connection to `serve` on `handler`.
    fn spawn_accept<H, Fut>(
        &self,
        (name, socket): (Arc<str>, TcpListener),
        (stop, limit): (&CancellationToken, &Arc<ConnectionLimit>),
        handler: Arc<H>,
        serve: fn(Arc<H>, TcpStream, SocketAddr, CancellationToken) -> Fut,
    ) -> JoinHandle<TcpListener>
    where
        H: Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(listener::accept_loop(
            name,
            socket,
            (stop.clone(), self.connections.clone()),
            Arc::clone(limit),
            move |stream, peer, shutdown| serve(Arc::clone(&handler), stream, peer, shutdown),
        ))
    }

    fn start_admin(&mut self, socket: TcpListener) {
        let listen = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let stop = self.stop.child_token();
        let state = Arc::clone(&self.admin_state);
        let accept = tokio::spawn(listener::accept_loop(
            Arc::from("admin"),
            socket,
            (stop.clone(), self.connections.clone()),
            ConnectionLimit::new(None, metrics::Counter::noop()),
            move |stream, peer, shutdown| admin::serve(Arc::clone(&state), stream, peer, shutdown),
        ));
        let listen = self
            .config
            .admin
            .as_ref()
            .map_or(listen, |admin| admin.listen);
        self.admin = Some(RunningAdmin {
            listen,
            stop,
            accept,
        });
    }

    /// Reads, validates and applies the config file. On any error nothing changes.
    async fn reload(&mut self, trigger: Trigger) -> ReloadOutcome {
        let outcome = self.try_reload(trigger).await;
        match &outcome {
            ReloadOutcome::Applied(_) => crate::metrics::record_reload(true),
            ReloadOutcome::Rejected(_) => crate::metrics::record_reload(false),
            ReloadOutcome::Unchanged | ReloadOutcome::NoFile => {}
        }
        match &outcome {
            ReloadOutcome::Applied(changes) => {
                tracing::info!(
                    trigger = trigger.as_str(),
                    changes = %if changes.is_empty() { "none".to_owned() } else { changes.join("; ") },
                    "config reloaded"
                );
            }
            ReloadOutcome::Rejected(error) => tracing::error!(
                trigger = trigger.as_str(),
                error = %error,
                "config reload rejected; keeping the running config"
            ),
            ReloadOutcome::Unchanged | ReloadOutcome::NoFile => {}
        }
        self.admin_state
            .record_reload(&outcome, self.last_source.clone());
        outcome
    }

    async fn try_reload(&mut self, trigger: Trigger) -> ReloadOutcome {
        if trigger == Trigger::Certificates {
            return self.reload_certificates();
        }
        let Some(path) = self.file.clone() else {
            return ReloadOutcome::NoFile;
        };
        let source = match tokio::fs::read_to_string(&path).await {
            Ok(source) => source,
            Err(err) => {
                return ReloadOutcome::Rejected(format!(
                    "{}: cannot read config file: {err}",
                    path.display()
                ));
            }
        };
        if trigger == Trigger::FileChanged && self.last_source.as_deref() == Some(source.as_str()) {
            return ReloadOutcome::Unchanged;
        }
        // Remember the text now, so an invalid file is not re-parsed on every event. A reload
        // that fails for outside reasons (a port in use) restores it, so saving the same file
        // again retries.
        let previous_source = self.last_source.replace(source.clone());
        let file = path.display().to_string();
        // Parsing resolves hostnames, which blocks.
        let parsed = tokio::task::spawn_blocking(move || Config::parse(&file, &source)).await;
        let config = match parsed {
            Ok(Ok(config)) => config,
            Ok(Err(err)) => return ReloadOutcome::Rejected(err.to_string()),
            Err(err) => {
                self.last_source = previous_source;
                return ReloadOutcome::Rejected(format!("config parser failed: {err}"));
            }
        };
        let changes = config::diff(&self.config, &config);

        // Bind every new address first: if one fails, nothing has changed yet.
        let mut fresh = Vec::new();
        for new in &config.listeners {
            let kept = self
                .listeners
                .iter()
                .any(|running| same_role(&running.config, new));
            let moved_from = self
                .listeners
                .iter()
                .any(|running| running.config.listen == new.listen && new.listen.port() != 0);
            if kept || moved_from {
                continue;
            }
            match listener::bind(new.listen).await {
                Ok(socket) => fresh.push((new.name.clone(), socket)),
                Err(err) => {
                    self.last_source = previous_source;
                    return ReloadOutcome::Rejected(format!(
                        "cannot bind listener {} on {}: {err}",
                        new.name, new.listen
                    ));
                }
            }
        }
        let admin_socket = match (&config.admin, &self.admin) {
            (Some(new), Some(running)) if new.listen == running.listen => None,
            (Some(new), _) => match listener::bind(new.listen).await {
                Ok(socket) => Some(socket),
                Err(err) => {
                    self.last_source = previous_source;
                    return ReloadOutcome::Rejected(format!(
                        "cannot bind admin listener on {}: {err}",
                        new.listen
                    ));
                }
            },
            (None, _) => None,
        };

        // Swap the snapshot: one store, off the hot path.
        let config = Arc::new(config);
        let previous = self.state.load_full();
        let snapshot = Arc::new(Snapshot::build(Arc::clone(&config), Some(&previous)));
        self.state.store(Arc::clone(&snapshot));
        for pool in snapshot.pools() {
            // Queued requests look again: limits, backends or their health may have changed.
            pool.queue.recheck();
        }
        let mut retired = Vec::new();
        for pool in previous.pools() {
            for endpoint in pool.endpoints.iter() {
                if !snapshot.contains_backend(&endpoint.backend) {
                    endpoint.backend.retire();
                    retired.push(Arc::clone(&endpoint.backend));
                }
            }
        }
        self.admin_state.add_draining(retired);
        self.checkers.sync(&snapshot);
        self.apply_listeners(&config, fresh).await;
        self.apply_admin(&config, admin_socket).await;
        self.publish_listeners();
        let certificates_changed = tls_files(&self.config) != tls_files(&config);
        self.config = config;
        if certificates_changed {
            let handle = self.reload_handle.clone();
            self.watch_certificates(&handle);
        }
        ReloadOutcome::Applied(changes)
    }

    /// Stops removed listeners, starts added ones (reusing the socket of a listener that was
    /// renamed on the same address) and updates the limits of the rest.
    async fn apply_listeners(&mut self, config: &Config, fresh: Vec<(Arc<str>, TcpListener)>) {
        let mut reusable = Vec::new();
        let mut kept = Vec::new();
        for mut running in std::mem::take(&mut self.listeners) {
            let wanted = config
                .listeners
                .iter()
                .find(|new| same_role(&running.config, new));
            match wanted {
                Some(new) => {
                    if let Handler::Http(http) = &running.handler {
                        if let Err(err) = http.update(&new.limits, new.tls.as_ref()) {
                            tracing::error!(listener = %new.name, error = %err, "TLS reload failed; keeping the current certificates");
                        }
                    }
                    running.limit.set(new.max_connections);
                    running.config = new.clone();
                    kept.push(running);
                }
                None => {
                    running.stop.cancel();
                    let listen = running.config.listen;
                    match running.accept.await {
                        Ok(socket) if config.listeners.iter().any(|new| new.listen == listen) => {
                            reusable.push((listen, socket));
                        }
                        Ok(_) => {}
                        Err(err) => tracing::error!(error = %err, "accept loop panicked"),
                    }
                    tracing::info!(listener = %running.config.name, address = %listen, "listener removed; draining its connections");
                }
            }
        }
        self.listeners = kept;
        let mut fresh = fresh;
        for new in &config.listeners {
            if self.listeners.iter().any(|r| same_role(&r.config, new)) {
                continue;
            }
            let socket = match fresh.iter().position(|(name, _)| *name == new.name) {
                Some(index) => Some(fresh.swap_remove(index).1),
                None => reusable
                    .iter()
                    .position(|(listen, _)| *listen == new.listen)
                    .map(|index| reusable.swap_remove(index).1),
            };
            if let Some(socket) = socket {
                let address = socket.local_addr().map_or(new.listen, |a| a);
                tracing::info!(listener = %new.name, address = %address, pool = %new.pool, "listener added");
                self.start_listener(new.clone(), socket);
            }
        }
    }

    async fn apply_admin(&mut self, config: &Config, socket: Option<TcpListener>) {
        let keep = matches!((&config.admin, &self.admin), (Some(new), Some(running)) if new.listen == running.listen);
        if keep {
            return;
        }
        if let Some(running) = self.admin.take() {
            running.stop.cancel();
            if let Err(err) = running.accept.await {
                tracing::error!(error = %err, "admin accept loop panicked");
            }
        }
        if let Some(socket) = socket {
            self.start_admin(socket);
        }
    }

    /// Re-reads every TLS listener's certificate files; a listener whose files are broken keeps
    /// its current certificates.
    fn reload_certificates(&mut self) -> ReloadOutcome {
        let mut changes = Vec::new();
        let mut errors = Vec::new();
        for running in &self.listeners {
            let (Handler::Http(http), Some(tls)) = (&running.handler, running.config.tls.as_ref())
            else {
                continue;
            };
            match http.update(&running.config.limits, Some(tls)) {
                Ok(()) => changes.push(format!(
                    "listener {}: certificates reloaded",
                    running.config.name
                )),
                Err(err) => errors.push(format!(
                    "listener {}: {err}; keeping the current certificates",
                    running.config.name
                )),
            }
        }
        if errors.is_empty() {
            ReloadOutcome::Applied(changes)
        } else {
            ReloadOutcome::Rejected(errors.join("; "))
        }
    }

    /// Watches the certificate files of every TLS listener (replacing the previous watch).
    fn watch_certificates(&mut self, handle: &ReloadHandle) {
        let files = tls_files(&self.config);
        let files: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
        self.cert_watcher = if files.is_empty() {
            None
        } else {
            reload::watch(&files, handle.clone(), Trigger::Certificates)
                .map_err(|err| tracing::warn!(error = %err, "certificate changes will not be picked up until a reload"))
                .ok()
        };
    }

    /// Tells the admin API which listeners run now.
    fn publish_listeners(&self) {
        let views = self
            .listeners
            .iter()
            .map(|running| ListenerView {
                name: Arc::clone(&running.config.name),
                address: running.local,
                protocol: running.config.protocol.as_str(),
                pool: Arc::clone(&running.config.pool),
                max_connections: running.config.max_connections,
                metrics: Arc::clone(running.handler.metrics()),
            })
            .collect();
        self.admin_state.set_listeners(views);
    }

    async fn shutdown(self) {
        let timeout = self.config.runtime.shutdown_timeout;
        tracing::info!(
            open_connections = self.connections.len(),
            timeout_ms = timeout.as_millis() as u64,
            "shutting down: stopped accepting, draining connections"
        );
        self.stop.cancel();
        let loops = self
            .listeners
            .into_iter()
            .map(|l| l.accept)
            .chain(self.admin.map(|a| a.accept));
        for accept in loops {
            if let Err(err) = accept.await {
                tracing::error!(error = %err, "accept loop panicked");
            }
        }
        self.connections.close();
        match tokio::time::timeout(timeout, self.connections.wait()).await {
            Ok(()) => tracing::info!("drained; all connections closed"),
            Err(_) => {
                tracing::warn!(
                    open_connections = self.connections.len(),
                    "shutdown timeout reached; closing remaining connections"
                );
                // Tunnels and TCP streams end at once on this; HTTP connections end when
                // their tasks are dropped with the runtime.
                self.deadline.cancel();
                let _ = tokio::time::timeout(CUT_OFF_GRACE, self.connections.wait()).await;
            }
        }
    }
}

/// Every TLS file a config reads.
fn tls_files(config: &Config) -> Vec<PathBuf> {
    config
        .listeners
        .iter()
        .filter_map(|listener| listener.tls.as_ref())
        .flat_map(crate::tls::files)
        .map(std::path::Path::to_path_buf)
        .collect()
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
                config.pool
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
