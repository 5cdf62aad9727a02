//! Binding every socket, serving, and draining on shutdown.
//!
//! [`Server::bind`] binds all listeners up front (so a bad address fails start-up before
//! anything serves, and tests can read the ports chosen for `:0`); [`Server::run`] serves until
//! the given shutdown future completes, then stops accepting and waits for open connections up
//! to `runtime.shutdown_timeout`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ListenerConfig, Protocol};
use crate::health::checker::Supervisor;
use crate::proxy::l7::HttpListener;
use crate::state::{SharedState, Snapshot};
use crate::{admin, listener};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
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
    state: SharedState,
    listeners: Vec<(ListenerConfig, TcpListener)>,
    admin: Option<TcpListener>,
}

impl Server {
    /// Builds the runtime state for `config` and binds every listener.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let config = Arc::new(config);
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener_config in &config.listeners {
            let socket = listener::bind(listener_config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    name: Arc::clone(&listener_config.name),
                    address: listener_config.listen,
                    source,
                })?;
            listeners.push((listener_config.clone(), socket));
        }
        let admin =
            match &config.admin {
                None => None,
                Some(admin) => Some(listener::bind(admin.listen).await.map_err(|source| {
                    ServerError::Bind {
                        name: Arc::from("admin"),
                        address: admin.listen,
                        source,
                    }
                })?),
            };
        let state = Arc::new(ArcSwap::from_pointee(Snapshot::build(config, None)));
        Ok(Server {
            state,
            listeners,
            admin,
        })
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
        let snapshot = self.state.load_full();
        log_startup(&snapshot, &self.listeners, self.admin.as_ref());
        let stop = CancellationToken::new();
        let mut checkers = Supervisor::new(stop.child_token());
        checkers.sync(&snapshot);
        let connections = TaskTracker::new();
        let mut accept_loops = Vec::new();
        for (config, socket) in self.listeners {
            match config.protocol {
                Protocol::Http => {
                    let http = Arc::new(HttpListener::new(
                        Arc::clone(&config.name),
                        Arc::clone(&self.state),
                        config.limits.clone(),
                    ));
                    accept_loops.push(tokio::spawn(listener::accept_loop(
                        Arc::clone(&config.name),
                        socket,
                        stop.clone(),
                        connections.clone(),
                        move |stream, peer, shutdown| {
                            Arc::clone(&http).serve(stream, peer, shutdown)
                        },
                    )));
                }
            }
        }
        if let Some(socket) = self.admin {
            accept_loops.push(tokio::spawn(listener::accept_loop(
                Arc::from("admin"),
                socket,
                stop.clone(),
                connections.clone(),
                admin::serve,
            )));
        }

        shutdown.await;
        let timeout = snapshot.config.runtime.shutdown_timeout;
        tracing::info!(
            open_connections = connections.len(),
            timeout_ms = timeout.as_millis() as u64,
            "shutting down: stopped accepting, draining connections"
        );
        stop.cancel();
        for accept_loop in accept_loops {
            if let Err(err) = accept_loop.await {
                tracing::error!(error = %err, "accept loop panicked");
            }
        }
        connections.close();
        match tokio::time::timeout(timeout, connections.wait()).await {
            Ok(()) => tracing::info!("drained; all connections closed"),
            Err(_) => tracing::warn!(
                open_connections = connections.len(),
                "shutdown timeout reached; closing remaining connections"
            ),
        }
    }
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
            format!("{} http://{} -> {}", config.name, address, config.pool)
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
