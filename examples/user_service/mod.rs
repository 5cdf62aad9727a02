//! The example user service, shared by `examples/user_service.rs`, `examples/demo.rs` and
//! `tests/user_service.rs` through `#[path]`: a JSON API for sign-up, sign-in and a profile, on a
//! SQLite database that any number of instances (threads or processes) share.
//!
//! - [`api`]: routes, validation, errors → responses;
//! - [`db`]: the schema and every query; blocking, run on tokio's blocking pool;
//! - [`auth`]: Argon2id password hashes and session tokens.
//!
//! Sessions live in the database, so any instance can serve any signed-in user: the balancer
//! needs no sticky sessions.

// Each including crate uses a different part (the test configures what the binaries default).
#![allow(dead_code)]

pub mod api;
pub mod auth;
pub mod db;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use api::Api;
use auth::{HashCost, Passwords};
use db::{DbError, Store};

/// How an instance is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Sent as `X-Served-By` on every response; must be a valid header value.
    pub name: String,
    /// The SQLite file shared by all instances; created (with its directory) if missing.
    pub db: PathBuf,
    /// Password hashing cost; [`HashCost::Standard`] unless testing.
    pub hash_cost: HashCost,
    /// Lifetime of a session token.
    pub session_ttl: Duration,
}

impl Options {
    /// Standard hashing and 24-hour sessions.
    pub fn new(name: impl Into<String>, db: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            db: db.into(),
            hash_cost: HashCost::Standard,
            session_ttl: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `--name` is not a valid header value.
    #[error("instance name {0:?} is not a valid header value")]
    Name(String),
    /// The database could not be opened or its schema created.
    #[error("database: {0}")]
    Db(#[from] DbError),
    /// The listening socket is unusable.
    #[error("listener: {0}")]
    Listener(std::io::Error),
}

/// The default database path: `<temp dir>/fulcrum-demo/users.db`.
pub fn default_db_path() -> PathBuf {
    std::env::temp_dir().join("fulcrum-demo").join("users.db")
}

/// Opens the database (creating the schema on first start) and builds the request handler.
pub async fn open(options: &Options) -> Result<Arc<Api>, StartError> {
    let name =
        HeaderValue::from_str(&options.name).map_err(|_| StartError::Name(options.name.clone()))?;
    let store = Store::open(&options.db).await?;
    Ok(Arc::new(Api {
        name,
        store,
        passwords: Arc::new(Passwords::new(options.hash_cost)),
        session_ttl: options.session_ttl,
    }))
}

/// Serves `listener` until `shutdown` completes. Then the listener is closed (new connections
/// are refused) and every open connection is dropped at once, mid-request or not — so it also
/// stands for an instance being killed. Accept errors are logged and retried after 50 ms.
pub async fn serve(listener: TcpListener, api: Arc<Api>, shutdown: impl Future<Output = ()>) {
    let builder = Arc::new(Builder::new(TokioExecutor::new()));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(peer = %peer, error = %err, "cannot set TCP_NODELAY");
        }
        let (api, builder) = (Arc::clone(&api), Arc::clone(&builder));
        connections.spawn(async move {
            let service = service_fn(move |req| Arc::clone(&api).handle(req));
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(peer = %peer, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}

/// A running instance on the current runtime.
pub struct Instance {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Instance {
    /// Opens the database and starts serving `listener` in a task.
    pub async fn start(listener: TcpListener, options: &Options) -> Result<Instance, StartError> {
        let addr = listener.local_addr().map_err(StartError::Listener)?;
        let api = open(options).await?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, api, stop.clone().cancelled_owned()));
        Ok(Instance { addr, stop, task })
    }

    /// Closes the listener and drops every connection, then waits for that to be done.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(err) = self.task.await {
            tracing::error!(error = %err, "user service task failed");
        }
    }
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut signal) => drop(signal.recv().await),
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
