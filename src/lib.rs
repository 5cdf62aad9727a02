//! fulcrum: a layer-4/7 load balancer.
//!
//! Clients connect to listeners; each listener forwards to one pool of backends, choosing a
//! backend per request with the pool's algorithm. Data flows one way: listener → (TLS) →
//! protocol (l7 | l4) → pool → balancer → upstream connection → response, with health, reload,
//! metrics and admin beside that path.
//!
//! # Layout
//! Layers import downward only, and no two files import each other: `backend`, `pool`,
//! `balance`, `health`, `config` and `tls` never import from `proxy`; `config` depends on `tls`,
//! never the reverse. `upstream` is always the backend side, `client` the client side.
//! - `config/`: the TOML file: `raw` serde structs → `validate/` (listener, pool, health) →
//!   `types`, with `defaults`, the reload `diff` and file:line:col errors.
//! - `tls/`: PEM `load`ing, the `server` side (certificates, SNI, ALPN) and the `client` side
//!   (the backend-facing config).
//! - `snapshot`: the immutable runtime snapshot (pools, which pool serves which listener),
//!   swapped whole on reload.
//! - `pool`: a pool's policy per request: next attempt within the retry budget, the queue in
//!   front of `max_connections`, fail-open, passive ejection.
//! - `backend`: per-backend live state (health, in-flight, idle connections) that outlives
//!   snapshots, and what a health transition does (log, wake the queue).
//! - `balance/`: one file per algorithm; each owns its running state.
//! - `health/`: the pure state `machine`, the shared `Health` the hot path reads, and the
//!   `checker` tasks.
//! - `limit`: connection caps (listeners' and backends' `max_connections`) and their waiters.
//! - `http/`: wire rules: hop-by-hop and forwarding `headers`, `wire` numbers (lengths, chunk
//!   sizes).
//! - `upstream/`: the backend side: `connect`, one `conn` of either protocol, the `idle_pool`,
//!   the HTTP/1.1 client `h1/`, the `request_body` sent up.
//! - `proxy/`: the client side: `l7/` (listener, conn, handler, forward, tunnel), `framing/`
//!   (the request-smuggling checks), `activity` (client timeouts, parking), `l4`,
//!   `proxy_protocol`, the response `body`, and `error`, the one error → status mapping.
//! - `io/`: byte-stream helpers both sides share (`rewind`).
//! - `metrics/`: series `names`, per-listener/pool/backend `handles`, one-minute `window`s.
//! - `admin/`: the operator endpoints (health, reload, status, Prometheus, dashboard).
//! - [`reload`]: triggers (file watch, SIGHUP, admin) and the reload `transaction`.
//! - [`server`]: bind, run, drain: `accept` loops and the `runtime` of a running server.
//! - [`cli`]: the `fulcrum` binary's arguments and the admin client behind `--check --diff`.
//!
//! The public API is narrow: [`Config`], [`Server`], [`reload`]'s handle and outcome, [`cli`].

#![warn(unreachable_pub, missing_debug_implementations)]

mod admin;
mod backend;
mod balance;
pub mod cli;
pub mod config;
mod health;
mod http;
mod io;
mod limit;
mod metrics;
mod pool;
mod proxy;
pub mod reload;
pub mod server;
mod snapshot;
mod tls;
mod upstream;

#[cfg(test)]
mod testing;

pub use config::Config;
pub use server::Server;

/// What the micro-benchmarks (`benches/micro.rs`) measure, without widening the API: a pool's
/// pick and the header rules. Not a stable interface.
#[doc(hidden)]
pub mod bench {
    pub use crate::balance::Tried;
    pub use crate::http::headers::{ClientInfo, Forwarding, prepare_request, prepare_response};
    pub use crate::pool::Pool;
    pub use crate::snapshot::Snapshot;
}
