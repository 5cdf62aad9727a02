//! A running server's live parts: its listeners and admin listener with their accept loops,
//! the health checkers and the drain on shutdown. The reload transaction that changes them is
//! in `reload/transaction.rs`.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::accept;
use super::upgrade::Handoff;
use crate::admin::{self, Access, AdminState, ListenerView};
use crate::config::{AdminConfig, AdminToken, Config, ListenerConfig, Protocol};
use crate::health::checker::Supervisor;
use crate::limit::{ConnectionLimit, OpenConnection};
use crate::metrics::ListenerMetrics;
use crate::proxy::l4;
use crate::proxy::l7::HttpListener;
use crate::reload::{self, ReloadHandle, Trigger};
use crate::snapshot::SharedState;

/// How long to wait for cut-off tunnels and TCP streams to close after the drain deadline.
const CUT_OFF_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a process that handed its sockets to a new one serves its open connections as
/// before, so that a connection it accepted just before its first request arrived gets that
/// request answered (with `Connection: close` once the drain starts) rather than closed.
const HANDOVER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The serving side of a running server: what is live now and how to change it.
pub(crate) struct Runtime {
    pub(crate) config: Arc<Config>,
    pub(crate) state: SharedState,
    pub(crate) file: Option<PathBuf>,
    /// Content of the file as last read, so a touch without change does nothing.
    pub(crate) last_source: Option<String>,
    pub(crate) listeners: Vec<RunningListener>,
    pub(crate) admin: Option<RunningAdmin>,
    pub(crate) checkers: Supervisor,
    pub(crate) stop: CancellationToken,
    pub(crate) connections: TaskTracker,
    /// Cancelled when the drain deadline passes: ends tunnels and TCP streams still open.
    pub(crate) deadline: CancellationToken,
    pub(crate) admin_state: Arc<AdminState>,
    /// Watches TLS certificate files; replaced when a reload changes them.
    pub(crate) cert_watcher: Option<notify::RecommendedWatcher>,
    /// Watches the admin token file; replaced when a reload changes it.
    pub(crate) token_watcher: Option<notify::RecommendedWatcher>,
    /// For watchers started by reloads.
    pub(crate) reload_handle: ReloadHandle,
    /// The ACME certificate tasks.
    pub(crate) acme: crate::acme::Manager,
    /// What ACME shares with listeners.
    pub(crate) acme_shared: Arc<crate::acme::Shared>,
    /// The DNS lookups of `discover` pools.
    pub(crate) discovery: crate::discovery::Discovery,
}

pub(crate) struct RunningListener {
    pub(crate) config: ListenerConfig,
    /// The address actually bound.
    pub(crate) local: SocketAddr,
    /// Stops the accept loop and drains this listener's connections.
    pub(crate) stop: CancellationToken,
    /// Stops the accept loop only (a hand-over drains later).
    pub(crate) accepting: CancellationToken,
    /// The accept loop; hands the socket back when stopped.
    pub(crate) accept: JoinHandle<TcpListener>,
    pub(crate) handler: Handler,
    /// The cap on open client connections; a reload may change it.
    pub(crate) limit: Arc<ConnectionLimit>,
    /// A duplicate of the listening socket, to hand to a new process on upgrade.
    pub(crate) handoff: Option<OwnedFd>,
}

/// What serves a listener's connections.
pub(crate) enum Handler {
    Http(Arc<HttpListener>),
    Tcp(Arc<l4::TcpListener>),
}

impl Handler {
    pub(crate) fn metrics(&self) -> &Arc<ListenerMetrics> {
        match self {
            Handler::Http(http) => &http.metrics,
            Handler::Tcp(tcp) => &tcp.metrics,
        }
    }
}

/// Whether a running listener can keep serving `new` as it is: same name, socket and protocol.
pub(crate) fn same_role(running: &ListenerConfig, new: &ListenerConfig) -> bool {
    running.name == new.name
        && running.listen == new.listen
        && running.protocol == new.protocol
        && running.accept_proxy_protocol == new.accept_proxy_protocol
}

pub(crate) struct RunningAdmin {
    pub(crate) listen: SocketAddr,
    pub(crate) stop: CancellationToken,
    /// Stops the accept loop only (a hand-over drains later).
    pub(crate) accepting: CancellationToken,
    pub(crate) accept: JoinHandle<TcpListener>,
    /// The cap on open admin connections; a reload may change it.
    pub(crate) limit: Arc<ConnectionLimit>,
    /// A duplicate of the listening socket, to hand to a new process on upgrade.
    pub(crate) handoff: Option<OwnedFd>,
}

