//! fulcrum: a layer-4/7 load balancer.
//!
//! Clients connect to listeners; each listener forwards to one pool of backends, choosing a
//! backend per request with the pool's algorithm. Data flows one way: listener → protocol →
//! pool → balancer → upstream connection → response.
//!
//! # Layout
//! - [`config`]: the TOML file, parsed into validated types with file:line:col errors.
//! - [`state`]: the immutable runtime snapshot (pools, backends, routes), swapped whole.
//! - [`backend`]: per-backend live state (in-flight, idle connections) that outlives snapshots.
//! - [`balance`]: the selection algorithms (smooth weighted round-robin, least-connections).
//! - [`health`]: the health state machine, active checkers and passive ejection.
//! - [`proxy`]: the HTTP data path (hyper's server towards clients, parked on quiet keep-alive
//!   connections; HTTP/1.1 to backends driven in the request's own task), upstream connections,
//!   header rules, error → status mapping.
//! - [`limit`]: connection limits (listeners' and backends' `max_connections`) and their waiters.
//! - [`listener`]: binding and the accept loop; [`admin`]: the operator endpoints (health,
//!   reload, status, Prometheus metrics, dashboard); [`metrics`]: metric handles and windows.
//! - [`tls`]: TLS termination: certificate loading, SNI selection, ALPN.
//! - [`reload`]: reload triggers (file watch, SIGHUP, admin) and their outcome.
//! - [`server`]: wires it together: bind, serve, apply reloads, drain on shutdown.
//! - [`cli`]: command-line arguments of the `fulcrum` binary.

pub mod admin;
pub mod backend;
pub mod balance;
pub mod cli;
pub mod config;
pub mod health;
pub mod http;
pub mod io;
pub mod limit;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use server::Server;