impl Runtime {
    pub(crate) fn start_listener(&mut self, config: ListenerConfig, socket: TcpListener) {
        let local = socket.local_addr().unwrap_or(config.listen);
        let handoff = duplicate(&config.name, &socket);
        let stop = self.stop.child_token();
        let name = Arc::clone(&config.name);
        let limit = |metrics: &ListenerMetrics| {
            ConnectionLimit::new(config.max_connections, metrics.saturations.clone())
        };
        let (handler, limit, (accept, accepting)) = match config.protocol {
            Protocol::Http => {
                let http = match HttpListener::new(
                    Arc::clone(&name),
                    Arc::clone(&self.state),
                    config.limits.clone(),
                    config.tls.as_ref(),
                    self.deadline.clone(),
                    Arc::clone(&self.acme_shared),
                ) {
                    Ok(http) => Arc::new(http),
                    Err(err) => {
                        tracing::error!(listener = %name, error = %err, "cannot start listener: TLS setup failed");
                        return;
                    }
                };
                let limit = limit(&http.metrics);
                let parkings = http.start(stop.clone(), &self.connections);
                let listener = Arc::clone(&http);
                let accept =
                    self.spawn_accept(name, socket, &stop, &limit, move |stream, peer, _, room| {
                        Arc::clone(&listener).serve(Arc::clone(&parkings), stream, peer, room)
                    });
                (Handler::Http(http), limit, accept)
            }
            Protocol::Tcp => {
                let tcp = Arc::new(l4::TcpListener::new(
                    Arc::clone(&name),
                    Arc::clone(&self.state),
                    config.accept_proxy_protocol,
                    self.deadline.clone(),
                ));
                let limit = limit(&tcp.metrics);
                let listener = Arc::clone(&tcp);
                let accept = self.spawn_accept(
                    name,
                    socket,
                    &stop,
                    &limit,
                    move |stream, peer, drain, room| {
                        Arc::clone(&listener).serve(stream, peer, drain, room)
                    },
                );
                (Handler::Tcp(tcp), limit, accept)
            }
        };
        self.listeners.push(RunningListener {
            config,
            local,
            stop,
            accepting,
            accept,
            handler,
            limit,
            handoff,
        });
    }

    /// Runs the accept loop of `socket`, handing each connection to `serve` (with the drain
    /// token and its room under `limit`), until `stop` or the returned token (which stops
    /// accepting only) is cancelled.
    pub(crate) fn spawn_accept<F, Fut>(
        &self,
        name: Arc<str>,
        socket: TcpListener,
        stop: &CancellationToken,
        limit: &Arc<ConnectionLimit>,
        serve: F,
    ) -> (JoinHandle<TcpListener>, CancellationToken)
    where
        F: Fn(TcpStream, SocketAddr, CancellationToken, OpenConnection) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accepting = stop.child_token();
        let accept = tokio::spawn(accept::accept_loop(
            name,
            socket,
            accepting.clone(),
            stop.clone(),
            self.connections.clone(),
            Arc::clone(limit),
            serve,
        ));
        (accept, accepting)
    }

    /// Starts the admin listener of `config` on `socket`.
    pub(crate) fn start_admin(&mut self, config: &AdminConfig, socket: TcpListener) {
        let bound = socket.local_addr().unwrap_or(config.listen);
        if !bound.ip().is_loopback() && config.token.is_none() {
            tracing::warn!(
                address = %bound,
                "the admin listener is reachable beyond this host and has no token_file: anyone who can reach it can reload the config and read the topology"
            );
        }
        self.admin_state.set_access(Access::new(config));
        let handoff = duplicate("admin", &socket);
        let stop = self.stop.child_token();
        let state = Arc::clone(&self.admin_state);
        let limit = ConnectionLimit::new(Some(config.max_connections), metrics::Counter::noop());
        let accepting = stop.child_token();
        let accept = tokio::spawn(accept::accept_loop(
            Arc::from("admin"),
            socket,
            accepting.clone(),
            stop.clone(),
            self.connections.clone(),
            Arc::clone(&limit),
            move |stream, peer, shutdown, room| {
                admin::serve(Arc::clone(&state), stream, peer, shutdown, room)
            },
        ));
        self.admin = Some(RunningAdmin {
            listen: config.listen,
            stop,
            accepting,
            accept,
            limit,
            handoff,
        });
        self.watch_token(config);
    }

    /// Stops removed listeners, starts added ones (reusing the socket of a listener that was
    /// renamed on the same address) and updates the limits of the rest.
    pub(crate) async fn apply_listeners(
        &mut self,
        config: &Config,
        fresh: Vec<(Arc<str>, TcpListener)>,
    ) {
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
                    let name = &running.config.name;
                    self.acme_shared
                        .book
                        .forget(name, crate::tls::Source::File, None);
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
                tracing::info!(listener = %new.name, address = %address, serves = %new.serves(), "listener added");
                self.start_listener(new.clone(), socket);
            }
        }
    }

    pub(crate) async fn apply_admin(&mut self, config: &Config, socket: Option<TcpListener>) {
        if let (Some(new), Some(running)) = (&config.admin, &self.admin) {
            if new.listen == running.listen {
                running.limit.set(Some(new.max_connections));
                self.admin_state.set_access(Access::new(new));
                if self
                    .config
                    .admin
                    .as_ref()
                    .and_then(|old| old.token.as_ref())
                    .map(AdminToken::file)
                    != new.token.as_ref().map(AdminToken::file)
                {
                    self.watch_token(new);
                }
                return;
            }
        }
        if let Some(running) = self.admin.take() {
            running.stop.cancel();
            if let Err(err) = running.accept.await {
                tracing::error!(error = %err, "admin accept loop panicked");
            }
        }
        self.token_watcher = None;
        if let (Some(new), Some(socket)) = (&config.admin, socket) {
            self.start_admin(new, socket);
        }
    }

    /// Watches the admin token file of `config`, if any (replacing the previous watch).
    fn watch_token(&mut self, config: &AdminConfig) {
        self.token_watcher = config.token.as_ref().and_then(|token| {
            reload::watch(&[token.file()], self.reload_handle.clone(), Trigger::AdminToken)
                .map_err(|err| tracing::warn!(error = %err, "admin token changes will not be picked up until a reload"))
                .ok()
        });
    }

    /// Watches the certificate files of every TLS listener (replacing the previous watch).
    pub(crate) fn watch_certificates(&mut self, handle: &ReloadHandle) {
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
    pub(crate) fn publish_listeners(&self) {
        let views = self
            .listeners
            .iter()
            .map(|running| ListenerView {
                name: Arc::clone(&running.config.name),
                address: running.local,
                protocol: running.config.protocol.as_str(),
                pool: running.config.pool.clone(),
                routes: running.config.routes.clone(),
                max_connections: running.config.max_connections,
                metrics: Arc::clone(running.handler.metrics()),
            })
            .collect();
        self.admin_state.set_listeners(views);
    }

    /// The listening sockets to hand a new process on upgrade (duplicates: if the upgrade
    /// fails, this process keeps serving on its own).
    pub(crate) fn handoffs(&self) -> std::io::Result<Vec<Handoff>> {
        let listeners = self
            .listeners
            .iter()
            .map(|running| (Arc::clone(&running.config.name), &running.handoff));
        let admin = self
            .admin
            .as_ref()
            .map(|running| (Arc::from(ADMIN), &running.handoff));
        let mut handoffs = Vec::new();
        for (name, fd) in listeners.chain(admin) {
            let Some(fd) = fd else {
                return Err(std::io::Error::other(format!(
                    "listener {name} has no descriptor to hand over"
                )));
            };
            handoffs.push(Handoff {
                name,
                fd: fd.try_clone()?,
            });
        }
        Ok(handoffs)
    }

    /// Stops accepting, drains open connections within `shutdown_timeout` and cuts off the
    /// rest. After a `handover` to a new process that shares the listening sockets, the drain
    /// starts [`HANDOVER_GRACE`] later (or once every connection has closed).
    pub(crate) async fn shutdown(self, handover: bool) {
        let timeout = self.config.runtime.shutdown_timeout;
        let started = tokio::time::Instant::now();
        // Accepting stops first, and each loop's socket (with its hand-over duplicate) closes:
        // connections still queued on a shared socket stay there for the new process.
        let loops = self
            .listeners
            .into_iter()
            .map(|l| (l.accepting, l.accept))
            .chain(self.admin.map(|a| (a.accepting, a.accept)));
        for (accepting, accept) in loops {
            accepting.cancel();
            if let Err(err) = accept.await {
                tracing::error!(error = %err, "accept loop panicked");
            }
        }
        self.connections.close();
        if handover {
            // A client whose connection this process accepted just before handing over may
            // not have sent its request yet; draining now would close that connection with
            // nothing answered, where the client expects its first request to be served.
            // Meanwhile every connection is served as before.
            let grace = HANDOVER_GRACE.min(timeout);
            let _ = tokio::time::timeout(grace, self.connections.wait()).await;
        }
        tracing::info!(
            open_connections = self.connections.len(),
            timeout_ms = timeout.as_millis() as u64,
            "shutting down: stopped accepting, draining connections"
        );
        self.stop.cancel();
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, self.connections.wait()).await {
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
pub(crate) fn tls_files(config: &Config) -> Vec<PathBuf> {
    config
        .listeners
        .iter()
        .filter_map(|listener| listener.tls.as_ref())
        .flat_map(crate::tls::files)
        .map(std::path::Path::to_path_buf)
        .collect()
}

/// The name the admin listener's socket is handed over (and inherited) under.
pub(crate) const ADMIN: &str = "admin";

/// A duplicate of `socket`'s descriptor for a later upgrade; `None` (logged) if the process is
/// out of descriptors, which only costs that upgrade.
fn duplicate(name: &str, socket: &TcpListener) -> Option<OwnedFd> {
    match socket.as_fd().try_clone_to_owned() {
        Ok(fd) => Some(fd),
        Err(err) => {
            tracing::warn!(listener = name, error = %err, "cannot keep a descriptor for upgrades");
            None
        }
    }
}
